//! Replication and recovery of a WAL stream: three sans-IO cores (events in, commands out, no
//! IO, no clock, no randomness) that an IO driver runs. DESIGN.md §2 steps 2 and 6, §5.
//!
//! # Model
//!
//! A *stream* is one broker's WAL: a log of entries `(lsn, epoch, payload)` with dense LSNs. It is
//! owned by one broker at a time, under an *epoch* that the broker got from metadata with its
//! lease; an epoch has at most one owner, ever. The stream is stored on R *replicas* (default 3);
//! an entry is *committed* once W of them (default 2) have it on disk. Entries up to the
//! *settled* LSN are in object storage and committed to the metadata index, so they may be
//! trimmed everywhere.
//!
//! | core | runs on | does |
//! | --- | --- | --- |
//! | [`Recovery`] | a new owner (epoch from metadata) | seals the stream, agrees on the tail, re-replicates it, hands over to its writer |
//! | [`Writer`] | the owner, after recovery | assigns LSNs, pipelines entries to every replica, repairs lagging ones, reports `Committed` |
//! | [`Replica`] | every replica node, one per stream | checks epoch and continuity, truncates divergent tails, writes, acks after fdatasync |
//!
//! The owner's cores take [`OwnerEvent`]s and emit [`OwnerCommand`]s; the replica's take
//! [`ReplicaEvent`]s and emit [`ReplicaCommand`]s. Messages between them are [`ToReplica`] and
//! [`FromReplica`]. The protocol is Raft's log replication with the leader chosen outside (the
//! epoch is the term, metadata the election): the same `prev`-entry check, the same
//! truncate-on-conflict rule, the same "commit only your own epoch's entries" rule, and a
//! recovery whose choice of log is Raft's "most up-to-date" rule over a seal quorum.
//!
//! # The protocol
//!
//! **Writing.** The writer sends `Append { epoch, prev, settled_lsn, entries }` (many in flight,
//! up to `inflight_bytes_max` per replica). A replica accepts if `epoch >= sealed_epoch` and it
//! holds `prev` (or `prev` is settled); it truncates whatever conflicts, writes, and after the
//! fdatasync answers `Ack { durable_lsn }`: its log agrees with the writer's up to there, on
//! disk. The writer commits the W-th highest ack once that entry is of its own epoch.
//!
//! **Truncate on divergence, precisely.** For each entry `(l, e)` of an accepted append: an
//! entry at `l` with the same epoch is kept (it is the same entry, I2); at an `l` past the
//! replica's end the entry is appended; an entry at `l` with a different epoch (it can be higher
//! or lower: a zombie of epoch 4 may have written where the epoch-5 recovery re-replicates an
//! epoch-3 entry) is removed together with everything after it (`Truncate { after_lsn: l - 1 }`),
//! then `(l, e)` and the rest are written. The append's sender always wins, and only a sender
//! with `epoch >= sealed_epoch` gets this far. Nothing the replica holds that agrees with the
//! sender is ever truncated (asserted: the truncation point is above `matched`).
//!
//! **Fencing.** A new owner (epoch `e'`) first sends `Seal { e' }`. A sealed replica answers every
//! request with a lower epoch with `Nack Fenced`, and its seal is on disk before it says
//! `Sealed`. The writer that gets `Fenced` stops (`OwnerCommand::Fenced`).
//!
//! **Recovery.** See [`recovery`]: seal `R - W + 1` replicas, take the highest
//! `(last_epoch, last_lsn)` among their durable logs as the agreed tail, fetch it, re-replicate
//! it *with its original epochs* followed by a *barrier* entry of epoch `e'`, and report
//! `Recovered` once the barrier is committed.
//!
//! **Repair.** A replica that comes back is probed from what it acknowledged; `Mismatch` nacks
//! walk back one epoch run at a time to where it agrees, and the writer streams from there.
//! Entries at or below the trim point are never resent (they are settled).
//!
//! # Quorum arithmetic
//!
//! - A seal quorum has `Q = R - W + 1` replicas. Any write quorum and any seal quorum share a
//!   replica: `W + Q = R + 1 > R`. So every committed entry is on at least one replica whose
//!   `Sealed` answer recovery reads.
//! - Once Q replicas are sealed at `e'`, at most `R - Q = W - 1` replicas still accept appends of
//!   an older epoch: fewer than W, so the old owner can never complete another commit. An old
//!   owner's commit that did complete counted acks made *before* those seals, so the entry was
//!   durable on a replica of the seal quorum when it answered (sealed epochs only grow, and
//!   acks are sent only while not sealed higher).
//! - R = 3, W = 2: Q = 2. Writing needs 2 replicas, recovery 2 (then 2 for the barrier): any
//!   one replica may be down. R = 5, W = 3: Q = 3, two may be down. R = 1, W = 1: Q = 1.
//!   W = R makes recovery need one replica but writing needs all; W = 1 the reverse.
//! - Permanent loss: if f replicas of a commit's W are gone for good, any Q *live* replicas
//!   still meet the `W - f` survivors (`(W - f) + Q > R - f`). What breaks safety is a replica
//!   coming back with an *empty* disk: it forgot its seal and its entries. A failed fdatasync
//!   therefore stops the replica for good ([`ReplicaEvent::SyncFailed`]); replacing it is a
//!   membership change within the epoch, driven by the [`Writer`] (see [`writer`], "Replacing
//!   a replica": catch the spare up, record the new set, then switch).
//!
//! # Invariants
//!
//! - **I1 Epochs.** A replica's `sealed_epoch` only grows, is durable before any reply that
//!   depends on it, and bounds the epoch of every entry it holds. Requests below it are fenced.
//! - **I2 Entry identity.** An epoch has one owner, which assigns each LSN once and never
//!   changes an entry's epoch (recovery re-replicates entries as they are). So `(lsn, epoch)`
//!   names one payload everywhere.
//! - **I3 Log shape.** Every log (the writer's, each replica's, each store's) is dense, and its
//!   epochs never decrease.
//! - **I4 Log matching.** If two logs hold the same `(lsn, epoch)`, they are identical from the
//!   settled point up to `lsn`. The `prev` check keeps it: an entry is accepted only right after
//!   an entry the sender also holds.
//! - **I5 Ack.** `Ack { durable_lsn: d }` from a replica means its log agrees with the owner's up
//!   to `d` and is durable up to `d`. The writer's `acked_lsn` per replica only grows.
//! - **I6 Commit.** `Committed { upto_lsn: l }` only when W replicas acked `>= l` and entry `l`
//!   has the writer's own epoch; `committed` only grows.
//! - **I7 Completeness.** Every entry committed by any owner of an epoch below `e'` is, at or
//!   above `from_lsn`, in the tail chosen by the recovery of `e'`, at its LSN with its epoch and
//!   payload. Below `from_lsn` it is in object storage.
//! - **I8 Settled.** Replicas trim only to a `settled_lsn` an owner sent, which is at most the
//!   uploaded end in metadata, which is below any later recovery's `from_lsn` (asserted when a
//!   `Sealed` answer arrives).
//!
//! Why I7 holds (induction over epochs, Raft's Leader Completeness): let `(l, e)` be committed
//! by the owner of `e`, so W replicas acked it. Recovery `e' > e` seals Q replicas; one of them,
//! X, acked it before being sealed. Every owner of an epoch `u` with `e < u < e'` that wrote to
//! X chose, by induction, a tail holding `(l, e)`, so its appends agree with X up to `l` and
//! never truncate it (the truncation rule only cuts where the sender disagrees). So X's durable
//! log still holds `(l, e)` and ends at an id `>= (e, l)`. The chosen log ends at the highest
//! `(epoch, lsn)` of the quorum, so at least X's. If its last epoch equals X's, both got that
//! epoch's entries from its owner and the longer one holds the shorter (I4). If it is higher,
//! `u`, its last entry was written by the owner of `u`, whose log holds `(l, e)` by induction,
//! below its barrier, and the chosen log agrees with that owner's log up to its last entry (I4).
//!
//! # Why a barrier, and not re-stamping
//!
//! Re-replicating the tail without committing an entry of the new epoch is Raft's "figure 8"
//! bug: with R = 3, epoch 2 writes `(1, e2)` to A only; epoch 3 seals B, C and writes `(1, e3)` to
//! C only; epoch 4 seals A, B, copies `(1, e2)` to B and calls it recovered (A and B hold it);
//! epoch 5 seals B, C and picks `(1, e3)`, because epoch 3 beats epoch 2. Committing the barrier
//! `(2, e4)` on two replicas makes every later seal quorum see epoch 4 first. Re-stamping the tail
//! with the new epoch instead would break I4: a recovery that dies half-way leaves replicas whose
//! committed entries were truncated and replaced by a shorter re-stamped prefix.
//!
//! # What recovery agrees on
//!
//! Committed entries come back for every seal quorum. An entry that was never committed (on
//! fewer than W replicas) comes back if the chosen replica holds it, so two different quorums
//! may agree on different uncommitted suffixes. Whichever it is, `Recovered` reports it only
//! after the barrier behind it is committed: from then on it is the single agreed prefix, and
//! every later recovery returns exactly it (it is committed).
//!
//! # What the IO driver must do
//!
//! The replica contract is in [`replica`], the owner's here: feed every reply with
//! [`OwnerEvent::from_reply`] and a `Tick` every few milliseconds; report `ReplicaDown` when a
//! connection breaks and `ReplicaUp` when it is back; send each `Send` on the replica's
//! connection in order (losing messages is fine, the cores retransmit; reordering is fine too);
//! feed `Trim` only after the upload up to that LSN is committed to the metadata index; run
//! [`Recovery`] with `from_lsn` read from metadata *after* the lease for the new epoch was
//! granted.

pub mod config;
mod log;
pub mod msg;
pub mod owner;
pub mod recovery;
pub mod replica;
pub mod writer;

pub use config::ReplicationConfig;
pub use msg::{
    AppendMsg, Entry, EntryId, EntryKind, Epoch, FromReplica, Lsn, NackReason, Payload, ReplicaId,
    ToReplica, ENTRY_OVERHEAD_BYTES,
};
pub use owner::{AppendRefusal, OwnerCommand, OwnerEvent};
pub use recovery::Recovery;
pub use replica::{DurableState, Replica, ReplicaCommand, ReplicaEvent};
pub use writer::Writer;

#[cfg(test)]
mod tests;
