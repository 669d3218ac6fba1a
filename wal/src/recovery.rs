//! Recovery decisions for one segment, as a pure function of its bytes.
//!
//! [`scan_segment`] walks the records of a segment (layout in [`crate::format`]) and decides, for
//! the first position that is not an intact record with the expected LSN, whether it is a *torn
//! tail* (drop it) or *corruption* (stop with a fatal error). The IO driver in [`crate::wal`]
//! reads the file, calls this, and carries out the truncation.
//!
//! The rules:
//! - An intact record (CRC passes) whose LSN is not the expected one is corruption, wherever it
//!   is: the WAL wrote it, so a gap or a reordering means a broken invariant, not a crash.
//! - In a sealed (non-newest) segment, anything that is not an intact record is corruption. A
//!   segment is sealed only after it was fdatasync'ed and before its successor was created, so a
//!   crash cannot tear it.
//! - In the newest segment, a bad record is a torn tail when no intact record follows it, and
//!   corruption when one does. "Follows" is checked at every byte position after the bad record,
//!   for an intact record whose LSN is one that a record at that distance could have: `k` records
//!   after the bad one (`k >= 1`) start at least `16 * k` bytes later. Requiring both the CRC and
//!   that LSN window keeps payload bytes that happen to look like a record from counting.
//! - A damaged header (short, zero-filled, bad magic or CRC) of the newest segment is a torn
//!   header under the same rule: the file was created but its header did not fully reach the
//!   disk, so no record can have been synced in it. The driver rewrites the header from the file
//!   name. A header that is intact but has an unknown version, or names another first LSN than
//!   the file name, is never torn.
//! - An intact record that is larger than `entry_bytes_max` (the limit was lowered) is never
//!   dropped as a torn tail: that would silently lose durable data.
//!
//! Known limit of these rules: a power loss in the middle of a multi-page write that has not been
//! fdatasync'ed yet can persist a later page without an earlier one. The later records were never
//! acknowledged, but they are intact, so recovery reports corruption rather than guessing. The
//! crash tests (truncation and zero-filled tails) cannot produce this; it needs a disk that
//! reorders writes of one un-synced batch.

use crate::format::{
    decode_record, decode_segment_header, u64_at, HeaderError, RecordError, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use crate::RecoveredEntry;

/// What one segment holds after recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentScan {
    pub entries: Vec<RecoveredEntry>,
    /// LSN of the last intact record, or `first_lsn - 1` when the segment holds none.
    pub last_lsn: u64,
    /// Length of the segment once any torn tail is cut away: header plus intact records.
    pub valid_bytes: u64,
    pub torn: Option<TornTail>,
}

/// A torn tail of the newest segment, to be cut away before appending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TornTail {
    /// Where the intact prefix ends: the file is truncated to this length.
    pub offset: u64,
    /// Bytes that are dropped.
    pub dropped_bytes: u64,
    /// The header itself is torn: the file must be reset to a fresh header.
    pub header: bool,
    pub reason: String,
}

/// Why a segment cannot be recovered; the driver adds the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanError {
    Corrupt { offset: u64, reason: String },
    UnsupportedVersion { version: u32 },
}

/// Scans the bytes of the segment named with `first_lsn`.
///
/// `newest` says whether this is the newest segment, the only one a crash can have torn.
pub(crate) fn scan_segment(
    bytes: &[u8],
    first_lsn: u64,
    newest: bool,
    entry_bytes_max: u32,
) -> Result<SegmentScan, ScanError> {
    assert!(
        first_lsn >= 1,
        "segment names are validated to start at lsn >= 1"
    );
    let empty_last_lsn = first_lsn - 1;
    match decode_segment_header(bytes) {
        Ok(header_lsn) if header_lsn == first_lsn => {}
        Ok(header_lsn) => {
            return Err(ScanError::Corrupt {
                offset: 0,
                reason: format!(
                    "segment header says first lsn {header_lsn} but the file name says {first_lsn}"
                ),
            })
        }
        Err(HeaderError::UnsupportedVersion(version)) => {
            return Err(ScanError::UnsupportedVersion { version })
        }
        // A damaged header of the newest segment: the file was created but its header did not
        // (fully) reach the disk. Torn under the same rule as records.
        Err(header_error) if newest => {
            if let Some((offset, lsn)) =
                find_intact_record(bytes, SEGMENT_HEADER_LEN, first_lsn, 0, entry_bytes_max)
            {
                return Err(ScanError::Corrupt {
                    offset: 0,
                    reason: format!(
                        "{header_error}, but an intact record (lsn {lsn}) follows at offset {offset}"
                    ),
                });
            }
            return Ok(SegmentScan {
                entries: Vec::new(),
                last_lsn: empty_last_lsn,
                valid_bytes: SEGMENT_HEADER_LEN as u64,
                torn: Some(TornTail {
                    offset: 0,
                    dropped_bytes: bytes.len() as u64,
                    header: true,
                    reason: header_error.to_string(),
                }),
            });
        }
        Err(header_error) => {
            return Err(ScanError::Corrupt {
                offset: 0,
                reason: header_error.to_string(),
            })
        }
    }

    let mut entries = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    let mut expected = first_lsn;
    let mut torn = None;
    while let Some(rest) = bytes.get(pos..).filter(|rest| !rest.is_empty()) {
        let record_error = match decode_record(rest, entry_bytes_max) {
            Ok(record) if record.lsn == expected => {
                entries.push(RecoveredEntry {
                    lsn: record.lsn,
                    payload: record.payload.to_vec(),
                });
                pos += record.encoded_len();
                expected = expected.checked_add(1).ok_or_else(|| ScanError::Corrupt {
                    offset: pos as u64,
                    reason: "lsn overflows u64".to_string(),
                })?;
                continue;
            }
            Ok(record) => {
                return Err(ScanError::Corrupt {
                    offset: pos as u64,
                    reason: format!(
                        "intact record has lsn {} where lsn {expected} was expected (gap or reordering)",
                        record.lsn
                    ),
                })
            }
            Err(e) => e,
        };
        if let RecordError::LenTooLarge { len, max } = record_error {
            if matches!(decode_record(rest, u32::MAX), Ok(r) if r.lsn == expected) {
                return Err(ScanError::Corrupt {
                    offset: pos as u64,
                    reason: format!(
                        "intact record of {len} bytes exceeds entry_bytes_max {max}; \
                         refusing to drop it (was entry_bytes_max lowered?)"
                    ),
                });
            }
        }
        if !newest {
            return Err(ScanError::Corrupt {
                offset: pos as u64,
                reason: format!("{record_error} in a sealed segment"),
            });
        }
        if let Some((offset, lsn)) = find_intact_record(bytes, pos, expected, 1, entry_bytes_max) {
            return Err(ScanError::Corrupt {
                offset: pos as u64,
                reason: format!(
                    "{record_error}, but an intact record (lsn {lsn}) follows at offset {offset}"
                ),
            });
        }
        torn = Some(TornTail {
            offset: pos as u64,
            dropped_bytes: (bytes.len() - pos) as u64,
            header: false,
            reason: record_error.to_string(),
        });
        break;
    }
    let last_lsn = entries.last().map_or(empty_last_lsn, |e| e.lsn);
    Ok(SegmentScan {
        entries,
        last_lsn,
        valid_bytes: pos as u64,
        torn,
    })
}

/// Finds the first intact record at a byte position `p >= from` whose LSN could be the `k`-th
/// record after position `from`, where `from` should hold `base_lsn`: `k >= k_min` and
/// `k <= (p - from) / 16`. Returns its offset and LSN.
fn find_intact_record(
    bytes: &[u8],
    from: usize,
    base_lsn: u64,
    k_min: u64,
    entry_bytes_max: u32,
) -> Option<(u64, u64)> {
    let lsn_min = base_lsn.saturating_add(k_min);
    let mut p = from.saturating_add(RECORD_HEADER_LEN.saturating_mul(k_min as usize));
    while p.saturating_add(RECORD_HEADER_LEN) <= bytes.len() {
        let k_max = ((p - from) / RECORD_HEADER_LEN) as u64;
        let lsn_max = base_lsn.saturating_add(k_max);
        // Cheap LSN filter first; only a plausible LSN pays for a CRC.
        if let Some(lsn) = u64_at(bytes, p + 8).filter(|l| (lsn_min..=lsn_max).contains(l)) {
            let intact = bytes
                .get(p..)
                .map(|rest| decode_record(rest, entry_bytes_max))
                .is_some_and(|r| matches!(r, Ok(rec) if rec.lsn == lsn));
            if intact {
                return Some((p as u64, lsn));
            }
        }
        p += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_record, encode_segment_header};

    const FIRST_LSN: u64 = 10;
    const PAYLOAD_LEN: usize = 20;
    const RECORD_LEN: usize = RECORD_HEADER_LEN + PAYLOAD_LEN;
    const MAX: u32 = 64;

    /// A segment starting at lsn 10 with `n` records of 20 bytes each.
    fn segment(n: u64) -> Vec<u8> {
        let mut bytes = encode_segment_header(FIRST_LSN).to_vec();
        for lsn in FIRST_LSN..FIRST_LSN + n {
            encode_record(&mut bytes, lsn, &[lsn as u8; PAYLOAD_LEN]);
        }
        bytes
    }

    fn record_offset(index: usize) -> usize {
        SEGMENT_HEADER_LEN + index * RECORD_LEN
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Expect {
        /// Intact entries, and where the torn tail starts (if any).
        Ok {
            entries: u64,
            torn_at: Option<u64>,
        },
        Corrupt {
            offset: u64,
        },
        UnsupportedVersion,
    }

    fn check(name: &str, bytes: &[u8], newest: bool, expected: Expect) {
        let actual = match scan_segment(bytes, FIRST_LSN, newest, MAX) {
            Ok(scan) => {
                let n = scan.entries.len() as u64;
                for (i, e) in scan.entries.iter().enumerate() {
                    assert_eq!(e.lsn, FIRST_LSN + i as u64, "case {name}");
                    assert_eq!(e.payload, vec![e.lsn as u8; PAYLOAD_LEN], "case {name}");
                }
                assert_eq!(scan.last_lsn, FIRST_LSN + n - 1, "case {name}");
                if let Some(t) = &scan.torn {
                    assert_eq!(
                        t.offset + t.dropped_bytes,
                        bytes.len() as u64,
                        "case {name}"
                    );
                    if !t.header {
                        assert_eq!(t.offset, scan.valid_bytes, "case {name}");
                    }
                } else {
                    assert_eq!(scan.valid_bytes, bytes.len() as u64, "case {name}");
                }
                Expect::Ok {
                    entries: n,
                    torn_at: scan.torn.map(|t| t.offset),
                }
            }
            Err(ScanError::Corrupt { offset, .. }) => Expect::Corrupt { offset },
            Err(ScanError::UnsupportedVersion { .. }) => Expect::UnsupportedVersion,
        };
        assert_eq!(actual, expected, "case {name}");
    }

    fn flip(mut bytes: Vec<u8>, at: usize) -> Vec<u8> {
        bytes[at] ^= 0x40;
        bytes
    }

    fn zero(mut bytes: Vec<u8>, range: std::ops::Range<usize>) -> Vec<u8> {
        bytes[range].iter_mut().for_each(|b| *b = 0);
        bytes
    }

    fn extended(mut bytes: Vec<u8>, tail: &[u8]) -> Vec<u8> {
        bytes.extend_from_slice(tail);
        bytes
    }

    #[test]
    fn scan_cases() {
        let full = segment(4);
        let end = full.len() as u64;
        let last = record_offset(3);
        let ok = |entries, torn_at| Expect::Ok { entries, torn_at };
        let corrupt = |offset: usize| Expect::Corrupt {
            offset: offset as u64,
        };
        let mut big_record = Vec::new();
        encode_record(&mut big_record, FIRST_LSN + 4, &[1; MAX as usize + 1]);
        let mut gap_record = Vec::new();
        encode_record(&mut gap_record, FIRST_LSN + 5, b"gap");

        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<u8>, bool, Expect)> = vec![
            ("intact", full.clone(), true, ok(4, None)),
            ("intact sealed", full.clone(), false, ok(4, None)),
            ("header only", segment(0), true, ok(0, None)),
            ("cut inside last record", full[..last + 5].to_vec(), true, ok(3, Some(last as u64))),
            ("cut inside last header", full[..last + 15].to_vec(), true, ok(3, Some(last as u64))),
            ("cut in sealed segment", full[..last + 5].to_vec(), false, corrupt(last)),
            ("flip last payload", flip(full.clone(), last + 20), true, ok(3, Some(last as u64))),
            ("flip last len", flip(full.clone(), last + 3), true, ok(3, Some(last as u64))),
            ("flip last crc", flip(full.clone(), last + 5), true, ok(3, Some(last as u64))),
            ("flip last lsn", flip(full.clone(), last + 9), true, ok(3, Some(last as u64))),
            ("flip last in sealed", flip(full.clone(), last + 20), false, corrupt(last)),
            ("flip middle payload", flip(full.clone(), record_offset(1) + 20), true, corrupt(record_offset(1))),
            ("flip middle len", flip(full.clone(), record_offset(2) + 1), true, corrupt(record_offset(2))),
            ("flip first", flip(full.clone(), record_offset(0) + 17), true, corrupt(record_offset(0))),
            ("zero last record", zero(full.clone(), last..full.len()), true, ok(3, Some(last as u64))),
            ("zero last two records", zero(full.clone(), record_offset(2)..full.len()), true, ok(2, Some(record_offset(2) as u64))),
            ("zero middle record", zero(full.clone(), record_offset(1)..record_offset(2)), true, corrupt(record_offset(1))),
            ("zero tail 1", extended(full.clone(), &[0; 1]), true, ok(4, Some(end))),
            ("zero tail 16", extended(full.clone(), &[0; 16]), true, ok(4, Some(end))),
            ("zero tail 4096", extended(full.clone(), &[0; 4096]), true, ok(4, Some(end))),
            ("zero tail sealed", extended(full.clone(), &[0; 16]), false, corrupt(full.len())),
            ("garbage tail", extended(full.clone(), &[0xa5; 100]), true, ok(4, Some(end))),
            ("huge len at tail", extended(full.clone(), &[0xff; 40]), true, ok(4, Some(end))),
            ("duplicate last record", extended(full.clone(), &full[last..]), true, corrupt(full.len())),
            ("lsn gap", extended(full.clone(), &gap_record), true, corrupt(full.len())),
            ("oversized intact record", extended(full.clone(), &big_record), true, corrupt(full.len())),
            ("oversized record cut", extended(full.clone(), &big_record[..40]), true, ok(4, Some(end))),
            ("short header, newest", full[..10].to_vec(), true, ok(0, Some(0))),
            ("empty file, newest", Vec::new(), true, ok(0, Some(0))),
            ("zero header, newest", zero(segment(0), 0..SEGMENT_HEADER_LEN), true, ok(0, Some(0))),
            ("zero header then zeros", extended(zero(segment(0), 0..SEGMENT_HEADER_LEN), &[0; 50]), true, ok(0, Some(0))),
            ("zero header, records follow", zero(full.clone(), 0..SEGMENT_HEADER_LEN), true, corrupt(0)),
            ("short header, sealed", full[..10].to_vec(), false, corrupt(0)),
            ("bad magic, records follow", flip(full.clone(), 1), true, corrupt(0)),
            ("bad header crc, records follow", flip(full.clone(), 14), true, corrupt(0)),
            ("bad magic, sealed", flip(segment(0), 1), false, corrupt(0)),
            ("bad magic, header only", flip(segment(0), 1), true, ok(0, Some(0))),
            ("bad header crc, header only", flip(segment(0), 22), true, ok(0, Some(0))),
            ("header prefix then zeros", zero(segment(0), 20..24), true, ok(0, Some(0))),
            ("header prefix then zeros, newest", extended(zero(segment(0), 20..24), &[0; 30]), true, ok(0, Some(0))),
        ];
        for (name, bytes, newest, expected) in cases {
            check(name, &bytes, newest, expected);
        }
    }

    #[test]
    fn header_lsn_must_match_file_name() {
        let bytes = segment(2);
        assert_eq!(
            scan_segment(&bytes, FIRST_LSN + 1, true, MAX),
            Err(ScanError::Corrupt {
                offset: 0,
                reason: "segment header says first lsn 10 but the file name says 11".to_string()
            })
        );
    }

    #[test]
    fn newer_format_version_is_reported() {
        let mut bytes = segment(1);
        bytes[8] = 2;
        let crc = crc32c::crc32c(&bytes[0..20]);
        bytes[20..24].copy_from_slice(&crc.to_le_bytes());
        check("version 2", &bytes, true, Expect::UnsupportedVersion);
        check(
            "version 2 sealed",
            &bytes,
            false,
            Expect::UnsupportedVersion,
        );
    }

    #[test]
    fn every_cut_of_the_last_record_is_a_torn_tail() {
        let full = segment(5);
        let last = record_offset(4);
        // A cut exactly at `last` leaves no byte of the record: a clean segment of 4 records.
        check(
            "cut at record start",
            &full[..last],
            true,
            Expect::Ok {
                entries: 4,
                torn_at: None,
            },
        );
        for cut in last + 1..full.len() {
            check(
                &format!("cut at {cut}"),
                &full[..cut],
                true,
                Expect::Ok {
                    entries: 4,
                    torn_at: Some(last as u64),
                },
            );
        }
    }
}
