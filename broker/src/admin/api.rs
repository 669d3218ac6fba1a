//! The JSON handlers of the admin API (`/v1/…`).
//!
//! Reads come from this node's applied metadata (`node.meta.read()`, no raft round trip), the
//! partition logs it leads (tails: high watermark, uploaded offset) and the group coordinator
//! task. Writes go through the same paths as the Kafka APIs: topic creation through
//! `kafka::handlers::create_topic`, deletion and offset commits as the metadata commands the
//! Kafka handlers write (a non-leader meta node forwards them to the leader).
//!
//! A partition this node does not lead is described from the metadata index alone: its high
//! watermark is then the indexed end (what is in object storage), which trails the leader's
//! tail by at most one flush interval.

use super::ApiError;
use crate::groups::core::MemberRef;
use crate::groups::{GroupError, GroupState};
use crate::node::Node;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use strata_meta::acl::{
    AclBinding, AclBindingFilter, AclOperation, AclPermission, PatternType, ResourceType,
};
use strata_meta::state::OffsetCommit;
use strata_meta::{Command, CommandResult, MetaState, Rejection};
use strata_types::{PartitionKey, TopicId, TopicName};

type ApiResult<T> = Result<T, ApiError>;

// ---------------------------------------------------------------------------------------------
// Partitions and topics

/// One partition as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PartitionView {
    partition: u32,
    /// The broker whose lease names it (null when none is alive or it is moving).
    leader: Option<u64>,
    leader_epoch: i32,
    /// Whether this node leads it (its offsets then come from the live tail).
    led_here: bool,
    log_start_offset: i64,
    high_watermark: i64,
    /// Records between the log start and the high watermark (offsets are dense).
    messages: i64,
    uploaded_offset: i64,
    /// Index blocks in object storage, and how many of them are compacted segments.
    blocks: usize,
    segments: usize,
    /// Distinct objects holding this partition's blocks, and the bytes of those blocks.
    objects: usize,
    object_bytes: u64,
}

fn partition_view(node: &Node, state: &MetaState, topic: TopicId, partition: u32) -> PartitionView {
    let key = PartitionKey { topic, partition };
    let lease = state.cluster().lease(topic, partition);
    let led_here = node.registry.leads(&key);
    let (log_start_offset, high_watermark, uploaded_offset) =
        match node.registry.partition(&key).filter(|_| led_here) {
            Some(log) => {
                let o = log.offsets();
                (o.log_start_offset, o.high_watermark, o.uploaded_offset)
            }
            None => {
                let end = state.indexed_end(topic, partition);
                (state.indexed_start(topic, partition), end, end)
            }
        };
    let mut blocks = 0;
    let mut segments = 0;
    let mut object_bytes = 0;
    let mut keys = BTreeSet::new();
    for b in state.blocks(topic, partition) {
        blocks += 1;
        segments += usize::from(b.is_segment());
        object_bytes += b.len;
        keys.insert(b.key.as_str());
    }
    PartitionView {
        partition,
        leader: state.cluster().live_leader(topic, partition),
        leader_epoch: lease.map_or(0, |l| l.epoch),
        led_here,
        log_start_offset,
        high_watermark,
        messages: (high_watermark - log_start_offset).max(0),
        uploaded_offset,
        blocks,
        segments,
        objects: keys.len(),
        object_bytes,
    }
}

#[derive(Serialize)]
pub(crate) struct TopicView {
    name: String,
    id: String,
    partitions: Vec<PartitionView>,
    /// Sum of the partitions' `messages`.
    messages: i64,
    object_bytes: u64,
}

fn topic_view(node: &Node, state: &MetaState, meta: &strata_meta::TopicMeta) -> TopicView {
    let partitions: Vec<PartitionView> = (0..meta.partitions)
        .map(|p| partition_view(node, state, meta.id, p))
        .collect();
    TopicView {
        name: meta.name.to_string(),
        id: meta.id.to_string(),
        messages: partitions.iter().map(|p| p.messages).sum(),
        object_bytes: partitions.iter().map(|p| p.object_bytes).sum(),
        partitions,
    }
}

/// `GET /v1/topics`: every topic with its partitions' offsets and index counts.
pub(crate) async fn topics(State(node): State<Arc<Node>>) -> Json<Vec<TopicView>> {
    Json(list_topics(&node))
}

/// Every topic, by name (`GET /v1/topics`, gRPC `ListTopics`).
pub(crate) fn list_topics(node: &Node) -> Vec<TopicView> {
    let state = node.meta.read();
    let mut views: Vec<TopicView> = state
        .topics()
        .map(|t| topic_view(node, &state, t))
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    views
}

#[derive(Serialize)]
pub(crate) struct TopicDetail {
    #[serde(flatten)]
    topic: TopicView,
    partition_count: u32,
    created_ms: i64,
    /// `wal` or `direct` (the `strata.storage.mode` config).
    storage_mode: &'static str,
    configs: BTreeMap<String, String>,
}

pub(crate) fn topic_detail(node: &Node, name: &str) -> ApiResult<TopicDetail> {
    let state = node.meta.read();
    let meta = state
        .topic(name)
        .ok_or_else(|| unknown_topic(name))?
        .clone();
    Ok(TopicDetail {
        topic: topic_view(node, &state, &meta),
        partition_count: meta.partitions,
        created_ms: meta.created_ms,
        storage_mode: if crate::log::direct::is_direct(&meta.configs) {
            "direct"
        } else {
            "wal"
        },
        configs: meta.configs,
    })
}

fn unknown_topic(name: &str) -> ApiError {
    ApiError::not_found("unknown_topic", format!("topic `{name}` does not exist"))
}

/// `GET /v1/topics/{name}`.
pub(crate) async fn describe_topic(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(topic_detail(&node, &name)?))
}

/// Parses a request body as a JSON object; the error names what is wrong with it.
pub(super) fn json_object(body: &[u8]) -> ApiResult<Map<String, Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_field(
            "body",
            "the request body is empty; send a JSON object",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::bad_field(
            "body",
            format!(
                "the request body must be a JSON object, not {}",
                json_kind(&other)
            ),
        )),
        Err(err) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the request body is not valid JSON: {err}"),
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Refuses fields a request does not know (a typo should not be silently ignored).
pub(super) fn only_fields(body: &Map<String, Value>, known: &[&'static str]) -> ApiResult<()> {
    for key in body.keys() {
        if !known.contains(&key.as_str()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "unknown field `{key}`; expected one of: {}",
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// `POST /v1/topics` `{name, partitions?, configs?}`: 201 with the new topic's description.
pub(crate) async fn create_topic(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let body = json_object(&body)?;
    Ok((
        StatusCode::CREATED,
        Json(create_topic_op(&node, body).await?),
    ))
}

/// Creates a topic from the fields of a `POST /v1/topics` body (gRPC `CreateTopic` sends the
/// same object).
pub(crate) async fn create_topic_op(
    node: &Node,
    body: Map<String, Value>,
) -> ApiResult<TopicDetail> {
    only_fields(&body, &["name", "partitions", "configs"])?;
    let name = match body.get("name") {
        Some(Value::String(s)) => {
            TopicName::new(s.clone()).map_err(|e| ApiError::bad_field("name", e.to_string()))?
        }
        Some(other) => {
            return Err(ApiError::bad_field(
                "name",
                format!("`name` must be a string, not {}", json_kind(other)),
            ))
        }
        None => return Err(ApiError::bad_field("name", "`name` is required")),
    };
    let max = crate::kafka::handlers::TOPIC_PARTITIONS_MAX;
    let partitions = match body.get("partitions") {
        None | Some(Value::Null) => node.config.file.kafka.default_partitions,
        Some(v) => v
            .as_i64()
            .filter(|n| (1..=i64::from(max)).contains(n))
            .map(|n| n as u32)
            .ok_or_else(|| {
                ApiError::bad_field(
                    "partitions",
                    format!("`partitions` must be an integer in 1..={max}, got {v}"),
                )
            })?,
    };
    let mut configs = BTreeMap::new();
    match body.get("configs") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => {
                        return Err(ApiError::bad_field(
                            "configs",
                            format!(
                                "config `{k}` must be a string or a number, not {}",
                                json_kind(other)
                            ),
                        ))
                    }
                };
                configs.insert(k.clone(), value);
            }
        }
        Some(other) => {
            return Err(ApiError::bad_field(
                "configs",
                format!(
                    "`configs` must be an object of KEY: VALUE, not {}",
                    json_kind(other)
                ),
            ))
        }
    }
    let topic = name.to_string();
    crate::kafka::handlers::create_topic(node, name, partitions, configs)
        .await
        .map_err(|(code, message)| kafka_code_error(code, message))?;
    topic_detail(node, &topic)
}

/// Maps the Kafka error code of a topic write to the API's status and kind.
fn kafka_code_error(code: i16, message: String) -> ApiError {
    use crate::kafka::client::{classify_topic_error, TopicWriteError as E};
    match classify_topic_error(code) {
        E::Exists => ApiError::conflict("exists", message),
        E::UnknownTopic => ApiError::not_found("unknown_topic", message),
        E::InvalidPartitions => ApiError::bad_field("partitions", message),
        E::InvalidName => ApiError::bad_field("name", message),
        E::InvalidConfig => ApiError::bad_field("configs", message),
        E::InvalidRequest => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message),
        E::TimedOut => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
        E::Other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
    }
}

/// `PATCH /v1/topics/{name}` `{partitions?, set?: {key: value}, delete?: [key], validate_only?}`:
/// grows the topic (the CreatePartitions path), then changes its configs (the
/// IncrementalAlterConfigs path); 200 with the topic's description.
pub(crate) async fn alter_topic(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let body = json_object(&body)?;
    Ok(Json(alter_topic_op(&node, &name, body).await?))
}

/// Alters a topic from the fields of a `PATCH /v1/topics/{name}` body (gRPC `AlterTopic`).
pub(crate) async fn alter_topic_op(
    node: &Node,
    name: &str,
    body: Map<String, Value>,
) -> ApiResult<TopicDetail> {
    use crate::topic_configs::{alter_topic_configs, ConfigError, ConfigOp};
    let name = name.to_owned();
    only_fields(&body, &["partitions", "set", "delete", "validate_only"])?;
    if node.meta.read().topic(&name).is_none() {
        return Err(unknown_topic(&name));
    }
    let validate_only = match body.get("validate_only") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::bad_field(
                "validate_only",
                format!(
                    "`validate_only` must be a boolean, not {}",
                    json_kind(other)
                ),
            ))
        }
    };
    let partitions = match body.get("partitions") {
        None => None,
        Some(v) => Some(
            v.as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::bad_field("partitions", "`partitions` must be a whole number")
                })?,
        ),
    };
    let mut ops = Vec::new();
    match body.get("set") {
        None => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let Value::String(v) = v else {
                    return Err(ApiError::bad_field(
                        "set",
                        format!("the value of `{k}` must be a string, not {}", json_kind(v)),
                    ));
                };
                ops.push(ConfigOp::Set(k.clone(), v.clone()));
            }
        }
        Some(other) => {
            return Err(ApiError::bad_field(
                "set",
                format!("`set` must be an object, not {}", json_kind(other)),
            ))
        }
    }
    match body.get("delete") {
        None => {}
        Some(Value::Array(keys)) => {
            for k in keys {
                let Value::String(k) = k else {
                    return Err(ApiError::bad_field("delete", "`delete` lists config names"));
                };
                ops.push(ConfigOp::Delete(k.clone()));
            }
        }
        Some(other) => {
            return Err(ApiError::bad_field(
                "delete",
                format!("`delete` must be an array, not {}", json_kind(other)),
            ))
        }
    }
    if partitions.is_none() && ops.is_empty() {
        return Err(ApiError::bad_field(
            "body",
            "nothing to alter: send `partitions`, `set` or `delete`",
        ));
    }
    // Configs are checked first (validate only), so a bad key changes nothing at all.
    let config_error = |err: ConfigError| match err {
        ConfigError::UnknownTopic { name } => unknown_topic(&name),
        ConfigError::Unavailable(m) => meta_unavailable(m),
        ConfigError::Refused(m) => ApiError::conflict("refused", m),
        other => ApiError::bad_field("set", other.to_string()),
    };
    if !ops.is_empty() {
        alter_topic_configs(node, &name, &ops, false, true)
            .await
            .map_err(config_error)?;
    }
    if let Some(count) = partitions {
        crate::kafka::admin_handlers::grow_topic(node, &name, count, validate_only)
            .await
            .map_err(|(code, message)| {
                use kafka_protocol::ResponseError as E;
                match E::try_from_code(code) {
                    Some(E::InvalidPartitions) => ApiError::bad_field("partitions", message),
                    Some(E::UnknownTopicOrPartition) => unknown_topic(&name),
                    _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
                }
            })?;
    }
    if !ops.is_empty() && !validate_only {
        alter_topic_configs(node, &name, &ops, false, false)
            .await
            .map_err(config_error)?;
    }
    topic_detail(node, &name)
}

/// `DELETE /v1/topics/{name}`: the `DeleteTopic` command DeleteTopics writes.
pub(crate) async fn delete_topic(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(delete_topic_op(&node, &name).await?))
}

/// Deletes a topic: `{"deleted": NAME, "id": ID}`.
pub(crate) async fn delete_topic_op(node: &Node, name: &str) -> ApiResult<Value> {
    let (name, id) = {
        let state = node.meta.read();
        let meta = state.topic(name).ok_or_else(|| unknown_topic(name))?;
        (meta.name.clone(), meta.id)
    };
    let result = node
        .meta
        .write(Command::DeleteTopic { name: name.clone() })
        .await;
    node.refresh_topics();
    match result {
        Ok(CommandResult::TopicDeleted(_)) => {
            Ok(serde_json::json!({"deleted": name.to_string(), "id": id.to_string()}))
        }
        Ok(CommandResult::Rejected(Rejection::UnknownTopic { .. })) => {
            Err(unknown_topic(name.as_str()))
        }
        Ok(CommandResult::Rejected(r)) => Err(ApiError::conflict("refused", r.to_string())),
        Ok(other) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("unexpected metadata answer {other:?}"),
        )),
        Err(err) => Err(meta_unavailable(err)),
    }
}

fn meta_unavailable(err: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!("metadata write failed: {err}"),
    )
}

// ---------------------------------------------------------------------------------------------
// Cluster and storage

#[derive(Serialize)]
struct WalView {
    /// Bytes in the local WAL (the `strata_wal_bytes` gauge).
    bytes: u64,
    /// Bytes acknowledged but not yet uploaded to object storage.
    unuploaded_bytes: u64,
    published_lsn: u64,
    /// This node's WAL stream in metadata: epoch, holder, settled LSN.
    stream_epoch: Option<u64>,
    stream_holder: Option<u64>,
    settled_lsn: Option<u64>,
    healthy: bool,
}

fn wal_view(node: &Node, state: &MetaState) -> WalView {
    let stream = state.cluster().stream(node.config.node_id);
    WalView {
        bytes: node.metrics.wal_bytes.load(Ordering::Relaxed),
        unuploaded_bytes: node.seq_shared.pending_bytes.load(Ordering::Relaxed),
        published_lsn: node.seq_shared.published_lsn.load(Ordering::Relaxed),
        stream_epoch: stream.map(|s| s.epoch),
        stream_holder: stream.and_then(|s| s.holder),
        settled_lsn: stream.map(|s| s.settled_lsn),
        healthy: node.is_healthy(),
    }
}

/// `GET /v1/cluster`.
pub(crate) async fn cluster(State(node): State<Arc<Node>>) -> Json<Value> {
    Json(cluster_op(&node))
}

/// The cluster status (`GET /v1/cluster`, gRPC `GetCluster`).
pub(crate) fn cluster_op(node: &Node) -> Value {
    let c = &node.config;
    let mut roles = Vec::new();
    for (on, name) in [
        (c.roles.meta, "meta"),
        (c.roles.wal, "wal"),
        (c.roles.broker, "broker"),
    ] {
        if on {
            roles.push(name);
        }
    }
    let membership = node.meta.membership();
    let meta_leader = node.meta.leader();
    let state = node.meta.read();
    let mut led: BTreeMap<u64, usize> = BTreeMap::new();
    // Partitions per leader with a planned move under way (`moves.rs`).
    let mut moving: BTreeMap<u64, usize> = BTreeMap::new();
    let mut partitions_total = 0usize;
    for t in state.topics() {
        for p in 0..t.partitions {
            partitions_total += 1;
            if let Some(l) = state.cluster().live_leader(t.id, p) {
                *led.entry(l).or_default() += 1;
            }
            let lease = state.cluster().lease(t.id, p);
            if let Some(leader) = lease.filter(|l| l.target.is_some()).and_then(|l| l.leader) {
                *moving.entry(leader).or_default() += 1;
            }
        }
    }
    let brokers: Vec<Value> = state
        .cluster()
        .brokers()
        .map(|b| {
            serde_json::json!({
                "id": b.node_id,
                "address": b.kafka_addr,
                "rack": b.rack,
                "alive": b.alive,
                "heartbeat_ms": b.heartbeat_ms,
                "lease_ms": b.lease_ms,
                "lease_expires_ms": b.heartbeat_ms.saturating_add(b.lease_ms as i64),
                "registered_ms": b.registered_ms,
                "partitions_led": led.get(&b.node_id).copied().unwrap_or(0),
                "meta_voter": membership.voters.contains_key(&b.node_id),
                "draining": b.draining,
                "moves_planned": moving.get(&b.node_id).copied().unwrap_or(0),
            })
        })
        .collect();
    serde_json::json!({
        "node_id": c.node_id,
        "cluster_id": node.cluster_id,
        "version": env!("CARGO_PKG_VERSION"),
        "roles": roles,
        "uptime_ms": super::uptime_ms(),
        "healthy": node.is_healthy(),
        "listeners": {
            "kafka": c.kafka_listen.to_string(),
            "kafka_advertised": format!("{}:{}", c.kafka_advertised.0, c.kafka_advertised.1),
            "admin": c.admin_listen.to_string(),
            "mqtt": c.mqtt_listen.to_string(),
            "meta": (!c.meta_peers.is_empty()).then(|| c.meta_listen.to_string()),
            "wal": c.roles.serves_wal(c.wal_quorum.is_some()).then(|| c.wal_listen.to_string()),
        },
        "object_store": node.store.url(),
        "meta": {
            "leader": meta_leader,
            "this_node_leads": node.meta.is_leader(),
            "voters": membership.voters.keys().collect::<Vec<_>>(),
            "learners": membership.learners.keys().collect::<Vec<_>>(),
            "last_applied": state.last_applied(),
        },
        "brokers": brokers,
        "topics": state.topics().count(),
        "partitions": partitions_total,
        "wal": wal_view(node, &state),
    })
}

/// `GET /v1/storage`: object-store usage per topic from the metadata index (never a LIST).
pub(crate) async fn storage(State(node): State<Arc<Node>>) -> Json<Value> {
    Json(storage_op(&node))
}

/// Object-store usage (`GET /v1/storage`, gRPC `GetStorage`).
pub(crate) fn storage_op(node: &Node) -> Value {
    let state = node.meta.read();
    let mut all_keys = BTreeSet::new();
    let (mut blocks_total, mut segments_total, mut bytes_total) = (0usize, 0usize, 0u64);
    let mut topics = Vec::new();
    for t in state.topics() {
        let mut keys = BTreeSet::new();
        let (mut blocks, mut segments, mut bytes) = (0usize, 0usize, 0u64);
        for p in 0..t.partitions {
            for b in state.blocks(t.id, p) {
                blocks += 1;
                segments += usize::from(b.is_segment());
                bytes += b.len;
                keys.insert(b.key.as_str());
            }
        }
        blocks_total += blocks;
        segments_total += segments;
        bytes_total += bytes;
        topics.push(serde_json::json!({
            "name": t.name.to_string(),
            "partitions": t.partitions,
            "objects": keys.len(),
            "blocks": blocks,
            "segments": segments,
            "bytes": bytes,
        }));
        all_keys.extend(keys);
    }
    let garbage: Vec<&str> = state.garbage_keys().collect();
    let oldest = garbage.iter().filter_map(|k| state.garbage_since(k)).min();
    serde_json::json!({
        "object_store": node.store.url(),
        "topics": topics,
        "total": {
            "objects": all_keys.len(),
            "blocks": blocks_total,
            "segments": segments_total,
            "bytes": bytes_total,
        },
        "garbage": {
            "objects": garbage.len(),
            "oldest_since_ms": oldest,
        },
        "wal": wal_view(node, &state),
    })
}

/// `GET /v1/wal`.
pub(crate) async fn wal(State(node): State<Arc<Node>>) -> Json<Value> {
    Json(wal_op(&node))
}

/// WAL state (`GET /v1/wal`, gRPC `GetWal`): this node's WAL, every WAL stream in metadata
/// (epoch, holder, settled LSN, replicas) and every registered WAL node (address, liveness).
pub(crate) fn wal_op(node: &Node) -> Value {
    let state = node.meta.read();
    let streams: Vec<Value> = state
        .cluster()
        .streams()
        .map(|(id, s)| {
            serde_json::json!({
                "stream": id,
                "epoch": s.epoch,
                "holder": s.holder,
                "settled_lsn": s.settled_lsn,
                "replicas": crate::takeover::stream_replicas(&node.config, id, &state),
            })
        })
        .collect();
    let now = crate::cluster::now_ms();
    let wal_nodes: Vec<Value> = state
        .cluster()
        .wal_nodes()
        .map(|n| {
            serde_json::json!({
                "node_id": n.node_id,
                "wal_addr": n.wal_addr,
                "alive": n.alive_at(now),
                "heartbeat_ms": n.heartbeat_ms,
            })
        })
        .collect();
    serde_json::json!({
        "node_id": node.config.node_id,
        "local": wal_view(node, &state),
        "streams": streams,
        "wal_nodes": wal_nodes,
    })
}

// ---------------------------------------------------------------------------------------------
// Consumer groups

/// A group's committed offsets with the partitions' high watermarks and lag.
fn group_offsets(node: &Node, group: &str) -> Vec<Value> {
    let state = node.meta.read();
    state
        .group_offsets(group)
        .map(|(topic, partition, o)| {
            let name = state
                .topic_by_id(topic)
                .map(|t| t.name.to_string())
                .unwrap_or_else(|| topic.to_string());
            let p = partition_view(node, &state, topic, partition);
            serde_json::json!({
                "topic": name,
                "partition": partition,
                "committed_offset": o.offset,
                "high_watermark": p.high_watermark,
                "lag": (p.high_watermark - o.offset).max(0),
                "metadata": o.metadata,
                "commit_ms": o.commit_ms,
            })
        })
        .collect()
}

fn group_error(err: GroupError) -> ApiError {
    match err {
        GroupError::InvalidGroupId => ApiError::bad_field("id", "the group id is invalid"),
        GroupError::NotCoordinator => ApiError::conflict("not_coordinator", err.to_string()),
        other => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            other.to_string(),
        ),
    }
}

/// `GET /v1/groups`: the groups in this node's coordinator and the ones metadata holds
/// offsets for (`Empty`), with their total lag.
pub(crate) async fn groups(State(node): State<Arc<Node>>) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(groups_op(&node).await?))
}

/// The groups with their total lag (`GET /v1/groups`, gRPC `ListGroups`).
pub(crate) async fn groups_op(node: &Node) -> ApiResult<Vec<Value>> {
    let listed = node
        .groups
        .list()
        .await
        .ok_or_else(|| group_error(GroupError::CoordinatorNotAvailable))?;
    let mut by_id: BTreeMap<String, (String, GroupState)> = listed
        .into_iter()
        .map(|g| (g.group_id, (g.protocol_type, g.state)))
        .collect();
    let offset_groups: Vec<String> = node
        .meta
        .read()
        .offset_groups()
        .map(str::to_owned)
        .collect();
    for g in offset_groups {
        by_id
            .entry(g)
            .or_insert_with(|| (String::new(), GroupState::Empty));
    }
    let out = by_id
        .into_iter()
        .map(|(id, (protocol_type, state))| {
            let offsets = group_offsets(node, &id);
            let lag: i64 = offsets.iter().filter_map(|o| o["lag"].as_i64()).sum();
            serde_json::json!({
                "group_id": id,
                "state": state.name(),
                "protocol_type": protocol_type,
                "partitions": offsets.len(),
                "lag": lag,
                "coordinator": crate::groups::coordinator_for(node, &id),
            })
        })
        .collect();
    Ok(out)
}

/// `GET /v1/groups/{id}`.
pub(crate) async fn describe_group(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(describe_group_op(&node, &id).await?))
}

/// One group: members, offsets, lag (`GET /v1/groups/{id}`, gRPC `DescribeGroup`).
pub(crate) async fn describe_group_op(node: &Node, id: &str) -> ApiResult<Value> {
    let id = id.to_owned();
    crate::groups::coordinator::valid_group_id(&id, false).map_err(group_error)?;
    let coordinator = crate::groups::coordinator_for(node, &id);
    let described = node
        .groups
        .describe(id.clone())
        .await
        .map_err(group_error)?;
    let offsets = group_offsets(node, &id);
    let Some(d) = described else {
        if offsets.is_empty() {
            return Err(ApiError::not_found(
                "unknown_group",
                format!("group `{id}` has no members here and no committed offsets"),
            ));
        }
        let lag: i64 = offsets.iter().filter_map(|o| o["lag"].as_i64()).sum();
        return Ok(serde_json::json!({
            "group_id": id,
            "state": GroupState::Empty.name(),
            "protocol_type": "",
            "protocol_name": "",
            "generation_id": -1,
            "coordinator": coordinator,
            "members": [],
            "offsets": offsets,
            "lag": lag,
        }));
    };
    let consumer = d.protocol_type == "consumer";
    let members: Vec<Value> = d
        .members
        .iter()
        .map(|m| {
            let assignment: Vec<Value> = if consumer {
                crate::kafka::client::decode_assignment(&m.assignment)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(topic, partitions)| serde_json::json!({"topic": topic, "partitions": partitions}))
                    .collect()
            } else {
                Vec::new()
            };
            serde_json::json!({
                "member_id": m.member_id,
                "group_instance_id": m.group_instance_id,
                "client_id": m.client_id,
                "client_host": m.client_host,
                "assignment": assignment,
            })
        })
        .collect();
    let lag: i64 = offsets.iter().filter_map(|o| o["lag"].as_i64()).sum();
    Ok(serde_json::json!({
        "group_id": id,
        "state": d.state.name(),
        "protocol_type": d.protocol_type,
        "protocol_name": d.protocol_name,
        "generation_id": d.generation_id,
        "coordinator": coordinator,
        "members": members,
        "offsets": offsets,
        "lag": lag,
    }))
}

/// Where `reset-offsets` moves a group's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResetTo {
    Earliest,
    Latest,
    Offset(i64),
    Timestamp(i64),
}

fn parse_reset_to(v: Option<&Value>) -> ApiResult<ResetTo> {
    const EXPECTED: &str =
        r#"`to` must be "earliest", "latest", {"offset": N} or {"timestamp": MS}"#;
    let bad = |got: String| ApiError::bad_field("to", format!("{EXPECTED}, got {got}"));
    match v {
        None => Err(ApiError::bad_field(
            "to",
            format!("`to` is required: {EXPECTED}"),
        )),
        Some(Value::String(s)) if s == "earliest" => Ok(ResetTo::Earliest),
        Some(Value::String(s)) if s == "latest" => Ok(ResetTo::Latest),
        Some(Value::Object(m)) if m.len() == 1 => {
            let (k, n) = m.iter().next().expect("one entry");
            match (k.as_str(), n.as_i64()) {
                ("offset", Some(n)) if n >= 0 => Ok(ResetTo::Offset(n)),
                ("timestamp", Some(n)) if n >= 0 => Ok(ResetTo::Timestamp(n)),
                _ => Err(bad(Value::Object(m.clone()).to_string())),
            }
        }
        Some(other) => Err(bad(other.to_string())),
    }
}

/// `POST /v1/groups/{id}/reset-offsets` `{topic, partitions?, to, dry_run?}`. Refused (409)
/// while the group has live members, as Kafka refuses it: they would overwrite the new
/// positions with their next commit.
pub(crate) async fn reset_offsets(
    State(node): State<Arc<Node>>,
    Path(group): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    crate::groups::coordinator::valid_group_id(&group, false).map_err(group_error)?;
    let body = json_object(&body)?;
    Ok(Json(reset_offsets_op(&node, &group, body).await?))
}

/// Resets a group's offsets from the fields of a `reset-offsets` body (gRPC
/// `ResetGroupOffsets` sends the same object).
pub(crate) async fn reset_offsets_op(
    node: &Node,
    group: &str,
    body: Map<String, Value>,
) -> ApiResult<Value> {
    let group = group.to_owned();
    crate::groups::coordinator::valid_group_id(&group, false).map_err(group_error)?;
    only_fields(&body, &["topic", "partitions", "to", "dry_run"])?;
    let topic = match body.get("topic") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ApiError::bad_field(
                "topic",
                format!("`topic` must be a string, not {}", json_kind(other)),
            ))
        }
        None => return Err(ApiError::bad_field("topic", "`topic` is required")),
    };
    let to = parse_reset_to(body.get("to"))?;
    let dry_run = match body.get("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::bad_field(
                "dry_run",
                format!("`dry_run` must be true or false, not {other}"),
            ))
        }
    };
    let (topic_id, count) = {
        let state = node.meta.read();
        let meta = state.topic(&topic).ok_or_else(|| unknown_topic(&topic))?;
        (meta.id, meta.partitions)
    };
    let partitions: Vec<u32> = match body.get("partitions") {
        None | Some(Value::Null) => (0..count).collect(),
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut out = BTreeSet::new();
            for v in items {
                let p = v
                    .as_u64()
                    .filter(|p| *p < u64::from(count))
                    .ok_or_else(|| {
                        ApiError::bad_field(
                            "partitions",
                            format!(
                                "partition {v} does not exist: topic `{topic}` has partitions 0..{count}"
                            ),
                        )
                    })?;
                out.insert(p as u32);
            }
            out.into_iter().collect()
        }
        Some(other) => {
            return Err(ApiError::bad_field(
                "partitions",
                format!("`partitions` must be a non-empty array of partition numbers, not {other}"),
            ))
        }
    };

    let coordinator = crate::groups::coordinator_for(node, &group);
    if coordinator != node.config.node_id {
        return Err(ApiError::conflict(
            "not_coordinator",
            format!("group `{group}` is coordinated by node {coordinator}; ask its admin API"),
        ));
    }
    if let Some(d) = node
        .groups
        .describe(group.clone())
        .await
        .map_err(group_error)?
    {
        if !d.members.is_empty() {
            return Err(ApiError::conflict(
                "group_active",
                format!(
                    "group `{group}` has {} live member(s) (state {}); stop its consumers first",
                    d.members.len(),
                    d.state.name()
                ),
            ));
        }
    }

    // The new position of each partition, clamped into [log start, high watermark].
    let mut planned = Vec::with_capacity(partitions.len());
    for &p in &partitions {
        let (view, previous) = {
            let state = node.meta.read();
            (
                partition_view(node, &state, topic_id, p),
                state.group_offset(&group, topic_id, p).map(|o| o.offset),
            )
        };
        let (start, end) = (view.log_start_offset, view.high_watermark);
        let target = match to {
            ResetTo::Earliest => start,
            ResetTo::Latest => end,
            ResetTo::Offset(n) => n.clamp(start, end),
            ResetTo::Timestamp(ts) => {
                let key = PartitionKey {
                    topic: topic_id,
                    partition: p,
                };
                let log = node
                    .registry
                    .partition(&key)
                    .filter(|_| view.led_here)
                    .ok_or_else(|| {
                        ApiError::conflict(
                            "not_leader",
                            format!(
                                "partition {topic}/{p} is led by node {:?}: a reset by timestamp must ask that node",
                                view.leader
                            ),
                        )
                    })?;
                match node.reader.offset_for_time(&log, ts).await {
                    Ok(Some((offset, _))) => offset.clamp(start, end),
                    Ok(None) => end,
                    Err(err) => {
                        return Err(ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "unavailable",
                            format!("reading {topic}/{p} by time failed: {err}"),
                        ))
                    }
                }
            }
        };
        planned.push((p, previous, target));
    }

    if !dry_run {
        // The same gate an OffsetCommit without membership passes (generation -1): refused
        // unless the group is empty, so a consumer joining meanwhile is not overwritten.
        let simple = MemberRef {
            member_id: String::new(),
            group_instance_id: None,
        };
        if let Err(err) = node.groups.check_commit(group.clone(), simple, -1).await {
            return Err(match err {
                GroupError::UnknownMemberId | GroupError::RebalanceInProgress => {
                    ApiError::conflict("group_active", format!("group `{group}` has live members"))
                }
                other => group_error(other),
            });
        }
        let offsets = planned
            .iter()
            .map(|&(partition, _, offset)| OffsetCommit {
                topic: topic_id,
                partition,
                offset,
                leader_epoch: -1,
                metadata: String::new(),
            })
            .collect();
        let result = node
            .meta
            .write(Command::CommitOffsets {
                group: group.clone(),
                offsets,
                now_ms: crate::log::sequencer::now_ms(),
            })
            .await;
        match result {
            Ok(CommandResult::OffsetsCommitted) => {}
            Ok(CommandResult::Rejected(
                Rejection::UnknownTopicId { .. } | Rejection::UnknownPartition { .. },
            )) => return Err(unknown_topic(&topic)),
            Ok(CommandResult::Rejected(r)) => {
                return Err(ApiError::conflict("refused", r.to_string()))
            }
            Ok(other) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("unexpected metadata answer {other:?}"),
                ))
            }
            Err(err) => return Err(meta_unavailable(err)),
        }
    }
    Ok(serde_json::json!({
        "group_id": group,
        "topic": topic,
        "dry_run": dry_run,
        "partitions": planned
            .iter()
            .map(|&(partition, previous, offset)| serde_json::json!({
                "partition": partition,
                "previous_offset": previous,
                "new_offset": offset,
            }))
            .collect::<Vec<_>>(),
    }))
}

// ---------------------------------------------------------------------------------------------
// Users

/// `POST /v1/users` `{name, mechanism, iterations, salt, salted_password}` (salt and salted
/// password base64, as AlterUserScramCredentials carries them): creates or replaces one SCRAM
/// credential. The bootstrap path for the first user when SASL is on (`docs/security.md`), so
/// it answers only on a loopback admin listener; the password itself is never sent.
pub(crate) async fn upsert_user(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    users_writable(&node)?;
    let body = json_object(&body)?;
    Ok(Json(upsert_user_op(&node, body).await?))
}

/// Users are written over the admin API only on a loopback admin listener.
fn users_writable(node: &Node) -> ApiResult<()> {
    if node.config.admin_listen.ip().is_loopback() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "users are managed over the admin API only on a loopback admin.listen; use \
         `strata user add` over the Kafka protocol",
    ))
}

/// Creates or replaces a SCRAM credential from the fields of a `POST /v1/users` body (gRPC
/// `UpsertUser` sends the same object).
pub(crate) async fn upsert_user_op(node: &Arc<Node>, body: Map<String, Value>) -> ApiResult<Value> {
    use base64::Engine;
    use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
    use kafka_protocol::messages::AlterUserScramCredentialsRequest;
    users_writable(node)?;
    only_fields(
        &body,
        &["name", "mechanism", "iterations", "salt", "salted_password"],
    )?;
    let string = |field: &'static str| match body.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ApiError::bad_field(
            field,
            format!("`{field}` must be a non-empty string"),
        )),
    };
    let b64 = |field: &'static str| {
        base64::engine::general_purpose::STANDARD
            .decode(string(field)?)
            .map_err(|_| ApiError::bad_field(field, format!("`{field}` must be base64")))
    };
    let name = string("name")?;
    let mechanism = crate::kafka::auth::Mechanism::parse(&string("mechanism")?)
        .and_then(|m| match m {
            crate::kafka::auth::Mechanism::Scram(m) => Some(m),
            crate::kafka::auth::Mechanism::Plain => None,
        })
        .ok_or_else(|| {
            ApiError::bad_field("mechanism", "expected SCRAM-SHA-256 or SCRAM-SHA-512")
        })?;
    let iterations = body
        .get("iterations")
        .and_then(Value::as_i64)
        .and_then(|i| i32::try_from(i).ok())
        .ok_or_else(|| ApiError::bad_field("iterations", "`iterations` must be an integer"))?;
    let request = AlterUserScramCredentialsRequest::default().with_upsertions(vec![
        ScramCredentialUpsertion::default()
            .with_name(kafka_protocol::protocol::StrBytes::from_string(
                name.clone(),
            ))
            .with_mechanism(crate::kafka::auth::mechanism_code(mechanism))
            .with_iterations(iterations)
            .with_salt(b64("salt")?.into())
            .with_salted_password(b64("salted_password")?.into()),
    ]);
    let response = crate::kafka::auth::alter_users(node, request).await;
    for r in response.results {
        if r.error_code != 0 {
            let message = r.error_message.map(|m| m.to_string()).unwrap_or_default();
            return Err(if r.error_code == 7 {
                meta_unavailable(message)
            } else {
                ApiError::bad_field("salted_password", message)
            });
        }
    }
    Ok(serde_json::json!({ "name": name, "mechanism": mechanism.name() }))
}

/// `GET /v1/users`: the SCRAM users with their mechanisms and iterations (never a secret).
pub(crate) async fn users(State(node): State<Arc<Node>>) -> Json<Vec<Value>> {
    Json(users_op(&node))
}

/// The SCRAM users (`GET /v1/users`, gRPC `ListUsers`).
pub(crate) fn users_op(node: &Node) -> Vec<Value> {
    let state = node.meta.read();
    state
        .scram_users()
        .map(|(user, creds)| {
            let credentials: Vec<Value> = creds
                .iter()
                .map(|(m, i)| serde_json::json!({"mechanism": m.name(), "iterations": i}))
                .collect();
            serde_json::json!({"name": user, "credentials": credentials})
        })
        .collect()
}

/// `DELETE /v1/users/{name}`: removes every SCRAM credential of the user.
pub(crate) async fn delete_user(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(delete_user_op(&node, &name).await?))
}

/// Removes every SCRAM credential of `name` (`DELETE /v1/users/{name}`, gRPC `DeleteUser`).
pub(crate) async fn delete_user_op(node: &Arc<Node>, name: &str) -> ApiResult<Value> {
    use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialDeletion;
    use kafka_protocol::messages::AlterUserScramCredentialsRequest;
    users_writable(node)?;
    let mechanisms: Vec<_> = {
        let state = node.meta.read();
        let found: Vec<_> = state
            .scram_users()
            .find(|(u, _)| *u == name)
            .map(|(_, creds)| creds.into_iter().map(|(m, _)| m).collect())
            .unwrap_or_default();
        found
    };
    if mechanisms.is_empty() {
        return Err(ApiError::not_found(
            "unknown_user",
            format!("user `{name}` has no SCRAM credentials"),
        ));
    }
    let deletions = mechanisms
        .iter()
        .map(|m| {
            ScramCredentialDeletion::default()
                .with_name(kafka_protocol::protocol::StrBytes::from_string(
                    name.to_owned(),
                ))
                .with_mechanism(crate::kafka::auth::mechanism_code(*m))
        })
        .collect();
    let request = AlterUserScramCredentialsRequest::default().with_deletions(deletions);
    let response = crate::kafka::auth::alter_users(node, request).await;
    for r in response.results {
        if r.error_code != 0 {
            let message = r.error_message.map(|m| m.to_string()).unwrap_or_default();
            return Err(if r.error_code == 7 {
                meta_unavailable(message)
            } else {
                ApiError::conflict("refused", message)
            });
        }
    }
    let names: Vec<&str> = mechanisms.iter().map(|m| m.name()).collect();
    Ok(serde_json::json!({"deleted": name, "mechanisms": names}))
}

/// `POST /v1/cluster/nodes/{id}/drain` `{"draining": bool}`: starts (or undoes) draining a
/// broker; its partitions then move to the other live brokers (`moves.rs`). 200 with the
/// number of moves planned.
pub(crate) async fn drain_node(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("node id `{id}` is not a non-negative integer"),
        )
    })?;
    let body = json_object(&body)?;
    Ok(Json(drain_op(&node, id, body).await?))
}

/// Sets broker `id`'s draining flag from the fields of a `POST /v1/cluster/nodes/{id}/drain`
/// body (gRPC `DrainNode` sends the same object).
pub(crate) async fn drain_op(node: &Node, id: u64, body: Map<String, Value>) -> ApiResult<Value> {
    only_fields(&body, &["draining"])?;
    let draining = match body.get("draining") {
        Some(Value::Bool(b)) => *b,
        None => return Err(ApiError::bad_field("draining", "`draining` is required")),
        Some(other) => {
            return Err(ApiError::bad_field(
                "draining",
                format!("`draining` must be true or false, not {other}"),
            ))
        }
    };
    let cmd = strata_meta::ClusterCommand::DrainBroker {
        node_id: id,
        draining,
    };
    match node.meta.write(Command::Cluster(cmd)).await {
        Ok(CommandResult::Cluster(strata_meta::ClusterResult::DrainSet { moves })) => {
            Ok(serde_json::json!({
                "node_id": id,
                "draining": draining,
                "moves_planned": moves,
            }))
        }
        Ok(CommandResult::Rejected(Rejection::Cluster(
            strata_meta::ClusterRejection::NotRegistered { .. },
        ))) => Err(ApiError::not_found(
            "unknown_node",
            format!("no live broker with node id {id}"),
        )),
        Ok(CommandResult::Rejected(r)) => Err(ApiError::conflict("refused", r.to_string())),
        Ok(other) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("unexpected metadata answer {other:?}"),
        )),
        Err(err) => Err(meta_unavailable(err)),
    }
}

// ---------------------------------------------------------------------------------------------
// ACLs

/// The fields of a binding and of a filter, as the JSON API and the query string name them.
const ACL_FIELDS: &[&str] = &[
    "resource_type",
    "resource_name",
    "pattern_type",
    "principal",
    "host",
    "operation",
    "permission",
];

const RESOURCE_TYPES: &[ResourceType] = &[
    ResourceType::Any,
    ResourceType::Topic,
    ResourceType::Group,
    ResourceType::Cluster,
    ResourceType::TransactionalId,
];
const PATTERN_TYPES: &[PatternType] = &[
    PatternType::Any,
    PatternType::Match,
    PatternType::Literal,
    PatternType::Prefixed,
];
const OPERATIONS: &[AclOperation] = &[
    AclOperation::Any,
    AclOperation::All,
    AclOperation::Read,
    AclOperation::Write,
    AclOperation::Create,
    AclOperation::Delete,
    AclOperation::Alter,
    AclOperation::Describe,
    AclOperation::ClusterAction,
    AclOperation::DescribeConfigs,
    AclOperation::AlterConfigs,
    AclOperation::IdempotentWrite,
];
const PERMISSIONS: &[AclPermission] = &[
    AclPermission::Any,
    AclPermission::Deny,
    AclPermission::Allow,
];

/// A string field of an ACL request; `None` when absent (or null).
fn acl_string(body: &Map<String, Value>, field: &'static str) -> ApiResult<Option<String>> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::bad_field(
            field,
            format!("`{field}` must be a string, not {}", json_kind(other)),
        )),
    }
}

/// A named value of an ACL request (Kafka's names, case, `-` and `_` ignored), one of
/// `accepted`; `None` when absent.
fn acl_choice<T: Copy + PartialEq + std::fmt::Display>(
    body: &Map<String, Value>,
    field: &'static str,
    accepted: &[T],
    parse: fn(&str) -> Option<T>,
) -> ApiResult<Option<T>> {
    let Some(s) = acl_string(body, field)? else {
        return Ok(None);
    };
    match parse(&s).filter(|v| accepted.contains(v)) {
        Some(v) => Ok(Some(v)),
        None => {
            let names: Vec<String> = accepted.iter().map(ToString::to_string).collect();
            Err(ApiError::bad_field(
                field,
                format!("`{field}` must be one of {}; got `{s}`", names.join(", ")),
            ))
        }
    }
}

/// A DescribeAcls / DeleteAcls filter from a JSON object (or the query string): absent fields
/// match everything, as Kafka's `Any` and null do.
pub(crate) fn acl_filter(body: &Map<String, Value>) -> ApiResult<AclBindingFilter> {
    only_fields(body, ACL_FIELDS)?;
    let f = AclBindingFilter {
        resource_type: acl_choice(body, "resource_type", RESOURCE_TYPES, ResourceType::parse)?
            .unwrap_or(ResourceType::Any),
        pattern_type: acl_choice(body, "pattern_type", PATTERN_TYPES, PatternType::parse)?
            .unwrap_or(PatternType::Any),
        resource_name: acl_string(body, "resource_name")?,
        principal: acl_string(body, "principal")?,
        host: acl_string(body, "host")?,
        operation: acl_choice(body, "operation", OPERATIONS, AclOperation::parse)?
            .unwrap_or(AclOperation::Any),
        permission: acl_choice(body, "permission", PERMISSIONS, AclPermission::parse)?
            .unwrap_or(AclPermission::Any),
    };
    f.validate()
        .map_err(|m| ApiError::bad_field("principal", m))?;
    Ok(f)
}

/// A new binding from a `POST /v1/acls` body: `pattern_type` defaults to `Literal`, `host` to
/// `*`; the checks are Kafka's ([`AclBinding::validate`]), each error naming its field.
pub(crate) fn acl_binding(body: &Map<String, Value>) -> ApiResult<AclBinding> {
    only_fields(body, ACL_FIELDS)?;
    fn required<T>(v: Option<T>, field: &'static str) -> ApiResult<T> {
        v.ok_or_else(|| ApiError::bad_field(field, format!("`{field}` is required")))
    }
    let concrete = |all: usize| 1..all;
    let b = AclBinding {
        resource_type: required(
            acl_choice(
                body,
                "resource_type",
                &RESOURCE_TYPES[concrete(RESOURCE_TYPES.len())],
                ResourceType::parse,
            )?,
            "resource_type",
        )?,
        pattern_type: acl_choice(
            body,
            "pattern_type",
            &PATTERN_TYPES[2..],
            PatternType::parse,
        )?
        .unwrap_or(PatternType::Literal),
        resource_name: required(acl_string(body, "resource_name")?, "resource_name")?,
        principal: required(acl_string(body, "principal")?, "principal")?,
        host: acl_string(body, "host")?.unwrap_or_else(|| strata_meta::acl::WILDCARD.into()),
        operation: required(
            acl_choice(
                body,
                "operation",
                &OPERATIONS[concrete(OPERATIONS.len())],
                AclOperation::parse,
            )?,
            "operation",
        )?,
        permission: required(
            acl_choice(
                body,
                "permission",
                &PERMISSIONS[concrete(PERMISSIONS.len())],
                AclPermission::parse,
            )?,
            "permission",
        )?,
    };
    if let Err(m) = strata_meta::acl::parse_principal(&b.principal) {
        return Err(ApiError::bad_field("principal", m));
    }
    b.validate().map_err(|m| {
        let field = if m.starts_with("host") || m.starts_with("the host") {
            "host"
        } else if m.starts_with("principal") {
            "principal"
        } else {
            "resource_name"
        };
        ApiError::bad_field(field, m)
    })?;
    Ok(b)
}

/// ACLs are written over the admin API only on a loopback admin listener (as users are).
fn acls_writable(node: &Node) -> ApiResult<()> {
    if node.config.admin_listen.ip().is_loopback() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "ACLs are managed over the admin API only on a loopback admin.listen; use \
         `strata acl` over the Kafka protocol",
    ))
}

/// The query string as a JSON object of strings (a repeated key keeps its last value).
fn query_object(query: Vec<(String, String)>) -> Map<String, Value> {
    query
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect()
}

/// `GET /v1/acls?resource_type=&resource_name=&pattern_type=&principal=&host=&operation=&permission=`:
/// the bindings the filter matches (DescribeAcls semantics; no parameter: all).
pub(crate) async fn list_acls(
    State(node): State<Arc<Node>>,
    Query(query): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(list_acls_op(&node, &query_object(query))?))
}

/// The bindings a filter matches (`GET /v1/acls`, gRPC `ListAcls`), in the set's order.
pub(crate) fn list_acls_op(node: &Node, filter: &Map<String, Value>) -> ApiResult<Vec<Value>> {
    let f = acl_filter(filter)?;
    let state = node.meta.read();
    Ok(state
        .acls()
        .describe(&f)
        .iter()
        .map(AclBinding::to_json)
        .collect())
}

/// `POST /v1/acls` `{resource_type, resource_name, pattern_type?, principal, host?, operation,
/// permission}`: creates one binding; 201 with it (200 when it already existed).
pub(crate) async fn create_acl(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    acls_writable(&node)?;
    let body = json_object(&body)?;
    let (created, acl) = create_acl_op(&node, &body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(acl)))
}

/// Creates one binding (`POST /v1/acls`, gRPC `CreateAcl`) through the metadata command Kafka's
/// CreateAcls writes; whether it is new, and the binding.
pub(crate) async fn create_acl_op(
    node: &Node,
    body: &Map<String, Value>,
) -> ApiResult<(bool, Value)> {
    acls_writable(node)?;
    let b = acl_binding(body)?;
    let existed = node.meta.read().acls().iter().any(|a| *a == b);
    match node
        .meta
        .write(Command::CreateAcls {
            acls: vec![b.clone()],
        })
        .await
    {
        Ok(CommandResult::AclsCreated(outcomes)) => match outcomes.into_iter().next().flatten() {
            None => Ok((!existed, b.to_json())),
            Some(reason) => Err(ApiError::conflict("refused", reason)),
        },
        Ok(other) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("unexpected metadata answer {other:?}"),
        )),
        Err(err) => Err(meta_unavailable(err)),
    }
}

/// `DELETE /v1/acls` with a filter as a JSON body or as query parameters (the fields of
/// `GET /v1/acls`; at least one, `resource_type=Any` for every ACL): removes what it matches
/// and answers `{"deleted": [bindings]}`.
pub(crate) async fn delete_acls(
    State(node): State<Arc<Node>>,
    Query(query): Query<Vec<(String, String)>>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    acls_writable(&node)?;
    let has_body = !body.iter().all(u8::is_ascii_whitespace);
    let filter = match (has_body, query.is_empty()) {
        (true, true) => json_object(&body)?,
        (false, _) => query_object(query),
        (true, false) => {
            return Err(ApiError::bad_field(
                "body",
                "give the filter either as a JSON body or as query parameters, not both",
            ))
        }
    };
    Ok(Json(delete_acls_op(&node, &filter).await?))
}

/// Removes the bindings a filter matches (`DELETE /v1/acls`, gRPC `DeleteAcls`) through the
/// metadata command Kafka's DeleteAcls writes. An empty filter is refused: deleting every ACL
/// takes an explicit `resource_type` of `Any`.
pub(crate) async fn delete_acls_op(node: &Node, filter: &Map<String, Value>) -> ApiResult<Value> {
    acls_writable(node)?;
    if filter.values().all(Value::is_null) {
        return Err(ApiError::bad_field(
            "resource_type",
            format!(
                "the filter is empty; give at least one of {} (resource_type=Any matches every ACL)",
                ACL_FIELDS.join(", ")
            ),
        ));
    }
    let f = acl_filter(filter)?;
    match node
        .meta
        .write(Command::DeleteAcls { filters: vec![f] })
        .await
    {
        Ok(CommandResult::AclsDeleted(outcomes)) => match outcomes.into_iter().next() {
            Some(Ok(removed)) => Ok(serde_json::json!({
                "deleted": removed.iter().map(AclBinding::to_json).collect::<Vec<_>>(),
            })),
            Some(Err(reason)) => Err(ApiError::bad_field("principal", reason)),
            None => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "no answer for the filter",
            )),
        },
        Ok(other) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("unexpected metadata answer {other:?}"),
        )),
        Err(err) => Err(meta_unavailable(err)),
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT

/// `GET /v1/mqtt/clients`: this node's MQTT clients (connected, and offline persistent
/// sessions with their expiry) and counts.
pub(crate) async fn mqtt_clients(State(node): State<Arc<Node>>) -> ApiResult<Json<Value>> {
    Ok(Json(mqtt_clients_op(&node).await?))
}

/// The MQTT clients of this node (`GET /v1/mqtt/clients`, gRPC `ListMqttClients`).
pub(crate) async fn mqtt_clients_op(node: &Node) -> ApiResult<Value> {
    node.mqtt_clients
        .list(node.config.node_id, crate::log::sequencer::now_ms())
        .await
        .map_err(|m| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(to: Value, expected: Result<ResetTo, &str>) {
        match (parse_reset_to(Some(&to)), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{to}"),
            (Err(err), Err(part)) => {
                assert_eq!(err.field, Some("to"), "{to}");
                assert!(err.message.contains(part), "{to}: {}", err.message);
            }
            (got, want) => panic!("{to}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn reset_targets_parse_or_name_the_field() {
        check(Value::from("earliest"), Ok(ResetTo::Earliest));
        check(Value::from("latest"), Ok(ResetTo::Latest));
        check(serde_json::json!({"offset": 7}), Ok(ResetTo::Offset(7)));
        check(
            serde_json::json!({"timestamp": 1}),
            Ok(ResetTo::Timestamp(1)),
        );
        check(Value::from("newest"), Err("got \"newest\""));
        check(
            serde_json::json!({"offset": -1}),
            Err("got {\"offset\":-1}"),
        );
        check(
            serde_json::json!({"offset": 1, "timestamp": 2}),
            Err("`to` must be"),
        );
        check(serde_json::json!([1]), Err("got [1]"));
        assert!(parse_reset_to(None).is_err());
    }

    #[test]
    fn bodies_must_be_json_objects() {
        assert_eq!(json_object(b"").unwrap_err().field, Some("body"));
        assert_eq!(json_object(b"{").unwrap_err().kind, "bad_json");
        assert_eq!(json_object(b"[1]").unwrap_err().field, Some("body"));
        assert!(json_object(b" {\"a\": 1} ").is_ok());
        let body = json_object(b"{\"nmae\": 1}").unwrap();
        let err = only_fields(&body, &["name"]).unwrap_err();
        assert!(err.message.contains("`nmae`"), "{}", err.message);
    }
}
