//! The vocabulary of the replication protocol: LSNs, epochs, replica ids, entries, and the
//! messages between a stream owner ([`crate::replication::Writer`] /
//! [`crate::replication::Recovery`]) and a [`crate::replication::Replica`].
//!
//! These are domain types, not a wire format: the IO driver ([`crate::net`]) encodes them into
//! its own versioned frames ([`crate::net::frame`]) and rejects a frame that does not decode into
//! a well-formed message ([`AppendMsg::check`]) before it reaches a core, because the cores
//! assert their inputs.

use std::fmt;
use std::sync::Arc;

/// The opaque bytes of one entry, shared (not copied) between the owner's retained log, the
/// messages to every replica, and the replica's in-memory view.
pub type Payload = Arc<[u8]>;

/// Bytes an entry is accounted for on top of its payload (in-flight, retained and message
/// limits): roughly its header in a message and on disk (length, checksum, lsn, epoch, kind).
pub const ENTRY_OVERHEAD_BYTES: u64 = 32;

/// Log sequence number: the position of an entry in a stream. Dense, starts at 1; `Lsn(0)` means
/// "before the first entry".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    pub fn next(self) -> Lsn {
        Lsn(self.0.checked_add(1).expect("lsn overflow"))
    }

    /// The LSN before this one. Precondition: `self > Lsn::ZERO`.
    pub fn prev(self) -> Lsn {
        assert!(self.0 > 0, "Lsn(0) has no predecessor");
        Lsn(self.0 - 1)
    }

    pub fn plus(self, n: u64) -> Lsn {
        Lsn(self.0.checked_add(n).expect("lsn overflow"))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lsn {}", self.0)
    }
}

/// A stream ownership generation, handed out by metadata with the lease. At most one owner holds
/// a given epoch; a higher epoch fences every lower one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl Epoch {
    /// Never handed out: the sealed epoch of a replica that has seen no owner yet, and the epoch
    /// written in `prev` when the previous entry is settled (see [`AppendMsg::prev`]).
    pub const ZERO: Epoch = Epoch(0);
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

/// Index of a replica in the stream's replica set, `0..replicas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(pub u16);

impl ReplicaId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "replica {}", self.0)
    }
}

/// What an entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A payload from the broker.
    Data,
    /// Written by [`crate::replication::Recovery`] right after the recovered tail, in the new
    /// epoch, with an empty payload. Committing it is what commits the recovered tail (see the
    /// module docs, "Why a barrier"). Readers skip it.
    Barrier,
}

/// `(lsn, epoch)`: names one entry. Two entries with the same id are the same entry (invariant
/// I2 in the module docs), so comparing ids compares whole log prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    // Field order matters for nothing; recovery compares `(epoch, lsn)` explicitly.
    pub lsn: Lsn,
    pub epoch: Epoch,
}

/// One WAL entry: an LSN, the epoch of the owner that first wrote it (never changed when it is
/// re-replicated), and its payload.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    pub lsn: Lsn,
    pub epoch: Epoch,
    pub kind: EntryKind,
    pub payload: Payload,
}

impl Entry {
    pub fn data(lsn: Lsn, epoch: Epoch, payload: Payload) -> Entry {
        Entry {
            lsn,
            epoch,
            kind: EntryKind::Data,
            payload,
        }
    }

    pub fn barrier(lsn: Lsn, epoch: Epoch) -> Entry {
        Entry {
            lsn,
            epoch,
            kind: EntryKind::Barrier,
            payload: Arc::from(&[][..]),
        }
    }

    pub fn id(&self) -> EntryId {
        EntryId {
            lsn: self.lsn,
            epoch: self.epoch,
        }
    }

    /// The bytes this entry counts for in every limit.
    pub fn bytes(&self) -> u64 {
        self.payload.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

impl fmt::Debug for Entry {
    // Payloads can be large; show their length and first bytes only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = &self.payload[..self.payload.len().min(16)];
        write!(
            f,
            "Entry({}, {}, {:?}, {} bytes {:?})",
            self.lsn.0,
            self.epoch.0,
            self.kind,
            self.payload.len(),
            String::from_utf8_lossy(head)
        )
    }
}

/// Owner → replica: "after entry `prev`, your log is `entries`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendMsg {
    /// The sender's epoch. Every entry has an epoch `<=` this one.
    pub epoch: Epoch,
    /// The entry just before `entries[0]`. The replica accepts only if it holds exactly this
    /// entry, or if `prev.lsn <= settled_lsn` (then `prev.epoch` is [`Epoch::ZERO`]).
    pub prev: EntryId,
    /// Every entry up to here is in object storage and committed to the metadata index; the
    /// replica may drop them (and need not hold them to accept an append).
    pub settled_lsn: Lsn,
    /// Dense, starting at `prev.lsn + 1`; epochs non-decreasing. May be empty (a probe).
    pub entries: Vec<Entry>,
}

impl AppendMsg {
    /// Whether the message is well formed. The IO driver checks this on every decoded frame and
    /// closes the connection on failure; the replica core asserts it.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.epoch == Epoch::ZERO {
            return Err("append from epoch 0");
        }
        if self.prev.lsn <= self.settled_lsn && self.prev.epoch != Epoch::ZERO {
            return Err("a settled prev must carry epoch 0");
        }
        if self.prev.epoch > self.epoch {
            return Err("prev entry from a newer epoch than the sender");
        }
        let mut expected = self.prev.lsn.next();
        let mut epoch = self.prev.epoch;
        for e in &self.entries {
            if e.lsn != expected {
                return Err("entries are not dense after prev");
            }
            if e.epoch < epoch || e.epoch > self.epoch || e.epoch == Epoch::ZERO {
                return Err("entry epochs must be non-decreasing and at most the sender's");
            }
            if e.kind == EntryKind::Barrier && !e.payload.is_empty() {
                return Err("a barrier carries no payload");
            }
            expected = expected.next();
            epoch = e.epoch;
        }
        Ok(())
    }
}

/// Owner → replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToReplica {
    Append(AppendMsg),
    /// From a new owner's recovery: never accept anything from an epoch below `epoch` again, and
    /// tell me your last durable entry at or after `from_lsn`.
    Seal {
        epoch: Epoch,
        from_lsn: Lsn,
    },
    /// Recovery read: durable entries in `from_lsn..=upto_lsn`, at most about `bytes_max` (at least
    /// one entry when there is one).
    Fetch {
        epoch: Epoch,
        from_lsn: Lsn,
        upto_lsn: Lsn,
        bytes_max: u64,
    },
}

impl ToReplica {
    pub fn epoch(&self) -> Epoch {
        match self {
            ToReplica::Append(m) => m.epoch,
            ToReplica::Seal { epoch, .. } | ToReplica::Fetch { epoch, .. } => *epoch,
        }
    }
}

/// Why a replica refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackReason {
    /// The replica is sealed at `sealed_epoch`, above the request's epoch: the sender has lost
    /// the stream and must stop.
    Fenced { sealed_epoch: Epoch },
    /// The replica does not hold the append's `prev` entry. Retry with `prev.lsn <=
    /// retry_after_lsn` (always `< prev_lsn`): the replica's log end, or the entry before the
    /// replica's run of entries of the epoch it holds at `prev_lsn`.
    Mismatch { prev_lsn: Lsn, retry_after_lsn: Lsn },
}

/// Replica → owner. Every reply carries the epoch of the request it answers; the driver routes
/// it to the owner of that epoch (at most one owner per epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromReplica {
    /// The replica's log agrees with the owner of `epoch` up to `durable_lsn`, and that prefix is
    /// on disk (fdatasync'ed).
    Ack {
        epoch: Epoch,
        durable_lsn: Lsn,
    },
    Nack {
        epoch: Epoch,
        reason: NackReason,
    },
    /// The seal at `epoch` is durable. `last` is the replica's last durable entry if its LSN is
    /// at least the seal's `from_lsn`; `base_lsn` is where its log starts (entries up to it were
    /// trimmed as settled).
    Sealed {
        epoch: Epoch,
        base_lsn: Lsn,
        last: Option<EntryId>,
    },
    /// Durable entries answering a [`ToReplica::Fetch`], dense and in order (empty if the
    /// replica holds none in the range).
    Fetched {
        epoch: Epoch,
        entries: Vec<Entry>,
    },
}

impl FromReplica {
    /// The epoch of the owner this reply is for.
    pub fn epoch(&self) -> Epoch {
        match self {
            FromReplica::Ack { epoch, .. }
            | FromReplica::Nack { epoch, .. }
            | FromReplica::Sealed { epoch, .. }
            | FromReplica::Fetched { epoch, .. } => *epoch,
        }
    }
}
