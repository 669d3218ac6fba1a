//! The meta node: the redb store, openraft and the gRPC transport, put together.
//!
//! [`MetaNode::open`] runs a group of one: it opens `dir/meta.redb`, starts raft, forms a
//! single-voter group on a fresh store, and returns once this node leads and its state has
//! caught up with everything committed. It serves no network API.
//!
//! [`MetaNode::open_cluster`] runs one member of a group of several. It also serves the meta
//! gRPC API (see [`crate::grpc`]) on its listener, and on a fresh store the node with the
//! lowest id among the initial peers forms the group with all of them as voters; the others
//! wait to hear from a leader. Both differ only in that start-up: membership is data in the
//! raft log, so a store formed by `open` can later be opened with `open_cluster` (it then
//! records its address) and grown with [`MetaNode::add_learner`] and
//! [`MetaNode::change_membership`].
//!
//! # Where calls run
//!
//! - [`MetaNode::read`] is local: the state this node has applied, no network.
//! - [`MetaNode::write`], [`MetaNode::sync`], [`MetaNode::add_learner`] and
//!   [`MetaNode::change_membership`] must run on the leader. On the leader they run locally;
//!   elsewhere they are forwarded to the leader over the `Meta` gRPC service, following leader
//!   changes until [`MetaConfig::leader_wait_ms`] runs out. A forwarded write returns once this
//!   node has applied it too, so a caller always reads its own writes, wherever it writes.

use crate::error::{fatal, raft_error, MetaError};
use crate::grpc::{self, MetaGrpc, Server, SNAPSHOT_CHUNK_BYTES_MAX};
use crate::leader::{self, Attempt, LeaderHint, MembershipView};
use crate::network::{CallError, GrpcNetwork, Peers};
use crate::raft::{MetaRaft, NodeId};
use crate::state::{Command, CommandResult, MetaState};
use crate::store::{open_store, LogStore, StateMachineStore, DB_FILE_NAME};
use openraft::error::InitializeError;
use openraft::error::RaftError;
use openraft::metrics::WaitError;
use openraft::{BasicNode, Raft, ServerState, SnapshotPolicy};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use redb::Database;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// First and largest pause between two tries of a call the leader refused or could not be
/// reached for (during an election).
const LEADER_RETRY_MS_MIN: u64 = 20;
const LEADER_RETRY_MS_MAX: u64 = 500;

/// Tuning of one meta node. [`Default`] is what `MetaNode::open` and `MetaNode::open_cluster`
/// use.
#[derive(Clone, Debug)]
pub struct MetaConfig {
    /// Build a snapshot once this many entries were applied since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot (so a lagging follower can catch up without
    /// a snapshot transfer); older ones are purged.
    pub snapshot_logs_kept: u64,
    /// How often the leader sends heartbeats. With openraft 0.9 this is also the timeout of
    /// one AppendEntries RPC, so it must exceed a follower's append (an fsync) comfortably.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears no leader for a random time in this range starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How long `open` waits for this node to lead and catch up; how long `open_cluster` and
    /// every call that must run on the leader wait for a leader to be known and reachable.
    pub leader_wait_ms: u64,
    /// How long `open` waits for the store file while another holder (for example a node of
    /// this process that is still shutting down) releases it.
    pub store_lock_wait_ms: u64,
    /// How long `shutdown` waits for openraft's background tasks to release the store (and for
    /// gRPC calls in flight to finish).
    pub release_wait_ms: u64,
    /// Timeout of one meta RPC that is not a heartbeat: a forwarded call, a snapshot chunk. Also
    /// how long a forwarded write waits for this node to apply it.
    pub rpc_timeout_ms: u64,
    /// How long `add_learner` waits for the new learner to catch up with the leader's log.
    pub learner_catch_up_wait_ms: u64,
}

impl Default for MetaConfig {
    fn default() -> Self {
        Self {
            snapshot_logs_since_last: 5_000,
            snapshot_logs_kept: 1_000,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
            leader_wait_ms: 10_000,
            store_lock_wait_ms: 5_000,
            release_wait_ms: 5_000,
            rpc_timeout_ms: 10_000,
            learner_catch_up_wait_ms: 30_000,
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
            install_snapshot_timeout: self.rpc_timeout_ms,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES_MAX,
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

/// How a member of a multi-node group serves and whom it starts with; see
/// [`MetaNode::open_cluster_with`].
#[derive(Debug)]
pub struct ClusterConfig {
    /// The bound listener of this node's gRPC API.
    pub listener: tokio::net::TcpListener,
    /// The initial voters with the addresses (`host:port`) of their gRPC listeners. Used when
    /// the group is formed, on fresh stores; afterwards the membership in the raft log is the
    /// truth. A node that will join an existing group later (through
    /// [`MetaNode::add_learner`]) is not in this list.
    pub peers: Vec<(NodeId, String)>,
    /// Other gRPC services to serve on the same listener (the admin/control API).
    pub routes: tonic::service::Routes,
}

/// Checks a list of initial voters; the error names the offending peer.
fn validate_peers(peers: &[(NodeId, String)]) -> Result<(), MetaError> {
    let mut ids = BTreeSet::new();
    for (id, addr) in peers {
        if !ids.insert(*id) {
            return Err(MetaError::Config {
                reason: format!("meta peer {id} is listed twice"),
            });
        }
        if addr.trim().is_empty() {
            return Err(MetaError::Config {
                reason: format!("meta peer {id} has no address"),
            });
        }
        crate::network::endpoint(addr)?;
    }
    Ok(())
}

/// A running metadata node. Cheap to clone; all clones share one raft node.
///
/// Dropping the last clone without [`MetaNode::shutdown`] stops raft and the gRPC server in
/// the background (when dropped inside a tokio runtime); call `shutdown` to know when the
/// store is released.
#[derive(Clone)]
pub struct MetaNode {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    raft: MetaRaft,
    state: Arc<RwLock<MetaState>>,
    applied_rx: watch::Receiver<u64>,
    feed: tokio::sync::broadcast::Sender<crate::store::AppliedEntry>,
    /// A reader of the raft log, for Follow streams.
    log: crate::store::WeakLogReader,
    db: Weak<Database>,
    peers: Peers,
    /// `None` for a node opened with `open`, or once shut down.
    server: Mutex<Option<Server>>,
    grpc_addr: Option<SocketAddr>,
    leader_wait: Duration,
    rpc_timeout: Duration,
    learner_wait: Duration,
    release_wait: Duration,
    shut_down: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.shut_down.load(Ordering::SeqCst) {
            return;
        }
        // Openraft's core task keeps running until told to stop, holding the store open. (The
        // gRPC server stops by itself when its handle, dropped with `self`, goes.)
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
            .field("grpc_addr", &self.inner.grpc_addr)
            .finish_non_exhaustive()
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

fn wait_error(node_id: NodeId, wait: Duration) -> impl Fn(WaitError) -> MetaError {
    move |e| match e {
        WaitError::Timeout(..) => MetaError::NoLeader {
            node_id,
            waited_ms: wait.as_millis() as u64,
        },
        WaitError::ShuttingDown => MetaError::ShutDown,
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
        let node = Self::start(dir, node_id, &config, None).await?;
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

    /// Opens one member of a multi-node group: binds `listen_addr`, serves the meta gRPC API
    /// there, and joins the group whose initial voters are `peers` (`(node id, host:port)`,
    /// this node included). See [`MetaNode::open_cluster_with`].
    pub async fn open_cluster(
        dir: &Path,
        node_id: u64,
        listen_addr: SocketAddr,
        peers: &[(u64, String)],
    ) -> Result<MetaNode, MetaError> {
        let listener = tokio::net::TcpListener::bind(listen_addr)
            .await
            .map_err(|source| MetaError::Listen {
                addr: listen_addr.to_string(),
                source,
            })?;
        let cluster = ClusterConfig {
            listener,
            peers: peers.to_vec(),
            routes: Default::default(),
        };
        Self::open_cluster_with(dir, node_id, cluster, MetaConfig::default()).await
    }

    /// Opens one member of a multi-node group.
    ///
    /// Serves the meta gRPC API (and `cluster.routes`) on `cluster.listener`, then:
    ///
    /// - on a fresh store, if this node has the lowest id in `cluster.peers`, forms the group
    ///   with every peer as a voter; the other peers wait to hear from the leader;
    /// - on a fresh store of a node that is not in `cluster.peers`, returns at once: the node
    ///   waits to be added with [`MetaNode::add_learner`] (its calls fail with
    ///   [`MetaError::NoLeader`] until then);
    /// - otherwise (a restart) rejoins the group recorded in the store.
    ///
    /// A member returns once a leader is known and this node has applied everything the group
    /// committed before ([`MetaNode::sync`]), bounded by [`MetaConfig::leader_wait_ms`]. If the
    /// membership records another address for this node than `cluster.peers` (a store formed
    /// by [`MetaNode::open`]), the leader records the new one.
    ///
    /// A node whose store was lost must not come back with a fresh store under its old id and
    /// the lowest id: it would form a second group. Remove it and add it under a new id.
    pub async fn open_cluster_with(
        dir: &Path,
        node_id: u64,
        cluster: ClusterConfig,
        config: MetaConfig,
    ) -> Result<MetaNode, MetaError> {
        validate_peers(&cluster.peers)?;
        let ClusterConfig {
            listener,
            peers,
            routes,
        } = cluster;
        let node = Self::start(dir, node_id, &config, Some((listener, routes))).await?;
        tokio::spawn(leader::log_role_changes(node_id, node.inner.raft.metrics()));
        match node.join(&peers).await {
            Ok(()) => Ok(node),
            Err(e) => {
                let _ = node.shutdown().await;
                Err(e)
            }
        }
    }

    async fn start(
        dir: &Path,
        node_id: u64,
        config: &MetaConfig,
        serve: Option<(tokio::net::TcpListener, tonic::service::Routes)>,
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
        let feed = sm.applied_feed();
        let db = log.database();
        let log_reader = log.weak_reader();
        let peers = Peers::default();
        let network = GrpcNetwork::new(node_id, peers.clone());
        let raft = Raft::new(node_id, raft_config, network, log, sm)
            .await
            .map_err(fatal)?;
        let learner_wait = Duration::from_millis(config.learner_catch_up_wait_ms);
        let server = match serve {
            Some((listener, routes)) => {
                let grpc = MetaGrpc::new(
                    raft.clone(),
                    learner_wait,
                    state.clone(),
                    applied_rx.clone(),
                    log_reader.clone(),
                    feed.clone(),
                );
                match Server::spawn(listener, grpc, routes) {
                    Ok(server) => Some(server),
                    Err(e) => {
                        let _ = raft.shutdown().await;
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        Ok(MetaNode {
            inner: Arc::new(Inner {
                node_id,
                raft,
                state,
                applied_rx,
                feed,
                log: log_reader,
                db,
                peers,
                grpc_addr: server.as_ref().map(Server::local_addr),
                server: Mutex::new(server),
                leader_wait: Duration::from_millis(config.leader_wait_ms),
                rpc_timeout: Duration::from_millis(config.rpc_timeout_ms),
                learner_wait,
                release_wait: Duration::from_millis(config.release_wait_ms),
                shut_down: AtomicBool::new(false),
            }),
        })
    }

    /// The start-up of a group of one.
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
        self.elect_if_alone().await?;
        raft.wait(Some(wait))
            .current_leader(node_id, "meta node open")
            .await
            .map_err(wait_error(node_id, wait))?;
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

    /// The only voter need not sit out an election timeout after a restart.
    async fn elect_if_alone(&self) -> Result<(), MetaError> {
        let raft = &self.inner.raft;
        let lone_follower = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            m.state != ServerState::Leader && voters == [self.inner.node_id]
        };
        if lone_follower {
            raft.trigger().elect().await.map_err(fatal)?;
        }
        Ok(())
    }

    /// The start-up of a member of a group of several.
    async fn join(&self, peers: &[(NodeId, String)]) -> Result<(), MetaError> {
        let raft = &self.inner.raft;
        let node_id = self.inner.node_id;
        let my_addr = peers
            .iter()
            .find(|(id, _)| *id == node_id)
            .map(|(_, addr)| addr.clone());
        if !raft.is_initialized().await.map_err(fatal)? {
            if my_addr.is_none() {
                tracing::info!(
                    node_id,
                    grpc_addr = ?self.inner.grpc_addr,
                    "meta node is waiting to be added to a group"
                );
                return Ok(());
            }
            if peers.iter().map(|(id, _)| *id).min() == Some(node_id) {
                let members: BTreeMap<NodeId, BasicNode> = peers
                    .iter()
                    .map(|(id, addr)| (*id, BasicNode::new(addr)))
                    .collect();
                tracing::info!(node_id, ?peers, "forming the meta group");
                match raft.initialize(members).await {
                    Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                    Err(e) => return Err(raft_error(e)),
                }
            }
        } else {
            self.elect_if_alone().await?;
        }
        self.sync().await?;
        if let Some(addr) = my_addr {
            let recorded = self.membership();
            let known = recorded
                .voters
                .get(&node_id)
                .or_else(|| recorded.learners.get(&node_id));
            if known.is_some_and(|known| *known != addr) {
                self.record_address(addr).await?;
            }
        }
        tracing::info!(
            node_id,
            grpc_addr = ?self.inner.grpc_addr,
            leader = ?self.leader(),
            last_applied = self.read().last_applied(),
            "meta node joined its group"
        );
        Ok(())
    }

    /// Records this node's new address in the membership (a store formed by `open` has none).
    /// Only a leader does it for itself. A follower that moved is only reported: the leader
    /// cannot reach it at its old address, so the change has to be made on the leader's side
    /// (a later CLI command).
    async fn record_address(&self, addr: String) -> Result<(), MetaError> {
        let node_id = self.inner.node_id;
        if !self.is_leader() {
            tracing::warn!(
                node_id,
                %addr,
                recorded = ?self.membership(),
                "this meta node's address differs from the one in its membership"
            );
            return Ok(());
        }
        tracing::info!(node_id, %addr, "recording this meta node's new address");
        let nodes = BTreeMap::from([(node_id, addr)]);
        match leader::set_addresses(&self.inner.raft, nodes).await? {
            Attempt::Done(_) => Ok(()),
            Attempt::NotLeader(_) => {
                tracing::warn!(
                    node_id,
                    "lost the lead before recording this node's address"
                );
                Ok(())
            }
        }
    }

    /// Runs a call on the leader: here if this node leads, else forwarded over gRPC. Follows
    /// leader changes (refusals with a hint, peers that cannot be reached) with a growing pause,
    /// until a leader answers or [`MetaConfig::leader_wait_ms`] has passed. Answers the outcome
    /// and whether it came from another node.
    async fn on_leader<T, L, LF, R, RF>(&self, local: L, remote: R) -> Result<(T, bool), MetaError>
    where
        L: Fn() -> LF,
        LF: Future<Output = Result<Attempt<T>, MetaError>>,
        R: Fn(NodeId, String) -> RF,
        RF: Future<Output = Result<Attempt<T>, CallError>>,
    {
        let inner = &self.inner;
        let started = Instant::now();
        let mut pause = Duration::from_millis(LEADER_RETRY_MS_MIN);
        let mut hint: Option<(NodeId, String)> = None;
        loop {
            if inner.shut_down.load(Ordering::SeqCst) {
                return Err(MetaError::ShutDown);
            }
            let (leader, addr) = match hint.take() {
                Some(target) => target,
                None => self.known_leader(started).await?,
            };
            let attempt = if leader == inner.node_id {
                local().await?
            } else {
                match remote(leader, addr).await {
                    Ok(attempt) => attempt,
                    Err(CallError::NotSent(reason)) => {
                        tracing::debug!(leader, %reason, "meta leader not reachable; retrying");
                        Attempt::NotLeader(LeaderHint::default())
                    }
                    Err(CallError::Failed(e)) => return Err(e),
                }
            };
            match attempt {
                Attempt::Done(value) => return Ok((value, leader != inner.node_id)),
                Attempt::NotLeader(h) => {
                    if started.elapsed() >= inner.leader_wait {
                        return Err(MetaError::NoLeader {
                            node_id: inner.node_id,
                            waited_ms: inner.leader_wait.as_millis() as u64,
                        });
                    }
                    hint = match (h.id, h.addr) {
                        (Some(id), _) if id == inner.node_id => Some((id, String::new())),
                        (Some(id), Some(addr)) if id != leader => Some((id, addr)),
                        _ => None,
                    };
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(LEADER_RETRY_MS_MAX));
                }
            }
        }
    }

    /// The leader this node knows of and its address, waiting (until `started` +
    /// `leader_wait`) for one to be known.
    async fn known_leader(&self, started: Instant) -> Result<(NodeId, String), MetaError> {
        let inner = &self.inner;
        let wait = inner.leader_wait.saturating_sub(started.elapsed());
        // A leader with an address: a fresh member hears of the leader (a vote, a heartbeat)
        // before the membership entry that records its address reaches it.
        let metrics = inner
            .raft
            .wait(Some(wait))
            .metrics(
                |m| {
                    m.current_leader.is_some_and(|l| {
                        l == inner.node_id
                            || m.membership_config
                                .membership()
                                .get_node(&l)
                                .is_some_and(|n| !n.addr.is_empty())
                            || m.membership_config.membership().voter_ids().count() == 1
                    })
                },
                "a meta leader with an address is known",
            )
            .await
            .map_err(wait_error(inner.node_id, inner.leader_wait))?;
        let Some(leader) = metrics.current_leader else {
            return Err(MetaError::NoLeader {
                node_id: inner.node_id,
                waited_ms: inner.leader_wait.as_millis() as u64,
            });
        };
        if leader == inner.node_id {
            return Ok((leader, String::new()));
        }
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        if addr.is_empty() {
            // A group formed by `open` records no addresses: nowhere to forward to.
            return Err(MetaError::NotLeader {
                leader: Some(leader),
            });
        }
        Ok((leader, addr))
    }

    /// Waits until this node has applied the entry at `log_index`.
    async fn wait_applied(&self, log_index: u64) -> Result<(), MetaError> {
        let mut applied = self.inner.applied_rx.clone();
        let wait = self.inner.rpc_timeout;
        let reached = async { applied.wait_for(|&a| a >= log_index).await.map(|_| ()) };
        let result = match tokio::time::timeout(wait, reached).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(MetaError::ShutDown),
            Err(_) => Err(MetaError::ApplyLagging {
                log_index,
                waited_ms: wait.as_millis() as u64,
            }),
        };
        result
    }

    /// Proposes a command through raft and returns the state machine's result once applied
    /// (and therefore visible through [`MetaNode::read`] on this node). On a node that does
    /// not lead, the command is forwarded to the leader.
    ///
    /// A retryable error other than [`MetaError::ForwardFailed`] means the command was not
    /// applied. After `ForwardFailed` it may have been.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        let request = grpc::write_request(&cmd)?;
        let raft = &self.inner.raft;
        let (written, forwarded) = self
            .on_leader(
                || leader::write(raft, cmd.clone()),
                |id, addr| {
                    self.inner
                        .peers
                        .write(id, addr, request.clone(), self.inner.rpc_timeout)
                },
            )
            .await?;
        if forwarded {
            self.wait_applied(written.log_index).await?;
        }
        Ok(written.result)
    }

    /// Waits until [`MetaNode::read`] on this node shows every write acknowledged anywhere in
    /// the group before the call (a linearizable read point: the leader confirms its
    /// leadership with a quorum and names its commit index; this node applies up to it).
    pub async fn sync(&self) -> Result<(), MetaError> {
        let raft = &self.inner.raft;
        let started = Instant::now();
        let mut pause = Duration::from_millis(LEADER_RETRY_MS_MIN);
        // A read point has no side effect, so a refusal that may pass (a leader that has not
        // heard from a quorum yet, typically while the group's members are still starting) is
        // retried until `leader_wait`; writes are not retried this way.
        let (read_index, forwarded) = loop {
            let attempt = self
                .on_leader(
                    || leader::read_index(raft),
                    |id, addr| {
                        self.inner
                            .peers
                            .read_index(id, addr, self.inner.rpc_timeout)
                    },
                )
                .await;
            match attempt {
                Ok(found) => break found,
                Err(e) if e.is_retryable() && started.elapsed() < self.inner.leader_wait => {
                    tracing::debug!(error = %e, "meta read point refused for now; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(LEADER_RETRY_MS_MAX));
                }
                Err(e) => return Err(e),
            }
        };
        if forwarded {
            self.wait_applied(read_index).await?;
        }
        Ok(())
    }

    /// Adds node `node_id`, whose gRPC listener is at `addr` (`host:port`), as a learner: it
    /// receives the log but does not vote. Returns once the learner has caught up with the
    /// leader's log (bounded by [`MetaConfig::learner_catch_up_wait_ms`], else
    /// [`MetaError::LearnerLagging`]; adding it again is harmless). Make it a voter with
    /// [`MetaNode::change_membership`].
    pub async fn add_learner(
        &self,
        node_id: NodeId,
        addr: impl Into<String>,
    ) -> Result<MembershipView, MetaError> {
        let addr = addr.into();
        if addr.trim().is_empty() {
            return Err(MetaError::Config {
                reason: format!("meta node {node_id} needs an address to be added"),
            });
        }
        crate::network::endpoint(&addr)?;
        let raft = &self.inner.raft;
        let timeout = self.inner.learner_wait + self.inner.rpc_timeout;
        let (view, _) = self
            .on_leader(
                || leader::add_learner(raft, node_id, addr.clone(), self.inner.learner_wait),
                |id, leader_addr| {
                    self.inner
                        .peers
                        .add_learner(id, leader_addr, (node_id, addr.clone()), timeout)
                },
            )
            .await?;
        Ok(view)
    }

    /// Makes `voters` the voter set. Every id must already be a member (a learner, to add a
    /// voter). Voters that leave the set stay as learners if `retain`, else they leave the
    /// group; a leader that leaves steps down once the change is committed. Returns the new
    /// membership once committed.
    pub async fn change_membership(
        &self,
        voters: impl IntoIterator<Item = NodeId>,
        retain: bool,
    ) -> Result<MembershipView, MetaError> {
        let voters: BTreeSet<NodeId> = voters.into_iter().collect();
        if voters.is_empty() {
            return Err(MetaError::Config {
                reason: "a meta group needs at least one voter".into(),
            });
        }
        let raft = &self.inner.raft;
        let (view, _) = self
            .on_leader(
                || leader::change_membership(raft, voters.clone(), retain),
                |id, addr| {
                    self.inner.peers.change_membership(
                        id,
                        addr,
                        voters.clone(),
                        retain,
                        self.inner.rpc_timeout,
                    )
                },
            )
            .await?;
        Ok(view)
    }

    /// Removes voter `node_id` from the group in two membership changes: it is demoted to a
    /// learner (so it hears that it no longer votes and stops campaigning), then removed as a
    /// learner (so the leader stops sending it the log). The voter set is read after a
    /// [`MetaNode::sync`]; a change already in flight, an id that is not a voter and the last
    /// voter are refused with [`MetaError::Membership`]. Returns the final membership.
    pub async fn remove_voter(&self, node_id: NodeId) -> Result<MembershipView, MetaError> {
        self.sync().await?;
        let view = self.membership();
        let refused = |reason: String| MetaError::Membership {
            reason,
            retryable: false,
        };
        if view.joint {
            return Err(MetaError::Membership {
                reason: "another membership change is in flight".into(),
                retryable: true,
            });
        }
        if !view.voters.contains_key(&node_id) {
            return Err(refused(format!("node {node_id} is not a meta voter")));
        }
        if view.voters.len() == 1 {
            return Err(refused(format!(
                "node {node_id} is the only meta voter; a meta group needs one"
            )));
        }
        let remaining: BTreeSet<NodeId> = view
            .voters
            .keys()
            .copied()
            .filter(|id| *id != node_id)
            .collect();
        self.change_membership(remaining, true).await?;
        self.remove_learners([node_id]).await
    }

    /// Removes learners from the group (see [`MetaNode::remove_voter`] for a voter).
    pub async fn remove_learners(
        &self,
        ids: impl IntoIterator<Item = NodeId>,
    ) -> Result<MembershipView, MetaError> {
        let ids: BTreeSet<NodeId> = ids.into_iter().collect();
        let raft = &self.inner.raft;
        let wait = Duration::from_millis(leader::DEMOTION_WAIT_MS);
        let (view, _) = self
            .on_leader(
                || leader::remove_learners(raft, ids.clone(), wait),
                |id, addr| {
                    self.inner.peers.remove_learners(
                        id,
                        addr,
                        ids.clone(),
                        self.inner.rpc_timeout + wait,
                    )
                },
            )
            .await?;
        Ok(view)
    }

    /// The membership as this node last applied it (local, no network).
    pub fn membership(&self) -> MembershipView {
        MembershipView::from_stored(&self.inner.raft.metrics().borrow().membership_config)
    }

    /// The leader as this node knows it (local, may be stale).
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Whether this node believes it leads (local, may be stale).
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().state == ServerState::Leader
    }

    /// `routes` plus the `Meta` service (Write, ReadIndex, ReadState, ...) of this node, for a
    /// single node (opened with [`MetaNode::open`], no listener of its own) that still serves
    /// non-member clients ([`crate::RemoteMeta`]) on a listener its caller runs. Not the
    /// `Raft` service: a single node has no peers.
    pub fn client_routes(&self, routes: tonic::service::Routes) -> tonic::service::Routes {
        let grpc = MetaGrpc::new(
            self.inner.raft.clone(),
            self.inner.learner_wait,
            self.inner.state.clone(),
            self.inner.applied_rx.clone(),
            self.inner.log.clone(),
            self.inner.feed.clone(),
        );
        grpc.meta_routes(routes)
    }

    /// Where this node serves the meta gRPC API; `None` for a node opened with `open`.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.inner.grpc_addr
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

    /// Every entry this node applies from now on, in log order (see
    /// [`StateMachineStore::applied_feed`]): what the metadata backup uploads as "the log since
    /// the snapshot". Subscribe, then read [`MetaNode::read`]'s `last_applied`: the feed carries
    /// exactly the entries after it, unless the receiver lags.
    pub fn subscribe_applied(
        &self,
    ) -> tokio::sync::broadcast::Receiver<crate::store::AppliedEntry> {
        self.inner.feed.subscribe()
    }

    /// This node's id in the metadata group.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The openraft handle, for metrics.
    pub fn raft(&self) -> &MetaRaft {
        &self.inner.raft
    }

    /// Stops the gRPC server (calls in flight get up to `release_wait_ms`) and raft, and waits
    /// (bounded) until the store file is released, so that it can be opened again in this
    /// process. Later calls to [`MetaNode::write`] fail with [`MetaError::ShutDown`]. Calling
    /// it twice is harmless.
    pub async fn shutdown(&self) -> Result<(), MetaError> {
        let first = !self.inner.shut_down.swap(true, Ordering::SeqCst);
        let server = self.inner.server.lock().take();
        if let Some(server) = server {
            server.stop(self.inner.release_wait).await;
        }
        if first {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_lists_are_checked() {
        let check = |peers: &[(NodeId, &str)], expected: Option<&str>| {
            let peers: Vec<(NodeId, String)> =
                peers.iter().map(|(id, a)| (*id, a.to_string())).collect();
            match (validate_peers(&peers), expected) {
                (Ok(()), None) => {}
                (Err(e), Some(text)) => assert!(e.to_string().contains(text), "{e}"),
                (got, _) => panic!("{peers:?}: expected {expected:?}, got {got:?}"),
            }
        };
        check(&[], None);
        check(&[(1, "127.0.0.1:1228"), (2, "meta-2:1228")], None);
        check(&[(1, "http://meta-1:1228")], None);
        check(
            &[(1, "a:1"), (1, "b:1")],
            Some("meta peer 1 is listed twice"),
        );
        check(&[(1, "a:1"), (2, " ")], Some("meta peer 2 has no address"));
        check(&[(3, "a b:1")], Some("`a b:1` is not a meta node address"));
    }
}
