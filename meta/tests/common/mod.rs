//! Helpers shared by the meta cluster tests: commands, a state summary, bounded waits and a
//! cluster of meta nodes in this process on 127.0.0.1.
#![allow(dead_code)] // each test binary uses a part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use strata_meta::{ClusterConfig, Command, CommandResult, MetaConfig, MetaNode, MetaState};
use strata_types::{BlockLocation, TopicId, TopicName};
use tokio::net::TcpListener;

/// Upper bound of every wait in these tests. A wait that runs out fails with what it waited
/// for; no test asserts how long anything took.
pub const WAIT: Duration = Duration::from_secs(60);

pub const TOPIC: TopicId = TopicId(uuid::Uuid::from_u128(
    0x5747_a7a0_0000_4000_8000_0000_0000_0040,
));

/// Small snapshots, so that a node that was down catches up through a snapshot transfer.
pub fn config() -> MetaConfig {
    MetaConfig {
        snapshot_logs_since_last: 20,
        snapshot_logs_kept: 5,
        leader_wait_ms: 30_000,
        learner_catch_up_wait_ms: 30_000,
        ..MetaConfig::default()
    }
}

pub fn create_topic(partitions: u32) -> Command {
    Command::CreateTopic {
        name: TopicName::new("cluster").unwrap(),
        id: TOPIC,
        partitions,
        configs: Default::default(),
        created_ms: 1_700_000_000_000,
    }
}

/// One object holding offsets `base..base + 5` of `partition`.
pub fn object(partition: u32, base: i64) -> Command {
    let key = format!("p{partition}-{base:08}");
    Command::CommitObject {
        stream: None,
        key: key.clone(),
        size: 100,
        blocks: vec![BlockLocation {
            key,
            topic: TOPIC,
            partition,
            base_offset: base,
            end_offset: base + 5,
            position: 0,
            len: 100,
            max_timestamp: base,
            crc32c: 0,
            index_len: 0,
            relative: false,
        }],
    }
}

/// Everything a reader sees, in a stable text form (without the applied log index).
pub fn summary(state: &MetaState) -> String {
    state.check_invariants().unwrap();
    let mut out = String::new();
    for topic in state.topics() {
        out += &format!("{topic:?}\n");
        for p in 0..topic.partitions {
            out += &format!(
                "  p{p} [{}, {}) {} blocks\n",
                state.indexed_start(topic.id, p),
                state.indexed_end(topic.id, p),
                state.blocks(topic.id, p).count()
            );
        }
    }
    out += &format!("garbage {:?}\n", state.garbage_keys().collect::<Vec<_>>());
    out
}

/// Polls `probe` until it answers `Some`, for at most [`WAIT`].
pub async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            started.elapsed() < WAIT,
            "gave up after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Binds `addr`, waiting (bounded) while a node of this process that was just shut down
/// still holds it.
pub async fn listen(addr: SocketAddr) -> TcpListener {
    let started = Instant::now();
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) if started.elapsed() < WAIT => {
                eprintln!("binding {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}

/// Commits objects on partitions with contiguous offsets, through whichever node it is given.
#[derive(Default)]
pub struct Writer {
    next: BTreeMap<u32, i64>,
    pub acked: u64,
}

impl Writer {
    /// Commits the next object of `partition` through `node` and checks that `node` reads it
    /// right away. Retries while the group changes leaders (the same `CommitObject` again is
    /// a no-op, so retrying after an unknown outcome is safe).
    pub async fn commit(&mut self, node: &MetaNode, partition: u32) {
        let base = *self.next.entry(partition).or_insert(0);
        let started = Instant::now();
        loop {
            match node.write(object(partition, base)).await {
                Ok(result) => {
                    assert_eq!(result, CommandResult::ObjectCommitted);
                    break;
                }
                Err(e) if e.is_retryable() && started.elapsed() < WAIT => {
                    eprintln!("node {}: write failed ({e}); retrying", node.node_id());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("node {}: write failed: {e}", node.node_id()),
            }
        }
        self.next.insert(partition, base + 5);
        self.acked += 1;
        let end = node.read().indexed_end(TOPIC, partition);
        assert_eq!(
            end,
            base + 5,
            "node {} does not read its own write",
            node.node_id()
        );
    }

    pub fn end(&self, partition: u32) -> i64 {
        self.next.get(&partition).copied().unwrap_or(0)
    }
}

/// Meta nodes of one group in this process, each with its own directory and listener.
pub struct Cluster {
    root: tempfile::TempDir,
    /// Initial voters, as given to every `open_cluster`.
    pub peers: Vec<(u64, String)>,
    pub addrs: BTreeMap<u64, SocketAddr>,
    pub nodes: BTreeMap<u64, MetaNode>,
}

impl Cluster {
    /// Starts nodes `ids` (on fresh stores, all at once) as the initial voters.
    pub async fn start(ids: &[u64]) -> Cluster {
        let mut listeners = BTreeMap::new();
        for &id in ids {
            listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addrs: BTreeMap<u64, SocketAddr> = listeners
            .iter()
            .map(|(&id, l)| (id, l.local_addr().unwrap()))
            .collect();
        let peers: Vec<(u64, String)> = addrs.iter().map(|(&id, a)| (id, a.to_string())).collect();
        let mut cluster = Cluster {
            root: tempfile::tempdir().unwrap(),
            peers,
            addrs,
            nodes: BTreeMap::new(),
        };
        let mut opening = Vec::new();
        for (id, listener) in listeners {
            let open = cluster.open(id, listener, cluster.peers.clone());
            opening.push((id, tokio::spawn(open)));
        }
        for (id, handle) in opening {
            let node = handle.await.unwrap();
            cluster.nodes.insert(id, node);
        }
        cluster
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("meta-{id}"))
    }

    fn open(
        &self,
        id: u64,
        listener: TcpListener,
        peers: Vec<(u64, String)>,
    ) -> impl std::future::Future<Output = MetaNode> + Send + 'static {
        let dir = self.dir(id);
        async move {
            let cluster = ClusterConfig {
                listener,
                peers,
                routes: Default::default(),
            };
            MetaNode::open_cluster_with(&dir, id, cluster, config())
                .await
                .unwrap_or_else(|e| panic!("meta node {id} did not open: {e}"))
        }
    }

    pub fn node(&self, id: u64) -> &MetaNode {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("meta node {id} is not running"))
    }

    /// Shuts node `id` down (its store and address stay).
    pub async fn stop(&mut self, id: u64) {
        let node = self.nodes.remove(&id).unwrap();
        node.shutdown().await.unwrap();
    }

    /// Starts node `id` again from its directory, at its address.
    pub async fn restart(&mut self, id: u64) {
        let listener = listen(self.addrs[&id]).await;
        let node = self.open(id, listener, self.peers.clone()).await;
        self.nodes.insert(id, node);
    }

    /// Starts a node on a fresh store, outside the initial voters (to be added later).
    pub async fn start_joiner(&mut self, id: u64) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        self.addrs.insert(id, addr);
        let node = self.open(id, listener, self.peers.clone()).await;
        self.nodes.insert(id, node);
        addr
    }

    /// The leader, once every running node names the same one and it is running.
    pub async fn leader(&self) -> u64 {
        eventually("the running meta nodes to agree on a leader", || {
            let mut named = self.nodes.values().map(MetaNode::leader);
            let first = named.next()??;
            let agreed = named.all(|l| l == Some(first));
            (agreed && self.nodes.get(&first).is_some_and(MetaNode::is_leader)).then_some(first)
        })
        .await
    }

    /// Running nodes other than `leader`.
    pub fn followers(&self, leader: u64) -> Vec<u64> {
        self.nodes
            .keys()
            .copied()
            .filter(|&id| id != leader)
            .collect()
    }

    /// Waits until every running node reads the same state, and answers it.
    pub async fn converged(&self) -> String {
        eventually("the running meta nodes to read the same state", || {
            let mut states = self.nodes.values().map(|n| summary(&n.read()));
            let first = states.next()?;
            states.all(|s| s == first).then_some(first)
        })
        .await
    }

    pub async fn shutdown(mut self) {
        for (_, node) in std::mem::take(&mut self.nodes) {
            node.shutdown().await.unwrap();
        }
    }
}
