//! The read cache for object-storage data: two foyer hybrid caches (memory + a local disk
//! device under `--cache-dir`) with separate budgets, and sequential read-ahead.
//!
//! - **recent**: whole blocks of the multi-partition upload objects — the data just behind the
//!   in-memory tail, which lagging tail consumers read;
//! - **history**: chunks of compacted segments — what a replay reads.
//!
//! A replay fills only the history cache, so it cannot evict what tail readers need; its
//! read-ahead GETs run under their own concurrency limit and never hold up a tail read.
//! Entries are keyed by `object key @ byte position`; objects are immutable and keys never
//! reused, so an entry is never stale and the disk cache can be kept across restarts (or wiped:
//! it is only a cache).

use bytes::Bytes;
use foyer::{BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Largest entry the disk tier holds (foyer's block size); larger ones stay in memory only.
const DISK_BLOCK_BYTES: usize = 8 * 1024 * 1024;

/// Budgets of the two caches.
#[derive(Debug, Clone, Copy)]
pub struct CacheBudgets {
    pub recent_memory_bytes: u64,
    pub recent_disk_bytes: u64,
    pub history_memory_bytes: u64,
    pub history_disk_bytes: u64,
    /// Read-ahead GETs in flight at once (all replays together).
    pub readahead_concurrency: usize,
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

    pub fn insert(&self, tier: Tier, key: String, value: Bytes) {
        self.tier(tier).insert(key, value);
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
        }
    }

    #[tokio::test]
    async fn budgets_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ReadCache::open(dir.path(), budgets()).await.unwrap();
        cache.insert(Tier::Recent, "tail".into(), Bytes::from(vec![1u8; 1000]));
        // A replay pushes far more than the history memory budget through its cache.
        for i in 0..200 {
            cache.insert(
                Tier::History,
                entry_key("seg", i * 4096),
                Bytes::from(vec![i as u8; 4096]),
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
