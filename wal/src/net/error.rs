//! Errors of the network driver.
//!
//! Two enums because they have different callers who decide different things: [`NetError`] is
//! for whoever starts a replica server (bad config, a port in use, a corrupt stream store: exit
//! or not), [`OwnerError`] is for the broker's produce path (answer the producer with a
//! retriable error, or stop).

use std::io;
use std::net::SocketAddr;

use crate::WalError;

/// Starting a [`super::ReplicaServer`] failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A config field is out of range; `key` names it.
    #[error("invalid WAL replica config `{key}`: {reason}")]
    InvalidConfig { key: &'static str, reason: String },
    /// The listen address cannot be bound (in use, no permission). Environment, not data.
    #[error("cannot listen for WAL replication on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    /// The replica's directory cannot be listed or created.
    #[error("WAL replica directory {}: {op}: {source}", .path.display())]
    Io {
        path: std::path::PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// A stream store did not open. [`WalError::Corrupt`] (naming the file and byte offset) and
    /// [`WalError::UnsupportedVersion`] are fatal: an operator has to look.
    #[error("WAL replica stream {stream}: {source}")]
    Store { stream: u64, source: WalError },
}

impl NetError {
    /// The replica's data is damaged or from a newer build (the broker's exit code 3), as
    /// opposed to a bad environment or config.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            NetError::Store {
                source: WalError::Corrupt { .. } | WalError::UnsupportedVersion { .. },
                ..
            }
        )
    }
}

/// Why a [`super::StreamOwner`] call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnerError {
    /// A newer owner sealed the stream: this broker lost it. Producers get a retriable error
    /// (the partition moved); nothing this owner does becomes visible any more.
    #[error("WAL stream fenced: a newer owner sealed it at epoch {sealed_epoch}")]
    Fenced { sealed_epoch: u64 },
    /// Recovery did not get a quorum of replicas within `recover_timeout_ms`. Retryable.
    #[error(
        "WAL stream {stream} epoch {epoch}: no quorum of replicas within {waited_ms} ms \
         ({replicas_up} of {replicas} connected)"
    )]
    NoQuorum {
        stream: u64,
        epoch: u64,
        waited_ms: u64,
        replicas_up: usize,
        replicas: usize,
    },
    /// The owner retains `retained_bytes_max` of entries not yet trimmed: the WAL is full until
    /// uploads catch up. Retryable.
    #[error(
        "WAL is full: {retained_bytes} bytes retained, retained_bytes_max is \
         {retained_bytes_max}; retry after uploads trim it"
    )]
    Full {
        retained_bytes: u64,
        retained_bytes_max: u64,
    },
    /// The payload is larger than `entry_bytes_max`. Permanent for this payload.
    #[error("WAL entry of {len} bytes exceeds entry_bytes_max {entry_bytes_max}")]
    TooLarge { len: usize, entry_bytes_max: u32 },
    /// [`super::StreamOwner::close`] was called (or every handle dropped).
    #[error("WAL stream owner is closed")]
    Closed,
    /// An [`super::OwnerConfig`] field (or the epoch / LSN passed to `recover`) is out of range.
    #[error("invalid WAL owner config `{key}`: {reason}")]
    InvalidConfig { key: &'static str, reason: String },
}

impl OwnerError {
    /// Whether a producer should be told to retry (possibly on another broker): the WAL is
    /// full, the stream moved, or replicas are unreachable for now.
    pub fn is_retryable(&self) -> bool {
        match self {
            OwnerError::Fenced { .. } | OwnerError::NoQuorum { .. } | OwnerError::Full { .. } => {
                true
            }
            OwnerError::TooLarge { .. } | OwnerError::Closed | OwnerError::InvalidConfig { .. } => {
                false
            }
        }
    }
}
