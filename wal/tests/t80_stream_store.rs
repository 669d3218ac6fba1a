//! The replica's stream store: seals, writes, truncation, trims (also past the end), and what
//! `open` restores after each.

mod common;

use std::path::Path;
use std::sync::Arc;

use strata_wal::net::store::{StreamStore, StreamStoreConfig};
use strata_wal::replication::{DurableState, Entry, Epoch, Lsn};
use strata_wal::{Wal, WalConfig, WalError};

/// Segments of about four 40-byte entries, so every operation crosses segment files.
fn config(dir: &Path) -> StreamStoreConfig {
    StreamStoreConfig {
        dir: dir.to_path_buf(),
        segment_bytes_max: 24 + 4 * (16 + 9 + 40),
        entry_bytes_max: 1024,
    }
}

fn open(dir: &Path) -> (StreamStore, DurableState) {
    StreamStore::open(config(dir)).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
}

fn entry(lsn: u64, epoch: u64) -> Entry {
    let payload = format!("e{lsn:03}-epoch{epoch:02}-{}", "x".repeat(27)).into_bytes();
    assert_eq!(payload.len(), 40);
    Entry::data(Lsn(lsn), Epoch(epoch), Arc::from(payload))
}

fn entries(lsns: std::ops::RangeInclusive<u64>, epoch: u64) -> Vec<Entry> {
    lsns.map(|l| entry(l, epoch)).collect()
}

/// Writes `lsns` at `epoch` (sealing at it first if needed) and syncs.
fn write(store: &mut StreamStore, lsns: std::ops::RangeInclusive<u64>, epoch: u64) {
    if store.sealed_epoch() < Epoch(epoch) {
        store.persist_seal(Epoch(epoch)).expect("seal");
    }
    store.write(&entries(lsns, epoch)).expect("write");
    store.sync().expect("sync");
}

fn check(name: &str, state: &DurableState, sealed: u64, base: u64, expected: &[Entry]) {
    assert_eq!(state.sealed_epoch, Epoch(sealed), "{name}: sealed epoch");
    assert_eq!(state.base_lsn, Lsn(base), "{name}: base");
    assert_eq!(state.entries, expected, "{name}: entries");
}

#[test]
fn a_fresh_store_is_empty_and_unsealed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, state) = open(tmp.path());
    check("fresh", &state, 0, 0, &[]);
    assert_eq!(store.last_lsn(), Lsn(0));
    assert_eq!(
        store.bytes_on_disk(),
        24,
        "one segment header, no seal file"
    );
}

#[test]
fn seal_persists_and_survives_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = open(tmp.path());
    store.persist_seal(Epoch(3)).expect("seal 3");
    store.persist_seal(Epoch(9)).expect("seal 9");
    drop(store);
    // A seal.tmp left by a crash before its rename is ignored and removed.
    std::fs::write(tmp.path().join("seal.tmp"), b"half").expect("write tmp");
    let (store, state) = open(tmp.path());
    check("sealed", &state, 9, 0, &[]);
    assert_eq!(store.sealed_epoch(), Epoch(9));
    assert!(!tmp.path().join("seal.tmp").exists());
}

#[test]
fn writes_are_restored_only_once_synced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = open(tmp.path());
    write(&mut store, 1..=5, 1);
    write(&mut store, 6..=9, 2);
    // Written but never synced: may or may not survive; here the process "crashes" before the
    // buffer is written at all (drop without sync).
    store.write(&entries(10..=10, 2)).expect("write");
    drop(store);
    let (_, state) = open(tmp.path());
    let mut expected = entries(1..=5, 1);
    expected.extend(entries(6..=9, 2));
    check("reopen", &state, 2, 0, &expected);
}

#[test]
fn truncate_after_replaces_a_divergent_tail() {
    // (truncate after, then write from there at epoch 3)
    for after in [0, 1, 4, 5, 8, 11] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut store, _) = open(tmp.path());
        write(&mut store, 1..=6, 1);
        write(&mut store, 7..=12, 2);
        store.persist_seal(Epoch(3)).expect("seal");
        store.truncate_after(Lsn(after)).expect("truncate");
        assert_eq!(store.last_lsn(), Lsn(after));
        write(&mut store, after + 1..=after + 3, 3);
        drop(store);
        let (_, state) = open(tmp.path());
        let mut expected: Vec<Entry> = (1..=after)
            .map(|l| entry(l, if l <= 6 { 1 } else { 2 }))
            .collect();
        expected.extend(entries(after + 1..=after + 3, 3));
        check(&format!("truncate after {after}"), &state, 3, 0, &expected);
    }
}

#[test]
fn trim_within_and_past_the_end() {
    // (trim up to, last written, expected base after reopen, expected first entry)
    let cases = [
        ("below the first segment end", 2, 12, 0, 1),
        ("a whole segment", 4, 12, 4, 5),
        ("the last entry", 12, 12, 12, 13),
        ("past the end", 20, 12, 20, 21),
    ];
    for (name, upto, last, base, first) in cases {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut store, _) = open(tmp.path());
        write(&mut store, 1..=last, 1);
        store.trim(Lsn(upto)).expect("trim");
        let next = last.max(upto) + 1;
        assert_eq!(store.last_lsn(), Lsn(next - 1), "{name}");
        // The store continues after the trim point.
        write(&mut store, next..=next + 1, 1);
        drop(store);
        let (store, state) = open(tmp.path());
        let expected = entries(first..=next + 1, 1);
        check(name, &state, 1, base, &expected);
        assert_eq!(store.last_lsn(), Lsn(next + 1), "{name}");
    }
}

#[test]
fn trim_past_the_end_of_an_empty_store_survives_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = open(tmp.path());
    store.persist_seal(Epoch(4)).expect("seal");
    store.trim(Lsn(100)).expect("trim");
    store.sync().expect("sync");
    drop(store);
    let (store, state) = open(tmp.path());
    check("empty after trim", &state, 4, 100, &[]);
    assert_eq!(store.last_lsn(), Lsn(100));
}

/// A record whose stream entry breaks the format fails `open` as corruption naming the
/// segment file and the record's byte offset.
#[test]
fn a_bad_stream_entry_is_corruption_naming_file_and_offset() {
    let cases: Vec<(&str, Vec<Vec<u8>>, u64)> = vec![
        // (records written through a raw Wal, byte offset of the bad one)
        (
            "epoch above the seal",
            vec![[&5u64.to_le_bytes()[..], &[0], b"x"].concat()],
            24,
        ),
        (
            "epoch goes down",
            vec![
                [&1u64.to_le_bytes()[..], &[0], b"a"].concat(),
                [&0u64.to_le_bytes()[..], &[0], b"b"].concat(),
            ],
            24 + 16 + 10,
        ),
        ("short record", vec![vec![1, 0, 0]], 24),
        (
            "unknown kind",
            vec![[&1u64.to_le_bytes()[..], &[7]].concat()],
            24,
        ),
    ];
    for (name, records, offset) in cases {
        let tmp = tempfile::tempdir().expect("tempdir");
        {
            let (mut store, _) = open(tmp.path());
            store.persist_seal(Epoch(1)).expect("seal");
        }
        let (mut wal, _) = Wal::open(WalConfig {
            dir: tmp.path().to_path_buf(),
            segment_bytes_max: 1 << 20,
            wal_bytes_max: 1 << 30,
            entry_bytes_max: 1024,
            background_unlink: false,
        })
        .expect("raw wal");
        for r in &records {
            wal.append(r).expect("append");
        }
        wal.sync().expect("sync");
        drop(wal);
        match StreamStore::open(config(tmp.path())) {
            Err(WalError::Corrupt {
                path,
                offset: at,
                reason,
            }) => {
                assert_eq!(
                    path,
                    tmp.path().join("00000000000000000001.wal"),
                    "{name}: {reason}"
                );
                assert_eq!(at, offset, "{name}: {reason}");
            }
            other => panic!("{name}: expected Corrupt, got {other:?}"),
        }
    }
}
