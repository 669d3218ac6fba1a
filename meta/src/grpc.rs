//! The meta node's gRPC API (`proto/meta.proto`): wire conversions, limits and the server.
//!
//! This module is the one place where gRPC messages meet openraft's and this crate's types
//! (STYLE.md §5): every request and reply is converted here, for the server ([`MetaGrpc`]) and
//! for the clients in [`crate::network`]. The proto file documents the envelope: the serde_json
//! form of openraft's types (and of [`Command`]/[`CommandResult`]) inside messages that carry a
//! `format` number, [`WIRE_FORMAT`]; a receiver refuses other formats with
//! `FAILED_PRECONDITION`.
//!
//! Two services share one listener (the admin/control gRPC port, 1228 by default), and the
//! caller may add its own: `Raft` (AppendEntries, Vote, InstallSnapshot: openraft's RPCs,
//! dispatched into the local [`openraft::Raft`]) and `Meta` (Write, ReadIndex, AddLearner,
//! ChangeMembership: the calls that must run on the leader, executed by the crate's `leader` module;
//! ReadState: a linearizable copy of the whole state for [`crate::RemoteMeta`]).
//!
//! # ReadState
//!
//! The leader answers the serde_json of [`MetaState`] (format [`WIRE_FORMAT`]), compressed as one
//! LZ4 block (`lz4_flex`'s block format) behind the JSON's length as a little-endian u32
//! (`STATE_ENCODING_LZ4_JSON`); a reader also accepts plain JSON (`STATE_ENCODING_JSON`). The
//! JSON may take at most [`STATE_JSON_BYTES_MAX`] and its encoding must fit one message
//! ([`STATE_BYTES_MAX`]); a larger state is refused with a `Failed` that says so: remote readers
//! suit small-to-medium metadata. The leader keeps the encoding of its latest applied index, so
//! many readers asking after one change cost one serialization.

use crate::error::MetaError;
use crate::leader::{self, Attempt, LeaderHint, MembershipView, Written};
use crate::raft::{MetaRaft, NodeId, TypeConfig};
use crate::state::{Command, CommandResult, MetaState};
use crate::store::{AppliedEntry, WeakLogReader};
use openraft::raft::InstallSnapshotRequest;
use openraft::{BasicNode, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Code generated from `proto/meta.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("strata.meta.v1");
}

/// Version of the JSON envelope of every message that carries JSON.
pub const WIRE_FORMAT: u32 = 1;
/// Largest gRPC message a meta node sends or accepts, either way.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest command (its JSON form) the meta log takes: one entry must fit in one AppendEntries
/// message with room for the envelope, or it could never be replicated.
pub const COMMAND_BYTES_MAX: usize = MESSAGE_BYTES_MAX - 64 * 1024;
/// Snapshot bytes per InstallSnapshot chunk.
pub const SNAPSHOT_CHUNK_BYTES_MAX: u64 = 1024 * 1024;
/// Requests served at once on one connection; more wait (a peer needs a handful: replication,
/// votes, forwarded calls).
pub const RPC_INFLIGHT_PER_CONNECTION_MAX: usize = 64;
/// Peer connections kept (one per meta node address); the cache starts over when full.
pub const PEER_CONNECTIONS_MAX: usize = 64;
/// TCP connect timeout to a peer; a failed connect is reported as unreachable.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Pause before openraft tries an unreachable peer again.
pub const UNREACHABLE_BACKOFF_MS: u64 = 200;
/// HTTP/2 keepalive: a peer connection that does not answer a ping within the timeout is
/// dropped (and re-dialled on the next call), so a vanished machine is noticed.
pub const KEEPALIVE_INTERVAL_MS: u64 = 5_000;
pub const KEEPALIVE_TIMEOUT_MS: u64 = 5_000;
/// Largest encoded state (`State.state_json`) a ReadState reply carries: one message with room
/// for the envelope.
pub const STATE_BYTES_MAX: usize = MESSAGE_BYTES_MAX - 64 * 1024;
/// Largest JSON of the whole state a leader sends or a reader decompresses (it bounds the
/// reader's memory; the length prefix of a compressed state comes from the network).
pub const STATE_JSON_BYTES_MAX: usize = 512 * 1024 * 1024;

/// A message that is not what this build reads. It never leaves the crate: the server answers
/// it as a gRPC status, a client turns it into a [`MetaError`] or an openraft error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("{what} has wire format {found}; this build reads format {WIRE_FORMAT}")]
    Format { what: &'static str, found: u32 },
    #[error("{what} is not valid: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("{what} cannot be encoded: {reason}")]
    Encode { what: &'static str, reason: String },
}

impl From<WireError> for Status {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Format { .. } => Status::failed_precondition(e.to_string()),
            WireError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            WireError::Encode { .. } => Status::internal(e.to_string()),
        }
    }
}

pub(crate) fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, WireError> {
    serde_json::to_vec(value).map_err(|e| WireError::Encode {
        what,
        reason: e.to_string(),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(
    format: u32,
    json: &[u8],
    what: &'static str,
) -> Result<T, WireError> {
    if format != WIRE_FORMAT {
        return Err(WireError::Format {
            what,
            found: format,
        });
    }
    serde_json::from_slice(json).map_err(|e| WireError::Invalid {
        what,
        reason: e.to_string(),
    })
}

pub(crate) fn raft_message<T: Serialize>(
    value: &T,
    what: &'static str,
) -> Result<pb::RaftMessage, WireError> {
    Ok(pb::RaftMessage {
        format: WIRE_FORMAT,
        json: encode(value, what)?,
    })
}

/// `InstallSnapshotRequest` without its data: the JSON half of a `SnapshotChunk`.
#[derive(Serialize, Deserialize)]
struct SnapshotChunkHeader {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, BasicNode>,
    offset: u64,
    done: bool,
}

pub(crate) fn snapshot_chunk(
    req: InstallSnapshotRequest<TypeConfig>,
) -> Result<pb::SnapshotChunk, WireError> {
    let header = SnapshotChunkHeader {
        vote: req.vote,
        meta: req.meta,
        offset: req.offset,
        done: req.done,
    };
    Ok(pb::SnapshotChunk {
        format: WIRE_FORMAT,
        json: encode(&header, "snapshot chunk header")?,
        data: req.data,
    })
}

fn install_snapshot_request(
    chunk: pb::SnapshotChunk,
) -> Result<InstallSnapshotRequest<TypeConfig>, WireError> {
    let header: SnapshotChunkHeader = decode(chunk.format, &chunk.json, "snapshot chunk header")?;
    Ok(InstallSnapshotRequest {
        vote: header.vote,
        meta: header.meta,
        offset: header.offset,
        data: chunk.data,
        done: header.done,
    })
}

/// Encodes a command for the log's wire, refusing one that could never be replicated.
pub(crate) fn write_request(cmd: &Command) -> Result<pb::WriteRequest, MetaError> {
    let json = encode(cmd, "command").map_err(|e| MetaError::Raft {
        reason: e.to_string(),
    })?;
    if json.len() > COMMAND_BYTES_MAX {
        return Err(MetaError::CommandTooLarge {
            bytes: json.len(),
            max: COMMAND_BYTES_MAX,
        });
    }
    Ok(pb::WriteRequest {
        format: WIRE_FORMAT,
        command_json: json,
    })
}

fn not_leader(hint: LeaderHint) -> pb::NotLeader {
    pb::NotLeader {
        leader_id: hint.id,
        leader_addr: hint.addr,
    }
}

fn leader_hint(n: pb::NotLeader) -> LeaderHint {
    LeaderHint {
        id: n.leader_id,
        addr: n.leader_addr.filter(|a| !a.is_empty()),
    }
}

/// A definite failure on the leader, as the wire carries it. Failures that leave the outcome
/// open (the leader is stopping) travel as `UNAVAILABLE` instead, which the caller reads as
/// [`MetaError::ForwardFailed`].
fn failed(e: MetaError) -> Result<pb::Failed, Status> {
    let retryable = e.is_retryable();
    let (kind, waited_ms) = match &e {
        MetaError::ShutDown | MetaError::Raft { .. } => {
            return Err(Status::unavailable(e.to_string()))
        }
        MetaError::Membership { .. } => (pb::FailureKind::Membership, 0),
        MetaError::LearnerLagging { waited_ms, .. } => {
            (pb::FailureKind::LearnerLagging, *waited_ms)
        }
        _ => (pb::FailureKind::Other, 0),
    };
    Ok(pb::Failed {
        kind: kind as i32,
        reason: e.to_string(),
        retryable,
        waited_ms,
    })
}

/// The error a [`pb::Failed`] from `leader` stands for; `learner` names the node of an
/// AddLearner call.
pub(crate) fn failure(f: pb::Failed, leader: NodeId, learner: Option<NodeId>) -> MetaError {
    match (pb::FailureKind::try_from(f.kind), learner) {
        (Ok(pb::FailureKind::Membership), _) => MetaError::Membership {
            reason: f.reason,
            retryable: f.retryable,
        },
        (Ok(pb::FailureKind::LearnerLagging), Some(node_id)) => MetaError::LearnerLagging {
            node_id,
            waited_ms: f.waited_ms,
        },
        _ => MetaError::Remote {
            node_id: leader,
            reason: f.reason,
            retryable: f.retryable,
        },
    }
}

fn missing_outcome(leader: NodeId) -> MetaError {
    MetaError::Remote {
        node_id: leader,
        reason: "the reply carries no outcome".into(),
        retryable: false,
    }
}

fn membership(view: MembershipView) -> pb::Membership {
    let members = |m: BTreeMap<NodeId, String>| {
        m.into_iter()
            .map(|(node_id, addr)| pb::Member { node_id, addr })
            .collect()
    };
    pb::Membership {
        log_index: view.log_index,
        voters: members(view.voters),
        learners: members(view.learners),
        joint: view.joint,
    }
}

fn membership_view(m: pb::Membership) -> MembershipView {
    let members = |m: Vec<pb::Member>| m.into_iter().map(|m| (m.node_id, m.addr)).collect();
    MembershipView {
        log_index: m.log_index,
        voters: members(m.voters),
        learners: members(m.learners),
        joint: m.joint,
    }
}

pub(crate) fn write_outcome(
    reply: pb::WriteReply,
    leader: NodeId,
) -> Result<Attempt<Written>, MetaError> {
    use pb::write_reply::Outcome;
    match reply.outcome {
        Some(Outcome::Applied(a)) => {
            let result: CommandResult = decode(a.format, &a.result_json, "command result")
                .map_err(|e| MetaError::Remote {
                    node_id: leader,
                    reason: e.to_string(),
                    retryable: false,
                })?;
            Ok(Attempt::Done(Written {
                log_index: a.log_index,
                result,
            }))
        }
        Some(Outcome::NotLeader(n)) => Ok(Attempt::NotLeader(leader_hint(n))),
        Some(Outcome::Failed(f)) => Err(failure(f, leader, None)),
        None => Err(missing_outcome(leader)),
    }
}

pub(crate) fn read_index_outcome(
    reply: pb::ReadIndexReply,
    leader: NodeId,
) -> Result<Attempt<u64>, MetaError> {
    use pb::read_index_reply::Outcome;
    match reply.outcome {
        Some(Outcome::ReadIndex(index)) => Ok(Attempt::Done(index)),
        Some(Outcome::NotLeader(n)) => Ok(Attempt::NotLeader(leader_hint(n))),
        Some(Outcome::Failed(f)) => Err(failure(f, leader, None)),
        None => Err(missing_outcome(leader)),
    }
}

/// A copy of the applied state as a ReadState reply carries it.
#[derive(Debug)]
pub(crate) enum StateRead {
    /// The caller's `known_applied` is still the leader's applied index.
    Unchanged {
        applied_index: u64,
    },
    Changed(Arc<MetaState>),
}

/// Why a reply to a [`crate::RemoteMeta`] call carries no outcome: the call may pass later
/// (`retryable`), on this or another node, or never.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub reason: String,
    pub retryable: bool,
}

/// Reads a Write reply for a caller outside the group (which knows addresses, not node ids).
#[cfg(test)]
pub(crate) fn remote_write_outcome(
    reply: pb::WriteReply,
) -> Result<Attempt<CommandResult>, Refusal> {
    Ok(match remote_write_outcome_indexed(reply)? {
        Attempt::Done((result, _)) => Attempt::Done(result),
        Attempt::NotLeader(hint) => Attempt::NotLeader(hint),
    })
}

/// [`remote_write_outcome`] with the log index the command was applied at.
pub(crate) fn remote_write_outcome_indexed(
    reply: pb::WriteReply,
) -> Result<Attempt<(CommandResult, u64)>, Refusal> {
    use pb::write_reply::Outcome;
    match reply.outcome {
        Some(Outcome::Applied(a)) => decode(a.format, &a.result_json, "command result")
            .map(|result| Attempt::Done((result, a.log_index)))
            .map_err(|e| Refusal {
                reason: format!(
                    "the command was applied at log index {}, but its result is unreadable: {e}",
                    a.log_index
                ),
                retryable: false,
            }),
        Some(Outcome::NotLeader(n)) => Ok(Attempt::NotLeader(leader_hint(n))),
        Some(Outcome::Failed(f)) => Err(Refusal {
            reason: f.reason,
            retryable: f.retryable,
        }),
        None => Err(Refusal {
            reason: "the reply carries no outcome".into(),
            retryable: false,
        }),
    }
}

/// Encodes `state` for a `State` message, or refuses a state too large for one message.
fn encode_state(state: &MetaState) -> Result<Vec<u8>, pb::Failed> {
    encode_state_within(state, STATE_JSON_BYTES_MAX, STATE_BYTES_MAX)
}

fn encode_state_within(
    state: &MetaState,
    json_bytes_max: usize,
    packed_bytes_max: usize,
) -> Result<Vec<u8>, pb::Failed> {
    let too_large = |what: &str, bytes: usize, max: usize| pb::Failed {
        kind: pb::FailureKind::Other as i32,
        reason: format!(
            "the metadata state is {bytes} bytes {what}, over the {max}-byte limit of a \
             ReadState reply: remote readers suit small-to-medium metadata (compact the \
             index of a long history)"
        ),
        retryable: false,
        waited_ms: 0,
    };
    let json = encode(state, "meta state").map_err(|e| pb::Failed {
        kind: pb::FailureKind::Other as i32,
        reason: e.to_string(),
        retryable: false,
        waited_ms: 0,
    })?;
    if json.len() > json_bytes_max {
        return Err(too_large("as JSON", json.len(), json_bytes_max));
    }
    let packed = lz4_flex::block::compress_prepend_size(&json);
    if packed.len() > packed_bytes_max {
        return Err(too_large("compressed", packed.len(), packed_bytes_max));
    }
    Ok(packed)
}

/// The JSON inside a `State` message, checked against the limits before it is unpacked.
fn state_json(state: &pb::State) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    match pb::StateEncoding::try_from(state.encoding) {
        Ok(pb::StateEncoding::Json) => Ok(std::borrow::Cow::Borrowed(&state.state_json)),
        Ok(pb::StateEncoding::Lz4Json) => {
            let (len, _) = lz4_flex::block::uncompressed_size(&state.state_json)
                .map_err(|e| format!("the compressed state is not valid: {e}"))?;
            if len > STATE_JSON_BYTES_MAX {
                return Err(format!(
                    "the state is {len} bytes as JSON; this reader takes at most \
                     {STATE_JSON_BYTES_MAX}"
                ));
            }
            lz4_flex::block::decompress_size_prepended(&state.state_json)
                .map(std::borrow::Cow::Owned)
                .map_err(|e| format!("the compressed state is not valid: {e}"))
        }
        Err(_) => Err(format!(
            "the state has encoding {}, which this build does not read",
            state.encoding
        )),
    }
}

/// Reads a ReadState reply. `known_applied` is what the request said the caller holds. A
/// full state is decoded here, so call this off the async threads for large states.
pub(crate) fn read_state_outcome(
    reply: pb::ReadStateReply,
    known_applied: u64,
) -> Result<Attempt<StateRead>, Refusal> {
    use pb::read_state_reply::Outcome;
    let refused = |reason: String| Refusal {
        reason,
        retryable: false,
    };
    match reply.outcome {
        Some(Outcome::State(s)) if s.unchanged => {
            if known_applied == 0 || s.applied_index != known_applied {
                return Err(refused(format!(
                    "the reply says `unchanged` at applied index {}, but the request held {}",
                    s.applied_index, known_applied
                )));
            }
            Ok(Attempt::Done(StateRead::Unchanged {
                applied_index: s.applied_index,
            }))
        }
        Some(Outcome::State(s)) => {
            let json = state_json(&s).map_err(refused)?;
            let state: MetaState =
                decode(s.format, &json, "meta state").map_err(|e| refused(e.to_string()))?;
            state
                .check_invariants()
                .map_err(|e| refused(format!("the state breaks an invariant: {e}")))?;
            if state.last_applied() != s.applied_index {
                return Err(refused(format!(
                    "the state was applied to index {}, but the reply says {}",
                    state.last_applied(),
                    s.applied_index
                )));
            }
            Ok(Attempt::Done(StateRead::Changed(Arc::new(state))))
        }
        Some(Outcome::NotLeader(n)) => Ok(Attempt::NotLeader(leader_hint(n))),
        Some(Outcome::Failed(f)) => Err(Refusal {
            reason: f.reason,
            retryable: f.retryable,
        }),
        None => Err(refused("the reply carries no outcome".into())),
    }
}

pub(crate) fn membership_outcome(
    reply: pb::MembershipReply,
    leader: NodeId,
    learner: Option<NodeId>,
) -> Result<Attempt<MembershipView>, MetaError> {
    use pb::membership_reply::Outcome;
    match reply.outcome {
        Some(Outcome::Membership(m)) => Ok(Attempt::Done(membership_view(m))),
        Some(Outcome::NotLeader(n)) => Ok(Attempt::NotLeader(leader_hint(n))),
        Some(Outcome::Failed(f)) => Err(failure(f, leader, learner)),
        None => Err(missing_outcome(leader)),
    }
}

fn unchanged_state(applied_index: u64) -> pb::State {
    pb::State {
        format: WIRE_FORMAT,
        applied_index,
        unchanged: true,
        state_json: Vec::new(),
        encoding: pb::StateEncoding::Json as i32,
    }
}

fn full_state(applied_index: u64, packed: Vec<u8>) -> pb::State {
    pb::State {
        format: WIRE_FORMAT,
        applied_index,
        unchanged: false,
        state_json: packed,
        encoding: pb::StateEncoding::Lz4Json as i32,
    }
}

/// Follow events queued for one slow follower before the feed's own buffer takes over.
pub const FOLLOW_EVENTS_QUEUED_MAX: usize = 256;

/// One Follow entry event: `command` as the state machine applied it, `None` for an entry that
/// changes no state. A command that cannot be encoded ends the stream with an error.
fn follow_entry(index: u64, command: Option<&Command>) -> Result<pb::FollowEvent, Status> {
    let command_json = match command {
        Some(cmd) => encode(cmd, "command")?,
        None => Vec::new(),
    };
    Ok(pb::FollowEvent {
        event: Some(pb::follow_event::Event::Entry(pb::FollowEntry {
            format: WIRE_FORMAT,
            index,
            command_json,
        })),
    })
}

/// A Follow event as a [`crate::MetaMirror`] reads it.
#[derive(Debug)]
pub(crate) enum Followed {
    /// The entry at `index`; `None` for one that changes no state.
    Entry {
        index: u64,
        command: Option<Command>,
    },
    Resnapshot {
        reason: String,
    },
}

pub(crate) fn followed(event: pb::FollowEvent) -> Result<Followed, WireError> {
    match event.event {
        Some(pb::follow_event::Event::Entry(e)) => {
            let command = if e.command_json.is_empty() {
                None
            } else {
                Some(decode(e.format, &e.command_json, "command")?)
            };
            Ok(Followed::Entry {
                index: e.index,
                command,
            })
        }
        Some(pb::follow_event::Event::Resnapshot(r)) => {
            Ok(Followed::Resnapshot { reason: r.reason })
        }
        None => Ok(Followed::Resnapshot {
            reason: "an event without content".into(),
        }),
    }
}

/// Reads a ReadIndex reply for a caller outside the group.
pub(crate) fn remote_read_index_outcome(
    reply: pb::ReadIndexReply,
) -> Result<Attempt<u64>, Refusal> {
    use pb::read_index_reply::Outcome;
    match reply.outcome {
        Some(Outcome::ReadIndex(index)) => Ok(Attempt::Done(index)),
        Some(Outcome::NotLeader(n)) => Ok(Attempt::NotLeader(leader_hint(n))),
        Some(Outcome::Failed(f)) => Err(Refusal {
            reason: f.reason,
            retryable: f.retryable,
        }),
        None => Err(Refusal {
            reason: "the reply carries no outcome".into(),
            retryable: false,
        }),
    }
}

/// The gRPC server of one meta node: both services, dispatching into the local raft.
#[derive(Clone)]
pub struct MetaGrpc {
    raft: MetaRaft,
    learner_wait: Duration,
    /// The applied state and its applied index, for ReadState.
    state: Arc<parking_lot::RwLock<MetaState>>,
    applied: watch::Receiver<u64>,
    /// The encoded state of the latest ReadState answer, by applied index.
    encoded: Arc<parking_lot::Mutex<Option<EncodedState>>>,
    /// For Follow: the raft log (entries applied before the call) and the applied-entry feed.
    log: WeakLogReader,
    feed: broadcast::Sender<AppliedEntry>,
    /// Set when the server stops: Follow streams end (they would hold a graceful stop open).
    closing: Arc<watch::Sender<bool>>,
}

/// An encoded state (`State.state_json`) and the applied index it is of.
type EncodedState = (u64, Arc<Vec<u8>>);

impl std::fmt::Debug for MetaGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaGrpc").finish_non_exhaustive()
    }
}

impl MetaGrpc {
    pub(crate) fn new(
        raft: MetaRaft,
        learner_wait: Duration,
        state: Arc<parking_lot::RwLock<MetaState>>,
        applied: watch::Receiver<u64>,
        log: WeakLogReader,
        feed: broadcast::Sender<AppliedEntry>,
    ) -> Self {
        Self {
            raft,
            learner_wait,
            state,
            applied,
            encoded: Default::default(),
            log,
            feed,
            closing: Arc::new(watch::channel(false).0),
        }
    }

    /// The Follow stream: what this member applied after `from_applied` (from its log), then
    /// the live applied-entry feed, until the caller goes away or the member cannot continue.
    fn follow_stream(&self, from_applied: u64) -> mpsc::Receiver<Result<pb::FollowEvent, Status>> {
        let (tx, rx) = mpsc::channel(FOLLOW_EVENTS_QUEUED_MAX);
        // Subscribe before reading the applied index: the feed is sent under the state's write
        // lock, so it carries every entry after `applied` (and maybe a few at or below it).
        let mut feed = self.feed.subscribe();
        let applied = self.state.read().last_applied();
        let log = self.log.clone();
        let mut closing = self.closing.subscribe();
        tokio::spawn(async move {
            let resnapshot = |reason: String| {
                Ok(pb::FollowEvent {
                    event: Some(pb::follow_event::Event::Resnapshot(pb::Resnapshot {
                        reason,
                    })),
                })
            };
            let mut sent = from_applied;
            if from_applied < applied {
                let range = from_applied + 1..=applied;
                let read = tokio::task::spawn_blocking(move || log.read_entries(range)).await;
                let entries = match read {
                    Ok(Ok(entries)) => entries,
                    Ok(Err(e)) => {
                        let _ = tx
                            .send(resnapshot(format!("the log cannot be read: {e}")))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx
                            .send(resnapshot(format!("the log read failed: {e}")))
                            .await;
                        return;
                    }
                };
                for entry in entries {
                    let index = entry.log_id.index;
                    if index != sent + 1 {
                        let reason = format!(
                            "the log starts at {index}, not at {} (purged behind a snapshot)",
                            sent + 1
                        );
                        let _ = tx.send(resnapshot(reason)).await;
                        return;
                    }
                    let command = match &entry.payload {
                        openraft::EntryPayload::Normal(cmd) => Some(cmd),
                        _ => None,
                    };
                    if tx.send(follow_entry(index, command)).await.is_err() {
                        return;
                    }
                    sent = index;
                }
                if sent < applied {
                    let reason = format!("the log ends at {sent}, before the applied {applied}");
                    let _ = tx.send(resnapshot(reason)).await;
                    return;
                }
            }
            loop {
                let entry = tokio::select! {
                    entry = feed.recv() => entry,
                    // The caller went away while nothing was applied.
                    () = tx.closed() => return,
                    // The server stops: the caller follows another member.
                    _ = closing.wait_for(|&c| c) => return,
                };
                match entry {
                    Ok(entry) if entry.index <= sent => {}
                    Ok(entry) if entry.index == sent + 1 => {
                        if tx
                            .send(follow_entry(entry.index, entry.command.as_deref()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        sent = entry.index;
                    }
                    // A snapshot was installed on this member: its state jumped.
                    Ok(entry) => {
                        let reason =
                            format!("the applied index jumped from {sent} to {}", entry.index);
                        let _ = tx.send(resnapshot(reason)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let reason = format!("the follower fell {n} entries behind the feed");
                        let _ = tx.send(resnapshot(reason)).await;
                        return;
                    }
                    // The member shuts down: the caller follows another one.
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        rx
    }

    /// The ReadState answer once this leader has applied `read_index`.
    async fn state_at(
        &self,
        read_index: u64,
        known_applied: u64,
    ) -> Result<Result<pb::State, pb::Failed>, Status> {
        // `ensure_linearizable` returned after openraft applied the read index; the state
        // behind the lock is updated before openraft counts an entry applied, so this passes at
        // once. It is here so the rule does not rest on that order.
        let mut applied = self.applied.clone();
        applied
            .wait_for(|&a| a >= read_index)
            .await
            .map_err(|_| Status::unavailable("the meta node is shutting down"))?;
        let state = Arc::clone(&self.state);
        let encoded = Arc::clone(&self.encoded);
        // Serializing a large state takes a while: off the async threads, and outside the
        // state's lock (which the state machine needs to apply), from a clone.
        let answer = tokio::task::spawn_blocking(move || {
            let copy = {
                let state = state.read();
                let applied_index = state.last_applied();
                if known_applied != 0 && known_applied == applied_index {
                    return Ok(unchanged_state(applied_index));
                }
                let cached = encoded.lock().clone();
                if let Some((index, bytes)) = cached.filter(|(index, _)| *index == applied_index) {
                    return Ok(full_state(index, bytes.as_ref().clone()));
                }
                state.clone()
            };
            let bytes = encode_state(&copy)?;
            let applied_index = copy.last_applied();
            let mut cache = encoded.lock();
            if cache
                .as_ref()
                .is_none_or(|(index, _)| *index < applied_index)
            {
                *cache = Some((applied_index, Arc::new(bytes.clone())));
            }
            Ok(full_state(applied_index, bytes))
        })
        .await
        .map_err(|e| Status::internal(format!("the state read task failed: {e}")))?;
        Ok(answer)
    }

    /// Both services with the message limits, ready to be added to a tonic server.
    /// The `Meta` service alone (see [`crate::MetaNode::client_routes`]).
    pub(crate) fn meta_routes(self, routes: Routes) -> Routes {
        routes.add_service(
            pb::meta_server::MetaServer::new(self)
                .max_decoding_message_size(MESSAGE_BYTES_MAX)
                .max_encoding_message_size(MESSAGE_BYTES_MAX),
        )
    }

    pub fn routes(self, routes: Routes) -> Routes {
        routes
            .add_service(
                pb::raft_server::RaftServer::new(self.clone())
                    .max_decoding_message_size(MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(MESSAGE_BYTES_MAX),
            )
            .add_service(
                pb::meta_server::MetaServer::new(self)
                    .max_decoding_message_size(MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(MESSAGE_BYTES_MAX),
            )
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for MetaGrpc {
    async fn append_entries(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let msg = request.into_inner();
        let rpc = decode(msg.format, &msg.json, "AppendEntriesRequest")?;
        let result = self.raft.append_entries(rpc).await;
        Ok(Response::new(raft_message(&result, "AppendEntries reply")?))
    }

    async fn vote(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let msg = request.into_inner();
        let rpc = decode(msg.format, &msg.json, "VoteRequest")?;
        let result = self.raft.vote(rpc).await;
        Ok(Response::new(raft_message(&result, "Vote reply")?))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::SnapshotChunk>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc = install_snapshot_request(request.into_inner())?;
        let result = self.raft.install_snapshot(rpc).await;
        Ok(Response::new(raft_message(
            &result,
            "InstallSnapshot reply",
        )?))
    }
}

#[tonic::async_trait]
impl pb::meta_server::Meta for MetaGrpc {
    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        use pb::write_reply::Outcome;
        let req = request.into_inner();
        let cmd: Command = decode(req.format, &req.command_json, "command")?;
        let outcome = match leader::write(&self.raft, cmd).await {
            Ok(Attempt::Done(w)) => Outcome::Applied(pb::Applied {
                format: WIRE_FORMAT,
                log_index: w.log_index,
                result_json: encode(&w.result, "command result")?,
            }),
            Ok(Attempt::NotLeader(hint)) => Outcome::NotLeader(not_leader(hint)),
            Err(e) => Outcome::Failed(failed(e)?),
        };
        Ok(Response::new(pb::WriteReply {
            outcome: Some(outcome),
        }))
    }

    async fn read_index(
        &self,
        _request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexReply>, Status> {
        use pb::read_index_reply::Outcome;
        let outcome = match leader::read_index(&self.raft).await {
            Ok(Attempt::Done(index)) => Outcome::ReadIndex(index),
            Ok(Attempt::NotLeader(hint)) => Outcome::NotLeader(not_leader(hint)),
            Err(e) => Outcome::Failed(failed(e)?),
        };
        Ok(Response::new(pb::ReadIndexReply {
            outcome: Some(outcome),
        }))
    }

    async fn read_state(
        &self,
        request: Request<pb::ReadStateRequest>,
    ) -> Result<Response<pb::ReadStateReply>, Status> {
        use pb::read_state_reply::Outcome;
        let known_applied = request.into_inner().known_applied;
        let outcome = match leader::read_index(&self.raft).await {
            Ok(Attempt::Done(index)) => match self.state_at(index, known_applied).await? {
                Ok(state) => Outcome::State(state),
                Err(too_large) => Outcome::Failed(too_large),
            },
            Ok(Attempt::NotLeader(hint)) => Outcome::NotLeader(not_leader(hint)),
            Err(e) => Outcome::Failed(failed(e)?),
        };
        Ok(Response::new(pb::ReadStateReply {
            outcome: Some(outcome),
        }))
    }

    type FollowStream = ReceiverStream<Result<pb::FollowEvent, Status>>;

    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let req = request.into_inner();
        if req.format != WIRE_FORMAT {
            return Err(Status::failed_precondition(format!(
                "follow format {} is not {WIRE_FORMAT}",
                req.format
            )));
        }
        Ok(Response::new(ReceiverStream::new(
            self.follow_stream(req.from_applied),
        )))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let req = request.into_inner();
        if req.addr.is_empty() {
            return Err(Status::invalid_argument("a learner needs an address"));
        }
        let result =
            leader::add_learner(&self.raft, req.node_id, req.addr, self.learner_wait).await;
        membership_reply(result)
    }

    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let req = request.into_inner();
        if !req.remove_learner_ids.is_empty() {
            let ids: BTreeSet<NodeId> = req.remove_learner_ids.into_iter().collect();
            let wait = std::time::Duration::from_millis(leader::DEMOTION_WAIT_MS);
            return membership_reply(leader::remove_learners(&self.raft, ids, wait).await);
        }
        let voters: BTreeSet<NodeId> = req.voter_ids.into_iter().collect();
        let result = leader::change_membership(&self.raft, voters, req.retain).await;
        membership_reply(result)
    }
}

fn membership_reply(
    result: Result<Attempt<MembershipView>, MetaError>,
) -> Result<Response<pb::MembershipReply>, Status> {
    use pb::membership_reply::Outcome;
    let outcome = match result {
        Ok(Attempt::Done(view)) => Outcome::Membership(membership(view)),
        Ok(Attempt::NotLeader(hint)) => Outcome::NotLeader(not_leader(hint)),
        Err(e) => Outcome::Failed(failed(e)?),
    };
    Ok(Response::new(pb::MembershipReply {
        outcome: Some(outcome),
    }))
}

/// A running gRPC server. Dropping it stops the server gracefully in the background.
pub(crate) struct Server {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    closing: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `grpc` and `routes` on `listener` until stopped.
    pub(crate) fn spawn(
        listener: tokio::net::TcpListener,
        grpc: MetaGrpc,
        routes: Routes,
    ) -> Result<Server, MetaError> {
        let local_addr = listener.local_addr().map_err(|source| MetaError::Listen {
            addr: "the given listener".into(),
            source,
        })?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let closing = grpc.closing.clone();
        let routes = grpc.routes(routes);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .concurrency_limit_per_connection(RPC_INFLIGHT_PER_CONNECTION_MAX)
                .http2_keepalive_interval(Some(Duration::from_millis(KEEPALIVE_INTERVAL_MS)))
                .http2_keepalive_timeout(Some(Duration::from_millis(KEEPALIVE_TIMEOUT_MS)))
                .add_routes(routes)
                // A dropped sender stops the server too.
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(%local_addr, error = %e, "meta gRPC server failed");
            }
        });
        tracing::info!(%local_addr, "meta gRPC server listening");
        Ok(Server {
            local_addr,
            stop: Some(stop),
            closing,
            task,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets calls in flight finish for up to `wait`, then drops the rest.
    /// The listener is closed when this returns.
    pub(crate) async fn stop(mut self, wait: Duration) {
        self.closing.send_replace(true);
        drop(self.stop.take());
        if tokio::time::timeout(wait, &mut self.task).await.is_err() {
            tracing::warn!(
                local_addr = %self.local_addr,
                "meta gRPC server did not drain; aborting it"
            );
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_refuse_other_formats_and_garbage() {
        let cmd = Command::AllocateProducerIds { count: 3 };
        let req = write_request(&cmd).unwrap();
        let back: Command = decode(req.format, &req.command_json, "command").unwrap();
        assert_eq!(back, cmd);
        assert!(matches!(
            decode::<Command>(2, &req.command_json, "command"),
            Err(WireError::Format { found: 2, .. })
        ));
        assert!(matches!(
            decode::<Command>(WIRE_FORMAT, b"{", "command"),
            Err(WireError::Invalid { .. })
        ));
        let status: Status = WireError::Format {
            what: "command",
            found: 2,
        }
        .into();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    }

    fn state_reply(state: pb::State) -> pb::ReadStateReply {
        pb::ReadStateReply {
            outcome: Some(pb::read_state_reply::Outcome::State(state)),
        }
    }

    fn a_state() -> MetaState {
        let mut state = MetaState::default();
        let topic = strata_types::TopicName::new("remote").unwrap();
        let cmd = Command::CreateTopic {
            name: topic,
            id: strata_types::TopicId(uuid::Uuid::from_u128(7)),
            partitions: 4,
            configs: Default::default(),
            created_ms: 1,
        };
        assert!(matches!(state.apply(&cmd), CommandResult::TopicCreated(_)));
        state.set_last_applied(9);
        state
    }

    #[test]
    fn states_round_trip_compressed_and_bad_ones_are_refused() {
        let state = a_state();
        let packed = encode_state(&state).unwrap();
        let json = serde_json::to_vec(&state).unwrap();
        assert!(
            packed.len() < json.len(),
            "{} >= {}",
            packed.len(),
            json.len()
        );

        // A full state, compressed or plain.
        for (bytes, encoding) in [
            (packed.clone(), pb::StateEncoding::Lz4Json),
            (json.clone(), pb::StateEncoding::Json),
        ] {
            let reply = state_reply(pb::State {
                encoding: encoding as i32,
                ..full_state(9, bytes)
            });
            match read_state_outcome(reply, 0) {
                Ok(Attempt::Done(StateRead::Changed(back))) => {
                    assert_eq!(back.last_applied(), 9);
                    assert_eq!(serde_json::to_vec(&*back).unwrap(), json);
                }
                other => panic!("{other:?}"),
            }
        }
        // Unchanged, only for the index the caller holds.
        assert!(matches!(
            read_state_outcome(state_reply(unchanged_state(9)), 9),
            Ok(Attempt::Done(StateRead::Unchanged { applied_index: 9 }))
        ));

        let check = |reply: pb::ReadStateReply, known: u64, expected: &str| match read_state_outcome(
            reply, known,
        ) {
            Err(r) => {
                assert!(r.reason.contains(expected), "{}", r.reason);
                assert!(!r.retryable, "{}", r.reason);
            }
            other => panic!("expected a refusal with `{expected}`, got {other:?}"),
        };
        check(state_reply(unchanged_state(9)), 8, "the request held 8");
        check(state_reply(unchanged_state(9)), 0, "the request held 0");
        check(
            state_reply(full_state(10, packed.clone())),
            0,
            "applied to index 9",
        );
        check(
            state_reply(full_state(9, packed[..packed.len() / 2].to_vec())),
            0,
            "not valid",
        );
        // A length prefix beyond the limit is refused before anything is allocated.
        let mut huge = (u32::MAX).to_le_bytes().to_vec();
        huge.extend_from_slice(&packed[4..]);
        check(
            state_reply(full_state(9, huge)),
            0,
            "this reader takes at most",
        );
        check(
            state_reply(pb::State {
                encoding: 7,
                ..full_state(9, packed.clone())
            }),
            0,
            "encoding 7",
        );
        check(
            state_reply(pb::State {
                format: 2,
                ..full_state(9, packed.clone())
            }),
            0,
            "wire format 2",
        );
        check(pb::ReadStateReply { outcome: None }, 0, "no outcome");

        // A state over either limit is a clear, permanent refusal.
        for (json_max, packed_max, expected) in [
            (json.len() - 1, usize::MAX, "bytes as JSON"),
            (usize::MAX, packed.len() - 1, "bytes compressed"),
        ] {
            let failed = encode_state_within(&state, json_max, packed_max).unwrap_err();
            assert!(failed.reason.contains(expected), "{}", failed.reason);
            assert!(
                failed.reason.contains("small-to-medium"),
                "{}",
                failed.reason
            );
            assert!(!failed.retryable);
            let reply = pb::ReadStateReply {
                outcome: Some(pb::read_state_reply::Outcome::Failed(failed)),
            };
            check(reply, 0, expected);
        }
    }

    #[test]
    fn remote_write_replies_are_read() {
        let applied = |json: Vec<u8>| pb::WriteReply {
            outcome: Some(pb::write_reply::Outcome::Applied(pb::Applied {
                format: WIRE_FORMAT,
                log_index: 3,
                result_json: json,
            })),
        };
        let ok = encode(&CommandResult::ObjectCommitted, "result").unwrap();
        assert!(matches!(
            remote_write_outcome(applied(ok)),
            Ok(Attempt::Done(CommandResult::ObjectCommitted))
        ));
        let garbled = remote_write_outcome(applied(b"{".to_vec())).unwrap_err();
        assert!(
            garbled.reason.contains("applied at log index 3"),
            "{garbled:?}"
        );
        let hint = remote_write_outcome(pb::WriteReply {
            outcome: Some(pb::write_reply::Outcome::NotLeader(pb::NotLeader {
                leader_id: Some(2),
                leader_addr: Some(String::new()),
            })),
        });
        // An empty address is no address.
        assert!(
            matches!(
                hint,
                Ok(Attempt::NotLeader(LeaderHint {
                    id: Some(2),
                    addr: None
                }))
            ),
            "{hint:?}"
        );
    }

    #[test]
    fn failures_round_trip_with_their_decision() {
        let check = |e: MetaError, learner: Option<NodeId>, expected: &str, retryable: bool| {
            let back = failure(failed(e).unwrap(), 7, learner);
            assert_eq!(
                format!("{back:?}").split_whitespace().next().unwrap(),
                expected
            );
            assert_eq!(back.is_retryable(), retryable, "{back}");
        };
        check(
            MetaError::Membership {
                reason: "in progress".into(),
                retryable: true,
            },
            None,
            "Membership",
            true,
        );
        check(
            MetaError::LearnerLagging {
                node_id: 4,
                waited_ms: 10,
            },
            Some(4),
            "LearnerLagging",
            true,
        );
        check(
            MetaError::QuorumLost { reason: "x".into() },
            None,
            "Remote",
            true,
        );
        // A stopping leader leaves the outcome open: that is a status, not a `Failed`.
        assert_eq!(
            failed(MetaError::ShutDown).unwrap_err().code(),
            tonic::Code::Unavailable
        );
    }
}
