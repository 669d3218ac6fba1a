//! The IO driver: owns the segment files and carries out open/recovery, append, sync, roll and
//! trim. Recovery decisions come from the pure [`crate::recovery`] scanner; byte layouts from
//! [`crate::format`].
//!
//! Durability protocol (what makes the crash rules of [`crate::recovery`] hold):
//! - `append` only encodes into an in-memory buffer (written with write(2) when it reaches
//!   [`WRITE_BUFFER_BYTES_MAX`]); `sync` writes the buffer, fdatasyncs the newest segment, and
//!   fsyncs the directory if a segment file was created since the last sync.
//! - Rolling to a new segment first writes and fdatasyncs the old one and, if the old one's own
//!   directory entry is not durable yet, fsyncs the directory. So whenever a segment file exists,
//!   every older segment is complete on disk: only the newest segment can have a torn tail, and
//!   the set of segment files stays contiguous.
//! - `trim` makes the newest segment (whose name carries the next LSN) durable before deleting
//!   anything, deletes oldest first, and fsyncs the directory after each deletion, so a crash
//!   mid-trim leaves a contiguous suffix of segments and LSNs never restart. With
//!   `background_unlink` the deletions (same order, same fsyncs) are done by the
//!   `crate::unlink` thread after `trim` returns; a failed one stops every later one.
//! - `truncate_after` (dropping a divergent suffix, for a replica's store) deletes the segments
//!   wholly after the cut newest first, fsyncing the directory after each deletion, and then cuts
//!   the segment holding the cut point with `set_len` + fsync. A crash part-way leaves the log cut
//!   somewhere between the cut point and its old end: a prefix of the old log, still contiguous.
//! - `reset_to` (emptying the WAL so that it continues at a later LSN, for a replica's store
//!   when a trim passes its end) first writes and fsyncs a *reset marker* `{next_lsn:020}.reset`
//!   (a segment header naming the next LSN), then deletes every segment, then renames the marker
//!   to `{next_lsn:020}.wal`, fsyncing the directory between the steps. `open` finishes a reset
//!   whose marker is intact (it deletes the segments and renames the marker) and deletes a
//!   marker that is not (the crash came before the reset became durable: nothing was deleted).
//!   So the directory never holds a gap between segments and LSNs never restart.
//! - A failed write or fsync poisons the instance (see [`WalError::Poisoned`]).
//! - `open` fsyncs the newest segment and the directory, so everything it returns is durable.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::config::{WalConfig, WRITE_BUFFER_BYTES_MAX};
use crate::error::io_op;
use crate::format::{
    self, decode_record, decode_segment_header, encode_segment_header, parse_segment_file_name,
    segment_file_name, SegmentName, SEGMENT_HEADER_BYTES, SEGMENT_HEADER_LEN,
};
use crate::recovery::{self, ScanError, TornTail};
use crate::unlink::Unlinker;
use crate::{RecoveredEntry, WalError};

/// One segment file as the WAL tracks it in memory, so that trimming and size accounting never
/// list the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    first_lsn: u64,
    /// `first_lsn - 1` while the segment holds no record.
    last_lsn: u64,
    /// Header plus records, including records still in the write buffer.
    bytes: u64,
}

impl Segment {
    fn is_empty(&self) -> bool {
        self.last_lsn < self.first_lsn
    }
}

/// The first fatal IO failure, kept to explain every later refusal.
#[derive(Debug, Clone)]
struct Poison {
    path: PathBuf,
    op: &'static str,
    cause: String,
}

/// A write-ahead log in one directory, owned by one thread.
///
/// Entries get dense LSNs starting at 1. [`Wal::append`] buffers, [`Wal::sync`] makes every
/// appended entry durable: the group-commit pattern is many appends, then one sync.
pub struct Wal {
    cfg: WalConfig,
    /// The directory, held open to fsync it after creating or deleting segment files.
    dir: File,
    /// Oldest first; never empty; the back is the active segment, the only one appended to.
    segments: VecDeque<Segment>,
    /// The active segment's file, opened for append.
    active: File,
    /// Encoded records of the active segment not yet written to `active`.
    buf: Vec<u8>,
    next_lsn: u64,
    /// Sum of `segments[..].bytes`.
    bytes_total: u64,
    /// The active segment has bytes (written or buffered) that are not fdatasync'ed.
    active_unsynced: bool,
    /// A segment file was created or deleted since the directory was last fsync'ed.
    dir_unsynced: bool,
    poison: Option<Poison>,
    /// Deletes trimmed segments when [`WalConfig::background_unlink`] is set.
    unlinker: Unlinker,
    /// Test-only fault injection: the next operation with this `io_op` fails.
    #[cfg(test)]
    fault: Option<&'static str>,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.cfg.dir)
            .field("segments", &self.segments.len())
            .field("next_lsn", &self.next_lsn)
            .field("bytes_total", &self.bytes_total)
            .field("buffered_bytes", &self.buf.len())
            .field("poisoned", &self.poison.is_some())
            .finish()
    }
}

impl Wal {
    /// Opens (creating the dir if needed) and recovers: returns every intact entry in LSN order.
    ///
    /// A torn tail (a partial record, or a checksum mismatch in the last record(s) of the newest
    /// segment with nothing intact after it, including zero-filled space) is truncated away and
    /// logged with `tracing::warn`. A damaged record with intact data after it, damage in an
    /// older segment, or an LSN gap is [`WalError::Corrupt`], naming the file and byte offset.
    /// Everything returned is durable when this returns.
    pub fn open(cfg: WalConfig) -> Result<(Wal, Vec<RecoveredEntry>), WalError> {
        cfg.validate()?;
        ensure_dir(&cfg.dir)?;
        let dir = File::open(&cfg.dir).map_err(|e| io_error(&cfg.dir, io_op::OPEN_DIR, e))?;
        let Listing {
            segments: mut names,
            markers,
            retired,
        } = list_segments(&cfg.dir)?;
        crate::unlink::remove_leftovers(&retired);
        if !markers.is_empty() {
            finish_reset(&cfg.dir, &dir, &mut names, &markers)?;
        }

        let mut segments: VecDeque<Segment> = VecDeque::with_capacity(names.len().max(1));
        let mut entries = Vec::new();
        let mut torn: Option<TornTail> = None;
        for (i, &first_lsn) in names.iter().enumerate() {
            let path = segment_path(&cfg.dir, first_lsn);
            if let Some(prev) = segments.back() {
                if prev.last_lsn.checked_add(1) != Some(first_lsn) {
                    return Err(WalError::Corrupt {
                        path,
                        offset: 0,
                        reason: format!(
                            "segment starts at lsn {first_lsn} but the previous segment ends at \
                             lsn {} (missing or stray segment file)",
                            prev.last_lsn
                        ),
                    });
                }
            }
            let bytes = fs::read(&path).map_err(|e| io_error(&path, io_op::READ_SEGMENT, e))?;
            let newest = i + 1 == names.len();
            let scan = recovery::scan_segment(&bytes, first_lsn, newest, cfg.entry_bytes_max)
                .map_err(|e| scan_error(path, e))?;
            segments.push_back(Segment {
                first_lsn,
                last_lsn: scan.last_lsn,
                bytes: scan.valid_bytes,
            });
            entries.extend(scan.entries);
            debug_assert!(
                scan.torn.is_none() || newest,
                "only the newest segment is torn"
            );
            torn = scan.torn;
        }

        let active = match segments.back() {
            None => {
                let first = Segment {
                    first_lsn: 1,
                    last_lsn: 0,
                    bytes: SEGMENT_HEADER_BYTES,
                };
                segments.push_back(first);
                create_first_segment(&cfg.dir, &dir)?
            }
            Some(newest) => open_newest_segment(&cfg.dir, &dir, newest, torn.as_ref())?,
        };

        let newest = segments
            .back()
            .copied()
            .expect("segments is never empty here");
        let wal = Wal {
            bytes_total: segments.iter().map(|s| s.bytes).sum(),
            next_lsn: newest.last_lsn + 1,
            cfg,
            dir,
            segments,
            active,
            buf: Vec::with_capacity(WRITE_BUFFER_BYTES_MAX),
            active_unsynced: false,
            dir_unsynced: false,
            poison: None,
            unlinker: Unlinker::default(),
            #[cfg(test)]
            fault: None,
        };
        wal.check_invariants();
        tracing::info!(
            dir = %wal.cfg.dir.display(),
            segments = wal.segments.len(),
            entries = entries.len(),
            last_lsn = wal.last_lsn(),
            bytes = wal.bytes_total,
            "WAL opened"
        );
        Ok((wal, entries))
    }

    /// Buffers one entry for the active segment and returns its LSN. The entry is not durable
    /// until the next successful [`Wal::sync`].
    ///
    /// LSNs are dense, start at 1 on a fresh WAL, and continue after recovery (one past the
    /// last recovered), also after trim. Rolling to a new segment happens here, before the entry, when the
    /// entry would take a non-empty active segment past `segment_bytes_max`; the roll
    /// fdatasyncs the old segment.
    ///
    /// Errors: [`WalError::EntryTooLarge`]; [`WalError::Full`] (retryable, nothing changed);
    /// [`WalError::Io`] (a write error poisons the WAL); [`WalError::Poisoned`].
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, WalError> {
        self.check_usable()?;
        if payload.len() > self.cfg.entry_bytes_max as usize {
            return Err(WalError::EntryTooLarge {
                len: payload.len(),
                max: self.cfg.entry_bytes_max,
            });
        }
        let record_bytes = format::record_bytes(payload.len());
        let active = self.active_segment();
        let roll = !active.is_empty() && active.bytes + record_bytes > self.cfg.segment_bytes_max;
        let growth = record_bytes + if roll { SEGMENT_HEADER_BYTES } else { 0 };
        if self.bytes_total + growth > self.cfg.wal_bytes_max {
            return Err(WalError::Full {
                bytes: self.bytes_total,
                max: self.cfg.wal_bytes_max,
            });
        }
        if roll {
            self.roll()?;
        }

        let lsn = self.next_lsn;
        format::encode_record(&mut self.buf, lsn, payload);
        self.next_lsn += 1;
        let active = self.active_segment_mut();
        active.last_lsn = lsn;
        active.bytes += record_bytes;
        self.bytes_total += record_bytes;
        self.active_unsynced = true;
        if self.buf.len() >= WRITE_BUFFER_BYTES_MAX {
            self.flush_buf()?;
        }
        self.check_invariants();
        Ok(lsn)
    }

    /// Makes every appended entry durable: writes buffered bytes, fdatasyncs the active segment
    /// and fsyncs the directory when a segment was created since the last sync. After `Ok`, all
    /// LSNs up to [`Wal::last_lsn`] are durable. An error poisons the WAL.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_usable()?;
        self.flush_buf()?;
        self.sync_active()?;
        self.sync_dir()
    }

    /// The caller has made every entry with `lsn <= upto` durable elsewhere (object storage):
    /// deletes whole segment files whose entries are all `<= upto`.
    ///
    /// The active segment is never deleted; when it is non-empty and entirely `<= upto` it is
    /// rolled first (which syncs it), so that it can go. Before deleting, the active segment is
    /// made durable, since its name carries the next LSN. A segment that also holds entries
    /// `> upto` stays whole.
    ///
    /// Errors: [`WalError::TrimAheadOfLog`] when `upto > last_lsn()`; a failed deletion is a
    /// retryable [`WalError::Io`] that leaves the segment listed; sync failures poison.
    pub fn trim(&mut self, upto: u64) -> Result<(), WalError> {
        self.check_usable()?;
        let last_lsn = self.last_lsn();
        if upto > last_lsn {
            return Err(WalError::TrimAheadOfLog { upto, last_lsn });
        }
        let active = self.active_segment();
        if !active.is_empty() && active.last_lsn <= upto {
            self.roll()?;
        }
        let deletable = |segments: &VecDeque<Segment>| {
            segments.len() > 1 && segments.front().is_some_and(|s| s.last_lsn <= upto)
        };
        if !deletable(&self.segments) {
            return Ok(());
        }
        self.sync()?;
        if self.cfg.background_unlink {
            let mut paths = Vec::new();
            while deletable(&self.segments) {
                let Some(oldest) = self.segments.pop_front() else {
                    break;
                };
                self.bytes_total -= oldest.bytes;
                paths.push(self.segment_path(oldest.first_lsn));
            }
            if let Err(err) = self.unlinker.send(&self.dir, paths) {
                // The segments are settled: leaving them on disk loses nothing, and the next
                // `open` lists them again.
                tracing::error!(dir = %self.cfg.dir.display(), %err, "trimmed WAL segments left on disk");
            }
            self.check_invariants();
            return Ok(());
        }
        while deletable(&self.segments) {
            let Some(&oldest) = self.segments.front() else {
                break;
            };
            let path = self.segment_path(oldest.first_lsn);
            match self
                .fault(io_op::REMOVE_SEGMENT)
                .and_then(|()| fs::remove_file(&path))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::warn!(
                        path = %path.display(),
                        "trimmed WAL segment was already deleted by someone else"
                    );
                }
                Err(source) => {
                    return Err(WalError::Io {
                        path,
                        op: io_op::REMOVE_SEGMENT,
                        source,
                    })
                }
            }
            self.segments.pop_front();
            self.bytes_total -= oldest.bytes;
            // Each deletion is made durable before the next, oldest first, so a crash leaves a
            // contiguous run of segments behind.
            self.dir_unsynced = true;
            self.sync_dir()?;
        }
        self.check_invariants();
        Ok(())
    }

    /// Drops every entry after `after` (a divergent suffix, for a replica's store): the next
    /// append gets `after + 1`. Durable when it returns.
    ///
    /// Segments holding only entries after the cut are deleted newest first (directory fsync
    /// after each); the segment holding `after + 1` is cut at the end of the record `after`
    /// (found by reading that one segment back) with `set_len` and fsync'ed. A crash part-way
    /// leaves a log cut between `after` and the old end. Entries still in the write buffer are
    /// written first. `after == last_lsn()` changes nothing.
    ///
    /// Errors: [`WalError::TruncateOutOfRange`] when `after` is below the oldest held entry's
    /// predecessor or above `last_lsn()`; any IO failure poisons the WAL (the in-memory view
    /// would no longer match the files).
    pub fn truncate_after(&mut self, after: u64) -> Result<(), WalError> {
        self.check_usable()?;
        let first_lsn = self.first_lsn();
        let last_lsn = self.last_lsn();
        if after > last_lsn || after.saturating_add(1) < first_lsn {
            return Err(WalError::TruncateOutOfRange {
                after,
                first_lsn,
                last_lsn,
            });
        }
        if after == last_lsn {
            return Ok(());
        }
        self.flush_buf()?;
        // Newest first, so a crash leaves a contiguous prefix of the old log.
        while self.active_segment().first_lsn > after + 1 {
            let newest = self.active_segment();
            let path = self.segment_path(newest.first_lsn);
            let removed = self
                .fault(io_op::REMOVE_TRUNCATED_SEGMENT)
                .and_then(|()| remove_if_present(&path));
            if let Err(e) = removed {
                return Err(self.poison(path, io_op::REMOVE_TRUNCATED_SEGMENT, e));
            }
            self.segments.pop_back();
            self.bytes_total -= newest.bytes;
            self.dir_unsynced = true;
            self.sync_dir()?;
        }
        let target = self.active_segment();
        let path = self.segment_path(target.first_lsn);
        let cut = if target.first_lsn == after + 1 {
            SEGMENT_HEADER_BYTES
        } else {
            match self.record_span(target.first_lsn, after) {
                Ok((_, end)) => end,
                Err(e) => return Err(self.poison(path, io_op::SCAN_SEGMENT, e)),
            }
        };
        let cut_file = self.fault(io_op::CUT_SEGMENT).and_then(|()| {
            let file = OpenOptions::new().append(true).open(&path)?;
            file.set_len(cut)?;
            // sync_all: the file size changed, and every record before the cut may still be
            // only in the page cache (written, not yet synced).
            file.sync_all()?;
            Ok(file)
        });
        let file = match cut_file {
            Ok(file) => file,
            Err(e) => return Err(self.poison(path, io_op::CUT_SEGMENT, e)),
        };
        self.active = file;
        self.active_unsynced = false;
        self.bytes_total = self.bytes_total - target.bytes + cut;
        let active = self.active_segment_mut();
        active.last_lsn = after;
        active.bytes = cut;
        self.next_lsn = after + 1;
        // A segment created by an earlier roll may not have a durable directory entry yet.
        self.sync_dir()?;
        self.check_invariants();
        tracing::debug!(dir = %self.cfg.dir.display(), after, "WAL truncated");
        Ok(())
    }

    /// Drops every entry and continues at `next_lsn`: the WAL becomes one empty segment named
    /// `next_lsn`, and the next append gets `next_lsn`. For a replica's store when the settled
    /// point passes its last entry. Durable when it returns.
    ///
    /// Protocol (see the module docs): write and fsync the reset marker, delete every segment,
    /// rename the marker into the new segment. `open` finishes an interrupted reset.
    /// `next_lsn == last_lsn() + 1` is the same as `trim(last_lsn())`.
    ///
    /// Errors: [`WalError::ResetBehindLog`] when `next_lsn <= last_lsn()` (LSNs never repeat);
    /// any IO failure poisons the WAL.
    pub fn reset_to(&mut self, next_lsn: u64) -> Result<(), WalError> {
        self.check_usable()?;
        if next_lsn <= self.last_lsn() {
            return Err(WalError::ResetBehindLog {
                next_lsn,
                last_lsn: self.last_lsn(),
            });
        }
        if next_lsn == self.next_lsn {
            return self.trim(self.last_lsn());
        }
        // The buffered records belong to segments that are about to go.
        self.buf.clear();
        let marker = reset_marker_path(&self.cfg.dir, next_lsn);
        let written = self
            .fault(io_op::WRITE_RESET_MARKER)
            .and_then(|()| write_durable_file(&marker, &encode_segment_header(next_lsn)));
        if let Err(e) = written {
            return Err(self.poison(marker, io_op::WRITE_RESET_MARKER, e));
        }
        self.dir_unsynced = true;
        self.sync_dir()?;
        // From here on a crash finishes the reset in `open`.
        let doomed: Vec<u64> = self.segments.iter().map(|s| s.first_lsn).collect();
        for first_lsn in doomed {
            let path = self.segment_path(first_lsn);
            let removed = self
                .fault(io_op::REMOVE_RESET_SEGMENT)
                .and_then(|()| remove_if_present(&path));
            if let Err(e) = removed {
                return Err(self.poison(path, io_op::REMOVE_RESET_SEGMENT, e));
            }
        }
        self.dir_unsynced = true;
        self.sync_dir()?;
        let path = self.segment_path(next_lsn);
        let renamed = self
            .fault(io_op::RENAME_RESET_MARKER)
            .and_then(|()| fs::rename(&marker, &path))
            .and_then(|()| OpenOptions::new().append(true).open(&path));
        let file = match renamed {
            Ok(file) => file,
            Err(e) => return Err(self.poison(path, io_op::RENAME_RESET_MARKER, e)),
        };
        self.dir_unsynced = true;
        self.sync_dir()?;
        self.active = file;
        self.active_unsynced = false;
        self.segments.clear();
        self.segments.push_back(Segment {
            first_lsn: next_lsn,
            last_lsn: next_lsn - 1,
            bytes: SEGMENT_HEADER_BYTES,
        });
        self.bytes_total = SEGMENT_HEADER_BYTES;
        self.next_lsn = next_lsn;
        self.check_invariants();
        tracing::debug!(dir = %self.cfg.dir.display(), next_lsn, "WAL reset");
        Ok(())
    }

    /// The LSN of the oldest entry the segment files hold, or `last_lsn() + 1` when the WAL is
    /// empty. (Trim deletes whole segments, so this can be below the last trim point.)
    pub fn first_lsn(&self) -> u64 {
        self.segments.front().map_or(self.next_lsn, |s| s.first_lsn)
    }

    /// The segment file and byte offset of the record `lsn`, read back from the file; `None`
    /// when the WAL does not hold it, it is still in the write buffer, or the file cannot be
    /// read. For naming the place of a bad entry in an error message.
    pub fn record_position(&self, lsn: u64) -> Option<(PathBuf, u64)> {
        let segment = self
            .segments
            .iter()
            .rev()
            .find(|s| s.first_lsn <= lsn && lsn <= s.last_lsn)?;
        let (start, _) = self.record_span(segment.first_lsn, lsn).ok()?;
        Some((self.segment_path(segment.first_lsn), start))
    }

    /// Byte range of the record `lsn` in the segment file named `first_lsn`, by walking its
    /// records from the header. Rare (truncation, error messages): reads the whole segment.
    fn record_span(&self, first_lsn: u64, lsn: u64) -> io::Result<(u64, u64)> {
        let path = self.segment_path(first_lsn);
        let bytes = fs::read(&path)?;
        let mut pos = SEGMENT_HEADER_LEN;
        let mut expected = first_lsn;
        while expected <= lsn {
            let record = bytes
                .get(pos..)
                .ok_or_else(|| io::Error::other("segment ends before the record"))
                .and_then(|rest| {
                    decode_record(rest, self.cfg.entry_bytes_max)
                        .map_err(|e| io::Error::other(format!("at byte {pos}: {e}")))
                })?;
            if record.lsn != expected {
                return Err(io::Error::other(format!(
                    "at byte {pos}: record has lsn {} where {expected} was expected",
                    record.lsn
                )));
            }
            if record.lsn == lsn {
                return Ok((pos as u64, (pos + record.encoded_len()) as u64));
            }
            pos += record.encoded_len();
            expected += 1;
        }
        Err(io::Error::other(format!("lsn {lsn} is before the segment")))
    }

    /// LSN of the last appended entry (durable or not); 0 when nothing was ever appended.
    pub fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    /// Live bytes across segment files: headers and records, including appended records still
    /// in the write buffer (they reach the file by the next sync at the latest). Trimmed
    /// segments waiting for the background unlink are not live and not counted.
    pub fn bytes_on_disk(&self) -> u64 {
        self.bytes_total
    }

    /// Blocks until the segments trimmed so far are deleted (with
    /// [`WalConfig::background_unlink`]; at once otherwise). Dropping the WAL waits too.
    pub fn wait_unlinked(&self) {
        self.unlinker.wait();
    }

    /// Number of segment files, including the active one (always at least 1).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The configuration the WAL was opened with.
    pub fn config(&self) -> &WalConfig {
        &self.cfg
    }

    /// Whether an earlier write or fsync failure made this instance refuse all work.
    pub fn is_poisoned(&self) -> bool {
        self.poison.is_some()
    }

    /// Seals the active segment (written and fdatasync'ed) and starts a new, empty one named
    /// with the next LSN.
    fn roll(&mut self) -> Result<(), WalError> {
        self.flush_buf()?;
        self.sync_active()?;
        // The old segment's own directory entry must be durable before a newer file exists.
        self.sync_dir()?;
        let first_lsn = self.next_lsn;
        let path = self.segment_path(first_lsn);
        // Nothing has changed yet if this fails, so the error is retryable.
        let mut file = self
            .fault(io_op::CREATE_SEGMENT)
            .and_then(|()| OpenOptions::new().append(true).create_new(true).open(&path))
            .map_err(|source| WalError::Io {
                path: path.clone(),
                op: io_op::CREATE_SEGMENT,
                source,
            })?;
        let header = encode_segment_header(first_lsn);
        let written = self
            .fault(io_op::WRITE_SEGMENT)
            .and_then(|()| file.write_all(&header));
        if let Err(e) = written {
            return Err(self.poison(path, io_op::WRITE_SEGMENT, e));
        }
        self.active = file;
        self.segments.push_back(Segment {
            first_lsn,
            last_lsn: first_lsn - 1,
            bytes: SEGMENT_HEADER_BYTES,
        });
        self.bytes_total += SEGMENT_HEADER_BYTES;
        self.active_unsynced = true;
        self.dir_unsynced = true;
        tracing::debug!(path = %path.display(), "WAL rolled to a new segment");
        Ok(())
    }

    fn flush_buf(&mut self) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let written = self
            .fault(io_op::WRITE_SEGMENT)
            .and_then(|()| self.active.write_all(&self.buf));
        if let Err(e) = written {
            let path = self.active_path();
            return Err(self.poison(path, io_op::WRITE_SEGMENT, e));
        }
        self.buf.clear();
        // One oversized entry must not pin its buffer forever.
        self.buf.shrink_to(WRITE_BUFFER_BYTES_MAX);
        Ok(())
    }

    fn sync_active(&mut self) -> Result<(), WalError> {
        if !self.active_unsynced {
            return Ok(());
        }
        debug_assert!(self.buf.is_empty(), "sync_active after flush_buf");
        let synced = self
            .fault(io_op::SYNC_SEGMENT)
            .and_then(|()| self.active.sync_data());
        if let Err(e) = synced {
            let path = self.active_path();
            return Err(self.poison(path, io_op::SYNC_SEGMENT, e));
        }
        self.active_unsynced = false;
        Ok(())
    }

    fn sync_dir(&mut self) -> Result<(), WalError> {
        if !self.dir_unsynced {
            return Ok(());
        }
        let synced = self
            .fault(io_op::SYNC_DIR)
            .and_then(|()| self.dir.sync_all());
        if let Err(e) = synced {
            let path = self.cfg.dir.clone();
            return Err(self.poison(path, io_op::SYNC_DIR, e));
        }
        self.dir_unsynced = false;
        Ok(())
    }

    /// Records the first fatal failure; every later call returns [`WalError::Poisoned`].
    fn poison(&mut self, path: PathBuf, op: &'static str, source: io::Error) -> WalError {
        if self.poison.is_none() {
            self.poison = Some(Poison {
                path: path.clone(),
                op,
                cause: source.to_string(),
            });
        }
        WalError::Io { path, op, source }
    }

    fn check_usable(&self) -> Result<(), WalError> {
        match &self.poison {
            None => Ok(()),
            Some(p) => Err(WalError::Poisoned {
                path: p.path.clone(),
                op: p.op,
                cause: p.cause.clone(),
            }),
        }
    }

    fn active_segment(&self) -> Segment {
        *self
            .segments
            .back()
            .expect("the WAL always has an active segment")
    }

    fn active_segment_mut(&mut self) -> &mut Segment {
        self.segments
            .back_mut()
            .expect("the WAL always has an active segment")
    }

    fn active_path(&self) -> PathBuf {
        self.segment_path(self.active_segment().first_lsn)
    }

    fn segment_path(&self, first_lsn: u64) -> PathBuf {
        segment_path(&self.cfg.dir, first_lsn)
    }

    fn check_invariants(&self) {
        debug_assert!(!self.segments.is_empty());
        debug_assert_eq!(
            self.bytes_total,
            self.segments.iter().map(|s| s.bytes).sum::<u64>()
        );
        debug_assert_eq!(
            Some(self.next_lsn),
            self.segments.back().map(|s| s.last_lsn + 1)
        );
        debug_assert!(self
            .segments
            .iter()
            .zip(self.segments.iter().skip(1))
            .all(|(a, b)| a.last_lsn + 1 == b.first_lsn && !a.is_empty()));
        debug_assert!(self
            .segments
            .iter()
            .all(|s| s.bytes >= SEGMENT_HEADER_BYTES && s.last_lsn + 1 >= s.first_lsn));
    }

    /// Test-only: the next operation with this `io_op` fails.
    #[cfg(test)]
    pub(crate) fn inject_fault(&mut self, op: &'static str) {
        self.fault = Some(op);
    }

    #[cfg(test)]
    fn fault(&mut self, op: &'static str) -> io::Result<()> {
        if self.fault == Some(op) {
            self.fault = None;
            return Err(io::Error::other(format!("injected fault in {op}")));
        }
        Ok(())
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn fault(&mut self, _op: &'static str) -> io::Result<()> {
        Ok(())
    }
}

fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(segment_file_name(first_lsn))
}

fn io_error(path: &Path, op: &'static str, source: io::Error) -> WalError {
    WalError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn scan_error(path: PathBuf, e: ScanError) -> WalError {
    match e {
        ScanError::Corrupt { offset, reason } => WalError::Corrupt {
            path,
            offset,
            reason,
        },
        ScanError::UnsupportedVersion { version } => WalError::UnsupportedVersion { path, version },
    }
}

/// Creates the WAL directory if it is missing and makes its entry in the parent durable.
fn ensure_dir(dir: &Path) -> Result<(), WalError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| io_error(dir, io_op::CREATE_DIR, e))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(parent, io_op::SYNC_DIR, e))
}

/// What a WAL directory holds, each list in LSN (name) order.
#[derive(Default)]
struct Listing {
    /// First LSNs of the segment files.
    segments: Vec<u64>,
    /// LSNs of `reset_to` intent markers.
    markers: Vec<u64>,
    /// Trimmed segments a crash left mid-deletion (already outside the log).
    retired: Vec<PathBuf>,
}

/// The segment files, reset markers and retired segments in `dir`. Other files are ignored.
fn list_segments(dir: &Path) -> Result<Listing, WalError> {
    let mut listing = Listing::default();
    let entries = fs::read_dir(dir).map_err(|e| io_error(dir, io_op::LIST_DIR, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, io_op::LIST_DIR, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if let Some(lsn) = parse_reset_marker_name(name) {
            listing.markers.push(lsn);
            continue;
        }
        if name.ends_with(crate::unlink::TRIMMED_SUFFIX) {
            listing.retired.push(entry.path());
            continue;
        }
        match parse_segment_file_name(name) {
            SegmentName::Other => {}
            SegmentName::Segment(lsn) => listing.segments.push(lsn),
            SegmentName::Malformed => {
                return Err(WalError::Corrupt {
                    path: entry.path(),
                    offset: 0,
                    reason: "segment file name is not an lsn in 1..=18446744073709551615"
                        .to_string(),
                })
            }
        }
    }
    listing.segments.sort_unstable();
    listing.markers.sort_unstable();
    listing.retired.sort_unstable();
    Ok(listing)
}

const RESET_MARKER_SUFFIX: &str = ".reset";

/// `{next_lsn:020}.reset`: the intent record of a `reset_to`, holding a segment header.
fn reset_marker_path(dir: &Path, next_lsn: u64) -> PathBuf {
    dir.join(format!("{next_lsn:020}{RESET_MARKER_SUFFIX}"))
}

fn parse_reset_marker_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(RESET_MARKER_SUFFIX)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse::<u64>().ok().filter(|&lsn| lsn >= 1)
}

/// Finishes a `reset_to` that a crash interrupted (its marker is intact: delete every segment,
/// rename the marker into the new segment), or forgets one whose marker never became durable
/// (nothing was deleted before the marker was: delete the marker). `names` is updated.
fn finish_reset(
    dir_path: &Path,
    dir: &File,
    names: &mut Vec<u64>,
    markers: &[u64],
) -> Result<(), WalError> {
    let sync_dir = || {
        dir.sync_all()
            .map_err(|e| io_error(dir_path, io_op::SYNC_DIR, e))
    };
    let mut intact = None;
    for &lsn in markers {
        let path = reset_marker_path(dir_path, lsn);
        let bytes = fs::read(&path).map_err(|e| io_error(&path, io_op::READ_SEGMENT, e))?;
        if bytes.len() == SEGMENT_HEADER_LEN && decode_segment_header(&bytes) == Ok(lsn) {
            if let Some(other) = intact {
                return Err(WalError::Corrupt {
                    path,
                    offset: 0,
                    reason: format!("a second intact reset marker (the other is for lsn {other})"),
                });
            }
            intact = Some(lsn);
        } else {
            tracing::warn!(
                path = %path.display(),
                "WAL recovery: removing a reset marker that never became durable"
            );
            fs::remove_file(&path).map_err(|e| io_error(&path, io_op::REMOVE_RESET_MARKER, e))?;
            sync_dir()?;
        }
    }
    let Some(next_lsn) = intact else {
        return Ok(());
    };
    let marker = reset_marker_path(dir_path, next_lsn);
    if let Some(&newest) = names.last().filter(|&&n| n >= next_lsn) {
        return Err(WalError::Corrupt {
            path: marker,
            offset: 0,
            reason: format!(
                "reset marker to lsn {next_lsn}, but segment {newest} is not older than it"
            ),
        });
    }
    tracing::warn!(
        dir = %dir_path.display(),
        next_lsn,
        segments = names.len(),
        "WAL recovery: finishing an interrupted reset"
    );
    for &first_lsn in names.iter() {
        let path = segment_path(dir_path, first_lsn);
        remove_if_present(&path).map_err(|e| io_error(&path, io_op::REMOVE_RESET_SEGMENT, e))?;
    }
    sync_dir()?;
    let path = segment_path(dir_path, next_lsn);
    fs::rename(&marker, &path).map_err(|e| io_error(&path, io_op::RENAME_RESET_MARKER, e))?;
    sync_dir()?;
    *names = vec![next_lsn];
    Ok(())
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Creates (or replaces) `path` holding exactly `bytes`, fdatasync'ed.
fn write_durable_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_data()
}

fn create_first_segment(dir_path: &Path, dir: &File) -> Result<File, WalError> {
    let path = segment_path(dir_path, 1);
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io_error(&path, io_op::CREATE_SEGMENT, e))?;
    file.write_all(&encode_segment_header(1))
        .map_err(|e| io_error(&path, io_op::WRITE_SEGMENT, e))?;
    file.sync_data()
        .map_err(|e| io_error(&path, io_op::SYNC_SEGMENT, e))?;
    dir.sync_all()
        .map_err(|e| io_error(dir_path, io_op::SYNC_DIR, e))?;
    Ok(file)
}

/// Opens the newest segment for appending, cuts away its torn tail, and makes it and the
/// directory durable (a crashed predecessor may have left both only in the page cache).
fn open_newest_segment(
    dir_path: &Path,
    dir: &File,
    newest: &Segment,
    torn: Option<&TornTail>,
) -> Result<File, WalError> {
    let path = segment_path(dir_path, newest.first_lsn);
    let mut file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| io_error(&path, io_op::OPEN_SEGMENT, e))?;
    if let Some(torn) = torn {
        tracing::warn!(
            path = %path.display(),
            offset = torn.offset,
            dropped_bytes = torn.dropped_bytes,
            reason = %torn.reason,
            "WAL recovery: truncating torn tail"
        );
        file.set_len(torn.offset)
            .map_err(|e| io_error(&path, io_op::TRUNCATE_SEGMENT, e))?;
        if torn.header {
            debug_assert_eq!(torn.offset, 0);
            file.write_all(&encode_segment_header(newest.first_lsn))
                .map_err(|e| io_error(&path, io_op::WRITE_SEGMENT, e))?;
        }
    }
    file.sync_all()
        .map_err(|e| io_error(&path, io_op::SYNC_SEGMENT, e))?;
    dir.sync_all()
        .map_err(|e| io_error(dir_path, io_op::SYNC_DIR, e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (Wal, Vec<RecoveredEntry>) {
        Wal::open(WalConfig {
            dir: dir.to_path_buf(),
            segment_bytes_max: 200,
            wal_bytes_max: 1 << 20,
            entry_bytes_max: 100,
            background_unlink: false,
        })
        .expect("open")
    }

    /// Each fatal fault: the failing call returns `Io` naming the op, every later call returns
    /// `Poisoned`, and what was synced before the fault is recovered on reopen.
    #[test]
    fn write_and_sync_failures_poison_the_wal() {
        // (op to fail, what to do after appending 3 more entries)
        type Action = fn(&mut Wal) -> Result<(), WalError>;
        let cases: &[(&str, Action)] = &[
            (io_op::WRITE_SEGMENT, |w| w.sync()),
            (io_op::SYNC_SEGMENT, |w| w.sync()),
            (io_op::SYNC_DIR, |w| w.trim(w.last_lsn())),
            (io_op::WRITE_SEGMENT, |w| w.trim(w.last_lsn())),
        ];
        for &(op, action) in cases {
            let tmp = tempfile::tempdir().expect("tempdir");
            let (mut wal, _) = open(tmp.path());
            for _ in 0..3 {
                wal.append(b"synced").expect("append");
            }
            wal.sync().expect("sync");
            for _ in 0..3 {
                wal.append(b"unsynced").expect("append");
            }
            wal.fault = Some(op);
            match action(&mut wal) {
                Err(WalError::Io { op: failed, .. }) => assert_eq!(failed, op),
                other => panic!("op {op}: expected an Io error, got {other:?}"),
            }
            assert!(wal.is_poisoned(), "op {op}");
            let after = [wal.append(b"x").map(drop), wal.sync(), wal.trim(1)];
            for result in after {
                let err = result.expect_err("poisoned");
                assert!(
                    matches!(err, WalError::Poisoned { op: p, .. } if p == op),
                    "op {op}: {err}"
                );
                assert!(!err.is_retryable());
            }
            drop(wal);
            let (_, recovered) = open(tmp.path());
            assert!(recovered.len() >= 3, "op {op}: synced entries survive");
            assert!(recovered.iter().take(3).all(|e| e.payload == b"synced"));
        }
    }

    #[test]
    fn failed_segment_creation_is_retryable_and_harmless() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = open(tmp.path());
        let payload = [7u8; 60];
        // 24 + 2 * 76 = 176 bytes: the third entry needs a new segment.
        wal.append(&payload).expect("append");
        wal.append(&payload).expect("append");
        wal.fault = Some(io_op::CREATE_SEGMENT);
        let err = wal.append(&payload).expect_err("injected");
        assert!(err.is_retryable(), "{err}");
        assert!(!wal.is_poisoned());
        assert_eq!(wal.last_lsn(), 2);
        assert_eq!(wal.append(&payload).expect("retry"), 3);
        assert_eq!(wal.segment_count(), 2);
        wal.sync().expect("sync");
        drop(wal);
        let (_, recovered) = open(tmp.path());
        assert_eq!(recovered.len(), 3);
    }

    #[test]
    fn failed_segment_removal_is_retryable() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = open(tmp.path());
        for _ in 0..6 {
            wal.append(&[1u8; 60]).expect("append");
        }
        wal.sync().expect("sync");
        assert_eq!(wal.segment_count(), 3);
        wal.fault = Some(io_op::REMOVE_SEGMENT);
        let err = wal.trim(4).expect_err("injected");
        assert!(err.is_retryable(), "{err}");
        assert_eq!(wal.segment_count(), 3);
        wal.trim(4).expect("retry");
        assert_eq!(wal.segment_count(), 1);
        assert_eq!(wal.append(b"next").expect("append"), 7);
    }

    /// A WAL of entries 1..=6 (60-byte payloads, segments starting at 1, 3, 5), synced.
    fn six_entries(dir: &Path) -> Wal {
        let (mut wal, _) = open(dir);
        for lsn in 1..=6u64 {
            wal.append(&[lsn as u8; 60]).expect("append");
        }
        wal.sync().expect("sync");
        assert_eq!(wal.segment_count(), 3);
        wal
    }

    /// A fault in the middle of `truncate_after` poisons; what reopens is the old log cut
    /// somewhere between the truncation point and its old end (a prefix, never a gap).
    #[test]
    fn failed_truncation_leaves_a_prefix() {
        for op in [
            io_op::REMOVE_TRUNCATED_SEGMENT,
            io_op::CUT_SEGMENT,
            io_op::SYNC_DIR,
        ] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let mut wal = six_entries(tmp.path());
            wal.fault = Some(op);
            let err = wal.truncate_after(2).expect_err("injected");
            assert!(
                matches!(err, WalError::Io { op: o, .. } if o == op),
                "{op}: {err}"
            );
            assert!(wal.is_poisoned(), "{op}");
            drop(wal);
            let (wal, recovered) = open(tmp.path());
            let lsns: Vec<u64> = recovered.iter().map(|e| e.lsn).collect();
            assert!(lsns.len() >= 2, "{op}: {lsns:?}");
            assert_eq!(lsns, (1..=lsns.len() as u64).collect::<Vec<_>>(), "{op}");
            assert!(recovered.iter().all(|e| e.payload == [e.lsn as u8; 60]));
            assert_eq!(wal.last_lsn(), lsns.len() as u64);
        }
    }

    /// A fault after the reset marker is durable: reopening finishes the reset. A fault before
    /// it: reopening finds the old log.
    #[test]
    fn failed_reset_is_finished_or_forgotten_on_open() {
        let cases = [
            (io_op::WRITE_RESET_MARKER, false),
            (io_op::REMOVE_RESET_SEGMENT, true),
            (io_op::RENAME_RESET_MARKER, true),
        ];
        for (op, finished) in cases {
            let tmp = tempfile::tempdir().expect("tempdir");
            let mut wal = six_entries(tmp.path());
            wal.fault = Some(op);
            let err = wal.reset_to(100).expect_err("injected");
            assert!(
                matches!(err, WalError::Io { op: o, .. } if o == op),
                "{op}: {err}"
            );
            assert!(wal.is_poisoned(), "{op}");
            drop(wal);
            let (mut wal, recovered) = open(tmp.path());
            if finished {
                assert!(recovered.is_empty(), "{op}");
                assert_eq!(wal.last_lsn(), 99, "{op}");
                assert_eq!(wal.append(b"next").expect("append"), 100, "{op}");
            } else {
                assert_eq!(recovered.len(), 6, "{op}");
                assert_eq!(wal.last_lsn(), 6, "{op}");
            }
            let names: Vec<String> = fs::read_dir(tmp.path())
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                names.iter().all(|n| n.ends_with(".wal")),
                "{op}: no marker is left behind: {names:?}"
            );
        }
    }

    #[test]
    fn truncate_and_reset_reject_bad_points() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut wal = six_entries(tmp.path());
        wal.trim(2).expect("trim"); // segments 3..=6 remain
        assert_eq!(wal.first_lsn(), 3);
        let err = wal.truncate_after(7).expect_err("past the end");
        assert!(
            matches!(
                err,
                WalError::TruncateOutOfRange {
                    after: 7,
                    first_lsn: 3,
                    last_lsn: 6
                }
            ),
            "{err}"
        );
        let err = wal.truncate_after(1).expect_err("below the held entries");
        assert!(
            matches!(err, WalError::TruncateOutOfRange { after: 1, .. }),
            "{err}"
        );
        let err = wal.reset_to(6).expect_err("behind the log");
        assert!(
            matches!(
                err,
                WalError::ResetBehindLog {
                    next_lsn: 6,
                    last_lsn: 6
                }
            ),
            "{err}"
        );
        assert!(!wal.is_poisoned());
        wal.truncate_after(2).expect("truncate everything held");
        assert_eq!(
            (wal.first_lsn(), wal.last_lsn(), wal.segment_count()),
            (3, 2, 1)
        );
        assert_eq!(wal.append(b"x").expect("append"), 3);
    }
}
