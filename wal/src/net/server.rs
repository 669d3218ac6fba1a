//! The replica server: the WAL role of a node (port 1778). It keeps every stream it is sent in
//! a [`StreamStore`] and runs one [`Replica`] core per stream.
//!
//! # Threads and tasks
//!
//! - The accept loop (a tokio task, [`ReplicaServer::run`]) and, per connection, a reader task
//!   and a writer task. The reader waits for `Hello { stream }`, then decodes requests and sends
//!   them to the stream's thread over a bounded channel (so a busy disk pushes back on the
//!   socket). The stream thread writes its replies into the socket itself (a [`SocketWriter`]);
//!   the writer task only finishes what the socket refused.
//! - One OS thread per stream, started when a connection first names it, owning the core and
//!   the store (a closed event loop: nothing else touches them). Each round it takes everything
//!   queued, feeds it to the core, executes the store commands in order, and makes all the
//!   `Sync`s of the round **one** fdatasync (group commit); then it feeds `Synced` for each, in
//!   order, and writes the replies.
//!
//! # Replies
//!
//! A reply goes to the connection that most recently sent a request with the reply's epoch
//! (the owner of that epoch: at most one per epoch). A connection whose reply queue is full is
//! closed (the owner reconnects and the cores retransmit); a reply for an epoch with no live
//! connection is dropped.
//!
//! # Failure
//!
//! A failed write or fdatasync stops the stream for good: the core gets `SyncFailed`, the store
//! is never used again (the page cache may have dropped the failed pages: "fsyncgate"), its
//! connections are closed and new ones refused, and [`ReplicaStats`] reports it. The stream's
//! owner replaces the replica with a spare after `replace_after_ms`. Other streams go on.
//!
//! # Dropping a stream
//!
//! [`ReplicaServerHandle::drop_stream`] deletes an idle stream's directory (the caller decided
//! that this node is no longer one of its replicas) and keeps its sealed epoch as a tombstone,
//! from which a later store of that stream starts sealed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use strata_types::histogram::Histogram;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::conn::{FrameReader, SocketWriter};
use super::frame::{Limits, Message};
use super::store::{stream_dir, StreamStore, StreamStoreConfig, STREAM_ENTRY_HEADER_BYTES};
use super::{
    request_frame_bytes_max, NetError, CONNECTIONS_MAX, CONN_REPLIES_MAX, HELLO_TIMEOUT_MS,
    STREAM_QUEUE_EVENTS_MAX,
};
use crate::config::{ENTRY_BYTES_MAX_CEILING, ENTRY_BYTES_MAX_DEFAULT, SEGMENT_BYTES_MAX_DEFAULT};
use crate::replication::{
    DurableState, Epoch, FromReplica, Lsn, Replica, ReplicaCommand, ReplicaEvent, ToReplica,
};
use crate::{WalError, REALTIME_PRIORITY_MAX};

/// Requests a stream thread takes in one round at most (one fdatasync covers them).
const STREAM_BATCH_EVENTS_MAX: usize = 4096;
/// Epochs a stream thread keeps a reply route for; the oldest goes first.
const ROUTES_MAX: usize = 64;

/// Where a replica keeps its streams, and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaServerConfig {
    /// Data directory; streams live in `<dir>/streams/<stream_id:020>/`.
    pub dir: PathBuf,
    /// Segment file size of every stream store.
    pub segment_bytes_max: u64,
    /// Largest entry payload accepted (an append carrying a larger one closes the connection).
    /// Must be at least the owners' `entry_bytes_max`.
    pub entry_bytes_max: u32,
    /// `SCHED_FIFO` priority of the stream threads (they write and fdatasync); 0: normal
    /// scheduling. Best effort: see [`crate::enter_realtime`].
    pub realtime_priority: u8,
}

impl ReplicaServerConfig {
    /// A config for `dir` with the default limits.
    pub fn new(dir: impl Into<PathBuf>) -> ReplicaServerConfig {
        ReplicaServerConfig {
            dir: dir.into(),
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            entry_bytes_max: ENTRY_BYTES_MAX_DEFAULT,
            realtime_priority: 0,
        }
    }

    /// Checks every field; the error names the offending key.
    pub fn validate(&self) -> Result<(), NetError> {
        let invalid = |key, reason: String| NetError::InvalidConfig { key, reason };
        if self.dir.as_os_str().is_empty() {
            return Err(invalid("dir", "must not be empty".to_string()));
        }
        if self.realtime_priority > REALTIME_PRIORITY_MAX {
            return Err(invalid(
                "realtime_priority",
                format!(
                    "{} is outside 0..={REALTIME_PRIORITY_MAX}",
                    self.realtime_priority
                ),
            ));
        }
        let entry_max = ENTRY_BYTES_MAX_CEILING - STREAM_ENTRY_HEADER_BYTES as u32;
        if self.entry_bytes_max == 0 || self.entry_bytes_max > entry_max {
            return Err(invalid(
                "entry_bytes_max",
                format!("{} is outside 1..={entry_max}", self.entry_bytes_max),
            ));
        }
        self.store_config(&self.dir)
            .map(|_| ())
            .map_err(|e| match e {
                WalError::InvalidConfig { key, reason } => invalid(key, reason),
                other => invalid("dir", other.to_string()),
            })
    }

    fn store_config(&self, dir: &Path) -> Result<StreamStoreConfig, WalError> {
        let cfg = StreamStoreConfig {
            dir: dir.to_path_buf(),
            segment_bytes_max: self.segment_bytes_max,
            entry_bytes_max: self.entry_bytes_max,
        };
        cfg.wal_config().validate()?;
        Ok(cfg)
    }
}

/// Counters of one stream on this replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub stream: u64,
    /// Append requests taken.
    pub appends: u64,
    /// Entries written to the store.
    pub entries_written: u64,
    /// fdatasyncs (group commits).
    pub syncs: u64,
    pub bytes_on_disk: u64,
    pub sealed_epoch: u64,
    /// The last entry on disk (synced).
    pub durable_lsn: u64,
    /// The store failed; the stream answers nothing more.
    pub failed: bool,
}

/// Counters of a replica server, for `/metrics` and `/health`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Every stream this server holds, by stream id.
    pub streams: Vec<StreamStats>,
    pub streams_failed: usize,
    /// Open connections.
    pub connections: u64,
}

#[derive(Debug, Default)]
struct StreamCounters {
    appends: AtomicU64,
    entries_written: AtomicU64,
    syncs: AtomicU64,
    bytes_on_disk: AtomicU64,
    sealed_epoch: AtomicU64,
    durable_lsn: AtomicU64,
    failed: AtomicBool,
}

impl StreamCounters {
    fn observe(&self, store: &StreamStore, core: &Replica) {
        self.bytes_on_disk
            .store(store.bytes_on_disk(), Ordering::Relaxed);
        self.sealed_epoch
            .store(core.sealed_epoch().0, Ordering::Relaxed);
        self.durable_lsn
            .store(core.durable_lsn().0, Ordering::Relaxed);
    }
}

/// A connection as a stream thread sees it: where its replies go.
struct ConnHandle {
    replies: mpsc::Sender<FromReplica>,
    /// Writes what `replies` holds (none in unit tests, which read the queue).
    writer: Option<Arc<SocketWriter<FromReplica>>>,
    cancel: CancellationToken,
}

struct StreamEvent {
    conn: Arc<ConnHandle>,
    msg: ToReplica,
}

enum SlotState {
    /// Opened at bind; the thread starts with the first connection.
    Idle(Box<(StreamStore, DurableState)>),
    Running {
        tx: mpsc::Sender<StreamEvent>,
        thread: JoinHandle<()>,
    },
    /// Moved out while starting the thread or shutting down.
    Gone,
}

struct Slot {
    counters: Arc<StreamCounters>,
    state: SlotState,
}

struct ServerShared {
    cfg: ReplicaServerConfig,
    limits: Limits,
    streams: parking_lot::Mutex<HashMap<u64, Slot>>,
    /// Set by shutdown: no new stream threads.
    closing: AtomicBool,
    connections: AtomicU64,
    /// Every stream's group commits (write + fdatasync), for `/metrics`.
    sync_seconds: Arc<Histogram>,
}

/// A bound replica server. [`ReplicaServer::run`] serves until shutdown.
pub struct ReplicaServer {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    shared: Arc<ServerShared>,
}

impl std::fmt::Debug for ReplicaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaServer")
            .field("local_addr", &self.local_addr)
            .field("dir", &self.shared.cfg.dir)
            .finish()
    }
}

/// A handle for counters and health while the server runs.
#[derive(Clone)]
pub struct ReplicaServerHandle {
    shared: Arc<ServerShared>,
}

impl std::fmt::Debug for ReplicaServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaServerHandle")
            .field("dir", &self.shared.cfg.dir)
            .finish()
    }
}

impl ReplicaServerHandle {
    pub fn stats(&self) -> ReplicaStats {
        self.shared.stats()
    }

    /// Deletes the directory of `stream` if no owner has connected to it since this server
    /// started (its store is idle), keeping its sealed epoch as a tombstone (see
    /// [`super::store::drop_stream_dir`]). `Ok(false)`: not deleted (unknown, in use, or
    /// failed). Whether the stream's data may go is the caller's decision (metadata: this node
    /// is no longer one of its replicas).
    pub fn drop_stream(&self, stream: u64) -> Result<bool, NetError> {
        let mut streams = self.shared.streams.lock();
        let Some(slot) = streams.get_mut(&stream) else {
            return Ok(false);
        };
        if !matches!(slot.state, SlotState::Idle(_)) {
            return Ok(false);
        }
        let SlotState::Idle(opened) = std::mem::replace(&mut slot.state, SlotState::Gone) else {
            unreachable!("checked")
        };
        let (store, state) = *opened;
        drop(store);
        let dir = stream_dir(&self.shared.cfg.dir, stream);
        let dropped = super::store::drop_stream_dir(&dir, state.sealed_epoch);
        streams.remove(&stream);
        dropped.map(|()| true).map_err(|source| NetError::Io {
            path: dir,
            op: "drop stream directory",
            source,
        })
    }

    /// The duration of every stream's group commits (writing the buffered entries and the
    /// fdatasync), for `/metrics`.
    pub fn sync_seconds(&self) -> &Histogram {
        &self.shared.sync_seconds
    }

    /// Streams whose store failed (for `/health`).
    pub fn failed_streams(&self) -> Vec<u64> {
        self.shared
            .stats()
            .streams
            .into_iter()
            .filter(|s| s.failed)
            .map(|s| s.stream)
            .collect()
    }
}

impl ReplicaServer {
    /// Validates `cfg`, opens every stream store under `<dir>/streams/` (a corrupt one fails
    /// with [`NetError::Store`] naming the file and offset), and binds `addr`.
    pub fn bind(cfg: ReplicaServerConfig, addr: SocketAddr) -> Result<ReplicaServer, NetError> {
        cfg.validate()?;
        let streams_root = cfg.dir.join("streams");
        std::fs::create_dir_all(&streams_root).map_err(|source| NetError::Io {
            path: streams_root.clone(),
            op: "create streams directory",
            source,
        })?;
        let mut streams = HashMap::new();
        for stream in list_streams(&streams_root)? {
            let store_cfg = cfg
                .store_config(&stream_dir(&cfg.dir, stream))
                .map_err(|source| NetError::Store { stream, source })?;
            let (store, state) = StreamStore::open(store_cfg)
                .map_err(|source| NetError::Store { stream, source })?;
            let counters = Arc::new(StreamCounters::default());
            counters
                .bytes_on_disk
                .store(store.bytes_on_disk(), Ordering::Relaxed);
            counters
                .sealed_epoch
                .store(state.sealed_epoch.0, Ordering::Relaxed);
            counters
                .durable_lsn
                .store(store.last_lsn().0, Ordering::Relaxed);
            streams.insert(
                stream,
                Slot {
                    counters,
                    state: SlotState::Idle(Box::new((store, state))),
                },
            );
        }
        let listener =
            std::net::TcpListener::bind(addr).map_err(|source| NetError::Bind { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| NetError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| NetError::Bind { addr, source })?;
        tracing::info!(
            %local_addr,
            dir = %cfg.dir.display(),
            streams = streams.len(),
            "WAL replica server bound"
        );
        let limits = Limits {
            frame_bytes_max: request_frame_bytes_max(cfg.entry_bytes_max),
            entry_bytes_max: cfg.entry_bytes_max,
        };
        Ok(ReplicaServer {
            listener,
            local_addr,
            shared: Arc::new(ServerShared {
                cfg,
                limits,
                streams: parking_lot::Mutex::new(streams),
                closing: AtomicBool::new(false),
                connections: AtomicU64::new(0),
                sync_seconds: Arc::default(),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters and health, usable while [`ReplicaServer::run`] runs.
    pub fn handle(&self) -> ReplicaServerHandle {
        ReplicaServerHandle {
            shared: self.shared.clone(),
        }
    }

    pub fn stats(&self) -> ReplicaStats {
        self.shared.stats()
    }

    /// Serves until `shutdown` becomes `true` (or its sender is dropped). On the way out it
    /// closes every connection and joins every stream thread, so the directory can be opened
    /// again as soon as this returns. Unsynced writes are dropped (they were never
    /// acknowledged).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let listener = match tokio::net::TcpListener::from_std(self.listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "WAL replica server cannot register its listener");
                return;
            }
        };
        let shared = self.shared;
        let cancel = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
        let mut tasks = JoinSet::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let Ok(permit) = permits.clone().try_acquire_owned() else {
                            tracing::warn!(%peer, limit = CONNECTIONS_MAX, "WAL replica: too many connections; refusing one");
                            continue;
                        };
                        let shared = shared.clone();
                        let cancel = cancel.child_token();
                        tasks.spawn(async move {
                            shared.connections.fetch_add(1, Ordering::Relaxed);
                            serve_connection(&shared, socket, peer, cancel).await;
                            shared.connections.fetch_sub(1, Ordering::Relaxed);
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "WAL replica: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        cancel.cancel();
        while tasks.join_next().await.is_some() {}
        let threads = shared.close_streams();
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                if t.join().is_err() {
                    tracing::error!("a WAL replica stream thread panicked");
                }
            }
        })
        .await;
        if joined.is_err() {
            tracing::error!("joining the WAL replica stream threads failed");
        }
        tracing::info!(dir = %shared.cfg.dir.display(), "WAL replica server stopped");
    }
}

/// The stream ids under `root`, from directory names of 20 digits; other entries are ignored.
fn list_streams(root: &Path) -> Result<Vec<u64>, NetError> {
    let io = |source| NetError::Io {
        path: root.to_path_buf(),
        op: "list streams directory",
        source,
    };
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(root).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(id) = name.parse::<u64>() {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

impl ServerShared {
    fn stats(&self) -> ReplicaStats {
        let streams = self.streams.lock();
        let mut out: Vec<StreamStats> = streams
            .iter()
            .map(|(&stream, slot)| {
                let c = &slot.counters;
                StreamStats {
                    stream,
                    appends: c.appends.load(Ordering::Relaxed),
                    entries_written: c.entries_written.load(Ordering::Relaxed),
                    syncs: c.syncs.load(Ordering::Relaxed),
                    bytes_on_disk: c.bytes_on_disk.load(Ordering::Relaxed),
                    sealed_epoch: c.sealed_epoch.load(Ordering::Relaxed),
                    durable_lsn: c.durable_lsn.load(Ordering::Relaxed),
                    failed: c.failed.load(Ordering::Relaxed),
                }
            })
            .collect();
        out.sort_by_key(|s| s.stream);
        ReplicaStats {
            streams_failed: out.iter().filter(|s| s.failed).count(),
            streams: out,
            connections: self.connections.load(Ordering::Relaxed),
        }
    }

    /// The channel to `stream`'s thread, starting the thread on first use.
    fn stream_sender(&self, stream: u64) -> Result<mpsc::Sender<StreamEvent>, &'static str> {
        if self.closing.load(Ordering::Acquire) {
            return Err("the server is shutting down");
        }
        let mut streams = self.streams.lock();
        let slot = streams.entry(stream).or_insert_with(|| Slot {
            counters: Arc::new(StreamCounters::default()),
            state: SlotState::Gone,
        });
        if slot.counters.failed.load(Ordering::Acquire) {
            return Err("the stream's store failed");
        }
        if let SlotState::Running { tx, .. } = &slot.state {
            if tx.is_closed() {
                // The thread is gone without a store failure: it panicked on a broken invariant.
                slot.counters.failed.store(true, Ordering::Release);
                return Err("the stream's thread stopped");
            }
            return Ok(tx.clone());
        }
        let opened = match std::mem::replace(&mut slot.state, SlotState::Gone) {
            SlotState::Idle(opened) => Some(opened),
            _ => None,
        };
        let (tx, rx) = mpsc::channel(STREAM_QUEUE_EVENTS_MAX);
        let store_cfg = self
            .cfg
            .store_config(&stream_dir(&self.cfg.dir, stream))
            .map_err(|_| "the stream's config is invalid")?;
        let counters = slot.counters.clone();
        let sync_seconds = self.sync_seconds.clone();
        let priority = self.cfg.realtime_priority;
        let thread = std::thread::Builder::new()
            .name(format!("wal-stream-{stream}"))
            .spawn(move || {
                crate::enter_realtime(priority);
                stream_thread(stream, store_cfg, opened, rx, counters, sync_seconds)
            })
            .map_err(|e| {
                tracing::error!(stream, error = %e, "cannot start a WAL replica stream thread");
                "cannot start the stream's thread"
            })?;
        slot.state = SlotState::Running {
            tx: tx.clone(),
            thread,
        };
        Ok(tx)
    }

    /// Stops taking streams and hands back the stream threads to join. Their channels close
    /// once the connections (already cancelled and joined) dropped their senders.
    fn close_streams(&self) -> Vec<JoinHandle<()>> {
        self.closing.store(true, Ordering::Release);
        let mut streams = self.streams.lock();
        let mut threads = Vec::new();
        for slot in streams.values_mut() {
            if let SlotState::Running { tx, thread } =
                std::mem::replace(&mut slot.state, SlotState::Gone)
            {
                drop(tx);
                threads.push(thread);
            }
        }
        threads
    }
}

async fn serve_connection(
    shared: &ServerShared,
    socket: TcpStream,
    peer: SocketAddr,
    cancel: CancellationToken,
) {
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let (mut rd, wr) = socket.into_split();
    let mut reader = FrameReader::new(shared.limits);
    let hello = tokio::select! {
        _ = cancel.cancelled() => return,
        hello = tokio::time::timeout(Duration::from_millis(HELLO_TIMEOUT_MS), reader.next(&mut rd)) => hello,
    };
    let stream = match hello {
        Ok(Ok(Some(Message::Hello { stream }))) => stream,
        Ok(Ok(Some(other))) => {
            tracing::warn!(%peer, got = other.name(), "WAL replica: the first frame is not Hello; closing");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::warn!(%peer, reason = %e, "WAL replica: closing a connection");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "WAL replica: no Hello in time; closing");
            return;
        }
    };
    let to_stream = match shared.stream_sender(stream) {
        Ok(tx) => tx,
        Err(why) => {
            tracing::warn!(%peer, stream, why, "WAL replica: refusing a connection");
            return;
        }
    };
    tracing::debug!(%peer, stream, "WAL replica: owner connected");
    let (replies, replies_rx) = mpsc::channel(CONN_REPLIES_MAX);
    let socket_writer =
        SocketWriter::new(wr, replies_rx, None, Message::FromReplica, cancel.clone());
    let writer = tokio::spawn(socket_writer.clone().run());
    let conn = Arc::new(ConnHandle {
        replies,
        writer: Some(socket_writer),
        cancel: cancel.clone(),
    });
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            next = reader.next(&mut rd) => next,
        };
        let msg = match next {
            Ok(Some(Message::ToReplica(msg))) => msg,
            Ok(Some(other)) => {
                tracing::warn!(%peer, stream, got = other.name(), "WAL replica: unexpected message; closing");
                break;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(%peer, stream, reason = %e, "WAL replica: closing a connection");
                break;
            }
        };
        let event = StreamEvent {
            conn: conn.clone(),
            msg,
        };
        let sent = tokio::select! {
            _ = cancel.cancelled() => break,
            sent = to_stream.send(event) => sent,
        };
        if sent.is_err() {
            break; // the stream thread is gone (shutdown)
        }
    }
    cancel.cancel();
    drop(conn);
    let _ = writer.await;
    tracing::debug!(%peer, stream, "WAL replica: connection closed");
}

/// The event loop of one stream: see the module docs.
fn stream_thread(
    stream: u64,
    cfg: StreamStoreConfig,
    opened: Option<Box<(StreamStore, DurableState)>>,
    mut rx: mpsc::Receiver<StreamEvent>,
    counters: Arc<StreamCounters>,
    sync_seconds: Arc<Histogram>,
) {
    let opened = match opened {
        Some(opened) => Ok(*opened),
        // A stream dropped here before starts sealed where it was.
        None => match super::store::restore_tombstone(&cfg.dir) {
            Ok(()) => StreamStore::open(cfg),
            Err(e) => Err(WalError::Io {
                path: super::store::tombstone_path(&cfg.dir),
                op: "restore a dropped stream's seal",
                source: e,
            }),
        },
    };
    let (store, state) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            tracing::error!(stream, error = %e, "WAL replica stream cannot open its store; it answers nothing");
            counters.failed.store(true, Ordering::Release);
            while let Some(ev) = rx.blocking_recv() {
                ev.conn.cancel.cancel();
            }
            return;
        }
    };
    let mut driver = StreamDriver {
        stream,
        core: Replica::restore(state),
        store,
        routes: HashMap::new(),
        unflushed: Vec::new(),
        syncs: Vec::new(),
        failed: false,
        counters,
        sync_seconds,
    };
    driver.counters.observe(&driver.store, &driver.core);
    let mut batch = Vec::new();
    let mut out = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < STREAM_BATCH_EVENTS_MAX {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        driver.round(&mut batch, &mut out);
    }
    tracing::debug!(stream, "WAL replica stream thread stops");
}

struct StreamDriver {
    stream: u64,
    core: Replica,
    store: StreamStore,
    /// Epoch → the connection that last sent a request of that epoch (not kept open by this).
    routes: HashMap<Epoch, Weak<ConnHandle>>,
    /// Connections replies were queued on since the last flush.
    unflushed: Vec<Arc<ConnHandle>>,
    /// `Sync { upto_lsn }` commands issued this round, in order.
    syncs: Vec<Lsn>,
    failed: bool,
    counters: Arc<StreamCounters>,
    /// The server's histogram of group commits.
    sync_seconds: Arc<Histogram>,
}

impl StreamDriver {
    fn round(&mut self, batch: &mut Vec<StreamEvent>, out: &mut Vec<ReplicaCommand>) {
        for StreamEvent { conn, msg } in batch.drain(..) {
            if self.failed {
                conn.cancel.cancel();
                continue;
            }
            if matches!(msg, ToReplica::Append(_)) {
                self.counters.appends.fetch_add(1, Ordering::Relaxed);
            }
            self.route(msg.epoch(), &conn);
            self.core.handle(ReplicaEvent::from(msg), out);
            self.execute(out);
        }
        // Replies that need no fdatasync (seals are persisted by their own) leave before it.
        self.flush_replies();
        // Group commit: one fdatasync for every Sync of the round, then the Synced in order.
        while !self.failed && !self.syncs.is_empty() {
            let started = Instant::now();
            match self.store.sync() {
                Ok(()) => {
                    self.sync_seconds.observe(started.elapsed());
                    self.counters.syncs.fetch_add(1, Ordering::Relaxed);
                    for upto_lsn in std::mem::take(&mut self.syncs) {
                        self.core.handle(ReplicaEvent::Synced { upto_lsn }, out);
                    }
                    // Counters before replies: whoever saw an ack sees stats at least as new.
                    self.counters.observe(&self.store, &self.core);
                    self.execute(out);
                }
                Err(e) => self.fail(e),
            }
        }
        if !self.failed {
            self.counters.observe(&self.store, &self.core);
        }
        self.flush_replies();
    }

    /// Writes the queued replies into their sockets from this thread.
    fn flush_replies(&mut self) {
        for conn in self.unflushed.drain(..) {
            if let Some(writer) = &conn.writer {
                writer.flush();
            }
        }
    }

    fn execute(&mut self, out: &mut Vec<ReplicaCommand>) {
        for cmd in out.drain(..) {
            if self.failed {
                continue;
            }
            let done = match cmd {
                ReplicaCommand::PersistSeal { epoch } => self.store.persist_seal(epoch),
                ReplicaCommand::Truncate { after_lsn } => {
                    tracing::info!(
                        stream = self.stream,
                        after = after_lsn.0,
                        "WAL replica truncates a divergent tail"
                    );
                    self.store.truncate_after(after_lsn)
                }
                ReplicaCommand::Trim { upto_lsn } => self.store.trim(upto_lsn),
                ReplicaCommand::Write { entries } => {
                    self.counters
                        .entries_written
                        .fetch_add(entries.len() as u64, Ordering::Relaxed);
                    self.store.write(&entries)
                }
                ReplicaCommand::Sync { upto_lsn } => {
                    self.syncs.push(upto_lsn);
                    Ok(())
                }
                ReplicaCommand::Reply { msg } => {
                    self.reply(msg);
                    Ok(())
                }
            };
            if let Err(e) = done {
                self.fail(e);
            }
        }
    }

    fn fail(&mut self, e: WalError) {
        tracing::error!(
            stream = self.stream,
            dir = %self.store.config().dir.display(),
            error = %e,
            "WAL replica stream stops for good: its store failed (replace this replica)"
        );
        let mut out = Vec::new();
        self.core.handle(ReplicaEvent::SyncFailed, &mut out);
        debug_assert!(out.is_empty() && self.core.is_stopped());
        self.failed = true;
        self.syncs.clear();
        self.counters.failed.store(true, Ordering::Release);
        for (_, conn) in self.routes.drain() {
            if let Some(conn) = conn.upgrade() {
                conn.cancel.cancel();
            }
        }
        self.unflushed.clear();
    }

    fn route(&mut self, epoch: Epoch, conn: &Arc<ConnHandle>) {
        if self
            .routes
            .get(&epoch)
            .is_some_and(|c| std::ptr::eq(c.as_ptr(), Arc::as_ptr(conn)))
        {
            return;
        }
        self.routes.insert(epoch, Arc::downgrade(conn));
        if self.routes.len() > ROUTES_MAX {
            if let Some(&oldest) = self.routes.keys().min() {
                self.routes.remove(&oldest);
            }
        }
    }

    fn reply(&mut self, msg: FromReplica) {
        let epoch = msg.epoch();
        let Some(conn) = self.routes.get(&epoch).and_then(Weak::upgrade) else {
            // Its owner is gone; the cores do not need every reply.
            self.routes.remove(&epoch);
            return;
        };
        match conn.replies.try_send(msg) {
            Ok(()) => {
                if !self.unflushed.iter().any(|c| Arc::ptr_eq(c, &conn)) {
                    self.unflushed.push(conn);
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    stream = self.stream,
                    epoch = epoch.0,
                    "WAL replica: an owner does not read its replies; closing its connection"
                );
                conn.cancel.cancel();
                self.routes.remove(&epoch);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.routes.remove(&epoch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::error::io_op;
    use crate::net::one_entry_append;

    fn driver(dir: &Path) -> StreamDriver {
        let (store, state) = StreamStore::open(StreamStoreConfig {
            dir: dir.to_path_buf(),
            segment_bytes_max: 1 << 20,
            entry_bytes_max: 1024,
        })
        .expect("open");
        StreamDriver {
            stream: 1,
            core: Replica::restore(state),
            store,
            routes: HashMap::new(),
            unflushed: Vec::new(),
            syncs: Vec::new(),
            failed: false,
            counters: Arc::new(StreamCounters::default()),
            sync_seconds: Arc::default(),
        }
    }

    fn conn() -> (Arc<ConnHandle>, mpsc::Receiver<FromReplica>) {
        let (replies, rx) = mpsc::channel(64);
        let conn = Arc::new(ConnHandle {
            replies,
            writer: None,
            cancel: CancellationToken::new(),
        });
        (conn, rx)
    }

    fn append(lsn: u64) -> ToReplica {
        one_entry_append(lsn, Arc::from(&b"payload"[..]))
    }

    fn round(d: &mut StreamDriver, conn: &Arc<ConnHandle>, msgs: Vec<ToReplica>) {
        let mut batch: Vec<StreamEvent> = msgs
            .into_iter()
            .map(|msg| StreamEvent {
                conn: conn.clone(),
                msg,
            })
            .collect();
        d.round(&mut batch, &mut Vec::new());
    }

    fn drain(rx: &mut mpsc::Receiver<FromReplica>) -> Vec<FromReplica> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    /// A seal and five appends in one round: one fdatasync, then the replies in order.
    #[test]
    fn a_round_is_one_fdatasync() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut d = driver(tmp.path());
        let (conn, mut rx) = conn();
        let mut msgs = vec![ToReplica::Seal {
            epoch: Epoch(1),
            from_lsn: Lsn(1),
        }];
        msgs.extend((1..=5).map(append));
        round(&mut d, &conn, msgs);
        assert_eq!(d.counters.syncs.load(Ordering::Relaxed), 1);
        assert_eq!(d.sync_seconds.count(), 1, "the group commit is timed once");
        assert_eq!(d.counters.entries_written.load(Ordering::Relaxed), 5);
        assert_eq!(d.counters.durable_lsn.load(Ordering::Relaxed), 5);
        let mut expected = vec![FromReplica::Sealed {
            epoch: Epoch(1),
            base_lsn: Lsn(0),
            last: None,
        }];
        expected.extend((1..=5).map(|l| FromReplica::Ack {
            epoch: Epoch(1),
            durable_lsn: Lsn(l),
        }));
        assert_eq!(drain(&mut rx), expected);
        // Nothing new to make durable: a fetch is answered without a sync.
        round(
            &mut d,
            &conn,
            vec![ToReplica::Fetch {
                epoch: Epoch(1),
                from_lsn: Lsn(4),
                upto_lsn: Lsn(9),
                bytes_max: 1 << 20,
            }],
        );
        assert_eq!(d.counters.syncs.load(Ordering::Relaxed), 1);
        match drain(&mut rx).as_slice() {
            [FromReplica::Fetched { entries, .. }] => {
                let lsns: Vec<u64> = entries.iter().map(|e| e.lsn.0).collect();
                assert_eq!(lsns, vec![4, 5]);
            }
            other => panic!("expected one Fetched, got {other:?}"),
        }
    }

    /// A failed fdatasync stops the stream for good: no reply, the connection is closed, later
    /// requests are dropped, and the counters say so.
    #[test]
    fn a_failed_fdatasync_stops_the_stream() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut d = driver(tmp.path());
        let (conn, mut rx) = conn();
        round(&mut d, &conn, vec![append(1)]);
        assert_eq!(drain(&mut rx).len(), 1, "the first append is acked");
        d.store.inject_fault(io_op::SYNC_SEGMENT);
        round(&mut d, &conn, vec![append(2)]);
        assert!(drain(&mut rx).is_empty(), "no ack after a failed fdatasync");
        assert!(conn.cancel.is_cancelled(), "its connection is closed");
        assert!(d.counters.failed.load(Ordering::Relaxed));
        assert!(d.core.is_stopped());
        let (conn2, mut rx2) = self::conn();
        round(&mut d, &conn2, vec![append(2)]);
        assert!(
            drain(&mut rx2).is_empty(),
            "a stopped stream answers nothing"
        );
        assert!(conn2.cancel.is_cancelled());
    }
}
