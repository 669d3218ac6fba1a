//! The IO driver of the replicated WAL: it runs the sans-IO cores of [`crate::replication`]
//! over TCP (port [`WAL_PORT_DEFAULT`], 1778) and a disk store. DESIGN.md §2 steps 2 and 6.
//!
//! | part | runs on | does |
//! | --- | --- | --- |
//! | [`ReplicaServer`] | a WAL replica node | accepts owners, keeps one [`store::StreamStore`] and one `Replica` core per stream on its own OS thread (group commit) |
//! | [`StreamOwner`] | the broker | recovers its stream (`Recovery`), then appends through the `Writer`; `append` / `flush` / `wait_committed` / `trim` |
//! | [`frame`] | both | the versioned, CRC-checked wire format; refuses anything malformed before it reaches a core |
//! | [`store`] | the replica | stream entry format v1 on top of [`crate::Wal`] segments, and the seal file |
//!
//! A connection belongs to one stream: the owner opens it and sends `Hello { stream }`, then
//! `ToReplica` messages; the replica answers with `FromReplica` messages on the same
//! connection. Messages may be lost when a connection breaks (the cores retransmit); on one
//! connection they stay in order.
//!
//! # Limits (one place)
//!
//! Every queue is bounded: [`LINK_QUEUE_MSGS_MAX`] messages from an owner to one replica,
//! [`STREAM_QUEUE_EVENTS_MAX`] requests into a stream thread, [`CONN_REPLIES_MAX`] replies
//! waiting on one connection, [`CONNECTIONS_MAX`] connections per replica server. Frames are
//! bounded by [`request_frame_bytes_max`] (replica side) and [`reply_frame_bytes_max`] (owner
//! side), derived from the entry and message limits; an owner's `message_bytes_max` is at most
//! [`MESSAGE_BYTES_MAX_CEILING`].
//!
//! # Boundaries
//!
//! The cores decide; this module only moves bytes, keeps time (a monotonic clock, on ticks)
//! and executes commands. The WAL segment format stays in [`crate::format`]; the stream entry
//! layout is in [`store`]; the wire layout in [`frame`].

mod conn;
mod error;
pub mod frame;
mod owner;
mod server;
pub mod store;

pub use error::{NetError, OwnerError};
pub use owner::{
    OwnerConfig, OwnerStats, Replacement, StreamOwner, CONNECT_TIMEOUT_MS_DEFAULT,
    RECOVER_TIMEOUT_MS_DEFAULT, TICK_MS_DEFAULT, TICK_MS_MAX,
};
pub use server::{
    ReplicaServer, ReplicaServerConfig, ReplicaServerHandle, ReplicaStats, StreamStats,
};

use crate::replication::{ReplicationConfig, ENTRY_OVERHEAD_BYTES};

/// The WAL replication listener's default port.
pub const WAL_PORT_DEFAULT: u16 = 1778;
/// Upper bound for an owner's `message_bytes_max`: what a replica accepts in one append
/// (besides a single larger entry).
pub const MESSAGE_BYTES_MAX_CEILING: u64 = 16 << 20;
/// Bytes a frame may hold beyond its entries: the frame and message headers.
pub const FRAME_SLACK_BYTES: u64 = 4096;
/// Upper bound of the messages queued from an owner to one replica connection; a full queue
/// means the connection is broken (reconnect). The queue is sized by [`link_queue_msgs`]. (A
/// tokio channel allocates as it fills, so a large bound costs nothing while unused.)
pub const LINK_QUEUE_MSGS_MAX: usize = 1 << 18;
/// Requests queued into one stream thread of a replica; a full queue pushes back on sockets.
pub const STREAM_QUEUE_EVENTS_MAX: usize = 1024;
/// Replies queued on one replica connection; a full queue closes the connection. An owner has
/// at most about `inflight_bytes_max / 32` appends in flight, each answered once.
pub const CONN_REPLIES_MAX: usize = 1 << 16;
/// Connections one replica server serves at once.
pub const CONNECTIONS_MAX: usize = 1024;
/// A connection must say `Hello` within this long.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;

/// The queue of one owner → replica connection: room for a full in-flight window of
/// one-entry messages (each counts at least [`ENTRY_OVERHEAD_BYTES`] against
/// `inflight_bytes_max`) plus probes, so that only a connection that really stopped moving
/// overflows it.
pub fn link_queue_msgs(cfg: &ReplicationConfig) -> usize {
    let window = cfg.inflight_bytes_max / ENTRY_OVERHEAD_BYTES;
    usize::try_from(window)
        .unwrap_or(usize::MAX)
        .saturating_add(1024)
        .min(LINK_QUEUE_MSGS_MAX)
}

/// The largest frame a replica accepts: an append of at most [`MESSAGE_BYTES_MAX_CEILING`] of
/// entries, or of one entry of `entry_bytes_max`.
pub fn request_frame_bytes_max(entry_bytes_max: u32) -> u32 {
    let entries = MESSAGE_BYTES_MAX_CEILING.max(u64::from(entry_bytes_max) + ENTRY_OVERHEAD_BYTES);
    u32::try_from(entries + FRAME_SLACK_BYTES).unwrap_or(u32::MAX)
}

/// The largest frame an owner accepts: a fetch answer of at most `fetch_bytes_max` of entries,
/// or of one entry of `entry_bytes_max`.
pub fn reply_frame_bytes_max(cfg: &ReplicationConfig) -> u32 {
    let entries = cfg
        .fetch_bytes_max
        .max(u64::from(cfg.entry_bytes_max) + ENTRY_OVERHEAD_BYTES);
    u32::try_from(entries + FRAME_SLACK_BYTES).unwrap_or(u32::MAX)
}

/// An `Append` of epoch 1 carrying the one entry `lsn` (its predecessor `lsn − 1`), for the
/// driver's unit tests.
#[cfg(test)]
pub(crate) fn one_entry_append(
    lsn: u64,
    payload: std::sync::Arc<[u8]>,
) -> crate::replication::ToReplica {
    use crate::replication::{AppendMsg, Entry, EntryId, Epoch, Lsn, ToReplica};
    ToReplica::Append(AppendMsg {
        epoch: Epoch(1),
        prev: EntryId {
            lsn: Lsn(lsn - 1),
            epoch: if lsn == 1 { Epoch::ZERO } else { Epoch(1) },
        },
        settled_lsn: Lsn::ZERO,
        entries: vec![Entry::data(Lsn(lsn), Epoch(1), payload)],
    })
}
