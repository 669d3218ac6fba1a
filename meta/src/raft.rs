//! The openraft type configuration of the metadata group.
//!
//! Log entries carry a [`Command`]; applying one answers a [`Response`]. Node ids are `u64`
//! and nodes are described by [`BasicNode`], whose `addr` is the `host:port` of the node's
//! meta gRPC listener (empty in a group formed by `MetaNode::open`, which has no network).
//! Snapshots are JSON bytes in a `Cursor<Vec<u8>>`, sent to followers in chunks.

use crate::state::{Command, CommandResult};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use std::io::Cursor;

openraft::declare_raft_types!(
    /// Types of the metadata raft group.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// Node id in the metadata group.
pub type NodeId = u64;
/// A raft log entry of the metadata group.
pub type Entry = openraft::Entry<TypeConfig>;
/// A raft log id of the metadata group.
pub type LogId = openraft::LogId<NodeId>;
/// The openraft handle of the metadata group.
pub type MetaRaft = openraft::Raft<TypeConfig>;
pub(crate) type StorageError = openraft::StorageError<NodeId>;

/// What applying one log entry answers. Blank and membership entries answer `None`; a
/// [`Command`] always answers `Some`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub result: Option<CommandResult>,
}
