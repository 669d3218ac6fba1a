//! The uploader: moves durable WAL data into object storage, then lets the WAL forget it.
//!
//! Every `flush_interval_ms`, or sooner when `flush_bytes_max` of new data is waiting, it packs
//! the not-yet-uploaded batches of *many* partitions into one object (one block per partition),
//! PUTs it, commits the object's blocks to the metadata index in one raft write, marks the
//! partitions uploaded, and only then tells the sequencer to trim the WAL.
//!
//! *Invariant:* the WAL is trimmed only up to the oldest entry that some live partition still
//! has un-uploaded, so an acknowledged batch is always in the WAL, in the index, or both.
//! A PUT that fails is retried with backoff; until it succeeds the WAL absorbs new writes (and
//! refuses them once it reaches `wal.bytes_max`).

use super::partition::PartitionLog;
use super::registry::Registry;
use super::sequencer::{SeqMsg, SeqShared};
use crate::meta_handle::MetaHandle;
use crate::metrics::Metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use strata_meta::{Command, CommandResult};
use strata_tiering::{ObjectBuilder, ObjectStore};
use tokio::sync::{mpsc, watch};

pub struct Uploader {
    pub node_id: u64,
    pub registry: Arc<Registry>,
    pub store: ObjectStore,
    pub meta: MetaHandle,
    pub shared: Arc<SeqShared>,
    pub seq_tx: mpsc::Sender<SeqMsg>,
    pub metrics: Arc<Metrics>,
    pub flush_interval: Duration,
    pub flush_bytes_max: u64,
    pub tail_bytes_max: u64,
    /// Highest LSN already handed to the WAL for trimming.
    pub trimmed_lsn: u64,
    /// `(stream, epoch)` when this broker writes a replicated WAL stream: every commit carries
    /// the stream's progress (fenced by the epoch), and the stream is trimmed only as far as
    /// metadata has recorded.
    pub stream: Option<(u64, u64)>,
    /// Flipped when metadata refuses a commit because the stream moved to another broker.
    pub lost: Arc<watch::Sender<bool>>,
}

/// Largest object built in one round, as a multiple of `flush_bytes_max`.
const OBJECT_FLUSH_MULTIPLE_MAX: u64 = 4;

/// One round's object, built from the partitions' pending batches.
struct Built {
    key: String,
    object: bytes::Bytes,
    blocks: Vec<strata_types::BlockLocation>,
    /// The partitions in it: (partition, end offset, bytes).
    included: Vec<(Arc<PartitionLog>, i64, u64)>,
    /// What is settled once this object is committed: everything below the oldest entry some
    /// partition will still have pending, computed before the commit so the commit itself
    /// records it (one metadata write per upload).
    settled: u64,
    /// More was pending than one object takes.
    full: bool,
}

/// Packs up to `budget` bytes of pending batches, partitions in key order; `None` when
/// nothing is pending. CPU only (copies and CRCs): runs on the blocking pool.
fn build(registry: &Registry, key: String, budget: u64, published_lsn: u64) -> Option<Built> {
    let mut builder = ObjectBuilder::new(key.clone());
    let mut included: Vec<(Arc<PartitionLog>, i64, u64)> = Vec::new();
    let mut size = 0u64;
    let mut partitions = registry.partitions();
    partitions.sort_by_key(|p| p.key);
    let mut full = false;
    for p in partitions {
        if size >= budget {
            full = true;
            break;
        }
        let pending = p.pending_upload(budget - size);
        let (Some(first), Some(last)) = (pending.first(), pending.last()) else {
            continue;
        };
        let bytes: u64 = pending.iter().map(|b| b.data.len() as u64).sum();
        let max_ts = pending.iter().map(|b| b.max_timestamp).max().unwrap_or(-1);
        let data: Vec<_> = pending.iter().map(|b| b.data.clone()).collect();
        builder.add_block(
            p.key.topic,
            p.key.partition,
            first.base_offset,
            last.end_offset,
            max_ts,
            &data,
        );
        size += bytes;
        included.push((p.clone(), last.end_offset, bytes));
    }
    if builder.is_empty() {
        return None;
    }
    let (object, blocks) = builder.finish();
    let settled = {
        let ends: std::collections::HashMap<_, i64> =
            included.iter().map(|(q, end, _)| (q.key, *end)).collect();
        let mut oldest = u64::MAX;
        for p in registry.partitions() {
            let pending = match ends.get(&p.key).copied() {
                Some(end) => p.pending_lsn_after(end),
                None => p.oldest_pending_lsn(),
            };
            if let Some(lsn) = pending {
                oldest = oldest.min(lsn);
            }
        }
        oldest.saturating_sub(1).min(published_lsn)
    };
    Some(Built {
        key,
        object,
        blocks,
        included,
        settled,
        full,
    })
}

impl Uploader {
    /// Runs until `shutdown` turns true, then uploads what is left (bounded attempts) and
    /// returns.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let by_bytes = tokio::select! {
                _ = tick.tick() => false,
                _ = self.shared.flush_wanted.notified() => true,
                _ = shutdown.changed() => break,
            };
            // Every publish over the threshold notifies, also while a round is uploading, so
            // the permit left over says nothing about what is pending now: a round right after
            // a full one would upload a small object (an extra PUT per flush).
            if by_bytes && self.shared.pending_bytes.load(Ordering::Acquire) < self.flush_bytes_max
            {
                continue;
            }
            // Keep going while full objects are waiting.
            while self.round(false).await == Round::Full {}
            // The interval counts from the last upload, so a flush by size is not followed by
            // a tiny one at the next tick.
            tick.reset();
        }
        while self.round(true).await == Round::Full {}
    }

    async fn round(&mut self, final_round: bool) -> Round {
        let published_lsn = self.shared.published_lsn.load(Ordering::Acquire);
        let budget = self.flush_bytes_max * OBJECT_FLUSH_MULTIPLE_MAX;
        let key = object_key(self.node_id);
        // Off the runtime: copying and checksumming megabytes of batches took a worker for
        // 15-50 ms every flush, and every connection that worker served waited (QoS 1
        // publish -> deliver p99 25 ms instead of 1 ms on a one-core broker).
        let registry = self.registry.clone();
        let built =
            match tokio::task::spawn_blocking(move || build(&registry, key, budget, published_lsn))
                .await
            {
                Ok(built) => built,
                Err(err) => {
                    tracing::error!(%err, "building an object failed; will retry");
                    Metrics::inc(&self.metrics.upload_failures_total);
                    return Round::Failed;
                }
            };
        let Some(Built {
            key,
            object,
            blocks,
            included,
            settled,
            full,
        }) = built
        else {
            // A replicated stream is trimmed only with a commit that records how far (I8 of
            // `strata_wal::replication`): an idle round leaves it as it is.
            if self.stream.is_none() {
                self.trim(published_lsn).await;
            }
            return Round::Idle;
        };
        let object_len = object.len() as u64;
        if !self.put_with_retry(&key, object, final_round).await {
            return Round::Failed;
        }
        let progress = self
            .stream
            .map(|(stream, epoch)| strata_meta::StreamProgress {
                stream,
                epoch,
                settled_lsn: settled,
            });
        let commit = self.meta.write(Command::CommitObject {
            stream: progress,
            key: key.clone(),
            size: object_len,
            blocks,
        });
        match crate::metrics::timed(&self.metrics.meta_write_seconds, commit).await {
            Ok(CommandResult::ObjectCommitted) => {}
            Ok(CommandResult::Rejected(strata_meta::Rejection::Cluster(err))) => {
                tracing::error!(key, %err, "object commit fenced: this broker's WAL stream moved");
                Metrics::inc(&self.metrics.upload_failures_total);
                let _ = self.lost.send(true);
                return Round::Failed;
            }
            Ok(other) => {
                // The index refused it (a gap or overlap): the object is garbage, the data stays
                // in the WAL and the tail, and the next round tries again from the index's view.
                tracing::error!(key, result = ?other, "object commit rejected");
                Metrics::inc(&self.metrics.upload_failures_total);
                return Round::Failed;
            }
            Err(err) => {
                tracing::warn!(key, %err, "object commit failed; will retry");
                Metrics::inc(&self.metrics.upload_failures_total);
                return Round::Failed;
            }
        }
        let mut uploaded = 0u64;
        for (p, end, bytes) in &included {
            p.mark_uploaded(*end, self.tail_bytes_max);
            uploaded += bytes;
        }
        self.shared.pending_bytes.fetch_sub(
            uploaded.min(self.shared.pending_bytes.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        Metrics::inc(&self.metrics.objects_uploaded_total);
        Metrics::add(&self.metrics.object_bytes_uploaded_total, object_len);
        tracing::debug!(
            key,
            bytes = object_len,
            partitions = included.len(),
            "object uploaded"
        );
        match self.stream {
            // Metadata recorded `settled`; the stream may drop what is below it.
            Some(_) => self.trim_to(settled).await,
            None => self.trim(published_lsn).await,
        }
        if full {
            Round::Full
        } else {
            Round::Done
        }
    }

    /// Trims the WAL below the oldest entry still waiting for upload.
    async fn trim(&mut self, published_lsn: u64) {
        let oldest_pending = self
            .registry
            .partitions()
            .iter()
            .filter_map(|p| p.oldest_pending_lsn())
            .min();
        let upto = match oldest_pending {
            Some(lsn) => lsn.saturating_sub(1).min(published_lsn),
            None => published_lsn,
        };
        self.trim_to(upto).await;
    }

    async fn trim_to(&mut self, upto: u64) {
        if upto > self.trimmed_lsn {
            self.trimmed_lsn = upto;
            let _ = self.seq_tx.send(SeqMsg::Trim { upto }).await;
        }
    }

    async fn put_with_retry(&self, key: &str, object: bytes::Bytes, final_round: bool) -> bool {
        let attempts_max = if final_round { 5 } else { 20 };
        let span = crate::telemetry::upload_span(key, object.len());
        tracing::Instrument::instrument(
            put_with_retry(&self.store, &self.metrics, key, object, attempts_max),
            span,
        )
        .await
    }
}

/// A fresh key for an object this broker uploads: `data/<node>/<ms>-<uuid>.sob`.
pub fn object_key(node_id: u64) -> String {
    format!(
        "data/{}/{:013}-{}.sob",
        node_id,
        now_ms(),
        uuid::Uuid::new_v4().simple()
    )
}

/// PUTs `object`, retrying with exponential backoff and jitter up to `attempts_max` times
/// (a permanent error gives up after 3). Counts failures in `upload_failures_total`.
pub async fn put_with_retry(
    store: &ObjectStore,
    metrics: &Metrics,
    key: &str,
    object: bytes::Bytes,
    attempts_max: u32,
) -> bool {
    let mut backoff = Duration::from_millis(100);
    for attempt in 1..=attempts_max {
        match store.put(key, object.clone()).await {
            Ok(()) => return true,
            Err(err) => {
                Metrics::inc(&metrics.upload_failures_total);
                tracing::warn!(key, attempt, %err, "object upload failed");
                if !err.is_retryable() && attempt >= 3 {
                    return false;
                }
            }
        }
        let jitter = rand_jitter(backoff);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    false
}

#[derive(Debug, PartialEq, Eq)]
enum Round {
    Idle,
    Done,
    Full,
    Failed,
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Up to a quarter of `base`, from the clock's nanoseconds (good enough to spread retries).
fn rand_jitter(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0) as u64;
    let quarter = (base.as_nanos() / 4).max(1) as u64;
    Duration::from_nanos(nanos % quarter)
}
