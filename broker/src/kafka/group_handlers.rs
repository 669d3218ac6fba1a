//! Consumer-group APIs on the wire: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups,
//! OffsetDelete.
//!
//! These functions convert between `kafka-protocol` messages and the coordinator's own types
//! (`groups::core`), which know nothing of the wire. Membership goes through the coordinator
//! task (`node.groups`); committed offsets are metadata: an OffsetCommit is checked by the
//! coordinator (member and generation) and then written as one `Command::CommitOffsets`, and
//! OffsetFetch reads the applied metadata state directly.

use super::errors;
use crate::groups::core::{
    GroupDescription, GroupError, GroupState, JoinRequest, JoinResponse, MemberRef, SyncRequest,
};
use crate::groups::{self, coordinator::valid_group_id, GroupListing};
use crate::metrics::Metrics;
use crate::node::Node;
use bytes::{Buf, Bytes};
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, ConsumerProtocolSubscription, DeleteGroupsRequest, DeleteGroupsResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetFetchRequest, OffsetFetchResponse, RequestKind, ResponseKind, SyncGroupRequest,
    SyncGroupResponse, TopicName as WireTopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError as E;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use strata_meta::state::OffsetCommit;
use strata_meta::{Command, CommandResult, Rejection};
use strata_types::{PartitionKey, TopicId};

/// FindCoordinator key types.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
/// The protocol type of Kafka consumers (the only one whose subscriptions we read).
const CONSUMER_PROTOCOL_TYPE: &str = "consumer";
/// The group type every group here has (ListGroups v5).
const CLASSIC_GROUP_TYPE: &str = "classic";
/// Retries of an OffsetCommit whose topic was deleted between the check and the write.
const COMMIT_ATTEMPTS_MAX: usize = 8;

/// Answers one consumer-group request. `None` if `request` is not one of ours.
pub async fn handle(
    node: &Arc<Node>,
    request: RequestKind,
    version: i16,
    client_id: &str,
) -> Option<ResponseKind> {
    Some(match request {
        RequestKind::FindCoordinator(req) => {
            ResponseKind::FindCoordinator(find_coordinator(node, req, version))
        }
        RequestKind::JoinGroup(req) => {
            ResponseKind::JoinGroup(join_group(node, req, version, client_id).await)
        }
        RequestKind::SyncGroup(req) => ResponseKind::SyncGroup(sync_group(node, req).await),
        RequestKind::Heartbeat(req) => ResponseKind::Heartbeat(heartbeat(node, req).await),
        RequestKind::LeaveGroup(req) => {
            ResponseKind::LeaveGroup(leave_group(node, req, version).await)
        }
        RequestKind::OffsetCommit(req) => {
            ResponseKind::OffsetCommit(offset_commit(node, req).await)
        }
        RequestKind::OffsetFetch(req) => {
            ResponseKind::OffsetFetch(offset_fetch(node, req, version).await)
        }
        RequestKind::ListGroups(req) => ResponseKind::ListGroups(list_groups(node, req).await),
        RequestKind::DescribeGroups(req) => {
            ResponseKind::DescribeGroups(describe_groups(node, req, version).await)
        }
        RequestKind::DeleteGroups(req) => {
            ResponseKind::DeleteGroups(delete_groups(node, req).await)
        }
        RequestKind::OffsetDelete(req) => {
            ResponseKind::OffsetDelete(offset_delete(node, req).await)
        }
        _ => return None,
    })
}

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn code(result: Result<(), GroupError>) -> i16 {
    match result {
        Ok(()) => errors::NONE,
        Err(e) => errors::group(e),
    }
}

/// Group requests are answered only by the group's coordinator. `empty_ok`: the API accepts
/// the empty group id (see [`valid_group_id`]).
fn check_coordinator(node: &Node, group: &str, empty_ok: bool) -> Result<(), GroupError> {
    valid_group_id(group, empty_ok)?;
    if groups::coordinator_for(node, group) == node.config.node_id {
        Ok(())
    } else {
        Err(GroupError::NotCoordinator)
    }
}

/// Whether metadata holds committed offsets for `group`.
fn has_offsets(node: &Node, group: &str) -> bool {
    node.meta.read().group_offsets(group).next().is_some()
}

// ---------------------------------------------------------------------------------------------
// FindCoordinator

/// Groups (and transactional ids, so that a transactional producer fails clearly at
/// InitProducerId) are coordinated by [`groups::coordinator_for`]; its address comes from the
/// same broker list Metadata answers with.
fn find_coordinator(
    node: &Arc<Node>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let keys: Vec<StrBytes> = if version >= 4 {
        req.coordinator_keys
    } else {
        vec![req.key]
    };
    let brokers = crate::cluster::live_brokers(node);
    let coordinators: Vec<Coordinator> = keys
        .into_iter()
        .map(|key| {
            let found = match req.key_type {
                KEY_TYPE_GROUP | KEY_TYPE_TRANSACTION => {
                    let id = groups::coordinator_for(node, key.as_str());
                    brokers
                        .iter()
                        .find(|b| u64::try_from(b.node_id).ok() == Some(id))
                        .ok_or(errors::group(GroupError::CoordinatorNotAvailable))
                }
                _ => Err(E::InvalidRequest.code()),
            };
            let c = Coordinator::default().with_key(key);
            match found {
                Ok(b) => c
                    .with_node_id(BrokerId(b.node_id))
                    .with_host(str_bytes(b.host.clone()))
                    .with_port(b.port),
                Err(code) => c
                    .with_error_code(code)
                    .with_node_id(BrokerId(-1))
                    .with_port(-1),
            }
        })
        .collect();
    if version >= 4 {
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let c = coordinators.into_iter().next().unwrap_or_default();
    FindCoordinatorResponse::default()
        .with_error_code(c.error_code)
        .with_node_id(c.node_id)
        .with_host(c.host)
        .with_port(c.port)
}

// ---------------------------------------------------------------------------------------------
// JoinGroup, SyncGroup, Heartbeat, LeaveGroup

async fn join_group(
    node: &Arc<Node>,
    req: JoinGroupRequest,
    version: i16,
    client_id: &str,
) -> JoinGroupResponse {
    let group = req.group_id.0.to_string();
    let member_id = req.member_id.to_string();
    let answer = match check_coordinator(node, &group, false) {
        Err(e) => JoinResponse::error(e, member_id),
        Ok(()) => {
            let join = JoinRequest {
                member_id,
                group_instance_id: req.group_instance_id.map(|i| i.to_string()),
                client_id: client_id.to_owned(),
                client_host: String::new(),
                session_timeout_ms: req.session_timeout_ms,
                // v0 has no rebalance timeout: Kafka uses the session timeout.
                rebalance_timeout_ms: if version == 0 {
                    req.session_timeout_ms
                } else {
                    req.rebalance_timeout_ms
                },
                protocol_type: req.protocol_type.to_string(),
                protocols: req
                    .protocols
                    .into_iter()
                    .map(|p| (p.name.to_string(), p.metadata))
                    .collect(),
                require_known_member_id: version >= 4,
                fresh_id: uuid::Uuid::new_v4().to_string(),
            };
            node.groups.join(group, join).await
        }
    };
    // Before v7 the protocol name is not nullable.
    let protocol_name = match answer.protocol_name {
        None if version < 7 => Some(String::new()),
        name => name,
    };
    JoinGroupResponse::default()
        .with_error_code(answer.error.map_or(errors::NONE, errors::group))
        .with_generation_id(answer.generation_id)
        .with_protocol_type(answer.protocol_type.map(str_bytes))
        .with_protocol_name(protocol_name.map(str_bytes))
        .with_leader(str_bytes(answer.leader))
        .with_member_id(str_bytes(answer.member_id))
        .with_members(
            answer
                .members
                .into_iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(m.member_id))
                        .with_group_instance_id(m.group_instance_id.map(str_bytes))
                        .with_metadata(m.metadata)
                })
                .collect(),
        )
}

async fn sync_group(node: &Arc<Node>, req: SyncGroupRequest) -> SyncGroupResponse {
    let group = req.group_id.0.to_string();
    let answer = match check_coordinator(node, &group, false) {
        Err(e) => crate::groups::core::SyncResponse::error(e),
        Ok(()) => {
            let sync = SyncRequest {
                member_id: req.member_id.to_string(),
                group_instance_id: req.group_instance_id.map(|i| i.to_string()),
                generation_id: req.generation_id,
                protocol_type: req.protocol_type.map(|t| t.to_string()),
                protocol_name: req.protocol_name.map(|n| n.to_string()),
                assignments: req
                    .assignments
                    .into_iter()
                    .map(|a| (a.member_id.to_string(), a.assignment))
                    .collect(),
            };
            node.groups.sync(group, sync).await
        }
    };
    SyncGroupResponse::default()
        .with_error_code(answer.error.map_or(errors::NONE, errors::group))
        .with_protocol_type(answer.protocol_type.map(str_bytes))
        .with_protocol_name(answer.protocol_name.map(str_bytes))
        .with_assignment(answer.assignment)
}

async fn heartbeat(node: &Arc<Node>, req: HeartbeatRequest) -> HeartbeatResponse {
    let group = req.group_id.0.to_string();
    let result = match check_coordinator(node, &group, false) {
        Err(e) => Err(e),
        Ok(()) => {
            let member = MemberRef {
                member_id: req.member_id.to_string(),
                group_instance_id: req.group_instance_id.map(|i| i.to_string()),
            };
            node.groups
                .heartbeat(group, member, req.generation_id)
                .await
        }
    };
    HeartbeatResponse::default().with_error_code(code(result))
}

async fn leave_group(node: &Arc<Node>, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let group = req.group_id.0.to_string();
    let members: Vec<MemberRef> = if version >= 3 {
        req.members
            .iter()
            .map(|m| MemberRef {
                member_id: m.member_id.to_string(),
                group_instance_id: m.group_instance_id.as_ref().map(|i| i.to_string()),
            })
            .collect()
    } else {
        vec![MemberRef {
            member_id: req.member_id.to_string(),
            group_instance_id: None,
        }]
    };
    let answers = match check_coordinator(node, &group, false) {
        Err(e) => Err(e),
        Ok(()) => node.groups.leave(group, members.clone()).await,
    };
    let answers = match answers {
        Err(e) => return LeaveGroupResponse::default().with_error_code(errors::group(e)),
        Ok(a) => a,
    };
    if version < 3 {
        let first = answers.into_iter().next().unwrap_or(Ok(()));
        return LeaveGroupResponse::default().with_error_code(code(first));
    }
    LeaveGroupResponse::default().with_members(
        members
            .into_iter()
            .zip(answers)
            .map(|(m, answer)| {
                MemberResponse::default()
                    .with_member_id(str_bytes(m.member_id))
                    .with_group_instance_id(m.group_instance_id.map(str_bytes))
                    .with_error_code(code(answer))
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// OffsetCommit, OffsetFetch, OffsetDelete

/// Resolves a topic name and partition to a partition metadata knows, or None.
fn partition_key(node: &Node, topic: &str, partition: i32) -> Option<PartitionKey> {
    let state = node.meta.read();
    let meta = state.topic(topic)?;
    let partition = u32::try_from(partition).ok()?;
    (partition < meta.partitions).then_some(PartitionKey {
        topic: meta.id,
        partition,
    })
}

async fn offset_commit(node: &Arc<Node>, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = req.group_id.0.to_string();
    // Per partition, in request order: its error, or the offset to write.
    let mut slots: Vec<(usize, i32, Result<OffsetCommit, i16>)> = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        for p in &t.partitions {
            let metadata = p
                .committed_metadata
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            let slot = if metadata.len() > strata_meta::state::OFFSET_METADATA_BYTES_MAX {
                Err(errors::offset_metadata_too_large())
            } else {
                match partition_key(node, t.name.0.as_str(), p.partition_index) {
                    None => Err(errors::unknown_topic()),
                    Some(key) => Ok(OffsetCommit {
                        topic: key.topic,
                        partition: key.partition,
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata,
                    }),
                }
            };
            slots.push((ti, p.partition_index, slot));
        }
    }
    let check = match check_coordinator(node, &group, true) {
        Err(e) => Err(e),
        Ok(()) => {
            let member = MemberRef {
                member_id: req.member_id.to_string(),
                group_instance_id: req.group_instance_id.as_ref().map(|i| i.to_string()),
            };
            node.groups
                .check_commit(group.clone(), member, req.generation_id_or_member_epoch)
                .await
        }
    };
    if let Err(e) = check {
        for slot in slots.iter_mut().filter(|s| s.2.is_ok()) {
            slot.2 = Err(errors::group(e));
        }
    }
    // One metadata write for the whole request. A topic deleted since the lookup fails the
    // write: mark it and write the rest again.
    for _ in 0..COMMIT_ATTEMPTS_MAX {
        let offsets: Vec<OffsetCommit> = slots
            .iter()
            .filter_map(|s| s.2.as_ref().ok().cloned())
            .collect();
        if offsets.is_empty() {
            break;
        }
        let commit = node.meta.write(Command::CommitOffsets {
            group: group.clone(),
            offsets,
            now_ms: crate::log::sequencer::now_ms(),
        });
        let result = crate::metrics::timed(&node.metrics.meta_write_seconds, commit).await;
        let failed = match result {
            Ok(CommandResult::OffsetsCommitted) => {
                Metrics::inc(&node.metrics.offset_commits_total);
                break;
            }
            Ok(CommandResult::Rejected(
                Rejection::UnknownTopicId { topic } | Rejection::UnknownPartition { topic, .. },
            )) => {
                for slot in slots.iter_mut() {
                    if slot.2.as_ref().is_ok_and(|o| o.topic == topic) {
                        slot.2 = Err(errors::unknown_topic());
                    }
                }
                continue;
            }
            Ok(other) => {
                tracing::warn!(%group, ?other, "offset commit refused by metadata");
                E::UnknownServerError.code()
            }
            Err(err) => {
                tracing::warn!(%group, %err, "offset commit: metadata write failed");
                errors::group(GroupError::CoordinatorNotAvailable)
            }
        };
        for slot in slots.iter_mut().filter(|s| s.2.is_ok()) {
            slot.2 = Err(failed);
        }
    }
    let mut topics: Vec<OffsetCommitResponseTopic> = req
        .topics
        .iter()
        .map(|t| OffsetCommitResponseTopic::default().with_name(t.name.clone()))
        .collect();
    for (ti, partition, slot) in slots {
        let code = slot.err().unwrap_or(errors::NONE);
        topics[ti].partitions.push(
            OffsetCommitResponsePartition::default()
                .with_partition_index(partition)
                .with_error_code(code),
        );
    }
    OffsetCommitResponse::default().with_topics(topics)
}

/// One committed offset as OffsetFetch reports it: `(offset, leader epoch, metadata)`,
/// `(-1, -1, "")` when there is none.
type Fetched = (i64, i32, String);

/// The offsets of `group` for the named topics' partitions, or for everything it committed
/// (`None`). Unknown topics and partitions without a commit answer -1, as Kafka does.
fn fetch_offsets(
    node: &Node,
    group: &str,
    topics: Option<Vec<(WireTopicName, Vec<i32>)>>,
) -> Vec<(WireTopicName, Vec<(i32, Fetched)>)> {
    let none = || (-1, -1, String::new());
    let state = node.meta.read();
    match topics {
        Some(topics) => topics
            .into_iter()
            .map(|(name, partitions)| {
                let id = state.topic(name.0.as_str()).map(|t| t.id);
                let parts = partitions
                    .into_iter()
                    .map(|p| {
                        let found = id.zip(u32::try_from(p).ok()).and_then(|(id, p)| {
                            state
                                .group_offset(group, id, p)
                                .map(|o| (o.offset, o.leader_epoch, o.metadata.clone()))
                        });
                        (p, found.unwrap_or_else(none))
                    })
                    .collect();
                (name, parts)
            })
            .collect(),
        None => {
            let mut by_topic: BTreeMap<TopicId, Vec<(i32, Fetched)>> = BTreeMap::new();
            for (topic, partition, o) in state.group_offsets(group) {
                by_topic.entry(topic).or_default().push((
                    partition as i32,
                    (o.offset, o.leader_epoch, o.metadata.clone()),
                ));
            }
            by_topic
                .into_iter()
                .filter_map(|(id, parts)| {
                    let name = state.topic_by_id(id)?.name.as_str().to_owned();
                    Some((WireTopicName(str_bytes(name)), parts))
                })
                .collect()
        }
    }
}

async fn offset_fetch(
    node: &Arc<Node>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let groups = req
            .groups
            .into_iter()
            .map(|g| {
                let group = g.group_id.0.to_string();
                let resp = OffsetFetchResponseGroup::default().with_group_id(g.group_id);
                if let Err(e) = check_coordinator(node, &group, true) {
                    return resp.with_error_code(errors::group(e));
                }
                let wanted = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name, t.partition_indexes))
                        .collect()
                });
                let topics = fetch_offsets(node, &group, wanted)
                    .into_iter()
                    .map(|(name, parts)| {
                        OffsetFetchResponseTopics::default()
                            .with_name(name)
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|(p, (offset, epoch, metadata))| {
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(offset)
                                            .with_committed_leader_epoch(epoch)
                                            .with_metadata(Some(str_bytes(metadata)))
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                resp.with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let group = req.group_id.0.to_string();
    let wanted = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name, t.partition_indexes))
            .collect::<Vec<_>>()
    });
    if let Err(e) = check_coordinator(node, &group, true) {
        let code = errors::group(e);
        // v1 has no top-level error: report it on every partition asked for.
        let topics = wanted
            .unwrap_or_default()
            .into_iter()
            .map(|(name, parts)| {
                OffsetFetchResponseTopic::default()
                    .with_name(name)
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|p| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(-1)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect();
        return OffsetFetchResponse::default()
            .with_topics(topics)
            .with_error_code(code);
    }
    let topics = fetch_offsets(node, &group, wanted)
        .into_iter()
        .map(|(name, parts)| {
            OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|(p, (offset, epoch, metadata))| {
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(epoch)
                                .with_metadata(Some(str_bytes(metadata)))
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// The topics the members of a consumer group subscribe to; `None` when a subscription does
/// not decode (then every topic counts as subscribed, as in Kafka).
fn subscribed_topics(description: &GroupDescription) -> Option<BTreeSet<String>> {
    let mut topics = BTreeSet::new();
    for member in &description.members {
        let mut buf: Bytes = member.metadata.clone();
        if buf.remaining() < 2 {
            return None;
        }
        let version = buf.get_i16();
        // Later versions only add fields: decode what we know (Kafka does the same).
        let subscription =
            ConsumerProtocolSubscription::decode(&mut buf, version.clamp(0, 3)).ok()?;
        topics.extend(subscription.topics.iter().map(|t| t.to_string()));
    }
    Some(topics)
}

async fn offset_delete(node: &Arc<Node>, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let group = req.group_id.0.to_string();
    let fail = |code| OffsetDeleteResponse::default().with_error_code(code);
    if let Err(e) = check_coordinator(node, &group, false) {
        return fail(errors::group(e));
    }
    let description = match node.groups.describe(group.clone()).await {
        Ok(d) => d,
        Err(e) => return fail(errors::group(e)),
    };
    if description.is_none() && !has_offsets(node, &group) {
        return fail(errors::group(GroupError::GroupIdNotFound));
    }
    // An active consumer group keeps the offsets of the topics it consumes.
    let subscribed: Option<Option<BTreeSet<String>>> = match &description {
        Some(d) if d.state != GroupState::Empty => {
            if d.protocol_type != CONSUMER_PROTOCOL_TYPE {
                return fail(errors::group(GroupError::NonEmptyGroup));
            }
            Some(subscribed_topics(d))
        }
        _ => None,
    };
    let mut slots: Vec<(usize, i32, Result<PartitionKey, i16>)> = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let name = t.name.0.as_str();
        let in_use = match &subscribed {
            None => false,
            Some(None) => true,
            Some(Some(topics)) => topics.contains(name),
        };
        for p in &t.partitions {
            let slot = match partition_key(node, name, p.partition_index) {
                None => Err(errors::unknown_topic()),
                Some(_) if in_use => Err(errors::group(GroupError::GroupSubscribedToTopic)),
                Some(key) => Ok(key),
            };
            slots.push((ti, p.partition_index, slot));
        }
    }
    let keys: Vec<PartitionKey> = slots.iter().filter_map(|s| s.2.ok()).collect();
    if !keys.is_empty() {
        let result = node
            .meta
            .write(Command::DeleteGroupOffsets {
                group: group.clone(),
                partitions: Some(keys),
            })
            .await;
        if !matches!(result, Ok(CommandResult::GroupOffsetsDeleted { .. })) {
            tracing::warn!(%group, ?result, "offset delete failed");
            let code = errors::group(GroupError::CoordinatorNotAvailable);
            for slot in slots.iter_mut().filter(|s| s.2.is_ok()) {
                slot.2 = Err(code);
            }
        }
    }
    let mut topics: Vec<OffsetDeleteResponseTopic> = req
        .topics
        .iter()
        .map(|t| OffsetDeleteResponseTopic::default().with_name(t.name.clone()))
        .collect();
    for (ti, partition, slot) in slots {
        topics[ti].partitions.push(
            OffsetDeleteResponsePartition::default()
                .with_partition_index(partition)
                .with_error_code(slot.err().unwrap_or(errors::NONE)),
        );
    }
    OffsetDeleteResponse::default().with_topics(topics)
}

// ---------------------------------------------------------------------------------------------
// ListGroups, DescribeGroups, DeleteGroups

async fn list_groups(node: &Arc<Node>, req: ListGroupsRequest) -> ListGroupsResponse {
    let Some(mut listed) = node.groups.list().await else {
        return ListGroupsResponse::default()
            .with_error_code(errors::group(GroupError::CoordinatorNotAvailable));
    };
    // Groups that only committed offsets (kcat, `assign()` consumers) are Empty groups.
    {
        let known: BTreeSet<String> = listed.iter().map(|g| g.group_id.clone()).collect();
        let state = node.meta.read();
        for group in state.offset_groups().filter(|g| !known.contains(*g)) {
            listed.push(GroupListing {
                group_id: group.to_owned(),
                protocol_type: String::new(),
                state: GroupState::Empty,
            });
        }
    }
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let types: Vec<String> = req.types_filter.iter().map(|s| s.to_lowercase()).collect();
    let groups = listed
        .into_iter()
        .filter(|g| states.is_empty() || states.contains(&g.state.name().to_lowercase()))
        .filter(|_| types.is_empty() || types.iter().any(|t| t == CLASSIC_GROUP_TYPE))
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(g.group_id)))
                .with_protocol_type(str_bytes(g.protocol_type))
                .with_group_state(str_bytes(g.state.name()))
                .with_group_type(str_bytes(CLASSIC_GROUP_TYPE))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

async fn describe_groups(
    node: &Arc<Node>,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let mut described = Vec::with_capacity(req.groups.len());
    for group_id in req.groups {
        let group = group_id.0.to_string();
        let resp = DescribedGroup::default().with_group_id(group_id);
        let found = match check_coordinator(node, &group, true) {
            Err(e) => Err(e),
            Ok(()) => node.groups.describe(group.clone()).await,
        };
        let resp = match found {
            Err(e) => resp.with_error_code(errors::group(e)),
            Ok(Some(d)) => {
                // Metadata and assignments are shown only for a stable group (as Kafka does).
                let stable = d.state == GroupState::Stable;
                resp.with_group_state(str_bytes(d.state.name()))
                    .with_protocol_type(str_bytes(d.protocol_type))
                    .with_protocol_data(str_bytes(if stable {
                        d.protocol_name
                    } else {
                        String::new()
                    }))
                    .with_members(
                        d.members
                            .into_iter()
                            .map(|m| {
                                let member = DescribedGroupMember::default()
                                    .with_member_id(str_bytes(m.member_id))
                                    .with_group_instance_id(m.group_instance_id.map(str_bytes))
                                    .with_client_id(str_bytes(m.client_id))
                                    .with_client_host(str_bytes(m.client_host));
                                if stable {
                                    member
                                        .with_member_metadata(m.metadata)
                                        .with_member_assignment(m.assignment)
                                } else {
                                    member
                                }
                            })
                            .collect(),
                    )
            }
            Ok(None) if has_offsets(node, &group) => {
                resp.with_group_state(str_bytes(GroupState::Empty.name()))
            }
            // v6 (KIP-1043) names a missing group; older versions describe it as Dead.
            Ok(None) if version >= 6 => resp
                .with_error_code(errors::group(GroupError::GroupIdNotFound))
                .with_group_state(str_bytes(GroupState::Dead.name())),
            Ok(None) => resp.with_group_state(str_bytes(GroupState::Dead.name())),
        };
        described.push(resp);
    }
    DescribeGroupsResponse::default().with_groups(described)
}

async fn delete_groups(node: &Arc<Node>, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(req.groups_names.len());
    for group_id in req.groups_names {
        let group = group_id.0.to_string();
        let result = match check_coordinator(node, &group, true) {
            Err(e) => Err(e),
            Ok(()) => node.groups.delete(group.clone()).await,
        };
        let code = match result {
            Err(e) => errors::group(e),
            Ok(in_memory) => {
                if !has_offsets(node, &group) {
                    if in_memory {
                        errors::NONE
                    } else {
                        errors::group(GroupError::GroupIdNotFound)
                    }
                } else {
                    let written = node
                        .meta
                        .write(Command::DeleteGroupOffsets {
                            group: group.clone(),
                            partitions: None,
                        })
                        .await;
                    match written {
                        Ok(CommandResult::GroupOffsetsDeleted { .. }) => errors::NONE,
                        other => {
                            tracing::warn!(%group, ?other, "deleting a group's offsets failed");
                            errors::group(GroupError::CoordinatorNotAvailable)
                        }
                    }
                }
            }
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
