//! Configuration of a [`crate::Wal`] and every limit the crate enforces, in one place.

use std::path::PathBuf;

use crate::format::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::WalError;

/// Default for [`WalConfig::segment_bytes_max`]: 64 MiB.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// Default for [`WalConfig::wal_bytes_max`]: 2 GiB.
pub const WAL_BYTES_MAX_DEFAULT: u64 = 2 << 30;
/// Default for [`WalConfig::entry_bytes_max`]: 8 MiB, above Kafka's default `message.max.bytes`.
pub const ENTRY_BYTES_MAX_DEFAULT: u32 = 8 << 20;
/// Upper bound for [`WalConfig::entry_bytes_max`]: appends copy the payload into the write
/// buffer and recovery holds a whole segment in memory, so entries stay well below `u32::MAX`.
pub const ENTRY_BYTES_MAX_CEILING: u32 = 1 << 30;
/// The write buffer is written to the segment file once it holds this many bytes, and in every
/// `sync`. A single larger entry is buffered whole.
pub const WRITE_BUFFER_BYTES_MAX: usize = 1 << 20;

/// Where the WAL lives and how big it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// Directory holding the segment files; created if missing. One WAL per directory.
    pub dir: PathBuf,
    /// Roll to a new segment file once the current one reaches this size. An append that would
    /// take a non-empty segment past it starts a new segment instead, so a segment exceeds it
    /// only when it holds a single entry that alone is larger.
    pub segment_bytes_max: u64,
    /// Refuse appends (WalError::Full, retryable) when the WAL's live bytes on disk exceed this.
    /// An append that would take [`crate::Wal::bytes_on_disk`] past it is refused.
    pub wal_bytes_max: u64,
    /// Largest payload accepted by append (WalError::EntryTooLarge).
    pub entry_bytes_max: u32,
    /// `trim` hands the files of trimmed segments to a thread of their own instead of
    /// deleting them before it returns (unlinking a large segment and fsyncing the directory
    /// would otherwise hold up every append behind the trim). Same order and crash rules;
    /// see `crate::unlink`. [`crate::Wal::wait_unlinked`] waits for them.
    pub background_unlink: bool,
}

impl WalConfig {
    /// A config for `dir` with the default limits.
    pub fn new(dir: impl Into<PathBuf>) -> WalConfig {
        WalConfig {
            dir: dir.into(),
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            wal_bytes_max: WAL_BYTES_MAX_DEFAULT,
            entry_bytes_max: ENTRY_BYTES_MAX_DEFAULT,
            background_unlink: false,
        }
    }

    /// Checks every field; the error names the offending key.
    pub fn validate(&self) -> Result<(), WalError> {
        if self.dir.as_os_str().is_empty() {
            return Err(invalid("dir", "must not be empty".to_string()));
        }
        if self.entry_bytes_max == 0 || self.entry_bytes_max > ENTRY_BYTES_MAX_CEILING {
            return Err(invalid(
                "entry_bytes_max",
                format!(
                    "{} is outside 1..={ENTRY_BYTES_MAX_CEILING}",
                    self.entry_bytes_max
                ),
            ));
        }
        let segment_min = SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 1;
        if self.segment_bytes_max < segment_min {
            return Err(invalid(
                "segment_bytes_max",
                format!(
                    "{} is below {segment_min} (segment header and one record)",
                    self.segment_bytes_max
                ),
            ));
        }
        let wal_min = SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + u64::from(self.entry_bytes_max);
        if self.wal_bytes_max < wal_min {
            return Err(invalid(
                "wal_bytes_max",
                format!(
                    "{} is below {wal_min}: a trimmed WAL must still take one entry of \
                     entry_bytes_max {}",
                    self.wal_bytes_max, self.entry_bytes_max
                ),
            ));
        }
        Ok(())
    }
}

fn invalid(key: &'static str, reason: String) -> WalError {
    WalError::InvalidConfig { key, reason }
}
