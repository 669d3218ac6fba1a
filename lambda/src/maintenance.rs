//! The scheduled handler: one round of retention, then of compaction, over every partition.
//!
//! An EventBridge schedule (`rate(5 minutes)`, say) invokes the function with a
//! `"Scheduled Event"`. Each round reads the metadata state once through the remote client:
//!
//! 1. retention: `plan_trims` (the topic's `retention.ms` / `retention.bytes`, else the
//!    configured defaults, as the brokers' `tiering.retention_*`) and one `TrimPartition` per
//!    partition it names;
//! 2. compaction: for each partition, the first run the size-tiered `plan` picks is rewritten
//!    as one segment and swapped in with `CompactPartition` (`compactor::compact_run`).
//!
//! Both are the brokers' own planning and code; brokers run them too. Running both is safe:
//! metadata refuses a stale compaction (the new segment is deleted at once) and a trim that
//! is already done. Deleting garbage objects and the orphan sweeper stay on the brokers (the
//! sweeper LISTs the bucket, which a short invocation should not do).

use crate::{now_ms, App};
use serde::Serialize;
use strata_broker::log::compactor::{compact_run, plan};
use strata_broker::log::retention::plan_trims;
use strata_meta::{Command, CommandResult};
use strata_types::{BlockLocation, PartitionKey};

/// What one round did.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub partitions_trimmed: u32,
    pub segments_written: u32,
    /// Index blocks before and after the round, over all partitions.
    pub blocks_before: u64,
    pub blocks_after: u64,
    /// One line per step that failed (it is retried at the next round).
    pub errors: Vec<String>,
}

/// Runs one round; failures are reported in the summary, never as an invocation error (the
/// next scheduled round retries).
pub async fn run(app: &App) -> Summary {
    let mut summary = Summary::default();
    let state = match app.meta.state().await {
        Ok(s) => s,
        Err(e) => {
            summary.errors.push(format!("metadata unavailable: {e}"));
            return summary;
        }
    };
    summary.blocks_before = block_count(&state);
    let now = now_ms();
    for (key, cut) in plan_trims(&state, now, app.config.retention_defaults) {
        let cmd = Command::TrimPartition {
            topic: key.topic,
            partition: key.partition,
            before_offset: cut,
            now_ms: now,
        };
        match app.meta.write(cmd).await {
            Ok(CommandResult::PartitionTrimmed { .. }) => summary.partitions_trimmed += 1,
            Ok(other) => summary
                .errors
                .push(format!("trim of {key:?} to {cut} refused: {other:?}")),
            Err(e) => summary.errors.push(format!("trim of {key:?} failed: {e}")),
        }
    }
    // Plan compaction on the state after the trims (a trimmed run would be refused as stale).
    let state = match app.meta.state().await {
        Ok(s) => s,
        Err(e) => {
            summary.errors.push(format!("metadata unavailable: {e}"));
            return summary;
        }
    };
    let mut runs: Vec<(PartitionKey, Vec<BlockLocation>)> = Vec::new();
    for meta in state.topics() {
        for partition in 0..meta.partitions {
            let blocks: Vec<&BlockLocation> = state.blocks(meta.id, partition).collect();
            if let Some(range) = plan(&blocks, app.config.policy, now) {
                let key = PartitionKey {
                    topic: meta.id,
                    partition,
                };
                runs.push((key, blocks[range].iter().map(|b| (*b).clone()).collect()));
            }
        }
    }
    drop(state);
    for (key, run) in runs {
        let write = |cmd| app.meta.write(cmd);
        match compact_run(
            &app.store,
            &app.metrics,
            app.config.node_id,
            app.config.policy,
            key,
            &run,
            write,
        )
        .await
        {
            Ok(true) => summary.segments_written += 1,
            Ok(false) => {}
            Err(e) => summary
                .errors
                .push(format!("compaction of {key:?} failed: {e}")),
        }
    }
    match app.meta.state().await {
        Ok(s) => summary.blocks_after = block_count(&s),
        Err(e) => summary.errors.push(format!("metadata unavailable: {e}")),
    }
    tracing::info!(
        trimmed = summary.partitions_trimmed,
        segments = summary.segments_written,
        errors = summary.errors.len(),
        "maintenance round"
    );
    summary
}

fn block_count(state: &strata_meta::MetaState) -> u64 {
    state
        .topics()
        .map(|t| {
            (0..t.partitions)
                .map(|p| state.blocks(t.id, p).count() as u64)
                .sum::<u64>()
        })
        .sum()
}
