//! StrataMQ metadata: topics, partitions and the object index, replicated with openraft and
//! stored in redb.
//!
//! The crate has a pure core and an IO shell:
//!
//! - [`state`]: the state machine as a value. [`MetaState::apply`] takes a [`Command`] and
//!   answers a [`CommandResult`]; no IO, no clock, no randomness. All rules (topic creation,
//!   contiguous object commits, garbage bookkeeping) live there and are tested there.
//! - [`store`]: openraft's log storage and state machine on one redb file, `meta.redb`.
//! - [`network`]: the raft transport; none yet (single voter), tonic later.
//! - [`node`]: [`MetaNode`], which opens the store, runs raft and offers `write`, `read`,
//!   `subscribe` and `shutdown`.
//!
//! *Invariant*: the index in [`MetaState`] is the only truth about what exists in object
//! storage; a partition's blocks are ordered, disjoint and contiguous from its start.
//! *Boundary*: this crate knows nothing of object storage, the WAL or the Kafka protocol; it
//! depends only on `strata-types` inside the workspace.

pub mod error;
pub mod network;
pub mod node;
pub mod raft;
pub mod state;
pub mod store;

pub use error::MetaError;
pub use node::{MetaConfig, MetaNode};
pub use raft::TypeConfig;
pub use state::{
    Command, CommandResult, MetaState, Rejection, TopicMeta, OBJECT_BLOCKS_MAX,
    PARTITIONS_PER_TOPIC_MAX,
};
