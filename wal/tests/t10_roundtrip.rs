//! Round trips: what is appended and synced comes back from `open`, across segment rolls and
//! reopens, with dense LSNs.

mod common;

use common::*;
use strata_wal::format::{record_bytes, SEGMENT_HEADER_BYTES};

#[test]
fn fresh_wal_is_empty_and_creates_its_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("nested").join("wal");
    let cfg = config(&dir, 1 << 20);
    let (mut wal, recovered) = open(&cfg);
    assert!(recovered.is_empty());
    assert_eq!(wal.last_lsn(), 0);
    assert_eq!(wal.segment_count(), 1);
    assert_eq!(wal.bytes_on_disk(), SEGMENT_HEADER_BYTES);
    assert_eq!(segment_first_lsns(&dir), vec![1]);
    assert_accounting_matches_disk(&wal, &dir);
    assert_eq!(wal.append(b"first").expect("append"), 1);
    assert_eq!(wal.bytes_on_disk(), SEGMENT_HEADER_BYTES + record_bytes(5));
}

struct Case {
    name: &'static str,
    segment_bytes_max: u64,
    payload_lens: Vec<usize>,
    /// Sync after every this many appends (and always at the end).
    sync_every: usize,
    segments_min: usize,
}

fn check_round_trip(case: &Case) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), case.segment_bytes_max);
    let (mut wal, recovered) = open(&cfg);
    assert!(recovered.is_empty());
    let mut expected = Vec::new();
    for (i, &len) in case.payload_lens.iter().enumerate() {
        let lsn = i as u64 + 1;
        let p = payload(lsn, len);
        assert_eq!(wal.append(&p).expect("append"), lsn, "case {}", case.name);
        expected.push(entry(lsn, p));
        if (i + 1) % case.sync_every == 0 {
            wal.sync().expect("sync");
            assert_accounting_matches_disk(&wal, tmp.path());
        }
    }
    wal.sync().expect("sync");
    assert_accounting_matches_disk(&wal, tmp.path());
    assert!(
        wal.segment_count() >= case.segments_min,
        "case {}: {} segments",
        case.name,
        wal.segment_count()
    );
    assert_segments_respect_max(tmp.path(), case.segment_bytes_max, wal.last_lsn());
    drop(wal);

    // Reopening twice shows recovery changes nothing on an intact WAL.
    for round in 0..2 {
        let (wal, recovered) = open(&cfg);
        assert_eq!(recovered, expected, "case {} reopen {round}", case.name);
        assert_eq!(wal.last_lsn(), expected.len() as u64, "case {}", case.name);
        assert_accounting_matches_disk(&wal, tmp.path());
    }
}

/// A segment is larger than `segment_bytes_max` only when it holds a single entry.
fn assert_segments_respect_max(dir: &std::path::Path, segment_bytes_max: u64, last_lsn: u64) {
    let firsts = segment_first_lsns(dir);
    for (i, &first) in firsts.iter().enumerate() {
        let next = firsts.get(i + 1).copied().unwrap_or(last_lsn + 1);
        let len = file_len(&segment_path(dir, first));
        assert!(
            len <= segment_bytes_max || next - first == 1,
            "segment {first} has {len} bytes and {} entries",
            next - first
        );
    }
}

#[test]
fn round_trips() {
    let cases = [
        Case {
            name: "one segment",
            segment_bytes_max: 1 << 20,
            payload_lens: (0..100).map(|i| i % 50).collect(),
            sync_every: 10,
            segments_min: 1,
        },
        Case {
            name: "many small segments",
            segment_bytes_max: 200,
            payload_lens: (0..200).map(|i| i % 100).collect(),
            sync_every: 7,
            segments_min: 50,
        },
        Case {
            name: "entries larger than a segment",
            segment_bytes_max: 100,
            payload_lens: vec![10, 500, 10, 500, 0, 0, 4096],
            sync_every: 1,
            segments_min: 5,
        },
        Case {
            name: "empty payloads",
            segment_bytes_max: 64,
            payload_lens: vec![0; 50],
            sync_every: 50,
            segments_min: 25,
        },
        Case {
            // More than the 1 MiB write buffer between syncs.
            name: "write buffer fills up",
            segment_bytes_max: 8 << 20,
            payload_lens: vec![4096; 300],
            sync_every: 1000,
            segments_min: 1,
        },
        Case {
            name: "rolls inside one group commit",
            segment_bytes_max: 4096,
            payload_lens: (0..400).map(|i| (i * 13) % 700).collect(),
            sync_every: 1000,
            segments_min: 20,
        },
    ];
    for case in &cases {
        check_round_trip(case);
    }
}

#[test]
fn reopen_continues_lsns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 300);
    let mut expected = Vec::new();
    for round in 0..4u64 {
        let (mut wal, recovered) = open(&cfg);
        assert_eq!(recovered, expected, "round {round}");
        assert_eq!(wal.last_lsn(), expected.len() as u64);
        for _ in 0..5 {
            let lsn = wal.last_lsn() + 1;
            let p = payload(lsn, 40);
            assert_eq!(wal.append(&p).expect("append"), lsn);
            expected.push(entry(lsn, p));
        }
        wal.sync().expect("sync");
    }
    // Reopening without appending keeps the position too.
    let (wal, recovered) = open(&cfg);
    assert_eq!(recovered, expected);
    drop(wal);
    let (wal, _) = open(&cfg);
    assert_eq!(wal.last_lsn(), 20);
}

#[test]
fn entries_never_synced_may_be_lost_but_lsns_stay_dense() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 1 << 20);
    let (mut wal, _) = open(&cfg);
    append_all(&mut wal, &[payload(1, 10), payload(2, 10), payload(3, 10)]);
    wal.sync().expect("sync");
    append_all(&mut wal, &[payload(4, 10), payload(5, 10)]);
    // Dropped without sync: the two buffered entries never reached the file.
    drop(wal);
    let (mut wal, recovered) = open(&cfg);
    assert_eq!(
        recovered,
        (1..=3)
            .map(|l| entry(l, payload(l, 10)))
            .collect::<Vec<_>>()
    );
    assert_eq!(wal.append(b"again").expect("append"), 4);
}

#[test]
fn sync_without_appends_is_a_no_op() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 1 << 20);
    let (mut wal, _) = open(&cfg);
    wal.sync().expect("sync");
    wal.sync().expect("sync");
    assert_eq!(wal.last_lsn(), 0);
    assert_accounting_matches_disk(&wal, tmp.path());
}

#[test]
fn files_outside_the_naming_scheme_are_ignored() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 1 << 20);
    std::fs::write(tmp.path().join("README"), b"not a segment").expect("write");
    std::fs::write(tmp.path().join("1.wal"), b"not a segment either").expect("write");
    let (mut wal, recovered) = open(&cfg);
    assert!(recovered.is_empty());
    assert_eq!(wal.append(b"x").expect("append"), 1);
}
