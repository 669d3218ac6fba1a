//! Deleting trimmed segment files off the appending thread ([`crate::WalConfig::background_unlink`]).
//!
//! Unlinking a 64 MiB segment costs milliseconds of CPU and, on a filesystem with online
//! discard, a journal commit that waits for the discard of all its blocks — ~20 ms on this
//! project's test VM, during which every fdatasync of the live segment waits too. Done inline,
//! every group commit queued behind the trim waits that long. Here one thread per WAL takes
//! batches of paths in trim order and, oldest first, renames each out of the log
//! (`….wal.trimmed`, directory fsynced: to recovery the segment is gone, so a crash still
//! leaves a contiguous suffix of segments), then shrinks it in steps and unlinks it.
//!
//! A rename that fails (other than "already gone") stops the thread from retiring anything
//! after it: a newer segment gone while an older one stays would leave a gap. What stays is
//! only settled entries; the next `open` lists the files again and a later trim removes them.
//! A retired file that cannot be deleted only costs space; `open` deletes leftovers. Dropping
//! the [`Unlinker`] waits for the queue to drain, so a WAL reopened on the same directory never
//! has its files renamed from under it.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

/// The deleting thread of one WAL directory, started on the first batch.
#[derive(Default)]
pub(crate) struct Unlinker {
    running: Option<Box<Running>>,
    /// Batches sent and not yet finished, with the condition [`Unlinker::wait`] waits on.
    pending: Arc<(Mutex<usize>, Condvar)>,
}

struct Running {
    tx: mpsc::Sender<Vec<PathBuf>>,
    thread: JoinHandle<()>,
}

impl Unlinker {
    /// Queues `paths` (oldest first) for deletion after everything queued before. `dir` is the
    /// WAL directory, cloned for the thread's fsyncs on the first call.
    pub(crate) fn send(&mut self, dir: &File, paths: Vec<PathBuf>) -> io::Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        if self.running.is_none() {
            let dir = dir.try_clone()?;
            let (tx, rx) = mpsc::channel();
            let pending = self.pending.clone();
            let thread = std::thread::Builder::new()
                .name("strata-wal-unlink".into())
                .spawn(move || run(dir, rx, pending))?;
            self.running = Some(Box::new(Running { tx, thread }));
        }
        let running = self.running.as_ref().expect("started above");
        *lock(&self.pending) += 1;
        if running.tx.send(paths).is_err() {
            // The thread is gone (it only ends when the sender drops): nothing will finish it.
            *lock(&self.pending) -= 1;
            return Err(io::Error::other("the WAL unlink thread has stopped"));
        }
        Ok(())
    }

    /// Blocks until every batch sent so far has been dealt with (deleted, or left behind
    /// after a failure).
    pub(crate) fn wait(&self) {
        let idle = &self.pending.1;
        let mut n = lock(&self.pending);
        while *n > 0 {
            n = idle.wait(n).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Unlinker {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let Running { tx, thread } = *running;
            drop(tx);
            let _ = thread.join();
        }
    }
}

fn lock(pending: &(Mutex<usize>, Condvar)) -> std::sync::MutexGuard<'_, usize> {
    pending.0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Suffix a trimmed segment is renamed to before it is shrunk and deleted; recovery ignores
/// such files and [`remove_leftovers`] deletes them.
pub(crate) const TRIMMED_SUFFIX: &str = ".trimmed";

/// A file about to be deleted from the WAL's disk is shrunk by this much per step, each step
/// made durable on its own ([`shrink_for_delete`]): on a filesystem mounted with online discard
/// (ext4 `-o discard`, common on cloud VMs) the journal commit that frees a file's blocks waits
/// for their discard, and every fdatasync of the live segment that lands in that commit waits
/// with it. Unlinking 64 MiB at once stalled the WAL's group commit ~20 ms here; 4 MiB at a
/// time bounds what any one commit frees (RocksDB's `bytes_max_delete_chunk` does the same).
pub const SHRINK_STEP_BYTES: u64 = 4 << 20;

fn run(dir: File, rx: mpsc::Receiver<Vec<PathBuf>>, pending: Arc<(Mutex<usize>, Condvar)>) {
    let mut stuck = false;
    for batch in rx {
        for path in batch {
            if stuck {
                break;
            }
            // Out of the WAL's view first (renamed, directory fsynced), oldest first: the
            // segments a crash leaves stay a contiguous suffix whatever happens after.
            let mut doomed = path.clone().into_os_string();
            doomed.push(TRIMMED_SUFFIX);
            let doomed = PathBuf::from(doomed);
            match std::fs::rename(&path, &doomed).and_then(|()| dir.sync_all()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::warn!(
                        path = %path.display(),
                        "trimmed WAL segment was already deleted by someone else"
                    );
                    continue;
                }
                Err(err) => {
                    tracing::error!(
                        path = %path.display(),
                        %err,
                        "cannot retire a trimmed WAL segment; it and every segment trimmed \
                         after it stay on disk until the next start"
                    );
                    stuck = true;
                    break;
                }
            }
            if let Err(err) = shrink_and_remove(&doomed) {
                // Out of the log already: only the space is lost, until the next start.
                tracing::warn!(path = %doomed.display(), %err, "cannot delete a retired WAL segment");
            }
        }
        *lock(&pending) -= 1;
        pending.1.notify_all();
    }
}

/// Shrinks the file at `path` to at most [`SHRINK_STEP_BYTES`], one step at a time, each step
/// fdatasync'ed so that each frees its blocks in a journal commit of its own. Call it before
/// deleting a large file that shares a disk with a WAL: the WAL's trimmed segments, and the
/// `fs://` object store's deletes (the embedded default keeps objects on the WAL's disk).
pub fn shrink_for_delete(path: &std::path::Path) -> io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut len = file.metadata()?.len();
    while len > SHRINK_STEP_BYTES {
        len -= SHRINK_STEP_BYTES;
        file.set_len(len)?;
        file.sync_data()?;
    }
    Ok(())
}

fn shrink_and_remove(path: &std::path::Path) -> io::Result<()> {
    shrink_for_delete(path)?;
    std::fs::remove_file(path)
}

/// Deletes the retired segments a crash left behind (they are outside the log already).
pub(crate) fn remove_leftovers(retired: &[PathBuf]) {
    for path in retired {
        if let Err(err) = shrink_and_remove(path) {
            tracing::warn!(path = %path.display(), %err, "cannot delete a retired WAL segment");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment that cannot be retired stops the ones after it, in the same batch and in
    /// later batches, so the segments left are a contiguous run; the earlier ones are gone.
    /// A non-empty directory where the retired name should go makes the rename fail.
    #[test]
    fn a_failed_retirement_keeps_every_later_segment() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| tmp.path().join(name);
        for name in ["1.wal", "2.wal", "3.wal", "4.wal"] {
            std::fs::write(path(name), b"x").expect("write");
        }
        std::fs::create_dir_all(path("2.wal.trimmed/in-the-way")).expect("mkdir");
        let dir = File::open(tmp.path()).expect("open dir");
        let mut unlinker = Unlinker::default();
        unlinker
            .send(&dir, vec![path("1.wal"), path("2.wal"), path("3.wal")])
            .expect("send");
        unlinker.send(&dir, vec![path("4.wal")]).expect("send");
        unlinker.wait();
        assert!(!path("1.wal").exists() && !path("1.wal.trimmed").exists());
        for kept in ["2.wal", "3.wal", "4.wal"] {
            assert!(
                path(kept).exists(),
                "{kept} was retired after a failed retirement"
            );
        }
    }

    /// An already deleted file is not a failure: the ones after it still go, a file of many
    /// shrink steps included, and no retired name is left behind.
    #[test]
    fn a_missing_file_does_not_stop_the_rest() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| tmp.path().join(name);
        let big = vec![7u8; (2 * SHRINK_STEP_BYTES + 12_345) as usize];
        std::fs::write(path("2.wal"), &big).expect("write");
        let dir = File::open(tmp.path()).expect("open dir");
        let mut unlinker = Unlinker::default();
        unlinker
            .send(&dir, vec![path("1.wal"), path("2.wal")])
            .expect("send");
        drop(unlinker); // joins the thread
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// The shrink itself: down to at most one step, the head of the file intact; a missing
    /// file is an error and nothing is created.
    #[test]
    fn shrink_for_delete_leaves_at_most_one_step() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("f");
        let body: Vec<u8> = (0..(SHRINK_STEP_BYTES * 2 + 5)).map(|i| i as u8).collect();
        std::fs::write(&path, &body).expect("write");
        shrink_for_delete(&path).expect("shrink");
        let left = std::fs::read(&path).expect("read");
        assert!(
            left.len() as u64 <= SHRINK_STEP_BYTES && !left.is_empty(),
            "{}",
            left.len()
        );
        assert_eq!(left[..], body[..left.len()]);
        let missing = tmp.path().join("missing");
        let err = shrink_for_delete(&missing).expect_err("missing file");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!missing.exists());
    }
}
