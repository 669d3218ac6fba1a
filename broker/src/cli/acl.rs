//! `strata acl add|list|delete`: Kafka ACLs over the Kafka protocol (CreateAcls, DescribeAcls,
//! DeleteAcls), with the flags of Kafka's `kafka-acls.sh`. Credentials come from the
//! `STRATA_KAFKA_SASL_*` / `STRATA_KAFKA_TLS_CA` environment, as for every Kafka-side command.

use super::{CliError, Output};
use strata_broker::kafka::client::AdminClient;
use strata_meta::acl::{
    AclBinding, AclBindingFilter, AclOperation, AclPermission, PatternType, ResourceType,
    CLUSTER_RESOURCE_NAME,
};

/// The resource and entry flags shared by the three commands.
#[derive(clap::Args, Debug, Clone)]
pub struct AclArgs {
    /// A principal to allow (`User:alice`, `User:*`); repeatable.
    #[arg(long = "allow-principal", value_name = "PRINCIPAL")]
    pub allow_principals: Vec<String>,
    /// A principal to deny; repeatable.
    #[arg(long = "deny-principal", value_name = "PRINCIPAL")]
    pub deny_principals: Vec<String>,
    /// Only `list`: bindings of this principal.
    #[arg(long)]
    pub principal: Option<String>,
    /// The client host (IP) the entry applies to; default every host (`*`).
    #[arg(long)]
    pub host: Option<String>,
    /// An operation (Read, Write, Create, Delete, Alter, Describe, ClusterAction,
    /// DescribeConfigs, AlterConfigs, IdempotentWrite, All); repeatable.
    #[arg(long = "operation", value_parser = parse_operation)]
    pub operations: Vec<AclOperation>,
    /// A topic (`*` for every topic); repeatable.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// A consumer group (`*` for every group); repeatable.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// The cluster resource.
    #[arg(long)]
    pub cluster: bool,
    /// A transactional id; repeatable.
    #[arg(long = "transactional-id")]
    pub transactional_ids: Vec<String>,
    /// literal or prefixed (add); any, match, literal or prefixed (list, delete).
    #[arg(long = "resource-pattern-type", value_parser = parse_pattern)]
    pub pattern: Option<PatternType>,
    /// A broker's Kafka listener, host:port.
    #[arg(long, default_value = "127.0.0.1:9092", env = "STRATA_BOOTSTRAP")]
    pub bootstrap: String,
}

fn parse_operation(s: &str) -> Result<AclOperation, String> {
    AclOperation::parse(s)
        .filter(|o| *o != AclOperation::Any)
        .ok_or_else(|| {
            format!(
                "unknown operation `{s}`; expected Read, Write, Create, Delete, Alter, Describe, \
                 ClusterAction, DescribeConfigs, AlterConfigs, IdempotentWrite or All"
            )
        })
}

fn parse_pattern(s: &str) -> Result<PatternType, String> {
    PatternType::parse(s).ok_or_else(|| {
        format!("unknown resource pattern type `{s}`; expected literal, prefixed, match or any")
    })
}

impl AclArgs {
    /// The named resources, as (type, name).
    fn resources(&self) -> Vec<(ResourceType, String)> {
        let mut out: Vec<(ResourceType, String)> = Vec::new();
        out.extend(self.topics.iter().map(|t| (ResourceType::Topic, t.clone())));
        out.extend(self.groups.iter().map(|g| (ResourceType::Group, g.clone())));
        out.extend(
            self.transactional_ids
                .iter()
                .map(|t| (ResourceType::TransactionalId, t.clone())),
        );
        if self.cluster {
            out.push((ResourceType::Cluster, CLUSTER_RESOURCE_NAME.to_string()));
        }
        out
    }

    fn entries(&self) -> Vec<(String, AclPermission)> {
        let allow = self
            .allow_principals
            .iter()
            .map(|p| (p.clone(), AclPermission::Allow));
        let deny = self
            .deny_principals
            .iter()
            .map(|p| (p.clone(), AclPermission::Deny));
        allow.chain(deny).collect()
    }

    /// One binding per resource × principal × operation.
    fn bindings(&self) -> Result<Vec<AclBinding>, CliError> {
        let pattern = self.pattern.unwrap_or(PatternType::Literal);
        if !matches!(pattern, PatternType::Literal | PatternType::Prefixed) {
            return Err(CliError::Usage(
                "acl add takes --resource-pattern-type literal or prefixed".into(),
            ));
        }
        let resources = self.resources();
        if resources.is_empty() {
            return Err(CliError::Usage(
                "name a resource: --topic, --group, --cluster or --transactional-id".into(),
            ));
        }
        let entries = self.entries();
        if entries.is_empty() {
            return Err(CliError::Usage(
                "name a principal: --allow-principal or --deny-principal".into(),
            ));
        }
        if self.operations.is_empty() {
            return Err(CliError::Usage("name an operation: --operation".into()));
        }
        let mut out = Vec::new();
        for (ty, name) in &resources {
            for (principal, permission) in &entries {
                for op in &self.operations {
                    let b = AclBinding {
                        resource_type: *ty,
                        // The cluster is only ever literal.
                        pattern_type: if *ty == ResourceType::Cluster {
                            PatternType::Literal
                        } else {
                            pattern
                        },
                        resource_name: name.clone(),
                        principal: principal.clone(),
                        host: self.host.clone().unwrap_or_else(|| "*".into()),
                        operation: *op,
                        permission: *permission,
                    };
                    b.validate().map_err(CliError::Usage)?;
                    out.push(b);
                }
            }
        }
        Ok(out)
    }

    /// The filters `list` and `delete` send: one per resource × principal × operation, each
    /// missing flag matching anything.
    fn filters(&self, for_delete: bool) -> Result<Vec<AclBindingFilter>, CliError> {
        let pattern = self
            .pattern
            .unwrap_or(if for_delete && !self.resources().is_empty() {
                PatternType::Literal
            } else {
                PatternType::Any
            });
        let resources: Vec<(ResourceType, Option<String>)> = match self.resources() {
            r if r.is_empty() => vec![(ResourceType::Any, None)],
            r => r.into_iter().map(|(t, n)| (t, Some(n))).collect(),
        };
        let mut entries: Vec<(Option<String>, AclPermission)> = self
            .entries()
            .into_iter()
            .map(|(p, perm)| (Some(p), perm))
            .collect();
        if let Some(p) = &self.principal {
            entries.push((Some(p.clone()), AclPermission::Any));
        }
        if entries.is_empty() {
            entries.push((None, AclPermission::Any));
        }
        if for_delete && resources[0].0 == ResourceType::Any && entries[0].0.is_none() {
            return Err(CliError::Usage(
                "acl delete needs a resource (--topic, --group, --cluster, --transactional-id) \
                 or a principal"
                    .into(),
            ));
        }
        let ops: Vec<AclOperation> = if self.operations.is_empty() {
            vec![AclOperation::Any]
        } else {
            self.operations.clone()
        };
        let mut out = Vec::new();
        for (ty, name) in &resources {
            for (principal, permission) in &entries {
                for op in &ops {
                    let f = AclBindingFilter {
                        resource_type: *ty,
                        pattern_type: if *ty == ResourceType::Cluster {
                            PatternType::Literal
                        } else {
                            pattern
                        },
                        resource_name: name.clone(),
                        principal: principal.clone(),
                        host: self.host.clone(),
                        operation: *op,
                        permission: *permission,
                    };
                    f.validate().map_err(CliError::Usage)?;
                    out.push(f);
                }
            }
        }
        Ok(out)
    }
}

fn print(bindings: &[AclBinding], output: Output) {
    match output {
        Output::Table => {
            let rows: Vec<Vec<String>> = bindings
                .iter()
                .map(|b| {
                    vec![
                        b.resource_type.to_string(),
                        b.resource_name.clone(),
                        b.pattern_type.to_string(),
                        b.principal.clone(),
                        b.host.clone(),
                        b.operation.to_string(),
                        b.permission.to_string(),
                    ]
                })
                .collect();
            super::print_table(
                &[
                    "RESOURCE",
                    "NAME",
                    "PATTERN",
                    "PRINCIPAL",
                    "HOST",
                    "OPERATION",
                    "PERMISSION",
                ],
                &[],
                &rows,
            );
        }
        Output::Json => {
            let v: Vec<serde_json::Value> = bindings.iter().map(AclBinding::to_json).collect();
            super::print_json(&v);
        }
    }
}

/// `strata acl add`: CreateAcls with every binding the flags name; prints them.
pub async fn add(args: AclArgs, output: Output) -> Result<(), CliError> {
    let bindings = args.bindings()?;
    AdminClient::connect(&args.bootstrap)
        .await?
        .create_acls(&bindings)
        .await?;
    print(&bindings, output);
    Ok(())
}

/// `strata acl list`: DescribeAcls for the flags' filters (everything without flags).
pub async fn list(args: AclArgs, output: Output) -> Result<(), CliError> {
    let filters = args.filters(false)?;
    let mut client = AdminClient::connect(&args.bootstrap).await?;
    let mut found: Vec<AclBinding> = Vec::new();
    for f in &filters {
        for b in client.describe_acls(f).await? {
            if !found.contains(&b) {
                found.push(b);
            }
        }
    }
    print(&found, output);
    Ok(())
}

/// `strata acl delete`: DeleteAcls for the flags' filters; prints what was removed.
pub async fn delete(args: AclArgs, output: Output) -> Result<(), CliError> {
    let filters = args.filters(true)?;
    let mut client = AdminClient::connect(&args.bootstrap).await?;
    let mut removed: Vec<AclBinding> = Vec::new();
    for f in &filters {
        for b in client.delete_acls(f).await? {
            if !removed.contains(&b) {
                removed.push(b);
            }
        }
    }
    print(&removed, output);
    Ok(())
}
