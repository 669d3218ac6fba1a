//! Planned partition moves, the leaving side (`strata cluster drain`, rebalancing when a broker
//! joins), and scale to zero (`broker.idle_timeout_ms`). The rules are in
//! `strata_meta::cluster` (module docs, "Planned moves").
//!
//! A move of partition P from this broker (A) to a target (B), without copying history:
//!
//! 1. *Seal* P's log: the sequencer refuses appends to it from now on (producers get
//!    NOT_LEADER_OR_FOLLOWER, refresh their metadata and retry). A barrier through the
//!    sequencer's queue (an empty append, answered after everything queued before it is
//!    published) makes sure no append that passed the check is still on its way: after it, P's
//!    high watermark is final.
//! 2. Ask the uploader to flush now and wait until P's tail is uploaded and committed to the
//!    object index (the uploader marks a partition uploaded only after the commit).
//! 3. Propose `CompleteMove` with P's end offset; metadata checks that the index ends there and
//!    makes B the leader at epoch + 1. B's registry opens P at the index's end. A commit of A's
//!    stream later has nothing of P to add, and a recovery of A's stream skips P's entries (they
//!    end at or below the index's end).
//!
//! Idempotent producers move with the partition: after the barrier, P's producers' state in
//! the sequencer is final; it is read there (`SeqMsg::ExportProducers`: for each producer its
//! epoch and last batches' sequences and offsets) and carried by the same `CompleteMove`
//! (`producers`), which metadata keeps in P's lease as its `handover`. B's registry opens P's
//! log with it and B's sequencer adopts it before the first append there, so a client retrying
//! a batch A wrote gets its original offset (a duplicate), and a gap gets
//! OUT_OF_ORDER_SEQUENCE_NUMBER, as if P had never moved. Why metadata and not the Peer gRPC:
//! the handover then commits atomically with the leadership change, in the one raft write the
//! move makes anyway (nothing per produce) — there is no window where B leads P without it,
//! no second message to lose or retry, and it survives a restart of B (its registry reopens P
//! with it while nothing was written since) and B's death (whoever recovers B's stream adopts
//! it when the recovered tail reaches back to the move, `takeover.rs`). The cost is a bounded
//! blob per moved partition (at most 1,000 producers × 5 batches) in the metadata state, until
//! the partition's next move replaces it.
//!
//! A refused completion (the drain was undone, the target left, the lease moved on) unseals P;
//! a tail that does not reach the object store in time unseals it too, and the next round
//! tries again. Partitions move in batches: every planned partition is sealed at once, one
//! barrier and one flush cover them all.
//!
//! Scale to zero: a broker with no Kafka or MQTT connection for `broker.idle_timeout_ms` drains
//! itself (its partitions move to live brokers), seals and uploads whatever it still leads (no
//! live broker left), releases its WAL stream — everything in it is in object storage — and
//! tells `node.rs` to stop; `node.rs` deregisters it once the uploader stopped, and the process
//! exits 0. With nobody left the leases stay with this broker, which is not alive: clients see
//! no leader until a broker registers again, which then serves from the index.

use crate::log::partition::PartitionLog;
use crate::log::sequencer::SeqMsg;
use crate::node::Node;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_meta::{
    ClusterCommand, ClusterRejection, ClusterResult, Command, CommandResult, Rejection,
};
use strata_types::sequence::HandedProducer;
use strata_types::PartitionKey;
use tokio::sync::{oneshot, watch};

/// How long a move waits for its partitions' tails to reach the index before it unseals them
/// and tries again later.
const UPLOAD_WAIT_MS_MAX: u64 = 30_000;
/// Poll interval while waiting for uploads (the uploader is asked to flush at each poll).
const UPLOAD_POLL_MS: u64 = 20;
/// Retry interval when nothing changed in metadata (a failed move, the idle clock).
const TICK_MS: u64 = 500;

/// Runs until `shutdown`: performs the planned moves away from this broker, asks for a
/// rebalance once (when `cluster.rebalance_on_join`), and watches the idle timeout; flips
/// `idle_exit` when this broker scaled to zero.
pub async fn run(
    node: Arc<Node>,
    mut shutdown: watch::Receiver<bool>,
    idle_exit: Arc<watch::Sender<bool>>,
) {
    let me = node.config.node_id;
    if node.config.file.cluster.rebalance_on_join && !node.config.meta_peers.is_empty() {
        rebalance(&node).await;
    }
    let idle_timeout = Duration::from_millis(node.config.file.broker.idle_timeout_ms);
    let mut idle_since: Option<Instant> = None;
    let mut changes = node.meta.subscribe();
    loop {
        move_planned(&node).await;
        if !idle_timeout.is_zero() {
            let open = node.metrics.kafka_connections_open.load(Ordering::Relaxed)
                + node.metrics.mqtt.connections_open.load(Ordering::Relaxed);
            if open > 0 {
                idle_since = None;
            } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= idle_timeout {
                tracing::info!(
                    idle_ms = idle_timeout.as_millis() as u64,
                    "no connections for broker.idle_timeout_ms: scaling to zero"
                );
                match scale_to_zero(&node, &mut shutdown).await {
                    Ok(()) => {
                        let _ = idle_exit.send(true);
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(%err, "scale to zero failed; serving on");
                        idle_since = None;
                        set_draining(&node, me, false).await;
                    }
                }
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(TICK_MS)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The partitions this broker leads (at the lease epoch its log was opened with) whose lease
/// has a target: `(key, epoch)`.
fn planned(node: &Node) -> Vec<(PartitionKey, i32)> {
    let me = node.config.node_id;
    let state = node.meta.read();
    let cluster = state.cluster();
    node.registry
        .partitions()
        .into_iter()
        .filter_map(|log| {
            let epoch = node.registry.leader_epoch(&log.key)?;
            let lease = cluster.lease(log.key.topic, log.key.partition)?;
            (lease.leader == Some(me)
                && lease.epoch == epoch
                && lease.target.is_some()
                && lease.pending_stream.is_none())
            .then_some((log.key, epoch))
        })
        .collect()
}

/// Moves every planned partition away (steps 1–3 of the module docs). Returns how many moved.
async fn move_planned(node: &Node) -> usize {
    let planned = planned(node);
    if planned.is_empty() {
        return 0;
    }
    let logs: Vec<(Arc<PartitionLog>, i32)> = planned
        .iter()
        .filter_map(|(key, epoch)| Some((node.registry.partition(key)?, *epoch)))
        .collect();
    let started = Instant::now();
    let ends = match seal_and_upload(node, logs.iter().map(|(l, _)| l.clone()).collect()).await {
        Ok(ends) => ends,
        Err(err) => {
            tracing::warn!(%err, partitions = logs.len(), "planned move postponed");
            for (log, _) in &logs {
                log.set_sealed(false);
            }
            return 0;
        }
    };
    let producers = match export_producers(node, logs.iter().map(|(l, _)| l.key).collect()).await {
        Ok(producers) => producers,
        Err(err) => {
            tracing::warn!(%err, partitions = logs.len(), "planned move postponed");
            for (log, _) in &logs {
                log.set_sealed(false);
            }
            return 0;
        }
    };
    let mut moved = 0;
    for ((log, epoch), producers) in logs.iter().zip(producers) {
        let end_offset = ends[&log.key];
        let handed = producers.len();
        let complete = |producers| {
            Command::Cluster(ClusterCommand::CompleteMove {
                topic: log.key.topic,
                partition: log.key.partition,
                from: node.config.node_id,
                epoch: *epoch,
                end_offset,
                producers,
            })
        };
        let mut result = node.meta.write(complete(Some(producers))).await;
        if let Ok(CommandResult::Rejected(Rejection::Cluster(
            err @ ClusterRejection::InvalidHandover { .. },
        ))) = &result
        {
            // Never expected (the sequencer's state is what a handover carries): move
            // without it rather than not at all; its producers are unknown on the target.
            tracing::error!(%err, "producer handover refused; moving the partition without it");
            result = node.meta.write(complete(None)).await;
        }
        match result {
            Ok(CommandResult::Cluster(ClusterResult::MoveCompleted { leader, epoch })) => {
                moved += 1;
                tracing::info!(
                    topic = %log.topic_name,
                    partition = log.key.partition,
                    to = leader,
                    epoch,
                    end_offset,
                    producers = handed,
                    "partition moved"
                );
            }
            Ok(CommandResult::Rejected(Rejection::Cluster(
                err @ ClusterRejection::MoveNotUploaded { .. },
            ))) => {
                // The index is behind what this broker uploaded: impossible unless a commit
                // is still in flight; stay sealed and let the next round try again.
                tracing::warn!(%err, "move not completed yet");
            }
            Ok(other) => {
                tracing::info!(
                    topic = %log.topic_name,
                    partition = log.key.partition,
                    result = ?other,
                    "planned move called off; the partition stays"
                );
                log.set_sealed(false);
            }
            Err(err) => {
                tracing::warn!(%err, "CompleteMove failed; unsealed, will retry");
                log.set_sealed(false);
            }
        }
    }
    node.refresh_topics();
    tracing::info!(
        moved,
        planned = logs.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "planned moves done"
    );
    moved
}

/// Seals `logs`, waits for the sequencer barrier, then for their tails to be in the index.
/// Returns each partition's end offset. The logs stay sealed (also on error: the caller
/// decides).
async fn seal_and_upload(
    node: &Node,
    logs: Vec<Arc<PartitionLog>>,
) -> Result<BTreeMap<PartitionKey, i64>, String> {
    for log in &logs {
        log.set_sealed(true);
    }
    barrier(node).await?;
    let ends: BTreeMap<PartitionKey, i64> =
        logs.iter().map(|l| (l.key, l.high_watermark())).collect();
    let deadline = Instant::now() + Duration::from_millis(UPLOAD_WAIT_MS_MAX);
    loop {
        let behind = logs
            .iter()
            .filter(|l| l.offsets().uploaded_offset < ends[&l.key])
            .count();
        let indexed = {
            let state = node.meta.read();
            logs.iter()
                .all(|l| state.indexed_end(l.key.topic, l.key.partition) >= ends[&l.key])
        };
        if behind == 0 && indexed {
            return Ok(ends);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{behind} partition(s) not uploaded within {UPLOAD_WAIT_MS_MAX} ms"
            ));
        }
        node.seq_shared.flush_wanted.notify_one();
        tokio::time::sleep(Duration::from_millis(UPLOAD_POLL_MS)).await;
    }
}

/// The idempotent producers' state of each of `keys` (sealed, after the barrier: final), in
/// order.
async fn export_producers(
    node: &Node,
    keys: Vec<PartitionKey>,
) -> Result<Vec<Vec<HandedProducer>>, String> {
    let (reply, answered) = oneshot::channel();
    node.seq_tx
        .send(SeqMsg::ExportProducers { keys, reply })
        .await
        .map_err(|_| "the sequencer stopped".to_string())?;
    answered
        .await
        .map_err(|_| "the sequencer stopped".to_string())
}

/// Waits until everything queued to the sequencer before now is published (or refused).
async fn barrier(node: &Node) -> Result<(), String> {
    let (reply, answered) = oneshot::channel();
    node.seq_tx
        .send(SeqMsg::Append {
            items: Vec::new(),
            reply,
        })
        .await
        .map_err(|_| "the sequencer stopped".to_string())?;
    answered
        .await
        .map(|_| ())
        .map_err(|_| "the sequencer stopped".to_string())
}

async fn rebalance(node: &Node) {
    let to = node.config.node_id;
    for _ in 0..10 {
        match node
            .meta
            .write(Command::Cluster(ClusterCommand::Rebalance { to }))
            .await
        {
            Ok(CommandResult::Cluster(ClusterResult::Rebalanced { moves })) => {
                if moves > 0 {
                    tracing::info!(moves, "rebalance on join: partitions will move here");
                }
                return;
            }
            Ok(other) => {
                // Draining (a restart within its lease keeps the flag): nothing to take.
                tracing::info!(result = ?other, "no rebalance on join");
                return;
            }
            Err(err) => tracing::debug!(%err, "rebalance failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(TICK_MS)).await;
    }
}

async fn set_draining(node: &Node, node_id: u64, draining: bool) -> bool {
    let cmd = ClusterCommand::DrainBroker { node_id, draining };
    matches!(
        node.meta.write(Command::Cluster(cmd)).await,
        Ok(CommandResult::Cluster(ClusterResult::DrainSet { .. }))
    )
}

/// Drains this broker, uploads what it still leads, and releases its WAL stream. On success
/// the caller stops the node (and `node.rs` deregisters it).
async fn scale_to_zero(node: &Node, shutdown: &mut watch::Receiver<bool>) -> Result<(), String> {
    let me = node.config.node_id;
    if !set_draining(node, me, true).await {
        return Err("metadata refused DrainBroker".into());
    }
    // Move what can move; stop when nothing this broker leads has a target left.
    let deadline = Instant::now() + Duration::from_millis(UPLOAD_WAIT_MS_MAX * 2);
    while !planned(node).is_empty() {
        if *shutdown.borrow() {
            return Err("shutting down".into());
        }
        if Instant::now() >= deadline {
            return Err("partitions did not move away in time".into());
        }
        if move_planned(node).await == 0 {
            tokio::time::sleep(Duration::from_millis(TICK_MS)).await;
        }
    }
    // With no live broker left, the rest stays here: upload it all.
    let led: Vec<Arc<PartitionLog>> = node
        .registry
        .partitions()
        .into_iter()
        .filter(|l| node.registry.leads(&l.key))
        .collect();
    if let Err(err) = seal_and_upload(node, led.clone()).await {
        for log in &led {
            log.set_sealed(false);
        }
        return Err(err);
    }
    // Nothing of this broker's WAL is missing from the index: release its stream, so whoever
    // takes the partitions (or this broker, restarted) need not recover it.
    let stream = node.meta.read().cluster().stream(me).cloned();
    if let Some(stream) = stream.filter(|s| s.holder == Some(me)) {
        let settled_lsn = node.seq_shared.published_lsn.load(Ordering::Acquire);
        let cmd = ClusterCommand::ReleaseStream {
            stream: me,
            epoch: stream.epoch,
            settled_lsn: stream.settled_lsn.max(settled_lsn),
        };
        match node.meta.write(Command::Cluster(cmd)).await {
            Ok(CommandResult::Cluster(ClusterResult::StreamReleased)) => {}
            other => {
                for log in &led {
                    log.set_sealed(false);
                }
                return Err(format!("stream release refused: {other:?}"));
            }
        }
    }
    tracing::info!(
        kept = led.len(),
        "drained and uploaded; this broker stops (scale to zero)"
    );
    Ok(())
}

/// The clean stop after scaling to zero: the broker leaves the cluster at once (its
/// partitions go to live brokers, not pending, since its stream is released).
pub async fn deregister(node: &Node) {
    let cmd = ClusterCommand::DeregisterBroker {
        node_id: node.config.node_id,
        now_ms: crate::cluster::now_ms(),
    };
    match node.meta.write(Command::Cluster(cmd)).await {
        Ok(CommandResult::Cluster(ClusterResult::Expired { .. })) => {
            tracing::info!("deregistered")
        }
        other => tracing::warn!(result = ?other, "deregistration failed"),
    }
}

#[cfg(test)]
mod tests {
    use crate::log::partition::PartitionLog;
    use crate::log::producer::test_batches::batch;
    use crate::log::producer::{ProducerBatch, ProducerStates, SequenceError};
    use crate::log::sequencer::{
        self, AppendError, AppendRequest, AppendResult, BatchSpan, SeqMsg, SeqShared,
        SequencerConfig,
    };
    use crate::metrics::Metrics;
    use bytes::BytesMut;
    use std::sync::Arc;
    use strata_types::batch::BatchHeader;
    use strata_types::sequence::Handover;
    use strata_types::{PartitionKey, TopicId, TopicName};
    use strata_wal::{Wal, WalConfig};
    use tokio::sync::{mpsc, oneshot};

    fn request(log: &Arc<PartitionLog>) -> AppendRequest {
        idempotent(log, -1, 0, 3)
    }

    /// An append of one batch of `count` records from producer `pid` (epoch 0) at `seq`.
    fn idempotent(log: &Arc<PartitionLog>, pid: i64, seq: i32, count: i32) -> AppendRequest {
        let b = batch(pid, 0, seq, count);
        let header = BatchHeader::parse(&b).unwrap();
        AppendRequest {
            log: log.clone(),
            data: BytesMut::from(&b[..]),
            batches: vec![BatchSpan {
                start: 0,
                offset_count: header.offset_count(),
                producer: ProducerBatch::from_header(&header),
            }],
            max_timestamp: 0,
        }
    }

    fn send(tx: &mpsc::Sender<SeqMsg>, items: Vec<AppendRequest>) -> Vec<AppendResult> {
        let (reply, rx) = oneshot::channel();
        tx.blocking_send(SeqMsg::Append { items, reply }).unwrap();
        rx.blocking_recv().unwrap()
    }

    fn start_sequencer(
        dir: &std::path::Path,
    ) -> (mpsc::Sender<SeqMsg>, std::thread::JoinHandle<()>) {
        let (wal, _) = Wal::open(WalConfig::new(dir)).unwrap();
        let (tx, rx) = mpsc::channel(16);
        let thread = sequencer::spawn(
            crate::log::sink::WalSink::Local(wal),
            ProducerStates::default(),
            rx,
            Arc::new(SeqShared::default()),
            Arc::new(Metrics::default()),
            SequencerConfig {
                group_commit_bytes_max: 1 << 20,
                flush_bytes_max: 1 << 30,
                realtime_priority: 0,
            },
        )
        .unwrap();
        (tx, thread)
    }

    /// The handover of a planned move: the leaving broker's sequencer exports the sealed
    /// partition's producers, the new leader's adopts them with the partition's new log. A
    /// retry of a batch written before the move is a duplicate (its original offset, nothing
    /// written), a gap is out of order, and the producer continues where it was; without the
    /// handover the new leader would have written the retry again.
    #[test]
    fn the_new_leader_answers_retries_of_batches_written_before_the_move() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let (a, a_thread) = start_sequencer(dirs[0].path());
        let (b, b_thread) = start_sequencer(dirs[1].path());
        let key = PartitionKey {
            topic: TopicId::from_bytes([9; 16]),
            partition: 3,
        };
        let name = TopicName::new("t").unwrap();
        let on_a = Arc::new(PartitionLog::new(key, name.clone(), 0, 0));
        assert_eq!(send(&a, vec![idempotent(&on_a, 7, 0, 2)]), vec![Ok(0)]);
        assert_eq!(send(&a, vec![request(&on_a)]), vec![Ok(2)]);
        assert_eq!(send(&a, vec![idempotent(&on_a, 7, 2, 3)]), vec![Ok(5)]);
        assert_eq!(send(&a, vec![idempotent(&on_a, 8, 40, 1)]), vec![Ok(8)]);
        // Seal, barrier, export (what `move_planned` does).
        on_a.set_sealed(true);
        assert_eq!(send(&a, Vec::new()), vec![]);
        let end_offset = on_a.high_watermark();
        assert_eq!(end_offset, 9);
        let (reply, rx) = oneshot::channel();
        a.blocking_send(SeqMsg::ExportProducers {
            keys: vec![key],
            reply,
        })
        .unwrap();
        let mut exported = rx.blocking_recv().unwrap();
        let producers = exported.pop().unwrap();
        assert_eq!(
            producers.iter().map(|p| p.producer_id).collect::<Vec<_>>(),
            vec![7, 8]
        );
        let handover = Handover {
            end_offset,
            producers,
        };
        handover.validate().unwrap();

        // B opens the partition where the index ends, with the handover (the registry does).
        let on_b = Arc::new(PartitionLog::new(key, name, 0, end_offset));
        on_b.set_handover(handover);
        // Retries of batches A wrote: the original offsets, nothing written.
        assert_eq!(send(&b, vec![idempotent(&on_b, 7, 2, 3)]), vec![Ok(5)]);
        assert_eq!(send(&b, vec![idempotent(&on_b, 7, 0, 2)]), vec![Ok(0)]);
        assert_eq!(send(&b, vec![idempotent(&on_b, 8, 40, 1)]), vec![Ok(8)]);
        assert_eq!(
            on_b.high_watermark(),
            end_offset,
            "no retry was written again"
        );
        // A gap is refused, as on A.
        assert_eq!(
            send(&b, vec![idempotent(&on_b, 7, 6, 1)]),
            vec![Err(AppendError::Sequence(SequenceError::OutOfOrder {
                producer_id: 7,
                expected: 5,
                got: 6
            }))]
        );
        // The producers continue where they were.
        assert_eq!(send(&b, vec![idempotent(&on_b, 7, 5, 1)]), vec![Ok(9)]);
        assert_eq!(send(&b, vec![idempotent(&on_b, 8, 41, 2)]), vec![Ok(10)]);
        assert_eq!(on_b.high_watermark(), 12);
        drop((a, b));
        a_thread.join().unwrap();
        b_thread.join().unwrap();
    }

    /// A sealed partition takes no append; an empty append (the barrier) is answered; the
    /// high watermark after the barrier is final; unsealing (a move called off) resumes it.
    #[test]
    fn a_sealed_partition_refuses_appends_after_the_barrier() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(WalConfig::new(dir.path())).unwrap();
        let (tx, rx) = mpsc::channel(16);
        let thread = sequencer::spawn(
            crate::log::sink::WalSink::Local(wal),
            ProducerStates::default(),
            rx,
            Arc::new(SeqShared::default()),
            Arc::new(Metrics::default()),
            SequencerConfig {
                group_commit_bytes_max: 1 << 20,
                flush_bytes_max: 1 << 30,
                realtime_priority: 0,
            },
        )
        .unwrap();
        let key = PartitionKey {
            topic: TopicId::from_bytes([7; 16]),
            partition: 0,
        };
        let log = Arc::new(PartitionLog::new(key, TopicName::new("t").unwrap(), 0, 0));
        assert_eq!(send(&tx, vec![request(&log)]), vec![Ok(0)]);
        log.set_sealed(true);
        assert_eq!(send(&tx, Vec::new()), vec![], "the barrier is answered");
        let end = log.high_watermark();
        assert_eq!(end, 3);
        assert_eq!(
            send(&tx, vec![request(&log), request(&log)]),
            vec![Err(AppendError::Fenced), Err(AppendError::Fenced)]
        );
        assert_eq!(log.high_watermark(), end, "nothing appended after the seal");
        assert_eq!(log.next_offset(), end, "no offsets reserved either");
        log.set_sealed(false);
        assert_eq!(send(&tx, vec![request(&log)]), vec![Ok(3)]);
        drop(tx);
        thread.join().unwrap();
    }
}
