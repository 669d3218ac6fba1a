//! The `direct` storage mode: a produce is acknowledged once its object is in object storage.
//!
//! A topic created with `strata.storage.mode=direct` has no WAL and no local state. Its
//! produces skip the sequencer: [`route`] hands them to the [`DirectWriter`], one task that
//! gathers the produces of every direct partition this broker leads for up to
//! `direct.batch_window_ms` or `direct.batch_bytes_max`, packs them into one object (one block
//! per partition, the uploader's object format), PUTs it, and proposes one `CommitDirect`.
//! Metadata assigns each block's offsets at apply time (at the partition's index end), so any
//! number of writers — other brokers, a Lambda function without a lease — may append to the
//! same partition. Only then is every waiting produce answered, with `acks` 0, 1 and -1 alike.
//!
//! Because offsets are not known when the object is built, the batches are stored with base
//! offsets *relative to their block* (0, then where the previous batch ended) and the index
//! entry is marked `relative`. [`absolute`] is the one place that turns stored bytes into
//! served bytes: after the block CRC is checked on the stored bytes, it adds the block's base
//! offset to each batch's (Kafka's batch CRC does not cover the base offset). The read path
//! (`reader.rs`) and the compactor call it; a compacted segment holds absolute offsets.
//!
//! The read side of a direct partition is the index: its `PartitionLog` has an empty tail and a
//! high watermark that follows the index end (`PartitionLog::follow_index`), moved here after
//! our own commits and by the registry on every metadata change (commits of other writers), so
//! long-polling fetches wake on commits.
//!
//! Failure: a PUT is retried with backoff, and the commit too, until `direct.commit_timeout_ms`
//! after the object was sealed; then every produce in it gets `KAFKA_STORAGE_ERROR`
//! (retriable). An object PUT but never committed is not in the index, so nothing of it is
//! visible; the orphan sweeper deletes it (its key has the uploader's shape). A commit whose
//! outcome stayed unknown (metadata unreachable past the deadline) may still apply later: then
//! the records are visible although the producer was told to retry — at-least-once, as in
//! Kafka without idempotence.
//!
//! Idempotent producers: the sequence checks must be atomic with offset assignment, so they run
//! in metadata's `CommitDirect` apply (`meta/src/direct.rs`), which keeps the producer state.
//! The writer gives every produce whose batches carry a producer id a block of its own, with
//! their (producer id, epoch, sequences) in the command; metadata indexes it, or skips it as a
//! duplicate (answered with the original offset; its bytes stay in the object, unreferenced) or
//! refuses it (`OUT_OF_ORDER_SEQUENCE_NUMBER`, `INVALID_PRODUCER_EPOCH`, as the WAL topics do).
//! Plain produces of a partition share one block. A commit whose outcome stayed unknown is
//! answered `KAFKA_STORAGE_ERROR`; the idempotent producer's retry is then recognised as a
//! duplicate if the first commit did apply, so it is exactly once.
//!
//! Ordering: one object is in flight at a time, so produces are committed in arrival order and
//! a partition's batches from one connection keep their order.

use super::partition::PartitionLog;
use super::sequencer::{AppendError, AppendRequest, AppendResult, SeqMsg};
use crate::meta_handle::MetaHandle;
use crate::metrics::Metrics;
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use strata_meta::{Command, CommandResult, DirectBlock, DirectProducerBatch, DirectSkip};
use strata_tiering::{ObjectBuilder, ObjectStore};
use strata_types::batch::{self, Batches};
use strata_types::{BlockLocation, PartitionKey};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// The topic config that picks the storage mode (metadata refuses `CommitDirect` on others).
pub use strata_meta::STORAGE_MODE_KEY;
/// The storage modes a topic may have.
pub const STORAGE_MODES: &[&str] = &["wal", "direct"];

/// Depth of the writer's queue (produce requests waiting for the next object).
const DIRECT_QUEUE_MAX: usize = 4096;
/// Partition appends gathered into one object at most. Each idempotent append is a block of its
/// own, so this keeps an object well under metadata's `OBJECT_BLOCKS_MAX`.
const DIRECT_OBJECT_APPENDS_MAX: usize = 10_000;
const _: () = assert!(DIRECT_OBJECT_APPENDS_MAX <= strata_meta::OBJECT_BLOCKS_MAX);

/// Whether a topic with these configs is in `direct` mode (absent means `wal`).
pub fn is_direct(configs: &BTreeMap<String, String>) -> bool {
    configs.get(STORAGE_MODE_KEY).map(String::as_str) == Some("direct")
}

/// The validated `direct.*` config.
#[derive(Debug, Clone, Copy)]
pub struct DirectConfig {
    pub batch_window: Duration,
    pub batch_bytes_max: u64,
    pub commit_timeout: Duration,
}

struct DirectMsg {
    items: Vec<AppendRequest>,
    reply: oneshot::Sender<Vec<AppendResult>>,
    /// When the produce reached the writer's queue: it is answered by
    /// `arrived + commit_timeout`, committed or not.
    arrived: Instant,
}

/// The produce handlers' side of the writer.
#[derive(Clone)]
pub struct DirectHandle {
    tx: mpsc::Sender<DirectMsg>,
}

impl std::fmt::Debug for DirectHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectHandle").finish_non_exhaustive()
    }
}

/// Hands a produce's appends to the sequencer (WAL topics) and the direct writer (direct
/// topics), and answers `reply` with one result per item, in order. `Err` when either is gone
/// (shutting down).
pub async fn route(
    node: &crate::node::Node,
    items: Vec<AppendRequest>,
    reply: oneshot::Sender<Vec<AppendResult>>,
) -> Result<(), ()> {
    let direct: Vec<bool> = {
        let state = node.meta.read();
        items
            .iter()
            .map(|i| {
                state
                    .topic_by_id(i.log.key.topic)
                    .is_some_and(|m| is_direct(&m.configs))
            })
            .collect()
    };
    if !direct.contains(&true) {
        return node
            .seq_tx
            .send(SeqMsg::Append { items, reply })
            .await
            .map_err(drop);
    }
    // Which item goes where: its place in the answer.
    let mut results: Vec<Option<AppendResult>> = Vec::with_capacity(items.len());
    let (mut wal, mut to_writer) = (Vec::new(), Vec::new());
    let (mut wal_at, mut writer_at) = (Vec::new(), Vec::new());
    for (i, (item, is_direct)) in items.into_iter().zip(direct).enumerate() {
        results.push(None);
        if !is_direct {
            wal_at.push(i);
            wal.push(item);
        } else {
            writer_at.push(i);
            to_writer.push(item);
        }
    }
    let wal_rx = if wal.is_empty() {
        None
    } else {
        let (tx, rx) = oneshot::channel();
        node.seq_tx
            .send(SeqMsg::Append {
                items: wal,
                reply: tx,
            })
            .await
            .map_err(drop)?;
        Some(rx)
    };
    let writer_rx = if to_writer.is_empty() {
        None
    } else {
        let (tx, rx) = oneshot::channel();
        node.direct
            .tx
            .send(DirectMsg {
                items: to_writer,
                reply: tx,
                arrived: Instant::now(),
            })
            .await
            .map_err(drop)?;
        Some(rx)
    };
    tokio::spawn(async move {
        for (rx, at) in [(wal_rx, wal_at), (writer_rx, writer_at)] {
            let Some(rx) = rx else { continue };
            let got = rx.await.unwrap_or_default();
            for (i, r) in at.into_iter().zip(got) {
                results[i] = Some(r);
            }
        }
        let merged = results
            .into_iter()
            .map(|r| r.unwrap_or(Err(AppendError::ShuttingDown)))
            .collect();
        let _ = reply.send(merged);
    });
    Ok(())
}

/// The served bytes of a block: `data` as stored, with base offsets made absolute for a
/// `relative` block. Check the block's CRC on `data` before calling this.
pub fn absolute(block: &BlockLocation, data: Bytes) -> Result<Bytes, String> {
    if !block.relative {
        return Ok(data);
    }
    let mut out = BytesMut::from(&data[..]);
    let mut end = 0i64;
    for item in Batches::new(&data) {
        let (header, pos) = item.map_err(|e| e.to_string())?;
        if header.base_offset != end {
            return Err(format!(
                "relative batch at byte {pos} starts at {}, expected {end}",
                header.base_offset
            ));
        }
        batch::set_base_offset(&mut out[pos..], block.base_offset + header.base_offset);
        end += header.offset_count();
    }
    if block.base_offset + end != block.end_offset {
        return Err(format!(
            "relative block holds {end} offsets, the index says {}",
            block.end_offset - block.base_offset
        ));
    }
    Ok(out.freeze())
}

/// The task that turns direct produces into objects (see the module docs).
pub struct DirectWriter {
    node_id: u64,
    store: ObjectStore,
    meta: MetaHandle,
    metrics: Arc<Metrics>,
    cfg: DirectConfig,
    rx: mpsc::Receiver<DirectMsg>,
}

impl DirectWriter {
    pub fn new(
        node_id: u64,
        store: ObjectStore,
        meta: MetaHandle,
        metrics: Arc<Metrics>,
        cfg: DirectConfig,
    ) -> (DirectWriter, DirectHandle) {
        let (tx, rx) = mpsc::channel(DIRECT_QUEUE_MAX);
        let writer = DirectWriter {
            node_id,
            store,
            meta,
            metrics,
            cfg,
            rx,
        };
        (writer, DirectHandle { tx })
    }

    /// Runs until `shutdown` turns true (then writes what is queued) or every handle is gone.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let first = tokio::select! {
                msg = self.rx.recv() => msg,
                _ = shutdown.changed() => None,
            };
            let Some(first) = first else { break };
            let mut bytes = msg_bytes(&first);
            let mut appends = first.items.len();
            let mut batch = vec![first];
            let window_end = Instant::now() + self.cfg.batch_window;
            while bytes < self.cfg.batch_bytes_max && appends < DIRECT_OBJECT_APPENDS_MAX {
                tokio::select! {
                    msg = self.rx.recv() => match msg {
                        Some(m) => {
                            bytes += msg_bytes(&m);
                            appends += m.items.len();
                            batch.push(m);
                        }
                        None => break,
                    },
                    _ = tokio::time::sleep_until(window_end) => break,
                }
            }
            self.write(batch).await;
        }
        // Shutting down: what is already queued still gets its object.
        self.rx.close();
        let mut rest = Vec::new();
        while let Ok(m) = self.rx.try_recv() {
            rest.push(m);
        }
        if !rest.is_empty() {
            self.write(rest).await;
        }
    }

    /// One object for `msgs`: build, PUT, commit, answer.
    async fn write(&self, msgs: Vec<DirectMsg>) {
        let started = Instant::now();
        // A produce that waited out its deadline in the queue (the store was down) is answered
        // without being written: its producer has been told to retry, or has given up.
        let (msgs, late): (Vec<_>, Vec<_>) = msgs
            .into_iter()
            .partition(|m| m.arrived + self.cfg.commit_timeout > started);
        for m in late {
            let n = m.items.len();
            let _ = m.reply.send(vec![Err(AppendError::ObjectStore); n]);
        }
        let Some(deadline) = msgs
            .iter()
            .map(|m| m.arrived + self.cfg.commit_timeout)
            .min()
        else {
            return;
        };
        // Per partition, in arrival order: (message, item) and where the item starts.
        let mut parts: BTreeMap<PartitionKey, Vec<(usize, usize)>> = BTreeMap::new();
        let mut results: Vec<Vec<AppendResult>> = Vec::with_capacity(msgs.len());
        let mut msgs = msgs;
        for (m, msg) in msgs.iter().enumerate() {
            results.push(vec![Err(AppendError::ObjectStore); msg.items.len()]);
            for (i, item) in msg.items.iter().enumerate() {
                parts.entry(item.log.key).or_default().push((m, i));
            }
        }
        let key = super::uploader::object_key(self.node_id);
        let mut builder = ObjectBuilder::new(key.clone());
        // Per block: the partition's log, its items with their relative starts, offsets taken.
        let mut plan: Vec<PlannedBlock> = Vec::new();
        for (pkey, members) in &parts {
            for run in block_runs(&msgs, members) {
                let mut rel = 0i64;
                let mut max_ts = -1i64;
                let mut data = Vec::with_capacity(run.len());
                let mut placed = Vec::with_capacity(run.len());
                let mut producer_batches = Vec::new();
                let log = msgs[run[0].0].items[run[0].1].log.clone();
                for (m, i) in run {
                    let item = &mut msgs[m].items[i];
                    let start = rel;
                    for b in &item.batches {
                        batch::set_base_offset(&mut item.data[b.start..], rel);
                        if let Some(p) = b.producer {
                            producer_batches.push(DirectProducerBatch {
                                producer_id: p.producer_id,
                                epoch: p.epoch,
                                first_seq: p.first_seq,
                                last_seq: p.last_seq,
                                offset_delta: rel,
                            });
                        }
                        rel += b.offset_count;
                    }
                    max_ts = max_ts.max(item.max_timestamp);
                    placed.push((m, i, start));
                    data.push(Bytes::copy_from_slice(&item.data));
                }
                builder.add_block(pkey.topic, pkey.partition, 0, rel, max_ts, &data);
                plan.push(PlannedBlock {
                    log,
                    placed,
                    count: rel,
                    producer_batches,
                });
            }
        }
        let (object, blocks) = builder.finish();
        let size = object.len() as u64;
        debug_assert_eq!(blocks.len(), plan.len());
        let mut direct_blocks = direct_blocks(&blocks);
        for (block, planned) in direct_blocks.iter_mut().zip(&plan) {
            block.producer_batches = planned.producer_batches.clone();
        }

        let outcome = match put_until(&self.store, &self.metrics, &key, object, deadline).await {
            Err(_) => None,
            Ok(()) => {
                let write = |cmd| {
                    crate::metrics::timed(&self.metrics.meta_write_seconds, self.meta.write(cmd))
                };
                commit_outcome_until(write, &key, size, direct_blocks, deadline)
                    .await
                    .ok()
            }
        };
        match outcome {
            Some(committed) => {
                let (mut records, mut data_bytes, mut batches) = (0u64, 0u64, 0u64);
                for (b, (planned, base)) in plan.iter().zip(&committed.base_offsets).enumerate() {
                    let skip = committed
                        .skipped
                        .iter()
                        .find(|(at, _)| *at == b)
                        .map(|(_, skip)| *skip);
                    let answer = |start: i64| match skip {
                        None | Some(DirectSkip::Duplicate) => Ok(base + start),
                        Some(refused) => Err(refusal(refused)),
                    };
                    for &(m, i, start) in &planned.placed {
                        results[m][i] = answer(start);
                        let item = &msgs[m].items[i];
                        if skip.is_none() {
                            planned
                                .log
                                .traffic
                                .count_in(item.data.len(), item.offset_count());
                            records += item.offset_count().max(0) as u64;
                            data_bytes += item.data.len() as u64;
                            batches += item.batches.len() as u64;
                        }
                    }
                    match skip {
                        None => planned.log.follow_index(base + planned.count),
                        Some(DirectSkip::Duplicate) => {
                            Metrics::inc(&self.metrics.produce_duplicate_batches_total);
                            Metrics::inc(&self.metrics.direct_duplicate_batches_total);
                        }
                        Some(refused) => {
                            Metrics::inc(&self.metrics.produce_sequence_errors_total);
                            tracing::debug!(topic = %planned.log.topic_name, partition = planned.log.key.partition, err = %refused, "idempotent direct batch refused");
                        }
                    }
                }
                Metrics::inc(&self.metrics.objects_uploaded_total);
                Metrics::add(&self.metrics.object_bytes_uploaded_total, size);
                Metrics::add(&self.metrics.produce_bytes_total, data_bytes);
                Metrics::add(&self.metrics.produce_records_total, records);
                Metrics::inc(&self.metrics.direct_objects_committed_total);
                Metrics::add(&self.metrics.direct_object_bytes_total, size);
                Metrics::add(&self.metrics.direct_batches_total, batches);
                self.metrics
                    .direct_commit_seconds
                    .observe(started.elapsed());
                tracing::debug!(
                    key,
                    bytes = size,
                    partitions = plan.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "direct object committed"
                );
            }
            None => {
                Metrics::inc(&self.metrics.direct_commit_failures_total);
                tracing::warn!(key, "direct produce failed: object not committed in time");
            }
        }
        for (msg, result) in msgs.into_iter().zip(results) {
            let _ = msg.reply.send(result);
        }
    }
}

/// The `CommitDirect` blocks of an object whose blocks hold relative offsets (each block's
/// offsets are assigned by metadata at apply time).
pub fn direct_blocks(blocks: &[BlockLocation]) -> Vec<DirectBlock> {
    blocks
        .iter()
        .map(|b| DirectBlock {
            topic: b.topic,
            partition: b.partition,
            offset_count: b.end_offset - b.base_offset,
            position: b.position,
            len: b.len,
            max_timestamp: b.max_timestamp,
            crc32c: b.crc32c,
            producer_batches: Vec::new(),
        })
        .collect()
}

/// PUTs a direct object, retrying with backoff until `deadline`. `Err` carries the last
/// failure. Shared by the [`DirectWriter`] and the Lambda entry points (`lambda/`).
pub async fn put_until(
    store: &ObjectStore,
    metrics: &Metrics,
    key: &str,
    object: Bytes,
    deadline: Instant,
) -> Result<(), String> {
    let mut backoff = Duration::from_millis(50);
    let mut last = String::from("no attempt finished before the deadline");
    loop {
        let attempt = tokio::time::timeout_at(deadline, store.put(key, object.clone()));
        match attempt.await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(err)) => {
                Metrics::inc(&metrics.upload_failures_total);
                tracing::warn!(key, %err, "direct object PUT failed");
                last = err.to_string();
            }
            Err(_) => return Err(last),
        }
        if Instant::now() + backoff >= deadline {
            return Err(last);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// What metadata answered a `CommitDirect`: a base offset per block (the original one for a
/// duplicate, -1 for a refused block) and the blocks it did not index, with why.
#[derive(Debug)]
pub struct DirectCommitted {
    pub base_offsets: Vec<i64>,
    pub skipped: Vec<(usize, DirectSkip)>,
}

/// Proposes `CommitDirect` through `write`, retrying (the same key, so a retry after a lost
/// reply answers the first offsets) until `deadline`. Shared by the [`DirectWriter`] and the
/// Lambda entry points.
pub async fn commit_outcome_until<W, F>(
    write: W,
    key: &str,
    size: u64,
    blocks: Vec<DirectBlock>,
    deadline: Instant,
) -> Result<DirectCommitted, String>
where
    W: Fn(Command) -> F,
    F: std::future::Future<Output = Result<CommandResult, strata_meta::MetaError>>,
{
    let mut backoff = Duration::from_millis(50);
    let mut last = String::from("no attempt finished before the deadline");
    loop {
        let cmd = Command::CommitDirect {
            key: key.to_owned(),
            size,
            blocks: blocks.clone(),
            now_ms: super::sequencer::now_ms(),
        };
        match tokio::time::timeout_at(deadline, write(cmd)).await {
            Ok(Ok(CommandResult::DirectCommitted {
                base_offsets,
                skipped,
            })) => {
                if base_offsets.len() == blocks.len()
                    && skipped.iter().all(|(at, _)| *at < blocks.len())
                {
                    return Ok(DirectCommitted {
                        base_offsets,
                        skipped,
                    });
                }
                tracing::error!(key, "direct commit answered the wrong number of offsets");
                return Err("metadata answered the wrong number of offsets".into());
            }
            Ok(Ok(other)) => {
                // Refused (the topic was deleted, ...): the object is an orphan.
                tracing::warn!(key, result = ?other, "direct commit refused");
                return Err(format!("metadata refused the commit: {other:?}"));
            }
            Ok(Err(err)) => {
                tracing::warn!(key, %err, "direct commit failed; will retry");
                last = err.to_string();
            }
            Err(_) => return Err(last),
        }
        if Instant::now() + backoff >= deadline {
            return Err(last);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// One block of the object being built: its partition's log, its items as (message, item,
/// first relative offset), the offsets the block takes, and its idempotent batches.
struct PlannedBlock {
    log: Arc<PartitionLog>,
    placed: Vec<(usize, usize, i64)>,
    count: i64,
    producer_batches: Vec<DirectProducerBatch>,
}

/// Splits one partition's produces (in arrival order) into blocks: consecutive plain produces
/// share one; a produce with producer ids gets its own, so metadata can skip it (a duplicate,
/// a refused sequence) without touching the others. Arrival order is kept.
fn block_runs(msgs: &[DirectMsg], members: &[(usize, usize)]) -> Vec<Vec<(usize, usize)>> {
    let mut runs: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut plain_open = false;
    for &(m, i) in members {
        let idempotent = msgs[m].items[i]
            .batches
            .iter()
            .any(|b| b.producer.is_some());
        if idempotent || !plain_open {
            runs.push(Vec::new());
        }
        plain_open = !idempotent;
        runs.last_mut().expect("a run was just pushed").push((m, i));
    }
    runs
}

/// The produce error for a block metadata refused (Kafka's codes, as the WAL topics answer).
fn refusal(skip: DirectSkip) -> AppendError {
    match skip {
        DirectSkip::Sequence(e) => e.into(),
        // A retried commit refused this block the first time; the reason is gone. A retriable
        // error: the producer resends, and the new commit checks the batch afresh.
        DirectSkip::RefusedEarlier { .. } | DirectSkip::Duplicate => AppendError::ObjectStore,
    }
}

fn msg_bytes(msg: &DirectMsg) -> u64 {
    msg.items.iter().map(|i| i.data.len() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_types::batch::test_support::make_batch;
    use strata_types::TopicId;

    fn block(base_offset: i64, end_offset: i64, relative: bool) -> BlockLocation {
        BlockLocation {
            key: "k".into(),
            topic: TopicId::random(),
            partition: 0,
            base_offset,
            end_offset,
            position: 0,
            len: 0,
            max_timestamp: -1,
            crc32c: 0,
            index_len: 0,
            relative,
        }
    }

    fn offsets(data: &[u8]) -> Vec<i64> {
        Batches::new(data)
            .map(|b| b.unwrap().0.base_offset)
            .collect()
    }

    #[test]
    fn relative_blocks_are_shifted_and_checked() {
        let mut data = make_batch(0, 3, 1, 1);
        data.extend(make_batch(3, 2, 1, 1));
        let data = Bytes::from(data);
        // (block, expected offsets or error fragment)
        let cases: Vec<(BlockLocation, Result<Vec<i64>, &str>)> = vec![
            (block(100, 105, true), Ok(vec![100, 103])),
            (block(0, 5, true), Ok(vec![0, 3])),
            (block(7, 99, false), Ok(vec![0, 3])),
            (block(100, 104, true), Err("the index says 4")),
        ];
        for (b, want) in cases {
            let got = absolute(&b, data.clone());
            match want {
                Ok(offs) => {
                    let got = got.unwrap();
                    assert_eq!(offsets(&got), offs);
                    for item in Batches::new(&got) {
                        let (h, pos) = item.unwrap();
                        batch::verify_crc(&got[pos..], &h).expect("batch CRC still holds");
                    }
                }
                Err(part) => assert!(got.unwrap_err().contains(part)),
            }
        }
        let not_relative = Bytes::from(make_batch(5, 1, 1, 1));
        let err = absolute(&block(0, 1, true), not_relative).unwrap_err();
        assert!(err.contains("expected 0"), "{err}");
    }

    /// Commits by any writer move a direct partition's high watermark at the next registry
    /// sync; a WAL partition's end stays the sequencer's.
    #[test]
    fn direct_partitions_follow_the_index() {
        use strata_meta::{ClusterCommand, MetaState};
        use strata_types::TopicName;
        let mut state = MetaState::default();
        state.apply(&Command::Cluster(ClusterCommand::RegisterBroker {
            node_id: 1,
            kafka_addr: "127.0.0.1:9092".into(),
            rack: None,
            lease_ms: 1000,
            now_ms: 0,
            cluster_id: None,
            auth_secret: None,
            peer_addr: None,
        }));
        let (direct, wal) = (TopicId::random(), TopicId::random());
        for (name, id, mode) in [("d", direct, "direct"), ("w", wal, "wal")] {
            state.apply(&Command::CreateTopic {
                name: TopicName::new(name).unwrap(),
                id,
                partitions: 1,
                configs: BTreeMap::from([(STORAGE_MODE_KEY.to_owned(), mode.to_owned())]),
                created_ms: 0,
            });
        }
        let registry = super::super::registry::Registry::new(1);
        registry.sync(&state);
        let d = registry.topic("d").unwrap().partitions[0].clone();
        let w = registry.topic("w").unwrap().partitions[0].clone();
        let mut woken = d.subscribe();
        for (key, topic, want) in [("a", direct, true), ("b", wal, false)] {
            let r = state.apply(&Command::CommitDirect {
                key: key.into(),
                size: 100,
                blocks: vec![DirectBlock {
                    topic,
                    partition: 0,
                    offset_count: 4,
                    position: 0,
                    len: 10,
                    max_timestamp: 1,
                    crc32c: 0,
                    producer_batches: Vec::new(),
                }],
                now_ms: 0,
            });
            assert_eq!(
                matches!(r, CommandResult::DirectCommitted { .. }),
                want,
                "{key}: {r:?}"
            );
        }
        registry.sync(&state);
        assert_eq!(d.high_watermark(), 4);
        assert!(woken.has_changed().unwrap(), "waiting fetches wake");
        assert_eq!(*woken.borrow_and_update(), 4);
        assert_eq!(
            w.high_watermark(),
            0,
            "metadata refused a direct commit to a WAL topic"
        );
        // Never backwards.
        d.follow_index(2);
        assert_eq!(d.high_watermark(), 4);
    }

    #[test]
    fn the_mode_is_read_from_the_configs() {
        let mut c = BTreeMap::new();
        assert!(!is_direct(&c));
        c.insert(STORAGE_MODE_KEY.to_owned(), "wal".to_owned());
        assert!(!is_direct(&c));
        c.insert(STORAGE_MODE_KEY.to_owned(), "direct".to_owned());
        assert!(is_direct(&c));
    }
}
