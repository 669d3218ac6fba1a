//! The read path: tail first, then object storage through the metadata index.
//!
//! A fetch near the end of a partition is served from the in-memory tail. An older one looks up
//! the block that holds the offset in the metadata index (never a LIST), reads that block with
//! one ranged GET through a small in-memory block cache, and returns the batches from the
//! requested offset on. Blocks are read whole so a consumer replaying history issues one GET per
//! block, not one per fetch. (The foyer hybrid cache with read-ahead replaces the block cache in
//! the object-tier issue.)

use super::partition::{PartitionLog, TailRead};
use crate::metrics::Metrics;
use crate::records;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use strata_meta::MetaNode;
use strata_tiering::{ObjectStore, TieringError};
use strata_types::batch::{BatchHeader, Batches};
use strata_types::BlockLocation;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("offset {offset} is out of range")]
    OutOfRange { offset: i64 },
    #[error("object store read failed: {0}")]
    Store(#[from] TieringError),
    #[error("block {key}@{position} is malformed: {reason}")]
    BadBlock {
        key: String,
        position: u64,
        reason: String,
    },
}

/// What a partition read returns: whole batches, in order.
pub type Chunks = Vec<Bytes>;

pub struct Reader {
    meta: MetaNode,
    store: ObjectStore,
    cache: BlockCache,
    metrics: Arc<Metrics>,
}

impl Reader {
    pub fn new(
        meta: MetaNode,
        store: ObjectStore,
        cache_bytes_max: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            meta,
            store,
            cache: BlockCache::new(cache_bytes_max),
            metrics,
        }
    }

    /// Whole batches from `offset` on, about `bytes_max` of them (at least one batch when any
    /// exists). Empty at the high watermark.
    pub async fn read(
        &self,
        log: &PartitionLog,
        offset: i64,
        bytes_max: usize,
    ) -> Result<Chunks, ReadError> {
        match log.read(offset, bytes_max) {
            TailRead::Data(chunks) => Ok(chunks),
            TailRead::AtEnd => Ok(Vec::new()),
            TailRead::OutOfRange => Err(ReadError::OutOfRange { offset }),
            TailRead::Older => self.read_cold(log, offset, bytes_max).await,
        }
    }

    async fn read_cold(
        &self,
        log: &PartitionLog,
        offset: i64,
        bytes_max: usize,
    ) -> Result<Chunks, ReadError> {
        let block = {
            let state = self.meta.read();
            state
                .find_block(log.key.topic, log.key.partition, offset)
                .cloned()
        };
        let Some(block) = block else {
            // Uploaded and dropped from the tail between our two looks: read the tail again.
            return match log.read(offset, bytes_max) {
                TailRead::Data(chunks) => Ok(chunks),
                TailRead::AtEnd => Ok(Vec::new()),
                _ => Err(ReadError::OutOfRange { offset }),
            };
        };
        let data = self.block(&block).await?;
        slice_from(&block, &data, offset, bytes_max)
    }

    async fn block(&self, block: &BlockLocation) -> Result<Bytes, ReadError> {
        Metrics::inc(&self.metrics.cold_reads_total);
        if let Some(hit) = self.cache.get(&block.key, block.position) {
            Metrics::inc(&self.metrics.cold_read_cache_hits_total);
            return Ok(hit);
        }
        let data = self
            .store
            .get_range(&block.key, block.position..block.position + block.len)
            .await?;
        if data.len() as u64 != block.len {
            return Err(ReadError::BadBlock {
                key: block.key.clone(),
                position: block.position,
                reason: format!("expected {} bytes, got {}", block.len, data.len()),
            });
        }
        if block.crc32c != 0 && crc32c::crc32c(&data) != block.crc32c {
            return Err(ReadError::BadBlock {
                key: block.key.clone(),
                position: block.position,
                reason: "CRC32C mismatch".into(),
            });
        }
        self.cache.insert(&block.key, block.position, data.clone());
        Ok(data)
    }

    /// The earliest offset whose record timestamp is `>= ts`, with that timestamp; `None` when
    /// every record is older.
    pub async fn offset_for_time(
        &self,
        log: &PartitionLog,
        ts: i64,
    ) -> Result<Option<(i64, i64)>, ReadError> {
        let block = {
            let state = self.meta.read();
            state
                .find_block_by_time(log.key.topic, log.key.partition, ts)
                .cloned()
        };
        let start = log.offsets().log_start_offset;
        if let Some(block) = block {
            let data = self.block(&block).await?;
            if let Some(found) = records::first_at_or_after_time(&data, ts) {
                if found.0 >= start {
                    return Ok(Some(found));
                }
            }
        }
        if let Some(batch) = log.first_batch_at_or_after_time(ts) {
            return Ok(records::first_at_or_after_time(&batch.data, ts));
        }
        Ok(None)
    }

    /// The largest timestamp in the partition and its offset (ListOffsets `-3`).
    pub async fn max_timestamp(&self, log: &PartitionLog) -> Result<Option<(i64, i64)>, ReadError> {
        let block = {
            let state = self.meta.read();
            state
                .blocks(log.key.topic, log.key.partition)
                .max_by_key(|b| b.max_timestamp)
                .cloned()
        };
        let tail = log.max_timestamp();
        let cold = match block {
            Some(block) if tail.is_none_or(|(t, _)| block.max_timestamp > t) => {
                let data = self.block(&block).await?;
                records::max_timestamp(&data)
            }
            _ => None,
        };
        Ok(match (cold, tail) {
            (Some(c), Some(t)) => Some(if c.0 >= t.0 { c } else { t }),
            (c, t) => c.or(t),
        })
    }
}

/// Cuts a block to the batches from `offset` on, within about `bytes_max`.
fn slice_from(
    block: &BlockLocation,
    data: &Bytes,
    offset: i64,
    bytes_max: usize,
) -> Result<Chunks, ReadError> {
    let mut start = None;
    let mut end = 0usize;
    for item in Batches::new(data) {
        let (header, pos): (BatchHeader, usize) = item.map_err(|e| ReadError::BadBlock {
            key: block.key.clone(),
            position: block.position,
            reason: e.to_string(),
        })?;
        if header.last_offset() < offset {
            continue;
        }
        let first = *start.get_or_insert(pos);
        if pos > first && pos + header.size - first > bytes_max {
            break;
        }
        end = pos + header.size;
    }
    Ok(match start {
        Some(s) => vec![data.slice(s..end)],
        None => Vec::new(),
    })
}

/// A byte-bounded FIFO cache of whole blocks.
struct BlockCache {
    bytes_max: u64,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<(String, u64), Bytes>,
    order: VecDeque<(String, u64)>,
    bytes: u64,
}

impl BlockCache {
    fn new(bytes_max: u64) -> Self {
        Self {
            bytes_max,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    fn get(&self, key: &str, position: u64) -> Option<Bytes> {
        self.inner
            .lock()
            .map
            .get(&(key.to_string(), position))
            .cloned()
    }

    fn insert(&self, key: &str, position: u64, data: Bytes) {
        if data.len() as u64 > self.bytes_max {
            return;
        }
        let mut inner = self.inner.lock();
        let k = (key.to_string(), position);
        if inner.map.contains_key(&k) {
            return;
        }
        inner.bytes += data.len() as u64;
        inner.map.insert(k.clone(), data);
        inner.order.push_back(k);
        while inner.bytes > self.bytes_max {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(v) = inner.map.remove(&old) {
                inner.bytes -= v.len() as u64;
            }
        }
    }
}
