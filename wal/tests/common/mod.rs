//! Helpers shared by the integration tests: configs, deterministic payloads, and looking at the
//! segment files behind the WAL's back.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use strata_wal::format::segment_file_name;
use strata_wal::{RecoveredEntry, Wal, WalConfig};

pub const ENTRY_BYTES_MAX: u32 = 4096;

pub fn config(dir: &Path, segment_bytes_max: u64) -> WalConfig {
    WalConfig {
        dir: dir.to_path_buf(),
        segment_bytes_max,
        wal_bytes_max: 1 << 30,
        entry_bytes_max: ENTRY_BYTES_MAX,
        background_unlink: false,
    }
}

pub fn open(cfg: &WalConfig) -> (Wal, Vec<RecoveredEntry>) {
    Wal::open(cfg.clone()).unwrap_or_else(|e| panic!("open {}: {e}", cfg.dir.display()))
}

/// Deterministic payload bytes for `lsn`, so a recovered entry can be checked on its own.
pub fn payload(lsn: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (lsn as usize).wrapping_mul(31).wrapping_add(i * 7) as u8)
        .collect()
}

/// Appends `payloads` and checks they get the next dense LSNs.
pub fn append_all(wal: &mut Wal, payloads: &[Vec<u8>]) {
    for p in payloads {
        let expected = wal.last_lsn() + 1;
        assert_eq!(wal.append(p).expect("append"), expected);
    }
}

pub fn entry(lsn: u64, payload: Vec<u8>) -> RecoveredEntry {
    RecoveredEntry { lsn, payload }
}

pub fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(segment_file_name(first_lsn))
}

/// Segment files in `dir`, in LSN order.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    files
}

pub fn segment_first_lsns(dir: &Path) -> Vec<u64> {
    segment_files(dir)
        .iter()
        .map(|p| {
            let stem = p.file_stem().and_then(|s| s.to_str()).expect("utf-8 name");
            stem.parse().expect("segment name is a number")
        })
        .collect()
}

pub fn newest_segment(dir: &Path) -> PathBuf {
    segment_files(dir).pop().expect("at least one segment")
}

pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("metadata").len()
}

/// After a sync, the WAL's in-memory accounting must match the files.
pub fn assert_accounting_matches_disk(wal: &Wal, dir: &Path) {
    let files = segment_files(dir);
    assert_eq!(wal.segment_count(), files.len(), "segment_count");
    let bytes: u64 = files.iter().map(|p| file_len(p)).sum();
    assert_eq!(wal.bytes_on_disk(), bytes, "bytes_on_disk");
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create dir");
    for entry in fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("dir entry");
        fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// Contents of every file in `dir`, to check that a failed open changed nothing.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            let path = e.expect("dir entry").path();
            let bytes = fs::read(&path).expect("read");
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

/// Appends one more entry after recovery, syncs, and checks it survives another reopen
/// together with everything recovered before.
pub fn assert_appends_continue(cfg: &WalConfig, recovered: Vec<RecoveredEntry>, wal: Wal) {
    let mut wal = wal;
    let lsn = wal.last_lsn() + 1;
    let extra = payload(lsn, 33);
    assert_eq!(wal.append(&extra).expect("append after recovery"), lsn);
    wal.sync().expect("sync after recovery");
    assert_accounting_matches_disk(&wal, &cfg.dir);
    drop(wal);
    let (wal, again) = open(cfg);
    let mut expected = recovered;
    expected.push(entry(lsn, extra));
    assert_eq!(again, expected, "entries after append + reopen");
    assert_eq!(wal.last_lsn(), lsn);
}

pub mod net;
