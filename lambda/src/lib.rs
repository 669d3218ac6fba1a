//! AWS Lambda entry points for StrataMQ: the `bootstrap` binary (`provided.al2023`).
//!
//! One function answers two kinds of events (dispatched on the event's shape in [`App::handle`]):
//!
//! - an HTTP event (a function URL or an API Gateway HTTP API, payload 2.0: it has
//!   `requestContext.http`) goes to the JSON API in [`http`]: list topics, produce records
//!   to a `direct` topic ([`produce`]), fetch records by offset or timestamp ([`fetch`]);
//! - an EventBridge scheduled event (`"detail-type": "Scheduled Event"`) runs one round of
//!   retention and compaction over every partition ([`maintenance`]).
//!
//! The function holds no state between invocations that matters for correctness: it is not a
//! metadata member and holds no partition lease. Metadata is read and written through
//! [`strata_meta::RemoteMeta`] (the meta gRPC API of the brokers), history through the object
//! store. A produce writes one object in the `direct` layout (one block per partition, batch
//! base offsets relative to the block) and proposes one `CommitDirect`: metadata assigns the
//! offsets at apply time, so the function and any number of brokers may append to the same
//! partition (see `broker/src/log/direct.rs`).
//!
//! *Boundary:* the object layout, the read checks (block CRC, `absolute`), compaction and
//! retention planning are the broker's (`strata_broker::log`); this crate calls them and adds
//! only the HTTP mapping and the Runtime API wiring. The orphan sweeper (which LISTs the
//! bucket) stays on brokers.

pub mod fetch;
pub mod http;
pub mod maintenance;
pub mod partitioner;
pub mod produce;

use serde_json::Value;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use strata_broker::metrics::Metrics;
use strata_meta::RemoteMeta;
use strata_tiering::ObjectStore;

/// How long one metadata call may take before the request fails with 503 (default of
/// `STRATA_META_TIMEOUT_MS`).
pub const META_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// The validated configuration, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Meta gRPC addresses (`host:port`), from `STRATA_META_ADDRS` (or `STRATA_META_PEERS`).
    pub meta_addrs: Vec<String>,
    /// The object store URL, from `STRATA_OBJECT_STORE`.
    pub object_store: String,
    /// The id in the keys of objects this function writes (`data/<id>/...`).
    pub node_id: u64,
    /// Whether `node_id` came from `STRATA_LAMBDA_NODE_ID` (else it is random per environment).
    pub node_id_from_env: bool,
    /// Bound on one metadata call, retries included (`STRATA_META_TIMEOUT_MS`).
    pub meta_timeout: Duration,
    /// Compaction knobs for the scheduled handler.
    pub policy: strata_broker::log::compactor::Policy,
    /// Retention of topics that set none: the brokers' `tiering.retention_ms` /
    /// `tiering.retention_bytes`, from the same variables (`STRATA_TIERING_RETENTION_MS`,
    /// `STRATA_TIERING_RETENTION_BYTES`); Kafka's defaults when unset. Keep them equal to the
    /// brokers' or the function trims what the brokers keep.
    pub retention_defaults: strata_broker::log::retention::Limits,
}

/// A configuration the function cannot start with; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

impl Config {
    /// Reads the configuration from `get` (the process environment in `main`).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let bad = |var: &'static str, reason: String| ConfigError { var, reason };
        let (var, raw) = match (get("STRATA_META_ADDRS"), get("STRATA_META_PEERS")) {
            (Some(v), _) => ("STRATA_META_ADDRS", v),
            (None, Some(v)) => ("STRATA_META_PEERS", v),
            (None, None) => {
                return Err(bad(
                    "STRATA_META_ADDRS",
                    "not set; give the meta gRPC addresses of the brokers, comma-separated \
                     (host:port or node@host:port)"
                        .into(),
                ))
            }
        };
        let mut meta_addrs = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // `STRATA_META_PEERS` (the Terraform module's) has the broker's `--meta-peers`
            // shape, `node@host:port`: the node id is not needed to reach the API.
            let addr = part.rsplit_once('@').map_or(part, |(_, a)| a);
            let addr = addr
                .strip_prefix("http://")
                .unwrap_or(addr)
                .trim_end_matches('/');
            let Some((host, port)) = addr.rsplit_once(':') else {
                return Err(bad(var, format!("`{part}` is not host:port")));
            };
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad(var, format!("`{part}` is not host:port")));
            }
            meta_addrs.push(addr.to_owned());
        }
        if meta_addrs.is_empty() {
            return Err(bad(var, "holds no address".into()));
        }
        let object_store = get("STRATA_OBJECT_STORE")
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                bad(
                    "STRATA_OBJECT_STORE",
                    "not set; give the object store URL (as `strata start --object-store`)".into(),
                )
            })?;
        let (node_id, node_id_from_env) = match get("STRATA_LAMBDA_NODE_ID") {
            Some(v) => match v.trim().parse::<u64>() {
                Ok(id) => (id, true),
                Err(_) => {
                    return Err(bad(
                        "STRATA_LAMBDA_NODE_ID",
                        format!("`{v}` is not an unsigned 64-bit integer"),
                    ))
                }
            },
            None => (rand::random::<u64>(), false),
        };
        let num = |var: &'static str, default: u64, min: u64| -> Result<u64, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n >= min => Ok(n),
                    _ => Err(bad(var, format!("`{v}` is not an integer >= {min}"))),
                },
            }
        };
        // The broker's defaults (`[compaction]` in its config).
        let policy = strata_broker::log::compactor::Policy {
            segment_bytes: num("STRATA_COMPACTION_SEGMENT_BYTES", 256 * 1024 * 1024, 4096)?,
            chunk_bytes: num("STRATA_COMPACTION_CHUNK_BYTES", 1024 * 1024, 4096)?,
            min_blocks: u32::try_from(num("STRATA_COMPACTION_MIN_BLOCKS", 8, 2)?)
                .map_err(|_| bad("STRATA_COMPACTION_MIN_BLOCKS", "too large".into()))?,
            idle_ms: num("STRATA_COMPACTION_IDLE_MS", 600_000, 0)?,
        };
        let meta_timeout = Duration::from_millis(num(
            "STRATA_META_TIMEOUT_MS",
            META_TIMEOUT_DEFAULT.as_millis() as u64,
            1,
        )?);
        let signed = |var: &'static str, default: i64| -> Result<i64, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| bad(var, format!("`{v}` is not an integer (-1 = unlimited)"))),
            }
        };
        let kafka = strata_broker::log::retention::Limits::KAFKA_DEFAULTS;
        let retention_defaults = strata_broker::log::retention::Limits {
            ms: signed("STRATA_TIERING_RETENTION_MS", kafka.ms)?,
            bytes: signed("STRATA_TIERING_RETENTION_BYTES", kafka.bytes)?,
        };
        Ok(Config {
            retention_defaults,
            meta_timeout,
            meta_addrs,
            object_store,
            node_id,
            node_id_from_env,
            policy,
        })
    }
}

/// Everything an invocation needs, built once per execution environment.
pub struct App {
    pub config: Config,
    pub meta: RemoteMeta,
    pub store: ObjectStore,
    /// Counters the shared broker code updates; not exported (Lambda has CloudWatch).
    pub metrics: Metrics,
    /// Round-robin position for records without a key.
    pub next_partition: AtomicU64,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Connects nothing yet: the metadata client connects lazily, the store is a handle.
    pub fn new(config: Config) -> Result<App, ConfigError> {
        let meta =
            RemoteMeta::new(config.meta_addrs.clone(), config.meta_timeout).map_err(|e| {
                ConfigError {
                    var: "STRATA_META_ADDRS",
                    reason: e.to_string(),
                }
            })?;
        let store = ObjectStore::from_url(&config.object_store).map_err(|e| ConfigError {
            var: "STRATA_OBJECT_STORE",
            reason: e.to_string(),
        })?;
        Ok(App {
            config,
            meta,
            store,
            metrics: Metrics::default(),
            next_partition: AtomicU64::new(rand::random::<u32>() as u64),
        })
    }

    /// Answers one invocation: `deadline_ms` is the invocation's deadline (ms since the
    /// epoch). An `Err` is reported to the Runtime API as the invocation's error.
    pub async fn handle(&self, event: Value, deadline_ms: u64) -> Result<Value, String> {
        match EventKind::of(&event) {
            EventKind::Http => {
                let req: lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequest =
                    serde_json::from_value(event)
                        .map_err(|e| format!("malformed HTTP (payload 2.0) event: {e}"))?;
                let request: lambda_http::Request =
                    lambda_http::request::LambdaRequest::ApiGatewayV2(req).into();
                let response = http::route(self, request, deadline_ms).await;
                serde_json::to_value(response).map_err(|e| e.to_string())
            }
            EventKind::Scheduled => {
                let summary = maintenance::run(self).await;
                serde_json::to_value(summary).map_err(|e| e.to_string())
            }
            EventKind::Other => Err(
                "unsupported event: expected an HTTP event (function URL / API Gateway HTTP API, \
                 with requestContext.http) or an EventBridge \"Scheduled Event\""
                    .into(),
            ),
        }
    }
}

/// What an event is, by its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Http,
    Scheduled,
    Other,
}

impl EventKind {
    pub fn of(event: &Value) -> EventKind {
        if event
            .get("requestContext")
            .and_then(|c| c.get("http"))
            .is_some_and(Value::is_object)
        {
            EventKind::Http
        } else if event.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event") {
            EventKind::Scheduled
        } else {
            EventKind::Other
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn config_from_env() {
        let ok = config(&[
            ("STRATA_META_ADDRS", "10.0.0.1:9093, 10.0.0.2:9093"),
            ("STRATA_OBJECT_STORE", "memory://"),
            ("STRATA_LAMBDA_NODE_ID", "77"),
        ])
        .unwrap();
        assert_eq!(ok.meta_addrs, ["10.0.0.1:9093", "10.0.0.2:9093"]);
        assert_eq!((ok.node_id, ok.node_id_from_env), (77, true));
        assert_eq!(ok.policy.min_blocks, 8);
        assert_eq!(
            ok.retention_defaults,
            strata_broker::log::retention::Limits::KAFKA_DEFAULTS
        );
        // The Terraform module's variable and shape.
        let tf = config(&[
            ("STRATA_META_PEERS", "1@10.0.0.1:9093,2@10.0.0.2:9093"),
            ("STRATA_OBJECT_STORE", "memory://"),
        ])
        .unwrap();
        assert_eq!(tf.meta_addrs, ["10.0.0.1:9093", "10.0.0.2:9093"]);
        assert!(!tf.node_id_from_env);
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("STRATA_OBJECT_STORE", "memory://")],
                "STRATA_META_ADDRS: not set",
            ),
            (
                &[("STRATA_META_ADDRS", "a:1")],
                "STRATA_OBJECT_STORE: not set",
            ),
            (
                &[
                    ("STRATA_META_ADDRS", "nope"),
                    ("STRATA_OBJECT_STORE", "memory://"),
                ],
                "`nope` is not host:port",
            ),
            (
                &[
                    ("STRATA_META_ADDRS", " , "),
                    ("STRATA_OBJECT_STORE", "memory://"),
                ],
                "holds no address",
            ),
            (
                &[
                    ("STRATA_META_ADDRS", "a:1"),
                    ("STRATA_OBJECT_STORE", "memory://"),
                    ("STRATA_LAMBDA_NODE_ID", "-3"),
                ],
                "STRATA_LAMBDA_NODE_ID: `-3`",
            ),
            (
                &[
                    ("STRATA_META_ADDRS", "a:1"),
                    ("STRATA_OBJECT_STORE", "memory://"),
                    ("STRATA_COMPACTION_MIN_BLOCKS", "1"),
                ],
                "STRATA_COMPACTION_MIN_BLOCKS",
            ),
            (
                &[
                    ("STRATA_META_ADDRS", "a:1"),
                    ("STRATA_OBJECT_STORE", "memory://"),
                    ("STRATA_TIERING_RETENTION_MS", "week"),
                ],
                "STRATA_TIERING_RETENTION_MS: `week`",
            ),
        ];
        for (vars, want) in cases {
            let err = config(vars).unwrap_err().to_string();
            assert!(err.contains(want), "{vars:?}: {err}");
        }
    }

    #[test]
    fn events_are_told_apart_by_shape() {
        let cases = [
            (
                json!({"version": "2.0", "requestContext": {"http": {"method": "GET"}}}),
                EventKind::Http,
            ),
            (
                json!({"detail-type": "Scheduled Event", "source": "aws.events"}),
                EventKind::Scheduled,
            ),
            (json!({"detail-type": "Other"}), EventKind::Other),
            (json!({"requestContext": {}}), EventKind::Other),
            (json!([1, 2]), EventKind::Other),
        ];
        for (event, want) in cases {
            assert_eq!(EventKind::of(&event), want, "{event}");
        }
    }
}
