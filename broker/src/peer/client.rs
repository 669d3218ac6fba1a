//! The calling side of the Peer service: a pool of one tonic `Channel` per peer address
//! (connected lazily, reconnecting by itself; HTTP/2 multiplexes, so calls from every task
//! pipeline on it), the leader lookup in the local metadata view, and the retry policy.
//!
//! Retry: a call that meets NOT_LEADER_OR_FOLLOWER, an unknown or dead leader, or an
//! unreachable peer waits (until metadata changes, at most the backoff: 50 ms doubling to 1 s)
//! and resolves the leader again, until [`FORWARD_WAIT_MS`] since the first attempt; then it
//! fails with the last reason. A failover (lease expiry, stream recovery) fits in that time
//! with the usual `meta.broker_lease_ms`.

use super::pb;
use super::pb::peer_client::PeerClient;
use crate::node::Node;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;
use strata_meta::MetaState;
use strata_types::{PartitionKey, TopicId};
use tonic::transport::{Channel, Endpoint};

/// Longest a forwarded call keeps retrying.
pub const FORWARD_WAIT_MS: u64 = 20_000;
/// One call's own timeout (a leader that stopped answering).
pub const CALL_TIMEOUT_MS: u64 = 5_000;
const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// Where a partition's writes go, as the local metadata view says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leader {
    /// This broker (its registry may still wait for the lease to be writable).
    Local,
    /// Another live broker, at its advertised peer address.
    Remote { node_id: u64, addr: String },
    /// No live leader, or one that advertised no peer address (yet): wait for metadata.
    Unknown,
}

/// The leader of `topic`/`partition` in `state`, seen from broker `self_id`.
pub fn resolve(state: &MetaState, self_id: u64, topic: TopicId, partition: u32) -> Leader {
    let cluster = state.cluster();
    let Some(leader) = cluster.live_leader(topic, partition) else {
        return Leader::Unknown;
    };
    if leader == self_id {
        return Leader::Local;
    }
    match cluster.broker(leader).and_then(|b| b.peer_addr.clone()) {
        Some(addr) => Leader::Remote {
            node_id: leader,
            addr,
        },
        None => Leader::Unknown,
    }
}

/// The wait before retry number `attempt` (0-based): 50 ms doubling, at most 1 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(5)).min(1_000))
}

/// Whether another attempt fits: `elapsed` since the first plus the next wait stays within
/// `wait`.
pub fn may_retry(elapsed: Duration, attempt: u32, wait: Duration) -> bool {
    elapsed + backoff(attempt) < wait
}

/// Why a forwarded call failed for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The leader answered with a Kafka error code that is not worth retrying.
    #[error("the leader refused it (Kafka error {code}): {message}")]
    Refused { code: i32, message: String },
    /// No leader took it within the retry time.
    #[error("no leader took it within {waited_ms} ms: {last}")]
    Unavailable { waited_ms: u64, last: String },
    /// This broker leads the partition now: use the local path.
    #[error("this broker leads the partition now")]
    Local,
}

/// The pool of channels to other brokers, and what the MQTT tailers learned about remote
/// partitions' high watermarks (so persistent sessions skip partitions without news).
#[derive(Default)]
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    remote_hw: Mutex<HashMap<PartitionKey, i64>>,
}

impl Peers {
    /// A client of the peer at `addr` (`host:port`), sharing one channel per address.
    pub fn client(&self, addr: &str) -> Result<PeerClient<Channel>, String> {
        let mut channels = self.channels.lock();
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| format!("bad peer address `{addr}`: {e}"))?
                    .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5));
                let c = endpoint.connect_lazy();
                channels.insert(addr.to_owned(), c.clone());
                c
            }
        };
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024))
    }

    /// Records a remote partition's high watermark (from a Tail event).
    pub fn note_hw(&self, key: PartitionKey, hw: i64) {
        let mut m = self.remote_hw.lock();
        let e = m.entry(key).or_insert(hw);
        *e = (*e).max(hw);
    }

    /// The last high watermark a Tail reported for a remote partition.
    pub fn hw(&self, key: &PartitionKey) -> Option<i64> {
        self.remote_hw.lock().get(key).copied()
    }
}

/// Waits before retry `attempt`: until metadata changes, at most the backoff.
async fn wait_retry(node: &Node, attempt: u32) {
    let mut changes = node.meta.subscribe();
    changes.borrow_and_update();
    let _ = tokio::time::timeout(backoff(attempt), changes.changed()).await;
}

/// Calls `call` on the partition's leader until it answers something other than "not the
/// leader here" or the retry time runs out. `call` gets the client and returns `Ok(Some(v))`
/// for an answer, `Ok(None)` for NOT_LEADER_OR_FOLLOWER, `Err` for a refusal to pass on.
pub async fn with_leader<T, F, Fut>(
    node: &Node,
    key: PartitionKey,
    wait: Duration,
    mut call: F,
) -> Result<T, PeerError>
where
    F: FnMut(PeerClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, CallError>>,
{
    let started = tokio::time::Instant::now();
    let mut attempt = 0u32;
    let mut last: String;
    loop {
        let leader = resolve(
            &node.meta.read(),
            node.config.node_id,
            key.topic,
            key.partition,
        );
        match leader {
            Leader::Local if node.registry.leads(&key) => return Err(PeerError::Local),
            Leader::Local => last = "the lease here is not writable yet".into(),
            Leader::Unknown => last = "no live leader with a peer address".into(),
            Leader::Remote { node_id, addr } => match node.peers.client(&addr) {
                Err(e) => last = e,
                Ok(client) => {
                    let timeout = Duration::from_millis(CALL_TIMEOUT_MS);
                    match tokio::time::timeout(timeout, call(client)).await {
                        Ok(Ok(Some(v))) => return Ok(v),
                        Ok(Ok(None)) => last = format!("broker {node_id} is not the leader"),
                        Ok(Err(CallError::Refused { code, message })) => {
                            return Err(PeerError::Refused { code, message })
                        }
                        Ok(Err(CallError::Transport(e))) => {
                            last = format!("broker {node_id} at {addr}: {e}")
                        }
                        Err(_) => {
                            last = format!("broker {node_id} at {addr} did not answer in time")
                        }
                    }
                }
            },
        }
        if !may_retry(started.elapsed(), attempt, wait) {
            return Err(PeerError::Unavailable {
                waited_ms: started.elapsed().as_millis() as u64,
                last,
            });
        }
        tracing::debug!(partition = ?key, attempt, %last, "peer call retried");
        wait_retry(node, attempt).await;
        attempt += 1;
    }
}

/// How one attempt of a peer call failed.
#[derive(Debug)]
pub enum CallError {
    /// A final Kafka error from the leader.
    Refused { code: i32, message: String },
    /// The call did not reach the leader or broke (retried).
    Transport(String),
}

/// Appends `records` (whole batches) to the partition on its leader; the base offset once
/// durable there.
pub async fn append(
    node: &Node,
    key: PartitionKey,
    topic: &str,
    records: Bytes,
) -> Result<i64, PeerError> {
    let wait = Duration::from_millis(FORWARD_WAIT_MS);
    with_leader(node, key, wait, |mut client| {
        let req = pb::AppendRequest {
            topic: topic.to_owned(),
            partition: key.partition,
            records: records.clone(),
        };
        async move {
            match client.append(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    match r.error_code {
                        0 => Ok(Some(r.base_offset)),
                        // Not the leader, or the partition unknown there yet: ask again.
                        super::NOT_LEADER | super::UNKNOWN_PARTITION => Ok(None),
                        code => Err(CallError::Refused {
                            code,
                            message: r.message,
                        }),
                    }
                }
                Err(status) => Err(CallError::Transport(status.to_string())),
            }
        }
    })
    .await
}

/// What a remote Read answered.
#[derive(Debug, Default)]
pub struct ReadResult {
    pub chunks: Vec<Bytes>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// The offset was outside the log (OFFSET_OUT_OF_RANGE).
    pub out_of_range: bool,
}

/// Reads whole batches from `offset` on the partition's leader (a negative offset: only the
/// offsets). One attempt (a persistent session retries at its next pump; its connection must
/// not wait out a failover here).
pub async fn read(
    node: &Node,
    key: PartitionKey,
    topic: &str,
    offset: i64,
    max_bytes: usize,
) -> Result<ReadResult, PeerError> {
    with_leader(node, key, Duration::ZERO, |mut client| {
        let req = pb::ReadRequest {
            topic: topic.to_owned(),
            partition: key.partition,
            offset,
            max_bytes: max_bytes as u32,
        };
        async move {
            match client.read(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let result = ReadResult {
                        chunks: r.chunks,
                        high_watermark: r.high_watermark,
                        log_start_offset: r.log_start_offset,
                        out_of_range: r.error_code == super::OUT_OF_RANGE,
                    };
                    match r.error_code {
                        0 | super::OUT_OF_RANGE => Ok(Some(result)),
                        super::NOT_LEADER | super::UNKNOWN_PARTITION => Ok(None),
                        code => Err(CallError::Refused {
                            code,
                            message: r.message,
                        }),
                    }
                }
                Err(status) => Err(CallError::Transport(status.to_string())),
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_meta::{ClusterCommand, Command};
    use strata_types::TopicName;

    fn register(m: &mut MetaState, node: u64, peer: Option<&str>, now_ms: i64) {
        m.apply(&Command::Cluster(ClusterCommand::RegisterBroker {
            node_id: node,
            kafka_addr: format!("127.0.0.1:{}", 9000 + node),
            rack: None,
            lease_ms: 1000,
            now_ms,
            cluster_id: None,
            auth_secret: None,
            peer_addr: peer.map(str::to_owned),
        }));
    }

    #[test]
    fn leader_resolution_follows_the_lease_and_the_peer_address() {
        let mut m = MetaState::default();
        let id = TopicId::random();
        // No topic yet: nobody leads.
        assert_eq!(resolve(&m, 1, id, 0), Leader::Unknown);
        register(&mut m, 1, Some("127.0.0.1:1228"), 0);
        register(&mut m, 2, None, 0);
        m.apply(&Command::CreateTopic {
            name: TopicName::new("t".to_string()).unwrap(),
            id,
            partitions: 4,
            configs: Default::default(),
            created_ms: 0,
        });
        let mut seen = std::collections::BTreeSet::new();
        for p in 0..4 {
            let leader = m.cluster().live_leader(id, p).unwrap();
            seen.insert(leader);
            let r = resolve(&m, 2, id, p);
            match leader {
                // Broker 2 sees broker 1's partitions at broker 1's peer address...
                1 => assert_eq!(
                    r,
                    Leader::Remote {
                        node_id: 1,
                        addr: "127.0.0.1:1228".into()
                    }
                ),
                // ...and its own as local.
                _ => assert_eq!(r, Leader::Local),
            }
            // Broker 1 cannot reach broker 2, which advertised no peer address.
            let from_1 = resolve(&m, 1, id, p);
            if leader == 2 {
                assert_eq!(from_1, Leader::Unknown);
            } else {
                assert_eq!(from_1, Leader::Local);
            }
        }
        assert_eq!(seen.len(), 2, "both brokers lead some partitions");
        // Unknown partition.
        assert_eq!(resolve(&m, 1, id, 9), Leader::Unknown);
    }

    #[test]
    fn retries_back_off_and_stop_within_the_wait() {
        assert_eq!(backoff(0), Duration::from_millis(50));
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(5), Duration::from_millis(1000));
        assert_eq!(backoff(40), Duration::from_millis(1000));
        let wait = Duration::from_millis(FORWARD_WAIT_MS);
        assert!(may_retry(Duration::ZERO, 0, wait));
        assert!(may_retry(
            Duration::from_millis(FORWARD_WAIT_MS - 1_001),
            9,
            wait
        ));
        assert!(!may_retry(
            Duration::from_millis(FORWARD_WAIT_MS - 1_000),
            9,
            wait
        ));
        assert!(!may_retry(wait, 0, wait));
        // A single-attempt call (reads) never retries.
        assert!(!may_retry(Duration::ZERO, 0, Duration::ZERO));
        // The total of the waits before giving up stays within the bound.
        let mut elapsed = Duration::ZERO;
        let mut attempt = 0;
        while may_retry(elapsed, attempt, wait) {
            elapsed += backoff(attempt);
            attempt += 1;
        }
        assert!(elapsed <= Duration::from_millis(FORWARD_WAIT_MS));
        assert!(attempt > 10);
    }
}
