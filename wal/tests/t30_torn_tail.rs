//! Torn tails of the newest segment are cut away, and the WAL keeps working after the cut.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use common::*;
use strata_wal::format::{record_bytes, SEGMENT_HEADER_BYTES};
use strata_wal::RecoveredEntry;

const SEGMENT_BYTES_MAX: u64 = 300;
const ENTRIES: u64 = 12;
const LAST_PAYLOAD_LEN: usize = 40;

fn payload_len(lsn: u64) -> usize {
    if lsn == ENTRIES {
        LAST_PAYLOAD_LEN
    } else {
        (lsn as usize * 17) % 60
    }
}

fn expected(upto: u64) -> Vec<RecoveredEntry> {
    (1..=upto)
        .map(|l| entry(l, payload(l, payload_len(l))))
        .collect()
}

/// A synced WAL of `ENTRIES` entries over several segments; returns the newest segment's path.
fn build(dir: &Path) -> std::path::PathBuf {
    let cfg = config(dir, SEGMENT_BYTES_MAX);
    let (mut wal, _) = open(&cfg);
    let payloads: Vec<Vec<u8>> = (1..=ENTRIES).map(|l| payload(l, payload_len(l))).collect();
    append_all(&mut wal, &payloads);
    wal.sync().expect("sync");
    assert!(wal.segment_count() >= 3, "the case needs several segments");
    newest_segment(dir)
}

/// Damages a copy of the built WAL with `damage(newest segment)`, reopens, and checks that
/// exactly the first `survivors` entries come back, that the newest segment was cut to
/// `len_after`, and that appends continue and survive another reopen.
fn check(name: &str, damage: impl Fn(&Path), survivors: u64, len_after: u64) {
    let pristine = tempfile::tempdir().expect("tempdir");
    build(pristine.path());
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(pristine.path(), tmp.path());
    let newest = newest_segment(tmp.path());
    damage(&newest);

    let cfg = config(tmp.path(), SEGMENT_BYTES_MAX);
    let (wal, recovered) = open(&cfg);
    assert_eq!(recovered, expected(survivors), "case {name}");
    assert_eq!(wal.last_lsn(), survivors, "case {name}");
    assert_eq!(
        file_len(&newest),
        len_after,
        "case {name}: newest segment length"
    );
    assert_accounting_matches_disk(&wal, tmp.path());
    assert_appends_continue(&cfg, recovered, wal);
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .expect("truncate");
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .expect("append bytes");
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[offset as usize] ^= 0x10;
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn every_cut_inside_the_last_record_is_a_torn_tail() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let newest = build(pristine.path());
    let len = file_len(&newest);
    let last_start = len - record_bytes(LAST_PAYLOAD_LEN);
    for cut in last_start..len {
        check(
            &format!("cut at {cut}"),
            |p| truncate(p, cut),
            ENTRIES - 1,
            last_start,
        );
    }
}

#[test]
fn zero_filled_tail_is_cut_away() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let len = file_len(&build(pristine.path()));
    for zeros in [1usize, 15, 16, 17, 100, 4096] {
        check(
            &format!("{zeros} zero bytes"),
            |p| append_bytes(p, &vec![0; zeros]),
            ENTRIES,
            len,
        );
    }
}

#[test]
fn damage_in_the_last_record_is_a_torn_tail() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let len = file_len(&build(pristine.path()));
    let last_start = len - record_bytes(LAST_PAYLOAD_LEN);
    // (name, byte of the last record to flip)
    let cases = [
        ("len", 0),
        ("len high byte", 3),
        ("crc", 5),
        ("lsn", 8),
        ("first payload byte", 16),
        ("last payload byte", record_bytes(LAST_PAYLOAD_LEN) - 1),
    ];
    for (name, at) in cases {
        check(name, |p| flip(p, last_start + at), ENTRIES - 1, last_start);
    }
    check(
        "last record zeroed",
        |p| {
            truncate(p, last_start);
            append_bytes(p, &vec![0; record_bytes(LAST_PAYLOAD_LEN) as usize]);
        },
        ENTRIES - 1,
        last_start,
    );
    check(
        "garbage after the last record",
        |p| append_bytes(p, &[0xa5; 77]),
        ENTRIES,
        len,
    );
}

#[test]
fn losing_the_whole_newest_segment_keeps_its_lsn() {
    let pristine = tempfile::tempdir().expect("tempdir");
    build(pristine.path());
    let first_of_newest = *segment_first_lsns(pristine.path())
        .last()
        .expect("segments");
    let survivors = first_of_newest - 1;
    check(
        "cut to the header",
        |p| truncate(p, SEGMENT_HEADER_BYTES),
        survivors,
        SEGMENT_HEADER_BYTES,
    );
    // The header itself never reached the disk: it is rewritten from the file name.
    for cut in [0, 1, SEGMENT_HEADER_BYTES - 1] {
        check(
            &format!("cut inside the header at {cut}"),
            |p| truncate(p, cut),
            survivors,
            SEGMENT_HEADER_BYTES,
        );
    }
    check(
        "header prefix then zeros",
        |p| {
            truncate(p, 20);
            append_bytes(p, &[0; 40]);
        },
        survivors,
        SEGMENT_HEADER_BYTES,
    );
    check(
        "header and records zeroed",
        |p| {
            let len = file_len(p);
            truncate(p, 0);
            append_bytes(p, &vec![0; len as usize]);
        },
        survivors,
        SEGMENT_HEADER_BYTES,
    );
}
