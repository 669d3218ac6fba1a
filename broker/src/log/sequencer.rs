//! The sequencer: the one thread that assigns offsets and writes the WAL (group commit).
//!
//! Produce handlers send [`SeqMsg::Append`] over a bounded channel. The thread takes every
//! message waiting (up to `group_commit_bytes_max`), assigns offsets, rewrites the batches' base
//! offsets, appends one WAL entry per partition append, and then makes the whole group durable
//! with one `fdatasync`. Only after that does it publish the batches to their partitions' tails
//! (making them visible to consumers) and answer the producers. Offset order and WAL order are
//! therefore the same by construction, and a consumer can never read what a crash could undo.
//!
//! It is a plain OS thread because `fdatasync` blocks; it owns the [`Wal`] outright.
//!
//! With a replicated WAL stream the durability wait moves to a second thread (`Committer`):
//! the sequencer appends a group, hands it over, and sequences the next group while the
//! replicas fdatasync the first, so groups are pipelined rather than one quorum round trip
//! after another. The committer answers and publishes in hand-over order, so everything above
//! holds unchanged: offsets, WAL order, tails and answers advance together, and nothing is
//! visible before it is durable.
//!
//! *Invariant:* a failed fdatasync poisons the WAL; every later append is answered with a
//! storage error and `/health` reports the node unhealthy (fail-stop for the data path).
//!
//! The thread also owns the idempotent producers' state ([`ProducerStates`], built by WAL
//! replay and handed over at spawn). Because it alone assigns offsets, checking a batch's
//! sequence numbers and appending it are one step: a duplicate is answered with its original
//! offset and never written twice, and no lock is needed. Producer state changes only after
//! the WAL accepted the entry; a failed fdatasync fail-stops the node, so state never runs
//! ahead of an append that could still be lost without the node noticing.
//!
//! Planned moves (`moves.rs`) read a sealed partition's producers here
//! ([`SeqMsg::ExportProducers`]) for metadata's `CompleteMove`; the new leader's thread adopts
//! them before its first append to the partition's new log (`PartitionLog::take_handover`),
//! or, after a failover, when the recovered tail reaches back to the move
//! ([`SeqMsg::AdoptHandover`]).

use super::entry::WalEntry;
use super::partition::{PartitionLog, TailBatch};
use super::producer::{ProducerBatch, ProducerStates, SequenceError, Verdict};
use super::sink::{SinkError, WalSink};
use crate::metrics::Metrics;
use bytes::BytesMut;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use strata_types::batch;
use tokio::sync::{mpsc, oneshot, Notify};

/// One partition's share of a produce: validated batches, base offsets still unassigned.
#[derive(Debug)]
pub struct AppendRequest {
    pub log: Arc<PartitionLog>,
    /// The batches, copied out of the request frame so their base offsets can be rewritten.
    pub data: BytesMut,
    /// The batches in `data`, in order.
    pub batches: Vec<BatchSpan>,
    pub max_timestamp: i64,
}

/// One record batch of an [`AppendRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSpan {
    /// Start of the batch in `data`.
    pub start: usize,
    /// Offsets the batch takes.
    pub offset_count: i64,
    /// Its idempotence fields, if it has a producer id.
    pub producer: Option<ProducerBatch>,
}

impl AppendRequest {
    pub fn offset_count(&self) -> i64 {
        self.batches.iter().map(|b| b.offset_count).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The WAL is at `wal.bytes_max` (object storage is behind): retry later.
    #[error("the WAL is full; object storage is behind")]
    WalFull,
    /// The WAL failed to write or sync; this node no longer accepts writes.
    #[error("the WAL failed; this node no longer accepts writes")]
    Storage,
    /// The entry is larger than the WAL accepts.
    #[error("the append is larger than one WAL entry may be")]
    TooLarge,
    /// The node is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// Another broker took this broker's WAL stream (its lease expired): the partition moved.
    #[error("this broker's WAL stream was taken over; the partition moved")]
    Fenced,
    /// `direct` mode: the object holding the append was not PUT and committed in time.
    #[error("object storage did not take the append in time; retry")]
    ObjectStore,
    /// An idempotent producer's batch failed its sequence or epoch check; nothing was written.
    #[error(transparent)]
    Sequence(#[from] SequenceError),
}

pub type AppendResult = Result<i64, AppendError>;

#[derive(Debug)]
pub enum SeqMsg {
    /// Appends, answered together once durable: the base offset given to each.
    Append {
        items: Vec<AppendRequest>,
        reply: oneshot::Sender<Vec<AppendResult>>,
    },
    /// Everything in the WAL with an LSN `<= upto` is in object storage.
    Trim { upto: u64 },
    /// Batches another broker acknowledged for partitions this broker is taking over (its
    /// recovered WAL tail): their idempotent producers' state, so a retry of a batch that
    /// was durable but unanswered when that broker died is recognised as a duplicate.
    AdoptProducers {
        batches: Vec<(strata_types::PartitionKey, bytes::Bytes)>,
    },
    /// The producers' state a planned move handed over for a partition this broker takes over
    /// (`takeover.rs`, when the recovered tail reaches back to the move); see
    /// `ProducerStates::adopt`.
    AdoptHandover {
        key: strata_types::PartitionKey,
        handover: strata_types::sequence::Handover,
    },
    /// Planned moves (`moves.rs`): the producers' state of each of `keys` (sealed partitions,
    /// so it is final), in the same order.
    ExportProducers {
        keys: Vec<strata_types::PartitionKey>,
        reply: oneshot::Sender<Vec<Vec<strata_types::sequence::HandedProducer>>>,
    },
}

/// State the sequencer shares with the rest of the node.
#[derive(Debug, Default)]
pub struct SeqShared {
    /// Every WAL entry with an LSN at or below this is published in some tail.
    pub published_lsn: AtomicU64,
    /// Bytes published but not yet uploaded (the uploader subtracts).
    pub pending_bytes: AtomicU64,
    /// Set when the WAL failed; the node is unhealthy from then on.
    pub failed: AtomicBool,
    /// Pinged when `pending_bytes` crosses the flush threshold.
    pub flush_wanted: Notify,
}

pub struct SequencerConfig {
    pub group_commit_bytes_max: u64,
    pub flush_bytes_max: u64,
    /// `SCHED_FIFO` priority of the sequencer and committer threads; 0: normal scheduling.
    pub realtime_priority: u8,
}

/// How often the thread forgets expired producers (checked when work arrives).
const PRODUCER_EXPIRY_SWEEP_MS: i64 = 60_000;

/// Starts the sequencer thread, which takes ownership of `producers` (built by replay). It
/// stops when every sender is dropped.
pub fn spawn(
    wal: WalSink,
    producers: ProducerStates,
    rx: mpsc::Receiver<SeqMsg>,
    shared: Arc<SeqShared>,
    metrics: Arc<Metrics>,
    cfg: SequencerConfig,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    shared
        .published_lsn
        .store(wal.last_lsn(), Ordering::Release);
    std::thread::Builder::new()
        .name("strata-sequencer".into())
        .spawn(move || {
            strata_wal::enter_realtime(cfg.realtime_priority);
            run(wal, producers, rx, shared, metrics, cfg)
        })
}

/// Wall-clock milliseconds, for producer expiry (a clock step only moves expiry).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Pending {
    reply: oneshot::Sender<Vec<AppendResult>>,
    results: Vec<AppendResult>,
    publish: Vec<(Arc<PartitionLog>, TailBatch)>,
}

fn run(
    mut wal: WalSink,
    mut producers: ProducerStates,
    mut rx: mpsc::Receiver<SeqMsg>,
    shared: Arc<SeqShared>,
    metrics: Arc<Metrics>,
    cfg: SequencerConfig,
) {
    let mut entry_buf = Vec::new();
    let mut last_sweep_ms = now_ms();
    let committer = match wal.stream_owner() {
        Some(owner) => match Committer::spawn(owner, shared.clone(), metrics.clone(), &cfg) {
            Ok(c) => Some(c),
            Err(err) => {
                // Without it the stream is committed in line, one group at a time.
                tracing::warn!(%err, "could not start the WAL committer thread");
                None
            }
        },
        None => None,
    };
    metrics
        .producer_states
        .store(producers.len() as u64, Ordering::Relaxed);
    while let Some(first) = rx.blocking_recv() {
        let now = now_ms();
        if now.saturating_sub(last_sweep_ms) >= PRODUCER_EXPIRY_SWEEP_MS {
            last_sweep_ms = now;
            let expired = producers.expire(now);
            if expired > 0 {
                tracing::debug!(expired, "forgot idempotent producers not seen for a while");
            }
            metrics
                .producer_states
                .store(producers.len() as u64, Ordering::Relaxed);
        }
        let mut group: Vec<Pending> = Vec::new();
        let mut group_bytes = 0u64;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                SeqMsg::Trim { upto } => {
                    if let Err(err) = wal.trim(upto) {
                        tracing::error!(%err, "WAL trim failed");
                    }
                }
                SeqMsg::AdoptProducers { batches } => {
                    for (key, data) in &batches {
                        producers.record_batches(*key, data, now);
                    }
                    metrics
                        .producer_states
                        .store(producers.len() as u64, Ordering::Relaxed);
                }
                SeqMsg::AdoptHandover { key, handover } => {
                    producers.adopt(key, &handover, now);
                    metrics
                        .producer_states
                        .store(producers.len() as u64, Ordering::Relaxed);
                }
                SeqMsg::ExportProducers { keys, reply } => {
                    let _ = reply.send(keys.iter().map(|k| producers.export(k)).collect());
                }
                SeqMsg::Append { items, reply } => {
                    let mut pending = Pending {
                        reply,
                        results: Vec::with_capacity(items.len()),
                        publish: Vec::new(),
                    };
                    for item in items {
                        group_bytes += item.data.len() as u64;
                        let result = if shared.failed.load(Ordering::Acquire) {
                            Err(AppendError::Storage)
                        } else {
                            append_one(
                                &mut wal,
                                &mut producers,
                                now,
                                item,
                                &mut entry_buf,
                                &mut pending.publish,
                                &shared,
                                &metrics,
                            )
                        };
                        pending.results.push(result);
                    }
                    group.push(pending);
                }
            }
            if group_bytes < cfg.group_commit_bytes_max {
                next = rx.try_recv().ok();
            }
        }
        if let Some(committer) = &committer {
            // Replicated: the entries are on their way to the replicas; the committer thread
            // answers the group once the quorum has them, and this thread goes on sequencing
            // the next group meanwhile (a blocked send is the back-pressure).
            if let WalSink::Replicated { owner, .. } = &wal {
                owner.flush();
            }
            metrics.wal_bytes.store(wal.bytes(), Ordering::Relaxed);
            let in_flight = InFlight {
                upto_lsn: wal.last_lsn(),
                group,
                handed: std::time::Instant::now(),
            };
            if committer.tx.send(in_flight).is_err() {
                tracing::error!("the WAL committer thread stopped");
                shared.failed.store(true, Ordering::Release);
            }
            continue;
        }
        if group.iter().all(|p| p.publish.is_empty()) {
            for p in group {
                let _ = p.reply.send(p.results);
            }
            metrics.wal_bytes.store(wal.bytes(), Ordering::Relaxed);
            continue;
        }
        let sync_started = std::time::Instant::now();
        let synced = wal.sync();
        metrics
            .wal_sync_histogram(wal.is_replicated())
            .observe(sync_started.elapsed());
        Metrics::inc(&metrics.wal_group_commits_total);
        if let Err(err) = synced {
            tracing::error!(%err, "WAL sync failed; this node stops accepting writes");
            shared.failed.store(true, Ordering::Release);
            fail_group(group, append_error(&err));
            continue;
        }
        publish_group(
            group,
            wal.last_lsn(),
            &shared,
            &metrics,
            cfg.flush_bytes_max,
        );
        metrics.wal_bytes.store(wal.bytes(), Ordering::Relaxed);
    }
    if let Some(committer) = committer {
        drop(committer.tx);
        let _ = committer.thread.join();
    }
    if let Err(err) = wal.sync() {
        tracing::error!(%err, "final WAL sync failed");
    }
    tracing::debug!("sequencer stopped");
}

fn append_error(err: &SinkError) -> AppendError {
    match err {
        SinkError::Fenced => AppendError::Fenced,
        _ => AppendError::Storage,
    }
}

/// The group could not be made durable: every append that was going to succeed fails.
fn fail_group(group: Vec<Pending>, answer: AppendError) {
    for mut p in group {
        for r in p.results.iter_mut() {
            if r.is_ok() {
                *r = Err(answer);
            }
        }
        let _ = p.reply.send(p.results);
    }
}

/// The group is durable up to `durable_lsn`: publish its batches to their tails (visible to
/// consumers from now on), count it, and answer the producers (a client that scrapes the
/// metrics after its acknowledgement sees its records counted).
fn publish_group(
    mut group: Vec<Pending>,
    durable_lsn: u64,
    shared: &SeqShared,
    metrics: &Metrics,
    flush_bytes_max: u64,
) {
    let (mut published, mut records) = (0u64, 0i64);
    for p in &mut group {
        for (log, batch) in p.publish.drain(..) {
            published += batch.data.len() as u64;
            records += batch.end_offset - batch.base_offset;
            log.traffic
                .count_in(batch.data.len(), batch.end_offset - batch.base_offset);
            log.publish(batch);
        }
    }
    // Counted once durable: refused and duplicate batches are not produce traffic.
    Metrics::add(&metrics.produce_bytes_total, published);
    Metrics::add(&metrics.produce_records_total, records as u64);
    for p in group {
        let _ = p.reply.send(p.results);
    }
    shared
        .published_lsn
        .fetch_max(durable_lsn, Ordering::AcqRel);
    if published > 0 {
        let before = shared.pending_bytes.fetch_add(published, Ordering::AcqRel);
        if before + published >= flush_bytes_max {
            shared.flush_wanted.notify_one();
        }
    }
}

/// Groups a replicated stream still has to commit, oldest first.
const GROUPS_IN_FLIGHT: usize = 64;

/// A group handed to the committer: answered once every entry up to `upto_lsn` is committed.
struct InFlight {
    upto_lsn: u64,
    group: Vec<Pending>,
    handed: std::time::Instant,
}

/// The second thread of a replicated stream. The sequencer appends a group and hands it over
/// here; this thread waits for the write quorum, then publishes and answers, in hand-over
/// order (so tails, `published_lsn` and the producers' answers keep WAL order). The sequencer
/// meanwhile sequences the next group, whose entries travel to the replicas while the earlier
/// ones are being fdatasynced: a slow quorum delays the groups behind it by its own wait, not
/// by a round trip each. A failed commit (fenced, replicas lost) fails that group and every
/// later one; the node is fail-stop from then on.
struct Committer {
    tx: std::sync::mpsc::SyncSender<InFlight>,
    thread: std::thread::JoinHandle<()>,
}

impl Committer {
    fn spawn(
        owner: strata_wal::net::StreamOwner,
        shared: Arc<SeqShared>,
        metrics: Arc<Metrics>,
        cfg: &SequencerConfig,
    ) -> std::io::Result<Committer> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<InFlight>(GROUPS_IN_FLIGHT);
        let flush_bytes_max = cfg.flush_bytes_max;
        let priority = cfg.realtime_priority;
        let thread = std::thread::Builder::new()
            .name("strata-wal-commit".into())
            .spawn(move || {
                strata_wal::enter_realtime(priority);
                let mut failed: Option<AppendError> = None;
                for f in rx {
                    let committed = match failed {
                        Some(answer) => Err(answer),
                        None => {
                            let _span =
                                crate::telemetry::wal_sync_span(true, || f.upto_lsn).entered();
                            owner
                                .wait_committed_blocking(f.upto_lsn)
                                .map_err(|e| append_error(&SinkError::from(e)))
                        }
                    };
                    if f.group.iter().any(|p| !p.publish.is_empty()) {
                        metrics
                            .wal_sync_histogram(true)
                            .observe(f.handed.elapsed());
                        Metrics::inc(&metrics.wal_group_commits_total);
                    }
                    match committed {
                        Ok(()) => {
                            publish_group(f.group, f.upto_lsn, &shared, &metrics, flush_bytes_max)
                        }
                        Err(answer) => {
                            if failed.is_none() {
                                tracing::error!(error = %answer, "WAL quorum commit failed; this node stops accepting writes");
                                shared.failed.store(true, Ordering::Release);
                                failed = Some(answer);
                            }
                            fail_group(f.group, answer);
                        }
                    }
                }
            })?;
        Ok(Committer { tx, thread })
    }
}

#[allow(clippy::too_many_arguments)] // the thread's state, passed apart for borrowing
fn append_one(
    wal: &mut WalSink,
    producers: &mut ProducerStates,
    now: i64,
    item: AppendRequest,
    entry_buf: &mut Vec<u8>,
    publish: &mut Vec<(Arc<PartitionLog>, TailBatch)>,
    shared: &SeqShared,
    metrics: &Metrics,
) -> AppendResult {
    let count = item.offset_count();
    // A planned move sealed the partition (`moves.rs`): the client goes to the new leader.
    if item.log.is_sealed() {
        return Err(AppendError::Fenced);
    }
    // The log starts where a planned move ended: adopt the producers it handed over first.
    if let Some(handover) = item.log.take_handover() {
        let adopted = producers.adopt(item.log.key, &handover, now);
        tracing::debug!(topic = %item.log.topic_name, partition = item.log.key.partition, adopted, "adopted the idempotent producers a planned move handed over");
        metrics
            .producer_states
            .store(producers.len() as u64, Ordering::Relaxed);
    }
    // Idempotent batches are checked against the offsets they would get; only this thread
    // assigns offsets, so `next_offset` is what `reserve` returns below.
    let mut update = None;
    let expected_base = item.log.next_offset();
    if item.batches.iter().any(|b| b.producer.is_some()) {
        let mut offset = expected_base;
        let spans = item.batches.iter().map(|b| {
            let at = offset;
            offset += b.offset_count;
            (b.producer, at)
        });
        match producers.check(&item.log.key, spans, now) {
            Ok(Verdict::Append(u)) => update = Some(u),
            Ok(Verdict::Duplicate { base_offset }) => {
                // Already durable (an earlier group) or in this group (answered after its sync).
                Metrics::inc(&metrics.produce_duplicate_batches_total);
                return Ok(base_offset);
            }
            Err(err) => {
                Metrics::inc(&metrics.produce_sequence_errors_total);
                tracing::debug!(topic = %item.log.topic_name, partition = item.log.key.partition, %err, "idempotent batch refused");
                return Err(AppendError::Sequence(err));
            }
        }
    }
    let base = item.log.reserve(count);
    debug_assert_eq!(base, expected_base, "only the sequencer assigns offsets");
    let mut data = item.data;
    let mut offset = base;
    for b in &item.batches {
        batch::set_base_offset(&mut data[b.start..], offset);
        offset += b.offset_count;
    }
    let data = data.freeze();
    let entry = WalEntry {
        partition: item.log.key,
        base_offset: base,
        end_offset: base + count,
        max_timestamp: item.max_timestamp,
        batches: data.clone(),
    };
    entry_buf.clear();
    entry.encode_into(entry_buf);
    match wal.append(entry_buf) {
        Ok(lsn) => {
            Metrics::inc(&metrics.wal_appends_total);
            if let Some(update) = update {
                let evicted = producers.apply(item.log.key, update, now);
                Metrics::add(&metrics.producers_evicted_total, evicted as u64);
                metrics
                    .producer_states
                    .store(producers.len() as u64, Ordering::Relaxed);
            }
            publish.push((
                item.log.clone(),
                TailBatch {
                    base_offset: base,
                    end_offset: base + count,
                    max_timestamp: item.max_timestamp,
                    wal_lsn: lsn,
                    data,
                },
            ));
            Ok(base)
        }
        Err(err) => {
            item.log.unreserve(base, count);
            match err {
                SinkError::Full => Err(AppendError::WalFull),
                SinkError::TooLarge => Err(AppendError::TooLarge),
                SinkError::Fenced => {
                    tracing::error!(
                        "this broker's WAL stream was taken over; it stops accepting writes"
                    );
                    shared.failed.store(true, Ordering::Release);
                    Err(AppendError::Fenced)
                }
                SinkError::Failed(err) => {
                    tracing::error!(%err, "WAL append failed; this node stops accepting writes");
                    shared.failed.store(true, Ordering::Release);
                    Err(AppendError::Storage)
                }
            }
        }
    }
}
