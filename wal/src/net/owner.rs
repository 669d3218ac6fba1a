//! The stream owner: the broker's side of a replicated WAL stream. It runs the
//! [`Recovery`] core and then its [`Writer`] against R replica servers.
//!
//! # Shape
//!
//! - The core sits in one `parking_lot::Mutex` with the per-replica outgoing queues. Every
//!   input — an append or flush from the broker, a batch of replies from a replica, a tick — is
//!   one short critical section: feed the core, then execute its commands before unlocking.
//!   `Send`s are pushed onto the replica's bounded queue there, so each replica's messages are
//!   queued in the order the core emitted them (the in-order contract). A full queue means the
//!   connection is not keeping up: it is treated as broken (`ReplicaDown`, reconnect).
//! - Per replica, a link task connects (with `connect_timeout_ms`, TCP_NODELAY, backoff from
//!   10 ms to 1 s), sends `Hello`, reports `ReplicaUp`, and reads replies until the connection
//!   breaks (`ReplicaDown`). Whoever fed the core writes what it queued into the sockets once
//!   the lock is released (a [`SocketWriter`]: the broker's sequencer thread for appends, a
//!   link task for what a reply or a tick sent), coalescing it into one write per socket; a
//!   writer task per connection only finishes writes the socket refused.
//! - A tick task feeds `Tick` every `tick_ms` from a monotonic clock (retransmit timers).
//! - `Committed` moves an atomic and wakes waiters: a `Condvar` for threads blocked in
//!   [`StreamOwner::wait_committed_blocking`], a `tokio::sync::Notify` for
//!   [`StreamOwner::wait_committed`]. `Fenced` fails every waiter and every later call.
//!
//! An append is one lock and no thread hop, and its flush writes to the sockets itself; what
//! it costs until committed is the network round trip and the replicas' group commit. Replies
//! are checked against the core's state before they are fed (the cores assert their inputs): a reply that would break an assertion closes
//! its connection with an error log instead of panicking the broker.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::conn::{FrameReader, SocketWriter};
use super::frame::{Limits, Message};
use super::{link_queue_msgs, reply_frame_bytes_max, OwnerError, MESSAGE_BYTES_MAX_CEILING};
use crate::replication::{
    AppendRefusal, Entry, EntryKind, Epoch, FromReplica, Lsn, OwnerCommand, OwnerEvent, Recovery,
    ReplicaId, ReplicationConfig, ToReplica, Writer,
};
use crate::RecoveredEntry;

/// Default [`OwnerConfig::connect_timeout_ms`].
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 1_000;
/// Default [`OwnerConfig::tick_ms`].
pub const TICK_MS_DEFAULT: u64 = 5;
/// Default [`OwnerConfig::recover_timeout_ms`].
pub const RECOVER_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Upper bound of [`OwnerConfig::tick_ms`]: retransmit timers are checked on ticks.
pub const TICK_MS_MAX: u64 = 1_000;
const RECONNECT_BACKOFF_MS_MIN: u64 = 10;
const RECONNECT_BACKOFF_MS_MAX: u64 = 1_000;
/// A connection that lived this long resets the reconnect backoff.
const CONNECTION_STABLE_MS: u64 = 1_000;

/// Where a stream's replicas are and how to drive them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerConfig {
    /// The stream id (one per broker).
    pub stream: u64,
    /// `host:port` of each replica; the index is its [`ReplicaId`]. The order must be the same
    /// for every owner of the stream.
    pub replicas: Vec<String>,
    /// R (must equal `replicas.len()`), W, and the cores' limits.
    pub replication: ReplicationConfig,
    pub connect_timeout_ms: u64,
    /// How often the cores' timers are driven.
    pub tick_ms: u64,
    /// [`StreamOwner::recover`] gives up with [`OwnerError::NoQuorum`] after this long.
    pub recover_timeout_ms: u64,
}

impl OwnerConfig {
    /// A config for `stream` on `replicas` with W = a majority and default limits.
    pub fn new(stream: u64, replicas: Vec<String>) -> OwnerConfig {
        let r = u16::try_from(replicas.len()).unwrap_or(u16::MAX);
        OwnerConfig {
            stream,
            replicas,
            replication: ReplicationConfig {
                replicas: r,
                write_quorum: r / 2 + 1,
                ..ReplicationConfig::default()
            },
            connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
            tick_ms: TICK_MS_DEFAULT,
            recover_timeout_ms: RECOVER_TIMEOUT_MS_DEFAULT,
        }
    }

    /// Checks every field; the error names the offending key.
    pub fn validate(&self) -> Result<(), OwnerError> {
        let invalid = |key, reason: String| OwnerError::InvalidConfig { key, reason };
        self.replication.validate().map_err(|e| match e {
            crate::WalError::InvalidConfig { key, reason } => invalid(key, reason),
            other => invalid("replication", other.to_string()),
        })?;
        if self.replicas.len() != usize::from(self.replication.replicas) {
            return Err(invalid(
                "replicas",
                format!(
                    "{} addresses for replicas = {}",
                    self.replicas.len(),
                    self.replication.replicas
                ),
            ));
        }
        if let Some(empty) = self.replicas.iter().position(|a| a.trim().is_empty()) {
            return Err(invalid("replicas", format!("address {empty} is empty")));
        }
        if self.replication.message_bytes_max > MESSAGE_BYTES_MAX_CEILING {
            return Err(invalid(
                "message_bytes_max",
                format!(
                    "{} is above {MESSAGE_BYTES_MAX_CEILING}, what a replica accepts",
                    self.replication.message_bytes_max
                ),
            ));
        }
        if self.tick_ms == 0 || self.tick_ms > TICK_MS_MAX {
            return Err(invalid(
                "tick_ms",
                format!("{} is outside 1..={TICK_MS_MAX}", self.tick_ms),
            ));
        }
        for (key, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("recover_timeout_ms", self.recover_timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be above 0".to_string()));
            }
        }
        Ok(())
    }
}

/// The owner's core: recovery, then (in place) its writer.
enum Core {
    Recovering(Box<Recovery>),
    Writing(Box<Writer>),
    /// Only while the recovery is moved into its writer.
    Moving,
}

impl Core {
    fn handle(&mut self, event: OwnerEvent, out: &mut Vec<OwnerCommand>) {
        match self {
            Core::Recovering(r) => {
                r.handle(event, out);
                if r.is_recovered() {
                    if let Core::Recovering(r) = std::mem::replace(self, Core::Moving) {
                        *self = Core::Writing(Box::new(r.into_writer()));
                    }
                }
            }
            Core::Writing(w) => w.handle(event, out),
            Core::Moving => unreachable!("the core is never observed while moving"),
        }
    }

    fn writer(&self) -> Option<&Writer> {
        match self {
            Core::Recovering(r) => r.writer(),
            Core::Writing(w) => Some(w),
            Core::Moving => None,
        }
    }
}

/// One replica connection as the core's executor sees it.
struct Link {
    queue: mpsc::Sender<ToReplica>,
    writer: Arc<SocketWriter<ToReplica>>,
    cancel: CancellationToken,
    generation: u64,
}

/// Everything behind the core lock.
struct State {
    core: Core,
    /// Reused command buffer.
    out: Vec<OwnerCommand>,
    links: Vec<Option<Link>>,
    /// Replicas whose queue overflowed while executing: fed as `ReplicaDown` next.
    broken: Vec<ReplicaId>,
    next_generation: u64,
    /// `Recovered` entries, until `recover` takes them.
    recovered: Option<Vec<Entry>>,
    /// The answer to the `Append` being handled.
    appended: Option<Result<Lsn, AppendRefusal>>,
    /// Links something was queued on under this lock: written after it is released.
    unflushed: Vec<Arc<SocketWriter<ToReplica>>>,
}

thread_local! {
    /// [`Shared::locked`]'s list of links to write once the core's lock is released.
    static UNFLUSHED: std::cell::RefCell<Vec<Arc<SocketWriter<ToReplica>>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

struct Shared {
    cfg: OwnerConfig,
    /// The address of each replica slot, then the joiner's (index R; empty while none).
    addrs: parking_lot::Mutex<Vec<String>>,
    /// Stops the link loop of each slot (index R: the joiner's).
    loops: parking_lot::Mutex<Vec<CancellationToken>>,
    /// Where `ReplaceReplica` and `ReplacementCaughtUp` go (see [`StreamOwner::replacements`]).
    replace_tx: mpsc::UnboundedSender<Replacement>,
    replace_rx: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<Replacement>>>,
    epoch: Epoch,
    from_lsn: Lsn,
    started: Instant,
    state: parking_lot::Mutex<State>,
    committed: AtomicU64,
    /// The sealed epoch that fenced this owner; 0 while not fenced.
    fenced: AtomicU64,
    closed: AtomicBool,
    replicas_up: AtomicUsize,
    retransmits: AtomicU64,
    wait_lock: parking_lot::Mutex<()>,
    wait_cond: parking_lot::Condvar,
    notify: Notify,
    cancel: CancellationToken,
    limits: Limits,
}

/// The broker's handle on its WAL stream: cheap to clone, `Send + Sync`. The background tasks
/// stop on [`StreamOwner::close`] or when the last handle is dropped.
#[derive(Clone)]
pub struct StreamOwner {
    inner: Arc<OwnerInner>,
}

struct OwnerInner {
    shared: Arc<Shared>,
    tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for OwnerInner {
    fn drop(&mut self) {
        self.shared.shut_down();
    }
}

impl std::fmt::Debug for StreamOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.inner.shared;
        f.debug_struct("StreamOwner")
            .field("stream", &s.cfg.stream)
            .field("epoch", &s.epoch.0)
            .field("committed", &s.committed.load(Ordering::Relaxed))
            .field("fenced", &s.fenced.load(Ordering::Relaxed))
            .finish()
    }
}

/// What the replacement of an unhealthy replica needs from the broker (see
/// [`crate::replication::writer`], "Replacing a replica"): answer `Unhealthy` with
/// [`StreamOwner::start_replace`] (a spare outside [`StreamOwner::replicas`] that is alive), and
/// `CaughtUp` by recording [`StreamOwner::replicas`] with `new_addr` in `replica`'s place in
/// metadata, then [`StreamOwner::finish_replace`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replacement {
    Unhealthy {
        replica: u16,
        addr: String,
        unhealthy_ms: u64,
    },
    CaughtUp {
        replica: u16,
        old_addr: String,
        new_addr: String,
        durable_lsn: u64,
    },
}

/// Counters of a stream owner, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerStats {
    pub epoch: u64,
    pub committed_lsn: u64,
    pub last_lsn: u64,
    pub retained_bytes: u64,
    pub replicas_up: usize,
    /// What each replica has acknowledged as durable, by replica id.
    pub acked_lsns: Vec<u64>,
    pub retransmits: u64,
    pub fenced: bool,
}

impl StreamOwner {
    /// Takes the stream for `epoch`: connects, seals the replicas at `epoch`, recovers the tail
    /// from `from_lsn` (the first LSN not in object storage, read from metadata after the
    /// lease for `epoch` was granted), re-replicates it behind a barrier, and returns once
    /// `Recovered`, with the recovered data entries (barriers skipped) in LSN order.
    ///
    /// Errors: [`OwnerError::Fenced`] (a newer epoch exists), [`OwnerError::NoQuorum`] after
    /// `recover_timeout_ms`, [`OwnerError::InvalidConfig`]. Must run inside a tokio runtime:
    /// the owner's tasks are spawned on it.
    pub async fn recover(
        cfg: OwnerConfig,
        epoch: u64,
        from_lsn: u64,
    ) -> Result<(StreamOwner, Vec<RecoveredEntry>), OwnerError> {
        cfg.validate()?;
        if epoch == 0 {
            return Err(OwnerError::InvalidConfig {
                key: "epoch",
                reason: "epoch 0 is never handed out".to_string(),
            });
        }
        if from_lsn == 0 {
            return Err(OwnerError::InvalidConfig {
                key: "from_lsn",
                reason: "LSNs start at 1".to_string(),
            });
        }
        let replicas = cfg.replicas.len();
        let limits = Limits {
            frame_bytes_max: reply_frame_bytes_max(&cfg.replication),
            entry_bytes_max: cfg.replication.entry_bytes_max,
        };
        let mut out = Vec::new();
        let (replace_tx, replace_rx) = mpsc::unbounded_channel();
        let mut addrs = cfg.replicas.clone();
        addrs.push(String::new());
        let loops: Vec<CancellationToken> =
            (0..=replicas).map(|_| CancellationToken::new()).collect();
        let mut recovery = Recovery::start(
            cfg.replication.clone(),
            Epoch(epoch),
            Lsn(from_lsn),
            0,
            &mut out,
        );
        // Nothing is connected yet: the seals above go nowhere, and each replica is sealed
        // when its link comes up.
        out.clear();
        for r in 0..replicas {
            recovery.handle(
                OwnerEvent::ReplicaDown {
                    replica: ReplicaId(r as u16),
                },
                &mut out,
            );
        }
        out.clear();
        let shared = Arc::new(Shared {
            epoch: Epoch(epoch),
            from_lsn: Lsn(from_lsn),
            started: Instant::now(),
            state: parking_lot::Mutex::new(State {
                core: Core::Recovering(Box::new(recovery)),
                out,
                links: (0..=replicas).map(|_| None).collect(),
                broken: Vec::new(),
                next_generation: 1,
                recovered: None,
                appended: None,
                unflushed: Vec::new(),
            }),
            committed: AtomicU64::new(from_lsn - 1),
            fenced: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            replicas_up: AtomicUsize::new(0),
            retransmits: AtomicU64::new(0),
            wait_lock: parking_lot::Mutex::new(()),
            wait_cond: parking_lot::Condvar::new(),
            notify: Notify::new(),
            cancel: CancellationToken::new(),
            limits,
            addrs: parking_lot::Mutex::new(addrs),
            loops: parking_lot::Mutex::new(loops),
            replace_tx,
            replace_rx: parking_lot::Mutex::new(Some(replace_rx)),
            cfg,
        });
        let mut tasks = Vec::with_capacity(replicas + 1);
        for r in 0..replicas {
            let replica = ReplicaId(r as u16);
            tasks.push(tokio::spawn(link_loop(
                shared.clone(),
                replica,
                shared.loop_token(replica),
            )));
        }
        tasks.push(tokio::spawn(tick_loop(shared.clone())));
        let owner = StreamOwner {
            inner: Arc::new(OwnerInner {
                shared: shared.clone(),
                tasks: parking_lot::Mutex::new(tasks),
            }),
        };

        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(shared.cfg.recover_timeout_ms);
        let entries = loop {
            let notified = shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(entries) = shared.state.lock().recovered.take() {
                break entries;
            }
            if let Some(sealed_epoch) = shared.fenced_epoch() {
                return Err(OwnerError::Fenced { sealed_epoch });
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let err = OwnerError::NoQuorum {
                    stream: shared.cfg.stream,
                    epoch,
                    waited_ms: shared.cfg.recover_timeout_ms,
                    replicas_up: shared.replicas_up.load(Ordering::Relaxed),
                    replicas,
                };
                tracing::warn!(error = %err, "WAL stream recovery gave up");
                return Err(err);
            }
        };
        let recovered = entries
            .into_iter()
            .filter(|e| e.kind == EntryKind::Data)
            .map(|e| RecoveredEntry {
                lsn: e.lsn.0,
                payload: e.payload.to_vec(),
            })
            .collect();
        Ok((owner, recovered))
    }

    /// Assigns the next LSN to `payload` and queues it; it is sent on the next
    /// [`StreamOwner::flush`] (or ack, or tick). Not durable until committed. Non-blocking.
    ///
    /// Errors: [`OwnerError::Full`] (retryable: until uploads trim), [`OwnerError::TooLarge`],
    /// [`OwnerError::Fenced`], [`OwnerError::Closed`].
    pub fn append(&self, payload: &[u8]) -> Result<u64, OwnerError> {
        let shared = &self.inner.shared;
        shared.check_open()?;
        let entry_bytes_max = shared.cfg.replication.entry_bytes_max;
        if payload.len() > entry_bytes_max as usize {
            return Err(OwnerError::TooLarge {
                len: payload.len(),
                entry_bytes_max,
            });
        }
        let payload: Arc<[u8]> = Arc::from(payload);
        let answer = shared.locked(|st| {
            let wake = shared.handle(st, OwnerEvent::Append { payload });
            (st.appended.take(), wake)
        });
        match answer.expect("the core answers every append") {
            Ok(lsn) => Ok(lsn.0),
            Err(AppendRefusal::Full {
                retained_bytes,
                retained_bytes_max,
            }) => Err(OwnerError::Full {
                retained_bytes,
                retained_bytes_max,
            }),
            Err(AppendRefusal::TooLarge {
                len,
                entry_bytes_max,
            }) => Err(OwnerError::TooLarge {
                len,
                entry_bytes_max,
            }),
            Err(AppendRefusal::Fenced) => {
                Err(shared.check_open().err().unwrap_or(OwnerError::Fenced {
                    sealed_epoch: shared.epoch.0 + 1,
                }))
            }
            Err(AppendRefusal::Recovering) => {
                unreachable!("a StreamOwner is handed out only after Recovered")
            }
        }
    }

    /// Sends what is queued. Call after a group of appends.
    pub fn flush(&self) {
        self.inner.shared.input(OwnerEvent::Flush);
    }

    /// Blocks the calling OS thread until every entry up to `lsn` is committed (durable on a
    /// write quorum), or fails with [`OwnerError::Fenced`] / [`OwnerError::Closed`]. Not for a
    /// tokio worker thread: use [`StreamOwner::wait_committed`] there.
    pub fn wait_committed_blocking(&self, lsn: u64) -> Result<(), OwnerError> {
        let shared = &self.inner.shared;
        if let Some(done) = shared.committed_or_failed(lsn) {
            return done;
        }
        let mut guard = shared.wait_lock.lock();
        loop {
            if let Some(done) = shared.committed_or_failed(lsn) {
                return done;
            }
            shared.wait_cond.wait(&mut guard);
        }
    }

    /// [`StreamOwner::wait_committed_blocking`] for async callers.
    pub async fn wait_committed(&self, lsn: u64) -> Result<(), OwnerError> {
        let shared = &self.inner.shared;
        loop {
            let notified = shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(done) = shared.committed_or_failed(lsn) {
                return done;
            }
            notified.await;
        }
    }

    /// Entries up to `upto_lsn` are in object storage and committed to the metadata index:
    /// stop retaining them, and let the replicas drop them. Precondition: `upto_lsn <=
    /// committed_lsn()` (a larger value is a broker bug and panics).
    pub fn trim(&self, upto_lsn: u64) {
        let committed = self.committed_lsn();
        assert!(
            upto_lsn <= committed,
            "WAL trim to {upto_lsn} past the committed lsn {committed}"
        );
        self.inner.shared.input(OwnerEvent::Trim {
            upto_lsn: Lsn(upto_lsn),
        });
    }

    /// Every entry up to here is committed.
    pub fn committed_lsn(&self) -> u64 {
        self.inner.shared.committed.load(Ordering::Acquire)
    }

    /// The last LSN assigned.
    pub fn last_lsn(&self) -> u64 {
        let st = self.inner.shared.state.lock();
        st.core.writer().map_or(0, |w| w.last_lsn().0)
    }

    /// Bytes of entries retained until trimmed (what `retained_bytes_max` limits).
    pub fn retained_bytes(&self) -> u64 {
        let st = self.inner.shared.state.lock();
        st.core.writer().map_or(0, |w| w.retained_bytes())
    }

    /// Replicas with a live connection.
    pub fn replicas_up(&self) -> usize {
        self.inner.shared.replicas_up.load(Ordering::Relaxed)
    }

    pub fn epoch(&self) -> u64 {
        self.inner.shared.epoch.0
    }

    pub fn stream(&self) -> u64 {
        self.inner.shared.cfg.stream
    }

    /// The sealed epoch that fenced this owner, if it was fenced.
    pub fn fenced_by(&self) -> Option<u64> {
        self.inner.shared.fenced_epoch()
    }

    pub fn stats(&self) -> OwnerStats {
        let shared = &self.inner.shared;
        let st = shared.state.lock();
        let writer = st.core.writer();
        OwnerStats {
            epoch: shared.epoch.0,
            committed_lsn: shared.committed.load(Ordering::Acquire),
            last_lsn: writer.map_or(0, |w| w.last_lsn().0),
            retained_bytes: writer.map_or(0, |w| w.retained_bytes()),
            replicas_up: shared.replicas_up.load(Ordering::Relaxed),
            acked_lsns: (0..shared.cfg.replicas.len())
                .map(|r| writer.map_or(0, |w| w.acked_lsn(ReplicaId(r as u16)).0))
                .collect(),
            retransmits: shared.retransmits.load(Ordering::Relaxed),
            fenced: shared.fenced_epoch().is_some(),
        }
    }

    /// The replica set, in replica-id order (it changes with [`StreamOwner::finish_replace`]).
    pub fn replicas(&self) -> Vec<String> {
        let shared = &self.inner.shared;
        let addrs = shared.addrs.lock();
        addrs[..shared.cfg.replicas.len()].to_vec()
    }

    /// The replacement requests of this owner (once; `None` afterwards). Without a taker they
    /// are dropped and no replica is ever replaced.
    pub fn replacements(&self) -> Option<mpsc::UnboundedReceiver<Replacement>> {
        self.inner.shared.replace_rx.lock().take()
    }

    /// Starts replacing `replica` with the WAL node at `new_addr` (outside the set): it is
    /// connected as the joiner and caught up. `false` if the owner is not writing, another
    /// replacement is under way, or the arguments are invalid.
    pub fn start_replace(&self, replica: u16, new_addr: &str) -> bool {
        let shared = &self.inner.shared;
        let r = shared.cfg.replicas.len();
        if usize::from(replica) >= r || new_addr.trim().is_empty() || shared.check_open().is_err() {
            return false;
        }
        if shared.addrs.lock().iter().take(r).any(|a| a == new_addr) {
            return false;
        }
        let joiner = ReplicaId(r as u16);
        let started = shared.locked(|st| {
            let Some(w) = st.core.writer() else {
                return (false, false);
            };
            if w.replacing().is_some() || !matches!(st.core, Core::Writing(_)) {
                return (false, false);
            }
            let wake = shared.handle(
                st,
                OwnerEvent::ReplaceStart {
                    replica: ReplicaId(replica),
                },
            );
            let started = st.core.writer().and_then(|w| w.replacing()) == Some(ReplicaId(replica));
            (started, wake)
        });
        if !started {
            return false;
        }
        shared.addrs.lock()[r] = new_addr.to_string();
        let token = shared.renew_loop_token(joiner);
        self.inner
            .tasks
            .lock()
            .push(tokio::spawn(link_loop(shared.clone(), joiner, token)));
        true
    }

    /// Ends the replacement of `replica`: `recorded` once metadata holds the new set (the
    /// joiner takes the slot, the old node gets nothing more), else it is abandoned (the joiner
    /// is disconnected).
    pub fn finish_replace(&self, replica: u16, recorded: bool) {
        let shared = &self.inner.shared;
        let r = shared.cfg.replicas.len();
        let joiner = ReplicaId(r as u16);
        let slot = ReplicaId(replica);
        if usize::from(replica) >= r {
            return;
        }
        let caught_up = shared
            .state
            .lock()
            .core
            .writer()
            .is_some_and(|w| w.replacing() == Some(slot) && w.replacement_caught_up());
        if recorded && !caught_up {
            tracing::error!(
                stream = shared.cfg.stream,
                replica,
                "WAL owner: finish_replace for a replacement that has not caught up; ignored"
            );
            return;
        }
        // Stop the joiner's connection first: its replies are no longer fed as the joiner's.
        shared.stop_loop(joiner);
        if !recorded {
            shared.input(OwnerEvent::ReplaceAborted);
            return;
        }
        // The old node's connection goes; replies it still had in flight are dropped (their
        // link generation is gone).
        shared.stop_loop(slot);
        {
            let mut addrs = shared.addrs.lock();
            addrs[replica as usize] = std::mem::take(&mut addrs[r]);
        }
        shared.input(OwnerEvent::ReplaceDone { replica: slot });
        let token = shared.renew_loop_token(slot);
        self.inner
            .tasks
            .lock()
            .push(tokio::spawn(link_loop(shared.clone(), slot, token)));
    }

    /// Stops the owner: waiters and later calls fail with [`OwnerError::Closed`], connections
    /// close, and the background tasks have ended when this returns.
    pub async fn close(&self) {
        self.inner.shared.shut_down();
        let tasks = std::mem::take(&mut *self.inner.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The token of `replica`'s link loop (a child of the owner's).
    fn loop_token(&self, replica: ReplicaId) -> CancellationToken {
        let mut loops = self.loops.lock();
        let token = self.cancel.child_token();
        loops[replica.index()] = token.clone();
        token
    }

    /// Stops `replica`'s link loop and a new token for the next one.
    fn renew_loop_token(&self, replica: ReplicaId) -> CancellationToken {
        self.stop_loop(replica);
        self.loop_token(replica)
    }

    /// Stops `replica`'s link loop and reports its connection down now (its late replies are
    /// dropped: the generation is gone).
    fn stop_loop(&self, replica: ReplicaId) {
        self.loops.lock()[replica.index()].cancel();
        self.locked(|st| match st.links[replica.index()].take() {
            Some(link) => {
                link.cancel.cancel();
                self.count_up(st);
                ((), self.handle(st, OwnerEvent::ReplicaDown { replica }))
            }
            None => ((), false),
        });
    }

    fn fenced_epoch(&self) -> Option<u64> {
        match self.fenced.load(Ordering::Acquire) {
            0 => None,
            e => Some(e),
        }
    }

    fn check_open(&self) -> Result<(), OwnerError> {
        if let Some(sealed_epoch) = self.fenced_epoch() {
            return Err(OwnerError::Fenced { sealed_epoch });
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(OwnerError::Closed);
        }
        Ok(())
    }

    fn committed_or_failed(&self, lsn: u64) -> Option<Result<(), OwnerError>> {
        if self.committed.load(Ordering::Acquire) >= lsn {
            return Some(Ok(()));
        }
        self.check_open().err().map(Err)
    }

    fn shut_down(&self) {
        self.closed.store(true, Ordering::Release);
        self.cancel.cancel();
        self.wake();
    }

    /// Wakes every waiter to re-check `committed`, `fenced` and `closed`.
    fn wake(&self) {
        // Taking the lock orders this after a blocked waiter's check (see
        // `wait_committed_blocking`), so the notification cannot fall between check and wait.
        drop(self.wait_lock.lock());
        self.wait_cond.notify_all();
        self.notify.notify_waiters();
    }

    /// Feeds one event (lock, handle, execute, unlock) and wakes waiters if needed.
    fn input(&self, event: OwnerEvent) {
        self.locked(|st| ((), self.handle(st, event)));
    }

    /// Runs `f` under the core lock; then, unlocked, wakes the waiters if `f` says so (its
    /// second value) and writes what `f` queued for the replicas, on this thread (see
    /// [`SocketWriter`]). Every feeding of the core goes through here.
    fn locked<T>(&self, f: impl FnOnce(&mut State) -> (T, bool)) -> T {
        // The links to write are swapped into this thread's own list, whose capacity stays
        // with the thread, so the sequencer's path allocates nothing per feeding.
        UNFLUSHED.with_borrow_mut(|unflushed| {
            debug_assert!(unflushed.is_empty());
            let (result, wake) = {
                let mut st = self.state.lock();
                let (result, wake) = f(&mut st);
                std::mem::swap(unflushed, &mut st.unflushed);
                (result, wake)
            };
            if wake {
                self.wake();
            }
            for writer in unflushed.drain(..) {
                writer.flush();
            }
            result
        })
    }

    /// Feeds `event` and executes the commands; returns whether waiters must be woken.
    fn handle(&self, st: &mut State, event: OwnerEvent) -> bool {
        let mut out = std::mem::take(&mut st.out);
        st.core.handle(event, &mut out);
        let mut wake = self.execute(st, &mut out);
        while let Some(replica) = st.broken.pop() {
            st.core
                .handle(OwnerEvent::ReplicaDown { replica }, &mut out);
            wake |= self.execute(st, &mut out);
        }
        st.out = out;
        wake
    }

    fn execute(&self, st: &mut State, out: &mut Vec<OwnerCommand>) -> bool {
        let mut wake = false;
        for cmd in out.drain(..) {
            match cmd {
                OwnerCommand::Send { replica, msg } => self.send(st, replica, msg),
                OwnerCommand::Retransmit { replica, from_lsn } => {
                    self.retransmits.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        stream = self.cfg.stream,
                        %replica,
                        from = from_lsn.0,
                        "WAL owner retransmits"
                    );
                }
                OwnerCommand::Appended { lsn } => st.appended = Some(Ok(lsn)),
                OwnerCommand::AppendRefused { reason } => st.appended = Some(Err(reason)),
                OwnerCommand::Committed { upto_lsn } => {
                    self.committed.fetch_max(upto_lsn.0, Ordering::AcqRel);
                    wake = true;
                }
                OwnerCommand::Fenced { sealed_epoch } => {
                    tracing::warn!(
                        stream = self.cfg.stream,
                        epoch = self.epoch.0,
                        sealed_epoch = sealed_epoch.0,
                        "WAL stream fenced: a newer owner took it"
                    );
                    self.fenced.store(sealed_epoch.0, Ordering::Release);
                    wake = true;
                }
                OwnerCommand::Recovered { entries, .. } => {
                    st.recovered = Some(entries);
                    wake = true;
                }
                OwnerCommand::ReplaceReplica {
                    replica,
                    unhealthy_since_ms,
                } => {
                    let addr = self.addrs.lock()[replica.index()].clone();
                    tracing::warn!(
                        stream = self.cfg.stream,
                        %replica,
                        %addr,
                        unhealthy_ms = self.now_ms().saturating_sub(unhealthy_since_ms),
                        "WAL owner: a replica is unhealthy; looking for a spare to replace it"
                    );
                    let _ = self.replace_tx.send(Replacement::Unhealthy {
                        replica: replica.0,
                        addr,
                        unhealthy_ms: self.now_ms().saturating_sub(unhealthy_since_ms),
                    });
                }
                OwnerCommand::ReplacementCaughtUp {
                    replica,
                    durable_lsn,
                } => {
                    let addrs = self.addrs.lock();
                    let _ = self.replace_tx.send(Replacement::CaughtUp {
                        replica: replica.0,
                        old_addr: addrs[replica.index()].clone(),
                        new_addr: addrs[self.cfg.replicas.len()].clone(),
                        durable_lsn: durable_lsn.0,
                    });
                }
            }
        }
        wake
    }

    fn send(&self, st: &mut State, replica: ReplicaId, msg: ToReplica) {
        let Some(link) = &st.links[replica.index()] else {
            return; // down: the core resends after ReplicaUp
        };
        if link.queue.try_send(msg).is_ok() {
            if !st.unflushed.iter().any(|w| Arc::ptr_eq(w, &link.writer)) {
                st.unflushed.push(link.writer.clone());
            }
            return;
        }
        tracing::warn!(
            stream = self.cfg.stream,
            %replica,
            "WAL owner: a replica connection is not keeping up; reconnecting"
        );
        link.cancel.cancel();
        st.links[replica.index()] = None;
        self.count_up(st);
        st.broken.push(replica);
    }

    fn count_up(&self, st: &State) {
        // The joiner is not a member yet.
        let members = self.cfg.replicas.len();
        let up = st.links[..members].iter().filter(|l| l.is_some()).count();
        self.replicas_up.store(up, Ordering::Relaxed);
    }

    fn link_up(
        &self,
        replica: ReplicaId,
        queue: mpsc::Sender<ToReplica>,
        writer: Arc<SocketWriter<ToReplica>>,
        cancel: CancellationToken,
    ) -> u64 {
        self.locked(|st| {
            let generation = st.next_generation;
            st.next_generation += 1;
            st.links[replica.index()] = Some(Link {
                queue,
                writer,
                cancel,
                generation,
            });
            self.count_up(st);
            let wake = self.handle(st, OwnerEvent::ReplicaUp { replica });
            (generation, wake)
        })
    }

    fn link_down(&self, replica: ReplicaId, generation: u64) {
        self.locked(|st| {
            let current = st.links[replica.index()]
                .as_ref()
                .is_some_and(|l| l.generation == generation);
            if !current {
                return ((), false); // already reported down (its queue overflowed)
            }
            st.links[replica.index()] = None;
            self.count_up(st);
            ((), self.handle(st, OwnerEvent::ReplicaDown { replica }))
        });
    }

    /// Feeds a batch of replies from `replica` under one lock. `Err` names a reply that would
    /// break a core's assertion: the connection is closed.
    fn replies(
        &self,
        replica: ReplicaId,
        generation: u64,
        batch: &mut Vec<FromReplica>,
    ) -> Result<(), &'static str> {
        self.locked(|st| {
            let current = st.links[replica.index()]
                .as_ref()
                .is_some_and(|l| l.generation == generation);
            if !current {
                // A connection replaced or stopped (a replaced replica): not this slot's any more.
                batch.clear();
                return (Ok(()), false);
            }
            let mut result = Ok(());
            let mut wake = false;
            for msg in batch.drain(..) {
                if let Err(why) = self.check_reply(&st.core, replica, &msg) {
                    result = Err(why);
                    break;
                }
                wake |= self.handle(st, OwnerEvent::from_reply(replica, msg));
            }
            batch.clear();
            (result, wake)
        })
    }

    /// What the cores assert about a reply of this epoch, checked first (frame decoding already
    /// checked each message's own shape).
    fn check_reply(
        &self,
        core: &Core,
        replica: ReplicaId,
        msg: &FromReplica,
    ) -> Result<(), &'static str> {
        if msg.epoch() != self.epoch {
            return Ok(()); // the cores ignore other epochs
        }
        match msg {
            FromReplica::Ack { durable_lsn, .. } => {
                if let Some(w) = core.writer() {
                    if *durable_lsn > w.last_lsn() {
                        return Err("an ack past the owner's last entry");
                    }
                }
            }
            FromReplica::Sealed { base_lsn, last, .. } => {
                if let Core::Recovering(r) = core {
                    if r.is_choosing() {
                        if *base_lsn >= self.from_lsn {
                            return Err("a replica trimmed at or past from_lsn: metadata is stale or a trim went past the uploaded end");
                        }
                        if last.is_some_and(|l| l.lsn < self.from_lsn || l.epoch >= self.epoch) {
                            return Err("a sealed answer's last entry is below from_lsn or not below this epoch");
                        }
                    }
                }
            }
            FromReplica::Fetched { entries, .. } => {
                if let Core::Recovering(r) = core {
                    if let Some((source, next, tail_epoch, last)) = r.fetching() {
                        let answers =
                            source == replica && entries.first().is_some_and(|e| e.lsn == next);
                        let fits = |e: &Entry| e.lsn <= last.lsn && e.epoch <= last.epoch;
                        if answers
                            && (entries.iter().any(|e| !fits(e)) || entries[0].epoch < tail_epoch)
                        {
                            return Err("fetched entries beyond the agreed tail");
                        }
                    }
                }
            }
            FromReplica::Nack { .. } => {}
        }
        Ok(())
    }
}

async fn tick_loop(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(Duration::from_millis(shared.cfg.tick_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        shared.input(OwnerEvent::Tick {
            now_ms: shared.now_ms(),
        });
    }
}

/// Keeps replica `r` connected until `token` (the slot's loop) or the owner stops.
async fn link_loop(shared: Arc<Shared>, replica: ReplicaId, token: CancellationToken) {
    let addr = shared.addrs.lock()[replica.index()].clone();
    let connect_timeout = Duration::from_millis(shared.cfg.connect_timeout_ms);
    let mut backoff_ms = RECONNECT_BACKOFF_MS_MIN;
    let mut failures = 0u64;
    loop {
        let connected = tokio::select! {
            _ = token.cancelled() => return,
            c = tokio::time::timeout(connect_timeout, TcpStream::connect(addr.as_str())) => c,
        };
        match connected {
            Ok(Ok(socket)) => {
                failures = 0;
                let started = Instant::now();
                run_link(&shared, replica, socket, &token).await;
                if started.elapsed() >= Duration::from_millis(CONNECTION_STABLE_MS) {
                    backoff_ms = RECONNECT_BACKOFF_MS_MIN;
                }
            }
            Ok(Err(e)) => {
                failures += 1;
                // Once per outage, not once per retry.
                if failures == 1 {
                    tracing::warn!(stream = shared.cfg.stream, %replica, %addr, error = %e, "WAL owner cannot connect to a replica; retrying");
                }
            }
            Err(_) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(stream = shared.cfg.stream, %replica, %addr, "WAL owner: connecting to a replica timed out; retrying");
                }
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
        }
        backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MS_MAX);
    }
}

/// One connection's life: up, read replies until it breaks, down.
async fn run_link(
    shared: &Arc<Shared>,
    replica: ReplicaId,
    socket: TcpStream,
    token: &CancellationToken,
) {
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let (mut rd, wr) = socket.into_split();
    let (queue, queue_rx) = mpsc::channel(link_queue_msgs(&shared.cfg.replication));
    let cancel = token.child_token();
    let hello = Message::Hello {
        stream: shared.cfg.stream,
    };
    // Hello is queued ahead of everything, so it is the first frame and what the core sends
    // on `ReplicaUp` follows it.
    let socket_writer = SocketWriter::new(
        wr,
        queue_rx,
        Some(hello),
        Message::ToReplica,
        cancel.clone(),
    );
    let writer = tokio::spawn(socket_writer.clone().run());
    let generation = shared.link_up(replica, queue, socket_writer, cancel.clone());
    tracing::debug!(stream = shared.cfg.stream, %replica, "WAL owner connected to a replica");

    let mut reader = FrameReader::new(shared.limits);
    let mut batch = Vec::new();
    'read: loop {
        loop {
            match reader.next_buffered() {
                Ok(Some(Message::FromReplica(msg))) => batch.push(msg),
                Ok(Some(other)) => {
                    tracing::warn!(%replica, got = other.name(), "WAL owner: unexpected message from a replica; reconnecting");
                    break 'read;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(%replica, reason = %e, "WAL owner: bad frame from a replica; reconnecting");
                    break 'read;
                }
            }
        }
        if !batch.is_empty() {
            if let Err(why) = shared.replies(replica, generation, &mut batch) {
                tracing::error!(stream = shared.cfg.stream, %replica, why, "WAL owner: a replica broke the protocol; reconnecting");
                break;
            }
        }
        let filled = tokio::select! {
            _ = cancel.cancelled() => break,
            filled = reader.fill(&mut rd) => filled,
        };
        match filled {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                tracing::debug!(%replica, reason = %e, "WAL owner: replica connection lost");
                break;
            }
        }
    }
    cancel.cancel();
    shared.link_down(replica, generation);
    let _ = writer.await;
    tracing::debug!(stream = shared.cfg.stream, %replica, "WAL owner: replica connection closed");
}
