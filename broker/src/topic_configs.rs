//! Topic and broker configs under Kafka's names: the one vocabulary that CreateTopics,
//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs (and the admin CLI/HTTP) share.
//!
//! A topic's configs live in metadata (`TopicMeta::configs`, changed by `AlterTopicConfigs`),
//! so they are durable, replicated and read by whoever acts on them: the retention task reads
//! `retention.ms` / `retention.bytes` from the topic on every round. Only keys listed in
//! [`TOPIC_KEYS`] are accepted; anything else is refused with an error naming the key, so a
//! client never believes a setting took effect when nothing here reads it.
//!
//! Broker configs are read-only here: they come from the node's config file (TOML/env/flags),
//! and are described under Kafka's names where Kafka has one (`log.retention.ms` for
//! `tiering.retention_ms`).

use crate::node::Node;
use std::collections::BTreeMap;
use strata_meta::{Command, CommandResult, Rejection, TopicMeta};
use strata_types::TopicName;

/// Where a described value comes from (Kafka's `ConfigSource` numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// Set on the topic (`DYNAMIC_TOPIC_CONFIG`).
    Topic = 1,
    /// From the node's config file (`STATIC_BROKER_CONFIG`).
    Broker = 4,
    /// Kafka's built-in default (`DEFAULT_CONFIG`).
    Default = 5,
}

/// Kafka's config value types (DescribeConfigs v3+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    List = 7,
}

/// One described config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: &'static str,
    pub value: String,
    pub read_only: bool,
    pub source: ConfigSource,
    pub config_type: ConfigType,
    pub doc: &'static str,
    /// Where else the value is set, most specific first (Kafka's synonyms): the topic's own
    /// setting, then the broker default it overrides.
    pub synonyms: Vec<(&'static str, String, ConfigSource)>,
}

/// Why a config change was refused. Each names the key (or topic) it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("topic `{name}` does not exist")]
    UnknownTopic { name: String },
    #[error("unsupported config `{key}`: this broker knows {known}")]
    UnknownKey { key: String, known: String },
    #[error("config `{key}` is read-only{hint}")]
    ReadOnly { key: String, hint: String },
    #[error("invalid value {value:?} for config `{key}`: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("config `{key}` appears more than once")]
    Duplicate { key: String },
    #[error("config `{key}`: {op} applies to list configs only")]
    NotAList { key: String, op: &'static str },
    #[error("{0}")]
    Refused(String),
    #[error("metadata write failed: {0}")]
    Unavailable(String),
}

/// One change to a topic's configs (IncrementalAlterConfigs' operations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOp {
    Set(String, String),
    /// Back to the default.
    Delete(String),
    Append(String, String),
    Subtract(String, String),
}

struct TopicKey {
    name: &'static str,
    config_type: ConfigType,
    read_only: bool,
    doc: &'static str,
    /// The broker-level synonym (Kafka's name) that supplies the default.
    broker_name: &'static str,
}

/// Every topic config this broker knows.
const TOPIC_KEYS: &[TopicKey] = &[
    TopicKey {
        name: "retention.ms",
        config_type: ConfigType::Long,
        read_only: false,
        doc: "How long records are kept (ms); -1 keeps them forever. Whole objects are dropped.",
        broker_name: "log.retention.ms",
    },
    TopicKey {
        name: "retention.bytes",
        config_type: ConfigType::Long,
        read_only: false,
        doc: "Most bytes kept per partition in object storage; -1 is unlimited.",
        broker_name: "log.retention.bytes",
    },
    TopicKey {
        name: "cleanup.policy",
        config_type: ConfigType::List,
        read_only: false,
        doc: "Only `delete` (retention) is implemented; `compact` is not.",
        broker_name: "log.cleanup.policy",
    },
    TopicKey {
        name: "max.message.bytes",
        config_type: ConfigType::Int,
        read_only: true,
        doc: "Largest record batch accepted; set per node by kafka.message_bytes_max.",
        broker_name: "message.max.bytes",
    },
    TopicKey {
        name: STORAGE_MODE_KEY,
        config_type: ConfigType::String,
        read_only: false,
        doc: "`wal` (acknowledged on a WAL quorum) or `direct` (acknowledged once the object is in object storage). Fixed when the topic is created.",
        broker_name: "strata.default.storage.mode",
    },
];

use crate::log::direct::{STORAGE_MODES, STORAGE_MODE_KEY};

/// The configs of a topic about to be created, with its storage mode made explicit when the
/// node's `direct.default_storage_mode` is not `wal` and none is given: a topic without the
/// key is a `wal` topic, so a later change of the node's default does not move it.
pub fn with_default_storage_mode(
    node: &Node,
    mut configs: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    // Absent means `wal`, so only another default needs writing down.
    let default = &node.config.file.direct.default_storage_mode;
    if default != "wal" {
        configs
            .entry(STORAGE_MODE_KEY.to_owned())
            .or_insert_with(|| default.clone());
    }
    configs
}

/// Refuses any change of a topic's storage mode (setting it to its current value is a no-op).
fn check_storage_mode_fixed(meta: &TopicMeta, ops: &[ConfigOp]) -> Result<(), ConfigError> {
    let current = meta
        .configs
        .get(STORAGE_MODE_KEY)
        .map_or("wal", String::as_str);
    let changes = ops.iter().any(|op| match op {
        ConfigOp::Set(k, v) => k == STORAGE_MODE_KEY && v.trim() != current,
        ConfigOp::Delete(k) | ConfigOp::Append(k, _) | ConfigOp::Subtract(k, _) => {
            k == STORAGE_MODE_KEY
        }
    });
    if changes {
        return Err(ConfigError::ReadOnly {
            key: STORAGE_MODE_KEY.to_owned(),
            hint: format!(
                ": the storage mode is fixed when the topic is created (topic `{}` is `{current}`)",
                meta.name
            ),
        });
    }
    Ok(())
}

fn known_keys() -> String {
    TOPIC_KEYS
        .iter()
        .map(|k| k.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn topic_key(key: &str) -> Result<&'static TopicKey, ConfigError> {
    TOPIC_KEYS
        .iter()
        .find(|k| k.name == key)
        .ok_or_else(|| ConfigError::UnknownKey {
            key: key.to_owned(),
            known: known_keys(),
        })
}

/// Checks one topic config as it would be stored.
pub fn validate_topic_config(key: &str, value: &str) -> Result<(), ConfigError> {
    let spec = topic_key(key)?;
    let invalid = |reason: &str| ConfigError::InvalidValue {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    if spec.read_only {
        return Err(ConfigError::ReadOnly {
            key: key.to_owned(),
            hint: ": it is the node's kafka.message_bytes_max".to_owned(),
        });
    }
    match key {
        "retention.ms" | "retention.bytes" => match value.trim().parse::<i64>() {
            Ok(v) if v >= -1 => Ok(()),
            Ok(_) => Err(invalid("must be -1 (unlimited) or at least 0")),
            Err(_) => Err(invalid("not an integer")),
        },
        STORAGE_MODE_KEY => {
            if STORAGE_MODES.contains(&value) {
                Ok(())
            } else {
                Err(invalid("must be `wal` or `direct`"))
            }
        }
        "cleanup.policy" => {
            if value
                .split(',')
                .map(str::trim)
                .all(|p| p.eq_ignore_ascii_case("delete"))
            {
                Ok(())
            } else {
                Err(invalid(
                    "only `delete` is supported (log compaction is not)",
                ))
            }
        }
        _ => Ok(()),
    }
}

/// Checks the configs of a topic about to be created.
pub fn validate_topic_configs(configs: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    configs
        .iter()
        .try_for_each(|(k, v)| validate_topic_config(k, v))
}

/// The broker-level value of `key`'s default, and whether the node's config set it.
fn broker_default(node: &Node, broker_name: &str) -> (String, ConfigSource) {
    let cfg = &node.config;
    match broker_name {
        "log.retention.ms" => (
            cfg.file.tiering.retention_ms.to_string(),
            if cfg.file.tiering.retention_ms == crate::log::retention::RETENTION_MS_DEFAULT {
                ConfigSource::Default
            } else {
                ConfigSource::Broker
            },
        ),
        "log.retention.bytes" => (
            cfg.file.tiering.retention_bytes.to_string(),
            if cfg.file.tiering.retention_bytes == crate::log::retention::RETENTION_BYTES_DEFAULT {
                ConfigSource::Default
            } else {
                ConfigSource::Broker
            },
        ),
        "message.max.bytes" => (cfg.message_bytes_max.to_string(), ConfigSource::Broker),
        "strata.default.storage.mode" => (
            cfg.file.direct.default_storage_mode.clone(),
            if cfg.file.direct.default_storage_mode == "wal" {
                ConfigSource::Default
            } else {
                ConfigSource::Broker
            },
        ),
        _ => ("delete".to_owned(), ConfigSource::Default),
    }
}

/// Every known config of a topic: its own value where it set one, else the broker default.
pub fn describe_topic(node: &Node, meta: &TopicMeta) -> Vec<ConfigEntry> {
    TOPIC_KEYS
        .iter()
        .map(|spec| {
            let (default, default_source) = broker_default(node, spec.broker_name);
            let mut synonyms = Vec::new();
            let own = meta.configs.get(spec.name).filter(|_| !spec.read_only);
            if let Some(v) = own {
                synonyms.push((spec.name, v.clone(), ConfigSource::Topic));
            }
            synonyms.push((spec.broker_name, default.clone(), default_source));
            let (value, source) = match own {
                Some(v) => (v.clone(), ConfigSource::Topic),
                // A topic created before storage modes existed is a WAL topic.
                None if spec.name == STORAGE_MODE_KEY => ("wal".to_owned(), ConfigSource::Default),
                None => (default, default_source),
            };
            ConfigEntry {
                name: spec.name,
                value,
                read_only: spec.read_only,
                source,
                config_type: spec.config_type,
                doc: spec.doc,
                synonyms,
            }
        })
        .collect()
}

/// The node's configs under Kafka's broker names; all read-only (set them in the node's config).
pub fn describe_broker(node: &Node) -> Vec<ConfigEntry> {
    let cfg = &node.config;
    let entry = |name, value: String, config_type, doc| ConfigEntry {
        name,
        value,
        read_only: true,
        source: ConfigSource::Broker,
        config_type,
        doc,
        synonyms: Vec::new(),
    };
    let (retention_ms, _) = broker_default(node, "log.retention.ms");
    let (retention_bytes, _) = broker_default(node, "log.retention.bytes");
    vec![
        entry(
            "broker.id",
            cfg.node_id.to_string(),
            ConfigType::Int,
            "This node's id (node_id).",
        ),
        entry(
            "log.dirs",
            cfg.data_dir.display().to_string(),
            ConfigType::String,
            "The node's data directory (--data-dir).",
        ),
        entry(
            "log.retention.ms",
            retention_ms,
            ConfigType::Long,
            "retention.ms of topics that set none (tiering.retention_ms).",
        ),
        entry(
            "log.retention.bytes",
            retention_bytes,
            ConfigType::Long,
            "retention.bytes of topics that set none (tiering.retention_bytes).",
        ),
        entry(
            "log.retention.check.interval.ms",
            cfg.file.tiering.retention_check_interval_ms.to_string(),
            ConfigType::Long,
            "How often retention runs (tiering.retention_check_interval_ms).",
        ),
        entry(
            "log.cleanup.policy",
            "delete".to_owned(),
            ConfigType::List,
            "Only delete is implemented.",
        ),
        entry(
            "num.partitions",
            cfg.file.kafka.default_partitions.to_string(),
            ConfigType::Int,
            "Partitions of auto-created topics (kafka.default_partitions).",
        ),
        entry(
            "auto.create.topics.enable",
            cfg.file.kafka.auto_create_topics.to_string(),
            ConfigType::Boolean,
            "Whether Metadata creates unknown topics (kafka.auto_create_topics).",
        ),
        entry(
            "message.max.bytes",
            cfg.message_bytes_max.to_string(),
            ConfigType::Int,
            "Largest record batch accepted (kafka.message_bytes_max).",
        ),
    ]
}

/// Applies changes to a topic's configs: checks every key and value, then (unless
/// `validate_only`) writes one `AlterTopicConfigs` to metadata. `replace` is Kafka's
/// AlterConfigs: keys not set by `ops` go back to their defaults. The entry point for the
/// Kafka handlers and for the admin CLI/HTTP.
pub async fn alter_topic_configs(
    node: &Node,
    topic: &str,
    ops: &[ConfigOp],
    replace: bool,
    validate_only: bool,
) -> Result<TopicMeta, ConfigError> {
    let unknown = || ConfigError::UnknownTopic {
        name: topic.to_owned(),
    };
    let name = TopicName::new(topic).map_err(|_| unknown())?;
    let meta = node.meta.read().topic(name.as_str()).cloned();
    let meta = meta.ok_or_else(unknown)?;
    check_storage_mode_fixed(&meta, ops)?;
    let mut changes: BTreeMap<String, Option<String>> = BTreeMap::new();
    for op in ops {
        let (key, change) = match op {
            ConfigOp::Set(k, v) => {
                validate_topic_config(k, v)?;
                (k, Some(v.clone()))
            }
            ConfigOp::Delete(k) => {
                let spec = topic_key(k)?;
                if spec.read_only {
                    return Err(ConfigError::ReadOnly {
                        key: k.clone(),
                        hint: String::new(),
                    });
                }
                (k, None)
            }
            ConfigOp::Append(k, v) | ConfigOp::Subtract(k, v) => {
                let spec = topic_key(k)?;
                let append = matches!(op, ConfigOp::Append(..));
                if spec.config_type != ConfigType::List {
                    let op = if append { "APPEND" } else { "SUBTRACT" };
                    return Err(ConfigError::NotAList { key: k.clone(), op });
                }
                // The only list config, cleanup.policy, has one valid value, `delete`:
                // appending it changes nothing, and subtracting it would leave no policy.
                validate_topic_config(k, v)?;
                if !append {
                    return Err(ConfigError::InvalidValue {
                        key: k.clone(),
                        value: v.clone(),
                        reason: "the policy cannot be empty".to_owned(),
                    });
                }
                (k, Some("delete".to_owned()))
            }
        };
        if changes.insert(key.clone(), change).is_some() {
            return Err(ConfigError::Duplicate { key: key.clone() });
        }
    }
    if replace {
        // AlterConfigs resets unnamed keys; the storage mode is not resettable.
        if let Some(mode) = meta.configs.get(STORAGE_MODE_KEY) {
            changes
                .entry(STORAGE_MODE_KEY.to_owned())
                .or_insert_with(|| Some(mode.clone()));
        }
    }
    if validate_only {
        return Ok(meta);
    }
    let cmd = Command::AlterTopicConfigs {
        name,
        configs: changes,
        replace,
    };
    match node.meta.write(cmd).await {
        Ok(CommandResult::TopicAltered(meta)) => Ok(meta),
        Ok(CommandResult::Rejected(Rejection::UnknownTopic { .. })) => Err(unknown()),
        Ok(CommandResult::Rejected(r)) => Err(ConfigError::Refused(r.to_string())),
        Ok(other) => Err(ConfigError::Unavailable(format!("unexpected {other:?}"))),
        Err(err) => Err(ConfigError::Unavailable(err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_values_are_checked_by_key() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("retention.ms", "1000", None),
            ("retention.ms", "-1", None),
            ("retention.ms", "-2", Some("at least 0")),
            ("retention.ms", "soon", Some("not an integer")),
            ("retention.bytes", "0", None),
            ("cleanup.policy", "delete", None),
            ("cleanup.policy", "compact", Some("log compaction")),
            ("strata.storage.mode", "direct", None),
            ("strata.storage.mode", "wal", None),
            ("strata.storage.mode", "memory", Some("`wal` or `direct`")),
            ("max.message.bytes", "10", Some("read-only")),
            ("segment.ms", "10", Some("unsupported config `segment.ms`")),
        ];
        for (key, value, want) in cases {
            let got = validate_topic_config(key, value);
            match want {
                None => assert_eq!(got, Ok(()), "{key}={value}"),
                Some(part) => {
                    let msg = got.expect_err(key).to_string();
                    assert!(msg.contains(part), "{key}={value}: {msg}");
                    assert!(
                        msg.contains(key),
                        "{key}={value}: the message names the key"
                    );
                }
            }
        }
    }
}
