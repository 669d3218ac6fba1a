//! A zero-copy view of Kafka record batches (message format v2, "magic 2").
//!
//! StrataMQ stores record batches exactly as producers send them and serves them to consumers
//! without re-encoding. The broker only reads the fixed 61-byte header, checks the CRC, and
//! rewrites the fields outside the CRC that depend on where the batch lands (base offset,
//! partition leader epoch). Layout, big-endian, from the start of a batch:
//!
//! ```text
//!  0  base_offset            i64   rewritten by the broker
//!  8  batch_length           i32   bytes that follow this field
//! 12  partition_leader_epoch i32   rewritten by the broker
//! 16  magic                  i8    must be 2
//! 17  crc                    u32   CRC32C of bytes 21..end
//! 21  attributes             i16   bits 0-2 codec, 3 timestamp type, 4 transactional, 5 control
//! 23  last_offset_delta      i32
//! 27  base_timestamp         i64
//! 35  max_timestamp          i64
//! 43  producer_id            i64
//! 51  producer_epoch         i16
//! 53  base_sequence          i32
//! 57  records_count          i32
//! 61  records …                    compressed as a whole when codec != none
//! ```

/// Size of the fixed batch header.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Offset of the `batch_length` field's end: `12 + batch_length` is the batch's total size.
pub const BATCH_LOG_OVERHEAD_BYTES: usize = 12;
const CRC_START: usize = 21;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch is truncated: {available} bytes available, {needed} needed")]
    Truncated { available: usize, needed: usize },
    #[error("record batch has magic {magic}; only message format v2 (magic 2) is supported")]
    UnsupportedMagic { magic: i8 },
    #[error("record batch length {length} is invalid")]
    BadLength { length: i32 },
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("record batch claims {records} records with last offset delta {last_offset_delta}")]
    BadCount {
        records: i32,
        last_offset_delta: i32,
    },
}

/// Compression codec in a batch's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
    Unknown(u8),
}

/// The decoded fixed header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Total size of the batch in bytes, header included.
    pub size: usize,
    pub partition_leader_epoch: i32,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

impl BatchHeader {
    /// Parses the header of the batch at the start of `buf`. Checks framing and magic, not
    /// the CRC (see [`verify_crc`]).
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::Truncated {
                available: buf.len(),
                needed: BATCH_HEADER_BYTES,
            });
        }
        let length = be_i32(buf, 8);
        if length < (BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD_BYTES) as i32 {
            return Err(BatchError::BadLength { length });
        }
        let magic = buf[16] as i8;
        if magic != 2 {
            return Err(BatchError::UnsupportedMagic { magic });
        }
        let size = BATCH_LOG_OVERHEAD_BYTES + length as usize;
        if buf.len() < size {
            return Err(BatchError::Truncated {
                available: buf.len(),
                needed: size,
            });
        }
        let header = Self {
            base_offset: be_i64(buf, 0),
            size,
            partition_leader_epoch: be_i32(buf, 12),
            crc: u32::from_be_bytes(buf[17..21].try_into().expect("4 bytes")),
            attributes: be_i16(buf, 21),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            records_count: be_i32(buf, 57),
        };
        if header.records_count < 0
            || header.last_offset_delta < 0
            || (header.records_count > 0 && header.last_offset_delta < header.records_count - 1)
        {
            return Err(BatchError::BadCount {
                records: header.records_count,
                last_offset_delta: header.last_offset_delta,
            });
        }
        Ok(header)
    }

    /// Number of offsets the batch occupies (`last_offset_delta + 1`).
    pub fn offset_count(&self) -> i64 {
        i64::from(self.last_offset_delta) + 1
    }

    /// Last offset in the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    pub fn codec(&self) -> Codec {
        match self.attributes & 0x7 {
            0 => Codec::None,
            1 => Codec::Gzip,
            2 => Codec::Snappy,
            3 => Codec::Lz4,
            4 => Codec::Zstd,
            other => Codec::Unknown(other as u8),
        }
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & 0x8 != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

/// Checks the batch's CRC32C (which covers bytes 21..end, so base offset and leader epoch can
/// be rewritten without recomputing it).
pub fn verify_crc(batch: &[u8], header: &BatchHeader) -> Result<(), BatchError> {
    let computed = crc32c::crc32c(&batch[CRC_START..header.size]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(())
}

/// Rewrites the base offset of the batch at the start of `batch`.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Rewrites the partition leader epoch of the batch at the start of `batch`.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// Iterates the batches of a buffer of concatenated batches, yielding `(header, start)`.
/// Stops with an error at the first malformed batch; a buffer that ends mid-batch is an error
/// too (callers that read partial data, such as Fetch, cut at batch boundaries themselves).
pub struct Batches<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Batches<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<(BatchHeader, usize), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        match BatchHeader::parse(&self.buf[self.pos..]) {
            Ok(header) => {
                let start = self.pos;
                self.pos += header.size;
                Some(Ok((header, start)))
            }
            Err(err) => {
                self.pos = self.buf.len();
                Some(Err(err))
            }
        }
    }
}

/// Batches for tests in this and other crates (not used by the broker itself).
pub mod test_support {
    use super::*;

    /// Builds a valid uncompressed batch with `count` empty-valued records' worth of offsets
    /// (the record bytes are opaque to this module).
    pub fn make_batch(base_offset: i64, count: i32, base_ts: i64, max_ts: i64) -> Vec<u8> {
        let body = vec![0xabu8; 7];
        let mut b = Vec::new();
        b.extend_from_slice(&base_offset.to_be_bytes());
        let length = (BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD_BYTES + body.len()) as i32;
        b.extend_from_slice(&length.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        b.push(2);
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(count - 1).to_be_bytes());
        b.extend_from_slice(&base_ts.to_be_bytes());
        b.extend_from_slice(&max_ts.to_be_bytes());
        b.extend_from_slice(&(-1i64).to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&count.to_be_bytes());
        b.extend_from_slice(&body);
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::make_batch;
    use super::*;

    #[test]
    fn parse_and_rewrite() {
        let mut b = make_batch(0, 5, 1000, 1004);
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.size, b.len());
        assert_eq!(h.offset_count(), 5);
        assert_eq!(h.max_timestamp, 1004);
        assert_eq!(h.codec(), Codec::None);
        verify_crc(&b, &h).unwrap();
        set_base_offset(&mut b, 42);
        set_partition_leader_epoch(&mut b, 7);
        let h2 = BatchHeader::parse(&b).unwrap();
        assert_eq!(h2.base_offset, 42);
        assert_eq!(h2.last_offset(), 46);
        assert_eq!(h2.partition_leader_epoch, 7);
        verify_crc(&b, &h2).expect("rewrites stay outside the CRC");
    }

    #[test]
    fn rejects_bad_input() {
        let b = make_batch(0, 3, 0, 0);
        assert!(matches!(
            BatchHeader::parse(&b[..30]),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            BatchHeader::parse(&b[..b.len() - 1]),
            Err(BatchError::Truncated { .. })
        ));
        let mut bad_magic = b.clone();
        bad_magic[16] = 1;
        assert!(matches!(
            BatchHeader::parse(&bad_magic),
            Err(BatchError::UnsupportedMagic { magic: 1 })
        ));
        let mut flipped = b.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let h = BatchHeader::parse(&flipped).unwrap();
        assert!(matches!(
            verify_crc(&flipped, &h),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn iterates_concatenated_batches() {
        let mut buf = make_batch(0, 2, 0, 0);
        buf.extend(make_batch(2, 3, 0, 0));
        let got: Vec<_> = Batches::new(&buf)
            .map(|r| r.unwrap().0.base_offset)
            .collect();
        assert_eq!(got, vec![0, 2]);
        buf.push(0);
        assert!(Batches::new(&buf).any(|r| r.is_err()));
    }
}
