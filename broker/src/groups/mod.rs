//! Classic Kafka consumer groups: membership, rebalancing and the choice of coordinator.
//!
//! - [`core`]: one group's state machine as a value (sans-IO; tested with tables of events).
//! - [`coordinator`]: the task that owns every group, parks JoinGroup/SyncGroup answers until
//!   their rebalance completes, and fires the groups' deadlines.
//!
//! Committed offsets are not kept here: they are metadata (`Command::CommitOffsets`), written
//! by the OffsetCommit handler once the coordinator has accepted the committer. The Kafka
//! wire side lives in `kafka::group_handlers`.

pub mod coordinator;
pub mod core;

pub use self::coordinator::{GroupListing, Groups};
pub use self::core::{GroupConfig, GroupError, GroupState};

use crate::node::Node;

/// The node that coordinates `group`: one of the live brokers, chosen by a stable hash of the
/// group id (FNV-1a), so every broker answers FindCoordinator the same way. Membership lives
/// in that broker's memory; committed offsets live in metadata, so when the live brokers
/// change and a group moves, its members get NOT_COORDINATOR, find the new coordinator, rejoin
/// and resume from their commits.
pub fn coordinator_for(node: &Node, group: &str) -> u64 {
    let brokers = crate::cluster::live_brokers(node);
    if brokers.len() <= 1 {
        return node.config.node_id;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let pick = &brokers[(hash % brokers.len() as u64) as usize];
    u64::try_from(pick.node_id).unwrap_or(node.config.node_id)
}
