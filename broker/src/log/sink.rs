//! Where the sequencer writes: the single-node WAL in this process, or this broker's
//! replicated WAL stream (DESIGN.md §2 step 2).
//!
//! Both have the group-commit shape the sequencer needs: many `append`s (each gets the next
//! LSN), then one `sync` that returns once every appended entry is durable — on the local disk
//! (one fdatasync), or on a write quorum of WAL replicas (each fdatasyncs; the stream owner's
//! pipeline carries the entries as they are appended, so `sync` waits for one round trip, not
//! one per entry).

use strata_wal::net::{OwnerError, StreamOwner};
use strata_wal::{Wal, WalError};

pub enum WalSink {
    Local(Wal),
    Replicated {
        owner: StreamOwner,
        /// The last LSN appended (what `sync` waits for).
        appended: u64,
    },
}

/// Why an append or sync failed, with what the sequencer should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Retriable: the WAL holds `wal.bytes_max` of un-uploaded data.
    #[error("the WAL is full")]
    Full,
    /// This entry can never be written.
    #[error("the entry is larger than the WAL accepts")]
    TooLarge,
    /// Another broker took the stream: this broker must stop writing (fail-stop).
    #[error("the WAL stream was taken over by a newer epoch")]
    Fenced,
    /// The WAL failed (a write or fdatasync error): fail-stop.
    #[error("{0}")]
    Failed(String),
}

impl From<OwnerError> for SinkError {
    fn from(e: OwnerError) -> SinkError {
        match e {
            OwnerError::Full { .. } => SinkError::Full,
            OwnerError::TooLarge { .. } => SinkError::TooLarge,
            OwnerError::Fenced { .. } => SinkError::Fenced,
            other => SinkError::Failed(other.to_string()),
        }
    }
}

impl WalSink {
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SinkError> {
        match self {
            WalSink::Local(wal) => wal.append(payload).map_err(|e| match e {
                WalError::Full { .. } => SinkError::Full,
                WalError::EntryTooLarge { .. } => SinkError::TooLarge,
                other => SinkError::Failed(other.to_string()),
            }),
            WalSink::Replicated { owner, appended } => {
                let lsn = owner.append(payload)?;
                *appended = lsn;
                Ok(lsn)
            }
        }
    }

    /// Makes every appended entry durable. Blocks the calling (sequencer) thread.
    pub fn sync(&mut self) -> Result<(), SinkError> {
        let _span =
            crate::telemetry::wal_sync_span(self.is_replicated(), || self.last_lsn()).entered();
        match self {
            WalSink::Local(wal) => wal.sync().map_err(|e| SinkError::Failed(e.to_string())),
            WalSink::Replicated { owner, appended } => {
                owner.flush();
                owner.wait_committed_blocking(*appended)?;
                Ok(())
            }
        }
    }

    /// Entries up to `upto` are in object storage (and, for a stream, metadata says so).
    pub fn trim(&mut self, upto: u64) -> Result<(), String> {
        match self {
            WalSink::Local(wal) => wal.trim(upto).map_err(|e| e.to_string()),
            WalSink::Replicated { owner, .. } => {
                owner.trim(upto.min(owner.committed_lsn()));
                Ok(())
            }
        }
    }

    /// A handle on the replicated stream's owner (for replica replacement), if replicated.
    pub fn stream_owner(&self) -> Option<StreamOwner> {
        match self {
            WalSink::Local(_) => None,
            WalSink::Replicated { owner, .. } => Some(owner.clone()),
        }
    }

    /// Whether `sync` waits for a write quorum of replicas (else one local fdatasync).
    pub fn is_replicated(&self) -> bool {
        matches!(self, WalSink::Replicated { .. })
    }

    pub fn last_lsn(&self) -> u64 {
        match self {
            WalSink::Local(wal) => wal.last_lsn(),
            WalSink::Replicated { owner, .. } => owner.last_lsn(),
        }
    }

    /// Bytes the WAL holds: on disk for the local WAL, retained (not yet trimmed) for a stream.
    pub fn bytes(&self) -> u64 {
        match self {
            WalSink::Local(wal) => wal.bytes_on_disk(),
            WalSink::Replicated { owner, .. } => owner.retained_bytes(),
        }
    }
}
