//! The MQTT listener and one task per connection.
//!
//! A connection task is a closed event loop over: bytes from the socket (decoded one packet at
//! a time), deliveries from the router, durable-append completions (in publish order), the
//! keep-alive deadline, a takeover notice and shutdown. It owns the connection's
//! [`Session`] and writes every packet itself, so packet order on the wire is the order of
//! events here.
//!
//! Flow control: while [`INBOUND_INFLIGHT_MAX`] inbound QoS 1/2 publishes are unanswered, the
//! task stops reading the socket (TCP back-pressure on the publisher).
//!
//! A connection that ends without DISCONNECT (socket closed, keep alive expired, malformed
//! packet, takeover) or with MQTT 5 reason 0x04 publishes its will, through the same durable
//! path as any publish.

use super::ingest::{Ingest, IngestError};
use super::router::{ConnHandle, ConnectOutcome, RouterMsg};
use super::session::{AckOutcome, OutPublish, Session};
use super::wire::{self, CloseCode, Codec, ConnCode, Inbound, Outbound, Proto, SubResult};
use super::{topic, Delivery, Message};
use super::{CONNECT_TIMEOUT_SECS, CONN_QUEUE_MAX, INBOUND_INFLIGHT_MAX, OUTBOUND_INFLIGHT_MAX};
use crate::node::Node;
use bytes::BytesMut;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// A write (and flush) to a client must finish within this time, else the connection closes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What every connection shares.
pub struct Shared {
    pub node: Arc<Node>,
    pub ingest: Ingest,
    pub router: mpsc::Sender<RouterMsg>,
    pub next_conn_id: AtomicU64,
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
                if let Err(reason) = connection(shared, stream, shutdown).await {
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
    #[error("session taken over by a new connection")]
    TakenOver,
    #[error("publish not stored: {0}")]
    Publish(IngestError),
    #[error("client id rejected")]
    ClientId,
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
            CloseReason::TakenOver => Some(CloseCode::SessionTakenOver),
            CloseReason::Publish(_) => Some(CloseCode::ImplementationSpecific),
            _ => None,
        }
    }
}

/// The socket halves and buffers.
struct Io {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    rbuf: BytesMut,
    wbuf: BytesMut,
    codec: Codec,
}

impl Io {
    /// Reads more bytes; `Ok(false)` on EOF.
    async fn fill(&mut self) -> Result<bool, std::io::Error> {
        Ok(self.rd.read_buf(&mut self.rbuf).await? > 0)
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
        let buf = self.wbuf.split();
        match tokio::time::timeout(WRITE_TIMEOUT, self.wr.write_all(&buf)).await {
            Ok(r) => r.map_err(CloseReason::from),
            Err(_) => Err(CloseReason::WriteTimeout),
        }
    }
}

/// A publish waiting for its durable append.
type PendingAppend =
    Pin<Box<dyn Future<Output = (Message, Option<u16>, Result<i64, IngestError>)> + Send>>;

async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), CloseReason> {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let max_in = shared.node.config.file.mqtt.packet_bytes_max;
    let mut io = Io {
        rd,
        wr,
        rbuf: BytesMut::with_capacity(8 * 1024),
        wbuf: BytesMut::with_capacity(8 * 1024),
        codec: Codec::new(max_in),
    };

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
            io.push(connack(ConnCode::ClientIdRejected, false, None, max_in))?;
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

    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let (dtx, mut drx) = mpsc::channel::<Delivery>(CONN_QUEUE_MAX);
    let (kick_tx, mut kick_rx) = oneshot::channel();
    let (reply_tx, reply_rx) = oneshot::channel();
    let sent = shared
        .router
        .send(RouterMsg::Connect {
            client_id: client_id.clone(),
            clean_start: connect.clean_start,
            conn: ConnHandle {
                id: conn_id,
                tx: dtx,
            },
            kick: kick_tx,
            reply: reply_tx,
        })
        .await;
    let outcome = match (sent, reply_rx.await) {
        (Ok(()), Ok(o)) => o,
        _ => ConnectOutcome::Busy,
    };
    let session_present = match outcome {
        ConnectOutcome::Accepted { session_present } => session_present,
        ConnectOutcome::Busy => {
            io.push(connack(ConnCode::ServerBusy, false, None, max_in))?;
            io.flush().await?;
            return Err(CloseReason::Busy);
        }
    };
    io.push(connack(
        ConnCode::Accepted,
        session_present,
        assigned,
        max_in,
    ))?;
    io.flush().await?;
    if let Some(m) = connect.max_packet_size {
        io.codec.set_max_outbound(m);
    }
    tracing::debug!(client_id, ?proto, conn_id, "mqtt client connected");

    let mut conn = Conn {
        shared: &shared,
        client_id: &client_id,
        conn_id,
        proto,
        session: Session::new(
            usize::from(connect.receive_max.clamp(1, OUTBOUND_INFLIGHT_MAX)),
            CONN_QUEUE_MAX,
        ),
        pending: FuturesOrdered::new(),
        pending_qos2: HashSet::new(),
        unanswered_qos1: 0,
        clean_disconnect: false,
    };
    let keep_alive = (connect.keep_alive_secs > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive_secs) * 1500));
    let mut last_packet = Instant::now();
    let far = Duration::from_secs(365 * 24 * 3600);

    let result: Result<(), CloseReason> = 'conn: loop {
        // Handle every complete packet already buffered, unless at the inbound window.
        while conn.inbound_open() < usize::from(INBOUND_INFLIGHT_MAX) {
            match io.codec.decode(&mut io.rbuf) {
                Ok(Some(packet)) => {
                    last_packet = Instant::now();
                    match conn.on_packet(packet, &mut io).await {
                        Ok(true) => {}
                        Ok(false) => break 'conn Ok(()),
                        Err(e) => break 'conn Err(e),
                    }
                }
                Ok(None) => break,
                Err(e) => break 'conn Err(e.into()),
            }
        }
        if let Err(e) = io.flush().await {
            break Err(e);
        }
        let can_read = conn.inbound_open() < usize::from(INBOUND_INFLIGHT_MAX);
        let ka_deadline = last_packet + keep_alive.unwrap_or(far);
        tokio::select! {
            read = io.fill(), if can_read => match read {
                Ok(true) => {}
                Ok(false) => break Ok(()), // EOF without DISCONNECT: the will goes out
                Err(e) => break Err(e.into()),
            },
            Some(done) = conn.pending.next(), if !conn.pending.is_empty() => {
                if let Err(e) = conn.on_appended(done, &mut io).await {
                    break Err(e);
                }
            }
            Some(d) = drx.recv() => {
                if let Err(e) = conn.deliver(d, &mut io) {
                    break Err(e);
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

    let keep_session = connect.session_expiry_secs > 0;
    let _ = shared
        .router
        .send(RouterMsg::Disconnect {
            client_id: client_id.clone(),
            conn_id,
            keep_session,
        })
        .await;
    if !conn.clean_disconnect {
        if let Some(will) = connect.will {
            publish_will(&shared, will).await;
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
) -> Outbound {
    Outbound::ConnAck {
        session_present,
        code,
        assigned_client_id: assigned,
        receive_max: INBOUND_INFLIGHT_MAX,
        max_packet_size: max_in,
    }
}

async fn publish_will(shared: &Shared, will: Message) {
    let topic = will.topic.clone();
    match shared.ingest.append(&will).await {
        Ok(done) => match done.await {
            Ok(_) => {
                if will.retain {
                    let _ = shared.router.send(RouterMsg::Retain(Arc::new(will))).await;
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
    pending: FuturesOrdered<PendingAppend>,
    /// Inbound QoS 2 ids whose append is not durable yet (a re-sent PUBLISH waits for it).
    pending_qos2: HashSet<u16>,
    /// Inbound QoS 1 publishes not yet answered.
    unanswered_qos1: usize,
    clean_disconnect: bool,
}

impl Conn<'_> {
    fn inbound_open(&self) -> usize {
        self.unanswered_qos1 + self.session.inbound_qos2_open()
    }

    /// One packet from the client. `Ok(false)`: the client disconnected cleanly.
    async fn on_packet(&mut self, packet: Inbound, io: &mut Io) -> Result<bool, CloseReason> {
        match packet {
            Inbound::Publish { message, packet_id } => {
                self.on_publish(message, packet_id, io).await?
            }
            Inbound::PubAck(id) => {
                if let AckOutcome::Done(next) = self.session.on_puback(id) {
                    self.send_all(next, io)?;
                }
            }
            Inbound::PubRec(id) => {
                self.session.on_pubrec(id);
                io.push(Outbound::PubRel(id))?;
            }
            Inbound::PubRel(id) => {
                let found = self.session.on_pubrel(id);
                io.push(Outbound::PubComp {
                    packet_id: id,
                    found,
                })?;
            }
            Inbound::PubComp(id) => {
                if let AckOutcome::Done(next) = self.session.on_pubcomp(id) {
                    self.send_all(next, io)?;
                }
            }
            Inbound::Subscribe { packet_id, filters } => {
                self.on_subscribe(packet_id, filters, io).await?
            }
            Inbound::Unsubscribe { packet_id, filters } => {
                let (tx, rx) = oneshot::channel();
                let sent = self
                    .shared
                    .router
                    .send(RouterMsg::Unsubscribe {
                        client_id: self.client_id.to_string(),
                        conn_id: self.conn_id,
                        filters: filters.clone(),
                        reply: tx,
                    })
                    .await;
                let found = match (sent, rx.await) {
                    (Ok(()), Ok(found)) => found,
                    _ => vec![false; filters.len()],
                };
                io.push(Outbound::UnsubAck { packet_id, found })?;
            }
            Inbound::PingReq => {
                io.push(Outbound::PingResp)?;
            }
            Inbound::Disconnect { publish_will } => {
                self.clean_disconnect = !publish_will;
                return Ok(false);
            }
            Inbound::Connect(_) => return Err(CloseReason::Protocol("a second CONNECT".into())),
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
                    let _ = self
                        .shared
                        .router
                        .send(RouterMsg::Retain(Arc::new(message)))
                        .await;
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
                tracing::warn!(client_id = self.client_id, topic = %message.topic, %err, "mqtt publish not stored");
                if let (2, Some(id)) = (qos, id) {
                    self.session.forget_inbound_qos2(id);
                }
                match (self.proto, qos, id) {
                    (_, 0, _) => Ok(()),
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
        for (filter, mut opts) in filters {
            if filter.starts_with("$share/") {
                results.push(SubResult::SharedNotSupported);
            } else if topic::validate_filter(&filter).is_err() {
                results.push(SubResult::FilterInvalid);
            } else {
                opts.qos = opts.qos.min(2);
                results.push(SubResult::Granted(opts.qos));
                accepted.push((filter, opts));
            }
        }
        let mut retained = Vec::new();
        if !accepted.is_empty() {
            let (tx, rx) = oneshot::channel();
            let sent = self
                .shared
                .router
                .send(RouterMsg::Subscribe {
                    client_id: self.client_id.to_string(),
                    conn_id: self.conn_id,
                    filters: accepted,
                    reply: tx,
                })
                .await;
            if let (Ok(()), Ok(r)) = (sent, rx.await) {
                retained = r;
            }
        }
        io.push(Outbound::SubAck { packet_id, results })?;
        for d in retained {
            self.deliver(d, io)?;
        }
        Ok(())
    }

    fn deliver(&mut self, d: Delivery, io: &mut Io) -> Result<(), CloseReason> {
        match self.session.deliver(d) {
            Ok(Some(p)) => self.send_all(vec![p], io),
            Ok(None) => Ok(()),
            Err(()) => {
                tracing::debug!(
                    client_id = self.client_id,
                    "mqtt delivery queue full; dropped"
                );
                Ok(())
            }
        }
    }

    fn send_all(&mut self, batch: Vec<OutPublish>, io: &mut Io) -> Result<(), CloseReason> {
        let mut batch: std::collections::VecDeque<OutPublish> = batch.into();
        while let Some(p) = batch.pop_front() {
            let id = p.packet_id;
            if !io.push(Outbound::Publish(p))? {
                // Larger than the client's Maximum Packet Size: dropped (MQTT 5 §3.1.2.11.4).
                if let Some(id) = id {
                    batch.extend(self.session.abandon(id));
                }
            }
        }
        Ok(())
    }
}
