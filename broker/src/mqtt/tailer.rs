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
//! Each tailer also bumps one shared counter ([`Tailers::data_signal`]) whenever its
//! partition's high watermark moves: persistent sessions, which read the partitions from their
//! own cursors, wait on it instead of on every partition.

use super::mapping;
use super::router::RouterMsg;
use super::ROUTE_BATCH_MAX;
use crate::log::partition::{PartitionLog, TailRead};
use crate::node::Node;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use strata_types::batch::Batches;
use strata_types::PartitionKey;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Bytes read from a tail per step.
const READ_BYTES_MAX: usize = 1024 * 1024;

#[derive(Debug)]
struct Running {
    log: Arc<PartitionLog>,
    task: JoinHandle<()>,
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
        let mut wanted: HashMap<PartitionKey, Arc<PartitionLog>> = HashMap::new();
        for name in &self.topics {
            let Some(topic) = self.node.registry.topic(name) else {
                continue;
            };
            for log in &topic.partitions {
                if self.node.registry.leads(&log.key) {
                    wanted.insert(log.key, log.clone());
                }
            }
        }
        running.retain(|key, r| {
            let keep = wanted
                .get(key)
                .is_some_and(|log| Arc::ptr_eq(log, &r.log) && !r.task.is_finished());
            if !keep {
                r.task.abort();
            }
            keep
        });
        for (key, log) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let offsets = log.offsets();
            let start = if at_startup {
                offsets.high_watermark
            } else {
                offsets.log_start_offset
            };
            let task = tokio::spawn(tail(
                log.clone(),
                start,
                self.router.clone(),
                self.data.clone(),
                self.shutdown.clone(),
            ));
            running.insert(key, Running { log, task });
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
