//! `strata bench mqtt`: an MQTT 3.1.1 load generator for side-by-side broker benchmarks
//! (`bench/mqtt_peers.py` runs it against StrataMQ, mosquitto and rumqttd).
//!
//! A Python client spends more CPU per message than a broker does, so it measures itself. This
//! generator hand-encodes the handful of MQTT 3.1.1 packets it needs (CONNECT, SUBSCRIBE,
//! PUBLISH, PUBACK, DISCONNECT; it reads CONNACK, SUBACK, PUBLISH, PUBACK, PINGRESP) over tokio
//! `TcpStream`s: writes are batched up to [`WRITE_BATCH_BYTES_MAX`], reads go into one buffer
//! per connection and are parsed in place, with no per-message allocation. It speaks to any
//! broker, so it never uses the broker's own codec (`mqtt/wire.rs`). The caller runs it on a
//! current-thread runtime: one core, which `taskset` can pin.
//!
//! Modes, each printing one JSON report:
//! - `qos1`: one publisher, one subscriber (QoS 1 both ways); `messages` publishes of
//!   `payload_bytes`, at most `window` unacknowledged. End to end rate: the clock stops when
//!   the subscriber has received the last message.
//! - `fanout`: one QoS 0 publisher, `subscribers` QoS 0 subscribers of the same topic;
//!   delivered messages per second over all subscribers (QoS 0 may be dropped: the report
//!   says how many arrived).
//! - `routing`: one QoS 0 publisher, `subscribers` QoS 0 subscribers each of its own device
//!   topic (`…/dev/{i}/state`; every other one through a `+` wildcard, `…/dev/{i}/+`); the
//!   publishes go round-robin over the devices, so each reaches exactly one subscriber: the
//!   cost of finding the one match among many subscriptions, not of copying to many.
//! - `latency`: one publisher at a fixed `rate_per_s` for `seconds`, each payload carrying its
//!   send time; one subscriber measures publish → deliver (percentiles after `warmup_secs`).
//! - `idle`: `connections` clients CONNECT and SUBSCRIBE (each its own topic) and sit; a
//!   JSON line `{"ready": …}` tells the caller to read the broker's RSS, and the connections
//!   close when stdin closes or after `hold_secs`.
//!
//! Payloads start with the message's sequence number (8 bytes, big-endian); in `latency` mode
//! the send time follows (nanoseconds since the run's start, 8 bytes), then zero filler.

use crate::progress::{Counter, Progress, Unit};
use bytes::{Buf, BufMut, BytesMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest payload a run may ask for.
pub const PAYLOAD_BYTES_MAX: usize = 1 << 20;
/// Most subscribers of a `fanout` or `routing` run.
pub const SUBSCRIBERS_MAX: usize = 10_000;
/// Most connections of an `idle` run.
pub const CONNECTIONS_MAX: usize = 100_000;
/// Most unacknowledged QoS 1 publishes (packet ids are 16 bits, 0 is not one).
pub const WINDOW_MAX: usize = 65_535;
/// Largest remaining length MQTT can encode (four varint bytes).
const REMAINING_BYTES_MAX: usize = 268_435_455;
/// Bytes encoded before one `write_all`.
pub const WRITE_BATCH_BYTES_MAX: usize = 64 * 1024;
/// Bytes reserved for each socket read.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Sequence number plus send time, the head of a `latency` payload.
const LATENCY_HEAD_BYTES: usize = 16;
/// Sequence number, the head of every other payload.
const SEQ_BYTES: usize = 8;
/// File descriptors the generator keeps for itself beyond its connections.
const SPARE_FDS: u64 = 64;

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Qos1,
    Fanout,
    Routing,
    Latency,
    Idle,
}

/// One run's parameters (the CLI's flags, validated by [`MqttBench::validate`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MqttBench {
    pub addr: SocketAddr,
    pub mode: Mode,
    /// Publishes in `qos1` and `fanout` runs.
    pub messages: u64,
    pub payload_bytes: usize,
    /// Unacknowledged QoS 1 publishes at most (`qos1`).
    pub window: usize,
    /// Subscribers of a `fanout` or `routing` run.
    pub subscribers: usize,
    /// Publishes per second of a `latency` run.
    pub rate_per_s: u64,
    /// Length of a `latency` run.
    pub seconds: f64,
    /// Samples sent in the first `warmup_secs` of a `latency` run are not counted.
    pub warmup_secs: f64,
    /// QoS of a `latency` run's publish and subscription (0 or 1).
    pub qos: u8,
    /// Connections of an `idle` run.
    pub connections: usize,
    /// Connections of an `idle` run being set up at once.
    pub connect_concurrency: usize,
    pub keep_alive_secs: u16,
    /// How long an `idle` run holds its connections when stdin stays open.
    pub hold_secs: u64,
    /// A run gives up when nothing arrives on a connection for this long.
    pub stall_ms: u64,
    /// Topic prefix; each run appends a unique suffix.
    pub topic: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MqttBenchError {
    /// A parameter out of range: the caller's mistake (exit 2).
    #[error("{0}")]
    Usage(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the broker refused CONNECT (CONNACK return code {code})")]
    Refused { code: u8 },
    #[error("the broker refused the subscription to `{filter}` (SUBACK 0x80)")]
    SubscribeRefused { filter: String },
    #[error("the broker sent a malformed or unexpected packet: {0}")]
    Protocol(String),
    #[error("the broker closed the connection ({what})")]
    Closed { what: &'static str },
    #[error("{what}: nothing arrived for {stall_ms} ms ({done} of {expected} done)")]
    Stalled {
        what: &'static str,
        stall_ms: u64,
        done: u64,
        expected: u64,
    },
    #[error(
        "{needed} open files are needed and the limit is {limit} (raise it: ulimit -n, prlimit --nofile)"
    )]
    TooFewFds { needed: u64, limit: u64 },
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

type Result<T> = std::result::Result<T, MqttBenchError>;

impl MqttBench {
    /// Checks every parameter the mode uses; the message names the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(MqttBenchError::Usage(m));
        let head = match self.mode {
            Mode::Latency => LATENCY_HEAD_BYTES,
            _ => SEQ_BYTES,
        };
        if self.mode != Mode::Idle && !(head..=PAYLOAD_BYTES_MAX).contains(&self.payload_bytes) {
            return bad(format!(
                "--payload-bytes must be in {head}..={PAYLOAD_BYTES_MAX} for --mode {} (got {})",
                self.mode_name(),
                self.payload_bytes
            ));
        }
        if self.topic.is_empty() || self.topic.contains(['+', '#', '\0']) {
            return bad(format!(
                "--topic must be a non-empty topic name without wildcards (got `{}`)",
                self.topic
            ));
        }
        if self.stall_ms == 0 {
            return bad("--stall-ms must be positive".into());
        }
        match self.mode {
            Mode::Qos1 | Mode::Fanout | Mode::Routing if self.messages == 0 => {
                return bad("--messages must be positive".into())
            }
            Mode::Qos1 if !(1..=WINDOW_MAX).contains(&self.window) => {
                return bad(format!(
                    "--window must be in 1..={WINDOW_MAX} (got {})",
                    self.window
                ))
            }
            Mode::Fanout | Mode::Routing if !(1..=SUBSCRIBERS_MAX).contains(&self.subscribers) => {
                return bad(format!(
                    "--subscribers must be in 1..={SUBSCRIBERS_MAX} (got {})",
                    self.subscribers
                ))
            }
            Mode::Latency if self.rate_per_s == 0 => return bad("--rate must be positive".into()),
            Mode::Latency if !(self.seconds > 0.0 && self.seconds <= 3600.0) => {
                return bad(format!(
                    "--seconds must be in (0, 3600] (got {})",
                    self.seconds
                ))
            }
            Mode::Latency if !(0.0..self.seconds).contains(&self.warmup_secs) => {
                return bad(format!(
                    "--warmup-secs must be at least 0 and less than --seconds (got {})",
                    self.warmup_secs
                ))
            }
            Mode::Latency if self.qos > 1 => {
                return bad(format!("--qos must be 0 or 1 (got {})", self.qos))
            }
            Mode::Idle if !(1..=CONNECTIONS_MAX).contains(&self.connections) => {
                return bad(format!(
                    "--connections must be in 1..={CONNECTIONS_MAX} (got {})",
                    self.connections
                ))
            }
            Mode::Idle if self.connect_concurrency == 0 => {
                return bad("--connect-concurrency must be positive".into())
            }
            _ => {}
        }
        Ok(())
    }

    fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Qos1 => "qos1",
            Mode::Fanout => "fanout",
            Mode::Routing => "routing",
            Mode::Latency => "latency",
            Mode::Idle => "idle",
        }
    }

    fn stall(&self) -> Duration {
        Duration::from_millis(self.stall_ms)
    }
}

/// Runs one benchmark and returns its JSON report. `on_ready` is called once in `idle` mode,
/// when every connection is subscribed (the moment to read the broker's memory).
pub async fn run(
    cfg: &MqttBench,
    on_ready: &mut dyn FnMut(&serde_json::Value),
) -> Result<serde_json::Value> {
    cfg.validate()?;
    let report = match cfg.mode {
        Mode::Qos1 => serde_json::to_value(qos1(cfg).await?),
        Mode::Fanout | Mode::Routing => serde_json::to_value(fanout(cfg).await?),
        Mode::Latency => serde_json::to_value(latency(cfg).await?),
        Mode::Idle => serde_json::to_value(idle(cfg, on_ready).await?),
    };
    let mut report = report.map_err(|e| MqttBenchError::Protocol(e.to_string()))?;
    report["mode"] = serde_json::json!(cfg.mode_name());
    report["addr"] = serde_json::json!(cfg.addr.to_string());
    Ok(report)
}

// ---- the packets -------------------------------------------------------------------------

/// Packet types (the high nibble of the first byte).
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const SUBACK: u8 = 9;
const PINGRESP: u8 = 13;

fn put_remaining_len(buf: &mut BytesMut, mut n: usize) {
    debug_assert!(n <= REMAINING_BYTES_MAX);
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            buf.put_u8(byte);
            return;
        }
        buf.put_u8(byte | 0x80);
    }
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

/// CONNECT, MQTT 3.1.1, clean session, no will, no credentials.
fn put_connect(buf: &mut BytesMut, client_id: &str, keep_alive_secs: u16) {
    buf.put_u8(0x10);
    put_remaining_len(buf, 10 + 2 + client_id.len());
    put_str(buf, b"MQTT");
    buf.put_u8(4); // protocol level 3.1.1
    buf.put_u8(0x02); // clean session
    buf.put_u16(keep_alive_secs);
    put_str(buf, client_id.as_bytes());
}

fn put_subscribe(buf: &mut BytesMut, packet_id: u16, filter: &str, qos: u8) {
    buf.put_u8(0x82);
    put_remaining_len(buf, 2 + 2 + filter.len() + 1);
    buf.put_u16(packet_id);
    put_str(buf, filter.as_bytes());
    buf.put_u8(qos);
}

/// PUBLISH of `head` followed by `filler` (the payload is their concatenation).
fn put_publish(
    buf: &mut BytesMut,
    topic: &[u8],
    qos: u8,
    packet_id: u16,
    head: &[u8],
    filler: &[u8],
) {
    buf.put_u8(0x30 | (qos << 1));
    let id_bytes = if qos > 0 { 2 } else { 0 };
    put_remaining_len(buf, 2 + topic.len() + id_bytes + head.len() + filler.len());
    put_str(buf, topic);
    if qos > 0 {
        buf.put_u16(packet_id);
    }
    buf.put_slice(head);
    buf.put_slice(filler);
}

fn put_puback(buf: &mut BytesMut, packet_id: u16) {
    buf.put_slice(&[0x40, 0x02]);
    buf.put_u16(packet_id);
}

/// Takes one whole packet (first byte, body) off the front of `buf`, or `None` when `buf`
/// does not hold one yet.
fn next_frame(buf: &mut BytesMut) -> Result<Option<(u8, BytesMut)>> {
    let mut len = 0usize;
    let mut i = 1;
    loop {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7f) << (7 * (i - 1));
        i += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err(MqttBenchError::Protocol(
                "a remaining length longer than four bytes".into(),
            ));
        }
    }
    if buf.len() < i + len {
        buf.reserve(i + len - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(i + len);
    let first = frame[0];
    frame.advance(i);
    Ok(Some((first, frame)))
}

/// A PUBLISH's QoS, packet id (0 at QoS 0) and payload.
fn parse_publish(first: u8, body: &[u8]) -> Result<(u8, u16, &[u8])> {
    let bad = || MqttBenchError::Protocol("a PUBLISH shorter than its topic and packet id".into());
    let qos = (first >> 1) & 3;
    let topic_len = usize::from(u16::from_be_bytes(
        body.get(..2)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    ));
    let mut at = 2 + topic_len;
    let mut packet_id = 0;
    if qos > 0 {
        let id = body.get(at..at + 2).ok_or_else(bad)?;
        packet_id = u16::from_be_bytes([id[0], id[1]]);
        at += 2;
    }
    let payload = body.get(at..).ok_or_else(bad)?;
    Ok((qos, packet_id, payload))
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// One connection: its socket and what has been read but not parsed.
struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
}

impl Client {
    async fn connect(addr: SocketAddr, client_id: &str, keep_alive_secs: u16) -> Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| MqttBenchError::Connect { addr, source })?;
        stream.set_nodelay(true)?;
        let mut c = Client {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
        };
        let mut out = BytesMut::new();
        put_connect(&mut out, client_id, keep_alive_secs);
        c.stream.write_all(&out).await?;
        let (first, body) = c.read_frame("waiting for CONNACK").await?;
        if first >> 4 != CONNACK || body.len() != 2 {
            return Err(MqttBenchError::Protocol(format!(
                "expected CONNACK, got packet type {}",
                first >> 4
            )));
        }
        if body[1] != 0 {
            return Err(MqttBenchError::Refused { code: body[1] });
        }
        Ok(c)
    }

    async fn read_frame(&mut self, what: &'static str) -> Result<(u8, BytesMut)> {
        loop {
            if let Some(frame) = next_frame(&mut self.rbuf)? {
                return Ok(frame);
            }
            self.fill(what).await?;
        }
    }

    /// Reads what the socket has (at least one byte).
    async fn fill(&mut self, what: &'static str) -> Result<()> {
        self.rbuf.reserve(READ_CHUNK_BYTES);
        if self.stream.read_buf(&mut self.rbuf).await? == 0 {
            return Err(MqttBenchError::Closed { what });
        }
        Ok(())
    }

    /// SUBSCRIBE and wait for its SUBACK.
    async fn subscribe(&mut self, filter: &str, qos: u8) -> Result<()> {
        let mut out = BytesMut::new();
        put_subscribe(&mut out, 1, filter, qos);
        self.stream.write_all(&out).await?;
        loop {
            let (first, body) = self.read_frame("waiting for SUBACK").await?;
            match first >> 4 {
                SUBACK => {
                    return match body.get(2) {
                        Some(0x80) => Err(MqttBenchError::SubscribeRefused {
                            filter: filter.to_string(),
                        }),
                        Some(_) => Ok(()),
                        None => Err(MqttBenchError::Protocol("a SUBACK without a code".into())),
                    }
                }
                PUBLISH | PINGRESP => {} // a retained message or a late ping: not ours
                t => {
                    return Err(MqttBenchError::Protocol(format!(
                        "expected SUBACK, got packet type {t}"
                    )))
                }
            }
        }
    }

    async fn disconnect(mut self) {
        // Best effort: the run's numbers are already taken.
        let _ = self.stream.write_all(&[0xe0, 0x00]).await;
        let _ = self.stream.shutdown().await;
    }
}

/// A name no other run uses, so topics and client ids of runs never meet.
fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:x}", std::process::id())
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct SubStats {
    received: u64,
    /// When the last message arrived.
    last: Option<Instant>,
    /// Publish → deliver, nanoseconds (latency mode).
    latencies_ns: Vec<u64>,
    /// The worst latency among the messages sent in each second of the run (index = second).
    worst_ns_by_second: Vec<u64>,
}

/// How a subscriber reads: until `expected` messages, or until nothing arrives for `stall`
/// (then it returns what it has when `lossy`, else fails).
struct SubPlan {
    expected: u64,
    stall: Duration,
    stall_ms: u64,
    lossy: bool,
    /// Latency mode: the run's clock origin and the warm-up to skip (ns).
    clock: Option<(Instant, u64)>,
    /// Deliveries are added here once per read (the progress line on stderr).
    progress: Counter,
}

async fn subscriber(mut c: Client, plan: SubPlan) -> Result<SubStats> {
    let mut stats = SubStats::default();
    let mut acks = BytesMut::new();
    loop {
        let now = Instant::now();
        let before = stats.received;
        while let Some((first, body)) = next_frame(&mut c.rbuf)? {
            match first >> 4 {
                PUBLISH => {
                    let (qos, packet_id, payload) = parse_publish(first, &body)?;
                    if qos == 1 {
                        put_puback(&mut acks, packet_id);
                    } else if qos == 2 {
                        return Err(MqttBenchError::Protocol(
                            "a QoS 2 delivery on a QoS 0/1 subscription".into(),
                        ));
                    }
                    stats.received += 1;
                    if let Some((origin, warmup_ns)) = plan.clock {
                        let sent_ns =
                            payload.get(SEQ_BYTES..).and_then(be_u64).ok_or_else(|| {
                                MqttBenchError::Protocol(
                                    "a latency payload without its send time".into(),
                                )
                            })?;
                        if sent_ns >= warmup_ns {
                            let at_ns = now.duration_since(origin).as_nanos() as u64;
                            let latency_ns = at_ns.saturating_sub(sent_ns);
                            stats.latencies_ns.push(latency_ns);
                            let second = (sent_ns / 1_000_000_000) as usize;
                            if stats.worst_ns_by_second.len() <= second {
                                stats.worst_ns_by_second.resize(second + 1, 0);
                            }
                            let worst = &mut stats.worst_ns_by_second[second];
                            *worst = (*worst).max(latency_ns);
                        }
                    }
                }
                PINGRESP | SUBACK => {}
                t => {
                    return Err(MqttBenchError::Protocol(format!(
                        "unexpected packet type {t} on a subscriber"
                    )))
                }
            }
        }
        if stats.received > before {
            stats.last = Some(now);
            plan.progress.add(stats.received - before);
        }
        if !acks.is_empty() {
            c.stream.write_all(&acks).await?;
            acks.clear();
        }
        if stats.received >= plan.expected {
            c.disconnect().await;
            return Ok(stats);
        }
        c.rbuf.reserve(READ_CHUNK_BYTES);
        match tokio::time::timeout(plan.stall, c.stream.read_buf(&mut c.rbuf)).await {
            Ok(Ok(0)) => {
                return Err(MqttBenchError::Closed {
                    what: "subscriber, before the last message",
                })
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) if plan.lossy => return Ok(stats),
            Err(_) => {
                return Err(MqttBenchError::Stalled {
                    what: "subscriber",
                    stall_ms: plan.stall_ms,
                    done: stats.received,
                    expected: plan.expected,
                })
            }
        }
    }
}

/// Packet ids of unacknowledged QoS 1 publishes.
struct PacketIds {
    open: Vec<bool>,
    next: usize,
    count: usize,
}

impl PacketIds {
    fn new() -> Self {
        PacketIds {
            open: vec![false; 65_536],
            next: 1,
            count: 0,
        }
    }

    /// A free id; the caller keeps `count` below 65,535.
    fn take(&mut self) -> u16 {
        assert!(self.count < WINDOW_MAX, "no free packet id");
        while self.open[self.next] {
            self.next = if self.next == 65_535 {
                1
            } else {
                self.next + 1
            };
        }
        let id = self.next;
        self.open[id] = true;
        self.count += 1;
        self.next = if id == 65_535 { 1 } else { id + 1 };
        id as u16
    }

    fn release(&mut self, id: u16) -> Result<()> {
        let slot = &mut self.open[usize::from(id)];
        if !*slot {
            return Err(MqttBenchError::Protocol(format!(
                "a PUBACK for packet id {id}, which is not in flight"
            )));
        }
        *slot = false;
        self.count -= 1;
        Ok(())
    }
}

// ---- qos1 --------------------------------------------------------------------------------

#[derive(Debug, serde::Serialize)]
pub struct Qos1Report {
    pub messages: u64,
    pub payload_bytes: usize,
    pub window: usize,
    pub received: u64,
    /// First publish written → last message received by the subscriber.
    pub seconds: f64,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    /// First publish written → last PUBACK.
    pub publish_seconds: f64,
}

async fn qos1(cfg: &MqttBench) -> Result<Qos1Report> {
    let progress = Progress::start(
        "bench mqtt qos1",
        Unit::Count("messages delivered"),
        Some(cfg.messages),
    );
    let tag = run_tag();
    let topic = format!("{}/{tag}", cfg.topic);
    let mut sub = Client::connect(cfg.addr, &format!("sb-{tag}-s"), cfg.keep_alive_secs).await?;
    sub.subscribe(&topic, 1).await?;
    let mut publ = Client::connect(cfg.addr, &format!("sb-{tag}-p"), cfg.keep_alive_secs).await?;
    let plan = SubPlan {
        expected: cfg.messages,
        stall: cfg.stall(),
        stall_ms: cfg.stall_ms,
        lossy: false,
        clock: None,
        progress: progress.counter(),
    };
    let start = Instant::now();
    let sub_task = tokio::spawn(subscriber(sub, plan));

    let filler = vec![0u8; cfg.payload_bytes - SEQ_BYTES];
    let mut ids = PacketIds::new();
    let mut out = BytesMut::with_capacity(WRITE_BATCH_BYTES_MAX + cfg.payload_bytes + 64);
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < cfg.messages {
        while ids.count < cfg.window && sent < cfg.messages && out.len() < WRITE_BATCH_BYTES_MAX {
            let id = ids.take();
            put_publish(
                &mut out,
                topic.as_bytes(),
                1,
                id,
                &sent.to_be_bytes(),
                &filler,
            );
            sent += 1;
        }
        if !out.is_empty() {
            publ.stream.write_all(&out).await?;
            out.clear();
            if ids.count < cfg.window && sent < cfg.messages {
                continue; // the batch was full, not the window
            }
        }
        while let Some((first, body)) = next_frame(&mut publ.rbuf)? {
            match first >> 4 {
                PUBACK if body.len() >= 2 => {
                    ids.release(u16::from_be_bytes([body[0], body[1]]))?;
                    acked += 1;
                }
                PINGRESP => {}
                t => {
                    return Err(MqttBenchError::Protocol(format!(
                        "expected PUBACK, got packet type {t}"
                    )))
                }
            }
        }
        if acked == cfg.messages {
            break;
        }
        // PUBACKs freed room in the window: send before waiting (a broker that answers a whole
        // window in one write leaves nothing in flight to wait for).
        if ids.count < cfg.window && sent < cfg.messages {
            continue;
        }
        publ.rbuf.reserve(READ_CHUNK_BYTES);
        match tokio::time::timeout(cfg.stall(), publ.stream.read_buf(&mut publ.rbuf)).await {
            Ok(Ok(0)) => return Err(MqttBenchError::Closed { what: "publisher" }),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(MqttBenchError::Stalled {
                    what: "publisher waiting for PUBACKs",
                    stall_ms: cfg.stall_ms,
                    done: acked,
                    expected: cfg.messages,
                })
            }
        }
    }
    let publish_seconds = start.elapsed().as_secs_f64();
    let stats = sub_task
        .await
        .map_err(|e| MqttBenchError::Protocol(format!("subscriber task: {e}")))??;
    publ.disconnect().await;
    progress.finish();
    let seconds = stats
        .last
        .map(|t| t.duration_since(start).as_secs_f64())
        .unwrap_or(f64::NAN)
        .max(1e-9);
    Ok(Qos1Report {
        messages: cfg.messages,
        payload_bytes: cfg.payload_bytes,
        window: cfg.window,
        received: stats.received,
        seconds,
        msgs_per_s: stats.received as f64 / seconds,
        mb_per_s: stats.received as f64 * cfg.payload_bytes as f64 / seconds / 1e6,
        publish_seconds,
    })
}

// ---- fanout ------------------------------------------------------------------------------

#[derive(Debug, serde::Serialize)]
pub struct FanoutReport {
    pub messages: u64,
    pub payload_bytes: usize,
    pub subscribers: usize,
    /// Topics published to: 1 in `fanout`, `subscribers` in `routing`.
    pub topics: usize,
    /// Deliveries expected: messages × subscribers.
    pub expected: u64,
    pub delivered: u64,
    pub delivered_fraction: f64,
    /// First publish written → last delivery.
    pub seconds: f64,
    pub delivered_msgs_per_s: f64,
    /// First publish written → last publish written (TCP back-pressure included).
    pub publish_seconds: f64,
}

/// Where the subscribers of a `fanout` or `routing` run listen and its publishes go.
struct Spread {
    /// Subscriber `i`'s filter.
    filters: Vec<String>,
    /// Publish `k` goes to `topics[k % topics.len()]`.
    topics: Vec<String>,
}

impl Spread {
    fn new(cfg: &MqttBench, base: &str) -> Spread {
        match cfg.mode {
            Mode::Routing => Spread {
                filters: (0..cfg.subscribers)
                    .map(|i| match i % 2 {
                        0 => format!("{base}/dev/{i}/state"),
                        _ => format!("{base}/dev/{i}/+"),
                    })
                    .collect(),
                topics: (0..cfg.subscribers)
                    .map(|i| format!("{base}/dev/{i}/state"))
                    .collect(),
            },
            _ => Spread {
                filters: vec![base.to_string(); cfg.subscribers],
                topics: vec![base.to_string()],
            },
        }
    }

    /// The topic publish `k` goes to.
    fn topic(&self, k: u64) -> &str {
        &self.topics[(k % self.topics.len() as u64) as usize]
    }

    /// Publishes subscriber `i` should receive out of `messages`.
    fn expected(&self, i: usize, messages: u64) -> u64 {
        if self.topics.len() == 1 {
            return messages;
        }
        let n = self.topics.len() as u64;
        messages / n + u64::from((i as u64) < messages % n)
    }
}

async fn fanout(cfg: &MqttBench) -> Result<FanoutReport> {
    use futures::{StreamExt, TryStreamExt};
    let tag = run_tag();
    let spread = Spread::new(cfg, &format!("{}/{tag}", cfg.topic));
    let expected: u64 = (0..cfg.subscribers)
        .map(|i| spread.expected(i, cfg.messages))
        .sum();
    let progress = Progress::start(
        format!("bench mqtt {}", cfg.mode_name()),
        Unit::Count("messages delivered"),
        Some(expected),
    );
    let setups = spread.filters.iter().enumerate().map(|(i, filter)| {
        let id = format!("sb-{tag}-s{i}");
        async move {
            let mut c = Client::connect(cfg.addr, &id, cfg.keep_alive_secs).await?;
            c.subscribe(filter, 0).await?;
            Ok::<_, MqttBenchError>(c)
        }
    });
    let subs: Vec<Client> = futures::stream::iter(setups)
        .buffered(cfg.connect_concurrency.max(1))
        .try_collect()
        .await?;
    let mut publ = Client::connect(cfg.addr, &format!("sb-{tag}-p"), cfg.keep_alive_secs).await?;
    let start = Instant::now();
    let tasks: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            tokio::spawn(subscriber(
                c,
                SubPlan {
                    expected: spread.expected(i, cfg.messages),
                    stall: cfg.stall(),
                    stall_ms: cfg.stall_ms,
                    lossy: true,
                    clock: None,
                    progress: progress.counter(),
                },
            ))
        })
        .collect();
    let filler = vec![0u8; cfg.payload_bytes - SEQ_BYTES];
    let mut out = BytesMut::with_capacity(WRITE_BATCH_BYTES_MAX + cfg.payload_bytes + 64);
    let mut sent = 0u64;
    while sent < cfg.messages {
        while sent < cfg.messages && out.len() < WRITE_BATCH_BYTES_MAX {
            let topic = spread.topic(sent);
            put_publish(
                &mut out,
                topic.as_bytes(),
                0,
                0,
                &sent.to_be_bytes(),
                &filler,
            );
            sent += 1;
        }
        publ.stream.write_all(&out).await?;
        out.clear();
    }
    let publish_seconds = start.elapsed().as_secs_f64();
    let (mut delivered, mut last) = (0u64, start);
    for task in tasks {
        let stats = task
            .await
            .map_err(|e| MqttBenchError::Protocol(format!("subscriber task: {e}")))??;
        delivered += stats.received;
        last = last.max(stats.last.unwrap_or(start));
    }
    publ.disconnect().await;
    progress.finish();
    let seconds = last.duration_since(start).as_secs_f64().max(1e-9);
    Ok(FanoutReport {
        messages: cfg.messages,
        payload_bytes: cfg.payload_bytes,
        subscribers: cfg.subscribers,
        topics: spread.topics.len(),
        expected,
        delivered,
        delivered_fraction: delivered as f64 / expected as f64,
        seconds,
        delivered_msgs_per_s: delivered as f64 / seconds,
        publish_seconds,
    })
}

// ---- latency -----------------------------------------------------------------------------

#[derive(Debug, serde::Serialize)]
pub struct LatencyReport {
    pub rate_per_s: u64,
    pub qos: u8,
    pub seconds: f64,
    pub payload_bytes: usize,
    pub sent: u64,
    pub received: u64,
    /// Deliveries measured (sent after the warm-up).
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// How far the publisher fell behind its schedule at worst (its own lateness or the
    /// broker's TCP back-pressure); the send time in a payload is the actual one.
    pub publisher_behind_ms_max: f64,
    /// The worst latency of the messages sent in each second of the run (the warm-up's
    /// seconds are 0): a stall that recurs — once a second, say — shows here as a pattern the
    /// percentiles hide.
    pub worst_ms_by_second: Vec<f64>,
}

async fn latency(cfg: &MqttBench) -> Result<LatencyReport> {
    let tag = run_tag();
    let topic = format!("{}/{tag}", cfg.topic);
    let mut sub = Client::connect(cfg.addr, &format!("sb-{tag}-s"), cfg.keep_alive_secs).await?;
    sub.subscribe(&topic, cfg.qos).await?;
    let publ = Client::connect(cfg.addr, &format!("sb-{tag}-p"), cfg.keep_alive_secs).await?;
    let total = (cfg.rate_per_s as f64 * cfg.seconds).ceil() as u64;
    let progress = Progress::start(
        "bench mqtt latency",
        Unit::Count("messages delivered"),
        Some(total),
    );
    let origin = Instant::now();
    let warmup_ns = (cfg.warmup_secs * 1e9) as u64;
    let sub_task = tokio::spawn(subscriber(
        sub,
        SubPlan {
            expected: total,
            stall: cfg.stall(),
            stall_ms: cfg.stall_ms,
            lossy: cfg.qos == 0,
            clock: Some((origin, warmup_ns)),
            progress: progress.counter(),
        },
    ));

    // PUBACKs are read by their own task; only their count matters here (ids are used in
    // order and the run stops before 65,535 are open).
    let Client { stream, mut rbuf } = publ;
    let (mut rd, mut wr) = stream.into_split();
    let acked = Arc::new(AtomicU64::new(0));
    let ack_reader = {
        let acked = acked.clone();
        let qos = cfg.qos;
        tokio::spawn(async move {
            if qos == 0 {
                return Ok::<_, MqttBenchError>(());
            }
            loop {
                while let Some((first, _)) = next_frame(&mut rbuf)? {
                    if first >> 4 == PUBACK {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if acked.load(Ordering::Relaxed) >= total {
                    return Ok(());
                }
                rbuf.reserve(READ_CHUNK_BYTES);
                if rd.read_buf(&mut rbuf).await? == 0 {
                    return Err(MqttBenchError::Closed {
                        what: "publisher, before the last PUBACK",
                    });
                }
            }
        })
    };

    let filler = vec![0u8; cfg.payload_bytes - LATENCY_HEAD_BYTES];
    let mut out = BytesMut::with_capacity(WRITE_BATCH_BYTES_MAX + cfg.payload_bytes + 64);
    let ns_per_msg = 1e9 / cfg.rate_per_s as f64;
    let (mut sent, mut behind_ns_max) = (0u64, 0u64);
    while sent < total {
        let now_ns = origin.elapsed().as_nanos() as u64;
        let due = ((now_ns as f64 / ns_per_msg) as u64 + 1).min(total);
        let mut head = [0u8; LATENCY_HEAD_BYTES];
        while sent < due {
            let scheduled_ns = (sent as f64 * ns_per_msg) as u64;
            behind_ns_max = behind_ns_max.max(now_ns.saturating_sub(scheduled_ns));
            head[..8].copy_from_slice(&sent.to_be_bytes());
            head[8..].copy_from_slice(&now_ns.to_be_bytes());
            if cfg.qos == 1 && sent - acked.load(Ordering::Relaxed) >= WINDOW_MAX as u64 - 1 {
                return Err(MqttBenchError::Stalled {
                    what: "publisher: 65,534 publishes unacknowledged",
                    stall_ms: cfg.stall_ms,
                    done: acked.load(Ordering::Relaxed),
                    expected: total,
                });
            }
            let id = (sent % WINDOW_MAX as u64) as u16 + 1;
            put_publish(&mut out, topic.as_bytes(), cfg.qos, id, &head, &filler);
            sent += 1;
            if out.len() >= WRITE_BATCH_BYTES_MAX {
                wr.write_all(&out).await?;
                out.clear();
            }
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
        }
        if sent < total {
            let next = origin + Duration::from_nanos((sent as f64 * ns_per_msg) as u64);
            tokio::time::sleep_until(next.into()).await;
        }
    }
    let stats = sub_task
        .await
        .map_err(|e| MqttBenchError::Protocol(format!("subscriber task: {e}")))??;
    match tokio::time::timeout(cfg.stall(), ack_reader).await {
        Ok(joined) => joined.map_err(|e| MqttBenchError::Protocol(format!("ack task: {e}")))??,
        Err(_) => {
            return Err(MqttBenchError::Stalled {
                what: "publisher waiting for PUBACKs",
                stall_ms: cfg.stall_ms,
                done: acked.load(Ordering::Relaxed),
                expected: total,
            })
        }
    }
    let _ = wr.write_all(&[0xe0, 0x00]).await;
    progress.finish();
    let mut lat = stats.latencies_ns;
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize] as f64 / 1e6
        }
    };
    Ok(LatencyReport {
        rate_per_s: cfg.rate_per_s,
        qos: cfg.qos,
        seconds: cfg.seconds,
        payload_bytes: cfg.payload_bytes,
        sent,
        received: stats.received,
        samples: lat.len(),
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        max_ms: pct(1.0),
        publisher_behind_ms_max: behind_ns_max as f64 / 1e6,
        worst_ms_by_second: stats
            .worst_ns_by_second
            .iter()
            .map(|&ns| (ns as f64 / 1e3).round() / 1e3)
            .collect(),
    })
}

// ---- idle --------------------------------------------------------------------------------

#[derive(Debug, serde::Serialize)]
pub struct IdleReport {
    pub connections: usize,
    /// First CONNECT → last SUBACK.
    pub connect_seconds: f64,
    /// Connections the broker had not closed when the hold ended.
    pub open_at_end: usize,
    pub held_seconds: f64,
}

/// Checks that this process may open the files `connections` need (the soft limit on open
/// files, from `/proc/self/limits`: raising it needs `unsafe`, which this workspace denies, so
/// the caller raises it: `ulimit -n`, `prlimit`, or Python's `resource.setrlimit`).
fn ensure_fds(connections: usize) -> Result<()> {
    let needed = connections as u64 + SPARE_FDS;
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return Ok(()); // not Linux: the connect errors will say it
    };
    match crate::process_metrics::open_files_soft_limit(&limits) {
        Some(limit) if limit < needed => Err(MqttBenchError::TooFewFds { needed, limit }),
        _ => Ok(()),
    }
}

async fn idle(cfg: &MqttBench, on_ready: &mut dyn FnMut(&serde_json::Value)) -> Result<IdleReport> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    ensure_fds(cfg.connections)?;
    let tag = run_tag();
    let progress = Progress::start(
        "bench mqtt idle",
        Unit::Count("connections subscribed"),
        Some(cfg.connections as u64),
    );
    let start = Instant::now();
    let clients: Vec<Client> = stream::iter(0..cfg.connections)
        .map(|i| {
            let (tag, counter) = (&tag, progress.counter());
            async move {
                let mut c =
                    Client::connect(cfg.addr, &format!("sb-{tag}-i{i}"), cfg.keep_alive_secs)
                        .await?;
                c.subscribe(&format!("{}/{tag}/{i}", cfg.topic), 1).await?;
                counter.add(1);
                Ok::<_, MqttBenchError>(c)
            }
        })
        .buffer_unordered(cfg.connect_concurrency)
        .try_collect()
        .await?;
    let connect_seconds = start.elapsed().as_secs_f64();
    progress.finish();
    on_ready(&serde_json::json!({
        "ready": true,
        "connections": clients.len(),
        "connect_seconds": connect_seconds,
    }));
    let held = Instant::now();
    let mut stdin = tokio::io::stdin();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(cfg.hold_secs),
        stdin.read_to_end(&mut sink),
    )
    .await;
    let held_seconds = held.elapsed().as_secs_f64();
    // A connection the broker closed reads EOF (or an error) at once; an open one has nothing.
    let mut open_at_end = 0;
    for c in &clients {
        let mut probe = [0u8; 1];
        match c.stream.try_read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open_at_end += 1,
            Ok(n) if n > 0 => open_at_end += 1, // a PINGRESP or similar: still open
            _ => {}
        }
    }
    // Closed without DISCONNECT: 10k polite goodbyes would only slow the run's end.
    drop(clients);
    Ok(IdleReport {
        connections: cfg.connections,
        connect_seconds,
        open_at_end,
        held_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(mode: Mode) -> MqttBench {
        MqttBench {
            addr: "127.0.0.1:1883".parse().unwrap(),
            mode,
            messages: 10,
            payload_bytes: 64,
            window: 16,
            subscribers: 4,
            rate_per_s: 100,
            seconds: 1.0,
            warmup_secs: 0.0,
            qos: 1,
            connections: 10,
            connect_concurrency: 4,
            keep_alive_secs: 60,
            hold_secs: 1,
            stall_ms: 1000,
            topic: "bench".into(),
        }
    }

    #[test]
    fn validate_names_the_flag() {
        let cases: Vec<(MqttBench, Option<&str>)> = vec![
            (base(Mode::Qos1), None),
            (
                MqttBench {
                    messages: 0,
                    ..base(Mode::Qos1)
                },
                Some("--messages"),
            ),
            (
                MqttBench {
                    window: 0,
                    ..base(Mode::Qos1)
                },
                Some("--window"),
            ),
            (
                MqttBench {
                    window: 65_536,
                    ..base(Mode::Qos1)
                },
                Some("--window"),
            ),
            (
                MqttBench {
                    payload_bytes: 7,
                    ..base(Mode::Qos1)
                },
                Some("--payload-bytes"),
            ),
            (
                MqttBench {
                    payload_bytes: 8,
                    ..base(Mode::Qos1)
                },
                None,
            ),
            (
                MqttBench {
                    payload_bytes: 15,
                    ..base(Mode::Latency)
                },
                Some("--payload-bytes"),
            ),
            (
                MqttBench {
                    payload_bytes: PAYLOAD_BYTES_MAX + 1,
                    ..base(Mode::Fanout)
                },
                Some("--payload-bytes"),
            ),
            (
                MqttBench {
                    subscribers: 0,
                    ..base(Mode::Fanout)
                },
                Some("--subscribers"),
            ),
            (
                MqttBench {
                    subscribers: SUBSCRIBERS_MAX + 1,
                    ..base(Mode::Fanout)
                },
                Some("--subscribers"),
            ),
            (
                MqttBench {
                    rate_per_s: 0,
                    ..base(Mode::Latency)
                },
                Some("--rate"),
            ),
            (
                MqttBench {
                    seconds: 0.0,
                    ..base(Mode::Latency)
                },
                Some("--seconds"),
            ),
            (
                MqttBench {
                    warmup_secs: 1.0,
                    ..base(Mode::Latency)
                },
                Some("--warmup-secs"),
            ),
            (
                MqttBench {
                    qos: 2,
                    ..base(Mode::Latency)
                },
                Some("--qos"),
            ),
            (
                MqttBench {
                    connections: 0,
                    ..base(Mode::Idle)
                },
                Some("--connections"),
            ),
            (
                MqttBench {
                    connect_concurrency: 0,
                    ..base(Mode::Idle)
                },
                Some("--connect-concurrency"),
            ),
            (
                MqttBench {
                    payload_bytes: 0,
                    ..base(Mode::Idle)
                },
                None,
            ),
            (
                MqttBench {
                    topic: "a/+".into(),
                    ..base(Mode::Qos1)
                },
                Some("--topic"),
            ),
            (
                MqttBench {
                    topic: String::new(),
                    ..base(Mode::Qos1)
                },
                Some("--topic"),
            ),
            (
                MqttBench {
                    stall_ms: 0,
                    ..base(Mode::Qos1)
                },
                Some("--stall-ms"),
            ),
        ];
        for (cfg, flag) in cases {
            match (cfg.validate(), flag) {
                (Ok(()), None) => {}
                (Err(MqttBenchError::Usage(m)), Some(flag)) => {
                    assert!(m.contains(flag), "{m:?} should name {flag}")
                }
                (got, want) => panic!("{cfg:?}: got {got:?}, want an error naming {want:?}"),
            }
        }
    }

    #[test]
    fn remaining_length_round_trips() {
        for (n, encoded) in [
            (0usize, vec![0x00u8]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (REMAINING_BYTES_MAX, vec![0xff, 0xff, 0xff, 0x7f]),
        ] {
            let mut buf = BytesMut::new();
            put_remaining_len(&mut buf, n);
            assert_eq!(&buf[..], &encoded[..], "{n}");
        }
    }

    #[test]
    fn routing_sends_each_publish_to_exactly_one_subscriber() {
        for (mode, subscribers, messages) in [
            (Mode::Routing, 7, 100),
            (Mode::Routing, 4, 3),
            (Mode::Fanout, 5, 9),
        ] {
            let cfg = MqttBench {
                subscribers,
                messages,
                ..base(mode)
            };
            let spread = Spread::new(&cfg, "b/t");
            let mut got = vec![0u64; subscribers];
            for k in 0..messages {
                let topic = spread.topic(k);
                let matched: Vec<usize> = (0..subscribers)
                    .filter(|&i| crate::mqtt::topic::matches(&spread.filters[i], topic))
                    .collect();
                let want = if mode == Mode::Routing {
                    1
                } else {
                    subscribers
                };
                assert_eq!(matched.len(), want, "{mode:?} publish {k} to {topic}");
                for i in matched {
                    got[i] += 1;
                }
            }
            let expected: Vec<u64> = (0..subscribers)
                .map(|i| spread.expected(i, messages))
                .collect();
            assert_eq!(got, expected, "{mode:?}");
        }
        let cfg = base(Mode::Routing);
        let wildcards = Spread::new(&cfg, "b")
            .filters
            .iter()
            .filter(|f| f.ends_with('+'))
            .count();
        assert_eq!(wildcards, cfg.subscribers / 2);
    }

    #[test]
    fn packets_match_the_spec_bytes() {
        let mut b = BytesMut::new();
        put_connect(&mut b, "c1", 60);
        assert_eq!(
            &b[..],
            &[0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 2, b'c', b'1']
        );
        let mut b = BytesMut::new();
        put_subscribe(&mut b, 7, "a/b", 1);
        assert_eq!(&b[..], &[0x82, 8, 0, 7, 0, 3, b'a', b'/', b'b', 1]);
        let mut b = BytesMut::new();
        put_puback(&mut b, 0x1234);
        assert_eq!(&b[..], &[0x40, 2, 0x12, 0x34]);
    }

    #[test]
    fn publish_frames_parse_back() {
        for (qos, id) in [(0u8, 0u16), (1, 513)] {
            let mut b = BytesMut::new();
            put_publish(&mut b, b"t/1", qos, id, &[1, 2], &[0; 300]);
            put_puback(&mut b, 9);
            let (first, body) = next_frame(&mut b).unwrap().unwrap();
            assert_eq!(first >> 4, PUBLISH);
            let (q, got_id, payload) = parse_publish(first, &body).unwrap();
            assert_eq!(
                (q, got_id, payload.len(), &payload[..2]),
                (qos, id, 302, &[1u8, 2][..])
            );
            let (first, body) = next_frame(&mut b).unwrap().unwrap();
            assert_eq!((first, &body[..]), (0x40, &[0u8, 9][..]));
            assert!(next_frame(&mut b).unwrap().is_none());
        }
    }

    #[test]
    fn partial_and_malformed_frames() {
        let mut whole = BytesMut::new();
        put_publish(&mut whole, b"t", 1, 1, &[], &[0; 200]);
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert!(next_frame(&mut part).unwrap().is_none(), "cut at {cut}");
        }
        let mut five = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(matches!(
            next_frame(&mut five),
            Err(MqttBenchError::Protocol(_))
        ));
        // A PUBLISH whose topic length runs past its body.
        assert!(matches!(
            parse_publish(0x32, &[0, 9, b'a']),
            Err(MqttBenchError::Protocol(_))
        ));
    }

    #[test]
    fn packet_ids_skip_open_ones_and_reject_unknown_acks() {
        let mut ids = PacketIds::new();
        let a = ids.take();
        let b = ids.take();
        assert_eq!((a, b), (1, 2));
        ids.release(a).unwrap();
        assert!(matches!(ids.release(a), Err(MqttBenchError::Protocol(_))));
        ids.next = 65_535;
        assert_eq!(ids.take(), 65_535);
        assert_eq!(ids.take(), 1, "wraps past 0 and reuses the released id");
        assert_eq!(ids.take(), 3, "skips 2, still open");
    }
}
