//! Persistent MQTT sessions across brokers: cluster-wide takeover, and sessions that survive a
//! dead broker.
//!
//! A session is portable: it is its subscriptions, expiry and *cursors* (per partition, the next
//! offset to deliver and the sent mark), and partitions and offsets mean the same on every
//! broker. So moving a session is moving one small [`SessionRecord`].
//!
//! **Generations.** Every connect that creates or takes over a session gives it a generation
//! one above every generation it saw for that client id (here, at the live peers, in dead
//! brokers' snapshots); the highest generation wins everywhere ([`merge`],
//! `RouterCore::connect_with`). A copy with a lower generation — in the session log of a
//! broker that was down, or in an old snapshot — is stale and never resumed. A session that
//! ended (clean start, expiry) leaves a *tombstone* with its generation (kept a bounded time)
//! so an older copy elsewhere cannot come back either.
//!
//! **Takeover at connect** ([`gather`]). Before CONNACK the accepting broker asks every other
//! live broker (metadata's brokers with a `peer_addr`), in parallel, each within
//! [`TAKE_TIMEOUT_MS`], `TakeSession(client_id, clean_start)`; an unreachable peer is skipped.
//! A peer with that client connected tells the connection to go (MQTT 5: DISCONNECT 0x8E, the
//! local takeover path, so its will is handled as for a local takeover), waits for its final
//! cursors, forgets the session and answers it (none for a clean start) with its generation.
//! Every connect asks, ephemeral or not: a client id is connected once cluster-wide. The cost
//! is one RPC per peer per connect and no metadata write (a connect storm is not a raft
//! storm); a single broker asks nobody.
//!
//! **Dead brokers** ([`run_snapshots`], [`Snapshots`]). Each broker PUTs a snapshot of its
//! persistent sessions and tombstones to `mqtt/sessions/<node_id>` every
//! `mqtt.session_snapshot_interval_ms` when they changed (one PUT per interval per broker, not
//! per session) and at a clean stop. A connect also reads the latest snapshot of every broker
//! metadata lists as not alive (cached: at most one GET per dead broker per
//! [`SNAPSHOT_CACHE_MS`] and per death, by its last heartbeat) and takes the client's copy if
//! its generation is the highest seen and it has not expired (a session connected when the
//! snapshot was written counts as disconnected at `written_ms`).
//!
//! *Why an old snapshot redelivers but never loses:* a cursor's `next` only advances past
//! messages the client acknowledged (`replay.rs`), so any older copy of a cursor points at or
//! before the first unacknowledged message; resuming from it re-reads acknowledged messages
//! (sent again, with DUP below the copy's sent mark), never skips one. Messages are stored
//! records, not copies in the session, so nothing published meanwhile is missing from the log.
//! What a snapshot interval can lose is session *changes* made on a broker that then died
//! before its next PUT (a subscription added, a session created there).
//!
//! Snapshot object, layout v1 ([`encode_snapshot`], [`decode_snapshot`]):
//!
//! ```text
//! magic "SMQS" | version: u8 = 1 | body_len: u32 LE | crc: u32 LE (CRC32C of body) | body
//! body = JSON {"node_id", "written_ms", "sessions": [SessionRecord], "tombstones": [[id, gen, ended_ms]]}
//! ```
//!
//! A session state on the wire (`TakeSessionReply.state`, [`encode_state`]): `version: u8 = 1 |
//! JSON SessionRecord`. `SessionRecord` is the session log's record (`store.rs`), so the three
//! forms share one serde declaration.

use super::router::{Remote, RouterMsg, SessionsExport, Taken, Tombstone, EXPIRY_NEVER};
use super::store::SessionRecord;
use crate::node::Node;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Snapshot and state format version.
pub const FORMAT_VERSION: u8 = 1;
const MAGIC: &[u8; 4] = b"SMQS";
const HEADER_BYTES: usize = 4 + 1 + 4 + 4;
/// A snapshot larger than this is refused (100k sessions with a few subscriptions each fit).
pub const SNAPSHOT_BYTES_MAX: usize = 256 * 1024 * 1024;
/// A state larger than this is refused.
pub const STATE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Each peer has this long to answer `TakeSession` at a connect (it waits at most
/// `router::TAKE_WAIT_MS` for a live connection's final cursors). A peer that answers later is
/// skipped; the session it handed over stays there as a *moved copy* that the next connect
/// finds (see `RouterCore::take`), so a lost answer delays the session, never loses it.
pub const TAKE_TIMEOUT_MS: u64 = 1500;
/// Reading a dead broker's snapshot at a connect gives up after this.
pub const SNAPSHOT_READ_TIMEOUT_MS: u64 = 3000;
/// A dead broker's snapshot is read again at most this often (a broker that metadata says is
/// dead normally writes nothing more; this bounds how long a zombie's last write is missed).
pub const SNAPSHOT_CACHE_MS: u64 = 30_000;

/// The object key of `node_id`'s snapshot.
pub fn snapshot_key(node_id: u64) -> String {
    format!("mqtt/sessions/{node_id}")
}

/// Why a snapshot or state was refused. Permanent: the bytes are what they are.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("shorter than its header ({0} bytes)")]
    Truncated(usize),
    #[error("not an MQTT session snapshot (bad magic)")]
    BadMagic,
    #[error("format version {0} is not supported (this broker reads {FORMAT_VERSION})")]
    Version(u8),
    #[error("body length {declared} does not match the {actual} bytes present")]
    Length { declared: usize, actual: usize },
    #[error("{0} bytes is above the limit")]
    TooLarge(usize),
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("body does not decode: {0}")]
    Body(String),
}

/// One broker's persistent sessions and tombstones at `written_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub node_id: u64,
    pub written_ms: i64,
    pub sessions: Vec<SessionRecord>,
    /// `(client id, generation, ended_ms)`.
    pub tombstones: Vec<(String, u64, i64)>,
}

impl Snapshot {
    pub fn from_export(node_id: u64, written_ms: i64, e: SessionsExport) -> Snapshot {
        Snapshot {
            node_id,
            written_ms,
            sessions: e.sessions,
            tombstones: e
                .tombstones
                .into_iter()
                .map(|(id, t)| (id, t.generation, t.ended_ms))
                .collect(),
        }
    }

    /// What this snapshot says of each client id, as [`Candidate`]s. A session connected when
    /// it was written counts as disconnected at `written_ms`.
    pub fn candidates(&self) -> HashMap<String, Candidate> {
        let mut out = HashMap::new();
        for (id, generation, _) in &self.tombstones {
            out.insert(
                id.clone(),
                Candidate {
                    generation: *generation,
                    state: None,
                },
            );
        }
        for s in &self.sessions {
            let mut s = s.clone();
            s.disconnected_ms.get_or_insert(self.written_ms);
            out.insert(
                s.client_id.clone(),
                Candidate {
                    generation: s.generation,
                    state: Some(s),
                },
            );
        }
        out
    }
}

/// Encodes a snapshot (layout in the module doc).
pub fn encode_snapshot(s: &Snapshot) -> Result<Bytes, CodecError> {
    let body = serde_json::to_vec(s).map_err(|e| CodecError::Body(e.to_string()))?;
    if body.len() > SNAPSHOT_BYTES_MAX {
        return Err(CodecError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(Bytes::from(out))
}

/// Decodes a snapshot; anything but an intact v1 snapshot is an error, never a panic.
pub fn decode_snapshot(data: &[u8]) -> Result<Snapshot, CodecError> {
    if data.len() < HEADER_BYTES {
        return Err(CodecError::Truncated(data.len()));
    }
    if &data[..4] != MAGIC {
        return Err(CodecError::BadMagic);
    }
    if data[4] != FORMAT_VERSION {
        return Err(CodecError::Version(data[4]));
    }
    let declared = u32::from_le_bytes([data[5], data[6], data[7], data[8]]) as usize;
    let stored = u32::from_le_bytes([data[9], data[10], data[11], data[12]]);
    let body = &data[HEADER_BYTES..];
    if declared > SNAPSHOT_BYTES_MAX {
        return Err(CodecError::TooLarge(declared));
    }
    if declared != body.len() {
        return Err(CodecError::Length {
            declared,
            actual: body.len(),
        });
    }
    let computed = crc32c::crc32c(body);
    if computed != stored {
        return Err(CodecError::Checksum { stored, computed });
    }
    serde_json::from_slice(body).map_err(|e| CodecError::Body(e.to_string()))
}

/// Encodes one session state for `TakeSession`.
pub fn encode_state(r: &SessionRecord) -> Result<Bytes, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    serde_json::to_writer(&mut out, r).map_err(|e| CodecError::Body(e.to_string()))?;
    Ok(Bytes::from(out))
}

/// Decodes one session state from `TakeSession`.
pub fn decode_state(data: &[u8]) -> Result<SessionRecord, CodecError> {
    let Some((&version, body)) = data.split_first() else {
        return Err(CodecError::Truncated(0));
    };
    if version != FORMAT_VERSION {
        return Err(CodecError::Version(version));
    }
    if body.len() > STATE_BYTES_MAX {
        return Err(CodecError::TooLarge(body.len()));
    }
    serde_json::from_slice(body).map_err(|e| CodecError::Body(e.to_string()))
}

/// What one source (a live peer, a dead broker's snapshot) says of a client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// 0: the source never had the client id.
    pub generation: u64,
    /// The session, when the source had one to give (not for a clean start, not ended).
    pub state: Option<SessionRecord>,
}

impl From<Taken> for Candidate {
    fn from(t: Taken) -> Candidate {
        Candidate {
            generation: t.generation,
            state: t.state,
        }
    }
}

/// Whether a disconnected session's expiry has passed at `now_ms`.
pub fn expired(r: &SessionRecord, now_ms: i64) -> bool {
    r.expiry_secs != EXPIRY_NEVER
        && r.disconnected_ms
            .is_some_and(|d| d.saturating_add(i64::from(r.expiry_secs) * 1000) <= now_ms)
}

/// The generation rule over what the sources said. `generation_max` is the highest generation
/// seen (with or without a session: an ended session's tombstone counts). `best` is the
/// session with that highest generation, if one has it, is unexpired and the connect does not
/// start clean; a session older than the highest generation is stale and never chosen. On a
/// tie the earlier candidate wins (callers put live peers before snapshots).
pub fn merge(
    candidates: impl IntoIterator<Item = Candidate>,
    clean_start: bool,
    now_ms: i64,
) -> Remote {
    let mut generation_max = 0;
    let mut best: Option<SessionRecord> = None;
    for c in candidates {
        generation_max = generation_max.max(c.generation);
        let Some(s) = c.state else { continue };
        debug_assert_eq!(s.generation, c.generation);
        if clean_start || expired(&s, now_ms) {
            continue;
        }
        if best.as_ref().is_none_or(|b| s.generation > b.generation) {
            best = Some(s);
        }
    }
    Remote {
        best: best.filter(|b| b.generation >= generation_max),
        generation_max,
    }
}

/// Dead brokers' snapshots, as read (see the module doc).
#[derive(Default)]
pub struct Snapshots {
    nodes: parking_lot::Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Option<CachedSnapshot>>>>>,
}

struct CachedSnapshot {
    /// The broker's last heartbeat when read: a later death reads again.
    heartbeat_ms: i64,
    read_at: tokio::time::Instant,
    candidates: Arc<HashMap<String, Candidate>>,
}

impl Snapshots {
    /// What `node_id`'s latest snapshot says of every client id (empty when it has none or it
    /// cannot be read; logged). Concurrent connects share one read.
    async fn of(
        &self,
        node: &Node,
        node_id: u64,
        heartbeat_ms: i64,
    ) -> Arc<HashMap<String, Candidate>> {
        let slot = self.nodes.lock().entry(node_id).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.heartbeat_ms == heartbeat_ms
                && c.read_at.elapsed() < Duration::from_millis(SNAPSHOT_CACHE_MS)
            {
                return c.candidates.clone();
            }
        }
        let key = snapshot_key(node_id);
        let read = tokio::time::timeout(
            Duration::from_millis(SNAPSHOT_READ_TIMEOUT_MS),
            node.store.get(&key),
        )
        .await;
        let candidates = match read {
            Ok(Ok(bytes)) => match decode_snapshot(&bytes) {
                Ok(s) => s.candidates(),
                Err(err) => {
                    tracing::warn!(node_id, %key, %err, "mqtt session snapshot refused");
                    HashMap::new()
                }
            },
            Ok(Err(strata_tiering::TieringError::NotFound { .. })) => HashMap::new(),
            Ok(Err(err)) => {
                tracing::warn!(node_id, %key, %err, "mqtt session snapshot not read");
                HashMap::new()
            }
            Err(_) => {
                tracing::warn!(node_id, %key, "mqtt session snapshot read timed out");
                HashMap::new()
            }
        };
        let candidates = Arc::new(candidates);
        *slot = Some(CachedSnapshot {
            heartbeat_ms,
            read_at: tokio::time::Instant::now(),
            candidates: candidates.clone(),
        });
        candidates
    }
}

/// The other brokers, as metadata lists them: live ones with a peer address, and dead ones.
struct OtherBrokers {
    live: Vec<(u64, String)>,
    /// `(node_id, last heartbeat)`.
    dead: Vec<(u64, i64)>,
}

fn other_brokers(node: &Node) -> OtherBrokers {
    let state = node.meta.read();
    let mut out = OtherBrokers {
        live: Vec::new(),
        dead: Vec::new(),
    };
    for b in state.cluster().brokers() {
        if b.node_id == node.config.node_id {
            continue;
        }
        if b.alive {
            if let Some(addr) = &b.peer_addr {
                out.live.push((b.node_id, addr.clone()));
            }
        } else {
            out.dead.push((b.node_id, b.heartbeat_ms));
        }
    }
    out
}

/// Asks one live peer to hand over `client_id`'s session.
async fn take_from_peer(
    node: &Node,
    addr: &str,
    client_id: &str,
    clean_start: bool,
) -> Result<Candidate, String> {
    let mut client = node.peers.client(addr)?;
    let reply = client
        .take_session(crate::peer::pb::TakeSessionRequest {
            client_id: client_id.to_string(),
            clean_start,
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let state = if reply.state.is_empty() {
        None
    } else {
        let s = decode_state(&reply.state).map_err(|e| e.to_string())?;
        if s.client_id != client_id || s.generation != reply.generation {
            return Err(format!(
                "answered a session of `{}` generation {} for `{client_id}` generation {}",
                s.client_id, s.generation, reply.generation
            ));
        }
        Some(s)
    };
    Ok(Candidate {
        generation: reply.generation,
        state,
    })
}

/// Before a connect reaches the router: takes `client_id`'s session from every other live
/// broker and reads dead brokers' snapshots, then applies the generation rule. Empty on a
/// single broker.
pub async fn gather(
    node: &Node,
    snapshots: &Snapshots,
    client_id: &str,
    clean_start: bool,
) -> Remote {
    let others = other_brokers(node);
    if others.live.is_empty() && others.dead.is_empty() {
        return Remote::default();
    }
    let asks = others.live.iter().map(|(peer, addr)| async move {
        let asked = tokio::time::timeout(
            Duration::from_millis(TAKE_TIMEOUT_MS),
            take_from_peer(node, addr, client_id, clean_start),
        )
        .await;
        match asked {
            Ok(Ok(c)) => Some(c),
            Ok(Err(err)) => {
                tracing::info!(peer, %addr, client_id, %err, "TakeSession failed; peer skipped");
                None
            }
            Err(_) => {
                tracing::info!(peer, %addr, client_id, "TakeSession timed out; peer skipped");
                None
            }
        }
    });
    let reads = others.dead.iter().map(|&(dead, heartbeat_ms)| async move {
        snapshots
            .of(node, dead, heartbeat_ms)
            .await
            .get(client_id)
            .cloned()
    });
    let (live, dead) = futures::join!(
        futures::future::join_all(asks),
        futures::future::join_all(reads)
    );
    let now = crate::log::sequencer::now_ms();
    merge(live.into_iter().chain(dead).flatten(), clean_start, now)
}

/// This broker's MQTT side as the Peer service and connects reach it (a field of `Node`,
/// set by `mqtt::start`).
#[derive(Default)]
pub struct LocalSessions {
    router: OnceLock<mpsc::Sender<RouterMsg>>,
    /// Weak: `Shared` holds the node.
    shared: OnceLock<Weak<super::connection::Shared>>,
    /// Dead brokers' snapshots, as read.
    pub snapshots: Snapshots,
}

impl LocalSessions {
    pub fn set(&self, router: mpsc::Sender<RouterMsg>, shared: &Arc<super::connection::Shared>) {
        let _ = self.router.set(router);
        let _ = self.shared.set(Arc::downgrade(shared));
    }
}

/// Client ids are what MQTT allows (65,535 bytes of UTF-8); a longer one is refused.
const CLIENT_ID_BYTES_MAX: usize = 65_535;

/// The Peer service's `TakeSession` on this broker: the router hands the session over (after
/// the live connection, if any, ended) and a delayed will of the client id is cancelled — the
/// client connected again, elsewhere (MQTT 5 §3.1.3.2.2).
pub async fn serve_take(
    node: &Node,
    req: crate::peer::pb::TakeSessionRequest,
) -> Result<crate::peer::pb::TakeSessionReply, tonic::Status> {
    if req.client_id.is_empty() || req.client_id.len() > CLIENT_ID_BYTES_MAX {
        return Err(tonic::Status::invalid_argument(
            "client_id must be 1..=65535 bytes",
        ));
    }
    let Some(router) = node.mqtt_sessions.router.get() else {
        // No MQTT listener here: no session either.
        return Ok(crate::peer::pb::TakeSessionReply::default());
    };
    if let Some(shared) = node.mqtt_sessions.shared.get().and_then(Weak::upgrade) {
        shared.wills.lock().cancel(&req.client_id);
    }
    let (reply, answer) = oneshot::channel();
    let sent = router
        .send(RouterMsg::Take(super::router::TakeRequest {
            client_id: req.client_id.clone(),
            clean_start: req.clean_start,
            reply,
        }))
        .await;
    let taken = match (sent, answer.await) {
        (Ok(()), Ok(t)) => t,
        _ => return Err(tonic::Status::unavailable("the MQTT router has stopped")),
    };
    let state = match &taken.state {
        Some(s) => encode_state(s).map_err(|e| tonic::Status::internal(e.to_string()))?,
        None => Bytes::new(),
    };
    tracing::debug!(
        client_id = req.client_id,
        generation = taken.generation,
        handed_over = !state.is_empty(),
        "mqtt session taken by another broker"
    );
    Ok(crate::peer::pb::TakeSessionReply {
        generation: taken.generation,
        state,
    })
}

/// Uploads this broker's snapshot every `interval` when it changed, until shutdown. At start
/// it reads its own last snapshot back for the tombstones (the session log does not keep
/// them).
pub async fn run_snapshots(
    node: Arc<Node>,
    router: mpsc::Sender<RouterMsg>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let own = node.config.node_id;
    match node.store.get(&snapshot_key(own)).await {
        Ok(bytes) => match decode_snapshot(&bytes) {
            Ok(s) => {
                let t = s
                    .tombstones
                    .into_iter()
                    .map(|(id, generation, ended_ms)| {
                        (
                            id,
                            Tombstone {
                                generation,
                                ended_ms,
                            },
                        )
                    })
                    .collect();
                let _ = router.send(RouterMsg::RestoreTombstones(t)).await;
            }
            Err(err) => tracing::warn!(%err, "own mqtt session snapshot refused; tombstones lost"),
        },
        Err(strata_tiering::TieringError::NotFound { .. }) => {}
        Err(err) => tracing::warn!(%err, "own mqtt session snapshot not read; tombstones lost"),
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut force = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        // A failed PUT is retried at the next tick whether or not anything changed again.
        force = !upload(&node, &router, force).await;
    }
}

/// Exports the sessions (when changed, or `force`) and PUTs the snapshot. True when there was
/// nothing to write or the PUT succeeded.
pub async fn upload(node: &Node, router: &mpsc::Sender<RouterMsg>, force: bool) -> bool {
    let (reply, answer) = oneshot::channel();
    if router
        .send(RouterMsg::Export { force, reply })
        .await
        .is_err()
    {
        return true;
    }
    let Ok(Some(export)) = answer.await else {
        return true;
    };
    let n = export.sessions.len();
    let snapshot =
        Snapshot::from_export(node.config.node_id, crate::log::sequencer::now_ms(), export);
    let key = snapshot_key(node.config.node_id);
    let body = match encode_snapshot(&snapshot) {
        Ok(b) => b,
        Err(err) => {
            tracing::error!(%err, "mqtt session snapshot not encoded");
            return false;
        }
    };
    match node.store.put(&key, body).await {
        Ok(()) => {
            tracing::debug!(sessions = n, %key, "mqtt session snapshot written");
            true
        }
        Err(err) => {
            tracing::warn!(%err, %key, "mqtt session snapshot not written; retried");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::store::{CursorMark, StoredSub};
    use strata_types::{PartitionKey, TopicId};

    fn rec(id: &str, generation: u64, next: i64) -> SessionRecord {
        SessionRecord {
            client_id: id.into(),
            expiry_secs: 3600,
            subs: vec![StoredSub {
                filter: "a/#".into(),
                qos: 1,
                retain_as_published: false,
                retain_handling: 0,
                sub_id: None,
                no_local: false,
            }],
            cursors: vec![(
                PartitionKey {
                    topic: TopicId(uuid::Uuid::from_u128(1)),
                    partition: 0,
                },
                CursorMark { next, sent: next },
            )],
            disconnected_ms: Some(1_000_000),
            generation,
            qos2: Default::default(),
        }
    }

    fn live(r: SessionRecord) -> Candidate {
        Candidate {
            generation: r.generation,
            state: Some(r),
        }
    }

    fn gone(generation: u64) -> Candidate {
        Candidate {
            generation,
            state: None,
        }
    }

    /// `(candidates, clean_start, expected best's (generation, next), expected max)`.
    fn check(cands: Vec<Candidate>, clean: bool, best: Option<(u64, i64)>, max: u64) {
        let now = 1_000_000 + 10_000;
        let r = merge(cands, clean, now);
        assert_eq!(
            r.best.as_ref().map(|b| (b.generation, b.cursors[0].1.next)),
            best
        );
        assert_eq!(r.generation_max, max);
    }

    #[test]
    fn merge_takes_the_highest_generation_and_never_a_stale_copy() {
        // Nothing anywhere.
        check(vec![], false, None, 0);
        check(vec![gone(0), gone(0)], false, None, 0);
        // The highest generation wins, whatever the order.
        check(
            vec![live(rec("c", 2, 20)), live(rec("c", 5, 50))],
            false,
            Some((5, 50)),
            5,
        );
        check(
            vec![live(rec("c", 5, 50)), live(rec("c", 2, 20))],
            false,
            Some((5, 50)),
            5,
        );
        // A tie: the first (live peers come before snapshots).
        check(
            vec![live(rec("c", 3, 31)), live(rec("c", 3, 30))],
            false,
            Some((3, 31)),
            3,
        );
        // A tombstone above a copy: the session ended after that copy; not resurrected.
        check(vec![live(rec("c", 2, 20)), gone(3)], false, None, 3);
        // A clean start takes no session but learns the generation.
        check(vec![live(rec("c", 4, 40))], true, None, 4);
        // An expired copy is not resumed (disconnected 10 s ago, expiry 5 s)...
        let mut short = rec("c", 6, 60);
        short.expiry_secs = 5;
        check(
            vec![live(short.clone()), live(rec("c", 2, 20))],
            false,
            None,
            6,
        );
        // ... one that never expires is.
        short.expiry_secs = EXPIRY_NEVER;
        check(vec![live(short)], false, Some((6, 60)), 6);
    }

    #[test]
    fn snapshot_round_trips_and_counts_connected_sessions_as_left_at_write() {
        let mut connected = rec("b", 7, 70);
        connected.disconnected_ms = None;
        let s = Snapshot {
            node_id: 3,
            written_ms: 123_456,
            sessions: vec![rec("a", 2, 10), connected],
            tombstones: vec![("z".into(), 9, 100)],
        };
        let bytes = encode_snapshot(&s).unwrap();
        assert_eq!(decode_snapshot(&bytes).unwrap(), s);
        let c = s.candidates();
        assert_eq!(c["a"], live(rec("a", 2, 10)));
        assert_eq!(
            c["b"].state.as_ref().unwrap().disconnected_ms,
            Some(123_456)
        );
        assert_eq!(c["z"], gone(9));
        let state = encode_state(&rec("a", 2, 10)).unwrap();
        assert_eq!(decode_state(&state).unwrap(), rec("a", 2, 10));
    }

    #[test]
    fn corrupt_snapshots_and_states_are_refused_with_a_reason() {
        let good = encode_snapshot(&Snapshot {
            node_id: 1,
            written_ms: 1,
            sessions: vec![rec("a", 1, 1)],
            tombstones: vec![],
        })
        .unwrap()
        .to_vec();
        let flip = |i: usize| {
            let mut b = good.clone();
            b[i] ^= 0x40;
            b
        };
        let last = good.len() - 1;
        let cases: Vec<(Vec<u8>, CodecError)> = vec![
            (vec![], CodecError::Truncated(0)),
            (good[..7].to_vec(), CodecError::Truncated(7)),
            (flip(0), CodecError::BadMagic),
            (
                {
                    let mut b = good.clone();
                    b[4] = 9;
                    b
                },
                CodecError::Version(9),
            ),
            (
                good[..last].to_vec(),
                CodecError::Length {
                    declared: last + 1 - HEADER_BYTES,
                    actual: last - HEADER_BYTES,
                },
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode_snapshot(&bytes).unwrap_err(), want);
        }
        assert!(matches!(
            decode_snapshot(&flip(last)).unwrap_err(),
            CodecError::Checksum { .. }
        ));
        // A body with a valid checksum that is not a snapshot.
        let body = b"{\"nope\": 1}";
        let mut b = MAGIC.to_vec();
        b.push(FORMAT_VERSION);
        b.extend_from_slice(&(body.len() as u32).to_le_bytes());
        b.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        b.extend_from_slice(body);
        let err = decode_snapshot(&b).unwrap_err();
        assert!(matches!(err, CodecError::Body(_)), "{err}");
        assert!(err.to_string().contains("does not decode"));
        // States.
        assert_eq!(decode_state(&[]).unwrap_err(), CodecError::Truncated(0));
        assert_eq!(
            decode_state(&[2, b'{']).unwrap_err(),
            CodecError::Version(2)
        );
        assert!(matches!(
            decode_state(&[FORMAT_VERSION, b'{']).unwrap_err(),
            CodecError::Body(_)
        ));
    }
}
