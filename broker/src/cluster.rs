//! The broker's side of cluster membership: registering with metadata, renewing the lease,
//! expiring silent brokers, and the broker list Kafka clients see.
//!
//! Every broker — a single node too — registers under its node id with its advertised Kafka
//! address and gets its WAL stream's epoch back (`strata_meta::cluster` has the rules). It then
//! heartbeats every `meta.heartbeat_interval_ms`; each round it also looks for alive brokers
//! whose heartbeat is older than their lease and proposes `ExpireBrokers`, which moves their
//! partitions and streams to live brokers (the state machine re-checks the times, so several
//! brokers proposing at once is harmless). A broker whose heartbeat is refused was expired: its
//! partitions are gone and its stream is fenced, so it stops serving and exits (a supervisor
//! restarts it, and a restart registers again).
//!
//! *Boundary*: times here come from this host's wall clock; leases assume brokers' clocks agree
//! to well within a lease length (NTP), as Kafka's broker session timeout does.

use crate::meta_handle::MetaHandle;
use crate::node::Node;
use std::sync::Arc;
use std::time::Duration;
use strata_meta::{ClusterCommand, ClusterResult, CommandResult, Rejection};
use tokio::sync::watch;

/// A broker in the list Kafka clients get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

/// What registration granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// The epoch this broker writes its WAL stream under.
    pub stream_epoch: u64,
    /// The stream's entries up to here are in object storage.
    pub settled_lsn: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("metadata refused the registration: {0}")]
    Refused(String),
    #[error(
        "WAL stream {stream} is still being recovered by broker {holder:?} after {waited_ms} ms"
    )]
    StreamBusy {
        stream: u64,
        holder: Option<u64>,
        waited_ms: u64,
    },
    #[error("metadata unavailable: {0}")]
    Meta(String),
}

/// The broker-to-broker gRPC address this broker advertises (`BrokerInfo::peer_addr`): the
/// gRPC listener on `meta.listen` serves the Peer service beside Admin (and the meta services
/// on a member). A member advertises its own `meta.peers` entry (the address the other members
/// already reach it at); any other broker its Kafka advertised host with `meta.listen`'s port.
/// `None` when the port is not known before binding (port 0).
pub fn peer_addr(
    node_id: u64,
    meta_peers: &[(u64, String)],
    kafka_advertised: &(String, u16),
    meta_listen: std::net::SocketAddr,
) -> Option<String> {
    if let Some((_, addr)) = meta_peers.iter().find(|(id, _)| *id == node_id) {
        return Some(addr.clone());
    }
    (meta_listen.port() != 0).then(|| format!("{}:{}", kafka_advertised.0, meta_listen.port()))
}

pub fn now_ms() -> i64 {
    crate::log::sequencer::now_ms()
}

/// Registers this broker, waiting (up to `wait`) while another broker holds its stream.
pub async fn register(
    meta: &MetaHandle,
    node_id: u64,
    advertised: &(String, u16),
    lease_ms: u64,
    wait: Duration,
    cluster_id: &str,
    peer_addr: Option<String>,
) -> Result<Registration, RegisterError> {
    let started = tokio::time::Instant::now();
    let mut logged = false;
    loop {
        let cmd = ClusterCommand::RegisterBroker {
            node_id,
            kafka_addr: format!("{}:{}", advertised.0, advertised.1),
            rack: None,
            lease_ms,
            now_ms: now_ms(),
            cluster_id: Some(cluster_id.to_owned()),
            auth_secret: Some(fresh_auth_secret()),
            peer_addr: peer_addr.clone(),
        };
        let waited = started.elapsed();
        match meta.write(strata_meta::Command::Cluster(cmd)).await {
            Ok(CommandResult::Cluster(ClusterResult::Registered {
                stream_epoch: Some(stream_epoch),
                settled_lsn,
            })) => {
                // Read our own write before acting on leases.
                meta.sync()
                    .await
                    .map_err(|e| RegisterError::Meta(e.to_string()))?;
                return Ok(Registration {
                    stream_epoch,
                    settled_lsn,
                });
            }
            Ok(CommandResult::Cluster(ClusterResult::Registered {
                stream_epoch: None, ..
            })) => {
                let holder = meta.read().cluster().stream(node_id).and_then(|s| s.holder);
                if waited >= wait {
                    return Err(RegisterError::StreamBusy {
                        stream: node_id,
                        holder,
                        waited_ms: waited.as_millis() as u64,
                    });
                }
                if !logged {
                    tracing::info!(
                        ?holder,
                        "this broker's WAL stream is being recovered by another broker; waiting"
                    );
                    logged = true;
                }
            }
            Ok(other) => return Err(RegisterError::Refused(format!("{other:?}"))),
            Err(e) if waited < wait => {
                tracing::debug!(%e, "registration failed; retrying");
            }
            Err(e) => return Err(RegisterError::Meta(e.to_string())),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Renews this broker's lease and expires silent brokers until `shutdown`. Returns early (and
/// flips `lost`) when metadata says this broker was expired.
pub async fn run_heartbeats(
    node: Arc<Node>,
    mut shutdown: watch::Receiver<bool>,
    lost: Arc<watch::Sender<bool>>,
) {
    let interval = Duration::from_millis(node.config.file.meta.heartbeat_interval_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let me = node.config.node_id;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = now_ms();
        let cmd = ClusterCommand::Heartbeat {
            node_id: me,
            now_ms: now,
        };
        match node.meta.write(strata_meta::Command::Cluster(cmd)).await {
            Ok(CommandResult::Cluster(ClusterResult::HeartbeatAccepted)) => {}
            Ok(CommandResult::Rejected(Rejection::Cluster(err))) => {
                tracing::error!(%err, "this broker lost its lease; it stops serving");
                let _ = lost.send(true);
                return;
            }
            Ok(other) => tracing::warn!(?other, "unexpected heartbeat answer"),
            Err(err) => {
                // Metadata is unreachable (an election, say): keep trying. If it stays so for a
                // lease length, the others expire us and the next heartbeat is refused.
                tracing::warn!(%err, "heartbeat failed");
                continue;
            }
        }
        let stale: Vec<u64> = node
            .meta
            .read()
            .cluster()
            .stale_brokers(now)
            .into_iter()
            .filter(|n| *n != me)
            .collect();
        if !stale.is_empty() {
            let cmd = ClusterCommand::ExpireBrokers {
                by: me,
                now_ms: now,
            };
            match node.meta.write(strata_meta::Command::Cluster(cmd)).await {
                Ok(CommandResult::Cluster(ClusterResult::Expired { nodes }))
                    if !nodes.is_empty() =>
                {
                    tracing::warn!(?nodes, "expired brokers whose lease ran out");
                    crate::metrics::Metrics::add(
                        &node.metrics.brokers_expired_total,
                        nodes.len() as u64,
                    );
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(%err, "could not expire stale brokers"),
            }
        }
    }
}

/// The address this node's WAL replica server registers under (`WalNodeInfo::wal_addr`): the
/// `wal.peers` entry that names `wal.listen` (what brokers already use for it), else
/// `wal.listen` itself, or, when that is a wildcard (`0.0.0.0`), the Kafka advertised host with
/// its port.
pub fn wal_advertised(config: &crate::config::NodeConfig) -> String {
    let listen = config.wal_listen;
    if let Some(peer) = config
        .file
        .wal
        .peers
        .iter()
        .find(|p| p.parse::<std::net::SocketAddr>().is_ok_and(|a| a == listen))
    {
        return peer.clone();
    }
    if listen.ip().is_unspecified() {
        return format!("{}:{}", config.kafka_advertised.0, listen.port());
    }
    listen.to_string()
}

/// Registers this node's WAL replica server with metadata and renews it every
/// `meta.heartbeat_interval_ms` (lease `meta.broker_lease_ms`) until `shutdown`, so brokers
/// pick live spares from metadata (`takeover::spare_candidates`). Failures are retried at the
/// next tick: the WAL role never depends on metadata being reachable.
pub async fn run_wal_heartbeats(
    meta: MetaHandle,
    config: crate::config::NodeConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let wal_addr = wal_advertised(&config);
    let interval = Duration::from_millis(config.file.meta.heartbeat_interval_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy: Option<bool> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let cmd = ClusterCommand::WalHeartbeat {
            node_id: config.node_id,
            wal_addr: wal_addr.clone(),
            lease_ms: config.file.meta.broker_lease_ms,
            now_ms: now_ms(),
        };
        let ok = match meta.write(strata_meta::Command::Cluster(cmd)).await {
            Ok(CommandResult::Cluster(ClusterResult::WalNodeRenewed)) => true,
            Ok(CommandResult::Rejected(why)) => {
                tracing::error!(%why, %wal_addr, "metadata refused this WAL node's registration");
                return;
            }
            Ok(other) => {
                tracing::warn!(?other, "unexpected WAL heartbeat answer");
                false
            }
            Err(err) => {
                if healthy != Some(false) {
                    tracing::warn!(%err, "WAL node heartbeat failed; retrying");
                }
                false
            }
        };
        if ok && healthy != Some(true) {
            tracing::info!(%wal_addr, "WAL node registered with metadata");
        }
        healthy = Some(ok);
    }
}

/// The live brokers with their advertised Kafka addresses, by node id; this broker alone if
/// metadata has none yet (before its registration is applied).
pub fn live_brokers(node: &Node) -> Vec<BrokerAddr> {
    let state = node.meta.read();
    let mut out: Vec<BrokerAddr> = state
        .cluster()
        .brokers()
        .filter(|b| b.alive)
        .filter_map(|b| {
            let (host, port) = b.kafka_addr.rsplit_once(':')?;
            Some(BrokerAddr {
                node_id: i32::try_from(b.node_id).ok()?,
                host: host.to_string(),
                port: port.parse().ok()?,
            })
        })
        .collect();
    if !out.iter().any(|b| b.node_id as u64 == node.config.node_id) {
        out.push(self_addr(node));
    }
    out.sort_by_key(|b| b.node_id);
    out
}

/// The broker clients are told is the controller (Metadata, DescribeCluster): the meta leader
/// when it is one of `live`, else this broker (every broker serves the admin requests; a
/// broker metadata still lists as alive may be one that died and has not expired yet).
pub fn controller_id(node: &Node, live: &[BrokerAddr]) -> i32 {
    node.meta
        .leader()
        .and_then(|l| live.iter().find(|b| b.node_id as u64 == l))
        .map_or(node.config.node_id as i32, |b| b.node_id)
}

/// This broker's advertised address.
pub fn self_addr(node: &Node) -> BrokerAddr {
    BrokerAddr {
        node_id: node.config.node_id as i32,
        host: node.config.kafka_advertised.0.clone(),
        port: i32::from(node.config.kafka_advertised.1),
    }
}

/// Leader (node id, or -1 when none is alive) and leader epoch of a partition, for Metadata.
pub fn leader(node: &Node, topic: strata_types::TopicId, partition: u32) -> (i32, i32) {
    let state = node.meta.read();
    let cluster = state.cluster();
    let epoch = cluster.lease(topic, partition).map_or(0, |l| l.epoch);
    let leader = cluster
        .live_leader(topic, partition)
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or(-1);
    (leader, epoch)
}

/// 32 random bytes, hex: this broker's proposal for the cluster's decoy-credential secret.
fn fresh_auth_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key of decoy SCRAM credentials (`kafka::scram::decoy_credential`): derived from the
/// cluster's secret in metadata, so an unknown user gets the same salt from every broker and
/// across restarts. A cluster whose metadata predates the secret falls back to a per-process key.
pub fn decoy_secret(meta: &MetaHandle) -> [u8; 32] {
    use sha2::Digest;
    match meta.read().cluster().auth_secret() {
        Some(s) => sha2::Sha256::digest(s.as_bytes()).into(),
        None => {
            use rand::Rng;
            rand::thread_rng().gen()
        }
    }
}
