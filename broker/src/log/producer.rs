//! Idempotent-producer state: per partition and producer id, the last few batches written, and
//! the sequence checks a new batch must pass (Kafka's `ProducerStateManager`, without
//! transactions).
//!
//! A producer that enabled idempotence stamps every batch with its producer id, epoch and the
//! sequence number of its first record (per partition, counting records, wrapping from
//! `i32::MAX` to 0). A retry carries the same numbers, so the broker can tell a retry of a batch it
//! already wrote (a *duplicate*: answered with the original offset, not written again) from a
//! batch that would leave a hole (a *gap*: refused, and the client resends in order).
//!
//! # Rules
//!
//! The verdict on one batch is `strata_types::sequence::check` (unknown producer: accepted;
//! older epoch: `StaleEpoch`; a remembered batch: duplicate; same epoch: the next sequence or
//! `OutOfOrder`; newer epoch: from 0 or `NewEpochNotAtZero`), the rules metadata's direct
//! commits apply too. This module keeps the last [`PRODUCER_BATCHES_CACHED`] batches per
//! producer that the check runs against.
//!
//! A produce request may carry several batches for one partition; they are checked in order,
//! each against the state the earlier ones leave behind, and the request is all or nothing (it is
//! one WAL entry). A request whose batches are *all* duplicates is answered with the first one's
//! original offset; one that mixes duplicates with new batches is refused (`PartialDuplicate`):
//! no client re-batches a retry, and writing only part of it would need an answer Kafka's
//! protocol cannot give.
//!
//! # Ownership
//!
//! This module is pure (no IO, no clock: `now_ms` comes in). The node's [`ProducerStates`] is
//! built by WAL replay at start-up and then owned by the sequencer thread alone, which checks a
//! batch and appends it in one step: no lock, and no race between two connections writing for
//! the same producer.
//!
//! # Limits
//!
//! A producer not seen on a partition for [`PRODUCER_ID_EXPIRATION_MS`] is forgotten there
//! ([`ProducerStates::expire`]). A partition remembers at most [`PRODUCERS_PER_PARTITION_MAX`]
//! producers; past that the least recently seen tenth is evicted (they become unknown, so they
//! are accepted as above). Memory is therefore bounded by partitions × that cap × about 150 bytes.

use std::collections::HashMap;
use strata_types::batch::Batches;
use strata_types::sequence::{self, HandedProducer, Handover, SeqBatch, SeqOutcome};
use strata_types::PartitionKey;

/// Batches remembered per producer and partition for duplicate detection. Kafka keeps 5, which
/// is also the most in-flight requests an idempotent client allows.
pub const PRODUCER_BATCHES_CACHED: usize = 5;
/// Producers remembered per partition.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 1_000;
/// A producer not seen on a partition for this long is forgotten there (Kafka's
/// `producer.id.expiration.ms` default: 1 day; its older `transactional.id.expiration.ms`: 7 days).
pub const PRODUCER_ID_EXPIRATION_MS: i64 = 7 * 24 * 60 * 60 * 1000;

pub use strata_types::sequence::{add_seq, ProducerBatch, SequenceError};

// A handover (metadata's `CompleteMove`) carries at most what a partition remembers.
const _: () = assert!(
    PRODUCER_BATCHES_CACHED == sequence::HANDED_BATCHES_MAX
        && PRODUCERS_PER_PARTITION_MAX <= sequence::HANDED_PRODUCERS_MAX
);

/// One batch remembered for a producer. The epoch is the producer entry's (a new epoch clears
/// the batches of the old one).
type BatchMeta = SeqBatch;

/// What a partition knows about one producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    epoch: i16,
    /// The last `len` batches written, oldest first. Never empty.
    batches: [BatchMeta; PRODUCER_BATCHES_CACHED],
    len: usize,
    last_seen_ms: i64,
}

impl ProducerEntry {
    fn new(epoch: i16, batch: BatchMeta, now_ms: i64) -> Self {
        let mut batches = [BatchMeta::default(); PRODUCER_BATCHES_CACHED];
        batches[0] = batch;
        Self {
            epoch,
            batches,
            len: 1,
            last_seen_ms: now_ms,
        }
    }

    fn cached(&self) -> &[BatchMeta] {
        &self.batches[..self.len]
    }

    fn last(&self) -> &BatchMeta {
        debug_assert!(self.len > 0);
        &self.batches[self.len - 1]
    }

    fn push(&mut self, batch: BatchMeta, now_ms: i64) {
        if self.len == PRODUCER_BATCHES_CACHED {
            self.batches.rotate_left(1);
            self.batches[PRODUCER_BATCHES_CACHED - 1] = batch;
        } else {
            self.batches[self.len] = batch;
            self.len += 1;
        }
        self.last_seen_ms = self.last_seen_ms.max(now_ms);
    }

    pub fn epoch(&self) -> i16 {
        self.epoch
    }

    /// The last sequence number written.
    pub fn last_seq(&self) -> i32 {
        self.last().last_seq
    }
}

/// The outcome of a successful check.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write the batches, then [`PartitionProducers::apply`] this.
    Append(Update),
    /// Every batch was written before: answer this base offset and write nothing.
    Duplicate { base_offset: i64 },
}

/// Producer entries to install once the append is durable in the WAL's order (it is dropped if
/// the append fails, so a refused append leaves no trace).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Update {
    entries: Vec<(i64, ProducerEntry)>,
}

impl Update {
    fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.entries
            .iter()
            .find(|(id, _)| *id == producer_id)
            .map(|(_, e)| e)
    }

    fn put(&mut self, producer_id: i64, entry: ProducerEntry) {
        match self.entries.iter_mut().find(|(id, _)| *id == producer_id) {
            Some(slot) => slot.1 = entry,
            None => self.entries.push((producer_id, entry)),
        }
    }
}

/// One batch against one producer's entry: its duplicate's base offset, or its new entry.
enum Step {
    Duplicate(i64),
    Next(ProducerEntry),
}

fn step(
    current: Option<&ProducerEntry>,
    batch: &ProducerBatch,
    base_offset: i64,
    now_ms: i64,
) -> Result<Step, SequenceError> {
    let meta = BatchMeta {
        first_seq: batch.first_seq,
        last_seq: batch.last_seq,
        base_offset,
    };
    match sequence::check(current.map(|e| (e.epoch, e.cached())), batch)? {
        SeqOutcome::Fresh => Ok(Step::Next(ProducerEntry::new(batch.epoch, meta, now_ms))),
        SeqOutcome::Duplicate { base_offset } => Ok(Step::Duplicate(base_offset)),
        SeqOutcome::Follows => {
            let mut next = current.expect("a follower has an entry").clone();
            next.push(meta, now_ms);
            Ok(Step::Next(next))
        }
    }
}

/// The producers of one partition.
#[derive(Debug, Default, Clone)]
pub struct PartitionProducers {
    producers: HashMap<i64, ProducerEntry>,
}

impl PartitionProducers {
    /// Checks the batches of one append, in order: `(idempotence fields, base offset it would
    /// get)`, `None` for a batch without a producer id. Changes nothing.
    pub fn check(
        &self,
        batches: impl IntoIterator<Item = (Option<ProducerBatch>, i64)>,
        now_ms: i64,
    ) -> Result<Verdict, SequenceError> {
        let mut update = Update::default();
        let mut total = 0usize;
        let mut duplicates = 0usize;
        let mut first_duplicate = None;
        for (batch, base_offset) in batches {
            total += 1;
            let Some(batch) = batch else { continue };
            let current = update
                .get(batch.producer_id)
                .or_else(|| self.producers.get(&batch.producer_id));
            match step(current, &batch, base_offset, now_ms)? {
                Step::Duplicate(original) => {
                    duplicates += 1;
                    first_duplicate.get_or_insert(original);
                }
                Step::Next(entry) => update.put(batch.producer_id, entry),
            }
        }
        match first_duplicate {
            Some(base_offset) if duplicates == total => Ok(Verdict::Duplicate { base_offset }),
            Some(_) => Err(SequenceError::PartialDuplicate),
            None => Ok(Verdict::Append(update)),
        }
    }

    /// Installs the entries of a checked, appended batch. Returns how many producers were
    /// evicted to stay within [`PRODUCERS_PER_PARTITION_MAX`].
    pub fn apply(&mut self, update: Update, now_ms: i64) -> usize {
        for (id, entry) in update.entries {
            self.producers.insert(id, entry);
        }
        self.bound(now_ms)
    }

    /// Replay (and any other trusted source): records a batch already in the log, unchecked.
    /// The log's latest batch wins: the same epoch extends the entry, any other epoch replaces
    /// it (the log may hold anything an unknown producer was allowed to write).
    pub fn record(&mut self, batch: &ProducerBatch, base_offset: i64, now_ms: i64) -> usize {
        let meta = BatchMeta {
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
            base_offset,
        };
        match self.producers.get_mut(&batch.producer_id) {
            Some(entry) if entry.epoch == batch.epoch => entry.push(meta, now_ms),
            _ => {
                self.producers.insert(
                    batch.producer_id,
                    ProducerEntry::new(batch.epoch, meta, now_ms),
                );
            }
        }
        self.bound(now_ms)
    }

    /// Planned moves: every producer's state, for the partition's next leader. Entries a
    /// handover cannot carry (a negative epoch or sequence, which only an unknown producer's
    /// odd first batch can leave) are left out: the next leader does not know them.
    pub fn export(&self) -> Vec<HandedProducer> {
        let mut out: Vec<HandedProducer> = self
            .producers
            .iter()
            .filter(|(_, e)| {
                e.epoch >= 0
                    && e.cached()
                        .iter()
                        .all(|b| b.first_seq >= 0 && b.last_seq >= 0 && b.base_offset >= 0)
            })
            .map(|(id, e)| HandedProducer {
                producer_id: *id,
                epoch: e.epoch,
                batches: e.cached().to_vec(),
                last_seen_ms: e.last_seen_ms,
            })
            .collect();
        out.sort_unstable_by_key(|p| p.producer_id);
        out
    }

    /// Planned moves: adopts the state a move handed over at `handover.end_offset`. An entry
    /// whose last batch is below that offset predates the move (this broker led the partition
    /// before, or recovered an old tail): the handover replaces it, or it is dropped if the
    /// handover does not know the producer. An entry at or past the offset was written since
    /// (WAL replay, a recovered tail) and wins. Idempotent. Returns how many were adopted.
    pub fn adopt(&mut self, handover: &Handover, now_ms: i64) -> usize {
        let end = handover.end_offset;
        self.producers.retain(|_, e| e.last().base_offset >= end);
        let mut adopted = 0;
        for p in &handover.producers {
            if self.producers.contains_key(&p.producer_id) {
                continue;
            }
            let kept = &p.batches[p.batches.len().saturating_sub(PRODUCER_BATCHES_CACHED)..];
            let Some((first, rest)) = kept.split_first() else {
                continue;
            };
            let mut entry = ProducerEntry::new(p.epoch, *first, p.last_seen_ms);
            for b in rest {
                entry.push(*b, p.last_seen_ms);
            }
            self.producers.insert(p.producer_id, entry);
            adopted += 1;
        }
        self.bound(now_ms);
        adopted
    }

    /// Forgets producers not seen for [`PRODUCER_ID_EXPIRATION_MS`]; returns how many.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_seen_ms) < PRODUCER_ID_EXPIRATION_MS);
        before - self.producers.len()
    }

    /// Over the cap: expire, then evict the least recently seen tenth (in one sort, so a stream
    /// of new producers costs O(log n) each, not a scan each).
    fn bound(&mut self, now_ms: i64) -> usize {
        if self.producers.len() <= PRODUCERS_PER_PARTITION_MAX {
            return 0;
        }
        let mut removed = self.expire(now_ms);
        if self.producers.len() > PRODUCERS_PER_PARTITION_MAX {
            let keep = PRODUCERS_PER_PARTITION_MAX - PRODUCERS_PER_PARTITION_MAX / 10;
            let mut by_age: Vec<(i64, i64)> = self
                .producers
                .iter()
                .map(|(id, e)| (e.last_seen_ms, *id))
                .collect();
            by_age.sort_unstable();
            let evict = by_age.len() - keep;
            for (_, id) in &by_age[..evict] {
                self.producers.remove(id);
            }
            removed += evict;
        }
        debug_assert!(self.producers.len() <= PRODUCERS_PER_PARTITION_MAX);
        removed
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

/// Every partition's producers: built by replay, then owned by the sequencer thread.
#[derive(Debug, Default)]
pub struct ProducerStates {
    partitions: HashMap<PartitionKey, PartitionProducers>,
    /// Producers remembered over all partitions (kept up to date, for the metrics gauge).
    total: usize,
}

impl ProducerStates {
    /// See [`PartitionProducers::check`]; an unknown partition knows no producers.
    pub fn check(
        &self,
        key: &PartitionKey,
        batches: impl IntoIterator<Item = (Option<ProducerBatch>, i64)>,
        now_ms: i64,
    ) -> Result<Verdict, SequenceError> {
        match self.partitions.get(key) {
            Some(p) => p.check(batches, now_ms),
            None => PartitionProducers::default().check(batches, now_ms),
        }
    }

    /// See [`PartitionProducers::apply`].
    pub fn apply(&mut self, key: PartitionKey, update: Update, now_ms: i64) -> usize {
        if update.entries.is_empty() {
            return 0;
        }
        let p = self.partitions.entry(key).or_default();
        let before = p.len();
        let evicted = p.apply(update, now_ms);
        self.total = self.total + p.len() - before;
        evicted
    }

    /// Replay: records the producer batches of a buffer of record batches whose base offsets
    /// are assigned (a WAL entry's payload). Batches that do not parse are skipped: replay has
    /// already accepted the entry, and producer state is an optimisation over it.
    pub fn record_batches(&mut self, key: PartitionKey, batches: &[u8], now_ms: i64) {
        for (header, _) in Batches::new(batches).map_while(Result::ok) {
            if let Some(batch) = ProducerBatch::from_header(&header) {
                let p = self.partitions.entry(key).or_default();
                let before = p.len();
                p.record(&batch, header.base_offset, now_ms);
                self.total = self.total + p.len() - before;
            }
        }
    }

    /// Forgets producers not seen for [`PRODUCER_ID_EXPIRATION_MS`] (and partitions left with
    /// none, which is how a deleted topic's state goes away). Returns how many producers.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let mut removed = 0;
        self.partitions.retain(|_, p| {
            removed += p.expire(now_ms);
            !p.is_empty()
        });
        self.total -= removed;
        debug_assert_eq!(
            self.total,
            self.partitions
                .values()
                .map(PartitionProducers::len)
                .sum::<usize>()
        );
        removed
    }

    /// Planned moves: the partition's producers, for its next leader (see
    /// [`PartitionProducers::export`]).
    pub fn export(&self, key: &PartitionKey) -> Vec<HandedProducer> {
        self.partitions
            .get(key)
            .map(PartitionProducers::export)
            .unwrap_or_default()
    }

    /// Planned moves: see [`PartitionProducers::adopt`].
    pub fn adopt(&mut self, key: PartitionKey, handover: &Handover, now_ms: i64) -> usize {
        let p = self.partitions.entry(key).or_default();
        let before = p.len();
        let adopted = p.adopt(handover, now_ms);
        self.total = self.total + p.len() - before;
        if p.is_empty() {
            self.partitions.remove(&key);
        }
        adopted
    }

    pub fn partition(&self, key: &PartitionKey) -> Option<&PartitionProducers> {
        self.partitions.get(key)
    }

    /// Producers remembered, over all partitions.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }
}

/// Record batches for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod test_batches {
    use strata_types::batch::{BATCH_HEADER_BYTES, BATCH_LOG_OVERHEAD_BYTES};

    /// A valid uncompressed v2 batch of `count` offsets (opaque record bytes) with the given
    /// idempotence fields; `producer_id = -1` for a plain batch.
    pub fn batch(producer_id: i64, epoch: i16, base_sequence: i32, count: i32) -> Vec<u8> {
        let body = [0x5au8; 9];
        let mut b = Vec::with_capacity(BATCH_HEADER_BYTES + body.len());
        b.extend_from_slice(&0i64.to_be_bytes());
        let length = (BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD_BYTES + body.len()) as i32;
        b.extend_from_slice(&length.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
        b.push(2); // magic
        b.extend_from_slice(&[0; 4]); // crc, below
        b.extend_from_slice(&0i16.to_be_bytes()); // attributes
        b.extend_from_slice(&(count - 1).to_be_bytes());
        b.extend_from_slice(&1_000i64.to_be_bytes());
        b.extend_from_slice(&1_000i64.to_be_bytes());
        b.extend_from_slice(&producer_id.to_be_bytes());
        b.extend_from_slice(&epoch.to_be_bytes());
        b.extend_from_slice(&base_sequence.to_be_bytes());
        b.extend_from_slice(&count.to_be_bytes());
        b.extend_from_slice(&body);
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    /// A batch `(producer id, epoch, first seq, record count)`.
    type B = (i64, i16, i32, i32);

    fn batch(&(producer_id, epoch, first_seq, count): &B) -> Option<ProducerBatch> {
        (producer_id >= 0).then(|| ProducerBatch {
            producer_id,
            epoch,
            first_seq,
            last_seq: add_seq(first_seq, count - 1),
        })
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Want {
        /// Appended at this base offset.
        At(i64),
        /// A duplicate: answered with this original base offset.
        Dup(i64),
        Err(SequenceError),
    }

    /// One request (its batches) and the answer it must get.
    type Request<'a> = (&'a [B], Want);

    /// Produces each request (a list of batches) in turn onto one partition whose next offset
    /// starts at 0, applying the state like the sequencer does, and checks each answer.
    fn check(case: &str, requests: &[Request]) {
        let mut state = PartitionProducers::default();
        let mut next_offset = 0i64;
        for (i, (batches, want)) in requests.iter().enumerate() {
            let mut offset = next_offset;
            let spans: Vec<(Option<ProducerBatch>, i64)> = batches
                .iter()
                .map(|b| {
                    let at = offset;
                    offset += i64::from(b.3);
                    (batch(b), at)
                })
                .collect();
            let before = state.clone().producers;
            let got = match state.check(spans, NOW + i as i64) {
                Ok(Verdict::Append(update)) => {
                    state.apply(update, NOW + i as i64);
                    let at = next_offset;
                    next_offset = offset;
                    Want::At(at)
                }
                Ok(Verdict::Duplicate { base_offset }) => Want::Dup(base_offset),
                Err(e) => Want::Err(e),
            };
            assert_eq!(&got, want, "case `{case}` request {i}");
            if !matches!(got, Want::At(_)) {
                assert_eq!(
                    state.producers, before,
                    "case `{case}` request {i}: a refusal changed the state"
                );
            }
        }
    }

    fn out_of_order(producer_id: i64, expected: i32, got: i32) -> Want {
        Want::Err(SequenceError::OutOfOrder {
            producer_id,
            expected,
            got,
        })
    }

    #[test]
    fn sequence_cases() {
        let cases: &[(&str, &[Request])] = &[
            (
                "in order, then a retry of each of the last five",
                &[
                    (&[(7, 0, 0, 2)], Want::At(0)),
                    (&[(7, 0, 2, 3)], Want::At(2)),
                    (&[(7, 0, 5, 1)], Want::At(5)),
                    (&[(7, 0, 6, 1)], Want::At(6)),
                    (&[(7, 0, 7, 4)], Want::At(7)),
                    (&[(7, 0, 11, 1)], Want::At(11)),
                    (&[(7, 0, 2, 3)], Want::Dup(2)),
                    (&[(7, 0, 11, 1)], Want::Dup(11)),
                    (&[(7, 0, 7, 4)], Want::Dup(7)),
                    // Only five are remembered: the first batch is out of the window.
                    (&[(7, 0, 0, 2)], out_of_order(7, 12, 0)),
                    // Same first sequence, different length: not a duplicate.
                    (&[(7, 0, 7, 2)], out_of_order(7, 12, 7)),
                    (&[(7, 0, 12, 1)], Want::At(12)),
                ],
            ),
            (
                "gap",
                &[
                    (&[(1, 0, 0, 5)], Want::At(0)),
                    (&[(1, 0, 6, 1)], out_of_order(1, 5, 6)),
                    (&[(1, 0, 4, 2)], out_of_order(1, 5, 4)),
                    (&[(1, 0, 5, 1)], Want::At(5)),
                ],
            ),
            (
                "unknown producer starts anywhere",
                &[
                    (&[(3, 4, 1_000, 10)], Want::At(0)),
                    (&[(3, 4, 1_010, 1)], Want::At(10)),
                    (&[(4, 0, 0, 1)], Want::At(11)),
                ],
            ),
            (
                "new epoch starts at 0, stale epoch is refused",
                &[
                    (&[(5, 1, 0, 3)], Want::At(0)),
                    (
                        &[(5, 2, 3, 1)],
                        Want::Err(SequenceError::NewEpochNotAtZero {
                            producer_id: 5,
                            epoch: 2,
                            got: 3,
                        }),
                    ),
                    (&[(5, 2, 0, 1)], Want::At(3)),
                    (
                        &[(5, 1, 3, 1)],
                        Want::Err(SequenceError::StaleEpoch {
                            producer_id: 5,
                            epoch: 1,
                            current: 2,
                        }),
                    ),
                    // A retry from the old epoch is stale too, not a duplicate.
                    (
                        &[(5, 1, 0, 3)],
                        Want::Err(SequenceError::StaleEpoch {
                            producer_id: 5,
                            epoch: 1,
                            current: 2,
                        }),
                    ),
                    (&[(5, 2, 0, 1)], Want::Dup(3)),
                    (&[(5, 2, 1, 1)], Want::At(4)),
                ],
            ),
            (
                "sequence wraps at i32::MAX",
                &[
                    (&[(9, 0, i32::MAX - 2, 2)], Want::At(0)),
                    // Records MAX and 0: the batch itself wraps.
                    (&[(9, 0, i32::MAX, 2)], Want::At(2)),
                    (&[(9, 0, 1, 1)], Want::At(4)),
                    (&[(9, 0, i32::MAX, 2)], Want::Dup(2)),
                    (&[(9, 0, 0, 1)], out_of_order(9, 2, 0)),
                ],
            ),
            (
                "several batches in one request",
                &[
                    (&[(1, 0, 0, 2), (1, 0, 2, 3), (2, 0, 0, 1)], Want::At(0)),
                    // A retry of the whole request: answered with its first batch's offset.
                    (&[(1, 0, 0, 2), (1, 0, 2, 3), (2, 0, 0, 1)], Want::Dup(0)),
                    // Each batch is checked against what the earlier ones leave.
                    (&[(1, 0, 5, 1), (1, 0, 7, 1)], out_of_order(1, 6, 7)),
                    (
                        &[(1, 0, 5, 1), (1, 0, 5, 1)],
                        Want::Err(SequenceError::PartialDuplicate),
                    ),
                    (
                        &[(1, 0, 2, 3), (1, 0, 5, 1)],
                        Want::Err(SequenceError::PartialDuplicate),
                    ),
                    // A batch without a producer id is not a duplicate of anything.
                    (
                        &[(2, 0, 0, 1), (-1, -1, -1, 4)],
                        Want::Err(SequenceError::PartialDuplicate),
                    ),
                    (&[(1, 0, 5, 1), (-1, -1, -1, 4), (2, 0, 1, 1)], Want::At(6)),
                    (&[(1, 0, 6, 1)], Want::At(12)),
                ],
            ),
            (
                "no producer id: never checked",
                &[
                    (&[(-1, -1, -1, 3)], Want::At(0)),
                    (&[(-1, -1, -1, 3)], Want::At(3)),
                    (&[(-1, 0, 0, 3)], Want::At(6)),
                ],
            ),
        ];
        for (case, requests) in cases {
            check(case, requests);
        }
    }

    #[test]
    fn add_seq_wraps() {
        let cases = [
            (0, 0, 0),
            (0, 4, 4),
            (i32::MAX - 1, 1, i32::MAX),
            (i32::MAX, 1, 0),
            (i32::MAX - 1, 3, 1),
            (i32::MAX, i32::MAX, i32::MAX - 1),
        ];
        for (seq, n, want) in cases {
            assert_eq!(add_seq(seq, n), want, "{seq} + {n}");
        }
    }

    fn pb(producer_id: i64, epoch: i16, first_seq: i32, count: i32) -> ProducerBatch {
        batch(&(producer_id, epoch, first_seq, count)).unwrap()
    }

    #[test]
    fn replay_records_the_latest_batches() {
        let mut p = PartitionProducers::default();
        // Replay trusts the log: a gap is recorded, a different epoch replaces.
        p.record(&pb(1, 0, 0, 5), 0, NOW);
        p.record(&pb(1, 0, 9, 1), 5, NOW);
        p.record(&pb(2, 3, 0, 1), 6, NOW);
        p.record(&pb(2, 1, 40, 1), 7, NOW);
        assert_eq!(p.get(1).map(|e| (e.epoch(), e.last_seq())), Some((0, 9)));
        assert_eq!(p.get(2).map(|e| (e.epoch(), e.last_seq())), Some((1, 40)));
        let dup = p.check([(Some(pb(1, 0, 0, 5)), 8)], NOW).unwrap();
        assert_eq!(dup, Verdict::Duplicate { base_offset: 0 });
        let next = p.check([(Some(pb(1, 0, 10, 1)), 8)], NOW).unwrap();
        assert!(matches!(next, Verdict::Append(_)));
    }

    /// `adopt`: what this broker knew from before the move (below the end offset) gives way
    /// to the handover, what it learnt since (WAL replay, a recovered tail) wins, a producer
    /// only the stale state knew is forgotten; adopting twice changes nothing.
    #[test]
    fn a_handover_replaces_what_predates_the_move() {
        let mut leaving = PartitionProducers::default();
        leaving.record(&pb(1, 0, 0, 5), 0, NOW);
        leaving.record(&pb(1, 0, 5, 5), 5, NOW);
        leaving.record(&pb(2, 3, 10, 1), 10, NOW);
        let handover = Handover {
            end_offset: 11,
            producers: leaving.export(),
        };
        handover.validate().unwrap();

        let mut taking = PartitionProducers::default();
        // Stale: this broker led the partition long ago.
        taking.record(&pb(1, 0, 0, 1), 0, NOW - 10);
        taking.record(&pb(4, 0, 7, 1), 1, NOW - 10);
        // New: producer 2 wrote here after the move (replayed from the WAL).
        taking.record(&pb(2, 4, 0, 2), 11, NOW + 1);
        assert_eq!(taking.adopt(&handover, NOW + 2), 1);
        let once = taking.producers.clone();
        taking.adopt(&handover, NOW + 2);
        assert_eq!(taking.producers, once, "adopting twice changes nothing");
        assert_eq!(
            taking.get(1).map(|e| (e.epoch(), e.last_seq())),
            Some((0, 9))
        );
        assert_eq!(
            taking.get(2).map(|e| (e.epoch(), e.last_seq())),
            Some((4, 1))
        );
        assert!(taking.get(4).is_none(), "only the stale state knew it");
        assert_eq!(
            taking.check([(Some(pb(1, 0, 5, 5)), 13)], NOW).unwrap(),
            Verdict::Duplicate { base_offset: 5 }
        );
        assert_eq!(
            taking.check([(Some(pb(1, 0, 11, 1)), 13)], NOW),
            Err(SequenceError::OutOfOrder {
                producer_id: 1,
                expected: 10,
                got: 11
            })
        );
        assert!(matches!(
            taking.check([(Some(pb(1, 0, 10, 1)), 13)], NOW),
            Ok(Verdict::Append(_))
        ));

        let mut states = ProducerStates::default();
        let key = PartitionKey {
            topic: strata_types::TopicId::random(),
            partition: 0,
        };
        assert_eq!(states.adopt(key, &handover, NOW), 2);
        assert_eq!(states.len(), 2);
        assert_eq!(states.export(&key), handover.producers);
        let empty = Handover {
            end_offset: 20,
            producers: Vec::new(),
        };
        assert_eq!(states.adopt(key, &empty, NOW), 0);
        assert!(states.is_empty(), "everything predated the later move");
    }

    #[test]
    fn producers_expire_and_are_bounded() {
        let mut p = PartitionProducers::default();
        for id in 0..PRODUCERS_PER_PARTITION_MAX as i64 {
            assert_eq!(p.record(&pb(id, 0, 0, 1), id, NOW + id), 0);
        }
        assert_eq!(p.len(), PRODUCERS_PER_PARTITION_MAX);
        // One more evicts the least recently seen tenth (ids 0..=100), not the newcomer.
        let extra = PRODUCERS_PER_PARTITION_MAX as i64;
        let evicted = p.record(&pb(extra, 0, 0, 1), extra, NOW + extra);
        assert_eq!(evicted, PRODUCERS_PER_PARTITION_MAX / 10 + 1);
        assert!(p.get(0).is_none() && p.get(100).is_none());
        assert!(p.get(101).is_some() && p.get(extra).is_some());
        // An evicted producer is unknown again: accepted wherever it continues.
        assert!(matches!(
            p.check([(Some(pb(0, 0, 77, 1)), 0)], NOW),
            Ok(Verdict::Append(_))
        ));

        let mut states = ProducerStates::default();
        let key = PartitionKey {
            topic: strata_types::TopicId::random(),
            partition: 0,
        };
        let update = match states.check(&key, [(Some(pb(1, 0, 0, 1)), 0)], NOW) {
            Ok(Verdict::Append(u)) => u,
            other => panic!("{other:?}"),
        };
        states.apply(key, update, NOW);
        assert_eq!(states.len(), 1);
        assert_eq!(states.expire(NOW + PRODUCER_ID_EXPIRATION_MS - 1), 0);
        assert_eq!(states.expire(NOW + PRODUCER_ID_EXPIRATION_MS), 1);
        assert!(
            states.is_empty(),
            "a partition without producers is dropped"
        );
    }
}
