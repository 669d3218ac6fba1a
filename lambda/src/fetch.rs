//! `GET /v1/topics/{topic}/partitions/{p}/records?offset=N | ?timestamp=MS
//! [&max_records=][&max_bytes=]`: records from object storage, through the metadata index.
//!
//! Only what is in the index is visible: every record of a `direct` topic, and for a WAL topic
//! what its broker has uploaded so far (records still only in a broker's WAL are not). The
//! answer's `high_watermark` is the index end.
//!
//! Reads follow the broker's read path (`broker/src/log/reader.rs`): an upload block is one
//! ranged GET, checked against its CRC32C, then made absolute (`direct::absolute`); a compacted
//! segment is read chunk by chunk through its footer index, each chunk checked. Batches are
//! decoded with kafka-protocol (any compression); records below the requested offset and
//! control records are skipped.
//!
//! By timestamp: the first block whose max timestamp is `>= ts` (for a segment, the chunk its
//! time index names), then the first record there with a timestamp `>= ts`; the read goes on
//! from that record's offset.

use crate::http::ApiError;
use crate::App;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use strata_broker::log::direct::absolute;
use strata_broker::records::decode_batch;
use strata_tiering::{decode_segment_index, ObjectStore, SegmentIndex};
use strata_types::batch::Batches;
use strata_types::BlockLocation;

/// Default and largest `max_records`.
pub const MAX_RECORDS_DEFAULT: usize = 100;
pub const MAX_RECORDS_MAX: usize = 10_000;
/// Default and largest `max_bytes` (keys + values + headers): the answer must stay under
/// Lambda's 6 MB response limit after JSON and base64.
pub const MAX_BYTES_DEFAULT: usize = 1024 * 1024;
pub const MAX_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Where a fetch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Offset(i64),
    Timestamp(i64),
    /// Neither given: the log start.
    LogStart,
}

/// The validated query of a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchParams {
    pub start: Start,
    pub max_records: usize,
    pub max_bytes: usize,
}

impl FetchParams {
    /// Parses the query string; an unknown or malformed parameter is a 400.
    pub fn parse(query: &str) -> Result<FetchParams, ApiError> {
        let mut offset = None;
        let mut timestamp = None;
        let mut max_records = MAX_RECORDS_DEFAULT;
        let mut max_bytes = MAX_BYTES_DEFAULT;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let int = |max: i64| -> Result<i64, ApiError> {
                match v.parse::<i64>() {
                    Ok(n) if (0..=max).contains(&n) => Ok(n),
                    _ => Err(ApiError::BadRequest(format!(
                        "`{k}` must be an integer from 0 to {max}, got `{v}`"
                    ))),
                }
            };
            match k.as_ref() {
                "offset" => offset = Some(int(i64::MAX)?),
                "timestamp" => timestamp = Some(int(i64::MAX)?),
                "max_records" => max_records = int(MAX_RECORDS_MAX as i64)? as usize,
                "max_bytes" => max_bytes = int(MAX_BYTES_MAX as i64)? as usize,
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "unknown parameter `{other}` (offset, timestamp, max_records, max_bytes)"
                    )))
                }
            }
        }
        if max_records == 0 || max_bytes == 0 {
            return Err(ApiError::BadRequest(
                "`max_records` and `max_bytes` must be positive".into(),
            ));
        }
        let start = match (offset, timestamp) {
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(
                    "give `offset` or `timestamp`, not both".into(),
                ))
            }
            (Some(o), None) => Start::Offset(o),
            (None, Some(t)) => Start::Timestamp(t),
            (None, None) => Start::LogStart,
        };
        Ok(FetchParams {
            start,
            max_records,
            max_bytes,
        })
    }
}

/// Answers one fetch.
pub async fn fetch(
    app: &App,
    topic: &str,
    partition: u32,
    params: FetchParams,
) -> Result<Value, ApiError> {
    let state = app.meta_state().await?;
    let meta = state
        .topic(topic)
        .ok_or_else(|| ApiError::NotFound(format!("topic `{topic}` does not exist")))?;
    if partition >= meta.partitions {
        return Err(ApiError::NotFound(format!(
            "partition {partition} does not exist: topic `{topic}` has {} partitions",
            meta.partitions
        )));
    }
    let topic_id = meta.id;
    let log_start = state.indexed_start(topic_id, partition);
    let high_watermark = state.indexed_end(topic_id, partition);
    let store = &app.store;
    let from = match params.start {
        Start::LogStart => log_start,
        Start::Offset(o) if o > high_watermark => {
            return Err(ApiError::OutOfRange(format!(
                "offset {o} is past the high watermark {high_watermark} of {topic}/{partition}"
            )))
        }
        // Below the log start (retention trimmed it): start at the log start.
        Start::Offset(o) => o.max(log_start),
        Start::Timestamp(ts) => match state.find_block_by_time(topic_id, partition, ts).cloned() {
            None => high_watermark,
            Some(block) => offset_for_time(store, &block, ts)
                .await?
                .unwrap_or(block.end_offset)
                .max(log_start),
        },
    };
    // The blocks the read may need, in order, from the one holding `from`.
    let blocks: Vec<BlockLocation> = state
        .blocks(topic_id, partition)
        .filter(|b| b.end_offset > from)
        .cloned()
        .collect();
    drop(state);

    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut next_offset = from;
    'blocks: for block in &blocks {
        let mut chunks = BlockChunks::open(store, block, next_offset).await?;
        while let Some(data) = chunks.next(store).await? {
            for item in Batches::new(&data) {
                let (header, pos) = item.map_err(|e| bad_block(block, e.to_string()))?;
                if header.last_offset() < next_offset {
                    continue;
                }
                if header.is_control() {
                    next_offset = header.last_offset() + 1;
                    continue;
                }
                let records = decode_batch(&data[pos..pos + header.size])
                    .map_err(|e| bad_block(block, format!("undecodable batch: {e}")))?;
                for r in records {
                    if r.offset < next_offset {
                        continue;
                    }
                    let size = r.key.as_ref().map_or(0, Bytes::len)
                        + r.value.as_ref().map_or(0, Bytes::len)
                        + r.headers
                            .iter()
                            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
                            .sum::<usize>();
                    if out.len() >= params.max_records
                        || (!out.is_empty() && bytes + size > params.max_bytes)
                    {
                        break 'blocks;
                    }
                    bytes += size;
                    next_offset = r.offset + 1;
                    out.push(record_json(&r));
                }
                next_offset = next_offset.max(header.last_offset() + 1);
            }
        }
        next_offset = next_offset.max(block.end_offset);
    }
    Ok(json!({
        "records": out,
        "next_offset": next_offset,
        "high_watermark": high_watermark,
        "log_start_offset": log_start,
        "note": "records are read from object storage: a WAL topic's records not yet uploaded by its broker are not visible here",
    }))
}

fn record_json(r: &kafka_protocol::records::Record) -> Value {
    let mut base64 = false;
    let mut text = |b: &Option<Bytes>| -> Value {
        match b {
            None => Value::Null,
            Some(b) => match std::str::from_utf8(b) {
                Ok(s) => Value::String(s.to_owned()),
                Err(_) => {
                    base64 = true;
                    Value::Null
                }
            },
        }
    };
    let mut key = text(&r.key);
    let mut value = text(&r.value);
    let mut headers = serde_json::Map::new();
    for (k, v) in &r.headers {
        let k: &str = k;
        headers.insert(k.to_owned(), text(v));
    }
    if base64 {
        // One encoding for the whole record: every byte field in base64.
        let b64 = |b: &Option<Bytes>| {
            b.as_ref().map_or(Value::Null, |b| {
                Value::String(base64::engine::general_purpose::STANDARD.encode(b))
            })
        };
        key = b64(&r.key);
        value = b64(&r.value);
        headers = r
            .headers
            .iter()
            .map(|(k, v)| {
                let k: &str = k;
                (k.to_owned(), b64(v))
            })
            .collect();
    }
    let mut o = json!({
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": key,
        "value": value,
        "headers": headers,
    });
    if base64 {
        o["encoding"] = Value::String("base64".into());
    }
    o
}

fn bad_block(block: &BlockLocation, reason: String) -> ApiError {
    ApiError::Unavailable(format!(
        "block {}@{} of the index cannot be read: {reason}",
        block.key, block.position
    ))
}

fn store_err(e: strata_tiering::TieringError) -> ApiError {
    ApiError::Unavailable(format!("object store read failed: {e}"))
}

/// The data of one index block, checked, in pieces: a whole upload block, or a segment's
/// chunks from the one holding the start offset.
enum BlockChunks<'a> {
    Whole(Option<Bytes>),
    Segment {
        block: &'a BlockLocation,
        index: SegmentIndex,
        next: usize,
    },
}

impl<'a> BlockChunks<'a> {
    async fn open(
        store: &ObjectStore,
        block: &'a BlockLocation,
        from: i64,
    ) -> Result<BlockChunks<'a>, ApiError> {
        if !block.is_segment() {
            return Ok(BlockChunks::Whole(Some(read_whole(store, block).await?)));
        }
        let index = segment_index(store, block).await?;
        let next = index.chunk_for_offset(from).unwrap_or(index.chunks.len());
        Ok(BlockChunks::Segment { block, index, next })
    }

    async fn next(&mut self, store: &ObjectStore) -> Result<Option<Bytes>, ApiError> {
        match self {
            BlockChunks::Whole(data) => Ok(data.take()),
            BlockChunks::Segment { block, index, next } => {
                if *next >= index.chunks.len() {
                    return Ok(None);
                }
                let data = read_chunk(store, block, index, *next).await?;
                *next += 1;
                Ok(Some(data))
            }
        }
    }
}

/// An upload block: one ranged GET, its CRC32C checked, offsets made absolute.
async fn read_whole(store: &ObjectStore, block: &BlockLocation) -> Result<Bytes, ApiError> {
    let data = store
        .get_range(&block.key, block.position..block.position + block.len)
        .await
        .map_err(store_err)?;
    if block.crc32c != 0 {
        strata_tiering::verify_block(block, &data, block.crc32c)
            .map_err(|e| bad_block(block, e.to_string()))?;
    }
    absolute(block, data).map_err(|reason| bad_block(block, reason))
}

async fn segment_index(
    store: &ObjectStore,
    block: &BlockLocation,
) -> Result<SegmentIndex, ApiError> {
    let start = block.position + block.len;
    let bytes = store
        .get_range(&block.key, start..start + block.index_len)
        .await
        .map_err(store_err)?;
    decode_segment_index(block, &bytes).map_err(|e| bad_block(block, e.to_string()))
}

async fn read_chunk(
    store: &ObjectStore,
    block: &BlockLocation,
    index: &SegmentIndex,
    i: usize,
) -> Result<Bytes, ApiError> {
    let data = store
        .get_range(&block.key, index.chunks[i].range())
        .await
        .map_err(store_err)?;
    index
        .verify_chunk(&block.key, i, &data)
        .map_err(|e| bad_block(block, e.to_string()))?;
    Ok(data)
}

/// The offset of the first record with timestamp `>= ts` in `block` (for a segment, in the
/// chunk its time index names); `None` when there is none there.
async fn offset_for_time(
    store: &ObjectStore,
    block: &BlockLocation,
    ts: i64,
) -> Result<Option<i64>, ApiError> {
    let data = if block.is_segment() {
        let index = segment_index(store, block).await?;
        match index.chunk_for_time(ts) {
            Some(i) => read_chunk(store, block, &index, i).await?,
            None => return Ok(None),
        }
    } else {
        read_whole(store, block).await?
    };
    Ok(strata_broker::records::first_at_or_after_time(&data, ts).map(|(offset, _)| offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params() {
        let ok = |q: &str| FetchParams::parse(q).unwrap();
        assert_eq!(ok("").start, Start::LogStart);
        assert_eq!(ok("offset=5").start, Start::Offset(5));
        assert_eq!(ok("timestamp=7&max_records=3").max_records, 3);
        assert_eq!(ok("offset=0").max_bytes, MAX_BYTES_DEFAULT);
        let cases = [
            ("offset=1&timestamp=2", "not both"),
            ("offset=-1", "`offset` must be"),
            ("offset=x", "`offset` must be"),
            ("max_records=10001", "from 0 to 10000"),
            ("max_records=0", "must be positive"),
            ("whence=1", "unknown parameter `whence`"),
        ];
        for (q, want) in cases {
            let err = FetchParams::parse(q).unwrap_err();
            assert_eq!(err.status(), 400);
            assert!(err.to_string().contains(want), "{q}: {err}");
        }
    }
}
