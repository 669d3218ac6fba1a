//! Kafka ACLs on the wire: CreateAcls, DescribeAcls, DeleteAcls, and the enforcement of ACLs
//! on every other request.
//!
//! The rules live in `strata_meta::acl` (a pure value in the metadata state); this module
//! converts wire codes to and from them and applies them to requests. With
//! `kafka.authorizer = "acl"`, each connection carries an [`Authorizer`] (its principal —
//! `User:<sasl user>`, or `User:ANONYMOUS` without SASL — and its client IP). `handlers::dispatch`
//! makes one call to [`gate`] after decoding a request and one to [`finish`] on the response:
//!
//! - `gate` either refuses the whole request (group membership, cluster-level APIs) with the
//!   response Kafka gives, or removes the resources the principal may not touch from the
//!   request and remembers them as [`Denied`];
//! - `finish` adds the per-resource authorization errors for those to the handler's response,
//!   and drops from "list everything" answers (Metadata, ListGroups) what may not be described.
//!
//! Produce is the exception: its topics are checked by `gate` too, but the handler marks the
//! denied ones itself (its response is built after the append, see `handlers::produce`).
//!
//! Which operation each API needs follows Kafka's `KafkaApis` (see docs/security.md).
//!
//! *Authorized operations.* When a Metadata (v8+), DescribeCluster or DescribeGroups (v3+)
//! request asks for them, [`operations_wanted`] notes it and [`fill_operations`] answers the
//! bitfield Kafka's `AuthHelper.authorizedOperations` computes: one bit (`1 << code`) per
//! operation the resource type supports that the principal is allowed (implied ones
//! included); every supported operation without an authorizer; `i32::MIN` when not asked.

use crate::config::KafkaSection;
use crate::node::Node;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResult;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    alter_configs_response, alter_user_scram_credentials_response::AlterUserScramCredentialsResult,
    create_partitions_response, incremental_alter_configs_response,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsResponse, CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest,
    DeleteAclsResponse, DescribeAclsRequest, DescribeAclsResponse, DescribeClusterResponse,
    DescribeLogDirsResponse, DescribeUserScramCredentialsResponse, FindCoordinatorResponse,
    HeartbeatResponse, InitProducerIdResponse, JoinGroupResponse, LeaveGroupResponse,
    OffsetCommitResponse, OffsetDeleteResponse, OffsetFetchResponse, ProducerId, RequestKind,
    ResponseKind, SyncGroupResponse, TopicName as WireTopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;
use std::collections::HashSet;
use std::sync::Arc;
use strata_meta::acl::{
    AclBinding, AclBindingFilter, AclOperation as Op, AclPermission, AuthzPolicy, PatternType,
    ResourceType as Rt, CLUSTER_RESOURCE_NAME,
};
use strata_meta::{Command, CommandResult};

/// The principal of a connection that did not authenticate.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// Checks `kafka.authorizer`, `kafka.super_users`: the error names the key.
pub fn check_config(k: &KafkaSection) -> Result<(), (&'static str, String)> {
    match k.authorizer.as_str() {
        "none" | "acl" => {}
        other => {
            return Err((
                "kafka.authorizer",
                format!("unknown authorizer `{other}`; expected none or acl"),
            ))
        }
    }
    for s in &k.super_users {
        strata_meta::acl::parse_principal(s).map_err(|m| ("kafka.super_users", m))?;
    }
    Ok(())
}

struct Who {
    principal: String,
    host: String,
    /// The SASL user this was built for (to notice a change).
    user: Option<String>,
    policy: AuthzPolicy,
}

/// A connection's view of the authorizer: nobody (authorizer `none`) or a principal at a host.
#[derive(Clone, Default)]
pub struct Authorizer {
    who: Option<Arc<Who>>,
}

impl Authorizer {
    /// The authorizer of a connection from `host` as `user` (None: not authenticated).
    pub fn for_connection(node: &Node, user: Option<&str>, host: std::net::IpAddr) -> Self {
        let k = &node.config.file.kafka;
        if k.authorizer != "acl" {
            return Self::default();
        }
        Self {
            who: Some(Arc::new(Who {
                principal: user.map_or_else(|| ANONYMOUS.to_string(), |u| format!("User:{u}")),
                host: host.to_string(),
                user: user.map(str::to_string),
                policy: AuthzPolicy {
                    super_users: k.super_users.clone(),
                    allow_everyone_if_no_acl_found: k.allow_everyone_if_no_acl_found,
                },
            })),
        }
    }

    /// Rebuilds after the connection authenticated as another user; cheap when nothing changed.
    pub fn refresh(&mut self, node: &Node, user: Option<&str>, host: std::net::IpAddr) {
        if let Some(who) = &self.who {
            if who.user.as_deref() != user {
                *self = Self::for_connection(node, user, host);
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.who.is_some()
    }

    /// The one authorization question: may this connection do `op` on (`ty`, `name`)?
    pub fn allows(&self, node: &Node, op: Op, ty: Rt, name: &str) -> bool {
        let Some(who) = &self.who else {
            return true;
        };
        let allowed =
            node.meta
                .read()
                .acls()
                .authorize(&who.policy, &who.principal, &who.host, op, ty, name);
        if !allowed {
            tracing::debug!(principal = %who.principal, host = %who.host, ?op, ?ty, name, "denied");
        }
        allowed
    }

    fn allows_any(&self, node: &Node, op: Op, ty: Rt) -> bool {
        let Some(who) = &self.who else {
            return true;
        };
        node.meta
            .read()
            .acls()
            .authorize_any(&who.policy, &who.principal, &who.host, op, ty)
    }

    fn cluster(&self, node: &Node, op: Op) -> bool {
        self.allows(node, op, Rt::Cluster, CLUSTER_RESOURCE_NAME)
    }

    fn topic(&self, node: &Node, op: Op, name: &str) -> bool {
        self.allows(node, op, Rt::Topic, name)
    }

    fn group(&self, node: &Node, op: Op, name: &str) -> bool {
        self.allows(node, op, Rt::Group, name)
    }
}

// ---------------------------------------------------------------------------------------------
// Wire codes (Kafka's `ResourceType`, `PatternType`, `AclOperation`, `AclPermissionType`).

fn resource_type(code: i8) -> Option<Rt> {
    Some(match code {
        1 => Rt::Any,
        2 => Rt::Topic,
        3 => Rt::Group,
        4 => Rt::Cluster,
        5 => Rt::TransactionalId,
        _ => return None,
    })
}

fn resource_type_code(t: Rt) -> i8 {
    match t {
        Rt::Any => 1,
        Rt::Topic => 2,
        Rt::Group => 3,
        Rt::Cluster => 4,
        Rt::TransactionalId => 5,
    }
}

fn pattern_type(code: i8) -> Option<PatternType> {
    Some(match code {
        1 => PatternType::Any,
        2 => PatternType::Match,
        3 => PatternType::Literal,
        4 => PatternType::Prefixed,
        _ => return None,
    })
}

fn pattern_type_code(p: PatternType) -> i8 {
    match p {
        PatternType::Any => 1,
        PatternType::Match => 2,
        PatternType::Literal => 3,
        PatternType::Prefixed => 4,
    }
}

fn operation(code: i8) -> Option<Op> {
    Some(match code {
        1 => Op::Any,
        2 => Op::All,
        3 => Op::Read,
        4 => Op::Write,
        5 => Op::Create,
        6 => Op::Delete,
        7 => Op::Alter,
        8 => Op::Describe,
        9 => Op::ClusterAction,
        10 => Op::DescribeConfigs,
        11 => Op::AlterConfigs,
        12 => Op::IdempotentWrite,
        _ => return None,
    })
}

fn operation_code(o: Op) -> i8 {
    match o {
        Op::Any => 1,
        Op::All => 2,
        Op::Read => 3,
        Op::Write => 4,
        Op::Create => 5,
        Op::Delete => 6,
        Op::Alter => 7,
        Op::Describe => 8,
        Op::ClusterAction => 9,
        Op::DescribeConfigs => 10,
        Op::AlterConfigs => 11,
        Op::IdempotentWrite => 12,
    }
}

fn permission(code: i8) -> Option<AclPermission> {
    Some(match code {
        1 => AclPermission::Any,
        2 => AclPermission::Deny,
        3 => AclPermission::Allow,
        _ => return None,
    })
}

fn permission_code(p: AclPermission) -> i8 {
    match p {
        AclPermission::Any => 1,
        AclPermission::Deny => 2,
        AclPermission::Allow => 3,
    }
}

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// A filter from its wire fields; the error says which field is unknown.
fn filter(
    (rt, name, pt, principal, host, op, perm): (
        i8,
        Option<&StrBytes>,
        i8,
        Option<&StrBytes>,
        Option<&StrBytes>,
        i8,
        i8,
    ),
) -> Result<AclBindingFilter, String> {
    let f = AclBindingFilter {
        resource_type: resource_type(rt).ok_or(format!("unknown resource type {rt}"))?,
        pattern_type: pattern_type(pt).ok_or(format!("unknown pattern type {pt}"))?,
        resource_name: name.map(|s| s.to_string()),
        principal: principal.map(|s| s.to_string()),
        host: host.map(|s| s.to_string()),
        operation: operation(op).ok_or(format!("unknown operation {op}"))?,
        permission: permission(perm).ok_or(format!("unknown permission type {perm}"))?,
    };
    f.validate()?;
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// CreateAcls, DescribeAcls, DeleteAcls.

/// The ACL APIs; `None` for any other request.
pub async fn handle(
    node: &Arc<Node>,
    authz: &Authorizer,
    request: RequestKind,
) -> Option<ResponseKind> {
    Some(match request {
        RequestKind::CreateAcls(req) => {
            ResponseKind::CreateAcls(create_acls(node, authz, req).await)
        }
        RequestKind::DescribeAcls(req) => {
            ResponseKind::DescribeAcls(describe_acls(node, authz, req))
        }
        RequestKind::DeleteAcls(req) => {
            ResponseKind::DeleteAcls(delete_acls(node, authz, req).await)
        }
        _ => return None,
    })
}

/// `SECURITY_DISABLED` without an authorizer, `CLUSTER_AUTHORIZATION_FAILED` without `op` on
/// the cluster; `None` when the caller may go on.
fn admit(node: &Node, authz: &Authorizer, op: Op) -> Option<(i16, String)> {
    if !authz.enabled() {
        return Some((
            E::SecurityDisabled.code(),
            "no authorizer is configured on the broker (kafka.authorizer = \"none\")".into(),
        ));
    }
    if !authz.cluster(node, op) {
        return Some((
            E::ClusterAuthorizationFailed.code(),
            format!("{op} on the cluster is required"),
        ));
    }
    None
}

async fn create_acls(
    node: &Arc<Node>,
    authz: &Authorizer,
    req: CreateAclsRequest,
) -> CreateAclsResponse {
    let result = |code: i16, message: Option<String>| {
        AclCreationResult::default()
            .with_error_code(code)
            .with_error_message(message.map(text))
    };
    if let Some((code, message)) = admit(node, authz, Op::Alter) {
        return CreateAclsResponse::default().with_results(
            req.creations
                .iter()
                .map(|_| result(code, Some(message.clone())))
                .collect(),
        );
    }
    // Decode each creation; the well-formed ones go to metadata in one command.
    let decoded: Vec<Result<AclBinding, String>> = req
        .creations
        .iter()
        .map(|c| {
            let b = AclBinding {
                resource_type: resource_type(c.resource_type)
                    .ok_or(format!("unknown resource type {}", c.resource_type))?,
                pattern_type: pattern_type(c.resource_pattern_type)
                    .ok_or(format!("unknown pattern type {}", c.resource_pattern_type))?,
                resource_name: c.resource_name.to_string(),
                principal: c.principal.to_string(),
                host: c.host.to_string(),
                operation: operation(c.operation)
                    .ok_or(format!("unknown operation {}", c.operation))?,
                permission: permission(c.permission_type)
                    .ok_or(format!("unknown permission type {}", c.permission_type))?,
            };
            b.validate()?;
            Ok(b)
        })
        .collect();
    let valid: Vec<AclBinding> = decoded
        .iter()
        .filter_map(|d| d.as_ref().ok().cloned())
        .collect();
    let mut outcomes = match valid.is_empty() {
        true => Ok(Vec::new()),
        false => match node.meta.write(Command::CreateAcls { acls: valid }).await {
            Ok(CommandResult::AclsCreated(outcomes)) => Ok(outcomes),
            Ok(other) => Err((
                E::UnknownServerError.code(),
                format!("unexpected {other:?}"),
            )),
            Err(e) => Err((E::RequestTimedOut.code(), e.to_string())),
        },
    }
    .map(Vec::into_iter);
    let results = decoded
        .into_iter()
        .map(|d| match d {
            Err(reason) => result(E::InvalidRequest.code(), Some(reason)),
            Ok(_) => match &mut outcomes {
                Ok(it) => match it.next().flatten() {
                    None => result(0, None),
                    Some(reason) => result(E::InvalidRequest.code(), Some(reason)),
                },
                Err((code, message)) => result(*code, Some(message.clone())),
            },
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

fn describe_acls(
    node: &Node,
    authz: &Authorizer,
    req: DescribeAclsRequest,
) -> DescribeAclsResponse {
    let refuse = |code: i16, message: String| {
        DescribeAclsResponse::default()
            .with_error_code(code)
            .with_error_message(Some(text(message)))
    };
    if let Some((code, message)) = admit(node, authz, Op::Describe) {
        return refuse(code, message);
    }
    let f = match filter((
        req.resource_type_filter,
        req.resource_name_filter.as_ref(),
        req.pattern_type_filter,
        req.principal_filter.as_ref(),
        req.host_filter.as_ref(),
        req.operation,
        req.permission_type,
    )) {
        Ok(f) => f,
        Err(reason) => return refuse(E::InvalidRequest.code(), reason),
    };
    let found = node.meta.read().acls().describe(&f);
    // One resource per (type, name, pattern), in the set's order (which sorts by those first).
    let mut resources: Vec<DescribeAclsResource> = Vec::new();
    for b in found {
        let same = resources.last().is_some_and(|r| {
            r.resource_type == resource_type_code(b.resource_type)
                && r.pattern_type == pattern_type_code(b.pattern_type)
                && r.resource_name.as_str() == b.resource_name
        });
        if !same {
            resources.push(
                DescribeAclsResource::default()
                    .with_resource_type(resource_type_code(b.resource_type))
                    .with_resource_name(text(b.resource_name.clone()))
                    .with_pattern_type(pattern_type_code(b.pattern_type)),
            );
        }
        if let Some(r) = resources.last_mut() {
            r.acls.push(
                AclDescription::default()
                    .with_principal(text(b.principal))
                    .with_host(text(b.host))
                    .with_operation(operation_code(b.operation))
                    .with_permission_type(permission_code(b.permission)),
            );
        }
    }
    DescribeAclsResponse::default().with_resources(resources)
}

async fn delete_acls(
    node: &Arc<Node>,
    authz: &Authorizer,
    req: DeleteAclsRequest,
) -> DeleteAclsResponse {
    let refused = |code: i16, message: String| {
        DeleteAclsFilterResult::default()
            .with_error_code(code)
            .with_error_message(Some(text(message)))
    };
    if let Some((code, message)) = admit(node, authz, Op::Alter) {
        return DeleteAclsResponse::default().with_filter_results(
            req.filters
                .iter()
                .map(|_| refused(code, message.clone()))
                .collect(),
        );
    }
    let decoded: Vec<Result<AclBindingFilter, String>> = req
        .filters
        .iter()
        .map(|f| {
            filter((
                f.resource_type_filter,
                f.resource_name_filter.as_ref(),
                f.pattern_type_filter,
                f.principal_filter.as_ref(),
                f.host_filter.as_ref(),
                f.operation,
                f.permission_type,
            ))
        })
        .collect();
    let valid: Vec<AclBindingFilter> = decoded
        .iter()
        .filter_map(|d| d.as_ref().ok().cloned())
        .collect();
    let mut outcomes = match valid.is_empty() {
        true => Ok(Vec::new()),
        false => match node
            .meta
            .write(Command::DeleteAcls { filters: valid })
            .await
        {
            Ok(CommandResult::AclsDeleted(outcomes)) => Ok(outcomes),
            Ok(other) => Err((
                E::UnknownServerError.code(),
                format!("unexpected {other:?}"),
            )),
            Err(e) => Err((E::RequestTimedOut.code(), e.to_string())),
        },
    }
    .map(Vec::into_iter);
    let matching = |b: AclBinding| {
        DeleteAclsMatchingAcl::default()
            .with_resource_type(resource_type_code(b.resource_type))
            .with_resource_name(text(b.resource_name))
            .with_pattern_type(pattern_type_code(b.pattern_type))
            .with_principal(text(b.principal))
            .with_host(text(b.host))
            .with_operation(operation_code(b.operation))
            .with_permission_type(permission_code(b.permission))
    };
    let results = decoded
        .into_iter()
        .map(|d| match d {
            Err(reason) => refused(E::InvalidRequest.code(), reason),
            Ok(_) => match &mut outcomes {
                Ok(it) => match it.next() {
                    Some(Ok(removed)) => DeleteAclsFilterResult::default()
                        .with_matching_acls(removed.into_iter().map(matching).collect()),
                    Some(Err(reason)) => refused(E::InvalidRequest.code(), reason),
                    None => refused(
                        E::UnknownServerError.code(),
                        "no answer for the filter".into(),
                    ),
                },
                Err((code, message)) => refused(*code, message.clone()),
            },
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}

// ---------------------------------------------------------------------------------------------
// Enforcement.

/// What [`gate`] took out of a request, to be answered by [`finish`].
#[derive(Default)]
pub enum Denied {
    #[default]
    Nothing,
    /// Produce: topics the principal may not write (`handlers::produce` answers them).
    ProduceTopics(HashSet<String>),
    Fetch(Vec<FetchableTopicResponse>),
    ListOffsets(Vec<ListOffsetsTopicResponse>),
    /// Named topics refused, and: drop every other topic the principal may not describe.
    Metadata(Vec<MetadataResponseTopic>),
    CreateTopics(Vec<CreatableTopicResult>),
    DeleteTopics(Vec<DeletableTopicResult>),
    CreatePartitions(Vec<create_partitions_response::CreatePartitionsTopicResult>),
    DescribeConfigs(Vec<DescribeConfigsResult>),
    AlterConfigs(Vec<alter_configs_response::AlterConfigsResourceResponse>),
    IncrementalAlterConfigs(Vec<incremental_alter_configs_response::AlterConfigsResourceResponse>),
    DeleteRecords(Vec<DeleteRecordsTopicResult>),
    OffsetForLeaderEpoch(Vec<OffsetForLeaderTopicResult>),
    OffsetCommit(Vec<OffsetCommitResponseTopic>),
    OffsetDelete(Vec<OffsetDeleteResponseTopic>),
    OffsetFetchGroups(Vec<OffsetFetchResponseGroup>),
    DescribeGroups(Vec<DescribedGroup>),
    DeleteGroups(Vec<DeletableGroupResult>),
    FindCoordinator(Vec<Coordinator>),
    /// ListGroups without Describe on the cluster: keep only describable groups.
    ListGroups,
}

/// What [`gate`] decided.
pub enum Gate {
    /// Handle the (possibly narrowed) request, then [`finish`] with this.
    Pass(Denied),
    /// Answer this instead of handling the request; `None`: answer nothing (Produce acks=0).
    Refuse(Option<ResponseKind>),
}

fn topic_error(name: &str, what: Op) -> (i16, StrBytes) {
    (
        E::TopicAuthorizationFailed.code(),
        text(format!("{what} on topic `{name}` is not authorized")),
    )
}

/// Checks a request against the ACLs before it is handled. See the module docs.
pub fn gate(node: &Node, authz: &Authorizer, request: &mut RequestKind, version: i16) -> Gate {
    if !authz.enabled() {
        return Gate::Pass(Denied::Nothing);
    }
    let group_refused = E::GroupAuthorizationFailed.code();
    let cluster_refused = E::ClusterAuthorizationFailed.code();
    let denied = match request {
        RequestKind::Produce(req) => {
            if let Some(tid) = &req.transactional_id {
                if !authz.allows(node, Op::Write, Rt::TransactionalId, tid.0.as_str()) {
                    // Kafka answers TRANSACTIONAL_ID_AUTHORIZATION_FAILED for every partition;
                    // the handler refuses transactional produce anyway, so mark every topic.
                    let all = req
                        .topic_data
                        .iter()
                        .map(|t| t.name.0.to_string())
                        .collect();
                    return Gate::Pass(Denied::ProduceTopics(all));
                }
            }
            let set: HashSet<String> = req
                .topic_data
                .iter()
                .map(|t| t.name.0.to_string())
                .filter(|n| !authz.topic(node, Op::Write, n))
                .collect();
            if set.is_empty() {
                Denied::Nothing
            } else {
                Denied::ProduceTopics(set)
            }
        }
        RequestKind::Fetch(req) => {
            let mut out = Vec::new();
            req.topics.retain(|t| {
                let name = t.topic.0.as_str();
                if name.is_empty() || authz.topic(node, Op::Read, name) {
                    return true;
                }
                out.push(
                    FetchableTopicResponse::default()
                        .with_topic(t.topic.clone())
                        .with_topic_id(t.topic_id)
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    PartitionData::default()
                                        .with_partition_index(p.partition)
                                        .with_error_code(E::TopicAuthorizationFailed.code())
                                        .with_high_watermark(-1)
                                        .with_last_stable_offset(-1)
                                        .with_log_start_offset(-1)
                                })
                                .collect(),
                        ),
                );
                false
            });
            if !out.is_empty() {
                // The errors are ready now: do not long-poll on what is left.
                req.max_wait_ms = 0;
            }
            Denied::Fetch(out)
        }
        RequestKind::ListOffsets(req) => {
            let mut out = Vec::new();
            req.topics.retain(|t| {
                if authz.topic(node, Op::Describe, t.name.0.as_str()) {
                    return true;
                }
                out.push(
                    ListOffsetsTopicResponse::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    ListOffsetsPartitionResponse::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(E::TopicAuthorizationFailed.code())
                                        .with_timestamp(-1)
                                        .with_offset(-1)
                                })
                                .collect(),
                        ),
                );
                false
            });
            Denied::ListOffsets(out)
        }
        RequestKind::Metadata(req) => {
            let auto_create = node.config.file.kafka.auto_create_topics
                && (version < 4 || req.allow_auto_topic_creation);
            let may_create_any = auto_create && authz.cluster(node, Op::Create);
            let mut out = Vec::new();
            if let Some(topics) = &mut req.topics {
                topics.retain(|t| {
                    let Some(name) = &t.name else {
                        return true; // by id: `finish` drops it if undescribable
                    };
                    let name = name.0.as_str();
                    let ok = authz.topic(node, Op::Describe, name)
                        && (!auto_create
                            || may_create_any
                            || node.registry.topic(name).is_some()
                            || authz.topic(node, Op::Create, name));
                    if !ok {
                        out.push(
                            MetadataResponseTopic::default()
                                .with_name(Some(WireTopicName(text(name))))
                                .with_error_code(E::TopicAuthorizationFailed.code()),
                        );
                    }
                    ok
                });
            }
            Denied::Metadata(out)
        }
        RequestKind::CreateTopics(req) => {
            let cluster_create = authz.cluster(node, Op::Create);
            let mut out = Vec::new();
            req.topics.retain(|t| {
                let name = t.name.0.as_str();
                if cluster_create || authz.topic(node, Op::Create, name) {
                    return true;
                }
                let (code, message) = topic_error(name, Op::Create);
                out.push(
                    CreatableTopicResult::default()
                        .with_name(t.name.clone())
                        .with_error_code(code)
                        .with_error_message(Some(message))
                        .with_num_partitions(-1)
                        .with_replication_factor(-1),
                );
                false
            });
            Denied::CreateTopics(out)
        }
        RequestKind::DeleteTopics(req) => {
            let mut out = Vec::new();
            let mut refuse = |name: &str, id: uuid::Uuid| {
                let (code, message) = topic_error(name, Op::Delete);
                out.push(
                    DeletableTopicResult::default()
                        .with_name(Some(WireTopicName(text(name))))
                        .with_topic_id(id)
                        .with_error_code(code)
                        .with_error_message(Some(message)),
                );
            };
            req.topic_names.retain(|n| {
                let ok = authz.topic(node, Op::Delete, n.0.as_str());
                if !ok {
                    refuse(n.0.as_str(), uuid::Uuid::nil());
                }
                ok
            });
            req.topics.retain(|t| {
                let name = match &t.name {
                    Some(n) => Some(n.0.to_string()),
                    None => node
                        .registry
                        .topic_by_id(strata_types::TopicId(t.topic_id))
                        .map(|l| l.name.to_string()),
                };
                let Some(name) = name else {
                    return true; // unknown id: the handler answers it
                };
                let ok = authz.topic(node, Op::Delete, &name);
                if !ok {
                    refuse(&name, t.topic_id);
                }
                ok
            });
            Denied::DeleteTopics(out)
        }
        RequestKind::CreatePartitions(req) => {
            let mut out = Vec::new();
            req.topics.retain(|t| {
                let name = t.name.0.as_str();
                if authz.topic(node, Op::Alter, name) {
                    return true;
                }
                let (code, message) = topic_error(name, Op::Alter);
                out.push(
                    create_partitions_response::CreatePartitionsTopicResult::default()
                        .with_name(t.name.clone())
                        .with_error_code(code)
                        .with_error_message(Some(message)),
                );
                false
            });
            Denied::CreatePartitions(out)
        }
        RequestKind::DescribeConfigs(req) => {
            let mut out = Vec::new();
            req.resources.retain(|r| {
                match config_refusal(
                    node,
                    authz,
                    r.resource_type,
                    r.resource_name.as_str(),
                    Op::DescribeConfigs,
                ) {
                    None => true,
                    Some((code, message)) => {
                        out.push(
                            DescribeConfigsResult::default()
                                .with_error_code(code)
                                .with_error_message(Some(message))
                                .with_resource_type(r.resource_type)
                                .with_resource_name(r.resource_name.clone()),
                        );
                        false
                    }
                }
            });
            Denied::DescribeConfigs(out)
        }
        RequestKind::AlterConfigs(req) => {
            let mut out = Vec::new();
            req.resources.retain(|r| {
                match config_refusal(
                    node,
                    authz,
                    r.resource_type,
                    r.resource_name.as_str(),
                    Op::AlterConfigs,
                ) {
                    None => true,
                    Some((code, message)) => {
                        out.push(
                            alter_configs_response::AlterConfigsResourceResponse::default()
                                .with_error_code(code)
                                .with_error_message(Some(message))
                                .with_resource_type(r.resource_type)
                                .with_resource_name(r.resource_name.clone()),
                        );
                        false
                    }
                }
            });
            Denied::AlterConfigs(out)
        }
        RequestKind::IncrementalAlterConfigs(req) => {
            let mut out = Vec::new();
            req.resources.retain(|r| {
                match config_refusal(node, authz, r.resource_type, r.resource_name.as_str(), Op::AlterConfigs) {
                    None => true,
                    Some((code, message)) => {
                        out.push(
                            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                                .with_error_code(code)
                                .with_error_message(Some(message))
                                .with_resource_type(r.resource_type)
                                .with_resource_name(r.resource_name.clone()),
                        );
                        false
                    }
                }
            });
            Denied::IncrementalAlterConfigs(out)
        }
        RequestKind::DeleteRecords(req) => {
            let mut out = Vec::new();
            req.topics.retain(|t| {
                if authz.topic(node, Op::Delete, t.name.0.as_str()) {
                    return true;
                }
                out.push(
                    DeleteRecordsTopicResult::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    DeleteRecordsPartitionResult::default()
                                        .with_partition_index(p.partition_index)
                                        .with_low_watermark(-1)
                                        .with_error_code(E::TopicAuthorizationFailed.code())
                                })
                                .collect(),
                        ),
                );
                false
            });
            Denied::DeleteRecords(out)
        }
        RequestKind::OffsetForLeaderEpoch(req) => {
            let mut out = Vec::new();
            req.topics.retain(|t| {
                if authz.topic(node, Op::Describe, t.topic.0.as_str()) {
                    return true;
                }
                out.push(
                    OffsetForLeaderTopicResult::default()
                        .with_topic(t.topic.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    EpochEndOffset::default()
                                        .with_partition(p.partition)
                                        .with_error_code(E::TopicAuthorizationFailed.code())
                                        .with_leader_epoch(-1)
                                        .with_end_offset(-1)
                                })
                                .collect(),
                        ),
                );
                false
            });
            Denied::OffsetForLeaderEpoch(out)
        }
        RequestKind::DescribeCluster(_) => {
            if !authz.cluster(node, Op::Describe) {
                return Gate::Refuse(Some(ResponseKind::DescribeCluster(
                    DescribeClusterResponse::default()
                        .with_error_code(cluster_refused)
                        .with_error_message(Some(text("Describe on the cluster is required")))
                        .with_controller_id(kafka_protocol::messages::BrokerId(-1))
                        .with_cluster_authorized_operations(i32::MIN),
                )));
            }
            Denied::Nothing
        }
        RequestKind::DescribeLogDirs(_) => {
            if !authz.cluster(node, Op::Describe) {
                return Gate::Refuse(Some(ResponseKind::DescribeLogDirs(
                    DescribeLogDirsResponse::default().with_error_code(cluster_refused),
                )));
            }
            Denied::Nothing
        }
        RequestKind::DescribeUserScramCredentials(_) => {
            if !authz.cluster(node, Op::Describe) {
                return Gate::Refuse(Some(ResponseKind::DescribeUserScramCredentials(
                    DescribeUserScramCredentialsResponse::default()
                        .with_error_code(cluster_refused)
                        .with_error_message(Some(text("Describe on the cluster is required"))),
                )));
            }
            Denied::Nothing
        }
        RequestKind::AlterUserScramCredentials(req) => {
            if !authz.cluster(node, Op::Alter) {
                let users = req
                    .deletions
                    .iter()
                    .map(|d| &d.name)
                    .chain(req.upsertions.iter().map(|u| &u.name));
                let results = users
                    .map(|u| {
                        AlterUserScramCredentialsResult::default()
                            .with_user(u.clone())
                            .with_error_code(cluster_refused)
                            .with_error_message(Some(text("Alter on the cluster is required")))
                    })
                    .collect();
                return Gate::Refuse(Some(ResponseKind::AlterUserScramCredentials(
                    AlterUserScramCredentialsResponse::default().with_results(results),
                )));
            }
            Denied::Nothing
        }
        RequestKind::InitProducerId(req) => {
            let refused = match &req.transactional_id {
                Some(tid) => (!authz.allows(node, Op::Write, Rt::TransactionalId, tid.0.as_str()))
                    .then_some(E::TransactionalIdAuthorizationFailed.code()),
                None => (!authz.cluster(node, Op::IdempotentWrite)
                    && !authz.allows_any(node, Op::Write, Rt::Topic))
                .then_some(cluster_refused),
            };
            if let Some(code) = refused {
                return Gate::Refuse(Some(ResponseKind::InitProducerId(
                    InitProducerIdResponse::default()
                        .with_error_code(code)
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1),
                )));
            }
            Denied::Nothing
        }
        // Group membership: Read on the group, or the whole request is refused.
        RequestKind::JoinGroup(req) => {
            if !authz.group(node, Op::Read, req.group_id.0.as_str()) {
                return Gate::Refuse(Some(ResponseKind::JoinGroup(
                    JoinGroupResponse::default()
                        .with_error_code(group_refused)
                        .with_generation_id(-1)
                        .with_member_id(req.member_id.clone()),
                )));
            }
            Denied::Nothing
        }
        RequestKind::SyncGroup(req) => {
            if !authz.group(node, Op::Read, req.group_id.0.as_str()) {
                return Gate::Refuse(Some(ResponseKind::SyncGroup(
                    SyncGroupResponse::default().with_error_code(group_refused),
                )));
            }
            Denied::Nothing
        }
        RequestKind::Heartbeat(req) => {
            if !authz.group(node, Op::Read, req.group_id.0.as_str()) {
                return Gate::Refuse(Some(ResponseKind::Heartbeat(
                    HeartbeatResponse::default().with_error_code(group_refused),
                )));
            }
            Denied::Nothing
        }
        RequestKind::LeaveGroup(req) => {
            if !authz.group(node, Op::Read, req.group_id.0.as_str()) {
                return Gate::Refuse(Some(ResponseKind::LeaveGroup(
                    LeaveGroupResponse::default().with_error_code(group_refused),
                )));
            }
            Denied::Nothing
        }
        RequestKind::OffsetCommit(req) => {
            let group_ok = authz.group(node, Op::Read, req.group_id.0.as_str());
            let mut out = Vec::new();
            req.topics.retain(|t| {
                let code = if !group_ok {
                    group_refused
                } else if !authz.topic(node, Op::Read, t.name.0.as_str()) {
                    E::TopicAuthorizationFailed.code()
                } else {
                    return true;
                };
                out.push(
                    OffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_topic_id(t.topic_id)
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    OffsetCommitResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(code)
                                })
                                .collect(),
                        ),
                );
                false
            });
            if !group_ok {
                return Gate::Refuse(Some(ResponseKind::OffsetCommit(
                    OffsetCommitResponse::default().with_topics(out),
                )));
            }
            Denied::OffsetCommit(out)
        }
        RequestKind::OffsetFetch(req) => {
            if version < 8 {
                if !authz.group(node, Op::Describe, req.group_id.0.as_str()) {
                    return Gate::Refuse(Some(ResponseKind::OffsetFetch(
                        OffsetFetchResponse::default().with_error_code(group_refused),
                    )));
                }
                Denied::Nothing
            } else {
                let mut out = Vec::new();
                req.groups.retain(|g| {
                    if authz.group(node, Op::Describe, g.group_id.0.as_str()) {
                        return true;
                    }
                    out.push(
                        OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id.clone())
                            .with_error_code(group_refused),
                    );
                    false
                });
                Denied::OffsetFetchGroups(out)
            }
        }
        RequestKind::DescribeGroups(req) => {
            let mut out = Vec::new();
            req.groups.retain(|g| {
                if authz.group(node, Op::Describe, g.0.as_str()) {
                    return true;
                }
                out.push(
                    DescribedGroup::default()
                        .with_group_id(g.clone())
                        .with_error_code(group_refused)
                        .with_authorized_operations(i32::MIN),
                );
                false
            });
            Denied::DescribeGroups(out)
        }
        RequestKind::DeleteGroups(req) => {
            let mut out = Vec::new();
            req.groups_names.retain(|g| {
                if authz.group(node, Op::Delete, g.0.as_str()) {
                    return true;
                }
                out.push(
                    DeletableGroupResult::default()
                        .with_group_id(g.clone())
                        .with_error_code(group_refused),
                );
                false
            });
            Denied::DeleteGroups(out)
        }
        RequestKind::OffsetDelete(req) => {
            if !authz.group(node, Op::Delete, req.group_id.0.as_str()) {
                return Gate::Refuse(Some(ResponseKind::OffsetDelete(
                    OffsetDeleteResponse::default().with_error_code(group_refused),
                )));
            }
            // Kafka also wants Read on each topic whose offsets are deleted.
            let mut out = Vec::new();
            req.topics.retain(|t| {
                if authz.topic(node, Op::Read, t.name.0.as_str()) {
                    return true;
                }
                out.push(
                    OffsetDeleteResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    OffsetDeleteResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(E::TopicAuthorizationFailed.code())
                                })
                                .collect(),
                        ),
                );
                false
            });
            Denied::OffsetDelete(out)
        }
        RequestKind::ListGroups(_) => {
            if authz.cluster(node, Op::Describe) {
                Denied::Nothing
            } else {
                Denied::ListGroups
            }
        }
        RequestKind::FindCoordinator(req) => {
            // Kafka: Describe on the group (key type 0) or the transactional id (1).
            let ty = if req.key_type == 1 {
                Rt::TransactionalId
            } else {
                Rt::Group
            };
            let code = if req.key_type == 1 {
                E::TransactionalIdAuthorizationFailed.code()
            } else {
                group_refused
            };
            if version < 4 {
                if !authz.allows(node, Op::Describe, ty, req.key.as_str()) {
                    return Gate::Refuse(Some(ResponseKind::FindCoordinator(
                        FindCoordinatorResponse::default()
                            .with_error_code(code)
                            .with_node_id(kafka_protocol::messages::BrokerId(-1))
                            .with_host(text(""))
                            .with_port(-1),
                    )));
                }
                Denied::Nothing
            } else {
                let mut out = Vec::new();
                req.coordinator_keys.retain(|k| {
                    if authz.allows(node, Op::Describe, ty, k.as_str()) {
                        return true;
                    }
                    out.push(
                        Coordinator::default()
                            .with_key(k.clone())
                            .with_node_id(kafka_protocol::messages::BrokerId(-1))
                            .with_port(-1)
                            .with_error_code(code),
                    );
                    false
                });
                Denied::FindCoordinator(out)
            }
        }
        _ => Denied::Nothing,
    };
    Gate::Pass(denied)
}

/// Config resources: topics (type 2) need `op` on the topic; brokers (4) and broker loggers (8)
/// need it on the cluster.
fn config_refusal(
    node: &Node,
    authz: &Authorizer,
    ty: i8,
    name: &str,
    op: Op,
) -> Option<(i16, StrBytes)> {
    match ty {
        2 if !authz.topic(node, op, name) => Some(topic_error(name, op)),
        4 | 8 if !authz.cluster(node, op) => Some((
            E::ClusterAuthorizationFailed.code(),
            text(format!("{op} on the cluster is required")),
        )),
        _ => None,
    }
}

/// Adds what [`gate`] denied to the handler's response, and hides from "everything" answers
/// what the principal may not describe.
pub fn finish(node: &Node, authz: &Authorizer, denied: Denied, body: &mut ResponseKind) {
    if !authz.enabled() {
        return;
    }
    match (denied, body) {
        (Denied::Fetch(d), ResponseKind::Fetch(r)) => r.responses.extend(d),
        (Denied::ListOffsets(d), ResponseKind::ListOffsets(r)) => r.topics.extend(d),
        (Denied::Metadata(d), ResponseKind::Metadata(r)) => {
            r.topics.retain(|t| match &t.name {
                Some(n) => t.error_code != 0 || authz.topic(node, Op::Describe, n.0.as_str()),
                None => true,
            });
            r.topics.extend(d);
        }
        (Denied::CreateTopics(d), ResponseKind::CreateTopics(r)) => r.topics.extend(d),
        (Denied::DeleteTopics(d), ResponseKind::DeleteTopics(r)) => r.responses.extend(d),
        (Denied::CreatePartitions(d), ResponseKind::CreatePartitions(r)) => r.results.extend(d),
        (Denied::DescribeConfigs(d), ResponseKind::DescribeConfigs(r)) => r.results.extend(d),
        (Denied::AlterConfigs(d), ResponseKind::AlterConfigs(r)) => r.responses.extend(d),
        (Denied::IncrementalAlterConfigs(d), ResponseKind::IncrementalAlterConfigs(r)) => {
            r.responses.extend(d)
        }
        (Denied::DeleteRecords(d), ResponseKind::DeleteRecords(r)) => r.topics.extend(d),
        (Denied::OffsetForLeaderEpoch(d), ResponseKind::OffsetForLeaderEpoch(r)) => {
            r.topics.extend(d)
        }
        (Denied::OffsetCommit(d), ResponseKind::OffsetCommit(r)) => r.topics.extend(d),
        (Denied::OffsetDelete(d), ResponseKind::OffsetDelete(r)) => r.topics.extend(d),
        (Denied::OffsetFetchGroups(d), ResponseKind::OffsetFetch(r)) => {
            r.groups.extend(d);
            hide_offsets(node, authz, r);
        }
        (Denied::Nothing, ResponseKind::OffsetFetch(r)) => hide_offsets(node, authz, r),
        (Denied::DescribeGroups(d), ResponseKind::DescribeGroups(r)) => r.groups.extend(d),
        (Denied::DeleteGroups(d), ResponseKind::DeleteGroups(r)) => r.results.extend(d),
        (Denied::FindCoordinator(d), ResponseKind::FindCoordinator(r)) => r.coordinators.extend(d),
        (Denied::ListGroups, ResponseKind::ListGroups(r)) => r
            .groups
            .retain(|g| authz.group(node, Op::Describe, g.group_id.0.as_str())),
        _ => {}
    }
}

/// OffsetFetch: committed offsets of topics the principal may not describe are not shown;
/// their partitions answer TOPIC_AUTHORIZATION_FAILED.
fn hide_offsets(node: &Node, authz: &Authorizer, r: &mut OffsetFetchResponse) {
    let refused = E::TopicAuthorizationFailed.code();
    for t in &mut r.topics {
        if !authz.topic(node, Op::Describe, t.name.0.as_str()) {
            for p in &mut t.partitions {
                p.error_code = refused;
                p.committed_offset = -1;
                p.metadata = None;
            }
        }
    }
    for g in &mut r.groups {
        for t in &mut g.topics {
            if !authz.topic(node, Op::Describe, t.name.0.as_str()) {
                for p in &mut t.partitions {
                    p.error_code = refused;
                    p.committed_offset = -1;
                    p.metadata = None;
                }
            }
        }
    }
}

/// Produce: the error of a partition whose topic the principal may not write.
pub fn produce_denied(denied: &Denied, topic: &str) -> Option<(i16, String)> {
    match denied {
        Denied::ProduceTopics(set) if set.contains(topic) => Some((
            E::TopicAuthorizationFailed.code(),
            format!("Write on topic `{topic}` is not authorized"),
        )),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Authorized operations (KIP-430).

/// The `*_authorized_operations` a request asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OperationsWanted {
    cluster: bool,
    topics: bool,
    groups: bool,
}

/// What `request` asks to be told about the principal's operations.
pub fn operations_wanted(request: &RequestKind, version: i16) -> OperationsWanted {
    match request {
        RequestKind::Metadata(r) if version >= 8 => OperationsWanted {
            cluster: r.include_cluster_authorized_operations,
            topics: r.include_topic_authorized_operations,
            groups: false,
        },
        RequestKind::DescribeCluster(r) => OperationsWanted {
            cluster: r.include_cluster_authorized_operations,
            ..Default::default()
        },
        RequestKind::DescribeGroups(r) if version >= 3 => OperationsWanted {
            groups: r.include_authorized_operations,
            ..Default::default()
        },
        _ => OperationsWanted::default(),
    }
}

/// The operations Kafka reports for a resource type (`AclEntry.supportedOperations`).
fn supported_operations(ty: Rt) -> &'static [Op] {
    match ty {
        Rt::Topic => &[
            Op::Read,
            Op::Write,
            Op::Create,
            Op::Describe,
            Op::Delete,
            Op::Alter,
            Op::DescribeConfigs,
            Op::AlterConfigs,
        ],
        Rt::Group => &[Op::Read, Op::Describe, Op::Delete],
        Rt::Cluster => &[
            Op::Create,
            Op::ClusterAction,
            Op::DescribeConfigs,
            Op::AlterConfigs,
            Op::IdempotentWrite,
            Op::Alter,
            Op::Describe,
        ],
        Rt::TransactionalId => &[Op::Describe, Op::Write],
        Rt::Any => &[],
    }
}

/// Kafka's bitfield of the operations the connection may do on (`ty`, `name`).
pub fn authorized_operations(node: &Node, authz: &Authorizer, ty: Rt, name: &str) -> i32 {
    supported_operations(ty)
        .iter()
        .filter(|op| authz.allows(node, **op, ty, name))
        .fold(0i32, |bits, op| bits | (1 << operation_code(*op)))
}

/// Fills the authorized-operation fields `wanted` asks for. Resources answered with an error
/// keep `i32::MIN` (as Kafka leaves them).
pub fn fill_operations(
    node: &Node,
    authz: &Authorizer,
    wanted: OperationsWanted,
    body: &mut ResponseKind,
) {
    if wanted == OperationsWanted::default() {
        return;
    }
    let cluster = || authorized_operations(node, authz, Rt::Cluster, CLUSTER_RESOURCE_NAME);
    match body {
        ResponseKind::Metadata(r) => {
            if wanted.cluster {
                r.cluster_authorized_operations = cluster();
            }
            if wanted.topics {
                for t in r.topics.iter_mut().filter(|t| t.error_code == 0) {
                    if let Some(name) = &t.name {
                        t.topic_authorized_operations =
                            authorized_operations(node, authz, Rt::Topic, name.0.as_str());
                    }
                }
            }
        }
        ResponseKind::DescribeCluster(r) if wanted.cluster && r.error_code == 0 => {
            r.cluster_authorized_operations = cluster();
        }
        ResponseKind::DescribeGroups(r) if wanted.groups => {
            for g in r.groups.iter_mut().filter(|g| g.error_code == 0) {
                g.authorized_operations =
                    authorized_operations(node, authz, Rt::Group, g.group_id.0.as_str());
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The client side (`kafka::client`, `strata acl`): bindings and filters to and from the wire.

/// A binding as a CreateAcls creation.
pub fn creation(b: &AclBinding) -> kafka_protocol::messages::create_acls_request::AclCreation {
    kafka_protocol::messages::create_acls_request::AclCreation::default()
        .with_resource_type(resource_type_code(b.resource_type))
        .with_resource_name(text(b.resource_name.clone()))
        .with_resource_pattern_type(pattern_type_code(b.pattern_type))
        .with_principal(text(b.principal.clone()))
        .with_host(text(b.host.clone()))
        .with_operation(operation_code(b.operation))
        .with_permission_type(permission_code(b.permission))
}

/// A filter as a DescribeAcls request.
pub fn describe_request(f: &AclBindingFilter) -> DescribeAclsRequest {
    DescribeAclsRequest::default()
        .with_resource_type_filter(resource_type_code(f.resource_type))
        .with_resource_name_filter(f.resource_name.clone().map(text))
        .with_pattern_type_filter(pattern_type_code(f.pattern_type))
        .with_principal_filter(f.principal.clone().map(text))
        .with_host_filter(f.host.clone().map(text))
        .with_operation(operation_code(f.operation))
        .with_permission_type(permission_code(f.permission))
}

/// A filter as a DeleteAcls filter.
pub fn delete_filter(
    f: &AclBindingFilter,
) -> kafka_protocol::messages::delete_acls_request::DeleteAclsFilter {
    kafka_protocol::messages::delete_acls_request::DeleteAclsFilter::default()
        .with_resource_type_filter(resource_type_code(f.resource_type))
        .with_resource_name_filter(f.resource_name.clone().map(text))
        .with_pattern_type_filter(pattern_type_code(f.pattern_type))
        .with_principal_filter(f.principal.clone().map(text))
        .with_host_filter(f.host.clone().map(text))
        .with_operation(operation_code(f.operation))
        .with_permission_type(permission_code(f.permission))
}

#[allow(clippy::too_many_arguments)]
fn binding(
    rt: i8,
    name: &StrBytes,
    pt: i8,
    principal: &StrBytes,
    host: &StrBytes,
    op: i8,
    perm: i8,
) -> Option<AclBinding> {
    Some(AclBinding {
        resource_type: resource_type(rt)?,
        pattern_type: pattern_type(pt)?,
        resource_name: name.to_string(),
        principal: principal.to_string(),
        host: host.to_string(),
        operation: operation(op)?,
        permission: permission(perm)?,
    })
}

/// The bindings of a DescribeAcls response (values this broker does not know are skipped).
pub fn described(resp: &DescribeAclsResponse) -> Vec<AclBinding> {
    resp.resources
        .iter()
        .flat_map(|r| {
            r.acls.iter().filter_map(move |a| {
                binding(
                    r.resource_type,
                    &r.resource_name,
                    r.pattern_type,
                    &a.principal,
                    &a.host,
                    a.operation,
                    a.permission_type,
                )
            })
        })
        .collect()
}

/// The bindings a DeleteAcls filter removed.
pub fn deleted(result: &DeleteAclsFilterResult) -> Vec<AclBinding> {
    result
        .matching_acls
        .iter()
        .filter_map(|m| {
            binding(
                m.resource_type,
                &m.resource_name,
                m.pattern_type,
                &m.principal,
                &m.host,
                m.operation,
                m.permission_type,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_round_trip() {
        for code in 1..=5 {
            let t = resource_type(code).expect("known resource type");
            assert_eq!(resource_type_code(t), code);
        }
        for code in 1..=4 {
            let p = pattern_type(code).expect("known pattern type");
            assert_eq!(pattern_type_code(p), code);
        }
        for code in 1..=12 {
            let o = operation(code).expect("known operation");
            assert_eq!(operation_code(o), code);
        }
        for code in 1..=3 {
            let p = permission(code).expect("known permission");
            assert_eq!(permission_code(p), code);
        }
        // UNKNOWN (0) and values past the table are refused, never guessed.
        for bad in [0, 6, 7, -1] {
            assert_eq!(resource_type(bad), None, "{bad}");
        }
        assert_eq!(pattern_type(0), None);
        assert_eq!(operation(0), None);
        assert_eq!(operation(13), None);
        assert_eq!(permission(0), None);
    }

    #[test]
    fn filters_from_the_wire() {
        let name = text("t");
        let principal = text("User:alice");
        let ok = filter((2, Some(&name), 3, Some(&principal), None, 3, 3)).expect("valid");
        assert_eq!(ok.resource_type, Rt::Topic);
        assert_eq!(ok.operation, Op::Read);
        for (bad, why) in [
            ((0, None, 1, None, None, 1, 1), "resource type"),
            ((1, None, 0, None, None, 1, 1), "pattern type"),
            ((1, None, 1, None, None, 0, 1), "operation"),
            ((1, None, 1, None, None, 1, 0), "permission"),
        ] {
            let err = filter(bad).expect_err(why);
            assert!(err.contains(why), "{err}");
        }
        let bad_principal = text("alice");
        assert!(filter((1, None, 1, Some(&bad_principal), None, 1, 1)).is_err());
    }

    #[test]
    fn config_is_checked() {
        let mut k = KafkaSection::default();
        assert!(check_config(&k).is_ok());
        k.authorizer = "ldap".into();
        assert_eq!(check_config(&k).map_err(|e| e.0), Err("kafka.authorizer"));
        k.authorizer = "acl".into();
        k.super_users = vec!["admin".into()];
        assert_eq!(check_config(&k).map_err(|e| e.0), Err("kafka.super_users"));
        k.super_users = vec!["User:admin".into()];
        assert!(check_config(&k).is_ok());
    }
}
