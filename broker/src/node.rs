//! A node: assembles metadata, the object store, the WAL, the sequencer, the uploader and the
//! listeners, and runs them until a signal.
//!
//! Start-up order matters and is the recovery procedure:
//! 1. the object store is probed (an unreachable store fails start with one line naming it);
//! 2. metadata opens (raft log replay) and says which topics exist and what is in objects;
//! 3. the WAL opens (torn tail truncated) and every entry past the index's end is replayed into
//!    its partition's tail — those are acknowledged writes not yet uploaded;
//! 4. only then do the listeners open.

use crate::config::NodeConfig;
use crate::log::entry::WalEntry;
use crate::log::partition::TailBatch;
use crate::log::reader::Reader;
use crate::log::registry::Registry;
use crate::log::sequencer::{self, SeqMsg, SeqShared, SequencerConfig};
use crate::log::uploader::Uploader;
use crate::metrics::Metrics;
use crate::{admin, kafka};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_meta::MetaNode;
use strata_tiering::ObjectStore;
use strata_wal::{Wal, WalConfig, WalError};
use tokio::sync::{mpsc, watch};

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
    pub meta: MetaNode,
    pub store: ObjectStore,
    pub registry: Arc<Registry>,
    pub reader: Reader,
    pub seq_tx: mpsc::Sender<SeqMsg>,
    pub seq_shared: Arc<SeqShared>,
    pub metrics: Arc<Metrics>,
    pub shutting_down: AtomicBool,
}

impl Node {
    /// Re-reads the topic list from metadata after a local metadata write.
    pub fn refresh_topics(&self) {
        let state = self.meta.read();
        self.registry.sync(&state);
    }

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

    let store =
        ObjectStore::from_url(&config.object_store).map_err(|e| StartError::ObjectStore {
            url: config.object_store.clone(),
            reason: e.to_string(),
        })?;
    store.check().await.map_err(|e| StartError::ObjectStore {
        url: store.url().to_string(),
        reason: e.to_string(),
    })?;

    let meta = MetaNode::open(&config.meta_dir, config.node_id)
        .await
        .map_err(|e| StartError::Meta {
            dir: config.meta_dir.display().to_string(),
            reason: e.to_string(),
        })?;
    let cluster_id = cluster_id(&config)?;

    let metrics = Arc::new(Metrics::default());
    let registry = Arc::new(Registry::default());
    registry.sync(&meta.read());

    let wal_cfg = WalConfig {
        dir: config.wal_dir.clone(),
        segment_bytes_max: config.file.wal.segment_bytes_max,
        wal_bytes_max: config.file.wal.bytes_max,
        entry_bytes_max: config.file.kafka.request_bytes_max,
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
    let seq_shared = Arc::new(SeqShared::default());
    let replayed = replay(&registry, &seq_shared, entries)?;
    if replayed > 0 {
        tracing::info!(entries = replayed, "replayed un-uploaded WAL entries");
    }

    let (seq_tx, seq_rx) = mpsc::channel(SEQUENCER_QUEUE_MAX);
    let _sequencer = sequencer::spawn(
        wal,
        seq_rx,
        seq_shared.clone(),
        metrics.clone(),
        SequencerConfig {
            group_commit_bytes_max: config.file.wal.group_commit_bytes_max,
            flush_bytes_max: config.file.tiering.flush_bytes_max,
        },
    )
    .map_err(io("start sequencer thread"))?;

    let reader = Reader::new(
        meta.clone(),
        store.clone(),
        config.file.tiering.read_cache_bytes_max,
        metrics.clone(),
    );
    let node = Arc::new(Node {
        cluster_id,
        meta: meta.clone(),
        store: store.clone(),
        registry: registry.clone(),
        reader,
        seq_tx: seq_tx.clone(),
        seq_shared: seq_shared.clone(),
        metrics: metrics.clone(),
        shutting_down: AtomicBool::new(false),
        config,
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);

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
    };
    let uploader_task = tokio::spawn(uploader.run(shutdown_rx.clone()));

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
    let kafka_addr = kafka_listener.local_addr().map_err(io("kafka listener"))?;
    let admin_addr = admin_listener.local_addr().map_err(io("admin listener"))?;

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

    println!("strata: kafka listening on {kafka_addr}");
    println!("strata: admin listening on {admin_addr}");
    println!("strata: object store {}", store.url());
    println!("strata: data dir {}", node.config.data_dir.display());
    println!("strata: ready (node {})", node.config.node_id);

    wait_for_signal().await;
    println!("strata: shutting down");
    node.shutting_down.store(true, Ordering::Release);
    let _ = shutdown_tx.send(true);
    if let Err(err) = uploader_task.await {
        tracing::error!(%err, "uploader task failed");
    }
    if let Err(err) = meta.shutdown().await {
        tracing::warn!(%err, "metadata shutdown");
    }
    println!("strata: stopped");
    Ok(())
}

/// Replays WAL entries that are not in object storage yet into their partitions' tails.
fn replay(
    registry: &Registry,
    shared: &SeqShared,
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
            continue; // already in object storage
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

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(%err, "cannot install SIGTERM handler");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
