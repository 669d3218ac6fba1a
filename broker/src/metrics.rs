//! Broker counters, rendered as Prometheus text by the admin listener.
//!
//! Plain atomics: every counter is written by one hot path and read rarely, so there is no
//! registry and no locking. Object-store request counters live in `strata_tiering`'s
//! `StoreMetrics` and are rendered next to these.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub kafka_connections_total: AtomicU64,
    pub kafka_connections_open: AtomicU64,
    pub kafka_requests_total: AtomicU64,
    pub kafka_request_errors_total: AtomicU64,
    pub produce_records_total: AtomicU64,
    pub produce_bytes_total: AtomicU64,
    /// Idempotent batches answered with their original offset instead of written again.
    pub produce_duplicate_batches_total: AtomicU64,
    /// Idempotent appends refused for their sequence number or epoch.
    pub produce_sequence_errors_total: AtomicU64,
    /// Idempotent producers remembered by the sequencer, over all partitions.
    pub producer_states: AtomicU64,
    /// Producers forgotten to stay within the per-partition cap (not counting expiry).
    pub producers_evicted_total: AtomicU64,
    pub fetch_bytes_total: AtomicU64,
    pub wal_group_commits_total: AtomicU64,
    pub wal_appends_total: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub objects_uploaded_total: AtomicU64,
    pub object_bytes_uploaded_total: AtomicU64,
    pub upload_failures_total: AtomicU64,
    pub partitions_trimmed_total: AtomicU64,
    pub objects_deleted_total: AtomicU64,
    pub cold_reads_total: AtomicU64,
    pub cold_read_cache_hits_total: AtomicU64,
    /// Brokers this broker expired (their lease ran out).
    pub brokers_expired_total: AtomicU64,
    /// Other brokers' WAL streams this broker recovered and uploaded (failover).
    pub streams_recovered_total: AtomicU64,
    /// Consumer groups held by the group coordinator, and their members.
    pub groups: AtomicU64,
    pub group_members: AtomicU64,
    /// Join phases that completed with members (each one starts a generation).
    pub group_rebalances_total: AtomicU64,
    /// OffsetCommit requests written to metadata.
    pub offset_commits_total: AtomicU64,
    /// The compactor (`log/compactor.rs`): segments swapped in, blocks they replaced, segment
    /// bytes written, compactions refused as stale, failures, orphan objects deleted; and the
    /// read path's read-ahead.
    pub tier: TierMetrics,
}

#[derive(Default, Debug)]
pub struct TierMetrics {
    pub segments_total: AtomicU64,
    pub blocks_replaced_total: AtomicU64,
    pub bytes_written_total: AtomicU64,
    pub stale_total: AtomicU64,
    pub failures_total: AtomicU64,
    pub orphans_deleted_total: AtomicU64,
    pub readahead_chunks_total: AtomicU64,
}

impl TierMetrics {
    fn render(&self, out: &mut String) {
        let rows: [(&str, &AtomicU64); 7] = [
            ("strata_compaction_segments_total", &self.segments_total),
            (
                "strata_compaction_blocks_replaced_total",
                &self.blocks_replaced_total,
            ),
            (
                "strata_compaction_bytes_written_total",
                &self.bytes_written_total,
            ),
            ("strata_compaction_stale_total", &self.stale_total),
            ("strata_compaction_failures_total", &self.failures_total),
            (
                "strata_tiering_orphans_deleted_total",
                &self.orphans_deleted_total,
            ),
            (
                "strata_cold_read_readahead_chunks_total",
                &self.readahead_chunks_total,
            ),
        ];
        for (name, value) in rows {
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
    }
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Renders every counter in the Prometheus text exposition format.
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &AtomicU64); 27] = [
            (
                "strata_kafka_connections_total",
                "counter",
                &self.kafka_connections_total,
            ),
            (
                "strata_kafka_connections_open",
                "gauge",
                &self.kafka_connections_open,
            ),
            (
                "strata_kafka_requests_total",
                "counter",
                &self.kafka_requests_total,
            ),
            (
                "strata_kafka_request_errors_total",
                "counter",
                &self.kafka_request_errors_total,
            ),
            (
                "strata_produce_records_total",
                "counter",
                &self.produce_records_total,
            ),
            (
                "strata_produce_bytes_total",
                "counter",
                &self.produce_bytes_total,
            ),
            (
                "strata_produce_duplicate_batches_total",
                "counter",
                &self.produce_duplicate_batches_total,
            ),
            (
                "strata_produce_sequence_errors_total",
                "counter",
                &self.produce_sequence_errors_total,
            ),
            ("strata_producer_states", "gauge", &self.producer_states),
            (
                "strata_producers_evicted_total",
                "counter",
                &self.producers_evicted_total,
            ),
            (
                "strata_fetch_bytes_total",
                "counter",
                &self.fetch_bytes_total,
            ),
            (
                "strata_wal_group_commits_total",
                "counter",
                &self.wal_group_commits_total,
            ),
            (
                "strata_wal_appends_total",
                "counter",
                &self.wal_appends_total,
            ),
            ("strata_wal_bytes", "gauge", &self.wal_bytes),
            (
                "strata_tiering_objects_uploaded_total",
                "counter",
                &self.objects_uploaded_total,
            ),
            (
                "strata_tiering_bytes_uploaded_total",
                "counter",
                &self.object_bytes_uploaded_total,
            ),
            (
                "strata_tiering_upload_failures_total",
                "counter",
                &self.upload_failures_total,
            ),
            (
                "strata_retention_trims_total",
                "counter",
                &self.partitions_trimmed_total,
            ),
            (
                "strata_tiering_objects_deleted_total",
                "counter",
                &self.objects_deleted_total,
            ),
            ("strata_cold_reads_total", "counter", &self.cold_reads_total),
            (
                "strata_cold_read_cache_hits_total",
                "counter",
                &self.cold_read_cache_hits_total,
            ),
            (
                "strata_brokers_expired_total",
                "counter",
                &self.brokers_expired_total,
            ),
            (
                "strata_streams_recovered_total",
                "counter",
                &self.streams_recovered_total,
            ),
            ("strata_groups", "gauge", &self.groups),
            ("strata_group_members", "gauge", &self.group_members),
            (
                "strata_group_rebalances_total",
                "counter",
                &self.group_rebalances_total,
            ),
            (
                "strata_offset_commits_total",
                "counter",
                &self.offset_commits_total,
            ),
        ];
        for (name, kind, value) in rows {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        self.tier.render(out);
    }
}
