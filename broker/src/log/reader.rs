//! The read path: tail first, then object storage through the metadata index.
//!
//! A fetch near the end of a partition is served from the in-memory tail. An older one looks up
//! the block that holds the offset in the metadata index (never a LIST):
//!
//! - an upload block is read whole with one ranged GET (through the *recent* cache) and the
//!   batches from the requested offset on are returned;
//! - a compacted segment is read through its footer index (one GET, then kept decoded): the
//!   chunk holding the offset and the ones after it while the fetch has room, each one GET
//!   through the *history* cache, checked against its CRC32C; then the next
//!   `cache.readahead_chunks` chunks are fetched in the background, so a replaying consumer
//!   finds them cached (see `log/cache.rs` for the two budgets). What a replay reads is
//!   cached in memory only (`Admit::MemoryOnly`): a sequential scan must not pay a disk write
//!   per byte nor push what random reads reuse out of the disk tier.
//!
//! A timestamp lookup reads one block, or one chunk of a segment picked by its time index: at
//! most two GETs however old the data.

use super::cache::{entry_key, Admit, ReadCache, Tier};
use super::partition::{PartitionLog, TailRead};
use crate::meta_handle::MetaHandle;
use crate::metrics::Metrics;
use crate::records;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use strata_tiering::{decode_segment_index, ObjectStore, SegmentIndex, TieringError};
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
    meta: MetaHandle,
    store: ObjectStore,
    cache: Arc<ReadCache>,
    /// Decoded segment indexes by object key (small; cleared when it reaches its bound).
    indexes: Mutex<HashMap<String, Arc<SegmentIndex>>>,
    /// Chunks of a segment fetched ahead of a sequential reader.
    readahead_chunks: usize,
    metrics: Arc<Metrics>,
}

/// Segment indexes kept decoded; at this many the map is cleared (an index is one GET away).
const INDEXES_MAX: usize = 4096;

impl Reader {
    pub fn new(
        meta: MetaHandle,
        store: ObjectStore,
        cache: Arc<ReadCache>,
        readahead_chunks: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            meta,
            store,
            cache,
            indexes: Mutex::new(HashMap::new()),
            readahead_chunks,
            metrics,
        }
    }

    /// Closes the read cache (its disk tier finishes its writes) at a clean shutdown.
    pub async fn close(&self) {
        self.cache.close().await;
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
        if !block.is_segment() {
            let data = self.block(&block).await?;
            return Ok(slice_from(&block, &data, offset, bytes_max)?.0);
        }
        // A segment: the chunk holding the offset, then following chunks while the fetch has
        // room; the chunks after those are fetched ahead for the next fetch.
        let index = self.segment_index(&block).await?;
        let Some(first) = index.chunk_for_offset(offset) else {
            return Ok(Vec::new());
        };
        // The chunks this fetch will take: the first, then whole chunks while they fit. They
        // are read concurrently (cache, else one GET each), then cut in order.
        let mut last = first;
        let mut planned = index.chunks[first].len as usize;
        while last + 1 < index.chunks.len()
            && planned + index.chunks[last + 1].len as usize <= bytes_max
        {
            last += 1;
            planned += index.chunks[last].len as usize;
        }
        let datas: Vec<Bytes> = futures::stream::iter(first..=last)
            .map(|i| self.chunk(&block, &index, i, Admit::MemoryOnly))
            .buffered(self.readahead_chunks.max(1))
            .try_collect()
            .await?;
        let mut out = Vec::new();
        let mut taken = 0usize;
        let mut next = first;
        for data in datas {
            let at = if next == first {
                offset
            } else {
                index.chunks[next].base_offset
            };
            let (part, to_end) = slice_from(&block, &data, at, bytes_max - taken)?;
            taken += part.iter().map(Bytes::len).sum::<usize>();
            out.extend(part);
            next += 1;
            if !to_end || taken >= bytes_max {
                break;
            }
        }
        self.read_ahead(&block, &index, next);
        Ok(out)
    }

    /// A segment's decoded index: from memory, else one ranged GET (index + trailer).
    async fn segment_index(&self, block: &BlockLocation) -> Result<Arc<SegmentIndex>, ReadError> {
        if let Some(index) = self.indexes.lock().get(&block.key) {
            return Ok(index.clone());
        }
        let start = block.position + block.len;
        let bytes = self
            .store
            .get_range(&block.key, start..start + block.index_len)
            .await?;
        let index = Arc::new(decode_segment_index(block, &bytes)?);
        let mut indexes = self.indexes.lock();
        if indexes.len() >= INDEXES_MAX {
            indexes.clear();
        }
        indexes.insert(block.key.clone(), index.clone());
        Ok(index)
    }

    /// Chunk `i` of a segment: from the history cache, else one ranged GET, checked, and
    /// cached as `admit` says.
    async fn chunk(
        &self,
        block: &BlockLocation,
        index: &SegmentIndex,
        i: usize,
        admit: Admit,
    ) -> Result<Bytes, ReadError> {
        Metrics::inc(&self.metrics.cold_reads_total);
        let range = index.chunks[i].range();
        let key = entry_key(&block.key, range.start);
        if let Some(hit) = self.cache.get(Tier::History, &key).await {
            Metrics::inc(&self.metrics.cold_read_cache_hits_total);
            Metrics::inc(&self.metrics.cache.history_hits);
            return Ok(hit);
        }
        Metrics::inc(&self.metrics.cache.history_misses);
        self.cache
            .pace(&self.metrics, u64::from(index.chunks[i].len))
            .await;
        let data = fetch_chunk(&self.store, block, index, i).await?;
        self.cache.insert(Tier::History, key, data.clone(), admit);
        Ok(data)
    }

    /// Starts background GETs of up to `readahead_chunks` chunks from `from` on that are not
    /// cached, under the cache's read-ahead concurrency limit (never on the caller's path).
    fn read_ahead(&self, block: &BlockLocation, index: &Arc<SegmentIndex>, from: usize) {
        let end = (from + self.readahead_chunks).min(index.chunks.len());
        for i in from..end {
            let key = entry_key(&block.key, index.chunks[i].position);
            if self.cache.contains(Tier::History, &key) || !self.cache.start_prefetch(&key) {
                continue;
            }
            let (store, cache, metrics) =
                (self.store.clone(), self.cache.clone(), self.metrics.clone());
            let (block, index) = (block.clone(), index.clone());
            tokio::spawn(async move {
                if let Ok(_permit) = cache.readahead.clone().acquire_owned().await {
                    if cache.get(Tier::History, &key).await.is_none() {
                        cache.pace(&metrics, u64::from(index.chunks[i].len)).await;
                        match fetch_chunk(&store, &block, &index, i).await {
                            Ok(data) => {
                                Metrics::inc(&metrics.tier.readahead_chunks_total);
                                cache.insert(Tier::History, key.clone(), data, Admit::MemoryOnly);
                            }
                            Err(err) => tracing::debug!(key, %err, "read-ahead failed"),
                        }
                    }
                }
                cache.end_prefetch(&key);
            });
        }
    }

    /// A whole upload block: from the recent cache, else one ranged GET, checked.
    async fn block(&self, block: &BlockLocation) -> Result<Bytes, ReadError> {
        Metrics::inc(&self.metrics.cold_reads_total);
        let key = entry_key(&block.key, block.position);
        if let Some(hit) = self.cache.get(Tier::Recent, &key).await {
            Metrics::inc(&self.metrics.cold_read_cache_hits_total);
            Metrics::inc(&self.metrics.cache.recent_hits);
            return Ok(hit);
        }
        Metrics::inc(&self.metrics.cache.recent_misses);
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
        // A `direct` block's offsets are relative until made absolute here (log/direct.rs).
        let data = super::direct::absolute(block, data).map_err(|reason| ReadError::BadBlock {
            key: block.key.clone(),
            position: block.position,
            reason,
        })?;
        self.cache
            .insert(Tier::Recent, key, data.clone(), Admit::MemoryAndDisk);
        Ok(data)
    }

    /// The bytes of the part of `block` that may hold the first record at or after `ts`: the
    /// whole block, or for a segment the one chunk its time index points at (so a lookup in
    /// months of history costs at most two GETs and no LIST).
    async fn data_for_time(
        &self,
        block: &BlockLocation,
        ts: i64,
    ) -> Result<Option<Bytes>, ReadError> {
        if !block.is_segment() {
            return self.block(block).await.map(Some);
        }
        let index = self.segment_index(block).await?;
        match index.chunk_for_time(ts) {
            // A lookup comes back to the same chunks: worth the disk tier.
            Some(i) => self
                .chunk(block, &index, i, Admit::MemoryAndDisk)
                .await
                .map(Some),
            None => Ok(None),
        }
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
            if let Some(data) = self.data_for_time(&block, ts).await? {
                if let Some(found) = records::first_at_or_after_time_from(&data, ts, start) {
                    return Ok(Some(found));
                }
            }
        }
        if let Some(batch) = log.first_batch_at_or_after_time(ts) {
            // Records below the log start (DeleteRecords may cut a batch) are not answers.
            return Ok(records::first_at_or_after_time_from(&batch.data, ts, start));
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
        // The tail knows batches: the record carrying the maximum is found inside its batch
        // (Kafka answers that record's offset, not its batch's).
        let tail = log.max_timestamp().map(|(ts, base)| {
            log.first_batch_at_or_after_time(ts)
                .and_then(|b| records::max_timestamp(&b.data))
                .unwrap_or((ts, base))
        });
        let cold = match block {
            Some(block) if tail.is_none_or(|(t, _)| block.max_timestamp > t) => {
                // The block's (or for a segment, its chunk's) records that reach its maximum.
                match self.data_for_time(&block, block.max_timestamp).await? {
                    Some(data) => records::max_timestamp(&data),
                    None => None,
                }
            }
            _ => None,
        };
        Ok(match (cold, tail) {
            (Some(c), Some(t)) => Some(if c.0 >= t.0 { c } else { t }),
            (c, t) => c.or(t),
        })
    }
}

/// One ranged GET of chunk `i` of a segment, checked against the index.
async fn fetch_chunk(
    store: &ObjectStore,
    block: &BlockLocation,
    index: &SegmentIndex,
    i: usize,
) -> Result<Bytes, ReadError> {
    let range = index.chunks[i].range();
    let data = store.get_range(&block.key, range).await?;
    index.verify_chunk(&block.key, i, &data)?;
    Ok(data)
}

/// Cuts a block to the batches from `offset` on, within about `bytes_max` (at least one batch);
/// also says whether the cut reaches the end of `data`.
fn slice_from(
    block: &BlockLocation,
    data: &Bytes,
    offset: i64,
    bytes_max: usize,
) -> Result<(Chunks, bool), ReadError> {
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
        Some(s) => (vec![data.slice(s..end)], end == data.len()),
        None => (Vec::new(), true),
    })
}
