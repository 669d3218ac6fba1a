//! Retention and the garbage sweeper: one background task.
//!
//! Every `retention_check_interval_ms` it
//!
//! 1. computes, for each partition, how far its topic's `retention.ms` / `retention.bytes`
//!    (Kafka's topic configs; defaults 7 days and unlimited, `-1` = unlimited) allow the log to
//!    start, looking at the *metadata index only* — data still only in the WAL or the tail is
//!    never considered — and writes `TrimPartition` when that cut is past the current start;
//!    the partition's log start then moves (offsets below it are out of range);
//! 2. deletes from the object store each key metadata lists as garbage once it has been garbage
//!    for `garbage_grace_ms` (so reads already in flight finish), tolerating keys already gone,
//!    then tells metadata to forget them (`ForgetGarbage`).
//!
//! *Invariant:* the index is the only truth about object storage. The sweeper deletes only keys
//! that metadata says are garbage; it never LISTs the bucket. Whole objects only: a trim drops
//! whole index blocks, and an object is garbage only once none of its blocks is indexed.

use super::registry::Registry;
use super::sequencer::now_ms;
use crate::meta_handle::MetaHandle;
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use strata_meta::{Command, CommandResult, MetaState};
use strata_tiering::ObjectStore;
use strata_types::{BlockLocation, PartitionKey};
use tokio::sync::watch;

/// Kafka's default `retention.ms`: 7 days.
pub const RETENTION_MS_DEFAULT: i64 = 7 * 24 * 60 * 60 * 1000;
/// Kafka's default `retention.bytes`: unlimited.
pub const RETENTION_BYTES_DEFAULT: i64 = -1;
/// Most garbage objects deleted in one round.
const SWEEP_KEYS_MAX: usize = 1000;

/// A topic's retention limits; a negative value is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub ms: i64,
    pub bytes: i64,
}

impl Limits {
    /// Kafka's defaults (`log.retention.ms` 7 days, `log.retention.bytes` unlimited).
    pub const KAFKA_DEFAULTS: Limits = Limits {
        ms: RETENTION_MS_DEFAULT,
        bytes: RETENTION_BYTES_DEFAULT,
    };

    /// From a topic's configs; a missing or unparsable value takes the broker's default.
    pub fn from_configs(
        configs: &std::collections::BTreeMap<String, String>,
        defaults: Limits,
    ) -> Self {
        let get = |key: &str, default: i64| {
            configs
                .get(key)
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or(default)
        };
        Self {
            ms: get("retention.ms", defaults.ms),
            bytes: get("retention.bytes", defaults.bytes),
        }
    }
}

/// The offset the log may start at under `limits`: the end of the last leading index block that
/// is past retention (by time: its newest record is older than `now_ms - ms`; by size: dropping
/// the oldest blocks until the remaining indexed bytes are at most `bytes`). `None` when no
/// block is past retention. Whole blocks only.
pub fn retention_cut(blocks: &[&BlockLocation], now_ms: i64, limits: Limits) -> Option<i64> {
    let mut cut = None;
    if limits.ms >= 0 {
        let oldest_kept = now_ms.saturating_sub(limits.ms);
        for block in blocks {
            if block.max_timestamp >= oldest_kept {
                break;
            }
            cut = Some(block.end_offset);
        }
    }
    if limits.bytes >= 0 {
        let mut remaining: u64 = blocks.iter().map(|b| b.len).sum();
        let limit = limits.bytes as u64;
        for block in blocks {
            if remaining <= limit {
                break;
            }
            remaining -= block.len;
            cut = Some(cut.map_or(block.end_offset, |c: i64| c.max(block.end_offset)));
        }
    }
    cut
}

/// The trims retention wants now: `(partition, cut)` for every partition whose cut is past its
/// log start.
pub fn plan_trims(state: &MetaState, now_ms: i64, defaults: Limits) -> Vec<(PartitionKey, i64)> {
    let mut out = Vec::new();
    for meta in state.topics() {
        let limits = Limits::from_configs(&meta.configs, defaults);
        if limits.ms < 0 && limits.bytes < 0 {
            continue;
        }
        for partition in 0..meta.partitions {
            let blocks: Vec<&BlockLocation> = state.blocks(meta.id, partition).collect();
            if let Some(cut) = retention_cut(&blocks, now_ms, limits) {
                if cut > state.indexed_start(meta.id, partition) {
                    out.push((
                        PartitionKey {
                            topic: meta.id,
                            partition,
                        },
                        cut,
                    ));
                }
            }
        }
    }
    out
}

pub struct Retention {
    pub registry: Arc<Registry>,
    pub store: ObjectStore,
    pub meta: MetaHandle,
    pub metrics: Arc<Metrics>,
    pub interval: Duration,
    pub garbage_grace_ms: i64,
    /// Limits for topics that set none (`tiering.retention_ms` / `tiering.retention_bytes`).
    pub defaults: Limits,
    /// When this process first saw a garbage key that carries no garbage time (made garbage by
    /// a topic deletion): its grace period counts from then.
    pub first_seen: HashMap<String, i64>,
}

impl Retention {
    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            self.retain().await;
            self.sweep().await;
        }
    }

    /// Applies retention to every partition.
    async fn retain(&mut self) {
        let now = now_ms();
        let plans = plan_trims(&self.meta.read(), now, self.defaults);
        for (key, cut) in plans {
            let cmd = Command::TrimPartition {
                topic: key.topic,
                partition: key.partition,
                before_offset: cut,
                now_ms: now,
            };
            match self.meta.write(cmd).await {
                Ok(CommandResult::PartitionTrimmed { log_start_offset }) => {
                    if let Some(p) = self.registry.partition(&key) {
                        p.advance_log_start(log_start_offset);
                    }
                    Metrics::inc(&self.metrics.partitions_trimmed_total);
                    tracing::info!(?key, log_start_offset, "retention trimmed partition");
                }
                Ok(other) => tracing::warn!(?key, result = ?other, "retention trim refused"),
                Err(err) => tracing::warn!(?key, %err, "retention trim failed; will retry"),
            }
        }
    }

    /// Deletes garbage objects past their grace period, then lets metadata forget them.
    async fn sweep(&mut self) {
        let now = now_ms();
        let due: Vec<String> = {
            let state = self.meta.read();
            let mut due = Vec::new();
            let mut seen = HashMap::new();
            for key in state.garbage_keys() {
                let since = match state.garbage_since(key) {
                    Some(since) => since,
                    None => {
                        let first = self.first_seen.get(key).copied().unwrap_or(now);
                        seen.insert(key.to_owned(), first);
                        first
                    }
                };
                if due.len() < SWEEP_KEYS_MAX && now.saturating_sub(since) >= self.garbage_grace_ms
                {
                    due.push(key.to_owned());
                }
            }
            self.first_seen = seen;
            due
        };
        if due.is_empty() {
            return;
        }
        let mut deleted = Vec::with_capacity(due.len());
        for key in due {
            match self.store.delete(&key).await {
                Ok(()) => deleted.push(key),
                Err(err) if err.is_not_found() => deleted.push(key),
                Err(err) => tracing::warn!(key, %err, "garbage object delete failed; will retry"),
            }
        }
        if deleted.is_empty() {
            return;
        }
        let count = deleted.len() as u64;
        match self
            .meta
            .write(Command::ForgetGarbage {
                keys: deleted.clone(),
            })
            .await
        {
            Ok(CommandResult::GarbageForgotten) => {
                Metrics::add(&self.metrics.objects_deleted_total, count);
                for key in &deleted {
                    self.first_seen.remove(key);
                }
                tracing::debug!(objects = count, "garbage objects deleted");
            }
            Ok(other) => tracing::warn!(result = ?other, "forget garbage refused"),
            Err(err) => tracing::warn!(%err, "forget garbage failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use strata_types::TopicId;

    /// Blocks `(base, end, len, max_timestamp)`.
    fn blocks(spec: &[(i64, i64, u64, i64)]) -> Vec<BlockLocation> {
        spec.iter()
            .map(
                |&(base_offset, end_offset, len, max_timestamp)| BlockLocation {
                    key: format!("o{base_offset}"),
                    topic: TopicId::from_bytes([1; 16]),
                    partition: 0,
                    base_offset,
                    end_offset,
                    position: 0,
                    len,
                    max_timestamp,
                    crc32c: 0,
                    index_len: 0,
                    relative: false,
                },
            )
            .collect()
    }

    #[test]
    fn cuts() {
        let owned = blocks(&[
            (0, 10, 100, 1_000),
            (10, 20, 100, 5_000),
            (20, 30, 100, 2_000),
        ]);
        let index: Vec<&BlockLocation> = owned.iter().collect();
        let lim = |ms, bytes| Limits { ms, bytes };
        let cases: &[(&str, i64, Limits, Option<i64>)] = &[
            ("unlimited", 10_000, lim(-1, -1), None),
            ("nothing old enough", 10_000, lim(9_001, -1), None),
            ("first block expired", 10_000, lim(8_000, -1), Some(10)),
            ("boundary is kept", 10_000, lim(9_000, -1), None),
            // The third block is old, but the second is not: only leading blocks go.
            ("leading blocks only", 10_000, lim(6_000, -1), Some(10)),
            ("all expired", 10_000, lim(1_000, -1), Some(30)),
            ("size fits", 0, lim(-1, 300), None),
            ("size drops oldest", 0, lim(-1, 250), Some(10)),
            ("size drops two", 0, lim(-1, 100), Some(20)),
            ("size zero drops all", 0, lim(-1, 0), Some(30)),
            ("larger of both", 10_000, lim(8_000, 100), Some(20)),
            ("larger of both, time", 10_000, lim(1_000, 250), Some(30)),
            ("huge retention.ms", 10_000, lim(i64::MAX, -1), None),
        ];
        for (case, now, limits, want) in cases {
            assert_eq!(retention_cut(&index, *now, *limits), *want, "case `{case}`");
        }
        assert_eq!(retention_cut(&[], 0, lim(0, 0)), None, "empty index");
    }

    #[test]
    fn limits_from_configs() {
        let configs = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            Limits::from_configs(&configs(&[]), Limits::KAFKA_DEFAULTS),
            Limits {
                ms: RETENTION_MS_DEFAULT,
                bytes: -1
            }
        );
        assert_eq!(
            Limits::from_configs(
                &configs(&[("retention.ms", "86400000"), ("retention.bytes", "1024")]),
                Limits::KAFKA_DEFAULTS,
            ),
            Limits {
                ms: 86_400_000,
                bytes: 1024
            }
        );
        assert_eq!(
            Limits::from_configs(
                &configs(&[("retention.ms", "soon")]),
                Limits::KAFKA_DEFAULTS
            )
            .ms,
            RETENTION_MS_DEFAULT
        );
    }
}
