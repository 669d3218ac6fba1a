//! [`ReplicationConfig`]: replica count, quorum, and every limit of the replication cores, in
//! one place.

use crate::config::{ENTRY_BYTES_MAX_CEILING, ENTRY_BYTES_MAX_DEFAULT, WAL_BYTES_MAX_DEFAULT};
use crate::WalError;

/// Default `replicas` (R).
pub const REPLICAS_DEFAULT: u16 = 3;
/// Default `write_quorum` (W).
pub const WRITE_QUORUM_DEFAULT: u16 = 2;
/// Upper bound for `replicas`: the cores keep per-replica state in small vectors and scan it on
/// every ack.
pub const REPLICAS_MAX: u16 = 15;
/// Default `inflight_bytes_max`: sent but not acknowledged bytes per replica.
pub const INFLIGHT_BYTES_MAX_DEFAULT: u64 = 8 << 20;
/// Default `message_bytes_max`: entries per append message (one larger entry goes alone).
pub const MESSAGE_BYTES_MAX_DEFAULT: u64 = 1 << 20;
/// Default `fetch_bytes_max`: entries per recovery fetch answer.
pub const FETCH_BYTES_MAX_DEFAULT: u64 = 4 << 20;
/// Upper bound for `fetch_bytes_max`, and what a replica answers at most whatever a fetch asks
/// for (one larger entry still goes alone).
pub const FETCH_BYTES_MAX_CEILING: u64 = 64 << 20;
/// Default `retransmit_timeout_ms`.
pub const RETRANSMIT_TIMEOUT_MS_DEFAULT: u64 = 500;
/// Default `replace_after_ms`: a replica unhealthy for a minute is replaced by a spare.
pub const REPLACE_AFTER_MS_DEFAULT: u64 = 60_000;

/// Configuration shared by [`crate::replication::Writer`] and [`crate::replication::Recovery`].
/// (The replica core needs none: it answers what it is asked, bounded by the request.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// R: replicas per stream.
    pub replicas: u16,
    /// W: replicas that must have an entry durable before it is committed. Recovery waits for
    /// `R - W + 1` seals.
    pub write_quorum: u16,
    /// Bytes sent to one replica and not yet acknowledged; the pipeline stops there.
    pub inflight_bytes_max: u64,
    /// Entry bytes per append message (a message always carries at least one entry).
    pub message_bytes_max: u64,
    /// Bytes of entries the writer keeps until they are trimmed (uploaded). An append that would
    /// go past it is refused with `AppendRefusal::Full`: the WAL's size limit.
    pub retained_bytes_max: u64,
    /// Largest payload accepted by an append.
    pub entry_bytes_max: u32,
    /// Entry bytes per recovery fetch answer (at least one entry).
    pub fetch_bytes_max: u64,
    /// Resend to a replica after this long without progress.
    pub retransmit_timeout_ms: u64,
    /// A replica that has not been healthy (connected and caught up, or making ack progress)
    /// for this long is reported for replacement (`OwnerCommand::ReplaceReplica`); 0 never.
    pub replace_after_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            replicas: REPLICAS_DEFAULT,
            write_quorum: WRITE_QUORUM_DEFAULT,
            inflight_bytes_max: INFLIGHT_BYTES_MAX_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            retained_bytes_max: WAL_BYTES_MAX_DEFAULT,
            entry_bytes_max: ENTRY_BYTES_MAX_DEFAULT,
            fetch_bytes_max: FETCH_BYTES_MAX_DEFAULT,
            retransmit_timeout_ms: RETRANSMIT_TIMEOUT_MS_DEFAULT,
            replace_after_ms: REPLACE_AFTER_MS_DEFAULT,
        }
    }
}

impl ReplicationConfig {
    /// Single-node mode: R = 1, W = 1.
    pub fn single_node() -> ReplicationConfig {
        ReplicationConfig {
            replicas: 1,
            write_quorum: 1,
            ..ReplicationConfig::default()
        }
    }

    /// How many seals recovery needs: `R - W + 1`, the smallest set that meets every write
    /// quorum (`W + (R - W + 1) = R + 1 > R`) and leaves fewer than W replicas unsealed.
    pub fn seal_quorum(&self) -> u16 {
        self.replicas - self.write_quorum + 1
    }

    /// Checks every field; the error names the offending key.
    pub fn validate(&self) -> Result<(), WalError> {
        let invalid = |key: &'static str, reason: String| WalError::InvalidConfig { key, reason };
        if self.replicas == 0 || self.replicas > REPLICAS_MAX {
            return Err(invalid(
                "replicas",
                format!("{} is outside 1..={REPLICAS_MAX}", self.replicas),
            ));
        }
        if self.write_quorum == 0 || self.write_quorum > self.replicas {
            return Err(invalid(
                "write_quorum",
                format!(
                    "{} is outside 1..={} (replicas)",
                    self.write_quorum, self.replicas
                ),
            ));
        }
        if self.entry_bytes_max == 0 || self.entry_bytes_max > ENTRY_BYTES_MAX_CEILING {
            return Err(invalid(
                "entry_bytes_max",
                format!(
                    "{} is outside 1..={ENTRY_BYTES_MAX_CEILING}",
                    self.entry_bytes_max
                ),
            ));
        }
        let nonzero = [
            ("inflight_bytes_max", self.inflight_bytes_max),
            ("message_bytes_max", self.message_bytes_max),
            ("fetch_bytes_max", self.fetch_bytes_max),
            ("retransmit_timeout_ms", self.retransmit_timeout_ms),
        ];
        for (key, value) in nonzero {
            if value == 0 {
                return Err(invalid(key, "must be above 0".to_string()));
            }
        }
        if self.fetch_bytes_max > FETCH_BYTES_MAX_CEILING {
            return Err(invalid(
                "fetch_bytes_max",
                format!(
                    "{} is above {FETCH_BYTES_MAX_CEILING}",
                    self.fetch_bytes_max
                ),
            ));
        }
        let entry_max = u64::from(self.entry_bytes_max) + super::msg::ENTRY_OVERHEAD_BYTES;
        if self.retained_bytes_max < entry_max {
            return Err(invalid(
                "retained_bytes_max",
                format!(
                    "{} is below one entry of entry_bytes_max ({entry_max} bytes with overhead)",
                    self.retained_bytes_max
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key() {
        let ok = ReplicationConfig::default();
        assert_eq!(ok.validate().ok(), Some(()));
        assert_eq!(ok.seal_quorum(), 2);
        assert_eq!(ReplicationConfig::single_node().seal_quorum(), 1);
        let cases: Vec<(&str, ReplicationConfig)> = vec![
            (
                "replicas",
                ReplicationConfig {
                    replicas: 0,
                    ..ok.clone()
                },
            ),
            (
                "replicas",
                ReplicationConfig {
                    replicas: 16,
                    write_quorum: 2,
                    ..ok.clone()
                },
            ),
            (
                "write_quorum",
                ReplicationConfig {
                    write_quorum: 0,
                    ..ok.clone()
                },
            ),
            (
                "write_quorum",
                ReplicationConfig {
                    write_quorum: 4,
                    ..ok.clone()
                },
            ),
            (
                "entry_bytes_max",
                ReplicationConfig {
                    entry_bytes_max: 0,
                    ..ok.clone()
                },
            ),
            (
                "inflight_bytes_max",
                ReplicationConfig {
                    inflight_bytes_max: 0,
                    ..ok.clone()
                },
            ),
            (
                "retransmit_timeout_ms",
                ReplicationConfig {
                    retransmit_timeout_ms: 0,
                    ..ok.clone()
                },
            ),
            (
                "fetch_bytes_max",
                ReplicationConfig {
                    fetch_bytes_max: 65 << 20,
                    ..ok.clone()
                },
            ),
            (
                "retained_bytes_max",
                ReplicationConfig {
                    retained_bytes_max: 100,
                    ..ok.clone()
                },
            ),
        ];
        for (key, cfg) in cases {
            match cfg.validate() {
                Err(WalError::InvalidConfig { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: expected InvalidConfig, got {other:?}"),
            }
        }
    }
}
