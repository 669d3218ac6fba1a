//! One partition's in-memory tail.
//!
//! The tail holds the partition's newest batches: every batch not yet in object storage, plus
//! up to `tail_bytes_max` of already-uploaded batches so that tailing consumers never touch the
//! object store. Batches enter only from the sequencer thread, after the WAL has made them
//! durable, so everything in the tail is visible: the high watermark is the tail's end.
//!
//! *Invariant:* the tail is contiguous — each batch starts where the previous one ended — and
//! `uploaded_offset <= high_watermark`. Offsets below the tail's first batch are in object
//! storage (found through the metadata index).
//!
//! *Concurrency:* a short `parking_lot::RwLock` guards the tail; no lock is ever held across an
//! `.await`. `next_offset` is owned by the sequencer thread (it alone assigns offsets).

use bytes::Bytes;
use parking_lot::RwLock;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;
use strata_types::{PartitionKey, TopicName};
use tokio::sync::watch;

/// A batch (or several batches from one produce) that is durable in the WAL.
#[derive(Debug, Clone)]
pub struct TailBatch {
    pub base_offset: i64,
    pub end_offset: i64,
    pub max_timestamp: i64,
    /// WAL entry that holds it: the WAL may drop it once this batch is in object storage.
    pub wal_lsn: u64,
    pub data: Bytes,
}

#[derive(Debug, Default)]
struct Tail {
    batches: VecDeque<TailBatch>,
    high_watermark: i64,
    /// First offset not yet in object storage.
    uploaded_offset: i64,
    log_start_offset: i64,
    bytes: u64,
    uploaded_bytes: u64,
    /// When each batch not yet in object storage was published (its end offset and instant),
    /// oldest first: the upload lag in seconds is the age of the front.
    pending_since: VecDeque<(i64, Instant)>,
}

impl Tail {
    /// Drops the oldest batch if it ends at or below `limit` (which is never above the uploaded
    /// offset, so only uploaded bytes leave). Returns whether one was dropped.
    fn pop_front_below(&mut self, limit: i64) -> bool {
        match self.batches.front() {
            Some(front) if front.end_offset <= limit => {
                let len = front.data.len() as u64;
                self.batches.pop_front();
                self.bytes -= len;
                self.uploaded_bytes -= len;
                true
            }
            _ => false,
        }
    }
}

#[derive(Debug)]
pub struct PartitionLog {
    pub key: PartitionKey,
    pub topic_name: TopicName,
    /// Next offset to assign. Written only by the sequencer thread.
    next_offset: AtomicI64,
    tail: RwLock<Tail>,
    hw_tx: watch::Sender<i64>,
    /// Bytes and records in and out, for `/metrics`.
    pub traffic: crate::metrics::PartitionTraffic,
    /// A planned move started (`moves.rs`): the sequencer refuses appends from now on.
    sealed: std::sync::atomic::AtomicBool,
    /// The producers' state a planned move handed over, for the sequencer to adopt before the
    /// first append to this log (`moves.rs`); taken once.
    handover: parking_lot::Mutex<Option<strata_types::sequence::Handover>>,
}

/// What a read from the tail found.
#[derive(Debug)]
pub enum TailRead {
    /// Batches starting at (or containing) the requested offset.
    Data(Vec<Bytes>),
    /// The offset is older than the tail: read it from object storage.
    Older,
    /// The offset is the high watermark: nothing yet.
    AtEnd,
    /// The offset is beyond the high watermark, or before the log start.
    OutOfRange,
}

/// Offsets of a partition, for responses and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub uploaded_offset: i64,
}

impl PartitionLog {
    /// A partition whose first `indexed_end` offsets are already in object storage.
    pub fn new(
        key: PartitionKey,
        topic_name: TopicName,
        indexed_start: i64,
        indexed_end: i64,
    ) -> Self {
        let (hw_tx, _) = watch::channel(indexed_end);
        Self {
            key,
            topic_name,
            next_offset: AtomicI64::new(indexed_end),
            tail: RwLock::new(Tail {
                batches: VecDeque::new(),
                high_watermark: indexed_end,
                uploaded_offset: indexed_end,
                log_start_offset: indexed_start,
                bytes: 0,
                uploaded_bytes: 0,
                pending_since: VecDeque::new(),
            }),
            hw_tx,
            traffic: Default::default(),
            sealed: Default::default(),
            handover: Default::default(),
        }
    }

    /// A log opened where a planned move ended: the sequencer adopts `handover` (the
    /// producers' state at this log's start) before its first append here.
    pub fn set_handover(&self, handover: strata_types::sequence::Handover) {
        *self.handover.lock() = Some(handover);
    }

    /// Sequencer only: the handover not adopted yet, once.
    pub fn take_handover(&self) -> Option<strata_types::sequence::Handover> {
        self.handover.lock().take()
    }

    /// Planned moves: stop (`true`) or resume (`false`) taking appends. The sequencer checks
    /// it before assigning offsets, so once a barrier through its queue is answered, nothing
    /// more is appended.
    pub fn set_sealed(&self, sealed: bool) {
        self.sealed.store(sealed, Ordering::SeqCst);
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::SeqCst)
    }

    /// Sequencer only: the next offset to assign.
    pub fn next_offset(&self) -> i64 {
        self.next_offset.load(Ordering::Acquire)
    }

    /// Sequencer only: reserve `count` offsets, returning the first.
    pub fn reserve(&self, count: i64) -> i64 {
        debug_assert!(count > 0);
        self.next_offset.fetch_add(count, Ordering::AcqRel)
    }

    /// Sequencer only: give back the offsets of an append that failed before it reached the
    /// WAL. Only the most recent reservation can be given back.
    pub fn unreserve(&self, base: i64, count: i64) {
        let swapped = self.next_offset.compare_exchange(
            base + count,
            base,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        assert!(
            swapped.is_ok(),
            "unreserve must undo the latest reservation"
        );
    }

    /// Sequencer only: a durable batch becomes visible.
    pub fn publish(&self, batch: TailBatch) {
        let end = batch.end_offset;
        let now = Instant::now();
        {
            let mut tail = self.tail.write();
            assert_eq!(
                batch.base_offset, tail.high_watermark,
                "tail must stay contiguous ({:?})",
                self.key
            );
            tail.bytes += batch.data.len() as u64;
            tail.high_watermark = end;
            tail.batches.push_back(batch);
            tail.pending_since.push_back((end, now));
        }
        self.hw_tx.send_replace(end);
    }

    pub fn offsets(&self) -> Offsets {
        let tail = self.tail.read();
        Offsets {
            log_start_offset: tail.log_start_offset,
            high_watermark: tail.high_watermark,
            uploaded_offset: tail.uploaded_offset,
        }
    }

    pub fn high_watermark(&self) -> i64 {
        self.tail.read().high_watermark
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.hw_tx.subscribe()
    }

    /// Reads whole batches from `offset` on, up to about `bytes_max` (at least one batch).
    pub fn read(&self, offset: i64, bytes_max: usize) -> TailRead {
        let tail = self.tail.read();
        if offset < tail.log_start_offset || offset > tail.high_watermark {
            return TailRead::OutOfRange;
        }
        if offset == tail.high_watermark {
            return TailRead::AtEnd;
        }
        let Some(first) = tail.batches.front() else {
            return TailRead::Older;
        };
        if offset < first.base_offset {
            return TailRead::Older;
        }
        // Batches are contiguous and sorted: binary search the one holding `offset`.
        let idx = tail.batches.partition_point(|b| b.end_offset <= offset);
        let mut out = Vec::new();
        let mut size = 0usize;
        for b in tail.batches.range(idx..) {
            if !out.is_empty() && size + b.data.len() > bytes_max {
                break;
            }
            size += b.data.len();
            out.push(b.data.clone());
        }
        TailRead::Data(out)
    }

    /// The first tail batch with `max_timestamp >= ts`, for timestamp lookups.
    pub fn first_batch_at_or_after_time(&self, ts: i64) -> Option<TailBatch> {
        let tail = self.tail.read();
        // Batches wholly below the log start (DeleteRecords, not uploaded yet) are not answers.
        tail.batches
            .iter()
            .find(|b| b.max_timestamp >= ts && b.end_offset > tail.log_start_offset)
            .cloned()
    }

    /// Largest timestamp in the tail and the offset of the batch that holds it.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        let tail = self.tail.read();
        tail.batches
            .iter()
            .max_by_key(|b| b.max_timestamp)
            .map(|b| (b.max_timestamp, b.base_offset))
    }

    /// Uploader: the batches not yet in object storage, from `uploaded_offset`, up to about
    /// `bytes_max`.
    pub fn pending_upload(&self, bytes_max: u64) -> Vec<TailBatch> {
        let tail = self.tail.read();
        let idx = tail
            .batches
            .partition_point(|b| b.end_offset <= tail.uploaded_offset);
        let mut out = Vec::new();
        let mut size = 0u64;
        for b in tail.batches.range(idx..) {
            if !out.is_empty() && size + b.data.len() as u64 > bytes_max {
                break;
            }
            debug_assert_eq!(
                b.base_offset,
                out.last()
                    .map_or(tail.uploaded_offset, |p: &TailBatch| p.end_offset)
            );
            size += b.data.len() as u64;
            out.push(b.clone());
        }
        out
    }

    /// Bytes not yet in object storage.
    pub fn pending_bytes(&self) -> u64 {
        let tail = self.tail.read();
        tail.bytes - tail.uploaded_bytes
    }

    /// When the oldest batch not yet in object storage was published; `None` when all is.
    pub fn oldest_pending_since(&self) -> Option<Instant> {
        self.tail.read().pending_since.front().map(|(_, t)| *t)
    }

    /// WAL position of the oldest batch not yet in object storage.
    pub fn oldest_pending_lsn(&self) -> Option<u64> {
        let tail = self.tail.read();
        let idx = tail
            .batches
            .partition_point(|b| b.end_offset <= tail.uploaded_offset);
        tail.batches.get(idx).map(|b| b.wal_lsn)
    }

    /// WAL position of the oldest batch that ends after `offset` (not covered by an upload up
    /// to `offset`).
    pub fn pending_lsn_after(&self, offset: i64) -> Option<u64> {
        let tail = self.tail.read();
        let idx = tail
            .batches
            .partition_point(|b| b.end_offset <= offset.max(tail.uploaded_offset));
        tail.batches.get(idx).map(|b| b.wal_lsn)
    }

    /// Retention or DeleteRecords moved the partition's log start (metadata trimmed the index
    /// up to `start`). Offsets below it become out of range, and uploaded tail batches wholly
    /// below it are dropped; un-uploaded ones stay until the uploader has them in object storage
    /// (DeleteRecords may pass the indexed end), but are never served. Never moves the start
    /// backwards or past the high watermark.
    pub fn advance_log_start(&self, start: i64) {
        let mut tail = self.tail.write();
        let start = start.min(tail.high_watermark);
        if start <= tail.log_start_offset {
            return;
        }
        tail.log_start_offset = start;
        let droppable = start.min(tail.uploaded_offset);
        while tail.pop_front_below(droppable) {}
    }

    /// A `direct`-mode partition (no tail; see `log/direct.rs`): the object index now ends at
    /// `end`, so the high watermark moves there. Never backwards; wakes waiting fetches.
    pub fn follow_index(&self, end: i64) {
        {
            let mut tail = self.tail.write();
            if end <= tail.high_watermark {
                return;
            }
            debug_assert!(tail.batches.is_empty(), "a direct partition has no tail");
            tail.high_watermark = end;
            tail.uploaded_offset = end;
        }
        self.next_offset.fetch_max(end, Ordering::AcqRel);
        self.hw_tx.send_replace(end);
    }

    /// Uploader: everything below `end` is now in object storage. Keeps at most
    /// `keep_bytes_max` of uploaded batches for tail readers.
    pub fn mark_uploaded(&self, end: i64, keep_bytes_max: u64) {
        let mut tail = self.tail.write();
        assert!(end <= tail.high_watermark && end >= tail.uploaded_offset);
        let newly: u64 = tail
            .batches
            .iter()
            .filter(|b| b.base_offset >= tail.uploaded_offset && b.end_offset <= end)
            .map(|b| b.data.len() as u64)
            .sum();
        tail.uploaded_offset = end;
        tail.uploaded_bytes += newly;
        while tail.pending_since.front().is_some_and(|(e, _)| *e <= end) {
            tail.pending_since.pop_front();
        }
        while tail.uploaded_bytes > keep_bytes_max && tail.pop_front_below(end) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_types::TopicId;

    fn log() -> PartitionLog {
        PartitionLog::new(
            PartitionKey {
                topic: TopicId::random(),
                partition: 0,
            },
            TopicName::new("t").unwrap(),
            0,
            0,
        )
    }

    fn push(p: &PartitionLog, count: i64, len: usize, lsn: u64) {
        let base = p.reserve(count);
        p.publish(TailBatch {
            base_offset: base,
            end_offset: base + count,
            max_timestamp: base,
            wal_lsn: lsn,
            data: Bytes::from(vec![0u8; len]),
        });
    }

    #[test]
    fn reads_and_upload_marks() {
        let p = log();
        push(&p, 2, 10, 1); // 0..2
        push(&p, 3, 10, 2); // 2..5
        push(&p, 1, 10, 3); // 5..6
        assert!(matches!(p.read(6, 100), TailRead::AtEnd));
        assert!(matches!(p.read(7, 100), TailRead::OutOfRange));
        let TailRead::Data(d) = p.read(3, 100) else {
            panic!()
        };
        assert_eq!(d.len(), 2, "batch holding offset 3, then the next");
        let TailRead::Data(d) = p.read(0, 5) else {
            panic!()
        };
        assert_eq!(d.len(), 1, "at least one batch even over the limit");
        assert_eq!(p.pending_upload(u64::MAX).len(), 3);
        assert_eq!(p.pending_upload(15).len(), 1);
        assert_eq!(p.oldest_pending_lsn(), Some(1));
        p.mark_uploaded(5, 10);
        assert_eq!(p.oldest_pending_lsn(), Some(3));
        assert_eq!(p.pending_bytes(), 10);
        assert!(
            matches!(p.read(0, 100), TailRead::Older),
            "dropped past keep budget"
        );
        let TailRead::Data(d) = p.read(2, 100) else {
            panic!()
        };
        assert_eq!(d.len(), 2, "kept 10 bytes of uploaded data");
        assert_eq!(p.offsets().uploaded_offset, 5);
        assert_eq!(
            p.first_batch_at_or_after_time(4).map(|b| b.base_offset),
            Some(5)
        );
    }

    #[test]
    fn log_start_may_pass_the_upload_but_not_the_high_watermark() {
        let p = log();
        push(&p, 2, 10, 1); // 0..2
        push(&p, 3, 10, 2); // 2..5
        p.mark_uploaded(2, u64::MAX);
        // DeleteRecords at 4: 2..5 is not uploaded yet, so it stays for the uploader, but
        // offsets below 4 are out of range.
        p.advance_log_start(4);
        assert_eq!(p.offsets().log_start_offset, 4);
        assert!(matches!(p.read(3, 100), TailRead::OutOfRange));
        assert!(matches!(p.read(4, 100), TailRead::Data(_)));
        assert_eq!(p.pending_upload(u64::MAX).len(), 1);
        assert_eq!(p.pending_bytes(), 10);
        // Never past the high watermark.
        p.advance_log_start(9);
        assert_eq!(p.offsets().log_start_offset, 5);
        assert!(matches!(p.read(5, 100), TailRead::AtEnd));
        p.mark_uploaded(5, 0);
        assert_eq!(p.pending_bytes(), 0);
    }

    #[test]
    fn log_start_moves_forward_only() {
        let p = log();
        push(&p, 2, 10, 1); // 0..2
        push(&p, 3, 10, 2); // 2..5
        push(&p, 1, 10, 3); // 5..6
        p.mark_uploaded(5, u64::MAX);
        p.advance_log_start(5);
        assert_eq!(p.offsets().log_start_offset, 5);
        assert!(matches!(p.read(4, 100), TailRead::OutOfRange));
        assert_eq!(
            p.first_batch_at_or_after_time(0).map(|b| b.base_offset),
            Some(5)
        );
        let TailRead::Data(d) = p.read(5, 100) else {
            panic!()
        };
        assert_eq!(d.len(), 1);
        assert_eq!(p.pending_bytes(), 10);
        assert_eq!(p.pending_upload(u64::MAX).len(), 1);
        // Backwards is a no-op.
        p.advance_log_start(2);
        assert_eq!(p.offsets().log_start_offset, 5);
        assert!(p.oldest_pending_since().is_some());
        p.mark_uploaded(6, u64::MAX);
        assert_eq!(p.pending_bytes(), 0);
        assert_eq!(p.oldest_pending_since(), None, "nothing left to upload");
    }
}
