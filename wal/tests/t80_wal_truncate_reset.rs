//! `Wal::truncate_after` and `Wal::reset_to`: which segment files remain, what reopens, that
//! appends continue at the right LSN, and the crash states of a reset (its marker file).

mod common;

use std::fs;
use std::path::Path;

use common::*;
use strata_wal::format::SEGMENT_HEADER_BYTES;
use strata_wal::WalError;

const PAYLOAD_LEN: usize = 20;
/// Four records of 36 bytes after the 24-byte header.
const SEGMENT_BYTES_MAX: u64 = 24 + 4 * 36;
const ENTRIES: u64 = 14;

/// A synced WAL with entries 1..=14 in segments starting at 1, 5, 9, 13; `unsynced` more
/// entries are appended after the sync.
fn setup(dir: &Path, unsynced: u64) -> strata_wal::Wal {
    let cfg = config(dir, SEGMENT_BYTES_MAX);
    let (mut wal, _) = open(&cfg);
    let payloads: Vec<Vec<u8>> = (1..=ENTRIES).map(|l| payload(l, PAYLOAD_LEN)).collect();
    append_all(&mut wal, &payloads);
    wal.sync().expect("sync");
    assert_eq!(segment_first_lsns(dir), vec![1, 5, 9, 13]);
    let more: Vec<Vec<u8>> = (ENTRIES + 1..=ENTRIES + unsynced)
        .map(|l| payload(l, PAYLOAD_LEN))
        .collect();
    append_all(&mut wal, &more);
    wal
}

fn entries_upto(last: u64) -> Vec<strata_wal::RecoveredEntry> {
    (1..=last)
        .map(|l| entry(l, payload(l, PAYLOAD_LEN)))
        .collect()
}

fn check_truncate(after: u64, unsynced: u64, segments_after: &[u64]) {
    let name = format!("truncate_after({after}) with {unsynced} unsynced");
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), SEGMENT_BYTES_MAX);
    let mut wal = setup(tmp.path(), unsynced);
    wal.truncate_after(after).expect("truncate");
    assert_eq!(wal.last_lsn(), after, "{name}");
    assert_eq!(segment_first_lsns(tmp.path()), segments_after, "{name}");
    // Durable without a sync: the files already say so.
    assert_accounting_matches_disk(&wal, tmp.path());
    drop(wal);
    let (wal, recovered) = open(&cfg);
    assert_eq!(recovered, entries_upto(after), "{name}: reopen");
    assert_eq!(wal.last_lsn(), after, "{name}");
    assert_appends_continue(&cfg, recovered, wal);
}

#[test]
fn truncate_after_cases() {
    // (after, unsynced entries appended first, segment files after)
    let cases: &[(u64, u64, &[u64])] = &[
        (0, 0, &[1]),
        (1, 0, &[1]),
        (3, 0, &[1]),
        (4, 0, &[1, 5]),
        (5, 0, &[1, 5]),
        (8, 0, &[1, 5, 9]),
        (12, 0, &[1, 5, 9, 13]),
        (13, 0, &[1, 5, 9, 13]),
        (14, 0, &[1, 5, 9, 13]),
        // Buffered, never synced entries are written before the cut.
        (15, 2, &[1, 5, 9, 13]),
        (14, 2, &[1, 5, 9, 13]),
        (6, 2, &[1, 5]),
    ];
    for &(after, unsynced, segments) in cases {
        check_truncate(after, unsynced, segments);
    }
}

#[test]
fn truncate_after_a_trim_keeps_lsns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), SEGMENT_BYTES_MAX);
    let mut wal = setup(tmp.path(), 0);
    wal.trim(8).expect("trim");
    assert_eq!(segment_first_lsns(tmp.path()), vec![9, 13]);
    let err = wal.truncate_after(7).expect_err("below the held entries");
    assert!(matches!(err, WalError::TruncateOutOfRange { .. }), "{err}");
    wal.truncate_after(8).expect("truncate to the trim point");
    assert_eq!(segment_first_lsns(tmp.path()), vec![9]);
    assert_eq!(wal.bytes_on_disk(), SEGMENT_HEADER_BYTES);
    drop(wal);
    let (wal, recovered) = open(&cfg);
    assert!(recovered.is_empty());
    assert_eq!(wal.last_lsn(), 8, "LSNs continue from the trim point");
    assert_appends_continue(&cfg, recovered, wal);
}

#[test]
fn reset_to_cases() {
    // (next lsn, unsynced entries appended first)
    let cases = [(15, 0), (16, 0), (100, 0), (100, 3), (18, 3)];
    for (next, unsynced) in cases {
        let name = format!("reset_to({next}) with {unsynced} unsynced");
        let tmp = tempfile::tempdir().expect("tempdir");
        let cfg = config(tmp.path(), SEGMENT_BYTES_MAX);
        let mut wal = setup(tmp.path(), unsynced);
        wal.reset_to(next).expect("reset");
        assert_eq!(wal.last_lsn(), next - 1, "{name}");
        assert_eq!(segment_first_lsns(tmp.path()), vec![next], "{name}");
        assert_accounting_matches_disk(&wal, tmp.path());
        drop(wal);
        let (wal, recovered) = open(&cfg);
        assert!(recovered.is_empty(), "{name}");
        assert_eq!(wal.last_lsn(), next - 1, "{name}");
        assert_appends_continue(&cfg, recovered, wal);
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut wal = setup(tmp.path(), 0);
    let err = wal.reset_to(14).expect_err("behind the log");
    assert!(
        matches!(
            err,
            WalError::ResetBehindLog {
                next_lsn: 14,
                last_lsn: 14
            }
        ),
        "{err}"
    );
    assert!(!wal.is_poisoned());
}

fn marker_path(dir: &Path, lsn: u64) -> std::path::PathBuf {
    dir.join(format!("{lsn:020}.reset"))
}

/// A segment header naming `lsn`, as `reset_to` writes it into the marker.
fn header(lsn: u64) -> Vec<u8> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = open(&config(tmp.path(), SEGMENT_BYTES_MAX));
    wal.reset_to(lsn).expect("reset");
    drop(wal);
    fs::read(segment_path(tmp.path(), lsn)).expect("read the new segment")
}

/// The states a crash can leave a reset in, planted by hand, and what `open` makes of them.
#[test]
fn interrupted_resets_are_finished_or_forgotten() {
    enum Expect {
        /// The reset happened: empty, continuing at this LSN.
        Reset(u64),
        /// The reset never became durable: the old entries.
        Old,
        Corrupt,
    }
    let intact = header(50);
    assert_eq!(intact.len() as u64, SEGMENT_HEADER_BYTES);
    /// (name, marker files planted as (lsn, bytes), segments deleted before the crash, expected)
    type Case<'a> = (&'a str, Vec<(u64, Vec<u8>)>, &'a [u64], Expect);
    let cases: Vec<Case> = vec![
        (
            "marker durable, nothing deleted yet",
            vec![(50, intact.clone())],
            &[],
            Expect::Reset(50),
        ),
        (
            "marker durable, some segments deleted",
            vec![(50, intact.clone())],
            &[1, 5],
            Expect::Reset(50),
        ),
        (
            "marker durable, every segment deleted",
            vec![(50, intact.clone())],
            &[1, 5, 9, 13],
            Expect::Reset(50),
        ),
        (
            "marker torn (short)",
            vec![(50, intact[..10].to_vec())],
            &[],
            Expect::Old,
        ),
        (
            "marker torn (zeros)",
            vec![(50, vec![0; 24])],
            &[],
            Expect::Old,
        ),
        (
            "marker names another lsn",
            vec![(51, intact.clone())],
            &[],
            Expect::Old,
        ),
        (
            "marker behind the segments",
            vec![(13, header(13))],
            &[],
            Expect::Corrupt,
        ),
        (
            "two intact markers",
            vec![(50, intact.clone()), (60, header(60))],
            &[],
            Expect::Corrupt,
        ),
    ];
    for (name, markers, deleted, expected) in cases {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cfg = config(tmp.path(), SEGMENT_BYTES_MAX);
        drop(setup(tmp.path(), 0));
        for (lsn, bytes) in &markers {
            fs::write(marker_path(tmp.path(), *lsn), bytes).expect("plant marker");
        }
        for &first in deleted {
            fs::remove_file(segment_path(tmp.path(), first)).expect("delete segment");
        }
        match expected {
            Expect::Reset(next) => {
                let (wal, recovered) = open(&cfg);
                assert!(recovered.is_empty(), "{name}");
                assert_eq!(wal.last_lsn(), next - 1, "{name}");
                assert_eq!(segment_first_lsns(tmp.path()), vec![next], "{name}");
                assert!(!marker_path(tmp.path(), next).exists(), "{name}");
                assert_appends_continue(&cfg, recovered, wal);
            }
            Expect::Old => {
                let (wal, recovered) = open(&cfg);
                assert_eq!(recovered, entries_upto(ENTRIES), "{name}");
                assert_eq!(wal.last_lsn(), ENTRIES, "{name}");
                for (lsn, _) in &markers {
                    assert!(
                        !marker_path(tmp.path(), *lsn).exists(),
                        "{name}: marker removed"
                    );
                }
            }
            Expect::Corrupt => {
                let before = snapshot(tmp.path());
                match strata_wal::Wal::open(cfg.clone()) {
                    Err(WalError::Corrupt { path, .. }) => {
                        assert!(
                            path.to_string_lossy().ends_with(".reset"),
                            "{name}: {}",
                            path.display()
                        );
                    }
                    other => panic!("{name}: expected Corrupt, got {other:?}"),
                }
                assert_eq!(snapshot(tmp.path()), before, "{name}: nothing changed");
            }
        }
    }
}
