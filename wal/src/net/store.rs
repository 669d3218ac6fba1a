//! The stream store: one WAL replica's durable copy of one stream, which the replica server's
//! stream thread drives with the [`crate::replication::ReplicaCommand`]s of its core.
//!
//! # On disk: stream entry format v1
//!
//! A replica keeps each stream in `<dir>/streams/<stream_id:020>/`, holding
//!
//! - the segment files of a [`crate::Wal`] (layout in [`crate::format`]): one record per entry,
//!   record LSN = entry LSN. The record payload is the *stream entry*:
//!
//!   ```text
//!   offset  size  field
//!        0     8  epoch    u64 LE, the epoch of the owner that first wrote the entry (>= 1)
//!        8     1  kind     u8: 0 data, 1 barrier (a barrier has no payload)
//!        9     n  payload  the owner's opaque bytes
//!   ```
//!
//! - `seal`, the sealed epoch, 20 bytes:
//!
//!   ```text
//!   offset  size  field
//!        0     8  magic    b"STRSEAL1"
//!        8     8  epoch    u64 LE
//!       16     4  crc      u32 LE, crc32c of bytes 0..16
//!   ```
//!
//!   Replaced atomically on `PersistSeal`: `seal.tmp` is written and fdatasync'ed, renamed over
//!   `seal`, and the directory fsync'ed. A missing `seal` means sealed epoch 0 (never sealed); a
//!   damaged one is corruption (a rename cannot tear it). A leftover `seal.tmp` is deleted.
//!
//! # Commands
//!
//! `PersistSeal` is durable when it returns, so an entry of a new epoch never reaches the disk
//! before the seal that allows it. `Write` only buffers (like [`crate::Wal::append`]); `Sync`
//! is one [`crate::Wal::sync`] for everything issued before it. `Truncate` is
//! [`crate::Wal::truncate_after`] and durable when it returns. `Trim` within the log is
//! [`crate::Wal::trim`] (whole segments only, so entries up to a segment's length below the trim
//! point stay until the next trim); past the last entry it is [`crate::Wal::reset_to`]`(upto +
//! 1)`. Every one of these keeps what a crash leaves a prefix of the log or the log before the
//! command, which is what the replica core's contract asks (see `replication::replica`).
//!
//! [`StreamStore::open`] restores [`DurableState`]: `Wal::open` recovery (a torn tail is cut,
//! damage elsewhere is [`WalError::Corrupt`] naming the file and offset), the seal, and checks of
//! every entry (epoch between 1 and the sealed epoch, non-decreasing, known kind, empty
//! barriers) that also fail as `Corrupt` naming the segment and offset.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::io_op;
use crate::replication::{DurableState, Entry, EntryKind, Epoch, Lsn};
use crate::{Wal, WalConfig, WalError};

/// Bytes of a stream entry before its payload (epoch, kind).
pub const STREAM_ENTRY_HEADER_BYTES: usize = 9;
/// First eight bytes of a seal file.
pub const SEAL_MAGIC: [u8; 8] = *b"STRSEAL1";
/// Size of a seal file.
pub const SEAL_FILE_BYTES: usize = 20;

const SEAL_FILE: &str = "seal";
const SEAL_TMP_FILE: &str = "seal.tmp";
const KIND_DATA: u8 = 0;
const KIND_BARRIER: u8 = 1;

/// The directory of `stream` under a replica's data directory.
pub fn stream_dir(replica_dir: &Path, stream: u64) -> PathBuf {
    replica_dir.join("streams").join(format!("{stream:020}"))
}

/// Encodes a stream entry (the WAL record payload) into `out`, replacing its contents.
pub fn encode_stream_entry(entry: &Entry, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(STREAM_ENTRY_HEADER_BYTES + entry.payload.len());
    out.extend_from_slice(&entry.epoch.0.to_le_bytes());
    out.push(match entry.kind {
        EntryKind::Data => KIND_DATA,
        EntryKind::Barrier => KIND_BARRIER,
    });
    out.extend_from_slice(&entry.payload);
}

/// Decodes the stream entry stored as the record `lsn`.
pub fn decode_stream_entry(lsn: u64, record: &[u8]) -> Result<Entry, &'static str> {
    let Some((header, payload)) = record.split_first_chunk::<STREAM_ENTRY_HEADER_BYTES>() else {
        return Err("stream entry is shorter than its 9-byte header");
    };
    let mut epoch = [0u8; 8];
    epoch.copy_from_slice(&header[..8]);
    let epoch = Epoch(u64::from_le_bytes(epoch));
    if epoch == Epoch::ZERO {
        return Err("stream entry has epoch 0");
    }
    let kind = match header[8] {
        KIND_DATA => EntryKind::Data,
        KIND_BARRIER if payload.is_empty() => EntryKind::Barrier,
        KIND_BARRIER => return Err("barrier entry has a payload"),
        _ => return Err("stream entry has an unknown kind"),
    };
    Ok(Entry {
        lsn: Lsn(lsn),
        epoch,
        kind,
        payload: Arc::from(payload),
    })
}

/// Encodes a seal file.
pub fn encode_seal(epoch: Epoch) -> [u8; SEAL_FILE_BYTES] {
    let mut out = [0u8; SEAL_FILE_BYTES];
    out[..8].copy_from_slice(&SEAL_MAGIC);
    out[8..16].copy_from_slice(&epoch.0.to_le_bytes());
    let crc = crc32c::crc32c(&out[..16]);
    out[16..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a seal file.
pub fn decode_seal(bytes: &[u8]) -> Result<Epoch, &'static str> {
    let Some(bytes) = bytes
        .first_chunk::<SEAL_FILE_BYTES>()
        .filter(|_| bytes.len() == SEAL_FILE_BYTES)
    else {
        return Err("seal file is not 20 bytes long");
    };
    if bytes[..8] != SEAL_MAGIC {
        return Err("seal file has a bad magic");
    }
    let stored = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    if stored != crc32c::crc32c(&bytes[..16]) {
        return Err("seal file checksum mismatch");
    }
    let mut epoch = [0u8; 8];
    epoch.copy_from_slice(&bytes[8..16]);
    Ok(Epoch(u64::from_le_bytes(epoch)))
}

/// Where the tombstone of a dropped stream is kept: next to its directory, named after it.
/// It is a seal file holding the sealed epoch the directory had.
pub fn tombstone_path(stream_dir: &Path) -> PathBuf {
    stream_dir.with_extension("tombstone")
}

/// Writes `bytes` to `path` durably: a `.tmp` sibling written and fdatasync'ed, renamed over
/// `path`, the parent directory fsync'ed.
fn replace_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    fs::rename(&tmp, path)?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) => File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

/// Deletes a (closed) stream directory, keeping its sealed epoch as a tombstone: the
/// tombstone is durable before the directory goes, so a crash in between leaves both (the
/// directory is dropped again by the next sweep). A replica that forgot a seal could let an
/// older owner reach a write quorum again; with the tombstone a later store of the stream
/// starts sealed at that epoch ([`restore_tombstone`]).
pub fn drop_stream_dir(stream_dir: &Path, sealed_epoch: Epoch) -> io::Result<()> {
    let tombstone = tombstone_path(stream_dir);
    let kept = match fs::read(&tombstone) {
        Ok(bytes) => decode_seal(&bytes).unwrap_or(Epoch::ZERO),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Epoch::ZERO,
        Err(e) => return Err(e),
    };
    replace_durably(&tombstone, &encode_seal(sealed_epoch.max(kept)))?;
    match fs::remove_dir_all(stream_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    sync_parent(stream_dir)
}

/// Before a stream store is created where no directory exists: if the stream was dropped
/// here before, recreate its directory with the tombstone's seal (durably), then remove the
/// tombstone. A no-op when the directory exists or there is no tombstone.
pub fn restore_tombstone(stream_dir: &Path) -> io::Result<()> {
    let tombstone = tombstone_path(stream_dir);
    if stream_dir.exists() {
        if tombstone.exists() {
            // A crash between writing the tombstone and deleting the directory.
            let bytes = fs::read(&tombstone)?;
            let dropped = decode_seal(&bytes).unwrap_or(Epoch::ZERO);
            let seal = stream_dir.join(SEAL_FILE);
            let current = match fs::read(&seal) {
                Ok(b) => decode_seal(&b).unwrap_or(Epoch::ZERO),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Epoch::ZERO,
                Err(e) => return Err(e),
            };
            if dropped > current {
                replace_durably(&seal, &encode_seal(dropped))?;
            }
            fs::remove_file(&tombstone)?;
            sync_parent(&tombstone)?;
        }
        return Ok(());
    }
    let bytes = match fs::read(&tombstone) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let epoch =
        decode_seal(&bytes).map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, reason))?;
    fs::create_dir_all(stream_dir)?;
    sync_parent(stream_dir)?;
    replace_durably(&stream_dir.join(SEAL_FILE), &encode_seal(epoch))?;
    fs::remove_file(&tombstone)?;
    sync_parent(&tombstone)
}

/// Where a stream store lives and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStoreConfig {
    /// The stream's own directory (see [`stream_dir`]).
    pub dir: PathBuf,
    pub segment_bytes_max: u64,
    /// Largest entry payload; the WAL records are [`STREAM_ENTRY_HEADER_BYTES`] larger.
    pub entry_bytes_max: u32,
}

impl StreamStoreConfig {
    pub(crate) fn wal_config(&self) -> WalConfig {
        WalConfig {
            dir: self.dir.clone(),
            segment_bytes_max: self.segment_bytes_max,
            // The owner's `retained_bytes_max` bounds what a replica holds.
            wal_bytes_max: u64::MAX,
            entry_bytes_max: self
                .entry_bytes_max
                .saturating_add(STREAM_ENTRY_HEADER_BYTES as u32),
            // Measured worse here (bench/cluster.sh moderate p99 4-26 ms against 1.6-2.2
            // inline): a replica process holds a WAL per stream, and their unlink threads'
            // stepwise shrinks all ran at once on the one disk. See BENCHMARKS.md.
            background_unlink: false,
        }
    }
}

/// One replica's durable copy of one stream. Owned by one thread.
pub struct StreamStore {
    cfg: StreamStoreConfig,
    wal: Wal,
    /// The stream directory, held open to fsync it after renaming the seal.
    dir: File,
    sealed_epoch: Epoch,
    /// Reused buffer for encoding entries.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for StreamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamStore")
            .field("dir", &self.cfg.dir)
            .field("sealed_epoch", &self.sealed_epoch.0)
            .field("wal", &self.wal)
            .finish()
    }
}

impl StreamStore {
    /// Opens (creating if needed) and restores the stream in `cfg.dir`. Everything returned is
    /// durable.
    pub fn open(cfg: StreamStoreConfig) -> Result<(StreamStore, DurableState), WalError> {
        let (wal, recovered) = Wal::open(cfg.wal_config())?;
        let dir = File::open(&cfg.dir).map_err(|e| io_error(&cfg.dir, io_op::OPEN_DIR, e))?;
        let tmp = cfg.dir.join(SEAL_TMP_FILE);
        match fs::remove_file(&tmp) {
            Ok(()) => {
                tracing::warn!(path = %tmp.display(), "removed a seal file that was never renamed")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&tmp, io_op::WRITE_SEAL, e)),
        }
        let seal_path = cfg.dir.join(SEAL_FILE);
        let sealed_epoch = match fs::read(&seal_path) {
            Ok(bytes) => decode_seal(&bytes).map_err(|reason| WalError::Corrupt {
                path: seal_path.clone(),
                offset: 0,
                reason: reason.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Epoch::ZERO,
            Err(e) => return Err(io_error(&seal_path, io_op::READ_SEAL, e)),
        };

        let base_lsn = Lsn(recovered.first().map_or(wal.last_lsn(), |e| e.lsn - 1));
        let mut entries = Vec::with_capacity(recovered.len());
        let mut last_epoch = Epoch::ZERO;
        for r in recovered {
            let checked = decode_stream_entry(r.lsn, &r.payload).and_then(|e| {
                if e.epoch > sealed_epoch {
                    Err("entry epoch is above the sealed epoch")
                } else if e.epoch < last_epoch {
                    Err("entry epoch is below the previous entry's")
                } else {
                    Ok(e)
                }
            });
            match checked {
                Ok(e) => {
                    last_epoch = e.epoch;
                    entries.push(e);
                }
                Err(reason) => {
                    let (path, offset) = wal
                        .record_position(r.lsn)
                        .unwrap_or_else(|| (cfg.dir.clone(), 0));
                    return Err(WalError::Corrupt {
                        path,
                        offset,
                        reason: format!("stream entry at lsn {}: {reason}", r.lsn),
                    });
                }
            }
        }
        let state = DurableState {
            sealed_epoch,
            base_lsn,
            entries,
        };
        let store = StreamStore {
            cfg,
            wal,
            dir,
            sealed_epoch,
            scratch: Vec::new(),
        };
        tracing::debug!(
            dir = %store.cfg.dir.display(),
            sealed_epoch = sealed_epoch.0,
            base = base_lsn.0,
            last = store.wal.last_lsn(),
            "WAL stream store opened"
        );
        Ok((store, state))
    }

    /// Records `epoch` as the sealed epoch, durably, before returning. Precondition: it is
    /// above the current one (the core only raises it).
    pub fn persist_seal(&mut self, epoch: Epoch) -> Result<(), WalError> {
        assert!(epoch > self.sealed_epoch, "the sealed epoch only grows");
        let tmp = self.cfg.dir.join(SEAL_TMP_FILE);
        let path = self.cfg.dir.join(SEAL_FILE);
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            file.write_all(&encode_seal(epoch))?;
            file.sync_data()?;
            fs::rename(&tmp, &path)?;
            self.dir.sync_all()
        })();
        written.map_err(|e| io_error(&path, io_op::WRITE_SEAL, e))?;
        self.sealed_epoch = epoch;
        Ok(())
    }

    /// Appends entries after the last one (buffered; durable after [`StreamStore::sync`]).
    pub fn write(&mut self, entries: &[Entry]) -> Result<(), WalError> {
        for e in entries {
            debug_assert!(e.epoch <= self.sealed_epoch, "entry above the seal");
            encode_stream_entry(e, &mut self.scratch);
            let lsn = self.wal.append(&self.scratch)?;
            assert_eq!(lsn, e.lsn.0, "the store and its replica core disagree");
        }
        Ok(())
    }

    /// Drops every entry after `after` (durable when it returns).
    pub fn truncate_after(&mut self, after: Lsn) -> Result<(), WalError> {
        self.wal.truncate_after(after.0)
    }

    /// Drops entries up to `upto` (settled); past the last entry the store becomes empty and
    /// continues at `upto + 1`. A failed deletion of a whole trimmed segment is logged and
    /// left for the next trim (the entries in it are settled, keeping them is harmless).
    pub fn trim(&mut self, upto: Lsn) -> Result<(), WalError> {
        if upto.0 > self.wal.last_lsn() {
            return self.wal.reset_to(upto.0 + 1);
        }
        match self.wal.trim(upto.0) {
            Err(e) if e.is_retryable() => {
                tracing::warn!(dir = %self.cfg.dir.display(), error = %e, "WAL stream trim left a segment behind");
                Ok(())
            }
            other => other,
        }
    }

    /// Makes every command issued so far durable: one write and one fdatasync.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.wal.sync()
    }

    pub fn sealed_epoch(&self) -> Epoch {
        self.sealed_epoch
    }

    /// The last entry's LSN (the base when empty).
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.wal.last_lsn())
    }

    /// Segment bytes plus the seal file.
    pub fn bytes_on_disk(&self) -> u64 {
        let seal = if self.sealed_epoch > Epoch::ZERO {
            SEAL_FILE_BYTES as u64
        } else {
            0
        };
        self.wal.bytes_on_disk() + seal
    }

    pub fn config(&self) -> &StreamStoreConfig {
        &self.cfg
    }

    /// Test-only: the next WAL operation `op` (an [`io_op`] name) fails.
    #[cfg(test)]
    pub(crate) fn inject_fault(&mut self, op: &'static str) {
        self.wal.inject_fault(op);
    }
}

fn io_error(path: &Path, op: &'static str, source: io::Error) -> WalError {
    WalError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_stream_comes_back_sealed_where_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = stream_dir(tmp.path(), 7);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(SEAL_FILE), encode_seal(Epoch(5))).unwrap();
        fs::write(dir.join("00000000000000000001.wal"), b"entries").unwrap();
        drop_stream_dir(&dir, Epoch(5)).unwrap();
        assert!(!dir.exists());
        let tombstone = tombstone_path(&dir);
        assert_eq!(
            tombstone.file_name().unwrap(),
            "00000000000000000007.tombstone"
        );
        assert_eq!(decode_seal(&fs::read(&tombstone).unwrap()), Ok(Epoch(5)));
        // A later drop never lowers the tombstone.
        fs::create_dir_all(&dir).unwrap();
        drop_stream_dir(&dir, Epoch(3)).unwrap();
        assert_eq!(decode_seal(&fs::read(&tombstone).unwrap()), Ok(Epoch(5)));
        // Recreated with the seal, and the tombstone is gone.
        restore_tombstone(&dir).unwrap();
        assert!(!tombstone.exists());
        assert_eq!(
            decode_seal(&fs::read(dir.join(SEAL_FILE)).unwrap()),
            Ok(Epoch(5))
        );
        // A crash between the tombstone and the delete: the directory's seal is raised.
        fs::write(dir.join(SEAL_FILE), encode_seal(Epoch(2))).unwrap();
        fs::write(&tombstone, encode_seal(Epoch(6))).unwrap();
        restore_tombstone(&dir).unwrap();
        assert_eq!(
            decode_seal(&fs::read(dir.join(SEAL_FILE)).unwrap()),
            Ok(Epoch(6))
        );
        assert!(!tombstone.exists());
        // Nothing to restore: a no-op.
        let other = stream_dir(tmp.path(), 8);
        restore_tombstone(&other).unwrap();
        assert!(!other.exists());
        // A damaged tombstone is an error, not a silent unsealed stream.
        fs::write(tombstone_path(&other), b"junk").unwrap();
        assert!(restore_tombstone(&other).is_err());
    }

    #[test]
    fn seal_layout_round_trips_and_rejects_damage() {
        let bytes = encode_seal(Epoch(0x0102_0304));
        assert_eq!(&bytes[..8], b"STRSEAL1");
        assert_eq!(&bytes[8..16], &0x0102_0304u64.to_le_bytes());
        assert_eq!(decode_seal(&bytes), Ok(Epoch(0x0102_0304)));
        let flipped = |at: usize| {
            let mut b = bytes;
            b[at] ^= 1;
            b.to_vec()
        };
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "seal file is not 20 bytes long"),
            (
                "short",
                bytes[..19].to_vec(),
                "seal file is not 20 bytes long",
            ),
            (
                "long",
                [&bytes[..], &[0][..]].concat(),
                "seal file is not 20 bytes long",
            ),
            ("magic", flipped(0), "seal file has a bad magic"),
            ("epoch", flipped(9), "seal file checksum mismatch"),
            ("crc", flipped(17), "seal file checksum mismatch"),
        ];
        for (name, bytes, expected) in cases {
            assert_eq!(decode_seal(&bytes), Err(expected), "case {name}");
        }
    }

    #[test]
    fn stream_entry_layout_round_trips_and_rejects_damage() {
        let data = Entry::data(Lsn(9), Epoch(3), Arc::from(&b"abc"[..]));
        let mut buf = Vec::new();
        encode_stream_entry(&data, &mut buf);
        assert_eq!(buf, [&3u64.to_le_bytes()[..], &[0], b"abc"].concat());
        assert_eq!(decode_stream_entry(9, &buf), Ok(data));
        let barrier = Entry::barrier(Lsn(4), Epoch(7));
        encode_stream_entry(&barrier, &mut buf);
        assert_eq!(buf.len(), STREAM_ENTRY_HEADER_BYTES);
        assert_eq!(decode_stream_entry(4, &buf), Ok(barrier));
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "short",
                vec![1, 0, 0],
                "stream entry is shorter than its 9-byte header",
            ),
            (
                "epoch 0",
                [&0u64.to_le_bytes()[..], &[0]].concat(),
                "stream entry has epoch 0",
            ),
            (
                "kind 2",
                [&1u64.to_le_bytes()[..], &[2]].concat(),
                "stream entry has an unknown kind",
            ),
            (
                "barrier payload",
                [&1u64.to_le_bytes()[..], &[1, 5]].concat(),
                "barrier entry has a payload",
            ),
        ];
        for (name, bytes, expected) in cases {
            assert_eq!(decode_stream_entry(1, &bytes), Err(expected), "case {name}");
        }
    }
}
