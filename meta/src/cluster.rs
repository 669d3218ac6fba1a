//! Cluster membership, partition leases and WAL stream ownership: the part of the pure metadata
//! state that says which broker serves what (DESIGN.md §2 steps 1, 3 and 6).
//!
//! # Model
//!
//! - A **broker** registers with its advertised Kafka address and a lease length, then
//!   heartbeats. Time comes from the commands (`now_ms` as the proposer saw it), never from a
//!   clock, so every replica applies the same log to the same state.
//! - Every broker writes one **WAL stream**, whose id is the broker's node id. A stream has an
//!   *epoch* and a *holder*: the node allowed to write it under that epoch. The epoch grows
//!   every time the holder changes or re-takes the stream (a restart), so a new holder can seal
//!   the stream's replicas against every older one. `settled_lsn` is how far the stream is in
//!   object storage: a new holder recovers from `settled_lsn + 1`.
//! - Every partition has a **lease**: the broker that leads it and a Kafka leader epoch that
//!   grows with every move. A lease may be *pending* on a stream: the partition's
//!   acknowledged-but-not-uploaded records are in that stream's tail, and nobody may append to
//!   the partition until the stream's holder has uploaded the tail and released the stream.
//!
//! # Rules
//!
//! - `RegisterBroker`: the broker is alive from `now_ms`. If its own stream is free (new, or
//!   released), or held by itself (a restart: the old incarnation is fenced by the new epoch),
//!   it takes it with epoch + 1 and the answer carries that epoch and the stream's settled LSN.
//!   If another broker holds it (recovering it after this broker was expired), the answer
//!   carries no epoch: try again once the holder released it. Partitions without a leader get
//!   one among the live brokers.
//! - `Heartbeat`: renews the lease of an alive broker; refused for a broker that was expired
//!   (it has lost its partitions and must register again).
//! - `ExpireBrokers`: every alive broker other than the proposer whose last heartbeat is at
//!   least its lease length before `now_ms` is dead. The streams it held go, with epoch + 1, to
//!   the least loaded live broker, which also gets every partition it led (epoch + 1, pending on
//!   the dead broker's stream). With no live broker left, nothing moves.
//! - `DeregisterBroker`: a clean stop; the broker is expired at once, by the same rule.
//! - `WalHeartbeat`: a node serving the `wal` role (with or without the broker role) registers
//!   or renews its WAL address. WAL nodes hold no leases and nothing moves when one goes
//!   silent: a reader decides liveness with its own clock ([`WalNodeInfo::alive_at`]), and a
//!   stream's holder uses it to pick a spare replica.
//! - `ReleaseStream`: the holder of `(stream, epoch)` uploaded the recovered tail up to
//!   `settled_lsn`; the stream becomes free and the leases pending on it become writable.
//! - Commits of objects carry a [`StreamProgress`]; a commit under an epoch that is not the
//!   stream's current one, or by a stream that has no holder, is refused (fencing), and an
//!   accepted one moves `settled_lsn` forward.
//!
//! Assignment is deterministic: the live broker with the fewest led partitions, ties to the
//! lowest node id. A *draining* broker is not a candidate while any other live broker is.
//!
//! # Planned moves
//!
//! A planned move hands a partition from one live broker to another without a stream
//! recovery: the lease gets a `target`, the leader stops appending, uploads and commits what it
//! acknowledged, and proposes `CompleteMove`. History is never copied; only the leader's
//! un-uploaded tail goes to object storage, as every upload does.
//!
//! - `DrainBroker { draining: true }`: the broker gets no new partitions (new topics, expiry,
//!   rebalancing pass it over) and each partition it leads gets a target. `false` undoes it
//!   and clears the targets of its partitions (a move already under way is then refused at
//!   `CompleteMove` and the leader keeps the partition). A broker that registers after it was
//!   dead starts undrained; a re-registration of a live broker keeps the flag.
//! - `Rebalance { to }`: a broker joined; partitions of the most loaded eligible brokers get
//!   `to` as their target until `to` has its fair share (the floor of the average), taking
//!   from the most loaded broker each time, its first movable partition in (topic id,
//!   partition) order.
//! - `CompleteMove { topic, partition, from, epoch, end_offset }`: proposed by the leader
//!   `from` once nothing more can be appended under `epoch` and everything it acknowledged is
//!   committed to the index. Accepted only if the lease is still `from`'s at `epoch`, not
//!   pending, has a target, and the object index ends exactly at `end_offset` (the state
//!   machine checks it against the index): then the target leads at epoch + 1. Since the index
//!   already holds every record of the old epoch, the new leader starts at the index's end and
//!   a later commit of the old leader's stream has nothing of this partition to add.
//!   The command also carries the partition's idempotent producers at `end_offset` (`producers`,
//!   absent in commands from older brokers): they are validated (a bad handover is refused with
//!   `InvalidHandover`) and kept in the lease (`handover`) until the next move, so the new leader
//!   — or whoever takes the partition over if it dies before writing — answers retries of
//!   batches written before the move as duplicates and gaps as out of order.
//!
//! Targets are kept valid after every membership change: a target is always an alive,
//! non-draining broker other than the leader, on a lease whose leader is alive and that is not
//! pending; expiry and deregistration clear what no longer holds, and a draining broker's
//! partitions get (new) targets as soon as an eligible broker exists.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use strata_types::sequence::{HandedProducer, Handover};
use strata_types::TopicId;

/// Node ids of brokers, meta nodes and WAL streams share one space.
pub type NodeId = u64;

/// Longest lease a broker may ask for.
pub const LEASE_MS_MAX: u64 = 10 * 60 * 1000;
/// Longest advertised address accepted.
pub const ADDR_BYTES_MAX: usize = 512;

/// What metadata knows about one broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub node_id: NodeId,
    /// Advertised Kafka listener, `host:port`.
    pub kafka_addr: String,
    pub rack: Option<String>,
    pub lease_ms: u64,
    pub registered_ms: i64,
    pub heartbeat_ms: i64,
    pub alive: bool,
    /// Drained: gets no new partitions; the ones it leads move away.
    #[serde(default)]
    pub draining: bool,
    /// Advertised broker-to-broker gRPC address (`host:port`, the `strata.peer.v1.Peer`
    /// service); `None` from a broker that registered before it was recorded.
    #[serde(default)]
    pub peer_addr: Option<String>,
}

/// What metadata knows about one node serving the `wal` role (`WalHeartbeat`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalNodeInfo {
    pub node_id: NodeId,
    /// Where brokers reach its WAL replica server, `host:port` (as in `wal.peers`).
    pub wal_addr: String,
    /// Silent this long after `heartbeat_ms`, it counts as down.
    pub lease_ms: u64,
    pub registered_ms: i64,
    pub heartbeat_ms: i64,
}

impl WalNodeInfo {
    /// Whether its last heartbeat is less than its lease before `now_ms`.
    pub fn alive_at(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.heartbeat_ms) < self.lease_ms as i64
    }
}

/// One broker's WAL stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub epoch: u64,
    /// The node allowed to write (or recover) the stream under `epoch`; `None` once released.
    pub holder: Option<NodeId>,
    /// Every entry up to here is in object storage and committed to the index.
    pub settled_lsn: u64,
    /// The WAL replicas (`host:port`) the stream is on, in replica-id order, once a holder
    /// replaced one (`SetStreamReplicas`); empty: the configured default set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
}

/// Who leads one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLease {
    pub leader: Option<NodeId>,
    /// Kafka's leader epoch: grows with every move.
    pub epoch: i32,
    /// Not writable until this stream is released (its tail holds this partition's records).
    pub pending_stream: Option<NodeId>,
    /// A planned move to this broker is under way (see the module docs).
    #[serde(default)]
    pub target: Option<NodeId>,
    /// The idempotent producers' state the last planned move handed over (`CompleteMove`):
    /// whoever opens the partition's log at `end_offset` adopts it. Replaced by the next move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<Handover>,
}

/// Carried by an object commit: the stream (and epoch) whose entries the object holds, and how
/// far that stream is uploaded once it is committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamProgress {
    pub stream: NodeId,
    pub epoch: u64,
    pub settled_lsn: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterCommand {
    RegisterBroker {
        node_id: NodeId,
        kafka_addr: String,
        rack: Option<String>,
        lease_ms: u64,
        now_ms: i64,
        /// The cluster id this broker would use; the first one registered becomes the
        /// cluster's, so every broker tells clients the same.
        #[serde(default)]
        cluster_id: Option<String>,
        /// A random secret this broker would use to key the decoy SCRAM credentials of unknown
        /// users; the first one registered becomes the cluster's, so an unknown user gets the
        /// same salt from every broker and across restarts (a changing salt would tell a prober
        /// that the user does not exist).
        #[serde(default)]
        auth_secret: Option<String>,
        /// Advertised broker-to-broker gRPC address (`host:port`).
        #[serde(default)]
        peer_addr: Option<String>,
    },
    Heartbeat {
        node_id: NodeId,
        now_ms: i64,
    },
    ExpireBrokers {
        /// The proposer, never expired by its own command.
        by: NodeId,
        now_ms: i64,
    },
    DeregisterBroker {
        node_id: NodeId,
        now_ms: i64,
    },
    /// A node serving the `wal` role registers (first time, or a changed address) or renews
    /// its liveness; one command for both, so a WAL node needs no state of its own.
    WalHeartbeat {
        node_id: NodeId,
        wal_addr: String,
        lease_ms: u64,
        now_ms: i64,
    },
    ReleaseStream {
        stream: NodeId,
        epoch: u64,
        settled_lsn: u64,
    },
    /// The holder of `(stream, epoch)` replaced a WAL replica: the stream is on `replicas` from
    /// now on (every later recovery reads them). Proposed only once the new replica holds
    /// every committed entry, so the new set alone is a complete copy of the stream's tail.
    SetStreamReplicas {
        stream: NodeId,
        epoch: u64,
        replicas: Vec<String>,
    },
    /// Starts (or, with `draining: false`, stops) draining a live broker.
    DrainBroker {
        node_id: NodeId,
        draining: bool,
    },
    /// Gives the joined broker `to` its fair share of partitions, as planned moves.
    Rebalance {
        to: NodeId,
    },
    /// The leader `from` finished a planned move: everything it acknowledged for the
    /// partition under `epoch` is in the index, which ends at `end_offset`. `producers`: the
    /// partition's idempotent producers at `end_offset`, for the new leader (`None` from a
    /// broker that did not send them).
    CompleteMove {
        topic: TopicId,
        partition: u32,
        from: NodeId,
        epoch: i32,
        end_offset: i64,
        #[serde(default)]
        producers: Option<Vec<HandedProducer>>,
    },
}

impl ClusterCommand {
    /// The partition a `CompleteMove` is about: the state machine passes its indexed end to
    /// [`ClusterState::apply_with_index`].
    pub fn moved_partition(&self) -> Option<(TopicId, u32)> {
        match self {
            ClusterCommand::CompleteMove {
                topic, partition, ..
            } => Some((*topic, *partition)),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterResult {
    Registered {
        /// The epoch this broker now writes its stream under; `None` while another broker
        /// recovers it.
        stream_epoch: Option<u64>,
        settled_lsn: u64,
    },
    HeartbeatAccepted,
    /// A `WalHeartbeat` was recorded.
    WalNodeRenewed,
    Expired {
        nodes: Vec<NodeId>,
    },
    StreamReleased,
    StreamReplicasSet,
    /// The broker's draining flag is set; `moves` partitions got a target.
    DrainSet {
        moves: u32,
    },
    /// `moves` partitions got the joined broker as their target.
    Rebalanced {
        moves: u32,
    },
    /// The target leads the partition now, at `epoch`.
    MoveCompleted {
        leader: NodeId,
        epoch: i32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClusterRejection {
    #[error("broker {node_id} is not registered or was expired; it must register again")]
    NotRegistered { node_id: NodeId },
    #[error("broker {node_id}: {reason}")]
    InvalidBroker { node_id: NodeId, reason: String },
    #[error("WAL node {node_id}: {reason}")]
    InvalidWalNode { node_id: NodeId, reason: String },
    #[error("stream {stream} is at epoch {current}, not {epoch}")]
    StaleStreamEpoch {
        stream: NodeId,
        epoch: u64,
        current: u64,
    },
    #[error("stream {stream} is not held by anyone")]
    StreamNotHeld { stream: NodeId },
    #[error("stream {stream} is unknown")]
    UnknownStream { stream: NodeId },
    #[error("stream {stream}: invalid replica set: {reason}")]
    InvalidReplicas { stream: NodeId, reason: String },
    #[error("partition {partition} of topic {topic}: no move from broker {from} at epoch {epoch} is under way ({reason})")]
    NoMove {
        topic: TopicId,
        partition: u32,
        from: NodeId,
        epoch: i32,
        reason: String,
    },
    #[error("partition {partition} of topic {topic}: invalid producer handover: {reason}")]
    InvalidHandover {
        topic: TopicId,
        partition: u32,
        reason: String,
    },
    #[error("partition {partition} of topic {topic}: the index ends at {indexed_end}, not at {end_offset}; upload the tail first")]
    MoveNotUploaded {
        topic: TopicId,
        partition: u32,
        indexed_end: i64,
        end_offset: i64,
    },
}

/// The cluster part of [`crate::MetaState`]. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The id Kafka clients see (Metadata's cluster id), fixed by the first registration.
    #[serde(default)]
    cluster_id: Option<String>,
    /// Keys the decoy credentials of unknown users, fixed by the first registration.
    #[serde(default)]
    auth_secret: Option<String>,
    brokers: BTreeMap<NodeId, BrokerInfo>,
    /// Nodes serving the `wal` role (absent from states written before they registered).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    wal_nodes: BTreeMap<NodeId, WalNodeInfo>,
    streams: BTreeMap<NodeId, StreamInfo>,
    /// Per topic, one lease per partition.
    leases: BTreeMap<TopicId, Vec<PartitionLease>>,
}

impl ClusterState {
    /// Applies a command; `indexed_end` is where the object index of
    /// [`ClusterCommand::moved_partition`] ends (only `CompleteMove` needs it).
    pub(crate) fn apply_with_index(
        &mut self,
        cmd: &ClusterCommand,
        indexed_end: Option<i64>,
    ) -> Result<ClusterResult, ClusterRejection> {
        let result = self.apply_inner(cmd, indexed_end);
        let renewal = matches!(
            cmd,
            ClusterCommand::Heartbeat { .. } | ClusterCommand::WalHeartbeat { .. }
        );
        if result.is_ok() && !renewal {
            self.plan_targets();
        }
        result
    }

    fn apply_inner(
        &mut self,
        cmd: &ClusterCommand,
        indexed_end: Option<i64>,
    ) -> Result<ClusterResult, ClusterRejection> {
        match cmd {
            ClusterCommand::RegisterBroker {
                node_id,
                kafka_addr,
                rack,
                lease_ms,
                now_ms,
                cluster_id,
                auth_secret,
                peer_addr,
            } => {
                let result =
                    self.register(*node_id, kafka_addr, rack, *lease_ms, *now_ms, peer_addr)?;
                if self.cluster_id.is_none() {
                    self.cluster_id = cluster_id.clone();
                }
                if self.auth_secret.is_none() {
                    self.auth_secret = auth_secret.clone();
                }
                Ok(result)
            }
            ClusterCommand::Heartbeat { node_id, now_ms } => match self.brokers.get_mut(node_id) {
                Some(b) if b.alive => {
                    b.heartbeat_ms = b.heartbeat_ms.max(*now_ms);
                    Ok(ClusterResult::HeartbeatAccepted)
                }
                _ => Err(ClusterRejection::NotRegistered { node_id: *node_id }),
            },
            ClusterCommand::WalHeartbeat {
                node_id,
                wal_addr,
                lease_ms,
                now_ms,
            } => {
                let invalid = |reason: &str| ClusterRejection::InvalidWalNode {
                    node_id: *node_id,
                    reason: reason.to_string(),
                };
                if *node_id == 0 {
                    return Err(invalid("node id 0 is reserved"));
                }
                if wal_addr.is_empty() || wal_addr.len() > ADDR_BYTES_MAX {
                    return Err(invalid("empty or too long WAL address"));
                }
                if *lease_ms == 0 || *lease_ms > LEASE_MS_MAX {
                    return Err(invalid("lease must be in 1..=600000 ms"));
                }
                let node = self
                    .wal_nodes
                    .entry(*node_id)
                    .or_insert_with(|| WalNodeInfo {
                        node_id: *node_id,
                        wal_addr: wal_addr.clone(),
                        lease_ms: *lease_ms,
                        registered_ms: *now_ms,
                        heartbeat_ms: *now_ms,
                    });
                if node.wal_addr != *wal_addr {
                    node.wal_addr = wal_addr.clone();
                    node.registered_ms = *now_ms;
                }
                node.lease_ms = *lease_ms;
                node.heartbeat_ms = node.heartbeat_ms.max(*now_ms);
                Ok(ClusterResult::WalNodeRenewed)
            }
            ClusterCommand::ExpireBrokers { by, now_ms } => {
                let stale: Vec<NodeId> = self
                    .brokers
                    .values()
                    .filter(|b| {
                        b.alive
                            && b.node_id != *by
                            && now_ms.saturating_sub(b.heartbeat_ms) >= b.lease_ms as i64
                    })
                    .map(|b| b.node_id)
                    .collect();
                for node in &stale {
                    self.expire(*node);
                }
                Ok(ClusterResult::Expired { nodes: stale })
            }
            ClusterCommand::DeregisterBroker { node_id, .. } => {
                if !self.brokers.get(node_id).is_some_and(|b| b.alive) {
                    return Err(ClusterRejection::NotRegistered { node_id: *node_id });
                }
                self.expire(*node_id);
                Ok(ClusterResult::Expired {
                    nodes: vec![*node_id],
                })
            }
            ClusterCommand::ReleaseStream {
                stream,
                epoch,
                settled_lsn,
            } => {
                self.check_stream(*stream, *epoch)?;
                let s = self.streams.get_mut(stream).expect("checked");
                s.settled_lsn = s.settled_lsn.max(*settled_lsn);
                s.holder = None;
                for lease in self.leases.values_mut().flatten() {
                    if lease.pending_stream == Some(*stream) {
                        lease.pending_stream = None;
                    }
                }
                Ok(ClusterResult::StreamReleased)
            }
            ClusterCommand::SetStreamReplicas {
                stream,
                epoch,
                replicas,
            } => {
                self.check_stream(*stream, *epoch)?;
                if replicas.is_empty()
                    || replicas
                        .iter()
                        .any(|r| r.is_empty() || r.len() > ADDR_BYTES_MAX)
                {
                    return Err(ClusterRejection::InvalidReplicas {
                        stream: *stream,
                        reason: "empty list, or an empty or too long address".to_string(),
                    });
                }
                let s = self.streams.get_mut(stream).expect("checked");
                s.replicas = replicas.clone();
                Ok(ClusterResult::StreamReplicasSet)
            }
            ClusterCommand::DrainBroker { node_id, draining } => {
                let Some(b) = self.brokers.get_mut(node_id).filter(|b| b.alive) else {
                    return Err(ClusterRejection::NotRegistered { node_id: *node_id });
                };
                b.draining = *draining;
                if !*draining {
                    for lease in self.leases.values_mut().flatten() {
                        if lease.leader == Some(*node_id) {
                            lease.target = None;
                        }
                    }
                }
                let moves = self.plan_targets();
                Ok(ClusterResult::DrainSet { moves })
            }
            ClusterCommand::Rebalance { to } => {
                if !self.eligible(*to) {
                    return Err(ClusterRejection::InvalidBroker {
                        node_id: *to,
                        reason: "only an alive broker that is not draining can take partitions"
                            .into(),
                    });
                }
                let moves = self.rebalance(*to);
                Ok(ClusterResult::Rebalanced { moves })
            }
            ClusterCommand::CompleteMove {
                topic,
                partition,
                from,
                epoch,
                end_offset,
                producers,
            } => self.complete_move(
                (*topic, *partition),
                *from,
                *epoch,
                *end_offset,
                producers.as_ref(),
                indexed_end,
            ),
        }
    }

    fn complete_move(
        &mut self,
        (topic, partition): (TopicId, u32),
        from: NodeId,
        epoch: i32,
        end_offset: i64,
        producers: Option<&Vec<HandedProducer>>,
        indexed_end: Option<i64>,
    ) -> Result<ClusterResult, ClusterRejection> {
        let handover = producers.map(|p| Handover {
            end_offset,
            producers: p.clone(),
        });
        if let Some(Err(reason)) = handover.as_ref().map(Handover::validate) {
            return Err(ClusterRejection::InvalidHandover {
                topic,
                partition,
                reason,
            });
        }
        let no_move = |reason: &str| ClusterRejection::NoMove {
            topic,
            partition,
            from,
            epoch,
            reason: reason.to_owned(),
        };
        let from_alive = self.brokers.get(&from).is_some_and(|b| b.alive);
        let Some(lease) = self
            .leases
            .get_mut(&topic)
            .and_then(|l| l.get_mut(partition as usize))
        else {
            return Err(no_move("unknown partition"));
        };
        if lease.leader != Some(from) || lease.epoch != epoch || !from_alive {
            return Err(no_move("the lease moved on"));
        }
        if lease.pending_stream.is_some() {
            return Err(no_move("the lease is pending on a stream's recovery"));
        }
        let Some(target) = lease.target else {
            return Err(no_move("the lease has no target"));
        };
        let indexed_end = indexed_end.unwrap_or(0);
        if indexed_end != end_offset {
            return Err(ClusterRejection::MoveNotUploaded {
                topic,
                partition,
                indexed_end,
                end_offset,
            });
        }
        lease.leader = Some(target);
        lease.epoch += 1;
        lease.target = None;
        lease.handover = handover;
        Ok(ClusterResult::MoveCompleted {
            leader: target,
            epoch: lease.epoch,
        })
    }

    fn register(
        &mut self,
        node_id: NodeId,
        kafka_addr: &str,
        rack: &Option<String>,
        lease_ms: u64,
        now_ms: i64,
        peer_addr: &Option<String>,
    ) -> Result<ClusterResult, ClusterRejection> {
        let invalid = |reason: &str| ClusterRejection::InvalidBroker {
            node_id,
            reason: reason.to_owned(),
        };
        if kafka_addr.is_empty() || kafka_addr.len() > ADDR_BYTES_MAX {
            return Err(invalid("the advertised address is empty or too long"));
        }
        if peer_addr
            .as_ref()
            .is_some_and(|a| a.is_empty() || a.len() > ADDR_BYTES_MAX)
        {
            return Err(invalid("the advertised peer address is empty or too long"));
        }
        if lease_ms == 0 || lease_ms > LEASE_MS_MAX {
            return Err(invalid("the lease length is outside 1..=600000 ms"));
        }
        // A live broker re-registering (a restart within its lease) keeps its draining flag;
        // one that comes back from the dead joins as a new member.
        let (registered_ms, draining) = match self.brokers.get(&node_id) {
            Some(b) if b.alive => (b.registered_ms, b.draining),
            _ => (now_ms, false),
        };
        self.brokers.insert(
            node_id,
            BrokerInfo {
                node_id,
                kafka_addr: kafka_addr.to_owned(),
                rack: rack.clone(),
                lease_ms,
                registered_ms,
                heartbeat_ms: now_ms,
                alive: true,
                draining,
                peer_addr: peer_addr.clone(),
            },
        );
        let stream = self.streams.entry(node_id).or_insert(StreamInfo {
            epoch: 0,
            holder: None,
            settled_lsn: 0,
            replicas: Vec::new(),
        });
        let stream_epoch = match stream.holder {
            None => {
                stream.epoch += 1;
                stream.holder = Some(node_id);
                Some(stream.epoch)
            }
            Some(holder) if holder == node_id => {
                stream.epoch += 1;
                Some(stream.epoch)
            }
            Some(_) => None,
        };
        let settled_lsn = stream.settled_lsn;
        self.assign_leaderless();
        Ok(ClusterResult::Registered {
            stream_epoch,
            settled_lsn,
        })
    }

    /// Marks `node` dead and moves what it held to the least loaded live broker.
    fn expire(&mut self, node: NodeId) {
        if let Some(b) = self.brokers.get_mut(&node) {
            b.alive = false;
        }
        let Some(taker) = self.least_loaded() else {
            return;
        };
        for stream in self.streams.values_mut() {
            if stream.holder == Some(node) {
                stream.holder = Some(taker);
                stream.epoch += 1;
            }
        }
        for lease in self.leases.values_mut().flatten() {
            if lease.leader == Some(node) {
                lease.leader = Some(taker);
                lease.epoch += 1;
                lease.target = None;
                // Its un-uploaded records are in the dead broker's stream — unless that stream
                // is held by someone still recovering it, in which case the lease already waits
                // on that one.
                if lease.pending_stream.is_none() {
                    lease.pending_stream = Some(node);
                }
            }
        }
        // A stream that nobody holds has nothing to wait for.
        let free: Vec<NodeId> = self
            .streams
            .iter()
            .filter(|(_, s)| s.holder.is_none())
            .map(|(id, _)| *id)
            .collect();
        for lease in self.leases.values_mut().flatten() {
            if lease.pending_stream.is_some_and(|s| free.contains(&s)) {
                lease.pending_stream = None;
            }
        }
    }

    /// The brokers that may be given partitions: the alive ones that are not draining, or,
    /// when every alive broker drains, all alive ones (serving beats draining).
    fn candidates(&self) -> Vec<NodeId> {
        let alive = || self.brokers.values().filter(|b| b.alive);
        let eligible: Vec<NodeId> = alive().filter(|b| !b.draining).map(|b| b.node_id).collect();
        if eligible.is_empty() {
            alive().map(|b| b.node_id).collect()
        } else {
            eligible
        }
    }

    /// Alive and not draining: may be a move's target.
    fn eligible(&self, node: NodeId) -> bool {
        self.brokers
            .get(&node)
            .is_some_and(|b| b.alive && !b.draining)
    }

    /// Partitions led per candidate broker.
    fn load(&self) -> BTreeMap<NodeId, usize> {
        let mut load: BTreeMap<NodeId, usize> =
            self.candidates().into_iter().map(|n| (n, 0)).collect();
        for lease in self.leases.values().flatten() {
            if let Some(l) = lease.leader.and_then(|n| load.get_mut(&n)) {
                *l += 1;
            }
        }
        load
    }

    /// Partitions per eligible broker once the planned moves are done (a lease counts for its
    /// target if it has one, else for its leader).
    fn planned_load(&self) -> BTreeMap<NodeId, usize> {
        let mut load: BTreeMap<NodeId, usize> = self
            .brokers
            .values()
            .filter(|b| b.alive && !b.draining)
            .map(|b| (b.node_id, 0))
            .collect();
        for lease in self.leases.values().flatten() {
            if let Some(l) = lease.target.or(lease.leader).and_then(|n| load.get_mut(&n)) {
                *l += 1;
            }
        }
        load
    }

    /// Keeps targets valid (see the module docs) and gives every movable partition of a
    /// draining broker one. Returns how many leases got a new target.
    fn plan_targets(&mut self) -> u32 {
        let alive: BTreeMap<NodeId, bool> = self
            .brokers
            .values()
            .filter(|b| b.alive)
            .map(|b| (b.node_id, b.draining))
            .collect();
        for lease in self.leases.values_mut().flatten() {
            let Some(target) = lease.target else { continue };
            let leader_alive = lease.leader.is_some_and(|l| alive.contains_key(&l));
            let target_ok = alive.get(&target) == Some(&false);
            if !leader_alive
                || !target_ok
                || lease.leader == Some(target)
                || lease.pending_stream.is_some()
            {
                lease.target = None;
            }
        }
        let mut load = self.planned_load();
        let mut moves = 0;
        if load.is_empty() {
            return 0;
        }
        for lease in self.leases.values_mut().flatten() {
            let draining_leader = lease.leader.is_some_and(|l| alive.get(&l) == Some(&true));
            if !draining_leader || lease.target.is_some() || lease.pending_stream.is_some() {
                continue;
            }
            let (&node, _) = load
                .iter()
                .min_by_key(|&(node, load)| (*load, *node))
                .expect("non-empty");
            *load.get_mut(&node).expect("present") += 1;
            lease.target = Some(node);
            moves += 1;
        }
        moves
    }

    /// Targets partitions of the most loaded eligible brokers at `to` until it has the floor
    /// of the average. Precondition: `to` is eligible.
    fn rebalance(&mut self, to: NodeId) -> u32 {
        let mut load = self.planned_load();
        debug_assert!(load.contains_key(&to));
        let total: usize = load.values().sum();
        let fair = total / load.len().max(1);
        let mut moves = 0;
        let mut exhausted: Vec<NodeId> = vec![to];
        while load[&to] < fair {
            // The most loaded broker that still has a movable partition; ties to the highest id.
            let Some((&donor, &donor_load)) = load
                .iter()
                .filter(|(n, _)| !exhausted.contains(n))
                .max_by_key(|&(node, load)| (*load, *node))
            else {
                break;
            };
            if donor_load <= load[&to] + 1 {
                break;
            }
            let movable = self.leases.values_mut().flatten().find(|l| {
                l.leader == Some(donor) && l.target.is_none() && l.pending_stream.is_none()
            });
            match movable {
                Some(lease) => {
                    lease.target = Some(to);
                    *load.get_mut(&donor).expect("present") -= 1;
                    *load.get_mut(&to).expect("present") += 1;
                    moves += 1;
                }
                None => exhausted.push(donor),
            }
        }
        moves
    }

    fn least_loaded(&self) -> Option<NodeId> {
        self.load()
            .into_iter()
            .min_by_key(|&(node, load)| (load, node))
            .map(|(node, _)| node)
    }

    /// Gives every partition without a live leader one, spreading by load.
    fn assign_leaderless(&mut self) {
        let mut load = self.load();
        if load.is_empty() {
            return;
        }
        let alive: Vec<NodeId> = self
            .brokers
            .values()
            .filter(|b| b.alive)
            .map(|b| b.node_id)
            .collect();
        for lease in self.leases.values_mut().flatten() {
            let has_live_leader = lease.leader.is_some_and(|l| alive.contains(&l));
            if has_live_leader {
                continue;
            }
            let (&node, _) = load
                .iter()
                .min_by_key(|&(node, load)| (*load, *node))
                .expect("non-empty");
            *load.get_mut(&node).expect("present") += 1;
            lease.leader = Some(node);
            lease.epoch += 1;
            lease.target = None;
        }
    }

    pub(crate) fn topic_created(&mut self, topic: TopicId, partitions: u32) {
        self.leases
            .insert(topic, vec![PartitionLease::default(); partitions as usize]);
        self.assign_leaderless();
    }

    /// A topic grew to `partitions`: the new partitions get leases like a new topic's.
    pub(crate) fn topic_grown(&mut self, topic: TopicId, partitions: u32) {
        self.leases
            .entry(topic)
            .or_default()
            .resize(partitions as usize, PartitionLease::default());
        self.assign_leaderless();
    }

    pub(crate) fn topic_deleted(&mut self, topic: TopicId) {
        self.leases.remove(&topic);
    }

    /// Leases for topics that existed before leases did (an older snapshot): created unassigned.
    pub(crate) fn ensure_topic(&mut self, topic: TopicId, partitions: u32) {
        self.leases
            .entry(topic)
            .or_insert_with(|| vec![PartitionLease::default(); partitions as usize]);
    }

    fn check_stream(&self, stream: NodeId, epoch: u64) -> Result<(), ClusterRejection> {
        let Some(s) = self.streams.get(&stream) else {
            return Err(ClusterRejection::UnknownStream { stream });
        };
        if s.epoch != epoch {
            return Err(ClusterRejection::StaleStreamEpoch {
                stream,
                epoch,
                current: s.epoch,
            });
        }
        if s.holder.is_none() {
            return Err(ClusterRejection::StreamNotHeld { stream });
        }
        Ok(())
    }

    /// Checks an object commit's stream progress (fencing); see [`ClusterState::progress`].
    pub(crate) fn check_progress(&self, p: &StreamProgress) -> Result<(), ClusterRejection> {
        self.check_stream(p.stream, p.epoch)
    }

    /// Applies an accepted commit's progress. Precondition: `check_progress` passed.
    pub(crate) fn progress(&mut self, p: &StreamProgress) {
        let s = self.streams.get_mut(&p.stream).expect("checked");
        s.settled_lsn = s.settled_lsn.max(p.settled_lsn);
    }

    /// The cluster id every broker reports, once one registered.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// The secret that keys decoy credentials, once a broker registered with one.
    pub fn auth_secret(&self) -> Option<&str> {
        self.auth_secret.as_deref()
    }

    pub fn broker(&self, node: NodeId) -> Option<&BrokerInfo> {
        self.brokers.get(&node)
    }

    /// Every broker ever registered, alive or not, by node id.
    pub fn brokers(&self) -> impl Iterator<Item = &BrokerInfo> {
        self.brokers.values()
    }

    /// Every node that ever served the `wal` role in this cluster, by node id.
    pub fn wal_nodes(&self) -> impl Iterator<Item = &WalNodeInfo> {
        self.wal_nodes.values()
    }

    /// Whether the WAL node at `addr` is alive at `now_ms`; `None` when no node registered
    /// that address. Several registrations of one address (a node id changed): alive if any is.
    pub fn wal_addr_alive(&self, addr: &str, now_ms: i64) -> Option<bool> {
        self.wal_nodes
            .values()
            .filter(|n| same_addr(&n.wal_addr, addr))
            .map(|n| n.alive_at(now_ms))
            .reduce(|a, b| a || b)
    }

    pub fn stream(&self, stream: NodeId) -> Option<&StreamInfo> {
        self.streams.get(&stream)
    }

    pub fn streams(&self) -> impl Iterator<Item = (NodeId, &StreamInfo)> {
        self.streams.iter().map(|(id, s)| (*id, s))
    }

    pub fn lease(&self, topic: TopicId, partition: u32) -> Option<&PartitionLease> {
        self.leases.get(&topic)?.get(partition as usize)
    }

    /// The partition's leader if it is alive.
    pub fn live_leader(&self, topic: TopicId, partition: u32) -> Option<NodeId> {
        let leader = self.lease(topic, partition)?.leader?;
        self.brokers
            .get(&leader)
            .is_some_and(|b| b.alive)
            .then_some(leader)
    }

    /// Alive brokers whose heartbeat is at least their lease length before `now_ms`: what an
    /// `ExpireBrokers` at `now_ms` would expire (except the proposer).
    pub fn stale_brokers(&self, now_ms: i64) -> Vec<NodeId> {
        self.brokers
            .values()
            .filter(|b| b.alive && now_ms.saturating_sub(b.heartbeat_ms) >= b.lease_ms as i64)
            .map(|b| b.node_id)
            .collect()
    }
}

/// Whether two `host:port` strings name the same address: equal, or the same socket address
/// once parsed (`127.0.0.1:01778` and `127.0.0.1:1778`).
pub fn same_addr(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (a.parse::<std::net::SocketAddr>(), b.parse::<std::net::SocketAddr>()),
            (Ok(x), Ok(y)) if x == y
        )
}

#[cfg(test)]
impl ClusterState {
    /// `apply_with_index` for commands that need no index.
    fn apply(&mut self, cmd: &ClusterCommand) -> Result<ClusterResult, ClusterRejection> {
        self.apply_with_index(cmd, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(c: &mut ClusterState, node: NodeId, now_ms: i64) -> ClusterResult {
        c.apply(&ClusterCommand::RegisterBroker {
            node_id: node,
            kafka_addr: format!("127.0.0.1:{}", 9000 + node),
            rack: None,
            lease_ms: 1000,
            now_ms,
            cluster_id: None,
            auth_secret: None,
            peer_addr: None,
        })
        .unwrap()
    }

    fn leaders(c: &ClusterState, topic: TopicId) -> Vec<Option<NodeId>> {
        c.leases[&topic].iter().map(|l| l.leader).collect()
    }

    #[test]
    fn only_the_holder_at_its_epoch_sets_a_streams_replicas_and_they_outlive_a_takeover() {
        let mut c = ClusterState::default();
        register(&mut c, 1, 0);
        register(&mut c, 2, 0);
        assert!(c.stream(1).unwrap().replicas.is_empty(), "the default set");
        let set = |epoch: u64, replicas: &[&str]| ClusterCommand::SetStreamReplicas {
            stream: 1,
            epoch,
            replicas: replicas.iter().map(|r| r.to_string()).collect(),
        };
        assert_eq!(
            c.apply(&set(1, &["a:1", "d:1", "c:1"])),
            Ok(ClusterResult::StreamReplicasSet)
        );
        assert_eq!(c.stream(1).unwrap().replicas, vec!["a:1", "d:1", "c:1"]);
        // A stale epoch (a fenced owner) and bad lists are refused; nothing changes.
        assert_eq!(
            c.apply(&set(0, &["x:1"])),
            Err(ClusterRejection::StaleStreamEpoch {
                stream: 1,
                epoch: 0,
                current: 1
            })
        );
        assert!(matches!(
            c.apply(&set(1, &[])),
            Err(ClusterRejection::InvalidReplicas { stream: 1, .. })
        ));
        assert!(matches!(
            c.apply(&set(1, &["a:1", ""])),
            Err(ClusterRejection::InvalidReplicas { stream: 1, .. })
        ));
        assert!(matches!(
            c.apply(&ClusterCommand::SetStreamReplicas {
                stream: 9,
                epoch: 1,
                replicas: vec!["a:1".into()],
            }),
            Err(ClusterRejection::UnknownStream { stream: 9 })
        ));
        assert_eq!(c.stream(1).unwrap().replicas, vec!["a:1", "d:1", "c:1"]);
        // Broker 1 dies: its stream moves on with the recorded set (the taker recovers from it).
        c.apply(&ClusterCommand::ExpireBrokers {
            by: 2,
            now_ms: 5_000,
        })
        .unwrap();
        let s = c.stream(1).unwrap();
        assert_eq!((s.holder, s.epoch), (Some(2), 2));
        assert_eq!(s.replicas, vec!["a:1", "d:1", "c:1"]);
    }

    #[test]
    fn first_registration_takes_the_stream_at_epoch_1() {
        let mut c = ClusterState::default();
        assert_eq!(
            register(&mut c, 1, 0),
            ClusterResult::Registered {
                stream_epoch: Some(1),
                settled_lsn: 0
            }
        );
        // A restart re-takes it with a higher epoch, fencing the old incarnation.
        assert_eq!(
            register(&mut c, 1, 10),
            ClusterResult::Registered {
                stream_epoch: Some(2),
                settled_lsn: 0
            }
        );
    }

    #[test]
    fn partitions_spread_over_live_brokers() {
        let mut c = ClusterState::default();
        for n in [1, 2, 3] {
            register(&mut c, n, 0);
        }
        let t = TopicId::random();
        c.topic_created(t, 6);
        let l = leaders(&c, t);
        for n in [1, 2, 3] {
            assert_eq!(l.iter().filter(|x| **x == Some(n)).count(), 2, "{l:?}");
        }
    }

    #[test]
    fn grown_partitions_get_leases_and_old_ones_keep_theirs() {
        let mut c = ClusterState::default();
        for n in [1, 2] {
            register(&mut c, n, 0);
        }
        let t = TopicId::random();
        c.topic_created(t, 2);
        let before = c.leases[&t].clone();
        c.topic_grown(t, 4);
        assert_eq!(c.leases[&t][..2], before[..], "existing leases do not move");
        let l = leaders(&c, t);
        for n in [1, 2] {
            assert_eq!(l.iter().filter(|x| **x == Some(n)).count(), 2, "{l:?}");
        }
        assert!(c.leases[&t][2..].iter().all(|l| l.epoch == 1));
    }

    #[test]
    fn leaderless_partitions_are_assigned_on_registration() {
        let mut c = ClusterState::default();
        let t = TopicId::random();
        c.topic_created(t, 3);
        assert_eq!(leaders(&c, t), vec![None, None, None]);
        register(&mut c, 7, 0);
        assert_eq!(leaders(&c, t), vec![Some(7); 3]);
        assert!(c.leases[&t].iter().all(|l| l.epoch == 1));
    }

    #[test]
    fn expiry_moves_partitions_and_stream_to_a_live_broker_pending_on_the_stream() {
        let mut c = ClusterState::default();
        register(&mut c, 1, 0);
        register(&mut c, 2, 0);
        let t = TopicId::random();
        c.topic_created(t, 4);
        // Only broker 2 heartbeats.
        c.apply(&ClusterCommand::Heartbeat {
            node_id: 2,
            now_ms: 900,
        })
        .unwrap();
        let r = c
            .apply(&ClusterCommand::ExpireBrokers { by: 2, now_ms: 999 })
            .unwrap();
        assert_eq!(r, ClusterResult::Expired { nodes: vec![] }, "not yet");
        let r = c
            .apply(&ClusterCommand::ExpireBrokers {
                by: 2,
                now_ms: 1000,
            })
            .unwrap();
        assert_eq!(r, ClusterResult::Expired { nodes: vec![1] });
        assert_eq!(leaders(&c, t), vec![Some(2); 4]);
        let s = c.stream(1).unwrap();
        assert_eq!((s.holder, s.epoch), (Some(2), 2));
        let moved: Vec<_> = c.leases[&t]
            .iter()
            .filter(|l| l.pending_stream == Some(1))
            .collect();
        assert_eq!(moved.len(), 2, "the two partitions broker 1 led");
        assert!(moved.iter().all(|l| l.epoch == 2));

        // Broker 1 comes back before the release: it must wait for its stream.
        assert_eq!(
            register(&mut c, 1, 1100),
            ClusterResult::Registered {
                stream_epoch: None,
                settled_lsn: 0
            }
        );
        // The old epoch is fenced.
        assert_eq!(
            c.check_progress(&StreamProgress {
                stream: 1,
                epoch: 1,
                settled_lsn: 5
            }),
            Err(ClusterRejection::StaleStreamEpoch {
                stream: 1,
                epoch: 1,
                current: 2
            })
        );
        c.apply(&ClusterCommand::ReleaseStream {
            stream: 1,
            epoch: 2,
            settled_lsn: 42,
        })
        .unwrap();
        assert!(c.leases[&t].iter().all(|l| l.pending_stream.is_none()));
        assert_eq!(
            register(&mut c, 1, 1200),
            ClusterResult::Registered {
                stream_epoch: Some(3),
                settled_lsn: 42
            }
        );
    }

    #[test]
    fn wal_nodes_register_by_heartbeat_and_liveness_follows_the_reader_clock() {
        let mut c = ClusterState::default();
        register(&mut c, 1, 0);
        let t = TopicId::from_bytes([7; 16]);
        c.topic_created(t, 2);
        let before = c.clone();
        let beat = |node_id, wal_addr: &str, now_ms| ClusterCommand::WalHeartbeat {
            node_id,
            wal_addr: wal_addr.to_string(),
            lease_ms: 1000,
            now_ms,
        };
        assert_eq!(
            c.apply(&beat(11, "127.0.0.1:1778", 100)),
            Ok(ClusterResult::WalNodeRenewed)
        );
        c.apply(&beat(12, "127.0.0.1:1779", 100)).unwrap();
        // A renewal never moves the heartbeat back; an address change re-registers.
        c.apply(&beat(11, "127.0.0.1:1778", 900)).unwrap();
        c.apply(&beat(11, "127.0.0.1:1778", 500)).unwrap();
        let n = c.wal_nodes().find(|n| n.node_id == 11).unwrap();
        assert_eq!((n.registered_ms, n.heartbeat_ms), (100, 900));
        c.apply(&beat(12, "127.0.0.1:1780", 950)).unwrap();
        let n = c.wal_nodes().find(|n| n.node_id == 12).unwrap();
        assert_eq!(
            (n.wal_addr.as_str(), n.registered_ms),
            ("127.0.0.1:1780", 950)
        );

        assert_eq!(c.wal_addr_alive("127.0.0.1:1778", 1899), Some(true));
        assert_eq!(c.wal_addr_alive("127.0.0.1:1778", 1900), Some(false));
        assert_eq!(
            c.wal_addr_alive("127.0.0.1:01778", 1000),
            Some(true),
            "same socket address"
        );
        assert_eq!(
            c.wal_addr_alive("127.0.0.1:1779", 1000),
            None,
            "re-registered elsewhere"
        );
        assert_eq!(c.wal_addr_alive("10.0.0.9:1778", 1000), None);

        // WAL nodes are not brokers: no leases, streams or brokers change.
        assert_eq!(c.brokers().count(), before.brokers().count());
        assert_eq!(c.leases, before.leases);
        assert_eq!(c.streams, before.streams);

        for (cmd, why) in [
            (beat(0, "127.0.0.1:1", 0), "node id"),
            (beat(13, "", 0), "address"),
            (beat(13, &"x".repeat(ADDR_BYTES_MAX + 1), 0), "address"),
            (
                ClusterCommand::WalHeartbeat {
                    node_id: 13,
                    wal_addr: "127.0.0.1:1".into(),
                    lease_ms: 0,
                    now_ms: 0,
                },
                "lease",
            ),
        ] {
            match c.apply(&cmd) {
                Err(ClusterRejection::InvalidWalNode { reason, .. }) => {
                    assert!(reason.contains(why), "{reason}")
                }
                other => panic!("{cmd:?}: {other:?}"),
            }
        }
        assert!(c.wal_nodes().all(|n| n.node_id != 13 && n.node_id != 0));

        // A state written before WAL nodes registered still decodes, and round-trips.
        let old = serde_json::to_value(&before).unwrap();
        assert!(old.get("wal_nodes").is_none());
        let back: ClusterState = serde_json::from_value(old).unwrap();
        assert_eq!(back, before);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ClusterState>(&json).unwrap(), c);
    }

    #[test]
    fn an_expired_broker_cannot_heartbeat_and_the_proposer_is_never_expired() {
        let mut c = ClusterState::default();
        register(&mut c, 1, 0);
        register(&mut c, 2, 0);
        let r = c
            .apply(&ClusterCommand::ExpireBrokers {
                by: 1,
                now_ms: 5000,
            })
            .unwrap();
        assert_eq!(r, ClusterResult::Expired { nodes: vec![2] });
        assert_eq!(
            c.apply(&ClusterCommand::Heartbeat {
                node_id: 2,
                now_ms: 5001
            }),
            Err(ClusterRejection::NotRegistered { node_id: 2 })
        );
        assert!(c.broker(1).unwrap().alive);
    }

    #[test]
    fn with_nobody_left_nothing_moves() {
        let mut c = ClusterState::default();
        register(&mut c, 1, 0);
        let t = TopicId::random();
        c.topic_created(t, 2);
        c.apply(&ClusterCommand::DeregisterBroker {
            node_id: 1,
            now_ms: 1,
        })
        .unwrap();
        assert_eq!(leaders(&c, t), vec![Some(1); 2]);
        assert_eq!(c.live_leader(t, 0), None);
        // It comes back and re-takes its own stream and partitions.
        assert_eq!(
            register(&mut c, 1, 2),
            ClusterResult::Registered {
                stream_epoch: Some(2),
                settled_lsn: 0
            }
        );
        assert_eq!(c.live_leader(t, 0), Some(1));
    }

    #[test]
    fn bad_registrations_are_refused() {
        let mut c = ClusterState::default();
        for (addr, lease) in [("", 1000), ("h:1", 0), ("h:1", LEASE_MS_MAX + 1)] {
            let r = c.apply(&ClusterCommand::RegisterBroker {
                node_id: 1,
                kafka_addr: addr.into(),
                rack: None,
                lease_ms: lease,
                now_ms: 0,
                cluster_id: None,
                auth_secret: None,
                peer_addr: None,
            });
            assert!(
                matches!(r, Err(ClusterRejection::InvalidBroker { .. })),
                "{r:?}"
            );
        }
        // An empty peer address is refused too.
        let r = c.apply(&ClusterCommand::RegisterBroker {
            node_id: 1,
            kafka_addr: "h:1".into(),
            rack: None,
            lease_ms: 1000,
            now_ms: 0,
            cluster_id: None,
            auth_secret: None,
            peer_addr: Some(String::new()),
        });
        assert!(
            matches!(r, Err(ClusterRejection::InvalidBroker { .. })),
            "{r:?}"
        );
        assert!(c.broker(1).is_none());
    }

    /// Commands and brokers recorded before `peer_addr` existed still decode (raft logs and
    /// snapshots); a registration records the address.
    #[test]
    fn peer_addr_is_optional_on_the_wire_and_recorded() {
        let old = r#"{"RegisterBroker":{"node_id":1,"kafka_addr":"h:1","rack":null,"lease_ms":1000,"now_ms":0}}"#;
        let cmd: ClusterCommand = serde_json::from_str(old).unwrap();
        assert!(matches!(
            cmd,
            ClusterCommand::RegisterBroker {
                peer_addr: None,
                ..
            }
        ));
        let old_broker = r#"{"node_id":1,"kafka_addr":"h:1","rack":null,"lease_ms":1000,"registered_ms":0,"heartbeat_ms":0,"alive":true}"#;
        let b: BrokerInfo = serde_json::from_str(old_broker).unwrap();
        assert_eq!(b.peer_addr, None);
        let mut c = ClusterState::default();
        c.apply(&ClusterCommand::RegisterBroker {
            node_id: 2,
            kafka_addr: "h:2".into(),
            rack: None,
            lease_ms: 1000,
            now_ms: 0,
            cluster_id: None,
            auth_secret: None,
            peer_addr: Some("h:1228".into()),
        })
        .unwrap();
        assert_eq!(c.broker(2).unwrap().peer_addr.as_deref(), Some("h:1228"));
    }

    /// Through `MetaState::apply`: an object commit under a stale stream epoch changes
    /// nothing; one under the current epoch indexes the blocks and moves `settled_lsn`.
    #[test]
    fn object_commits_are_fenced_by_the_stream_epoch() {
        use crate::state::{Command, CommandResult, MetaState, Rejection};
        use strata_types::{BlockLocation, TopicName};
        let mut m = MetaState::default();
        let reg = |node: NodeId, now_ms: i64| {
            Command::Cluster(ClusterCommand::RegisterBroker {
                node_id: node,
                kafka_addr: "h:1".into(),
                rack: None,
                lease_ms: 1000,
                now_ms,
                cluster_id: Some(format!("c{node}")),
                auth_secret: None,
                peer_addr: None,
            })
        };
        m.apply(&reg(1, 0));
        m.apply(&reg(1, 1)); // a restart: epoch 2
        let t = TopicId::random();
        m.apply(&Command::CreateTopic {
            name: TopicName::new("t").unwrap(),
            id: t,
            partitions: 1,
            configs: Default::default(),
            created_ms: 0,
        });
        let commit = |key: &str, epoch: u64, settled_lsn: u64| Command::CommitObject {
            key: key.into(),
            size: 10,
            blocks: vec![BlockLocation {
                key: key.into(),
                topic: t,
                partition: 0,
                base_offset: 0,
                end_offset: 5,
                position: 0,
                len: 10,
                max_timestamp: 0,
                crc32c: 0,
                index_len: 0,
                relative: false,
            }],
            stream: Some(StreamProgress {
                stream: 1,
                epoch,
                settled_lsn,
            }),
        };
        assert_eq!(
            m.apply(&commit("old", 1, 7)),
            CommandResult::Rejected(Rejection::Cluster(ClusterRejection::StaleStreamEpoch {
                stream: 1,
                epoch: 1,
                current: 2
            }))
        );
        assert_eq!(m.indexed_end(t, 0), 0, "a fenced commit indexes nothing");
        assert_eq!(m.cluster().stream(1).unwrap().settled_lsn, 0);
        assert_eq!(
            m.apply(&commit("new", 2, 7)),
            CommandResult::ObjectCommitted
        );
        assert_eq!(m.indexed_end(t, 0), 5);
        assert_eq!(m.cluster().stream(1).unwrap().settled_lsn, 7);
        assert_eq!(m.cluster().live_leader(t, 0), Some(1));
        assert_eq!(
            m.cluster().cluster_id(),
            Some("c1"),
            "the first registration's id stays"
        );
    }

    fn drain(
        c: &mut ClusterState,
        node: NodeId,
        draining: bool,
    ) -> Result<ClusterResult, ClusterRejection> {
        c.apply(&ClusterCommand::DrainBroker {
            node_id: node,
            draining,
        })
    }

    fn targets(c: &ClusterState, topic: TopicId) -> Vec<Option<NodeId>> {
        c.leases[&topic].iter().map(|l| l.target).collect()
    }

    /// Completes every planned move of `topic` whose index is caught up (`end_offset` = 0).
    fn complete_all(c: &mut ClusterState, topic: TopicId) {
        for p in 0..c.leases[&topic].len() as u32 {
            let l = c.leases[&topic][p as usize].clone();
            if l.target.is_some() {
                c.apply_with_index(
                    &ClusterCommand::CompleteMove {
                        topic,
                        partition: p,
                        from: l.leader.unwrap(),
                        epoch: l.epoch,
                        end_offset: 0,
                        producers: None,
                    },
                    Some(0),
                )
                .unwrap();
            }
        }
    }

    #[test]
    fn draining_targets_every_partition_of_the_broker_and_completion_moves_them() {
        let mut c = ClusterState::default();
        for n in [1, 2, 3] {
            register(&mut c, n, 0);
        }
        let t = TopicId::random();
        c.topic_created(t, 6);
        assert_eq!(
            drain(&mut c, 3, true),
            Ok(ClusterResult::DrainSet { moves: 2 })
        );
        for (l, target) in c.leases[&t].iter().zip(targets(&c, t)) {
            assert_eq!(target.is_some(), l.leader == Some(3), "{:?}", c.leases[&t]);
            assert_ne!(target, Some(3));
        }
        // Targets spread over the others: 1 and 2 end with 3 each.
        complete_all(&mut c, t);
        let l = leaders(&c, t);
        assert_eq!(l.iter().filter(|x| **x == Some(3)).count(), 0);
        for n in [1, 2] {
            assert_eq!(l.iter().filter(|x| **x == Some(n)).count(), 3, "{l:?}");
        }
        // A new topic passes the draining broker over.
        let u = TopicId::random();
        c.topic_created(u, 4);
        assert!(leaders(&c, u).iter().all(|l| *l != Some(3)));
    }

    /// `CompleteMove` carries the partition's producers into its lease; a bad handover is
    /// refused; a command or lease from before the field existed still decodes.
    #[test]
    fn complete_move_keeps_the_producers_handover_in_the_lease() {
        use strata_types::sequence::{HandedProducer, SeqBatch};
        let mut c = ClusterState::default();
        register(&mut c, 1, 0);
        let t = TopicId::random();
        c.topic_created(t, 1);
        register(&mut c, 2, 0);
        drain(&mut c, 1, true).unwrap();
        let producer = |batches: Vec<SeqBatch>| HandedProducer {
            producer_id: 7,
            epoch: 0,
            batches,
            last_seen_ms: 5,
        };
        let complete = |producers| ClusterCommand::CompleteMove {
            topic: t,
            partition: 0,
            from: 1,
            epoch: 1,
            end_offset: 10,
            producers,
        };
        let batch = |first_seq, base_offset| SeqBatch {
            first_seq,
            last_seq: first_seq + 1,
            base_offset,
        };
        for bad in [
            vec![producer(Vec::new())],
            vec![producer(vec![batch(0, 10)])],
            vec![producer(vec![batch(-1, 0)])],
            vec![producer(vec![batch(0, 0); 6])],
            vec![producer(vec![batch(0, 0)]), producer(vec![batch(2, 2)])],
        ] {
            let r = c.apply_with_index(&complete(Some(bad.clone())), Some(10));
            assert!(
                matches!(r, Err(ClusterRejection::InvalidHandover { .. })),
                "{bad:?}: {r:?}"
            );
        }
        assert_eq!(
            c.leases[&t][0].leader,
            Some(1),
            "a refused handover moves nothing"
        );
        let good = vec![producer(vec![batch(0, 0), batch(2, 8)])];
        assert!(c
            .apply_with_index(&complete(Some(good.clone())), Some(10))
            .is_ok());
        let lease = &c.leases[&t][0];
        assert_eq!(lease.leader, Some(2));
        assert_eq!(
            lease.handover,
            Some(Handover {
                end_offset: 10,
                producers: good
            })
        );
        // Raft logs and snapshots written before the field: it defaults to absent.
        let old = format!(
            r#"{{"CompleteMove":{{"topic":{},"partition":0,"from":1,"epoch":1,"end_offset":10}}}}"#,
            serde_json::to_string(&t).unwrap()
        );
        let cmd: ClusterCommand = serde_json::from_str(&old).unwrap();
        assert_eq!(cmd, complete(None));
        let lease: PartitionLease =
            serde_json::from_str(r#"{"leader":1,"epoch":1,"pending_stream":null}"#).unwrap();
        assert_eq!(lease.handover, None);
        assert!(!serde_json::to_string(&lease).unwrap().contains("handover"));
    }

    #[test]
    fn complete_move_gives_the_target_the_next_epoch() {
        let mut c = ClusterState::default();
        register(&mut c, 1, 0);
        let t = TopicId::random();
        c.topic_created(t, 1);
        register(&mut c, 2, 0);
        drain(&mut c, 1, true).unwrap();
        assert_eq!(c.leases[&t][0].target, Some(2));
        let complete = |from, epoch, end_offset| ClusterCommand::CompleteMove {
            topic: t,
            partition: 0,
            from,
            epoch,
            end_offset,
            producers: None,
        };
        // The index must end where the leader says its log ends.
        assert_eq!(
            c.apply_with_index(&complete(1, 1, 10), Some(7)),
            Err(ClusterRejection::MoveNotUploaded {
                topic: t,
                partition: 0,
                indexed_end: 7,
                end_offset: 10
            })
        );
        // A stale epoch or the wrong leader is refused.
        for (from, epoch) in [(1, 0), (2, 1)] {
            let r = c.apply_with_index(&complete(from, epoch, 10), Some(10));
            assert!(matches!(r, Err(ClusterRejection::NoMove { .. })), "{r:?}");
        }
        assert_eq!(
            c.apply_with_index(&complete(1, 1, 10), Some(10)),
            Ok(ClusterResult::MoveCompleted {
                leader: 2,
                epoch: 2
            })
        );
        let l = &c.leases[&t][0];
        assert_eq!(
            (l.leader, l.epoch, l.target, l.pending_stream),
            (Some(2), 2, None, None)
        );
        // A retry is refused (the lease moved on) and changes nothing.
        assert!(c.apply_with_index(&complete(1, 1, 10), Some(10)).is_err());
        assert_eq!(c.leases[&t][0].epoch, 2);
        // Unknown partition.
        let r = c.apply_with_index(
            &ClusterCommand::CompleteMove {
                topic: t,
                partition: 5,
                from: 2,
                epoch: 2,
                end_offset: 0,
                producers: None,
            },
            Some(0),
        );
        assert!(matches!(r, Err(ClusterRejection::NoMove { .. })), "{r:?}");
    }

    #[test]
    fn undrain_clears_targets_and_a_late_completion_is_refused() {
        let mut c = ClusterState::default();
        register(&mut c, 1, 0);
        register(&mut c, 2, 0);
        let t = TopicId::random();
        c.topic_created(t, 2);
        drain(&mut c, 1, true).unwrap();
        assert_eq!(targets(&c, t), vec![Some(2), None]);
        assert_eq!(
            drain(&mut c, 1, false),
            Ok(ClusterResult::DrainSet { moves: 0 })
        );
        assert_eq!(targets(&c, t), vec![None, None]);
        assert!(!c.broker(1).unwrap().draining);
        let r = c.apply_with_index(
            &ClusterCommand::CompleteMove {
                topic: t,
                partition: 0,
                from: 1,
                epoch: 1,
                end_offset: 0,
                producers: None,
            },
            Some(0),
        );
        assert!(matches!(r, Err(ClusterRejection::NoMove { .. })), "{r:?}");
        assert_eq!(leaders(&c, t), vec![Some(1), Some(2)]);
    }

    #[test]
    fn drain_of_an_unknown_or_dead_broker_is_refused() {
        let mut c = ClusterState::default();
        register(&mut c, 1, 0);
        assert_eq!(
            drain(&mut c, 9, true),
            Err(ClusterRejection::NotRegistered { node_id: 9 })
        );
        c.apply(&ClusterCommand::DeregisterBroker {
            node_id: 1,
            now_ms: 1,
        })
        .unwrap();
        assert_eq!(
            drain(&mut c, 1, true),
            Err(ClusterRejection::NotRegistered { node_id: 1 })
        );
    }

    #[test]
    fn a_drained_broker_with_nowhere_to_go_gets_targets_when_a_broker_joins() {
        let mut c = ClusterState::default();
        register(&mut c, 1, 0);
        let t = TopicId::random();
        c.topic_created(t, 3);
        assert_eq!(
            drain(&mut c, 1, true),
            Ok(ClusterResult::DrainSet { moves: 0 })
        );
        // Nobody else: new partitions still get a leader (serving beats draining).
        let u = TopicId::random();
        c.topic_created(u, 1);
        assert_eq!(leaders(&c, u), vec![Some(1)]);
        register(&mut c, 2, 5);
        assert_eq!(targets(&c, t), vec![Some(2); 3]);
        // A restart of the live broker keeps the flag; a return from the dead clears it.
        register(&mut c, 1, 6);
        assert!(c.broker(1).unwrap().draining);
        c.apply(&ClusterCommand::DeregisterBroker {
            node_id: 1,
            now_ms: 7,
        })
        .unwrap();
        register(&mut c, 1, 8);
        assert!(!c.broker(1).unwrap().draining);
    }

    #[test]
    fn expiry_of_the_target_or_the_leader_clears_targets() {
        let mut c = ClusterState::default();
        for n in [1, 2, 3] {
            register(&mut c, n, 0);
        }
        let t = TopicId::random();
        c.topic_created(t, 3);
        drain(&mut c, 1, true).unwrap();
        let target = c.leases[&t][0].target.unwrap();
        // The target dies: the lease gets the other eligible broker.
        c.apply(&ClusterCommand::DeregisterBroker {
            node_id: target,
            now_ms: 1,
        })
        .unwrap();
        let other = if target == 2 { 3 } else { 2 };
        assert_eq!(c.leases[&t][0].target, Some(other));
        // The draining leader dies: its partitions go pending to the taker, without a target.
        c.apply(&ClusterCommand::DeregisterBroker {
            node_id: 1,
            now_ms: 2,
        })
        .unwrap();
        assert!(c.leases[&t]
            .iter()
            .all(|l| l.target.is_none() && l.leader == Some(other)));
        assert_eq!(c.leases[&t][0].pending_stream, Some(1));
    }

    #[test]
    fn rebalance_gives_a_joined_broker_its_fair_share_of_the_most_loaded() {
        let mut c = ClusterState::default();
        for n in [1, 2, 3] {
            register(&mut c, n, 0);
        }
        let t = TopicId::random();
        c.topic_created(t, 12);
        register(&mut c, 4, 0);
        assert_eq!(
            c.apply(&ClusterCommand::Rebalance { to: 4 }),
            Ok(ClusterResult::Rebalanced { moves: 3 })
        );
        let from: Vec<NodeId> = c.leases[&t]
            .iter()
            .filter(|l| l.target == Some(4))
            .map(|l| l.leader.unwrap())
            .collect();
        let mut sorted = from.clone();
        sorted.sort();
        assert_eq!(sorted, vec![1, 2, 3], "one from each");
        // Again: already fair, nothing to do.
        assert_eq!(
            c.apply(&ClusterCommand::Rebalance { to: 4 }),
            Ok(ClusterResult::Rebalanced { moves: 0 })
        );
        complete_all(&mut c, t);
        let l = leaders(&c, t);
        for n in [1, 2, 3, 4] {
            assert_eq!(l.iter().filter(|x| **x == Some(n)).count(), 3, "{l:?}");
        }
        // A draining or unknown broker cannot be a rebalance target.
        drain(&mut c, 4, true).unwrap();
        for to in [4, 9] {
            let r = c.apply(&ClusterCommand::Rebalance { to });
            assert!(
                matches!(r, Err(ClusterRejection::InvalidBroker { .. })),
                "{r:?}"
            );
        }
    }

    /// Seeded random sequences of register / heartbeat / drain / rebalance / expire /
    /// deregister / release / complete-move / create-topic. After every step: each epoch of a
    /// partition names one leader forever (at most one writable leader per epoch), epochs
    /// never go down, targets are valid, and with any broker alive every lease has a live
    /// leader. A failing run prints its seed.
    #[test]
    fn random_membership_and_moves_keep_the_lease_invariants() {
        for seed in 1..=200u64 {
            run_random(seed);
        }
    }

    fn run_random(seed: u64) {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut c = ClusterState::default();
        let mut now = 0i64;
        // (topic, partition, epoch) → leader: an epoch never names two leaders.
        let mut epoch_leader: BTreeMap<(TopicId, u32, i32), NodeId> = BTreeMap::new();
        let mut last_epoch: BTreeMap<(TopicId, u32), i32> = BTreeMap::new();
        let mut topics: Vec<TopicId> = Vec::new();
        for step in 0..300 {
            now += next(400) as i64;
            let node = 1 + next(5);
            let op = next(10);
            let cmd = match op {
                0 | 1 => ClusterCommand::RegisterBroker {
                    node_id: node,
                    kafka_addr: "h:1".into(),
                    rack: None,
                    lease_ms: 1000,
                    now_ms: now,
                    cluster_id: None,
                    auth_secret: None,
                    peer_addr: None,
                },
                2 => ClusterCommand::Heartbeat {
                    node_id: node,
                    now_ms: now,
                },
                3 => ClusterCommand::DrainBroker {
                    node_id: node,
                    draining: next(3) != 0,
                },
                4 => ClusterCommand::Rebalance { to: node },
                5 => ClusterCommand::ExpireBrokers {
                    by: node,
                    now_ms: now,
                },
                6 => ClusterCommand::DeregisterBroker {
                    node_id: node,
                    now_ms: now,
                },
                7 => {
                    // What a taker does after recovering a stream.
                    let held: Vec<_> = c
                        .streams()
                        .filter(|(id, s)| s.holder.is_some_and(|h| h != *id))
                        .map(|(id, s)| (id, s.epoch))
                        .collect();
                    if held.is_empty() {
                        continue;
                    }
                    let (stream, epoch) = held[next(held.len() as u64) as usize];
                    ClusterCommand::ReleaseStream {
                        stream,
                        epoch,
                        settled_lsn: 0,
                    }
                }
                8 => {
                    if topics.len() < 3 {
                        let t = TopicId::random();
                        c.topic_created(t, 1 + next(6) as u32);
                        topics.push(t);
                    }
                    continue;
                }
                _ => {
                    let moving: Vec<_> = c
                        .leases
                        .iter()
                        .flat_map(|(t, ls)| {
                            ls.iter()
                                .enumerate()
                                .filter(|(_, l)| l.target.is_some())
                                .map(|(p, l)| (*t, p as u32, l.leader.unwrap(), l.epoch))
                        })
                        .collect();
                    if moving.is_empty() {
                        continue;
                    }
                    let (topic, partition, from, epoch) =
                        moving[next(moving.len() as u64) as usize];
                    let caught_up = next(4) != 0;
                    let cmd = ClusterCommand::CompleteMove {
                        topic,
                        partition,
                        from,
                        epoch,
                        end_offset: 10,
                        producers: None,
                    };
                    let r = c.apply_with_index(&cmd, Some(if caught_up { 10 } else { 9 }));
                    assert_eq!(r.is_ok(), caught_up, "seed {seed} step {step}: {r:?}");
                    check_invariants(&c, seed, step, &mut epoch_leader, &mut last_epoch);
                    continue;
                }
            };
            let _ = c.apply(&cmd);
            check_invariants(&c, seed, step, &mut epoch_leader, &mut last_epoch);
        }
    }

    fn check_invariants(
        c: &ClusterState,
        seed: u64,
        step: usize,
        epoch_leader: &mut BTreeMap<(TopicId, u32, i32), NodeId>,
        last_epoch: &mut BTreeMap<(TopicId, u32), i32>,
    ) {
        let ctx = format!("seed {seed} step {step}: {c:?}");
        let alive = |n: NodeId| c.broker(n).is_some_and(|b| b.alive);
        let any_alive = c.brokers().any(|b| b.alive);
        for (t, leases) in &c.leases {
            for (p, l) in leases.iter().enumerate() {
                let p = p as u32;
                let last = last_epoch.entry((*t, p)).or_insert(0);
                assert!(l.epoch >= *last, "epoch went down: {ctx}");
                *last = l.epoch;
                if let Some(leader) = l.leader {
                    let named = *epoch_leader.entry((*t, p, l.epoch)).or_insert(leader);
                    assert_eq!(named, leader, "epoch {} names two leaders: {ctx}", l.epoch);
                    if any_alive {
                        assert!(alive(leader), "a dead leader while brokers live: {ctx}");
                    }
                }
                if let Some(target) = l.target {
                    assert!(c.eligible(target), "target not eligible: {ctx}");
                    assert_ne!(l.leader, Some(target), "{ctx}");
                    assert!(l.leader.is_some_and(alive), "{ctx}");
                    assert!(l.pending_stream.is_none(), "{ctx}");
                }
                // A draining leader's movable partitions have a target once anyone can take them.
                let draining_leader = l
                    .leader
                    .and_then(|n| c.broker(n))
                    .is_some_and(|b| b.alive && b.draining);
                let someone = c.brokers().any(|b| b.alive && !b.draining);
                if draining_leader && someone && l.pending_stream.is_none() {
                    assert!(l.target.is_some(), "an unplanned draining partition: {ctx}");
                }
            }
        }
    }
}
