//! Broker metrics, rendered as Prometheus text by the admin listener (`docs/metrics.md`).
//!
//! Plain atomics: every counter is written by one hot path and read rarely, so there is no
//! registry crate and no locking on a write. Latencies go into [`Histogram`]s with fixed
//! log-scale buckets (one relaxed `fetch_add` per observation). Per-partition series are not
//! kept here: each [`PartitionLog`] carries its own counters ([`PartitionTraffic`]) and
//! [`Metrics::render`] walks the registry the node [attaches](Metrics::attach) at start-up.
//! Object-store request counters live in `strata_tiering`'s `StoreMetrics` and are rendered
//! next to these by the admin listener.
//!
//! *Format:* every family has `# HELP` and `# TYPE` lines and its samples right after them
//! (never interleaved with another family); durations are in seconds, sizes in bytes.

use crate::log::partition::PartitionLog;
use crate::log::registry::Registry;
use crate::meta_handle::MetaHandle;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use strata_types::PartitionKey;

#[derive(Debug, Default)]
pub struct Metrics {
    pub kafka_connections_total: AtomicU64,
    pub kafka_connections_open: AtomicU64,
    pub kafka_requests_total: AtomicU64,
    pub kafka_request_errors_total: AtomicU64,
    /// SASL authentications refused (bad password, unknown user, malformed exchange).
    pub kafka_auth_failures_total: AtomicU64,
    /// KIP-368: SASL re-authentications completed on live connections.
    pub kafka_reauthentications_total: AtomicU64,
    /// Connections closed because their SASL session expired without re-authentication.
    pub kafka_sessions_expired_total: AtomicU64,
    /// Records and bytes made durable and visible (refused and duplicate batches not counted).
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
    /// Replicas of this broker's WAL stream replaced by a spare (`wal.replica_replace_after_ms`).
    pub wal_replicas_replaced_total: AtomicU64,
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
    /// Kafka request latency by API key, from the frame read to its response written.
    pub kafka_request_seconds: ApiLatency,
    /// The sequencer's group commit: one local fdatasync, or (replicated WAL) the wait for a
    /// write quorum of replicas to have the group on disk.
    pub wal_fsync_seconds: Histogram,
    pub wal_quorum_commit_seconds: Histogram,
    /// Metadata writes through raft (proposal to applied), as the broker sees them.
    pub meta_write_seconds: Histogram,
    /// `direct` topics (`log/direct.rs`): objects committed, their bytes, the record batches
    /// they indexed (batches per object = batches / objects), idempotent batches answered as
    /// duplicates, objects not committed in time, and the time from sealing an object to its
    /// commit (PUT + `CommitDirect`).
    pub direct_objects_committed_total: AtomicU64,
    pub direct_object_bytes_total: AtomicU64,
    pub direct_batches_total: AtomicU64,
    pub direct_duplicate_batches_total: AtomicU64,
    pub direct_commit_failures_total: AtomicU64,
    pub direct_commit_seconds: Histogram,
    /// Read-cache lookups on the read path, per budget (read-ahead not counted).
    pub cache: CacheCounters,
    pub mqtt: MqttMetrics,
    /// Metadata backups to object storage (`meta_backup.rs`).
    pub meta_backup: crate::meta_backup::BackupMetrics,
    attached: Attached,
}

/// What the node hands over at start-up so that per-partition and per-group series can be
/// rendered from the live state instead of duplicated into counters.
#[derive(Default)]
struct Attached {
    registry: OnceLock<Arc<Registry>>,
    meta: OnceLock<MetaHandle>,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("registry", &self.registry.get().is_some())
            .field("meta", &self.meta.get().is_some())
            .finish()
    }
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
    /// Microseconds (exported as seconds).
    pub history_read_wait_us_total: AtomicU64,
}

impl TierMetrics {
    fn render(&self, out: &mut String) {
        let rows: [Row; 7] = [
            (
                "strata_compaction_segments_total",
                "counter",
                "Segments the compactor swapped into the index.",
                &self.segments_total,
            ),
            (
                "strata_compaction_blocks_replaced_total",
                "counter",
                "Upload blocks replaced by compacted segments.",
                &self.blocks_replaced_total,
            ),
            (
                "strata_compaction_bytes_written_total",
                "counter",
                "Segment bytes the compactor wrote to object storage.",
                &self.bytes_written_total,
            ),
            (
                "strata_compaction_stale_total",
                "counter",
                "Compactions refused by metadata as stale (the run moved meanwhile).",
                &self.stale_total,
            ),
            (
                "strata_compaction_failures_total",
                "counter",
                "Compactions that failed.",
                &self.failures_total,
            ),
            (
                "strata_tiering_orphans_deleted_total",
                "counter",
                "Unreferenced objects the orphan sweeper deleted.",
                &self.orphans_deleted_total,
            ),
            (
                "strata_cold_read_readahead_chunks_total",
                "counter",
                "Segment chunks fetched ahead of a sequential reader.",
                &self.readahead_chunks_total,
            ),
        ];
        render_rows(out, &rows);
        let name = "strata_cold_read_rate_wait_seconds_total";
        let help = "Seconds history GETs waited for cache.history_read_bytes_per_sec.";
        header(out, name, "counter", help);
        let us = self.history_read_wait_us_total.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name} {}", us as f64 / 1e6);
    }
}

/// Read-cache hits and misses per budget (`log/cache.rs`: *recent* blocks, *history* chunks).
#[derive(Default, Debug)]
pub struct CacheCounters {
    pub recent_hits: AtomicU64,
    pub recent_misses: AtomicU64,
    pub history_hits: AtomicU64,
    pub history_misses: AtomicU64,
}

/// MQTT listener gauges and counters. Connections and sessions are counted by
/// [`GaugeGuard`]s held by the connection task, so every exit path gives them back.
#[derive(Default, Debug)]
pub struct MqttMetrics {
    pub connections_total: AtomicU64,
    pub connections_open: AtomicU64,
    /// Connections past CONNACK (an accepted session on a live connection).
    pub sessions: AtomicU64,
    /// QoS 1/2 messages unacknowledged, both directions, over all connections.
    pub inflight: AtomicU64,
    /// CONNECTs refused for their credentials (`mqtt::auth`).
    pub auth_failures: AtomicU64,
    /// PUBLISHes (and wills) an ACL refused.
    pub acl_denied_publish: AtomicU64,
    /// Subscription filters an ACL refused.
    pub acl_denied_subscribe: AtomicU64,
    /// Times a connection stopped being read for its publish rate limit.
    pub throttled: AtomicU64,
    /// Deliveries dropped because a client's queue was full (QoS 0 to a slow client).
    pub dropped: AtomicU64,
}

impl MqttMetrics {
    /// Counts a connection (total and open) until the guard drops.
    pub fn connection(&self) -> GaugeGuard<'_> {
        Metrics::inc(&self.connections_total);
        GaugeGuard::new(&self.connections_open)
    }

    /// Counts an accepted session until the guard drops.
    pub fn session(&self) -> GaugeGuard<'_> {
        GaugeGuard::new(&self.sessions)
    }

    /// A per-connection share of the in-flight gauge.
    pub fn inflight(&self) -> GaugeShare<'_> {
        GaugeShare {
            gauge: &self.inflight,
            mine: 0,
        }
    }
}

/// Holds one unit of a gauge: +1 when made, −1 when dropped.
#[derive(Debug)]
pub struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    pub fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One owner's contribution to a shared gauge: `set` moves the gauge by the difference (one
/// atomic add, only when the value changed); dropping it takes the contribution back.
#[derive(Debug)]
pub struct GaugeShare<'a> {
    gauge: &'a AtomicU64,
    mine: u64,
}

impl GaugeShare<'_> {
    pub fn set(&mut self, value: u64) {
        if value != self.mine {
            // Two's-complement wrapping makes a decrease a wrapping add.
            self.gauge
                .fetch_add(value.wrapping_sub(self.mine), Ordering::Relaxed);
            self.mine = value;
        }
    }
}

impl Drop for GaugeShare<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(self.mine, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Histograms

pub use strata_types::histogram::Histogram;

fn render_histogram(out: &mut String, h: &Histogram, name: &str, help: &str) {
    header(out, name, "histogram", help);
    h.render_samples(out, name, "");
}

/// Times `fut` into `histogram` (for call sites such as metadata writes).
pub async fn timed<F: Future>(histogram: &Histogram, fut: F) -> F::Output {
    let started = Instant::now();
    let out = fut.await;
    histogram.observe(started.elapsed());
    out
}

/// Kafka API keys with their own histogram; a larger key shares the last slot (`other`).
const API_SLOTS: usize = 80;

/// One histogram per Kafka API key.
#[derive(Debug)]
pub struct ApiLatency(Box<[Histogram]>);

impl Default for ApiLatency {
    fn default() -> Self {
        ApiLatency((0..API_SLOTS).map(|_| Histogram::default()).collect())
    }
}

impl ApiLatency {
    pub fn observe(&self, api_key: i16, elapsed: Duration) {
        self.get(api_key).observe(elapsed);
    }

    pub fn get(&self, api_key: i16) -> &Histogram {
        let slot = usize::try_from(api_key)
            .unwrap_or(API_SLOTS - 1)
            .min(API_SLOTS - 1);
        &self.0[slot]
    }

    fn render(&self, out: &mut String) {
        let name = "strata_kafka_request_duration_seconds";
        header(
            out,
            name,
            "histogram",
            "Kafka request latency by API, from the request read to its response written.",
        );
        for (key, h) in self.0.iter().enumerate() {
            // Produce and Fetch always (dashboards query them); the others once used.
            if key > 1 && h.count() == 0 {
                continue;
            }
            let label = match api_name(key) {
                Some(n) => format!("api=\"{n}\""),
                None if key == API_SLOTS - 1 => "api=\"other\"".to_string(),
                None => format!("api=\"api_{key}\""),
            };
            h.render_samples(out, name, &label);
        }
    }
}

/// Kafka's API names (snake case) for the keys a client is likely to send.
fn api_name(key: usize) -> Option<&'static str> {
    Some(match key {
        0 => "produce",
        1 => "fetch",
        2 => "list_offsets",
        3 => "metadata",
        8 => "offset_commit",
        9 => "offset_fetch",
        10 => "find_coordinator",
        11 => "join_group",
        12 => "heartbeat",
        13 => "leave_group",
        14 => "sync_group",
        15 => "describe_groups",
        16 => "list_groups",
        17 => "sasl_handshake",
        18 => "api_versions",
        19 => "create_topics",
        20 => "delete_topics",
        21 => "delete_records",
        22 => "init_producer_id",
        23 => "offset_for_leader_epoch",
        24 => "add_partitions_to_txn",
        25 => "add_offsets_to_txn",
        26 => "end_txn",
        28 => "txn_offset_commit",
        29 => "describe_acls",
        32 => "describe_configs",
        33 => "alter_configs",
        35 => "describe_log_dirs",
        36 => "sasl_authenticate",
        37 => "create_partitions",
        42 => "delete_groups",
        44 => "incremental_alter_configs",
        47 => "offset_delete",
        60 => "describe_cluster",
        61 => "describe_producers",
        68 => "consumer_group_heartbeat",
        75 => "describe_topic_partitions",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Per-partition counters

/// Traffic of one partition log, written on the produce and fetch paths (one relaxed add
/// each) and read by [`Metrics::render`].
#[derive(Debug, Default)]
pub struct PartitionTraffic {
    pub bytes_in: AtomicU64,
    pub records_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub records_out: AtomicU64,
}

impl PartitionTraffic {
    /// Adds what `earlier` counted: a partition led again by this broker (a fresh log at a
    /// new lease epoch) continues its counters instead of starting them again, so its series
    /// never go back on one broker.
    pub fn carry_from(&self, earlier: &PartitionTraffic) {
        for (to, from) in [
            (&self.bytes_in, &earlier.bytes_in),
            (&self.records_in, &earlier.records_in),
            (&self.bytes_out, &earlier.bytes_out),
            (&self.records_out, &earlier.records_out),
        ] {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// A durable append of `records` records in `bytes` bytes.
    pub fn count_in(&self, bytes: usize, records: i64) {
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
        self.records_in
            .fetch_add(records.max(0) as u64, Ordering::Relaxed);
    }

    /// Record batches sent to a consumer: their bytes, and their records read off the batch
    /// headers (a malformed tail stops the count, never the fetch).
    pub fn count_out(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let records: u64 = strata_types::batch::Batches::new(data)
            .map_while(Result::ok)
            .map(|(h, _)| h.records_count.max(0) as u64)
            .sum();
        self.bytes_out
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.records_out.fetch_add(records, Ordering::Relaxed);
    }
}

/// One led partition, read once per scrape.
struct PartitionRow {
    topic: String,
    partition: u32,
    bytes_in: u64,
    records_in: u64,
    bytes_out: u64,
    records_out: u64,
    high_watermark: i64,
    log_start: i64,
    lag_offsets: i64,
    lag_bytes: u64,
    lag_seconds: f64,
}

impl PartitionRow {
    fn read(log: &PartitionLog, now: Instant) -> PartitionRow {
        let t = &log.traffic;
        let offsets = log.offsets();
        PartitionRow {
            topic: escape_label(log.topic_name.as_str()),
            partition: log.key.partition,
            bytes_in: t.bytes_in.load(Ordering::Relaxed),
            records_in: t.records_in.load(Ordering::Relaxed),
            bytes_out: t.bytes_out.load(Ordering::Relaxed),
            records_out: t.records_out.load(Ordering::Relaxed),
            high_watermark: offsets.high_watermark,
            log_start: offsets.log_start_offset,
            lag_offsets: offsets.high_watermark - offsets.uploaded_offset,
            lag_bytes: log.pending_bytes(),
            lag_seconds: log
                .oldest_pending_since()
                .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering

type Row<'a> = (&'a str, &'a str, &'a str, &'a AtomicU64);

/// The `# HELP` and `# TYPE` lines of a family.
pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn render_rows(out: &mut String, rows: &[Row<'_>]) {
    for (name, kind, help, value) in rows {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// One family with a sample per item: `name{labels} value`.
fn family<T>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    items: &[T],
    labels: impl Fn(&T) -> String,
    value: impl Fn(&T) -> String,
) {
    header(out, name, kind, help);
    for item in items {
        let _ = writeln!(out, "{name}{{{}}} {}", labels(item), value(item));
    }
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The histogram of the sequencer's group commit for this kind of WAL.
    pub fn wal_sync_histogram(&self, replicated: bool) -> &Histogram {
        if replicated {
            &self.wal_quorum_commit_seconds
        } else {
            &self.wal_fsync_seconds
        }
    }

    /// Gives the renderer the partition registry and the metadata node (start-up, once; a
    /// second call is ignored).
    pub fn attach(&self, registry: Arc<Registry>, meta: MetaHandle) {
        let _ = self.attached.registry.set(registry);
        let _ = self.attached.meta.set(meta);
    }

    /// Renders every series in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, out: &mut String) {
        let rows: [Row<'_>; 36] = [
            (
                "strata_kafka_connections_total",
                "counter",
                "Kafka connections accepted.",
                &self.kafka_connections_total,
            ),
            (
                "strata_kafka_connections_open",
                "gauge",
                "Kafka connections open now.",
                &self.kafka_connections_open,
            ),
            (
                "strata_kafka_requests_total",
                "counter",
                "Kafka requests read.",
                &self.kafka_requests_total,
            ),
            (
                "strata_kafka_request_errors_total",
                "counter",
                "Kafka requests that closed their connection (malformed or refused).",
                &self.kafka_request_errors_total,
            ),
            (
                "strata_kafka_auth_failures_total",
                "counter",
                "Kafka SASL authentications refused (bad password, unknown user, bad exchange).",
                &self.kafka_auth_failures_total,
            ),
            (
                "strata_kafka_reauthentications_total",
                "counter",
                "Kafka SASL re-authentications completed on live connections (KIP-368).",
                &self.kafka_reauthentications_total,
            ),
            (
                "strata_kafka_sessions_expired_total",
                "counter",
                "Kafka connections closed because their SASL session expired (connections_max_reauth_ms).",
                &self.kafka_sessions_expired_total,
            ),
            (
                "strata_produce_records_total",
                "counter",
                "Records made durable (Kafka and MQTT; refused and duplicate batches not counted).",
                &self.produce_records_total,
            ),
            (
                "strata_produce_bytes_total",
                "counter",
                "Record-batch bytes made durable (refused and duplicate batches not counted).",
                &self.produce_bytes_total,
            ),
            (
                "strata_produce_duplicate_batches_total",
                "counter",
                "Idempotent batches answered with their original offset, not written again.",
                &self.produce_duplicate_batches_total,
            ),
            (
                "strata_produce_sequence_errors_total",
                "counter",
                "Idempotent batches refused for their sequence number or epoch.",
                &self.produce_sequence_errors_total,
            ),
            (
                "strata_producer_states",
                "gauge",
                "Idempotent producers remembered, over all partitions.",
                &self.producer_states,
            ),
            (
                "strata_producers_evicted_total",
                "counter",
                "Idempotent producers forgotten to stay within the per-partition cap.",
                &self.producers_evicted_total,
            ),
            (
                "strata_fetch_bytes_total",
                "counter",
                "Record-batch bytes returned by Fetch.",
                &self.fetch_bytes_total,
            ),
            (
                "strata_wal_group_commits_total",
                "counter",
                "WAL group commits (one fdatasync or quorum wait each).",
                &self.wal_group_commits_total,
            ),
            (
                "strata_wal_appends_total",
                "counter",
                "WAL entries appended.",
                &self.wal_appends_total,
            ),
            (
                "strata_wal_bytes",
                "gauge",
                "Bytes the WAL holds (on disk, or retained by the replicated stream).",
                &self.wal_bytes,
            ),
            (
                "strata_tiering_objects_uploaded_total",
                "counter",
                "Upload objects written and committed to the index.",
                &self.objects_uploaded_total,
            ),
            (
                "strata_tiering_bytes_uploaded_total",
                "counter",
                "Bytes of committed upload objects.",
                &self.object_bytes_uploaded_total,
            ),
            (
                "strata_tiering_upload_failures_total",
                "counter",
                "Upload rounds that failed (PUT or index commit).",
                &self.upload_failures_total,
            ),
            (
                "strata_retention_trims_total",
                "counter",
                "Retention trims of a partition's index.",
                &self.partitions_trimmed_total,
            ),
            (
                "strata_tiering_objects_deleted_total",
                "counter",
                "Garbage objects deleted from object storage.",
                &self.objects_deleted_total,
            ),
            (
                "strata_cold_reads_total",
                "counter",
                "Reads of object-storage data (blocks or segment chunks).",
                &self.cold_reads_total,
            ),
            (
                "strata_cold_read_cache_hits_total",
                "counter",
                "Cold reads served by the read cache.",
                &self.cold_read_cache_hits_total,
            ),
            (
                "strata_brokers_expired_total",
                "counter",
                "Brokers this broker expired (their lease ran out).",
                &self.brokers_expired_total,
            ),
            (
                "strata_streams_recovered_total",
                "counter",
                "Other brokers' WAL streams this broker recovered (failover).",
                &self.streams_recovered_total,
            ),
            (
                "strata_wal_replicas_replaced_total",
                "counter",
                "Replicas of this broker's WAL stream replaced by a spare.",
                &self.wal_replicas_replaced_total,
            ),
            (
                "strata_groups",
                "gauge",
                "Consumer groups held by this coordinator.",
                &self.groups,
            ),
            (
                "strata_group_members",
                "gauge",
                "Members of the consumer groups held by this coordinator.",
                &self.group_members,
            ),
            (
                "strata_group_rebalances_total",
                "counter",
                "Consumer-group join phases completed (each starts a generation).",
                &self.group_rebalances_total,
            ),
            (
                "strata_offset_commits_total",
                "counter",
                "OffsetCommit requests written to metadata.",
                &self.offset_commits_total,
            ),
            (
                "strata_direct_objects_committed_total",
                "counter",
                "Objects of direct topics PUT and committed (CommitDirect).",
                &self.direct_objects_committed_total,
            ),
            (
                "strata_direct_object_bytes_total",
                "counter",
                "Bytes of committed direct-topic objects.",
                &self.direct_object_bytes_total,
            ),
            (
                "strata_direct_batches_total",
                "counter",
                "Record batches indexed from direct-topic objects (per object: divide by objects).",
                &self.direct_batches_total,
            ),
            (
                "strata_direct_duplicate_batches_total",
                "counter",
                "Idempotent direct-topic batches metadata found committed before (not indexed again).",
                &self.direct_duplicate_batches_total,
            ),
            (
                "strata_direct_commit_failures_total",
                "counter",
                "Direct-topic objects not PUT and committed before the commit timeout.",
                &self.direct_commit_failures_total,
            ),
        ];
        render_rows(out, &rows);
        self.tier.render(out);
        self.meta_backup.render(out);
        self.kafka_request_seconds.render(out);
        render_histogram(
            out,
            &self.wal_fsync_seconds,
            "strata_wal_fsync_duration_seconds",
            "Local WAL group commit: the fdatasync covering one group of appends.",
        );
        render_histogram(
            out,
            &self.wal_quorum_commit_seconds,
            "strata_wal_quorum_commit_duration_seconds",
            "Replicated WAL group commit: until a write quorum of replicas has the group on disk.",
        );
        render_histogram(
            out,
            &self.meta_write_seconds,
            "strata_meta_write_duration_seconds",
            "Metadata writes through raft, proposal to applied (object commits, offset commits).",
        );
        render_histogram(
            out,
            &self.direct_commit_seconds,
            "strata_direct_commit_duration_seconds",
            "Direct topics: from sealing an object to its commit (PUT + CommitDirect).",
        );
        self.render_cache(out);
        self.render_mqtt(out);
        self.render_partitions(out);
        self.render_group_lag(out);
    }

    fn render_cache(&self, out: &mut String) {
        let c = &self.cache;
        for (name, help, recent, history) in [
            (
                "strata_cache_hits_total",
                "Read-cache lookups on the read path that hit, per budget.",
                &c.recent_hits,
                &c.history_hits,
            ),
            (
                "strata_cache_misses_total",
                "Read-cache lookups on the read path that missed (one GET each), per budget.",
                &c.recent_misses,
                &c.history_misses,
            ),
        ] {
            header(out, name, "counter", help);
            let _ = writeln!(
                out,
                "{name}{{cache=\"recent\"}} {}",
                recent.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "{name}{{cache=\"history\"}} {}",
                history.load(Ordering::Relaxed)
            );
        }
    }

    fn render_mqtt(&self, out: &mut String) {
        let m = &self.mqtt;
        let rows: [Row<'_>; 7] = [
            (
                "strata_mqtt_connections_total",
                "counter",
                "MQTT connections accepted.",
                &m.connections_total,
            ),
            (
                "strata_mqtt_connections_open",
                "gauge",
                "MQTT connections open now.",
                &m.connections_open,
            ),
            (
                "strata_mqtt_sessions",
                "gauge",
                "MQTT sessions connected now (past CONNACK).",
                &m.sessions,
            ),
            (
                "strata_mqtt_inflight_messages",
                "gauge",
                "MQTT QoS 1/2 messages unacknowledged, both directions, all connections.",
                &m.inflight,
            ),
            (
                "strata_mqtt_auth_failures_total",
                "counter",
                "MQTT CONNECTs refused for missing or bad credentials.",
                &m.auth_failures,
            ),
            (
                "strata_mqtt_throttled_total",
                "counter",
                "Times an MQTT connection stopped being read for its publish rate limit.",
                &m.throttled,
            ),
            (
                "strata_mqtt_dropped_total",
                "counter",
                "MQTT deliveries dropped because the client's queue was full.",
                &m.dropped,
            ),
        ];
        render_rows(out, &rows);
        let name = "strata_mqtt_acl_denied_total";
        header(
            out,
            name,
            "counter",
            "MQTT publishes (wills included) and subscription filters an ACL refused, per action.",
        );
        for (action, n) in [
            ("publish", &m.acl_denied_publish),
            ("subscribe", &m.acl_denied_subscribe),
        ] {
            let _ = writeln!(
                out,
                "{name}{{action=\"{action}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }

    /// Per-partition series for the partitions this broker leads (a partition's traffic is
    /// reported by its leader only, so a sum over brokers counts it once), and the node's
    /// upload lag.
    fn render_partitions(&self, out: &mut String) {
        let now = Instant::now();
        let rows: Vec<PartitionRow> = match self.attached.registry.get() {
            Some(registry) => registry
                .topics()
                .iter()
                .flat_map(|t| t.partitions.iter())
                .filter(|p| registry.leads(&p.key))
                .map(|p| PartitionRow::read(p, now))
                .collect(),
            None => Vec::new(),
        };
        let labels =
            |r: &PartitionRow| format!("topic=\"{}\",partition=\"{}\"", r.topic, r.partition);
        type Column = (
            &'static str,
            &'static str,
            &'static str,
            fn(&PartitionRow) -> String,
        );
        let columns: [Column; 9] = [
            (
                "strata_partition_bytes_in_total",
                "counter",
                "Record-batch bytes made durable in the partition (produce).",
                |r| r.bytes_in.to_string(),
            ),
            (
                "strata_partition_records_in_total",
                "counter",
                "Records made durable in the partition (produce).",
                |r| r.records_in.to_string(),
            ),
            (
                "strata_partition_bytes_out_total",
                "counter",
                "Record-batch bytes of the partition returned by Fetch.",
                |r| r.bytes_out.to_string(),
            ),
            (
                "strata_partition_records_out_total",
                "counter",
                "Records of the partition returned by Fetch.",
                |r| r.records_out.to_string(),
            ),
            (
                "strata_partition_high_watermark",
                "gauge",
                "The partition's high watermark (next offset to be written).",
                |r| r.high_watermark.to_string(),
            ),
            (
                "strata_partition_log_start_offset",
                "gauge",
                "The partition's first offset (after retention).",
                |r| r.log_start.to_string(),
            ),
            (
                "strata_partition_upload_lag_offsets",
                "gauge",
                "Offsets durable in the WAL but not yet in object storage.",
                |r| r.lag_offsets.to_string(),
            ),
            (
                "strata_partition_upload_lag_bytes",
                "gauge",
                "Bytes durable in the WAL but not yet in object storage.",
                |r| r.lag_bytes.to_string(),
            ),
            (
                "strata_partition_upload_lag_seconds",
                "gauge",
                "Age of the oldest batch not yet in object storage (0 when all is uploaded).",
                |r| r.lag_seconds.to_string(),
            ),
        ];
        for (name, kind, help, value) in columns {
            family(out, name, kind, help, &rows, labels, value);
        }
        let lag_bytes: u64 = rows.iter().map(|r| r.lag_bytes).sum();
        let lag_seconds = rows.iter().map(|r| r.lag_seconds).fold(0.0, f64::max);
        header(
            out,
            "strata_upload_lag_bytes",
            "gauge",
            "Bytes durable in the WAL but not yet in object storage, all led partitions.",
        );
        let _ = writeln!(out, "strata_upload_lag_bytes {lag_bytes}");
        header(
            out,
            "strata_upload_lag_seconds",
            "gauge",
            "Age of the oldest batch not yet in object storage, all led partitions.",
        );
        let _ = writeln!(out, "strata_upload_lag_seconds {lag_seconds}");
    }

    /// Consumer lag: the high watermark minus the committed offset, for every committed offset
    /// of a partition this broker leads.
    fn render_group_lag(&self, out: &mut String) {
        struct Lag {
            group: String,
            topic: String,
            partition: u32,
            lag: i64,
        }
        let mut lags = Vec::new();
        if let (Some(registry), Some(meta)) =
            (self.attached.registry.get(), self.attached.meta.get())
        {
            // Copy the commits out first: the metadata lock is not held while the registry is.
            let commits: Vec<(String, PartitionKey, i64)> = {
                let state = meta.read();
                state
                    .offset_groups()
                    .flat_map(|g| {
                        state.group_offsets(g).map(move |(topic, partition, o)| {
                            (g.to_string(), PartitionKey { topic, partition }, o.offset)
                        })
                    })
                    .collect()
            };
            for (group, key, committed) in commits {
                if !registry.leads(&key) {
                    continue;
                }
                if let Some(log) = registry.partition(&key) {
                    lags.push(Lag {
                        group: escape_label(&group),
                        topic: escape_label(log.topic_name.as_str()),
                        partition: key.partition,
                        lag: (log.high_watermark() - committed).max(0),
                    });
                }
            }
        }
        family(
            out,
            "strata_group_lag_offsets",
            "gauge",
            "Consumer-group lag: high watermark minus committed offset, per partition.",
            &lags,
            |l| {
                format!(
                    "group=\"{}\",topic=\"{}\",partition=\"{}\"",
                    l.group, l.topic, l.partition
                )
            },
            |l| l.lag.to_string(),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The WAL replica server (`wal` role)

/// The series of this node's WAL replica server: its group commits' durations, connections,
/// and per stream (label `stream`, the owning broker's stream id) the counters of
/// [`strata_wal::net::StreamStats`]. Rendered by every node that serves the `wal` role,
/// with or without the broker role.
pub fn render_replica(out: &mut String, replica: &strata_wal::net::ReplicaServerHandle) {
    let name = "strata_wal_replica_fdatasync_duration_seconds";
    header(
        out,
        name,
        "histogram",
        "WAL replica group commit: writing a stream's received entries and their fdatasync.",
    );
    replica.sync_seconds().render_samples(out, name, "");
    let stats = replica.stats();
    for (name, help, value) in [
        (
            "strata_wal_replica_connections",
            "Connections from stream owners (brokers) open now.",
            stats.connections,
        ),
        (
            "strata_wal_replica_streams",
            "WAL streams this replica holds.",
            stats.streams.len() as u64,
        ),
        (
            "strata_wal_replica_streams_failed",
            "Streams stopped because their store failed (full disk, IO error); see /health.",
            stats.streams_failed as u64,
        ),
    ] {
        header(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    type Column = (
        &'static str,
        &'static str,
        &'static str,
        fn(&strata_wal::net::StreamStats) -> u64,
    );
    let columns: [Column; 7] = [
        (
            "strata_wal_replica_stream_appends_total",
            "counter",
            "Append requests received, by stream.",
            |s| s.appends,
        ),
        (
            "strata_wal_replica_stream_entries_written_total",
            "counter",
            "Entries written to the stream's segments.",
            |s| s.entries_written,
        ),
        (
            "strata_wal_replica_stream_syncs_total",
            "counter",
            "Group commits (fdatasyncs) of the stream.",
            |s| s.syncs,
        ),
        (
            "strata_wal_replica_stream_bytes",
            "gauge",
            "Bytes the stream's segments hold on disk.",
            |s| s.bytes_on_disk,
        ),
        (
            "strata_wal_replica_stream_durable_lsn",
            "gauge",
            "The stream's last entry on disk (fdatasync'ed).",
            |s| s.durable_lsn,
        ),
        (
            "strata_wal_replica_stream_sealed_epoch",
            "gauge",
            "The highest owner epoch the stream was sealed at (older owners are fenced).",
            |s| s.sealed_epoch,
        ),
        (
            "strata_wal_replica_stream_failed",
            "gauge",
            "1 when the stream stopped because its store failed.",
            |s| u64::from(s.failed),
        ),
    ];
    for (name, kind, help, value) in columns {
        family(
            out,
            name,
            kind,
            help,
            &stats.streams,
            |s| format!("stream=\"{}\"", s.stream),
            |s| value(s).to_string(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_log_carries_the_traffic_on() {
        let old = PartitionTraffic::default();
        old.count_in(100, 4);
        let fresh = PartitionTraffic::default();
        fresh.carry_from(&old);
        fresh.count_in(10, 1);
        assert_eq!(fresh.bytes_in.load(Ordering::Relaxed), 110);
        assert_eq!(fresh.records_in.load(Ordering::Relaxed), 5);
        assert_eq!(fresh.bytes_out.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn gauge_share_moves_by_the_difference() {
        let g = AtomicU64::new(0);
        {
            let mut a = GaugeShare { gauge: &g, mine: 0 };
            let mut b = GaugeShare { gauge: &g, mine: 0 };
            a.set(5);
            b.set(2);
            a.set(1);
            assert_eq!(g.load(Ordering::Relaxed), 3);
            let _c = GaugeGuard::new(&g);
            assert_eq!(g.load(Ordering::Relaxed), 4);
            drop(b);
            assert_eq!(g.load(Ordering::Relaxed), 2);
        }
        assert_eq!(g.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn every_family_is_declared_once() {
        let m = Metrics::default();
        m.kafka_request_seconds
            .observe(18, Duration::from_millis(1));
        let mut out = String::new();
        m.render(&mut out);
        let mut seen = std::collections::HashSet::new();
        for line in out.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(seen.insert(name.to_string()), "{name} declared twice");
        }
        assert!(out.contains("api=\"api_versions\""));
        assert!(out.contains("strata_kafka_request_duration_seconds_count{api=\"produce\"} 0"));
    }
}
