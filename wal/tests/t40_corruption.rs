//! Damage that is not a torn tail stops recovery with an error naming the file and byte offset,
//! and leaves every file untouched.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use strata_wal::format::segment_file_name;
use strata_wal::{Wal, WalError};

const PAYLOAD_LEN: usize = 20;
/// Four records of 36 bytes after the 24-byte header: segments 1, 5, 9 with 12 entries.
const SEGMENT_BYTES_MAX: u64 = 24 + 4 * 36;
const ENTRIES: u64 = 12;
const SEGMENT_LEN: u64 = SEGMENT_BYTES_MAX;

/// Offset of record `i` (0-based) inside a segment.
const fn rec(i: u64) -> u64 {
    24 + 36 * i
}

#[derive(Debug)]
enum Damage {
    /// XOR a byte of the segment starting at this LSN.
    Flip {
        segment: u64,
        offset: u64,
    },
    Truncate {
        segment: u64,
        len: u64,
    },
    Append {
        segment: u64,
        bytes: Vec<u8>,
    },
    Zero {
        segment: u64,
        from: u64,
        to: u64,
    },
    Delete {
        segment: u64,
    },
    /// Write a file with this name and content into the WAL directory.
    File {
        name: String,
        bytes: Vec<u8>,
    },
    /// Change the format version and fix up the header CRC.
    Version {
        segment: u64,
        version: u32,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// Recovery succeeds with entries `first..=last`.
    Recovered {
        first: u64,
        last: u64,
    },
    /// `Corrupt` naming this file (by first LSN) and offset.
    Corrupt {
        segment: u64,
        offset: u64,
    },
    UnsupportedVersion {
        segment: u64,
        version: u32,
    },
}

fn apply(dir: &Path, damage: &Damage) {
    let path = |segment: u64| segment_path(dir, segment);
    match damage {
        Damage::Flip { segment, offset } => edit(&path(*segment), |b| b[*offset as usize] ^= 0x08),
        Damage::Truncate { segment, len } => edit(&path(*segment), |b| b.truncate(*len as usize)),
        Damage::Append { segment, bytes } => edit(&path(*segment), |b| b.extend_from_slice(bytes)),
        Damage::Zero { segment, from, to } => edit(&path(*segment), |b| {
            b[*from as usize..*to as usize]
                .iter_mut()
                .for_each(|x| *x = 0)
        }),
        Damage::Delete { segment } => fs::remove_file(path(*segment)).expect("delete"),
        Damage::File { name, bytes } => fs::write(dir.join(name), bytes).expect("write"),
        Damage::Version { segment, version } => edit(&path(*segment), |b| {
            b[8..12].copy_from_slice(&version.to_le_bytes());
            let crc = crc32c::crc32c(&b[0..20]);
            b[20..24].copy_from_slice(&crc.to_le_bytes());
        }),
    }
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).expect("read");
    f(&mut bytes);
    fs::write(path, bytes).expect("write");
}

fn check(name: &str, damage: &[Damage], expected: Expect) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), SEGMENT_BYTES_MAX);
    let (mut wal, _) = open(&cfg);
    append_all(
        &mut wal,
        &(1..=ENTRIES)
            .map(|l| payload(l, PAYLOAD_LEN))
            .collect::<Vec<_>>(),
    );
    wal.sync().expect("sync");
    drop(wal);
    assert_eq!(segment_first_lsns(tmp.path()), vec![1, 5, 9]);
    for d in damage {
        apply(tmp.path(), d);
    }

    let before = snapshot(tmp.path());
    let actual = match Wal::open(cfg.clone()) {
        Ok((wal, recovered)) => {
            let first = recovered.first().map_or(wal.last_lsn() + 1, |e| e.lsn);
            let expected_entries: Vec<_> = (first..=wal.last_lsn())
                .map(|l| entry(l, payload(l, PAYLOAD_LEN)))
                .collect();
            assert_eq!(recovered, expected_entries, "case {name}");
            let actual = Expect::Recovered {
                first,
                last: wal.last_lsn(),
            };
            if actual == expected {
                assert_appends_continue(&cfg, recovered, wal);
            }
            actual
        }
        Err(err) => {
            assert!(!err.is_retryable(), "case {name}: {err}");
            assert_eq!(
                snapshot(tmp.path()),
                before,
                "case {name}: a failed open changed files"
            );
            let message = err.to_string();
            match err {
                WalError::Corrupt { path, offset, .. } => {
                    let segment = lsn_of(&path);
                    assert!(
                        message.contains(&path.display().to_string())
                            && message.contains(&format!("offset {offset}")),
                        "case {name}: message must name file and offset: {message}"
                    );
                    Expect::Corrupt { segment, offset }
                }
                WalError::UnsupportedVersion { path, version } => Expect::UnsupportedVersion {
                    segment: lsn_of(&path),
                    version,
                },
                other => panic!("case {name}: unexpected error {other}"),
            }
        }
    };
    assert_eq!(actual, expected, "case {name}");
}

fn lsn_of(path: &Path) -> u64 {
    let stem = path.file_stem().and_then(|s| s.to_str()).expect("name");
    stem.parse().expect("segment name")
}

#[test]
fn recovery_cases() {
    use Damage::*;
    let recovered = |first, last| Expect::Recovered { first, last };
    let corrupt = |segment, offset| Expect::Corrupt { segment, offset };
    let mut header_only_20 = Vec::new();
    {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (wal, _) = open(&config(tmp.path(), SEGMENT_BYTES_MAX));
        drop(wal);
        header_only_20.extend(fs::read(segment_path(tmp.path(), 1)).expect("read"));
    }
    let last_segment_bytes = {
        // Record 12 (the last) again, appended after itself: an intact record out of order.
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = open(&config(tmp.path(), 1 << 20));
        for l in 1..=ENTRIES {
            wal.append(&payload(l, PAYLOAD_LEN)).expect("append");
        }
        wal.sync().expect("sync");
        let bytes = fs::read(segment_path(tmp.path(), 1)).expect("read");
        bytes[bytes.len() - 36..].to_vec()
    };

    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<Damage>, Expect)> = vec![
        ("intact", vec![], recovered(1, 12)),
        ("flip last payload of newest segment", vec![Flip { segment: 9, offset: rec(3) + 20 }], recovered(1, 11)),
        ("flip middle record of newest segment", vec![Flip { segment: 9, offset: rec(1) + 20 }], corrupt(9, rec(1))),
        ("flip len of middle record", vec![Flip { segment: 9, offset: rec(2) + 2 }], corrupt(9, rec(2))),
        ("flip first record of newest segment", vec![Flip { segment: 9, offset: rec(0) + 30 }], corrupt(9, rec(0))),
        ("flip last record of oldest segment", vec![Flip { segment: 1, offset: rec(3) + 20 }], corrupt(1, rec(3))),
        ("flip record in middle segment", vec![Flip { segment: 5, offset: rec(2) + 9 }], corrupt(5, rec(2))),
        ("truncated oldest segment", vec![Truncate { segment: 1, len: SEGMENT_LEN - 5 }], corrupt(1, rec(3))),
        ("zeros after middle segment", vec![Append { segment: 5, bytes: vec![0; 64] }], corrupt(5, SEGMENT_LEN)),
        ("zero last two records", vec![Zero { segment: 9, from: rec(2), to: SEGMENT_LEN }], recovered(1, 10)),
        ("zero middle record", vec![Zero { segment: 9, from: rec(1), to: rec(2) }], corrupt(9, rec(1))),
        ("zero header of middle segment", vec![Zero { segment: 5, from: 0, to: 24 }], corrupt(5, 0)),
        ("zero header of newest segment with records", vec![Zero { segment: 9, from: 0, to: 24 }], corrupt(9, 0)),
        ("bad magic", vec![Flip { segment: 5, offset: 2 }], corrupt(5, 0)),
        ("bad header crc", vec![Flip { segment: 1, offset: 21 }], corrupt(1, 0)),
        ("bad header crc of newest segment with records", vec![Flip { segment: 9, offset: 21 }], corrupt(9, 0)),
        ("newer format version", vec![Version { segment: 1, version: 2 }], Expect::UnsupportedVersion { segment: 1, version: 2 }),
        ("missing middle segment", vec![Delete { segment: 5 }], corrupt(9, 0)),
        ("missing oldest segment (trimmed)", vec![Delete { segment: 1 }], recovered(5, 12)),
        ("stray segment after a gap", vec![File { name: segment_file_name(20), bytes: header_only_20 }], corrupt(20, 0)),
        ("duplicate last record", vec![Append { segment: 9, bytes: last_segment_bytes }], corrupt(9, SEGMENT_LEN)),
        ("unrelated files are ignored", vec![File { name: "LOCK".into(), bytes: vec![1, 2, 3] }], recovered(1, 12)),
        ("file name that is not an lsn", vec![File { name: "00000000000000000000.wal".into(), bytes: vec![] }], corrupt(0, 0)),
    ];
    for (name, damage, expected) in cases {
        check(name, &damage, expected);
    }
}
