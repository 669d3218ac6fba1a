//! MQTT publish → Kafka record, through the same sequencer/WAL path as a Kafka Produce.
//!
//! [`Ingest::append`] picks the Kafka topic (mapping rules), creates it on first use, picks the
//! partition (murmur2 of the MQTT topic), builds a one-record batch and enqueues it to the
//! sequencer. It returns as soon as the append is queued — so a connection's publishes keep
//! their order in the partition — with a future that resolves once the batch is durable (then
//! a QoS 1/2 publish may be acknowledged) or failed.
//!
//! A publish whose partition another broker leads is forwarded: it joins that partition's
//! forwarder queue (bounded, [`FORWARD_QUEUE_MAX`]; in publish order), whose task sends what is
//! queued — at most [`FORWARD_BATCH_MAX`] one-record batches back to back — as one `Append` to
//! the leader (`peer::client`, which re-resolves the leader and retries on NOT_LEADER or an
//! unreachable leader for a bounded time). The publish's future resolves once the leader
//! answered durable; a failure fails the publish like a local storage error (never a silent
//! drop).
//!
//! A forwarder is an idempotent Kafka producer: it takes a producer id from this node's
//! allocator (`producer_ids`) and sends what it joined as ONE record batch stamped with the id,
//! epoch 0 and its next sequence for the partition. A retry of an `Append` whose answer was
//! lost (a broken connection, a timeout, a leader change: the producer state moves with the
//! partition's WAL) is then recognised by the leader's sequencer as a duplicate and answered
//! with the original offsets — a forwarded publish is stored once. When an `Append` finally
//! fails, its outcome is unknown: the forwarder drops its producer id and takes a fresh one
//! (an unknown producer starts at any sequence), so the next batch is not refused as a gap.

use super::mapping::{self, Mapping};
use super::tailer::Tailers;
use super::Message;
use crate::log::sequencer::{AppendError, AppendRequest, BatchSpan};
use crate::node::Node;
use crate::records;
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::Record;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use strata_meta::{Command, CommandResult, Rejection};
use strata_types::sequence::add_seq;
use strata_types::{PartitionKey, TopicId, TopicName};
use tokio::sync::{mpsc, oneshot};

/// Publishes queued per forwarded partition (beyond: the connection waits).
pub const FORWARD_QUEUE_MAX: usize = 1024;
/// One-record batches sent in one `Append`.
pub const FORWARD_BATCH_MAX: usize = 256;
/// Bytes sent in one `Append` (at least one batch).
pub const FORWARD_BYTES_MAX: usize = 1024 * 1024;

/// Why a publish could not be stored. Mapped to reason codes in `wire::publish_error_code`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error("kafka topic `{topic}` could not be created: {reason}")]
    TopicCreate { topic: String, reason: String },
    #[error("message of {size} bytes exceeds kafka.message_bytes_max ({max})")]
    TooLarge { size: usize, max: u32 },
    #[error("record encoding failed: {0}")]
    Encode(String),
    #[error("append failed: {0}")]
    Append(#[from] AppendError),
    #[error("retained message not written to the retained log")]
    RetainedNotStored,
    /// Refused by an `[[mqtt.acl]]` rule (`mqtt::auth`); never appended.
    #[error("not authorized by the MQTT ACL")]
    NotAuthorized,
    /// The partition's leader (another broker) did not store it.
    #[error("forwarding to the leader of partition {partition} of `{topic}` failed: {reason}")]
    Forward {
        topic: String,
        partition: usize,
        reason: String,
    },
}

/// One forwarded publish: its record (offset 0, no producer id), its size as a one-record
/// batch, and who waits for its offset.
struct Forwarded {
    record: Record,
    size: usize,
    done: oneshot::Sender<Result<i64, IngestError>>,
}

/// The forwarder queues, one per partition led elsewhere that this broker published to.
#[derive(Default)]
pub struct Forwarders {
    queues: parking_lot::Mutex<HashMap<PartitionKey, mpsc::Sender<Forwarded>>>,
}

pub struct Ingest {
    pub node: Arc<Node>,
    pub mapping: Mapping,
    pub tailers: Arc<Tailers>,
    pub forwarders: Forwarders,
}

impl Ingest {
    /// Queues `msg` for its partition. The returned future resolves to the record's offset
    /// once durable.
    pub async fn append(
        &self,
        msg: &Message,
    ) -> Result<impl Future<Output = Result<i64, IngestError>> + Send + 'static, IngestError> {
        let _span = crate::telemetry::mqtt_publish_span(&msg.topic, msg.payload.len());
        let node = &self.node;
        let kafka_topic = self.mapping.kafka_topic_for(&msg.topic);
        let logs = match node.registry.topic(kafka_topic) {
            Some(t) => t,
            None => {
                // Boxed: the metadata write is a large future, and every connection task
                // would otherwise carry its size even when no topic is ever created.
                Box::pin(self.create_topic(kafka_topic)).await?;
                node.registry
                    .topic(kafka_topic)
                    .ok_or_else(|| IngestError::TopicCreate {
                        topic: kafka_topic.to_string(),
                        reason: "not visible after creation".into(),
                    })?
            }
        };
        let index = mapping::partition_for(msg.topic.as_bytes(), logs.partitions.len());
        let log = logs.partitions[index].clone();
        let now = crate::log::sequencer::now_ms();
        let record = mapping::record(msg, now);
        let data =
            records::encode_batch(std::slice::from_ref(&record)).map_err(IngestError::Encode)?;
        if data.len() > node.config.message_bytes_max as usize {
            return Err(IngestError::TooLarge {
                size: data.len(),
                max: node.config.message_bytes_max,
            });
        }
        if !node.registry.leads(&log.key) {
            let rx = self
                .forward(log.key, kafka_topic, index, record, data.len())
                .await?;
            return Ok(futures::future::Either::Left(async move {
                rx.await.unwrap_or(Err(AppendError::ShuttingDown.into()))
            }));
        }
        Ok(futures::future::Either::Right(
            append_local(node, log, data, now).await?,
        ))
    }

    /// Queues a publish for the partition's leader elsewhere (see the module docs).
    async fn forward(
        &self,
        key: PartitionKey,
        topic: &str,
        index: usize,
        record: Record,
        size: usize,
    ) -> Result<oneshot::Receiver<Result<i64, IngestError>>, IngestError> {
        if self.node.shutting_down.load(Ordering::Acquire) {
            return Err(AppendError::ShuttingDown.into());
        }
        let (done, rx) = oneshot::channel();
        let mut item = Forwarded { record, size, done };
        for _ in 0..2 {
            let tx = {
                let mut queues = self.forwarders.queues.lock();
                let tx = queues.entry(key).or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(FORWARD_QUEUE_MAX);
                    tokio::spawn(forward_loop(
                        self.node.clone(),
                        key,
                        topic.to_owned(),
                        index,
                        rx,
                    ));
                    tx
                });
                if tx.is_closed() {
                    queues.remove(&key);
                    continue;
                }
                tx.clone()
            };
            match tx.send(item).await {
                Ok(()) => return Ok(rx),
                Err(mpsc::error::SendError(back)) => item = back,
            }
        }
        Err(AppendError::ShuttingDown.into())
    }

    /// Creates a Kafka topic MQTT maps to, with `kafka.default_partitions`; one created
    /// concurrently by someone else is fine.
    async fn create_topic(&self, name: &str) -> Result<(), IngestError> {
        let node = &self.node;
        let fail = |reason: String| IngestError::TopicCreate {
            topic: name.to_string(),
            reason,
        };
        let valid = TopicName::new(name.to_string()).map_err(|e| fail(e.to_string()))?;
        let result = node
            .meta
            .write(Command::CreateTopic {
                name: valid,
                id: TopicId::random(),
                partitions: node.config.file.kafka.default_partitions,
                configs: BTreeMap::new(),
                created_ms: crate::log::sequencer::now_ms(),
            })
            .await;
        node.refresh_topics();
        // Tail the new partitions before the first append to them, so nothing is missed.
        self.tailers.sync();
        match result {
            Ok(CommandResult::TopicCreated(_)) => {
                tracing::info!(topic = name, "created kafka topic for mqtt");
                Ok(())
            }
            Ok(CommandResult::Rejected(Rejection::TopicExists { .. })) => Ok(()),
            Ok(CommandResult::Rejected(r)) => Err(fail(r.to_string())),
            Ok(other) => Err(fail(format!("unexpected {other:?}"))),
            Err(err) => Err(fail(err.to_string())),
        }
    }
}

/// Queues a one-record batch on the local path (the sequencer, or the direct writer); the
/// future resolves to its offset once durable.
async fn append_local(
    node: &Node,
    log: Arc<crate::log::partition::PartitionLog>,
    data: BytesMut,
    now: i64,
) -> Result<impl Future<Output = Result<i64, IngestError>> + Send + 'static, IngestError> {
    let item = AppendRequest {
        log,
        data,
        batches: vec![BatchSpan {
            start: 0,
            offset_count: 1,
            producer: None,
        }],
        max_timestamp: now,
    };
    let (tx, rx) = oneshot::channel();
    if node.shutting_down.load(Ordering::Acquire)
        // WAL topics to the sequencer, direct topics to the direct writer.
        || crate::log::direct::route(node, vec![item], tx).await.is_err()
    {
        return Err(AppendError::ShuttingDown.into());
    }
    Ok(async move {
        match rx.await {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(offset)) => Ok(offset),
                Some(Err(e)) => Err(e.into()),
                None => Err(AppendError::ShuttingDown.into()),
            },
            Err(_) => Err(AppendError::ShuttingDown.into()),
        }
    })
}

/// Takes what is queued for one forwarded partition at once (up to the batch bounds), sends it
/// as one `Append`, and answers each publish with its offset. When the partition is led here
/// now, what it holds and what is queued take the local path, in order, and the task ends
/// (later publishes go the local way; a new forwarder starts if the partition moves again).
async fn forward_loop(
    node: Arc<Node>,
    key: PartitionKey,
    topic: String,
    index: usize,
    mut rx: mpsc::Receiver<Forwarded>,
) {
    let mut items: Vec<Forwarded> = Vec::new();
    let mut producer: Option<ForwardProducer> = None;
    while let Some(first) = rx.recv().await {
        items.clear();
        let mut bytes = first.size;
        items.push(first);
        while items.len() < FORWARD_BATCH_MAX && bytes < FORWARD_BYTES_MAX {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.size;
                    items.push(next);
                }
                Err(_) => break,
            }
        }
        if producer.is_none() {
            match node.producer_ids.next().await {
                Ok(id) => producer = Some(ForwardProducer::new(id)),
                // No id (metadata unavailable): the batch goes without one, at least once.
                Err(err) => {
                    tracing::warn!(%err, topic, partition = index, "forwarding without a producer id")
                }
            }
        }
        let result = match join(&items, producer.as_ref()) {
            Ok(records) => crate::peer::client::append(&node, key, &topic, records).await,
            Err(e) => Err(crate::peer::client::PeerError::Refused {
                code: 2,
                message: format!("record encoding failed: {e}"),
            }),
        };
        if matches!(result, Err(crate::peer::client::PeerError::Local)) {
            rx.close();
            while let Ok(more) = rx.try_recv() {
                items.push(more);
            }
            for item in items.drain(..) {
                let answer = match node.registry.partition(&key) {
                    Some(log) => {
                        let now = crate::log::sequencer::now_ms();
                        let data = records::encode_batch(std::slice::from_ref(&item.record));
                        match data {
                            Ok(data) => match append_local(&node, log, data, now).await {
                                Ok(done) => done.await,
                                Err(e) => Err(e),
                            },
                            Err(e) => Err(IngestError::Encode(e)),
                        }
                    }
                    None => Err(AppendError::ShuttingDown.into()),
                };
                let _ = item.done.send(answer);
            }
            return;
        }
        producer = producer.and_then(|p| p.after(result.is_ok(), items.len()));
        let answers = offsets(&result, items.len());
        for (item, answer) in items.drain(..).zip(answers) {
            let _ = item
                .done
                .send(answer.map_err(|reason| IngestError::Forward {
                    topic: topic.clone(),
                    partition: index,
                    reason,
                }));
        }
        if node.shutting_down.load(Ordering::Acquire) {
            break;
        }
    }
}

/// A forwarder's idempotent-producer identity for its partition (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ForwardProducer {
    id: i64,
    /// Sequence of the next batch's first record.
    next_seq: i32,
}

impl ForwardProducer {
    fn new(id: i64) -> Self {
        Self { id, next_seq: 0 }
    }

    /// After an `Append` of `records` records: the same producer further on when it was
    /// stored, none (take a fresh id) when its outcome is unknown.
    fn after(self, stored: bool, records: usize) -> Option<Self> {
        stored.then(|| Self {
            id: self.id,
            next_seq: add_seq(self.next_seq, records as i32),
        })
    }
}

/// The forwarded records as one batch (offsets 0.., stamped with `producer` when there is one).
fn join(items: &[Forwarded], producer: Option<&ForwardProducer>) -> Result<Bytes, String> {
    let all: Vec<Record> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let mut r = item.record.clone();
            r.offset = i as i64;
            if let Some(p) = producer {
                r.producer_id = p.id;
                r.producer_epoch = 0;
                r.sequence = add_seq(p.next_seq, i as i32);
            }
            r
        })
        .collect();
    records::encode_batch(&all).map(BytesMut::freeze)
}

/// Each of `n` one-record batches appended together at `base` gets `base + i`.
fn offsets(
    result: &Result<i64, crate::peer::client::PeerError>,
    n: usize,
) -> Vec<Result<i64, String>> {
    match result {
        Ok(base) => (0..n as i64).map(|i| Ok(base + i)).collect(),
        Err(e) => vec![Err(e.to_string()); n],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::client::PeerError;

    #[test]
    fn forwarded_publishes_get_consecutive_offsets_or_all_fail() {
        assert_eq!(offsets(&Ok(40), 3), vec![Ok(40), Ok(41), Ok(42)]);
        let failed = offsets(
            &Err(PeerError::Unavailable {
                waited_ms: 20_000,
                last: "broker 2 is not the leader".into(),
            }),
            2,
        );
        assert_eq!(failed.len(), 2);
        assert!(failed
            .iter()
            .all(|r| r.as_ref().unwrap_err().contains("not the leader")));
    }

    fn item(value: &'static [u8]) -> Forwarded {
        let (done, _) = oneshot::channel();
        let record = records::plain_record(
            0,
            1_700_000_000_000,
            Some(Bytes::from_static(b"t")),
            Some(Bytes::from_static(value)),
            Default::default(),
        );
        Forwarded {
            record,
            size: 80,
            done,
        }
    }

    #[test]
    fn queued_records_are_joined_into_one_idempotent_batch() {
        use strata_types::batch::{verify_crc, BatchHeader, Batches};
        let items = vec![item(b"a"), item(b"b"), item(b"c")];
        let p = ForwardProducer {
            id: 77,
            next_seq: 10,
        };
        let batch = join(&items, Some(&p)).unwrap();
        let h = BatchHeader::parse(&batch).unwrap();
        verify_crc(&batch, &h).unwrap();
        assert_eq!((h.size, h.records_count), (batch.len(), 3), "one batch");
        assert_eq!((h.producer_id, h.producer_epoch), (77, 0));
        assert_eq!((h.base_sequence, h.last_offset_delta), (10, 2));
        // Where the sequence wraps the encoder starts a second batch (at sequence 0): still
        // one request of at most 5 batches, which the sequencer deduplicates as a whole.
        let wrapped = ForwardProducer {
            id: 77,
            next_seq: i32::MAX - 1,
        };
        let batch = join(&items, Some(&wrapped)).unwrap();
        let seqs: Vec<(i32, i32)> = Batches::new(&batch)
            .map(|b| {
                let (h, _) = b.unwrap();
                (h.base_sequence, h.records_count)
            })
            .collect();
        assert_eq!(seqs, [(i32::MAX - 1, 2), (0, 1)]);
        // Without a producer id: the same records, not idempotent.
        let plain = BatchHeader::parse(&join(&items, None).unwrap()).unwrap();
        assert_eq!((plain.producer_id, plain.records_count), (-1, 3));
    }

    #[test]
    fn a_forwarder_moves_on_when_stored_and_starts_afresh_when_unsure() {
        let p = ForwardProducer::new(5);
        let p = p.after(true, 3).unwrap();
        assert_eq!(p, ForwardProducer { id: 5, next_seq: 3 });
        let wrapped = ForwardProducer {
            id: 5,
            next_seq: i32::MAX,
        };
        assert_eq!(wrapped.after(true, 2).unwrap().next_seq, 1);
        assert_eq!(p.after(false, 3), None, "an unknown outcome drops the id");
    }
}
