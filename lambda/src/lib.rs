//! AWS Lambda entry points for StrataMQ — a placeholder.
//!
//! The serverless issue adds produce/fetch over HTTP in `direct` storage mode (acknowledged once
//! the object is in object storage, no local state) and a scheduled compaction entry. Until
//! then this crate only fixes its place in the workspace and its dependency direction: it may
//! depend on `strata-types`, `strata-tiering` and `strata-meta`, never on the broker.

/// The storage mode the Lambda entry points will use.
pub const STORAGE_MODE: &str = "direct";
