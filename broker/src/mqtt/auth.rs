//! MQTT authentication, per-topic ACLs and per-client publish rate limits.
//!
//! *Authentication* (`mqtt.auth = "password"`): CONNECT must carry a user name and a password.
//! A name listed in `[[mqtt.users]]` is checked against its hash only (PHC `$argon2id$…`, or
//! bcrypt `$2a$`/`$2b$`/`$2y$`); any other name is checked against the SCRAM credentials in
//! metadata — the users `strata user add` and the admin API create for Kafka — by deriving
//! StoredKey from the password (`kafka::scram::verify_password`). One user store serves both
//! protocols. Every comparison is constant-time (the hash crates' verify, `scram::ct_eq`), an
//! unknown name costs a SCRAM derivation against a decoy credential like a known one, and the
//! derivation runs on the blocking pool: argon2 is slow on purpose. Refusals: bad name or
//! password → CONNACK 0x86 (3.1.1: 0x04); no credentials → 0x87 Not authorized (3.1.1: 0x05).
//!
//! *ACLs* (`[[mqtt.acl]]`, first match wins, else `mqtt.acl_default`): a rule names a user
//! (`*` any, `$anonymous` a client without a user name), an action, a topic filter (`%u` and
//! `%c` replaced by the user name and client id) and a permission. A PUBLISH (also a will
//! and a retained message) is matched by topic. A SUBSCRIBE filter is matched by an *allow*
//! rule only when the rule's filter covers it (every topic the subscription can receive
//! matches the rule: `a/#` covers `a/b/+`), and by a *deny* rule as soon as the two overlap
//! (some topic matches both: `secret/#` denies a subscription to `#`). That keeps a broad
//! subscription from reading past a deny rule; deliveries are not checked again one by one.
//! A `%u`/`%c` value containing `/`, `+` or `#` (or a `%u` without a user name) cannot be
//! substituted safely: such a rule never allows and always denies.
//!
//! *Rate limits* (`mqtt.client_publish_rate_max`, `mqtt.client_publish_bytes_rate_max`): a
//! token bucket per connection holding one second of budget. A PUBLISH is never refused or
//! dropped for the rate: it is taken (the bucket may go into debt) and then the connection
//! stops reading its socket until the debt is paid back (TCP back-pressure on the client).
//!
//! Everything here is a value: [`Acl`] and [`Bucket`] are tested without sockets or clocks
//! (`now` is passed in); only [`Auth::authenticate`] does IO (metadata read, blocking pool).

use crate::config::{MqttAclRule, MqttSection, MqttUser};
use crate::kafka::scram;
use crate::node::Node;
use bytes::Bytes;
use std::collections::HashMap;
use std::time::Duration;
use strata_meta::{ScramCredential, ScramMechanism};
use tokio::time::Instant;

/// A password as CONNECT carried it: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub Bytes);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A configuration value this module refuses, with the key that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadKey {
    pub key: String,
    pub message: String,
}

fn bad(key: String, message: impl Into<String>) -> BadKey {
    BadKey {
        key,
        message: message.into(),
    }
}

/// A `[[mqtt.users]]` password hash, by scheme (the string itself is parsed again to verify:
/// that is cheap next to the hash).
#[derive(Clone)]
enum StoredHash {
    Argon2(String),
    Bcrypt(String),
}

impl StoredHash {
    fn parse(s: &str) -> Result<StoredHash, String> {
        if s.starts_with("$argon2") {
            let h = argon2::PasswordHash::new(s)
                .map_err(|e| format!("not a valid argon2 PHC string ({e})"))?;
            if argon2::Algorithm::try_from(h.algorithm).is_err() {
                return Err(format!("unknown argon2 variant `{}`", h.algorithm));
            }
            // The PHC grammar alone accepts a string without salt or hash.
            if h.salt.is_none() || h.hash.is_none() {
                return Err("not a valid argon2 PHC string (no salt or hash)".into());
            }
            argon2::Params::try_from(&h).map_err(|e| format!("invalid argon2 parameters ({e})"))?;
            Ok(StoredHash::Argon2(s.to_string()))
        } else if s.starts_with("$2a$") || s.starts_with("$2b$") || s.starts_with("$2y$") {
            // `$2b$NN$` + 22 characters of salt + 31 of hash (the parser alone is lax).
            if s.len() != 60 {
                return Err(format!(
                    "not a valid bcrypt hash ({} characters, expected 60)",
                    s.len()
                ));
            }
            s.parse::<bcrypt::HashParts>()
                .map_err(|e| format!("not a valid bcrypt hash ({e})"))?;
            Ok(StoredHash::Bcrypt(s.to_string()))
        } else {
            Err(
                "expected a PHC argon2 string (`$argon2id$…`, see `strata mqtt hash-password`) \
                 or a bcrypt hash (`$2b$…`)"
                    .into(),
            )
        }
    }

    /// Constant-time verification (the crates compare the derived hash with `subtle`).
    fn verify(&self, password: &[u8]) -> bool {
        use argon2::PasswordVerifier;
        match self {
            StoredHash::Argon2(s) => argon2::PasswordHash::new(s).is_ok_and(|h| {
                argon2::Argon2::default()
                    .verify_password(password, &h)
                    .is_ok()
            }),
            StoredHash::Bcrypt(s) => bcrypt::verify(password, s).unwrap_or(false),
        }
    }
}

/// A PHC argon2id string for `password` (argon2's default parameters, a random 16-byte salt):
/// what `strata mqtt hash-password` prints for `[[mqtt.users]]`.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use rand::Rng;
    let salt_bytes: [u8; 16] = rand::thread_rng().gen();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// How a connection showed who it is: what [`Auth::admits`] re-checks when the settings are
/// reloaded or a SCRAM user is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Nothing: `mqtt.auth = "none"` took the user name, if any, as claimed.
    Claimed,
    /// A password or a SCRAM exchange checked against `mqtt.users` or metadata.
    Secret,
    /// A client certificate the TLS listener verified (`mqtt.tls_cert_as_username`).
    Certificate,
}

/// What a CONNECT's credentials got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Connected as this user (`None`: no user name), shown by this proof.
    Allowed(Option<String>, Proof),
    /// Unknown user or wrong password (CONNACK 0x86 / 3.1.1 0x04).
    BadCredentials,
    /// No user name or no password where both are required (0x87 / 0x05).
    NoCredentials,
}

/// The validated `[mqtt]` auth, ACL and rate settings.
pub struct Auth {
    password_required: bool,
    users: HashMap<String, StoredHash>,
    pub acl: Acl,
    /// PUBLISH packets per second per connection; 0: no limit.
    pub publish_rate_max: u64,
    /// PUBLISH bytes (topic + payload) per second per connection; 0: no limit.
    pub publish_bytes_rate_max: u64,
    /// Keys the decoy credentials of unknown users (random per process).
    decoy_secret: [u8; 32],
}

impl Auth {
    /// Checks and compiles the `[mqtt]` auth keys; the error names the offending key.
    pub fn from_config(m: &MqttSection) -> Result<Auth, BadKey> {
        let password_required = match m.auth.as_str() {
            "none" => false,
            "password" => true,
            other => {
                return Err(bad(
                    "mqtt.auth".into(),
                    format!("`{other}`: expected `none` or `password`"),
                ))
            }
        };
        let mut users = HashMap::new();
        for (
            i,
            MqttUser {
                name,
                password_hash,
            },
        ) in m.users.iter().enumerate()
        {
            if name.is_empty() {
                return Err(bad(format!("mqtt.users[{i}].name"), "must not be empty"));
            }
            let hash = StoredHash::parse(password_hash)
                .map_err(|e| bad(format!("mqtt.users[{i}].password_hash"), e))?;
            if users.insert(name.clone(), hash).is_some() {
                return Err(bad(
                    format!("mqtt.users[{i}].name"),
                    format!("user `{name}` is listed twice"),
                ));
            }
        }
        let default_allow = match m.acl_default.as_str() {
            "allow" => true,
            "deny" => false,
            other => {
                return Err(bad(
                    "mqtt.acl_default".into(),
                    format!("`{other}`: expected `allow` or `deny`"),
                ))
            }
        };
        let rules = m
            .acl
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::parse(i, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Auth {
            password_required,
            users,
            acl: Acl {
                rules,
                default_allow,
            },
            publish_rate_max: u64::from(m.client_publish_rate_max),
            publish_bytes_rate_max: m.client_publish_bytes_rate_max,
            decoy_secret: rand::random(),
        })
    }

    /// Whether a connection that showed `proof` for `user` may stay under these settings:
    /// always without authentication and with a verified certificate; with a password or
    /// SCRAM, while the user is still one of `mqtt.users` or has a SCRAM credential in
    /// metadata (a password change does not end open connections); never when it claimed a
    /// name under `mqtt.auth = "none"` and a password is required now.
    pub fn admits(&self, node: &Node, user: Option<&str>, proof: Proof) -> bool {
        if !self.password_required || proof == Proof::Certificate {
            return true;
        }
        match (proof, user) {
            (Proof::Secret, Some(user)) => {
                self.users.contains_key(user) || scram_user(node, user).is_some()
            }
            _ => false,
        }
    }

    /// Checks a CONNECT's credentials (off the reactor: the hashes are slow on purpose).
    pub async fn authenticate(
        &self,
        node: &Node,
        username: Option<&str>,
        password: Option<&Password>,
    ) -> Verdict {
        if !self.password_required {
            // No authentication: a user name, if given, is taken as is (for ACLs).
            return Verdict::Allowed(username.map(str::to_string), Proof::Claimed);
        }
        let (Some(user), Some(password)) = (username, password) else {
            return Verdict::NoCredentials;
        };
        let password = password.0.clone();
        let ok = match self.users.get(user) {
            Some(hash) => {
                let hash = hash.clone();
                tokio::task::spawn_blocking(move || hash.verify(&password))
                    .await
                    .unwrap_or(false)
            }
            None => {
                // An unknown user costs the same derivation as a known one.
                let (mech, cred, known) = match scram_user(node, user) {
                    Some((m, c)) => (m, c, true),
                    None => {
                        let m = ScramMechanism::Sha512;
                        (
                            m,
                            scram::decoy_credential(m, &self.decoy_secret, user),
                            false,
                        )
                    }
                };
                let verified = tokio::task::spawn_blocking(move || {
                    scram::verify_password(mech, &cred, &password)
                })
                .await
                .unwrap_or(false);
                verified && known
            }
        };
        if ok {
            Verdict::Allowed(Some(user.to_string()), Proof::Secret)
        } else {
            Verdict::BadCredentials
        }
    }
}

/// A SCRAM user in metadata (the Kafka users) with its strongest credential.
fn scram_user(node: &Node, user: &str) -> Option<(ScramMechanism, ScramCredential)> {
    let state = node.meta.read();
    [ScramMechanism::Sha512, ScramMechanism::Sha256]
        .into_iter()
        .find_map(|m| state.scram_credential(user, m).map(|c| (m, c.clone())))
}

// ---------------------------------------------------------------------------------------------
// ACLs

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Publish,
    Subscribe,
    All,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum UserMatch {
    Any,
    Anonymous,
    Name(String),
}

#[derive(Debug, Clone)]
struct Rule {
    user: UserMatch,
    action: Action,
    /// The filter with `%u` / `%c` still in it.
    filter: String,
    allow: bool,
}

impl Rule {
    fn parse(i: usize, r: &MqttAclRule) -> Result<Rule, BadKey> {
        let key = |k: &str| format!("mqtt.acl[{i}].{k}");
        let user = match r.user.as_str() {
            "" => return Err(bad(key("user"), "must not be empty (`*` is any user)")),
            "*" => UserMatch::Any,
            "$anonymous" => UserMatch::Anonymous,
            name => UserMatch::Name(name.to_string()),
        };
        let action = match r.action.as_str() {
            "publish" => Action::Publish,
            "subscribe" => Action::Subscribe,
            "all" => Action::All,
            other => {
                return Err(bad(
                    key("action"),
                    format!("`{other}`: expected `publish`, `subscribe` or `all`"),
                ))
            }
        };
        let allow = match r.permission.as_str() {
            "allow" => true,
            "deny" => false,
            other => {
                return Err(bad(
                    key("permission"),
                    format!("`{other}`: expected `allow` or `deny`"),
                ))
            }
        };
        if r.filter.starts_with(super::topic::SHARE_PREFIX) {
            return Err(bad(
                key("filter"),
                format!(
                    "`{}`: name the topics, not a `$share/` group (shared subscriptions are \
                     checked by their filter)",
                    r.filter
                ),
            ));
        }
        // Checked with the placeholders as one plain level each.
        let sample = r.filter.replace("%u", "u").replace("%c", "c");
        super::topic::validate_filter(&sample)
            .map_err(|e| bad(key("filter"), format!("`{}`: {e}", r.filter)))?;
        Ok(Rule {
            user,
            action,
            filter: r.filter.clone(),
            allow,
        })
    }

    fn names(&self, user: Option<&str>) -> bool {
        match (&self.user, user) {
            (UserMatch::Any, _) => true,
            (UserMatch::Anonymous, None) => true,
            (UserMatch::Name(n), Some(u)) => n == u,
            _ => false,
        }
    }

    /// The filter for this client; `None` when a value cannot be substituted safely.
    fn filter_for(&self, user: Option<&str>, client_id: &str) -> Option<String> {
        let unsafe_value = |v: &str| v.is_empty() || v.contains(['/', '+', '#']);
        let mut f = self.filter.clone();
        if f.contains("%u") {
            match user {
                Some(u) if !unsafe_value(u) => f = f.replace("%u", u),
                _ => return None,
            }
        }
        if f.contains("%c") {
            if unsafe_value(client_id) {
                return None;
            }
            f = f.replace("%c", client_id);
        }
        Some(f)
    }
}

/// `[[mqtt.acl]]` rules and `mqtt.acl_default`, compiled.
#[derive(Debug, Clone)]
pub struct Acl {
    rules: Vec<Rule>,
    default_allow: bool,
}

impl Acl {
    /// True when every publish and subscription is allowed (no rules, default allow): the
    /// connection skips the checks.
    pub fn allows_everything(&self) -> bool {
        self.rules.is_empty() && self.default_allow
    }

    /// May `user` (connected as `client_id`) publish to `topic` (a topic name)?
    pub fn may_publish(&self, user: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.decide(user, Action::Publish, |rule| {
            match rule.filter_for(user, client_id) {
                Some(f) => super::topic::matches(&f, topic),
                None => !rule.allow,
            }
        })
    }

    /// May `user` subscribe to `filter` (a valid filter; for `$share/<group>/<f>`, pass `f`)?
    pub fn may_subscribe(&self, user: Option<&str>, client_id: &str, filter: &str) -> bool {
        self.decide(user, Action::Subscribe, |rule| {
            match rule.filter_for(user, client_id) {
                Some(f) if rule.allow => covers(&f, filter),
                Some(f) => overlaps(&f, filter),
                None => !rule.allow,
            }
        })
    }

    fn decide(&self, user: Option<&str>, action: Action, applies: impl Fn(&Rule) -> bool) -> bool {
        self.rules
            .iter()
            .filter(|r| (r.action == action || r.action == Action::All) && r.names(user))
            .find(|r| applies(r))
            .map_or(self.default_allow, |r| r.allow)
    }
}

/// Does filter `outer` match every topic that filter `inner` matches? Conservative where
/// `$` topics make it subtle: it may say no where the answer is yes, never the reverse.
pub fn covers(outer: &str, inner: &str) -> bool {
    let o: Vec<&str> = outer.split('/').collect();
    let s: Vec<&str> = inner.split('/').collect();
    for (i, ol) in o.iter().enumerate() {
        if *ol == "#" {
            // `a/#` matches `a` itself and everything below it.
            return true;
        }
        let Some(sl) = s.get(i) else {
            return false;
        };
        if *sl == "#" {
            return false;
        }
        if *ol == "+" {
            continue;
        }
        if *sl == "+" || ol != sl {
            return false;
        }
    }
    o.len() == s.len()
}

/// Is there a topic both filters match? Conservative the other way: `$` topics are ignored,
/// so it may say yes where no topic qualifies.
pub fn overlaps(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('/').collect();
    let b: Vec<&str> = b.split('/').collect();
    for i in 0..a.len().max(b.len()) {
        match (a.get(i), b.get(i)) {
            (Some(&"#"), _) | (_, Some(&"#")) => return true,
            (Some(x), Some(y)) => {
                if *x != "+" && *y != "+" && x != y {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Rate limits

/// A token bucket holding one second of `rate`; it may go into debt by one take.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket (`rate` > 0, per second).
    pub fn new(rate: u64, now: Instant) -> Bucket {
        assert!(rate > 0, "a bucket needs a positive rate");
        Bucket {
            rate: rate as f64,
            tokens: rate as f64,
            at: now,
        }
    }

    /// Takes `cost` tokens; returns how long to wait until the bucket is out of debt.
    pub fn take(&mut self, cost: u64, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.tokens -= cost as f64;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

/// A connection's publish budget: packets and bytes per second.
#[derive(Debug, Clone)]
pub struct Throttle {
    packets: Option<Bucket>,
    bytes: Option<Bucket>,
}

/// A bucket for `rate` (0: none) that keeps `old`'s balance when the rate is unchanged.
fn retuned(old: Option<Bucket>, rate: u64, now: Instant) -> Option<Bucket> {
    match old {
        _ if rate == 0 => None,
        Some(b) if b.rate == rate as f64 => Some(b),
        Some(mut b) => {
            // Settle the old rate up to now, then carry the balance (capped) to the new one.
            let _ = b.take(0, now);
            Some(Bucket {
                rate: rate as f64,
                tokens: b.tokens.min(rate as f64),
                at: now,
            })
        }
        None => Some(Bucket::new(rate, now)),
    }
}

impl Throttle {
    /// 0 turns a limit off.
    pub fn new(packets_per_sec: u64, bytes_per_sec: u64, now: Instant) -> Throttle {
        Throttle {
            packets: (packets_per_sec > 0).then(|| Bucket::new(packets_per_sec, now)),
            bytes: (bytes_per_sec > 0).then(|| Bucket::new(bytes_per_sec, now)),
        }
    }

    /// Reloaded limits, for a connection already open: a changed rate applies from `now` (a
    /// debt under the old one carries over), an unchanged one keeps its balance.
    pub fn retune(&mut self, packets_per_sec: u64, bytes_per_sec: u64, now: Instant) {
        self.packets = retuned(self.packets.take(), packets_per_sec, now);
        self.bytes = retuned(self.bytes.take(), bytes_per_sec, now);
    }

    /// A PUBLISH of `bytes` was read: how long to stop reading, if over the limit.
    pub fn on_publish(&mut self, bytes: u64, now: Instant) -> Option<Duration> {
        let p = self.packets.as_mut().and_then(|b| b.take(1, now));
        let b = self.bytes.as_mut().and_then(|b| b.take(bytes, now));
        p.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(user: &str, action: &str, filter: &str, permission: &str) -> MqttAclRule {
        MqttAclRule {
            user: user.into(),
            action: action.into(),
            filter: filter.into(),
            permission: permission.into(),
        }
    }

    fn acl(rules: &[MqttAclRule], default: &str) -> Acl {
        let m = MqttSection {
            acl: rules.to_vec(),
            acl_default: default.into(),
            ..Default::default()
        };
        Auth::from_config(&m).expect("valid").acl
    }

    #[test]
    fn coverage() {
        // (outer, inner, covers)
        let cases = [
            ("a/#", "a/b/+", true),
            ("a/#", "a", true),
            ("a/#", "a/#", true),
            ("#", "x/y", true),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/+", "a/b/c", false),
            ("a/b", "a/+", false),
            ("a/b", "a/b", true),
            ("a/b", "a", false),
            ("a", "a/b", false),
            ("a/+/c", "a/x/c", true),
            ("a/+/c", "a/x/#", false),
            ("a/b/#", "a/#", false),
            ("+/#", "x", true),
        ];
        for (outer, inner, want) in cases {
            assert_eq!(covers(outer, inner), want, "covers({outer:?}, {inner:?})");
        }
    }

    #[test]
    fn overlap() {
        let cases = [
            ("secret/#", "#", true),
            ("secret/#", "+/x", true),
            ("secret/#", "public/#", false),
            ("a/b", "a/+", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("a/#", "a", true),
            ("+", "a/b", false),
            ("+/+", "a/b", true),
        ];
        for (a, b, want) in cases {
            assert_eq!(overlaps(a, b), want, "overlaps({a:?}, {b:?})");
            assert_eq!(overlaps(b, a), want, "overlaps({b:?}, {a:?})");
        }
    }

    #[test]
    fn first_match_wins_with_substitution() {
        let acl = acl(
            &[
                rule("*", "all", "users/%u/#", "allow"),
                rule("*", "all", "users/#", "deny"),
                rule("$anonymous", "publish", "#", "deny"),
                rule("admin", "subscribe", "#", "allow"),
                rule("*", "publish", "devices/%c/out", "allow"),
                rule("*", "subscribe", "public/#", "allow"),
            ],
            "deny",
        );
        let alice = Some("alice");
        // (user, client id, topic, may publish)
        let publishes = [
            (alice, "c1", "users/alice/x", true),
            (alice, "c1", "users/bob/x", false),
            (None, "c1", "users/alice/x", false),
            (None, "c1", "devices/c1/out", false),
            (alice, "c1", "devices/c1/out", true),
            (alice, "c1", "devices/c2/out", false),
            (alice, "c+", "devices/c+/out", false),
            (alice, "c1", "other", false),
        ];
        for (u, c, t, want) in publishes {
            assert_eq!(acl.may_publish(u, c, t), want, "publish {u:?} {c} {t}");
        }
        // (user, filter, may subscribe)
        let subscribes = [
            (alice, "users/alice/#", true),
            (alice, "users/alice/+/x", true),
            (alice, "users/+/x", false),
            (alice, "#", false),
            (Some("admin"), "users/bob/x", false),
            (Some("admin"), "other/#", true),
            (alice, "public/a/+", true),
            (alice, "public", true),
            (alice, "elsewhere", false),
            (Some("a/b"), "users/a/b/x", false),
        ];
        for (u, f, want) in subscribes {
            assert_eq!(acl.may_subscribe(u, "c1", f), want, "subscribe {u:?} {f}");
        }
    }

    #[test]
    fn default_allow_and_empty() {
        let open = acl(&[], "allow");
        assert!(open.allows_everything());
        assert!(open.may_publish(None, "c", "a/b"));
        let closed = acl(&[], "deny");
        assert!(!closed.allows_everything());
        assert!(!closed.may_subscribe(Some("u"), "c", "a/#"));
    }

    #[test]
    fn config_errors_name_the_key() {
        let hash = hash_password(b"pw").expect("hash");
        let cases: Vec<(MqttSection, &str)> = vec![
            (
                MqttSection {
                    auth: "ldap".into(),
                    ..Default::default()
                },
                "mqtt.auth",
            ),
            (
                MqttSection {
                    acl_default: "maybe".into(),
                    ..Default::default()
                },
                "mqtt.acl_default",
            ),
            (
                MqttSection {
                    acl: vec![rule("*", "read", "a/#", "allow")],
                    ..Default::default()
                },
                "mqtt.acl[0].action",
            ),
            (
                MqttSection {
                    acl: vec![
                        rule("*", "all", "a/#", "allow"),
                        rule("*", "all", "a/#/b", "deny"),
                    ],
                    ..Default::default()
                },
                "mqtt.acl[1].filter",
            ),
            (
                MqttSection {
                    acl: vec![rule("*", "all", "a/%u+", "allow")],
                    ..Default::default()
                },
                "mqtt.acl[0].filter",
            ),
            (
                MqttSection {
                    acl: vec![rule("*", "all", "a", "permit")],
                    ..Default::default()
                },
                "mqtt.acl[0].permission",
            ),
            (
                MqttSection {
                    users: vec![MqttUser {
                        name: "u".into(),
                        password_hash: "plain-text".into(),
                    }],
                    ..Default::default()
                },
                "mqtt.users[0].password_hash",
            ),
            (
                MqttSection {
                    users: vec![
                        MqttUser {
                            name: "u".into(),
                            password_hash: hash.clone(),
                        },
                        MqttUser {
                            name: "u".into(),
                            password_hash: hash,
                        },
                    ],
                    ..Default::default()
                },
                "mqtt.users[1].name",
            ),
        ];
        for (m, key) in cases {
            match Auth::from_config(&m) {
                Err(e) => assert_eq!(e.key, key, "{}", e.message),
                Ok(_) => panic!("{key}: accepted"),
            }
        }
    }

    #[test]
    fn hashes_verify() {
        let phc = hash_password(b"s3cret").expect("hash");
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        let h = StoredHash::parse(&phc).expect("parses");
        assert!(h.verify(b"s3cret"));
        assert!(!h.verify(b"s3cret!"));
        let b = bcrypt::hash_with_salt("s3cret", 4, [7u8; 16])
            .expect("bcrypt")
            .format_for_version(bcrypt::Version::TwoB);
        let h = StoredHash::parse(&b).expect("parses");
        assert!(h.verify(b"s3cret"));
        assert!(!h.verify(b"other"));
        assert!(StoredHash::parse("$argon2id$garbage").is_err());
        assert!(StoredHash::parse("$2b$04$short").is_err());
    }

    #[test]
    fn bucket_pauses_until_paid_back() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, t0);
        // A full second of burst, then debt.
        for _ in 0..10 {
            assert_eq!(b.take(1, t0), None);
        }
        let pause = b.take(1, t0).expect("over the limit");
        assert_eq!(pause, Duration::from_millis(100));
        // After the pause the debt is paid: one more fits after another 100 ms.
        let t1 = t0 + pause;
        assert_eq!(b.take(0, t1), None);
        assert!(b.take(1, t1).is_some());
        assert_eq!(b.take(1, t1 + Duration::from_secs(5)), None);
        // Refill is capped at one second of budget.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(b.take(1, t2), None);
        }
        assert!(b.take(1, t2).is_some());
    }

    #[test]
    fn throttle_takes_the_longer_pause() {
        let t0 = Instant::now();
        let mut t = Throttle::new(0, 1000, t0);
        assert_eq!(t.on_publish(1000, t0), None);
        assert_eq!(t.on_publish(500, t0), Some(Duration::from_millis(500)));
        let mut off = Throttle::new(0, 0, t0);
        assert_eq!(off.on_publish(u64::MAX, t0), None);
    }

    #[test]
    fn retuned_limits_apply_from_now_and_keep_the_balance() {
        let t0 = Instant::now();
        // No limit yet: a reload that sets one starts a full bucket at the new rate.
        let mut t = Throttle::new(0, 0, t0);
        t.retune(0, 2, t0);
        assert_eq!(t.on_publish(1, t0), None);
        assert_eq!(t.on_publish(1, t0), None);
        assert_eq!(t.on_publish(1, t0), Some(Duration::from_millis(500)));
        // A lower rate: the balance (in debt) carries over and is paid back at the new rate.
        t.retune(0, 1, t0);
        assert_eq!(t.on_publish(0, t0), Some(Duration::from_secs(1)));
        // A higher rate refills faster; an unchanged one keeps the state.
        let t1 = t0 + Duration::from_secs(1);
        t.retune(0, 100, t1);
        t.retune(0, 100, t1);
        assert_eq!(t.on_publish(0, t1), None); // the debt of 1 at 1/s was paid by t1
        let t2 = t1 + Duration::from_secs(1);
        for _ in 0..100 {
            assert_eq!(t.on_publish(1, t2), None);
        }
        assert!(t.on_publish(1, t2).is_some());
        // Turned off: nothing pauses.
        t.retune(0, 0, t2);
        assert_eq!(t.on_publish(u64::MAX, t2), None);
    }
}
