//! The MQTT listener and one task per connection.
//!
//! A connection task is a closed event loop over: bytes from the socket (decoded one packet at
//! a time), deliveries from the router, durable-append completions (in publish order), the
//! keep-alive deadline, a takeover notice and shutdown. It owns the connection's
//! [`Session`] and writes every packet itself, so packet order on the wire is the order of
//! events here.
//!
//! Flow control: while [`INBOUND_INFLIGHT_MAX`] inbound QoS 1/2 publishes are unanswered, the
//! task stops reading the socket of an MQTT 3.1.1 client (TCP back-pressure on the
//! publisher); an MQTT 5 client, told it as our Receive Maximum, is disconnected with 0x93
//! when it sends more.
//!
//! A connection that ends without DISCONNECT (socket closed, keep alive expired, malformed
//! packet, takeover) or with MQTT 5 reason 0x04 publishes its will, through the same durable
//! path as any publish.

use super::auth::{Auth, Proof};
use super::clients::Transport;
use super::ingest::{Ingest, IngestError};
use super::replay::{self, Cursors};
use super::router::{ConnHandle, ConnectOutcome, ConnectRequest, Routed, RouterMsg, SubOptions};
use super::session::{AckOutcome, OutPublish, PubRec, Session};
use super::store::{Marks, Qos2Ids};
use super::wire::{self, CloseCode, Codec, ConnCode, Inbound, Outbound, Proto, SubResult};
use super::{topic, Delivery, Message};
use super::{
    CONNECT_TIMEOUT_SECS, CONN_QUEUE_BATCHES_MAX, CONN_QUEUE_MAX, INBOUND_INFLIGHT_MAX,
    OUTBOUND_INFLIGHT_MAX,
};
use crate::node::Node;
use bytes::BytesMut;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// A write (and flush) to a client must finish within this time, else the connection closes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A persistent session reads more from its cursors while fewer deliveries than this wait
/// behind its send window...
const PUMP_LOW: usize = 128;
/// ... and reads up to this many waiting.
const PUMP_QUEUE_MAX: usize = 512;
/// A persistent session reports its committed cursors to the router at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// A failed read from the cursors is tried again after this.
const PUMP_RETRY: Duration = Duration::from_secs(1);

/// What every connection shares.
pub struct Shared {
    pub node: Arc<Node>,
    /// Credentials, ACLs and publish rate limits (`mqtt::auth`), replaced when the
    /// configuration is reloaded ([`Shared::replace_auth`]); connections watch it.
    pub auth: watch::Sender<Arc<super::auth::Auth>>,
    pub ingest: Ingest,
    pub router: mpsc::Sender<RouterMsg>,
    pub next_conn_id: AtomicU64,
    /// Delayed wills and the connection owning each client id ([`Wills`]).
    pub wills: parking_lot::Mutex<Wills>,
    /// PUBLISH packets received from clients (for `$SYS`).
    pub received: AtomicU64,
    /// PUBLISH packets sent to clients (for `$SYS`).
    pub sent: AtomicU64,
}

impl Shared {
    /// The credentials, ACLs and rate limits in force.
    pub fn auth(&self) -> Arc<super::auth::Auth> {
        self.auth.borrow().clone()
    }

    /// Puts reloaded settings in force: later CONNECTs, PUBLISHes and SUBSCRIBEs obey them, and
    /// every connection drops the subscriptions the new ACL denies.
    pub fn replace_auth(&self, auth: super::auth::Auth) {
        self.auth.send_replace(Arc::new(auth));
    }

    /// Counts a refused authentication (`strata_mqtt_auth_failures_total`).
    pub fn auth_failed(&self) {
        self.node
            .metrics
            .mqtt
            .auth_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Sends the router a request carrying a reply channel and waits for the answer; `None`
    /// when the router is gone.
    pub async fn ask<T>(&self, request: impl FnOnce(oneshot::Sender<T>) -> RouterMsg) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.router.send(request(tx)).await.ok()?;
        rx.await.ok()
    }
}

/// Delayed wills (MQTT 5 Will Delay Interval) and the newest connection of each client id,
/// under one lock: a reconnect and the previous connection's close may run in either order
/// (the old connection can notice its dead socket after the new one connected), and whichever
/// comes second sees the other — so a reconnect always cancels the delayed will.
#[derive(Default)]
pub struct Wills {
    /// Delayed wills by client id: aborted by a reconnect.
    pending: HashMap<String, tokio::task::AbortHandle>,
    /// The newest accepted connection of each connected client id.
    owner: HashMap<String, u64>,
}

impl Wills {
    /// Connection `conn_id` of `client_id` was accepted: it owns the id, and a delayed will of
    /// an earlier connection is cancelled.
    fn connected(&mut self, client_id: &str, conn_id: u64) {
        self.owner.insert(client_id.to_string(), conn_id);
        if let Some(pending) = self.pending.remove(client_id) {
            pending.abort();
        }
    }

    /// Connection `conn_id` of `client_id` closed. True when no newer connection took the id
    /// meanwhile (the id is given up); false when one did (no delayed will then).
    fn closed(&mut self, client_id: &str, conn_id: u64) -> bool {
        if self.owner.get(client_id) == Some(&conn_id) {
            self.owner.remove(client_id);
            true
        } else {
            false
        }
    }

    /// Schedules `task` as `client_id`'s delayed will, replacing (aborting) an older one.
    fn delay(&mut self, client_id: &str, task: tokio::task::AbortHandle) {
        if let Some(old) = self.pending.insert(client_id.to_string(), task) {
            old.abort();
        }
    }

    /// Takes `client_id`'s delayed will when it is still pending (its delay ran out).
    fn take(&mut self, client_id: &str) -> bool {
        self.pending.remove(client_id).is_some()
    }

    /// The client connected at another broker: its delayed will here is not sent.
    pub fn cancel(&mut self, client_id: &str) {
        if let Some(pending) = self.pending.remove(client_id) {
            pending.abort();
        }
    }
}

pub async fn serve(shared: Arc<Shared>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let max = shared.node.config.file.mqtt.connections_max as usize;
    let stop = shutdown.clone();
    crate::listener::accept_bounded(
        listener,
        max,
        "mqtt.connections_max",
        shutdown,
        |stream, peer| {
            let (shared, shutdown) = (shared.clone(), stop.clone());
            async move {
                let _ = stream.set_nodelay(true);
                let (rd, wr) = stream.into_split();
                let task = connection(shared, Box::new(rd), Box::new(wr), None, shutdown);
                if let Err(reason) = super::clients::scoped(Transport::Tcp, peer, task).await {
                    tracing::info!(%peer, %reason, "mqtt connection closed");
                }
            }
        },
    )
    .await
}

/// Why we closed a connection.
#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    #[error("no CONNECT within {CONNECT_TIMEOUT_SECS} s")]
    ConnectTimeout,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("keep alive expired")]
    KeepAlive,
    #[error("topic alias {0} is above our Topic Alias Maximum")]
    TopicAlias(u16),
    #[error(
        "more unacknowledged QoS 1/2 publishes than our Receive Maximum ({INBOUND_INFLIGHT_MAX})"
    )]
    ReceiveMaximum,
    #[error("session taken over by a new connection")]
    TakenOver,
    #[error("publish not stored: {0}")]
    Publish(IngestError),
    #[error("client id rejected")]
    ClientId,
    #[error("not authorized: {0}")]
    NotAuthorized(&'static str),
    #[error("the user is no longer admitted by the reloaded configuration")]
    UserRemoved,
    #[error("re-authentication: {1}")]
    Reauth(CloseCode, &'static str),
    #[error("server busy")]
    Busy,
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("write timed out")]
    WriteTimeout,
    #[error("encode: {0}")]
    Encode(String),
}

impl CloseReason {
    /// The MQTT 5 reason to tell the client, if any.
    fn code(&self) -> Option<CloseCode> {
        match self {
            CloseReason::Wire(e) => Some(e.close_code()),
            CloseReason::Protocol(_) => Some(CloseCode::ProtocolError),
            CloseReason::KeepAlive => Some(CloseCode::KeepAliveTimeout),
            CloseReason::ReceiveMaximum => Some(CloseCode::ReceiveMaximumExceeded),
            CloseReason::TopicAlias(_) => Some(CloseCode::TopicAliasInvalid),
            CloseReason::TakenOver => Some(CloseCode::SessionTakenOver),
            CloseReason::Publish(_) => Some(CloseCode::ImplementationSpecific),
            CloseReason::UserRemoved => Some(CloseCode::NotAuthorized),
            CloseReason::Reauth(code, _) => Some(*code),
            _ => None,
        }
    }
}

/// A connection's byte stream, read side: a TCP socket, a TLS session or a WebSocket bridge.
pub type ByteReader = Box<dyn AsyncRead + Send + Unpin>;
/// A connection's byte stream, write side.
pub type ByteWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// Bytes reserved for a socket read while the client sends little (a PINGREQ, an ack)...
const READ_BYTES_MIN: usize = 512;
/// ... and at most, doubled while reads fill what was reserved (a publisher streaming).
const READ_BYTES_MAX: usize = 64 * 1024;
/// An empty read or write buffer larger than this is given back once traffic is light again,
/// so an idle connection holds next to nothing (10,000 idle clients are the common case).
const BUF_KEEP_BYTES: usize = 4 * 1024;

/// The byte stream halves and buffers. Both buffers start empty and grow on demand.
struct Io {
    rd: ByteReader,
    wr: ByteWriter,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Bytes to reserve for the next read (between the two bounds above).
    read_hint: usize,
    codec: Codec,
}

impl Io {
    fn new(rd: ByteReader, wr: ByteWriter, codec: Codec) -> Io {
        Io {
            rd,
            wr,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            read_hint: READ_BYTES_MIN,
            codec,
        }
    }

    /// Reads more bytes; `Ok(false)` on EOF.
    async fn fill(&mut self) -> Result<bool, std::io::Error> {
        self.rbuf.reserve(self.read_hint);
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let n = self.rd.read_buf(&mut self.rbuf).await?;
        self.read_hint = if n == spare {
            (self.read_hint * 2).min(READ_BYTES_MAX)
        } else if n < READ_BYTES_MIN {
            READ_BYTES_MIN
        } else {
            self.read_hint
        };
        if n < READ_BYTES_MIN && self.rbuf.len() == n && self.rbuf.capacity() > BUF_KEEP_BYTES {
            // A small read into a buffer grown for a burst: move it to a small one.
            let small = BytesMut::from(&self.rbuf[..]);
            self.rbuf = small;
        }
        Ok(n > 0)
    }

    /// Queues a packet; `Ok(false)` when it was not sent (see [`Codec::encode`]).
    fn push(&mut self, out: Outbound) -> Result<bool, CloseReason> {
        self.codec
            .encode(out, &mut self.wbuf)
            .map_err(CloseReason::Encode)
    }

    async fn flush(&mut self) -> Result<(), CloseReason> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let written = self.wbuf.len();
        let result = match tokio::time::timeout(WRITE_TIMEOUT, self.wr.write_all(&self.wbuf)).await
        {
            Ok(r) => r.map_err(CloseReason::from),
            Err(_) => Err(CloseReason::WriteTimeout),
        };
        self.wbuf.clear();
        // A busy connection keeps its (reused) buffer; a small write gives a big one back.
        if written <= BUF_KEEP_BYTES && self.wbuf.capacity() > BUF_KEEP_BYTES {
            self.wbuf = BytesMut::new();
        }
        result
    }
}

/// Bytes queued for one write before the loop flushes (and looks at its socket again); a
/// delivery batch from the router is written whole.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// A publish waiting for its durable append.
type PendingAppend = Pin<Box<dyn Future<Output = AppendDone> + Send>>;
type AppendDone = (Message, Option<u16>, Result<i64, IngestError>);

/// Publishes waiting for their durable appends, answered in publish order (PUBACKs go out in
/// the order of the PUBLISHes). Only the oldest is polled, so only it holds the task's waker:
/// appends finish nearly in order, and one wake-up per group commit drains every finished one.
/// (A `FuturesOrdered` woke the task once per publish and polled each out of order: about a
/// quarter of the broker's CPU with a thousand QoS 0 publishes in flight.)
#[derive(Default)]
struct PendingAppends(std::collections::VecDeque<PendingAppend>);

impl PendingAppends {
    fn push_back(&mut self, append: PendingAppend) {
        self.0.push_back(append);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The oldest append once it is done; `Ready(None)` when none waits.
    fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<AppendDone>> {
        let Some(oldest) = self.0.front_mut() else {
            return std::task::Poll::Ready(None);
        };
        let done = std::task::ready!(oldest.as_mut().poll(cx));
        self.0.pop_front();
        std::task::Poll::Ready(Some(done))
    }

    async fn next(&mut self) -> Option<AppendDone> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

/// Serves one MQTT connection over any byte stream (TCP, TLS, WebSocket) until it ends.
/// `cert_user`: the user its verified client certificate names (`mqtt.tls_cert_as_username`):
/// authenticated, no password asked.
pub async fn connection(
    shared: Arc<Shared>,
    rd: ByteReader,
    wr: ByteWriter,
    cert_user: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), CloseReason> {
    let max_in = shared.node.config.file.mqtt.packet_bytes_max;
    let _open = shared.node.metrics.mqtt.connection(); // metrics: open until this task ends
    let mut io = Io::new(rd, wr, Codec::new(max_in));

    // CONNECT first, within a deadline.
    let deadline = Instant::now() + Duration::from_secs(CONNECT_TIMEOUT_SECS);
    let connect = loop {
        match io.codec.decode(&mut io.rbuf) {
            Ok(Some(Inbound::Connect(c))) => break c,
            Ok(Some(_)) => {
                return Err(CloseReason::Protocol(
                    "the first packet must be CONNECT".into(),
                ))
            }
            Ok(None) => {}
            Err(e) => {
                if let Some(p) = io.codec.failure_packet(e.close_code(), false) {
                    let _ = io.push(p);
                    let _ = io.flush().await;
                }
                return Err(e.into());
            }
        }
        match tokio::time::timeout_at(deadline, io.fill()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(CloseReason::ConnectTimeout),
        }
    };
    let proto = io.codec.proto().unwrap_or(Proto::V311);

    // Client id: assign one to an empty id (MQTT 5 always; 3.1.1 only with a clean session).
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if proto == Proto::V5 || connect.clean_start {
            let id = format!("strata-{}", uuid::Uuid::new_v4().simple());
            assigned = Some(id.clone());
            id
        } else {
            io.push(connack(
                ConnCode::ClientIdRejected,
                false,
                None,
                max_in,
                None,
            ))?;
            io.flush().await?;
            return Err(CloseReason::ClientId);
        }
    } else {
        connect.client_id.clone()
    };
    if let Some(will) = &connect.will {
        if topic::validate_name(&will.topic).is_err() {
            if let Some(p) = io.codec.failure_packet(CloseCode::TopicNameInvalid, false) {
                io.push(p)?;
                io.flush().await?;
            }
            return Err(CloseReason::Protocol("invalid will topic".into()));
        }
    }

    // Credentials, before the session is touched: a refused CONNECT takes nothing over.
    // Boxed (like the will below): rare, large futures stay out of the connection task.
    // MQTT 5 enhanced authentication: for the CONNACK.
    let mut auth_reply = None;
    // Blocks scope the handshake's values: a local of this function keeps its room in the
    // task for as long as it is in scope, even when moved away.
    let (user, proof) = 'admitted: {
        let verdict = match (cert_user, connect.auth_method.clone()) {
            (Some(user), _) => super::auth::Verdict::Allowed(Some(user), Proof::Certificate),
            (None, Some(method)) => {
                let first = connect.auth_data.clone().unwrap_or_default();
                match Box::pin(enhanced_auth(&shared, &mut io, &method, first, deadline)).await {
                    Ok((user, last)) => {
                        auth_reply = Some((method, last));
                        super::auth::Verdict::Allowed(Some(user), Proof::Secret)
                    }
                    Err(AuthFailure::Refused) => super::auth::Verdict::BadCredentials,
                    Err(AuthFailure::Method(why)) => {
                        shared.auth_failed();
                        tracing::info!(client_id, %method, "mqtt authentication failed: {why}");
                        if let Some(p) = io.codec.failure_packet(CloseCode::BadAuthMethod, false) {
                            io.push(p)?;
                            io.flush().await?;
                        }
                        return Err(CloseReason::NotAuthorized(why));
                    }
                    Err(AuthFailure::Closed(e)) => return Err(e),
                }
            }
            (None, None) => {
                let auth = shared.auth();
                Box::pin(auth.authenticate(
                    &shared.node,
                    connect.username.as_deref(),
                    connect.password.as_ref(),
                ))
                .await
            }
        };
        let (code, why) = match verdict {
            super::auth::Verdict::Allowed(user, proof) => break 'admitted (user, proof),
            super::auth::Verdict::BadCredentials => {
                (ConnCode::BadCredentials, "bad user name or password")
            }
            super::auth::Verdict::NoCredentials => {
                (ConnCode::NotAuthorized, "no user name or password")
            }
        };
        shared.auth_failed();
        tracing::info!(client_id, user = ?connect.username, "mqtt authentication failed: {why}");
        io.push(connack(code, false, None, max_in, None))?;
        io.flush().await?;
        return Err(CloseReason::NotAuthorized(why));
    };
    // A will obeys the publish ACL: refused at CONNECT, where the client can be told.
    if let Some(will) = &connect.will {
        if !shared
            .auth()
            .acl
            .may_publish(user.as_deref(), &client_id, &will.topic)
        {
            shared
                .node
                .metrics
                .mqtt
                .acl_denied_publish
                .fetch_add(1, Ordering::Relaxed);
            io.push(connack(ConnCode::NotAuthorized, false, None, max_in, None))?;
            io.flush().await?;
            return Err(CloseReason::NotAuthorized("will topic denied by the ACL"));
        }
    }

    // The Session Expiry Interval we use: the client's, capped by the configuration.
    let expiry_cap = shared.node.config.file.mqtt.session_expiry_max_secs;
    let expiry_secs = expiry_cap.map_or(connect.session_expiry_secs, |cap| {
        connect.session_expiry_secs.min(cap)
    });
    let expiry_told =
        (proto == Proto::V5 && expiry_secs != connect.session_expiry_secs).then_some(expiry_secs);

    // The client id is connected once cluster-wide: other brokers hand over (and close) what
    // they hold of it, dead brokers' snapshots are read (`cluster_sessions`). An id we just
    // assigned is new everywhere.
    let remote = if assigned.is_none() {
        Box::pin(super::cluster_sessions::gather(
            &shared.node,
            &shared.node.mqtt_sessions.snapshots,
            &client_id,
            connect.clean_start,
        ))
        .await
    } else {
        Default::default()
    };

    // Known before the router hands over deliveries: whether they may carry shared frames.
    io.codec.set_topic_alias_max(connect.topic_alias_max);
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let (dtx, mut drx) = super::router::delivery_queue(CONN_QUEUE_BATCHES_MAX, CONN_QUEUE_MAX);
    let (kick_tx, mut kick_rx) = oneshot::channel();
    let (reply_tx, reply_rx) = oneshot::channel();
    let (session_present, qos2, persistent) = {
        let sent = shared
            .router
            .send(RouterMsg::Connect(Box::new(ConnectRequest {
                client_id: client_id.clone(),
                clean_start: connect.clean_start,
                expiry_secs,
                conn: ConnHandle {
                    id: conn_id,
                    tx: dtx,
                    frames: io.codec.shares_frames(),
                },
                kick: kick_tx,
                reply: reply_tx,
                remote,
            })))
            .await;
        let outcome = match (sent, reply_rx.await) {
            (Ok(()), Ok(o)) => o,
            _ => ConnectOutcome::Busy,
        };
        let (session_present, resume) = match outcome {
            ConnectOutcome::Accepted {
                session_present,
                resume,
            } => (session_present, resume),
            ConnectOutcome::Busy => {
                io.push(connack(ConnCode::ServerBusy, false, None, max_in, None))?;
                io.flush().await?;
                return Err(CloseReason::Busy);
            }
        };
        // A persistent session reads the log from its cursors; a new one from the end of every
        // partition that exists now (set before CONNACK, so nothing published after it is missed).
        let qos2 = resume.as_ref().map(|r| r.qos2.clone()).unwrap_or_default();
        let persistent = resume.map(|r| {
            let topics = shared.ingest.mapping.kafka_topics();
            let cursors = if r.fresh {
                let mut c = Cursors::default();
                c.start_at_end(&shared.node, &topics);
                c
            } else {
                Cursors::resume(&r.cursors)
            };
            Box::new(Persistent {
                cursors,
                subs: r.subs,
                topics,
                pump_needed: true,
                retry_at: None,
                reported_qos2: r.qos2,
            })
        });
        (session_present, qos2, persistent)
    };
    // MQTT 5 Server Keep Alive: a client asking for more than `mqtt.keep_alive_max_secs` (or
    // for none) gets the maximum, and is told it.
    let mut keep_alive_secs = connect.keep_alive_secs;
    let mut keep_alive_told = None;
    if let (Proto::V5, Some(max)) = (proto, shared.node.config.file.mqtt.keep_alive_max_secs) {
        if keep_alive_secs == 0 || keep_alive_secs > max {
            keep_alive_secs = max;
            keep_alive_told = Some(max);
        }
    }
    {
        let mut ack = connack(
            ConnCode::Accepted,
            session_present,
            assigned,
            max_in,
            expiry_told,
        );
        if let Outbound::ConnAck {
            server_keep_alive,
            auth,
            ..
        } = &mut ack
        {
            *server_keep_alive = keep_alive_told;
            *auth = auth_reply.clone();
        }
        io.push(ack)?;
    }
    io.flush().await?;
    // A reconnect within the Will Delay Interval cancels the previous connection's will.
    shared.wills.lock().connected(&client_id, conn_id);
    let username = user.clone().or_else(|| connect.username.clone());
    let clients = &shared.node.mqtt_clients; // the admin API's list, until `listed` drops
    let listed = clients.register(conn_id, &client_id, username, proto, keep_alive_secs);
    if let Some(m) = connect.max_packet_size {
        io.codec.set_max_outbound(m);
    }
    tracing::debug!(client_id, ?proto, conn_id, "mqtt client connected");

    let _session = shared.node.metrics.mqtt.session(); // metrics: an accepted session

    // Settings reloaded from here on are noticed (and SCRAM users deleted from metadata).
    let mut auth_rx = shared.auth.subscribe();
    let auth_seen = auth_rx.borrow_and_update().clone();
    let mut conn = Conn {
        shared: &shared,
        client_id: &client_id,
        conn_id,
        proto,
        session: Session::resume(
            usize::from(connect.receive_max.clamp(1, OUTBOUND_INFLIGHT_MAX)),
            // Room for what the cursors read on top of retained messages: never dropped.
            CONN_QUEUE_MAX + PUMP_QUEUE_MAX,
            &qos2,
        ),
        pending: PendingAppends::default(),
        pending_qos2: HashSet::new(),
        unanswered_qos1: 0,
        clean_disconnect: false,
        disconnect_expiry: None,
        in_aliases: HashMap::new(),
        persistent,
        user: user.clone(),
        proof,
        auth_seen: auth_seen.clone(),
        auth_method: auth_reply.map(|(method, _)| method),
        reauth: None,
        throttle: super::auth::Throttle::new(
            auth_seen.publish_rate_max,
            auth_seen.publish_bytes_rate_max,
            Instant::now(),
        ),
        paused_until: None,
    };
    // A resumed session finishes the QoS 2 deliveries the client already has: PUBREL again,
    // before anything else is sent (MQTT 5 §4.4).
    for id in conn.session.released_ids() {
        io.push(Outbound::PubRel(id))?;
    }
    // A resumed session's subscriptions were granted under the settings of their time, so
    // they are checked against today's.
    if session_present {
        Box::pin(conn.revoke_denied()).await;
    }
    let mut data_signal = shared.ingest.tailers.data_signal();
    let mut signal_open = true;
    // Only persistent sessions report progress: no timer for the others.
    let mut progress_tick = conn.persistent.is_some().then(|| {
        let mut t = tokio::time::interval(PROGRESS_INTERVAL);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let keep_alive =
        (keep_alive_secs > 0).then(|| Duration::from_millis(u64::from(keep_alive_secs) * 1500));
    let mut last_packet = Instant::now();
    let far = Duration::from_secs(365 * 24 * 3600);

    let mut inflight = shared.node.metrics.mqtt.inflight(); // metrics: this connection's share
    let result: Result<(), CloseReason> = 'conn: loop {
        inflight.set((conn.session.inflight_out() + conn.inbound_open()) as u64);
        listed.set_inflight((conn.session.inflight_out() + conn.inbound_open()) as u64);
        // Handle every complete packet already buffered, unless at the inbound window.
        while conn.may_read() {
            match io.codec.decode(&mut io.rbuf) {
                Ok(Some(packet)) => {
                    last_packet = Instant::now();
                    // Boxed: the largest future of the task (a publish's append), which
                    // every idle connection would otherwise carry.
                    match Box::pin(conn.on_packet(packet, &mut io)).await {
                        Ok(true) => {}
                        Ok(false) => break 'conn Ok(()),
                        Err(e) => break 'conn Err(e),
                    }
                }
                Ok(None) => break,
                Err(e) => break 'conn Err(e.into()),
            }
        }
        if let Err(e) = conn.pump(&mut io).await {
            break Err(e);
        }
        if let Err(e) = io.flush().await {
            break Err(e);
        }
        let can_read = conn.may_read();
        let ka_deadline = last_packet + keep_alive.unwrap_or(far);
        let is_persistent = conn.persistent.is_some();
        let retry_at = conn.persistent.as_ref().and_then(|p| p.retry_at);
        let paused_until = conn.paused_until;
        tokio::select! {
            _ = tokio::time::sleep_until(paused_until.unwrap_or(ka_deadline)), if paused_until.is_some() => {
                // The rate budget refilled. The client was not read meanwhile: its keep
                // alive counts from now.
                conn.paused_until = None;
                last_packet = Instant::now();
            }
            changed = data_signal.changed(), if is_persistent && signal_open => {
                // The tailers live as long as the listener; if they are gone, stop waiting.
                signal_open = changed.is_ok();
                if let Some(p) = conn.persistent.as_mut() {
                    p.pump_needed = true;
                }
            }
            _ = async { progress_tick.as_mut()?.tick().await; Some(()) }, if progress_tick.is_some() => {
                conn.report_progress().await
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or(ka_deadline)), if retry_at.is_some() => {
                if let Some(p) = conn.persistent.as_mut() {
                    p.retry_at = None;
                    p.pump_needed = true;
                }
            }
            read = io.fill(), if can_read => match read {
                Ok(true) => {}
                Ok(false) => break Ok(()), // EOF without DISCONNECT: the will goes out
                Err(e) => break Err(e.into()),
            },
            Some(done) = conn.pending.next(), if !conn.pending.is_empty() => {
                if let Err(e) = conn.on_appended(done, &mut io).await {
                    break Err(e);
                }
                // Every other append already done is acknowledged in the same write (one
                // syscall for a group commit's PUBACKs, not one each).
                while io.wbuf.len() < WRITE_BATCH_BYTES {
                    // Polled with this task's own waker, never a no-op one: a pending append
                    // keeps the waker it saw, and it must reach this task or the append's
                    // completion would sit unnoticed.
                    let next = std::future::poll_fn(|cx| {
                        std::task::Poll::Ready(conn.pending.poll_next(cx))
                    })
                    .await;
                    let std::task::Poll::Ready(Some(done)) = next else { break };
                    if let Err(e) = conn.on_appended(done, &mut io).await {
                        break 'conn Err(e);
                    }
                }
            }
            Some(batch) = drx.recv(), if conn.may_take_deliveries() => {
                if let Err(e) = conn.deliver_batch(batch, &mut io) {
                    break Err(e);
                }
                // Drain what else is queued into the same write: a fan-out subscriber keeps
                // up with the router instead of paying one syscall per message.
                while io.wbuf.len() < WRITE_BATCH_BYTES && conn.may_take_deliveries() {
                    let Some(batch) = drx.try_recv() else { break };
                    if let Err(e) = conn.deliver_batch(batch, &mut io) {
                        break 'conn Err(e);
                    }
                }
            }
            changed = auth_rx.changed() => {
                // The sender lives in `shared`, as long as this connection.
                if changed.is_ok() {
                    let auth = auth_rx.borrow_and_update().clone();
                    if let Err(e) = Box::pin(conn.on_auth_changed(auth)).await {
                        break Err(e);
                    }
                }
            }
            _ = &mut kick_rx => break Err(CloseReason::TakenOver),
            _ = tokio::time::sleep_until(ka_deadline) => break Err(CloseReason::KeepAlive),
            _ = shutdown.changed() => {
                if let Some(p) = io.codec.failure_packet(CloseCode::ServerShuttingDown, true) {
                    let _ = io.push(p);
                    let _ = io.flush().await;
                }
                conn.clean_disconnect = true; // no will while the node stops
                break Ok(());
            }
        }
    };

    // Answer what was already accepted when the client is still there.
    if let Err(e) = &result {
        if let Some(code) = e.code() {
            if let Some(p) = io.codec.failure_packet(code, true) {
                let _ = io.push(p);
            }
        }
    }
    let _ = io.flush().await;
    let _ = io.wr.shutdown().await;

    // MQTT 5 DISCONNECT may set a new interval (capped like the first).
    let final_expiry = conn
        .disconnect_expiry
        .map_or(expiry_secs, |e| expiry_cap.map_or(e, |cap| e.min(cap)));
    let _ = shared
        .router
        .send(RouterMsg::Disconnect {
            client_id: client_id.clone(),
            conn_id,
            expiry_secs: final_expiry,
            marks: conn.persistent.as_ref().map(|p| Marks {
                cursors: p.cursors.marks(),
                qos2: conn.session.qos2_ids(&conn.pending_qos2),
            }),
        })
        .await;
    let will = connect.will.filter(|_| !conn.clean_disconnect);
    // MQTT 5 Will Delay Interval: published after the delay or at session end, whichever is
    // first, unless the client connects again before.
    let delay = connect.will_delay_secs.min(final_expiry);
    match will {
        Some(will) if delay == 0 => {
            shared.wills.lock().closed(&client_id, conn_id);
            Box::pin(publish_will(&shared, will)).await;
        }
        Some(will) => {
            let mut wills = shared.wills.lock();
            // Checked and scheduled under the lock a reconnect takes (see `Wills`).
            let last = wills.closed(&client_id, conn_id);
            let taken_over = matches!(result, Err(CloseReason::TakenOver));
            if last && !taken_over {
                let s = shared.clone();
                let cid = client_id.clone();
                let task = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                    let mine = s.wills.lock().take(&cid);
                    if mine {
                        publish_will(&s, will).await;
                    }
                });
                wills.delay(&client_id, task.abort_handle());
            }
        }
        None => {
            shared.wills.lock().closed(&client_id, conn_id);
        }
    }
    tracing::debug!(client_id, conn_id, "mqtt client gone");
    result
}

fn connack(
    code: ConnCode,
    session_present: bool,
    assigned: Option<String>,
    max_in: u32,
    session_expiry_secs: Option<u32>,
) -> Outbound {
    Outbound::ConnAck {
        session_present,
        code,
        assigned_client_id: assigned,
        receive_max: INBOUND_INFLIGHT_MAX,
        max_packet_size: max_in,
        session_expiry_secs,
        server_keep_alive: None,
        auth: None,
    }
}

/// Why MQTT 5 enhanced authentication did not admit a client.
enum AuthFailure {
    /// Wrong password, unknown user, a malformed or forged message: CONNACK 0x86.
    Refused,
    /// A method we do not speak, or an exchange that does not follow it: CONNACK 0x8C.
    Method(&'static str),
    /// The connection ended or failed meanwhile.
    Closed(CloseReason),
}

/// MQTT 5 enhanced authentication (§4.12) with `SCRAM-SHA-256` or `SCRAM-SHA-512` (RFC 5802,
/// as EMQX) against the SCRAM users in metadata (`strata user add`, the Kafka users): the
/// CONNECT carries the client-first message, our AUTH (0x18) the server-first, the client's
/// AUTH (0x18) the client-final, and the CONNACK the server-final, with which the client
/// checks the broker knows its credential. Returns the user and the server-final message.
/// An unknown user goes through the same exchange with a decoy credential
/// (`kafka::auth::scram_start`).
async fn enhanced_auth(
    shared: &Shared,
    io: &mut Io,
    method: &str,
    first: bytes::Bytes,
    deadline: Instant,
) -> Result<(String, bytes::Bytes), AuthFailure> {
    use crate::kafka::scram;
    use bytes::Bytes;
    let mech = strata_meta::ScramMechanism::from_name(method)
        .ok_or(AuthFailure::Method("unsupported authentication method"))?;
    let first = scram::parse_client_first(&first).map_err(|_| AuthFailure::Refused)?;
    let user = first.user.clone();
    let (exchange, server_first) = crate::kafka::auth::scram_start(&shared.node, mech, first);
    let closed = AuthFailure::Closed;
    io.push(Outbound::Auth {
        done: false,
        method: method.to_string(),
        data: Bytes::from(server_first),
    })
    .map_err(closed)?;
    io.flush().await.map_err(closed)?;
    // The client-final message, within the CONNECT deadline.
    let reply = loop {
        match io.codec.decode(&mut io.rbuf) {
            Ok(Some(packet)) => break packet,
            Ok(None) => {}
            Err(e) => return Err(closed(e.into())),
        }
        match tokio::time::timeout_at(deadline, io.fill()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                return Err(closed(CloseReason::Protocol("closed during AUTH".into())))
            }
            Ok(Err(e)) => return Err(closed(e.into())),
            Err(_) => return Err(closed(CloseReason::ConnectTimeout)),
        }
    };
    let data = match reply {
        Inbound::Auth {
            reason: 0x18,
            method: Some(m),
            data,
        } if m == method => data.unwrap_or_default(),
        _ => return Err(AuthFailure::Method("expected AUTH continuing the method")),
    };
    match exchange.finish(&data) {
        Ok(server_final) => Ok((user, Bytes::from(server_final))),
        Err(_) => Err(AuthFailure::Refused),
    }
}

async fn publish_will(shared: &Shared, will: Message) {
    let topic = will.topic.clone();
    match shared.ingest.append(&will).await {
        Ok(done) => match done.await {
            Ok(_) => {
                if will.retain {
                    let _ = shared
                        .ask(|tx| RouterMsg::Retain(Arc::new(will), Some(tx)))
                        .await;
                }
            }
            Err(err) => tracing::warn!(%topic, %err, "mqtt will not stored"),
        },
        Err(err) => tracing::warn!(%topic, %err, "mqtt will not stored"),
    }
}

/// Per-connection state after CONNACK.
struct Conn<'a> {
    shared: &'a Shared,
    client_id: &'a str,
    conn_id: u64,
    proto: Proto,
    session: Session,
    pending: PendingAppends,
    /// Inbound QoS 2 ids whose append is not durable yet (a re-sent PUBLISH waits for it).
    pending_qos2: HashSet<u16>,
    /// Inbound QoS 1 publishes not yet answered.
    unanswered_qos1: usize,
    clean_disconnect: bool,
    /// MQTT 5: the Session Expiry Interval the client's DISCONNECT set.
    disconnect_expiry: Option<u32>,
    /// MQTT 5: topic aliases the client set for its publishes.
    in_aliases: HashMap<u16, String>,
    /// Set for a persistent session: it reads the log itself.
    /// Boxed, like `reauth`: every idle connection's task carries `Conn` whole.
    persistent: Option<Box<Persistent>>,
    /// The authenticated (or, with `mqtt.auth = "none"`, claimed) user name, for ACLs.
    user: Option<String>,
    /// How `user` was shown: what a reload or a deleted SCRAM user re-checks.
    proof: Proof,
    /// The settings this connection last applied: a wake-up of the settings watch that
    /// carries the same ones is a SCRAM user leaving metadata, not a reload.
    auth_seen: Arc<Auth>,
    /// MQTT 5: the Authentication Method of the CONNECT's enhanced authentication; only then
    /// may the client re-authenticate.
    auth_method: Option<String>,
    /// A re-authentication under way: the exchange waiting for the client-final message.
    reauth: Option<Box<crate::kafka::scram::ServerExchange>>,
    /// Publish rate limits (`mqtt.client_publish_rate_max`, `..._bytes_rate_max`).
    throttle: super::auth::Throttle,
    /// Over the rate limit: the socket is not read until then.
    paused_until: Option<Instant>,
}

/// A persistent session's delivery state on its connection.
struct Persistent {
    cursors: Cursors,
    /// The session's subscriptions (the router holds the same; this copy is what the cursors
    /// match against).
    subs: BTreeMap<String, SubOptions>,
    /// The Kafka topics MQTT messages live in.
    topics: Vec<String>,
    /// The cursors may have more to read.
    pump_needed: bool,
    /// A read failed: read again at this time.
    retry_at: Option<Instant>,
    /// The open QoS 2 exchanges last reported to the router.
    reported_qos2: Qos2Ids,
}

impl Conn<'_> {
    /// MQTT 5 re-authentication (§4.12.1) after enhanced authentication at CONNECT: AUTH
    /// 0x19 with the same method and a new client-first message, our AUTH 0x18 with the
    /// server-first, the client's AUTH 0x18 with its proof, our AUTH 0x00 with the
    /// server-final. Other packets flow meanwhile. The proof must be right and name the same
    /// user, or the connection ends (DISCONNECT 0x87); AUTH from a client that did not
    /// authenticate so is a protocol error (0x82), another method 0x8C.
    fn on_auth(
        &mut self,
        reason: u8,
        method: Option<String>,
        data: bytes::Bytes,
        io: &mut Io,
    ) -> Result<(), CloseReason> {
        use crate::kafka::scram;
        let Some(ours) = self.auth_method.clone() else {
            return Err(CloseReason::Protocol(
                "AUTH from a client that did not use enhanced authentication".into(),
            ));
        };
        if method.as_deref() != Some(ours.as_str()) {
            return Err(CloseReason::Reauth(
                CloseCode::BadAuthMethod,
                "AUTH with another Authentication Method",
            ));
        }
        let shared = self.shared;
        let refused = |why| {
            shared.auth_failed();
            CloseReason::Reauth(CloseCode::NotAuthorized, why)
        };
        let (done, server_data) = match (reason, self.reauth.take()) {
            (0x19, _) => {
                // A new start (even in the middle of one: the client begins again).
                let first = scram::parse_client_first(&data)
                    .map_err(|_| refused("a malformed client-first message"))?;
                if Some(&first.user) != self.user.as_ref() {
                    return Err(refused("re-authentication as another user"));
                }
                // The method was one of these at CONNECT.
                let mech = strata_meta::ScramMechanism::from_name(&ours).ok_or(
                    CloseReason::Reauth(CloseCode::BadAuthMethod, "unknown method"),
                )?;
                let (exchange, server_first) =
                    crate::kafka::auth::scram_start(&self.shared.node, mech, first);
                self.reauth = Some(Box::new(exchange));
                (false, server_first)
            }
            (0x18, Some(exchange)) => {
                let server_final = exchange
                    .finish(&data)
                    .map_err(|_| refused("re-authentication failed"))?;
                tracing::debug!(client_id = self.client_id, user = ?self.user, "mqtt client re-authenticated");
                (true, server_final)
            }
            _ => {
                return Err(CloseReason::Protocol(format!(
                    "AUTH with reason {reason:#04x} outside a re-authentication"
                )))
            }
        };
        io.push(Outbound::Auth {
            done,
            method: ours,
            data: bytes::Bytes::from(server_data),
        })?;
        Ok(())
    }

    /// Reloaded credentials, ACLs and rate limits reach this connection, or a SCRAM user left
    /// metadata (the same settings, woken by `follow_metadata`): a user no longer admitted
    /// is disconnected (MQTT 5: DISCONNECT 0x87); on a reload the new rate limits apply from
    /// now and subscriptions the new ACL denies are dropped.
    async fn on_auth_changed(&mut self, auth: Arc<Auth>) -> Result<(), CloseReason> {
        if !auth.admits(&self.shared.node, self.user.as_deref(), self.proof) {
            tracing::info!(client_id = self.client_id, user = ?self.user, "mqtt connection closed: its user is no longer admitted");
            return Err(CloseReason::UserRemoved);
        }
        if Arc::ptr_eq(&auth, &self.auth_seen) {
            return Ok(());
        }
        self.auth_seen = auth.clone();
        self.throttle.retune(
            auth.publish_rate_max,
            auth.publish_bytes_rate_max,
            Instant::now(),
        );
        self.revoke_denied().await;
        Ok(())
    }

    /// Drops the subscriptions the ACL in force denies (it was reloaded, or the session was
    /// granted them under an older one): the router stops routing them here and a persistent
    /// session's cursors stop matching them. The client is not told (MQTT has no way to).
    async fn revoke_denied(&mut self) {
        let auth = self.shared.auth();
        if auth.acl.allows_everything() {
            return;
        }
        let (user, client_id) = (self.user.clone(), self.client_id.to_string());
        let keep = Box::new(move |filter: &str| {
            subscription_allowed(&auth.acl, user.as_deref(), &client_id, filter) == Some(true)
        });
        let revoked = self
            .shared
            .ask(|reply| RouterMsg::Revoke {
                client_id: self.client_id.to_string(),
                conn_id: self.conn_id,
                keep: super::router::Keep(keep),
                reply,
            })
            .await
            .unwrap_or_default();
        if revoked.is_empty() {
            return;
        }
        if let Some(p) = self.persistent.as_mut() {
            for f in &revoked {
                p.subs.remove(f);
            }
        }
        self.shared
            .node
            .metrics
            .mqtt
            .acl_denied_subscribe
            .fetch_add(revoked.len() as u64, Ordering::Relaxed);
        tracing::info!(client_id = self.client_id, filters = ?revoked, "mqtt subscriptions the ACL no longer allows dropped");
    }

    fn inbound_open(&self) -> usize {
        self.unanswered_qos1 + self.session.inbound_qos2_open()
    }

    /// MQTT 3.1.1 has no Receive Maximum: at the window we stop reading (TCP back-pressure).
    /// An MQTT 5 client was told ours; one that exceeds it is disconnected (0x93).
    /// Over the publish rate limit, no client is read until its budget refills.
    fn may_read(&self) -> bool {
        self.paused_until.is_none()
            && (self.proto == Proto::V5 || self.inbound_open() < usize::from(INBOUND_INFLIGHT_MAX))
    }

    /// One packet from the client. `Ok(false)`: the client disconnected cleanly.
    async fn on_packet(&mut self, packet: Inbound, io: &mut Io) -> Result<bool, CloseReason> {
        match packet {
            Inbound::Publish {
                mut message,
                packet_id,
                topic_alias,
            } => {
                if let Some(alias) = topic_alias {
                    if alias == 0 || alias > super::TOPIC_ALIASES_MAX {
                        return Err(CloseReason::TopicAlias(alias));
                    }
                    if message.topic.is_empty() {
                        match self.in_aliases.get(&alias) {
                            Some(t) => message.topic = t.clone(),
                            None => {
                                return Err(CloseReason::Protocol(format!(
                                    "topic alias {alias} used before it was set"
                                )))
                            }
                        }
                    } else {
                        self.in_aliases.insert(alias, message.topic.clone());
                    }
                }
                let bytes = (message.topic.len() + message.payload.len()) as u64;
                let now = Instant::now();
                if let Some(pause) = self.throttle.on_publish(bytes, now) {
                    // Taken anyway (never dropped); the socket waits until the debt is paid.
                    self.paused_until = Some(now + pause);
                    self.shared
                        .node
                        .metrics
                        .mqtt
                        .throttled
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.on_publish(message, packet_id, io).await?
            }
            Inbound::PubAck(id) => {
                if let AckOutcome::Done { origin, next } = self.session.on_puback(id) {
                    self.acked(origin);
                    self.send_all(next, io)?;
                }
            }
            Inbound::PubRec { id, refused } => {
                if let PubRec::Received(origin) = self.session.on_pubrec(id) {
                    // The client has it: a reconnect sends only the PUBREL again.
                    self.acked(origin);
                }
                if refused {
                    // Turned down (MQTT 5 reason >= 0x80): the exchange ends without PUBREL
                    // and frees its slot in the window, as a PUBCOMP would.
                    if let AckOutcome::Done { origin, next } = self.session.on_pubcomp(id) {
                        self.acked(origin);
                        self.send_all(next, io)?;
                    }
                    tracing::debug!(
                        client_id = self.client_id,
                        packet_id = id,
                        "mqtt delivery refused by the client (PUBREC)"
                    );
                } else {
                    io.push(Outbound::PubRel(id))?;
                }
            }
            Inbound::PubRel(id) => {
                let found = self.session.on_pubrel(id);
                io.push(Outbound::PubComp {
                    packet_id: id,
                    found,
                })?;
            }
            Inbound::PubComp(id) => {
                if let AckOutcome::Done { origin, next } = self.session.on_pubcomp(id) {
                    self.acked(origin);
                    self.send_all(next, io)?;
                }
            }
            Inbound::Subscribe { packet_id, filters } => {
                self.on_subscribe(packet_id, filters, io).await?
            }
            Inbound::Unsubscribe { packet_id, filters } => {
                let found = self
                    .shared
                    .ask(|reply| RouterMsg::Unsubscribe {
                        client_id: self.client_id.to_string(),
                        conn_id: self.conn_id,
                        filters: filters.clone(),
                        reply,
                    })
                    .await
                    .unwrap_or_else(|| vec![false; filters.len()]);
                if let Some(p) = self.persistent.as_mut() {
                    for f in &filters {
                        p.subs.remove(f);
                    }
                }
                io.push(Outbound::UnsubAck { packet_id, found })?;
            }
            Inbound::PingReq => {
                io.push(Outbound::PingResp)?;
            }
            Inbound::Disconnect {
                publish_will,
                session_expiry_secs,
            } => {
                self.clean_disconnect = !publish_will;
                self.disconnect_expiry = session_expiry_secs;
                return Ok(false);
            }
            Inbound::Connect(_) => return Err(CloseReason::Protocol("a second CONNECT".into())),
            Inbound::Auth {
                reason,
                method,
                data,
            } => self.on_auth(reason, method, data.unwrap_or_default(), io)?,
            Inbound::Unexpected(what) => {
                return Err(CloseReason::Protocol(format!(
                    "a client may not send {what}"
                )))
            }
        }
        Ok(true)
    }

    async fn on_publish(
        &mut self,
        message: Message,
        packet_id: Option<u16>,
        io: &mut Io,
    ) -> Result<(), CloseReason> {
        if topic::validate_name(&message.topic).is_err() {
            return Err(CloseReason::Wire(wire::WireError::Malformed(format!(
                "invalid topic name {:?}",
                message.topic
            ))));
        }
        let mut message = message;
        message.publisher = Some(self.client_id.to_string());
        self.shared.received.fetch_add(1, Ordering::Relaxed);
        let qos = message.qos;
        let id = match (qos, packet_id) {
            (0, _) => None,
            (_, Some(id)) => Some(id),
            (_, None) => return Err(CloseReason::Protocol("QoS > 0 without packet id".into())),
        };
        if let (2, Some(id)) = (qos, id) {
            if !self.session.on_inbound_qos2(id) {
                // A re-send of a QoS 2 publish we already have: do not store it twice.
                if !self.pending_qos2.contains(&id) {
                    io.push(Outbound::PubRec {
                        packet_id: id,
                        error: None,
                    })?;
                }
                return Ok(());
            }
            self.pending_qos2.insert(id);
        }
        if qos == 1 {
            self.unanswered_qos1 += 1;
        }
        if self.proto == Proto::V5 && self.inbound_open() > usize::from(INBOUND_INFLIGHT_MAX) {
            // More unacknowledged QoS 1/2 publishes than the Receive Maximum we announced.
            return Err(CloseReason::ReceiveMaximum);
        }
        if !self
            .shared
            .auth()
            .acl
            .may_publish(self.user.as_deref(), self.client_id, &message.topic)
        {
            // Answered in publish order like a stored one: MQTT 5 PUBACK/PUBREC 0x87; 3.1.1
            // has no negative acknowledgement, so it is dropped and acknowledged.
            self.shared
                .node
                .metrics
                .mqtt
                .acl_denied_publish
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client_id = self.client_id, topic = %message.topic, "mqtt publish denied by the ACL");
            self.pending.push_back(Box::pin(async move {
                (message, id, Err(IngestError::NotAuthorized))
            }));
            return Ok(());
        }
        match self.shared.ingest.append(&message).await {
            Ok(done) => {
                self.pending.push_back(Box::pin(async move {
                    let result = done.await;
                    (message, id, result)
                }));
                Ok(())
            }
            Err(err) => self.on_appended((message, id, Err(err)), io).await,
        }
    }

    /// A publish's append finished (in publish order): retain it, then acknowledge it.
    async fn on_appended(
        &mut self,
        (message, id, result): (Message, Option<u16>, Result<i64, IngestError>),
        io: &mut Io,
    ) -> Result<(), CloseReason> {
        let qos = message.qos;
        if qos == 1 {
            self.unanswered_qos1 = self.unanswered_qos1.saturating_sub(1);
        }
        if let (2, Some(id)) = (qos, id) {
            self.pending_qos2.remove(&id);
        }
        match result {
            Ok(_) => {
                if message.retain {
                    let mut message = message;
                    message.expires_at_ms = message.expiry_secs.map(|s| {
                        crate::log::sequencer::now_ms().saturating_add(i64::from(s) * 1000)
                    });
                    // Acknowledged once the retained log has it too.
                    let stored = self
                        .shared
                        .ask(|tx| RouterMsg::Retain(Arc::new(message), Some(tx)))
                        .await;
                    if stored != Some(true) {
                        tracing::warn!(
                            client_id = self.client_id,
                            "mqtt retained message not durable; not acknowledged"
                        );
                        return Err(CloseReason::Publish(IngestError::RetainedNotStored));
                    }
                }
                match (qos, id) {
                    (1, Some(id)) => {
                        io.push(Outbound::PubAck {
                            packet_id: id,
                            error: None,
                        })?;
                    }
                    (2, Some(id)) => {
                        io.push(Outbound::PubRec {
                            packet_id: id,
                            error: None,
                        })?;
                    }
                    _ => {}
                }
                Ok(())
            }
            Err(err) => {
                if !matches!(err, IngestError::NotAuthorized) {
                    tracing::warn!(client_id = self.client_id, topic = %message.topic, %err, "mqtt publish not stored");
                }
                if let (2, Some(id)) = (qos, id) {
                    self.session.forget_inbound_qos2(id);
                }
                let denied = matches!(err, IngestError::NotAuthorized);
                match (self.proto, qos, id) {
                    (_, 0, _) => Ok(()),
                    // MQTT 3.1.1: a publish the ACL refuses is dropped but acknowledged (as
                    // mosquitto does), so the client does not resend it forever.
                    (Proto::V311, 1, Some(id)) if denied => io
                        .push(Outbound::PubAck {
                            packet_id: id,
                            error: None,
                        })
                        .map(|_| ()),
                    (Proto::V311, _, Some(id)) if denied => io
                        .push(Outbound::PubRec {
                            packet_id: id,
                            error: None,
                        })
                        .map(|_| ()),
                    // MQTT 5 can refuse one publish and keep the connection.
                    (Proto::V5, 1, Some(id)) => io
                        .push(Outbound::PubAck {
                            packet_id: id,
                            error: Some(wire::publish_error_code(&err)),
                        })
                        .map(|_| ()),
                    (Proto::V5, _, Some(id)) => io
                        .push(Outbound::PubRec {
                            packet_id: id,
                            error: Some(wire::publish_error_code(&err)),
                        })
                        .map(|_| ()),
                    // MQTT 3.1.1 has no negative acknowledgement: close, the client retries.
                    _ => Err(CloseReason::Publish(err)),
                }
            }
        }
    }

    async fn on_subscribe(
        &mut self,
        packet_id: u16,
        filters: Vec<(String, super::router::SubOptions)>,
        io: &mut Io,
    ) -> Result<(), CloseReason> {
        let mut results = Vec::with_capacity(filters.len());
        let mut accepted = Vec::new();
        let auth = self.shared.auth();
        for (filter, mut opts) in filters {
            let allowed =
                subscription_allowed(&auth.acl, self.user.as_deref(), self.client_id, &filter);
            if allowed.is_none() {
                results.push(SubResult::FilterInvalid);
            } else if allowed == Some(false) {
                self.shared
                    .node
                    .metrics
                    .mqtt
                    .acl_denied_subscribe
                    .fetch_add(1, Ordering::Relaxed);
                results.push(SubResult::NotAuthorized);
            } else {
                opts.qos = opts.qos.min(2);
                results.push(SubResult::Granted(opts.qos));
                accepted.push((filter, opts));
            }
        }
        let mut retained = Vec::new();
        if let Some(p) = self.persistent.as_mut() {
            // Applied before SUBACK goes out: a message published after it is matched.
            for (filter, opts) in &accepted {
                p.subs.insert(filter.clone(), *opts);
            }
            p.pump_needed = true;
        }
        if !accepted.is_empty() {
            if let Some(r) = self
                .shared
                .ask(|reply| RouterMsg::Subscribe {
                    client_id: self.client_id.to_string(),
                    conn_id: self.conn_id,
                    filters: accepted,
                    reply,
                })
                .await
            {
                retained = r;
            }
        }
        io.push(Outbound::SubAck { packet_id, results })?;
        for d in retained {
            self.deliver(d, io)?;
        }
        Ok(())
    }

    /// Whether to take another batch from the router's queue: not while QoS 1/2 deliveries
    /// wait behind the client's window, so they back up in that bounded queue (where the
    /// router counts what it drops) instead of overflowing the session's.
    fn may_take_deliveries(&self) -> bool {
        self.session.waiting() + super::ROUTE_BATCH_MAX <= CONN_QUEUE_MAX
    }

    fn deliver_batch(&mut self, batch: Vec<Routed>, io: &mut Io) -> Result<(), CloseReason> {
        for r in batch {
            match r {
                Routed::One(d) => self.deliver(d, io)?,
                Routed::Frames(run) => {
                    // QoS 0 only: nothing to track but the count.
                    let sent = io
                        .codec
                        .put_frames(run.proto(), &run.bytes, run.count, &mut io.wbuf)
                        .map_err(CloseReason::Encode)?;
                    self.shared.sent.fetch_add(sent as u64, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, d: Delivery, io: &mut Io) -> Result<(), CloseReason> {
        let origin = d.origin;
        match self.session.deliver(d) {
            Ok(Some(p)) => {
                let next = self.send(p, io)?;
                if next.is_empty() {
                    Ok(())
                } else {
                    self.send_all(next, io)
                }
            }
            Ok(None) => Ok(()),
            Err(()) => {
                // A persistent session's message stays open in its cursor (read again after
                // a reconnect); the queue is sized so that this does not happen.
                self.shared
                    .node
                    .metrics
                    .mqtt
                    .dropped
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    client_id = self.client_id,
                    ?origin,
                    "mqtt delivery queue full; dropped"
                );
                Ok(())
            }
        }
    }

    /// A persistent session's delivery was acknowledged: its cursor may move.
    fn acked(&mut self, origin: Option<super::Origin>) {
        if let (Some(p), Some(o)) = (self.persistent.as_mut(), origin) {
            p.cursors.on_done(o);
        }
    }

    /// Reads from a persistent session's cursors while its queue has room.
    async fn pump(&mut self, io: &mut Io) -> Result<(), CloseReason> {
        loop {
            let Some(p) = self.persistent.as_mut() else {
                return Ok(());
            };
            let waiting = self.session.waiting();
            if !p.pump_needed || p.retry_at.is_some() || waiting >= PUMP_LOW {
                return Ok(());
            }
            // Boxed: reading from object storage is a large future, and every connection
            // task (most never read a cursor) would otherwise carry its size while idle.
            let got = Box::pin(replay::pump(
                &self.shared.node,
                &p.topics,
                &p.subs,
                self.client_id,
                &mut p.cursors,
                PUMP_QUEUE_MAX - waiting,
            ))
            .await;
            p.pump_needed = got.more;
            if got.failed {
                p.retry_at = Some(Instant::now() + PUMP_RETRY);
            }
            for d in got.deliveries {
                self.deliver(d, io)?;
            }
        }
    }

    /// Tells the router a persistent session's committed cursors and open QoS 2 exchanges,
    /// when they changed.
    async fn report_progress(&mut self) {
        let Some(p) = self.persistent.as_mut() else {
            return;
        };
        let qos2 = self.session.qos2_ids(&self.pending_qos2);
        let cursors = match p.cursors.take_dirty() {
            Some(c) => c,
            None if qos2 != p.reported_qos2 => p.cursors.marks(),
            None => return,
        };
        p.reported_qos2 = qos2.clone();
        let _ = self
            .shared
            .router
            .send(RouterMsg::Progress {
                client_id: self.client_id.to_string(),
                conn_id: self.conn_id,
                marks: Marks { cursors, qos2 },
            })
            .await;
    }

    fn send_all(&mut self, batch: Vec<OutPublish>, io: &mut Io) -> Result<(), CloseReason> {
        let mut batch: std::collections::VecDeque<OutPublish> = batch.into();
        while let Some(p) = batch.pop_front() {
            let next = self.send(p, io)?;
            batch.extend(next);
        }
        Ok(())
    }

    /// Sends one PUBLISH; returns the deliveries that may be sent after it (when it was not
    /// sent and its packet id and window slot are free again), usually none.
    fn send(&mut self, p: OutPublish, io: &mut Io) -> Result<Vec<OutPublish>, CloseReason> {
        let id = p.packet_id;
        let origin = p.delivery.origin;
        let expired = p
            .delivery
            .message
            .expires_at_ms
            .is_some_and(|at| at <= crate::log::sequencer::now_ms());
        if !expired && io.push(Outbound::Publish(p))? {
            self.shared.sent.fetch_add(1, Ordering::Relaxed);
            if let (Some(per), Some(o)) = (self.persistent.as_mut(), origin) {
                per.cursors.on_sent(o);
            }
            return Ok(Vec::new());
        }
        // Expired (MQTT 5 §3.3.2.3.3), or larger than the client's Maximum Packet Size
        // (§3.1.2.11.4): not sent, and done with.
        match id {
            Some(id) => {
                let (origin, next) = self.session.abandon(id);
                self.acked(origin);
                Ok(next)
            }
            None => {
                self.acked(origin);
                Ok(Vec::new())
            }
        }
    }
}

/// Whether `acl` lets this client hold the subscription `filter` (a shared subscription is
/// judged by the topics it reads, its inner filter); `None` for an invalid filter.
fn subscription_allowed(
    acl: &super::auth::Acl,
    user: Option<&str>,
    client_id: &str,
    filter: &str,
) -> Option<bool> {
    let topics = match topic::split_shared(filter) {
        Ok(Some((_, inner))) => inner,
        Ok(None) => {
            topic::validate_filter(filter).ok()?;
            filter
        }
        Err(_) => return None,
    };
    Some(acl.may_subscribe(user, client_id, topics))
}

#[cfg(test)]
mod tests {
    use super::Wills;

    /// The size of what an async fn returns, without calling it.
    fn future_bytes<A, B, C, D, E, F>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every open connection is one task holding this future (besides its buffers, delivery
    /// queue and router session): large or per-packet steps (a publish's append,
    /// authentication, a will, a cursor read) are boxed so that an idle connection does not
    /// carry their room, and no wrapper holds it twice. 28.5 KiB per idle connection before
    /// that (`bench/mqtt_peers.py`, idle phase), 7.9 after (3,216 bytes here in a release
    /// build).
    #[test]
    fn an_idle_connection_task_stays_small() {
        let bytes = future_bytes(super::connection);
        assert!(bytes <= 4096, "the connection task grew to {bytes} bytes");
        let tcp = future_bytes(|shared, rd, wr, shutdown, peer| {
            let task = super::connection(shared, rd, wr, None, shutdown);
            super::super::clients::scoped(super::Transport::Tcp, peer, task)
        });
        assert!(
            tcp <= bytes + 128,
            "scoping doubled the task: {tcp} bytes for {bytes}"
        );
    }

    fn pending_task() -> tokio::task::JoinHandle<()> {
        tokio::spawn(std::future::pending::<()>())
    }

    /// The old connection closes first: its delayed will is scheduled, and the reconnect
    /// cancels it.
    #[tokio::test]
    async fn a_reconnect_after_the_close_cancels_the_delayed_will() {
        let mut wills = Wills::default();
        wills.connected("c", 1);
        assert!(wills.closed("c", 1), "the only connection gives the id up");
        let will = pending_task();
        wills.delay("c", will.abort_handle());
        wills.connected("c", 2);
        assert!(will.await.unwrap_err().is_cancelled());
        assert!(!wills.take("c"), "nothing left to publish");
    }

    /// The new connection is accepted before the old one notices its dead socket: the old
    /// one's close sees it and schedules no will.
    #[tokio::test]
    async fn a_close_after_the_reconnect_schedules_no_will() {
        let mut wills = Wills::default();
        wills.connected("c", 1);
        wills.connected("c", 2);
        assert!(!wills.closed("c", 1), "a newer connection owns the id");
        assert!(wills.closed("c", 2));
        assert!(wills.owner.is_empty() && wills.pending.is_empty());
    }

    /// A newer delayed will replaces (aborts) an older one of the same id.
    #[tokio::test]
    async fn a_newer_delayed_will_replaces_the_older() {
        let mut wills = Wills::default();
        let (old, new) = (pending_task(), pending_task());
        wills.delay("c", old.abort_handle());
        wills.delay("c", new.abort_handle());
        assert!(old.await.unwrap_err().is_cancelled());
        assert!(wills.take("c"));
        new.abort();
    }
}
