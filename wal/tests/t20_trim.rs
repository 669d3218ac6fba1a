//! Trim: only segments whose entries are all covered go, the active segment is rolled when it is
//! covered, and LSNs continue across trim and reopen.

mod common;

use common::*;
use strata_wal::format::SEGMENT_HEADER_BYTES;
use strata_wal::{WalConfig, WalError};

const PAYLOAD_LEN: usize = 20;
/// Four records of 36 bytes after the 24-byte header.
const SEGMENT_BYTES_MAX: u64 = 24 + 4 * 36;
const ENTRIES: u64 = 14;

/// A synced WAL with entries 1..=14 in segments starting at 1, 5, 9, 13.
fn setup(cfg: &WalConfig) -> strata_wal::Wal {
    let dir = cfg.dir.as_path();
    let (mut wal, _) = open(cfg);
    let payloads: Vec<Vec<u8>> = (1..=ENTRIES).map(|l| payload(l, PAYLOAD_LEN)).collect();
    append_all(&mut wal, &payloads);
    wal.sync().expect("sync");
    assert_eq!(segment_first_lsns(dir), vec![1, 5, 9, 13]);
    wal
}

fn check_trim(upto: u64, segments_after: &[u64], background_unlink: bool) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = WalConfig {
        background_unlink,
        ..config(tmp.path(), SEGMENT_BYTES_MAX)
    };
    let mut wal = setup(&cfg);
    wal.trim(upto).expect("trim");
    wal.wait_unlinked();
    assert_eq!(
        segment_first_lsns(tmp.path()),
        segments_after,
        "trim({upto})"
    );
    assert_accounting_matches_disk(&wal, tmp.path());
    assert_eq!(wal.last_lsn(), ENTRIES, "trim({upto}) keeps the position");
    // Trimming the same point again changes nothing.
    wal.trim(upto).expect("trim again");
    assert_eq!(
        segment_first_lsns(tmp.path()),
        segments_after,
        "trim({upto}) twice"
    );
    drop(wal);

    let (wal, recovered) = open(&cfg);
    let first = segments_after[0];
    let expected: Vec<_> = (first..=ENTRIES)
        .map(|l| entry(l, payload(l, PAYLOAD_LEN)))
        .collect();
    assert_eq!(recovered, expected, "trim({upto}) then reopen");
    assert!(
        recovered.first().is_none_or(|e| e.lsn <= upto + 1),
        "trim({upto}) must keep every entry above it"
    );
    assert_eq!(wal.last_lsn(), ENTRIES);
    assert_appends_continue(&cfg, recovered, wal);
}

/// `(trim up to, first LSNs of the segments left)` for the WAL of [`setup`].
const TRIM_CASES: &[(u64, &[u64])] = &[
    (0, &[1, 5, 9, 13]),
    (3, &[1, 5, 9, 13]),
    (4, &[5, 9, 13]),
    (5, &[5, 9, 13]),
    (8, &[9, 13]),
    (11, &[9, 13]),
    (12, &[13]),
    // The active segment holds 13 and 14: it is not covered, nothing more goes.
    (13, &[13]),
    // Everything is covered: the active segment is rolled, and the new empty one carries
    // the next LSN in its name.
    (14, &[15]),
];

#[test]
fn trim_deletes_only_fully_covered_segments() {
    for &(upto, after) in TRIM_CASES {
        check_trim(upto, after, false);
    }
}

/// The same cases with the files deleted by the WAL's unlink thread: once it has caught up
/// the directory, the accounting and a reopen are exactly as with the inline deletion.
#[test]
fn background_unlink_deletes_the_same_segments() {
    for &(upto, after) in TRIM_CASES {
        check_trim(upto, after, true);
    }
}

/// A trimmed segment a crash left mid-deletion (renamed to `….wal.trimmed`, several shrink
/// steps long) is not part of the log: a reopen recovers only the live segments and deletes it.
#[test]
fn a_retired_segment_left_by_a_crash_is_ignored_and_deleted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), SEGMENT_BYTES_MAX);
    let wal = setup(&cfg);
    drop(wal);
    let first = tmp.path().join(format!("{:020}.wal", 1));
    let retired = tmp.path().join(format!("{:020}.wal.trimmed", 1));
    std::fs::rename(&first, &retired).expect("rename");
    let big = std::fs::OpenOptions::new()
        .append(true)
        .open(&retired)
        .expect("open");
    big.set_len(2 * strata_wal::SHRINK_STEP_BYTES + 99)
        .expect("grow");
    drop(big);
    let (wal, recovered) = open(&cfg);
    assert!(!retired.exists(), "the retired segment is deleted by open");
    assert_eq!(segment_first_lsns(tmp.path()), vec![5, 9, 13]);
    assert_eq!(recovered.first().map(|e| e.lsn), Some(5));
    assert_eq!(wal.last_lsn(), ENTRIES);
}

/// Trims queued one after another and then a drop: the drop waits for the thread, so a WAL
/// reopened at once finds exactly the segments the last trim kept.
#[test]
fn dropping_a_wal_waits_for_its_background_unlinks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = WalConfig {
        background_unlink: true,
        ..config(tmp.path(), SEGMENT_BYTES_MAX)
    };
    let mut wal = setup(&cfg);
    for upto in [4, 8, 12] {
        wal.trim(upto).expect("trim");
    }
    assert_eq!(wal.segment_count(), 1);
    drop(wal);
    assert_eq!(segment_first_lsns(tmp.path()), vec![13]);
    let (wal, recovered) = open(&cfg);
    assert_eq!(recovered.first().map(|e| e.lsn), Some(13));
    assert_eq!(wal.last_lsn(), ENTRIES);
}

#[test]
fn trimming_everything_leaves_one_empty_segment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut wal = setup(&config(tmp.path(), SEGMENT_BYTES_MAX));
    wal.trim(ENTRIES).expect("trim");
    assert_eq!(wal.segment_count(), 1);
    assert_eq!(wal.bytes_on_disk(), SEGMENT_HEADER_BYTES);
    assert_eq!(wal.append(b"next").expect("append"), ENTRIES + 1);
}

#[test]
fn trim_of_unsynced_entries_makes_the_position_durable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 1 << 20);
    let (mut wal, _) = open(&cfg);
    append_all(
        &mut wal,
        &(1..=6).map(|l| payload(l, 10)).collect::<Vec<_>>(),
    );
    wal.trim(6).expect("trim");
    // No sync after the trim: the rolled, empty segment must already be on disk.
    drop(wal);
    let (mut wal, recovered) = open(&cfg);
    assert!(recovered.is_empty());
    assert_eq!(wal.last_lsn(), 6);
    assert_eq!(wal.append(b"seven").expect("append"), 7);
}

#[test]
fn trim_ahead_of_the_log_is_rejected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut wal = setup(&config(tmp.path(), SEGMENT_BYTES_MAX));
    match wal.trim(ENTRIES + 1) {
        Err(
            e @ WalError::TrimAheadOfLog {
                upto: 15,
                last_lsn: 14,
            },
        ) => assert!(!e.is_retryable()),
        other => panic!("expected TrimAheadOfLog, got {other:?}"),
    }
    assert_eq!(wal.segment_count(), 4);
    assert_eq!(wal.append(b"still fine").expect("append"), ENTRIES + 1);
}

#[test]
fn lsns_continue_through_rounds_of_trim_and_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), SEGMENT_BYTES_MAX);
    let mut trimmed = 0u64;
    let mut last = 0u64;
    for round in 0..6u64 {
        let (mut wal, recovered) = open(&cfg);
        assert_eq!(wal.last_lsn(), last, "round {round}");
        // Every entry above the trim point is recovered, in order, exactly once.
        if let Some(first) = recovered.first() {
            assert!(first.lsn <= trimmed + 1, "round {round}");
        }
        let lsns: Vec<u64> = recovered.iter().map(|e| e.lsn).collect();
        let first = lsns.first().copied().unwrap_or(last + 1);
        assert_eq!(lsns, (first..=last).collect::<Vec<_>>(), "round {round}");
        for e in &recovered {
            assert_eq!(e.payload, payload(e.lsn, PAYLOAD_LEN), "round {round}");
        }

        let payloads: Vec<Vec<u8>> = (last + 1..=last + 10)
            .map(|l| payload(l, PAYLOAD_LEN))
            .collect();
        append_all(&mut wal, &payloads);
        wal.sync().expect("sync");
        last += 10;
        // Alternate between trimming everything and trimming part of the log.
        trimmed = if round % 2 == 0 { last - 3 } else { last };
        wal.trim(trimmed).expect("trim");
        assert_accounting_matches_disk(&wal, tmp.path());
    }
}
