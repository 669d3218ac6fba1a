//! MQTT publish → Kafka record, through the same sequencer/WAL path as a Kafka Produce.
//!
//! [`Ingest::append`] picks the Kafka topic (mapping rules), creates it on first use, picks the
//! partition (murmur2 of the MQTT topic), builds a one-record batch and enqueues it to the
//! sequencer. It returns as soon as the append is queued — so a connection's publishes keep
//! their order in the partition — with a future that resolves once the batch is durable (then
//! a QoS 1/2 publish may be acknowledged) or failed.

use super::mapping::{self, Mapping};
use super::tailer::Tailers;
use super::Message;
use crate::log::sequencer::{AppendError, AppendRequest, BatchSpan};
use crate::node::Node;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use strata_meta::{Command, CommandResult, Rejection};
use strata_types::{TopicId, TopicName};
use tokio::sync::oneshot;

/// Why a publish could not be stored. Mapped to reason codes in `wire::publish_error_code`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error("kafka topic `{topic}` could not be created: {reason}")]
    TopicCreate { topic: String, reason: String },
    #[error("this broker does not lead partition {partition} of `{topic}`")]
    NotLeader { topic: String, partition: usize },
    #[error("message of {size} bytes exceeds kafka.message_bytes_max ({max})")]
    TooLarge { size: usize, max: u32 },
    #[error("record encoding failed: {0}")]
    Encode(String),
    #[error("append failed: {0}")]
    Append(#[from] AppendError),
    #[error("retained message not written to the retained log")]
    RetainedNotStored,
    /// Refused by an `[[mqtt.acl]]` rule (`mqtt::auth`); never appended.
    #[error("not authorized by the MQTT ACL")]
    NotAuthorized,
}

pub struct Ingest {
    pub node: Arc<Node>,
    pub mapping: Mapping,
    pub tailers: Arc<Tailers>,
}

impl Ingest {
    /// Queues `msg` for its partition. The returned future resolves to the record's offset
    /// once durable.
    pub async fn append(
        &self,
        msg: &Message,
    ) -> Result<impl Future<Output = Result<i64, IngestError>> + Send + 'static, IngestError> {
        let _span = crate::telemetry::mqtt_publish_span(&msg.topic, msg.payload.len());
        let node = &self.node;
        let kafka_topic = self.mapping.kafka_topic_for(&msg.topic);
        let logs = match node.registry.topic(kafka_topic) {
            Some(t) => t,
            None => {
                // Boxed: the metadata write is a large future, and every connection task
                // would otherwise carry its size even when no topic is ever created.
                Box::pin(self.create_topic(kafka_topic)).await?;
                node.registry
                    .topic(kafka_topic)
                    .ok_or_else(|| IngestError::TopicCreate {
                        topic: kafka_topic.to_string(),
                        reason: "not visible after creation".into(),
                    })?
            }
        };
        let index = mapping::partition_for(msg.topic.as_bytes(), logs.partitions.len());
        let log = logs.partitions[index].clone();
        if !node.registry.leads(&log.key) {
            return Err(IngestError::NotLeader {
                topic: kafka_topic.to_string(),
                partition: index,
            });
        }
        let now = crate::log::sequencer::now_ms();
        let data = mapping::encode_batch(msg, now).map_err(IngestError::Encode)?;
        if data.len() > node.config.message_bytes_max as usize {
            return Err(IngestError::TooLarge {
                size: data.len(),
                max: node.config.message_bytes_max,
            });
        }
        let item = AppendRequest {
            log,
            data,
            batches: vec![BatchSpan {
                start: 0,
                offset_count: 1,
                producer: None,
            }],
            max_timestamp: now,
        };
        let (tx, rx) = oneshot::channel();
        if node.shutting_down.load(Ordering::Acquire)
            // WAL topics to the sequencer, direct topics to the direct writer.
            || crate::log::direct::route(node, vec![item], tx).await.is_err()
        {
            return Err(AppendError::ShuttingDown.into());
        }
        Ok(async move {
            match rx.await {
                Ok(results) => match results.into_iter().next() {
                    Some(Ok(offset)) => Ok(offset),
                    Some(Err(e)) => Err(e.into()),
                    None => Err(AppendError::ShuttingDown.into()),
                },
                Err(_) => Err(AppendError::ShuttingDown.into()),
            }
        })
    }

    /// Creates a Kafka topic MQTT maps to, with `kafka.default_partitions`; one created
    /// concurrently by someone else is fine.
    async fn create_topic(&self, name: &str) -> Result<(), IngestError> {
        let node = &self.node;
        let fail = |reason: String| IngestError::TopicCreate {
            topic: name.to_string(),
            reason,
        };
        let valid = TopicName::new(name.to_string()).map_err(|e| fail(e.to_string()))?;
        let result = node
            .meta
            .write(Command::CreateTopic {
                name: valid,
                id: TopicId::random(),
                partitions: node.config.file.kafka.default_partitions,
                configs: BTreeMap::new(),
                created_ms: crate::log::sequencer::now_ms(),
            })
            .await;
        node.refresh_topics();
        // Tail the new partitions before the first append to them, so nothing is missed.
        self.tailers.sync();
        match result {
            Ok(CommandResult::TopicCreated(_)) => {
                tracing::info!(topic = name, "created kafka topic for mqtt");
                Ok(())
            }
            Ok(CommandResult::Rejected(Rejection::TopicExists { .. })) => Ok(()),
            Ok(CommandResult::Rejected(r)) => Err(fail(r.to_string())),
            Ok(other) => Err(fail(format!("unexpected {other:?}"))),
            Err(err) => Err(fail(err.to_string())),
        }
    }
}
