//! Sessions, subscriptions and retained messages: a value ([`RouterCore`]) owned by one task
//! ([`run`]) that takes every input from one bounded queue.
//!
//! Inputs come from connections (connect, disconnect, subscribe, unsubscribe, retain) and from
//! the partition tailers (every MQTT message appended to a mapped Kafka topic, whoever wrote it).
//! Output is a [`Delivery`] pushed to each matching connection's bounded queue with `try_send`:
//! the router never waits on a slow client; a full queue drops the delivery and counts it.
//!
//! Sessions are keyed by client id. A second connection with the same id takes the session
//! over: the older connection is told to go (MQTT 5: DISCONNECT 0x8E). A session that is not
//! clean (3.1.1 `clean_session = 0`, 5.0 session expiry > 0) keeps its subscriptions while its
//! client is away, in memory only (not across a broker restart in this version); messages
//! published meanwhile are not queued for it.
//!
//! Matching is a scan of the connected sessions' filters per message. Shared subscriptions,
//! No Local and subscription identifiers plug in at [`RouterCore::route`].

use super::topic;
use super::{Delivery, Message};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Retained messages kept at most (a new topic beyond it is not retained; logged).
pub const RETAINED_MESSAGES_MAX: usize = 100_000;
/// Sessions kept at most, connected or not; a connect beyond it is refused (server busy).
pub const SESSIONS_MAX: usize = 100_000;

/// What a subscription asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    pub qos: u8,
    /// MQTT 5: keep the RETAIN flag on live deliveries.
    pub retain_as_published: bool,
    /// MQTT 5 Retain Handling: 0 send retained at subscribe, 1 only for a new subscription,
    /// 2 never.
    pub retain_handling: u8,
}

/// A connected client, as the router reaches it.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: u64,
    pub tx: mpsc::Sender<Delivery>,
}

#[derive(Debug)]
struct SessionEntry {
    conn: Option<ConnHandle>,
    /// Told to the connection when another one takes the session.
    kick: Option<oneshot::Sender<()>>,
    subs: BTreeMap<String, SubOptions>,
}

/// The routing state. Pure: no IO, no clock.
#[derive(Debug, Default)]
pub struct RouterCore {
    sessions: HashMap<String, SessionEntry>,
    retained: BTreeMap<String, Arc<Message>>,
    /// Deliveries dropped because a client's queue was full.
    pub dropped: u64,
}

/// The outcome of a connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOutcome {
    Accepted {
        session_present: bool,
    },
    /// [`SESSIONS_MAX`] sessions exist.
    Busy,
}

impl RouterCore {
    pub fn connect(
        &mut self,
        client_id: &str,
        clean_start: bool,
        conn: ConnHandle,
        kick: oneshot::Sender<()>,
    ) -> ConnectOutcome {
        if !self.sessions.contains_key(client_id) && self.sessions.len() >= SESSIONS_MAX {
            return ConnectOutcome::Busy;
        }
        let entry = self
            .sessions
            .entry(client_id.to_string())
            .or_insert_with(|| SessionEntry {
                conn: None,
                kick: None,
                subs: BTreeMap::new(),
            });
        if let Some(old) = entry.kick.take() {
            let _ = old.send(()); // session takeover: the old connection goes
        }
        let session_present = !clean_start && (entry.conn.is_some() || !entry.subs.is_empty());
        if clean_start {
            entry.subs.clear();
        }
        entry.conn = Some(conn);
        entry.kick = Some(kick);
        ConnectOutcome::Accepted { session_present }
    }

    /// Connection `conn_id` ended. Ignored when the session has since been taken over.
    pub fn disconnect(&mut self, client_id: &str, conn_id: u64, keep_session: bool) {
        let Some(entry) = self.sessions.get_mut(client_id) else {
            return;
        };
        if entry.conn.as_ref().map(|c| c.id) != Some(conn_id) {
            return;
        }
        if keep_session {
            entry.conn = None;
            entry.kick = None;
        } else {
            self.sessions.remove(client_id);
        }
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
        let mut out = Vec::new();
        for (filter, opts) in filters {
            debug_assert!(topic::validate_filter(filter).is_ok());
            let existed = entry.subs.insert(filter.clone(), *opts).is_some();
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
        filters
            .iter()
            .map(|f| entry.subs.remove(f).is_some())
            .collect()
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

    /// The deliveries for one message: one per connected session with a matching
    /// subscription, at the highest QoS among its matching subscriptions, capped by the
    /// message's own QoS.
    pub fn route(&self, msg: &Arc<Message>) -> Vec<(ConnHandle, Delivery)> {
        let mut out = Vec::new();
        for entry in self.sessions.values() {
            let Some(conn) = &entry.conn else { continue };
            let mut best: Option<SubOptions> = None;
            for (filter, opts) in &entry.subs {
                if topic::matches(filter, &msg.topic) && best.is_none_or(|b| opts.qos > b.qos) {
                    best = Some(*opts);
                }
            }
            if let Some(opts) = best {
                out.push((
                    conn.clone(),
                    Delivery {
                        message: msg.clone(),
                        qos: msg.qos.min(opts.qos),
                        retain: opts.retain_as_published && msg.retain,
                    },
                ));
            }
        }
        out
    }
}

/// Inputs of the router task.
#[derive(Debug)]
pub enum RouterMsg {
    Connect {
        client_id: String,
        clean_start: bool,
        conn: ConnHandle,
        kick: oneshot::Sender<()>,
        reply: oneshot::Sender<ConnectOutcome>,
    },
    Disconnect {
        client_id: String,
        conn_id: u64,
        keep_session: bool,
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
    /// A durable publish with RETAIN set.
    Retain(Arc<Message>),
    /// A message appended to a partition MQTT reads.
    Route(Arc<Message>),
}

/// The router task: owns a [`RouterCore`] until every sender is gone.
pub async fn run(mut rx: mpsc::Receiver<RouterMsg>) {
    let mut core = RouterCore::default();
    while let Some(msg) = rx.recv().await {
        match msg {
            RouterMsg::Connect {
                client_id,
                clean_start,
                conn,
                kick,
                reply,
            } => {
                let _ = reply.send(core.connect(&client_id, clean_start, conn, kick));
            }
            RouterMsg::Disconnect {
                client_id,
                conn_id,
                keep_session,
            } => core.disconnect(&client_id, conn_id, keep_session),
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
            RouterMsg::Retain(msg) => {
                let topic = msg.topic.clone();
                if !core.retain(msg) {
                    tracing::warn!(%topic, max = RETAINED_MESSAGES_MAX, "retained store full; message not retained");
                }
            }
            RouterMsg::Route(msg) => {
                for (conn, delivery) in core.route(&msg) {
                    if conn.tx.try_send(delivery).is_err() {
                        core.dropped += 1;
                        tracing::debug!(conn = conn.id, topic = %msg.topic, "client queue full; delivery dropped");
                    }
                }
            }
        }
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
        })
    }

    fn conn(id: u64) -> (ConnHandle, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(8);
        (ConnHandle { id, tx }, rx)
    }

    fn opts(qos: u8) -> SubOptions {
        SubOptions {
            qos,
            retain_as_published: false,
            retain_handling: 0,
        }
    }

    #[test]
    fn route_picks_max_qos_once_per_session() {
        let mut r = RouterCore::default();
        let (c1, _rx1) = conn(1);
        let (c2, _rx2) = conn(2);
        let (k1, _) = oneshot::channel();
        let (k2, _) = oneshot::channel();
        r.connect("a", true, c1, k1);
        r.connect("b", true, c2, k2);
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
    fn retained_store_and_clear() {
        let mut r = RouterCore::default();
        let (c, _rx) = conn(1);
        let (k, _) = oneshot::channel();
        r.connect("a", true, c, k);
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

    #[test]
    fn takeover_and_persistent_sessions() {
        let mut r = RouterCore::default();
        let (c1, _rx1) = conn(1);
        let (k1, mut kicked1) = oneshot::channel();
        assert_eq!(
            r.connect("a", false, c1, k1),
            ConnectOutcome::Accepted {
                session_present: false
            }
        );
        r.subscribe("a", 1, &[("t".into(), opts(1))]);
        let (c2, _rx2) = conn(2);
        let (k2, _kicked2) = oneshot::channel();
        assert_eq!(
            r.connect("a", false, c2, k2),
            ConnectOutcome::Accepted {
                session_present: true
            }
        );
        assert!(
            kicked1.try_recv().is_ok(),
            "the first connection is told to go"
        );
        // The old connection's late disconnect does not end the new one's session.
        r.disconnect("a", 1, false);
        assert_eq!(r.route(&msg("t", "p", 1, false)).len(), 1);
        // Kept while away, but nothing is delivered to it.
        r.disconnect("a", 2, true);
        assert!(r.route(&msg("t", "p", 1, false)).is_empty());
        let (c3, _rx3) = conn(3);
        let (k3, _) = oneshot::channel();
        assert_eq!(
            r.connect("a", true, c3, k3),
            ConnectOutcome::Accepted {
                session_present: false
            }
        );
        assert!(
            r.route(&msg("t", "p", 1, false)).is_empty(),
            "clean start drops the old subscriptions"
        );
    }
}
