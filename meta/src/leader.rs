//! The calls that must run on the leader, executed on this node.
//!
//! Each function tries the call on the local raft. If this node leads, the call is done and
//! answers [`Attempt::Done`]; if it does not, nothing was changed and the answer is
//! [`Attempt::NotLeader`] with openraft's best guess of the leader. [`crate::MetaNode`] calls
//! them for its own callers when it leads, and the `Meta` gRPC service calls them for other
//! nodes that forwarded a call here. They never forward themselves, so two nodes with stale
//! views cannot pass a call back and forth.

use crate::error::{fatal, raft_error, MetaError};
use crate::raft::{LogId, MetaRaft, NodeId};
use crate::state::{Command, CommandResult};
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::metrics::WaitError;
use openraft::{BasicNode, ChangeMembers, StoredMembership};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long removing a demoted voter waits for it to hear of its demotion (a few heartbeats).
pub(crate) const DEMOTION_WAIT_MS: u64 = 3_000;

/// The outcome of trying a leader call on one node.
#[derive(Debug)]
pub(crate) enum Attempt<T> {
    Done(T),
    /// This node does not lead; nothing was changed.
    NotLeader(LeaderHint),
}

/// Who the refusing node believes leads, if it knows.
#[derive(Clone, Debug, Default)]
pub(crate) struct LeaderHint {
    pub id: Option<NodeId>,
    pub addr: Option<String>,
}

impl From<ForwardToLeader<NodeId, BasicNode>> for LeaderHint {
    fn from(f: ForwardToLeader<NodeId, BasicNode>) -> Self {
        LeaderHint {
            id: f.leader_id,
            addr: f.leader_node.map(|n| n.addr).filter(|a| !a.is_empty()),
        }
    }
}

/// An applied command.
#[derive(Debug)]
pub(crate) struct Written {
    pub log_index: u64,
    pub result: CommandResult,
}

/// The membership of the metadata group as one node sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipView {
    /// Log index of the membership entry (0 before the group is initialized).
    pub log_index: u64,
    /// Voters by node id, with their gRPC addresses. In a joint configuration (a change in
    /// flight) the voters of both configurations.
    pub voters: BTreeMap<NodeId, String>,
    /// Members that receive the log but do not vote.
    pub learners: BTreeMap<NodeId, String>,
    /// Whether a membership change is in flight.
    pub joint: bool,
}

impl MembershipView {
    pub(crate) fn new(log_id: Option<LogId>, m: &openraft::Membership<NodeId, BasicNode>) -> Self {
        let addr = |id: &NodeId| m.get_node(id).map(|n| n.addr.clone()).unwrap_or_default();
        MembershipView {
            log_index: log_id.map_or(0, |id| id.index),
            voters: m.voter_ids().map(|id| (id, addr(&id))).collect(),
            learners: m.learner_ids().map(|id| (id, addr(&id))).collect(),
            joint: m.get_joint_config().len() > 1,
        }
    }

    pub(crate) fn from_stored(m: &StoredMembership<NodeId, BasicNode>) -> Self {
        Self::new(m.log_id().as_ref().copied(), m.membership())
    }
}

/// Proposes `cmd` and waits until it is applied here.
pub(crate) async fn write(raft: &MetaRaft, cmd: Command) -> Result<Attempt<Written>, MetaError> {
    match raft.client_write(cmd).await {
        Ok(response) => {
            let result = response.data.result.ok_or_else(|| MetaError::Raft {
                reason: "a command was applied without a result".into(),
            })?;
            Ok(Attempt::Done(Written {
                log_index: response.log_id.index,
                result,
            }))
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Ok(Attempt::NotLeader(f.into()))
        }
        Err(e) => Err(raft_error(e)),
    }
}

/// Confirms leadership with a quorum and answers the log index a linearizable read must have
/// applied (this node has applied it when this returns).
pub(crate) async fn read_index(raft: &MetaRaft) -> Result<Attempt<u64>, MetaError> {
    match raft.ensure_linearizable().await {
        Ok(read_log_id) => Ok(Attempt::Done(read_log_id.map_or(0, |id| id.index))),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
            Ok(Attempt::NotLeader(f.into()))
        }
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
            Err(MetaError::QuorumLost {
                reason: q.to_string(),
            })
        }
        Err(RaftError::Fatal(f)) => Err(fatal(f)),
    }
}

/// The membership a `change_membership` call left in force, or why it did not apply.
fn membership_changed(
    raft: &MetaRaft,
    changed: Result<
        openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>,
        RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    >,
) -> Result<Attempt<MembershipView>, MetaError> {
    match changed {
        Ok(response) => Ok(Attempt::Done(view_after(
            raft,
            Some(response.log_id),
            response.membership,
        ))),
        Err(e) => membership_change_error(e),
    }
}

fn membership_change_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
) -> Result<Attempt<MembershipView>, MetaError> {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Ok(Attempt::NotLeader(f.into()))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Err(MetaError::Membership {
                retryable: matches!(c, openraft::error::ChangeMembershipError::InProgress(_)),
                reason: c.to_string(),
            })
        }
        RaftError::Fatal(f) => Err(fatal(f)),
    }
}

/// Adds (or re-adds) `node_id` at `addr` as a learner, then waits up to `wait` until the
/// leader has replicated to it everything up to the membership entry that added it.
pub(crate) async fn add_learner(
    raft: &MetaRaft,
    node_id: NodeId,
    addr: String,
    wait: Duration,
) -> Result<Attempt<MembershipView>, MetaError> {
    // openraft's own blocking add waits without a bound; this one is bounded.
    let response = match raft.add_learner(node_id, BasicNode::new(addr), false).await {
        Ok(response) => response,
        Err(e) => return membership_change_error(e),
    };
    let log_id = response.log_id;
    let caught_up = raft
        .wait(Some(wait))
        .metrics(
            |m| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&node_id))
                    .is_some_and(|matched| matched.is_some_and(|id| id.index >= log_id.index))
            },
            "meta learner caught up",
        )
        .await;
    match caught_up {
        Ok(_) => {}
        Err(WaitError::Timeout(..)) => {
            return Err(MetaError::LearnerLagging {
                node_id,
                waited_ms: wait.as_millis() as u64,
            })
        }
        Err(WaitError::ShuttingDown) => return Err(MetaError::ShutDown),
    }
    Ok(Attempt::Done(view_after(
        raft,
        Some(log_id),
        response.membership,
    )))
}

/// Replaces the voter set by `voters` (through a joint configuration); voters that leave
/// stay as learners if `retain`, else they leave the group.
pub(crate) async fn change_membership(
    raft: &MetaRaft,
    voters: BTreeSet<NodeId>,
    retain: bool,
) -> Result<Attempt<MembershipView>, MetaError> {
    let changed = raft
        .change_membership(ChangeMembers::ReplaceAllVoters(voters), retain)
        .await;
    membership_changed(raft, changed)
}

/// Removes the learners `ids` from the group (they no longer receive the log). First waits
/// up to `wait` until each has the membership entry now in force: a voter that was just
/// demoted to learner then knows it no longer votes, because the leader stops replicating to
/// a removed node at once (openraft 0.9) and it would never hear of its demotion otherwise.
pub(crate) async fn remove_learners(
    raft: &MetaRaft,
    ids: BTreeSet<NodeId>,
    wait: Duration,
) -> Result<Attempt<MembershipView>, MetaError> {
    let (leads, membership_index) = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        (
            m.state == openraft::ServerState::Leader,
            m.membership_config
                .log_id()
                .as_ref()
                .map_or(0, |id| id.index),
        )
    };
    if leads {
        // A learner that is down never catches up: removing it anyway is the point.
        let _ = raft
            .wait(Some(wait))
            .metrics(
                |m| {
                    ids.iter().all(|id| {
                        m.replication
                            .as_ref()
                            .and_then(|r| r.get(id))
                            .is_some_and(|matched| {
                                matched.is_some_and(|l| l.index >= membership_index)
                            })
                    })
                },
                "removed meta voters have their demotion",
            )
            .await;
    }
    let changed = raft
        .change_membership(ChangeMembers::RemoveNodes(ids), false)
        .await;
    membership_changed(raft, changed)
}

/// What a node is in a membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Voter,
    Learner,
    Outside,
}

impl MembershipView {
    pub(crate) fn role_of(&self, node_id: NodeId) -> Role {
        if self.voters.contains_key(&node_id) {
            Role::Voter
        } else if self.learners.contains_key(&node_id) {
            Role::Learner
        } else {
            Role::Outside
        }
    }
}

/// Logs every change of this node's role in the membership it applied, until raft stops: an
/// operator sees in a node's own log when it was added, promoted, demoted or removed. A voter
/// removed from the group never hears of the final membership (replication to it stops at
/// once); it stays a candidate whose vote requests the others refuse (their leader lease and
/// longer logs), so it cannot disrupt them. [`remove_learners`] avoids that state for voters
/// removed through `MetaNode::remove_voter`.
pub(crate) async fn log_role_changes(
    node_id: NodeId,
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
) {
    let mut last: Option<(Role, u64)> = None;
    loop {
        let view = MembershipView::from_stored(&metrics.borrow_and_update().membership_config);
        // A joint configuration is a change in flight: wait for its final form.
        if !view.joint {
            let role = view.role_of(node_id);
            let changed = match last {
                Some((was, _)) => was != role,
                None => role != Role::Outside,
            };
            if changed {
                let was = last.map(|(r, _)| r);
                let voters: Vec<NodeId> = view.voters.keys().copied().collect();
                match role {
                    Role::Voter => tracing::info!(
                        node_id,
                        membership_log_index = view.log_index,
                        ?voters,
                        "this meta node is a voter of the meta group"
                    ),
                    Role::Learner if was == Some(Role::Voter) => tracing::warn!(
                        node_id,
                        membership_log_index = view.log_index,
                        ?voters,
                        "this meta node was removed from the meta voters: it no longer votes \
                         or campaigns; stop it once it is removed from the group"
                    ),
                    Role::Learner => tracing::info!(
                        node_id,
                        membership_log_index = view.log_index,
                        ?voters,
                        "this meta node is a learner of the meta group (receives the log, \
                         does not vote)"
                    ),
                    Role::Outside => tracing::warn!(
                        node_id,
                        membership_log_index = view.log_index,
                        ?voters,
                        "this meta node is no longer a member of the meta group: it serves \
                         stale metadata; stop it"
                    ),
                }
            }
            last = Some((role, view.log_index));
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Records new addresses of existing members (a node that moved, or a store formed by
/// `MetaNode::open` without addresses).
pub(crate) async fn set_addresses(
    raft: &MetaRaft,
    nodes: BTreeMap<NodeId, String>,
) -> Result<Attempt<MembershipView>, MetaError> {
    let nodes = nodes
        .into_iter()
        .map(|(id, addr)| (id, BasicNode::new(addr)))
        .collect();
    let changed = raft
        .change_membership(ChangeMembers::SetNodes(nodes), true)
        .await;
    membership_changed(raft, changed)
}

fn view_after(
    raft: &MetaRaft,
    log_id: Option<LogId>,
    membership: Option<openraft::Membership<NodeId, BasicNode>>,
) -> MembershipView {
    match membership {
        Some(m) => MembershipView::new(log_id, &m),
        None => MembershipView::from_stored(&raft.metrics().borrow().membership_config),
    }
}
