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
//! Idempotent producers: metadata keeps no producer state for direct partitions; the broker
//! refuses idempotent batches on direct topics (see `broker/src/log/direct.rs`).
//!
//! This module is a child of `state` so it can use the state's private helpers; it stays pure
//! like the rest of `apply`.

use super::{CommandResult, MetaState, Rejection};
use serde::{Deserialize, Serialize};
use strata_types::{BlockLocation, TopicId};

/// The topic config that names the storage mode (the broker's vocabulary; metadata reads it
/// only to refuse `CommitDirect` on a WAL topic).
pub const STORAGE_MODE_KEY: &str = "strata.storage.mode";

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
}

impl MetaState {
    /// Applies `CommitDirect` (see the module docs).
    pub(super) fn commit_direct(
        &mut self,
        key: &str,
        size: u64,
        blocks: &[DirectBlock],
    ) -> Result<CommandResult, Rejection> {
        if self.is_committed(key, size)? {
            return self.replay_direct(key, blocks);
        }
        let located = self.assign_direct(key, blocks)?;
        let base_offsets = located.iter().map(|b| b.base_offset).collect();
        match self.commit_object(key, size, &located, None)? {
            CommandResult::ObjectCommitted => Ok(CommandResult::DirectCommitted { base_offsets }),
            other => {
                unreachable!("commit_object answers ObjectCommitted or a rejection: {other:?}")
            }
        }
    }

    /// The index entries of `blocks` at the current ends of their partitions.
    fn assign_direct(
        &self,
        key: &str,
        blocks: &[DirectBlock],
    ) -> Result<Vec<BlockLocation>, Rejection> {
        let mut ends: std::collections::BTreeMap<(TopicId, u32), i64> = Default::default();
        let mut out = Vec::with_capacity(blocks.len());
        for block in blocks {
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
            *end += block.offset_count;
            out.push(BlockLocation {
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
        Ok(out)
    }

    /// A retried `CommitDirect`: the offsets its first apply assigned.
    fn replay_direct(&self, key: &str, blocks: &[DirectBlock]) -> Result<CommandResult, Rejection> {
        let mut base_offsets = Vec::with_capacity(blocks.len());
        for block in blocks {
            let found = self
                .blocks(block.topic, block.partition)
                .find(|b| b.key == key && b.position == block.position);
            match found {
                Some(b) => base_offsets.push(b.base_offset),
                None => {
                    return Err(Rejection::DirectCommitForgotten {
                        key: key.to_owned(),
                    })
                }
            }
        }
        Ok(CommandResult::DirectCommitted { base_offsets })
    }
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
                (Ok(offs), CommandResult::DirectCommitted { base_offsets }) => {
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
                base_offsets: vec![3]
            }
        );
        let again = commit(&mut s, "a", 100, vec![block(t, 0, 3, 0)]);
        assert_eq!(first, again);
        assert_eq!(
            again,
            CommandResult::DirectCommitted {
                base_offsets: vec![0]
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
}
