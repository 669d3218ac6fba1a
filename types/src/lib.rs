//! Shared vocabulary of StrataMQ.
//!
//! This crate sits at the bottom of the dependency graph: every other crate may use it, it uses
//! none of them. It holds only values and pure functions — no IO, no clocks, no async.
//!
//! - [`names`]: validated topic names and ids.
//! - [`batch`]: a zero-copy view of Kafka record batches (magic v2) as they are stored verbatim.
//! - [`index`]: the object-index entry that says which object holds which offsets of a partition.
//! - [`sequence`]: Kafka's idempotent-producer sequence rules, shared by the WAL topics'
//!   sequencer and metadata's direct commits.
//! - [`histogram`]: the fixed-bucket latency histogram every role's `/metrics` renders.

pub mod batch;
pub mod histogram;
pub mod index;
pub mod names;
pub mod sequence;

pub use index::BlockLocation;
pub use names::{NameError, PartitionKey, TopicId, TopicName};
