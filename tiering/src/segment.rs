//! The segment format: one partition's history in one large object, with an offset and time
//! index in its footer.
//!
//! The uploader writes small objects that pack many partitions (cheap to write, cheap to make
//! durable); the compactor later rewrites a run of one partition's blocks into one *segment*
//! (cheap to keep, cheap to replay). A segment's data is a sequence of *chunks*: each chunk is
//! whole Kafka record batches, verbatim, about `chunk_bytes` long. The metadata index holds
//! one entry per segment (a [`BlockLocation`] with [`BlockLocation::index_len`] > 0) so it stays
//! small however much history there is; the footer's chunk index says where each offset and
//! each time lives inside the segment, so a reader needs one GET for the index (cached) and one
//! GET per chunk, never the whole segment. This module is pure: no IO, no clock.
//!
//! # Layout
//!
//! Integers of the index and trailer are **little-endian**; the batches keep Kafka's encoding.
//!
//! ```text
//! segment := chunk_0 | chunk_1 | … | chunk_{n-1} | index | trailer
//!
//! index   := version u16 (= 1) | reserved u16 (= 0) | chunk_count u32
//!            | topic_id [u8; 16] | partition u32 | reserved u32 (= 0) | entry × chunk_count
//!
//! entry (40 bytes) — the offset index and the time index in one row:
//!    0  base_offset     i64   first offset in the chunk
//!    8  end_offset      i64   one past the last offset (exclusive)
//!   16  position        u64   byte position of the chunk in the segment
//!   24  len             u32   chunk length in bytes
//!   28  crc32c          u32   CRC32C of the chunk's bytes
//!   32  max_timestamp   i64   largest record timestamp in the chunk (ms), -1 when unknown
//!
//! trailer (16 bytes, the last bytes of the segment):
//!    0  index_len       u32   bytes in `index`
//!    4  index_crc32c    u32   CRC32C of the index bytes
//!    8  magic           [u8; 8]  b"STRATSG1"
//! ```
//!
//! # Invariants checked by the decoder
//!
//! The magic, the index CRC and version match; chunks are non-empty, contiguous from position
//! 0 to the start of the index, and their offset ranges are contiguous and increasing. Chunk
//! CRCs are checked by whoever reads a chunk ([`SegmentIndex::verify_chunk`]).
//!
//! # Finding a time
//!
//! Record timestamps need not increase with offsets (CreateTime is the producer's clock). As
//! Kafka does, "the first offset whose timestamp is ≥ t" is found through the running maximum
//! of the chunks' `max_timestamp`: the first chunk whose running maximum reaches `t` holds the
//! answer (no earlier chunk has a record that late).

use bytes::{BufMut, Bytes, BytesMut};
use strata_types::batch::Batches;
use strata_types::{BlockLocation, TopicId};

use crate::TieringError;

/// Last eight bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"STRATSG1";
/// The index version this code writes and reads.
pub const SEGMENT_INDEX_VERSION: u16 = 1;
/// Bytes of the trailer.
pub const SEGMENT_TRAILER_BYTES: usize = 16;
/// Bytes of the index header.
pub const SEGMENT_INDEX_HEADER_BYTES: usize = 32;
/// Bytes of one index entry.
pub const SEGMENT_ENTRY_BYTES: usize = 40;
/// Largest chunk (a chunk's length is a `u32`; one batch larger than this cannot be stored).
pub const CHUNK_BYTES_MAX: u64 = u32::MAX as u64;

/// One chunk of a segment, as its index row says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    pub base_offset: i64,
    pub end_offset: i64,
    pub position: u64,
    pub len: u32,
    pub crc32c: u32,
    pub max_timestamp: i64,
}

impl ChunkEntry {
    /// The byte range of the chunk inside its segment.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.position..self.position + self.len as u64
    }
}

/// A segment's decoded index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentIndex {
    pub topic: TopicId,
    pub partition: u32,
    pub chunks: Vec<ChunkEntry>,
    /// `max_timestamp_prefix[i]` = max of `chunks[..=i].max_timestamp` (monotonic).
    max_timestamp_prefix: Vec<i64>,
}

impl SegmentIndex {
    /// The chunk holding `offset`, or the first one after it; `None` past the end.
    pub fn chunk_for_offset(&self, offset: i64) -> Option<usize> {
        let at = self.chunks.partition_point(|c| c.end_offset <= offset);
        (at < self.chunks.len()).then_some(at)
    }

    /// The first chunk that may hold a record with timestamp `>= ts` (see the module docs);
    /// `None` when every record is older.
    pub fn chunk_for_time(&self, ts: i64) -> Option<usize> {
        let at = self.max_timestamp_prefix.partition_point(|&max| max < ts);
        (at < self.chunks.len()).then_some(at)
    }

    /// Bytes of batch data in the segment (the index and trailer follow them).
    pub fn data_len(&self) -> u64 {
        self.chunks.last().map_or(0, |c| c.position + c.len as u64)
    }

    /// Checks that `data` is chunk `i`'s bytes.
    pub fn verify_chunk(&self, key: &str, i: usize, data: &[u8]) -> Result<(), TieringError> {
        let chunk = &self.chunks[i];
        let computed = crc32c::crc32c(data);
        if data.len() as u64 != chunk.len as u64 || computed != chunk.crc32c {
            return Err(TieringError::BlockChecksumMismatch {
                key: key.to_owned(),
                position: chunk.position,
                len: data.len() as u64,
                expected_len: chunk.len as u64,
                stored: chunk.crc32c,
                computed,
            });
        }
        Ok(())
    }
}

/// Builds one segment from one partition's batches, in offset order.
///
/// Batches are copied once, into the segment's buffer; a new chunk starts when the current one
/// has reached `chunk_bytes` (so a chunk is at least one batch, and at most `chunk_bytes` plus
/// one batch).
#[derive(Debug)]
pub struct SegmentBuilder {
    key: String,
    topic: TopicId,
    partition: u32,
    chunk_bytes: u64,
    buf: BytesMut,
    chunks: Vec<ChunkEntry>,
    /// The chunk being filled: (base offset, end offset, position, max timestamp, crc).
    open: Option<(i64, i64, u64, i64, u32)>,
}

impl SegmentBuilder {
    /// Starts a segment of `topic`/`partition` to be stored under `key`, with chunks of about
    /// `chunk_bytes` (at least 1).
    pub fn new(
        key: String,
        topic: TopicId,
        partition: u32,
        chunk_bytes: u64,
        capacity: usize,
    ) -> Self {
        Self {
            key,
            topic,
            partition,
            chunk_bytes: chunk_bytes.clamp(1, CHUNK_BYTES_MAX),
            buf: BytesMut::with_capacity(capacity),
            chunks: Vec::new(),
            open: None,
        }
    }

    /// Appends whole batches (`data` is one or more complete v2 record batches, as a block
    /// holds them). Their offsets must continue exactly where the segment ends.
    pub fn push_batches(&mut self, data: &[u8]) -> Result<(), TieringError> {
        for item in Batches::new(data) {
            let (header, pos) = item.map_err(|e| TieringError::ObjectCorrupt {
                key: self.key.clone(),
                reason: format!("a source batch does not parse: {e}"),
            })?;
            let end = header.last_offset() + 1;
            if let Some(expected) = self.end_offset() {
                if header.base_offset != expected {
                    return Err(TieringError::ObjectCorrupt {
                        key: self.key.clone(),
                        reason: format!(
                            "batch at offset {} does not continue the segment at {expected}",
                            header.base_offset
                        ),
                    });
                }
            }
            let bytes = &data[pos..pos + header.size];
            if let Some(open) = self.open {
                if self.buf.len() as u64 - open.2 >= self.chunk_bytes
                    || self.buf.len() as u64 - open.2 + bytes.len() as u64 > CHUNK_BYTES_MAX
                {
                    self.close_chunk();
                }
            }
            let position = self.buf.len() as u64;
            let open = self
                .open
                .get_or_insert((header.base_offset, end, position, -1, 0));
            open.1 = end;
            open.3 = open.3.max(header.max_timestamp);
            open.4 = crc32c::crc32c_append(open.4, bytes);
            self.buf.put_slice(bytes);
        }
        Ok(())
    }

    fn close_chunk(&mut self) {
        if let Some((base_offset, end_offset, position, max_timestamp, crc32c)) = self.open.take() {
            self.chunks.push(ChunkEntry {
                base_offset,
                end_offset,
                position,
                len: (self.buf.len() as u64 - position) as u32,
                crc32c,
                max_timestamp,
            });
        }
    }

    /// One past the last offset pushed, `None` before the first batch.
    pub fn end_offset(&self) -> Option<i64> {
        self.open
            .map(|o| o.1)
            .or_else(|| self.chunks.last().map(|c| c.end_offset))
    }

    /// Bytes of batch data pushed so far.
    pub fn data_bytes(&self) -> u64 {
        self.buf.len() as u64
    }

    /// The finished segment and its metadata index entry; `None` when nothing was pushed.
    pub fn finish(mut self) -> Option<(Bytes, BlockLocation)> {
        self.close_chunk();
        let first = self.chunks.first()?;
        let last = self.chunks.last()?;
        let (base_offset, end_offset) = (first.base_offset, last.end_offset);
        let max_timestamp = self.chunks.iter().map(|c| c.max_timestamp).max()?;
        let data_len = self.buf.len() as u64;
        let index_start = self.buf.len();
        let buf = &mut self.buf;
        buf.put_u16_le(SEGMENT_INDEX_VERSION);
        buf.put_u16_le(0);
        buf.put_u32_le(self.chunks.len() as u32);
        buf.put_slice(self.topic.as_bytes());
        buf.put_u32_le(self.partition);
        buf.put_u32_le(0);
        for c in &self.chunks {
            buf.put_i64_le(c.base_offset);
            buf.put_i64_le(c.end_offset);
            buf.put_u64_le(c.position);
            buf.put_u32_le(c.len);
            buf.put_u32_le(c.crc32c);
            buf.put_i64_le(c.max_timestamp);
        }
        let index_len = buf.len() - index_start;
        let index_crc = crc32c::crc32c(&buf[index_start..]);
        buf.put_u32_le(index_len as u32);
        buf.put_u32_le(index_crc);
        buf.put_slice(&SEGMENT_MAGIC);
        let location = BlockLocation {
            key: self.key,
            topic: self.topic,
            partition: self.partition,
            base_offset,
            end_offset,
            position: 0,
            len: data_len,
            max_timestamp,
            crc32c: 0,
            index_len: (index_len + SEGMENT_TRAILER_BYTES) as u64,
            relative: false,
        };
        Some((self.buf.freeze(), location))
    }
}

/// Decodes a segment's index from exactly its index and trailer bytes (the range
/// `location.position + location.len ..` of length `location.index_len`), checking it against
/// the metadata entry `location`.
pub fn decode_segment_index(
    location: &BlockLocation,
    bytes: &[u8],
) -> Result<SegmentIndex, TieringError> {
    let key = location.key.as_str();
    let corrupt = |reason: String| TieringError::ObjectCorrupt {
        key: key.to_owned(),
        reason,
    };
    let Some(trailer_at) = bytes.len().checked_sub(SEGMENT_TRAILER_BYTES) else {
        return Err(corrupt(format!(
            "{} bytes cannot hold the segment trailer",
            bytes.len()
        )));
    };
    let t = &bytes[trailer_at..];
    if t[8..16] != SEGMENT_MAGIC {
        return Err(corrupt("the trailer magic is not STRATSG1".into()));
    }
    let index_len = le_u32(t, 0) as usize;
    if index_len != trailer_at {
        return Err(corrupt(format!(
            "the trailer says the index has {index_len} bytes; {trailer_at} precede it"
        )));
    }
    let index = &bytes[..trailer_at];
    let computed = crc32c::crc32c(index);
    if computed != le_u32(t, 4) {
        return Err(corrupt(format!(
            "index CRC32C mismatch: stored {:#010x}, computed {computed:#010x}",
            le_u32(t, 4)
        )));
    }
    if index.len() < SEGMENT_INDEX_HEADER_BYTES {
        return Err(corrupt("the index has no header".into()));
    }
    let version = le_u16(index, 0);
    if version != SEGMENT_INDEX_VERSION {
        return Err(corrupt(format!(
            "index version {version} is not supported (this build reads {SEGMENT_INDEX_VERSION})"
        )));
    }
    let count = le_u32(index, 4) as usize;
    let mut topic = [0u8; 16];
    topic.copy_from_slice(&index[8..24]);
    let topic = TopicId::from_bytes(topic);
    let partition = le_u32(index, 24);
    if topic != location.topic || partition != location.partition {
        return Err(corrupt(format!(
            "the index is of {topic}/{partition}, metadata says {}/{}",
            location.topic, location.partition
        )));
    }
    let body = &index[SEGMENT_INDEX_HEADER_BYTES..];
    if count == 0 || body.len() != count * SEGMENT_ENTRY_BYTES {
        return Err(corrupt(format!(
            "the index claims {count} chunks but holds {} entry bytes",
            body.len()
        )));
    }
    let mut chunks = Vec::with_capacity(count);
    let mut prefix = Vec::with_capacity(count);
    let mut running = i64::MIN;
    let mut position = 0u64;
    let mut offset = location.base_offset;
    for raw in body.chunks_exact(SEGMENT_ENTRY_BYTES) {
        let c = ChunkEntry {
            base_offset: le_i64(raw, 0),
            end_offset: le_i64(raw, 8),
            position: le_u64(raw, 16),
            len: le_u32(raw, 24),
            crc32c: le_u32(raw, 28),
            max_timestamp: le_i64(raw, 32),
        };
        if c.position != position || c.len == 0 {
            return Err(corrupt(format!(
                "chunk at {} of {} bytes does not follow the previous one (expected position {position})",
                c.position, c.len
            )));
        }
        if c.base_offset != offset || c.end_offset <= c.base_offset {
            return Err(corrupt(format!(
                "chunk of offsets {}..{} does not continue at {offset}",
                c.base_offset, c.end_offset
            )));
        }
        position += c.len as u64;
        offset = c.end_offset;
        running = running.max(c.max_timestamp);
        prefix.push(running);
        chunks.push(c);
    }
    if position != location.len || offset != location.end_offset {
        return Err(corrupt(format!(
            "the chunks cover bytes 0..{position} and offsets ..{offset}; metadata says {} bytes and offsets ..{}",
            location.len, location.end_offset
        )));
    }
    Ok(SegmentIndex {
        topic,
        partition,
        chunks,
        max_timestamp_prefix: prefix,
    })
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn le_i64(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_types::batch::test_support::make_batch;

    fn topic() -> TopicId {
        TopicId::from_bytes([7; 16])
    }

    /// `n` batches of `per` records from offset `from`, timestamps from `ts` by `step`.
    fn batches(from: i64, n: i64, per: i32, ts: i64, step: i64) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let t = ts + i * step;
            out.extend(make_batch(from + i * per as i64, per, t, t + 5));
        }
        out
    }

    fn build(chunk_bytes: u64, data: &[&[u8]]) -> (Bytes, BlockLocation) {
        let mut b = SegmentBuilder::new("seg/k".into(), topic(), 3, chunk_bytes, 0);
        for d in data {
            b.push_batches(d).unwrap();
        }
        b.finish().unwrap()
    }

    fn index_of(object: &Bytes, loc: &BlockLocation) -> SegmentIndex {
        let start = (loc.position + loc.len) as usize;
        assert_eq!(object.len() as u64, loc.len + loc.index_len);
        decode_segment_index(loc, &object[start..]).unwrap()
    }

    #[test]
    fn round_trip_offsets_times_and_chunks() {
        let a = batches(100, 10, 4, 1_000, 100);
        let b = batches(140, 10, 4, 2_000, 100);
        let (object, loc) = build(300, &[&a, &b]);
        assert_eq!((loc.base_offset, loc.end_offset), (100, 180));
        assert_eq!(loc.max_timestamp, 2_000 + 9 * 100 + 5);
        let index = index_of(&object, &loc);
        assert!(
            index.chunks.len() > 1,
            "small chunk size makes several chunks"
        );
        // Every chunk verifies, and the concatenated chunks are the input, verbatim.
        let mut joined = Vec::new();
        for (i, c) in index.chunks.iter().enumerate() {
            let bytes = &object[c.range().start as usize..c.range().end as usize];
            index.verify_chunk(&loc.key, i, bytes).unwrap();
            joined.extend_from_slice(bytes);
        }
        assert_eq!(joined, [a, b].concat());
        // Offset lookups: inside, at a chunk boundary, before the start, past the end.
        for off in [100, 137, 150, 179] {
            let c = index.chunks[index.chunk_for_offset(off).unwrap()];
            assert!(c.base_offset <= off && off < c.end_offset);
        }
        assert_eq!(index.chunk_for_offset(50), Some(0));
        assert_eq!(index.chunk_for_offset(180), None);
    }

    #[test]
    fn time_lookup_uses_the_running_maximum() {
        // Chunk timestamps out of order: 5_000 first, then 1_000.
        let a = batches(0, 3, 1, 5_000, 1);
        let b = batches(3, 3, 1, 1_000, 1);
        let c = batches(6, 3, 1, 9_000, 1);
        let one = make_batch(0, 1, 0, 0).len() as u64;
        let (object, loc) = build(one * 3, &[&a, &b, &c]);
        let index = index_of(&object, &loc);
        assert_eq!(index.chunks.len(), 3);
        // A time only the first chunk reaches is found in the first chunk even though the
        // second chunk's records are older.
        assert_eq!(index.chunk_for_time(2_000), Some(0));
        assert_eq!(index.chunk_for_time(6_000), Some(2));
        assert_eq!(index.chunk_for_time(100_000), None);
    }

    #[test]
    fn a_gap_in_offsets_is_refused() {
        let mut b = SegmentBuilder::new("k".into(), topic(), 0, 1024, 0);
        b.push_batches(&batches(0, 2, 2, 0, 1)).unwrap();
        let err = b.push_batches(&batches(10, 1, 1, 0, 1)).unwrap_err();
        assert!(err.to_string().contains("does not continue"), "{err}");
    }

    #[test]
    fn damage_to_the_index_or_a_mismatched_entry_is_named() {
        let (object, loc) = build(200, &[&batches(0, 6, 2, 10, 10)]);
        let start = (loc.position + loc.len) as usize;
        let mut bad = object[start..].to_vec();
        bad[40] ^= 1;
        let err = decode_segment_index(&loc, &bad).unwrap_err();
        assert!(err.to_string().contains("CRC32C"), "{err}");
        let mut other = loc.clone();
        other.end_offset += 1;
        let err = decode_segment_index(&other, &object[start..]).unwrap_err();
        assert!(err.to_string().contains("metadata says"), "{err}");
        let err = decode_segment_index(&loc, &object[start + 4..]).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        // A flipped chunk byte is caught by the chunk check.
        let index = index_of(&object, &loc);
        let c = index.chunks[1];
        let mut chunk = object[c.range().start as usize..c.range().end as usize].to_vec();
        chunk[0] ^= 0x80;
        assert!(index.verify_chunk(&loc.key, 1, &chunk).is_err());
    }
}
