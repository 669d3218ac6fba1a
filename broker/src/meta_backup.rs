//! Metadata backups in object storage, and reading them back for `strata meta restore`.
//!
//! The meta **leader** (and only it) uploads, under `meta/` in the node's object store:
//!
//! - a **snapshot** of the whole [`MetaState`] when it starts leading, then every
//!   `meta.backup_interval_ms` if the state changed: `meta/snapshots/{index:020}.snap`, where
//!   `index` is the raft log index of the last entry in it;
//! - **the log since**: every entry applied after the first snapshot of its lead, in batches
//!   of consecutive entries at most every `meta.backup_log_ms`:
//!   `meta/log/{first:020}-{last:020}.log` holds exactly the entries `first..=last`.
//!
//! The entries come from the state machine's applied-entry feed
//! ([`MetaNode::subscribe_applied`]), so the apply path only clones a command into a bounded
//! broadcast channel; snapshots are cloned under the state's read lock (as raft's own snapshot
//! builder does) and encoded and uploaded on other threads. A feed that lagged, a jump in the
//! indexes (a snapshot installed from another node) or a lost lead breaks the chain: the next
//! leader round starts again with a snapshot. Log batches of a chain are uploaded only after
//! its first snapshot, in order; a failed upload is retried at the next round (and counted).
//! After each snapshot the oldest ones beyond `meta.backup_keep` are deleted, with the log
//! batches that end at or before the oldest kept snapshot. These are the only LISTs outside
//! the orphan sweeper: of `meta/` only, once per snapshot.
//!
//! A restore ([`read_backup`]) takes the newest snapshot that decodes, then the batches that
//! continue it without a gap (overlapping batches, written by two leaders around a change, hold
//! the same committed entries), and stops cleanly at the first gap.
//!
//! # Object format (version 1)
//!
//! Both kinds share one frame, little-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic: `STRMSNAP` (snapshot) or `STRMLOG_` (log batch) |
//! | 4 | format version, `u32` = 1 |
//! | 8 | snapshot: its index; log batch: `first` |
//! | 8 | snapshot: its index again; log batch: `last` |
//! | 8 | body length in bytes, `u64` |
//! | 4 | CRC32C of the body |
//! | n | body: JSON. Snapshot: the [`MetaState`] (the same serde form as raft snapshots). Log batch: an array of `{"index": u64, "command": Command or null}`, indexes `first..=last` in order |
//!
//! The orphan sweeper never touches `meta/`: it lists only the data prefixes.

use crate::metrics::Metrics;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_meta::state::Command;
use strata_meta::{MetaNode, MetaState};
use strata_tiering::ObjectStore;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// Where snapshots live in the store.
pub const SNAPSHOT_PREFIX: &str = "meta/snapshots/";
/// Where log batches live in the store.
pub const LOG_PREFIX: &str = "meta/log/";
/// Format version of both object kinds (see the module docs).
pub const BACKUP_FORMAT_VERSION: u32 = 1;
const SNAPSHOT_MAGIC: &[u8; 8] = b"STRMSNAP";
const LOG_MAGIC: &[u8; 8] = b"STRMLOG_";
const HEADER_BYTES: usize = 8 + 4 + 8 + 8 + 8 + 4;
/// Most entries in one log batch object.
pub const LOG_BATCH_ENTRIES_MAX: usize = 10_000;
/// Most applied entries held while waiting for upload; beyond it the chain restarts with a
/// snapshot (the store is too slow or down for long).
pub const PENDING_ENTRIES_MAX: usize = 200_000;
/// Largest backup object a restore reads (a sanity bound against a corrupt length).
pub const BACKUP_OBJECT_BYTES_MAX: u64 = 16 << 30;

/// The backup's tuning (`meta.backup_*`).
#[derive(Clone, Debug)]
pub struct BackupConfig {
    pub snapshot_interval: Duration,
    pub log_interval: Duration,
    pub keep: usize,
}

/// `strata_meta_backup_*` series.
#[derive(Debug, Default)]
pub struct BackupMetrics {
    pub snapshots_total: AtomicU64,
    pub log_batches_total: AtomicU64,
    pub entries_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub failures_total: AtomicU64,
    pub objects_deleted_total: AtomicU64,
    pub chain_restarts_total: AtomicU64,
    /// Raft log index up to which metadata is in object storage (0: nothing yet).
    pub backed_up_index: AtomicU64,
}

impl BackupMetrics {
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &str, &AtomicU64); 8] = [
            (
                "strata_meta_backup_snapshots_total",
                "counter",
                "Metadata snapshots this node uploaded to object storage (as meta leader).",
                &self.snapshots_total,
            ),
            (
                "strata_meta_backup_log_batches_total",
                "counter",
                "Batches of applied metadata log entries uploaded.",
                &self.log_batches_total,
            ),
            (
                "strata_meta_backup_entries_total",
                "counter",
                "Metadata log entries uploaded in log batches.",
                &self.entries_total,
            ),
            (
                "strata_meta_backup_bytes_total",
                "counter",
                "Bytes of metadata snapshots and log batches uploaded.",
                &self.bytes_total,
            ),
            (
                "strata_meta_backup_failures_total",
                "counter",
                "Metadata backup uploads or prunes that failed (they are retried).",
                &self.failures_total,
            ),
            (
                "strata_meta_backup_objects_deleted_total",
                "counter",
                "Old metadata snapshots and log batches deleted (beyond meta.backup_keep).",
                &self.objects_deleted_total,
            ),
            (
                "strata_meta_backup_chain_restarts_total",
                "counter",
                "Times the backup log chain broke (lag, lost lead) and restarted with a snapshot.",
                &self.chain_restarts_total,
            ),
            (
                "strata_meta_backup_index",
                "gauge",
                "Raft log index up to which this node has put metadata into object storage.",
                &self.backed_up_index,
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and the byte format

pub fn snapshot_key(index: u64) -> String {
    format!("{SNAPSHOT_PREFIX}{index:020}.snap")
}

pub fn log_key(first: u64, last: u64) -> String {
    format!("{LOG_PREFIX}{first:020}-{last:020}.log")
}

/// The index of a snapshot key, `None` for any other key.
pub fn parse_snapshot_key(key: &str) -> Option<u64> {
    let name = key.strip_prefix(SNAPSHOT_PREFIX)?.strip_suffix(".snap")?;
    (name.len() == 20).then(|| name.parse().ok()).flatten()
}

/// `(first, last)` of a log batch key, `None` for any other key.
pub fn parse_log_key(key: &str) -> Option<(u64, u64)> {
    let name = key.strip_prefix(LOG_PREFIX)?.strip_suffix(".log")?;
    let (a, b) = name.split_once('-')?;
    if a.len() != 20 || b.len() != 20 {
        return None;
    }
    let (first, last) = (a.parse().ok()?, b.parse().ok()?);
    (first <= last).then_some((first, last))
}

/// Why a backup object cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupFormatError {
    #[error("not a metadata backup object (bad magic)")]
    Magic,
    #[error("format version {0}; this build reads version {BACKUP_FORMAT_VERSION}")]
    Version(u32),
    #[error("truncated: {got} bytes, the header says {want}")]
    Truncated { got: usize, want: u64 },
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("undecodable body: {0}")]
    Body(String),
    #[error("the header says {header}, the body {body}")]
    Mismatch { header: String, body: String },
}

fn frame(magic: &[u8; 8], a: u64, b: u64, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&BACKUP_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&a.to_le_bytes());
    out.extend_from_slice(&b.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    Bytes::from(out)
}

fn unframe<'a>(
    magic: &[u8; 8],
    bytes: &'a [u8],
) -> Result<(u64, u64, &'a [u8]), BackupFormatError> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != magic {
        return Err(BackupFormatError::Magic);
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let version = u32_at(8);
    if version != BACKUP_FORMAT_VERSION {
        return Err(BackupFormatError::Version(version));
    }
    let (a, b, len, stored) = (u64_at(12), u64_at(20), u64_at(28), u32_at(36));
    let body = &bytes[HEADER_BYTES..];
    if body.len() as u64 != len {
        return Err(BackupFormatError::Truncated {
            got: bytes.len(),
            want: HEADER_BYTES as u64 + len,
        });
    }
    let computed = crc32c::crc32c(body);
    if computed != stored {
        return Err(BackupFormatError::Checksum { stored, computed });
    }
    Ok((a, b, body))
}

pub fn encode_snapshot(state: &MetaState) -> Bytes {
    // Plain data with string keys: serializing cannot fail.
    let body = serde_json::to_vec(state).expect("MetaState serializes to JSON");
    let index = state.last_applied();
    frame(SNAPSHOT_MAGIC, index, index, &body)
}

/// Decodes a snapshot object; its state's applied index is the one in the header.
pub fn decode_snapshot(bytes: &[u8]) -> Result<MetaState, BackupFormatError> {
    let (index, again, body) = unframe(SNAPSHOT_MAGIC, bytes)?;
    let state: MetaState =
        serde_json::from_slice(body).map_err(|e| BackupFormatError::Body(e.to_string()))?;
    if index != again || state.last_applied() != index {
        return Err(BackupFormatError::Mismatch {
            header: format!("index {index}"),
            body: format!("index {}", state.last_applied()),
        });
    }
    Ok(state)
}

/// One logged entry: `command` is `None` for raft's blank and membership entries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoggedEntry {
    pub index: u64,
    pub command: Option<Command>,
}

#[derive(Serialize)]
struct LoggedEntryRef<'a> {
    index: u64,
    command: Option<&'a Command>,
}

fn encode_log(entries: &[(u64, Option<Arc<Command>>)]) -> Bytes {
    assert!(!entries.is_empty(), "a log batch holds at least one entry");
    let first = entries[0].0;
    let last = entries[entries.len() - 1].0;
    debug_assert!(entries.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    let refs: Vec<LoggedEntryRef<'_>> = entries
        .iter()
        .map(|(index, command)| LoggedEntryRef {
            index: *index,
            command: command.as_deref(),
        })
        .collect();
    let body = serde_json::to_vec(&refs).expect("commands serialize to JSON");
    frame(LOG_MAGIC, first, last, &body)
}

/// Decodes a log batch object: entries `first..=last`, consecutive.
pub fn decode_log(bytes: &[u8]) -> Result<(u64, u64, Vec<LoggedEntry>), BackupFormatError> {
    let (first, last, body) = unframe(LOG_MAGIC, bytes)?;
    let entries: Vec<LoggedEntry> =
        serde_json::from_slice(body).map_err(|e| BackupFormatError::Body(e.to_string()))?;
    let consecutive = entries
        .iter()
        .enumerate()
        .all(|(i, e)| e.index == first + i as u64);
    if !consecutive || entries.last().map(|e| e.index) != Some(last) {
        return Err(BackupFormatError::Mismatch {
            header: format!("entries {first}..={last}"),
            body: format!(
                "{} entries from {:?} to {:?}",
                entries.len(),
                entries.first().map(|e| e.index),
                entries.last().map(|e| e.index)
            ),
        });
    }
    Ok((first, last, entries))
}

// ---------------------------------------------------------------------------------------------
// The upload task

/// Starts the backup task of a node that runs the meta role, unless `meta.backup_interval_ms`
/// is 0.
pub fn spawn(
    config: &crate::config::NodeConfig,
    meta: &MetaNode,
    store: &ObjectStore,
    metrics: &Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let m = &config.file.meta;
    if m.backup_interval_ms == 0 {
        return None;
    }
    let backup = BackupConfig {
        snapshot_interval: Duration::from_millis(m.backup_interval_ms),
        log_interval: Duration::from_millis(m.backup_log_ms),
        keep: m.backup_keep as usize,
    };
    Some(tokio::spawn(run(
        meta.clone(),
        store.clone(),
        metrics.clone(),
        backup,
        shutdown,
    )))
}

/// The log chain of one lead: everything after `snapshot_index` up to `covered` was applied
/// here, in order; `pending` is what is not uploaded yet.
struct Chain {
    /// Tells the chains of successive leads apart (an upload finishing after a restart must
    /// not touch the new chain).
    generation: u64,
    snapshot_index: u64,
    /// Whether the chain's first snapshot is in the store (log batches wait for it).
    snapshot_stored: bool,
    covered: u64,
    pending: Vec<(u64, Option<Arc<Command>>)>,
}

enum Job {
    Snapshot {
        generation: u64,
        index: u64,
        first_of_chain: bool,
    },
    Log {
        generation: u64,
        entries: usize,
        last: u64,
    },
}

type JobResult = Result<u64, String>;

/// Runs the backup until `shutdown`. Uploads only while this node leads the meta group, and
/// listens to the applied-entry feed only then (so followers clone nothing on apply).
pub async fn run(
    meta: MetaNode,
    store: ObjectStore,
    metrics: Arc<Metrics>,
    config: BackupConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let m = &metrics.meta_backup;
    let mut feed: Option<broadcast::Receiver<strata_meta::store::AppliedEntry>> = None;
    let mut chain: Option<Chain> = None;
    let mut generation = 0u64;
    let mut last_snapshot = Instant::now();
    let mut last_log = Instant::now();
    let mut in_flight: Option<(Job, JoinHandle<JobResult>)> = None;
    let mut tick = tokio::time::interval(config.log_interval.min(Duration::from_millis(1000)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let restart = |chain: &mut Option<Chain>, why: &str| {
        if chain.take().is_some() {
            m.chain_restarts_total.fetch_add(1, Ordering::Relaxed);
            tracing::info!(why, "metadata backup chain restarts with a snapshot");
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            received = async { feed.as_mut().expect("guarded").recv().await }, if feed.is_some() => match received {
                Ok(entry) => {
                    if let Some(c) = chain.as_mut() {
                        if entry.index <= c.covered {
                            // Already in the chain's snapshot.
                        } else if entry.index == c.covered + 1 {
                            c.covered = entry.index;
                            c.pending.push((entry.index, entry.command));
                            if c.pending.len() > PENDING_ENTRIES_MAX {
                                restart(&mut chain, "too many entries wait for upload");
                            }
                        } else {
                            restart(&mut chain, "the applied indexes jumped (snapshot installed)");
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "metadata backup fell behind the applied entries");
                    restart(&mut chain, "the applied-entry feed lagged");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            done = async { (&mut in_flight.as_mut().expect("guarded").1).await }, if in_flight.is_some() => {
                let (job, _) = in_flight.take().expect("guarded");
                let result = done.unwrap_or_else(|e| Err(format!("backup task failed: {e}")));
                let current = |g: u64| chain.as_ref().is_some_and(|c| c.generation == g);
                match (job, result) {
                    (Job::Snapshot { generation: g, index, first_of_chain }, Ok(bytes)) => {
                        m.snapshots_total.fetch_add(1, Ordering::Relaxed);
                        m.bytes_total.fetch_add(bytes, Ordering::Relaxed);
                        m.backed_up_index.fetch_max(index, Ordering::Relaxed);
                        if first_of_chain && current(g) {
                            if let Some(c) = chain.as_mut() {
                                c.snapshot_stored = true;
                            }
                        }
                        tracing::debug!(index, bytes, "metadata snapshot backed up");
                        let (deleted, failed) = prune(&store, config.keep).await;
                        m.objects_deleted_total.fetch_add(deleted, Ordering::Relaxed);
                        if let Some(why) = failed {
                            m.failures_total.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%why, "pruning old metadata backups failed; retried after the next snapshot");
                        }
                    }
                    (Job::Log { generation: g, entries, last }, Ok(bytes)) => {
                        m.log_batches_total.fetch_add(1, Ordering::Relaxed);
                        m.entries_total.fetch_add(entries as u64, Ordering::Relaxed);
                        m.bytes_total.fetch_add(bytes, Ordering::Relaxed);
                        m.backed_up_index.fetch_max(last, Ordering::Relaxed);
                        if current(g) {
                            if let Some(c) = chain.as_mut() {
                                // The uploaded entries are the first `entries` pending ones.
                                debug_assert_eq!(c.pending.get(entries - 1).map(|e| e.0), Some(last));
                                c.pending.drain(..entries.min(c.pending.len()));
                            }
                        }
                    }
                    (job, Err(why)) => {
                        m.failures_total.fetch_add(1, Ordering::Relaxed);
                        let what = match job { Job::Snapshot { .. } => "snapshot", Job::Log { .. } => "log batch" };
                        tracing::warn!(what, %why, "metadata backup upload failed; retrying");
                        if let Job::Snapshot { generation: g, first_of_chain: true, .. } = job {
                            if current(g) {
                                // Start the chain again from a fresh snapshot.
                                chain = None;
                            }
                        }
                    }
                }
            }
            _ = tick.tick() => {
                if !meta.is_leader() {
                    restart(&mut chain, "this node no longer leads the meta group");
                    feed = None;
                    continue;
                }
                if in_flight.is_some() {
                    continue;
                }
                let snapshot_due = match &chain {
                    None => true,
                    Some(c) => c.snapshot_stored
                        && c.covered > c.snapshot_index
                        && last_snapshot.elapsed() >= config.snapshot_interval,
                };
                if snapshot_due {
                    let first_of_chain = chain.is_none();
                    if first_of_chain {
                        // Subscribe before reading the state: the feed then carries exactly
                        // the entries after the snapshot (a lag restarts the chain).
                        feed = Some(meta.subscribe_applied());
                    }
                    // Clone under the read lock (what raft's own snapshot builder does), encode
                    // and upload elsewhere.
                    let state = meta.read().clone();
                    let index = state.last_applied();
                    match chain.as_mut() {
                        Some(c) => c.snapshot_index = index.max(c.snapshot_index),
                        None => {
                            generation += 1;
                            chain = Some(Chain {
                                generation,
                                snapshot_index: index,
                                snapshot_stored: false,
                                covered: index,
                                pending: Vec::new(),
                            })
                        }
                    }
                    last_snapshot = Instant::now();
                    let store = store.clone();
                    let handle = tokio::spawn(async move {
                        let body = tokio::task::spawn_blocking(move || encode_snapshot(&state))
                            .await
                            .map_err(|e| format!("encoding failed: {e}"))?;
                        let len = body.len() as u64;
                        store.put(&snapshot_key(index), body).await.map_err(|e| e.to_string())?;
                        Ok(len)
                    });
                    in_flight = Some((Job::Snapshot { generation, index, first_of_chain }, handle));
                    continue;
                }
                let Some(c) = chain.as_ref() else { continue };
                if !c.snapshot_stored || c.pending.is_empty() || last_log.elapsed() < config.log_interval {
                    continue;
                }
                last_log = Instant::now();
                let n = c.pending.len().min(LOG_BATCH_ENTRIES_MAX);
                let batch: Vec<(u64, Option<Arc<Command>>)> = c.pending[..n].to_vec();
                let (first, last) = (batch[0].0, batch[n - 1].0);
                let store = store.clone();
                let handle = tokio::spawn(async move {
                    let body = tokio::task::spawn_blocking(move || encode_log(&batch))
                        .await
                        .map_err(|e| format!("encoding failed: {e}"))?;
                    let len = body.len() as u64;
                    store.put(&log_key(first, last), body).await.map_err(|e| e.to_string())?;
                    Ok(len)
                });
                in_flight = Some((Job::Log { generation: c.generation, entries: n, last }, handle));
            }
        }
    }
    // An upload in flight at shutdown finishes on its own or is dropped with the runtime; the
    // next leader starts with a snapshot either way.
}

/// Deletes snapshots beyond the newest `keep`, and log batches that end at or before the oldest
/// kept snapshot. Answers how many objects went, and why it stopped early if it did.
async fn prune(store: &ObjectStore, keep: usize) -> (u64, Option<String>) {
    let mut deleted = 0;
    let snapshots = match store.list(SNAPSHOT_PREFIX).await {
        Ok(listed) => listed,
        Err(e) => return (0, Some(e.to_string())),
    };
    let mut indexes: Vec<u64> = snapshots
        .iter()
        .filter_map(|o| parse_snapshot_key(&o.key))
        .collect();
    indexes.sort_unstable_by_key(|i| std::cmp::Reverse(*i));
    if indexes.len() <= keep.max(1) {
        return (0, None);
    }
    let oldest_kept = indexes[keep.max(1) - 1];
    for index in &indexes[keep.max(1)..] {
        if let Err(e) = store.delete(&snapshot_key(*index)).await {
            return (deleted, Some(e.to_string()));
        }
        deleted += 1;
    }
    let logs = match store.list(LOG_PREFIX).await {
        Ok(listed) => listed,
        Err(e) => return (deleted, Some(e.to_string())),
    };
    for o in logs {
        if parse_log_key(&o.key).is_some_and(|(_, last)| last <= oldest_kept) {
            if let Err(e) = store.delete(&o.key).await {
                return (deleted, Some(e.to_string()));
            }
            deleted += 1;
        }
    }
    (deleted, None)
}

// ---------------------------------------------------------------------------------------------
// Reading a backup (restore)

/// What [`read_backup`] found and rebuilt.
#[derive(Debug)]
pub struct RestoredBackup {
    pub state: MetaState,
    pub snapshot_index: u64,
    pub snapshot_key: String,
    /// Log entries applied after the snapshot.
    pub entries_applied: u64,
    /// Log batch objects read.
    pub batches_read: usize,
    /// Why replay stopped before the newest logged entry, if it did (a gap or an unreadable
    /// batch); `None` when every batch that continues the snapshot was applied.
    pub stopped: Option<String>,
    /// Snapshots newer than the one used that could not be decoded.
    pub skipped_snapshots: Vec<String>,
}

/// Why a backup cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadBackupError {
    #[error("no metadata snapshot under {prefix} in {url}: nothing to restore (was a meta leader running with backups against this store?)")]
    NoSnapshot { url: String, prefix: &'static str },
    #[error("no metadata snapshot in {url} could be decoded: {reasons}")]
    NoUsableSnapshot { url: String, reasons: String },
    #[error("object store: {0}")]
    Store(String),
}

/// Reads the newest usable snapshot and applies the log batches that continue it, in order,
/// stopping at the first gap.
pub async fn read_backup(store: &ObjectStore) -> Result<RestoredBackup, ReadBackupError> {
    let store_err = |e: strata_tiering::TieringError| ReadBackupError::Store(e.to_string());
    let mut snapshots: Vec<(u64, String)> = store
        .list(SNAPSHOT_PREFIX)
        .await
        .map_err(store_err)?
        .into_iter()
        .filter_map(|o| parse_snapshot_key(&o.key).map(|i| (i, o.key)))
        .collect();
    if snapshots.is_empty() {
        return Err(ReadBackupError::NoSnapshot {
            url: store.url().to_string(),
            prefix: SNAPSHOT_PREFIX,
        });
    }
    snapshots.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
    let mut skipped = Vec::new();
    let mut found = None;
    for (index, key) in snapshots {
        let bytes = match store.get(&key).await {
            Ok(bytes) => bytes,
            Err(e) => {
                skipped.push(format!("{key}: {e}"));
                continue;
            }
        };
        match tokio::task::spawn_blocking(move || decode_snapshot(&bytes)).await {
            Ok(Ok(state)) if state.last_applied() == index => {
                found = Some((index, key, state));
                break;
            }
            Ok(Ok(state)) => skipped.push(format!(
                "{key}: holds index {}, not {index}",
                state.last_applied()
            )),
            Ok(Err(e)) => skipped.push(format!("{key}: {e}")),
            Err(e) => skipped.push(format!("{key}: {e}")),
        }
    }
    let Some((snapshot_index, snapshot_key, mut state)) = found else {
        return Err(ReadBackupError::NoUsableSnapshot {
            url: store.url().to_string(),
            reasons: skipped.join("; "),
        });
    };
    let mut batches: Vec<(u64, u64, String)> = store
        .list(LOG_PREFIX)
        .await
        .map_err(store_err)?
        .into_iter()
        .filter_map(|o| parse_log_key(&o.key).map(|(f, l)| (f, l, o.key)))
        .filter(|(_, last, _)| *last > snapshot_index)
        .collect();
    batches.sort_unstable();
    let newest_logged = batches.iter().map(|b| b.1).max().unwrap_or(snapshot_index);
    let mut entries_applied = 0;
    let mut batches_read = 0;
    let mut stopped = None;
    loop {
        let next = state.last_applied() + 1;
        // Of the batches holding `next`, the one reaching furthest.
        let Some((_, last, key)) = batches
            .iter()
            .filter(|(first, last, _)| *first <= next && next <= *last)
            .max_by_key(|(_, last, _)| *last)
            .cloned()
        else {
            if next <= newest_logged {
                stopped = Some(format!(
                    "no log batch holds entry {next} (the log continues at a later index); \
                     stopped at {}",
                    next - 1
                ));
            }
            break;
        };
        let decoded = match store.get(&key).await {
            Ok(bytes) => decode_log(&bytes).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let entries = match decoded {
            Ok((_, _, entries)) => entries,
            Err(why) => {
                // Another batch may cover the same entries; else this is the gap.
                batches.retain(|b| b.2 != key);
                tracing::warn!(%key, %why, "skipping an unreadable metadata log batch");
                if stopped.is_none() {
                    stopped = Some(format!("{key}: {why}"));
                }
                continue;
            }
        };
        batches_read += 1;
        for e in entries {
            if strata_meta::backup::replay(&mut state, e.index, e.command.as_ref()) {
                entries_applied += 1;
            }
        }
        debug_assert_eq!(state.last_applied(), last);
        // A later batch continued past an unreadable one: that was no gap.
        if stopped
            .as_deref()
            .is_some_and(|s| s.starts_with(LOG_PREFIX))
        {
            stopped = None;
        }
    }
    Ok(RestoredBackup {
        state,
        snapshot_index,
        snapshot_key,
        entries_applied,
        batches_read,
        stopped,
        skipped_snapshots: skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_reject_strangers() {
        assert_eq!(snapshot_key(42), "meta/snapshots/00000000000000000042.snap");
        assert_eq!(parse_snapshot_key(&snapshot_key(42)), Some(42));
        assert_eq!(
            log_key(3, 9),
            "meta/log/00000000000000000003-00000000000000000009.log"
        );
        assert_eq!(parse_log_key(&log_key(3, 9)), Some((3, 9)));
        for bad in [
            "meta/snapshots/42.snap",
            "meta/snapshots/00000000000000000042.json",
            "meta/log/00000000000000000009-00000000000000000003.log",
            "meta/log/00000000000000000003.log",
            "data/00000000000000000003-00000000000000000009.log",
        ] {
            assert_eq!(parse_snapshot_key(bad), None, "{bad}");
            assert_eq!(parse_log_key(bad), None, "{bad}");
        }
    }

    fn create_topic(name: &str, id: u128) -> Command {
        Command::CreateTopic {
            name: strata_types::TopicName::new(name).unwrap(),
            id: strata_types::TopicId(uuid::Uuid::from_u128(id)),
            partitions: 1,
            configs: Default::default(),
            created_ms: 0,
        }
    }

    /// A snapshot at `index` holding topics `t1..=t{index}` (one per entry).
    fn snapshot_at(index: u64) -> Bytes {
        let mut state = MetaState::default();
        for i in 1..=index {
            strata_meta::backup::replay(
                &mut state,
                i,
                Some(&create_topic(&format!("t{i}"), i as u128)),
            );
        }
        encode_snapshot(&state)
    }

    fn batch(first: u64, last: u64) -> Bytes {
        let entries: Vec<(u64, Option<Arc<Command>>)> = (first..=last)
            .map(|i| (i, Some(Arc::new(create_topic(&format!("t{i}"), i as u128)))))
            .collect();
        encode_log(&entries)
    }

    /// Stores the objects, reads the backup back: (snapshot index, last applied, topics,
    /// stopped early).
    async fn check(
        snapshots: &[(u64, Bytes)],
        logs: &[(u64, u64)],
    ) -> Result<(u64, u64, usize, bool), String> {
        let store = ObjectStore::from_url("memory://").unwrap();
        for (index, body) in snapshots {
            store
                .put(&snapshot_key(*index), body.clone())
                .await
                .unwrap();
        }
        for (first, last) in logs {
            store
                .put(&log_key(*first, *last), batch(*first, *last))
                .await
                .unwrap();
        }
        let r = read_backup(&store).await.map_err(|e| e.to_string())?;
        Ok((
            r.snapshot_index,
            r.state.last_applied(),
            r.state.topics().count(),
            r.stopped.is_some(),
        ))
    }

    #[tokio::test]
    async fn restore_follows_the_log_and_stops_at_a_gap() {
        // Contiguous batches after the newest snapshot; older batches are ignored.
        assert_eq!(
            check(
                &[(2, snapshot_at(2)), (5, snapshot_at(5))],
                &[(1, 3), (6, 8), (9, 9)]
            )
            .await,
            Ok((5, 9, 9, false))
        );
        // Overlapping batches (two leaders around a change) and one starting inside.
        assert_eq!(
            check(&[(5, snapshot_at(5))], &[(4, 7), (6, 10), (11, 12)]).await,
            Ok((5, 12, 12, false))
        );
        // A gap: stop cleanly before it, and say so.
        assert_eq!(
            check(&[(5, snapshot_at(5))], &[(6, 7), (9, 12)]).await,
            Ok((5, 7, 7, true))
        );
        // A damaged newest snapshot: the older one and the log after it.
        let mut damaged = snapshot_at(8).to_vec();
        damaged[HEADER_BYTES] ^= 0xff;
        assert_eq!(
            check(&[(5, snapshot_at(5)), (8, Bytes::from(damaged))], &[(6, 9)]).await,
            Ok((5, 9, 9, false))
        );
        let none = check(&[], &[(1, 2)]).await.unwrap_err();
        assert!(
            none.contains("no metadata snapshot under meta/snapshots/"),
            "{none}"
        );
        let bad = check(&[(3, Bytes::from_static(b"garbage"))], &[])
            .await
            .unwrap_err();
        assert!(bad.contains("could be decoded"), "{bad}");
    }

    #[test]
    fn frames_round_trip_and_detect_damage() {
        let state = MetaState::default();
        let bytes = encode_snapshot(&state);
        assert_eq!(decode_snapshot(&bytes).unwrap().last_applied(), 0);
        let cmd = Arc::new(Command::AllocateProducerIds { count: 5 });
        let log = encode_log(&[(7, None), (8, Some(cmd.clone()))]);
        let (first, last, entries) = decode_log(&log).unwrap();
        assert_eq!((first, last), (7, 8));
        assert_eq!(entries[1].command.as_ref(), Some(cmd.as_ref()));

        let check = |bytes: &[u8], expected: fn(&BackupFormatError) -> bool| {
            let err = decode_log(bytes).unwrap_err();
            assert!(expected(&err), "{err}");
        };
        let mut flipped = log.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        check(&flipped, |e| {
            matches!(e, BackupFormatError::Checksum { .. })
        });
        check(&log[..log.len() - 1], |e| {
            matches!(e, BackupFormatError::Truncated { .. })
        });
        check(&bytes, |e| matches!(e, BackupFormatError::Magic));
        let mut future = log.to_vec();
        future[8] = 2;
        check(&future, |e| matches!(e, BackupFormatError::Version(2)));
        check(b"", |e| matches!(e, BackupFormatError::Magic));
    }
}
