//! Request handlers: decode → act → response, one function per API.
//!
//! `dispatch` runs in the connection's reader loop, in arrival order. Everything that must
//! happen in that order (Produce's enqueue to the sequencer) happens before it returns; the
//! rest is the returned future.

use super::frame::RecordSet;
use super::server::{CloseReason, ResponseFuture};
use super::{errors, versions};
use crate::log::partition::PartitionLog;
use crate::log::producer::ProducerBatch;
use crate::log::sequencer::{AppendError, AppendRequest, AppendResult, BatchSpan};
use crate::metrics::Metrics;
use crate::node::Node;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, FetchRequest, FetchResponse, InitProducerIdRequest,
    InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, ProduceRequest, ProduceResponse, ProducerId, RequestHeader, RequestKind,
    ResponseHeader, ResponseKind, TopicName as WireTopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError as E;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use strata_meta::{Command, CommandResult, Rejection};
use strata_types::batch::{self, Batches};
use strata_types::{TopicId, TopicName};
use tokio::sync::oneshot;

/// Longest Fetch long-poll we honour, whatever the client asks.
const FETCH_WAIT_MS_MAX: i32 = 30_000;
/// Partitions a CreateTopics may ask for, per topic.
pub(crate) const TOPIC_PARTITIONS_MAX: i32 = 10_000;

fn malformed(e: impl std::fmt::Display) -> CloseReason {
    CloseReason::Malformed(e.to_string())
}

fn ready(frame: BytesMut) -> ResponseFuture {
    Box::pin(async move { Some(frame.into()) })
}

/// Decodes one request frame and starts answering it.
pub async fn dispatch(
    node: &Arc<Node>,
    mut frame: Bytes,
    authz: &super::acl_handlers::Authorizer,
) -> Result<ResponseFuture, CloseReason> {
    if frame.len() < 8 {
        return Err(malformed(format!(
            "frame of {} bytes is shorter than a request header",
            frame.len()
        )));
    }
    let key_raw = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(api_key) = ApiKey::try_from(key_raw) else {
        tracing::debug!(api_key = key_raw, "unknown API key");
        return Ok(ready(bare_error(
            correlation_id,
            errors::unsupported_version(),
        )));
    };
    let supported = versions::range(api_key);
    if !supported.is_some_and(|(min, max)| (min..=max).contains(&version)) {
        tracing::debug!(?api_key, version, "unsupported API version");
        if api_key == ApiKey::ApiVersions {
            // KIP-511: answer in v0 with the error and our versions so the client can retry.
            let body = api_versions_body(errors::unsupported_version());
            return Ok(ready(encode(
                api_key,
                0,
                correlation_id,
                &ResponseKind::ApiVersions(body),
            )));
        }
        return Ok(ready(bare_error(
            correlation_id,
            errors::unsupported_version(),
        )));
    }
    let header = RequestHeader::decode(&mut frame, api_key.request_header_version(version))
        .map_err(malformed)?;
    let mut request = RequestKind::decode(api_key, &mut frame, version).map_err(malformed)?;
    let correlation_id = header.correlation_id;
    super::trace::record_request(&request);
    // ACLs (`acl_handlers`): refuse outright, or narrow the request and answer the rest later.
    let denied = match super::acl_handlers::gate(node, authz, &mut request, version) {
        super::acl_handlers::Gate::Pass(denied) => denied,
        super::acl_handlers::Gate::Refuse(body) => {
            let frame = body.map(|b| encode(api_key, version, correlation_id, &b).into());
            return Ok(Box::pin(async move { frame }));
        }
    };
    if let RequestKind::Produce(req) = request {
        return produce(node, req, version, correlation_id, &denied).await;
    }
    let operations = super::acl_handlers::operations_wanted(&request, version);
    let node = node.clone();
    let authz = authz.clone();
    Ok(Box::pin(async move {
        let mut body = match request {
            RequestKind::ApiVersions(_) => {
                ResponseKind::ApiVersions(api_versions_body(errors::NONE))
            }
            RequestKind::Metadata(req) => {
                ResponseKind::Metadata(metadata(&node, req, version).await)
            }
            RequestKind::Fetch(req) => {
                // Records travel as references to the read cache's memory (`frame.rs`).
                let (resp, records) = fetch(&node, req).await;
                let mut body = ResponseKind::Fetch(resp);
                super::acl_handlers::finish(&node, &authz, denied, &mut body);
                super::trace::record_response(&body);
                return Some(super::frame::encode_fetch(
                    version,
                    correlation_id,
                    body,
                    records,
                ));
            }
            RequestKind::ListOffsets(req) => {
                ResponseKind::ListOffsets(list_offsets(&node, req, version).await)
            }
            RequestKind::CreateTopics(req) => {
                ResponseKind::CreateTopics(create_topics(&node, req).await)
            }
            RequestKind::DeleteTopics(req) => {
                ResponseKind::DeleteTopics(delete_topics(&node, req, version).await)
            }
            RequestKind::InitProducerId(req) => {
                ResponseKind::InitProducerId(init_producer_id(&node, req).await)
            }
            // SCRAM users (`auth`). SaslHandshake/SaslAuthenticate never get here: the
            // connection's `auth::Session` answers them.
            RequestKind::DescribeUserScramCredentials(req) => {
                ResponseKind::DescribeUserScramCredentials(super::auth::describe_users(&node, req))
            }
            RequestKind::AlterUserScramCredentials(req) => {
                ResponseKind::AlterUserScramCredentials(super::auth::alter_users(&node, req).await)
            }
            // The admin APIs (`admin_handlers`).
            RequestKind::CreatePartitions(_)
            | RequestKind::DescribeConfigs(_)
            | RequestKind::AlterConfigs(_)
            | RequestKind::IncrementalAlterConfigs(_)
            | RequestKind::DescribeCluster(_)
            | RequestKind::DeleteRecords(_)
            | RequestKind::OffsetForLeaderEpoch(_)
            | RequestKind::DescribeLogDirs(_) => {
                match super::admin_handlers::handle(&node, request, version).await {
                    Some(body) => body,
                    None => {
                        return Some(
                            bare_error(correlation_id, errors::unsupported_version()).into(),
                        )
                    }
                }
            }
            // The consumer-group APIs (`group_handlers`).
            RequestKind::FindCoordinator(_)
            | RequestKind::JoinGroup(_)
            | RequestKind::SyncGroup(_)
            | RequestKind::Heartbeat(_)
            | RequestKind::LeaveGroup(_)
            | RequestKind::OffsetCommit(_)
            | RequestKind::OffsetFetch(_)
            | RequestKind::ListGroups(_)
            | RequestKind::DescribeGroups(_)
            | RequestKind::DeleteGroups(_)
            | RequestKind::OffsetDelete(_) => {
                let client_id = header.client_id.as_deref().unwrap_or("");
                match super::group_handlers::handle(&node, request, version, client_id).await {
                    Some(body) => body,
                    None => {
                        return Some(
                            bare_error(correlation_id, errors::unsupported_version()).into(),
                        )
                    }
                }
            }
            RequestKind::CreateAcls(_)
            | RequestKind::DescribeAcls(_)
            | RequestKind::DeleteAcls(_) => {
                match super::acl_handlers::handle(&node, &authz, request).await {
                    Some(body) => body,
                    None => {
                        return Some(
                            bare_error(correlation_id, errors::unsupported_version()).into(),
                        )
                    }
                }
            }
            _ => {
                // Unreachable while `versions::SUPPORTED` and this match agree; answer rather
                // than panic if they ever drift.
                tracing::error!(?api_key, "no handler for an advertised API");
                return Some(bare_error(correlation_id, errors::unsupported_version()).into());
            }
        };
        super::acl_handlers::finish(&node, &authz, denied, &mut body);
        super::acl_handlers::fill_operations(&node, &authz, operations, &mut body);
        Some(encode(api_key, version, correlation_id, &body).into())
    }))
}

/// A response frame: size, header, body.
pub(super) fn encode(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> BytesMut {
    super::trace::record_response(body);
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encoded = header
        .encode(&mut buf, api_key.response_header_version(version))
        .and_then(|()| body.encode(&mut buf, version));
    if let Err(err) = encoded {
        // Our own response failed to encode: a bug. Answer with a generic error rather than
        // leaving the client waiting.
        tracing::error!(?api_key, version, %err, "response encoding failed");
        return bare_error(correlation_id, E::UnknownServerError.code());
    }
    let size = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&size.to_be_bytes());
    buf
}

/// `correlation_id` + an int16 error code: what we answer to requests we cannot decode the
/// body of (unknown API key, unsupported version). It is the shape of a v0 ApiVersions error.
fn bare_error(correlation_id: i32, code: i16) -> BytesMut {
    let mut buf = BytesMut::with_capacity(14);
    buf.put_i32(10);
    buf.put_i32(correlation_id);
    buf.put_i16(code);
    buf.put_i32(0); // empty api_keys array
    buf
}

fn api_versions_body(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            versions::SUPPORTED
                .iter()
                .map(|(key, min, max)| {
                    ApiVersion::default()
                        .with_api_key(*key as i16)
                        .with_min_version(*min)
                        .with_max_version(*max)
                })
                .collect(),
        )
}

fn wire_name(name: &str) -> WireTopicName {
    WireTopicName(StrBytes::from_string(name.to_string()))
}

/// A topic name as the wire carries it (for `admin_handlers`).
pub(super) fn wire_topic(name: &str) -> WireTopicName {
    wire_name(name)
}

// ---------------------------------------------------------------------------------------------
// Metadata

async fn metadata(node: &Arc<Node>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let cfg = &node.config;
    let live = crate::cluster::live_brokers(node);
    let controller = BrokerId(crate::cluster::controller_id(node, &live));
    let brokers: Vec<MetadataResponseBroker> = live
        .into_iter()
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.node_id))
                .with_host(StrBytes::from_string(b.host))
                .with_port(b.port)
        })
        .collect();
    // v0: an empty list means every topic; v1+: null means every topic.
    let wanted: Option<Vec<(Option<String>, uuid::Uuid)>> = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(
            t.into_iter()
                .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
                .collect(),
        ),
    };
    let auto_create =
        cfg.file.kafka.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    let mut topics = Vec::new();
    match wanted {
        None => {
            for t in node.registry.topics() {
                topics.push(topic_metadata(
                    node,
                    &t.name,
                    Some(t.id),
                    t.partitions.len(),
                ));
            }
        }
        Some(list) => {
            for (name, id) in list {
                let found = match (&name, id) {
                    (Some(n), _) => node.registry.topic(n),
                    (None, id) if !id.is_nil() => node.registry.topic_by_id(TopicId(id)),
                    _ => None,
                };
                if let Some(t) = found {
                    topics.push(topic_metadata(
                        node,
                        &t.name,
                        Some(t.id),
                        t.partitions.len(),
                    ));
                    continue;
                }
                let Some(name) = name else {
                    topics.push(
                        MetadataResponseTopic::default()
                            .with_topic_id(id)
                            .with_error_code(E::UnknownTopicId.code()),
                    );
                    continue;
                };
                let error = match TopicName::new(name.clone()) {
                    Err(_) => E::InvalidTopicException.code(),
                    Ok(valid) if auto_create => {
                        match create_topic(
                            node,
                            valid.clone(),
                            cfg.file.kafka.default_partitions,
                            BTreeMap::new(),
                        )
                        .await
                        {
                            Ok(created) => {
                                topics.push(topic_metadata(
                                    node,
                                    &created.name,
                                    Some(created.id),
                                    created.partitions as usize,
                                ));
                                continue;
                            }
                            // Created concurrently by another request: report it.
                            Err((code, _)) if code == E::TopicAlreadyExists.code() => {
                                if let Some(t) = node.registry.topic(&name) {
                                    topics.push(topic_metadata(
                                        node,
                                        &t.name,
                                        Some(t.id),
                                        t.partitions.len(),
                                    ));
                                    continue;
                                }
                                E::LeaderNotAvailable.code()
                            }
                            Err((code, _)) => code,
                        }
                    }
                    Ok(_) => errors::unknown_topic(),
                };
                topics.push(
                    MetadataResponseTopic::default()
                        .with_name(Some(wire_name(&name)))
                        .with_error_code(error),
                );
            }
        }
    }
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(node.cluster_id.clone())))
        .with_controller_id(controller)
        .with_topics(topics)
}

fn topic_metadata(
    node: &Node,
    name: &TopicName,
    id: Option<TopicId>,
    partitions: usize,
) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(wire_name(name.as_str())))
        .with_topic_id(id.map(|i| i.0).unwrap_or_default())
        .with_partitions(
            (0..partitions as u32)
                .map(|p| {
                    let (leader, epoch) = match id {
                        Some(id) => crate::cluster::leader(node, id, p),
                        None => (-1, 0),
                    };
                    let part = MetadataResponsePartition::default()
                        .with_partition_index(p as i32)
                        .with_leader_id(BrokerId(leader))
                        .with_leader_epoch(epoch);
                    if leader < 0 {
                        // Failing over: clients retry after a metadata refresh.
                        part.with_error_code(E::LeaderNotAvailable.code())
                    } else {
                        part.with_replica_nodes(vec![BrokerId(leader)])
                            .with_isr_nodes(vec![BrokerId(leader)])
                    }
                })
                .collect(),
        )
}

/// Creates a topic through metadata. Errors come back as a Kafka code and a message.
/// Also the admin HTTP API's path (`admin::api`).
pub(crate) async fn create_topic(
    node: &Node,
    name: TopicName,
    partitions: u32,
    configs: BTreeMap<String, String>,
) -> Result<strata_meta::TopicMeta, (i16, String)> {
    let configs = crate::topic_configs::with_default_storage_mode(node, configs);
    crate::topic_configs::validate_topic_configs(&configs)
        .map_err(|e| (errors::config(&e), e.to_string()))?;
    let cmd = Command::CreateTopic {
        name,
        id: TopicId::random(),
        partitions,
        configs,
        created_ms: crate::log::sequencer::now_ms(),
    };
    let result = node.meta.write(cmd).await;
    node.refresh_topics();
    match result {
        Ok(CommandResult::TopicCreated(meta)) => Ok(meta),
        Ok(CommandResult::Rejected(r)) => Err((rejection_code(&r), r.to_string())),
        Ok(other) => Err((
            E::UnknownServerError.code(),
            format!("unexpected {other:?}"),
        )),
        Err(err) => Err((E::RequestTimedOut.code(), err.to_string())),
    }
}

fn rejection_code(r: &Rejection) -> i16 {
    errors::rejection(r)
}

// ---------------------------------------------------------------------------------------------
// Produce

struct Slot {
    topic: usize,
    index: i32,
    /// Set when the partition was refused before reaching the sequencer.
    error: Option<(i16, String)>,
}

async fn produce(
    node: &Arc<Node>,
    req: ProduceRequest,
    version: i16,
    correlation_id: i32,
    denied: &super::acl_handlers::Denied,
) -> Result<ResponseFuture, CloseReason> {
    let acks = req.acks;
    let mut slots = Vec::new();
    let mut items = Vec::new();
    let mut names = Vec::new();
    let acks_error = if matches!(acks, -1..=1) {
        None
    } else {
        Some((
            E::InvalidRequiredAcks.code(),
            format!("acks={acks} is not -1, 0 or 1"),
        ))
    };
    let transactional = req.transactional_id.is_some();
    for (ti, topic) in req.topic_data.into_iter().enumerate() {
        let name = topic.name.0.to_string();
        let logs = node.registry.topic(&name);
        let topic_denied = super::acl_handlers::produce_denied(denied, &name);
        names.push(name);
        for pd in topic.partition_data {
            let mut slot = Slot {
                topic: ti,
                index: pd.index,
                error: acks_error.clone().or_else(|| topic_denied.clone()),
            };
            if slot.error.is_none() && transactional {
                slot.error = Some((
                    errors::transactions_unsupported(),
                    "transactions are not supported yet".into(),
                ));
            }
            if slot.error.is_none() {
                let log = logs.as_ref().and_then(|t| {
                    usize::try_from(pd.index)
                        .ok()
                        .and_then(|i| t.partitions.get(i))
                });
                match log {
                    None => {
                        slot.error =
                            Some((errors::unknown_topic(), "unknown topic or partition".into()))
                    }
                    Some(log) if !node.registry.leads(&log.key) => {
                        slot.error = Some((
                            errors::not_leader(),
                            "this broker does not lead the partition".into(),
                        ))
                    }
                    Some(log) => {
                        match validate(node, log.clone(), pd.records.unwrap_or_default()) {
                            // Produce bytes/records are counted by the sequencer once durable.
                            Ok(item) => items.push(item),
                            Err(e) => slot.error = Some(e),
                        }
                    }
                }
            }
            slots.push(slot);
        }
    }

    let reply = if items.is_empty() {
        None
    } else {
        let (tx, rx) = oneshot::channel();
        if node
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
            // WAL topics to the sequencer, direct topics to the direct writer.
            || crate::log::direct::route(node, items, tx).await.is_err()
        {
            for s in slots.iter_mut().filter(|s| s.error.is_none()) {
                s.error = Some((
                    errors::append(AppendError::ShuttingDown),
                    "shutting down".into(),
                ));
            }
            None
        } else {
            Some(rx)
        }
    };

    Ok(Box::pin(async move {
        let results: Vec<AppendResult> = match reply {
            Some(rx) => rx.await.unwrap_or_default(),
            None => Vec::new(),
        };
        if acks == 0 {
            return None;
        }
        let mut results = results.into_iter();
        let mut topics: Vec<TopicProduceResponse> = names
            .iter()
            .map(|n| TopicProduceResponse::default().with_name(wire_name(n)))
            .collect();
        for slot in slots {
            let mut resp = PartitionProduceResponse::default()
                .with_index(slot.index)
                .with_log_append_time_ms(-1);
            match slot.error {
                Some((code, message)) => {
                    resp = resp
                        .with_error_code(code)
                        .with_base_offset(-1)
                        .with_error_message(Some(StrBytes::from_string(message)));
                }
                None => match results.next() {
                    Some(Ok(base)) => resp = resp.with_base_offset(base).with_log_start_offset(0),
                    Some(Err(e)) => {
                        resp = resp
                            .with_error_code(errors::append(e))
                            .with_base_offset(-1)
                            .with_error_message(Some(StrBytes::from_string(e.to_string())));
                    }
                    None => {
                        resp = resp
                            .with_error_code(errors::append(AppendError::ShuttingDown))
                            .with_base_offset(-1);
                    }
                },
            }
            topics[slot.topic].partition_responses.push(resp);
        }
        let body = ProduceResponse::default().with_responses(topics);
        Some(
            encode(
                ApiKey::Produce,
                version,
                correlation_id,
                &ResponseKind::Produce(body),
            )
            .into(),
        )
    }))
}

/// Checks a partition's record batches and copies them out for offset assignment.
pub(crate) fn validate(
    node: &Node,
    log: Arc<PartitionLog>,
    records: Bytes,
) -> Result<AppendRequest, (i16, String)> {
    if records.is_empty() {
        return Err((E::CorruptMessage.code(), "no record batches".into()));
    }
    let message_max = node.config.message_bytes_max as usize;
    let mut batches = Vec::new();
    let mut max_timestamp = -1i64;
    for item in Batches::new(&records) {
        let (header, pos) = item.map_err(|e| (errors::batch(&e), e.to_string()))?;
        batch::verify_crc(&records[pos..], &header)
            .map_err(|e| (errors::batch(&e), e.to_string()))?;
        if header.size > message_max {
            return Err((
                E::MessageTooLarge.code(),
                format!(
                    "record batch of {} bytes exceeds kafka.message_bytes_max ({message_max})",
                    header.size
                ),
            ));
        }
        if header.records_count == 0 {
            return Err((
                E::InvalidRecord.code(),
                "record batch with no records".into(),
            ));
        }
        if header.is_transactional() || header.is_control() {
            return Err((
                errors::transactions_unsupported(),
                "transactional batches are not supported yet".into(),
            ));
        }
        if let batch::Codec::Unknown(c) = header.codec() {
            return Err((
                E::UnsupportedCompressionType.code(),
                format!("codec id {c}"),
            ));
        }
        let producer = ProducerBatch::from_header(&header);
        if producer.is_some() && (header.producer_epoch < 0 || header.base_sequence < 0) {
            // Kafka refuses these too: a producer id without an epoch and a sequence cannot be
            // checked for duplicates or gaps.
            return Err((
                errors::invalid_producer_batch(),
                format!(
                    "record batch of producer {} has epoch {} and base sequence {}",
                    header.producer_id, header.producer_epoch, header.base_sequence
                ),
            ));
        }
        max_timestamp = max_timestamp.max(header.max_timestamp);
        batches.push(BatchSpan {
            start: pos,
            offset_count: header.offset_count(),
            producer,
        });
    }
    Ok(AppendRequest {
        log,
        data: BytesMut::from(&records[..]),
        batches,
        max_timestamp,
    })
}

// ---------------------------------------------------------------------------------------------
// InitProducerId

/// The last epoch a re-initialising producer is given. Kafka treats an epoch of
/// `i16::MAX - 1` and above as exhausted; such a producer gets a new id at epoch 0 instead.
const PRODUCER_EPOCH_MAX: i16 = i16::MAX - 1;

/// Gives an idempotent producer its id and epoch (transactions are not implemented).
///
/// - No id in the request (`-1`, `-1`; always so before v3): a new id from metadata, epoch 0.
/// - An id this cluster handed out and an epoch (KIP-360, v3+: the producer lost track of its
///   sequences and wants to start over without losing its identity): the same id, epoch + 1,
///   so every partition makes it start again at sequence 0 and refuses its older epoch.
///   (Kafka's own broker hands a non-transactional producer a new id here instead; the
///   clients accept either, and bumping fences the old epoch's stragglers.)
/// - An id this cluster never handed out, or an exhausted epoch: a new id, epoch 0.
///   Answering INVALID_PRODUCER_EPOCH would be fatal in librdkafka.
async fn init_producer_id(node: &Arc<Node>, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if req.transactional_id.is_some() {
        return resp.with_error_code(errors::transactions_unsupported());
    }
    let (id, epoch) = (req.producer_id.0, req.producer_epoch);
    if (id == -1) != (epoch == -1) {
        // Kafka's check: an id without an epoch (or the reverse) is a malformed request.
        return resp.with_error_code(E::InvalidRequest.code());
    }
    let allocated_end = node.meta.read().next_producer_id();
    if (0..allocated_end).contains(&id) && (0..PRODUCER_EPOCH_MAX).contains(&epoch) {
        tracing::debug!(producer_id = id, epoch = epoch + 1, "producer epoch bumped");
        return resp
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch + 1);
    }
    match node.producer_ids.next().await {
        Ok(id) => resp.with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Err(err) => {
            tracing::debug!(%err, "InitProducerId");
            resp.with_error_code(errors::producer_id(&err))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fetch

/// The response, whose records are registered in the `RecordSet` (their `Bytes` in the
/// response may be stand-ins that only `frame::encode_fetch` turns into the records).
async fn fetch(node: &Arc<Node>, req: FetchRequest) -> (FetchResponse, RecordSet) {
    let wait = Duration::from_millis(req.max_wait_ms.clamp(0, FETCH_WAIT_MS_MAX) as u64);
    let deadline = tokio::time::Instant::now() + wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_bytes = if req.max_bytes <= 0 {
        usize::MAX
    } else {
        req.max_bytes as usize
    };

    // Resolve partitions once; subscribe before reading so no append is missed.
    struct Want {
        topic: usize,
        partition: i32,
        log: Option<Arc<PartitionLog>>,
        /// Why `log` is `None`.
        error: i16,
        offset: i64,
        bytes_max: usize,
    }
    let mut wants = Vec::new();
    let mut names = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let logs = node.registry.topic(t.topic.0.as_str());
        names.push((t.topic.clone(), logs.as_ref().map(|l| l.id)));
        for p in &t.partitions {
            let log = logs
                .as_ref()
                .and_then(|l| {
                    usize::try_from(p.partition)
                        .ok()
                        .and_then(|i| l.partitions.get(i))
                })
                .cloned();
            let (log, error) = match log {
                None => (None, errors::unknown_topic()),
                Some(log) if !node.registry.leads(&log.key) => (None, errors::not_leader()),
                Some(log) => (Some(log), errors::NONE),
            };
            wants.push(Want {
                error,
                topic: ti,
                partition: p.partition,
                log,
                offset: p.fetch_offset,
                bytes_max: p.partition_max_bytes.max(0) as usize,
            });
        }
    }
    let mut watches: Vec<_> = wants
        .iter()
        .filter_map(|w| w.log.as_ref().map(|l| l.subscribe()))
        .collect();

    loop {
        for w in watches.iter_mut() {
            w.borrow_and_update();
        }
        // All partitions are read concurrently (a replay of many partitions is as fast as its
        // slowest one, not their sum). Each gets its partition_max_bytes, within an equal share
        // of the response's max_bytes; a read returns at least one batch when it has data
        // (KIP-74), so the response may exceed max_bytes by less than a batch per partition.
        let share = max_bytes / wants.iter().filter(|w| w.log.is_some()).count().max(1);
        let reads = futures::future::join_all(wants.iter().map(|w| async move {
            match &w.log {
                Some(log) => Some(
                    node.reader
                        .read(log, w.offset, w.bytes_max.min(share).max(1))
                        .await,
                ),
                None => None,
            }
        }))
        .await;
        let mut total = 0usize;
        let mut any_error = false;
        let mut parts: Vec<(usize, PartitionData)> = Vec::with_capacity(wants.len());
        let mut records = RecordSet::default();
        // What each partition returns, counted only if this round is the answer.
        let mut outs: Vec<(&Arc<PartitionLog>, Vec<Bytes>)> = Vec::new();
        for (w, read) in wants.iter().zip(reads) {
            let mut pd = PartitionData::default()
                .with_partition_index(w.partition)
                .with_aborted_transactions(Some(Vec::new()));
            let (Some(log), Some(read)) = (&w.log, read) else {
                any_error = true;
                parts.push((w.topic, pd.with_error_code(w.error)));
                continue;
            };
            let offsets = log.offsets();
            pd = pd
                .with_high_watermark(offsets.high_watermark)
                .with_last_stable_offset(offsets.high_watermark)
                .with_log_start_offset(offsets.log_start_offset);
            match read {
                Ok(chunks) => {
                    total += chunks.iter().map(Bytes::len).sum::<usize>();
                    // Counted from the chunks: the response may hold a stand-in for them.
                    outs.push((log, chunks.clone()));
                    parts.push((w.topic, pd.with_records(Some(records.add(chunks)))));
                }
                Err(err) => {
                    any_error = true;
                    tracing::debug!(topic = %log.topic_name, partition = w.partition, %err, "fetch");
                    parts.push((w.topic, pd.with_error_code(errors::read(&err))));
                }
            }
        }
        let waited_enough = tokio::time::Instant::now() >= deadline;
        if total >= min_bytes || any_error || waited_enough || watches.is_empty() {
            Metrics::add(&node.metrics.fetch_bytes_total, total as u64);
            for (log, chunks) in &outs {
                for c in chunks {
                    log.traffic.count_out(c);
                }
            }
            let mut topics: Vec<FetchableTopicResponse> = names
                .iter()
                .map(|(name, id)| {
                    FetchableTopicResponse::default()
                        .with_topic(name.clone())
                        .with_topic_id(id.map(|i| i.0).unwrap_or_default())
                })
                .collect();
            for (ti, pd) in parts {
                topics[ti].partitions.push(pd);
            }
            return (FetchResponse::default().with_responses(topics), records);
        }
        // Long poll: wake on any partition's new data, or at the deadline.
        let changed =
            futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ListOffsets

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

async fn list_offsets(
    node: &Arc<Node>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut topics = Vec::new();
    for t in req.topics {
        let logs = node.registry.topic(t.name.0.as_str());
        let mut partitions = Vec::new();
        for p in t.partitions {
            let mut resp = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            if version >= 4 {
                resp = resp.with_leader_epoch(-1);
            }
            let log = logs.as_ref().and_then(|l| {
                usize::try_from(p.partition_index)
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
            if version >= 4 {
                // The lease epoch, as Metadata reports it (see `admin_handlers` on epochs).
                resp = resp.with_leader_epoch(epoch);
            }
            let offsets = log.offsets();
            let found = match p.timestamp {
                LATEST => Ok(Some((offsets.high_watermark, -1))),
                EARLIEST => Ok(Some((offsets.log_start_offset, -1))),
                MAX_TIMESTAMP => node
                    .reader
                    .max_timestamp(log)
                    .await
                    .map(|o| o.map(|(ts, off)| (off, ts))),
                ts if ts >= 0 => node.reader.offset_for_time(log, ts).await,
                _ => Ok(None),
            };
            resp = match found {
                Ok(Some((offset, ts))) => resp.with_offset(offset).with_timestamp(ts),
                Ok(None) => resp,
                Err(err) => resp.with_error_code(errors::read(&err)),
            };
            partitions.push(resp);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

// ---------------------------------------------------------------------------------------------
// CreateTopics / DeleteTopics

async fn create_topics(node: &Arc<Node>, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut results = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut result = CreatableTopicResult::default().with_name(t.name.clone());
        let partitions = if t.num_partitions == -1 {
            if t.assignments.is_empty() {
                node.config.file.kafka.default_partitions as i32
            } else {
                t.assignments.len() as i32
            }
        } else {
            t.num_partitions
        };
        let checked = TopicName::new(name.clone())
            .map_err(|e| (E::InvalidTopicException.code(), e.to_string()))
            .and_then(|n| {
                if !(1..=TOPIC_PARTITIONS_MAX).contains(&partitions) {
                    Err((
                        E::InvalidPartitions.code(),
                        format!(
                            "partitions must be in 1..={TOPIC_PARTITIONS_MAX}, got {partitions}"
                        ),
                    ))
                } else if t.replication_factor == 0 || t.replication_factor < -1 {
                    Err((
                        E::InvalidReplicationFactor.code(),
                        format!("replication factor {} is invalid", t.replication_factor),
                    ))
                } else {
                    Ok(n)
                }
            });
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect();
        let outcome = match checked {
            Err(e) => Err(e),
            Ok(n) if req.validate_only => {
                if let Err(e) = crate::topic_configs::validate_topic_configs(&configs) {
                    Err((errors::config(&e), e.to_string()))
                } else if node.registry.topic(n.as_str()).is_some() {
                    Err((
                        E::TopicAlreadyExists.code(),
                        format!("topic `{n}` already exists"),
                    ))
                } else {
                    Ok(None)
                }
            }
            Ok(n) => create_topic(node, n, partitions as u32, configs)
                .await
                .map(Some),
        };
        result = match outcome {
            Ok(created) => result
                .with_num_partitions(partitions)
                .with_replication_factor(1)
                .with_topic_id(created.map(|m| m.id.0).unwrap_or_default()),
            Err((code, message)) => result
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message)))
                .with_num_partitions(-1)
                .with_replication_factor(-1),
        };
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

async fn delete_topics(
    node: &Arc<Node>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let targets: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
        req.topics
            .into_iter()
            .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        req.topic_names
            .into_iter()
            .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::new();
    for (name, id) in targets {
        let found = match (&name, id) {
            (Some(n), _) => node.registry.topic(n),
            (None, id) => node.registry.topic_by_id(TopicId(id)),
        };
        let mut resp = DeletableTopicResult::default()
            .with_name(name.as_deref().map(wire_name))
            .with_topic_id(id);
        let Some(topic) = found else {
            let code = if name.is_some() {
                errors::unknown_topic()
            } else {
                E::UnknownTopicId.code()
            };
            responses.push(resp.with_error_code(code));
            continue;
        };
        resp = resp
            .with_name(Some(wire_name(topic.name.as_str())))
            .with_topic_id(topic.id.0);
        let result = node
            .meta
            .write(Command::DeleteTopic {
                name: topic.name.clone(),
            })
            .await;
        node.refresh_topics();
        resp = match result {
            Ok(CommandResult::TopicDeleted(_)) => resp,
            Ok(CommandResult::Rejected(r)) => resp
                .with_error_code(rejection_code(&r))
                .with_error_message(Some(StrBytes::from_string(r.to_string()))),
            Ok(other) => resp
                .with_error_code(E::UnknownServerError.code())
                .with_error_message(Some(StrBytes::from_string(format!("{other:?}")))),
            Err(err) => resp
                .with_error_code(E::RequestTimedOut.code())
                .with_error_message(Some(StrBytes::from_string(err.to_string()))),
        };
        responses.push(resp);
    }
    DeleteTopicsResponse::default().with_responses(responses)
}
