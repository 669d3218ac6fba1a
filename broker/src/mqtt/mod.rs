//! MQTT 3.1.1 and 5.0 on the shared storage kernel.
//!
//! ```text
//! MQTT client ──TCP──▶ connection (wire: rmqtt-codec ↔ Inbound/Outbound; session: QoS state)
//!                        │ PUBLISH → ingest: mapping rule → Kafka topic, murmur2(topic) → partition,
//!                        │           one-record batch → sequencer (same queue as Kafka Produce)
//!                        │           PUBACK / PUBREC once the WAL made it durable
//!                        ▼
//!                      partition tail ──hw notification──▶ tailer ──▶ router ──▶ connections
//! Kafka producer ───────▲ (same partitions)       │                  (ephemeral sessions,
//!                                                 │                   shared subscriptions)
//!                                                 └─ data signal ──▶ persistent sessions:
//!                                                    replay::pump reads the partitions from
//!                                                    the session's cursors (tail or objects)
//! ```
//!
//! - `wire` — the codec boundary (the only file naming `rmqtt_codec` types), the frozen table
//!   of reason codes, outbound topic aliases, and shared PUBLISH frames (a QoS 0 packet the
//!   router encodes once per message for every connection that sends the same bytes).
//! - `connection` — the listener and one task per connection (a closed event loop: socket
//!   reads, deliveries, cursor reads, durable acks, keep alive, takeover).
//! - `session` — per-connection QoS state as a value (packet ids, in-flight windows).
//! - `router` — sessions (ephemeral and persistent), subscriptions, shared subscription
//!   groups (round robin) and retained messages, owned by one task; session expiry.
//! - `replay` — a persistent session's cursors (per partition: next offset, open offsets,
//!   sent mark) and the read from them through `log::reader`.
//! - `store` — the session log on local disk (`<data_dir>/mqtt/sessions.log`, CRC-framed,
//!   batched fdatasync, rewritten when it grows).
//! - `cluster_sessions` — sessions across brokers: at CONNECT, `TakeSession` from every other
//!   live broker (Peer service) and dead brokers' snapshots in the object store
//!   (`mqtt/sessions/<node_id>`, PUT every `mqtt.session_snapshot_interval_ms` when changed);
//!   the takeover generation rule (highest wins, stale copies never resume).
//! - `tailer` — follows the MQTT-mapped partitions and feeds the router: delivery is driven by
//!   stored records, whichever protocol wrote them.
//! - `ingest` — publish → Kafka record → sequencer; `mapping` — rules, partitioner, record layout.
//!
//! *Across brokers* (`crate::peer`, gRPC on every broker's `meta.listen`, advertised as
//! `BrokerInfo::peer_addr`): a publish whose partition another broker leads goes to that
//! leader's `Peer.Append` (ingest's per-partition forwarder, acknowledged once the leader made
//! it durable, retried across a failover for a bounded time, else failed like a storage error);
//! the tailer follows partitions led elsewhere through the leader's `Peer.Tail` stream and
//! re-subscribes from its next offset when the leader changes; persistent sessions read those
//! partitions through `Peer.Read`. So a subscriber on any broker gets every publish.
//! - `topic` — topic names, filters and `$share/<group>/<filter>`.
//! - `auth` — `mqtt.auth` (passwords: `[[mqtt.users]]` hashes, then the Kafka SCRAM users;
//!   MQTT 5 enhanced authentication with SCRAM over AUTH packets is in `connection`),
//!   `[[mqtt.acl]]` rules, per-connection publish rate limits (token buckets); replaced on a
//!   configuration reload ([`Mqtt::reload`], SIGHUP), after which every connection drops the
//!   subscriptions the new ACL denies; connections of users a reload removed, or a SCRAM
//!   user deleted from metadata (`follow_metadata`), are closed.
//!
//! *Persistent sessions* (3.1.1 `clean_session = 0`, 5.0 Session Expiry Interval > 0) keep
//! cursors, not copies: every MQTT publish is stored (a mapped Kafka topic, or
//! `mqtt.default_kafka_topic` for the rest), so what a client missed is re-read from the log,
//! also after kill -9 (cursors persisted in batches: a restart may redeliver, with DUP where
//! the sent mark was persisted, never lose). A client id is connected once cluster-wide: a
//! CONNECT on another broker takes the session over (the old connection gets DISCONNECT
//! 0x8E) and brings it along; a client whose broker died resumes from that broker's last
//! snapshot (an older cursor redelivers, never loses; `cluster_sessions`). Open QoS 2
//! exchanges travel with the cursors (`store::Qos2Ids`): inbound ids answered with PUBREC and
//! not yet released, so a PUBLISH sent again with DUP is not stored twice, and outbound ids
//! the client has (PUBREC) but has not completed, so a reconnect sends their PUBREL, never the
//! message again. Like the cursors they are persisted in batches: after kill -9 an exchange
//! younger than the last batch is at least once. An MQTT 5 PUBREC with a failure reason
//! (>= 0x80) ends the exchange: no PUBREL, the message is not sent again.
//!
//! *Boundary:* bytes from the network are never `unwrap`ped; a packet that does not decode
//! closes only its own connection (MQTT 5: with a DISCONNECT or CONNACK reason code first).
//!
//! MQTT 5 extras: shared subscriptions (`$share/<group>/<filter>`, round robin over the
//! connected members), topic aliases both ways (64 each), Receive Maximum enforced (0x93),
//! Message Expiry Interval (stored as header `mqtt.expiry`; expired messages are not sent,
//! the rest carry their remaining lifetime), Subscription Identifiers, Session Expiry
//! Interval (capped by `mqtt.session_expiry_max_secs`; CONNACK tells the capped value), No
//! Local (the publisher's client id is stored as header `mqtt.client`), Retain As Published
//! and Retain Handling, Will Delay Interval (a delayed will waits in a task that a reconnect
//! of the same client id aborts; it goes at session end if that is earlier), Server Keep
//! Alive (`mqtt.keep_alive_max_secs`), Response Topic / Correlation Data / Content Type /
//! Payload Format (headers `mqtt.response_topic`, `mqtt.correlation`, `mqtt.content_type`,
//! `mqtt.utf8`), `$SYS/broker/...` statistics (`sys`).
//!
//! Listeners (`transport`): TCP, TLS (`mqtt.tls_*`), WebSocket (`mqtt.ws_listen`, `/mqtt`)
//! and QUIC (`quic`: `mqtt.quic_listen`, UDP, ALPN `mqtt`, one stream per connection);
//! each has its own `mqtt.connections_max` bound. Retained messages: `retained`
//! (`<data_dir>/mqtt/retained.log`), PUBACK after their fsync.
//!
//! Not in this version: shared subscriptions for offline members (a shared subscription is
//! served live by the router, never from cursors), No Local for retained messages sent at
//! subscribe time. `$SYS` topics are retained in memory and routed live, not stored in a
//! partition.

pub mod auth;
pub mod clients;
pub mod cluster_sessions;
pub mod connection;
pub mod ingest;
pub mod mapping;
pub mod quic;
pub mod replay;
pub mod retained;
pub mod router;
pub mod session;
pub mod store;
pub mod sys;
pub mod tailer;
pub mod topic;
pub mod transport;
pub mod wire;

use crate::node::Node;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use strata_types::PartitionKey;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// MQTT's largest packet: a remaining length of at most 268,435,455 bytes.
pub const PACKET_BYTES_LIMIT: u32 = 268_435_455;
/// Router input queue (connections and tailers wait when it is full).
pub const ROUTER_QUEUE_MAX: usize = 8192;
/// Deliveries queued for one connection (beyond: dropped and counted in
/// `strata_mqtt_dropped_total`).
pub const CONN_QUEUE_MAX: usize = 1024;
/// Batches queued for one connection (the router hands over a connection's share of each
/// routed batch as one); beyond: dropped and counted like the above.
pub const CONN_QUEUE_BATCHES_MAX: usize = 64;
/// Messages the router takes from a tailer at once (one routed batch): a connection gets at
/// most this many deliveries in one batch, a quarter of its queue, so bursts fit.
pub const ROUTE_BATCH_MAX: usize = 256;
/// Outbound QoS 1/2 messages unacknowledged per connection (capped further by the client's
/// Receive Maximum).
pub const OUTBOUND_INFLIGHT_MAX: u16 = 128;
/// Inbound QoS 1/2 publishes not yet answered per connection; we advertise it as our Receive
/// Maximum and stop reading the socket while at it.
pub const INBOUND_INFLIGHT_MAX: u16 = 256;
/// Topic aliases per connection and direction (the Topic Alias Maximum we announce, and the
/// most we use of the client's).
pub const TOPIC_ALIASES_MAX: u16 = 64;
/// A connection must send CONNECT within this time.
pub const CONNECT_TIMEOUT_SECS: u64 = 10;

/// One MQTT application message, as stored and routed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 user properties (Kafka headers).
    pub user_properties: Vec<(String, String)>,
    /// MQTT 5 Message Expiry Interval as published (seconds; header `mqtt.expiry`).
    pub expiry_secs: Option<u32>,
    /// When it expires (wall clock, ms): its store time plus `expiry_secs`. Set once stored;
    /// an expired message is not sent (MQTT 5 §3.3.2.3.3).
    pub expires_at_ms: Option<i64>,
    /// MQTT 5 Response Topic (header `mqtt.response_topic`).
    pub response_topic: Option<String>,
    /// MQTT 5 Correlation Data (header `mqtt.correlation`).
    pub correlation_data: Option<Bytes>,
    /// MQTT 5 Content Type (header `mqtt.content_type`).
    pub content_type: Option<String>,
    /// MQTT 5 Payload Format Indicator: `Some(true)` for UTF-8 (header `mqtt.utf8`).
    pub payload_utf8: Option<bool>,
    /// The client id that published it over MQTT (header `mqtt.client`), for No Local.
    pub publisher: Option<String>,
}

/// Where a stored message is: its partition and offset. Persistent sessions advance their
/// cursors by it when the client acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    pub key: PartitionKey,
    pub offset: i64,
}

/// A message on its way to one subscriber, at the QoS it gets there.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: u8,
    /// The RETAIN flag as sent: set for retained messages sent at subscribe time.
    pub retain: bool,
    /// Sent before (a persistent session's redelivery): the PUBLISH carries DUP.
    pub dup: bool,
    /// Set for deliveries read by a persistent session's cursors.
    pub origin: Option<Origin>,
    /// MQTT 5 Subscription Identifiers of the subscriptions it matched.
    pub sub_ids: Vec<u32>,
}

/// Starts the router, the tailers and the listeners. Returns once they are spawned; the
/// returned task ends after shutdown, once the session and retained logs are written (a clean
/// stop loses no session progress).
pub fn start(
    node: Arc<Node>,
    listener: TcpListener,
    more: transport::Listeners,
    shutdown: watch::Receiver<bool>,
) -> Mqtt {
    let cfg = node.config.file.mqtt.clone();
    let mapping = mapping::Mapping::new(cfg.kafka_mapping.clone(), cfg.default_kafka_topic.clone());
    let (router_tx, router_rx) = mpsc::channel(ROUTER_QUEUE_MAX);
    node.mqtt_clients.set_router(router_tx.clone()); // the admin API's client list
                                                     // Persistent sessions come back from the session log; without it they live in memory.
    let sessions_dir = node.config.data_dir.join("mqtt");
    let (core, store_writer) = match store::SessionStore::open(&sessions_dir) {
        Ok((st, records)) => {
            tracing::info!(sessions = records.len(), dir = %sessions_dir.display(), "mqtt persistent sessions loaded");
            let now = crate::log::sequencer::now_ms();
            (
                router::RouterCore::from_records(records, now),
                Some(store::spawn_writer(st)),
            )
        }
        Err(err) => {
            tracing::error!(%err, dir = %sessions_dir.display(), "mqtt session log not opened; persistent sessions will not survive a restart");
            (router::RouterCore::default(), None)
        }
    };
    // Retained messages come back from the retained log.
    let mut core = core;
    let retained_writer = match retained::RetainedStore::open(&sessions_dir) {
        Ok((st, msgs)) => {
            tracing::info!(retained = msgs.len(), "mqtt retained messages loaded");
            for m in msgs {
                core.retain(Arc::new(m));
            }
            Some(retained::spawn_writer(st))
        }
        Err(err) => {
            tracing::error!(%err, dir = %sessions_dir.display(), "mqtt retained log not opened; retained messages will not survive a restart");
            None
        }
    };
    let (store, store_thread) = store_writer.map_or((None, None), |(tx, h)| (Some(tx), h));
    let (retained_log, retained_thread) =
        retained_writer.map_or((None, None), |(tx, h)| (Some(tx), h));
    tokio::spawn(router::run(
        router_rx,
        core,
        store,
        retained_log,
        node.metrics.clone(),
    ));
    let tailers = Arc::new(tailer::Tailers::new(
        node.clone(),
        mapping.kafka_topics(),
        router_tx.clone(),
        shutdown.clone(),
    ));
    // Metadata changes from here on are followed (`follow_metadata`, once `shared` exists).
    let meta_changes = node.meta.subscribe();
    tailers.sync();
    // Validated when the configuration was loaded (`config::validate_mqtt`).
    let auth = match auth::Auth::from_config(&cfg) {
        Ok(a) => a,
        Err(e) => panic!(
            "mqtt config passed validation but `{}`: {}",
            e.key, e.message
        ),
    };
    let shared = Arc::new(connection::Shared {
        auth: watch::Sender::new(Arc::new(auth)),
        ingest: ingest::Ingest {
            node: node.clone(),
            mapping,
            tailers,
            forwarders: Default::default(),
        },
        router: router_tx,
        node,
        next_conn_id: Default::default(),
        wills: Default::default(),
        received: Default::default(),
        sent: Default::default(),
    });
    tokio::spawn(follow_metadata(
        shared.clone(),
        meta_changes,
        shutdown.clone(),
    ));
    // Other brokers take sessions from here (`TakeSession`); snapshots for dead-broker takeover.
    shared
        .node
        .mqtt_sessions
        .set(shared.router.clone(), &shared);
    if cfg.session_snapshot_interval_ms > 0 {
        tokio::spawn(cluster_sessions::run_snapshots(
            shared.node.clone(),
            shared.router.clone(),
            Duration::from_millis(cfg.session_snapshot_interval_ms),
            shutdown.clone(),
        ));
    }
    if cfg.sys_interval_secs > 0 {
        tokio::spawn(sys::run(
            shared.clone(),
            Duration::from_secs(cfg.sys_interval_secs),
            shutdown.clone(),
        ));
    }
    if let Some(ws) = more.ws {
        tokio::spawn(transport::serve_ws(shared.clone(), ws, shutdown.clone()));
    }
    if let Some((tls, acceptor)) = more.tls {
        tokio::spawn(transport::serve_tls(
            shared.clone(),
            tls,
            acceptor,
            shutdown.clone(),
        ));
    }
    if let Some(endpoint) = more.quic {
        tokio::spawn(quic::serve(shared.clone(), endpoint, shutdown.clone()));
    }
    tokio::spawn(connection::serve(
        shared.clone(),
        listener,
        shutdown.clone(),
    ));
    Mqtt {
        shared: shared.clone(),
        stopped: tokio::spawn(stop(shared, shutdown, [store_thread, retained_thread])),
    }
}

/// The running MQTT service.
pub struct Mqtt {
    shared: Arc<connection::Shared>,
    /// Ends once the connections are closed and the session and retained logs written.
    pub stopped: tokio::task::JoinHandle<()>,
}

impl Mqtt {
    /// Puts a reloaded configuration's credentials, ACLs and publish rate limits in force
    /// (`config::RELOADABLE`): open connections take the new rate limits, drop the
    /// subscriptions the new ACL denies, and close when their user is gone.
    pub fn reload(&self, m: &crate::config::MqttSection) -> Result<(), auth::BadKey> {
        self.shared.replace_auth(auth::Auth::from_config(m)?);
        Ok(())
    }
}

/// Follows metadata until shutdown, then stops the tailers:
/// - topics created (over Kafka or MQTT) and leases moved: the tailers follow them;
/// - SCRAM users deleted (`strata user delete`, the admin API, a Kafka
///   `AlterUserScramCredentials`): their connections end without waiting for a reload — the
///   settings watch fires with the settings unchanged and every connection re-checks
///   `Auth::admits` (DISCONNECT 0x87 for the removed user's connections).
async fn follow_metadata(
    shared: Arc<connection::Shared>,
    mut changes: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let node = shared.node.clone();
    let tailers = &shared.ingest.tailers;
    let names = |state: &strata_meta::MetaState| -> Vec<String> {
        state.scram_user_names().map(str::to_owned).collect()
    };
    let mut known = names(&node.meta.read());
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = stop.changed() => break,
        }
        node.refresh_topics();
        tailers.sync();
        let removed = {
            let state = node.meta.read();
            if known
                .iter()
                .map(String::as_str)
                .eq(state.scram_user_names())
            {
                continue; // most changes are not about users: no allocation for them
            }
            let removed = known.iter().any(|u| !state.is_scram_user(u));
            known = names(&state);
            removed
        };
        if removed {
            shared.auth.send_modify(|_| {});
        }
    }
    tailers.stop();
}

/// After shutdown: waits (a bounded time) for the connections to end — each hands its final
/// cursors to the router — then has the router write the session log and joins the writers.
async fn stop(
    shared: Arc<connection::Shared>,
    mut shutdown: watch::Receiver<bool>,
    writers: [Option<std::thread::JoinHandle<()>>; 2],
) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    let open = &shared.node.metrics.mqtt.connections_open;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while open.load(std::sync::atomic::Ordering::Relaxed) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The last snapshot, with the cursors the connections just handed in.
    if shared.node.config.file.mqtt.session_snapshot_interval_ms > 0 {
        cluster_sessions::upload(&shared.node, &shared.router, true).await;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    if shared
        .router
        .send(router::RouterMsg::Shutdown(tx))
        .await
        .is_ok()
    {
        let _ = rx.await;
    }
    for h in writers.into_iter().flatten() {
        let _ = tokio::task::spawn_blocking(move || h.join()).await;
    }
    tracing::info!("mqtt session and retained logs written");
}
