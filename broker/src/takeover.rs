//! Failover, the taking side (DESIGN.md §2 step 6): when metadata hands this broker another
//! broker's WAL stream (its lease expired), recover the stream's un-uploaded tail from the WAL
//! replicas, upload it as one object, commit it to the index under the stream's new epoch, and
//! release the stream. The partitions the dead broker led were moved to this broker *pending*
//! on that stream; the release makes them writable, and the registry then opens their logs
//! where the index ends — right after the recovered records.
//!
//! Sealing the stream at the new epoch (inside `StreamOwner::recover`) is what fences the old
//! broker: from then on it cannot get a write quorum, so nothing it acknowledges afterwards can
//! exist. Everything it did acknowledge is on a quorum and comes back in the recovered tail.
//!
//! A recovery that fails (replicas unreachable, object store down) is retried; metadata keeps
//! the stream with this broker, and if this broker dies too, the stream moves on with the next
//! expiry. Recovery is idempotent: entries already in the index are skipped.

use crate::log::entry::WalEntry;
use crate::metrics::Metrics;
use crate::node::Node;
use bytes::Bytes;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use strata_meta::{ClusterCommand, ClusterResult, Command, CommandResult, StreamProgress};
use strata_tiering::ObjectBuilder;
use strata_types::PartitionKey;
use strata_wal::net::StreamOwner;
use tokio::sync::watch;

/// PUT attempts for a recovered tail before the takeover is retried from the start.
const PUT_ATTEMPTS_MAX: u32 = 20;

/// Runs until `shutdown`: recovers every stream metadata assigns to this broker.
pub async fn run(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let Some((r, w)) = node.config.wal_quorum else {
        return;
    };
    let me = node.config.node_id;
    let mut changes = node.meta.subscribe();
    let mut done: HashSet<(u64, u64)> = HashSet::new();
    loop {
        let jobs: Vec<(u64, u64, u64)> = node
            .meta
            .read()
            .cluster()
            .streams()
            .filter(|(id, s)| *id != me && s.holder == Some(me))
            .map(|(id, s)| (id, s.epoch, s.settled_lsn))
            .filter(|(id, epoch, _)| !done.contains(&(*id, *epoch)))
            .collect();
        let mut failed = false;
        for (stream, epoch, settled) in jobs {
            tracing::warn!(
                stream,
                epoch,
                "taking over a dead broker's WAL stream: recovering its tail"
            );
            match recover_stream(&node, stream, epoch, settled, r, w).await {
                Ok(records) => {
                    done.insert((stream, epoch));
                    Metrics::inc(&node.metrics.streams_recovered_total);
                    tracing::warn!(
                        stream,
                        epoch,
                        records,
                        "WAL stream recovered, uploaded and released"
                    );
                }
                Err(err) => {
                    failed = true;
                    tracing::error!(stream, epoch, %err, "WAL stream takeover failed; retrying");
                }
            }
        }
        let retry = if failed {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(retry) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Recovers `stream` at `epoch`, uploads what the index lacks, and releases it. Returns the
/// number of records uploaded.
async fn recover_stream(
    node: &Node,
    stream: u64,
    epoch: u64,
    settled: u64,
    r: u16,
    w: u16,
) -> Result<i64, String> {
    let cfg = crate::node::stream_owner_config(
        &node.config,
        stream,
        node.config.file.wal.peers.clone(),
        r,
        w,
    );
    let (owner, entries) = StreamOwner::recover(cfg, epoch, settled + 1)
        .await
        .map_err(|e| format!("recovery: {e}"))?;
    let result = upload_tail(node, stream, epoch, &owner, entries).await;
    owner.close().await;
    result
}

async fn upload_tail(
    node: &Node,
    stream: u64,
    epoch: u64,
    owner: &StreamOwner,
    entries: Vec<strata_wal::RecoveredEntry>,
) -> Result<i64, String> {
    let settled_lsn = owner.last_lsn();
    // Group the tail by partition, skipping what the index already has (an upload the dead
    // broker committed before dying) and partitions of deleted topics.
    let mut by_partition: BTreeMap<PartitionKey, Vec<WalEntry>> = BTreeMap::new();
    // Every batch of the tail, uploaded before or not, for the producers' state.
    let mut batches: Vec<(PartitionKey, Bytes)> = Vec::new();
    {
        let state = node.meta.read();
        let mut next: BTreeMap<PartitionKey, i64> = BTreeMap::new();
        for recovered in entries {
            let entry = WalEntry::decode(Bytes::from(recovered.payload))
                .map_err(|e| format!("entry {} of stream {stream}: {e}", recovered.lsn))?;
            let key = entry.partition;
            if state.topic_by_id(key.topic).is_none() {
                continue;
            }
            batches.push((key, entry.batches.clone()));
            let expected = next
                .entry(key)
                .or_insert_with(|| state.indexed_end(key.topic, key.partition));
            if entry.end_offset <= *expected {
                continue;
            }
            if entry.base_offset != *expected {
                return Err(format!(
                    "entry {} of stream {stream} starts at offset {} of {}/{}, but the index \
                     continues at {}",
                    recovered.lsn, entry.base_offset, key.topic, key.partition, expected
                ));
            }
            *expected = entry.end_offset;
            by_partition.entry(key).or_default().push(entry);
        }
    }
    let mut records = 0i64;
    if !by_partition.is_empty() {
        let key = crate::log::uploader::object_key(node.config.node_id);
        let mut builder = ObjectBuilder::new(key.clone());
        for (p, entries) in &by_partition {
            let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                continue;
            };
            let max_ts = entries.iter().map(|e| e.max_timestamp).max().unwrap_or(-1);
            let data: Vec<Bytes> = entries.iter().map(|e| e.batches.clone()).collect();
            builder.add_block(
                p.topic,
                p.partition,
                first.base_offset,
                last.end_offset,
                max_ts,
                &data,
            );
            records += last.end_offset - first.base_offset;
        }
        let (object, blocks) = builder.finish();
        let size = object.len() as u64;
        let put = crate::log::uploader::put_with_retry(
            &node.store,
            &node.metrics,
            &key,
            object,
            PUT_ATTEMPTS_MAX,
        );
        if !put.await {
            return Err(format!("upload of {key} failed"));
        }
        let committed = node
            .meta
            .write(Command::CommitObject {
                key: key.clone(),
                size,
                blocks,
                stream: Some(StreamProgress {
                    stream,
                    epoch,
                    settled_lsn,
                }),
            })
            .await
            .map_err(|e| format!("commit of {key}: {e}"))?;
        if committed != CommandResult::ObjectCommitted {
            return Err(format!("commit of {key} refused: {committed:?}"));
        }
        Metrics::inc(&node.metrics.objects_uploaded_total);
        Metrics::add(&node.metrics.object_bytes_uploaded_total, size);
    }
    // The sequencer learns the tail's producers before the partitions become writable here
    // (the release below): it takes messages in order.
    if !batches.is_empty() {
        node.seq_tx
            .send(crate::log::sequencer::SeqMsg::AdoptProducers { batches })
            .await
            .map_err(|_| "the sequencer stopped".to_string())?;
    }
    let released = node
        .meta
        .write(Command::Cluster(ClusterCommand::ReleaseStream {
            stream,
            epoch,
            settled_lsn,
        }))
        .await
        .map_err(|e| format!("release: {e}"))?;
    if released != CommandResult::Cluster(ClusterResult::StreamReleased) {
        return Err(format!("release refused: {released:?}"));
    }
    owner.trim(settled_lsn);
    Ok(records)
}
