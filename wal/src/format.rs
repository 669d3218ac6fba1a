//! On-disk byte format of WAL segment files, format version 1.
//!
//! This module is the only place that knows the byte layout; it is pure (no IO) so the codec can
//! be tested and fuzzed on byte slices. All integers are little-endian.
//!
//! A segment file is named `{first_lsn:020}.wal` (for example `00000000000000000001.wal`), where
//! `first_lsn` is the LSN of its first record. The zero padding makes lexical order equal LSN
//! order. An empty segment (header only) still carries in its name the LSN its first record will
//! get, which is how LSNs continue after every segment with entries has been trimmed.
//!
//! ```text
//! segment file = segment header | record*
//!
//! segment header, 24 bytes
//!   offset  size  field
//!        0     8  magic           b"STRATWAL"
//!        8     4  format_version  u32 = 1
//!       12     8  first_lsn       u64, equal to the number in the file name
//!       20     4  header_crc      u32, crc32c of bytes 0..20
//!
//! record, 16 + len bytes
//!   offset  size  field
//!        0     4  len             u32, payload length, at most entry_bytes_max
//!        4     4  crc             u32, crc32c of bytes 8..16+len (lsn and payload)
//!        8     8  lsn             u64, dense: the previous record's lsn + 1
//!       16   len  payload         opaque bytes
//! ```
//!
//! The record CRC does not cover `len`: a damaged `len` makes the CRC cover the wrong bytes, so
//! it is caught by the CRC (or by the file ending too early) just the same. Every record is at
//! least [`RECORD_HEADER_BYTES`] long, which recovery uses to bound the LSN a later record at a
//! given distance can have.
//!
//! A zero-filled region never decodes as a record: its `lsn` is 0, and LSNs start at 1.

use std::fmt;

/// First eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"STRATWAL";
/// The segment format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the segment file header.
pub const SEGMENT_HEADER_BYTES: u64 = SEGMENT_HEADER_LEN as u64;
/// Size of a record's header (`len`, `crc`, `lsn`); a record is this plus its payload.
pub const RECORD_HEADER_BYTES: u64 = RECORD_HEADER_LEN as u64;

pub(crate) const SEGMENT_HEADER_LEN: usize = 24;
pub(crate) const RECORD_HEADER_LEN: usize = 16;

const SEGMENT_FILE_SUFFIX: &str = ".wal";
const SEGMENT_FILE_DIGITS: usize = 20;

/// The file name of the segment whose first record has `first_lsn`.
pub fn segment_file_name(first_lsn: u64) -> String {
    format!(
        "{first_lsn:0width$}{SEGMENT_FILE_SUFFIX}",
        width = SEGMENT_FILE_DIGITS
    )
}

/// What a directory entry's name says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentName {
    /// Not shaped like a segment file; the WAL ignores it.
    Other,
    /// A segment file whose first record has this LSN.
    Segment(u64),
    /// Shaped like a segment file (20 digits + `.wal`) but the number is not a valid LSN.
    Malformed,
}

pub(crate) fn parse_segment_file_name(name: &str) -> SegmentName {
    let Some(stem) = name.strip_suffix(SEGMENT_FILE_SUFFIX) else {
        return SegmentName::Other;
    };
    if stem.len() != SEGMENT_FILE_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return SegmentName::Other;
    }
    match stem.parse::<u64>() {
        Ok(lsn) if lsn >= 1 => SegmentName::Segment(lsn),
        _ => SegmentName::Malformed,
    }
}

pub(crate) fn encode_segment_header(first_lsn: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Why a segment header did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Shorter than a header, or all zeros: the file was created but its header never reached
    /// the disk.
    Torn,
    BadMagic,
    UnsupportedVersion(u32),
    CrcMismatch {
        stored: u32,
        computed: u32,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Torn => write!(f, "segment header is missing or zero-filled"),
            HeaderError::BadMagic => write!(f, "segment header has a bad magic"),
            HeaderError::UnsupportedVersion(v) => {
                write!(f, "segment header has unsupported format version {v}")
            }
            HeaderError::CrcMismatch { stored, computed } => write!(
                f,
                "segment header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
        }
    }
}

/// Decodes the segment header at the start of `bytes` and returns its `first_lsn`.
pub(crate) fn decode_segment_header(bytes: &[u8]) -> Result<u64, HeaderError> {
    let Some(header) = bytes.first_chunk::<SEGMENT_HEADER_LEN>() else {
        return Err(HeaderError::Torn);
    };
    if header.iter().all(|&b| b == 0) {
        return Err(HeaderError::Torn);
    }
    if header[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let fields = (u32_at(header, 8), u64_at(header, 12), u32_at(header, 20));
    let (Some(version), Some(first_lsn), Some(stored)) = fields else {
        // Unreachable: the offsets are inside the 24-byte array.
        return Err(HeaderError::Torn);
    };
    let computed = crc32c::crc32c(&header[0..20]);
    if stored != computed {
        return Err(HeaderError::CrcMismatch { stored, computed });
    }
    // The version is checked after the CRC so a damaged version field reads as damage.
    if version != FORMAT_VERSION {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    Ok(first_lsn)
}

/// The CRC stored in a record: crc32c over the little-endian `lsn` followed by the payload.
pub(crate) fn record_crc(lsn: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&lsn.to_le_bytes()), payload)
}

/// Size on disk of a record holding `payload_len` bytes.
pub fn record_bytes(payload_len: usize) -> u64 {
    RECORD_HEADER_BYTES + payload_len as u64
}

/// Appends one encoded record to `out`.
///
/// The caller has checked the payload against `entry_bytes_max`, which is far below `u32::MAX`.
pub(crate) fn encode_record(out: &mut Vec<u8>, lsn: u64, payload: &[u8]) {
    let len =
        u32::try_from(payload.len()).expect("payload length was checked against entry_bytes_max");
    out.reserve(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&record_crc(lsn, payload).to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(payload);
}

/// A record decoded from a byte slice, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub lsn: u64,
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// Bytes the record occupies on disk.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_LEN + self.payload.len()
    }
}

/// Why the bytes at a record position are not an intact record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordError {
    HeaderTruncated { available: usize },
    LenTooLarge { len: u32, max: u32 },
    PayloadTruncated { len: u32, available: usize },
    CrcMismatch { stored: u32, computed: u32 },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::HeaderTruncated { available } => write!(
                f,
                "partial record header ({available} of {RECORD_HEADER_LEN} bytes)"
            ),
            RecordError::LenTooLarge { len, max } => {
                write!(f, "record length {len} exceeds entry_bytes_max {max}")
            }
            RecordError::PayloadTruncated { len, available } => {
                write!(f, "partial record payload ({available} of {len} bytes)")
            }
            RecordError::CrcMismatch { stored, computed } => write!(
                f,
                "record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
        }
    }
}

/// Decodes the record at the start of `bytes`. Trailing bytes after the record are ignored.
pub(crate) fn decode_record(bytes: &[u8], entry_bytes_max: u32) -> Result<Record<'_>, RecordError> {
    let Some((header, rest)) = bytes.split_first_chunk::<RECORD_HEADER_LEN>() else {
        return Err(RecordError::HeaderTruncated {
            available: bytes.len(),
        });
    };
    let fields = (u32_at(header, 0), u32_at(header, 4), u64_at(header, 8));
    let (Some(len), Some(stored), Some(lsn)) = fields else {
        // Unreachable: the offsets are inside the 16-byte array.
        return Err(RecordError::HeaderTruncated {
            available: bytes.len(),
        });
    };
    if len > entry_bytes_max {
        return Err(RecordError::LenTooLarge {
            len,
            max: entry_bytes_max,
        });
    }
    let payload = usize::try_from(len)
        .ok()
        .and_then(|n| rest.get(..n))
        .ok_or(RecordError::PayloadTruncated {
            len,
            available: rest.len(),
        })?;
    let computed = record_crc(lsn, payload);
    if stored != computed {
        return Err(RecordError::CrcMismatch { stored, computed });
    }
    Ok(Record { lsn, payload })
}

/// Reads the little-endian `u32` at `at`, or `None` when `bytes` is too short.
pub(crate) fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let chunk = bytes.get(at..)?.first_chunk::<4>()?;
    Some(u32::from_le_bytes(*chunk))
}

/// Reads the little-endian `u64` at `at`, or `None` when `bytes` is too short.
pub(crate) fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let chunk = bytes.get(at..)?.first_chunk::<8>()?;
    Some(u64::from_le_bytes(*chunk))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(lsn: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(&mut out, lsn, payload);
        out
    }

    #[test]
    fn record_layout_is_documented_layout() {
        let bytes = encoded(0x0102_0304_0506_0708, b"hi");
        let crc = record_crc(0x0102_0304_0506_0708, b"hi").to_le_bytes();
        let mut expected = vec![2, 0, 0, 0];
        expected.extend_from_slice(&crc);
        expected.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]);
        expected.extend_from_slice(b"hi");
        assert_eq!(bytes, expected);
        assert_eq!(record_bytes(2), bytes.len() as u64);
    }

    #[test]
    fn record_round_trips() {
        let cases: &[(u64, &[u8])] = &[
            (1, b""),
            (2, b"x"),
            (u64::MAX, b"payload with \0 bytes \xff"),
            (42, &[0u8; 1000]),
        ];
        for &(lsn, payload) in cases {
            let bytes = encoded(lsn, payload);
            let record = decode_record(&bytes, 1000).expect("round trip");
            assert_eq!(record, Record { lsn, payload }, "lsn {lsn}");
            assert_eq!(record.encoded_len(), bytes.len());
            // Trailing bytes belong to the next record and are ignored.
            let mut longer = bytes.clone();
            longer.extend_from_slice(&[9; 7]);
            assert_eq!(decode_record(&longer, 1000), Ok(record));
        }
    }

    /// One damaged-record case: start from an encoded record, change it, expect an error.
    fn check_decode(name: &str, change: impl Fn(&mut Vec<u8>), expected: &RecordError) {
        let mut bytes = encoded(7, b"abcdef");
        change(&mut bytes);
        assert_eq!(
            decode_record(&bytes, 16).as_ref(),
            Err(expected),
            "case {name}"
        );
    }

    #[test]
    fn damaged_records_are_rejected() {
        let crc = record_crc(7, b"abcdef");
        check_decode(
            "empty",
            |b| b.clear(),
            &RecordError::HeaderTruncated { available: 0 },
        );
        check_decode(
            "partial header",
            |b| b.truncate(15),
            &RecordError::HeaderTruncated { available: 15 },
        );
        check_decode(
            "partial payload",
            |b| b.truncate(20),
            &RecordError::PayloadTruncated {
                len: 6,
                available: 4,
            },
        );
        check_decode(
            "len above max",
            |b| b[0] = 17,
            &RecordError::LenTooLarge { len: 17, max: 16 },
        );
        check_decode(
            "huge len",
            |b| b[3] = 0xff,
            &RecordError::LenTooLarge {
                len: 0xff00_0006,
                max: 16,
            },
        );
        check_decode(
            "shorter len",
            |b| b[0] = 5,
            &RecordError::CrcMismatch {
                stored: crc,
                computed: record_crc(7, b"abcde"),
            },
        );
        check_decode(
            "flipped payload byte",
            |b| b[16] ^= 1,
            &RecordError::CrcMismatch {
                stored: crc,
                computed: record_crc(7, b"`bcdef"),
            },
        );
        check_decode(
            "flipped lsn byte",
            |b| b[8] ^= 1,
            &RecordError::CrcMismatch {
                stored: crc,
                computed: record_crc(6, b"abcdef"),
            },
        );
        check_decode(
            "flipped crc byte",
            |b| b[4] ^= 1,
            &RecordError::CrcMismatch {
                stored: crc ^ 1,
                computed: crc,
            },
        );
        let zero_crc = record_crc(0, b"");
        check_decode(
            "zero filled",
            |b| b.iter_mut().for_each(|x| *x = 0),
            &RecordError::CrcMismatch {
                stored: 0,
                computed: zero_crc,
            },
        );
        assert_ne!(zero_crc, 0, "a zero-filled record must never pass the CRC");
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let header = encode_segment_header(12345);
        assert_eq!(header.len() as u64, SEGMENT_HEADER_BYTES);
        assert_eq!(decode_segment_header(&header), Ok(12345));

        let cases: Vec<(&str, Vec<u8>, HeaderError)> = vec![
            ("empty", vec![], HeaderError::Torn),
            ("short", header[..23].to_vec(), HeaderError::Torn),
            ("zeros", vec![0; 24], HeaderError::Torn),
            ("bad magic", with(&header, 0, b'X'), HeaderError::BadMagic),
            (
                "newer version",
                {
                    let mut h = header;
                    h[8] = 2;
                    let crc = crc32c::crc32c(&h[0..20]);
                    h[20..24].copy_from_slice(&crc.to_le_bytes());
                    h.to_vec()
                },
                HeaderError::UnsupportedVersion(2),
            ),
        ];
        for (name, bytes, expected) in cases {
            assert_eq!(decode_segment_header(&bytes), Err(expected), "case {name}");
        }
        let damaged = with(&header, 13, 0xee);
        assert!(
            matches!(
                decode_segment_header(&damaged),
                Err(HeaderError::CrcMismatch { .. })
            ),
            "a flipped first_lsn byte must fail the header CRC"
        );
    }

    fn with(bytes: &[u8], at: usize, value: u8) -> Vec<u8> {
        let mut out = bytes.to_vec();
        out[at] = value;
        out
    }

    #[test]
    fn segment_file_names() {
        assert_eq!(segment_file_name(1), "00000000000000000001.wal");
        assert_eq!(segment_file_name(u64::MAX), "18446744073709551615.wal");
        let cases = [
            ("00000000000000000001.wal", SegmentName::Segment(1)),
            ("18446744073709551615.wal", SegmentName::Segment(u64::MAX)),
            ("00000000000000000000.wal", SegmentName::Malformed),
            ("99999999999999999999.wal", SegmentName::Malformed),
            ("0000000000000000001.wal", SegmentName::Other),
            ("00000000000000000001.wal.tmp", SegmentName::Other),
            ("0000000000000000000a.wal", SegmentName::Other),
            ("+0000000000000000001.wal", SegmentName::Other),
            ("lock", SegmentName::Other),
        ];
        for (name, expected) in cases {
            assert_eq!(parse_segment_file_name(name), expected, "name {name}");
        }
    }
}
