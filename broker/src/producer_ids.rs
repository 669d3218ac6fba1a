//! Producer ids for InitProducerId, reserved from metadata a block at a time.
//!
//! Ids must be unique for the life of the cluster, across restarts, so they come from the
//! metadata state machine (`Command::AllocateProducerIds`). One raft write per producer would
//! make InitProducerId as slow as a metadata commit, so this task reserves
//! [`PRODUCER_ID_BLOCK`] ids at once and hands them out one by one. Ids left in a block when
//! the node stops are never used; with 2^63 ids that waste is harmless.
//!
//! The task owns the current block and answers requests in arrival order (a closed event loop:
//! no lock, and the raft write is awaited without holding one).

use crate::meta_handle::MetaHandle;
use strata_meta::{Command, CommandResult};
use tokio::sync::{mpsc, oneshot};

/// Ids reserved per metadata write.
pub const PRODUCER_ID_BLOCK: u32 = 1_000;
/// Requests waiting for an id (InitProducerId handlers); more wait to enqueue.
const PRODUCER_ID_REQUESTS_MAX: usize = 1_024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerIdError {
    /// Metadata did not answer (not ready, not leader, shutting down): retry.
    #[error("metadata is unavailable: {reason}")]
    Unavailable { reason: String },
    /// Metadata refused to reserve more ids (the id space is used up).
    #[error("metadata refused to reserve producer ids: {reason}")]
    Refused { reason: String },
}

type Reply = oneshot::Sender<Result<i64, ProducerIdError>>;

/// Handle to the allocator task.
#[derive(Debug, Clone)]
pub struct ProducerIds {
    tx: mpsc::Sender<Reply>,
}

impl ProducerIds {
    /// Starts the allocator task on the current runtime. It stops when every handle is dropped.
    pub fn spawn(meta: MetaHandle) -> Self {
        let (tx, rx) = mpsc::channel(PRODUCER_ID_REQUESTS_MAX);
        tokio::spawn(run(meta, rx));
        Self { tx }
    }

    /// A producer id never handed out before.
    pub async fn next(&self) -> Result<i64, ProducerIdError> {
        let (reply, rx) = oneshot::channel();
        let stopped = || ProducerIdError::Unavailable {
            reason: "the producer id allocator stopped".into(),
        };
        self.tx.send(reply).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn run(meta: MetaHandle, mut rx: mpsc::Receiver<Reply>) {
    // Ids `next..end` are reserved for this node and not yet handed out.
    let mut next = 0i64;
    let mut end = 0i64;
    while let Some(reply) = rx.recv().await {
        if next == end {
            let answer = meta
                .write(Command::AllocateProducerIds {
                    count: PRODUCER_ID_BLOCK,
                })
                .await;
            match answer {
                Ok(CommandResult::ProducerIdsAllocated { first }) => {
                    assert!(first >= 0, "metadata reserved a negative producer id");
                    next = first;
                    end = first + i64::from(PRODUCER_ID_BLOCK);
                    tracing::debug!(first, end, "reserved a block of producer ids");
                }
                Ok(CommandResult::Rejected(why)) => {
                    tracing::error!(%why, "metadata refused to reserve producer ids");
                    let _ = reply.send(Err(ProducerIdError::Refused {
                        reason: why.to_string(),
                    }));
                    continue;
                }
                Ok(other) => {
                    let _ = reply.send(Err(ProducerIdError::Refused {
                        reason: format!("unexpected answer {other:?}"),
                    }));
                    continue;
                }
                Err(err) => {
                    tracing::warn!(%err, "could not reserve producer ids");
                    let _ = reply.send(Err(ProducerIdError::Unavailable {
                        reason: err.to_string(),
                    }));
                    continue;
                }
            }
        }
        debug_assert!(next < end);
        // A requester that gave up (connection closed) loses nothing but one id.
        let _ = reply.send(Ok(next));
        next += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_meta::MetaNode;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ids_are_unique_across_blocks_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        for round in 0..2 {
            let meta = MetaNode::open(dir.path(), 1).await.unwrap();
            let ids = ProducerIds::spawn(meta.clone().into());
            for _ in 0..PRODUCER_ID_BLOCK + 5 {
                seen.push(ids.next().await.unwrap());
            }
            // Two blocks were reserved: the ids left in the second one are lost on restart.
            assert_eq!(
                meta.read().next_producer_id(),
                i64::from(PRODUCER_ID_BLOCK) * 2 * (round + 1),
                "round {round}"
            );
            drop(ids);
            meta.shutdown().await.unwrap();
        }
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, seen, "ids are handed out in order, never twice");
        assert_eq!(seen[0], 0);
        assert_eq!(
            seen[PRODUCER_ID_BLOCK as usize + 5],
            2 * i64::from(PRODUCER_ID_BLOCK),
            "after a restart, the next block"
        );
    }
}
