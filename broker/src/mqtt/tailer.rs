//! Partition tailers: the one path from stored records to MQTT subscribers.
//!
//! For every partition of every Kafka topic MQTT maps to (the mapped ones and the default) that
//! this broker leads, a task follows the partition's high watermark — the change notification
//! that Fetch long-polling also waits on — reads the newly durable batches from the in-memory
//! tail, decodes their records and hands each MQTT message to the router. An MQTT publish and a
//! Kafka produce therefore reach subscribers the same way, once durable, pushed the moment the
//! sequencer publishes the batch (no timer).
//!
//! A tailer starts at the high watermark when the broker starts (history is for Kafka
//! consumers), and at the log start for a partition that appears later (a topic created while
//! running, possibly by its first MQTT publish). A partition log replaced by the registry (led
//! at a new lease epoch) gets a new tailer at its high watermark.
//!
//! Partitions another broker leads are followed through that leader's `Peer.Tail` stream
//! (`peer`): the same batches, pushed on the leader's high-watermark notification, routed the
//! same way. When the leader changes (the stream ends with NOT_LEADER or breaks, or metadata
//! names another leader) the follower re-subscribes from the offset after the last batch it
//! routed, so nothing is skipped or repeated across a failover. A partition that moves here
//! (or away) is followed on from the position its previous follower reached.
//!
//! Each tailer also bumps one shared counter ([`Tailers::data_signal`]) whenever its
//! partition's high watermark moves: persistent sessions, which read the partitions from their
//! own cursors, wait on it instead of on every partition.

use super::mapping;
use super::router::RouterMsg;
use super::ROUTE_BATCH_MAX;
use crate::log::partition::{PartitionLog, TailRead};
use crate::node::Node;
use crate::peer::client::{backoff, resolve, Leader};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use strata_types::batch::Batches;
use strata_types::PartitionKey;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Bytes read from a tail per step.
const READ_BYTES_MAX: usize = 1024 * 1024;

#[derive(Debug)]
struct Running {
    /// The local log followed, or `None` for a partition followed from its remote leader.
    log: Option<Arc<PartitionLog>>,
    /// The next offset to route (negative until a remote follower learned its start).
    next: Arc<AtomicI64>,
    task: JoinHandle<()>,
}

/// Where a new follower starts: the position its predecessor reached, else the high watermark
/// at startup (negative for a remote one: the leader's), else the log start.
pub fn start_offset(handoff: Option<i64>, at_startup: bool, local: Option<(i64, i64)>) -> i64 {
    match (handoff.filter(|p| *p >= 0), local) {
        (Some(p), _) => p,
        (None, Some((log_start, hw))) => {
            if at_startup {
                hw
            } else {
                log_start
            }
        }
        (None, None) => {
            if at_startup {
                -1
            } else {
                0
            }
        }
    }
}

/// Where a remote follower continues after an event: never backwards.
pub fn next_after_event(current: i64, event_next: i64) -> i64 {
    current.max(event_next)
}

/// The set of running tailers, kept in step with the registry by [`Tailers::sync`].
pub struct Tailers {
    node: Arc<Node>,
    topics: Vec<String>,
    router: mpsc::Sender<RouterMsg>,
    shutdown: watch::Receiver<bool>,
    running: Mutex<HashMap<PartitionKey, Running>>,
    /// Bumped when any followed partition has new data.
    data: Arc<watch::Sender<u64>>,
    /// Until the first sync, partitions are "already there": tail from their end.
    started: Mutex<bool>,
}

impl Tailers {
    pub fn new(
        node: Arc<Node>,
        topics: Vec<String>,
        router: mpsc::Sender<RouterMsg>,
        shutdown: watch::Receiver<bool>,
    ) -> Tailers {
        Tailers {
            node,
            topics,
            router,
            shutdown,
            running: Mutex::new(HashMap::new()),
            data: Arc::new(watch::Sender::new(0)),
            started: Mutex::new(false),
        }
    }

    /// Changes whenever a followed partition's high watermark moves.
    pub fn data_signal(&self) -> watch::Receiver<u64> {
        self.data.subscribe()
    }

    /// Starts tailers for led partitions of the MQTT topics that have none (or whose log was
    /// replaced) and stops those of partitions no longer led. Cheap; no `.await`.
    pub fn sync(&self) {
        let mut first = self.started.lock();
        let at_startup = !*first;
        *first = true;
        let mut running = self.running.lock();
        // Led here: the local log; led elsewhere: the topic's name (followed remotely).
        let mut wanted: HashMap<PartitionKey, (Option<Arc<PartitionLog>>, String)> = HashMap::new();
        for name in &self.topics {
            let Some(topic) = self.node.registry.topic(name) else {
                continue;
            };
            for log in &topic.partitions {
                let local = self.node.registry.leads(&log.key).then(|| log.clone());
                wanted.insert(log.key, (local, topic.name.to_string()));
            }
        }
        let mut handoff: HashMap<PartitionKey, i64> = HashMap::new();
        running.retain(|key, r| {
            let keep = wanted.get(key).is_some_and(|(log, _)| {
                let same = match (log, &r.log) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                };
                same && !r.task.is_finished()
            });
            if !keep {
                r.task.abort();
                handoff.insert(*key, r.next.load(Ordering::Acquire));
            }
            keep
        });
        for (key, (log, topic)) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let local = log.as_ref().map(|l| {
                let o = l.offsets();
                (o.log_start_offset, o.high_watermark)
            });
            let start = start_offset(handoff.get(&key).copied(), at_startup, local);
            let next = Arc::new(AtomicI64::new(start));
            let task = match &log {
                Some(log) => tokio::spawn(tail(
                    log.clone(),
                    start.max(0),
                    next.clone(),
                    self.router.clone(),
                    self.data.clone(),
                    self.shutdown.clone(),
                )),
                None => tokio::spawn(tail_remote(
                    self.node.clone(),
                    key,
                    topic,
                    next.clone(),
                    self.router.clone(),
                    self.data.clone(),
                    self.shutdown.clone(),
                )),
            };
            running.insert(key, Running { log, next, task });
        }
    }

    /// Stops every tailer (on shutdown).
    pub fn stop(&self) {
        for (_, r) in self.running.lock().drain() {
            r.task.abort();
        }
    }
}

/// Follows one partition from `next` on, forever (until aborted or shut down).
async fn tail(
    log: Arc<PartitionLog>,
    mut next: i64,
    position: Arc<AtomicI64>,
    router: mpsc::Sender<RouterMsg>,
    data: Arc<watch::Sender<u64>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut hw = log.subscribe();
    // A partition that appears later may already hold data.
    data.send_modify(|n| *n = n.wrapping_add(1));
    loop {
        // Mark the current value seen *before* reading, so an append racing with the read
        // wakes the wait below.
        hw.borrow_and_update();
        loop {
            match log.read(next, READ_BYTES_MAX) {
                TailRead::Data(chunks) => {
                    // One routed batch for the whole read (a group commit of one-record
                    // publishes is many tail batches), cut at ROUTE_BATCH_MAX messages.
                    let mut out = Vec::new();
                    for data in chunks {
                        next = route_chunk(&data, next, &router, &mut out).await;
                    }
                    position.store(next, Ordering::Release);
                    if !out.is_empty() && router.send(RouterMsg::Route(out)).await.is_err() {
                        return;
                    }
                }
                TailRead::AtEnd => break,
                // Behind the tail (already uploaded and evicted) or out of range (the log
                // moved): skip to what the tail still has. Live delivery never reads history.
                TailRead::Older | TailRead::OutOfRange => {
                    let skip_to = log
                        .first_batch_at_or_after_time(i64::MIN)
                        .map(|b| b.base_offset)
                        .filter(|b| *b > next)
                        .unwrap_or_else(|| log.high_watermark());
                    if skip_to == next {
                        break;
                    }
                    tracing::debug!(partition = ?log.key, from = next, to = skip_to, "mqtt tailer skipped");
                    next = skip_to;
                    position.store(next, Ordering::Release);
                }
            }
            if router.is_closed() {
                return;
            }
        }
        tokio::select! {
            changed = hw.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        data.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Follows a partition another broker leads through its `Peer.Tail` stream, from `next` (or
/// the leader's high watermark while `next` is negative), re-subscribing at the next offset
/// whenever the stream ends or metadata names another leader. Until aborted or shut down.
async fn tail_remote(
    node: Arc<Node>,
    key: PartitionKey,
    topic: String,
    next: Arc<AtomicI64>,
    router: mpsc::Sender<RouterMsg>,
    data: Arc<watch::Sender<u64>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut attempt = 0u32;
    loop {
        if *shutdown.borrow() || router.is_closed() {
            return;
        }
        let mut changes = node.meta.subscribe();
        changes.borrow_and_update();
        let leader = resolve(
            &node.meta.read(),
            node.config.node_id,
            key.topic,
            key.partition,
        );
        let stream = match &leader {
            Leader::Remote { node_id, addr } => match node.peers.client(addr) {
                Ok(mut client) => {
                    let req = crate::peer::pb::TailRequest {
                        topic: topic.clone(),
                        partition: key.partition,
                        from_offset: next.load(Ordering::Acquire),
                    };
                    match client.tail(req).await {
                        Ok(resp) => Some(resp.into_inner()),
                        Err(status) => {
                            tracing::debug!(partition = ?key, leader = node_id, %status, "mqtt remote tail refused; retrying");
                            None
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(partition = ?key, %err, "mqtt remote tail: no client");
                    None
                }
            },
            // Led here soon (`sync` switches to a local tailer) or nobody leads: wait.
            Leader::Local | Leader::Unknown => None,
        };
        let Some(mut stream) = stream else {
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(backoff(attempt)) => {}
                _ = shutdown.changed() => return,
            }
            attempt = attempt.saturating_add(1);
            continue;
        };
        loop {
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(event)) => {
                        attempt = 0;
                        let mut at = next.load(Ordering::Acquire);
                        if at < 0 {
                            at = event.next_offset.min(event.base_offset);
                        }
                        if !event.records.is_empty() {
                            let mut out = Vec::new();
                            at = route_chunk(&event.records, at, &router, &mut out).await;
                            if !out.is_empty() && router.send(RouterMsg::Route(out)).await.is_err() {
                                return;
                            }
                        }
                        next.store(next_after_event(at, event.next_offset), Ordering::Release);
                        node.peers.note_hw(key, event.high_watermark);
                        data.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(partition = ?key, %status, "mqtt remote tail ended; re-subscribing");
                        break;
                    }
                },
                changed = changes.changed() => {
                    if changed.is_err() { return; }
                    let now = resolve(&node.meta.read(), node.config.node_id, key.topic, key.partition);
                    if now != leader {
                        break;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Decodes the records of `data` (whole batches) at or after `next` into `out`, handing `out`
/// to the router whenever it holds [`ROUTE_BATCH_MAX`] messages; returns the offset after
/// the last batch.
async fn route_chunk(
    data: &[u8],
    mut next: i64,
    router: &mpsc::Sender<RouterMsg>,
    out: &mut Vec<Arc<super::Message>>,
) -> i64 {
    for item in Batches::new(data) {
        let Ok((header, pos)) = item else {
            // The tail holds only batches the produce path checked; stop reading this chunk.
            tracing::warn!("mqtt tailer: undecodable batch header in the tail");
            break;
        };
        let end = header.base_offset + header.offset_count();
        if end <= next || header.is_control() {
            next = next.max(end);
            continue;
        }
        match crate::records::decode_batch(&data[pos..pos + header.size]) {
            Ok(records) => {
                for record in records.iter().filter(|r| r.offset >= next) {
                    if let Some(msg) = mapping::decode_record(record) {
                        out.push(Arc::new(msg));
                    }
                    if out.len() >= ROUTE_BATCH_MAX {
                        let batch = std::mem::take(out);
                        if router.send(RouterMsg::Route(batch)).await.is_err() {
                            return end;
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(%err, base_offset = header.base_offset, "mqtt tailer: records not decodable; skipped");
            }
        }
        next = end;
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_follower_starts_where_its_predecessor_stopped() {
        // A partition moving here or away: the predecessor's position wins.
        assert_eq!(start_offset(Some(42), true, Some((0, 50))), 42);
        assert_eq!(start_offset(Some(42), false, None), 42);
        // A remote predecessor that never learned its start does not count.
        assert_eq!(start_offset(Some(-1), false, Some((3, 9))), 3);
        // At startup: the high watermark (the leader's, asked with -1, for a remote one).
        assert_eq!(start_offset(None, true, Some((3, 9))), 9);
        assert_eq!(start_offset(None, true, None), -1);
        // A partition that appeared later: from its log start.
        assert_eq!(start_offset(None, false, Some((3, 9))), 3);
        assert_eq!(start_offset(None, false, None), 0);
    }

    #[test]
    fn a_remote_follower_never_moves_backwards() {
        // The first event after subscribing with -1 sets the position.
        assert_eq!(next_after_event(-1, 17), 17);
        // Records routed past what the event says (a batch ending later) keep their end.
        assert_eq!(next_after_event(20, 18), 20);
        // A skip ahead (retention) moves forward.
        assert_eq!(next_after_event(5, 30), 30);
    }
}
