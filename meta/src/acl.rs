//! Kafka ACLs as a pure value: bindings, filters, and the authorization decision.
//!
//! An [`AclBinding`] is a resource pattern (type, name, literal or prefixed) plus an access
//! control entry (principal, host, operation, allow or deny). [`AclSet`] holds the bindings of
//! the cluster (in [`crate::MetaState`], changed by `CreateAcls` / `DeleteAcls` commands) and
//! answers [`AclSet::authorize`] with the rules of Kafka's `StandardAuthorizer`:
//!
//! - a super user is always allowed;
//! - the bindings that apply to a resource are those of its type whose pattern is the literal
//!   name, the literal `*`, or a prefix of the name;
//! - among them, those naming the principal (or `User:*`) and the host (or `*`) decide: any
//!   DENY for the operation (or `All`) denies; else any ALLOW for the operation, `All`, or an
//!   operation that implies it (Read, Write, Delete and Alter imply Describe; AlterConfigs
//!   implies DescribeConfigs) allows;
//! - when no binding applies to the resource at all, the answer is
//!   `allow.everyone.if.no.acl.found`; when some apply but none allows, it is a denial.
//!
//! Filters ([`AclBindingFilter`]) are what DescribeAcls and DeleteAcls carry; they may use
//! `Any` everywhere and the `Match` pattern type, with Kafka's `ResourcePatternFilter` and
//! `AccessControlEntryFilter` matching rules.
//!
//! *Boundary*: this module knows nothing of the Kafka wire codes; the broker converts them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// Bindings the cluster may hold.
pub const ACLS_MAX: usize = 100_000;
/// Longest resource name, principal or host in a binding.
pub const ACL_FIELD_BYTES_MAX: usize = 1_024;
/// The one name of the cluster resource.
pub const CLUSTER_RESOURCE_NAME: &str = "kafka-cluster";
/// The literal name (and host) that matches every name.
pub const WILDCARD: &str = "*";
/// The principal that matches every user.
pub const WILDCARD_PRINCIPAL: &str = "User:*";

/// What a binding protects. `Any` only in filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    Any,
    Topic,
    Group,
    Cluster,
    TransactionalId,
}

/// How a binding's name is matched. `Any` and `Match` only in filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatternType {
    Any,
    Match,
    Literal,
    Prefixed,
}

/// What a principal may do. `Any` only in filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AclOperation {
    Any,
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

/// Allow or deny. `Any` only in filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AclPermission {
    Any,
    Deny,
    Allow,
}

macro_rules! names {
    ($ty:ty { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            /// Kafka's name of the value (as `kafka-acls` prints it).
            pub fn name(self) -> &'static str {
                match self { $(<$ty>::$variant => $name),* }
            }
            /// Parses a name, ignoring case, `-` and `_` (`prefixed`, `DESCRIBE_CONFIGS`).
            pub fn parse(s: &str) -> Option<Self> {
                let norm: String = s
                    .chars()
                    .filter(|c| *c != '-' && *c != '_')
                    .collect::<String>()
                    .to_ascii_lowercase();
                $(if norm == $name.to_ascii_lowercase() { return Some(<$ty>::$variant); })*
                None
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

names!(ResourceType { Any => "Any", Topic => "Topic", Group => "Group", Cluster => "Cluster",
    TransactionalId => "TransactionalId" });
names!(PatternType { Any => "Any", Match => "Match", Literal => "Literal", Prefixed => "Prefixed" });
names!(AclOperation { Any => "Any", All => "All", Read => "Read", Write => "Write",
    Create => "Create", Delete => "Delete", Alter => "Alter", Describe => "Describe",
    ClusterAction => "ClusterAction", DescribeConfigs => "DescribeConfigs",
    AlterConfigs => "AlterConfigs", IdempotentWrite => "IdempotentWrite" });
names!(AclPermission { Any => "Any", Deny => "Deny", Allow => "Allow" });

/// One ACL. Field order is the sort order of [`AclSet`], which the lookups rely on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    pub pattern_type: PatternType,
    pub resource_name: String,
    /// `User:alice`, or `User:*` for every user.
    pub principal: String,
    /// A client IP, or `*`.
    pub host: String,
    pub operation: AclOperation,
    pub permission: AclPermission,
}

impl AclBinding {
    /// The binding as the admin API and `strata acl list --output json` show it, with Kafka's
    /// names (`Topic`, `Literal`, `Read`, `Allow`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "resource_type": self.resource_type.name(),
            "resource_name": self.resource_name,
            "pattern_type": self.pattern_type.name(),
            "principal": self.principal,
            "host": self.host,
            "operation": self.operation.name(),
            "permission": self.permission.name(),
        })
    }
}

/// A DescribeAcls / DeleteAcls filter: `None` strings and `Any` values match everything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclBindingFilter {
    pub resource_type: ResourceType,
    pub pattern_type: PatternType,
    pub resource_name: Option<String>,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: AclOperation,
    pub permission: AclPermission,
}

impl AclBindingFilter {
    /// The filter that matches every binding.
    pub fn any() -> Self {
        Self {
            resource_type: ResourceType::Any,
            pattern_type: PatternType::Any,
            resource_name: None,
            principal: None,
            host: None,
            operation: AclOperation::Any,
            permission: AclPermission::Any,
        }
    }

    /// Kafka's `AclBindingFilter.matches`: the resource pattern filter and the entry filter.
    pub fn matches(&self, b: &AclBinding) -> bool {
        self.matches_pattern(b) && self.matches_entry(b)
    }

    fn matches_pattern(&self, b: &AclBinding) -> bool {
        if self.resource_type != ResourceType::Any && self.resource_type != b.resource_type {
            return false;
        }
        let exact_type = matches!(self.pattern_type, PatternType::Any | PatternType::Match)
            || self.pattern_type == b.pattern_type;
        if !exact_type {
            return false;
        }
        let Some(name) = &self.resource_name else {
            return true;
        };
        if self.pattern_type == PatternType::Any || self.pattern_type == b.pattern_type {
            return *name == b.resource_name;
        }
        // `Match`: every binding that would apply to a resource of this name.
        match b.pattern_type {
            PatternType::Literal => *name == b.resource_name || b.resource_name == WILDCARD,
            PatternType::Prefixed => name.starts_with(&b.resource_name),
            PatternType::Any | PatternType::Match => false,
        }
    }

    fn matches_entry(&self, b: &AclBinding) -> bool {
        self.principal.as_ref().is_none_or(|p| *p == b.principal)
            && self.host.as_ref().is_none_or(|h| *h == b.host)
            && (self.operation == AclOperation::Any || self.operation == b.operation)
            && (self.permission == AclPermission::Any || self.permission == b.permission)
    }

    /// Kafka's `findIndefiniteField` for DeleteAcls and the validity check for DescribeAcls:
    /// a filter may be broad but not malformed.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = &self.principal {
            parse_principal(p)?;
        }
        Ok(())
    }
}

/// Checks a `Type:name` principal (`User:alice`, `User:*`).
pub fn parse_principal(p: &str) -> Result<(&str, &str), String> {
    match p.split_once(':') {
        Some((ty, name)) if !ty.is_empty() && !name.is_empty() => Ok((ty, name)),
        _ => Err(format!(
            "principal `{p}` is not of the form Type:name (example: User:alice)"
        )),
    }
}

impl AclBinding {
    /// Kafka's checks on a new ACL: concrete values only, a `Type:name` principal, a host, and
    /// the one cluster name for a cluster resource.
    pub fn validate(&self) -> Result<(), String> {
        if self.resource_type == ResourceType::Any {
            return Err("resource type Any is only valid in a filter".into());
        }
        if !matches!(
            self.pattern_type,
            PatternType::Literal | PatternType::Prefixed
        ) {
            return Err(format!(
                "pattern type {} is only valid in a filter; use Literal or Prefixed",
                self.pattern_type
            ));
        }
        if self.operation == AclOperation::Any {
            return Err("operation Any is only valid in a filter".into());
        }
        if self.permission == AclPermission::Any {
            return Err("permission Any is only valid in a filter".into());
        }
        if self.resource_name.is_empty() {
            return Err("the resource name is empty".into());
        }
        for (what, value) in [
            ("resource name", &self.resource_name),
            ("principal", &self.principal),
            ("host", &self.host),
        ] {
            if value.len() > ACL_FIELD_BYTES_MAX {
                return Err(format!(
                    "{what} of {} bytes; the maximum is {ACL_FIELD_BYTES_MAX}",
                    value.len()
                ));
            }
        }
        parse_principal(&self.principal)?;
        if self.host.is_empty() {
            return Err("the host is empty; use * for every host".into());
        }
        if self.resource_type == ResourceType::Cluster
            && (self.resource_name != CLUSTER_RESOURCE_NAME
                || self.pattern_type != PatternType::Literal)
        {
            return Err(format!(
                "the only valid name for the Cluster resource is the literal {CLUSTER_RESOURCE_NAME}"
            ));
        }
        Ok(())
    }

    fn applies_to_name(&self, name: &str) -> bool {
        match self.pattern_type {
            PatternType::Literal => self.resource_name == name || self.resource_name == WILDCARD,
            PatternType::Prefixed => name.starts_with(&self.resource_name),
            PatternType::Any | PatternType::Match => false,
        }
    }

    fn names(&self, principal: &str, host: &str) -> bool {
        (self.principal == principal || self.principal == WILDCARD_PRINCIPAL)
            && (self.host == host || self.host == WILDCARD)
    }

    /// Whether this (ALLOW) binding's operation grants `op`.
    fn grants(&self, op: AclOperation) -> bool {
        use AclOperation as O;
        self.operation == op
            || self.operation == O::All
            || match op {
                O::Describe => matches!(self.operation, O::Read | O::Write | O::Delete | O::Alter),
                O::DescribeConfigs => self.operation == O::AlterConfigs,
                _ => false,
            }
    }
}

/// Who is asking, and how the cluster decides when no binding applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthzPolicy {
    /// Principals (`User:admin`) allowed everything.
    pub super_users: Vec<String>,
    /// Kafka's `allow.everyone.if.no.acl.found`.
    pub allow_everyone_if_no_acl_found: bool,
}

/// The cluster's ACLs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclSet {
    acls: BTreeSet<AclBinding>,
}

impl AclSet {
    pub fn len(&self) -> usize {
        self.acls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.acls.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &AclBinding> {
        self.acls.iter()
    }

    /// Adds each valid binding (an existing one is a success, as in Kafka); the answer holds
    /// one refusal reason or `None` per binding, in order.
    pub fn create(&mut self, acls: &[AclBinding]) -> Vec<Option<String>> {
        acls.iter()
            .map(|acl| {
                if let Err(reason) = acl.validate() {
                    return Some(reason);
                }
                if !self.acls.contains(acl) && self.acls.len() >= ACLS_MAX {
                    return Some(format!("the cluster already holds {ACLS_MAX} ACLs"));
                }
                self.acls.insert(acl.clone());
                None
            })
            .collect()
    }

    /// Removes the bindings each filter matches; per filter, the removed bindings (a binding
    /// matched by several filters is reported under each, as Kafka does) or why the filter was
    /// refused.
    pub fn delete(&mut self, filters: &[AclBindingFilter]) -> Vec<Result<Vec<AclBinding>, String>> {
        let answers: Vec<Result<Vec<AclBinding>, String>> = filters
            .iter()
            .map(|f| {
                f.validate()?;
                Ok(self.describe(f))
            })
            .collect();
        for removed in answers.iter().flatten() {
            for acl in removed {
                self.acls.remove(acl);
            }
        }
        answers
    }

    /// The bindings a filter matches, in the set's order.
    pub fn describe(&self, filter: &AclBindingFilter) -> Vec<AclBinding> {
        self.acls
            .iter()
            .filter(|b| filter.matches(b))
            .cloned()
            .collect()
    }

    /// The bindings of `ty` that apply to the resource `name` (literal name, literal `*`, or
    /// a prefix of it).
    fn applying<'a>(
        &'a self,
        ty: ResourceType,
        name: &'a str,
    ) -> impl Iterator<Item = &'a AclBinding> + 'a {
        self.acls
            .range(bound(ty, PatternType::Literal)..)
            .take_while(move |b| b.resource_type == ty)
            .filter(move |b| b.applies_to_name(name))
    }

    /// May `principal` at `host` perform `op` on the resource (`ty`, `name`)? See the module
    /// docs for the rules.
    pub fn authorize(
        &self,
        policy: &AuthzPolicy,
        principal: &str,
        host: &str,
        op: AclOperation,
        ty: ResourceType,
        name: &str,
    ) -> bool {
        debug_assert!(op != AclOperation::Any && ty != ResourceType::Any);
        if policy.super_users.iter().any(|s| s == principal) {
            return true;
        }
        let mut any_applies = false;
        let mut allowed = false;
        for b in self.applying(ty, name) {
            any_applies = true;
            if !b.names(principal, host) {
                continue;
            }
            match b.permission {
                AclPermission::Deny if b.operation == op || b.operation == AclOperation::All => {
                    return false
                }
                AclPermission::Allow if b.grants(op) => allowed = true,
                _ => {}
            }
        }
        allowed || (!any_applies && policy.allow_everyone_if_no_acl_found)
    }

    /// Kafka's `authorizeByResourceType`: could `principal` perform `op` on *some* resource of
    /// type `ty`? True when an ALLOW binding (for the operation or `All`) exists that no DENY
    /// covers: a literal name not denied literally or by a denied prefix of it, or a prefix
    /// that no denied prefix contains. A DENY on the literal `*` denies all. With no binding
    /// of the type at all, `allow.everyone.if.no.acl.found` decides.
    pub fn authorize_any(
        &self,
        policy: &AuthzPolicy,
        principal: &str,
        host: &str,
        op: AclOperation,
        ty: ResourceType,
    ) -> bool {
        if policy.super_users.iter().any(|s| s == principal) {
            return true;
        }
        let of_type = || {
            self.acls
                .range(bound(ty, PatternType::Any)..)
                .take_while(move |b| b.resource_type == ty)
        };
        let relevant = |b: &&AclBinding, perm: AclPermission| {
            b.permission == perm
                && b.names(principal, host)
                && (b.operation == op || b.operation == AclOperation::All)
        };
        let denies: Vec<&AclBinding> = of_type()
            .filter(|b| relevant(b, AclPermission::Deny))
            .collect();
        let denied_literal = |name: &str| {
            denies.iter().any(|d| {
                (d.pattern_type == PatternType::Literal
                    && (d.resource_name == name || d.resource_name == WILDCARD))
                    || (d.pattern_type == PatternType::Prefixed
                        && name.starts_with(&d.resource_name))
            })
        };
        if denies
            .iter()
            .any(|d| d.pattern_type == PatternType::Literal && d.resource_name == WILDCARD)
        {
            return false;
        }
        let allowed = of_type()
            .filter(|b| relevant(b, AclPermission::Allow))
            .any(|a| match a.pattern_type {
                PatternType::Literal => {
                    a.resource_name == WILDCARD || !denied_literal(&a.resource_name)
                }
                PatternType::Prefixed => !denies.iter().any(|d| {
                    d.pattern_type == PatternType::Prefixed
                        && a.resource_name.starts_with(&d.resource_name)
                }),
                PatternType::Any | PatternType::Match => false,
            });
        allowed || (policy.allow_everyone_if_no_acl_found && of_type().next().is_none())
    }
}

/// The smallest binding of a resource type and pattern type (the start of a range scan).
fn bound(ty: ResourceType, pattern: PatternType) -> AclBinding {
    AclBinding {
        resource_type: ty,
        pattern_type: pattern,
        resource_name: String::new(),
        principal: String::new(),
        host: String::new(),
        operation: AclOperation::Any,
        permission: AclPermission::Any,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AclOperation as O;
    use AclPermission::{Allow, Deny};
    use PatternType::{Literal, Prefixed};
    use ResourceType as R;

    fn acl(
        ty: ResourceType,
        pattern: PatternType,
        name: &str,
        principal: &str,
        host: &str,
        op: AclOperation,
        perm: AclPermission,
    ) -> AclBinding {
        AclBinding {
            resource_type: ty,
            pattern_type: pattern,
            resource_name: name.into(),
            principal: principal.into(),
            host: host.into(),
            operation: op,
            permission: perm,
        }
    }

    fn topic(name: &str, principal: &str, op: AclOperation, perm: AclPermission) -> AclBinding {
        acl(R::Topic, Literal, name, principal, "*", op, perm)
    }

    fn set(acls: &[AclBinding]) -> AclSet {
        let mut s = AclSet::default();
        assert!(s.create(acls).iter().all(Option::is_none));
        s
    }

    fn policy(allow_everyone: bool) -> AuthzPolicy {
        AuthzPolicy {
            super_users: vec!["User:admin".into()],
            allow_everyone_if_no_acl_found: allow_everyone,
        }
    }

    /// (principal, host, op, type, name) → expected, against one set of ACLs.
    fn check(
        acls: &[AclBinding],
        allow_everyone: bool,
        cases: &[(&str, &str, AclOperation, ResourceType, &str, bool)],
    ) {
        let s = set(acls);
        for (i, (principal, host, op, ty, name, expected)) in cases.iter().enumerate() {
            let got = s.authorize(&policy(allow_everyone), principal, host, *op, *ty, name);
            assert_eq!(
                got, *expected,
                "case {i}: {principal}@{host} {op} {ty}:{name} with {acls:#?}"
            );
        }
    }

    #[test]
    fn authorize_rules() {
        let acls = [
            topic("orders", "User:alice", O::Write, Allow),
            topic("orders", "User:alice", O::Read, Allow),
            acl(
                R::Topic,
                Prefixed,
                "logs-",
                "User:alice",
                "*",
                O::Read,
                Allow,
            ),
            acl(
                R::Topic,
                Literal,
                "logs-secret",
                "User:alice",
                "*",
                O::Read,
                Deny,
            ),
            topic("*", "User:*", O::Describe, Allow),
            topic("payments", "User:bob", O::All, Allow),
            topic("payments", "User:bob", O::Delete, Deny),
            acl(
                R::Topic,
                Literal,
                "hosted",
                "User:carol",
                "10.0.0.1",
                O::Read,
                Allow,
            ),
            acl(
                R::Group,
                Prefixed,
                "app-",
                "User:alice",
                "*",
                O::Read,
                Allow,
            ),
            acl(
                R::Cluster,
                Literal,
                CLUSTER_RESOURCE_NAME,
                "User:ops",
                "*",
                O::AlterConfigs,
                Allow,
            ),
        ];
        check(
            &acls,
            false,
            &[
                ("User:alice", "1.2.3.4", O::Write, R::Topic, "orders", true),
                ("User:alice", "1.2.3.4", O::Read, R::Topic, "orders", true),
                (
                    "User:alice",
                    "1.2.3.4",
                    O::Delete,
                    R::Topic,
                    "orders",
                    false,
                ),
                // Write implies Describe; so does the `User:*` wildcard Describe.
                (
                    "User:alice",
                    "1.2.3.4",
                    O::Describe,
                    R::Topic,
                    "orders",
                    true,
                ),
                ("User:bob", "1.2.3.4", O::Describe, R::Topic, "orders", true),
                ("User:bob", "1.2.3.4", O::Write, R::Topic, "orders", false),
                // Prefixed allow, literal deny wins.
                ("User:alice", "1.2.3.4", O::Read, R::Topic, "logs-app", true),
                (
                    "User:alice",
                    "1.2.3.4",
                    O::Read,
                    R::Topic,
                    "logs-secret",
                    false,
                ),
                ("User:alice", "1.2.3.4", O::Read, R::Topic, "logs", false),
                // All covers everything; an explicit deny still wins.
                ("User:bob", "h", O::AlterConfigs, R::Topic, "payments", true),
                ("User:bob", "h", O::Delete, R::Topic, "payments", false),
                // Host match.
                ("User:carol", "10.0.0.1", O::Read, R::Topic, "hosted", true),
                ("User:carol", "10.0.0.2", O::Read, R::Topic, "hosted", false),
                // Types are separate namespaces.
                ("User:alice", "h", O::Read, R::Group, "app-1", true),
                ("User:alice", "h", O::Read, R::Group, "orders", false),
                (
                    "User:alice",
                    "h",
                    O::Read,
                    R::TransactionalId,
                    "app-1",
                    false,
                ),
                // AlterConfigs implies DescribeConfigs, not Describe.
                (
                    "User:ops",
                    "h",
                    O::DescribeConfigs,
                    R::Cluster,
                    CLUSTER_RESOURCE_NAME,
                    true,
                ),
                (
                    "User:ops",
                    "h",
                    O::Describe,
                    R::Cluster,
                    CLUSTER_RESOURCE_NAME,
                    false,
                ),
                // Super users pass everything, even an explicit deny.
                ("User:admin", "h", O::Delete, R::Topic, "payments", true),
                ("User:ANONYMOUS", "h", O::Read, R::Topic, "orders", false),
            ],
        );
    }

    #[test]
    fn deny_wins_and_wildcards() {
        let acls = [
            topic("t", "User:*", O::Read, Allow),
            topic("t", "User:mallory", O::All, Deny),
            topic("*", "User:eve", O::Write, Deny),
            topic("u", "User:eve", O::Write, Allow),
        ];
        check(
            &acls,
            false,
            &[
                ("User:alice", "h", O::Read, R::Topic, "t", true),
                ("User:mallory", "h", O::Read, R::Topic, "t", false),
                ("User:eve", "h", O::Write, R::Topic, "u", false),
                ("User:eve", "h", O::Read, R::Topic, "t", true),
            ],
        );
    }

    #[test]
    fn allow_everyone_if_no_acl_found() {
        let acls = [topic("guarded", "User:alice", O::Read, Allow)];
        let cases = |open: bool| {
            [
                // No ACL names `free`: the policy decides.
                ("User:ANONYMOUS", "h", O::Write, R::Topic, "free", open),
                ("User:ANONYMOUS", "h", O::Read, R::Group, "g", open),
                // Some ACL applies to `guarded`: only what it allows.
                ("User:ANONYMOUS", "h", O::Read, R::Topic, "guarded", false),
                ("User:alice", "h", O::Read, R::Topic, "guarded", true),
                ("User:alice", "h", O::Write, R::Topic, "guarded", false),
            ]
        };
        check(&acls, true, &cases(true));
        check(&acls, false, &cases(false));
    }

    #[test]
    fn authorize_any_rules() {
        let p = policy(false);
        let any = |acls: &[AclBinding], who: &str| {
            set(acls).authorize_any(&p, who, "h", O::Write, R::Topic)
        };
        assert!(!any(&[], "User:alice"));
        assert!(any(&[], "User:admin"));
        assert!(any(
            &[topic("t", "User:alice", O::Write, Allow)],
            "User:alice"
        ));
        assert!(!any(
            &[topic("t", "User:alice", O::Read, Allow)],
            "User:alice"
        ));
        assert!(!any(
            &[
                topic("t", "User:alice", O::Write, Allow),
                topic("t", "User:alice", O::Write, Deny)
            ],
            "User:alice"
        ));
        assert!(!any(
            &[
                topic("t", "User:alice", O::Write, Allow),
                topic("*", "User:*", O::All, Deny)
            ],
            "User:alice"
        ));
        let prefixed =
            |name: &str, perm| acl(R::Topic, Prefixed, name, "User:alice", "*", O::Write, perm);
        assert!(any(&[prefixed("a-", Allow)], "User:alice"));
        assert!(!any(
            &[prefixed("a-b", Allow), prefixed("a-", Deny)],
            "User:alice"
        ));
        assert!(any(
            &[prefixed("a-", Allow), prefixed("a-b", Deny)],
            "User:alice"
        ));
        let open = AuthzPolicy {
            allow_everyone_if_no_acl_found: true,
            ..p.clone()
        };
        assert!(AclSet::default().authorize_any(&open, "User:x", "h", O::Write, R::Topic));
    }

    #[test]
    fn filters_match_like_kafka() {
        let lit = |name: &str| acl(R::Topic, Literal, name, "User:a", "*", O::Read, Allow);
        let pre = |name: &str| acl(R::Topic, Prefixed, name, "User:a", "*", O::Read, Allow);
        let star = lit("*");
        let filter = |pattern, name: Option<&str>| AclBindingFilter {
            resource_type: R::Topic,
            pattern_type: pattern,
            resource_name: name.map(str::to_string),
            ..AclBindingFilter::any()
        };
        // (filter, binding, matches)
        let cases = [
            (filter(PatternType::Any, None), lit("x"), true),
            (filter(PatternType::Any, Some("x")), lit("x"), true),
            (filter(PatternType::Any, Some("x")), pre("x"), true),
            (filter(PatternType::Any, Some("x")), star.clone(), false),
            (filter(Literal, Some("x")), lit("x"), true),
            (filter(Literal, Some("x")), pre("x"), false),
            (filter(Literal, None), pre("x"), false),
            (filter(Prefixed, Some("x")), pre("x"), true),
            (filter(PatternType::Match, Some("xyz")), lit("xyz"), true),
            (filter(PatternType::Match, Some("xyz")), star.clone(), true),
            (filter(PatternType::Match, Some("xyz")), pre("xy"), true),
            (filter(PatternType::Match, Some("xyz")), pre("xyzz"), false),
            (filter(PatternType::Match, Some("xyz")), lit("xy"), false),
            (
                AclBindingFilter {
                    resource_type: R::Group,
                    ..AclBindingFilter::any()
                },
                lit("x"),
                false,
            ),
            (
                AclBindingFilter {
                    principal: Some("User:b".into()),
                    ..AclBindingFilter::any()
                },
                lit("x"),
                false,
            ),
            (
                AclBindingFilter {
                    operation: O::Read,
                    permission: Allow,
                    host: Some("*".into()),
                    ..AclBindingFilter::any()
                },
                lit("x"),
                true,
            ),
        ];
        for (i, (f, b, expected)) in cases.iter().enumerate() {
            assert_eq!(f.matches(b), *expected, "case {i}: {f:?} vs {b:?}");
        }
    }

    #[test]
    fn create_validates_and_delete_reports() {
        let mut s = AclSet::default();
        let good = topic("t", "User:a", O::Read, Allow);
        let bad = [
            (topic("t", "alice", O::Read, Allow), "Type:name"),
            (topic("", "User:a", O::Read, Allow), "empty"),
            (topic("t", "User:a", O::Any, Allow), "Any"),
            (topic("t", "User:a", O::Read, AclPermission::Any), "Any"),
            (
                acl(
                    R::Topic,
                    PatternType::Match,
                    "t",
                    "User:a",
                    "*",
                    O::Read,
                    Allow,
                ),
                "filter",
            ),
            (
                acl(R::Any, Literal, "t", "User:a", "*", O::Read, Allow),
                "filter",
            ),
            (
                acl(R::Cluster, Literal, "c", "User:a", "*", O::Alter, Allow),
                "kafka-cluster",
            ),
            (
                acl(R::Topic, Literal, "t", "User:a", "", O::Read, Allow),
                "host",
            ),
        ];
        let mut input = vec![good.clone(), good.clone()];
        input.extend(bad.iter().map(|(b, _)| b.clone()));
        let answers = s.create(&input);
        assert_eq!(answers[..2], [None, None]);
        for ((_, want), got) in bad.iter().zip(&answers[2..]) {
            let got = got.as_deref().unwrap_or("");
            assert!(got.contains(want), "{got:?} should mention {want:?}");
        }
        assert_eq!(s.len(), 1);
        s.create(&[topic("u", "User:a", O::Read, Allow)]);
        let by_name = AclBindingFilter {
            resource_name: Some("t".into()),
            ..AclBindingFilter::any()
        };
        let out = s.delete(&[by_name.clone(), AclBindingFilter::any(), by_name]);
        assert_eq!(out[0], Ok(vec![good.clone()]));
        assert_eq!(out[1].as_ref().map(Vec::len), Ok(2));
        assert_eq!(out[2], Ok(vec![good]));
        assert!(s.is_empty());
        let bad_filter = AclBindingFilter {
            principal: Some("nobody".into()),
            ..AclBindingFilter::any()
        };
        assert!(s.delete(&[bad_filter])[0].is_err());
    }

    #[test]
    fn names_parse() {
        assert_eq!(
            AclOperation::parse("describe_configs"),
            Some(O::DescribeConfigs)
        );
        assert_eq!(
            AclOperation::parse("IdempotentWrite"),
            Some(O::IdempotentWrite)
        );
        assert_eq!(PatternType::parse("PREFIXED"), Some(Prefixed));
        assert_eq!(
            ResourceType::parse("transactional-id"),
            Some(R::TransactionalId)
        );
        assert_eq!(AclPermission::parse("nope"), None);
    }
}
