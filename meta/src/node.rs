//! The meta node: the redb store, openraft and the (absent) transport, put together.
//!
//! [`MetaNode::open`] is all a process needs to serve metadata: it opens `dir/meta.redb`,
//! starts raft, forms a single-voter group on a fresh store, and returns once this node leads
//! and its state has caught up with everything committed. A cluster will be the same code
//! with more voters in the membership and the tonic transport in place of
//! [`NoNetwork`].

use crate::error::MetaError;
use crate::network::NoNetwork;
use crate::raft::{MetaRaft, NodeId};
use crate::state::{Command, CommandResult, MetaState};
use crate::store::{open_store, LogStore, StateMachineStore, DB_FILE_NAME};
use openraft::error::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::metrics::WaitError;
use openraft::{BasicNode, Raft, ServerState, SnapshotPolicy};
use parking_lot::{RwLock, RwLockReadGuard};
use redb::Database;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Tuning of one meta node. [`Default`] is what `MetaNode::open` uses.
#[derive(Clone, Debug)]
pub struct MetaConfig {
    /// Build a snapshot once this many entries were applied since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot (so a lagging follower can catch up without
    /// a snapshot transfer); older ones are purged.
    pub snapshot_logs_kept: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How long `open` waits for this node to lead and catch up.
    pub leader_wait_ms: u64,
    /// How long `open` waits for the store file while another holder (for example a node of
    /// this process that is still shutting down) releases it.
    pub store_lock_wait_ms: u64,
    /// How long `shutdown` waits for openraft's background tasks to release the store.
    pub release_wait_ms: u64,
}

impl Default for MetaConfig {
    fn default() -> Self {
        Self {
            snapshot_logs_since_last: 5_000,
            snapshot_logs_kept: 1_000,
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            leader_wait_ms: 10_000,
            store_lock_wait_ms: 5_000,
            release_wait_ms: 5_000,
        }
    }
}

impl MetaConfig {
    fn raft_config(&self) -> Result<openraft::Config, MetaError> {
        openraft::Config {
            cluster_name: "strata-meta".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.snapshot_logs_kept,
            ..Default::default()
        }
        .validate()
        .map_err(|e| MetaError::Config {
            reason: e.to_string(),
        })
    }
}

/// A running metadata node. Cheap to clone; all clones share one raft node.
///
/// Dropping the last clone without [`MetaNode::shutdown`] stops raft in the background (when
/// dropped inside a tokio runtime); call `shutdown` to know when the store is released.
#[derive(Clone)]
pub struct MetaNode {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    raft: MetaRaft,
    state: Arc<RwLock<MetaState>>,
    applied_rx: watch::Receiver<u64>,
    db: Weak<Database>,
    release_wait: Duration,
    shut_down: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.shut_down.load(Ordering::SeqCst) {
            return;
        }
        // Openraft's core task keeps running until told to stop, holding the store open.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let raft = self.raft.clone();
            runtime.spawn(async move {
                let _ = raft.shutdown().await;
            });
        }
    }
}

impl std::fmt::Debug for MetaNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaNode")
            .field("node_id", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}

fn fatal(e: Fatal<NodeId>) -> MetaError {
    match e {
        Fatal::Stopped => MetaError::ShutDown,
        other => MetaError::Raft {
            reason: other.to_string(),
        },
    }
}

fn raft_error<E: std::error::Error>(e: RaftError<NodeId, E>) -> MetaError {
    match e {
        RaftError::Fatal(f) => fatal(f),
        RaftError::APIError(e) => MetaError::Raft {
            reason: e.to_string(),
        },
    }
}

async fn open_store_waiting(
    path: &Path,
    wait: Duration,
) -> Result<(LogStore, StateMachineStore), MetaError> {
    let started = Instant::now();
    loop {
        let path_owned = path.to_owned();
        let opened = tokio::task::spawn_blocking(move || open_store(&path_owned))
            .await
            .map_err(|e| MetaError::Raft {
                reason: format!("meta store open task failed: {e}"),
            })?;
        match opened {
            Err(MetaError::StoreLocked { .. }) if started.elapsed() < wait => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

impl MetaNode {
    /// Opens the redb file under `dir` (creating `dir` if needed), builds the openraft Raft with
    /// node id `node_id`, initializes a single-voter membership if the store is fresh, waits
    /// until this node is leader and has applied everything committed (bounded, 10 s), and
    /// returns. Reopening after a crash recovers every committed command: openraft re-applies
    /// the committed entries after the last snapshot.
    ///
    /// Needs a tokio runtime with timers (any flavour; the broker's multi-threaded one is
    /// fine). Store IO runs on tokio's blocking pool.
    pub async fn open(dir: &Path, node_id: u64) -> Result<MetaNode, MetaError> {
        Self::open_with(dir, node_id, MetaConfig::default()).await
    }

    /// [`MetaNode::open`] with explicit tuning.
    pub async fn open_with(
        dir: &Path,
        node_id: u64,
        config: MetaConfig,
    ) -> Result<MetaNode, MetaError> {
        let raft_config = Arc::new(config.raft_config()?);
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| MetaError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        let path = dir.join(DB_FILE_NAME);
        let (log, sm) =
            open_store_waiting(&path, Duration::from_millis(config.store_lock_wait_ms)).await?;
        log.bind_node_id(node_id)?;
        let state = sm.state();
        let applied_rx = sm.subscribe();
        let db = log.database();
        let raft = Raft::new(node_id, raft_config, NoNetwork, log, sm)
            .await
            .map_err(fatal)?;
        let node = MetaNode {
            inner: Arc::new(Inner {
                node_id,
                raft,
                state,
                applied_rx,
                db,
                release_wait: Duration::from_millis(config.release_wait_ms),
                shut_down: AtomicBool::new(false),
            }),
        };
        if let Err(e) = node
            .lead(Duration::from_millis(config.leader_wait_ms))
            .await
        {
            let _ = node.shutdown().await;
            return Err(e);
        }
        tracing::info!(
            node_id,
            dir = %dir.display(),
            last_applied = node.read().last_applied(),
            "meta node is leader"
        );
        Ok(node)
    }

    async fn lead(&self, wait: Duration) -> Result<(), MetaError> {
        let raft = &self.inner.raft;
        let node_id = self.inner.node_id;
        if !raft.is_initialized().await.map_err(fatal)? {
            let members = BTreeMap::from([(node_id, BasicNode::default())]);
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(raft_error(e)),
            }
        }
        let lone_follower = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            m.state != ServerState::Leader && voters == [node_id]
        };
        if lone_follower {
            // The only voter need not sit out an election timeout after a restart.
            raft.trigger().elect().await.map_err(fatal)?;
        }
        raft.wait(Some(wait))
            .current_leader(node_id, "meta node open")
            .await
            .map_err(|e| match e {
                WaitError::Timeout(..) => MetaError::NoLeader {
                    node_id,
                    waited_ms: wait.as_millis() as u64,
                },
                WaitError::ShuttingDown => MetaError::ShutDown,
            })?;
        // Wait until everything committed, in earlier lives included, is applied: from here on
        // `read` reflects every acknowledged write.
        raft.ensure_linearizable()
            .await
            .map_err(|e| match e.forward_to_leader::<BasicNode>() {
                Some(f) => MetaError::NotLeader {
                    leader: f.leader_id,
                },
                None => raft_error(e),
            })?;
        Ok(())
    }

    /// Proposes a command through raft and returns the state machine's result once applied
    /// (and therefore visible through [`MetaNode::read`]).
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        match self.inner.raft.client_write(cmd).await {
            Ok(response) => response.data.result.ok_or_else(|| MetaError::Raft {
                reason: "a command was applied without a result".into(),
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(MetaError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(e) => Err(raft_error(e)),
        }
    }

    /// Local read view of the applied state (no raft round trip).
    ///
    /// The guard blocks the state machine while held: take it, read, drop it. It cannot be
    /// held across `.await` in a `Send` future (the guard is not `Send`).
    pub fn read(&self) -> RwLockReadGuard<'_, MetaState> {
        self.inner.state.read()
    }

    /// Fires when the applied state changes (value: last applied log index).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied_rx.clone()
    }

    /// This node's id in the metadata group.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The openraft handle, for metrics and (later) membership changes.
    pub fn raft(&self) -> &MetaRaft {
        &self.inner.raft
    }

    /// Stops raft and waits (bounded) until the store file is released, so that it can be
    /// opened again in this process. Later calls to [`MetaNode::write`] fail with
    /// [`MetaError::ShutDown`]. Calling it twice is harmless.
    pub async fn shutdown(&self) -> Result<(), MetaError> {
        if !self.inner.shut_down.swap(true, Ordering::SeqCst) {
            self.inner
                .raft
                .shutdown()
                .await
                .map_err(|e| MetaError::Raft {
                    reason: format!("meta raft core did not stop cleanly: {e}"),
                })?;
        }
        // The state-machine task, and a snapshot build in flight, let go of the store shortly
        // after the core stops.
        let started = Instant::now();
        while self.inner.db.strong_count() > 0 {
            if started.elapsed() >= self.inner.release_wait {
                tracing::warn!(
                    node_id = self.inner.node_id,
                    "meta store is still in use after shutdown"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}
