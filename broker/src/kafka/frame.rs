//! Response frames as byte segments, so fetched records reach the socket without a copy.
//!
//! A Fetch response is mostly record bytes the broker already holds (tail batches, cached
//! segment chunks, each a reference-counted `Bytes`). Encoding them with kafka-protocol into
//! one buffer copies every byte, growing that buffer copies them again, and joining a
//! partition's chunks into the one `records` field copies them a third time — and each big
//! fresh buffer costs the kernel a page fault and a page clear per 4 KiB. Here:
//!
//! - [`RecordSet`] registers each partition's records (a list of chunks) and gives back the
//!   `Bytes` to put in `PartitionData::records`: the chunk itself when there is one, else a
//!   *stand-in* — a slice of [`STAND_IN`], a zeroed static that is never read (its pages are
//!   never touched), as long as the chunks together and at a position unique in the response.
//! - [`SegmentWriter`] is the `ByteBufMut` the response is encoded into. It copies the small
//!   fields; when the encoder puts a slice that lies inside registered records (a pointer-range
//!   check), it ends the current segment and takes the chunks' own `Bytes` for that range.
//! - The connection's writer writes a [`Frame`]'s segments in order (`server.rs`).
//!
//! *Invariant:* a stand-in's bytes never leave the broker. [`encode_fetch`] checks that every
//! stand-in byte was replaced by chunk bytes; if the encoder ever wrote one by another path,
//! the response is encoded again the old way, by copying the joined chunks.

use super::handlers;
use bytes::{buf::UninitSlice, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::Encodable;
use std::ops::Range;

/// Record bytes of one response that can be stood in for; records beyond are joined (copied).
/// Virtual only: the static lives in `.bss` and nothing reads it.
pub const STAND_IN_BYTES: usize = 128 * 1024 * 1024;
static STAND_IN: [u8; STAND_IN_BYTES] = [0; STAND_IN_BYTES];

/// Slices of records shorter than this are copied into the current segment (a separate
/// segment costs more than copying a few KiB).
const SEGMENT_BYTES_MIN: usize = 4096;

/// One response frame (size prefix included), as segments written in order.
#[derive(Debug, Default, Clone)]
pub struct Frame {
    segments: Vec<Bytes>,
}

impl From<BytesMut> for Frame {
    fn from(buf: BytesMut) -> Self {
        Frame {
            segments: vec![buf.freeze()],
        }
    }
}

impl Frame {
    pub fn segments(&self) -> &[Bytes] {
        &self.segments
    }

    pub fn len(&self) -> usize {
        self.segments.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame as one buffer (a copy; for tests and diagnostics).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len());
        for s in &self.segments {
            out.extend_from_slice(s);
        }
        out.freeze()
    }
}

/// Registered records: `base..base + len` (addresses) stands for `chunks` laid end to end.
#[derive(Debug)]
struct Registered {
    base: usize,
    len: usize,
    chunks: Vec<Bytes>,
    stand_in: bool,
}

/// The records of one Fetch response, registered so the encoder's copies of them become
/// references (see the module docs).
#[derive(Debug, Default)]
pub struct RecordSet {
    /// Sorted by `base` once encoding starts.
    registered: Vec<Registered>,
    /// Bytes of [`STAND_IN`] handed out.
    stand_in_used: usize,
}

impl RecordSet {
    /// The value for `PartitionData::records` holding `chunks` (whole batches, in order).
    pub fn add(&mut self, mut chunks: Vec<Bytes>) -> Bytes {
        chunks.retain(|c| !c.is_empty());
        let len: usize = chunks.iter().map(Bytes::len).sum();
        let (records, stand_in) = match chunks.len() {
            0 => return Bytes::new(),
            1 => (chunks[0].clone(), false),
            // Below the size the writer splices, the encoder's `put_slice` would copy the
            // stand-in itself: join small sets (one small copy) instead.
            _ if len < SEGMENT_BYTES_MIN => return self.add(vec![join(&chunks)]),
            _ if self.stand_in_used + len <= STAND_IN_BYTES => {
                let at = self.stand_in_used;
                self.stand_in_used += len;
                (Bytes::from_static(&STAND_IN[at..at + len]), true)
            }
            // Out of stand-in space: one joined copy, then referenced like a single chunk.
            _ => return self.add(vec![join(&chunks)]),
        };
        self.registered.push(Registered {
            base: records.as_ptr() as usize,
            len,
            chunks,
            stand_in,
        });
        records
    }

    /// The real bytes behind `records` when it is a stand-in (a copy), else `None`.
    fn real(&self, records: &Bytes) -> Option<Bytes> {
        let base = records.as_ptr() as usize;
        self.registered
            .iter()
            .find(|r| r.stand_in && r.base == base && r.len == records.len())
            .map(|r| join(&r.chunks))
    }
}

fn join(chunks: &[Bytes]) -> Bytes {
    let mut buf = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks {
        buf.extend_from_slice(c);
    }
    buf.freeze()
}

/// A `ByteBufMut` that copies small writes into the current segment and turns writes of
/// registered record bytes into references to them.
pub struct SegmentWriter<'a> {
    registered: &'a [Registered],
    segments: Vec<Bytes>,
    cur: BytesMut,
    /// Bytes in `segments`.
    sealed: usize,
    /// Stand-in bytes replaced by chunk bytes so far.
    replaced: usize,
}

impl<'a> SegmentWriter<'a> {
    fn new(registered: &'a [Registered]) -> Self {
        debug_assert!(registered.windows(2).all(|w| w[0].base <= w[1].base));
        SegmentWriter {
            registered,
            segments: Vec::new(),
            cur: BytesMut::with_capacity(4096),
            sealed: 0,
            replaced: 0,
        }
    }

    /// The registered records holding all of `src`, and where `src` starts in them.
    fn find(&self, src: &[u8]) -> Option<(&'a Registered, usize)> {
        let start = src.as_ptr() as usize;
        let end = start + src.len();
        let registered = self.registered;
        let i = registered.partition_point(|r| r.base <= start);
        let r = registered.get(i.checked_sub(1)?)?;
        (end <= r.base + r.len).then_some((r, start - r.base))
    }

    fn seal(&mut self) {
        if !self.cur.is_empty() {
            let part = self.cur.split().freeze();
            self.sealed += part.len();
            self.segments.push(part);
        }
    }

    /// Puts `range` of `r`'s chunks (laid end to end): big pieces as references.
    fn splice(&mut self, r: &Registered, range: Range<usize>) {
        let mut at = 0usize;
        for chunk in &r.chunks {
            let (lo, hi) = (range.start.max(at), range.end.min(at + chunk.len()));
            if lo < hi {
                let piece = chunk.slice(lo - at..hi - at);
                if piece.len() < SEGMENT_BYTES_MIN {
                    self.cur.extend_from_slice(&piece);
                } else {
                    self.seal();
                    self.sealed += piece.len();
                    self.segments.push(piece);
                }
            }
            at += chunk.len();
            if at >= range.end {
                break;
            }
        }
        if r.stand_in {
            self.replaced += range.len();
        }
    }

    fn finish(mut self) -> (Vec<Bytes>, usize) {
        self.seal();
        (self.segments, self.replaced)
    }
}

// SAFETY: every method forwards to `cur` (a `BytesMut`), whose contract holds as is;
// `put_slice` only appends initialized bytes to `cur` or seals it and pushes whole segments.
// The workspace denies `unsafe_code`; `BufMut` is an unsafe trait, and kafka-protocol's
// encoders write only into a `ByteBufMut: BufMut`, so this forwarding impl is the one way in.
#[allow(unsafe_code)]
unsafe impl BufMut for SegmentWriter<'_> {
    fn remaining_mut(&self) -> usize {
        self.cur.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialized `cnt` bytes of `chunk_mut()`, which is `cur`'s.
        unsafe { self.cur.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.cur.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= SEGMENT_BYTES_MIN {
            if let Some((r, at)) = self.find(src) {
                self.splice(r, at..at + src.len());
                return;
            }
        }
        self.cur.extend_from_slice(src);
    }
}

/// Only the open segment is addressable: kafka-protocol seeks and fills gaps only while
/// encoding record batches, which never happens into this writer (records are put whole).
impl ByteBufMut for SegmentWriter<'_> {
    fn offset(&self) -> usize {
        self.sealed + self.cur.len()
    }

    fn seek(&mut self, offset: usize) {
        assert!(offset >= self.sealed, "seek into a sealed segment");
        self.cur.resize(offset - self.sealed, 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        assert!(r.start >= self.sealed, "range in a sealed segment");
        &mut self.cur[r.start - self.sealed..r.end - self.sealed]
    }
}

/// Why a segmented encoding was not used.
#[derive(Debug, thiserror::Error)]
enum SegmentError {
    #[error("encoding failed: {0}")]
    Encode(String),
    #[error("{replaced} of {expected} stand-in bytes were replaced")]
    StandInLeft { replaced: usize, expected: usize },
}

/// `body` (holding `records`' values) as segments: size prefix, header, body.
fn encode_segments(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
    records: &mut RecordSet,
) -> Result<Frame, SegmentError> {
    records.registered.sort_by_key(|r| r.base);
    let mut w = SegmentWriter::new(&records.registered);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    // `ResponseKind::encode` takes only a `BytesMut`; the message types take any `ByteBufMut`.
    let ResponseKind::Fetch(fetch) = body else {
        return Err(SegmentError::Encode("not a Fetch response".into()));
    };
    header
        .encode(&mut w, api_key.response_header_version(version))
        .and_then(|()| fetch.encode(&mut w, version))
        .map_err(|e| SegmentError::Encode(e.to_string()))?;
    let (mut segments, replaced) = w.finish();
    if replaced != records.stand_in_used {
        return Err(SegmentError::StandInLeft {
            replaced,
            expected: records.stand_in_used,
        });
    }
    let size: usize = segments.iter().map(Bytes::len).sum();
    let size = i32::try_from(size).map_err(|e| SegmentError::Encode(e.to_string()))?;
    segments.insert(0, Bytes::copy_from_slice(&size.to_be_bytes()));
    Ok(Frame { segments })
}

/// A Fetch response frame whose records are referenced, not copied. Falls back to the copying
/// encoder (with the stand-ins replaced by joined chunks) if that ever fails.
pub fn encode_fetch(
    version: i16,
    correlation_id: i32,
    body: ResponseKind,
    mut records: RecordSet,
) -> Frame {
    let api_key = ApiKey::Fetch;
    match encode_segments(api_key, version, correlation_id, &body, &mut records) {
        Ok(frame) => frame,
        Err(err) => {
            tracing::error!(version, %err, "segmented Fetch encoding failed; copying");
            encode_copying(version, correlation_id, body, &records)
        }
    }
}

/// The copying encoder, with every stand-in in `body` replaced by its joined chunks.
fn encode_copying(
    version: i16,
    correlation_id: i32,
    mut body: ResponseKind,
    records: &RecordSet,
) -> Frame {
    if let ResponseKind::Fetch(resp) = &mut body {
        for pd in resp
            .responses
            .iter_mut()
            .flat_map(|t| t.partitions.iter_mut())
        {
            if let Some(real) = pd.records.as_ref().and_then(|r| records.real(r)) {
                pd.records = Some(real);
            }
        }
    }
    handlers::encode(ApiKey::Fetch, version, correlation_id, &body).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{FetchResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;

    /// A small deterministic generator (xorshift), so a failure names its seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        fn bytes(&mut self, n: usize) -> Bytes {
            (0..n).map(|_| self.next() as u8).collect::<Vec<_>>().into()
        }
    }

    /// A random Fetch response: its topics and partitions, each partition's records as chunks.
    fn random_response(rng: &mut Rng) -> (FetchResponse, Vec<Vec<Vec<Bytes>>>) {
        let mut chunks = Vec::new();
        let mut topics = Vec::new();
        for t in 0..rng.below(4) + 1 {
            let mut parts = Vec::new();
            let mut topic_chunks = Vec::new();
            for p in 0..rng.below(5) {
                // Chunk sizes across the copy threshold: tiny, just under, just over, large.
                let sizes = [0, 1, 100, SEGMENT_BYTES_MIN - 1, SEGMENT_BYTES_MIN, 70_000];
                let n = rng.below(4) as usize;
                let cs: Vec<Bytes> = (0..n)
                    .map(|_| {
                        let size = sizes[rng.below(sizes.len() as u64) as usize];
                        rng.bytes(size)
                    })
                    .collect();
                parts.push(
                    PartitionData::default()
                        .with_partition_index(p as i32)
                        .with_high_watermark(rng.below(1 << 40) as i64)
                        .with_error_code((rng.below(3) as i16) - 1),
                );
                topic_chunks.push(cs);
            }
            topics.push(
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(format!("topic-{t}"))))
                    .with_partitions(parts),
            );
            chunks.push(topic_chunks);
        }
        (FetchResponse::default().with_responses(topics), chunks)
    }

    /// Segments reproduce the copying encoder's frame byte for byte, for every Fetch version
    /// we serve and random responses.
    #[test]
    fn segments_match_the_copying_encoder() {
        let (min, max) = super::super::versions::range(ApiKey::Fetch).unwrap();
        for seed in 1..=200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (resp, chunks) = random_response(&mut rng);
            for version in min..=max {
                // The old way: each partition's chunks joined into its records.
                let mut copied = resp.clone();
                let mut segmented = resp.clone();
                let mut records = RecordSet::default();
                for (ti, t) in chunks.iter().enumerate() {
                    for (pi, cs) in t.iter().enumerate() {
                        copied.responses[ti].partitions[pi].records = Some(join(cs));
                        segmented.responses[ti].partitions[pi].records =
                            Some(records.add(cs.clone()));
                    }
                }
                let expected =
                    handlers::encode(ApiKey::Fetch, version, 7, &ResponseKind::Fetch(copied));
                // Never the copying fallback: every stand-in is replaced by the writer.
                let frame = encode_segments(
                    ApiKey::Fetch,
                    version,
                    7,
                    &ResponseKind::Fetch(segmented),
                    &mut records,
                )
                .unwrap_or_else(|e| panic!("seed {seed}, version {version}: {e}"));
                assert_eq!(
                    frame.to_bytes(),
                    expected.freeze(),
                    "seed {seed}, version {version}"
                );
            }
        }
    }

    fn one_partition(records: Bytes) -> ResponseKind {
        ResponseKind::Fetch(
            FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                .with_partitions(vec![PartitionData::default().with_records(Some(records))])]),
        )
    }

    /// Large chunks travel as references to the very same memory (no copy).
    #[test]
    fn large_chunks_are_referenced() {
        let big = Bytes::from(vec![7u8; 100_000]);
        let other = Bytes::from(vec![8u8; 50_000]);
        let mut records = RecordSet::default();
        let value = records.add(vec![big.clone(), Bytes::new(), other.clone()]);
        assert_eq!(value.len(), 150_000);
        let frame = encode_fetch(12, 1, one_partition(value), records);
        let ptrs: Vec<*const u8> = frame.segments().iter().map(|s| s.as_ptr()).collect();
        assert!(
            ptrs.contains(&big.as_ptr()),
            "the first chunk is referenced"
        );
        assert!(
            ptrs.contains(&other.as_ptr()),
            "the second chunk is referenced"
        );
        let joined = join(&[big, other]);
        let expected = handlers::encode(ApiKey::Fetch, 12, 1, &one_partition(joined));
        assert_eq!(frame.to_bytes(), expected.freeze());
    }

    /// A stand-in the encoder never put through `put_slice` is caught, and the copying
    /// encoder replaces stand-ins by their chunks.
    #[test]
    fn an_unreplaced_stand_in_is_caught_and_copied_instead() {
        let mut records = RecordSet::default();
        let (a, b) = (Bytes::from(vec![1u8; 5000]), Bytes::from(vec![2u8; 5000]));
        let value = records.add(vec![a.clone(), b.clone()]);
        // The body carries a copy of the stand-in, as if the encoder had written it by another
        // path: the writer cannot see it, so nothing is replaced.
        let copy = Bytes::copy_from_slice(&value);
        let err =
            encode_segments(ApiKey::Fetch, 12, 1, &one_partition(copy), &mut records).unwrap_err();
        assert!(
            matches!(
                err,
                SegmentError::StandInLeft {
                    replaced: 0,
                    expected: 10_000
                }
            ),
            "{err}"
        );
        let copied = encode_copying(12, 1, one_partition(value), &records);
        let expected = handlers::encode(ApiKey::Fetch, 12, 1, &one_partition(join(&[a, b])));
        assert_eq!(copied.to_bytes(), expected.freeze());
    }

    /// Past the stand-in budget, records are joined and referenced as one chunk.
    #[test]
    fn beyond_the_stand_in_budget_records_are_joined() {
        let mut records = RecordSet {
            stand_in_used: STAND_IN_BYTES - 10,
            ..Default::default()
        };
        let value = records.add(vec![Bytes::from(vec![3u8; 6]), Bytes::from(vec![4u8; 6])]);
        assert_eq!(&value[..], &[3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4]);
        assert!(records.real(&value).is_none(), "not a stand-in");
    }
}
