//! The compactor and the orphan sweeper: one background task.
//!
//! Every `compaction.interval_ms` it looks at the index of each partition this broker leads
//! and, where it finds a run of small blocks, rewrites them as one *segment* (one partition's
//! batches in chunks, with an offset and time index in its footer — `tiering::segment`):
//!
//! 1. read each block of the run (ranged GETs, each checked against its CRC32C, or chunk by
//!    chunk against a segment's index);
//! 2. build the segment and PUT it under a fresh key. Checking and copying a run (up to
//!    `segment_bytes`) is tens of milliseconds of CPU, so it runs on the blocking pool, one
//!    block at a time as it arrives, never on a runtime worker that serves requests;
//! 3. `CompactPartition` swaps the run for the segment in the metadata index in one raft
//!    write. Objects left with no indexed block become garbage and the retention task's sweeper
//!    deletes them after `tiering.garbage_grace_ms`.
//!
//! *Crash safety.* A crash before step 3 leaves an object nothing references (an *orphan*);
//! after it, the swap is done. Readers find data only through the index, so at every moment a
//! record is visible exactly once: through the old blocks or through the segment. If retention
//! or another compaction changed the run meanwhile, step 3 is refused as stale and the new
//! object is deleted at once.
//!
//! *Which runs* ([`plan`]): consecutive blocks that are not done segments (half a segment or
//! more), at most `segment_bytes` in all, once there are `min_blocks` of them or half a segment
//! in two or more — and never a run whose first block is a segment outweighing the rest, so a
//! segment is rewritten only when at least as much new data joins it (each byte is rewritten a
//! few times, not once per compaction). An upload block is never done, whatever its size: it
//! has no chunk or time index, and its object stays until every partition's block in it is
//! released. So a run that holds one is also taken once it can no longer grow (a done segment
//! or the size bound follows it) or, at the end of the index, once its newest block is
//! `idle_ms` old.
//!
//! *Orphans.* Every `compaction.orphan_sweep_interval_ms` (and only there — never on a request
//! path) the sweeper LISTs the prefixes this code writes (`data/`, `segments/`) and deletes
//! objects the index does not reference, that are not garbage waiting for its grace period,
//! and whose key says they were created more than `compaction.orphan_grace_ms` ago.

use super::registry::Registry;
use super::sequencer::now_ms;
use super::uploader::put_with_retry;
use crate::meta_handle::MetaHandle;
use crate::metrics::Metrics;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_meta::{Command, CommandResult, Rejection};
use strata_tiering::{decode_segment_index, ObjectStore, SegmentBuilder, TieringError};
use strata_types::{BlockLocation, PartitionKey};
use tokio::sync::watch;

/// Key prefixes of objects this code writes; the orphan sweeper lists only these.
pub const OBJECT_PREFIXES: [&str; 2] = ["data/", "segments/"];
/// Attempts at a segment PUT before the compaction is given up (it is retried next round).
const PUT_ATTEMPTS: u32 = 5;

/// The knobs of [`plan`].
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub segment_bytes: u64,
    pub chunk_bytes: u64,
    pub min_blocks: u32,
    /// A run at the end of a partition's index that holds an upload block is taken once its
    /// newest block is this old (by the time in the block's key), however small; 0: never.
    pub idle_ms: u64,
}

impl Policy {
    /// A segment of at least half a segment's size is left alone.
    fn done(&self, block: &BlockLocation) -> bool {
        block.is_segment() && block.len.saturating_mul(2) >= self.segment_bytes
    }

    /// The newest block of a run was uploaded `idle_ms` ago or more.
    fn idle(&self, newest: &BlockLocation, now_ms: i64) -> bool {
        let idle_ms = i64::try_from(self.idle_ms).unwrap_or(i64::MAX);
        self.idle_ms > 0 && key_time_ms(&newest.key).is_some_and(|t| now_ms - t >= idle_ms)
    }

    fn ready(&self, count: usize, bytes: u64) -> bool {
        count >= self.min_blocks as usize
            || (count >= 2 && bytes.saturating_mul(2) >= self.segment_bytes)
    }
}

/// The first run of `blocks` (one partition's index, in order) to compact at `now_ms`, as
/// index positions.
///
/// A run is consecutive blocks that are not done, at most `segment_bytes` in all (a first
/// block larger than that alone), taken greedily from the oldest; it is ready once it holds
/// `min_blocks` blocks or half a segment in two or more. A run whose first block is a segment
/// that outweighs the rest of it is not started there unless it makes half a segment, so a
/// segment is rewritten only when at least as much new data joins it: each byte is rewritten
/// at most log2(segment / block) times. A run holding an upload block is also ready when it can
/// no longer grow (it ends before a done segment or at the size bound), or, at the end of the
/// index, when its newest block is idle: upload blocks do not stay uncompacted for good.
pub fn plan(
    blocks: &[&BlockLocation],
    policy: Policy,
    now_ms: i64,
) -> Option<std::ops::Range<usize>> {
    let n = blocks.len();
    let mut i = 0;
    while i < n {
        if policy.done(blocks[i]) {
            i += 1;
            continue;
        }
        let (mut j, mut bytes) = (i + 1, blocks[i].len);
        while j < n && !policy.done(blocks[j]) && bytes + blocks[j].len <= policy.segment_bytes {
            bytes += blocks[j].len;
            j += 1;
        }
        let run = &blocks[i..j];
        let has_upload = run.iter().any(|b| !b.is_segment());
        // Nothing more can join a run that ends before the end of the index: rewrite it as it
        // is, once, rather than leave its upload blocks where they are.
        if has_upload && j < n {
            return Some(i..j);
        }
        let rest = bytes - blocks[i].len;
        let small = bytes.saturating_mul(2) < policy.segment_bytes;
        if blocks[i].is_segment() && blocks[i].len > rest && small {
            i += 1;
            continue;
        }
        if policy.ready(j - i, bytes) || (has_upload && policy.idle(blocks[j - 1], now_ms)) {
            return Some(i..j);
        }
        // Not ready, and no run inside it is either (fewer blocks, fewer bytes).
        i = j;
    }
    None
}

/// Why one compaction did not finish (it is retried next round).
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Store(#[from] TieringError),
    #[error("segment PUT of `{0}` failed")]
    Put(String),
    #[error("metadata: {0}")]
    Meta(String),
    #[error("malformed block: {0}")]
    BadBlock(String),
    #[error("building the segment failed: {0}")]
    Build(String),
}

pub struct Compactor {
    pub node_id: u64,
    pub registry: Arc<Registry>,
    pub store: ObjectStore,
    pub meta: MetaHandle,
    pub metrics: Arc<Metrics>,
    pub interval: Duration,
    pub policy: Policy,
    pub enabled: bool,
    pub orphan_sweep_interval: Option<Duration>,
    pub orphan_grace_ms: i64,
}

impl Compactor {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        // The first round one interval after start, not at once: a broker that has just
        // started is replaying its WAL and taking its first produce requests.
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_orphan_sweep: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            if self.enabled {
                self.compact_all(&shutdown).await;
            }
            if let Some(every) = self.orphan_sweep_interval {
                if last_orphan_sweep.is_none_or(|at| at.elapsed() >= every) {
                    last_orphan_sweep = Some(Instant::now());
                    self.sweep_orphans().await;
                }
            }
        }
    }

    /// One round: at most one compaction per partition this broker leads.
    async fn compact_all(&self, shutdown: &watch::Receiver<bool>) {
        let now = now_ms();
        let runs: Vec<(PartitionKey, Vec<BlockLocation>)> = {
            let state = self.meta.read();
            let mut runs = Vec::new();
            for meta in state.topics() {
                for partition in 0..meta.partitions {
                    let key = PartitionKey {
                        topic: meta.id,
                        partition,
                    };
                    if !self.registry.leads(&key) {
                        continue;
                    }
                    let blocks: Vec<&BlockLocation> = state.blocks(meta.id, partition).collect();
                    if let Some(range) = plan(&blocks, self.policy, now) {
                        runs.push((key, blocks[range].iter().map(|b| (*b).clone()).collect()));
                    }
                }
            }
            runs
        };
        for (key, run) in runs {
            if *shutdown.borrow() {
                return;
            }
            if let Err(err) = self.compact(key, &run).await {
                Metrics::inc(&self.metrics.tier.failures_total);
                tracing::warn!(?key, %err, "compaction failed; will retry");
            }
        }
    }

    async fn compact(&self, key: PartitionKey, run: &[BlockLocation]) -> Result<(), CompactError> {
        let write = |cmd| self.meta.write(cmd);
        compact_run(
            &self.store,
            &self.metrics,
            self.node_id,
            self.policy,
            key,
            run,
            write,
        )
        .await
        .map(drop)
    }

    /// Deletes objects under our prefixes that the index does not know, once their key's time
    /// is older than the grace period.
    async fn sweep_orphans(&self) {
        let now = now_ms();
        for prefix in OBJECT_PREFIXES {
            let listed = match self.store.list(prefix).await {
                Ok(listed) => listed,
                Err(err) => {
                    tracing::warn!(prefix, %err, "orphan sweep LIST failed; will retry");
                    continue;
                }
            };
            let orphans: Vec<String> = {
                let state = self.meta.read();
                let garbage: std::collections::HashSet<&str> = state.garbage_keys().collect();
                listed
                    .into_iter()
                    .filter(|o| !state.is_live_object(&o.key) && !garbage.contains(o.key.as_str()))
                    .filter(|o| {
                        key_time_ms(&o.key).is_some_and(|t| now - t >= self.orphan_grace_ms)
                    })
                    .map(|o| o.key)
                    .collect()
            };
            for key in orphans {
                // Look again right before deleting: a commit may have landed since the LIST.
                if self.meta.read().is_live_object(&key) {
                    continue;
                }
                match self.store.delete(&key).await {
                    Ok(()) => {
                        Metrics::inc(&self.metrics.tier.orphans_deleted_total);
                        tracing::info!(key, "deleted an orphan object");
                    }
                    Err(err) if err.is_not_found() => {}
                    Err(err) => tracing::warn!(key, %err, "orphan delete failed; will retry"),
                }
            }
        }
    }
}

/// Compacts one run of a partition's index blocks (as [`plan`] picked it) into one segment:
/// read and check each block, PUT the segment, swap it in with `CompactPartition` through
/// `write`. `Ok(true)` when the index now holds the segment, `Ok(false)` when there was
/// nothing to write or metadata refused the swap (the segment is deleted at once). Shared by
/// the [`Compactor`] and the Lambda's scheduled maintenance (`lambda/`).
pub async fn compact_run<W, F>(
    store: &ObjectStore,
    metrics: &Metrics,
    node_id: u64,
    policy: Policy,
    key: PartitionKey,
    run: &[BlockLocation],
    write: W,
) -> Result<bool, CompactError>
where
    W: FnOnce(Command) -> F,
    F: std::future::Future<Output = Result<CommandResult, strata_meta::MetaError>>,
{
    let bytes: u64 = run.iter().map(|b| b.len).sum();
    let object_key = segment_key(node_id);
    let mut builder = SegmentBuilder::new(
        object_key.clone(),
        key.topic,
        key.partition,
        policy.chunk_bytes,
        bytes as usize + 4096,
    );
    for block in run {
        let fetched = fetch_block(store, block).await?;
        let block = block.clone();
        builder = off_runtime(move || {
            builder.push_batches(&check_block(&block, fetched)?)?;
            Ok(builder)
        })
        .await?;
    }
    let Some((object, location)) = off_runtime(move || Ok(builder.finish())).await? else {
        return Ok(false);
    };
    let size = object.len() as u64;
    if !put_with_retry(store, metrics, &object_key, object, PUT_ATTEMPTS).await {
        return Err(CompactError::Put(object_key));
    }
    let cmd = Command::CompactPartition {
        key: object_key.clone(),
        size,
        blocks: vec![location],
        now_ms: now_ms(),
    };
    match write(cmd).await {
        Ok(CommandResult::PartitionCompacted { replaced }) => {
            let m = &metrics.tier;
            Metrics::inc(&m.segments_total);
            Metrics::add(&m.blocks_replaced_total, replaced as u64);
            Metrics::add(&m.bytes_written_total, size);
            tracing::info!(
                ?key,
                object = object_key,
                blocks = run.len(),
                bytes = size,
                from = run[0].base_offset,
                to = run[run.len() - 1].end_offset,
                "compacted"
            );
            Ok(true)
        }
        Ok(CommandResult::Rejected(rejection)) => {
            // Never referenced: delete it now rather than leave it to the orphan sweeper.
            if matches!(rejection, Rejection::CompactionStale { .. }) {
                Metrics::inc(&metrics.tier.stale_total);
            } else {
                Metrics::inc(&metrics.tier.failures_total);
                tracing::warn!(?key, %rejection, "compaction refused");
            }
            if let Err(err) = store.delete(&object_key).await {
                tracing::warn!(object = object_key, %err, "could not delete a refused segment; the orphan sweeper will");
            }
            Ok(false)
        }
        Ok(other) => Err(CompactError::Meta(format!("unexpected answer {other:?}"))),
        // The outcome is unknown (the write may have committed): leave the object; if it
        // is not referenced the orphan sweeper collects it after its grace period.
        Err(err) => Err(CompactError::Meta(err.to_string())),
    }
}

/// Runs CPU-bound work of a compaction on the blocking pool.
async fn off_runtime<T, F>(work: F) -> Result<T, CompactError>
where
    F: FnOnce() -> Result<T, CompactError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| CompactError::Build(err.to_string()))?
}

/// One index block's bytes as read, not yet checked (see [`check_block`]).
struct Fetched {
    data: Bytes,
    /// A segment's footer index; `None` for a block of a multi-partition object.
    index: Option<Bytes>,
}

/// Reads one index block: its bytes, and for a segment its footer index (ranged GETs).
async fn fetch_block(store: &ObjectStore, block: &BlockLocation) -> Result<Fetched, CompactError> {
    let end = block.position + block.len;
    let index = if block.is_segment() {
        Some(
            store
                .get_range(&block.key, end..end + block.index_len)
                .await?,
        )
    } else {
        None
    };
    let data = store.get_range(&block.key, block.position..end).await?;
    Ok(Fetched { data, index })
}

/// The batches of one fetched block, checked: a plain block against its CRC32C, a segment
/// chunk by chunk against its index. CPU only: callers run it off the runtime.
fn check_block(block: &BlockLocation, fetched: Fetched) -> Result<Bytes, CompactError> {
    let Fetched { data, index } = fetched;
    if let Some(index_bytes) = index {
        let index = decode_segment_index(block, &index_bytes)?;
        for (i, chunk) in index.chunks.iter().enumerate() {
            let range = chunk.range();
            index.verify_chunk(
                &block.key,
                i,
                &data[range.start as usize..range.end as usize],
            )?;
        }
        return Ok(data);
    }
    if block.crc32c != 0 {
        strata_tiering::verify_block(block, &data, block.crc32c)?;
    }
    super::direct::absolute(block, data).map_err(CompactError::BadBlock)
}

/// A fresh segment key: `segments/<node>/<ms:013>-<uuid>.seg` (the time lets the orphan sweeper
/// judge its age without a HEAD).
pub fn segment_key(node_id: u64) -> String {
    format!(
        "segments/{}/{:013}-{}.seg",
        node_id,
        now_ms(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The creation time a key of ours carries (`…/<ms:013>-<uuid>.<ext>`), `None` for anything else.
pub fn key_time_ms(key: &str) -> Option<i64> {
    let name = key.rsplit('/').next()?;
    let (ms, rest) = name.split_once('-')?;
    if ms.len() != 13 || !ms.bytes().all(|b| b.is_ascii_digit()) || rest.is_empty() {
        return None;
    }
    ms.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_types::TopicId;

    /// An upload block or a segment of `len` bytes.
    #[derive(Clone, Copy)]
    enum B {
        U(u64),
        S(u64),
    }
    use B::{S, U};

    /// The time in the key of the first block: each next one is 10 s younger.
    const T0: i64 = 1_763_700_000_000;

    fn blocks(bs: &[B]) -> Vec<BlockLocation> {
        let mut offset = 0;
        bs.iter()
            .map(|&b| {
                offset += 10;
                let (len, index_len) = match b {
                    U(len) => (len, 0),
                    S(len) => (len, 100),
                };
                BlockLocation {
                    key: format!("data/1/{}-{offset:04}.sob", T0 + offset * 1000),
                    topic: TopicId::from_bytes([1; 16]),
                    partition: 0,
                    base_offset: offset - 10,
                    end_offset: offset,
                    position: 0,
                    len,
                    max_timestamp: 0,
                    crc32c: 0,
                    index_len,
                    relative: false,
                }
            })
            .collect()
    }

    const KB: u64 = 1024;
    const MB: u64 = 1024 * KB;

    #[test]
    fn plans_size_tiered_runs() {
        let policy = Policy {
            segment_bytes: 256 * MB,
            chunk_bytes: MB,
            min_blocks: 4,
            idle_ms: 0,
        };
        let run = |bs: &[B]| {
            let owned = blocks(bs);
            let refs: Vec<&BlockLocation> = owned.iter().collect();
            plan(&refs, policy, T0 + 86_400_000)
        };
        type Case<'a> = (&'a str, &'a [B], Option<std::ops::Range<usize>>);
        let cases: &[Case] = &[
            ("empty", &[], None),
            ("too few small blocks", &[U(100 * KB); 3], None),
            ("enough small blocks", &[U(100 * KB); 4], Some(0..4)),
            ("all of a long run", &[U(100 * KB); 9], Some(0..9)),
            // An earlier segment is not rewritten for a little new data.
            (
                "a segment waits for more",
                &[S(5 * MB), U(100 * KB), U(100 * KB), U(100 * KB)],
                None,
            ),
            (
                "a segment joins once as much new data follows",
                &[
                    S(5 * MB),
                    U(100 * KB),
                    U(100 * KB),
                    U(100 * KB),
                    U(100 * KB),
                    U(5 * MB),
                ],
                Some(0..6),
            ),
            (
                "a big first segment waits, the small blocks behind it go",
                &[
                    S(5 * MB),
                    U(100 * KB),
                    U(100 * KB),
                    U(100 * KB),
                    U(100 * KB),
                ],
                Some(1..5),
            ),
            (
                "a big first upload block does not wait",
                &[U(5 * MB), U(100 * KB), U(100 * KB), U(100 * KB)],
                Some(0..4),
            ),
            (
                "segments merge",
                &[S(5 * MB), S(5 * MB), S(5 * MB), S(5 * MB), U(100 * KB)],
                Some(0..5),
            ),
            (
                "small segments alone wait for min_blocks",
                &[S(5 * MB), S(5 * MB), S(5 * MB)],
                None,
            ),
            (
                "done segments split runs",
                &[
                    U(100 * KB),
                    U(100 * KB),
                    S(200 * MB),
                    U(100 * KB),
                    U(100 * KB),
                ],
                Some(0..2),
            ),
            (
                "done segments split runs of segments",
                &[
                    S(100 * KB),
                    S(100 * KB),
                    S(200 * MB),
                    U(100 * KB),
                    U(100 * KB),
                    U(100 * KB),
                    U(100 * KB),
                ],
                Some(3..7),
            ),
            (
                "done segments are left alone",
                &[S(200 * MB), S(200 * MB), S(200 * MB)],
                None,
            ),
            // Upload blocks are never done: a big one between segments is rewritten alone,
            // with what it can take along (here the small segment before it).
            (
                "a big upload block is rewritten once closed in",
                &[S(200 * MB), S(10 * MB), U(200 * MB), S(200 * MB)],
                Some(1..3),
            ),
            (
                "one upload block closed in by done segments",
                &[S(200 * MB), U(KB), S(200 * MB), U(100 * KB)],
                Some(1..2),
            ),
            (
                "big upload blocks, each alone",
                &[U(300 * MB), U(300 * MB)],
                Some(0..1),
            ),
            ("the last big upload block waits", &[U(300 * MB)], None),
            // Two blocks of the top tier that together reach half a segment are ready.
            (
                "half a segment in two",
                &[U(70 * MB), U(70 * MB)],
                Some(0..2),
            ),
            // A run stops before it would exceed segment_bytes.
            (
                "bounded by segment_bytes",
                &[U(100 * MB), U(100 * MB), U(100 * MB)],
                Some(0..2),
            ),
            (
                "bounded segments wait for a half segment",
                &[S(100 * MB), S(100 * MB), S(100 * MB)],
                Some(0..2),
            ),
        ];
        for (case, bs, want) in cases {
            assert_eq!(run(bs), *want, "case `{case}`");
        }
    }

    /// At the end of the index, a run with an upload block goes once its newest block is
    /// `idle_ms` old; a run of segments alone never does, and a big segment first still waits.
    #[test]
    fn takes_an_idle_tail() {
        let policy = Policy {
            segment_bytes: 256 * MB,
            chunk_bytes: MB,
            min_blocks: 8,
            idle_ms: 60_000,
        };
        let at = |bs: &[B], now_ms: i64| {
            let owned = blocks(bs);
            let refs: Vec<&BlockLocation> = owned.iter().collect();
            plan(&refs, policy, now_ms)
        };
        // The newest of three blocks is keyed T0 + 30 s.
        let tail = [U(KB), U(KB), U(KB)];
        assert_eq!(at(&tail, T0 + 30_000 + 59_999), None);
        assert_eq!(at(&tail, T0 + 30_000 + 60_000), Some(0..3));
        let segments = [S(KB), S(KB), S(KB)];
        assert_eq!(at(&segments, T0 + 86_400_000), None);
        let behind_a_segment = [S(100 * MB), U(KB), U(KB)];
        assert_eq!(at(&behind_a_segment, T0 + 86_400_000), Some(1..3));
        let off = Policy {
            idle_ms: 0,
            ..policy
        };
        let owned = blocks(&tail);
        let refs: Vec<&BlockLocation> = owned.iter().collect();
        assert_eq!(plan(&refs, off, T0 + 86_400_000), None);
    }

    #[test]
    fn reads_the_time_in_our_keys_only() {
        assert_eq!(
            key_time_ms("segments/1/1763700000000-0123abcd.seg"),
            Some(1_763_700_000_000)
        );
        assert_eq!(
            key_time_ms("data/3/1763700000000-ff.sob"),
            Some(1_763_700_000_000)
        );
        assert_eq!(key_time_ms("data/3/notatime-ff.sob"), None);
        assert_eq!(key_time_ms("data/3/176370000000-ff.sob"), None);
        assert_eq!(key_time_ms("other"), None);
        assert!(segment_key(7).starts_with("segments/7/"));
        assert!(key_time_ms(&segment_key(7)).is_some());
    }
}
