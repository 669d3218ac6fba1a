//! `CommitDirect`: offsets assigned by metadata, for the `direct` storage mode.
//!
//! A topic in `direct` mode has no WAL: a writer (a broker's `DirectWriter`, later a Lambda
//! function holding no lease) packs the produced batches of many partitions into one object,
//! PUTs it, and then proposes one `CommitDirect`. The batches in such an object carry base
//! offsets *relative to their block* (the first batch of a block starts at 0, each next one
//! where the previous ended), because the writer does not know where the partition ends: any
//! number of writers may append to the same partition at once. Metadata decides, at apply
//! time: each block gets `base_offset` = its partition's index end (after the blocks of the same
//! partition earlier in the same command), so several writers interleave whole blocks and
//! offsets stay dense. The index entry is marked `relative`; readers add the block's
//! `base_offset` to each batch's base offset when they read it (Kafka's batch CRC does not
//! cover the base offset, so this patch keeps the batch valid; the block CRC is checked on the
//! stored bytes first).
//!
//! Rules, on top of `CommitObject`'s (the blocks are committed through it, all or nothing):
//!
//! - every block's topic is a `direct` topic (its `strata.storage.mode` config says so): a WAL
//!   topic's offsets belong to its leader's sequencer, and a direct commit would cut in front of
//!   the WAL tail it has not uploaded yet (`NotDirect`);
//! - every block spans at least one offset (`offset_count >= 1`);
//! - the answer is the assigned base offset of every block, in command order;
//! - a retry of a committed key (same size) changes nothing and answers the offsets the first
//!   apply assigned, found in the index by (key, position); if retention dropped them meanwhile
//!   the retry is refused (`DirectCommitForgotten`).
//!
//! Idempotent producers: the dedup decision must be atomic with offset assignment, and only
//! apply assigns direct offsets, so the producer state lives here ([`DirectProducers`], part of
//! [`MetaState`], hence in every snapshot). A block whose batches carry producer ids
//! (`producer_batches`; the writer gives each idempotent produce its own block) is checked at
//! apply time with the rules of the WAL topics' sequencer, one pure check for both
//! (`strata_types::sequence::check`): unknown producer accepted, older epoch `StaleEpoch`, one of
//! the last [`DIRECT_PRODUCER_BATCHES_CACHED`] batches a duplicate answered with the ORIGINAL
//! base offset and not indexed again, same epoch the next sequence or `OutOfOrder`, a newer
//! epoch from 0 or `NewEpochNotAtZero` (it replaces the entry).
//!
//! A block is all or nothing: all its batches duplicates → the first one's original offset; a
//! mix of duplicates and new batches → `PartialDuplicate`. A skipped block (duplicate or
//! refused) takes no offsets and gets no index entry: its bytes stay in the object, never
//! referenced. That is sound because the index addresses blocks by (key, position, len) and an
//! object's liveness counts indexed blocks only; an object none of whose blocks is indexed is
//! recorded as garbage right away (so a retry is still recognised and the sweeper deletes it).
//! The answer lists the skipped blocks (`skipped`); a refused block's base offset is -1.
//!
//! Bounds: a producer not seen on a partition for [`DIRECT_PRODUCER_EXPIRATION_MS`] (Kafka's
//! `producer.id.expiration.ms` default, 1 day) is forgotten, measured on the commands' own
//! `now_ms` (the state's clock is the largest one seen, never the wall clock at apply); the
//! sweep runs at most once per [`DIRECT_PRODUCER_SWEEP_MS`] of that clock. A partition keeps
//! at most [`DIRECT_PRODUCERS_PER_PARTITION_MAX`] producers; a new one past that evicts the
//! least recently seen (which becomes unknown, so it is accepted as above). Deleting a topic
//! forgets its producers.
//!
//! This module is a child of `state` so it can use the state's private helpers; it stays pure
//! like the rest of `apply`.

use super::{CommandResult, MetaState, Rejection};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use strata_types::sequence::{self, ProducerBatch, SeqBatch, SeqOutcome, SequenceError};
use strata_types::{BlockLocation, TopicId};

/// The topic config that names the storage mode (the broker's vocabulary; metadata reads it
/// only to refuse `CommitDirect` on a WAL topic).
pub const STORAGE_MODE_KEY: &str = "strata.storage.mode";

/// Batches remembered per producer and partition for duplicate detection (Kafka keeps 5, the
/// most in-flight requests an idempotent client allows).
pub const DIRECT_PRODUCER_BATCHES_CACHED: usize = 5;
/// A producer not seen on a partition for this long (command time) is forgotten there.
pub const DIRECT_PRODUCER_EXPIRATION_MS: i64 = 24 * 60 * 60 * 1000;
/// How often (command time) apply sweeps expired producers.
pub const DIRECT_PRODUCER_SWEEP_MS: i64 = 60_000;
/// Producers remembered per direct partition.
pub const DIRECT_PRODUCERS_PER_PARTITION_MAX: usize = 1_000;

/// One partition's block in a direct object: where it lies and how many offsets it takes.
/// Its batches' base offsets start at 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectBlock {
    pub topic: TopicId,
    pub partition: u32,
    /// Offsets the block takes (the sum of its batches' `last_offset_delta + 1`).
    pub offset_count: i64,
    /// Byte position of the block inside the object.
    pub position: u64,
    /// Length of the block in bytes.
    pub len: u64,
    /// Largest record timestamp in the block, `-1` when unknown.
    pub max_timestamp: i64,
    /// CRC32C of the block's stored bytes (relative base offsets).
    pub crc32c: u32,
    /// The idempotence fields of the block's batches that carry a producer id, in order;
    /// empty for a block of plain batches (and in commands written before idempotence).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub producer_batches: Vec<DirectProducerBatch>,
}

/// The idempotence fields of one batch of a [`DirectBlock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    /// Sequence of the batch's last record (wrapped past `i32::MAX`).
    pub last_seq: i32,
    /// Where the batch starts in its block (relative offset).
    pub offset_delta: i64,
}

impl DirectProducerBatch {
    /// The batch's idempotence fields, for the sequence check.
    fn ids(&self) -> ProducerBatch {
        ProducerBatch {
            producer_id: self.producer_id,
            epoch: self.epoch,
            first_seq: self.first_seq,
            last_seq: self.last_seq,
        }
    }
}

/// Why a block of `CommitDirect` was not indexed (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DirectSkip {
    /// Every batch was committed before: its base offset is the original one.
    #[error("duplicate of a committed batch")]
    Duplicate,
    /// Refused by the sequence rules (`PartialDuplicate`: duplicates mixed with new batches).
    #[error(transparent)]
    Sequence(SequenceError),
    /// A retried commit whose first apply refused this block (the reason is not kept).
    #[error("producer {producer_id}: the batch was refused by an earlier apply of this commit")]
    RefusedEarlier { producer_id: i64 },
}

/// What a direct partition knows about one producer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ProducerEntry {
    epoch: i16,
    /// The last batches committed, oldest first; never empty, at most
    /// [`DIRECT_PRODUCER_BATCHES_CACHED`].
    batches: Vec<SeqBatch>,
    last_seen_ms: i64,
}

/// The idempotent producers of the direct partitions (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectProducers {
    /// topic → partition → producer id → entry.
    partitions: BTreeMap<TopicId, BTreeMap<u32, BTreeMap<i64, ProducerEntry>>>,
    /// The largest `now_ms` of an applied `CommitDirect`: the clock expiry runs on.
    clock_ms: i64,
    /// Command time at which the next expiry sweep is due.
    next_sweep_ms: i64,
}

type ProducerKey = (TopicId, u32, i64);

impl DirectProducers {
    fn get(&self, (topic, partition, id): ProducerKey) -> Option<&ProducerEntry> {
        self.partitions.get(&topic)?.get(&partition)?.get(&id)
    }

    /// Producers remembered, over all partitions.
    pub fn len(&self) -> usize {
        self.partitions
            .values()
            .flat_map(|p| p.values())
            .map(BTreeMap::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn forget_topic(&mut self, topic: TopicId) {
        self.partitions.remove(&topic);
    }

    fn install(&mut self, updates: BTreeMap<ProducerKey, ProducerEntry>) {
        for ((topic, partition, id), entry) in updates {
            let producers = self
                .partitions
                .entry(topic)
                .or_default()
                .entry(partition)
                .or_default();
            if !producers.contains_key(&id) && producers.len() >= DIRECT_PRODUCERS_PER_PARTITION_MAX
            {
                let oldest = producers
                    .iter()
                    .min_by_key(|(id, e)| (e.last_seen_ms, **id))
                    .map(|(id, _)| *id);
                if let Some(oldest) = oldest {
                    producers.remove(&oldest);
                }
            }
            producers.insert(id, entry);
        }
    }

    /// Moves the clock to `now_ms` (never back) and, when a sweep is due, forgets the producers
    /// not seen for [`DIRECT_PRODUCER_EXPIRATION_MS`].
    fn tick(&mut self, now_ms: i64) {
        self.clock_ms = self.clock_ms.max(now_ms);
        if self.clock_ms < self.next_sweep_ms {
            return;
        }
        self.next_sweep_ms = self.clock_ms.saturating_add(DIRECT_PRODUCER_SWEEP_MS);
        let horizon = self.clock_ms.saturating_sub(DIRECT_PRODUCER_EXPIRATION_MS);
        self.partitions.retain(|_, partitions| {
            partitions.retain(|_, producers| {
                producers.retain(|_, e| e.last_seen_ms > horizon);
                !producers.is_empty()
            });
            !partitions.is_empty()
        });
    }
}

/// One batch against one producer's entry: its duplicate's base offset, or its next entry.
enum Step {
    Duplicate(i64),
    Next(ProducerEntry),
}

fn step(
    current: Option<&ProducerEntry>,
    batch: &DirectProducerBatch,
    base_offset: i64,
    now_ms: i64,
) -> Result<Step, DirectSkip> {
    let meta = SeqBatch {
        first_seq: batch.first_seq,
        last_seq: batch.last_seq,
        base_offset,
    };
    let fresh = || ProducerEntry {
        epoch: batch.epoch,
        batches: vec![meta],
        last_seen_ms: now_ms,
    };
    match sequence::check(current.map(|e| (e.epoch, &e.batches[..])), &batch.ids())
        .map_err(DirectSkip::Sequence)?
    {
        SeqOutcome::Fresh => Ok(Step::Next(fresh())),
        SeqOutcome::Duplicate { base_offset } => Ok(Step::Duplicate(base_offset)),
        SeqOutcome::Follows => {
            let mut next = current.expect("a follower has an entry").clone();
            if next.batches.len() == DIRECT_PRODUCER_BATCHES_CACHED {
                next.batches.remove(0);
            }
            next.batches.push(meta);
            next.last_seen_ms = next.last_seen_ms.max(now_ms);
            Ok(Step::Next(next))
        }
    }
}

/// The verdict on one block of producer batches.
enum Verdict {
    /// Index the block at the base offset it was checked against, then install these.
    Append(Vec<(ProducerKey, ProducerEntry)>),
    /// Every batch was committed before, the first at this base offset.
    Duplicate(i64),
}

impl MetaState {
    /// Applies `CommitDirect` (see the module docs).
    pub(super) fn commit_direct(
        &mut self,
        key: &str,
        size: u64,
        blocks: &[DirectBlock],
        now_ms: i64,
    ) -> Result<CommandResult, Rejection> {
        // The state's clock never goes back: a writer with a slow clock cannot age a producer.
        let now_ms = now_ms.max(self.direct_producers.clock_ms);
        if self.is_committed(key, size)? {
            return self.replay_direct(key, blocks, now_ms);
        }
        let planned = self.assign_direct(key, blocks, now_ms)?;
        let located: Vec<BlockLocation> = planned.located;
        if located.is_empty() {
            // Every block was skipped: nothing to index, but the key is spent (a retry must be
            // recognised) and the object is garbage from now on.
            if blocks.is_empty() {
                return Err(Rejection::EmptyObject {
                    key: key.to_owned(),
                });
            }
            self.garbage_keys.insert(key.to_owned());
            self.garbage_since.insert(key.to_owned(), now_ms);
        } else {
            match self.commit_object(key, size, &located, None)? {
                CommandResult::ObjectCommitted => {}
                other => {
                    unreachable!("commit_object answers ObjectCommitted or a rejection: {other:?}")
                }
            }
        }
        self.direct_producers.install(planned.updates);
        self.direct_producers.tick(now_ms);
        Ok(CommandResult::DirectCommitted {
            base_offsets: planned.base_offsets,
            skipped: planned.skipped,
        })
    }

    /// Checks `blocks` in order and places the ones to index at the current ends of their
    /// partitions. Changes nothing.
    fn assign_direct(
        &self,
        key: &str,
        blocks: &[DirectBlock],
        now_ms: i64,
    ) -> Result<Planned, Rejection> {
        let mut ends: BTreeMap<(TopicId, u32), i64> = Default::default();
        let mut planned = Planned::default();
        for (i, block) in blocks.iter().enumerate() {
            if let Some(topic) = self.topics.get(&block.topic) {
                if topic.meta.configs.get(STORAGE_MODE_KEY).map(String::as_str) != Some("direct") {
                    return Err(Rejection::NotDirect {
                        name: topic.meta.name.clone(),
                    });
                }
            }
            let end = ends
                .entry((block.topic, block.partition))
                .or_insert_with(|| self.indexed_end(block.topic, block.partition));
            if block.offset_count < 1 {
                return Err(Rejection::EmptyBlock {
                    topic: block.topic,
                    partition: block.partition,
                    base_offset: *end,
                    end_offset: end.saturating_add(block.offset_count),
                });
            }
            let base_offset = *end;
            if !block.producer_batches.is_empty() {
                match self.check_producers(block, base_offset, now_ms, &planned.updates) {
                    Ok(Verdict::Append(entries)) => planned.updates.extend(entries),
                    Ok(Verdict::Duplicate(original)) => {
                        planned.base_offsets.push(original);
                        planned.skipped.push((i, DirectSkip::Duplicate));
                        continue;
                    }
                    Err(skip) => {
                        planned.base_offsets.push(-1);
                        planned.skipped.push((i, skip));
                        continue;
                    }
                }
            }
            *end += block.offset_count;
            planned.base_offsets.push(base_offset);
            planned.located.push(BlockLocation {
                key: key.to_owned(),
                topic: block.topic,
                partition: block.partition,
                base_offset,
                end_offset: *end,
                position: block.position,
                len: block.len,
                max_timestamp: block.max_timestamp,
                crc32c: block.crc32c,
                index_len: 0,
                relative: true,
            });
        }
        Ok(planned)
    }

    /// The producer checks of one block placed at `base_offset`, against the state and the
    /// `pending` entries of earlier blocks in the same command.
    fn check_producers(
        &self,
        block: &DirectBlock,
        base_offset: i64,
        now_ms: i64,
        pending: &BTreeMap<ProducerKey, ProducerEntry>,
    ) -> Result<Verdict, DirectSkip> {
        let mut next: Vec<(ProducerKey, ProducerEntry)> = Vec::new();
        let mut duplicate_records = 0i64;
        let mut duplicates = 0usize;
        let mut first_duplicate = None;
        for batch in &block.producer_batches {
            let pkey = (block.topic, block.partition, batch.producer_id);
            let current = next
                .iter()
                .rev()
                .find(|(k, _)| *k == pkey)
                .map(|(_, e)| e)
                .or_else(|| pending.get(&pkey))
                .or_else(|| self.direct_producers.get(pkey));
            match step(current, batch, base_offset + batch.offset_delta, now_ms)? {
                Step::Duplicate(original) => {
                    duplicates += 1;
                    duplicate_records += batch.ids().records();
                    first_duplicate.get_or_insert(original);
                }
                Step::Next(entry) => next.push((pkey, entry)),
            }
        }
        match first_duplicate {
            Some(original)
                if duplicates == block.producer_batches.len()
                    && duplicate_records == block.offset_count =>
            {
                Ok(Verdict::Duplicate(original))
            }
            Some(_) => Err(DirectSkip::Sequence(SequenceError::PartialDuplicate)),
            None => Ok(Verdict::Append(next)),
        }
    }

    /// A retried `CommitDirect`: the offsets its first apply assigned. A block of producer
    /// batches that is not in the index was skipped then: it is answered as a duplicate if the
    /// producer state still says so, else as refused.
    fn replay_direct(
        &self,
        key: &str,
        blocks: &[DirectBlock],
        now_ms: i64,
    ) -> Result<CommandResult, Rejection> {
        let mut base_offsets = Vec::with_capacity(blocks.len());
        let mut skipped = Vec::new();
        for (i, block) in blocks.iter().enumerate() {
            let found = self
                .blocks(block.topic, block.partition)
                .find(|b| b.key == key && b.position == block.position);
            match (found, block.producer_batches.first()) {
                (Some(b), _) => base_offsets.push(b.base_offset),
                (None, Some(first)) => {
                    let end = self.indexed_end(block.topic, block.partition);
                    match self.check_producers(block, end, now_ms, &BTreeMap::new()) {
                        Ok(Verdict::Duplicate(original)) => {
                            base_offsets.push(original);
                            skipped.push((i, DirectSkip::Duplicate));
                        }
                        Ok(Verdict::Append(_)) => {
                            base_offsets.push(-1);
                            skipped.push((
                                i,
                                DirectSkip::RefusedEarlier {
                                    producer_id: first.producer_id,
                                },
                            ));
                        }
                        Err(skip) => {
                            base_offsets.push(-1);
                            skipped.push((i, skip));
                        }
                    }
                }
                (None, None) => {
                    return Err(Rejection::DirectCommitForgotten {
                        key: key.to_owned(),
                    })
                }
            }
        }
        Ok(CommandResult::DirectCommitted {
            base_offsets,
            skipped,
        })
    }
}

/// What `assign_direct` decided for a command's blocks.
#[derive(Default)]
struct Planned {
    /// The blocks to index, in command order.
    located: Vec<BlockLocation>,
    /// Per block: its base offset (the original for a duplicate, -1 when refused).
    base_offsets: Vec<i64>,
    /// The blocks not indexed, by index in the command, and why.
    skipped: Vec<(usize, DirectSkip)>,
    /// Producer entries to install once the commit is accepted.
    updates: BTreeMap<ProducerKey, ProducerEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use std::collections::BTreeMap;
    use strata_types::TopicName;

    fn state(partitions: u32) -> (MetaState, TopicId) {
        let mut state = MetaState::default();
        let id = TopicId::random();
        let r = state.apply(&Command::CreateTopic {
            name: TopicName::new("d").unwrap(),
            id,
            partitions,
            configs: BTreeMap::from([(STORAGE_MODE_KEY.to_owned(), "direct".to_owned())]),
            created_ms: 0,
        });
        assert!(matches!(r, CommandResult::TopicCreated(_)));
        (state, id)
    }

    fn block(topic: TopicId, partition: u32, offset_count: i64, position: u64) -> DirectBlock {
        DirectBlock {
            topic,
            partition,
            offset_count,
            position,
            len: 10,
            max_timestamp: 7,
            crc32c: 1,
            producer_batches: Vec::new(),
        }
    }

    fn commit(
        state: &mut MetaState,
        key: &str,
        size: u64,
        blocks: Vec<DirectBlock>,
    ) -> CommandResult {
        state.apply(&Command::CommitDirect {
            key: key.into(),
            size,
            blocks,
            now_ms: 0,
        })
    }

    /// (key, blocks as (partition, offset count, position), the offsets or an error fragment).
    type Case<'a> = (&'a str, &'a [(u32, i64, u64)], Result<&'a [i64], &'a str>);

    /// Cases applied in order on one two-partition topic.
    #[test]
    fn offsets_are_assigned_at_apply_time() {
        let (mut s, t) = state(2);
        let wal = TopicId::random();
        s.apply(&Command::CreateTopic {
            name: TopicName::new("w").unwrap(),
            id: wal,
            partitions: 1,
            configs: BTreeMap::new(),
            created_ms: 0,
        });
        let refused = commit(&mut s, "w", 100, vec![block(wal, 0, 1, 0)]);
        assert!(
            matches!(
                refused,
                CommandResult::Rejected(Rejection::NotDirect { .. })
            ),
            "{refused:?}"
        );
        assert_eq!(s.indexed_end(wal, 0), 0);
        let cases: &[Case] = &[
            ("a", &[(0, 3, 0), (1, 2, 10)], Ok(&[0, 0])),
            // A second writer's object lands after the first, whatever it believed.
            ("b", &[(0, 5, 0)], Ok(&[3])),
            // Two blocks of one partition in one object: consecutive ranges.
            ("c", &[(0, 1, 0), (0, 4, 10), (1, 1, 20)], Ok(&[8, 9, 2])),
            ("e", &[(0, 0, 0)], Err("empty or inverted")),
            (
                "f",
                &[(0, 1, 0), (7, 1, 10)],
                Err("partition 7 does not exist"),
            ),
            ("g", &[(0, 1, 95)], Err("outside")),
        ];
        for (key, blocks, want) in cases {
            let blocks = blocks
                .iter()
                .map(|&(p, n, pos)| block(t, p, n, pos))
                .collect();
            let got = commit(&mut s, key, 100, blocks);
            match (want, got) {
                (Ok(offs), CommandResult::DirectCommitted { base_offsets, .. }) => {
                    assert_eq!(&base_offsets[..], *offs, "{key}")
                }
                (Err(part), CommandResult::Rejected(r)) => {
                    assert!(r.to_string().contains(part), "{key}: {r}")
                }
                (want, got) => panic!("{key}: want {want:?}, got {got:?}"),
            }
            s.check_invariants().unwrap();
        }
        assert_eq!(s.indexed_end(t, 0), 13);
        assert_eq!(s.indexed_end(t, 1), 3);
        assert!(s.blocks(t, 0).all(|b| b.relative));
        let b = s.find_block(t, 0, 9).unwrap();
        assert_eq!((b.key.as_str(), b.base_offset, b.end_offset), ("c", 9, 13));
    }

    #[test]
    fn a_retry_answers_the_first_offsets() {
        let (mut s, t) = state(1);
        let first = commit(&mut s, "a", 100, vec![block(t, 0, 3, 0)]);
        let other = commit(&mut s, "b", 100, vec![block(t, 0, 2, 0)]);
        assert_eq!(
            other,
            CommandResult::DirectCommitted {
                base_offsets: vec![3],
                skipped: vec![],
            }
        );
        let again = commit(&mut s, "a", 100, vec![block(t, 0, 3, 0)]);
        assert_eq!(first, again);
        assert_eq!(
            again,
            CommandResult::DirectCommitted {
                base_offsets: vec![0],
                skipped: vec![],
            }
        );
        assert_eq!(s.indexed_end(t, 0), 5, "the retry added nothing");
        let conflict = commit(&mut s, "a", 99, vec![block(t, 0, 3, 0)]);
        assert!(matches!(
            conflict,
            CommandResult::Rejected(Rejection::ObjectKeyConflict { .. })
        ));
        // Retention dropped the block: the retry cannot say its offsets.
        s.apply(&Command::TrimPartition {
            topic: t,
            partition: 0,
            before_offset: 3,
            now_ms: 1,
        });
        let gone = commit(&mut s, "a", 100, vec![block(t, 0, 3, 0)]);
        assert!(matches!(
            gone,
            CommandResult::Rejected(Rejection::DirectCommitForgotten { .. })
        ));
    }

    /// A block of one idempotent batch: (partition, producer id, epoch, first sequence,
    /// records, position).
    fn pblock(t: TopicId, spec: (u32, i64, i16, i32, i64, u64)) -> DirectBlock {
        let (partition, producer_id, epoch, first_seq, n, position) = spec;
        let mut b = block(t, partition, n, position);
        b.producer_batches = vec![DirectProducerBatch {
            producer_id,
            epoch,
            first_seq,
            last_seq: first_seq + n as i32 - 1,
            offset_delta: 0,
        }];
        b
    }

    /// What one block of a commit should get.
    #[derive(Debug)]
    enum Want {
        /// Indexed at this base offset.
        At(i64),
        /// A duplicate of the batch at this base offset.
        Dup(i64),
        /// Refused; the reason contains this.
        No(&'static str),
    }

    /// Commits `blocks` under `key` at `now_ms` and checks every block's answer.
    fn check(s: &mut MetaState, key: &str, now_ms: i64, blocks: Vec<DirectBlock>, want: &[Want]) {
        let r = s.apply(&Command::CommitDirect {
            key: key.into(),
            size: 100,
            blocks,
            now_ms,
        });
        let CommandResult::DirectCommitted {
            base_offsets,
            skipped,
        } = r
        else {
            panic!("{key}: {r:?}")
        };
        assert_eq!(base_offsets.len(), want.len(), "{key}");
        for (i, w) in want.iter().enumerate() {
            let skip = skipped.iter().find(|(at, _)| *at == i).map(|(_, s)| *s);
            match (w, skip) {
                (Want::At(o), None) => assert_eq!(base_offsets[i], *o, "{key}[{i}]"),
                (Want::Dup(o), Some(DirectSkip::Duplicate)) => {
                    assert_eq!(base_offsets[i], *o, "{key}[{i}]")
                }
                (Want::No(part), Some(skip)) if skip != DirectSkip::Duplicate => {
                    assert_eq!(base_offsets[i], -1, "{key}[{i}]");
                    assert!(skip.to_string().contains(part), "{key}[{i}]: {skip}");
                }
                (w, skip) => panic!("{key}[{i}]: want {w:?}, got {skip:?} at {base_offsets:?}"),
            }
        }
        s.check_invariants().unwrap();
    }

    /// The producer rules, applied in order on one partition (producer 1 and 2).
    #[test]
    fn idempotent_blocks_are_checked_at_apply_time() {
        let (mut s, t) = state(1);
        let p = |spec| pblock(t, spec);
        check(&mut s, "a", 1, vec![p((0, 1, 0, 0, 3, 0))], &[Want::At(0)]);
        check(&mut s, "b", 1, vec![p((0, 1, 0, 3, 2, 0))], &[Want::At(3)]);
        // A retried batch in a new object: its original offsets, indexed once.
        check(&mut s, "c", 2, vec![p((0, 1, 0, 0, 3, 0))], &[Want::Dup(0)]);
        assert_eq!(s.indexed_end(t, 0), 5);
        check(
            &mut s,
            "d",
            2,
            vec![p((0, 1, 0, 7, 1, 0))],
            &[Want::No("expected 5")],
        );
        check(
            &mut s,
            "e",
            2,
            vec![p((0, 1, 1, 3, 1, 0))],
            &[Want::No("not 0")],
        );
        check(&mut s, "f", 2, vec![p((0, 1, 1, 0, 1, 0))], &[Want::At(5)]);
        check(
            &mut s,
            "g",
            2,
            vec![p((0, 1, 0, 5, 1, 0))],
            &[Want::No("older")],
        );
        // An unknown producer starts anywhere.
        check(&mut s, "h", 3, vec![p((0, 2, 0, 42, 2, 0))], &[Want::At(6)]);
        // One object: a new batch, a duplicate and plain batches; the skipped block takes no
        // offsets.
        let mixed = vec![
            p((0, 1, 1, 1, 1, 0)),
            p((0, 1, 1, 0, 1, 10)),
            block(t, 0, 2, 20),
        ];
        let want = [Want::At(8), Want::Dup(5), Want::At(9)];
        check(&mut s, "i", 3, mixed.clone(), &want);
        assert_eq!(s.indexed_end(t, 0), 11);
        // A retry of the commit (a lost reply) answers the same.
        check(&mut s, "i", 4, mixed, &want);
        // A block mixing a duplicate with a new batch is refused whole.
        let mut two = p((0, 2, 0, 42, 2, 0));
        two.offset_count = 3;
        two.producer_batches.push(DirectProducerBatch {
            producer_id: 2,
            epoch: 0,
            first_seq: 44,
            last_seq: 44,
            offset_delta: 2,
        });
        check(&mut s, "j", 4, vec![two], &[Want::No("mixes")]);
        // Two batches of one producer in one object: the second follows the first.
        let pair = vec![p((0, 2, 0, 44, 1, 0)), p((0, 2, 0, 45, 1, 10))];
        check(&mut s, "k", 4, pair, &[Want::At(11), Want::At(12)]);
        // Every block a duplicate: nothing indexed, the object is garbage, a retry answers
        // the same.
        check(
            &mut s,
            "l",
            5,
            vec![p((0, 2, 0, 45, 1, 0))],
            &[Want::Dup(12)],
        );
        check(
            &mut s,
            "l",
            6,
            vec![p((0, 2, 0, 45, 1, 0))],
            &[Want::Dup(12)],
        );
        assert!(s.garbage_keys.contains("l"));
        assert_eq!(s.indexed_end(t, 0), 13);
        // A refused-only object is garbage too; its retry stays refused.
        assert!(s.garbage_keys.contains("d"));
        check(
            &mut s,
            "d",
            6,
            vec![p((0, 1, 0, 7, 1, 0))],
            &[Want::No("older")],
        );
        assert_eq!(s.direct_producers.len(), 2);

        // The state is in snapshots.
        let json = serde_json::to_vec(&s).unwrap();
        let mut back: MetaState = serde_json::from_slice(&json).unwrap();
        check(
            &mut back,
            "m",
            7,
            vec![p((0, 1, 1, 1, 1, 0))],
            &[Want::Dup(8)],
        );
        // Deleting the topic forgets its producers.
        back.apply(&Command::DeleteTopic {
            name: TopicName::new("d").unwrap(),
        });
        assert!(back.direct_producers.is_empty());
    }

    /// Producers expire on the commands' clock; a producer seen recently stays.
    #[test]
    fn idle_producers_expire_on_command_time() {
        let (mut s, t) = state(1);
        let p = |spec| pblock(t, spec);
        let day = DIRECT_PRODUCER_EXPIRATION_MS;
        check(
            &mut s,
            "a",
            1_000,
            vec![p((0, 1, 0, 0, 1, 0))],
            &[Want::At(0)],
        );
        check(
            &mut s,
            "b",
            day / 2,
            vec![p((0, 2, 0, 0, 1, 0))],
            &[Want::At(1)],
        );
        // A stale clock in a command does not move expiry backwards.
        check(&mut s, "c", 5, vec![p((0, 2, 0, 1, 1, 0))], &[Want::At(2)]);
        assert_eq!(s.direct_producers.len(), 2);
        let later = day + 2_000;
        check(
            &mut s,
            "d",
            later,
            vec![p((0, 2, 0, 9, 1, 0))],
            &[Want::No("expected 2")],
        );
        assert_eq!(s.direct_producers.len(), 1, "producer 1 expired");
        // Forgotten, producer 1 is unknown: any sequence is accepted.
        check(
            &mut s,
            "e",
            later,
            vec![p((0, 1, 0, 9, 1, 0))],
            &[Want::At(3)],
        );
    }
}
