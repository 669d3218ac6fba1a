//! The one error type of `strata-meta`.
//!
//! Rejected commands are not errors: they come back as data in
//! [`CommandResult::Rejected`](crate::CommandResult::Rejected). A [`MetaError`] means the
//! metadata service itself could not do its work; [`MetaError::is_retryable`] says whether the
//! caller may try again (a leader change, a store still locked by a process that is exiting)
//! or should stop (a corrupt or unreadable store, a broken raft core). A retryable
//! [`MetaError::ForwardFailed`] is special: the write may have been applied, so only commands
//! that are harmless to repeat should be sent again.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("cannot create the meta directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the meta store {path} is held open by another process or node")]
    StoreLocked { path: PathBuf },
    /// A restore refuses to overwrite an existing metadata store.
    #[error("a metadata store already exists at {path}; refusing to overwrite it")]
    StoreExists { path: PathBuf },
    #[error("the meta store failed: {0}")]
    Store(#[from] redb::Error),
    #[error("the meta store holds an undecodable {what}: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("the meta store has format version {found}; this build reads version {supported}")]
    UnsupportedFormat { found: u32, supported: u32 },
    #[error("the meta store belongs to node {stored}, not to node {given}")]
    NodeIdMismatch { stored: u64, given: u64 },
    #[error("invalid meta raft configuration: {reason}")]
    Config { reason: String },
    #[error("meta node {node_id} did not become leader within {waited_ms} ms")]
    NoLeader { node_id: u64, waited_ms: u64 },
    #[error("this meta node is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("meta node {node_id} is unreachable: {reason}")]
    PeerUnreachable { node_id: u64, reason: String },
    /// A call forwarded to the leader went out but no answer came back (the connection broke,
    /// the leader stopped, the call timed out). A forwarded write may or may not have been
    /// applied: retry only commands whose repetition is harmless (`CommitObject` is).
    #[error("no answer from meta leader {leader}; the outcome is unknown: {reason}")]
    ForwardFailed { leader: u64, reason: String },
    /// The leader applied a forwarded write at `log_index`, but this node did not apply it
    /// within the wait, so [`crate::MetaNode::read`] here does not show it yet. Do not retry
    /// the write: it is committed.
    #[error(
        "the write is committed at log index {log_index}, \
         but this node has not applied it after {waited_ms} ms"
    )]
    ApplyLagging { log_index: u64, waited_ms: u64 },
    /// The leader could not confirm its leadership with a quorum (for a linearizable read).
    #[error("the meta leader cannot reach a quorum: {reason}")]
    QuorumLost { reason: String },
    /// A membership change was refused; nothing changed.
    #[error("the meta membership change was refused: {reason}")]
    Membership { reason: String, retryable: bool },
    /// The learner is in the membership but has not caught up with the leader's log yet.
    /// Adding it again is harmless and waits again.
    #[error(
        "meta node {node_id} was added as a learner but did not catch up within {waited_ms} ms"
    )]
    LearnerLagging { node_id: u64, waited_ms: u64 },
    /// The leader refused a forwarded call for a reason this node cannot name more precisely;
    /// nothing changed.
    #[error("meta leader {node_id} refused the call: {reason}")]
    Remote {
        node_id: u64,
        reason: String,
        retryable: bool,
    },
    /// A command whose JSON form exceeds the raft message limit could never be replicated.
    #[error("the command is {bytes} bytes; the meta log takes at most {max}")]
    CommandTooLarge { bytes: usize, max: usize },
    #[error("cannot serve meta gRPC on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("the meta node is shut down")]
    ShutDown,
    /// A [`crate::RemoteMeta`] call found no meta leader that answered within its timeout
    /// (every member unreachable, or no leader elected). Nothing was applied, unless a write
    /// ended in [`MetaError::RemoteOutcomeUnknown`] instead.
    #[error("no meta leader answered within {waited_ms} ms (tried {tried}); last failure: {last}")]
    RemoteUnavailable {
        tried: String,
        waited_ms: u64,
        last: String,
    },
    /// A [`crate::RemoteMeta`] write reached the meta node at `addr` but no answer came back:
    /// it may or may not have been applied. Retry only commands whose repetition is harmless.
    #[error("no answer from the meta node at {addr}; the outcome is unknown: {reason}")]
    RemoteOutcomeUnknown { addr: String, reason: String },
    /// The meta node at `addr` refused a [`crate::RemoteMeta`] call for good (a state too
    /// large for one message, a wire format it does not read); nothing changed.
    #[error("the meta node at {addr} refused the call: {reason}")]
    RemoteRefused { addr: String, reason: String },
    #[error("the meta raft core failed: {reason}")]
    Raft { reason: String },
}

impl MetaError {
    /// Whether the same call may succeed later (after a leader change, or once another holder
    /// of the store has exited). Everything else is permanent or fatal for this node.
    pub fn is_retryable(&self) -> bool {
        match self {
            MetaError::StoreLocked { .. }
            | MetaError::NoLeader { .. }
            | MetaError::NotLeader { .. }
            | MetaError::PeerUnreachable { .. }
            | MetaError::ForwardFailed { .. }
            | MetaError::QuorumLost { .. }
            | MetaError::LearnerLagging { .. }
            | MetaError::RemoteUnavailable { .. }
            | MetaError::RemoteOutcomeUnknown { .. } => true,
            MetaError::Membership { retryable, .. } | MetaError::Remote { retryable, .. } => {
                *retryable
            }
            _ => false,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for MetaError {
            fn from(e: $t) -> Self {
                MetaError::Store(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// openraft's fatal errors: a stopped core is this node shutting down; anything else broke it.
pub(crate) fn fatal(e: openraft::error::Fatal<u64>) -> MetaError {
    match e {
        openraft::error::Fatal::Stopped => MetaError::ShutDown,
        other => MetaError::Raft {
            reason: other.to_string(),
        },
    }
}

pub(crate) fn raft_error<E: std::error::Error>(e: openraft::error::RaftError<u64, E>) -> MetaError {
    match e {
        openraft::error::RaftError::Fatal(f) => fatal(f),
        openraft::error::RaftError::APIError(e) => MetaError::Raft {
            reason: e.to_string(),
        },
    }
}
