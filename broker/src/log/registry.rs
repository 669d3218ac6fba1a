//! The partitions this broker serves, by name and by key, kept in step with metadata.
//!
//! The registry is a read-mostly map refreshed from the metadata state machine whenever it
//! changes (topic created or deleted, a lease moved). Request handlers look partitions up here
//! and never wait on raft.
//!
//! It holds a log for every partition of every topic, but this broker *leads* only those whose
//! lease names it (alive, not pending on a WAL stream's recovery): produce, fetch and
//! list-offsets on the others are answered `NOT_LEADER_OR_FOLLOWER`. A partition that becomes
//! led at a new lease epoch gets a fresh log, starting where the object index ends: whatever
//! the previous leader acknowledged was uploaded before the lease stopped being pending. Its
//! traffic counters continue those of the log it replaces on this broker.
//! After a planned move the fresh log also carries the idempotent producers' state the move
//! handed over (the lease's `handover`), which the sequencer adopts before its first append.
//! Partitions added to a topic (CreatePartitions) join its list at the next sync; the list
//! only grows while the topic id stays the same.

use super::partition::PartitionLog;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use strata_meta::MetaState;
use strata_types::{PartitionKey, TopicId, TopicName};

#[derive(Debug)]
pub struct TopicLogs {
    pub id: TopicId,
    pub name: TopicName,
    pub partitions: Vec<Arc<PartitionLog>>,
}

#[derive(Debug)]
pub struct Registry {
    node_id: u64,
    topics: RwLock<HashMap<TopicName, Arc<TopicLogs>>>,
    by_key: RwLock<HashMap<PartitionKey, Arc<PartitionLog>>>,
    /// The partitions this broker leads, with the lease epoch their log was built at.
    led: RwLock<HashMap<PartitionKey, i32>>,
}

impl Registry {
    pub fn new(node_id: u64) -> Registry {
        Registry {
            node_id,
            topics: Default::default(),
            by_key: Default::default(),
            led: Default::default(),
        }
    }

    /// Whether this broker leads the partition (may append to it and serve it).
    pub fn leads(&self, key: &PartitionKey) -> bool {
        self.led.read().contains_key(key)
    }

    /// The lease epoch (Kafka's leader epoch) of a partition this broker leads.
    pub fn leader_epoch(&self, key: &PartitionKey) -> Option<i32> {
        self.led.read().get(key).copied()
    }

    pub fn topic(&self, name: &str) -> Option<Arc<TopicLogs>> {
        let name = TopicName::new(name).ok()?;
        self.topics.read().get(&name).cloned()
    }

    pub fn topic_by_id(&self, id: TopicId) -> Option<Arc<TopicLogs>> {
        self.topics.read().values().find(|t| t.id == id).cloned()
    }

    pub fn partition(&self, key: &PartitionKey) -> Option<Arc<PartitionLog>> {
        self.by_key.read().get(key).cloned()
    }

    pub fn topics(&self) -> Vec<Arc<TopicLogs>> {
        let mut v: Vec<_> = self.topics.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn partitions(&self) -> Vec<Arc<PartitionLog>> {
        self.by_key.read().values().cloned().collect()
    }

    /// Adds topics that metadata has and we lack; drops topics metadata no longer has (or
    /// that were re-created under a new id). Returns true when something changed.
    pub fn sync(&self, state: &MetaState) -> bool {
        let mut topics = self.topics.write();
        let mut by_key = self.by_key.write();
        let mut changed = false;
        topics.retain(|name, t| {
            let keep = state.topic(name.as_str()).is_some_and(|m| m.id == t.id);
            if !keep {
                for p in &t.partitions {
                    by_key.remove(&p.key);
                }
                changed = true;
            }
            keep
        });
        let mut led = self.led.write();
        led.retain(|key, _| by_key.contains_key(key));
        let alive = state
            .cluster()
            .broker(self.node_id)
            .is_some_and(|b| b.alive);
        for meta in state.topics() {
            if let Some(t) = topics.get(&meta.name) {
                // Retention may have moved the log start.
                for p in &t.partitions {
                    p.advance_log_start(state.indexed_start(meta.id, p.key.partition));
                }
                // A direct partition's end is the index's (commits by any writer).
                if super::direct::is_direct(&meta.configs) {
                    for p in &t.partitions {
                        p.follow_index(state.indexed_end(meta.id, p.key.partition));
                    }
                }
                // Leases may have moved.
                let mut fresh = Vec::new();
                for p in &t.partitions {
                    let lease = self.writable_lease(state, alive, p.key);
                    match (lease, led.get(&p.key).copied()) {
                        (Some(l), Some(epoch)) if l.epoch == epoch => {}
                        (Some(l), _) => {
                            led.insert(p.key, l.epoch);
                            fresh.push(p.key.partition);
                        }
                        (None, _) => {
                            led.remove(&p.key);
                        }
                    }
                }
                // CreatePartitions may have added partitions: they start like a new topic's.
                let grown = meta.partitions as usize > t.partitions.len();
                if !fresh.is_empty() || grown {
                    let mut partitions: Vec<_> = t
                        .partitions
                        .iter()
                        .map(|p| {
                            if fresh.contains(&p.key.partition) {
                                let log = new_log(state, &meta.name, p.key);
                                log.traffic.carry_from(&p.traffic);
                                by_key.insert(p.key, log.clone());
                                log
                            } else {
                                p.clone()
                            }
                        })
                        .collect();
                    for partition in t.partitions.len() as u32..meta.partitions {
                        let key = PartitionKey {
                            topic: meta.id,
                            partition,
                        };
                        let log = new_log(state, &meta.name, key);
                        by_key.insert(key, log.clone());
                        if let Some(l) = self.writable_lease(state, alive, key) {
                            led.insert(key, l.epoch);
                        }
                        partitions.push(log);
                    }
                    topics.insert(
                        meta.name.clone(),
                        Arc::new(TopicLogs {
                            id: meta.id,
                            name: meta.name.clone(),
                            partitions,
                        }),
                    );
                    changed = true;
                }
                continue;
            }
            let partitions: Vec<_> = (0..meta.partitions)
                .map(|partition| {
                    let key = PartitionKey {
                        topic: meta.id,
                        partition,
                    };
                    new_log(state, &meta.name, key)
                })
                .collect();
            for p in &partitions {
                by_key.insert(p.key, p.clone());
                let lease = self.writable_lease(state, alive, p.key);
                if let Some(l) = lease {
                    led.insert(p.key, l.epoch);
                }
            }
            topics.insert(
                meta.name.clone(),
                Arc::new(TopicLogs {
                    id: meta.id,
                    name: meta.name.clone(),
                    partitions,
                }),
            );
            changed = true;
        }
        changed
    }
}

impl Registry {
    /// The partition's lease if it lets this broker write: it names this (alive) broker and
    /// waits on no stream's recovery.
    fn writable_lease<'a>(
        &self,
        state: &'a MetaState,
        alive: bool,
        key: PartitionKey,
    ) -> Option<&'a strata_meta::PartitionLease> {
        state
            .cluster()
            .lease(key.topic, key.partition)
            .filter(|l| alive && l.leader == Some(self.node_id) && l.pending_stream.is_none())
    }
}

/// A partition log that continues where the object index ends. If a planned move ended right
/// there, the log carries the producers' state it handed over: nothing was written since, so
/// it is exactly the state at the log's start (the sequencer adopts it before the first
/// append; entries rebuilt from the WAL since the move win over it).
fn new_log(state: &MetaState, name: &TopicName, key: PartitionKey) -> Arc<PartitionLog> {
    let end = state.indexed_end(key.topic, key.partition);
    let log = PartitionLog::new(
        key,
        name.clone(),
        state.indexed_start(key.topic, key.partition),
        end,
    );
    if let Some(handover) = state
        .cluster()
        .lease(key.topic, key.partition)
        .and_then(|l| l.handover.as_ref())
        .filter(|h| h.end_offset == end)
    {
        log.set_handover(handover.clone());
    }
    Arc::new(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use strata_meta::{ClusterCommand, Command};

    fn state_with_topic(partitions: u32) -> (MetaState, TopicId) {
        let mut state = MetaState::default();
        state.apply(&Command::Cluster(ClusterCommand::RegisterBroker {
            node_id: 1,
            kafka_addr: "127.0.0.1:9092".into(),
            rack: None,
            lease_ms: 1000,
            now_ms: 0,
            cluster_id: None,
            auth_secret: None,
            peer_addr: None,
        }));
        let id = TopicId::random();
        state.apply(&Command::CreateTopic {
            name: TopicName::new("t").unwrap(),
            id,
            partitions,
            configs: BTreeMap::new(),
            created_ms: 0,
        });
        (state, id)
    }

    #[test]
    fn added_partitions_join_and_old_logs_stay() {
        let (mut state, id) = state_with_topic(1);
        let registry = Registry::new(1);
        assert!(registry.sync(&state));
        let first = registry.topic("t").unwrap().partitions[0].clone();
        assert!(!registry.sync(&state), "nothing changed");

        state.apply(&Command::CreatePartitions {
            name: TopicName::new("t").unwrap(),
            partitions: 3,
        });
        assert!(registry.sync(&state));
        let t = registry.topic("t").unwrap();
        assert_eq!(t.partitions.len(), 3);
        assert!(
            Arc::ptr_eq(&t.partitions[0], &first),
            "partition 0 keeps its log"
        );
        for p in 0..3 {
            let key = PartitionKey {
                topic: id,
                partition: p,
            };
            assert!(registry.leads(&key), "partition {p} is led");
            assert!(registry.partition(&key).is_some());
            assert_eq!(t.partitions[p as usize].key, key);
        }
    }
}
