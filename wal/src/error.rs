//! The one error type of `strata-wal`.
//!
//! Variants name the condition and carry what the caller needs to act on it. The broker decides
//! with [`WalError::is_retryable`] whether to answer producers with a retriable error (the WAL is
//! full, or a transient file-system error left the WAL consistent) or to stop using the WAL.

use std::io;
use std::path::PathBuf;

use crate::format::FORMAT_VERSION;

/// The operation an [`WalError::Io`] failed in, as the `op` field.
///
/// Matching on these is how [`WalError::is_retryable`] classifies IO errors; they are public so
/// the broker can name them in metrics.
pub mod io_op {
    pub const CREATE_DIR: &str = "create WAL directory";
    pub const OPEN_DIR: &str = "open WAL directory";
    pub const LIST_DIR: &str = "list WAL directory";
    pub const SYNC_DIR: &str = "fsync WAL directory";
    pub const READ_SEGMENT: &str = "read segment";
    pub const OPEN_SEGMENT: &str = "open segment";
    pub const TRUNCATE_SEGMENT: &str = "truncate torn tail of segment";
    /// Creating the next segment file. Nothing was written, the WAL stays usable: retryable.
    pub const CREATE_SEGMENT: &str = "create segment";
    pub const WRITE_SEGMENT: &str = "write segment";
    pub const SYNC_SEGMENT: &str = "fdatasync segment";
    /// Deleting a trimmed segment. The WAL still lists it, `trim` can be retried: retryable.
    pub const REMOVE_SEGMENT: &str = "remove trimmed segment";
    /// Deleting a segment that holds only entries after a truncation point (`truncate_after`).
    pub const REMOVE_TRUNCATED_SEGMENT: &str = "remove truncated segment";
    /// Cutting the segment that holds the truncation point (`truncate_after`).
    pub const CUT_SEGMENT: &str = "cut segment at the truncation point";
    /// Reading back a segment to find a record's byte position (`truncate_after`).
    pub const SCAN_SEGMENT: &str = "scan segment for a record";
    /// Writing the marker file that makes a `reset_to` durable before anything is deleted.
    pub const WRITE_RESET_MARKER: &str = "write reset marker";
    /// Deleting a segment during `reset_to` (or while finishing an interrupted reset).
    pub const REMOVE_RESET_SEGMENT: &str = "remove segment of a reset";
    /// Renaming the reset marker into the new, empty segment.
    pub const RENAME_RESET_MARKER: &str = "rename reset marker";
    /// Deleting a reset marker that never became durable (found by `open`).
    pub const REMOVE_RESET_MARKER: &str = "remove torn reset marker";
    /// Reading a replica stream's seal file.
    pub const READ_SEAL: &str = "read seal file";
    /// Writing, syncing or renaming a replica stream's seal file.
    pub const WRITE_SEAL: &str = "write seal file";
}

/// Everything that can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file-system operation failed. A failed write or fsync also poisons the [`crate::Wal`]:
    /// every later call returns [`WalError::Poisoned`].
    #[error("WAL I/O error: {op} {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// A segment holds damaged or out-of-order data that is not a torn tail. Fatal: recovery
    /// cannot decide what is lost, an operator has to look at the named byte.
    #[error("WAL segment {} is corrupt at byte offset {offset}: {reason}", .path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A segment was written in a format version this build does not read (a newer binary wrote
    /// it). Fatal.
    #[error(
        "WAL segment {} has format version {version}; this build reads version {}",
        .path.display(),
        FORMAT_VERSION
    )]
    UnsupportedVersion { path: PathBuf, version: u32 },
    /// The WAL holds `wal_bytes_max` worth of entries that are not yet in object storage.
    /// Retryable: appends succeed again once `trim` frees whole segments.
    #[error(
        "WAL is full: {bytes} live bytes, wal_bytes_max is {max}; retry after the WAL is trimmed"
    )]
    Full { bytes: u64, max: u64 },
    /// The payload is larger than `entry_bytes_max`.
    #[error("WAL entry of {len} bytes exceeds entry_bytes_max {max}")]
    EntryTooLarge { len: usize, max: u32 },
    /// A [`crate::WalConfig`] field is out of range; `key` names it.
    #[error("invalid WAL config `{key}`: {reason}")]
    InvalidConfig { key: &'static str, reason: String },
    /// `trim` was asked to drop entries that were never appended: a caller bug.
    #[error("cannot trim the WAL up to lsn {upto}: the last appended lsn is {last_lsn}")]
    TrimAheadOfLog { upto: u64, last_lsn: u64 },
    /// `truncate_after` was given a point outside `first_lsn - 1 ..= last_lsn` of the entries the
    /// WAL holds: a caller bug.
    #[error("cannot truncate the WAL after lsn {after}: it holds lsns {first_lsn}..={last_lsn}")]
    TruncateOutOfRange {
        after: u64,
        first_lsn: u64,
        last_lsn: u64,
    },
    /// `reset_to` was given a next LSN at or below an entry the WAL has: LSNs never repeat.
    #[error(
        "cannot reset the WAL to continue at lsn {next_lsn}: the last appended lsn is {last_lsn}"
    )]
    ResetBehindLog { next_lsn: u64, last_lsn: u64 },
    /// An earlier write or fsync failed, so what is on disk is unknown (after a failed fsync the
    /// kernel may have dropped the dirty pages and marked them clean). This instance refuses all
    /// further work. Reopening the directory in the same boot can read those never-persisted
    /// pages back from the page cache, so the safe response is to treat this WAL replica as lost.
    #[error(
        "WAL is unusable after an earlier failed {op} on {} ({cause})",
        .path.display()
    )]
    Poisoned {
        path: PathBuf,
        op: &'static str,
        cause: String,
    },
}

impl WalError {
    /// Whether the same call can succeed later on the same [`crate::Wal`] without operator action:
    /// [`WalError::Full`] (after a trim), and IO errors that left the WAL consistent (creating a
    /// new segment, deleting a trimmed one). Everything else is fatal for the instance or a
    /// caller bug.
    pub fn is_retryable(&self) -> bool {
        match self {
            WalError::Full { .. } => true,
            WalError::Io { op, .. } => matches!(*op, io_op::CREATE_SEGMENT | io_op::REMOVE_SEGMENT),
            WalError::Corrupt { .. }
            | WalError::UnsupportedVersion { .. }
            | WalError::EntryTooLarge { .. }
            | WalError::InvalidConfig { .. }
            | WalError::TrimAheadOfLog { .. }
            | WalError::TruncateOutOfRange { .. }
            | WalError::ResetBehindLog { .. }
            | WalError::Poisoned { .. } => false,
        }
    }
}
