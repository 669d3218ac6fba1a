//! The partitions this broker serves, by name and by key, kept in step with metadata.
//!
//! The registry is a read-mostly map refreshed from the metadata state machine whenever it
//! changes (topic created or deleted). Request handlers look partitions up here and never wait
//! on raft.

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

#[derive(Debug, Default)]
pub struct Registry {
    topics: RwLock<HashMap<TopicName, Arc<TopicLogs>>>,
    by_key: RwLock<HashMap<PartitionKey, Arc<PartitionLog>>>,
}

impl Registry {
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
        for meta in state.topics() {
            if let Some(t) = topics.get(&meta.name) {
                // Retention may have moved the log start.
                for p in &t.partitions {
                    p.advance_log_start(state.indexed_start(meta.id, p.key.partition));
                }
                continue;
            }
            let partitions: Vec<_> = (0..meta.partitions)
                .map(|partition| {
                    let key = PartitionKey {
                        topic: meta.id,
                        partition,
                    };
                    Arc::new(PartitionLog::new(
                        key,
                        meta.name.clone(),
                        state.indexed_start(meta.id, partition),
                        state.indexed_end(meta.id, partition),
                    ))
                })
                .collect();
            for p in &partitions {
                by_key.insert(p.key, p.clone());
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
