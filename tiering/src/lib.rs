//! The object tier of StrataMQ: how history is laid out in object storage and how it gets there.
//!
//! - [`object`]: the object format — blocks of many partitions packed into one object with an
//!   index footer. Pure: no IO, no clock.
//! - [`segment`]: the compacted segment format — one partition's batches in chunks, with an
//!   offset and time index in the footer. Pure.
//! - [`store`]: [`ObjectStore`], a thin, cheaply cloned handle on an OpenDAL operator built from
//!   a URL (`fs://`, `memory://`, `s3://`, `gcs://`, `azblob://`, `webhdfs://`), with retries,
//!   timeouts, one-line errors that say whether to retry, and request counters. A GET that
//!   arrives in pieces is gathered into a recycled buffer (`pool`).
//!
//! *Boundary:* this is the only crate that knows OpenDAL. Nothing outside it names an
//! `opendal` type; callers see [`ObjectStore`] and [`TieringError`].
//!
//! *Invariant:* the object store is never listed in steady state. What exists is what the
//! metadata index says exists (DESIGN.md §2.4); the only unindexed keys this crate writes are
//! the short-lived start-up probes under [`store::PROBE_PREFIX`]. [`ObjectStore::list`] exists
//! for the orphan sweeper (keys the index does not reference) and for operators, never for a
//! request path.

pub mod object;
mod pool;
pub mod segment;
pub mod store;

pub use object::{
    decode_footer, decode_footer_entries, decode_footer_suffix, footer_suffix_len, verify_block,
    FooterEntry, ObjectBuilder,
};
pub use segment::{decode_segment_index, ChunkEntry, SegmentBuilder, SegmentIndex};
pub use store::{
    ListedObject, ObjectStore, StoreConfig, StoreMetrics, StoreMetricsSnapshot, StoreOp,
};

/// Everything that can go wrong in the object tier. Every message is one line and names the
/// store URL (with secrets redacted) and/or the object key; [`TieringError::is_retryable`]
/// carries the decision the caller has to make.
#[derive(Debug, thiserror::Error)]
pub enum TieringError {
    /// The object-store URL cannot be used. Permanent: fix the configuration.
    #[error("object store URL `{url}` is invalid: {reason}")]
    BadUrl { url: String, reason: String },

    /// An object key that no store should be given (empty, absolute, `..`, too long). Permanent:
    /// a bug in the caller.
    #[error("object key `{key}` is invalid: {reason}")]
    BadKey { key: String, reason: String },

    /// The object does not exist. Permanent.
    #[error("object `{key}` not found in {url}")]
    NotFound { url: String, key: String },

    /// The credentials in use may not do this. Permanent until the permissions change.
    #[error("{op} of `{key}` in {url} was denied: {detail}")]
    PermissionDenied {
        url: String,
        op: StoreOp,
        key: String,
        detail: String,
    },

    /// The store says its configuration is wrong (missing region, no bucket, bad credentials
    /// file). Permanent: fix the configuration.
    #[error("{op} of `{key}` in {url} failed on configuration: {detail}")]
    ConfigInvalid {
        url: String,
        op: StoreOp,
        key: String,
        detail: String,
    },

    /// The store failed in a way that may pass: 5xx, throttling, a timeout, a dropped
    /// connection — after the retry layer gave up. Retryable: back off and try again.
    #[error("{op} of `{key}` in {url} failed (retryable): {detail}")]
    Unavailable {
        url: String,
        op: StoreOp,
        key: String,
        detail: String,
    },

    /// The store refused the request for a reason retrying will not fix (unsupported
    /// operation, a path that is a directory, a rejected argument). Permanent.
    #[error("{op} of `{key}` in {url} was rejected: {detail}")]
    Rejected {
        url: String,
        op: StoreOp,
        key: String,
        detail: String,
    },

    /// The start-up probe did not finish in time: the endpoint is down, blackholed or far too
    /// slow. Retryable (the store may come up), but a broker should not start serving.
    #[error("object store {url} did not answer the start-up probe within {timeout_ms} ms")]
    Unreachable { url: String, timeout_ms: u64 },

    /// A ranged read asked for bytes the object does not have (or got fewer). Permanent: the
    /// index and the object disagree.
    #[error("range {start}..{end} of `{key}` in {url} is not available: {detail}")]
    RangeNotSatisfied {
        url: String,
        key: String,
        start: u64,
        end: u64,
        detail: String,
    },

    /// The start-up probe read back different bytes than it wrote. Permanent: the store is
    /// not a store.
    #[error(
        "start-up probe `{key}` in {url} read back {got} bytes that differ from the {put} written"
    )]
    ProbeMismatch {
        url: String,
        key: String,
        put: usize,
        got: usize,
    },

    /// The object's footer or trailer fails a check (magic, CRC, bounds, version). Permanent:
    /// the object is damaged or not ours.
    #[error("object `{key}` is corrupt: {reason}")]
    ObjectCorrupt { key: String, reason: String },

    /// A block's bytes do not match the CRC32C (or length) in its object's footer. Permanent
    /// for these bytes; re-reading may help only if the damage happened in transit.
    #[error("block at {position} of `{key}` fails its check: {len} bytes with CRC32C {computed:#010x}, expected {expected_len} bytes with {stored:#010x}")]
    BlockChecksumMismatch {
        key: String,
        position: u64,
        len: u64,
        expected_len: u64,
        stored: u32,
        computed: u32,
    },
}

impl TieringError {
    /// True when the same request may succeed later without any change to configuration or
    /// data: the caller should back off and retry (the uploader keeps the data in the WAL).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Unreachable { .. })
    }

    /// True when the error says the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}
