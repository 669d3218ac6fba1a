//! Kafka's idempotent-producer sequence rules, as one pure check.
//!
//! Two places keep producer state and must agree on every verdict: the WAL topics' sequencer
//! (`broker/src/log/producer.rs`, state rebuilt from the WAL) and metadata's `CommitDirect`
//! apply for `direct` topics (`meta/src/direct.rs`, state in the raft state machine). Each keeps
//! its own entries (bounded arrays on the hot path, serialised maps in metadata); both ask
//! [`check`] what a batch is.
//!
//! # Rules, for a batch with `producer_id >= 0`
//!
//! - **Unknown producer** on the partition: accepted with any epoch and sequence
//!   ([`SeqOutcome::Fresh`]). Kafka does the same once producer state is gone (expired, evicted,
//!   not recoverable): a gap cannot be told from a fresh start, so the producer is trusted.
//! - **Older epoch** than the producer's current one: [`SequenceError::StaleEpoch`].
//! - **Same epoch, same first and last sequence as one of the batches remembered**: a duplicate
//!   ([`SeqOutcome::Duplicate`] with the original base offset); nothing is written again.
//! - **Same epoch**: the first sequence must be the last one written + 1 (wrapping from
//!   `i32::MAX` to 0) — [`SeqOutcome::Follows`] — else [`SequenceError::OutOfOrder`].
//! - **Newer epoch** (the producer re-initialised, KIP-360): must start at sequence 0, else
//!   [`SequenceError::NewEpochNotAtZero`]; it replaces the producer's entry
//!   ([`SeqOutcome::Fresh`]).
//!
//! A request (or a direct block) of several batches is all or nothing; one that mixes
//! duplicates with new batches is refused by the callers with
//! [`SequenceError::PartialDuplicate`].

use crate::batch::BatchHeader;
use serde::{Deserialize, Serialize};

/// The idempotence fields of one record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    /// Sequence of the batch's last record (wrapped past `i32::MAX`).
    pub last_seq: i32,
}

impl ProducerBatch {
    /// The idempotence fields of a batch, or `None` if it has no producer id (not idempotent).
    pub fn from_header(header: &BatchHeader) -> Option<Self> {
        (header.producer_id >= 0).then(|| Self {
            producer_id: header.producer_id,
            epoch: header.producer_epoch,
            first_seq: header.base_sequence,
            last_seq: add_seq(header.base_sequence, header.last_offset_delta),
        })
    }

    /// Records (offsets) the batch spans, from its sequence numbers.
    pub fn records(&self) -> i64 {
        (i64::from(self.last_seq) - i64::from(self.first_seq)).rem_euclid(1 << 31) + 1
    }
}

/// `seq + n` in Kafka's sequence space, which wraps from `i32::MAX` to 0.
pub fn add_seq(seq: i32, n: i32) -> i32 {
    debug_assert!(seq >= 0 && n >= 0);
    if seq > i32::MAX - n {
        n - (i32::MAX - seq) - 1
    } else {
        seq + n
    }
}

/// One batch remembered for a producer: its sequences and where it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SeqBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
}

/// One producer's state on a partition, as a planned move hands it to the partition's next
/// leader (carried by metadata's `CompleteMove`, kept in the partition's lease): its epoch and
/// its last batches, oldest first — what [`check`] needs to answer retries and gaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedProducer {
    pub producer_id: i64,
    pub epoch: i16,
    /// The last batches written, oldest first; at least one, at most [`HANDED_BATCHES_MAX`].
    pub batches: Vec<SeqBatch>,
    /// When the leaving leader last saw the producer (for expiry).
    pub last_seen_ms: i64,
}

/// Batches a [`HandedProducer`] may carry (the sequencer remembers this many per producer).
pub const HANDED_BATCHES_MAX: usize = 5;
/// Producers one partition's handover may carry (the sequencer's per-partition cap).
pub const HANDED_PRODUCERS_MAX: usize = 1_000;

/// The producers' state of a partition at the end of a planned move: valid for the log that
/// starts at `end_offset` (the first offset the new leader writes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub end_offset: i64,
    pub producers: Vec<HandedProducer>,
}

impl Handover {
    /// Why the handover cannot be adopted (bad input from a proposer), or `Ok`.
    pub fn validate(&self) -> Result<(), String> {
        if self.producers.len() > HANDED_PRODUCERS_MAX {
            return Err(format!(
                "{} producers handed over, at most {HANDED_PRODUCERS_MAX}",
                self.producers.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.producers {
            if !seen.insert(p.producer_id) {
                return Err(format!("producer {} handed over twice", p.producer_id));
            }
            if p.producer_id < 0 || p.epoch < 0 {
                return Err(format!(
                    "producer {} epoch {}: negative id or epoch",
                    p.producer_id, p.epoch
                ));
            }
            if p.batches.is_empty() || p.batches.len() > HANDED_BATCHES_MAX {
                return Err(format!(
                    "producer {}: {} batches, expected 1 to {HANDED_BATCHES_MAX}",
                    p.producer_id,
                    p.batches.len()
                ));
            }
            if p.batches.iter().any(|b| {
                b.first_seq < 0
                    || b.last_seq < 0
                    || b.base_offset < 0
                    || b.base_offset >= self.end_offset
            }) {
                return Err(format!(
                    "producer {}: a batch with a negative sequence or offset, or past the end \
                     offset {}",
                    p.producer_id, self.end_offset
                ));
            }
        }
        Ok(())
    }
}

/// Why a batch was refused. Each maps to one Kafka error code (broker `kafka::errors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SequenceError {
    #[error("producer {producer_id}: epoch {epoch} is older than its current epoch {current}")]
    StaleEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error("producer {producer_id}: sequence {got}, expected {expected}")]
    OutOfOrder {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    #[error("producer {producer_id}: new epoch {epoch} starts at sequence {got}, not 0")]
    NewEpochNotAtZero {
        producer_id: i64,
        epoch: i16,
        got: i32,
    },
    #[error("the request mixes batches already written with new ones")]
    PartialDuplicate,
}

/// What an accepted batch is to its producer's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqOutcome {
    /// Unknown producer or a new epoch: the batch starts a new entry.
    Fresh,
    /// A retry of a remembered batch: answer this base offset, write nothing.
    Duplicate { base_offset: i64 },
    /// The next batch of the current epoch: append it to the entry.
    Follows,
}

/// The verdict on `batch` against its producer's entry on the partition: `None` for an unknown
/// producer, else the entry's epoch and its remembered batches (oldest first, never empty).
pub fn check(
    current: Option<(i16, &[SeqBatch])>,
    batch: &ProducerBatch,
) -> Result<SeqOutcome, SequenceError> {
    let Some((epoch, batches)) = current else {
        return Ok(SeqOutcome::Fresh);
    };
    if batch.epoch < epoch {
        return Err(SequenceError::StaleEpoch {
            producer_id: batch.producer_id,
            epoch: batch.epoch,
            current: epoch,
        });
    }
    if batch.epoch > epoch {
        if batch.first_seq != 0 {
            return Err(SequenceError::NewEpochNotAtZero {
                producer_id: batch.producer_id,
                epoch: batch.epoch,
                got: batch.first_seq,
            });
        }
        return Ok(SeqOutcome::Fresh);
    }
    if let Some(dup) = batches
        .iter()
        .find(|m| m.first_seq == batch.first_seq && m.last_seq == batch.last_seq)
    {
        return Ok(SeqOutcome::Duplicate {
            base_offset: dup.base_offset,
        });
    }
    let Some(last) = batches.last() else {
        return Ok(SeqOutcome::Fresh);
    };
    let expected = add_seq(last.last_seq, 1);
    if batch.first_seq != expected {
        return Err(SequenceError::OutOfOrder {
            producer_id: batch.producer_id,
            expected,
            got: batch.first_seq,
        });
    }
    Ok(SeqOutcome::Follows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb(epoch: i16, first_seq: i32, last_seq: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id: 7,
            epoch,
            first_seq,
            last_seq,
        }
    }

    fn sb(first_seq: i32, last_seq: i32, base_offset: i64) -> SeqBatch {
        SeqBatch {
            first_seq,
            last_seq,
            base_offset,
        }
    }

    #[test]
    fn add_seq_wraps_past_max() {
        assert_eq!(add_seq(5, 3), 8);
        assert_eq!(add_seq(i32::MAX, 1), 0);
        assert_eq!(add_seq(i32::MAX - 1, 3), 1);
        assert_eq!(pb(0, i32::MAX - 1, 1).records(), 4);
    }

    #[test]
    fn verdicts() {
        let entry = [sb(0, 4, 100), sb(5, 9, 105)];
        let cur = Some((3i16, &entry[..]));
        assert_eq!(check(None, &pb(0, 42, 50)), Ok(SeqOutcome::Fresh));
        assert_eq!(check(cur, &pb(3, 10, 12)), Ok(SeqOutcome::Follows));
        assert_eq!(
            check(cur, &pb(3, 0, 4)),
            Ok(SeqOutcome::Duplicate { base_offset: 100 })
        );
        assert_eq!(
            check(cur, &pb(3, 11, 12)),
            Err(SequenceError::OutOfOrder {
                producer_id: 7,
                expected: 10,
                got: 11
            })
        );
        // Same first sequence but another length is not a duplicate: a gap.
        assert!(matches!(
            check(cur, &pb(3, 5, 8)),
            Err(SequenceError::OutOfOrder { .. })
        ));
        assert_eq!(
            check(cur, &pb(2, 10, 10)),
            Err(SequenceError::StaleEpoch {
                producer_id: 7,
                epoch: 2,
                current: 3
            })
        );
        assert_eq!(check(cur, &pb(4, 0, 0)), Ok(SeqOutcome::Fresh));
        assert_eq!(
            check(cur, &pb(4, 1, 1)),
            Err(SequenceError::NewEpochNotAtZero {
                producer_id: 7,
                epoch: 4,
                got: 1
            })
        );
        let wrapped = [sb(i32::MAX - 1, i32::MAX, 0)];
        assert_eq!(
            check(Some((0, &wrapped[..])), &pb(0, 0, 3)),
            Ok(SeqOutcome::Follows)
        );
    }
}
