//! The group coordinator's driver: one task owns every [`Group`] and runs their events.
//!
//! Handlers send a [`Call`] with a oneshot reply channel through a bounded queue
//! ([`GROUP_CALLS_MAX`]). The task feeds each call to its group's core with the time, sends
//! the answers the core gives back, and keeps one timer index (deadline → group) so that a
//! single `sleep_until` wakes it for the earliest deadline of any group. JoinGroup and
//! SyncGroup replies wait in the task's tables until the core completes them, which is how the
//! protocol delays them until the rebalance is done.
//!
//! Time is monotonic milliseconds since the task started (`tokio::time::Instant`), so a paused
//! tokio clock drives it in tests. Group state lives only in memory: after a restart members
//! get UNKNOWN_MEMBER_ID and join again; committed offsets are in metadata, not here.

use super::core::{
    Group, GroupConfig, GroupDescription, GroupError, GroupState, JoinRequest, JoinResponse,
    MemberRef, Output, ReplyId, SyncRequest, SyncResponse,
};
use crate::metrics::Metrics;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Calls waiting for the coordinator task; more wait to enqueue.
pub const GROUP_CALLS_MAX: usize = 1_024;
/// Groups kept in memory. Past it, idle (`Empty`) groups are forgotten first; a new group is
/// refused with COORDINATOR_NOT_AVAILABLE when every group is active.
pub const GROUPS_MAX: usize = 10_000;
/// Longest group id accepted (bytes).
pub const GROUP_ID_BYTES_MAX: usize = strata_meta::state::GROUP_ID_BYTES_MAX;

/// One listed group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: GroupState,
}

/// A request to the coordinator task.
#[derive(Debug)]
pub enum Call {
    Join {
        group: String,
        req: JoinRequest,
        reply: oneshot::Sender<JoinResponse>,
    },
    Sync {
        group: String,
        req: SyncRequest,
        reply: oneshot::Sender<SyncResponse>,
    },
    Heartbeat {
        group: String,
        member: MemberRef,
        generation_id: i32,
        reply: oneshot::Sender<Result<(), GroupError>>,
    },
    Leave {
        group: String,
        members: Vec<MemberRef>,
        reply: oneshot::Sender<Result<Vec<Result<(), GroupError>>, GroupError>>,
    },
    CheckCommit {
        group: String,
        member: MemberRef,
        generation_id: i32,
        reply: oneshot::Sender<Result<(), GroupError>>,
    },
    List {
        reply: oneshot::Sender<Vec<GroupListing>>,
    },
    Describe {
        group: String,
        reply: oneshot::Sender<Option<GroupDescription>>,
    },
    /// Forget an `Empty` group; `Ok(false)` when it was not in memory.
    Delete {
        group: String,
        reply: oneshot::Sender<Result<bool, GroupError>>,
    },
}

/// Handle to the coordinator task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Groups {
    tx: mpsc::Sender<Call>,
}

impl Groups {
    /// Starts the coordinator task on the current runtime. It stops when every handle is
    /// dropped.
    pub fn spawn(config: GroupConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(GROUP_CALLS_MAX);
        tokio::spawn(Driver::new(config, metrics).run(rx));
        Self { tx }
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Call) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    /// Joins; answers when the join phase completes (or at once on an error).
    pub async fn join(&self, group: String, req: JoinRequest) -> JoinResponse {
        let member_id = req.member_id.clone();
        self.call(|reply| Call::Join { group, req, reply })
            .await
            .unwrap_or_else(|| JoinResponse::error(GroupError::CoordinatorNotAvailable, member_id))
    }

    /// Syncs; answers once the leader's assignment is in (or at once on an error).
    pub async fn sync(&self, group: String, req: SyncRequest) -> SyncResponse {
        self.call(|reply| Call::Sync { group, req, reply })
            .await
            .unwrap_or_else(|| SyncResponse::error(GroupError::CoordinatorNotAvailable))
    }

    pub async fn heartbeat(
        &self,
        group: String,
        member: MemberRef,
        generation_id: i32,
    ) -> Result<(), GroupError> {
        self.call(|reply| Call::Heartbeat {
            group,
            member,
            generation_id,
            reply,
        })
        .await
        .unwrap_or(Err(GroupError::CoordinatorNotAvailable))
    }

    /// Removes members; the outer error is the group's, the inner ones the members'.
    pub async fn leave(
        &self,
        group: String,
        members: Vec<MemberRef>,
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        self.call(|reply| Call::Leave {
            group,
            members,
            reply,
        })
        .await
        .unwrap_or(Err(GroupError::CoordinatorNotAvailable))
    }

    /// May this member (or a non-member, with generation -1) commit offsets now?
    pub async fn check_commit(
        &self,
        group: String,
        member: MemberRef,
        generation_id: i32,
    ) -> Result<(), GroupError> {
        self.call(|reply| Call::CheckCommit {
            group,
            member,
            generation_id,
            reply,
        })
        .await
        .unwrap_or(Err(GroupError::CoordinatorNotAvailable))
    }

    /// The groups in memory (groups known only by their committed offsets are not here).
    pub async fn list(&self) -> Option<Vec<GroupListing>> {
        self.call(|reply| Call::List { reply }).await
    }

    /// `Ok(None)`: the group is not in memory.
    pub async fn describe(&self, group: String) -> Result<Option<GroupDescription>, GroupError> {
        self.call(|reply| Call::Describe { group, reply })
            .await
            .ok_or(GroupError::CoordinatorNotAvailable)
    }

    pub async fn delete(&self, group: String) -> Result<bool, GroupError> {
        self.call(|reply| Call::Delete { group, reply })
            .await
            .unwrap_or(Err(GroupError::CoordinatorNotAvailable))
    }
}

struct Driver {
    config: GroupConfig,
    metrics: Arc<Metrics>,
    start: Instant,
    groups: HashMap<String, Group>,
    /// `(deadline, group)` for every group with a deadline; `deadlines` is its reverse.
    timers: BTreeSet<(i64, String)>,
    deadlines: HashMap<String, i64>,
    joins: HashMap<ReplyId, oneshot::Sender<JoinResponse>>,
    syncs: HashMap<ReplyId, oneshot::Sender<SyncResponse>>,
    next_reply: ReplyId,
    members: usize,
    out: Vec<Output>,
}

impl Driver {
    fn new(config: GroupConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            metrics,
            start: Instant::now(),
            groups: HashMap::new(),
            timers: BTreeSet::new(),
            deadlines: HashMap::new(),
            joins: HashMap::new(),
            syncs: HashMap::new(),
            next_reply: 0,
            members: 0,
            out: Vec::new(),
        }
    }

    fn now_ms(&self) -> i64 {
        i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Call>) {
        loop {
            let next = self.timers.first().map(|(at, _)| *at);
            let wake =
                next.map(|at| self.start + std::time::Duration::from_millis(at.max(0) as u64));
            tokio::select! {
                call = rx.recv() => match call {
                    Some(call) => self.handle(call),
                    None => break,
                },
                () = wake_at(wake) => self.fire_timers(),
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now_ms();
        let due: Vec<String> = self
            .timers
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, group)| group.clone())
            .collect();
        for group in due {
            self.with_group(&group, |g, now, out| g.tick(now, out));
        }
    }

    fn handle(&mut self, call: Call) {
        match call {
            Call::Join { group, req, reply } => {
                if let Err(error) = valid_group_id(&group, false) {
                    let _ = reply.send(JoinResponse::error(error, req.member_id));
                    return;
                }
                if !self.groups.contains_key(&group) {
                    if !req.member_id.is_empty() {
                        let error = GroupError::UnknownMemberId;
                        let _ = reply.send(JoinResponse::error(error, req.member_id));
                        return;
                    }
                    if !self.make_room() {
                        let error = GroupError::CoordinatorNotAvailable;
                        let _ = reply.send(JoinResponse::error(error, req.member_id));
                        return;
                    }
                    self.groups
                        .insert(group.clone(), Group::new(self.config.clone()));
                }
                let id = self.reply_id();
                self.joins.insert(id, reply);
                self.with_group(&group, |g, now, out| g.join(now, req, id, out));
            }
            Call::Sync { group, req, reply } => {
                if !self.groups.contains_key(&group) {
                    let _ = reply.send(SyncResponse::error(GroupError::UnknownMemberId));
                    return;
                }
                let id = self.reply_id();
                self.syncs.insert(id, reply);
                self.with_group(&group, |g, now, out| g.sync(now, req, id, out));
            }
            Call::Heartbeat {
                group,
                member,
                generation_id,
                reply,
            } => {
                let answer = if self.groups.contains_key(&group) {
                    self.with_group(&group, |g, now, _| {
                        g.heartbeat(
                            now,
                            &member.member_id,
                            member.group_instance_id.as_deref(),
                            generation_id,
                        )
                    })
                } else {
                    Err(GroupError::UnknownMemberId)
                };
                let _ = reply.send(answer);
            }
            Call::Leave {
                group,
                members,
                reply,
            } => {
                let answer = if self.groups.contains_key(&group) {
                    self.with_group(&group, |g, now, out| Ok(g.leave(now, &members, out)))
                } else {
                    Ok(vec![Err(GroupError::UnknownMemberId); members.len()])
                };
                let _ = reply.send(answer);
            }
            Call::CheckCommit {
                group,
                member,
                generation_id,
                reply,
            } => {
                let answer = if let Err(error) = valid_group_id(&group, true) {
                    Err(error)
                } else if self.groups.contains_key(&group) {
                    self.with_group(&group, |g, now, _| {
                        g.check_commit(
                            now,
                            &member.member_id,
                            member.group_instance_id.as_deref(),
                            generation_id,
                        )
                    })
                } else if generation_id < 0 {
                    // No group in memory: only offsets are kept for it (an `Empty` group).
                    Ok(())
                } else {
                    Err(GroupError::IllegalGeneration)
                };
                let _ = reply.send(answer);
            }
            Call::List { reply } => {
                let mut listed: Vec<GroupListing> = self
                    .groups
                    .iter()
                    .map(|(id, g)| GroupListing {
                        group_id: id.clone(),
                        protocol_type: g.protocol_type().to_owned(),
                        state: g.state(),
                    })
                    .collect();
                listed.sort_by(|a, b| a.group_id.cmp(&b.group_id));
                let _ = reply.send(listed);
            }
            Call::Describe { group, reply } => {
                let _ = reply.send(self.groups.get(&group).map(Group::describe));
            }
            Call::Delete { group, reply } => {
                let answer = match self.groups.get_mut(&group) {
                    None => Ok(false),
                    Some(g) => g.delete().map(|()| true),
                };
                if answer == Ok(true) {
                    self.forget(&group);
                }
                let _ = reply.send(answer);
            }
        }
    }

    fn reply_id(&mut self) -> ReplyId {
        self.next_reply += 1;
        self.next_reply
    }

    /// Runs one event on a group that exists, then routes its outputs, re-arms its timer and
    /// updates the gauges.
    fn with_group<T>(
        &mut self,
        group: &str,
        event: impl FnOnce(&mut Group, i64, &mut Vec<Output>) -> T,
    ) -> T {
        let now = self.now_ms();
        let mut out = std::mem::take(&mut self.out);
        let g = self
            .groups
            .get_mut(group)
            .expect("with_group of a known group");
        let members_before = g.member_count();
        let generation_before = g.generation();
        let answer = event(g, now, &mut out);
        let members_after = g.member_count();
        if g.generation() != generation_before && members_after > 0 {
            Metrics::inc(&self.metrics.group_rebalances_total);
        }
        let deadline = g.next_deadline_ms();
        self.members = self.members + members_after - members_before;
        self.set_timer(group, deadline);
        for output in out.drain(..) {
            match output {
                Output::Join(id, response) => match self.joins.remove(&id) {
                    Some(tx) => {
                        let _ = tx.send(response);
                    }
                    None => tracing::error!(id, "group core answered an unknown JoinGroup"),
                },
                Output::Sync(id, response) => match self.syncs.remove(&id) {
                    Some(tx) => {
                        let _ = tx.send(response);
                    }
                    None => tracing::error!(id, "group core answered an unknown SyncGroup"),
                },
            }
        }
        self.out = out;
        self.update_gauges();
        answer
    }

    fn set_timer(&mut self, group: &str, deadline: Option<i64>) {
        if let Some(old) = self.deadlines.remove(group) {
            self.timers.remove(&(old, group.to_owned()));
        }
        if let Some(at) = deadline {
            self.deadlines.insert(group.to_owned(), at);
            self.timers.insert((at, group.to_owned()));
        }
    }

    fn forget(&mut self, group: &str) {
        if let Some(g) = self.groups.remove(group) {
            self.members -= g.member_count();
        }
        self.set_timer(group, None);
        self.update_gauges();
    }

    /// Makes room for one more group by forgetting idle ones; false if every group is active.
    fn make_room(&mut self) -> bool {
        if self.groups.len() < GROUPS_MAX {
            return true;
        }
        let idle: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, g)| g.is_idle())
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            self.forget(&id);
        }
        self.groups.len() < GROUPS_MAX
    }

    fn update_gauges(&self) {
        let m = &self.metrics;
        m.groups.store(self.groups.len() as u64, Ordering::Relaxed);
        m.group_members
            .store(self.members as u64, Ordering::Relaxed);
    }
}

async fn wake_at(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Kafka refuses an empty group id for membership (JoinGroup, SyncGroup, Heartbeat,
/// LeaveGroup) and OffsetDelete, but accepts it (`empty_ok`) for OffsetCommit, OffsetFetch,
/// DescribeGroups and DeleteGroups, for old clients that keep offsets under "". Every id is
/// bounded in length.
pub fn valid_group_id(group: &str, empty_ok: bool) -> Result<(), GroupError> {
    if (group.is_empty() && !empty_ok) || group.len() > GROUP_ID_BYTES_MAX {
        Err(GroupError::InvalidGroupId)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn join_req(member_id: &str, fresh: &str) -> JoinRequest {
        JoinRequest {
            member_id: member_id.into(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: String::new(),
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: 5_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            require_known_member_id: false,
            fresh_id: fresh.into(),
        }
    }

    /// Real time, kept short: the core's own tests cover the rules without a clock.
    const SESSION_MS: i32 = 1_000;

    fn config() -> GroupConfig {
        GroupConfig {
            session_timeout_ms_min: 100,
            initial_rebalance_delay_ms: 50,
            ..GroupConfig::default()
        }
    }

    /// The driver answers a JoinGroup when the initial delay has passed, then the member's
    /// session runs out without heartbeats and the group is empty again: the timers fire.
    #[tokio::test]
    async fn timers_drive_the_groups() {
        let metrics = Arc::new(Metrics::default());
        let groups = Groups::spawn(config(), metrics.clone());
        let joined = groups.join("g".into(), join_req("", "1")).await;
        assert_eq!(joined.error, None);
        assert_eq!(joined.member_id, "c-1");
        assert_eq!(joined.generation_id, 1);
        assert_eq!(metrics.group_members.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.group_rebalances_total.load(Ordering::Relaxed), 1);

        let sync = groups
            .sync(
                "g".into(),
                SyncRequest {
                    member_id: "c-1".into(),
                    group_instance_id: None,
                    generation_id: 1,
                    protocol_type: None,
                    protocol_name: None,
                    assignments: vec![("c-1".into(), Bytes::from_static(b"a"))],
                },
            )
            .await;
        assert_eq!(sync.assignment, Bytes::from_static(b"a"));
        let member = MemberRef {
            member_id: "c-1".into(),
            group_instance_id: None,
        };
        assert_eq!(
            groups.heartbeat("g".into(), member.clone(), 1).await,
            Ok(())
        );
        // No heartbeat for longer than the session: the member is gone.
        tokio::time::sleep(std::time::Duration::from_millis(SESSION_MS as u64 * 3 / 2)).await;
        assert_eq!(
            groups.heartbeat("g".into(), member, 1).await,
            Err(GroupError::UnknownMemberId)
        );
        assert_eq!(metrics.group_members.load(Ordering::Relaxed), 0);
        let listed = groups.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, GroupState::Empty);
        assert_eq!(groups.delete("g".into()).await, Ok(true));
        assert_eq!(groups.delete("g".into()).await, Ok(false));
        assert_eq!(metrics.groups.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn unknown_groups_and_ids() {
        let groups = Groups::spawn(config(), Arc::new(Metrics::default()));
        let joined = groups.join(String::new(), join_req("", "1")).await;
        assert_eq!(joined.error, Some(GroupError::InvalidGroupId));
        let joined = groups.join("g".into(), join_req("c-9", "1")).await;
        assert_eq!(joined.error, Some(GroupError::UnknownMemberId));
        let member = MemberRef {
            member_id: String::new(),
            group_instance_id: None,
        };
        assert_eq!(
            groups.check_commit("g".into(), member.clone(), -1).await,
            Ok(())
        );
        assert_eq!(
            groups.check_commit("g".into(), member, 3).await,
            Err(GroupError::IllegalGeneration)
        );
        assert_eq!(groups.describe("g".into()).await, Ok(None));
    }
}
