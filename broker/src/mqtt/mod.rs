//! MQTT 3.1.1 and 5.0 on the shared storage kernel.
//!
//! ```text
//! MQTT client ──TCP──▶ connection (wire: rmqtt-codec ↔ Inbound/Outbound; session: QoS state)
//!                        │ PUBLISH → ingest: mapping rule → Kafka topic, murmur2(topic) → partition,
//!                        │           one-record batch → sequencer (same queue as Kafka Produce)
//!                        │           PUBACK / PUBREC once the WAL made it durable
//!                        ▼
//!                      partition tail ──hw notification──▶ tailer ──▶ router ──▶ connections
//! Kafka producer ───────▲ (same partitions)
//! ```
//!
//! - `wire` — the codec boundary (the only file naming `rmqtt_codec` types) and the frozen
//!   table of reason codes.
//! - `connection` — the listener and one task per connection (a closed event loop: socket
//!   reads, deliveries, durable acks, keep alive, takeover).
//! - `session` — per-connection QoS state as a value (packet ids, in-flight windows).
//! - `router` — sessions, subscriptions and retained messages, owned by one task.
//! - `tailer` — follows the MQTT-mapped partitions and feeds the router: delivery is driven by
//!   stored records, whichever protocol wrote them.
//! - `ingest` — publish → Kafka record → sequencer; `mapping` — rules, partitioner, record layout.
//! - `topic` — topic names and filters.
//!
//! *Boundary:* bytes from the network are never `unwrap`ped; a packet that does not decode
//! closes only its own connection (MQTT 5: with a DISCONNECT or CONNACK reason code first).
//!
//! Not in this version: TLS / WebSocket / QUIC listeners, sessions that survive a restart,
//! offline queues, shared subscriptions, topic aliases, auth and ACLs, `$SYS`.

pub mod connection;
pub mod ingest;
pub mod mapping;
pub mod router;
pub mod session;
pub mod tailer;
pub mod topic;
pub mod wire;

use crate::node::Node;
use bytes::Bytes;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// MQTT's largest packet: a remaining length of at most 268,435,455 bytes.
pub const PACKET_BYTES_LIMIT: u32 = 268_435_455;
/// Router input queue (connections and tailers wait when it is full).
pub const ROUTER_QUEUE_MAX: usize = 8192;
/// Deliveries queued for one connection (beyond: dropped and counted).
pub const CONN_QUEUE_MAX: usize = 1024;
/// Outbound QoS 1/2 messages unacknowledged per connection (capped further by the client's
/// Receive Maximum).
pub const OUTBOUND_INFLIGHT_MAX: u16 = 128;
/// Inbound QoS 1/2 publishes not yet answered per connection; we advertise it as our Receive
/// Maximum and stop reading the socket while at it.
pub const INBOUND_INFLIGHT_MAX: u16 = 256;
/// A connection must send CONNECT within this time.
pub const CONNECT_TIMEOUT_SECS: u64 = 10;

/// One MQTT application message, as stored and routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 user properties (Kafka headers).
    pub user_properties: Vec<(String, String)>,
}

/// A message on its way to one subscriber, at the QoS it gets there.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: u8,
    /// The RETAIN flag as sent: set for retained messages sent at subscribe time.
    pub retain: bool,
}

/// Starts the router, the tailers and the listener. Returns once they are spawned.
pub fn start(node: Arc<Node>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let cfg = node.config.file.mqtt.clone();
    let mapping = mapping::Mapping::new(cfg.kafka_mapping.clone(), cfg.default_kafka_topic.clone());
    let (router_tx, router_rx) = mpsc::channel(ROUTER_QUEUE_MAX);
    tokio::spawn(router::run(router_rx));
    let tailers = Arc::new(tailer::Tailers::new(
        node.clone(),
        mapping.kafka_topics(),
        router_tx.clone(),
        shutdown.clone(),
    ));
    tailers.sync();
    // Follow metadata: topics created (over Kafka or MQTT) and leases moved.
    {
        let tailers = tailers.clone();
        let node = node.clone();
        let mut changes = node.meta.subscribe();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() { break; }
                        node.refresh_topics();
                        tailers.sync();
                    }
                    _ = stop.changed() => break,
                }
            }
            tailers.stop();
        });
    }
    let shared = Arc::new(connection::Shared {
        ingest: ingest::Ingest {
            node: node.clone(),
            mapping,
            tailers,
        },
        router: router_tx,
        node,
        next_conn_id: Default::default(),
    });
    tokio::spawn(connection::serve(shared, listener, shutdown));
}
