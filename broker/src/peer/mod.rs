//! Broker-to-broker gRPC: the `strata.peer.v1.Peer` service (`proto/peer.proto`), served beside
//! the Admin service on every broker's gRPC listener (`meta.listen`, advertised in metadata as
//! `BrokerInfo::peer_addr`). MQTT uses it to reach partitions another broker leads:
//!
//! - `Append` — a forwarded MQTT publish (one or more record batches) goes through the same
//!   path as a Kafka Produce with acks=all (`kafka::handlers::validate`, then the sequencer or
//!   the direct writer) and is answered once durable; NOT_LEADER_OR_FOLLOWER (6) when this
//!   broker does not lead the partition.
//! - `Tail` — a server stream following a led partition from an offset, pushed on the same
//!   high-watermark notification the local MQTT tailer waits on (no timer). It ends with
//!   FAILED_PRECONDITION `NOT_LEADER_OR_FOLLOWER` when the lease moves away (or the log is
//!   replaced). At most [`TAIL_QUEUE_MAX`] events of at most [`TAIL_READ_BYTES`] wait for a slow
//!   follower; then the stream task waits (HTTP/2 flow control pushes back further).
//! - `Read` — whole batches from an offset, from the tail or object storage (`log::reader`),
//!   for persistent sessions' cursors.
//!
//! `client` is the calling side: one lazily connected channel per peer address, the leader
//! lookup and the retry policy.
//!
//! *Boundary:* the service answers UNAVAILABLE until the node exists (it is served from the
//! start of the gRPC listener, like the Admin service).

pub mod client;

use crate::log::partition::{PartitionLog, TailRead};
use crate::log::reader::ReadError;
use crate::node::Node;
use bytes::{Bytes, BytesMut};
use std::sync::{Arc, OnceLock};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// The code tonic-prost-build generates from `proto/peer.proto`.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("strata.peer.v1");
}

use pb::peer_server::{Peer, PeerServer};

/// Kafka's NOT_LEADER_OR_FOLLOWER.
pub const NOT_LEADER: i32 = 6;
/// Kafka's UNKNOWN_TOPIC_OR_PARTITION.
pub const UNKNOWN_PARTITION: i32 = 3;
/// Kafka's OFFSET_OUT_OF_RANGE.
pub const OUT_OF_RANGE: i32 = 1;
/// Kafka's KAFKA_STORAGE_ERROR.
pub const STORAGE_ERROR: i32 = 56;
/// The gRPC message of a Tail stream ended because leadership moved.
pub const NOT_LEADER_MESSAGE: &str = "NOT_LEADER_OR_FOLLOWER";
/// Events queued per Tail stream.
pub const TAIL_QUEUE_MAX: usize = 8;
/// Bytes read per Tail event.
pub const TAIL_READ_BYTES: usize = 1024 * 1024;
/// Largest `max_bytes` a Read serves.
pub const READ_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The `Peer` gRPC service; answers UNAVAILABLE until the node is set.
#[derive(Clone)]
pub struct PeerService {
    node: Arc<OnceLock<Arc<Node>>>,
}

impl PeerService {
    /// A service answering with the node once `node` is set (shared with the Admin service).
    pub fn new(node: Arc<OnceLock<Arc<Node>>>) -> PeerServer<PeerService> {
        PeerServer::new(PeerService { node })
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    fn node(&self) -> Result<Arc<Node>, Status> {
        self.node
            .get()
            .cloned()
            .ok_or_else(|| Status::unavailable("the node is starting"))
    }
}

/// The partition's log, if this broker knows it; `Err(code)` otherwise.
fn partition(node: &Node, topic: &str, partition: u32) -> Result<Arc<PartitionLog>, i32> {
    let logs = node.registry.topic(topic).ok_or(UNKNOWN_PARTITION)?;
    logs.partitions
        .get(partition as usize)
        .cloned()
        .ok_or(UNKNOWN_PARTITION)
}

/// The led partition's log, or the Kafka error code to answer.
fn led(node: &Node, topic: &str, p: u32) -> Result<Arc<PartitionLog>, i32> {
    let log = partition(node, topic, p)?;
    if !node.registry.leads(&log.key) {
        return Err(NOT_LEADER);
    }
    Ok(log)
}

/// Whether `log` is still the live log of a partition this broker leads.
fn still_leads(node: &Node, log: &Arc<PartitionLog>) -> bool {
    node.registry.leads(&log.key)
        && node
            .registry
            .partition(&log.key)
            .is_some_and(|l| Arc::ptr_eq(&l, log))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendReply>, Status> {
        let node = self.node()?;
        let req = request.into_inner();
        let reply = |error_code: i32, base_offset: i64, message: String| {
            Ok(Response::new(pb::AppendReply {
                error_code,
                base_offset,
                message,
            }))
        };
        let log = match led(&node, &req.topic, req.partition) {
            Ok(log) => log,
            Err(code) => return reply(code, -1, format!("{}/{}", req.topic, req.partition)),
        };
        let item = match crate::kafka::handlers::validate(&node, log, req.records) {
            Ok(item) => item,
            Err((code, message)) => return reply(code.into(), -1, message),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if node
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
            || crate::log::direct::route(&node, vec![item], tx)
                .await
                .is_err()
        {
            return reply(NOT_LEADER, -1, "the broker is shutting down".into());
        }
        match rx.await.ok().and_then(|r| r.into_iter().next()) {
            Some(Ok(offset)) => reply(0, offset, String::new()),
            Some(Err(e)) => reply(crate::kafka::errors::append(e).into(), -1, e.to_string()),
            None => reply(NOT_LEADER, -1, "the broker is shutting down".into()),
        }
    }

    type TailStream = ReceiverStream<Result<pb::TailEvent, Status>>;

    async fn tail(
        &self,
        request: Request<pb::TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        let node = self.node()?;
        let req = request.into_inner();
        let log = match led(&node, &req.topic, req.partition) {
            Ok(log) => log,
            Err(NOT_LEADER) => return Err(Status::failed_precondition(NOT_LEADER_MESSAGE)),
            Err(_) => {
                return Err(Status::not_found(format!(
                    "unknown partition {}/{}",
                    req.topic, req.partition
                )))
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(TAIL_QUEUE_MAX);
        let from = if req.from_offset < 0 {
            log.high_watermark()
        } else {
            req.from_offset
        };
        tokio::spawn(follow(node, log, from, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadReply>, Status> {
        let node = self.node()?;
        let req = request.into_inner();
        let fail = |error_code: i32, message: String| {
            Ok(Response::new(pb::ReadReply {
                error_code,
                message,
                ..Default::default()
            }))
        };
        let log = match led(&node, &req.topic, req.partition) {
            Ok(log) => log,
            Err(code) => return fail(code, format!("{}/{}", req.topic, req.partition)),
        };
        let offsets = log.offsets();
        let mut reply = pb::ReadReply {
            high_watermark: offsets.high_watermark,
            log_start_offset: offsets.log_start_offset,
            ..Default::default()
        };
        if req.offset < 0 || req.offset >= offsets.high_watermark {
            return Ok(Response::new(reply));
        }
        let max = (req.max_bytes as usize).clamp(1, READ_BYTES_MAX);
        match node.reader.read(&log, req.offset, max).await {
            Ok(chunks) => {
                reply.chunks = chunks;
                Ok(Response::new(reply))
            }
            Err(ReadError::OutOfRange { .. }) => fail(
                OUT_OF_RANGE,
                format!(
                    "offset {} is outside {}..{}",
                    req.offset, offsets.log_start_offset, offsets.high_watermark
                ),
            ),
            Err(err) => fail(STORAGE_ERROR, err.to_string()),
        }
    }

    async fn take_session(
        &self,
        request: Request<pb::TakeSessionRequest>,
    ) -> Result<Response<pb::TakeSessionReply>, Status> {
        let node = self.node()?;
        crate::mqtt::cluster_sessions::serve_take(&node, request.into_inner())
            .await
            .map(Response::new)
    }
}

/// Streams `log` from `next` into `tx` until the follower goes away or leadership moves.
async fn follow(
    node: Arc<Node>,
    log: Arc<PartitionLog>,
    mut next: i64,
    tx: tokio::sync::mpsc::Sender<Result<pb::TailEvent, Status>>,
) {
    let mut hw = log.subscribe();
    let mut meta = node.meta.subscribe();
    // The first event tells the follower where it stands.
    let first = pb::TailEvent {
        base_offset: next,
        records: Bytes::new(),
        high_watermark: log.high_watermark(),
        next_offset: next,
    };
    if tx.send(Ok(first)).await.is_err() {
        return;
    }
    loop {
        if !still_leads(&node, &log) {
            let _ = tx
                .send(Err(Status::failed_precondition(NOT_LEADER_MESSAGE)))
                .await;
            return;
        }
        hw.borrow_and_update();
        loop {
            let base = next;
            let chunks = match log.read(next, TAIL_READ_BYTES) {
                TailRead::Data(chunks) => chunks,
                TailRead::AtEnd => break,
                // Behind the tail (uploaded and evicted): read it from object storage.
                TailRead::Older => match node.reader.read(&log, next, TAIL_READ_BYTES).await {
                    Ok(chunks) => chunks,
                    Err(err) => {
                        let _ = tx.send(Err(Status::unavailable(err.to_string()))).await;
                        return;
                    }
                },
                TailRead::OutOfRange => {
                    // Below the log start (retention): continue where the log starts.
                    let offsets = log.offsets();
                    next = if next < offsets.log_start_offset {
                        offsets.log_start_offset
                    } else {
                        offsets.high_watermark
                    };
                    let skip = pb::TailEvent {
                        base_offset: next,
                        records: Bytes::new(),
                        high_watermark: offsets.high_watermark,
                        next_offset: next,
                    };
                    if tx.send(Ok(skip)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let Some(end) = batches_end(&chunks) else {
                break;
            };
            if end <= next {
                break;
            }
            next = end;
            let records = if chunks.len() == 1 {
                chunks.into_iter().next().unwrap_or_default()
            } else {
                let mut all = BytesMut::new();
                for c in &chunks {
                    all.extend_from_slice(c);
                }
                all.freeze()
            };
            let event = pb::TailEvent {
                base_offset: base,
                records,
                high_watermark: log.high_watermark(),
                next_offset: next,
            };
            // Waits while the follower's queue is full: the bound on a slow follower.
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = hw.changed() => if changed.is_err() {
                let _ = tx.send(Err(Status::failed_precondition(NOT_LEADER_MESSAGE))).await;
                return;
            },
            changed = meta.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

/// The offset after the last whole batch in `chunks`, if there is one.
pub fn batches_end(chunks: &[Bytes]) -> Option<i64> {
    let mut end = None;
    for c in chunks {
        for (header, _) in strata_types::batch::Batches::new(c).map_while(Result::ok) {
            end = Some(header.base_offset + header.offset_count());
        }
    }
    end
}
