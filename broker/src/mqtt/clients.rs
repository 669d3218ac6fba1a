//! The MQTT clients of this node as the admin API lists them (`GET /v1/mqtt/clients`, gRPC
//! `ListMqttClients`).
//!
//! Two sources, joined by connection id:
//! - the router's sessions ([`SessionView`], asked with `RouterMsg::Sessions`): client id,
//!   the connection holding it (none for an offline persistent session), subscriptions,
//!   expiry, when it was left;
//! - the live connections' own facts ([`ConnInfo`]), which only the connection task knows:
//!   user, protocol, transport and peer (set by the listener around the connection task with
//!   [`scoped`]), connect time, keep alive and in-flight messages (updated by the task each
//!   turn of its loop). A connection lists itself once accepted ([`MqttClients::register`])
//!   and is removed when the returned guard drops.
//!
//! Nothing here is on the message path: the registry is a mutex taken once per connect and
//! disconnect, and the in-flight count is a relaxed atomic store.

use super::router::RouterMsg;
use super::wire::Proto;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long the admin API waits for the router's answer.
const ROUTER_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    Ws,
    Quic,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Quic => "quic",
        }
    }
}

tokio::task_local! {
    /// The transport and peer of the connection task running in this scope.
    static PEER: (Transport, SocketAddr);
}

/// Runs a connection task knowing its transport and peer (read by [`MqttClients::register`]).
/// Not an `async fn`: one would hold `task` twice (its argument and the future it awaits),
/// doubling every idle connection's memory.
pub fn scoped<F: Future>(
    transport: Transport,
    peer: SocketAddr,
    task: F,
) -> impl Future<Output = F::Output> {
    PEER.scope((transport, peer), task)
}

/// One session as the router holds it (answer of `RouterMsg::Sessions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub client_id: String,
    /// The connection holding it; `None` for an offline persistent session.
    pub conn_id: Option<u64>,
    pub subscriptions: usize,
    /// Session Expiry Interval (0: ephemeral; `router::EXPIRY_NEVER`: never).
    pub expiry_secs: u32,
    /// When its last connection ended (wall clock, ms).
    pub disconnected_ms: Option<i64>,
}

/// What a live connection tells about itself.
#[derive(Debug)]
pub struct ConnInfo {
    pub client_id: String,
    pub username: Option<String>,
    pub protocol: Proto,
    pub transport: Option<Transport>,
    pub peer: Option<SocketAddr>,
    pub connected_ms: i64,
    pub keep_alive_secs: u16,
    inflight: AtomicU64,
}

/// The router's queue (set when MQTT starts) and the live connections; lives in the `Node`.
#[derive(Default)]
pub struct MqttClients {
    router: OnceLock<mpsc::Sender<RouterMsg>>,
    conns: Mutex<HashMap<u64, Arc<ConnInfo>>>,
}

/// A connection's entry in [`MqttClients`]; removed on drop.
pub struct Listed<'a> {
    clients: &'a MqttClients,
    conn_id: u64,
    info: Arc<ConnInfo>,
}

impl Listed<'_> {
    /// The connection's QoS 1/2 messages in flight (both directions).
    pub fn set_inflight(&self, n: u64) {
        self.info.inflight.store(n, Ordering::Relaxed);
    }
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.clients.conns.lock().remove(&self.conn_id);
    }
}

impl MqttClients {
    /// MQTT started: the router answers queries from now on.
    pub fn set_router(&self, router: mpsc::Sender<RouterMsg>) {
        let _ = self.router.set(router);
    }

    /// Lists an accepted connection until the guard drops. Its transport and peer come from
    /// the [`scoped`] the listener ran it in.
    pub fn register(
        &self,
        conn_id: u64,
        client_id: &str,
        username: Option<String>,
        protocol: Proto,
        keep_alive_secs: u16,
    ) -> Listed<'_> {
        let peer = PEER.try_with(|p| *p).ok();
        let info = Arc::new(ConnInfo {
            client_id: client_id.to_string(),
            username,
            protocol,
            transport: peer.map(|p| p.0),
            peer: peer.map(|p| p.1),
            connected_ms: crate::log::sequencer::now_ms(),
            keep_alive_secs,
            inflight: AtomicU64::new(0),
        });
        self.conns.lock().insert(conn_id, info.clone());
        Listed {
            clients: self,
            conn_id,
            info,
        }
    }

    /// The clients document of `GET /v1/mqtt/clients`; the error says why the router did not
    /// answer. Without MQTT running: no clients.
    pub async fn list(&self, node_id: u64, now_ms: i64) -> Result<Value, String> {
        let Some(router) = self.router.get() else {
            return Ok(document(
                node_id,
                false,
                Vec::new(),
                &HashMap::new(),
                now_ms,
            ));
        };
        let (tx, rx) = oneshot::channel();
        let answer = tokio::time::timeout(ROUTER_ANSWER_TIMEOUT, async {
            router.send(RouterMsg::Sessions(tx)).await.ok()?;
            rx.await.ok()
        })
        .await;
        match answer {
            Ok(Some(sessions)) => {
                let conns = self.conns.lock().clone();
                Ok(document(node_id, true, sessions, &conns, now_ms))
            }
            Ok(None) => Ok(document(
                node_id,
                false,
                Vec::new(),
                &HashMap::new(),
                now_ms,
            )),
            Err(_) => Err(format!(
                "the MQTT router did not answer within {}s",
                ROUTER_ANSWER_TIMEOUT.as_secs()
            )),
        }
    }
}

fn protocol_name(p: Proto) -> &'static str {
    match p {
        Proto::V311 => "3.1.1",
        Proto::V5 => "5.0",
    }
}

/// The JSON answer: connected clients first, then offline persistent sessions, each by
/// client id.
fn document(
    node_id: u64,
    enabled: bool,
    mut sessions: Vec<SessionView>,
    conns: &HashMap<u64, Arc<ConnInfo>>,
    now_ms: i64,
) -> Value {
    sessions.sort_by(|a, b| {
        (a.conn_id.is_none(), &a.client_id).cmp(&(b.conn_id.is_none(), &b.client_id))
    });
    let mut inflight = 0u64;
    let mut connections = 0u64;
    let clients: Vec<Value> = sessions
        .iter()
        .map(|s| {
            let info = s.conn_id.and_then(|id| conns.get(&id));
            let n = info.map_or(0, |i| i.inflight.load(Ordering::Relaxed));
            inflight += n;
            connections += u64::from(s.conn_id.is_some());
            let never = s.expiry_secs == super::router::EXPIRY_NEVER;
            let expires_ms = match (s.conn_id, s.disconnected_ms) {
                (None, Some(gone)) if !never => Some(gone + i64::from(s.expiry_secs) * 1000),
                _ => None,
            };
            serde_json::json!({
                "client_id": s.client_id,
                "connected": s.conn_id.is_some(),
                "username": info.and_then(|i| i.username.clone()),
                "protocol": info.map(|i| protocol_name(i.protocol)),
                "transport": info.and_then(|i| i.transport).map(Transport::name),
                "peer": info.and_then(|i| i.peer).map(|p| p.to_string()),
                "connected_ms": info.map(|i| i.connected_ms),
                "keep_alive_secs": info.map(|i| i.keep_alive_secs),
                "subscriptions": s.subscriptions,
                "inflight": n,
                "persistent": s.expiry_secs > 0,
                "session_expiry_secs": (!never).then_some(s.expiry_secs),
                "disconnected_ms": s.disconnected_ms.filter(|_| s.conn_id.is_none()),
                "expires_ms": expires_ms,
                "expires_in_ms": expires_ms.map(|e| (e - now_ms).max(0)),
            })
        })
        .collect();
    serde_json::json!({
        "node_id": node_id,
        "enabled": enabled,
        "connections": connections,
        "sessions": sessions.len(),
        "offline_sessions": sessions.len() as u64 - connections,
        "inflight": inflight,
        "clients": clients,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, conn: Option<u64>, expiry: u32, gone: Option<i64>) -> SessionView {
        SessionView {
            client_id: id.into(),
            conn_id: conn,
            subscriptions: 2,
            expiry_secs: expiry,
            disconnected_ms: gone,
        }
    }

    #[tokio::test]
    async fn connected_clients_join_their_connection_and_offline_sessions_expire() {
        let clients = MqttClients::default();
        let addr: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let listed = scoped(Transport::Ws, addr, async {
            clients.register(7, "a", Some("alice".into()), Proto::V5, 30)
        })
        .await;
        listed.set_inflight(3);
        let conns = clients.conns.lock().clone();
        let sessions = vec![
            session("z-offline", None, 60, Some(1_000)),
            session("a", Some(7), 0, None),
            session("never", None, super::super::router::EXPIRY_NEVER, Some(5)),
        ];
        let doc = document(1, true, sessions, &conns, 31_000);
        assert_eq!(doc["connections"], 1);
        assert_eq!(doc["offline_sessions"], 2);
        assert_eq!(doc["inflight"], 3);
        let c = &doc["clients"];
        assert_eq!(c[0]["client_id"], "a");
        assert_eq!(c[0]["transport"], "ws");
        assert_eq!(c[0]["peer"], "127.0.0.1:5555");
        assert_eq!(c[0]["protocol"], "5.0");
        assert_eq!(c[0]["username"], "alice");
        assert_eq!(c[0]["keep_alive_secs"], 30);
        assert_eq!(c[0]["persistent"], false);
        assert_eq!(c[1]["client_id"], "never");
        assert_eq!(c[1]["expires_ms"], Value::Null);
        assert_eq!(c[1]["session_expiry_secs"], Value::Null);
        assert_eq!(c[2]["client_id"], "z-offline");
        assert_eq!(c[2]["connected"], false);
        assert_eq!(c[2]["expires_ms"], 61_000);
        assert_eq!(c[2]["expires_in_ms"], 30_000);
        drop(listed);
        assert!(clients.conns.lock().is_empty(), "the guard unlists");
    }

    #[tokio::test]
    async fn without_a_router_the_list_is_empty() {
        let clients = MqttClients::default();
        let doc = clients.list(3, 0).await.unwrap();
        assert_eq!(doc["enabled"], false);
        assert_eq!(doc["clients"], serde_json::json!([]));
        // Outside a listener's scope the transport is unknown, never guessed.
        let listed = clients.register(1, "x", None, Proto::V311, 0);
        assert_eq!(listed.info.transport, None);
    }
}
