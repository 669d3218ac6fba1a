//! The admin APIs: CreatePartitions, DescribeConfigs, AlterConfigs, IncrementalAlterConfigs,
//! DescribeCluster, DeleteRecords, OffsetForLeaderEpoch, DescribeLogDirs.
//!
//! Configs use the vocabulary of `crate::topic_configs` (Kafka's names); changes are metadata
//! commands (`AlterTopicConfigs`, `CreatePartitions`, `DeleteRecords`), so they are durable and
//! replicated, and every broker sees them through its registry.
//!
//! *Leader epochs.* The leader epoch this broker reports everywhere (Metadata, ListOffsets,
//! OffsetForLeaderEpoch) is the partition's lease epoch. Offsets are never truncated here (a
//! new leader continues at the index's end; nothing acknowledged is rewritten), so the end
//! offset of any epoch up to the current one is answered with the high watermark: a client
//! validating its position (KIP-320) never sees a truncation, which is the truth.

use super::errors;
use crate::node::Node;
use crate::topic_configs::{self, ConfigEntry, ConfigError, ConfigOp};
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResourceResponse;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, BrokerId, CreatePartitionsRequest,
    CreatePartitionsResponse, DeleteRecordsRequest, DeleteRecordsResponse, DescribeClusterRequest,
    DescribeClusterResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    DescribeLogDirsRequest, DescribeLogDirsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
    RequestKind, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;
use std::collections::BTreeSet;
use std::sync::Arc;
use strata_meta::{Command, CommandResult};
use strata_types::TopicName;

/// Kafka's config resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// DescribeCluster's endpoint type for brokers (the only one we describe).
const ENDPOINT_BROKERS: i8 = 1;
/// `cluster_authorized_operations` when the client did not ask for them.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;
/// Most resources or topics one admin request may name.
const ADMIN_ITEMS_MAX: usize = 10_000;

fn message(s: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(s.into()))
}

/// Answers one admin request; `None` for a request that is not an admin API.
pub async fn handle(node: &Arc<Node>, request: RequestKind, version: i16) -> Option<ResponseKind> {
    Some(match request {
        RequestKind::CreatePartitions(req) => {
            ResponseKind::CreatePartitions(create_partitions(node, req).await)
        }
        RequestKind::DescribeConfigs(req) => {
            ResponseKind::DescribeConfigs(describe_configs(node, req, version))
        }
        RequestKind::AlterConfigs(req) => {
            ResponseKind::AlterConfigs(alter_configs(node, req).await)
        }
        RequestKind::IncrementalAlterConfigs(req) => {
            ResponseKind::IncrementalAlterConfigs(incremental_alter_configs(node, req).await)
        }
        RequestKind::DescribeCluster(req) => {
            ResponseKind::DescribeCluster(describe_cluster(node, req))
        }
        RequestKind::DeleteRecords(req) => {
            ResponseKind::DeleteRecords(delete_records(node, req).await)
        }
        RequestKind::OffsetForLeaderEpoch(req) => {
            ResponseKind::OffsetForLeaderEpoch(offset_for_leader_epoch(node, req))
        }
        RequestKind::DescribeLogDirs(req) => {
            ResponseKind::DescribeLogDirs(describe_log_dirs(node, req, version))
        }
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// CreatePartitions

async fn create_partitions(node: &Node, req: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    let mut seen = BTreeSet::new();
    let duplicates: BTreeSet<String> = req
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.0.to_string()))
        .map(|t| t.name.0.to_string())
        .collect();
    for t in req.topics {
        let name = t.name.0.to_string();
        let result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        let outcome = if duplicates.contains(&name) {
            Err((
                E::InvalidRequest.code(),
                format!("topic `{name}` appears more than once"),
            ))
        } else if t.assignments.is_some() {
            Err((
                E::InvalidReplicaAssignment.code(),
                "manual replica assignment is not supported: partition leases place partitions"
                    .to_owned(),
            ))
        } else {
            grow_topic(node, &name, t.count, req.validate_only).await
        };
        results.push(match outcome {
            Ok(()) => result,
            Err((code, msg)) => result
                .with_error_code(code)
                .with_error_message(message(msg)),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// Grows topic `name` to `count` partitions (the CreatePartitions rules); also the admin
/// HTTP `PATCH /v1/topics/{name}`. Errors are Kafka codes with a message.
pub(crate) async fn grow_topic(
    node: &Node,
    name: &str,
    count: i32,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    let unknown = || {
        (
            errors::unknown_topic(),
            format!("topic `{name}` does not exist"),
        )
    };
    let topic = TopicName::new(name).map_err(|_| unknown())?;
    let current = node
        .meta
        .read()
        .topic(topic.as_str())
        .map(|m| m.partitions)
        .ok_or_else(unknown)?;
    let max = strata_meta::state::PARTITIONS_PER_TOPIC_MAX;
    let partitions = u32::try_from(count).unwrap_or(0);
    if partitions <= current || partitions > max {
        return Err((
            E::InvalidPartitions.code(),
            format!(
                "topic `{name}` has {current} partitions; the new count must be in {}..={max}, got {count}",
                current + 1
            ),
        ));
    }
    if validate_only {
        return Ok(());
    }
    let result = node
        .meta
        .write(Command::CreatePartitions {
            name: topic,
            partitions,
        })
        .await;
    node.refresh_topics();
    match result {
        Ok(CommandResult::TopicAltered(_)) => Ok(()),
        Ok(CommandResult::Rejected(r)) => Err((errors::rejection(&r), r.to_string())),
        Ok(other) => Err((
            E::UnknownServerError.code(),
            format!("unexpected {other:?}"),
        )),
        Err(err) => Err((E::RequestTimedOut.code(), err.to_string())),
    }
}

// ---------------------------------------------------------------------------------------------
// DescribeConfigs

fn describe_configs(
    node: &Node,
    req: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let mut results = Vec::with_capacity(req.resources.len());
    for r in req.resources.into_iter().take(ADMIN_ITEMS_MAX) {
        let result = DescribeConfigsResult::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        let entries = match r.resource_type {
            RESOURCE_TOPIC => {
                let meta = node.meta.read().topic(r.resource_name.as_str()).cloned();
                match meta {
                    Some(meta) => Ok(topic_configs::describe_topic(node, &meta)),
                    None => Err((
                        errors::unknown_topic(),
                        format!("topic `{}` does not exist", r.resource_name.as_str()),
                    )),
                }
            }
            RESOURCE_BROKER => check_broker(node, r.resource_name.as_str())
                .map(|()| topic_configs::describe_broker(node)),
            other => Err(unsupported_resource(other)),
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err((code, msg)) => {
                results.push(
                    result
                        .with_error_code(code)
                        .with_error_message(message(msg)),
                );
                continue;
            }
        };
        let wanted = |e: &ConfigEntry| {
            r.configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k.as_str() == e.name))
        };
        let configs = entries
            .into_iter()
            .filter(wanted)
            .map(|e| wire_entry(e, req.include_synonyms, req.include_documentation, version))
            .collect();
        results.push(result.with_configs(configs));
    }
    DescribeConfigsResponse::default().with_results(results)
}

fn wire_entry(
    e: ConfigEntry,
    synonyms: bool,
    documentation: bool,
    version: i16,
) -> DescribeConfigsResourceResult {
    let mut out = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_static_str(e.name))
        .with_value(Some(StrBytes::from_string(e.value)))
        .with_read_only(e.read_only)
        .with_config_source(e.source as i8)
        .with_is_sensitive(false);
    if synonyms {
        out = out.with_synonyms(
            e.synonyms
                .into_iter()
                .map(|(name, value, source)| {
                    DescribeConfigsSynonym::default()
                        .with_name(StrBytes::from_static_str(name))
                        .with_value(Some(StrBytes::from_string(value)))
                        .with_source(source as i8)
                })
                .collect(),
        );
    }
    if version >= 3 {
        out = out.with_config_type(e.config_type as i8);
        if documentation {
            out = out.with_documentation(Some(StrBytes::from_static_str(e.doc)));
        }
    }
    out
}

/// A broker resource names this broker (its node id) or the cluster default (empty).
fn check_broker(node: &Node, name: &str) -> Result<(), (i16, String)> {
    if name.is_empty() || name == node.config.node_id.to_string() {
        Ok(())
    } else {
        Err((
            E::InvalidRequest.code(),
            format!(
                "broker resource `{name}`: this is broker {}; ask the broker itself",
                node.config.node_id
            ),
        ))
    }
}

fn unsupported_resource(resource_type: i8) -> (i16, String) {
    (
        E::InvalidRequest.code(),
        format!("config resource type {resource_type} is not supported (only topics and brokers)"),
    )
}

// ---------------------------------------------------------------------------------------------
// AlterConfigs / IncrementalAlterConfigs

/// One resource of either alter API: the outcome as a Kafka code and message.
async fn alter_resource(
    node: &Node,
    resource_type: i8,
    name: &str,
    ops: Vec<ConfigOp>,
    replace: bool,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    match resource_type {
        RESOURCE_TOPIC => {
            topic_configs::alter_topic_configs(node, name, &ops, replace, validate_only)
                .await
                .map(|_| ())
                .map_err(|e| (errors::config(&e), e.to_string()))
        }
        RESOURCE_BROKER => {
            check_broker(node, name)?;
            match ops.first() {
                None => Ok(()),
                Some(
                    ConfigOp::Set(key, _)
                    | ConfigOp::Delete(key)
                    | ConfigOp::Append(key, _)
                    | ConfigOp::Subtract(key, _),
                ) => {
                    let e = ConfigError::ReadOnly {
                        key: key.clone(),
                        hint: ": broker configs come from the node's config file".to_owned(),
                    };
                    Err((errors::config(&e), e.to_string()))
                }
            }
        }
        other => Err(unsupported_resource(other)),
    }
}

async fn alter_configs(node: &Node, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources.into_iter().take(ADMIN_ITEMS_MAX) {
        let mut ops = Vec::with_capacity(r.configs.len());
        for c in r.configs {
            // AlterConfigs replaces the whole set: a null value is the same as leaving it out.
            if let Some(v) = c.value {
                ops.push(ConfigOp::Set(c.name.to_string(), v.to_string()));
            }
        }
        let outcome = alter_resource(
            node,
            r.resource_type,
            r.resource_name.as_str(),
            ops,
            true,
            req.validate_only,
        )
        .await;
        let resp = AlterConfigsResourceResponse::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name);
        responses.push(match outcome {
            Ok(()) => resp,
            Err((code, msg)) => resp.with_error_code(code).with_error_message(message(msg)),
        });
    }
    AlterConfigsResponse::default().with_responses(responses)
}

async fn incremental_alter_configs(
    node: &Node,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources.into_iter().take(ADMIN_ITEMS_MAX) {
        let mut ops = Vec::with_capacity(r.configs.len());
        let mut bad_op = None;
        for c in r.configs {
            let name = c.name.to_string();
            let value = c.value.map(|v| v.to_string()).unwrap_or_default();
            ops.push(match c.config_operation {
                0 => ConfigOp::Set(name, value),
                1 => ConfigOp::Delete(name),
                2 => ConfigOp::Append(name, value),
                3 => ConfigOp::Subtract(name, value),
                op => {
                    bad_op = Some((
                        E::InvalidRequest.code(),
                        format!("config `{name}`: unknown operation {op}"),
                    ));
                    break;
                }
            });
        }
        let outcome = match bad_op {
            Some(err) => Err(err),
            None => {
                alter_resource(
                    node,
                    r.resource_type,
                    r.resource_name.as_str(),
                    ops,
                    false,
                    req.validate_only,
                )
                .await
            }
        };
        let resp = IncrementalResourceResponse::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name);
        responses.push(match outcome {
            Ok(()) => resp,
            Err((code, msg)) => resp.with_error_code(code).with_error_message(message(msg)),
        });
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

// ---------------------------------------------------------------------------------------------
// DescribeCluster

fn describe_cluster(node: &Node, req: DescribeClusterRequest) -> DescribeClusterResponse {
    let resp = DescribeClusterResponse::default()
        .with_endpoint_type(req.endpoint_type)
        .with_cluster_id(StrBytes::from_string(node.cluster_id.clone()))
        .with_cluster_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED);
    if req.endpoint_type != ENDPOINT_BROKERS {
        return resp
            .with_error_code(E::UnsupportedEndpointType.code())
            .with_error_message(message(format!(
                "endpoint type {} is not supported; brokers (1) are",
                req.endpoint_type
            )))
            .with_controller_id(BrokerId(-1));
    }
    let live = crate::cluster::live_brokers(node);
    // The same controller Metadata reports.
    let controller = BrokerId(crate::cluster::controller_id(node, &live));
    let brokers: Vec<DescribeClusterBroker> = live
        .into_iter()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.node_id))
                .with_host(StrBytes::from_string(b.host))
                .with_port(b.port)
        })
        .collect();
    resp.with_controller_id(controller).with_brokers(brokers)
}

// ---------------------------------------------------------------------------------------------
// DeleteRecords

async fn delete_records(node: &Node, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics.into_iter().take(ADMIN_ITEMS_MAX) {
        let logs = node.registry.topic(t.name.0.as_str());
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let resp = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            let log = logs.as_ref().and_then(|l| {
                usize::try_from(p.partition_index)
                    .ok()
                    .and_then(|i| l.partitions.get(i))
            });
            let Some(log) = log else {
                partitions.push(resp.with_error_code(errors::unknown_topic()));
                continue;
            };
            if !node.registry.leads(&log.key) {
                partitions.push(resp.with_error_code(errors::not_leader()));
                continue;
            }
            let offsets = log.offsets();
            // -1: everything up to the high watermark (Kafka's convention).
            let before = if p.offset == -1 {
                offsets.high_watermark
            } else {
                p.offset
            };
            if !(0..=offsets.high_watermark).contains(&before) {
                partitions.push(resp.with_error_code(E::OffsetOutOfRange.code()));
                continue;
            }
            if before <= offsets.log_start_offset {
                partitions.push(resp.with_low_watermark(offsets.log_start_offset));
                continue;
            }
            let result = node
                .meta
                .write(Command::DeleteRecords {
                    topic: log.key.topic,
                    partition: log.key.partition,
                    before_offset: before,
                    now_ms: crate::log::sequencer::now_ms(),
                })
                .await;
            partitions.push(match result {
                Ok(CommandResult::PartitionTrimmed { log_start_offset }) => {
                    log.advance_log_start(log_start_offset);
                    tracing::info!(key = ?log.key, log_start_offset, "records deleted");
                    resp.with_low_watermark(log.offsets().log_start_offset)
                }
                Ok(CommandResult::Rejected(r)) => resp.with_error_code(errors::rejection(&r)),
                Ok(other) => {
                    tracing::warn!(result = ?other, "DeleteRecords: unexpected answer");
                    resp.with_error_code(E::UnknownServerError.code())
                }
                Err(err) => {
                    tracing::warn!(%err, "DeleteRecords: metadata write failed");
                    resp.with_error_code(E::RequestTimedOut.code())
                }
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

// ---------------------------------------------------------------------------------------------
// OffsetForLeaderEpoch

fn offset_for_leader_epoch(
    node: &Node,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics.into_iter().take(ADMIN_ITEMS_MAX) {
        let logs = node.registry.topic(t.topic.0.as_str());
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let resp = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(-1)
                .with_end_offset(-1);
            let log = logs.as_ref().and_then(|l| {
                usize::try_from(p.partition)
                    .ok()
                    .and_then(|i| l.partitions.get(i))
            });
            let Some(log) = log else {
                partitions.push(resp.with_error_code(errors::unknown_topic()));
                continue;
            };
            let Some(epoch) = node.registry.leader_epoch(&log.key) else {
                partitions.push(resp.with_error_code(errors::not_leader()));
                continue;
            };
            // KIP-320 fencing: the client's view of the leader epoch must be ours.
            if p.current_leader_epoch >= 0 && p.current_leader_epoch > epoch {
                partitions.push(resp.with_error_code(E::UnknownLeaderEpoch.code()));
                continue;
            }
            if p.current_leader_epoch >= 0 && p.current_leader_epoch < epoch {
                partitions.push(resp.with_error_code(E::FencedLeaderEpoch.code()));
                continue;
            }
            partitions.push(if p.leader_epoch > epoch {
                // An epoch this partition never had: Kafka answers undefined (-1, -1).
                resp
            } else {
                resp.with_leader_epoch(p.leader_epoch)
                    .with_end_offset(log.offsets().high_watermark)
            });
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

// ---------------------------------------------------------------------------------------------
// DescribeLogDirs

fn describe_log_dirs(
    node: &Node,
    req: DescribeLogDirsRequest,
    version: i16,
) -> DescribeLogDirsResponse {
    // Which partitions: all this broker leads, or those asked for (unknown ones are left out,
    // as Kafka does).
    let wanted: Option<Vec<(String, Vec<i32>)>> = req.topics.map(|topics| {
        topics
            .into_iter()
            .take(ADMIN_ITEMS_MAX)
            .map(|t| (t.topic.0.to_string(), t.partitions))
            .collect()
    });
    let logs = node.registry.topics();
    let state = node.meta.read();
    let mut topics = Vec::new();
    for t in &logs {
        let asked: Option<&Vec<i32>> = match &wanted {
            None => None,
            Some(list) => match list.iter().find(|(n, _)| n == t.name.as_str()) {
                Some((_, parts)) => Some(parts),
                None => continue,
            },
        };
        let mut partitions = Vec::new();
        for log in &t.partitions {
            let index = log.key.partition as i32;
            if asked.is_some_and(|a| !a.contains(&index)) || !node.registry.leads(&log.key) {
                continue;
            }
            // Bytes in object storage (the index) plus the tail not uploaded yet.
            let indexed: u64 = state
                .blocks(log.key.topic, log.key.partition)
                .map(|b| b.len)
                .sum();
            let size = indexed.saturating_add(log.pending_bytes());
            partitions.push(
                DescribeLogDirsPartition::default()
                    .with_partition_index(index)
                    .with_partition_size(i64::try_from(size).unwrap_or(i64::MAX))
                    .with_offset_lag(0),
            );
        }
        if !partitions.is_empty() {
            topics.push(
                DescribeLogDirsTopic::default()
                    .with_name(super::handlers::wire_topic(t.name.as_str()))
                    .with_partitions(partitions),
            );
        }
    }
    let mut dir = DescribeLogDirsResult::default()
        .with_log_dir(StrBytes::from_string(
            node.config.data_dir.display().to_string(),
        ))
        .with_topics(topics);
    if version >= 4 {
        // Sizes of the local disk are not what bounds a partition here (object storage is).
        dir = dir.with_total_bytes(-1).with_usable_bytes(-1);
    }
    DescribeLogDirsResponse::default().with_results(vec![dir])
}
