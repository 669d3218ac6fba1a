//! `strata-wal`: the local write-ahead log of a StrataMQ broker (or WAL replica).
//!
//! A synchronous, single-owner storage engine. The broker drives it from one dedicated OS thread
//! that does group commit: [`Wal::append`] many entries, then one [`Wal::sync`] (one write(2) and
//! one fdatasync for the whole batch). Payloads are opaque bytes; each entry gets a dense LSN,
//! starting at 1. Once the entries up to some LSN are in object storage, [`Wal::trim`] deletes
//! the segment files that hold only those entries. [`Wal::open`] recovers after a crash.
//!
//! ```text
//! let (mut wal, recovered) = Wal::open(cfg)?;       // replay `recovered` (LSN order)
//! let lsn = wal.append(batch)?;                     // buffered, not durable
//! wal.sync()?;                                      // now every lsn <= wal.last_lsn() is durable
//! wal.trim(uploaded_upto)?;                         // after the upload is committed to meta
//! ```
//!
//! # On disk
//!
//! One directory per WAL holding segment files named `{first_lsn:020}.wal`, each a 24-byte
//! versioned header followed by records `len u32 | crc32c u32 | lsn u64 | payload`
//! (little-endian; the CRC covers lsn and payload). The full byte layout is in [`mod@format`].
//!
//! # Recovery
//!
//! `open` reads every segment in LSN order and checks headers, CRCs, `len <= entry_bytes_max`,
//! and that LSNs are dense within and across segments. Damage at the end of the newest segment
//! with nothing intact after it (a partial record, a checksum mismatch, zero-filled space) is a
//! torn tail: it is cut off with `set_len` + fsync and logged with `tracing::warn`. Any other
//! damage is a fatal [`WalError::Corrupt`] naming the file and byte offset. The precise rules and
//! their known limit are in the `recovery` module docs.
//!
//! # Invariants
//!
//! - Only the newest segment can be torn: a segment is fdatasync'ed before its successor is
//!   created.
//! - The newest segment file always exists and its name carries the next LSN, so LSNs never
//!   restart or repeat a durable entry's LSN, even after everything was trimmed.
//! - Segment bookkeeping (first/last LSN, bytes) is kept in memory; only `open` lists the
//!   directory.
//! - After a failed write or fsync the instance is poisoned ([`WalError::Poisoned`]): the page
//!   cache may have dropped the failed pages, so retrying could report data durable that is not
//!   (PostgreSQL's "fsyncgate").
//!
//! # Boundaries
//!
//! The WAL never reads the clock or looks inside payloads, and spawns one thread only when
//! asked to: with [`WalConfig::background_unlink`] a trimmed segment's file is deleted by a
//! thread of its own, so a trim does not hold up the appends behind it. It does not take a
//! lock on the directory: one process must own it (the broker's data-dir lock).
//!
//! # Replication
//!
//! [`replication`] holds the pure cores of the replicated WAL (issue 3): the stream owner's
//! [`replication::Recovery`] and [`replication::Writer`], and the [`replication::Replica`]. They
//! decide epochs, fencing, quorum commits, divergence and recovery; they do no IO and read no
//! clock.
//!
//! [`net`] is their IO driver over TCP (port [`net::WAL_PORT_DEFAULT`], 1778):
//!
//! - [`net::ReplicaServer`], the WAL role: one [`net::store::StreamStore`] (stream entry format
//!   v1 — `epoch | kind | payload` records in [`Wal`] segments — plus a seal file) and one
//!   `Replica` core per stream, driven by a dedicated OS thread per stream that group-commits
//!   (one fdatasync per round of requests).
//! - [`net::StreamOwner`], the broker side: `recover` (seal, agree on the tail, re-replicate it
//!   behind a barrier), then non-blocking `append` + `flush`, `wait_committed` (blocking or
//!   async), `trim` after uploads. The core sits behind one short mutex; per replica a reader
//!   and a writer task and bounded queues; a tick task drives the timers.
//! - [`net::frame`], the versioned, CRC-checked wire format, which refuses malformed input
//!   before it reaches a core (the cores assert their inputs).
//!
//! For the replica's store the WAL has two more operations: [`Wal::truncate_after`] (drop a
//! divergent suffix) and [`Wal::reset_to`] (become empty and continue at a later LSN, when a
//! trim passes the end; crash-safe through a `{next_lsn:020}.reset` marker that `open`
//! finishes or discards).

// One exception, with its SAFETY comments: `sched`'s call into pthreads.
#![deny(unsafe_code)]

mod config;
mod error;
pub mod format;
pub mod net;
mod recovery;
pub mod replication;
mod sched;
mod unlink;
mod wal;

pub use config::{
    WalConfig, ENTRY_BYTES_MAX_CEILING, ENTRY_BYTES_MAX_DEFAULT, SEGMENT_BYTES_MAX_DEFAULT,
    WAL_BYTES_MAX_DEFAULT, WRITE_BUFFER_BYTES_MAX,
};
pub use error::{io_op, WalError};
pub use sched::{enter_realtime, REALTIME_PRIORITY_MAX};
pub use unlink::{shrink_for_delete, SHRINK_STEP_BYTES};
pub use wal::Wal;

/// An entry returned by [`Wal::open`]: intact, durable, in LSN order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredEntry {
    pub lsn: u64,
    pub payload: Vec<u8>,
}
