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
//! The sequencer adopts the tail's idempotent producers before the release. If a planned move
//! handed the partition to the dead broker and the tail reaches back to that move, the
//! move's handover (kept in the lease) is adopted after the tail: producers the dead broker
//! never saw keep the sequences they had before the move (`moves.rs`).
//!
//! A recovery that fails (replicas unreachable, object store down) is retried; metadata keeps
//! the stream with this broker, and if this broker dies too, the stream moves on with the next
//! expiry. Recovery is idempotent: entries already in the index are skipped.

use crate::config::NodeConfig;
use crate::log::entry::WalEntry;
use crate::metrics::Metrics;
use crate::node::Node;
use bytes::Bytes;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use strata_meta::MetaState;
use strata_meta::{ClusterCommand, ClusterResult, Command, CommandResult, StreamProgress};
use strata_tiering::ObjectBuilder;
use strata_types::PartitionKey;
use strata_wal::net::{Replacement, ReplicaServerHandle, StreamOwner};
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
    let replicas = stream_replicas(&node.config, stream, &node.meta.read());
    let mut cfg = crate::node::stream_owner_config(&node.config, stream, replicas, r, w);
    // A takeover holds the stream only long enough to upload its tail.
    cfg.replication.replace_after_ms = 0;
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
    // The producers' state planned moves handed to the dead broker, for the partitions whose
    // tail reaches back to the move (it holds everything written since).
    let mut handovers: Vec<(PartitionKey, strata_types::sequence::Handover)> = Vec::new();
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
            if let Some(h) = state
                .cluster()
                .lease(key.topic, key.partition)
                .and_then(|l| l.handover.as_ref())
                .filter(|h| entry.base_offset <= h.end_offset)
                .filter(|_| !handovers.iter().any(|(k, _)| *k == key))
            {
                handovers.push((key, h.clone()));
            }
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
    // (the release below): it takes messages in order. A move's handover comes after the tail:
    // it replaces only entries older than the move (see `ProducerStates::adopt`).
    if !batches.is_empty() {
        node.seq_tx
            .send(crate::log::sequencer::SeqMsg::AdoptProducers { batches })
            .await
            .map_err(|_| "the sequencer stopped".to_string())?;
    }
    for (key, handover) in handovers {
        node.seq_tx
            .send(crate::log::sequencer::SeqMsg::AdoptHandover { key, handover })
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

// ---------------------------------------------------------------------------------------------
// Replica sets: replacement (the owner's side) and garbage collection (the replica's side)

/// Connecting to a spare before it is proposed must succeed within this.
const SPARE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a replica looks for stream directories it no longer needs to keep.
const GC_INTERVAL: Duration = Duration::from_secs(2);
/// Pause between attempts to record a replica set whose outcome was unknown.
const RECORD_RETRY: Duration = Duration::from_millis(250);

/// The WAL replicas of `stream`: the set metadata recorded (after a replacement), else the
/// configured default, the first R of `wal.peers` (the same on every node).
pub fn stream_replicas(config: &NodeConfig, stream: u64, state: &MetaState) -> Vec<String> {
    match state.cluster().stream(stream) {
        Some(s) if !s.replicas.is_empty() => s.replicas.clone(),
        _ => default_replicas(config),
    }
}

fn default_replicas(config: &NodeConfig) -> Vec<String> {
    let r = config.wal_quorum.map_or(0, |(r, _)| usize::from(r));
    config.file.wal.peers.iter().take(r).cloned().collect()
}

/// Starts this node's replica upkeep: replacing unhealthy replicas of its own stream (when it
/// writes a replicated stream) and deleting stream directories this WAL node no longer needs
/// (when it serves the `wal` role).
pub fn spawn_replica_upkeep(
    node: &Arc<Node>,
    owner: Option<StreamOwner>,
    replica: Option<ReplicaServerHandle>,
    shutdown: &watch::Receiver<bool>,
) {
    if let Some(owner) = owner {
        tokio::spawn(replace_replicas(node.clone(), owner, shutdown.clone()));
    }
    if let Some(replica) = replica {
        let reader = node.clone();
        tokio::spawn(collect_streams(
            node.config.clone(),
            move |f: &dyn Fn(&MetaState) -> Vec<u64>| f(&reader.meta.read()),
            replica,
            shutdown.clone(),
        ));
    }
}

/// How a spare is known to be up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpareCheck {
    /// Metadata shows its WAL heartbeat within its lease.
    Registered,
    /// No WAL node registered this address: only a TCP probe can tell.
    Probe,
}

/// The spares for a stream on `current`, best first. Liveness comes from metadata: WAL nodes
/// heartbeat their address (`cluster::run_wal_heartbeats`), and one whose heartbeat is older
/// than its lease at `now_ms` is left out. First the alive registered `wal.peers` (in their
/// order), then alive registered WAL nodes outside `wal.peers` (by node id). The TCP probe is
/// only a fallback, for `wal.peers` entries no WAL node registered (one that cannot reach
/// metadata, or runs an older version); those come last.
fn spare_candidates(
    peers: &[String],
    current: &[String],
    cluster: &strata_meta::ClusterState,
    now_ms: i64,
) -> Vec<(String, SpareCheck)> {
    let in_set = |a: &str| current.iter().any(|c| strata_meta::same_addr(c, a));
    let mut alive = Vec::new();
    let mut unregistered = Vec::new();
    for peer in peers.iter().filter(|p| !in_set(p)) {
        match cluster.wal_addr_alive(peer, now_ms) {
            Some(true) => alive.push((peer.clone(), SpareCheck::Registered)),
            Some(false) => {}
            None => unregistered.push((peer.clone(), SpareCheck::Probe)),
        }
    }
    for node in cluster.wal_nodes() {
        let known = peers
            .iter()
            .any(|p| strata_meta::same_addr(p, &node.wal_addr))
            || alive
                .iter()
                .any(|(a, _)| strata_meta::same_addr(a, &node.wal_addr));
        if !known && !in_set(&node.wal_addr) && node.alive_at(now_ms) {
            alive.push((node.wal_addr.clone(), SpareCheck::Registered));
        }
    }
    alive.extend(unregistered);
    alive
}

/// Answers the owner's replacement requests (the order is the writer core's, see
/// `strata_wal::replication::writer`): pick a live spare ([`spare_candidates`]), let the owner
/// catch it up, record the new set in metadata, then let the owner switch. A spare that does
/// not catch up within `wal.replica_catchup_timeout_ms` is given up and the next request tries
/// another.
async fn replace_replicas(
    node: Arc<Node>,
    owner: StreamOwner,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(mut requests) = owner.replacements() else {
        return;
    };
    let give_up_after = Duration::from_millis(node.config.file.wal.catchup_timeout_ms().max(1));
    // (replica, spare, started) of the replacement under way.
    let mut pending: Option<(u16, String, tokio::time::Instant)> = None;
    loop {
        let deadline = pending
            .as_ref()
            .map(|(_, _, started)| *started + give_up_after);
        let request = tokio::select! {
            r = requests.recv() => match r { Some(r) => r, None => return },
            _ = shutdown.changed() => return,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some((replica, spare, _)) = pending.take() {
                    tracing::warn!(stream = owner.stream(), replica, %spare, "WAL replica replacement: the spare did not catch up in time; giving up on it");
                    owner.finish_replace(replica, false);
                }
                continue;
            }
        };
        match request {
            Replacement::Unhealthy {
                replica,
                addr,
                unhealthy_ms,
            } => {
                if pending.is_some() {
                    continue;
                }
                let current = owner.replicas();
                let spares = spare_candidates(
                    &node.config.file.wal.peers,
                    &current,
                    node.meta.read().cluster(),
                    crate::cluster::now_ms(),
                );
                let mut started = false;
                for (spare, check) in &spares {
                    let alive = match check {
                        SpareCheck::Registered => true,
                        SpareCheck::Probe => matches!(
                            tokio::time::timeout(
                                SPARE_CONNECT_TIMEOUT,
                                tokio::net::TcpStream::connect(spare.as_str())
                            )
                            .await,
                            Ok(Ok(_))
                        ),
                    };
                    if alive && owner.start_replace(replica, spare) {
                        tracing::warn!(stream = owner.stream(), replica, old = %addr, new = %spare, ?check, unhealthy_ms, "WAL replica replacement started: catching up the spare");
                        pending = Some((replica, spare.clone(), tokio::time::Instant::now()));
                        started = true;
                        break;
                    }
                }
                if !started {
                    tracing::warn!(stream = owner.stream(), replica, %addr, unhealthy_ms, "WAL replica unhealthy, but no live spare (a registered WAL node or a wal.peers entry) to replace it");
                }
            }
            Replacement::CaughtUp {
                replica,
                old_addr,
                new_addr,
                durable_lsn,
            } => {
                if pending.as_ref().map(|(r, a, _)| (*r, a)) != Some((replica, &new_addr)) {
                    continue; // a replacement already given up
                }
                let mut set = owner.replicas();
                set[usize::from(replica)] = new_addr.clone();
                let recorded = record_replicas(&node, &owner, set, &mut shutdown).await;
                pending = None;
                match recorded {
                    Some(recorded) => {
                        owner.finish_replace(replica, recorded);
                        if recorded {
                            Metrics::inc(&node.metrics.wal_replicas_replaced_total);
                            tracing::warn!(stream = owner.stream(), replica, old = %old_addr, new = %new_addr, durable_lsn, "WAL replica replaced");
                        }
                    }
                    None => return, // shutting down: the owner stops with the broker
                }
            }
        }
    }
}

/// Records `set` as the stream's replicas. `Some(false)` only when metadata definitely
/// refused it (a newer epoch: this owner is fenced anyway). An unknown outcome (a timeout, a
/// leader change) is retried until it is known: giving up then could leave metadata naming
/// the new set while the owner goes on counting the old replica. `None` on shutdown.
async fn record_replicas(
    node: &Node,
    owner: &StreamOwner,
    set: Vec<String>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<bool> {
    let stream = owner.stream();
    loop {
        let cmd = Command::Cluster(ClusterCommand::SetStreamReplicas {
            stream,
            epoch: owner.epoch(),
            replicas: set.clone(),
        });
        match node.meta.write(cmd).await {
            Ok(CommandResult::Cluster(ClusterResult::StreamReplicasSet)) => return Some(true),
            Ok(refused) => {
                tracing::warn!(stream, ?refused, "WAL replica set refused by metadata");
                return Some(false);
            }
            Err(err) => {
                let applied = node
                    .meta
                    .read()
                    .cluster()
                    .stream(stream)
                    .is_some_and(|s| s.epoch == owner.epoch() && s.replicas == set);
                if applied {
                    return Some(true);
                }
                tracing::warn!(stream, %err, "recording the WAL replica set failed; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RECORD_RETRY) => {}
            _ = shutdown.changed() => return None,
        }
    }
}

/// Deletes the stream directories this WAL node keeps for streams whose recorded replica set
/// no longer lists it.
///
/// The rule, and why it never deletes the only copy of anything: a set that leaves this node
/// out is recorded only after the node that replaced it held every committed entry, and from
/// then on the owner counts only the new set (see `strata_wal::replication::writer`), so the
/// new set alone holds every acknowledged entry not yet in object storage. Entries only here
/// were never acknowledged. Only streams no owner talked to since this server started are
/// deleted (an idle store), and the server keeps the sealed epoch as a tombstone, so a zombie
/// owner of an older epoch stays fenced here (see `ReplicaServerHandle::drop_stream`).
///
/// Not deleted: the directories of a set's members, even when everything in them is
/// uploaded (the next owner writes there again, and a member's seal is what fences zombies).
pub async fn collect_streams<F>(
    config: NodeConfig,
    read_state: F,
    replica: ReplicaServerHandle,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(&dyn Fn(&MetaState) -> Vec<u64>) -> Vec<u64> + Send + 'static,
{
    if config.wal_quorum.is_none() {
        return;
    }
    let me = config.wal_listen;
    let is_me = |addr: &String| {
        addr.parse::<std::net::SocketAddr>().is_ok_and(|a| a == me) || *addr == me.to_string()
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(GC_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        let held: Vec<u64> = replica.stats().streams.iter().map(|s| s.stream).collect();
        let stale = read_state(&|state: &MetaState| {
            held.iter()
                .copied()
                .filter(|id| state.cluster().stream(*id).is_some())
                .filter(|id| !stream_replicas(&config, *id, state).iter().any(is_me))
                .collect()
        });
        for stream in stale {
            match replica.drop_stream(stream) {
                Ok(true) => tracing::warn!(
                    stream,
                    "deleted a WAL stream directory: this node is no longer one of its replicas"
                ),
                Ok(false) => {}
                Err(err) => {
                    tracing::error!(stream, %err, "cannot delete a stale WAL stream directory")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_meta::ClusterState;

    fn beat(state: &mut MetaState, node_id: u64, wal_addr: &str, now_ms: i64) {
        let cmd = Command::Cluster(ClusterCommand::WalHeartbeat {
            node_id,
            wal_addr: wal_addr.into(),
            lease_ms: 1000,
            now_ms,
        });
        assert!(!matches!(state.apply(&cmd), CommandResult::Rejected(_)));
    }

    fn names(c: &ClusterState, peers: &[&str], current: &[&str], now: i64) -> Vec<String> {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        spare_candidates(&s(peers), &s(current), c, now)
            .into_iter()
            .map(|(a, check)| format!("{a}/{check:?}"))
            .collect()
    }

    /// Registered live WAL nodes come first, dead registered ones never, unregistered peers
    /// last (probed); the current set is never a spare.
    #[test]
    fn spares_are_chosen_by_metadata_liveness_with_a_probe_fallback() {
        let mut state = MetaState::default();
        let peers = [
            "10.0.0.1:1778",
            "10.0.0.2:1778",
            "10.0.0.3:1778",
            "10.0.0.4:1778",
        ];
        let current = ["10.0.0.1:1778"];
        // Nobody registered: every other peer, in order, to be probed.
        assert_eq!(
            names(state.cluster(), &peers, &current, 0),
            [
                "10.0.0.2:1778/Probe",
                "10.0.0.3:1778/Probe",
                "10.0.0.4:1778/Probe"
            ]
        );
        beat(&mut state, 11, "10.0.0.1:1778", 0);
        beat(&mut state, 13, "10.0.0.3:1778", 0);
        beat(&mut state, 14, "10.0.0.4:1778", 5000);
        beat(&mut state, 15, "10.0.0.5:1778", 5000);
        // At 5500: 13 is silent past its lease (left out), 14 and 15 (outside wal.peers) are
        // alive, 2 never registered (probed, last).
        assert_eq!(
            names(state.cluster(), &peers, &current, 5500),
            [
                "10.0.0.4:1778/Registered",
                "10.0.0.5:1778/Registered",
                "10.0.0.2:1778/Probe"
            ]
        );
        // A node in the set is not a spare, however written.
        assert_eq!(
            names(state.cluster(), &peers, &["10.0.0.4:01778"], 5500),
            ["10.0.0.5:1778/Registered", "10.0.0.2:1778/Probe"]
        );
    }
}
