//! The one error type of `strata-meta`.
//!
//! Rejected commands are not errors: they come back as data in
//! [`CommandResult::Rejected`](crate::CommandResult::Rejected). A [`MetaError`] means the
//! metadata service itself could not do its work; [`MetaError::is_retryable`] says whether the
//! caller may try again (a leader change, a store still locked by a process that is exiting)
//! or should stop (a corrupt or unreadable store, a broken raft core).

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
    #[error("meta node {node_id} is unreachable: this build has no meta transport")]
    PeerUnreachable { node_id: u64 },
    #[error("the meta node is shut down")]
    ShutDown,
    #[error("the meta raft core failed: {reason}")]
    Raft { reason: String },
}

impl MetaError {
    /// Whether the same call may succeed later (after a leader change, or once another holder
    /// of the store has exited). Everything else is permanent or fatal for this node.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            MetaError::StoreLocked { .. }
                | MetaError::NoLeader { .. }
                | MetaError::NotLeader { .. }
                | MetaError::PeerUnreachable { .. }
        )
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
