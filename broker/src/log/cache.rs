//! The read cache for object-storage data: two foyer hybrid caches (memory + a local disk
//! device under `--cache-dir`) with separate budgets, and sequential read-ahead.
//!
//! - **recent**: whole blocks of the multi-partition upload objects — the data just behind the
//!   in-memory tail, which lagging tail consumers read;
//! - **history**: chunks of compacted segments — what a replay reads.
//!
//! A replay fills only the history cache, so it cannot evict what tail readers need; its
//! read-ahead GETs run under their own concurrency limit and never hold up a tail read.
//! What a sequential replay reads is admitted to memory only ([`Admit::MemoryOnly`]): it is
//! read once, and spilling it to the disk tier on eviction cost a file write and a checksum
//! per replayed byte — a third of the broker's CPU during a replay, measured — and pushed
//! out of the disk tier the chunks that random reads (timestamp lookups) come back to.
//! Entries are keyed by `object key @ byte position`; objects are immutable and keys never
//! reused, so an entry is never stale and the disk cache can be kept across restarts (or wiped:
//! it is only a cache).

use crate::metrics::Metrics;
use bytes::Bytes;
use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCacheProperties, Location,
};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Largest entry the disk tier holds (foyer's block size); larger ones stay in memory only.
const DISK_BLOCK_BYTES: usize = 8 * 1024 * 1024;

/// Free memory glibc keeps for reuse instead of returning it to the kernel (see
/// [`tune_allocator`]).
const ALLOCATOR_TRIM_BYTES: i32 = 64 * 1024 * 1024;
/// Allocations below this come from glibc's heaps (reused), not from a fresh `mmap` each.
const ALLOCATOR_MMAP_BYTES: i32 = 32 * 1024 * 1024;

/// Keeps freed read buffers in the allocator instead of handing their pages back to the
/// kernel. Called once at the start of `main`.
///
/// A replay allocates a 1 MiB buffer per chunk (and the store client more) and frees it soon
/// after. glibc gives the top of a thread's heap back to the kernel once more than its trim
/// threshold (about 2 MiB after its own adjustment) is free, so the next buffer faults its
/// pages in again and the kernel clears each one: measured, a fifth of the broker's CPU
/// during a replay went to `clear_page`. With 64 MiB kept and a fixed 32 MiB `mmap`
/// threshold the buffers are reused. An operator's own `GLIBC_TUNABLES` malloc settings win.
pub fn tune_allocator() {
    let tuned_outside = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc."));
    if tuned_outside {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `mallopt` only sets allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, ALLOCATOR_TRIM_BYTES);
        libc::mallopt(libc::M_MMAP_THRESHOLD, ALLOCATOR_MMAP_BYTES);
    };
}

/// Budgets of the two caches.
#[derive(Debug, Clone, Copy)]
pub struct CacheBudgets {
    pub recent_memory_bytes: u64,
    pub recent_disk_bytes: u64,
    pub history_memory_bytes: u64,
    pub history_disk_bytes: u64,
    /// Read-ahead GETs in flight at once (all replays together).
    pub readahead_concurrency: usize,
    /// Bytes per second all history GETs together may read; 0: no limit.
    pub history_read_bytes_per_sec: u64,
}

/// Where an inserted entry may live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Memory, then the disk tier when memory evicts it.
    MemoryAndDisk,
    /// Memory only: dropped when memory evicts it (sequential scans).
    MemoryOnly,
}

/// Which budget an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Recent,
    History,
}

pub struct ReadCache {
    recent: HybridCache<String, Bytes>,
    history: HybridCache<String, Bytes>,
    /// Read-ahead keys being fetched, so two replays of one segment fetch a chunk once.
    prefetching: Mutex<HashSet<String>>,
    pub readahead: Arc<Semaphore>,
    /// The history GETs' byte rate (`cache.history_read_bytes_per_sec`), when limited.
    history_pace: Option<Pace>,
}

/// A byte-rate limit (GCRA): each `take` is due when the bytes taken before it have had their
/// time at the rate, less a burst allowance of [`PACE_BURST`], so a fetch's few concurrent
/// chunk reads go at once and only a sustained replay waits.
///
/// It bounds what a replay takes from a broker the tail shares. It narrows the tail's loss
/// during a replay without closing it: even a paced replay on a mostly idle machine slows the
/// WAL's fdatasync for a reason not yet found (BENCHMARKS.md, sessions 19–20). Redpanda's
/// `cloud_storage_max_throughput_per_shard` is the same knob.
#[derive(Debug)]
pub struct Pace {
    bytes_per_sec: u64,
    /// When the bytes taken so far have had their time.
    due: Mutex<Instant>,
}

/// How far ahead of the rate a burst may run.
pub const PACE_BURST: Duration = Duration::from_millis(100);

impl Pace {
    pub fn new(bytes_per_sec: u64) -> Option<Pace> {
        (bytes_per_sec > 0).then(|| Pace {
            bytes_per_sec,
            due: Mutex::new(Instant::now()),
        })
    }

    /// Waits until `bytes` more may be read; returns how long it waited.
    pub async fn take(&self, bytes: u64) -> Duration {
        let wait = self.schedule(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }

    /// Books `bytes` at `now`: how long the reader must wait first.
    fn schedule(&self, bytes: u64, now: Instant) -> Duration {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let mut due = self.due.lock();
        let start = (*due).max(now);
        *due = start + cost;
        // Due within the burst allowance: go now.
        (start + cost).saturating_duration_since(now + PACE_BURST)
    }
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache").finish_non_exhaustive()
    }
}

/// The cache key of the bytes at `position` of object `key`.
pub fn entry_key(key: &str, position: u64) -> String {
    format!("{key}@{position}")
}

async fn hybrid(
    name: &'static str,
    dir: &Path,
    memory: u64,
    disk: u64,
) -> anyhow::Result<HybridCache<String, Bytes>> {
    let device = FsDeviceBuilder::new(dir)
        .with_capacity(disk.max(4 * DISK_BLOCK_BYTES as u64) as usize)
        .build()?;
    let cache = HybridCacheBuilder::new()
        .with_name(name)
        .memory(memory.max(1) as usize)
        .with_weighter(|key: &String, value: &Bytes| key.len() + value.len())
        .storage()
        .with_engine_config(BlockEngineConfig::new(device).with_block_size(DISK_BLOCK_BYTES))
        .build()
        .await?;
    Ok(cache)
}

impl ReadCache {
    /// Waits for the history read rate (`cache.history_read_bytes_per_sec`) to allow `bytes`
    /// more, and counts the wait in `metrics`.
    pub async fn pace(&self, metrics: &Metrics, bytes: u64) {
        if let Some(pace) = &self.history_pace {
            let waited = pace.take(bytes).await;
            let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
            Metrics::add(&metrics.tier.history_read_wait_us_total, us);
        }
    }

    /// Opens (or creates) both caches under `dir` (`dir/recent`, `dir/history`).
    pub async fn open(dir: &Path, budgets: CacheBudgets) -> anyhow::Result<ReadCache> {
        let recent = hybrid(
            "strata-recent",
            &dir.join("recent"),
            budgets.recent_memory_bytes,
            budgets.recent_disk_bytes,
        )
        .await?;
        let history = hybrid(
            "strata-history",
            &dir.join("history"),
            budgets.history_memory_bytes,
            budgets.history_disk_bytes,
        )
        .await?;
        Ok(ReadCache {
            recent,
            history,
            prefetching: Mutex::new(HashSet::new()),
            readahead: Arc::new(Semaphore::new(budgets.readahead_concurrency.max(1))),
            history_pace: Pace::new(budgets.history_read_bytes_per_sec),
        })
    }

    fn tier(&self, tier: Tier) -> &HybridCache<String, Bytes> {
        match tier {
            Tier::Recent => &self.recent,
            Tier::History => &self.history,
        }
    }

    /// The cached bytes, from memory or disk. A disk error is a miss (the caller reads the
    /// store).
    pub async fn get(&self, tier: Tier, key: &str) -> Option<Bytes> {
        match self.tier(tier).get(key).await {
            Ok(entry) => entry.map(|e| e.value().clone()),
            Err(err) => {
                tracing::warn!(key, %err, "read cache lookup failed; reading the object store");
                None
            }
        }
    }

    pub fn insert(&self, tier: Tier, key: String, value: Bytes, admit: Admit) {
        let cache = self.tier(tier);
        match admit {
            Admit::MemoryAndDisk => {
                cache.insert(key, value);
            }
            Admit::MemoryOnly => {
                let memory = HybridCacheProperties::default().with_location(Location::InMem);
                cache.insert_with_properties(key, value, memory);
            }
        }
    }

    /// Whether the key is cached in memory (a cheap check before a read-ahead).
    pub fn contains(&self, tier: Tier, key: &str) -> bool {
        self.tier(tier).contains(key)
    }

    /// Marks `key` as being prefetched; false when it already is.
    pub fn start_prefetch(&self, key: &str) -> bool {
        self.prefetching.lock().insert(key.to_owned())
    }

    pub fn end_prefetch(&self, key: &str) {
        self.prefetching.lock().remove(key);
    }

    /// Flushes what the disk tiers hold in memory buffers (a clean shutdown).
    pub async fn close(&self) {
        for cache in [&self.recent, &self.history] {
            if let Err(err) = cache.close().await {
                tracing::warn!(%err, "closing the read cache failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets() -> CacheBudgets {
        CacheBudgets {
            recent_memory_bytes: 64 * 1024,
            recent_disk_bytes: 64 * 1024 * 1024,
            history_memory_bytes: 64 * 1024,
            history_disk_bytes: 64 * 1024 * 1024,
            readahead_concurrency: 2,
            history_read_bytes_per_sec: 0,
        }
    }

    /// At 10 MB/s, reads of 1 MB back to back: the first 100 ms worth go at once (the burst),
    /// every later one waits for its share of the rate; credit does not pile up while idle.
    #[test]
    fn pace_holds_a_sustained_reader_to_the_rate() {
        let pace = Pace::new(10_000_000).unwrap();
        let t0 = Instant::now();
        let mut now = t0;
        let mut waited = Vec::new();
        for _ in 0..20 {
            let wait = pace.schedule(1_000_000, now);
            waited.push(wait);
            now += wait;
        }
        assert_eq!(
            waited[0],
            Duration::ZERO,
            "the first read is within the burst"
        );
        assert!(waited[1..].iter().all(|w| !w.is_zero()), "{waited:?}");
        // 20 MB at 10 MB/s: 2 s, less the burst.
        let took = (now - t0).as_secs_f64();
        assert!((took - 1.9).abs() < 0.001, "{took}");
        // Ten seconds idle, then the same: one read's worth of burst, no more.
        now += Duration::from_secs(10);
        assert_eq!(pace.schedule(1_000_000, now), Duration::ZERO);
        assert!(!pace.schedule(1_000_000, now).is_zero());
        assert!(Pace::new(0).is_none(), "0 is no limit");
    }

    #[tokio::test]
    async fn budgets_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ReadCache::open(dir.path(), budgets()).await.unwrap();
        cache.insert(
            Tier::Recent,
            "tail".into(),
            Bytes::from(vec![1u8; 1000]),
            Admit::MemoryAndDisk,
        );
        // A replay pushes far more than the history memory budget through its cache.
        for i in 0..200 {
            cache.insert(
                Tier::History,
                entry_key("seg", i * 4096),
                Bytes::from(vec![i as u8; 4096]),
                Admit::MemoryAndDisk,
            );
        }
        let tail = cache.get(Tier::Recent, "tail").await;
        assert_eq!(
            tail.as_deref(),
            Some(&[1u8; 1000][..]),
            "tail entry survived"
        );
        assert!(cache.get(Tier::History, "tail").await.is_none());
        // The newest history entry is readable (memory or disk).
        let last = cache
            .get(Tier::History, &entry_key("seg", 199 * 4096))
            .await;
        assert_eq!(last.map(|b| b[0]), Some(199));
        cache.close().await;
    }

    /// Entries admitted to memory only are gone once memory evicts them (nothing reaches the
    /// disk tier); the same traffic admitted to disk stays readable.
    #[tokio::test]
    async fn memory_only_entries_skip_the_disk_tier() {
        for (admit, survives) in [(Admit::MemoryOnly, false), (Admit::MemoryAndDisk, true)] {
            let dir = tempfile::tempdir().unwrap();
            let cache = ReadCache::open(dir.path(), budgets()).await.unwrap();
            // 200 × 4 KiB through a 64 KiB memory budget: the first entries are evicted.
            for i in 0..200u64 {
                cache.insert(
                    Tier::History,
                    entry_key("seg", i * 4096),
                    Bytes::from(vec![i as u8; 4096]),
                    admit,
                );
            }
            let key = entry_key("seg", 0);
            let first = if survives {
                // The disk tier writes in the background: poll until it answers.
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
                loop {
                    match cache.get(Tier::History, &key).await {
                        Some(b) => break Some(b[0]),
                        None if tokio::time::Instant::now() >= deadline => break None,
                        None => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                    }
                }
            } else {
                // Evicted on insert and never sent to the disk tier: nothing to wait for.
                cache.get(Tier::History, &key).await.map(|b| b[0])
            };
            assert_eq!(first, survives.then_some(0), "{admit:?}");
            cache.close().await;
        }
    }

    #[test]
    fn prefetch_marks_are_exclusive() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = rt.block_on(ReadCache::open(dir.path(), budgets())).unwrap();
        assert!(cache.start_prefetch("k@0"));
        assert!(!cache.start_prefetch("k@0"));
        cache.end_prefetch("k@0");
        assert!(cache.start_prefetch("k@0"));
    }
}
