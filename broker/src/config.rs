//! Node configuration: lenient outside, strict inside.
//!
//! Three layers are merged, each overriding the one before: the TOML file (`--config`), the
//! environment (`STRATA_<SECTION>_<KEY>`, e.g. `STRATA_KAFKA_AUTO_CREATE_TOPICS=false`, or
//! `STRATA_<KEY>` for top-level keys such as `STRATA_DATA_DIR`), and command-line flags. The
//! merged table is deserialized into [`FileConfig`] with `deny_unknown_fields`, so a misspelt key
//! is rejected with its name, and then validated into [`NodeConfig`], whose derived paths (WAL,
//! cache, metadata directories) are resolved once here and nowhere else.
//!
//! [`FileConfig`] is the one declaration of every key; `docs/config.md` is checked against it
//! by a test.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why a configuration was rejected. Always names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {message}")]
    Invalid { message: String },
    #[error("config key `{key}`: {message}")]
    BadValue { key: String, message: String },
}

/// Every configuration key, with its default. Field names are the TOML keys.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Root of all local state.
    pub data_dir: PathBuf,
    /// Object-store URL; default `fs://<data_dir>/objects`.
    pub object_store: Option<String>,
    /// This node's id (the Kafka broker id, the raft node id, and the id of its WAL stream).
    pub node_id: u64,
    /// The roles this process runs: any of `meta`, `wal`, `broker` (a list, or a
    /// comma-separated string in the environment).
    #[serde(deserialize_with = "string_or_list")]
    pub roles: Vec<String>,
    pub kafka: KafkaSection,
    pub admin: AdminSection,
    pub wal: WalSection,
    pub tiering: TieringSection,
    pub compaction: CompactionSection,
    pub cache: CacheSection,
    pub meta: MetaSection,
    pub mqtt: MqttSection,
    pub log: LogSection,
    pub telemetry: TelemetrySection,
    pub direct: DirectSection,
    pub cluster: ClusterSection,
    pub broker: BrokerSection,
}

/// Planned partition moves (`broker/src/moves.rs`).
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// A broker that registers asks for its fair share of partitions (planned moves from the
    /// most loaded brokers).
    pub rebalance_on_join: bool,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            rebalance_on_join: true,
        }
    }
}

/// Broker lifecycle.
#[derive(Debug, Deserialize, Serialize, Clone, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// Scale to zero: a broker with no Kafka or MQTT connection for this long hands its
    /// partitions away, deregisters and exits 0. 0 = never.
    pub idle_timeout_ms: u64,
}

/// The `direct` storage mode (`log/direct.rs`): produces acknowledged once their object is in
/// object storage, without the WAL.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct DirectSection {
    /// `strata.storage.mode` of topics created without one: `wal` or `direct`.
    pub default_storage_mode: String,
    /// How long the direct writer gathers produces into one object.
    pub batch_window_ms: u64,
    /// An object is sealed as soon as this many produced bytes are waiting.
    pub batch_bytes_max: u64,
    /// How long a direct produce may wait for its object's PUT and commit (retried) before it
    /// is answered KAFKA_STORAGE_ERROR.
    pub commit_timeout_ms: u64,
}

impl Default for DirectSection {
    fn default() -> Self {
        Self {
            default_storage_mode: "wal".into(),
            batch_window_ms: 25,
            batch_bytes_max: 4 * 1024 * 1024,
            commit_timeout_ms: 10_000,
        }
    }
}

/// Logging (stderr). The filter is `STRATA_LOG` (tracing's `EnvFilter` syntax).
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `text` (human-readable lines) or `json` (one JSON object per line).
    pub format: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: "text".into(),
        }
    }
}

/// OTLP trace export (`telemetry.rs`). Off unless `otlp_endpoint` is set.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// OTLP/HTTP collector base URL (`http://host:4318`; `/v1/traces` is appended unless the
    /// URL already ends with it). Unset: no exporter, no export task.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute of every exported span.
    pub otlp_service_name: String,
    /// Share of traces kept, 0..=1 (parent-based: a child follows its root's decision).
    #[serde(deserialize_with = "number_or_string")]
    pub trace_sample_ratio: f64,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_service_name: "strata".into(),
            trace_sample_ratio: 1.0,
        }
    }
}

/// A float from TOML, or from the environment, where values that are not integers or
/// booleans arrive as strings (`STRATA_TELEMETRY_TRACE_SAMPLE_RATIO=0.5`).
fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(f64),
        Text(String),
    }
    match Either::deserialize(d)? {
        Either::Number(n) => Ok(n),
        Either::Text(t) => t
            .trim()
            .parse::<f64>()
            .map_err(|_| serde::de::Error::custom(format!("`{t}` is not a number"))),
    }
}

/// `log.format`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    pub listen: String,
    /// `host:port` given to clients in Metadata; default: the listen address.
    pub advertised: Option<String>,
    pub auto_create_topics: bool,
    pub default_partitions: u32,
    /// Largest request frame accepted; a larger one closes that connection.
    pub request_bytes_max: u32,
    /// Largest record batch accepted in a Produce (Kafka's `message.max.bytes`); default
    /// 1048588 (Kafka's), or `request_bytes_max` when that is smaller.
    pub message_bytes_max: Option<u32>,
    /// Requests read ahead of their responses on one connection (pipelining).
    pub inflight_requests_max: u32,
    pub connections_max: u32,
    /// PEM certificate chain; with `tls_key_file`, the Kafka listener speaks TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Client certificates (mTLS): `none`, `requested` (verified when sent) or `required`.
    pub tls_client_auth: String,
    /// PEM bundle of the CAs client certificates must chain to (with `tls_client_auth`).
    pub tls_client_ca: Option<PathBuf>,
    /// PEM file of certificate revocation lists (X.509 CRLs) for client certificates; re-read
    /// when it changes (checked at most every 10 s, at new connections).
    pub tls_client_crl: Option<PathBuf>,
    /// Kafka's `ssl.principal.mapping.rules`: `RULE:pattern/replacement/[LU]` or `DEFAULT`,
    /// first match wins; maps a client certificate's subject DN to the principal's name.
    #[serde(deserialize_with = "one_or_list")]
    pub tls_principal_mapping: Vec<String>,
    /// Kafka's `connections.max.reauth.ms` (KIP-368): a SASL session lasts this long before
    /// the client must re-authenticate on the connection; 0 = forever.
    pub connections_max_reauth_ms: u64,
    /// SASL mechanisms required of every Kafka client (`PLAIN`, `SCRAM-SHA-256`,
    /// `SCRAM-SHA-512`); empty: no authentication (see `kafka::auth`).
    #[serde(deserialize_with = "string_or_list")]
    pub sasl_mechanisms: Vec<String>,
    /// Allow `PLAIN` on a listener without TLS (the password crosses the network in clear).
    pub sasl_plain_without_tls: bool,
    /// `none` (every request allowed) or `acl` (Kafka ACLs enforced; see `kafka::acl_handlers`).
    pub authorizer: String,
    /// Principals (`User:admin`) the `acl` authorizer allows everything. As one string they
    /// are separated by `;` (Kafka's `super.users`) or `,`; a `,` inside a certificate DN
    /// (`User:CN=ops,O=Acme`) does not split.
    #[serde(deserialize_with = "principal_list")]
    pub super_users: Vec<String>,
    /// Kafka's `allow.everyone.if.no.acl.found`: allow a resource no ACL names.
    pub allow_everyone_if_no_acl_found: bool,
}

/// The MQTT listener and its mapping onto Kafka topics (`crate::mqtt`).
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSection {
    pub listen: String,
    /// Largest MQTT packet accepted (its remaining length); a larger one closes that connection
    /// (MQTT 5: DISCONNECT 0x95 Packet too large).
    pub packet_bytes_max: u32,
    pub connections_max: u32,
    /// The Kafka topic of publishes that no `kafka_mapping` rule matches (auto-created).
    pub default_kafka_topic: String,
    /// `[[mqtt.kafka_mapping]]` rules, first match wins.
    pub kafka_mapping: Vec<MqttKafkaMapping>,
    /// Upper bound on a session's expiry interval (seconds, > 0). Unset: MQTT 5 sessions keep
    /// the interval their client asked for (0xFFFFFFFF never expires) and MQTT 3.1.1
    /// persistent sessions (`clean_session = 0`) never expire.
    pub session_expiry_max_secs: Option<u32>,
    /// MQTT over WebSocket (path `/mqtt`, subprotocol `mqtt`), host:port; empty: off (the
    /// conventional port is 8083).
    pub ws_listen: String,
    /// MQTT over TLS, host:port; served when `tls_cert_file` and `tls_key_file` are set.
    pub tls_listen: String,
    /// MQTT over QUIC (UDP, ALPN `mqtt`, one bidirectional stream per connection), host:port;
    /// empty: off (the conventional port is 14567). Needs `tls_cert_file` and `tls_key_file`.
    pub quic_listen: String,
    /// PEM certificate chain of the MQTT TLS listener.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the MQTT TLS listener.
    pub tls_key_file: Option<PathBuf>,
    /// Client certificates on the MQTT TLS and QUIC listeners: `none`, `requested` (verified
    /// when sent) or `required`.
    pub tls_client_auth: String,
    /// PEM bundle of the CAs MQTT client certificates must chain to.
    pub tls_client_ca: Option<PathBuf>,
    /// PEM file of X.509 CRLs for MQTT client certificates (re-read by the TLS listener when
    /// it changes, like `kafka.tls_client_crl`; the QUIC listener reads it at start).
    pub tls_client_crl: Option<PathBuf>,
    /// `cn` or `dn`: a client with a verified certificate is the user its certificate's
    /// Common Name (or whole subject, RFC 2253) names, for the ACLs, without a password
    /// (mosquitto's `use_identity_as_username`); `none`: certificates only admit the
    /// connection, and the CONNECT's user name and password count as without them.
    pub tls_cert_as_username: String,
    /// Largest keep alive (seconds, > 0) an MQTT 5 client may use; a client asking for more
    /// (or 0) is told this value as Server Keep Alive. Unset: the client's value.
    pub keep_alive_max_secs: Option<u16>,
    /// Interval of the `$SYS/broker/...` statistics publishes (seconds); 0: off.
    pub sys_interval_secs: u64,
    /// How often this broker uploads a snapshot of its persistent sessions to the object
    /// store (`mqtt/sessions/<node_id>`, only when they changed), so another broker can take
    /// them over when this one dies (`mqtt::cluster_sessions`); 0: off.
    pub session_snapshot_interval_ms: u64,
    /// `none` (any client connects) or `password` (CONNECT must carry a user name and a
    /// password; checked against `users`, then the SCRAM users in metadata; `mqtt::auth`).
    pub auth: String,
    /// `[[mqtt.users]]`: MQTT users with a PHC argon2id (or bcrypt) password hash.
    pub users: Vec<MqttUser>,
    /// `[[mqtt.acl]]` rules, first match wins.
    pub acl: Vec<MqttAclRule>,
    /// What no ACL rule decides: `allow` or `deny`.
    pub acl_default: String,
    /// PUBLISH packets per second one connection may send (token bucket, 1 s burst; over it
    /// the connection is not read until the budget refills); 0: no limit.
    pub client_publish_rate_max: u32,
    /// PUBLISH bytes (topic + payload) per second one connection may send, like
    /// `client_publish_rate_max`; 0: no limit.
    pub client_publish_bytes_rate_max: u64,
}

/// One `[[mqtt.users]]` entry. `Debug` leaves the hash out.
#[derive(Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MqttUser {
    pub name: String,
    /// `$argon2id$…` (`strata mqtt hash-password`) or bcrypt `$2b$…`.
    pub password_hash: String,
}

impl std::fmt::Debug for MqttUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttUser")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One `[[mqtt.acl]]` rule (checked in `mqtt::auth`).
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MqttAclRule {
    /// A user name, `*` (anyone) or `$anonymous` (no user name).
    pub user: String,
    /// `publish`, `subscribe` or `all`.
    pub action: String,
    /// An MQTT topic filter; `%u` and `%c` stand for the user name and the client id.
    pub filter: String,
    /// `allow` or `deny`.
    pub permission: String,
}

/// One `[[mqtt.kafka_mapping]]` rule: MQTT topics matching `filter` are stored in `kafka_topic`.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MqttKafkaMapping {
    pub filter: String,
    pub kafka_topic: String,
}

impl Default for MqttSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:1883".into(),
            packet_bytes_max: 1024 * 1024,
            connections_max: 10_000,
            default_kafka_topic: "mqtt-messages".into(),
            kafka_mapping: Vec::new(),
            session_expiry_max_secs: None,
            ws_listen: String::new(),
            tls_listen: "127.0.0.1:8883".into(),
            quic_listen: String::new(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_auth: "none".into(),
            tls_client_ca: None,
            tls_client_crl: None,
            tls_cert_as_username: "none".into(),
            keep_alive_max_secs: None,
            sys_interval_secs: 10,
            session_snapshot_interval_ms: 2000,
            auth: "none".into(),
            users: Vec::new(),
            acl: Vec::new(),
            acl_default: "allow".into(),
            client_publish_rate_max: 0,
            client_publish_bytes_rate_max: 0,
        }
    }
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub listen: String,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct WalSection {
    /// Default `<data_dir>/wal`.
    pub dir: Option<PathBuf>,
    pub segment_bytes_max: u64,
    /// When the WAL holds this much not-yet-uploaded data, produces fail with a retriable error.
    pub bytes_max: u64,
    /// Bytes gathered into one group commit (one write + fdatasync).
    pub group_commit_bytes_max: u64,
    /// The WAL replication listener of the `wal` role.
    pub listen: String,
    /// WAL replicas (`host:port` of `wal` nodes) every broker writes its stream to. Empty: the
    /// single-node WAL in `wal.dir` (R = 1). The same list on every node.
    #[serde(deserialize_with = "string_or_list")]
    pub peers: Vec<String>,
    /// W: replicas that must have an entry on disk before it is acknowledged; default a
    /// majority of `wal.replicas`.
    pub write_quorum: Option<u16>,
    /// R: replicas per stream, default all of `wal.peers`. With fewer, the other peers are
    /// spares that replace an unhealthy replica.
    pub replicas: Option<u16>,
    /// A stream replica unhealthy (unreachable, or stopped) this long is replaced by a spare
    /// peer (`wal.peers` beyond `wal.replicas`); 0 never.
    pub replica_replace_after_ms: u64,
    /// A spare that is not caught up this long after its replacement started is given up (the
    /// next replacement tries another); default `replica_replace_after_ms`.
    pub replica_catchup_timeout_ms: Option<u64>,
    /// `SCHED_FIFO` priority (1..=99) of the threads that write, fdatasync and commit WAL
    /// entries; 0: normal scheduling. Best effort: refused (no `CAP_SYS_NICE`), it warns once.
    pub realtime_priority: u8,
}

impl WalSection {
    /// `replica_catchup_timeout_ms`, resolved.
    pub fn catchup_timeout_ms(&self) -> u64 {
        self.replica_catchup_timeout_ms
            .unwrap_or(self.replica_replace_after_ms)
    }
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct TieringSection {
    pub flush_interval_ms: u64,
    pub flush_bytes_max: u64,
    /// Default `<data_dir>/cache`: the read cache's disk tier (`cache.*`).
    pub cache_dir: Option<PathBuf>,
    /// Already-uploaded bytes kept in memory per partition for tail readers.
    pub tail_bytes_max: u64,
    /// `retention.ms` of topics that set none (Kafka's `log.retention.ms`); -1 keeps forever.
    pub retention_ms: i64,
    /// `retention.bytes` of topics that set none (Kafka's `log.retention.bytes`); -1 = no limit.
    pub retention_bytes: i64,
    /// How often retention (`retention.ms` / `retention.bytes`) and the garbage sweeper run.
    pub retention_check_interval_ms: u64,
    /// How long an object stays in the store after the index stopped referencing it.
    pub garbage_grace_ms: u64,
    /// Bound on each attempt of an object-store request (a multipart upload: each part).
    pub store_request_timeout_ms: u64,
    /// Retries (with backoff and jitter) after a request's first attempt failed temporarily.
    pub store_retries_max: u32,
}

impl TieringSection {
    /// The object store's timeouts and retry policy from these settings.
    pub fn store_config(&self) -> strata_tiering::StoreConfig {
        strata_tiering::StoreConfig {
            request_timeout_ms: self.store_request_timeout_ms,
            retry_attempts_max: self.store_retries_max as usize,
            ..Default::default()
        }
    }
}

/// The read cache for object-storage data (memory + disk under `tiering.cache_dir`), in two
/// budgets: `recent` (upload blocks, read by lagging tail consumers) and `history` (segment
/// chunks, read by replays), so a replay cannot evict what the tail needs.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    pub recent_memory_bytes: u64,
    pub recent_disk_bytes: u64,
    pub history_memory_bytes: u64,
    pub history_disk_bytes: u64,
    /// Segment chunks fetched ahead of a reader that replays (per read).
    pub readahead_chunks: u32,
    /// Read-ahead GETs in flight at once, all replays together.
    pub readahead_concurrency: u32,
    /// Bytes per second that history reads (segment chunks: replays, read-ahead) may take from
    /// the object store, all together; 0: no limit (`log/cache.rs`, `Pace`).
    pub history_read_bytes_per_sec: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            recent_memory_bytes: 64 * 1024 * 1024,
            recent_disk_bytes: 256 * 1024 * 1024,
            history_memory_bytes: 64 * 1024 * 1024,
            history_disk_bytes: 1024 * 1024 * 1024,
            readahead_chunks: 8,
            readahead_concurrency: 8,
            history_read_bytes_per_sec: 0,
        }
    }
}

/// The compactor: small multi-partition upload objects → large per-partition segments.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionSection {
    pub enabled: bool,
    /// How often the compactor looks for work (and the orphan sweeper for its turn).
    pub interval_ms: u64,
    /// Target size of a segment's data; blocks smaller than half of it are compacted.
    pub segment_bytes: u64,
    /// Size of the chunks a segment is read in (one GET each; the unit of the read cache).
    pub chunk_bytes: u64,
    /// A run of small blocks is compacted once it has this many blocks (or `segment_bytes`).
    pub min_blocks: u32,
    /// A partition's newest upload blocks are compacted once the newest is this old, however
    /// few, so a partition that goes quiet does not keep its tail in upload objects (which stay
    /// until all their partitions' blocks are released). 0 leaves them to `min_blocks`.
    pub idle_ms: u64,
    /// How often the store is LISTed for objects nothing references (crashed uploads or
    /// compactions). Off the request path; 0 disables it.
    pub orphan_sweep_interval_ms: u64,
    /// An unreferenced object younger than this (by the time in its key) is left alone: its
    /// commit may still be on the way.
    pub orphan_grace_ms: u64,
}

impl Default for CompactionSection {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 30_000,
            segment_bytes: 256 * 1024 * 1024,
            chunk_bytes: 1024 * 1024,
            min_blocks: 8,
            idle_ms: 600_000,
            orphan_sweep_interval_ms: 3_600_000,
            orphan_grace_ms: 3_600_000,
        }
    }
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct MetaSection {
    /// Default `<data_dir>/meta`.
    pub dir: Option<PathBuf>,
    /// The meta gRPC listener (raft between meta nodes, the control API) of a cluster member.
    pub listen: String,
    /// The initial meta voters, `id@host:port` each, this node included. Empty: a single-node
    /// metadata store, no listener.
    #[serde(deserialize_with = "string_or_list")]
    pub peers: Vec<String>,
    /// A broker that has not heartbeated for this long loses its partitions to live brokers.
    pub broker_lease_ms: u64,
    /// How often a broker renews its lease (and looks for expired ones).
    pub heartbeat_interval_ms: u64,
    /// How long a starting broker waits for its WAL stream (held by a broker recovering it).
    pub stream_wait_ms: u64,
    /// The meta leader uploads a metadata snapshot to object storage this often when the state
    /// changed (`meta/snapshots/`); 0 turns metadata backups off.
    pub backup_interval_ms: u64,
    /// How often the meta leader uploads the log entries applied since (`meta/log/`).
    pub backup_log_ms: u64,
    /// Snapshots kept in object storage; older ones and the log they cover are deleted.
    pub backup_keep: u32,
}

impl Default for MetaSection {
    fn default() -> Self {
        Self {
            dir: None,
            listen: "127.0.0.1:1228".into(),
            peers: Vec::new(),
            broker_lease_ms: 6000,
            heartbeat_interval_ms: 1000,
            stream_wait_ms: 60_000,
            backup_interval_ms: 30_000,
            backup_log_ms: 1_000,
            backup_keep: 3,
        }
    }
}

/// Accepts `["a", "b"]` or `"a,b"` (how lists arrive from the environment and flags).
fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Either::deserialize(d)? {
        Either::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect(),
        Either::Many(v) => v,
    })
}

/// Accepts `["User:a", "User:b"]` or one string `"User:a;User:b"` / `"User:a,User:b"`: a `,`
/// splits only where a `Type:` principal follows, so DN principals keep their commas.
fn principal_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let items = one_or_list(d)?;
    let starts_principal = |s: &str| {
        s.split_once(':').is_some_and(|(ty, _)| {
            !ty.is_empty() && ty.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    let mut out: Vec<String> = Vec::new();
    for item in &items {
        for part in item.split(';') {
            let mut current: Option<String> = None;
            for piece in part.split(',') {
                match &mut current {
                    Some(c) if !starts_principal(piece.trim()) => {
                        c.push(',');
                        c.push_str(piece);
                    }
                    _ => {
                        out.extend(current.take().map(|c| c.trim().to_string()));
                        current = Some(piece.to_string());
                    }
                }
            }
            out.extend(current.map(|c| c.trim().to_string()));
        }
    }
    out.retain(|p| !p.is_empty());
    Ok(out)
}

/// Accepts `["a", "b"]` or one string `"a"`, never split (the items may contain commas).
fn one_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Either::deserialize(d)? {
        Either::One(s) => vec![s],
        Either::Many(v) => v,
    })
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./strata-data"),
            object_store: None,
            node_id: 1,
            roles: vec!["meta".into(), "wal".into(), "broker".into()],
            kafka: KafkaSection::default(),
            admin: AdminSection::default(),
            wal: WalSection::default(),
            tiering: TieringSection::default(),
            compaction: CompactionSection::default(),
            cache: CacheSection::default(),
            meta: MetaSection::default(),
            mqtt: MqttSection::default(),
            log: LogSection::default(),
            telemetry: TelemetrySection::default(),
            direct: DirectSection::default(),
            cluster: ClusterSection::default(),
            broker: BrokerSection::default(),
        }
    }
}

impl Default for KafkaSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9092".into(),
            advertised: None,
            auto_create_topics: true,
            default_partitions: 1,
            request_bytes_max: 100 * 1024 * 1024,
            message_bytes_max: None,
            inflight_requests_max: 32,
            connections_max: 10_000,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_auth: "none".into(),
            tls_client_ca: None,
            tls_client_crl: None,
            tls_principal_mapping: vec!["DEFAULT".into()],
            connections_max_reauth_ms: 0,
            sasl_mechanisms: Vec::new(),
            sasl_plain_without_tls: false,
            authorizer: "none".into(),
            super_users: Vec::new(),
            allow_everyone_if_no_acl_found: false,
        }
    }
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
        }
    }
}

impl Default for WalSection {
    fn default() -> Self {
        Self {
            dir: None,
            segment_bytes_max: 64 * 1024 * 1024,
            bytes_max: 1024 * 1024 * 1024,
            group_commit_bytes_max: 4 * 1024 * 1024,
            listen: "127.0.0.1:1778".into(),
            peers: Vec::new(),
            write_quorum: None,
            replicas: None,
            replica_replace_after_ms: 60_000,
            replica_catchup_timeout_ms: None,
            realtime_priority: 0,
        }
    }
}

impl Default for TieringSection {
    fn default() -> Self {
        Self {
            flush_interval_ms: 1000,
            flush_bytes_max: 8 * 1024 * 1024,
            cache_dir: None,
            tail_bytes_max: 4 * 1024 * 1024,
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            retention_check_interval_ms: 5000,
            garbage_grace_ms: 60_000,
            store_request_timeout_ms: 30_000,
            store_retries_max: 4,
        }
    }
}

/// The validated configuration a node runs with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub object_store: String,
    pub wal_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub meta_dir: PathBuf,
    pub kafka_listen: SocketAddr,
    pub kafka_advertised: (String, u16),
    pub admin_listen: SocketAddr,
    pub mqtt_listen: SocketAddr,
    /// `mqtt.ws_listen`, when set.
    pub mqtt_ws_listen: Option<SocketAddr>,
    /// `mqtt.tls_listen`, when the MQTT TLS certificate is set.
    pub mqtt_tls_listen: Option<SocketAddr>,
    /// `mqtt.quic_listen` (UDP), when set (the MQTT TLS certificate is then set too).
    pub mqtt_quic_listen: Option<SocketAddr>,
    /// `kafka.message_bytes_max`, resolved.
    pub message_bytes_max: u32,
    /// `kafka.tls_*` and `kafka.sasl_*`, loaded and checked.
    pub kafka_security: crate::kafka::auth::Security,
    pub roles: Roles,
    /// `meta.peers`, parsed; empty for a single-node metadata store.
    pub meta_peers: Vec<(u64, String)>,
    pub meta_listen: SocketAddr,
    pub wal_listen: SocketAddr,
    /// `(R, W)` when brokers write replicated streams to `wal.peers`; `None`: the local WAL.
    pub wal_quorum: Option<(u16, u16)>,
    /// `log.format`.
    pub log_format: LogFormat,
    /// `telemetry.*`, when `telemetry.otlp_endpoint` is set.
    pub telemetry: Option<crate::telemetry::OtlpConfig>,
    pub file: FileConfig,
    /// Where this configuration was read from, to read it again ([`reload`]).
    pub source: Source,
}

/// The file and flags a configuration was loaded from (the environment is read again).
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
}

/// Keys a running broker takes from a reloaded configuration (SIGHUP): MQTT credentials,
/// ACLs and publish rate limits. A change to any other key waits for a restart.
pub const RELOADABLE: &[&str] = &[
    "mqtt.auth",
    "mqtt.users",
    "mqtt.acl",
    "mqtt.acl_default",
    "mqtt.client_publish_rate_max",
    "mqtt.client_publish_bytes_rate_max",
];

/// A configuration read again ([`reload`]).
#[derive(Debug)]
pub struct Reloaded {
    pub config: NodeConfig,
    /// Changed keys a running broker takes ([`RELOADABLE`]).
    pub applied: Vec<String>,
    /// Changed keys that wait for a restart.
    pub restart: Vec<String>,
}

/// Reads the configuration from `source` again and compares it with the `running` one. An
/// invalid file is an error and changes nothing.
pub fn reload(source: &Source, running: &FileConfig) -> Result<Reloaded, ConfigError> {
    let config = load(source.file.as_deref(), std::env::vars(), &source.overrides)?;
    let (applied, restart) = changed_keys(running, &config.file)
        .into_iter()
        .partition(|k| RELOADABLE.contains(&k.as_str()));
    Ok(Reloaded {
        config,
        applied,
        restart,
    })
}

/// Copies the [`RELOADABLE`] keys of `new` into `running`.
pub fn apply_reloadable(running: &mut FileConfig, new: &FileConfig) {
    let (r, n) = (&mut running.mqtt, &new.mqtt);
    r.auth = n.auth.clone();
    r.users = n.users.clone();
    r.acl = n.acl.clone();
    r.acl_default = n.acl_default.clone();
    r.client_publish_rate_max = n.client_publish_rate_max;
    r.client_publish_bytes_rate_max = n.client_publish_bytes_rate_max;
}

/// The dotted keys (`kafka.listen`) whose values differ between two configurations.
pub fn changed_keys(a: &FileConfig, b: &FileConfig) -> Vec<String> {
    let (a, b) = (flat(a), flat(b));
    let mut changed: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    changed.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    changed
}

/// Every key of `f`, dotted (`kafka.listen`), with its value.
fn flat(f: &FileConfig) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut keys = std::collections::BTreeMap::new();
    if let Ok(serde_json::Value::Object(top)) = serde_json::to_value(f) {
        for (k, v) in top {
            match v {
                serde_json::Value::Object(inner) => {
                    for (ik, iv) in inner {
                        keys.insert(format!("{k}.{ik}"), iv);
                    }
                }
                v => {
                    keys.insert(k, v);
                }
            }
        }
    }
    keys
}

/// Which roles this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub meta: bool,
    pub wal: bool,
    pub broker: bool,
}

impl Roles {
    /// Whether the WAL replica server runs: the `wal` role of a cluster (with `wal.peers`), or
    /// a node that runs the `wal` role alone. A single node's broker writes its WAL in-process.
    pub fn serves_wal(&self, replicated: bool) -> bool {
        self.wal && (replicated || !self.broker)
    }
}

/// Kafka's default `message.max.bytes`.
const MESSAGE_BYTES_MAX_DEFAULT: u32 = 1024 * 1024 + 12;

/// Command-line flags that override config keys; `None` leaves the key alone.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub wal_dir: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub object_store: Option<String>,
    pub kafka_listen: Option<String>,
    pub admin_listen: Option<String>,
    pub mqtt_listen: Option<String>,
    pub mqtt_ws_listen: Option<String>,
    pub mqtt_tls_listen: Option<String>,
    pub mqtt_quic_listen: Option<String>,
    pub node_id: Option<u64>,
    pub roles: Option<String>,
    pub advertise: Option<String>,
    pub meta_listen: Option<String>,
    pub meta_peers: Option<String>,
    pub wal_listen: Option<String>,
    pub wal_peers: Option<String>,
    pub log_format: Option<String>,
    pub otlp_endpoint: Option<String>,
}

const SECTIONS: &[&str] = &[
    "kafka",
    "admin",
    "wal",
    "tiering",
    "compaction",
    "cache",
    "meta",
    "mqtt",
    "log",
    "telemetry",
    "direct",
    "cluster",
    "broker",
];
const ENV_PREFIX: &str = "STRATA_";

/// Loads file + environment + flags into a validated [`NodeConfig`].
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<NodeConfig, ConfigError> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            text.parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string().trim().replace('\n', " "),
                })?
        }
        None => toml::Table::new(),
    };
    for (name, value) in env {
        if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
            apply_env(&mut table, rest, &value)?;
        }
    }
    apply_overrides(&mut table, overrides);
    let file_config: FileConfig =
        FileConfig::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Invalid {
            message: e.to_string().trim().replace('\n', " "),
        })?;
    let mut config = validate(file_config)?;
    config.source = Source {
        file: file.map(Path::to_path_buf),
        overrides: overrides.clone(),
    };
    Ok(config)
}

/// Maps `STRATA_KAFKA_AUTO_CREATE_TOPICS` to `kafka.auto_create_topics`. Values are parsed as
/// TOML scalars when they can be (`false`, `200`), else kept as strings. Variables that name no
/// key (`STRATA_LOG`, a test harness's `STRATA_BIN`) are not config and are left alone; a
/// misspelt key in a *file* is still an error.
fn apply_env(table: &mut toml::Table, rest: &str, value: &str) -> Result<(), ConfigError> {
    let lower = rest.to_ascii_lowercase();
    let parsed = parse_scalar(value);
    let known = known_keys();
    for section in SECTIONS {
        if let Some(key) = lower.strip_prefix(&format!("{section}_")) {
            if !known.contains(&format!("{section}.{key}")) {
                return Ok(());
            }
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(inner) = entry else {
                return Err(ConfigError::BadValue {
                    key: section.to_string(),
                    message: "must be a table".into(),
                });
            };
            inner.insert(key.to_string(), parsed);
            return Ok(());
        }
    }
    if known.contains(&lower) {
        table.insert(lower, parsed);
    }
    Ok(())
}

/// Every key `FileConfig` declares, dotted (`kafka.listen`), read off the one declaration.
fn known_keys() -> std::collections::BTreeSet<String> {
    flat(&FileConfig::default()).into_keys().collect()
}

fn parse_scalar(value: &str) -> toml::Value {
    if let Ok(b) = value.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(i) = value.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    toml::Value::String(value.to_string())
}

fn apply_overrides(table: &mut toml::Table, o: &Overrides) {
    let mut set = |section: Option<&str>, key: &str, value: toml::Value| match section {
        None => {
            table.insert(key.to_string(), value);
        }
        Some(section) => {
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = entry {
                inner.insert(key.to_string(), value);
            }
        }
    };
    if let Some(v) = &o.data_dir {
        set(
            None,
            "data_dir",
            toml::Value::String(v.display().to_string()),
        );
    }
    if let Some(v) = &o.wal_dir {
        set(
            Some("wal"),
            "dir",
            toml::Value::String(v.display().to_string()),
        );
    }
    if let Some(v) = &o.cache_dir {
        set(
            Some("tiering"),
            "cache_dir",
            toml::Value::String(v.display().to_string()),
        );
    }
    if let Some(v) = &o.object_store {
        set(None, "object_store", toml::Value::String(v.clone()));
    }
    if let Some(v) = o.node_id {
        set(None, "node_id", toml::Value::Integer(v as i64));
    }
    if let Some(v) = &o.kafka_listen {
        set(Some("kafka"), "listen", toml::Value::String(v.clone()));
    }
    if let Some(v) = &o.admin_listen {
        set(Some("admin"), "listen", toml::Value::String(v.clone()));
    }
    if let Some(v) = &o.mqtt_listen {
        set(Some("mqtt"), "listen", toml::Value::String(v.clone()));
    }
    if let Some(v) = &o.mqtt_ws_listen {
        set(Some("mqtt"), "ws_listen", toml::Value::String(v.clone()));
    }
    if let Some(v) = &o.mqtt_tls_listen {
        set(Some("mqtt"), "tls_listen", toml::Value::String(v.clone()));
    }
    if let Some(v) = &o.mqtt_quic_listen {
        set(Some("mqtt"), "quic_listen", toml::Value::String(v.clone()));
    }
    if let Some(v) = &o.roles {
        set(None, "roles", toml::Value::String(v.clone()));
    }
    if let Some(v) = &o.advertise {
        set(Some("kafka"), "advertised", toml::Value::String(v.clone()));
    }
    if let Some(v) = &o.meta_listen {
        set(Some("meta"), "listen", toml::Value::String(v.clone()));
    }
    if let Some(v) = &o.meta_peers {
        set(Some("meta"), "peers", toml::Value::String(v.clone()));
    }
    if let Some(v) = &o.wal_listen {
        set(Some("wal"), "listen", toml::Value::String(v.clone()));
    }
    if let Some(v) = &o.wal_peers {
        set(Some("wal"), "peers", toml::Value::String(v.clone()));
    }
    if let Some(v) = &o.log_format {
        set(Some("log"), "format", toml::Value::String(v.clone()));
    }
    if let Some(v) = &o.otlp_endpoint {
        set(
            Some("telemetry"),
            "otlp_endpoint",
            toml::Value::String(v.clone()),
        );
    }
}

fn bad(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_string(),
        message: message.into(),
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    value
        .to_socket_addrs()
        .map_err(|e| bad(key, format!("`{value}` is not a host:port address ({e})")))?
        .next()
        .ok_or_else(|| bad(key, format!("`{value}` resolves to no address")))
}

fn validate(f: FileConfig) -> Result<NodeConfig, ConfigError> {
    let data_dir = f.data_dir.clone();
    let object_store = match &f.object_store {
        Some(url) => url.clone(),
        None => {
            let objects = absolute(&data_dir.join("objects"));
            format!("fs://{}", objects.display())
        }
    };
    let kafka_listen = parse_addr("kafka.listen", &f.kafka.listen)?;
    let admin_listen = parse_addr("admin.listen", &f.admin.listen)?;
    let mqtt_listen = parse_addr("mqtt.listen", &f.mqtt.listen)?;
    validate_mqtt(&f.mqtt)?;
    let mqtt_ws_listen = if f.mqtt.ws_listen.is_empty() {
        None
    } else {
        Some(parse_addr("mqtt.ws_listen", &f.mqtt.ws_listen)?)
    };
    let mqtt_tls_listen = match crate::mqtt::transport::tls_acceptor(&f.mqtt) {
        Ok(Some(_)) => Some(parse_addr("mqtt.tls_listen", &f.mqtt.tls_listen)?),
        Ok(None) => None,
        Err((key, why)) => return Err(bad(key, why)),
    };
    // QUIC is TLS 1.3: the listener needs the MQTT certificate (checked just above).
    let mqtt_quic_listen = if f.mqtt.quic_listen.is_empty() {
        None
    } else if mqtt_tls_listen.is_none() {
        return Err(bad(
            "mqtt.quic_listen",
            "needs mqtt.tls_cert_file and mqtt.tls_key_file (QUIC always runs TLS 1.3)",
        ));
    } else {
        Some(parse_addr("mqtt.quic_listen", &f.mqtt.quic_listen)?)
    };
    let kafka_advertised = match &f.kafka.advertised {
        Some(adv) => {
            let (host, port) = adv
                .rsplit_once(':')
                .ok_or_else(|| bad("kafka.advertised", "expected host:port"))?;
            let port = port
                .parse::<u16>()
                .map_err(|_| bad("kafka.advertised", format!("bad port `{port}`")))?;
            (host.to_string(), port)
        }
        None => {
            let host = if kafka_listen.ip().is_unspecified() {
                "localhost".to_string()
            } else {
                kafka_listen.ip().to_string()
            };
            (host, kafka_listen.port())
        }
    };
    if f.kafka.default_partitions == 0 || f.kafka.default_partitions > 10_000 {
        return Err(bad("kafka.default_partitions", "must be in 1..=10000"));
    }
    if f.kafka.request_bytes_max < 1024 {
        return Err(bad("kafka.request_bytes_max", "must be at least 1024"));
    }
    let message_bytes_max = match f.kafka.message_bytes_max {
        None => MESSAGE_BYTES_MAX_DEFAULT.min(f.kafka.request_bytes_max),
        Some(m) if m == 0 || m > f.kafka.request_bytes_max => {
            return Err(bad(
                "kafka.message_bytes_max",
                "must be positive and at most kafka.request_bytes_max",
            ))
        }
        Some(m) => m,
    };
    if f.kafka.inflight_requests_max == 0 {
        return Err(bad("kafka.inflight_requests_max", "must be positive"));
    }
    let kafka_security =
        crate::kafka::auth::Security::from_config(&f.kafka).map_err(|(k, m)| bad(k, m))?;
    crate::kafka::acl_handlers::check_config(&f.kafka).map_err(|(k, m)| bad(k, m))?;
    if f.wal.segment_bytes_max < 4096 {
        return Err(bad("wal.segment_bytes_max", "must be at least 4096"));
    }
    if f.wal.bytes_max < f.wal.segment_bytes_max {
        return Err(bad(
            "wal.bytes_max",
            "must be at least wal.segment_bytes_max",
        ));
    }
    if !crate::log::direct::STORAGE_MODES.contains(&f.direct.default_storage_mode.as_str()) {
        return Err(bad(
            "direct.default_storage_mode",
            "must be `wal` or `direct`",
        ));
    }
    if f.direct.batch_window_ms == 0 || f.direct.batch_window_ms > 10_000 {
        return Err(bad("direct.batch_window_ms", "must be 1..=10000"));
    }
    if f.direct.batch_bytes_max < 1024 {
        return Err(bad("direct.batch_bytes_max", "must be at least 1024"));
    }
    if f.direct.commit_timeout_ms < 100 {
        return Err(bad("direct.commit_timeout_ms", "must be at least 100"));
    }
    if f.tiering.flush_interval_ms == 0 {
        return Err(bad("tiering.flush_interval_ms", "must be positive"));
    }
    if f.tiering.store_request_timeout_ms < 100 {
        return Err(bad(
            "tiering.store_request_timeout_ms",
            "must be at least 100",
        ));
    }
    if f.tiering.flush_bytes_max < 1024 {
        return Err(bad("tiering.flush_bytes_max", "must be at least 1024"));
    }
    if f.tiering.retention_check_interval_ms == 0 {
        return Err(bad(
            "tiering.retention_check_interval_ms",
            "must be positive",
        ));
    }
    if f.compaction.interval_ms == 0 {
        return Err(bad("compaction.interval_ms", "must be positive"));
    }
    if f.compaction.chunk_bytes < 4096 || f.compaction.chunk_bytes > 256 * 1024 * 1024 {
        return Err(bad(
            "compaction.chunk_bytes",
            "must be between 4096 and 268435456",
        ));
    }
    if f.compaction.segment_bytes < f.compaction.chunk_bytes {
        return Err(bad(
            "compaction.segment_bytes",
            "must be at least compaction.chunk_bytes",
        ));
    }
    for (key, value) in [
        ("cache.recent_disk_bytes", f.cache.recent_disk_bytes),
        ("cache.history_disk_bytes", f.cache.history_disk_bytes),
    ] {
        if value < 32 * 1024 * 1024 {
            return Err(bad(key, "must be at least 33554432 (32 MiB)"));
        }
    }
    if f.cache.readahead_concurrency == 0 {
        return Err(bad("cache.readahead_concurrency", "must be positive"));
    }
    if f.compaction.min_blocks < 2 {
        return Err(bad("compaction.min_blocks", "must be at least 2"));
    }
    let mut roles = Roles {
        meta: false,
        wal: false,
        broker: false,
    };
    for role in &f.roles {
        match role.as_str() {
            "meta" => roles.meta = true,
            "wal" => roles.wal = true,
            "broker" => roles.broker = true,
            other => {
                return Err(bad(
                    "roles",
                    format!("unknown role `{other}`; roles are meta, wal, broker"),
                ))
            }
        }
    }
    if !(roles.meta || roles.wal || roles.broker) {
        return Err(bad("roles", "name at least one of meta, wal, broker"));
    }
    if roles.broker && !roles.meta && f.meta.peers.is_empty() {
        return Err(bad(
            "roles",
            "a broker without the meta role needs meta.peers (the meta members' id@host:port) to follow metadata from",
        ));
    }
    if f.node_id == 0 {
        return Err(bad("node_id", "must be positive"));
    }
    let meta_listen = parse_addr("meta.listen", &f.meta.listen)?;
    let wal_listen = parse_addr("wal.listen", &f.wal.listen)?;
    let mut meta_peers = Vec::new();
    for peer in &f.meta.peers {
        let (id, addr) = peer
            .split_once('@')
            .ok_or_else(|| bad("meta.peers", format!("`{peer}` is not id@host:port")))?;
        let id = id
            .parse::<u64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| bad("meta.peers", format!("`{peer}`: bad node id `{id}`")))?;
        parse_addr("meta.peers", addr)?;
        meta_peers.push((id, addr.to_string()));
    }
    // A meta-only node missing from the list joins a running group: it serves `meta.listen`
    // and waits until `strata cluster meta add` adds it. A broker cannot wait: it needs
    // metadata to register.
    if !meta_peers.is_empty()
        && roles.meta
        && roles.broker
        && !meta_peers.iter().any(|(id, _)| *id == f.node_id)
    {
        return Err(bad(
            "meta.peers",
            format!(
                "node {} is not in the list (a meta node that joins a running group starts \
                 with roles = [\"meta\"] and is added with `strata cluster meta add`)",
                f.node_id
            ),
        ));
    }
    for peer in &f.wal.peers {
        parse_addr("wal.peers", peer)?;
    }
    let wal_quorum = if f.wal.peers.is_empty() {
        if f.wal.write_quorum.is_some() {
            return Err(bad("wal.write_quorum", "needs wal.peers"));
        }
        if f.wal.replicas.is_some() {
            return Err(bad("wal.replicas", "needs wal.peers"));
        }
        if !meta_peers.is_empty() && roles.broker {
            return Err(bad(
                "wal.peers",
                "a cluster's brokers need WAL replicas (wal.peers) so another broker can recover their WAL",
            ));
        }
        None
    } else {
        let peers = u16::try_from(f.wal.peers.len()).unwrap_or(u16::MAX);
        let r = match f.wal.replicas {
            Some(r) if r == 0 || r > peers => {
                return Err(bad(
                    "wal.replicas",
                    format!("must be in 1..={peers} (the number of wal.peers)"),
                ))
            }
            Some(r) => r,
            None => peers,
        };
        if r > 15 {
            return Err(bad("wal.peers", "at most 15 replicas"));
        }
        let w = f.wal.write_quorum.unwrap_or(r / 2 + 1);
        if w == 0 || w > r {
            return Err(bad("wal.write_quorum", format!("must be in 1..={r}")));
        }
        Some((r, w))
    };
    if f.wal.replica_catchup_timeout_ms == Some(0) {
        return Err(bad(
            "wal.replica_catchup_timeout_ms",
            "must be positive (leave it unset for wal.replica_replace_after_ms)",
        ));
    }
    if f.wal.realtime_priority > strata_wal::REALTIME_PRIORITY_MAX {
        return Err(bad(
            "wal.realtime_priority",
            format!(
                "must be in 0..={} (0: normal scheduling)",
                strata_wal::REALTIME_PRIORITY_MAX
            ),
        ));
    }
    if f.meta.broker_lease_ms < 100 || f.meta.broker_lease_ms > 600_000 {
        return Err(bad("meta.broker_lease_ms", "must be in 100..=600000"));
    }
    if f.meta.heartbeat_interval_ms == 0 || f.meta.heartbeat_interval_ms >= f.meta.broker_lease_ms {
        return Err(bad(
            "meta.heartbeat_interval_ms",
            "must be positive and below meta.broker_lease_ms",
        ));
    }
    if f.meta.backup_log_ms < 10 || f.meta.backup_log_ms > 3_600_000 {
        return Err(bad("meta.backup_log_ms", "must be in 10..=3600000"));
    }
    if f.meta.backup_keep == 0 || f.meta.backup_keep > 1000 {
        return Err(bad("meta.backup_keep", "must be in 1..=1000"));
    }
    let log_format = match f.log.format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(bad(
                "log.format",
                format!("`{other}` is not a log format (text or json)"),
            ))
        }
    };
    let telemetry =
        crate::telemetry::OtlpConfig::from_section(&f.telemetry).map_err(|(k, m)| bad(k, m))?;
    Ok(NodeConfig {
        log_format,
        telemetry,
        roles,
        meta_peers,
        meta_listen,
        wal_listen,
        wal_quorum,
        node_id: f.node_id,
        wal_dir: f.wal.dir.clone().unwrap_or_else(|| data_dir.join("wal")),
        cache_dir: f
            .tiering
            .cache_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("cache")),
        meta_dir: f.meta.dir.clone().unwrap_or_else(|| data_dir.join("meta")),
        data_dir,
        object_store,
        kafka_listen,
        kafka_advertised,
        admin_listen,
        mqtt_listen,
        mqtt_ws_listen,
        mqtt_tls_listen,
        mqtt_quic_listen,
        message_bytes_max,
        kafka_security,
        file: f,
        source: Source::default(),
    })
}

/// The `[mqtt]` checks: limits, and every mapping rule's filter and Kafka topic.
fn validate_mqtt(m: &MqttSection) -> Result<(), ConfigError> {
    if m.packet_bytes_max < 1024 || m.packet_bytes_max > crate::mqtt::PACKET_BYTES_LIMIT {
        return Err(bad(
            "mqtt.packet_bytes_max",
            format!(
                "must be in 1024..={} (MQTT's largest packet)",
                crate::mqtt::PACKET_BYTES_LIMIT
            ),
        ));
    }
    if m.connections_max == 0 {
        return Err(bad("mqtt.connections_max", "must be positive"));
    }
    if m.keep_alive_max_secs == Some(0) {
        return Err(bad(
            "mqtt.keep_alive_max_secs",
            "must be positive (leave it unset for no limit)",
        ));
    }
    if m.session_snapshot_interval_ms != 0
        && !(100..=3_600_000).contains(&m.session_snapshot_interval_ms)
    {
        return Err(bad(
            "mqtt.session_snapshot_interval_ms",
            "must be in 100..=3600000 (or 0 for no snapshots)",
        ));
    }
    if m.session_expiry_max_secs == Some(0) {
        return Err(bad(
            "mqtt.session_expiry_max_secs",
            "must be positive (leave it unset for no limit)",
        ));
    }
    if let Err(e) = strata_types::TopicName::new(m.default_kafka_topic.clone()) {
        return Err(bad(
            "mqtt.default_kafka_topic",
            format!(
                "`{}` is not a valid Kafka topic name ({e})",
                m.default_kafka_topic
            ),
        ));
    }
    for (i, rule) in m.kafka_mapping.iter().enumerate() {
        if let Err(e) = crate::mqtt::topic::validate_filter(&rule.filter) {
            return Err(bad(
                &format!("mqtt.kafka_mapping[{i}].filter"),
                format!("`{}`: {e}", rule.filter),
            ));
        }
        if rule.kafka_topic.is_empty() {
            return Err(bad(
                &format!("mqtt.kafka_mapping[{i}].kafka_topic"),
                "must not be empty",
            ));
        }
        if let Err(e) = strata_types::TopicName::new(rule.kafka_topic.clone()) {
            return Err(bad(
                &format!("mqtt.kafka_mapping[{i}].kafka_topic"),
                format!(
                    "`{}` is not a valid Kafka topic name ({e})",
                    rule.kafka_topic
                ),
            ));
        }
    }
    // Authentication, ACLs and rate limits (`mqtt.auth`, `mqtt.users`, `mqtt.acl`, ...).
    crate::mqtt::auth::Auth::from_config(m).map_err(|e| bad(&e.key, e.message))?;
    Ok(())
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_str(
        toml_text: &str,
        env_pairs: &[(&str, &str)],
        o: &Overrides,
    ) -> Result<NodeConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml_text).unwrap();
        load(Some(&path), env(env_pairs), o)
    }

    #[test]
    fn reload_sorts_changes_into_applied_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let flags = Overrides {
            kafka_listen: Some("127.0.0.1:19092".into()),
            ..Overrides::default()
        };
        std::fs::write(&path, "[mqtt]\nacl_default = \"allow\"\n").unwrap();
        let started = load(Some(&path), env(&[]), &flags).unwrap();
        assert_eq!(started.source.file.as_deref(), Some(path.as_path()));
        let mut running = started.file.clone();

        std::fs::write(
            &path,
            "[mqtt]\nacl_default = \"deny\"\nclient_publish_rate_max = 5\nkeep_alive_max_secs = 60\n",
        )
        .unwrap();
        let r = reload(&started.source, &running).unwrap();
        assert_eq!(
            r.applied,
            ["mqtt.acl_default", "mqtt.client_publish_rate_max"]
        );
        assert_eq!(r.restart, ["mqtt.keep_alive_max_secs"]);
        // The flags are applied again: the listener is not reported as changed.
        assert_eq!(r.config.kafka_listen.port(), 19092);
        apply_reloadable(&mut running, &r.config.file);
        let again = reload(&started.source, &running).unwrap();
        assert!(again.applied.is_empty(), "{:?}", again.applied);
        assert_eq!(again.restart, ["mqtt.keep_alive_max_secs"]);

        // Every reloadable key is copied by `apply_reloadable`.
        let mut other = FileConfig::default();
        other.mqtt.auth = "password".into();
        other.mqtt.users = vec![MqttUser {
            name: "u".into(),
            password_hash: "$2b$04$x".into(),
        }];
        other.mqtt.acl = r.config.file.mqtt.acl.clone();
        other.mqtt.acl_default = "deny".into();
        other.mqtt.client_publish_rate_max = 1;
        other.mqtt.client_publish_bytes_rate_max = 2;
        let changed = changed_keys(&FileConfig::default(), &other);
        assert_eq!(
            changed.len(),
            RELOADABLE.len() - 1,
            "all but the (empty) ACL: {changed:?}"
        );
        let mut base = FileConfig::default();
        apply_reloadable(&mut base, &other);
        assert!(changed_keys(&base, &other).is_empty());

        std::fs::write(&path, "[mqtt]\nacl_default = 3\n").unwrap();
        assert!(reload(&started.source, &running).is_err());
    }

    #[test]
    fn defaults_are_embedded() {
        let c = load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.kafka_listen.port(), 9092);
        assert_eq!(c.admin_listen.port(), 8080);
        assert!(c.object_store.starts_with("fs://"));
        assert!(c.object_store.ends_with("strata-data/objects"));
        assert_eq!(c.wal_dir, PathBuf::from("./strata-data/wal"));
        assert!(c.file.kafka.auto_create_topics);
        assert_eq!(c.message_bytes_max, 1024 * 1024 + 12);
    }

    #[test]
    fn mqtt_session_snapshot_interval_is_checked() {
        for ok in ["0", "100", "2000"] {
            let text = format!("[mqtt]\nsession_snapshot_interval_ms = {ok}\n");
            assert!(load_str(&text, &[], &Overrides::default()).is_ok(), "{ok}");
        }
        for bad in ["1", "99", "3600001"] {
            let text = format!("[mqtt]\nsession_snapshot_interval_ms = {bad}\n");
            let err = load_str(&text, &[], &Overrides::default()).unwrap_err();
            assert!(
                err.to_string()
                    .contains("mqtt.session_snapshot_interval_ms"),
                "{err}"
            );
        }
    }

    #[test]
    fn message_limit_follows_a_smaller_request_limit() {
        let c = load_str(
            "[kafka]\nrequest_bytes_max = 1048576\n",
            &[],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.message_bytes_max, 1048576);
        let err = load_str(
            "[kafka]\nrequest_bytes_max = 1048576\nmessage_bytes_max = 2000000\n",
            &[],
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("kafka.message_bytes_max"));
    }

    #[test]
    fn layers_override_in_order() {
        let o = Overrides {
            kafka_listen: Some("127.0.0.1:19092".into()),
            ..Default::default()
        };
        let c = load_str(
            "[kafka]\nlisten = \"127.0.0.1:1\"\nauto_create_topics = true\n[tiering]\nflush_interval_ms = 5\n",
            &[
                ("STRATA_KAFKA_AUTO_CREATE_TOPICS", "false"),
                ("STRATA_TIERING_FLUSH_INTERVAL_MS", "200"),
                ("STRATA_DATA_DIR", "/tmp/x"),
                ("OTHER_VAR", "ignored"),
                ("STRATA_LOG", "debug"),
                ("STRATA_BIN", "/not/a/key"),
            ],
            &o,
        )
        .unwrap();
        assert_eq!(c.kafka_listen.port(), 19092);
        assert!(!c.file.kafka.auto_create_topics);
        assert_eq!(c.file.tiering.flush_interval_ms, 200);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.object_store, "fs:///tmp/x/objects");
    }

    #[test]
    fn wal_and_cache_dirs_have_their_own_flags() {
        let c = load_str("", &[("STRATA_DATA_DIR", "/tmp/d")], &Overrides::default()).unwrap();
        assert_eq!(c.wal_dir, PathBuf::from("/tmp/d/wal"));
        assert_eq!(c.cache_dir, PathBuf::from("/tmp/d/cache"));
        let o = Overrides {
            wal_dir: Some("/nvme/wal".into()),
            cache_dir: Some("/ssd/cache".into()),
            ..Default::default()
        };
        let c = load_str("[compaction]\nmin_blocks = 3\n", &[], &o).unwrap();
        assert_eq!(c.wal_dir, PathBuf::from("/nvme/wal"));
        assert_eq!(c.cache_dir, PathBuf::from("/ssd/cache"));
        assert_eq!(c.file.compaction.min_blocks, 3);
        let err = load_str(
            "[cache]\nhistory_disk_bytes = 1\n",
            &[],
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("cache.history_disk_bytes"),
            "{err}"
        );
    }

    #[test]
    fn super_users_keep_dn_commas() {
        type Case<'a> = (&'a str, &'a [&'a str]);
        let cases: &[Case] = &[
            ("\"User:admin,User:ops\"", &["User:admin", "User:ops"]),
            ("\"User:admin; User:ops\"", &["User:admin", "User:ops"]),
            (
                "\"User:CN=admin,OU=eng,O=Acme,User:bob\"",
                &["User:CN=admin,OU=eng,O=Acme", "User:bob"],
            ),
            (
                "\"User:CN=a,O=X;User:CN=b,O=Y\"",
                &["User:CN=a,O=X", "User:CN=b,O=Y"],
            ),
            ("[\"User:CN=a,O=X\"]", &["User:CN=a,O=X"]),
        ];
        for (value, expected) in cases {
            let c = load_str(
                &format!("[kafka]\nsuper_users = {value}\n"),
                &[],
                &Overrides::default(),
            )
            .expect(value);
            assert_eq!(c.file.kafka.super_users, *expected, "{value}");
        }
    }

    #[test]
    fn replica_catchup_timeout_defaults_to_the_replace_delay() {
        let c = load_str(
            "[wal]\nreplica_replace_after_ms = 2500\n",
            &[],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.file.wal.catchup_timeout_ms(), 2500);
        let c = load_str(
            "[wal]\nreplica_replace_after_ms = 2500\n",
            &[("STRATA_WAL_REPLICA_CATCHUP_TIMEOUT_MS", "90000")],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.file.wal.catchup_timeout_ms(), 90_000);
    }

    #[test]
    fn rejections_name_the_key() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("[kafka]\nlisen = \"x\"\n", &[], "lisen"),
            ("bogus = 1\n", &[], "bogus"),
            ("", &[("STRATA_KAFKA_LISTEN", "nonsense")], "kafka.listen"),
            ("[kafka]\nlisten = \"nonsense\"\n", &[], "kafka.listen"),
            ("[meta]\nbackup_log_ms = 0\n", &[], "meta.backup_log_ms"),
            ("", &[("STRATA_META_BACKUP_KEEP", "0")], "meta.backup_keep"),
            (
                "",
                &[("STRATA_WAL_REPLICA_CATCHUP_TIMEOUT_MS", "0")],
                "wal.replica_catchup_timeout_ms",
            ),
            (
                "",
                &[("STRATA_WAL_REALTIME_PRIORITY", "100")],
                "wal.realtime_priority",
            ),
            (
                "[kafka]\ndefault_partitions = 0\n",
                &[],
                "kafka.default_partitions",
            ),
            (
                "[tiering]\nflush_interval_ms = \"soon\"\n",
                &[],
                "flush_interval_ms",
            ),
            (
                "",
                &[("STRATA_TIERING_STORE_REQUEST_TIMEOUT_MS", "5")],
                "tiering.store_request_timeout_ms",
            ),
            ("[kafka\n", &[], "c.toml"),
            ("roles = [\"broker\"]\n", &[], "needs meta.peers"),
            (
                "roles = [\"meta\", \"broker\"]\n[meta]\npeers = [\"2@127.0.0.1:1228\"]\n",
                &[],
                "node 1 is not in the list (a meta node that joins",
            ),
            ("[log]\nformat = \"xml\"\n", &[], "log.format"),
            ("", &[("STRATA_LOG_FORMAT", "yaml")], "log.format"),
            (
                "[telemetry]\ntrace_sample_ratio = 1.5\n",
                &[],
                "telemetry.trace_sample_ratio",
            ),
            (
                "",
                &[("STRATA_TELEMETRY_TRACE_SAMPLE_RATIO", "-0.1")],
                "telemetry.trace_sample_ratio",
            ),
            (
                "[telemetry]\notlp_endpoint = \"collector:4318\"\n",
                &[],
                "telemetry.otlp_endpoint",
            ),
            (
                "[mqtt]\nquic_listen = \"127.0.0.1:14567\"\n",
                &[],
                "mqtt.quic_listen",
            ),
        ];
        for (text, env_pairs, key) in cases {
            let err = load_str(text, env_pairs, &Overrides::default())
                .expect_err(text)
                .to_string();
            assert!(err.contains(key), "{text:?}: `{err}` should name `{key}`");
        }
    }
}

#[cfg(test)]
mod reference {
    /// `docs/config.md` documents exactly the keys `FileConfig` declares.
    #[test]
    fn docs_match_declaration() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md"))
                .expect("docs/config.md");
        let documented: std::collections::BTreeSet<String> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(str::to_string)
            .collect();
        assert_eq!(documented, super::known_keys());
    }
}
