//! Disaster recovery: the metadata-side half of backups and `strata meta restore`.
//!
//! The broker crate uploads snapshots of [`MetaState`] and the applied commands after them
//! to object storage (`broker/src/meta_backup.rs`, which owns the object layout and byte
//! format; this crate knows nothing of object storage). Restoring runs here:
//!
//! 1. [`replay`] applies the logged commands after the snapshot, in log order, to the state
//!    decoded from the snapshot;
//! 2. [`prepare_for_restore`] makes the state fit a new cluster whose WAL is gone: every
//!    broker is dead and every WAL stream is free, so nothing waits for the recovery of a WAL
//!    tail that no longer exists, and the leases are reassigned (epoch + 1) when brokers
//!    register again;
//! 3. [`create_store`] writes a fresh redb store holding that state as its snapshot, with a
//!    membership of one voter (the restoring node).
//!
//! What a restore loses, by design: records that were acknowledged but only in a WAL tail
//! (not yet uploaded and committed to the index), and the commands applied after the last
//! log batch that reached object storage. Everything the object index references is served.

use crate::cluster::ClusterCommand;
use crate::error::MetaError;
use crate::state::{Command, CommandResult, MetaState};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Applies one logged command at raft log index `index` (blank and membership entries carry
/// no command and only move the applied index). Entries at or below the state's applied index
/// are skipped: they are already in it. Returns whether the entry was applied.
pub fn replay(state: &mut MetaState, index: u64, command: Option<&Command>) -> bool {
    if index <= state.last_applied() {
        return false;
    }
    if let Some(cmd) = command {
        if let CommandResult::Rejected(why) = state.apply(cmd) {
            // The same rejection happened on the live cluster: the log is the log.
            tracing::debug!(index, %why, "replayed meta command was rejected, as it was live");
        }
    }
    state.set_last_applied(index);
    true
}

/// What [`prepare_for_restore`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    /// Brokers that were alive in the backup and are now dead (their leases move to whoever
    /// registers first).
    pub brokers_expired: Vec<u64>,
    /// WAL streams that were held (by a broker or a recovery) and are now free.
    pub streams_released: Vec<u64>,
}

/// Makes a restored state fit a cluster that starts from nothing but object storage: every
/// broker is expired and every WAL stream released, through the state machine's own commands
/// (so the rules that keep leases consistent apply). Afterwards no lease is pending on a
/// stream, and every partition gets a live leader (epoch + 1) when a broker registers.
pub fn prepare_for_restore(state: &mut MetaState) -> Prepared {
    let alive: Vec<u64> = state
        .cluster()
        .brokers()
        .filter(|b| b.alive)
        .map(|b| b.node_id)
        .collect();
    // `by` is the proposer, never expired by its own command: 0 is no node's id. A time far
    // past every heartbeat expires every alive broker.
    let expire = Command::Cluster(ClusterCommand::ExpireBrokers {
        by: 0,
        now_ms: i64::MAX,
    });
    if let CommandResult::Rejected(why) = state.apply(&expire) {
        tracing::warn!(%why, "expiring the restored brokers was refused");
    }
    let held: Vec<(u64, u64, u64)> = state
        .cluster()
        .streams()
        .filter(|(_, s)| s.holder.is_some())
        .map(|(id, s)| (id, s.epoch, s.settled_lsn))
        .collect();
    let mut released = Vec::new();
    for (stream, epoch, settled_lsn) in held {
        let release = Command::Cluster(ClusterCommand::ReleaseStream {
            stream,
            epoch,
            settled_lsn,
        });
        match state.apply(&release) {
            CommandResult::Rejected(why) => {
                tracing::warn!(stream, %why, "releasing a restored WAL stream was refused")
            }
            _ => released.push(stream),
        }
    }
    Prepared {
        brokers_expired: alive,
        streams_released: released,
    }
}

/// Counts of what a state holds, for the restore report.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub topics: usize,
    pub partitions: u64,
    /// Distinct objects the index references.
    pub objects: usize,
    /// Index blocks over all partitions.
    pub blocks: usize,
    /// Consumer groups with committed offsets.
    pub groups: usize,
    pub brokers: usize,
    pub last_applied: u64,
}

/// Walks the state once (O(index blocks)).
pub fn summarize(state: &MetaState) -> Summary {
    let mut objects = BTreeSet::new();
    let mut blocks = 0;
    let mut partitions = 0u64;
    for topic in state.topics() {
        partitions += u64::from(topic.partitions);
        for p in 0..topic.partitions {
            for b in state.blocks(topic.id, p) {
                blocks += 1;
                objects.insert(b.key.as_str());
            }
        }
    }
    Summary {
        topics: state.topics().count(),
        partitions,
        objects: objects.len(),
        blocks,
        groups: state.offset_groups().count(),
        brokers: state.cluster().brokers().count(),
        last_applied: state.last_applied(),
    }
}

/// Writes a fresh metadata store under `meta_dir` (the node's `meta.dir`) holding `state` as
/// its snapshot at `state.last_applied()`, with `node_id` as the only voter. Creates the
/// directory. Refuses ([`MetaError::StoreExists`]) when a store is already there. Returns the
/// path of the store file.
pub fn create_store(
    meta_dir: &Path,
    node_id: u64,
    state: &MetaState,
) -> Result<PathBuf, MetaError> {
    let path = meta_dir.join(crate::store::DB_FILE_NAME);
    if path.exists() {
        return Err(MetaError::StoreExists { path });
    }
    std::fs::create_dir_all(meta_dir).map_err(|source| MetaError::CreateDir {
        path: meta_dir.to_owned(),
        source,
    })?;
    crate::store::create_restored(&path, node_id, state, state.last_applied())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterCommand;
    use std::collections::BTreeMap;
    use strata_types::{TopicId, TopicName};

    fn register(node_id: u64, now_ms: i64) -> Command {
        Command::Cluster(ClusterCommand::RegisterBroker {
            node_id,
            kafka_addr: format!("127.0.0.1:{}", 9000 + node_id),
            rack: None,
            lease_ms: 6000,
            now_ms,
            cluster_id: None,
            auth_secret: None,
            peer_addr: None,
        })
    }

    fn state_with_two_brokers() -> (MetaState, TopicId) {
        let mut state = MetaState::default();
        let topic = TopicId(uuid::Uuid::from_u128(7));
        let cmds = [
            register(1, 1000),
            register(2, 1000),
            Command::CreateTopic {
                name: TopicName::new("orders").unwrap(),
                id: topic,
                partitions: 4,
                configs: BTreeMap::new(),
                created_ms: 1000,
            },
        ];
        for (i, cmd) in cmds.iter().enumerate() {
            assert!(replay(&mut state, i as u64 + 1, Some(cmd)));
        }
        (state, topic)
    }

    #[test]
    fn replay_skips_what_the_state_has() {
        let (mut state, _) = state_with_two_brokers();
        assert_eq!(state.last_applied(), 3);
        assert!(!replay(&mut state, 3, Some(&register(9, 5))));
        assert!(state.cluster().broker(9).is_none());
        assert!(replay(&mut state, 4, None), "a blank entry moves the index");
        assert_eq!(state.last_applied(), 4);
    }

    #[test]
    fn restore_frees_every_stream_and_lease() {
        let (mut state, topic) = state_with_two_brokers();
        let prepared = prepare_for_restore(&mut state);
        assert_eq!(prepared.brokers_expired, vec![1, 2]);
        assert_eq!(prepared.streams_released, vec![1, 2]);
        assert!(state.cluster().brokers().all(|b| !b.alive));
        assert!(state.cluster().streams().all(|(_, s)| s.holder.is_none()));
        let epochs: Vec<i32> = (0..4)
            .map(|p| {
                let lease = state.cluster().lease(topic, p).unwrap();
                assert_eq!(lease.pending_stream, None);
                lease.epoch
            })
            .collect();
        state.check_invariants().unwrap();
        // The first broker to register leads everything, at a new epoch.
        assert!(replay(&mut state, 10, Some(&register(1, 2000))));
        for p in 0..4u32 {
            assert_eq!(state.cluster().live_leader(topic, p), Some(1));
            let lease = state.cluster().lease(topic, p).unwrap();
            assert!(lease.epoch > epochs[p as usize]);
            assert_eq!(lease.pending_stream, None);
        }
        let s = state.cluster().stream(1).unwrap();
        assert_eq!(s.holder, Some(1));
    }

    #[test]
    fn a_restored_store_opens_as_a_leader_with_the_state() {
        let (mut state, _) = state_with_two_brokers();
        prepare_for_restore(&mut state);
        let dir = tempfile::tempdir().unwrap();
        let meta_dir = dir.path().join("meta");
        let path = create_store(&meta_dir, 5, &state).unwrap();
        assert!(matches!(
            create_store(&meta_dir, 5, &state),
            Err(MetaError::StoreExists { path: p }) if p == path
        ));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let node = crate::MetaNode::open(&meta_dir, 5).await.unwrap();
            assert!(node.read().topic("orders").is_some());
            assert!(node.read().last_applied() >= 3);
            let mut feed = node.subscribe_applied();
            let before = node.read().last_applied();
            node.write(register(5, 3000)).await.unwrap();
            assert!(node.read().cluster().broker(5).unwrap().alive);
            // The feed carries the applied entry, right after what the state had.
            let entry = feed.recv().await.unwrap();
            assert_eq!(entry.index, before + 1);
            assert_eq!(entry.command.as_deref(), Some(&register(5, 3000)));
            assert_eq!(
                node.membership().voters.keys().copied().collect::<Vec<_>>(),
                [5]
            );
            node.shutdown().await.unwrap();
        });
    }
}
