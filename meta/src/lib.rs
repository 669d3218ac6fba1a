//! StrataMQ metadata: topics, partitions and the object index, replicated with openraft and
//! stored in redb.
//!
//! The crate has a pure core and an IO shell:
//!
//! - [`state`]: the state machine as a value. [`MetaState::apply`] takes a [`Command`] and
//!   answers a [`CommandResult`]; no IO, no clock, no randomness. All rules (topic creation,
//!   contiguous object commits, garbage bookkeeping) live there and are tested there.
//! - [`store`]: openraft's log storage and state machine on one redb file, `meta.redb`.
//!   Its applied-entry feed (`MetaNode::subscribe_applied`) carries every applied command out
//!   for the metadata backup.
//! - [`backup`]: disaster recovery: replay a logged command, make a restored state fit a new
//!   cluster (brokers dead, WAL streams free), write a fresh single-voter store from a state.
//! - [`grpc`]: the meta gRPC API (`proto/meta.proto`): openraft's RPCs and the calls that must
//!   run on the leader, their wire conversions and limits, and the server.
//! - [`network`]: the gRPC clients: openraft's transport and the forwarding of leader calls.
//! - `leader`: the leader calls (write, read index, membership changes) run on this node.
//! - [`remote`]: [`RemoteMeta`], the client of a process outside the group: writes and
//!   linearizable reads of the whole state, sent to the leader over the `Meta` service.
//! - [`mirror`]: [`MetaMirror`], a local copy of the state for a process outside the group
//!   (an elastic broker), kept current by a member's `Follow` stream of applied commands.
//! - [`node`]: [`MetaNode`], which opens the store, runs raft (alone with `open`, as one of
//!   several with `open_cluster`) and offers `write`, `read`, `sync`, `subscribe`, membership
//!   changes and `shutdown`.
//!
//! *Invariant*: the index in [`MetaState`] is the only truth about what exists in object
//! storage; a partition's blocks are ordered, disjoint and contiguous from its start.
//! *Boundary*: this crate knows nothing of object storage, the WAL or the Kafka protocol; it
//! depends only on `strata-types` inside the workspace. Only `grpc` knows the wire messages;
//! nothing outside this crate sees an openraft or tonic type except [`MetaNode::raft`] and the
//! extra routes a caller may serve beside the meta API.

pub mod acl;
pub mod backup;
pub mod cluster;
pub mod error;
pub mod grpc;
mod leader;
pub mod mirror;
pub mod network;
pub mod node;
pub mod raft;
pub mod remote;
pub mod state;
pub mod store;

pub use cluster::{
    same_addr, BrokerInfo, ClusterCommand, ClusterRejection, ClusterResult, ClusterState,
    PartitionLease, StreamInfo, StreamProgress, WalNodeInfo,
};
pub use error::MetaError;
pub use leader::MembershipView;
pub use mirror::MetaMirror;
pub use node::{ClusterConfig, MetaConfig, MetaNode};
pub use raft::TypeConfig;
pub use remote::RemoteMeta;
pub use state::{
    Command, CommandResult, DirectBlock, DirectProducerBatch, DirectSkip, MetaState, Rejection,
    ScramCredential, ScramMechanism, TopicMeta, OBJECT_BLOCKS_MAX, PARTITIONS_PER_TOPIC_MAX,
    PRODUCER_ID_BLOCK_MAX, STORAGE_MODE_KEY,
};
