//! Partition logs: the in-memory tail, the WAL sequencer, the uploader, the compactor and the
//! read path.

pub mod cache;
pub mod compactor;
pub mod direct;
pub mod entry;
pub mod partition;
pub mod producer;
pub mod reader;
pub mod registry;
pub mod retention;
pub mod sequencer;
pub mod sink;
pub mod uploader;
