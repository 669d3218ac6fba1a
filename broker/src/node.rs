//! A node: assembles metadata, the object store, the WAL, the sequencer, the uploader and the
//! listeners, and runs them until a signal.
//!
//! Start-up order matters and is the recovery procedure:
//! 1. the object store is probed (an unreachable store fails start with one line naming it);
//! 2. metadata opens (raft log replay) and says which topics exist and what is in objects;
//! 3. the WAL opens (torn tail truncated) and every entry past the index's end is replayed into
//!    its partition's tail — those are acknowledged writes not yet uploaded. Every entry still
//!    in the WAL (uploaded or not) also rebuilds the idempotent producers' state, which the
//!    sequencer thread then owns;
//! 4. only then do the listeners open.

use crate::config::NodeConfig;
use crate::log::compactor::{Compactor, Policy};
use crate::log::entry::WalEntry;
use crate::log::partition::TailBatch;
use crate::log::producer::ProducerStates;
use crate::log::reader::Reader;
use crate::log::registry::Registry;
use crate::log::retention::Retention;
use crate::log::sequencer::{self, SeqMsg, SeqShared, SequencerConfig};
use crate::log::sink::WalSink;
use crate::log::uploader::Uploader;
use crate::meta_handle::MetaHandle;
use crate::metrics::Metrics;
use crate::producer_ids::ProducerIds;
use crate::{admin, kafka};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_meta::MetaNode;
use strata_tiering::ObjectStore;
use strata_wal::net::{
    OwnerConfig, ReplicaServer, ReplicaServerConfig, ReplicaServerHandle, StreamOwner,
};
use strata_wal::replication::ReplicationConfig;
use strata_wal::{Wal, WalConfig, WalError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Why a node could not start. `exit_code` separates bad environments from broken data.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("object store {url} is unusable: {reason}")]
    ObjectStore { url: String, reason: String },
    #[error("metadata store in {dir}: {reason}")]
    Meta { dir: String, reason: String },
    #[error("WAL in {dir}: {reason}")]
    Wal { dir: String, reason: String },
    #[error("WAL in {dir} failed its checks: {reason}")]
    WalCorrupt { dir: String, reason: String },
    #[error("WAL recovery: {reason}")]
    Recovery { reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("cluster membership: {reason}")]
    Cluster { reason: String },
    #[error("read cache in {}: {reason}", dir.display())]
    Cache {
        dir: std::path::PathBuf,
        reason: String,
    },
}

impl StartError {
    /// 1 for a bad environment (retry may help), 3 for local data that fails its checks.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Recovery { .. } | StartError::WalCorrupt { .. } => 3,
            _ => 1,
        }
    }
}

/// Everything a request handler needs. Shared read-only (plus atomics) by every connection.
pub struct Node {
    pub config: NodeConfig,
    pub cluster_id: String,
    pub meta: MetaHandle,
    pub store: ObjectStore,
    pub registry: Arc<Registry>,
    pub reader: Reader,
    pub seq_tx: mpsc::Sender<SeqMsg>,
    pub seq_shared: Arc<SeqShared>,
    /// Produces to `direct`-mode topics (`log/direct.rs`).
    pub direct: crate::log::direct::DirectHandle,
    /// Hands out producer ids for InitProducerId.
    pub producer_ids: ProducerIds,
    /// The consumer-group coordinator (JoinGroup, SyncGroup, ...).
    pub groups: crate::groups::Groups,
    pub metrics: Arc<Metrics>,
    pub shutting_down: AtomicBool,
    /// Keys the decoy SCRAM credentials of unknown users (`crate::cluster::decoy_secret`).
    pub decoy_secret: [u8; 32],
    /// Channels to other brokers' Peer service (`peer::client`).
    pub peers: crate::peer::client::Peers,
    /// The MQTT clients the admin API lists (`mqtt::clients`).
    pub mqtt_clients: crate::mqtt::clients::MqttClients,
    /// MQTT sessions across brokers: the Peer service's `TakeSession` and dead brokers'
    /// snapshots (`mqtt::cluster_sessions`).
    pub mqtt_sessions: crate::mqtt::cluster_sessions::LocalSessions,
    /// This node's WAL replica server, when it also serves the `wal` role (for `/metrics` and
    /// `/health`).
    pub replica: Option<ReplicaServerHandle>,
}

impl Node {
    /// Re-reads the topic list from metadata after a local metadata write.
    pub fn refresh_topics(&self) {
        let state = self.meta.read();
        self.registry.sync(&state);
    }

    /// This broker's WAL writer has not failed (writes are accepted).
    pub fn is_healthy(&self) -> bool {
        !self.seq_shared.failed.load(Ordering::Acquire)
    }
}

/// Depth of the sequencer's queue (appends waiting for the next group commit).
const SEQUENCER_QUEUE_MAX: usize = 4096;

/// Starts every role, serves until SIGTERM/SIGINT, then flushes and returns.
pub async fn run(config: NodeConfig) -> Result<(), StartError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| StartError::Io { what, source }
    };
    std::fs::create_dir_all(&config.data_dir).map_err(io(&format!(
        "create data dir {}",
        config.data_dir.display()
    )))?;
    let _lock = lock_data_dir(&config.data_dir)?;
    // Before anything that can look ready from outside (the health endpoint and the Kafka
    // listener answer before the ready line): a SIGTERM from then on is handled, never the
    // default action that kills the process with -15.
    let (started, signals) = Signals::install().guard_start_up();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // The WAL replica (a cluster's `wal` role) serves first: with every node both broker and
    // replica, a starting broker's stream recovery needs the other nodes' replicas, and theirs
    // need ours, whatever order the nodes start in.
    let replica = start_replica_server(&config, shutdown_rx.clone())?;
    if !config.roles.broker {
        return run_without_broker(config, replica, shutdown_tx, (started, signals)).await;
    }

    let store =
        ObjectStore::from_url_with_config(&config.object_store, config.file.tiering.store_config())
            .map_err(|e| StartError::ObjectStore {
                url: config.object_store.clone(),
                reason: e.to_string(),
            })?;
    store.check().await.map_err(|e| StartError::ObjectStore {
        url: store.url().to_string(),
        reason: e.to_string(),
    })?;

    // The admin gRPC API: served beside the meta services (multi-node) or alone (single
    // node) on `meta.listen`; it answers UNAVAILABLE until the node below is built.
    let admin_grpc = admin::grpc::AdminService::new();
    let meta = open_broker_meta(&config, admin_grpc.routes()).await?;
    let cluster_id = cluster_id(&config)?;

    // Register before reading the WAL: registration says which partitions this broker leads
    // and under which epoch it writes its stream.
    let registration = crate::cluster::register(
        &meta,
        config.node_id,
        &config.kafka_advertised,
        config.file.meta.broker_lease_ms,
        Duration::from_millis(config.file.meta.stream_wait_ms),
        &cluster_id,
        crate::cluster::peer_addr(
            config.node_id,
            &config.meta_peers,
            &config.kafka_advertised,
            config.meta_listen,
        ),
    )
    .await
    .map_err(|e| StartError::Cluster {
        reason: e.to_string(),
    })?;
    // Every broker tells clients the cluster's id: the first one registered.
    let cluster_id = meta
        .read()
        .cluster()
        .cluster_id()
        .map(str::to_owned)
        .unwrap_or(cluster_id);
    tracing::info!(
        stream_epoch = registration.stream_epoch,
        settled_lsn = registration.settled_lsn,
        "registered with metadata"
    );

    let metrics = Arc::new(Metrics::default());
    let registry = Arc::new(Registry::new(config.node_id));
    registry.sync(&meta.read());
    metrics.attach(registry.clone(), meta.clone());

    let wal_replicas = crate::takeover::stream_replicas(&config, config.node_id, &meta.read());
    let (wal, entries) = open_wal(&config, registration, wal_replicas).await?;
    let wal_owner = wal.stream_owner();
    let seq_shared = Arc::new(SeqShared::default());
    let mut producers = ProducerStates::default();
    let replayed = replay(
        &registry,
        &seq_shared,
        &mut producers,
        sequencer::now_ms(),
        entries,
    )?;
    if replayed > 0 {
        tracing::info!(entries = replayed, "replayed un-uploaded WAL entries");
    }
    if !producers.is_empty() {
        tracing::info!(
            producers = producers.len(),
            "rebuilt idempotent producer state from the WAL"
        );
    }

    let (seq_tx, seq_rx) = mpsc::channel(SEQUENCER_QUEUE_MAX);
    let _sequencer = sequencer::spawn(
        wal,
        producers,
        seq_rx,
        seq_shared.clone(),
        metrics.clone(),
        SequencerConfig {
            group_commit_bytes_max: config.file.wal.group_commit_bytes_max,
            flush_bytes_max: config.file.tiering.flush_bytes_max,
            realtime_priority: config.file.wal.realtime_priority,
        },
    )
    .map_err(io("start sequencer thread"))?;

    let c = &config.file.cache;
    let cache = crate::log::cache::ReadCache::open(
        &config.cache_dir,
        crate::log::cache::CacheBudgets {
            recent_memory_bytes: c.recent_memory_bytes,
            recent_disk_bytes: c.recent_disk_bytes,
            history_memory_bytes: c.history_memory_bytes,
            history_disk_bytes: c.history_disk_bytes,
            readahead_concurrency: c.readahead_concurrency as usize,
            history_read_bytes_per_sec: c.history_read_bytes_per_sec,
        },
    )
    .await
    .map_err(|e| StartError::Cache {
        dir: config.cache_dir.clone(),
        reason: format!("{e:#}"),
    })?;
    let reader = Reader::new(
        meta.clone(),
        store.clone(),
        Arc::new(cache),
        c.readahead_chunks as usize,
        metrics.clone(),
    );
    let (direct_writer, direct) = crate::log::direct::DirectWriter::new(
        config.node_id,
        store.clone(),
        meta.clone(),
        metrics.clone(),
        crate::log::direct::DirectConfig {
            batch_window: Duration::from_millis(config.file.direct.batch_window_ms),
            batch_bytes_max: config.file.direct.batch_bytes_max,
            commit_timeout: Duration::from_millis(config.file.direct.commit_timeout_ms),
        },
    );
    let direct_task = tokio::spawn(direct_writer.run(shutdown_rx.clone()));
    let node = Arc::new(Node {
        cluster_id,
        direct,
        meta: meta.clone(),
        store: store.clone(),
        registry: registry.clone(),
        reader,
        seq_tx: seq_tx.clone(),
        seq_shared: seq_shared.clone(),
        producer_ids: ProducerIds::spawn(meta.clone()),
        groups: crate::groups::Groups::spawn(Default::default(), metrics.clone()),
        metrics: metrics.clone(),
        shutting_down: AtomicBool::new(false),
        decoy_secret: crate::cluster::decoy_secret(&meta),
        peers: Default::default(),
        mqtt_sessions: Default::default(),
        mqtt_clients: Default::default(),
        replica: replica.clone(),
        config,
    });

    // Keep the registry in step with metadata.
    {
        let node = node.clone();
        let mut changes = meta.subscribe();
        let mut stop = shutdown_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() { break; }
                        node.refresh_topics();
                    }
                    _ = stop.changed() => break,
                }
            }
        });
    }

    // Flipped when this broker learns it lost its lease or its stream: it stops.
    let (lost_tx, mut lost_rx) = watch::channel(false);
    let lost_tx = Arc::new(lost_tx);
    let uploader = Uploader {
        node_id: node.config.node_id,
        registry: registry.clone(),
        store: store.clone(),
        meta: meta.clone(),
        shared: seq_shared.clone(),
        seq_tx: seq_tx.clone(),
        metrics: metrics.clone(),
        flush_interval: Duration::from_millis(node.config.file.tiering.flush_interval_ms),
        flush_bytes_max: node.config.file.tiering.flush_bytes_max,
        tail_bytes_max: node.config.file.tiering.tail_bytes_max,
        trimmed_lsn: 0,
        stream: node
            .config
            .wal_quorum
            .map(|_| (node.config.node_id, registration.stream_epoch)),
        lost: lost_tx.clone(),
    };
    let uploader_task = tokio::spawn(uploader.run(shutdown_rx.clone()));

    let retention = Retention {
        registry: registry.clone(),
        store: store.clone(),
        meta: meta.clone(),
        metrics: metrics.clone(),
        interval: Duration::from_millis(node.config.file.tiering.retention_check_interval_ms),
        garbage_grace_ms: i64::try_from(node.config.file.tiering.garbage_grace_ms)
            .unwrap_or(i64::MAX),
        defaults: crate::log::retention::Limits {
            ms: node.config.file.tiering.retention_ms,
            bytes: node.config.file.tiering.retention_bytes,
        },
        first_seen: Default::default(),
    };
    tokio::spawn(retention.run(shutdown_rx.clone()));

    let compaction = &node.config.file.compaction;
    let compactor = Compactor {
        node_id: node.config.node_id,
        registry: registry.clone(),
        store: store.clone(),
        meta: meta.clone(),
        metrics: metrics.clone(),
        interval: Duration::from_millis(compaction.interval_ms),
        policy: Policy {
            segment_bytes: compaction.segment_bytes,
            chunk_bytes: compaction.chunk_bytes,
            min_blocks: compaction.min_blocks,
            idle_ms: compaction.idle_ms,
        },
        enabled: compaction.enabled,
        orphan_sweep_interval: (compaction.orphan_sweep_interval_ms > 0)
            .then(|| Duration::from_millis(compaction.orphan_sweep_interval_ms)),
        orphan_grace_ms: i64::try_from(compaction.orphan_grace_ms).unwrap_or(i64::MAX),
    };
    tokio::spawn(compactor.run(shutdown_rx.clone()));
    if let Some(member) = meta.member() {
        crate::meta_backup::spawn(&node.config, member, &store, &metrics, shutdown_rx.clone());
    }

    // From here clients can be served: a signal is a clean stop (final uploads included).
    let mut signals = Signals::started(started, signals).await;
    let kafka_listener = tokio::net::TcpListener::bind(node.config.kafka_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: node.config.kafka_listen,
            source,
        })?;
    let admin_listener = tokio::net::TcpListener::bind(node.config.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: node.config.admin_listen,
            source,
        })?;
    let mqtt_listener = tokio::net::TcpListener::bind(node.config.mqtt_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: node.config.mqtt_listen,
            source,
        })?;
    let mqtt_addr = mqtt_listener.local_addr().map_err(io("mqtt listener"))?;
    let mqtt_more = crate::mqtt::transport::bind(&node.config)
        .await
        .map_err(|(addr, source)| StartError::Bind { addr, source })?;
    let mqtt_more_addrs = mqtt_more.addrs();
    let kafka_addr = kafka_listener.local_addr().map_err(io("kafka listener"))?;
    let admin_addr = admin_listener.local_addr().map_err(io("admin listener"))?;
    admin_grpc.set_node(node.clone());
    // Multi-node: the meta gRPC server already serves the admin service.
    let admin_grpc_addr = match meta.grpc_addr() {
        Some(addr) => addr,
        None => {
            let listen = node.config.meta_listen;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|source| StartError::Io {
                    what: format!("meta.listen {listen} (the admin gRPC listener)"),
                    source,
                })?;
            let addr = listener.local_addr().map_err(io("admin gRPC listener"))?;
            tokio::spawn(admin::grpc::serve(
                meta.client_routes(admin_grpc.routes()),
                listener,
                shutdown_rx.clone(),
            ));
            addr
        }
    };

    tokio::spawn(kafka::server::serve(
        node.clone(),
        kafka_listener,
        shutdown_rx.clone(),
    ));
    tokio::spawn(admin::serve(
        node.clone(),
        admin_listener,
        shutdown_rx.clone(),
    ));
    let mqtt = crate::mqtt::start(node.clone(), mqtt_listener, mqtt_more, shutdown_rx.clone());

    println!("strata: kafka listening on {kafka_addr}");
    println!("strata: mqtt listening on {mqtt_addr}");
    for (what, addr) in mqtt_more_addrs {
        println!("strata: mqtt {what} listening on {addr}");
    }
    println!("strata: admin listening on {admin_addr}");
    println!("strata: admin gRPC listening on {admin_grpc_addr}");
    println!("strata: object store {}", store.url());
    println!("strata: data dir {}", node.config.data_dir.display());
    println!("strata: ready (node {})", node.config.node_id);

    if !node.config.meta_peers.is_empty() {
        tokio::spawn(crate::cluster::run_heartbeats(
            node.clone(),
            shutdown_rx.clone(),
            lost_tx.clone(),
        ));
        tokio::spawn(crate::takeover::run(node.clone(), shutdown_rx.clone()));
        crate::takeover::spawn_replica_upkeep(&node, wal_owner, replica.clone(), &shutdown_rx);
        if replica.is_some() {
            tokio::spawn(crate::cluster::run_wal_heartbeats(
                meta.clone(),
                node.config.clone(),
                shutdown_rx.clone(),
            ));
        }
    }
    // Planned moves away from this broker, rebalance on join, scale to zero (`moves.rs`).
    let (idle_tx, mut idle_rx) = watch::channel(false);
    tokio::spawn(crate::moves::run(
        node.clone(),
        shutdown_rx.clone(),
        Arc::new(idle_tx),
    ));

    let mut idle = false;
    let mut running = node.config.file.clone(); // what a reload compares with
    let lost = loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop => break false,
                Signal::Reload => reload_config(&node.config.source, &mut running, &mqtt),
            },
            _ = lost_rx.wait_for(|lost| *lost) => break true,
            Ok(_) = idle_rx.wait_for(|idle| *idle) => {
                idle = true;
                break false;
            }
        }
    };
    println!("strata: shutting down");
    shutdown_watchdog();
    node.shutting_down.store(true, Ordering::Release);
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), mqtt.stopped).await;
    if let Err(err) = uploader_task.await {
        tracing::error!(%err, "uploader task failed");
    }
    if let Err(err) = direct_task.await {
        tracing::error!(%err, "direct writer task failed");
    }
    if idle {
        // Scaled to zero: everything is uploaded and the stream released; leave the cluster.
        crate::moves::deregister(&node).await;
    }
    if let Err(err) = meta.shutdown().await {
        tracing::warn!(%err, "metadata shutdown");
    }
    node.reader.close().await;
    println!("strata: stopped");
    if lost {
        return Err(StartError::Cluster {
            reason:
                "this broker was expired by the cluster (its lease ran out); restart it to rejoin"
                    .into(),
        });
    }
    Ok(())
}

/// Starts the WAL replica server when this node serves the `wal` role (see
/// [`crate::config::Roles::serves_wal`]).
fn start_replica_server(
    config: &NodeConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<ReplicaServerHandle>, StartError> {
    if !config.roles.serves_wal(config.wal_quorum.is_some()) {
        return Ok(None);
    }
    let cfg = ReplicaServerConfig {
        dir: config.wal_dir.clone(),
        segment_bytes_max: config.file.wal.segment_bytes_max,
        entry_bytes_max: wal_entry_bytes_max(config),
        realtime_priority: config.file.wal.realtime_priority,
    };
    let server = ReplicaServer::bind(cfg, config.wal_listen).map_err(|e| {
        let dir = config.wal_dir.display().to_string();
        if e.is_corrupt() {
            StartError::WalCorrupt {
                dir,
                reason: e.to_string(),
            }
        } else {
            StartError::Wal {
                dir,
                reason: e.to_string(),
            }
        }
    })?;
    println!("strata: wal listening on {}", server.local_addr());
    let handle = server.handle();
    tokio::spawn(server.run(shutdown));
    Ok(Some(handle))
}

/// Largest WAL entry: one partition's batches of the largest request, plus the entry header.
fn wal_entry_bytes_max(config: &NodeConfig) -> u32 {
    config
        .file
        .kafka
        .request_bytes_max
        .saturating_add(crate::log::entry::ENTRY_HEADER_BYTES as u32)
}

/// Opens this broker's WAL: the local one (single node), or its replicated stream, recovered
/// from `settled_lsn + 1` under the epoch registration granted. Returns the entries to replay.
async fn open_wal(
    config: &NodeConfig,
    registration: crate::cluster::Registration,
    wal_replicas: Vec<String>,
) -> Result<(WalSink, Vec<strata_wal::RecoveredEntry>), StartError> {
    let Some((replicas, write_quorum)) = config.wal_quorum else {
        let wal_cfg = WalConfig {
            dir: config.wal_dir.clone(),
            segment_bytes_max: config.file.wal.segment_bytes_max,
            wal_bytes_max: config.file.wal.bytes_max,
            entry_bytes_max: config.file.kafka.request_bytes_max,
            // Off the sequencer thread: a trim's unlink of a 64 MiB segment would stall the
            // group commits behind it (tens of ms on ext4).
            background_unlink: true,
        };
        let (wal, entries) = Wal::open(wal_cfg).map_err(|e| {
            let dir = config.wal_dir.display().to_string();
            let reason = e.to_string();
            match e {
                WalError::Corrupt { .. } | WalError::UnsupportedVersion { .. } => {
                    StartError::WalCorrupt { dir, reason }
                }
                _ => StartError::Wal { dir, reason },
            }
        })?;
        return Ok((WalSink::Local(wal), entries));
    };
    let owner_cfg =
        stream_owner_config(config, config.node_id, wal_replicas, replicas, write_quorum);
    let (owner, entries) = StreamOwner::recover(
        owner_cfg,
        registration.stream_epoch,
        registration.settled_lsn + 1,
    )
    .await
    .map_err(|e| StartError::Recovery {
        reason: format!("WAL stream {}: {e}", config.node_id),
    })?;
    tracing::info!(
        epoch = registration.stream_epoch,
        entries = entries.len(),
        "recovered this broker's WAL stream"
    );
    let appended = owner.last_lsn();
    Ok((WalSink::Replicated { owner, appended }, entries))
}

/// How this node drives a WAL stream (its own, or one it recovers for a dead broker).
pub fn stream_owner_config(
    config: &NodeConfig,
    stream: u64,
    replicas: Vec<String>,
    r: u16,
    w: u16,
) -> OwnerConfig {
    let mut cfg = OwnerConfig::new(stream, replicas);
    cfg.replication = ReplicationConfig {
        replicas: r,
        write_quorum: w,
        retained_bytes_max: config.file.wal.bytes_max,
        entry_bytes_max: wal_entry_bytes_max(config),
        ..ReplicationConfig::default()
    };
    cfg.recover_timeout_ms = config.file.meta.stream_wait_ms;
    cfg.replication.replace_after_ms = config.file.wal.replica_replace_after_ms;
    cfg
}

/// Longest a clean shutdown may take (final uploads, metadata) before the process gives up.
const SHUTDOWN_WAIT_MS_MAX: u64 = 30_000;

/// Bounds the clean shutdown: a node whose peers are gone can wait on a WAL quorum or a meta
/// leader that will not come back. After [`SHUTDOWN_WAIT_MS_MAX`], or on a second signal, it
/// exits with code 1; everything acknowledged is still in the WAL (or on its replicas).
fn shutdown_watchdog() {
    tokio::spawn(async {
        Signals::install().stopped().await;
        eprintln!("strata: second signal; exiting without finishing the shutdown");
        std::process::exit(1);
    });
    let spawned = std::thread::Builder::new()
        .name("strata-shutdown-watchdog".into())
        .spawn(|| {
            std::thread::sleep(Duration::from_millis(SHUTDOWN_WAIT_MS_MAX));
            eprintln!(
                "strata: shutdown did not finish within {SHUTDOWN_WAIT_MS_MAX} ms; exiting \
                 (acknowledged writes are in the WAL and are recovered at the next start)"
            );
            std::process::exit(1);
        });
    if let Err(err) = spawned {
        tracing::warn!(%err, "cannot start the shutdown watchdog");
    }
}

/// How long a broker that is not a meta member waits for the meta leader per call, and for its
/// mirror to apply a write or a read point.
const MIRROR_WAIT_MS: u64 = 30_000;

/// Opens metadata for a broker: a member (see [`open_meta`]) with the `meta` role, else a
/// mirror that follows the members in `meta.peers` (`strata_meta::MetaMirror`).
async fn open_broker_meta(
    config: &NodeConfig,
    routes: tonic::service::Routes,
) -> Result<MetaHandle, StartError> {
    if config.roles.meta {
        return Ok(open_meta(config, routes).await?.into());
    }
    Ok(MetaHandle::Remote(open_mirror(config).await?))
}

/// A mirror of the metadata the members in `meta.peers` serve (`strata_meta::MetaMirror`), for
/// a node without the `meta` role.
async fn open_mirror(config: &NodeConfig) -> Result<strata_meta::MetaMirror, StartError> {
    let meta_error = |e: strata_meta::MetaError| StartError::Meta {
        dir: "(not a meta member: following meta.peers)".into(),
        reason: e.to_string(),
    };
    let addrs = config.meta_peers.iter().map(|(_, a)| a.clone()).collect();
    let wait = Duration::from_millis(MIRROR_WAIT_MS);
    let remote = strata_meta::RemoteMeta::new(addrs, wait).map_err(meta_error)?;
    let mirror = strata_meta::MetaMirror::start(remote, wait)
        .await
        .map_err(meta_error)?;
    println!(
        "strata: following metadata from {} (not a meta member)",
        config
            .meta_peers
            .iter()
            .map(|(id, a)| format!("{id}@{a}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(mirror)
}

/// Opens metadata: a member of the meta cluster in `meta.peers`, or a single-node store.
/// `routes`: more gRPC services served on the meta listener (the admin API).
async fn open_meta(
    config: &NodeConfig,
    routes: tonic::service::Routes,
) -> Result<MetaNode, StartError> {
    let opened = if config.meta_peers.is_empty() {
        MetaNode::open(&config.meta_dir, config.node_id).await
    } else {
        let listener = tokio::net::TcpListener::bind(config.meta_listen)
            .await
            .map_err(|source| StartError::Io {
                what: format!("meta.listen {}", config.meta_listen),
                source,
            })?;
        let cluster = strata_meta::ClusterConfig {
            listener,
            peers: config.meta_peers.clone(),
            routes,
        };
        MetaNode::open_cluster_with(
            &config.meta_dir,
            config.node_id,
            cluster,
            strata_meta::MetaConfig::default(),
        )
        .await
    };
    let meta = opened.map_err(|e| StartError::Meta {
        dir: config.meta_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    if let Some(addr) = meta.grpc_addr() {
        println!("strata: meta listening on {addr}");
    }
    Ok(meta)
}

/// A node without the broker role: metadata and/or a WAL replica, until a signal.
async fn run_without_broker(
    config: NodeConfig,
    replica: Option<ReplicaServerHandle>,
    shutdown_tx: watch::Sender<bool>,
    (started, signals): StartUpGuard,
) -> Result<(), StartError> {
    let meta = if config.roles.meta {
        Some(open_meta(&config, Default::default()).await?)
    } else {
        None
    };
    // A meta-only node may lead the meta group: it backs metadata up too.
    let mut meta_backup = None;
    if let (Some(meta), Ok(store)) = (
        &meta,
        ObjectStore::from_url_with_config(&config.object_store, config.file.tiering.store_config()),
    ) {
        let metrics = Arc::new(Metrics::default());
        crate::meta_backup::spawn(&config, meta, &store, &metrics, shutdown_tx.subscribe());
        meta_backup = Some((metrics, store));
    }
    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.admin_listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Io {
            what: "admin listener".into(),
            source,
        })?;
    tokio::spawn(admin::serve_without_broker(
        Arc::new(admin::SupportNode {
            replica: replica.clone(),
            meta_backup,
        }),
        admin_listener,
        shutdown_tx.subscribe(),
    ));
    println!("strata: admin listening on {admin_addr}");
    if let Some(replica) = replica.clone() {
        match &meta {
            Some(member) => {
                let stop = shutdown_tx.subscribe();
                spawn_wal_upkeep(&config, member.clone().into(), replica, &stop);
            }
            None if !config.meta_peers.is_empty() => {
                let stop = shutdown_tx.subscribe();
                tokio::spawn(follow_for_wal(config.clone(), replica, stop));
            }
            None => {}
        }
    }
    println!("strata: ready (node {})", config.node_id);
    Signals::started(started, signals).await.stopped().await;
    println!("strata: shutting down");
    shutdown_watchdog();
    let _ = shutdown_tx.send(true);
    drop(replica);
    if let Some(meta) = meta {
        if let Err(err) = meta.shutdown().await {
            tracing::warn!(%err, "metadata shutdown");
        }
    }
    println!("strata: stopped");
    Ok(())
}

/// A WAL node's metadata chores: registering and heartbeating its WAL address, and deleting
/// the stream directories the recorded replica sets no longer list
/// (`takeover::collect_streams`).
fn spawn_wal_upkeep(
    config: &NodeConfig,
    meta: MetaHandle,
    replica: ReplicaServerHandle,
    shutdown: &watch::Receiver<bool>,
) {
    tokio::spawn(crate::cluster::run_wal_heartbeats(
        meta.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    let gc = move |f: &dyn Fn(&strata_meta::MetaState) -> Vec<u64>| f(&meta.read());
    tokio::spawn(crate::takeover::collect_streams(
        config.clone(),
        gc,
        replica,
        shutdown.clone(),
    ));
}

/// Pause between attempts of a WAL-only node to start following metadata.
const MIRROR_RETRY: Duration = Duration::from_secs(1);

/// A WAL node without the `meta` role follows metadata through a mirror, as an elastic broker
/// does, for its [`spawn_wal_upkeep`]. The replica server does not wait for it: brokers may
/// need this replica to recover their streams before metadata has a leader.
async fn follow_for_wal(
    config: NodeConfig,
    replica: ReplicaServerHandle,
    mut stop: watch::Receiver<bool>,
) {
    let mut warned = false;
    let mirror = loop {
        match open_mirror(&config).await {
            Ok(mirror) => break mirror,
            Err(err) => {
                if !warned {
                    tracing::warn!(%err, "cannot follow metadata yet; retrying");
                    warned = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(MIRROR_RETRY) => {}
            _ = stop.changed() => return,
        }
    };
    let meta = MetaHandle::Remote(mirror);
    spawn_wal_upkeep(&config, meta.clone(), replica, &stop);
    let _ = stop.changed().await;
    let _ = meta.shutdown().await;
}

/// Replays WAL entries that are not in object storage yet into their partitions' tails, and
/// rebuilds idempotent producer state from every entry still in the WAL.
///
/// Producer state is only as old as the WAL: batches uploaded *and* trimmed before the restart
/// are not read back, so producers last seen only in them are unknown afterwards (and accepted
/// with any sequence, see `log::producer`).
fn replay(
    registry: &Registry,
    shared: &SeqShared,
    producers: &mut ProducerStates,
    now_ms: i64,
    entries: Vec<strata_wal::RecoveredEntry>,
) -> Result<usize, StartError> {
    let mut replayed = 0;
    for recovered in entries {
        let entry =
            WalEntry::decode(Bytes::from(recovered.payload)).map_err(|e| StartError::Recovery {
                reason: format!("WAL entry {} is undecodable: {e}", recovered.lsn),
            })?;
        let Some(log) = registry.partition(&entry.partition) else {
            continue; // the topic was deleted
        };
        let next = log.next_offset();
        if entry.end_offset <= next {
            // Already in object storage, but its producers' last batches are still news.
            producers.record_batches(entry.partition, &entry.batches, now_ms);
            continue;
        }
        if entry.base_offset != next {
            return Err(StartError::Recovery {
                reason: format!(
                    "WAL entry {} for {}/{} starts at offset {}, but the partition continues at {}",
                    recovered.lsn,
                    log.topic_name,
                    entry.partition.partition,
                    entry.base_offset,
                    next
                ),
            });
        }
        producers.record_batches(entry.partition, &entry.batches, now_ms);
        let count = entry.end_offset - entry.base_offset;
        log.reserve(count);
        shared
            .pending_bytes
            .fetch_add(entry.batches.len() as u64, Ordering::AcqRel);
        log.publish(TailBatch {
            base_offset: entry.base_offset,
            end_offset: entry.end_offset,
            max_timestamp: entry.max_timestamp,
            wal_lsn: recovered.lsn,
            data: entry.batches,
        });
        replayed += 1;
    }
    Ok(replayed)
}

/// Takes an exclusive lock on the data dir for the life of the process, so two nodes can never
/// write the same WAL or metadata files.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::Io {
            what: format!("open {}", path.display()),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::Io {
            what: format!(
                "data dir {} is in use by another strata process",
                dir.display()
            ),
            source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StartError::Io {
            what: format!("lock {}", path.display()),
            source,
        }),
    }
}

/// The cluster id Kafka clients see, created once and kept in the data dir.
fn cluster_id(config: &NodeConfig) -> Result<String, StartError> {
    let path = config.data_dir.join("cluster.id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = format!("strata-{}", uuid::Uuid::new_v4().simple());
            std::fs::write(&path, &id).map_err(|source| StartError::Io {
                what: format!("write {}", path.display()),
                source,
            })?;
            Ok(id)
        }
    }
}

/// [`Signals::guard_start_up`]: the sender to call the start-up done, the task holding the
/// handlers until then.
type StartUpGuard = (tokio::sync::oneshot::Sender<()>, JoinHandle<Signals>);

/// What a signal asks of the node.
enum Signal {
    /// SIGTERM or Ctrl-C: a clean stop.
    Stop,
    /// SIGHUP: read the configuration again.
    Reload,
}

/// The node's signal handlers, installed once (a SIGHUP would otherwise end the process).
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(err) => {
                tracing::error!(%err, "cannot install the {name} handler");
                None
            }
        };
        Signals {
            term: install(SignalKind::terminate(), "SIGTERM"),
            interrupt: install(SignalKind::interrupt(), "SIGINT"),
            hangup: install(SignalKind::hangup(), "SIGHUP"),
        }
    }

    async fn next(&mut self) -> Signal {
        async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
            match signal {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = received(self.term.as_mut()) => Signal::Stop,
            _ = received(self.interrupt.as_mut()) => Signal::Stop,
            _ = received(self.hangup.as_mut()) => Signal::Reload,
        }
    }

    /// Watches the signals while the node starts: a stop then ends the process at once with
    /// code 0 — nothing has been acknowledged that is not already in the WAL, and a start-up
    /// waiting on peers that never come must still be stoppable. A SIGHUP is logged and
    /// dropped (the configuration is read once the node has started). Send on the returned
    /// sender once started and await [`Signals::started`] for the handlers back.
    fn guard_start_up(mut self) -> StartUpGuard {
        let (started_tx, mut started_rx) = tokio::sync::oneshot::channel::<()>();
        let guard = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = &mut started_rx => return self,
                    signal = self.next() => match signal {
                        Signal::Stop => {
                            println!("strata: signal during start-up; exiting");
                            std::process::exit(0);
                        }
                        Signal::Reload => tracing::info!("SIGHUP during start-up: nothing to reload yet"),
                    },
                }
            }
        });
        (started_tx, guard)
    }

    /// Takes the handlers back from [`Signals::guard_start_up`]; a signal that arrived in
    /// between is still pending on them.
    async fn started(
        started: tokio::sync::oneshot::Sender<()>,
        guard: JoinHandle<Signals>,
    ) -> Signals {
        let _ = started.send(());
        match guard.await {
            Ok(signals) => signals,
            // The guard task cannot panic; install afresh rather than fail a started node.
            Err(_) => Signals::install(),
        }
    }

    /// Waits for a stop, where there is nothing to reload (no broker role; the shutdown).
    async fn stopped(mut self) {
        while let Signal::Reload = self.next().await {
            tracing::info!("SIGHUP: nothing to reload here");
        }
    }
}

/// SIGHUP: reads the configuration file (and environment and flags) again and puts its MQTT
/// credentials, ACLs and rate limits in force (`config::RELOADABLE`), recording them in
/// `running`. An invalid file changes nothing; a change to any other key is logged as waiting
/// for a restart.
fn reload_config(
    source: &crate::config::Source,
    running: &mut crate::config::FileConfig,
    mqtt: &crate::mqtt::Mqtt,
) {
    let reloaded = match crate::config::reload(source, running) {
        Ok(r) => r,
        Err(err) => {
            tracing::error!(%err, "configuration not reloaded; the running one stays in force");
            return;
        }
    };
    if let Err(e) = mqtt.reload(&reloaded.config.file.mqtt) {
        tracing::error!(key = %e.key, message = %e.message, "configuration not reloaded; the running one stays in force");
        return;
    }
    crate::config::apply_reloadable(running, &reloaded.config.file);
    tracing::info!(applied = ?reloaded.applied, "configuration reloaded");
    if !reloaded.restart.is_empty() {
        tracing::warn!(keys = ?reloaded.restart, "configuration changes that take effect at the next restart");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::producer::test_batches::batch;
    use crate::log::producer::{ProducerBatch, SequenceError};
    use crate::log::sequencer::{AppendError, AppendRequest, AppendResult, BatchSpan};
    use bytes::BytesMut;
    use std::collections::BTreeMap;
    use strata_meta::{Command, MetaState};
    use strata_types::batch::BatchHeader;
    use strata_types::{BlockLocation, PartitionKey, TopicId, TopicName};

    use crate::log::partition::PartitionLog;

    /// A batch `(producer id, epoch, first sequence, record count)`.
    type B = (i64, i16, i32, i32);

    fn request(log: &Arc<PartitionLog>, batches: &[B]) -> AppendRequest {
        let mut data = Vec::new();
        let mut spans = Vec::new();
        for &(id, epoch, seq, count) in batches {
            let b = batch(id, epoch, seq, count);
            let header = BatchHeader::parse(&b).unwrap();
            spans.push(BatchSpan {
                start: data.len(),
                offset_count: header.offset_count(),
                producer: ProducerBatch::from_header(&header),
            });
            data.extend_from_slice(&b);
        }
        AppendRequest {
            log: log.clone(),
            data: BytesMut::from(&data[..]),
            batches: spans,
            max_timestamp: 1_000,
        }
    }

    struct Sequencer {
        tx: mpsc::Sender<SeqMsg>,
        thread: std::thread::JoinHandle<()>,
        metrics: Arc<Metrics>,
    }

    impl Sequencer {
        fn start(dir: &std::path::Path, producers: ProducerStates) -> Self {
            let (wal, _) = Wal::open(WalConfig::new(dir)).unwrap();
            let (tx, rx) = mpsc::channel(16);
            let metrics = Arc::new(Metrics::default());
            let thread = sequencer::spawn(
                crate::log::sink::WalSink::Local(wal),
                producers,
                rx,
                Arc::new(SeqShared::default()),
                metrics.clone(),
                SequencerConfig {
                    group_commit_bytes_max: 1 << 20,
                    flush_bytes_max: 1 << 30,
                    realtime_priority: 0,
                },
            )
            .unwrap();
            Self {
                tx,
                thread,
                metrics,
            }
        }

        fn append(&self, log: &Arc<PartitionLog>, batches: &[B]) -> AppendResult {
            let (reply, rx) = tokio::sync::oneshot::channel();
            self.tx
                .blocking_send(SeqMsg::Append {
                    items: vec![request(log, batches)],
                    reply,
                })
                .unwrap();
            rx.blocking_recv().unwrap().remove(0)
        }

        fn stop(self) -> Arc<Metrics> {
            drop(self.tx);
            self.thread.join().unwrap();
            self.metrics
        }
    }

    fn topic_state(uploaded_end: Option<i64>) -> MetaState {
        let mut state = MetaState::default();
        state.apply(&Command::CreateTopic {
            name: TopicName::new("t").unwrap(),
            id: TopicId::from_bytes([1; 16]),
            partitions: 1,
            configs: BTreeMap::new(),
            created_ms: 0,
        });
        if let Some(end) = uploaded_end {
            state.apply(&Command::CommitObject {
                stream: None,
                key: "o1".into(),
                size: 100,
                blocks: vec![BlockLocation {
                    key: "o1".into(),
                    topic: TopicId::from_bytes([1; 16]),
                    partition: 0,
                    base_offset: 0,
                    end_offset: end,
                    position: 0,
                    len: 100,
                    max_timestamp: 0,
                    crc32c: 0,
                    index_len: 0,
                    relative: false,
                }],
            });
        }
        state
    }

    fn registry(state: &MetaState) -> (Registry, Arc<PartitionLog>) {
        let registry = Registry::new(1);
        registry.sync(state);
        let log = registry.topic("t").unwrap().partitions[0].clone();
        (registry, log)
    }

    fn out_of_order(expected: i32, got: i32) -> AppendResult {
        Err(AppendError::Sequence(SequenceError::OutOfOrder {
            producer_id: 7,
            expected,
            got,
        }))
    }

    /// Duplicates are answered with their original offset and not written; after a restart the
    /// WAL rebuilds the producers, including from entries already uploaded (not replayed).
    #[test]
    fn idempotent_appends_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (_registry, log) = registry(&topic_state(None));
        let seq = Sequencer::start(dir.path(), ProducerStates::default());
        let steps: &[(&[B], AppendResult)] = &[
            (&[(7, 0, 0, 3)], Ok(0)),
            (&[(7, 0, 0, 3)], Ok(0)),
            (&[(7, 0, 5, 1)], out_of_order(3, 5)),
            (&[(7, 0, 3, 2)], Ok(3)),
            (&[(-1, -1, -1, 2)], Ok(5)),
            (&[(7, 0, 3, 2)], Ok(3)),
        ];
        for (i, (batches, want)) in steps.iter().enumerate() {
            assert_eq!(&seq.append(&log, batches), want, "step {i}");
        }
        assert_eq!(
            log.high_watermark(),
            7,
            "duplicates and refusals wrote nothing"
        );
        let metrics = seq.stop();
        assert_eq!(
            metrics
                .produce_duplicate_batches_total
                .load(Ordering::Relaxed),
            2
        );
        assert_eq!(
            metrics
                .produce_sequence_errors_total
                .load(Ordering::Relaxed),
            1
        );
        assert_eq!(metrics.producer_states.load(Ordering::Relaxed), 1);

        // Restart on a copy of the WAL, as is and as if offsets 0..3 (the first entry) had been
        // uploaded before the crash.
        for (uploaded, replayed) in [(None, 3), (Some(3), 2)] {
            let copy = tempfile::tempdir().unwrap();
            for file in std::fs::read_dir(dir.path()).unwrap() {
                let file = file.unwrap();
                std::fs::copy(file.path(), copy.path().join(file.file_name())).unwrap();
            }
            let (registry, log) = registry(&topic_state(uploaded));
            let (_, entries) = Wal::open(WalConfig::new(copy.path())).unwrap();
            let mut producers = ProducerStates::default();
            let shared = SeqShared::default();
            let n = replay(&registry, &shared, &mut producers, 0, entries).unwrap();
            assert_eq!(n, replayed, "uploaded {uploaded:?}");
            let key = PartitionKey {
                topic: TopicId::from_bytes([1; 16]),
                partition: 0,
            };
            let entry = producers.partition(&key).and_then(|p| p.get(7)).unwrap();
            assert_eq!((entry.epoch(), entry.last_seq()), (0, 4));
            assert_eq!(log.high_watermark(), 7);

            let seq = Sequencer::start(copy.path(), producers);
            // Retries of batches written before the restart, then the next one.
            assert_eq!(seq.append(&log, &[(7, 0, 0, 3)]), Ok(0));
            assert_eq!(seq.append(&log, &[(7, 0, 3, 2)]), Ok(3));
            assert_eq!(seq.append(&log, &[(7, 0, 6, 1)]), out_of_order(5, 6));
            assert_eq!(seq.append(&log, &[(7, 1, 0, 1)]), Ok(7), "new epoch");
            assert_eq!(
                seq.append(&log, &[(7, 0, 5, 1)]),
                Err(AppendError::Sequence(SequenceError::StaleEpoch {
                    producer_id: 7,
                    epoch: 0,
                    current: 1
                }))
            );
            seq.stop();
        }
    }
}
