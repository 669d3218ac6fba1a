//! Inputs and outputs of the two stream-owner cores, [`crate::replication::Recovery`] and
//! [`crate::replication::Writer`]. They share one event and one command type so the owner's
//! driver runs either with the same loop (recovery hands over to its writer in place).

use super::msg::{Entry, Epoch, FromReplica, Lsn, NackReason, Payload, ReplicaId, ToReplica};

/// Inputs of a stream owner. Time advances only through [`OwnerEvent::Tick`]; the cores never
/// read a clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerEvent {
    /// From the broker: append one entry. Answered by `Appended` or `AppendRefused`.
    Append { payload: Payload },
    /// From the broker, after a group of appends: send what is new. (Ticks and acks also send,
    /// so a missing flush delays, never loses.)
    Flush,
    Ack {
        replica: ReplicaId,
        epoch: Epoch,
        durable_lsn: Lsn,
    },
    Nack {
        replica: ReplicaId,
        epoch: Epoch,
        reason: NackReason,
    },
    Sealed {
        replica: ReplicaId,
        epoch: Epoch,
        base_lsn: Lsn,
        last: Option<super::msg::EntryId>,
    },
    Fetched {
        replica: ReplicaId,
        epoch: Epoch,
        entries: Vec<Entry>,
    },
    /// The driver's clock, monotonic. Drives retransmission timers.
    Tick { now_ms: u64 },
    /// The driver (re)connected to the replica.
    ReplicaUp { replica: ReplicaId },
    /// The driver lost the connection; messages sent since may be lost.
    ReplicaDown { replica: ReplicaId },
    /// From the broker: entries up to `upto_lsn` are in object storage and committed to the
    /// metadata index, so they need not be kept or repaired any more. Precondition:
    /// `upto_lsn <= committed`.
    Trim { upto_lsn: Lsn },
    /// From the driver, after `ReplaceReplica`: a spare node outside the set will be connected
    /// as the joiner (`ReplicaId(R)`) to replace `replica`. Feed it before the joiner's
    /// `ReplicaUp`. Ignored while another replacement is under way.
    ReplaceStart { replica: ReplicaId },
    /// From the driver, after `ReplacementCaughtUp`: metadata recorded the new replica set.
    /// The joiner takes `replica`'s slot (`Down` until the driver reconnects the slot to it).
    ReplaceDone { replica: ReplicaId },
    /// From the driver: the replacement under way is given up (metadata refused it, or the
    /// spare is gone). The replaced replica counts again.
    ReplaceAborted,
}

impl OwnerEvent {
    /// The event for a reply received from `replica`.
    pub fn from_reply(replica: ReplicaId, msg: FromReplica) -> OwnerEvent {
        match msg {
            FromReplica::Ack { epoch, durable_lsn } => OwnerEvent::Ack {
                replica,
                epoch,
                durable_lsn,
            },
            FromReplica::Nack { epoch, reason } => OwnerEvent::Nack {
                replica,
                epoch,
                reason,
            },
            FromReplica::Sealed {
                epoch,
                base_lsn,
                last,
            } => OwnerEvent::Sealed {
                replica,
                epoch,
                base_lsn,
                last,
            },
            FromReplica::Fetched { epoch, entries } => OwnerEvent::Fetched {
                replica,
                epoch,
                entries,
            },
        }
    }
}

/// Why an append was refused. All but `TooLarge` are retryable from the producer's point of view
/// (`Full` after an upload + trim, `Recovering` once recovered, `Fenced` on the new owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendRefusal {
    /// Retained (not yet trimmed) bytes would exceed `retained_bytes_max`: the WAL is full
    /// until uploads catch up.
    Full {
        retained_bytes: u64,
        retained_bytes_max: u64,
    },
    /// The payload exceeds `entry_bytes_max`.
    TooLarge { len: usize, entry_bytes_max: u32 },
    /// Recovery has not finished yet.
    Recovering,
    /// A newer epoch sealed the stream.
    Fenced,
}

/// Outputs of a stream owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerCommand {
    Send {
        replica: ReplicaId,
        msg: ToReplica,
    },
    /// A timeout: the owner is about to resend to `replica` from `from_lsn` (the `Send`s
    /// follow). Informational for the driver (count it; a TCP connection that lost a message is
    /// broken, so reconnecting is reasonable).
    Retransmit {
        replica: ReplicaId,
        from_lsn: Lsn,
    },
    /// The append got `lsn`. Not durable yet.
    Appended {
        lsn: Lsn,
    },
    AppendRefused {
        reason: AppendRefusal,
    },
    /// Every entry up to `upto_lsn` is durable on a write quorum and will be recovered by every
    /// later owner: producers may be acknowledged up to here. Only grows.
    Committed {
        upto_lsn: Lsn,
    },
    /// A newer epoch sealed the stream: stop, answer producers with a retriable error (the
    /// partition moved). Emitted once; the core ignores everything afterwards.
    Fenced {
        sealed_epoch: Epoch,
    },
    /// Recovery finished: `entries` (LSNs `from_lsn..=upto_lsn`, barriers included, skip them)
    /// are the agreed tail, committed in this epoch; appends continue after `barrier_lsn`.
    Recovered {
        from_lsn: Lsn,
        upto_lsn: Lsn,
        barrier_lsn: Lsn,
        entries: Vec<Entry>,
    },
    /// `replica` has not been healthy since `unhealthy_since_ms` (for `replace_after_ms`):
    /// replace it with a spare if there is one (`ReplaceStart`). Repeated every
    /// `replace_after_ms` while it stays unhealthy and no replacement is under way.
    ReplaceReplica {
        replica: ReplicaId,
        unhealthy_since_ms: u64,
    },
    /// The joiner holds every entry the new set needs (up to `durable_lsn`): record the new
    /// set in metadata, then feed `ReplaceDone` (or `ReplaceAborted`). Emitted once per
    /// replacement.
    ReplacementCaughtUp {
        replica: ReplicaId,
        durable_lsn: Lsn,
    },
}
