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
//! - `ReleaseStream`: the holder of `(stream, epoch)` uploaded the recovered tail up to
//!   `settled_lsn`; the stream becomes free and the leases pending on it become writable.
//! - Commits of objects carry a [`StreamProgress`]; a commit under an epoch that is not the
//!   stream's current one, or by a stream that has no holder, is refused (fencing), and an
//!   accepted one moves `settled_lsn` forward.
//!
//! Assignment is deterministic: the live broker with the fewest led partitions, ties to the
//! lowest node id.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
}

/// One broker's WAL stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub epoch: u64,
    /// The node allowed to write (or recover) the stream under `epoch`; `None` once released.
    pub holder: Option<NodeId>,
    /// Every entry up to here is in object storage and committed to the index.
    pub settled_lsn: u64,
}

/// Who leads one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLease {
    pub leader: Option<NodeId>,
    /// Kafka's leader epoch: grows with every move.
    pub epoch: i32,
    /// Not writable until this stream is released (its tail holds this partition's records).
    pub pending_stream: Option<NodeId>,
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
    ReleaseStream {
        stream: NodeId,
        epoch: u64,
        settled_lsn: u64,
    },
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
    Expired {
        nodes: Vec<NodeId>,
    },
    StreamReleased,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClusterRejection {
    #[error("broker {node_id} is not registered or was expired; it must register again")]
    NotRegistered { node_id: NodeId },
    #[error("broker {node_id}: {reason}")]
    InvalidBroker { node_id: NodeId, reason: String },
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
}

/// The cluster part of [`crate::MetaState`]. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The id Kafka clients see (Metadata's cluster id), fixed by the first registration.
    #[serde(default)]
    cluster_id: Option<String>,
    brokers: BTreeMap<NodeId, BrokerInfo>,
    streams: BTreeMap<NodeId, StreamInfo>,
    /// Per topic, one lease per partition.
    leases: BTreeMap<TopicId, Vec<PartitionLease>>,
}

impl ClusterState {
    pub(crate) fn apply(
        &mut self,
        cmd: &ClusterCommand,
    ) -> Result<ClusterResult, ClusterRejection> {
        match cmd {
            ClusterCommand::RegisterBroker {
                node_id,
                kafka_addr,
                rack,
                lease_ms,
                now_ms,
                cluster_id,
            } => {
                let result = self.register(*node_id, kafka_addr, rack, *lease_ms, *now_ms)?;
                if self.cluster_id.is_none() {
                    self.cluster_id = cluster_id.clone();
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
        }
    }

    fn register(
        &mut self,
        node_id: NodeId,
        kafka_addr: &str,
        rack: &Option<String>,
        lease_ms: u64,
        now_ms: i64,
    ) -> Result<ClusterResult, ClusterRejection> {
        let invalid = |reason: &str| ClusterRejection::InvalidBroker {
            node_id,
            reason: reason.to_owned(),
        };
        if kafka_addr.is_empty() || kafka_addr.len() > ADDR_BYTES_MAX {
            return Err(invalid("the advertised address is empty or too long"));
        }
        if lease_ms == 0 || lease_ms > LEASE_MS_MAX {
            return Err(invalid("the lease length is outside 1..=600000 ms"));
        }
        let registered_ms = match self.brokers.get(&node_id) {
            Some(b) if b.alive => b.registered_ms,
            _ => now_ms,
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
            },
        );
        let stream = self.streams.entry(node_id).or_insert(StreamInfo {
            epoch: 0,
            holder: None,
            settled_lsn: 0,
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

    fn live_brokers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.brokers.values().filter(|b| b.alive).map(|b| b.node_id)
    }

    fn load(&self) -> BTreeMap<NodeId, usize> {
        let mut load: BTreeMap<NodeId, usize> = self.live_brokers().map(|n| (n, 0)).collect();
        for lease in self.leases.values().flatten() {
            if let Some(l) = lease.leader.and_then(|n| load.get_mut(&n)) {
                *l += 1;
            }
        }
        load
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
        let alive: Vec<NodeId> = load.keys().copied().collect();
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

    pub fn broker(&self, node: NodeId) -> Option<&BrokerInfo> {
        self.brokers.get(&node)
    }

    /// Every broker ever registered, alive or not, by node id.
    pub fn brokers(&self) -> impl Iterator<Item = &BrokerInfo> {
        self.brokers.values()
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
        })
        .unwrap()
    }

    fn leaders(c: &ClusterState, topic: TopicId) -> Vec<Option<NodeId>> {
        c.leases[&topic].iter().map(|l| l.leader).collect()
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
            });
            assert!(
                matches!(r, Err(ClusterRejection::InvalidBroker { .. })),
                "{r:?}"
            );
        }
        assert!(c.broker(1).is_none());
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
}
