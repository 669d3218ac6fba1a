//! Sessions, subscriptions and retained messages: a value ([`RouterCore`]) owned by one task
//! ([`run`]) that takes every input from one bounded queue.
//!
//! Inputs come from connections (connect, disconnect, subscribe, unsubscribe, cursor progress,
//! retain) and from the partition tailers (every MQTT message appended to a mapped Kafka
//! topic, whoever wrote it).
//!
//! Two kinds of session:
//! - *ephemeral* (MQTT 5 Session Expiry Interval 0, 3.1.1 `clean_session = 1`): the tailers
//!   hand over messages in batches (one per tail read, at most `ROUTE_BATCH_MAX`); the router
//!   gives each connection its deliveries of a batch as one item of its bounded queue
//!   ([`DeliveryTx::offer`]) — it never waits on a slow client; what does not fit is dropped
//!   and counted (`strata_mqtt_dropped_total`). The session ends with its connection.
//! - *persistent* (expiry > 0, 3.1.1 `clean_session = 0`): not routed here. Its connection
//!   reads the partitions itself from the session's cursors (`replay.rs`), so nothing is
//!   dropped and what was published while it was away is read from the log when it returns.
//!   The router keeps its subscriptions and committed cursors, hands them to the next
//!   connection (takeover, reconnect), expires it, and writes it to the session log
//!   (`store.rs`): changes the client asked for (connect, disconnect, subscriptions) at once,
//!   cursor progress in batches every [`FLUSH_INTERVAL_MS`] — so a restart resumes it.
//!
//! Sessions are keyed by client id. A second connection with the same id takes the session
//! over: the older connection is told to go (MQTT 5: DISCONNECT 0x8E). Across brokers
//! (`cluster_sessions`) the same happens through [`RouterMsg::Take`] on the old broker and
//! [`Remote`] on the new one; every session carries a takeover *generation*, and the copy with
//! the highest wins ([`RouterCore::connect_with`]). Ended sessions leave a tombstone (their
//! generation) and sessions handed to another broker a moved copy, both bounded, both in the
//! snapshot [`RouterCore::export`] gives.
//!
//! Matching looks only at the subscriptions that match: [`SubIndex`] keeps every session's
//! ordinary filters in a `topic::FilterIndex` (which client ids hold the filters matching a
//! topic name) and its shared ones in their groups, in step with the sessions' `subs`.
//! Shared subscriptions, No Local and subscription identifiers plug in at
//! [`RouterCore::route_batch`]. A delivery whose PUBLISH packet is the same bytes for every
//! connection of its protocol version (`wire::shareable`) gets that packet encoded once per
//! message ([`Frames`]), so a fan-out encodes once, not once per subscriber.

use super::store::{CursorMark, Marks, Qos2Ids, SessionRecord, StoreOp, StoredSub};
use super::topic;
use super::wire::{self, Proto};
use super::{Delivery, Message};
use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use strata_types::PartitionKey;
use tokio::sync::{mpsc, oneshot};

/// Retained messages kept at most (a new topic beyond it is not retained; logged).
pub const RETAINED_MESSAGES_MAX: usize = 100_000;
/// Sessions kept at most, connected or not; a connect beyond it is refused (server busy).
pub const SESSIONS_MAX: usize = 100_000;
/// Changed persistent sessions are handed to the session log this often.
pub const FLUSH_INTERVAL_MS: u64 = 100;
/// Expired sessions are looked for this often.
pub const EXPIRY_CHECK_INTERVAL_MS: i64 = 1000;
/// Session Expiry Interval meaning "never".
pub const EXPIRY_NEVER: u32 = u32::MAX;
/// A connect taking over a live persistent session waits this long at most for the old
/// connection's final cursors.
pub const TAKEOVER_WAIT_MS: i64 = 2000;
/// Tombstones kept at most (the oldest go first).
pub const TOMBSTONES_MAX: usize = 100_000;
/// A tombstone is kept this long after its session ended.
pub const TOMBSTONE_KEEP_MS: i64 = 24 * 3600 * 1000;
/// Another broker's `TakeSession` waits this long at most for the live connection's final
/// cursors (then the last reported ones go): well within the asker's own timeout
/// (`cluster_sessions::TAKE_TIMEOUT_MS`).
pub const TAKE_WAIT_MS: i64 = 500;

/// What a subscription asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    pub qos: u8,
    /// MQTT 5: keep the RETAIN flag on live deliveries.
    pub retain_as_published: bool,
    /// MQTT 5 Retain Handling: 0 send retained at subscribe, 1 only for a new subscription,
    /// 2 never.
    pub retain_handling: u8,
    /// MQTT 5 Subscription Identifier.
    pub sub_id: Option<u32>,
    /// MQTT 5 No Local: messages this client published are not sent to it.
    pub no_local: bool,
}

/// Among `subs`, the matching ordinary (not shared) subscription with the highest QoS, and
/// the Subscription Identifiers of all matching ones. `own`: the message was published by
/// this session's client (subscriptions with No Local do not match it).
pub fn best_match(
    subs: &BTreeMap<String, SubOptions>,
    topic_name: &str,
    own: bool,
) -> Option<(SubOptions, Vec<u32>)> {
    find_match(subs, topic_name, own).map(|m| (m.opts, m.sub_ids))
}

/// What [`best_match`] finds, and whether a matching subscription has No Local (then the
/// session's own messages need a look of their own).
struct Match {
    opts: SubOptions,
    sub_ids: Vec<u32>,
    no_local: bool,
}

fn find_match(subs: &BTreeMap<String, SubOptions>, topic_name: &str, own: bool) -> Option<Match> {
    let mut best: Option<SubOptions> = None;
    let mut sub_ids = Vec::new();
    let mut no_local = false;
    for (filter, opts) in subs {
        if filter.starts_with(topic::SHARE_PREFIX)
            || (own && opts.no_local)
            || !topic::matches(filter, topic_name)
        {
            continue;
        }
        sub_ids.extend(opts.sub_id);
        no_local |= opts.no_local;
        if best.is_none_or(|b| opts.qos > b.qos) {
            best = Some(*opts);
        }
    }
    best.map(|opts| Match {
        opts,
        sub_ids,
        no_local,
    })
}

/// A connected client, as the router reaches it.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: u64,
    pub tx: DeliveryTx,
    /// The protocol of the shared PUBLISH frames it sends as they are
    /// (`wire::Codec::shares_frames`); `None`: it encodes every PUBLISH itself.
    pub frames: Option<Proto>,
}

/// What one connection gets of a routed message, in message order within a batch.
#[derive(Debug)]
pub enum Routed {
    /// A delivery the connection encodes itself.
    One(Delivery),
    /// Consecutive messages as shared PUBLISH frames (`wire::shared_frame`), sent as they are.
    Frames(FrameRun),
}

/// `count` shared PUBLISH frames, one after the other in `bytes` (a slice of the batch's one
/// buffer for their protocol version and RETAIN flag).
#[derive(Debug)]
pub struct FrameRun {
    slot: usize,
    start: usize,
    end: usize,
    pub count: usize,
    pub bytes: Bytes,
}

impl FrameRun {
    /// The protocol version the frames are encoded for.
    pub fn proto(&self) -> Proto {
        FrameBufs::proto(self.slot)
    }
}

impl Routed {
    /// How many messages it carries.
    pub fn messages(&self) -> usize {
        match self {
            Routed::One(_) => 1,
            Routed::Frames(run) => run.count,
        }
    }
}

/// Cuts `batch` to its first `keep` messages (a run of frames may be cut inside).
fn truncate_messages(batch: &mut Vec<Routed>, keep: usize) {
    let mut kept = 0;
    for i in 0..batch.len() {
        let n = batch[i].messages();
        if kept + n <= keep {
            kept += n;
            continue;
        }
        let part = keep - kept;
        if let (Routed::Frames(run), true) = (&mut batch[i], part > 0) {
            run.bytes.truncate(wire::packets_prefix(&run.bytes, part));
            run.count = part;
            batch.truncate(i + 1);
        } else {
            batch.truncate(i);
        }
        return;
    }
}

/// The router's end of one connection's delivery queue. Deliveries travel in batches (all of
/// a routed batch of messages that one connection gets, in order), so a fan-out to many
/// subscribers costs one queue operation and one wake-up per connection and batch, not per
/// message. The queue is bounded twice: in batches (the channel) and in messages
/// (`messages_max`, counted across the batches it holds).
#[derive(Debug, Clone)]
pub struct DeliveryTx {
    tx: mpsc::Sender<Vec<Routed>>,
    queued: Arc<AtomicUsize>,
    messages_max: usize,
}

/// The connection's end of its delivery queue.
#[derive(Debug)]
pub struct DeliveryRx {
    rx: mpsc::Receiver<Vec<Routed>>,
    queued: Arc<AtomicUsize>,
}

/// A delivery queue of at most `batches_max` batches holding at most `messages_max`
/// deliveries.
pub fn delivery_queue(batches_max: usize, messages_max: usize) -> (DeliveryTx, DeliveryRx) {
    assert!(batches_max > 0 && messages_max > 0);
    let (tx, rx) = mpsc::channel(batches_max);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        DeliveryTx {
            tx,
            queued: queued.clone(),
            messages_max,
        },
        DeliveryRx { rx, queued },
    )
}

impl DeliveryTx {
    /// Queues what fits of `batch` without waiting; returns how many deliveries were dropped
    /// (the tail of the batch beyond the room left, or all of it when the connection is gone
    /// or holds `batches_max` batches already). The router never waits on a slow client.
    pub fn offer(&self, mut batch: Vec<Routed>) -> usize {
        let n: usize = batch.iter().map(Routed::messages).sum();
        if n == 0 {
            return 0;
        }
        // Only the router adds, and the connection only takes away: the room seen here can
        // only grow before the add below.
        let room = self
            .messages_max
            .saturating_sub(self.queued.load(Ordering::Acquire));
        if room == 0 {
            return n;
        }
        let kept = n.min(room);
        if kept < n {
            truncate_messages(&mut batch, kept);
        }
        self.queued.fetch_add(kept, Ordering::AcqRel);
        match self.tx.try_send(batch) {
            Ok(()) => n - kept,
            Err(_) => {
                self.queued.fetch_sub(kept, Ordering::AcqRel);
                n
            }
        }
    }
}

impl DeliveryRx {
    /// The next batch, waiting for one; `None` once the router dropped its end.
    pub async fn recv(&mut self) -> Option<Vec<Routed>> {
        let batch = self.rx.recv().await?;
        self.taken(&batch);
        Some(batch)
    }

    /// The next batch if one is queued.
    pub fn try_recv(&mut self) -> Option<Vec<Routed>> {
        let batch = self.rx.try_recv().ok()?;
        self.taken(&batch);
        Some(batch)
    }

    fn taken(&self, batch: &[Routed]) {
        let n: usize = batch.iter().map(Routed::messages).sum();
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct SessionEntry {
    conn: Option<ConnHandle>,
    /// Told to the connection when another one takes the session.
    kick: Option<oneshot::Sender<()>>,
    subs: BTreeMap<String, SubOptions>,
    /// 0: ephemeral; [`EXPIRY_NEVER`]: never expires.
    expiry_secs: u32,
    /// Persistent sessions: committed cursors, as last reported by the connection.
    cursors: Vec<(PartitionKey, CursorMark)>,
    /// Persistent sessions: open QoS 2 exchanges, reported with the cursors.
    qos2: Qos2Ids,
    /// When the last connection ended (wall clock, ms).
    disconnected_ms: Option<i64>,
    /// Takeover generation (see `cluster_sessions`): above every generation this client id
    /// had anywhere when this session was created or taken over.
    generation: u64,
}

impl SessionEntry {
    fn persistent(&self) -> bool {
        self.expiry_secs > 0
    }

    fn record(&self, client_id: &str) -> SessionRecord {
        SessionRecord {
            client_id: client_id.to_string(),
            expiry_secs: self.expiry_secs,
            subs: self
                .subs
                .iter()
                .map(|(f, o)| StoredSub {
                    filter: f.clone(),
                    qos: o.qos,
                    retain_as_published: o.retain_as_published,
                    retain_handling: o.retain_handling,
                    sub_id: o.sub_id,
                    no_local: o.no_local,
                })
                .collect(),
            cursors: self.cursors.clone(),
            disconnected_ms: self.disconnected_ms,
            generation: self.generation,
            qos2: self.qos2.clone(),
        }
    }

    /// A stored or imported session, disconnected (its connection is elsewhere or gone).
    fn from_record(r: SessionRecord, now_ms: i64) -> SessionEntry {
        let subs = r
            .subs
            .into_iter()
            .filter(|s| topic::validate_filter(&s.filter).is_ok())
            .map(|s| {
                (
                    s.filter,
                    SubOptions {
                        qos: s.qos.min(2),
                        retain_as_published: s.retain_as_published,
                        retain_handling: s.retain_handling.min(2),
                        sub_id: s.sub_id,
                        no_local: s.no_local,
                    },
                )
            })
            .collect();
        SessionEntry {
            conn: None,
            kick: None,
            subs,
            expiry_secs: r.expiry_secs.max(1),
            cursors: r.cursors,
            qos2: r.qos2,
            disconnected_ms: Some(r.disconnected_ms.unwrap_or(now_ms)),
            generation: r.generation,
        }
    }
}

/// What a client id's session was, at most [`TOMBSTONE_KEEP_MS`] after it ended here: its
/// generation, so an older copy of it (in a dead broker's snapshot, or the session log of a
/// broker that was down) cannot come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    pub generation: u64,
    pub ended_ms: i64,
}

/// What other brokers know of a client id, gathered before its connect reaches the router
/// (`cluster_sessions::gather`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remote {
    /// The newest unexpired copy of the session found elsewhere (none for a clean start).
    pub best: Option<SessionRecord>,
    /// The highest generation seen elsewhere, with or without a session.
    pub generation_max: u64,
}

/// What a `TakeSession` from another broker gets: the generation this broker had for the
/// client id (0: none) and the session, unless the asker starts clean or it expired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Taken {
    pub generation: u64,
    pub state: Option<SessionRecord>,
}

/// Another broker takes a client id's session (its client connected there).
#[derive(Debug)]
pub struct TakeRequest {
    pub client_id: String,
    pub clean_start: bool,
    pub reply: oneshot::Sender<Taken>,
}

/// A request waiting for a live connection's final cursors.
#[derive(Debug)]
enum Parked {
    Connect(Box<ConnectRequest>),
    Take(TakeRequest),
}

/// This broker's persistent sessions and tombstones, for the object store
/// (`cluster_sessions::Snapshot`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionsExport {
    pub sessions: Vec<SessionRecord>,
    pub tombstones: Vec<(String, Tombstone)>,
}

/// The routing state. Pure: no IO, no clock (`now_ms` comes in).
#[derive(Debug, Default)]
pub struct RouterCore {
    sessions: HashMap<String, SessionEntry>,
    retained: BTreeMap<String, Arc<Message>>,
    /// Client ids whose stored form changed since the last [`RouterCore::take_ops`].
    dirty: HashSet<String>,
    /// Connects (here or, [`Parked::Take`], at another broker) taking over a live persistent
    /// session, parked until the old connection has reported its final cursors (so the new
    /// one does not repeat what was acknowledged).
    parked: HashMap<String, (Parked, i64)>,
    /// Generations of sessions that ended here (bounded: [`TOMBSTONES_MAX`],
    /// [`TOMBSTONE_KEEP_MS`]).
    tombstones: HashMap<String, Tombstone>,
    /// Sessions handed to another broker (`TakeSession`), kept with their tombstone: if the
    /// asker never got the answer (it timed out, or died before writing a snapshot), the next
    /// connect — here or elsewhere — still finds this copy. One the asker did get is
    /// superseded by its higher generation.
    moved: HashMap<String, SessionRecord>,
    /// Something a snapshot holds changed since the last [`RouterCore::export`].
    export_changed: bool,
    /// Every session's subscriptions, by filter.
    index: SubIndex,
    /// Deliveries dropped because a client's queue was full.
    pub dropped: u64,
}

/// Every session's subscriptions (`SessionEntry::subs`), by filter, kept in step with them:
/// the filter is in here for a client id exactly while that session holds it (see
/// [`RouterCore::check_index`] in the tests).
#[derive(Debug, Default)]
struct SubIndex {
    /// Ordinary filters: who holds them.
    plain: topic::FilterIndex,
    /// Shared subscriptions by `(group, filter)`.
    shared: BTreeMap<(String, String), SharedGroup>,
}

#[derive(Debug)]
struct SharedGroup {
    /// The subscription's own filter (`$share/<group>/<filter>`), as the members' `subs` hold it.
    key: String,
    /// Client ids, in subscribe order.
    members: Vec<String>,
    /// The member the next message goes to.
    next: usize,
}

impl SubIndex {
    /// `client_id` holds `filter` (again).
    fn link(&mut self, client_id: &str, filter: &str) {
        if !filter.starts_with(topic::SHARE_PREFIX) {
            self.plain.insert(filter, client_id);
            return;
        }
        if let Ok(Some((group, inner))) = topic::split_shared(filter) {
            let g = self
                .shared
                .entry((group.to_string(), inner.to_string()))
                .or_insert_with(|| SharedGroup {
                    key: filter.to_string(),
                    members: Vec::new(),
                    next: 0,
                });
            debug_assert_eq!(g.key, filter);
            if !g.members.iter().any(|m| m == client_id) {
                g.members.push(client_id.to_string());
            }
        }
    }

    /// `client_id` no longer holds `filter` (or never did).
    fn unlink(&mut self, client_id: &str, filter: &str) {
        if !filter.starts_with(topic::SHARE_PREFIX) {
            self.plain.remove(filter, client_id);
            return;
        }
        if let Ok(Some((group, inner))) = topic::split_shared(filter) {
            let key = (group.to_string(), inner.to_string());
            if let Some(g) = self.shared.get_mut(&key) {
                g.members.retain(|m| m != client_id);
                if g.members.is_empty() {
                    self.shared.remove(&key);
                }
            }
        }
    }
}

/// A live delivery of `msg` through a subscription with `opts`.
fn delivery(msg: &Arc<Message>, opts: &SubOptions, sub_ids: Vec<u32>) -> Delivery {
    Delivery {
        message: msg.clone(),
        qos: msg.qos.min(opts.qos),
        retain: opts.retain_as_published && msg.retain,
        dup: false,
        origin: None,
        sub_ids,
    }
}

/// A persistent session handed to its new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// Start every partition that exists now at its end (nothing before this connect is
    /// for it); otherwise resume from `cursors` and read new partitions from their start.
    pub fresh: bool,
    pub cursors: Vec<(PartitionKey, CursorMark)>,
    /// The QoS 2 exchanges the last connection left open (none when `fresh`).
    pub qos2: Qos2Ids,
    pub subs: BTreeMap<String, SubOptions>,
}

/// A connect as the router task receives it.
#[derive(Debug)]
pub struct ConnectRequest {
    pub client_id: String,
    pub clean_start: bool,
    /// Effective Session Expiry Interval (0: ephemeral).
    pub expiry_secs: u32,
    pub conn: ConnHandle,
    pub kick: oneshot::Sender<()>,
    pub reply: oneshot::Sender<ConnectOutcome>,
    /// What the other brokers had (empty on a single broker).
    pub remote: Remote,
}

/// The outcome of a connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectOutcome {
    Accepted {
        session_present: bool,
        /// `Some` for a persistent session (expiry > 0).
        resume: Option<Resume>,
    },
    /// [`SESSIONS_MAX`] sessions exist.
    Busy,
}

impl RouterCore {
    /// The router's state after a restart: the stored persistent sessions, all disconnected
    /// (those that were connected at the crash count as disconnected now).
    pub fn from_records(records: Vec<SessionRecord>, now_ms: i64) -> RouterCore {
        let mut core = RouterCore::default();
        for r in records {
            let id = r.client_id.clone();
            core.install(&id, SessionEntry::from_record(r, now_ms));
        }
        core
    }

    /// Puts `entry` under `client_id` (replacing nothing: the caller removed any older one).
    fn install(&mut self, client_id: &str, entry: SessionEntry) {
        debug_assert!(!self.sessions.contains_key(client_id));
        for filter in entry.subs.keys() {
            self.index.link(client_id, filter);
        }
        self.sessions.insert(client_id.to_string(), entry);
    }

    /// A connect: answered now, or — when it takes over a live persistent session — once the
    /// old connection ended (its [`RouterCore::disconnect`]) or [`TAKEOVER_WAIT_MS`] passed.
    pub fn request_connect(&mut self, req: ConnectRequest, now_ms: i64) {
        if let Some(entry) = self.sessions.get_mut(&req.client_id) {
            if entry.conn.is_some() && entry.persistent() && !req.clean_start {
                if let Some(old) = entry.kick.take() {
                    let _ = old.send(());
                }
                // A request parked earlier for the same id loses (its reply is dropped).
                self.parked.insert(
                    req.client_id.clone(),
                    (Parked::Connect(Box::new(req)), now_ms),
                );
                return;
            }
        }
        self.answer_connect(req, now_ms);
    }

    fn answer_connect(&mut self, req: ConnectRequest, now_ms: i64) {
        let outcome = self.connect_with(
            &req.client_id,
            req.clean_start,
            req.expiry_secs,
            req.conn,
            req.kick,
            &req.remote,
            now_ms,
        );
        let _ = req.reply.send(outcome);
    }

    /// Another broker takes `client_id`'s session: a live connection here is told to go
    /// (MQTT 5: DISCONNECT 0x8E) and, when persistent, its final cursors are waited for
    /// (like a local takeover); then the session is forgotten here and handed over.
    pub fn request_take(&mut self, req: TakeRequest, now_ms: i64) {
        if let Some(entry) = self.sessions.get_mut(&req.client_id) {
            if let Some(old) = entry.kick.take() {
                let _ = old.send(());
                if entry.persistent() && !req.clean_start {
                    self.parked
                        .insert(req.client_id.clone(), (Parked::Take(req), now_ms));
                    return;
                }
            }
        }
        let taken = self.take(&req.client_id, req.clean_start, now_ms);
        let _ = req.reply.send(taken);
    }

    /// Forgets `client_id`'s session and returns it (see [`Taken`]). Its stored form is
    /// deleted; a tombstone keeps its generation.
    pub fn take(&mut self, client_id: &str, clean_start: bool, now_ms: i64) -> Taken {
        let Some(entry) = self.sessions.get(client_id) else {
            return Taken {
                generation: self.tombstones.get(client_id).map_or(0, |t| t.generation),
                state: self
                    .moved
                    .get(client_id)
                    .filter(|m| !clean_start && !super::cluster_sessions::expired(m, now_ms))
                    .cloned(),
            };
        };
        let expired = entry.conn.is_none() && Self::expired(entry, now_ms);
        let state = (entry.persistent() && !clean_start && !expired).then(|| {
            let mut r = entry.record(client_id);
            // A session still connected here (its connection did not end in time) counts as
            // disconnected now.
            r.disconnected_ms.get_or_insert(now_ms);
            r
        });
        let generation = entry.generation;
        let was_persistent = entry.persistent();
        self.end_session(client_id, now_ms);
        if was_persistent {
            self.dirty.insert(client_id.to_string());
        }
        if let Some(s) = &state {
            self.tombstones.insert(
                client_id.to_string(),
                Tombstone {
                    generation,
                    ended_ms: now_ms,
                },
            );
            self.moved.insert(client_id.to_string(), s.clone());
            self.export_changed = true;
        }
        Taken { generation, state }
    }

    fn expired(entry: &SessionEntry, now_ms: i64) -> bool {
        entry.expiry_secs != EXPIRY_NEVER
            && entry
                .disconnected_ms
                .is_some_and(|d| d.saturating_add(i64::from(entry.expiry_secs) * 1000) <= now_ms)
    }

    /// Removes a session that ended, leaving a tombstone when an older copy of it may exist
    /// elsewhere (generation above 1: it was created over one).
    fn end_session(&mut self, client_id: &str, now_ms: i64) {
        if let Some(generation) = self.sessions.get(client_id).map(|e| e.generation) {
            self.remove_session(client_id);
            if generation > 1 {
                self.tombstones.insert(
                    client_id.to_string(),
                    Tombstone {
                        generation,
                        ended_ms: now_ms,
                    },
                );
                self.export_changed = true;
            }
        }
    }

    /// Drops tombstones older than [`TOMBSTONE_KEEP_MS`], and the oldest beyond
    /// [`TOMBSTONES_MAX`].
    fn prune_tombstones(&mut self, now_ms: i64) {
        let before = self.tombstones.len();
        self.tombstones
            .retain(|_, t| now_ms - t.ended_ms < TOMBSTONE_KEEP_MS);
        if self.tombstones.len() > TOMBSTONES_MAX {
            let mut by_age: Vec<(i64, String)> = self
                .tombstones
                .iter()
                .map(|(id, t)| (t.ended_ms, id.clone()))
                .collect();
            by_age.sort();
            let extra = self.tombstones.len() - TOMBSTONES_MAX;
            for (_, id) in by_age.into_iter().take(extra) {
                self.tombstones.remove(&id);
            }
        }
        let moved = self.moved.len();
        let tombstones = &self.tombstones;
        self.moved.retain(|id, m| {
            tombstones.contains_key(id) && !super::cluster_sessions::expired(m, now_ms)
        });
        if self.tombstones.len() != before || self.moved.len() != moved {
            self.export_changed = true;
        }
    }

    /// The persistent sessions and tombstones, when they changed since the last call (or
    /// `force`): what this broker's snapshot in the object store holds.
    pub fn export(&mut self, force: bool) -> Option<SessionsExport> {
        if !self.export_changed && self.dirty.is_empty() && !force {
            return None;
        }
        self.export_changed = false;
        let mut sessions: Vec<SessionRecord> = self
            .sessions
            .iter()
            .filter(|(_, e)| e.persistent())
            .map(|(id, e)| e.record(id))
            .chain(
                self.moved
                    .iter()
                    .filter(|(id, _)| !self.sessions.contains_key(*id))
                    .map(|(_, m)| m.clone()),
            )
            .collect();
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        let mut tombstones: Vec<(String, Tombstone)> = self
            .tombstones
            .iter()
            .map(|(id, t)| (id.clone(), *t))
            .collect();
        tombstones.sort_by(|a, b| a.0.cmp(&b.0));
        Some(SessionsExport {
            sessions,
            tombstones,
        })
    }

    /// Tombstones from this broker's own last snapshot (a restart keeps them).
    pub fn restore_tombstones(&mut self, tombstones: Vec<(String, Tombstone)>) {
        for (id, t) in tombstones {
            if !self.sessions.contains_key(&id) {
                let e = self.tombstones.entry(id).or_insert(t);
                if t.generation > e.generation {
                    *e = t;
                }
            }
        }
    }

    /// Answers parked connects whose old connection did not end in time.
    pub fn unpark_stale(&mut self, now_ms: i64) {
        let stale: Vec<String> = self
            .parked
            .iter()
            .filter(|(_, (parked, since))| {
                let wait = match parked {
                    Parked::Connect(_) => TAKEOVER_WAIT_MS,
                    Parked::Take(_) => TAKE_WAIT_MS,
                };
                now_ms - since >= wait
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.unpark(&id, now_ms);
        }
    }

    fn unpark(&mut self, client_id: &str, now_ms: i64) {
        match self.parked.remove(client_id) {
            Some((Parked::Connect(req), _)) => self.answer_connect(*req, now_ms),
            Some((Parked::Take(req), _)) => {
                let taken = self.take(&req.client_id, req.clean_start, now_ms);
                let _ = req.reply.send(taken);
            }
            None => {}
        }
    }

    /// [`RouterCore::connect_with`] on a single broker (nothing known elsewhere).
    pub fn connect(
        &mut self,
        client_id: &str,
        clean_start: bool,
        expiry_secs: u32,
        conn: ConnHandle,
        kick: oneshot::Sender<()>,
    ) -> ConnectOutcome {
        self.connect_with(
            client_id,
            clean_start,
            expiry_secs,
            conn,
            kick,
            &Remote::default(),
            0,
        )
    }

    /// A connect, given what other brokers had (`remote`). The generation rule: the session
    /// continues from the newest copy — here or `remote.best`, whichever has the higher
    /// generation — and the connect gives it a generation above every one seen. A copy here
    /// that is older than one seen elsewhere is stale (this broker was down or cut off while
    /// the client moved on) and is dropped, never resumed.
    #[allow(clippy::too_many_arguments)]
    pub fn connect_with(
        &mut self,
        client_id: &str,
        clean_start: bool,
        expiry_secs: u32,
        conn: ConnHandle,
        kick: oneshot::Sender<()>,
        remote: &Remote,
        now_ms: i64,
    ) -> ConnectOutcome {
        let local_generation = self
            .sessions
            .get(client_id)
            .map(|e| e.generation)
            .or_else(|| self.tombstones.get(client_id).map(|t| t.generation))
            .unwrap_or(0);
        // A copy handed to another broker that nobody newer has: the asker never took it.
        let own_copy = self
            .moved
            .get(client_id)
            .filter(|m| {
                !clean_start
                    && !self.sessions.contains_key(client_id)
                    && m.generation >= remote.generation_max
                    && !super::cluster_sessions::expired(m, now_ms)
            })
            .cloned();
        let import = remote
            .best
            .as_ref()
            .filter(|b| !clean_start && b.generation > local_generation)
            .or(own_copy.as_ref());
        if import.is_some() || remote.generation_max > local_generation {
            if let Some(stale) = self.sessions.get_mut(client_id) {
                if let Some(old) = stale.kick.take() {
                    let _ = old.send(());
                }
                let was_persistent = stale.persistent();
                self.remove_session(client_id);
                if was_persistent {
                    self.dirty.insert(client_id.to_string());
                }
            }
        }
        if let Some(best) = import {
            if self.sessions.len() >= SESSIONS_MAX {
                return ConnectOutcome::Busy;
            }
            self.install(client_id, SessionEntry::from_record(best.clone(), now_ms));
        }
        let generation = local_generation.max(remote.generation_max) + 1;
        let existed = self.sessions.contains_key(client_id);
        if !existed && self.sessions.len() >= SESSIONS_MAX {
            return ConnectOutcome::Busy;
        }
        let entry = self
            .sessions
            .entry(client_id.to_string())
            .or_insert_with(|| SessionEntry {
                conn: None,
                kick: None,
                subs: BTreeMap::new(),
                expiry_secs,
                cursors: Vec::new(),
                qos2: Qos2Ids::default(),
                disconnected_ms: None,
                generation,
            });
        entry.generation = generation;
        if self.tombstones.remove(client_id).is_some() | self.moved.remove(client_id).is_some() {
            self.export_changed = true;
        }
        if let Some(old) = entry.kick.take() {
            let _ = old.send(()); // session takeover: the old connection goes
        }
        let session_present = existed && !clean_start;
        if clean_start {
            let old = std::mem::take(&mut entry.subs);
            entry.cursors.clear();
            entry.qos2 = Qos2Ids::default();
            for filter in old.keys() {
                self.index.unlink(client_id, filter);
            }
        }
        // Cursors exist only for a session that was persistent before this connect.
        let fresh = !session_present || !entry.persistent();
        if fresh {
            entry.cursors.clear();
            entry.qos2 = Qos2Ids::default();
        }
        let was_persistent = existed && entry.persistent();
        entry.expiry_secs = expiry_secs;
        entry.conn = Some(conn);
        entry.kick = Some(kick);
        entry.disconnected_ms = None;
        if entry.persistent() || was_persistent {
            self.dirty.insert(client_id.to_string());
        }
        let resume = entry.persistent().then(|| Resume {
            fresh,
            cursors: entry.cursors.clone(),
            qos2: entry.qos2.clone(),
            subs: entry.subs.clone(),
        });
        ConnectOutcome::Accepted {
            session_present,
            resume,
        }
    }

    /// Connection `conn_id` ended with Session Expiry Interval `expiry_secs` (MQTT 5 may
    /// change it at DISCONNECT) and, for a persistent session, its final marks. Ignored
    /// when the session has since been taken over.
    pub fn disconnect(
        &mut self,
        client_id: &str,
        conn_id: u64,
        expiry_secs: u32,
        marks: Option<Marks>,
        now_ms: i64,
    ) {
        let Some(entry) = self.sessions.get_mut(client_id) else {
            return;
        };
        if entry.conn.as_ref().map(|c| c.id) != Some(conn_id) {
            return;
        }
        let was_persistent = entry.persistent();
        // A session that was ephemeral cannot become persistent at DISCONNECT (MQTT 5
        // §3.14.2.2.2): it ends.
        if expiry_secs > 0 && was_persistent {
            if let Some(m) = marks {
                entry.cursors = m.cursors;
                entry.qos2 = m.qos2;
            }
            entry.expiry_secs = expiry_secs;
            entry.conn = None;
            entry.kick = None;
            entry.disconnected_ms = Some(now_ms);
            self.dirty.insert(client_id.to_string());
        } else {
            self.end_session(client_id, now_ms);
            if was_persistent {
                self.dirty.insert(client_id.to_string());
            }
        }
        self.unpark(client_id, now_ms);
    }

    /// A persistent session's connection reports its committed cursors and QoS 2 exchanges.
    pub fn progress(&mut self, client_id: &str, conn_id: u64, marks: Marks) {
        if let Some(entry) = self
            .sessions
            .get_mut(client_id)
            .filter(|e| e.conn.as_ref().map(|c| c.id) == Some(conn_id) && e.persistent())
        {
            entry.cursors = marks.cursors;
            entry.qos2 = marks.qos2;
            self.dirty.insert(client_id.to_string());
        }
    }

    /// Ends the disconnected sessions whose expiry has passed; returns how many.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let gone: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, e)| e.conn.is_none() && Self::expired(e, now_ms))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.end_session(id, now_ms);
            self.dirty.insert(id.clone());
        }
        self.prune_tombstones(now_ms);
        gone.len()
    }

    /// What the session log must write: the current form of every changed persistent
    /// session, and a delete for every session that ended.
    pub fn take_ops(&mut self) -> Vec<StoreOp> {
        self.dirty
            .drain()
            .map(|id| match self.sessions.get(&id) {
                Some(e) if e.persistent() => StoreOp::Put(e.record(&id)),
                _ => StoreOp::Delete(id),
            })
            .collect()
    }

    /// Marks client ids as changed again (their write could not be queued).
    fn redirty(&mut self, ops: &[StoreOp]) {
        for op in ops {
            let id = match op {
                StoreOp::Put(r) => r.client_id.clone(),
                StoreOp::Delete(id) => id.clone(),
            };
            self.dirty.insert(id);
        }
    }

    fn remove_session(&mut self, client_id: &str) {
        if let Some(entry) = self.sessions.remove(client_id) {
            for filter in entry.subs.keys() {
                self.index.unlink(client_id, filter);
            }
        }
    }

    pub fn sessions_len(&self) -> usize {
        self.sessions.len()
    }

    /// Adds (or replaces) subscriptions; returns the retained messages to send, as
    /// deliveries at the granted QoS.
    pub fn subscribe(
        &mut self,
        client_id: &str,
        conn_id: u64,
        filters: &[(String, SubOptions)],
    ) -> Vec<Delivery> {
        let Some(entry) = self.sessions.get_mut(client_id) else {
            return Vec::new();
        };
        if entry.conn.as_ref().map(|c| c.id) != Some(conn_id) {
            return Vec::new();
        }
        if entry.persistent() {
            self.dirty.insert(client_id.to_string());
        }
        let mut out = Vec::new();
        for (filter, opts) in filters {
            let existed = entry.subs.insert(filter.clone(), *opts).is_some();
            self.index.link(client_id, filter);
            if filter.starts_with(topic::SHARE_PREFIX) {
                // Retained messages are not sent for shared subscriptions (MQTT 5 §4.8.2).
                continue;
            }
            debug_assert!(topic::validate_filter(filter).is_ok());
            let send_retained = match opts.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            if !send_retained {
                continue;
            }
            for (name, msg) in &self.retained {
                if topic::matches(filter, name) {
                    out.push(Delivery {
                        message: msg.clone(),
                        qos: msg.qos.min(opts.qos),
                        // A retained message sent because of a subscription keeps RETAIN set.
                        retain: true,
                        dup: false,
                        origin: None,
                        sub_ids: opts.sub_id.into_iter().collect(),
                    });
                }
            }
        }
        out
    }

    /// Removes subscriptions; for each filter, whether it existed.
    pub fn unsubscribe(&mut self, client_id: &str, conn_id: u64, filters: &[String]) -> Vec<bool> {
        let Some(entry) = self
            .sessions
            .get_mut(client_id)
            .filter(|e| e.conn.as_ref().map(|c| c.id) == Some(conn_id))
        else {
            return vec![false; filters.len()];
        };
        if entry.persistent() {
            self.dirty.insert(client_id.to_string());
        }
        let found: Vec<bool> = filters
            .iter()
            .map(|f| entry.subs.remove(f).is_some())
            .collect();
        for f in filters {
            self.index.unlink(client_id, f);
        }
        found
    }

    /// Drops the subscriptions of `client_id`'s session, held by `conn_id`, that `keep`
    /// refuses; returns them.
    pub fn revoke(
        &mut self,
        client_id: &str,
        conn_id: u64,
        keep: &dyn Fn(&str) -> bool,
    ) -> Vec<String> {
        let denied: Vec<String> = match self
            .sessions
            .get(client_id)
            .filter(|e| e.conn.as_ref().map(|c| c.id) == Some(conn_id))
        {
            Some(entry) => entry.subs.keys().filter(|f| !keep(f)).cloned().collect(),
            None => return Vec::new(),
        };
        if !denied.is_empty() {
            self.unsubscribe(client_id, conn_id, &denied);
        }
        denied
    }

    /// Stores or (empty payload) clears the retained message of its topic. Returns false when
    /// the store is full and the message was not kept.
    pub fn retain(&mut self, msg: Arc<Message>) -> bool {
        if msg.payload.is_empty() {
            self.retained.remove(&msg.topic);
            return true;
        }
        if !self.retained.contains_key(&msg.topic) && self.retained.len() >= RETAINED_MESSAGES_MAX {
            return false;
        }
        self.retained.insert(msg.topic.clone(), msg);
        true
    }

    pub fn retained_len(&self) -> usize {
        self.retained.len()
    }

    /// The single deliveries [`RouterCore::route_batch`] makes of one message, for tests of
    /// the matching rules (no shared frames).
    #[cfg(test)]
    pub fn route(&mut self, msg: &Arc<Message>) -> Vec<(ConnHandle, Delivery)> {
        let mut out = Vec::new();
        let holders = plain_holders(&self.index.plain, &self.sessions, &msg.topic);
        route_one(
            &mut self.index.shared,
            &self.sessions,
            &holders,
            msg,
            None,
            |conn, r| {
                if let Routed::One(d) = r {
                    out.push((conn.clone(), d))
                }
            },
        );
        out
    }

    /// The deliveries for a batch of messages. Each message goes to every connected
    /// *ephemeral* session with a matching subscription, at the highest QoS among its matching
    /// subscriptions, capped by the message's own QoS (persistent sessions read the log
    /// themselves); then each shared subscription group whose filter matches gets it once: the
    /// next connected member in turn (round robin), persistent or not.
    ///
    /// Per connection, its deliveries come in message order (one queue operation per
    /// connection, however many messages). The
    /// sessions holding a matching filter are found once per topic in the batch, not once per
    /// message (a busy topic's batch is many messages to the same holders). Deliveries that
    /// are the same bytes on many connections go as shared frames ([`Frames`]), consecutive
    /// ones to a connection as one run.
    pub fn route_batch(&mut self, msgs: &[Arc<Message>]) -> Vec<(ConnHandle, Vec<Routed>)> {
        let mut out: Vec<(ConnHandle, Vec<Routed>)> = Vec::new();
        let mut index: FxHashMap<u64, usize> = FxHashMap::default();
        let mut holders_of: FxHashMap<&str, Vec<Holder<'_>>> = FxHashMap::default();
        let mut bufs = FrameBufs::default();
        for msg in msgs {
            let holders = holders_of
                .entry(msg.topic.as_str())
                .or_insert_with(|| plain_holders(&self.index.plain, &self.sessions, &msg.topic));
            route_one(
                &mut self.index.shared,
                &self.sessions,
                holders,
                msg,
                Some(&mut bufs),
                |conn, r| {
                    let i = *index.entry(conn.id).or_insert_with(|| {
                        out.push((conn.clone(), Vec::new()));
                        out.len() - 1
                    });
                    let items = &mut out[i].1;
                    if let (Routed::Frames(next), Some(Routed::Frames(last))) =
                        (&r, items.last_mut())
                    {
                        if last.slot == next.slot && last.end == next.start {
                            last.end = next.end;
                            last.count += next.count;
                            return;
                        }
                    }
                    items.push(r);
                },
            );
        }
        // Every frame is made: the runs take their slices.
        let bufs = bufs.0.map(BytesMut::freeze);
        for (_, items) in &mut out {
            for r in items {
                if let Routed::Frames(run) = r {
                    run.bytes = bufs[run.slot].slice(run.start..run.end);
                }
            }
        }
        out
    }
}

/// A connected ephemeral session with an ordinary (not shared) subscription matching a topic:
/// its best match for a message someone else published.
struct Holder<'s> {
    client_id: &'s str,
    entry: &'s SessionEntry,
    conn: &'s ConnHandle,
    found: Match,
}

/// The holders of a filter matching `topic_name`; each once (it may hold several), in a
/// fixed order.
fn plain_holders<'s>(
    plain: &'s topic::FilterIndex,
    sessions: &'s HashMap<String, SessionEntry>,
    topic_name: &str,
) -> Vec<Holder<'s>> {
    let holder = |client_id: &'s str, entry: &'s SessionEntry| {
        let conn = entry.conn.as_ref()?;
        if entry.persistent() {
            return None;
        }
        let found = find_match(&entry.subs, topic_name, false)?;
        Some(Holder {
            client_id,
            entry,
            conn,
            found,
        })
    };
    let mut ids = Vec::new();
    let filters = plain.matching(topic_name, &mut ids);
    if ids.len() * 2 >= sessions.len() {
        // Most sessions hold a matching filter (a fan-out to everyone): walking them all is
        // cheaper than looking each holder up.
        return sessions
            .iter()
            .filter_map(|(id, entry)| holder(id, entry))
            .collect();
    }
    if filters > 1 {
        // Each holder once (it may hold several matching filters).
        ids.sort_unstable();
        ids.dedup();
    }
    ids.into_iter()
        .filter_map(|id| match sessions.get_key_value(id) {
            Some((id, entry)) => holder(id, entry),
            None => {
                debug_assert!(false, "{id:?} indexed without a session");
                None
            }
        })
        .collect()
}

/// Calls `deliver` with every delivery of `msg` (see [`RouterCore::route_batch`]): the shared
/// groups' in group order, then the `holders`' (those of `msg.topic`) in their order.
fn route_one(
    shared: &mut BTreeMap<(String, String), SharedGroup>,
    sessions: &HashMap<String, SessionEntry>,
    holders: &[Holder<'_>],
    msg: &Arc<Message>,
    mut bufs: Option<&mut FrameBufs>,
    mut deliver: impl FnMut(&ConnHandle, Routed),
) {
    let mut frames = Frames::default();
    let mut deliver = |conn: &ConnHandle, d: Delivery| match bufs.as_deref_mut() {
        Some(bufs) => deliver(conn, frames.attach(bufs, conn, d)),
        None => deliver(conn, Routed::One(d)),
    };
    for ((_, filter), g) in shared.iter_mut() {
        if !topic::matches(filter, &msg.topic) {
            continue;
        }
        let n = g.members.len();
        for step in 0..n {
            let i = (g.next + step) % n;
            let Some(entry) = sessions.get(&g.members[i]) else {
                continue;
            };
            let Some(conn) = &entry.conn else { continue };
            let Some(opts) = entry.subs.get(&g.key) else {
                continue;
            };
            deliver(conn, delivery(msg, opts, opts.sub_id.into_iter().collect()));
            g.next = (i + 1) % n;
            break;
        }
    }
    for h in holders {
        let own = msg.publisher.as_deref() == Some(h.client_id);
        let d = if own && h.found.no_local {
            // Without its No Local subscriptions, does anything else of it match?
            match find_match(&h.entry.subs, &msg.topic, true) {
                Some(m) => delivery(msg, &m.opts, m.sub_ids),
                None => continue,
            }
        } else {
            delivery(msg, &h.found.opts, h.found.sub_ids.clone())
        };
        deliver(h.conn, d);
    }
}

/// The shared PUBLISH frames of one routed batch: per protocol version and RETAIN flag (the
/// only parts of a shareable delivery's packet that differ between connections), one buffer
/// holding the frames made for it, in message order.
#[derive(Debug, Default)]
struct FrameBufs([BytesMut; 4]);

impl FrameBufs {
    fn slot(proto: Proto, retain: bool) -> usize {
        usize::from(proto == Proto::V5) * 2 + usize::from(retain)
    }

    fn proto(slot: usize) -> Proto {
        if slot >= 2 {
            Proto::V5
        } else {
            Proto::V311
        }
    }
}

/// One message's shared frames, by [`FrameBufs`] slot. A frame is made when a second
/// connection needs the same one: a message with one subscriber is encoded by that
/// connection, as without sharing.
#[derive(Debug, Default)]
struct Frames([FrameSlot; 4]);

#[derive(Debug, Default, Clone, Copy)]
enum FrameSlot {
    #[default]
    Unused,
    /// One delivery went out without a frame.
    Once,
    /// Where in the slot's buffer; `None`: the message cannot be encoded (each connection
    /// fails on it itself).
    Made(Option<(usize, usize)>),
}

impl Frames {
    /// `d` as `conn` gets it: the frame it would send as it is, when there is one to share.
    fn attach(&mut self, bufs: &mut FrameBufs, conn: &ConnHandle, d: Delivery) -> Routed {
        let Some(proto) = conn.frames else {
            return Routed::One(d);
        };
        if !wire::shareable(&d) {
            return Routed::One(d);
        }
        let slot = FrameBufs::slot(proto, d.retain);
        let state = &mut self.0[slot];
        let at = match *state {
            FrameSlot::Unused => {
                *state = FrameSlot::Once;
                None
            }
            FrameSlot::Once => {
                let buf = &mut bufs.0[slot];
                let start = buf.len();
                let made = wire::shared_frame(&d, proto, buf).then(|| (start, buf.len()));
                *state = FrameSlot::Made(made);
                made
            }
            FrameSlot::Made(at) => at,
        };
        match at {
            Some((start, end)) => Routed::Frames(FrameRun {
                slot,
                start,
                end,
                count: 1,
                bytes: Bytes::new(),
            }),
            None => Routed::One(d),
        }
    }
}

/// Which subscription filters a session may keep ([`RouterMsg::Revoke`]).
pub struct Keep(pub Box<dyn Fn(&str) -> bool + Send>);

impl std::fmt::Debug for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keep(..)")
    }
}

/// Inputs of the router task.
#[derive(Debug)]
pub enum RouterMsg {
    /// Boxed: the largest request by far, and every send of any message carries this
    /// enum's size in the sending connection's task.
    Connect(Box<ConnectRequest>),
    Disconnect {
        client_id: String,
        conn_id: u64,
        expiry_secs: u32,
        marks: Option<Marks>,
    },
    /// A persistent session's committed cursors or QoS 2 exchanges changed.
    Progress {
        client_id: String,
        conn_id: u64,
        marks: Marks,
    },
    Subscribe {
        client_id: String,
        conn_id: u64,
        filters: Vec<(String, SubOptions)>,
        reply: oneshot::Sender<Vec<Delivery>>,
    },
    Unsubscribe {
        client_id: String,
        conn_id: u64,
        filters: Vec<String>,
        reply: oneshot::Sender<Vec<bool>>,
    },
    /// Drops the subscriptions of a connected session that `keep` refuses (an ACL reloaded
    /// since they were granted); answers the filters dropped.
    Revoke {
        client_id: String,
        conn_id: u64,
        keep: Keep,
        reply: oneshot::Sender<Vec<String>>,
    },
    /// A durable publish with RETAIN set; the sender waits for it to be in the retained log
    /// (`true`: durable, or nothing to store).
    Retain(Arc<Message>, Option<oneshot::Sender<bool>>),
    /// Messages appended to a partition MQTT reads, in offset order (a tailer's read).
    Route(Vec<Arc<Message>>),
    /// `$SYS` statistics: retained in memory only, and routed live.
    Sys(Vec<Arc<Message>>),
    /// The node stops: hand every changed session to the session log, close the logs' queues
    /// and answer. The router ends.
    Shutdown(oneshot::Sender<()>),
    /// Another broker takes a session (`cluster_sessions`, the Peer service's `TakeSession`).
    Take(TakeRequest),
    /// The persistent sessions and tombstones for this broker's snapshot, when changed since
    /// the last export (or `force`).
    Export {
        force: bool,
        reply: oneshot::Sender<Option<SessionsExport>>,
    },
    /// Tombstones from this broker's last snapshot, read at start.
    RestoreTombstones(Vec<(String, Tombstone)>),
    /// Every session, for the admin API's client list (`clients.rs`).
    Sessions(oneshot::Sender<Vec<super::clients::SessionView>>),
}

/// The router task: owns a [`RouterCore`] until every sender is gone. Every
/// [`FLUSH_INTERVAL_MS`] it hands the changed persistent sessions to the session log
/// (`store`, when persistence is on) and, every [`EXPIRY_CHECK_INTERVAL_MS`], ends expired
/// sessions.
pub async fn run(
    mut rx: mpsc::Receiver<RouterMsg>,
    mut core: RouterCore,
    store: Option<mpsc::Sender<Vec<StoreOp>>>,
    retained_log: Option<mpsc::UnboundedSender<super::retained::RetainOp>>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    // Hands each connection its share of a routed batch; counts what a full queue dropped.
    let hand_over = |core: &mut RouterCore, batches: Vec<(ConnHandle, Vec<Routed>)>| {
        for (conn, batch) in batches {
            let dropped = conn.tx.offer(batch);
            if dropped > 0 {
                core.dropped += dropped as u64;
                metrics
                    .mqtt
                    .dropped
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                tracing::debug!(
                    conn = conn.id,
                    dropped,
                    "client queue full; deliveries dropped"
                );
            }
        }
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(FLUSH_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_expiry_ms = 0i64;
    loop {
        let msg = tokio::select! {
            msg = rx.recv() => msg,
            _ = tick.tick() => {
                let now = crate::log::sequencer::now_ms();
                if now - last_expiry_ms >= EXPIRY_CHECK_INTERVAL_MS {
                    last_expiry_ms = now;
                    let n = core.expire(now);
                    if n > 0 {
                        tracing::debug!(expired = n, "mqtt sessions expired");
                    }
                }
                core.unpark_stale(now);
                flush(&mut core, store.as_ref());
                continue;
            }
        };
        let Some(msg) = msg else { break };
        if let RouterMsg::Shutdown(done) = msg {
            if let Some(st) = &store {
                if !core.dirty.is_empty() {
                    let _ = st.send(core.take_ops()).await;
                }
            }
            drop(store);
            drop(retained_log);
            let _ = done.send(());
            return;
        }
        // Session changes a client made (connect, disconnect, subscriptions) are written at
        // once; cursor progress waits for the tick, so acknowledgements are batched.
        let urgent = matches!(
            msg,
            RouterMsg::Connect(_)
                | RouterMsg::Take(_)
                | RouterMsg::Disconnect { .. }
                | RouterMsg::Subscribe { .. }
                | RouterMsg::Unsubscribe { .. }
                | RouterMsg::Revoke { .. }
        );
        match msg {
            RouterMsg::Connect(req) => {
                core.request_connect(*req, crate::log::sequencer::now_ms());
            }
            RouterMsg::Disconnect {
                client_id,
                conn_id,
                expiry_secs,
                marks,
            } => core.disconnect(
                &client_id,
                conn_id,
                expiry_secs,
                marks,
                crate::log::sequencer::now_ms(),
            ),
            RouterMsg::Progress {
                client_id,
                conn_id,
                marks,
            } => core.progress(&client_id, conn_id, marks),
            RouterMsg::Subscribe {
                client_id,
                conn_id,
                filters,
                reply,
            } => {
                let _ = reply.send(core.subscribe(&client_id, conn_id, &filters));
            }
            RouterMsg::Unsubscribe {
                client_id,
                conn_id,
                filters,
                reply,
            } => {
                let _ = reply.send(core.unsubscribe(&client_id, conn_id, &filters));
            }
            RouterMsg::Revoke {
                client_id,
                conn_id,
                keep,
                reply,
            } => {
                let _ = reply.send(core.revoke(&client_id, conn_id, &*keep.0));
            }
            RouterMsg::Retain(msg, done) => {
                let topic = msg.topic.clone();
                if !core.retain(msg.clone()) {
                    tracing::warn!(%topic, max = RETAINED_MESSAGES_MAX, "retained store full; message not retained");
                    if let Some(done) = done {
                        let _ = done.send(true);
                    }
                } else if let Some(log) = &retained_log {
                    // Written in the order applied here; the writer answers `done`.
                    if let Err(mpsc::error::SendError((_, Some(done)))) = log.send((msg, done)) {
                        let _ = done.send(false);
                    }
                } else if let Some(done) = done {
                    let _ = done.send(true);
                }
            }
            RouterMsg::Shutdown(_) => {}
            RouterMsg::Sessions(reply) => {
                let sessions = core
                    .sessions
                    .iter()
                    .map(|(id, e)| super::clients::SessionView {
                        client_id: id.clone(),
                        conn_id: e.conn.as_ref().map(|c| c.id),
                        subscriptions: e.subs.len(),
                        expiry_secs: e.expiry_secs,
                        disconnected_ms: e.disconnected_ms,
                    });
                let _ = reply.send(sessions.collect());
            }
            RouterMsg::Take(req) => core.request_take(req, crate::log::sequencer::now_ms()),
            RouterMsg::Export { force, reply } => {
                let _ = reply.send(core.export(force));
            }
            RouterMsg::RestoreTombstones(t) => core.restore_tombstones(t),
            RouterMsg::Sys(msgs) => {
                for msg in &msgs {
                    core.retain(msg.clone());
                }
                let batches = core.route_batch(&msgs);
                hand_over(&mut core, batches);
            }
            RouterMsg::Route(msgs) => {
                let batches = core.route_batch(&msgs);
                hand_over(&mut core, batches);
                // Let the connections just woken write before the next batch is routed: with
                // tokio's budget the router could otherwise route 128 batches in one go and
                // overflow queues of clients that keep up (the broker may have one core).
                tokio::task::yield_now().await;
            }
        }
        if urgent {
            flush(&mut core, store.as_ref());
        }
    }
    flush(&mut core, store.as_ref());
}

/// Hands the changed sessions to the session log without waiting; a full queue keeps them
/// changed for the next tick.
fn flush(core: &mut RouterCore, store: Option<&mpsc::Sender<Vec<StoreOp>>>) {
    let Some(store) = store else {
        if !core.dirty.is_empty() {
            core.export_changed = true;
        }
        core.dirty.clear();
        return;
    };
    if core.dirty.is_empty() {
        return;
    }
    core.export_changed = true;
    let ops = core.take_ops();
    if let Err(mpsc::error::TrySendError::Full(ops)) = store.try_send(ops) {
        core.redirty(&ops);
    }
}

#[cfg(test)]
impl RouterCore {
    /// Asserts that [`SubIndex`] holds exactly the sessions' subscriptions.
    fn check_index(&self) {
        let mut plain = 0;
        let mut shared: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let mut ids: Vec<&String> = self.sessions.keys().collect();
        ids.sort();
        for id in ids {
            let entry = &self.sessions[id];
            for filter in entry.subs.keys() {
                match topic::split_shared(filter).unwrap() {
                    Some((group, inner)) => shared
                        .entry((group.into(), inner.into()))
                        .or_default()
                        .push(id.clone()),
                    None => {
                        plain += 1;
                        assert!(self.index.plain.holds(filter, id), "{id} {filter}");
                    }
                }
            }
        }
        assert_eq!(self.index.plain.len(), plain, "plain filters indexed");
        let groups: BTreeMap<(String, String), Vec<String>> = self
            .index
            .shared
            .iter()
            .map(|(k, g)| {
                assert_eq!(g.key, format!("{}{}/{}", topic::SHARE_PREFIX, k.0, k.1));
                let mut m = g.members.clone();
                m.sort();
                (k.clone(), m)
            })
            .collect();
        assert_eq!(groups, shared, "shared groups");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(topic: &str, payload: &str, qos: u8, retain: bool) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from(payload.to_string()),
            qos,
            retain,
            user_properties: vec![],
            ..Default::default()
        })
    }

    /// The deliveries of a batch routed to connections that take no shared frames.
    fn ones(batch: Vec<Routed>) -> Vec<Delivery> {
        batch
            .into_iter()
            .map(|r| match r {
                Routed::One(d) => d,
                Routed::Frames(run) => panic!("frames for a connection without: {run:?}"),
            })
            .collect()
    }

    /// `d`'s shared frame for `proto`.
    fn frame_of(d: &Delivery, proto: Proto) -> Bytes {
        let mut buf = BytesMut::new();
        assert!(wire::shared_frame(d, proto, &mut buf));
        buf.freeze()
    }

    fn conn(id: u64) -> (ConnHandle, DeliveryRx) {
        let (tx, rx) = delivery_queue(8, 64);
        (
            ConnHandle {
                id,
                tx,
                frames: None,
            },
            rx,
        )
    }

    fn opts(qos: u8) -> SubOptions {
        SubOptions {
            sub_id: None,
            qos,
            retain_as_published: false,
            retain_handling: 0,
            no_local: false,
        }
    }

    #[test]
    fn route_picks_max_qos_once_per_session() {
        let mut r = RouterCore::default();
        let (c1, _rx1) = conn(1);
        let (c2, _rx2) = conn(2);
        let (k1, _) = oneshot::channel();
        let (k2, _) = oneshot::channel();
        r.connect("a", true, 0, c1, k1);
        r.connect("b", true, 0, c2, k2);
        r.subscribe("a", 1, &[("x/+".into(), opts(0)), ("x/#".into(), opts(2))]);
        r.subscribe("b", 2, &[("#".into(), opts(1))]);
        let mut got: Vec<(u64, u8)> = r
            .route(&msg("x/y", "p", 1, false))
            .into_iter()
            .map(|(c, d)| (c.id, d.qos))
            .collect();
        got.sort();
        assert_eq!(got, vec![(1, 1), (2, 1)], "QoS is capped by the message's");
        assert!(r.route(&msg("$SYS/x", "p", 1, false)).is_empty());
        assert_eq!(
            r.unsubscribe("b", 2, &["#".into(), "zz".into()]),
            vec![true, false]
        );
        assert_eq!(r.route(&msg("q", "p", 0, false)).len(), 0);
    }

    #[test]
    fn revoke_drops_the_refused_filters_of_the_holding_connection() {
        let mut r = RouterCore::default();
        let (c, _rx) = conn(1);
        let (k, _) = oneshot::channel();
        r.connect("a", true, 0, c, k);
        r.subscribe("a", 1, &[("x/#".into(), opts(1)), ("y/#".into(), opts(1))]);
        let keep = |f: &str| f != "x/#";
        assert!(
            r.revoke("a", 2, &keep).is_empty(),
            "another connection's request"
        );
        assert_eq!(r.route(&msg("x/1", "p", 1, false)).len(), 1);
        assert_eq!(r.revoke("a", 1, &keep), vec!["x/#".to_string()]);
        assert!(r.route(&msg("x/1", "p", 1, false)).is_empty());
        assert_eq!(r.route(&msg("y/1", "p", 1, false)).len(), 1);
        assert!(r.revoke("a", 1, &keep).is_empty());
    }

    #[test]
    fn retained_store_and_clear() {
        let mut r = RouterCore::default();
        let (c, _rx) = conn(1);
        let (k, _) = oneshot::channel();
        r.connect("a", true, 0, c, k);
        r.retain(msg("r/1", "one", 1, true));
        r.retain(msg("r/2", "two", 2, true));
        let got = r.subscribe("a", 1, &[("r/#".into(), opts(1))]);
        let mut payloads: Vec<(&[u8], u8, bool)> = got
            .iter()
            .map(|d| (&d.message.payload[..], d.qos, d.retain))
            .collect();
        payloads.sort();
        assert_eq!(
            payloads,
            vec![(&b"one"[..], 1, true), (&b"two"[..], 1, true)]
        );
        r.retain(msg("r/1", "", 1, true));
        assert_eq!(r.retained_len(), 1);
        // Retain Handling 1: only for a new subscription.
        let again = SubOptions {
            retain_handling: 1,
            ..opts(1)
        };
        assert!(r.subscribe("a", 1, &[("r/#".into(), again)]).is_empty());
        assert_eq!(r.subscribe("a", 1, &[("r/+".into(), again)]).len(), 1);
    }

    fn accepted(o: ConnectOutcome) -> (bool, Option<Resume>) {
        match o {
            ConnectOutcome::Accepted {
                session_present,
                resume,
            } => (session_present, resume),
            ConnectOutcome::Busy => panic!("busy"),
        }
    }

    fn cursors(cursors: Vec<(PartitionKey, CursorMark)>) -> Marks {
        Marks {
            cursors,
            qos2: Qos2Ids::default(),
        }
    }

    fn key(p: u32) -> PartitionKey {
        PartitionKey {
            topic: strata_types::TopicId(uuid::Uuid::from_u128(5)),
            partition: p,
        }
    }

    #[test]
    fn takeover_and_ephemeral_sessions() {
        let mut r = RouterCore::default();
        let (c1, _rx1) = conn(1);
        let (k1, mut kicked1) = oneshot::channel();
        assert_eq!(accepted(r.connect("a", true, 0, c1, k1)), (false, None));
        r.subscribe("a", 1, &[("t".into(), opts(1))]);
        let (c2, _rx2) = conn(2);
        let (k2, _kicked2) = oneshot::channel();
        // Clean start 0 takes over the live (ephemeral) session: present.
        assert_eq!(accepted(r.connect("a", false, 0, c2, k2)), (true, None));
        assert!(
            kicked1.try_recv().is_ok(),
            "the first connection is told to go"
        );
        // The old connection's late disconnect does not end the new one's session.
        r.disconnect("a", 1, 0, None, 0);
        assert_eq!(r.route(&msg("t", "p", 1, false)).len(), 1);
        r.disconnect("a", 2, 0, None, 0);
        assert_eq!(
            r.sessions_len(),
            0,
            "an ephemeral session ends with its connection"
        );
        assert!(
            r.take_ops().is_empty(),
            "ephemeral sessions are never stored"
        );
    }

    #[test]
    fn persistent_sessions_resume_cursors_and_are_stored() {
        let mut r = RouterCore::default();
        let (c1, _rx1) = conn(1);
        let (k1, _) = oneshot::channel();
        let (present, resume) = accepted(r.connect("p", false, EXPIRY_NEVER, c1, k1));
        assert!(!present);
        assert!(resume.unwrap().fresh);
        r.subscribe("p", 1, &[("s/#".into(), opts(1))]);
        assert!(
            r.route(&msg("s/x", "p", 1, false)).is_empty(),
            "persistent sessions read the log themselves"
        );
        let mark = CursorMark { next: 7, sent: 9 };
        r.progress("p", 1, cursors(vec![(key(0), mark)]));
        r.progress(
            "p",
            99,
            cursors(vec![(key(0), CursorMark { next: 1, sent: 1 })]),
        ); // not current: ignored
        let ops = r.take_ops();
        let [StoreOp::Put(rec)] = &ops[..] else {
            panic!("{ops:?}")
        };
        assert_eq!(rec.cursors, vec![(key(0), mark)]);
        assert_eq!(rec.subs.len(), 1);
        let qos2 = Qos2Ids {
            received: vec![4],
            released: vec![11, 12],
        };
        r.disconnect(
            "p",
            1,
            EXPIRY_NEVER,
            Some(Marks {
                cursors: vec![(key(0), CursorMark { next: 8, sent: 9 })],
                qos2: qos2.clone(),
            }),
            1000,
        );
        // After a restart, from what was stored.
        let StoreOp::Put(rec) = r.take_ops().pop().unwrap() else {
            panic!()
        };
        assert_eq!(rec.disconnected_ms, Some(1000));
        let mut r = RouterCore::from_records(vec![rec], 5000);
        let (c2, _rx2) = conn(2);
        let (k2, _) = oneshot::channel();
        let (present, resume) = accepted(r.connect("p", false, EXPIRY_NEVER, c2, k2));
        let resume = resume.unwrap();
        assert!(present);
        assert!(!resume.fresh);
        assert_eq!(
            resume.cursors,
            vec![(key(0), CursorMark { next: 8, sent: 9 })]
        );
        assert_eq!(resume.subs.keys().collect::<Vec<_>>(), vec!["s/#"]);
        assert_eq!(
            resume.qos2, qos2,
            "open QoS 2 exchanges survive the restart"
        );
        // Clean start discards it.
        let (c3, _rx3) = conn(3);
        let (k3, _) = oneshot::channel();
        let (present, resume) = accepted(r.connect("p", true, 60, c3, k3));
        assert!(!present);
        let resume = resume.unwrap();
        assert!(resume.fresh && resume.cursors.is_empty() && resume.subs.is_empty());
        assert!(resume.qos2.is_empty());
        // Reconnecting with expiry 0 ends it at disconnect; the log gets a delete.
        let (c4, _rx4) = conn(4);
        let (k4, _) = oneshot::channel();
        assert_eq!(accepted(r.connect("p", false, 0, c4, k4)), (true, None));
        r.disconnect("p", 4, 0, None, 6000);
        assert_eq!(r.take_ops(), vec![StoreOp::Delete("p".into())]);
    }

    #[test]
    fn sessions_move_between_brokers_by_generation() {
        use crate::mqtt::cluster_sessions::merge;
        // Broker A: a connected persistent session.
        let mut a = RouterCore::default();
        let (c1, _rx1) = conn(1);
        let (k1, mut kicked1) = oneshot::channel();
        a.connect("m", false, EXPIRY_NEVER, c1, k1);
        a.subscribe("m", 1, &[("s/#".into(), opts(1))]);
        // Broker B asks for it: A tells the connection to go and waits for its final cursors.
        let (reply, mut answer) = oneshot::channel();
        let take = |reply| TakeRequest {
            client_id: "m".into(),
            clean_start: false,
            reply,
        };
        a.request_take(take(reply), 0);
        assert!(
            kicked1.try_recv().is_ok(),
            "the connection on A is told to go"
        );
        assert!(answer.try_recv().is_err(), "parked until it ends");
        let last = vec![(key(0), CursorMark { next: 5, sent: 6 })];
        a.disconnect("m", 1, EXPIRY_NEVER, Some(cursors(last.clone())), 10);
        let taken = answer.try_recv().unwrap();
        assert_eq!(taken.generation, 1);
        let state = taken.state.clone().unwrap();
        assert_eq!(state.cursors, last, "the final cursors travel");
        assert_eq!(a.sessions_len(), 0, "A forgot it");
        assert_eq!(a.take_ops(), vec![StoreOp::Delete("m".into())]);
        // A live connection that does not end in time: the take is answered after the wait.
        let mut slow = RouterCore::default();
        let (cs, _rxs) = conn(9);
        let (ks, _) = oneshot::channel();
        slow.connect("m", false, EXPIRY_NEVER, cs, ks);
        let (reply, mut late) = oneshot::channel();
        slow.request_take(take(reply), 0);
        slow.unpark_stale(TAKE_WAIT_MS - 1);
        assert!(late.try_recv().is_err());
        slow.unpark_stale(TAKE_WAIT_MS);
        assert!(late.try_recv().unwrap().state.is_some());

        // B installs it above every generation seen.
        let mut b = RouterCore::default();
        let remote = merge([taken.into()], false, 20);
        let (c2, _rx2) = conn(2);
        let (k2, _) = oneshot::channel();
        let (present, resume) =
            accepted(b.connect_with("m", false, EXPIRY_NEVER, c2, k2, &remote, 20));
        let resume = resume.unwrap();
        assert!(present && !resume.fresh);
        assert_eq!(resume.cursors, last);
        assert_eq!(resume.subs.keys().collect::<Vec<_>>(), vec!["s/#"]);
        assert_eq!(b.export(false).unwrap().sessions[0].generation, 2);
        b.take_ops(); // the session log took the change
        assert_eq!(b.export(false), None, "nothing changed since");

        // A's answer was lost: A still has the moved copy for whoever asks next.
        let again = a.take("m", false, 30);
        assert_eq!((again.generation, again.state), (1, Some(state.clone())));
        assert_eq!(a.take("m", true, 30).state, None, "not for a clean start");

        // A restarted with a stale copy (generation 1, from its session log): a connect there
        // that learns of B's generation 2 resumes B's cursors, not its own.
        let mut a2 = RouterCore::from_records(vec![state.clone()], 40);
        let moved_on = vec![(key(0), CursorMark { next: 9, sent: 9 })];
        b.disconnect("m", 2, EXPIRY_NEVER, Some(cursors(moved_on.clone())), 50);
        let remote = merge([b.take("m", false, 60).into()], false, 60);
        let (c3, _rx3) = conn(3);
        let (k3, _) = oneshot::channel();
        let (present, resume) =
            accepted(a2.connect_with("m", false, EXPIRY_NEVER, c3, k3, &remote, 60));
        assert!(present);
        assert_eq!(resume.unwrap().cursors, moved_on);
        assert_eq!(a2.export(true).unwrap().sessions[0].generation, 3);

        // A stale copy never resumes over a newer generation that ended (a tombstone).
        let mut c = RouterCore::from_records(vec![state], 0);
        let ended = Remote {
            best: None,
            generation_max: 4,
        };
        let (c4, _rx4) = conn(4);
        let (k4, _) = oneshot::channel();
        let (present, resume) =
            accepted(c.connect_with("m", false, EXPIRY_NEVER, c4, k4, &ended, 70));
        assert!(!present);
        let resume = resume.unwrap();
        assert!(resume.fresh && resume.subs.is_empty());
        // It ends after a clean connect: its tombstone keeps generation 6.
        let (c5, _rx5) = conn(5);
        let (k5, _) = oneshot::channel();
        c.connect("m", true, 0, c5, k5);
        c.disconnect("m", 5, 0, None, 80);
        assert_eq!(
            c.take("m", false, 90),
            Taken {
                generation: 6,
                state: None
            }
        );
    }

    #[test]
    fn takeover_of_a_persistent_session_waits_for_the_final_cursors() {
        let mut r = RouterCore::default();
        let (c1, _rx1) = conn(1);
        let (k1, mut kicked1) = oneshot::channel();
        r.connect("p", false, EXPIRY_NEVER, c1, k1);
        let (c2, _rx2) = conn(2);
        let (k2, _) = oneshot::channel();
        let (reply, mut answer) = oneshot::channel();
        let req = |conn, kick, reply| ConnectRequest {
            client_id: "p".into(),
            clean_start: false,
            expiry_secs: EXPIRY_NEVER,
            conn,
            kick,
            reply,
            remote: Remote::default(),
        };
        r.request_connect(req(c2, k2, reply), 0);
        assert!(kicked1.try_recv().is_ok());
        assert!(
            answer.try_recv().is_err(),
            "parked until the old connection ends"
        );
        let last = vec![(key(0), CursorMark { next: 42, sent: 42 })];
        r.disconnect("p", 1, EXPIRY_NEVER, Some(cursors(last.clone())), 10);
        let (present, resume) = accepted(answer.try_recv().unwrap());
        assert!(present);
        assert_eq!(
            resume.unwrap().cursors,
            last,
            "the old connection's final cursors"
        );
        // An old connection that never ends: answered after the wait.
        let (c3, _rx3) = conn(3);
        let (k3, _) = oneshot::channel();
        let (reply, mut answer) = oneshot::channel();
        r.request_connect(req(c3, k3, reply), 100);
        r.unpark_stale(100 + TAKEOVER_WAIT_MS - 1);
        assert!(answer.try_recv().is_err());
        r.unpark_stale(100 + TAKEOVER_WAIT_MS);
        assert!(accepted(answer.try_recv().unwrap()).0);
    }

    #[test]
    fn shared_subscriptions_round_robin_among_connected_members() {
        let mut r = RouterCore::default();
        let mut rxs = Vec::new();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let (c, rx) = conn(i as u64);
            rxs.push(rx);
            let (k, _) = oneshot::channel();
            r.connect(id, true, 0, c, k);
            r.subscribe(id, i as u64, &[("$share/g/s/#".into(), opts(1))]);
        }
        let who = |r: &mut RouterCore| -> Vec<u64> {
            (0..6)
                .flat_map(|_| r.route(&msg("s/x", "p", 1, false)))
                .map(|(c, _)| c.id)
                .collect()
        };
        assert_eq!(who(&mut r), vec![0, 1, 2, 0, 1, 2]);
        // A member that left is skipped; one that unsubscribed is out of the group.
        r.disconnect("b", 1, 0, None, 0);
        assert_eq!(r.unsubscribe("c", 2, &["$share/g/s/#".into()]), vec![true]);
        assert_eq!(who(&mut r), vec![0, 0, 0, 0, 0, 0]);
        assert!(r.route(&msg("other", "p", 1, false)).is_empty());
        assert!(best_match(
            &BTreeMap::from([("$share/g/s/#".to_string(), opts(1))]),
            "s/x",
            false
        )
        .is_none());
    }

    #[test]
    fn expiry() {
        let mut r = RouterCore::default();
        for (id, expiry) in [("short", 2u32), ("never", EXPIRY_NEVER), ("long", 3600)] {
            let (c, _rx) = conn(1);
            let (k, _) = oneshot::channel();
            r.connect(id, false, expiry, c, k);
            r.disconnect(id, 1, expiry, None, 10_000);
        }
        let (c, _rx) = conn(2);
        let (k, _) = oneshot::channel();
        r.connect("connected", false, 1, c, k);
        r.take_ops();
        assert_eq!(r.expire(11_999), 0);
        assert_eq!(r.expire(12_000), 1);
        assert_eq!(r.take_ops(), vec![StoreOp::Delete("short".into())]);
        assert_eq!(
            r.expire(i64::MAX / 2),
            1,
            "`long` goes; `never` and connected ones stay"
        );
        assert_eq!(r.sessions_len(), 2);
        // MQTT 5 DISCONNECT may lower the interval; 0 ends the session now.
        r.disconnect("connected", 2, 0, None, 0);
        assert_eq!(r.sessions_len(), 1);
    }

    #[test]
    fn route_batch_gives_each_connection_its_deliveries_in_order() {
        let mut r = RouterCore::default();
        let (c1, _rx1) = conn(1);
        let (c2, _rx2) = conn(2);
        let (k1, _) = oneshot::channel();
        let (k2, _) = oneshot::channel();
        r.connect("a", true, 0, c1, k1);
        r.connect("b", true, 0, c2, k2);
        r.subscribe("a", 1, &[("t/#".into(), opts(0))]);
        r.subscribe("b", 2, &[("t/1".into(), opts(1))]);
        let msgs: Vec<_> = (0..5)
            .map(|i| msg(&format!("t/{}", i % 2), &i.to_string(), 1, false))
            .collect();
        let mut got: Vec<(u64, Vec<(String, u8)>)> = r
            .route_batch(&msgs)
            .into_iter()
            .map(|(c, ds)| {
                let seen = ones(ds)
                    .iter()
                    .map(|d| (String::from_utf8_lossy(&d.message.payload).into(), d.qos))
                    .collect();
                (c.id, seen)
            })
            .collect();
        got.sort();
        let p = |v: &[(&str, u8)]| -> Vec<(String, u8)> {
            v.iter().map(|(s, q)| (s.to_string(), *q)).collect()
        };
        assert_eq!(
            got,
            vec![
                (1, p(&[("0", 0), ("1", 0), ("2", 0), ("3", 0), ("4", 0)])),
                (2, p(&[("1", 1), ("3", 1)])),
            ]
        );
        assert!(r.route_batch(&[msg("other", "p", 0, false)]).is_empty());
    }

    #[test]
    fn deliveries_share_an_encoded_publish_only_when_byte_identical() {
        let mut r = RouterCore::default();
        let rap = SubOptions {
            retain_as_published: true,
            ..opts(0)
        };
        let sub_id = SubOptions {
            sub_id: Some(9),
            ..opts(0)
        };
        // (client id, the protocol of the frames its connection takes, its subscription)
        let clients = [
            ("v3-a", Some(Proto::V311), opts(0)),
            ("v3-b", Some(Proto::V311), opts(0)),
            ("v3-c", Some(Proto::V311), opts(0)),
            ("v5-a", Some(Proto::V5), opts(0)),
            ("v5-b", Some(Proto::V5), opts(0)),
            ("aliases", None, opts(0)),
            ("aliases-2", None, opts(0)),
            ("qos1", Some(Proto::V311), opts(1)),
            ("qos1-2", Some(Proto::V311), opts(1)),
            ("sub-id", Some(Proto::V5), sub_id),
            ("sub-id-2", Some(Proto::V5), sub_id),
            ("retain-a", Some(Proto::V311), rap),
            ("retain-b", Some(Proto::V311), rap),
        ];
        let mut rxs = Vec::new();
        for (i, (id, frames, o)) in clients.iter().enumerate() {
            let (tx, rx) = delivery_queue(8, 64);
            rxs.push(rx);
            let c = ConnHandle {
                id: i as u64,
                tx,
                frames: *frames,
            };
            let (k, _) = oneshot::channel();
            r.connect(id, true, 0, c, k);
            r.subscribe(id, i as u64, &[("f/#".into(), *o)]);
        }
        let routed =
            |r: &mut RouterCore, ms: &[Arc<Message>]| -> HashMap<&'static str, Vec<Routed>> {
                r.route_batch(ms)
                    .into_iter()
                    .map(|(c, rs)| (clients[c.id as usize].0, rs))
                    .collect()
            };
        let one = |rs: &[Routed]| -> Delivery {
            match rs {
                [Routed::One(d)] => d.clone(),
                other => panic!("one delivery expected: {other:?}"),
            }
        };
        let m = msg("f/x", "hello", 1, true);
        let got = routed(&mut r, std::slice::from_ref(&m));
        assert_eq!(got.len(), clients.len());
        // Receiver-dependent packets are never shared.
        for id in [
            "aliases",
            "aliases-2",
            "qos1",
            "qos1-2",
            "sub-id",
            "sub-id-2",
        ] {
            one(&got[id]);
        }
        // Among connections that would send the same bytes, one encodes its own and the
        // others share one frame: exactly the bytes of its own encoding.
        let groups: [(&[&str], Proto); 3] = [
            (&["v3-a", "v3-b", "v3-c"], Proto::V311),
            (&["v5-a", "v5-b"], Proto::V5),
            (&["retain-a", "retain-b"], Proto::V311),
        ];
        let mut seen = Vec::new();
        for (ids, proto) in groups {
            let mut own = None;
            let mut shared = Vec::new();
            for id in ids {
                match &got[id][..] {
                    [Routed::One(d)] => assert!(own.replace(d.clone()).is_none(), "{ids:?}"),
                    [Routed::Frames(run)] => shared.push(run),
                    other => panic!("{id}: {other:?}"),
                }
            }
            let own = frame_of(&own.expect("one encodes its own"), proto);
            assert_eq!(shared.len(), ids.len() - 1, "{ids:?}");
            for run in &shared {
                assert_eq!(
                    (run.proto(), run.count, &run.bytes),
                    (proto, 1, &own),
                    "{ids:?}"
                );
                assert_eq!(run.bytes.as_ptr(), shared[0].bytes.as_ptr(), "one copy");
            }
            seen.push(own);
        }
        assert_ne!(seen[0], seen[1], "3.1.1 and 5 differ");
        assert_ne!(seen[0], seen[2], "the RETAIN flag differs");
        // A message with an expiry interval: its packet is made at send time, per connection.
        let expiring = Arc::new(Message {
            expires_at_ms: Some(i64::MAX),
            ..(*msg("f/y", "later", 0, false)).clone()
        });
        for rs in routed(&mut r, &[expiring]).values() {
            one(rs);
        }
        // A batch: the frames of consecutive messages go to a connection as one run. (QoS 0
        // and no RETAIN: the qos1 and retain-as-published subscribers get the 3.1.1 frames too.)
        let batch = [msg("f/1", "one", 0, false), msg("f/2", "two", 0, false)];
        let mut runs = 0;
        for (id, rs) in routed(&mut r, &batch) {
            for x in rs {
                if let Routed::Frames(run) = x {
                    let want: Vec<u8> = batch
                        .iter()
                        .flat_map(|m| frame_of(&delivery(m, &opts(0), vec![]), run.proto()))
                        .collect();
                    assert_eq!((run.count, &run.bytes[..]), (2, &want[..]), "{id}");
                    runs += 1;
                }
            }
        }
        assert_eq!(
            runs,
            6 + 1,
            "all but one of seven 3.1.1 and of two 5.0 connections"
        );
    }

    /// A seeded generator (so a failing case can be replayed) with the two draws the property
    /// test makes.
    struct Rng(rand::rngs::StdRng);

    impl Rng {
        fn seeded(seed: u64) -> Rng {
            Rng(rand::SeedableRng::seed_from_u64(seed))
        }

        fn below(&mut self, n: usize) -> usize {
            rand::Rng::gen_range(&mut self.0, 0..n)
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    const LEVELS: [&str; 5] = ["a", "b", "$SYS", "", "c"];

    fn random_topic(rng: &mut Rng) -> String {
        if rng.below(20) == 0 {
            return vec!["a"; topic::TRIE_LEVELS_MAX + rng.below(3)].join("/");
        }
        let n = 1 + rng.below(4);
        let topic = (0..n)
            .map(|_| *rng.pick(&LEVELS))
            .collect::<Vec<_>>()
            .join("/");
        if topic.is_empty() {
            "/".to_string()
        } else {
            topic
        }
    }

    fn random_filter(rng: &mut Rng) -> String {
        let filter = match rng.below(20) {
            // Deeper than the trie: kept in the index's list.
            0 => format!("{}#", "a/".repeat(topic::TRIE_LEVELS_MAX)),
            1 => format!("{}+", "+/".repeat(topic::TRIE_LEVELS_MAX)),
            _ => {
                let n = 1 + rng.below(4);
                let mut levels: Vec<&str> = (0..n)
                    .map(|_| match rng.below(6) {
                        0 | 1 => "+",
                        _ => *rng.pick(&LEVELS),
                    })
                    .collect();
                if rng.below(3) == 0 {
                    levels.push("#");
                }
                match levels.join("/") {
                    empty if empty.is_empty() => "/".to_string(),
                    filter => filter,
                }
            }
        };
        assert!(topic::validate_filter(&filter).is_ok(), "{filter}");
        if rng.below(6) == 0 {
            format!("$share/{}/{filter}", rng.pick(&["g", "h"]))
        } else {
            filter
        }
    }

    /// One routed delivery, comparable: (connection, QoS, RETAIN, subscription ids).
    type Seen = (u64, u8, bool, Vec<u32>);

    /// What [`RouterCore::route`] must give, found by scanning every session's filters with
    /// `topic::matches` (`best_match`), without the index: the shared groups' deliveries in
    /// group order, then the sessions' in client id order.
    fn route_by_scan(r: &RouterCore, m: &Message) -> Vec<Seen> {
        let mut out = Vec::new();
        let mut ids: Vec<&String> = r.sessions.keys().collect();
        ids.sort();
        let mut groups: BTreeMap<(String, String), Vec<&String>> = BTreeMap::new();
        for id in &ids {
            for filter in r.sessions[*id].subs.keys() {
                if let Some((g, f)) = topic::split_shared(filter).unwrap() {
                    groups.entry((g.into(), f.into())).or_default().push(id);
                }
            }
        }
        for ((group, filter), mut members) in groups {
            if !topic::matches(&filter, &m.topic) {
                continue;
            }
            // Round robin from where the group is (its members in subscribe order).
            let g = &r.index.shared[&(group.clone(), filter.clone())];
            members.sort_by_key(|id| g.members.iter().position(|m| m == *id).unwrap());
            let n = members.len();
            let key = format!("$share/{group}/{filter}");
            if let Some((conn, o)) = (0..n)
                .map(|step| &r.sessions[members[(g.next + step) % n]])
                .find_map(|e| Some((e.conn.as_ref()?, e.subs[&key])))
            {
                out.push((
                    conn.id,
                    m.qos.min(o.qos),
                    o.retain_as_published && m.retain,
                    o.sub_id.into_iter().collect(),
                ));
            }
        }
        for id in ids {
            let e = &r.sessions[id];
            let Some(conn) = e.conn.as_ref().filter(|_| !e.persistent()) else {
                continue;
            };
            let own = m.publisher.as_deref() == Some(id.as_str());
            if let Some((o, sub_ids)) = best_match(&e.subs, &m.topic, own) {
                out.push((
                    conn.id,
                    m.qos.min(o.qos),
                    o.retain_as_published && m.retain,
                    sub_ids,
                ));
            }
        }
        out
    }

    #[test]
    fn indexed_routing_equals_a_scan_of_every_session() {
        const CLIENTS: [&str; 8] = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"];
        let mut routed = 0;
        for seed in 1..=40u64 {
            let mut rng = Rng::seeded(seed);
            let mut r = RouterCore::default();
            // Each client id's current connection.
            let mut conns: HashMap<&str, u64> = HashMap::new();
            let mut next_conn = 0u64;
            let mut now = 0i64;
            for step in 0..300 {
                now += 100;
                let id = *rng.pick(&CLIENTS);
                match rng.below(20) {
                    0..=2 => {
                        next_conn += 1;
                        let (c, _rx) = conn(next_conn);
                        let (k, _) = oneshot::channel();
                        let expiry = *rng.pick(&[0, 0, 1, EXPIRY_NEVER]);
                        let accepted = r.connect(id, rng.below(2) == 0, expiry, c, k);
                        assert!(matches!(accepted, ConnectOutcome::Accepted { .. }));
                        conns.insert(id, next_conn);
                    }
                    3..=9 => {
                        if let Some(&c) = conns.get(id) {
                            let filters: Vec<(String, SubOptions)> = (0..1 + rng.below(3))
                                .map(|_| {
                                    let o = SubOptions {
                                        qos: rng.below(3) as u8,
                                        retain_as_published: rng.below(2) == 0,
                                        retain_handling: 2,
                                        sub_id: (rng.below(2) == 0)
                                            .then(|| rng.below(5) as u32 + 1),
                                        no_local: rng.below(3) == 0,
                                    };
                                    (random_filter(&mut rng), o)
                                })
                                .collect();
                            r.subscribe(id, c, &filters);
                        }
                    }
                    10..=12 => {
                        if let Some(&c) = conns.get(id) {
                            let held: Vec<String> = r.sessions[id].subs.keys().cloned().collect();
                            let f = if !held.is_empty() && rng.below(4) != 0 {
                                rng.pick(&held).clone()
                            } else {
                                random_filter(&mut rng)
                            };
                            let existed = held.contains(&f);
                            assert_eq!(r.unsubscribe(id, c, &[f]), vec![existed]);
                        }
                    }
                    13 | 14 => {
                        if let Some(c) = conns.remove(id) {
                            let expiry = *rng.pick(&[0, 1, EXPIRY_NEVER]);
                            r.disconnect(id, c, expiry, None, now);
                        }
                    }
                    15 => {
                        r.expire(now);
                    }
                    16 => {
                        r.take(id, rng.below(2) == 0, now);
                        conns.remove(id);
                    }
                    17 => {
                        // A restart: the persistent sessions come back from their records.
                        let records = r.export(true).unwrap().sessions;
                        r = RouterCore::from_records(records, now);
                        conns.clear();
                    }
                    _ => {}
                }
                r.check_index();
                for _ in 0..3 {
                    let mut m = (*msg(
                        &random_topic(&mut rng),
                        "p",
                        rng.below(3) as u8,
                        rng.below(2) == 0,
                    ))
                    .clone();
                    m.publisher = (rng.below(2) == 0).then(|| rng.pick(&CLIENTS).to_string());
                    let m = Arc::new(m);
                    // Across connections the order is free (each has its own queue).
                    let mut want = route_by_scan(&r, &m);
                    want.sort();
                    let mut got: Vec<Seen> = r
                        .route(&m)
                        .into_iter()
                        .map(|(c, d)| (c.id, d.qos, d.retain, d.sub_ids))
                        .collect();
                    got.sort();
                    assert_eq!(got, want, "seed {seed} step {step} topic {:?}", m.topic);
                    routed += want.len();
                }
            }
            // Every session gone: nothing left in the index.
            for id in CLIENTS {
                r.take(id, true, now);
            }
            r.expire(i64::MAX / 2);
            r.check_index();
            assert_eq!(r.sessions_len(), 0);
            assert!(r.index.plain.is_empty(), "seed {seed}: {:?}", r.index.plain);
            assert!(r.index.shared.is_empty(), "seed {seed}");
        }
        assert!(routed > 1000, "the cases route something: {routed}");
    }

    #[test]
    fn index_entries_go_with_their_subscriptions_and_sessions() {
        let mut r = RouterCore::default();
        let ends = |r: &RouterCore| (r.index.plain.len(), r.index.shared.len());
        let all = |r: &mut RouterCore, topic: &str| -> Vec<u64> {
            let mut ids: Vec<u64> = r
                .route(&msg(topic, "p", 0, false))
                .into_iter()
                .map(|(c, _)| c.id)
                .collect();
            ids.sort();
            ids
        };
        let filters = |fs: &[&str]| -> Vec<(String, SubOptions)> {
            fs.iter().map(|f| (f.to_string(), opts(1))).collect()
        };
        let mut rxs = Vec::new();
        for (i, (id, expiry)) in [("e", 0), ("p", 60), ("q", 0)].into_iter().enumerate() {
            let (c, rx) = conn(i as u64);
            rxs.push(rx);
            let (k, _) = oneshot::channel();
            r.connect(id, true, expiry, c, k);
        }
        r.subscribe("e", 0, &filters(&["x/y", "x/+", "#", "$share/g/x/#"]));
        r.subscribe("p", 1, &filters(&["x/y", "x/#", "$share/g/x/#"]));
        r.subscribe("q", 2, &filters(&["x/+/z"]));
        r.subscribe("q", 2, &filters(&["x/+/z"])); // again: held once
        r.check_index();
        assert_eq!(ends(&r), (6, 1));
        assert_eq!(all(&mut r, "x/y"), vec![0, 0], "e, and the group (e first)");
        // Unsubscribing removes the entries (and a filter never held changes nothing).
        assert_eq!(
            r.unsubscribe("e", 0, &["x/y".into(), "x/+".into(), "nope".into()]),
            vec![true, true, false]
        );
        r.check_index();
        assert_eq!(ends(&r), (4, 1));
        assert_eq!(all(&mut r, "$SYS/x"), Vec::<u64>::new());
        assert_eq!(
            all(&mut r, "x/a/z"),
            vec![0, 1, 2],
            "`#`, the group's turn, `x/+/z`"
        );
        // A clean start drops the old subscriptions.
        let (c, rx) = conn(3);
        rxs.push(rx);
        let (k, _) = oneshot::channel();
        r.connect("q", true, 0, c, k);
        r.check_index();
        assert_eq!(ends(&r), (3, 1));
        // An ephemeral session's end, and a persistent one's expiry.
        r.disconnect("e", 0, 0, None, 0);
        r.check_index();
        assert_eq!(ends(&r), (2, 1));
        r.disconnect("p", 1, 60, None, 0);
        assert_eq!(ends(&r), (2, 1), "kept while the session waits");
        assert_eq!(r.expire(59_999), 0);
        assert_eq!(r.expire(60_000), 1);
        r.check_index();
        assert_eq!(ends(&r), (0, 0), "nothing left");
        assert!(r.index.plain.is_empty());
        // Restored sessions are indexed; a take forgets them.
        let record = SessionRecord {
            client_id: "s".into(),
            expiry_secs: EXPIRY_NEVER,
            subs: ["a/#", "$share/g/a", "b"]
                .iter()
                .map(|f| StoredSub {
                    filter: f.to_string(),
                    qos: 1,
                    retain_as_published: false,
                    retain_handling: 0,
                    sub_id: None,
                    no_local: false,
                })
                .collect(),
            cursors: vec![],
            disconnected_ms: Some(0),
            generation: 1,
            qos2: Qos2Ids::default(),
        };
        let mut s = RouterCore::from_records(vec![record], 0);
        s.check_index();
        assert_eq!(ends(&s), (2, 1));
        s.take("s", false, 0);
        s.check_index();
        assert!(s.index.plain.is_empty() && s.index.shared.is_empty());
    }

    #[tokio::test]
    async fn delivery_queue_bounds_messages_and_batches() {
        let d = |i: usize| Delivery {
            message: msg("t", &i.to_string(), 0, false),
            qos: 0,
            retain: false,
            dup: false,
            origin: None,
            sub_ids: vec![],
        };
        let batch = |r: std::ops::Range<usize>| r.map(|i| Routed::One(d(i))).collect::<Vec<_>>();
        // (batches_max, messages_max, offered batch sizes, dropped per offer)
        let cases: [(usize, usize, &[usize], &[usize]); 4] = [
            (4, 10, &[3, 3, 3], &[0, 0, 0]),
            (4, 10, &[6, 6, 1], &[0, 2, 1]), // the tail beyond the room left goes
            (2, 100, &[1, 1, 1], &[0, 0, 1]), // at most two batches queued
            (4, 10, &[0, 10, 1], &[0, 0, 1]),
        ];
        for (batches_max, messages_max, sizes, dropped) in cases {
            let (tx, mut rx) = delivery_queue(batches_max, messages_max);
            let mut next = 0;
            let mut kept = Vec::new();
            let mut got_dropped = Vec::new();
            for &n in sizes {
                let b = batch(next..next + n);
                let lost = tx.offer(b);
                kept.extend(next..next + n - lost);
                got_dropped.push(lost);
                next += n;
            }
            assert_eq!(got_dropped, dropped, "case {sizes:?}");
            let mut seen = Vec::new();
            while let Some(b) = rx.try_recv() {
                seen.extend(ones(b).iter().map(|d| {
                    String::from_utf8_lossy(&d.message.payload)
                        .parse::<usize>()
                        .unwrap()
                }));
            }
            assert_eq!(seen, kept, "case {sizes:?}");
            // Taken out: room again.
            assert_eq!(tx.offer(batch(0..1)), 0);
            assert_eq!(rx.recv().await.map(|b| b.len()), Some(1));
        }
        // The connection gone: everything offered is dropped.
        let (tx, rx) = delivery_queue(4, 10);
        drop(rx);
        assert_eq!(tx.offer(batch(0..3)), 3);

        // A run of frames counts as its messages and is cut inside, at a packet boundary.
        let frames: Vec<Bytes> = (0..4).map(|i| frame_of(&d(i * 100), Proto::V311)).collect();
        let run = |from: usize, to: usize| {
            let mut buf = BytesMut::new();
            frames[from..to]
                .iter()
                .for_each(|f| buf.extend_from_slice(f));
            Routed::Frames(FrameRun {
                slot: FrameBufs::slot(Proto::V311, false),
                start: 0,
                end: buf.len(),
                count: to - from,
                bytes: buf.freeze(),
            })
        };
        let (tx, mut rx) = delivery_queue(4, 5);
        assert_eq!(tx.offer(vec![Routed::One(d(7)), run(0, 3)]), 0);
        assert_eq!(
            tx.offer(vec![run(0, 3), Routed::One(d(8))]),
            3,
            "room for one"
        );
        let first = rx.try_recv().unwrap();
        assert_eq!(first.iter().map(Routed::messages).sum::<usize>(), 4);
        match &rx.try_recv().unwrap()[..] {
            [Routed::Frames(r)] => {
                assert_eq!((r.count, r.proto()), (1, Proto::V311));
                assert_eq!(r.bytes, frames[0]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(tx.offer(vec![run(1, 4)]), 0, "all taken out: room again");
    }
}
