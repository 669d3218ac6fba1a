//! The StrataMQ broker: protocol front-ends, partition logs, and node assembly.
//!
//! See `ARCHITECTURE.md` at the repository root for the map.

pub mod admin;
pub mod bench;
pub mod cluster;
pub mod config;
pub mod export;
pub mod groups;
pub mod kafka;
pub mod listener;
pub mod log;
pub mod meta_backup;
pub mod meta_handle;
pub mod metrics;
pub mod moves;
pub mod mqtt;
pub mod node;
pub mod peer;
pub mod process_metrics;
pub mod producer_ids;
pub mod progress;
pub mod records;
pub mod takeover;
pub mod telemetry;
pub mod topic_configs;
