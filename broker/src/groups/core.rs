//! One classic consumer group as a value: the sans-IO core of the group coordinator.
//!
//! A [`Group`] takes events — JoinGroup, SyncGroup, Heartbeat, LeaveGroup, an offset-commit
//! check, a timer tick — each with `now_ms` passed in, and answers them. Requests that the
//! protocol answers only later (JoinGroup waits for the rebalance to finish, SyncGroup for the
//! leader's assignment) are parked under a [`ReplyId`] and come back as [`Output`]s from
//! whichever later event completes them. [`Group::next_deadline_ms`] says when the driver must
//! call [`Group::tick`]. No clock, no channel, no randomness (new member ids come inside the
//! join request), so tables of events test it exactly.
//!
//! The rules are Apache Kafka's classic `GroupCoordinator`:
//!
//! - **States.** `Empty` (no members) → `PreparingRebalance` (collecting JoinGroups) →
//!   `CompletingRebalance` (joined; waiting for the leader's SyncGroup) → `Stable`. A new or
//!   changed member, a leaving or expired one, sends the group back to `PreparingRebalance`.
//!   `Dead` exists only for groups that were deleted.
//! - **Join phase.** It ends when every member has rejoined and no KIP-394 pending member is
//!   outstanding, or at the rebalance timeout (the largest of the members'), which removes the
//!   dynamic members that did not rejoin. An `Empty` group first waits
//!   `initial_rebalance_delay_ms` (extended while new members keep arriving, up to the
//!   rebalance timeout) so that consumers started together share one rebalance.
//! - **Generation.** Each completed join phase increments the generation; every joined member
//!   gets it with the leader's id, and the leader also gets every member's metadata for the
//!   chosen protocol (the one supported by all members that most members prefer).
//! - **Member ids (KIP-394).** A JoinGroup without a member id from a v4+ client is answered
//!   MEMBER_ID_REQUIRED with a new id, which stays *pending* for a session timeout; older
//!   clients are added at once. Static members (`group.instance.id`, KIP-345) skip that step;
//!   a known instance joining again replaces its previous member id, which is then fenced.
//! - **Sync phase.** The leader's SyncGroup carries the assignment; it answers every member
//!   parked in SyncGroup and makes the group `Stable`. Members that send no SyncGroup within the
//!   rebalance timeout are removed and the group rebalances.
//! - **Liveness.** A heartbeat (or a SyncGroup or an offset commit) keeps a member alive for
//!   its session timeout. A member parked in JoinGroup or SyncGroup is kept alive by the
//!   rebalance itself (a brand-new member only for `new_member_join_timeout_ms`). During a
//!   rebalance, heartbeats are answered REBALANCE_IN_PROGRESS, which is how members learn to
//!   rejoin.
//! - **Offset commits.** A commit must come from a current member with the current
//!   generation; a commit with generation -1 and no member id (kcat, admin tools, `assign()`
//!   consumers) is accepted only while the group is `Empty`.
//!
//! Every parked request is answered exactly once: when it completes, when a newer request
//! from the same member supersedes it, or when its member leaves or is removed.

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};

/// Names a parked request so the driver can route its answer.
pub type ReplyId = u64;

/// Why a group request was refused. The driver maps each to a Kafka code (`kafka::errors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("the member id is not in the group")]
    UnknownMemberId,
    #[error("the generation is not the group's current one")]
    IllegalGeneration,
    #[error("the group is rebalancing; join again")]
    RebalanceInProgress,
    #[error("join again with the member id in this answer")]
    MemberIdRequired,
    #[error("the member's protocols do not match the group's")]
    InconsistentGroupProtocol,
    #[error("another member holds this group.instance.id")]
    FencedInstanceId,
    #[error("the coordinator is not available")]
    CoordinatorNotAvailable,
    #[error("this broker is not the group's coordinator")]
    NotCoordinator,
    #[error("the session timeout is outside the allowed range")]
    InvalidSessionTimeout,
    #[error("the group id is invalid")]
    InvalidGroupId,
    #[error("the group has reached its maximum size")]
    GroupMaxSizeReached,
    #[error("the group still has members")]
    NonEmptyGroup,
    #[error("the group does not exist")]
    GroupIdNotFound,
    #[error("the group is subscribed to the topic")]
    GroupSubscribedToTopic,
}

/// The limits and delays of every group (Kafka's `group.*` broker settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms`
    pub session_timeout_ms_min: i32,
    /// `group.max.session.timeout.ms`
    pub session_timeout_ms_max: i32,
    /// `group.initial.rebalance.delay.ms`
    pub initial_rebalance_delay_ms: i64,
    /// How long a brand-new member may wait in its first JoinGroup.
    pub new_member_join_timeout_ms: i64,
    /// `group.max.size`, pending members included.
    pub members_max: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            session_timeout_ms_min: 6_000,
            session_timeout_ms_max: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            new_member_join_timeout_ms: 300_000,
            members_max: 1_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka uses (DescribeGroups, ListGroups).
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// A JoinGroup, in the coordinator's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    /// Empty for a member joining for the first time.
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// `(name, metadata)` in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// KIP-394 (JoinGroup v4+): a first join is answered MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
    /// A unique suffix for the member id, should this join need one (the driver draws it).
    pub fresh_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinResponse {
    pub error: Option<GroupError>,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member's metadata, for the leader only.
    pub members: Vec<JoinedMember>,
}

impl JoinResponse {
    pub fn error(error: GroupError, member_id: String) -> Self {
        Self {
            error: Some(error),
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id,
            members: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRequest {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// `(member id, assignment)`; only the leader's are used.
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncResponse {
    pub error: Option<GroupError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResponse {
    pub fn error(error: GroupError) -> Self {
        Self {
            error: Some(error),
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRef {
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

/// A parked request answered by a later event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Join(ReplyId, JoinResponse),
    Sync(ReplyId, SyncResponse),
}

/// What DescribeGroups (and OffsetDelete's subscription check) need to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    /// The chosen protocol; empty before the first completed join phase.
    pub protocol_name: String,
    pub generation_id: i32,
    pub members: Vec<MemberDescription>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// The member's metadata for the chosen protocol (its first one before any is chosen).
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Clone, Debug)]
struct Member {
    id: String,
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    awaiting_join: Option<ReplyId>,
    awaiting_sync: Option<ReplyId>,
    /// Added in the current join phase and not yet through one.
    is_new: bool,
    /// When the member is removed unless it heartbeats (or is kept alive by a rebalance).
    heartbeat_deadline_ms: i64,
}

impl Member {
    fn matches(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    fn metadata(&self, protocol: Option<&str>) -> Bytes {
        let found = match protocol {
            Some(name) => self.protocols.iter().find(|(n, _)| n == name),
            None => self.protocols.first(),
        };
        found.map(|(_, m)| m.clone()).unwrap_or_default()
    }

    /// The deadline that can still remove this member, if any: a member parked in a
    /// rebalance is kept alive by it (Kafka's `shouldKeepAlive`).
    fn expiry_ms(&self) -> Option<i64> {
        if self.awaiting_join.is_some() {
            self.is_new.then_some(self.heartbeat_deadline_ms)
        } else if self.awaiting_sync.is_some() {
            None
        } else {
            Some(self.heartbeat_deadline_ms)
        }
    }
}

/// The first join phase of an `Empty` group (Kafka's `InitialDelayedJoin`).
#[derive(Clone, Copy, Debug)]
struct InitialJoin {
    /// Rebalance time left for further extensions.
    remaining_ms: i64,
    new_member_added: bool,
}

/// One consumer group. See the module docs for the rules.
#[derive(Clone, Debug)]
pub struct Group {
    config: GroupConfig,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// KIP-394 member ids handed out and not yet used to join, with their expiry.
    pending_members: BTreeMap<String, i64>,
    /// `group.instance.id` → member id.
    static_members: BTreeMap<String, String>,
    /// Members of the current generation that have not sent their SyncGroup yet.
    pending_sync: BTreeSet<String>,
    /// `PreparingRebalance`: when the join phase ends even if members are missing.
    join_deadline_ms: Option<i64>,
    initial_join: Option<InitialJoin>,
    /// When members still in `pending_sync` are removed.
    sync_deadline_ms: Option<i64>,
}

impl Group {
    pub fn new(config: GroupConfig) -> Self {
        Self {
            config,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            pending_members: BTreeMap::new(),
            static_members: BTreeMap::new(),
            pending_sync: BTreeSet::new(),
            join_deadline_ms: None,
            initial_join: None,
            sync_deadline_ms: None,
        }
    }

    pub fn state(&self) -> GroupState {
        self.state
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    pub fn protocol_type(&self) -> &str {
        self.protocol_type.as_deref().unwrap_or("")
    }

    /// Whether the group holds nothing worth keeping in memory (no member, nothing pending).
    pub fn is_idle(&self) -> bool {
        self.state == GroupState::Empty && self.pending_members.is_empty()
    }

    pub fn describe(&self) -> GroupDescription {
        let protocol = self.protocol_name.as_deref();
        GroupDescription {
            state: self.state,
            protocol_type: self.protocol_type().to_owned(),
            protocol_name: protocol.unwrap_or("").to_owned(),
            generation_id: self.generation,
            members: self
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata(protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// The earliest time at which [`Group::tick`] has something to do.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        let members = self.members.values().filter_map(Member::expiry_ms);
        let pending = self.pending_members.values().copied();
        let join = self
            .join_deadline_ms
            .filter(|_| self.state == GroupState::PreparingRebalance);
        let sync = self
            .sync_deadline_ms
            .filter(|_| !self.pending_sync.is_empty());
        members.chain(pending).chain(join).chain(sync).min()
    }

    // -----------------------------------------------------------------------------------------
    // JoinGroup

    pub fn join(&mut self, now_ms: i64, req: JoinRequest, reply: ReplyId, out: &mut Vec<Output>) {
        let range = self.config.session_timeout_ms_min..=self.config.session_timeout_ms_max;
        if !range.contains(&req.session_timeout_ms) {
            let member_id = req.member_id.clone();
            out.push(join_error(
                reply,
                GroupError::InvalidSessionTimeout,
                member_id,
            ));
            return;
        }
        let known = self.members.contains_key(&req.member_id)
            || self.pending_members.contains_key(&req.member_id);
        let rejoining_instance = req
            .group_instance_id
            .as_ref()
            .is_some_and(|i| self.static_members.contains_key(i));
        if !known
            && !rejoining_instance
            && self.members.len() + self.pending_members.len() >= self.config.members_max
        {
            let member_id = req.member_id.clone();
            out.push(join_error(
                reply,
                GroupError::GroupMaxSizeReached,
                member_id,
            ));
            return;
        }
        if req.member_id.is_empty() {
            self.join_new(now_ms, req, reply, out);
        } else {
            self.join_known(now_ms, req, reply, out);
        }
        if self.state == GroupState::PreparingRebalance {
            self.try_complete_join(now_ms, out);
        }
        self.check();
    }

    fn join_new(&mut self, now_ms: i64, req: JoinRequest, reply: ReplyId, out: &mut Vec<Output>) {
        if !self.supports_protocols(&req.protocol_type, &req.protocols) {
            out.push(join_error(
                reply,
                GroupError::InconsistentGroupProtocol,
                String::new(),
            ));
            return;
        }
        let member_id = format!("{}-{}", req.client_id, req.fresh_id);
        let instance = req.group_instance_id.clone();
        match instance.and_then(|i| self.static_members.get(&i).cloned()) {
            Some(old_id) => self.replace_static_member(now_ms, &old_id, member_id, req, reply, out),
            None if req.group_instance_id.is_none() && req.require_known_member_id => {
                let deadline = now_ms + i64::from(req.session_timeout_ms);
                self.pending_members.insert(member_id.clone(), deadline);
                out.push(join_error(reply, GroupError::MemberIdRequired, member_id));
            }
            None => self.add_member(now_ms, member_id, req, reply, out),
        }
    }

    fn join_known(&mut self, now_ms: i64, req: JoinRequest, reply: ReplyId, out: &mut Vec<Output>) {
        let member_id = req.member_id.clone();
        if !self.supports_protocols(&req.protocol_type, &req.protocols) {
            out.push(join_error(
                reply,
                GroupError::InconsistentGroupProtocol,
                member_id,
            ));
            return;
        }
        if self.pending_members.contains_key(&member_id) {
            self.add_member(now_ms, member_id, req, reply, out);
            return;
        }
        if self.is_fenced(req.group_instance_id.as_deref(), &member_id) {
            out.push(join_error(reply, GroupError::FencedInstanceId, member_id));
            return;
        }
        let instance_unknown = req
            .group_instance_id
            .as_ref()
            .is_some_and(|i| !self.static_members.contains_key(i));
        let Some(member) = self.members.get(&member_id) else {
            out.push(join_error(reply, GroupError::UnknownMemberId, member_id));
            return;
        };
        if instance_unknown {
            out.push(join_error(reply, GroupError::UnknownMemberId, member_id));
            return;
        }
        let matches = member.matches(&req.protocols);
        match self.state {
            GroupState::PreparingRebalance => self.update_member(now_ms, req, reply, out),
            GroupState::CompletingRebalance if matches => {
                // A retry of a join that already completed: answer it again.
                let response = self.join_response(&member_id);
                out.push(Output::Join(reply, response));
            }
            GroupState::Stable if matches && self.leader.as_deref() != Some(&member_id) => {
                let response = self.join_response(&member_id);
                out.push(Output::Join(reply, response));
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.update_member(now_ms, req, reply, out)
            }
            GroupState::Empty | GroupState::Dead => {
                out.push(join_error(reply, GroupError::UnknownMemberId, member_id));
            }
        }
    }

    fn add_member(
        &mut self,
        now_ms: i64,
        member_id: String,
        req: JoinRequest,
        reply: ReplyId,
        out: &mut Vec<Output>,
    ) {
        assert!(
            !self.members.contains_key(&member_id),
            "adding member {member_id} twice"
        );
        self.pending_members.remove(&member_id);
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        if let Some(instance) = &req.group_instance_id {
            self.static_members
                .insert(instance.clone(), member_id.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(member_id.clone());
        }
        if let Some(initial) = &mut self.initial_join {
            initial.new_member_added = true;
        }
        let member = Member {
            id: member_id.clone(),
            group_instance_id: req.group_instance_id,
            client_id: req.client_id,
            client_host: req.client_host,
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            protocol_type: req.protocol_type,
            protocols: req.protocols,
            assignment: Bytes::new(),
            awaiting_join: Some(reply),
            awaiting_sync: None,
            is_new: true,
            heartbeat_deadline_ms: now_ms + self.config.new_member_join_timeout_ms,
        };
        self.members.insert(member_id, member);
        self.maybe_prepare_rebalance(now_ms, out);
    }

    /// A known `group.instance.id` joins with a new member id (the client restarted): the new
    /// id takes the old member's place and the old one is fenced. The group rebalances unless
    /// it is `Stable`, the member is not the leader and its protocols are unchanged — then the
    /// member simply gets the current generation and its old assignment (KIP-345).
    fn replace_static_member(
        &mut self,
        now_ms: i64,
        old_id: &str,
        new_id: String,
        req: JoinRequest,
        reply: ReplyId,
        out: &mut Vec<Output>,
    ) {
        let mut member = self
            .members
            .remove(old_id)
            .expect("invariant: every static member id is a member");
        if let Some(r) = member.awaiting_join.take() {
            out.push(join_error(
                r,
                GroupError::FencedInstanceId,
                old_id.to_owned(),
            ));
        }
        if let Some(r) = member.awaiting_sync.take() {
            out.push(Output::Sync(
                r,
                SyncResponse::error(GroupError::FencedInstanceId),
            ));
        }
        let was_leader = self.leader.as_deref() == Some(old_id);
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        if self.pending_sync.remove(old_id) {
            self.pending_sync.insert(new_id.clone());
        }
        let matches = member.matches(&req.protocols);
        member.id = new_id.clone();
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        let instance = req
            .group_instance_id
            .clone()
            .expect("a static join has an instance id");
        self.static_members.insert(instance, new_id.clone());
        self.members.insert(new_id.clone(), member);
        if self.state == GroupState::Stable && matches && !was_leader {
            let m = self.members.get_mut(&new_id).expect("just inserted");
            m.heartbeat_deadline_ms = now_ms + i64::from(req.session_timeout_ms);
            m.session_timeout_ms = req.session_timeout_ms;
            m.rebalance_timeout_ms = req.rebalance_timeout_ms;
            let response = self.join_response(&new_id);
            out.push(Output::Join(reply, response));
        } else {
            let req = JoinRequest {
                member_id: new_id,
                ..req
            };
            self.update_member(now_ms, req, reply, out);
        }
    }

    /// A current member joins again: new protocols and timeouts, parked until the join phase
    /// completes.
    fn update_member(
        &mut self,
        now_ms: i64,
        req: JoinRequest,
        reply: ReplyId,
        out: &mut Vec<Output>,
    ) {
        let member = self
            .members
            .get_mut(&req.member_id)
            .expect("update_member of a member");
        member.protocols = req.protocols;
        member.protocol_type = req.protocol_type;
        member.session_timeout_ms = req.session_timeout_ms;
        member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        member.client_id = req.client_id;
        member.client_host = req.client_host;
        if let Some(old) = member.awaiting_join.replace(reply) {
            // Superseded by this newer JoinGroup from the same member.
            out.push(join_error(
                old,
                GroupError::RebalanceInProgress,
                req.member_id,
            ));
        }
        self.maybe_prepare_rebalance(now_ms, out);
    }

    /// Whether a member with these protocols may join: the first member sets the type, later
    /// ones must share it and at least one protocol that every member supports.
    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols
                .iter()
                .any(|(name, _)| self.supported_by_all(name))
    }

    fn supported_by_all(&self, protocol: &str) -> bool {
        self.members
            .values()
            .all(|m| m.protocols.iter().any(|(n, _)| n == protocol))
    }

    /// The protocol supported by every member that most members list first among those
    /// (ties go to the leader's preference).
    fn select_protocol(&self) -> Option<String> {
        let leader = self.leader.as_ref().and_then(|l| self.members.get(l))?;
        let candidates: Vec<&str> = leader
            .protocols
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| self.supported_by_all(n))
            .collect();
        let mut votes = vec![0usize; candidates.len()];
        for member in self.members.values() {
            let vote = member
                .protocols
                .iter()
                .find_map(|(n, _)| candidates.iter().position(|c| c == n));
            if let Some(i) = vote {
                votes[i] += 1;
            }
        }
        let best = votes.iter().copied().max()?;
        let winner = votes.iter().position(|&v| v == best)?;
        Some(candidates[winner].to_owned())
    }

    fn join_response(&self, member_id: &str) -> JoinResponse {
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol_name.as_deref();
        let members = if leader == member_id {
            self.members
                .values()
                .map(|m| JoinedMember {
                    member_id: m.id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    metadata: m.metadata(protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResponse {
            error: None,
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader,
            member_id: member_id.to_owned(),
            members,
        }
    }

    // -----------------------------------------------------------------------------------------
    // The join phase

    fn maybe_prepare_rebalance(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        if matches!(
            self.state,
            GroupState::Empty | GroupState::Stable | GroupState::CompletingRebalance
        ) {
            self.prepare_rebalance(now_ms, out);
        }
    }

    /// The longest rebalance timeout of the members; at least 1 ms, so a deadline set from
    /// it always lies in the future.
    fn rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
            .max(1)
    }

    fn prepare_rebalance(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        if self.state == GroupState::CompletingRebalance {
            // The assignment being waited for belongs to a generation that is now over. A
            // member answered here was kept alive by its parked request: its session starts
            // again now (as in Kafka).
            for member in self.members.values_mut() {
                member.assignment = Bytes::new();
                if let Some(r) = member.awaiting_sync.take() {
                    out.push(Output::Sync(
                        r,
                        SyncResponse::error(GroupError::RebalanceInProgress),
                    ));
                    member.heartbeat_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
                }
            }
        }
        self.pending_sync.clear();
        self.sync_deadline_ms = None;
        let was_empty = self.state == GroupState::Empty;
        self.state = GroupState::PreparingRebalance;
        let timeout = self.rebalance_timeout_ms();
        let delay = self.config.initial_rebalance_delay_ms;
        if was_empty && delay > 0 {
            let first = delay.min(timeout);
            self.initial_join = Some(InitialJoin {
                remaining_ms: (timeout - delay).max(0),
                new_member_added: false,
            });
            self.join_deadline_ms = Some(now_ms + first);
        } else {
            self.initial_join = None;
            self.join_deadline_ms = Some(now_ms + timeout);
            self.try_complete_join(now_ms, out);
        }
    }

    /// Ends the join phase early once everyone is in — during the initial delay only when no
    /// member is left (then there is nobody to wait for).
    fn try_complete_join(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        if self.initial_join.is_some() && !self.members.is_empty() {
            return;
        }
        let all_joined = self.members.values().all(|m| m.awaiting_join.is_some())
            && self.pending_members.is_empty();
        if all_joined {
            self.complete_join(now_ms, out);
        }
    }

    fn on_join_deadline(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        if let Some(initial) = self.initial_join {
            if initial.new_member_added && initial.remaining_ms > 0 {
                let delay = self
                    .config
                    .initial_rebalance_delay_ms
                    .min(initial.remaining_ms);
                self.initial_join = Some(InitialJoin {
                    remaining_ms: (initial.remaining_ms - delay).max(0),
                    new_member_added: false,
                });
                self.join_deadline_ms = Some(now_ms + delay);
                return;
            }
        }
        self.complete_join(now_ms, out);
    }

    /// The join phase is over: drop the dynamic members that did not rejoin, start the next
    /// generation and answer every parked JoinGroup.
    fn complete_join(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        debug_assert_eq!(self.state, GroupState::PreparingRebalance);
        self.initial_join = None;
        self.join_deadline_ms = None;
        let missing: Vec<String> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none() && m.group_instance_id.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in missing {
            self.remove_member(&id, out);
        }
        if !self.members.is_empty() {
            let leader_joined = self
                .leader
                .as_ref()
                .and_then(|l| self.members.get(l))
                .is_some_and(|m| m.awaiting_join.is_some());
            if !leader_joined {
                let joined = self
                    .members
                    .values()
                    .find(|m| m.awaiting_join.is_some())
                    .map(|m| m.id.clone());
                match joined {
                    Some(id) => self.leader = Some(id),
                    None => {
                        // Only static members that have not come back: wait another round
                        // (their session timeouts will remove them if they never do).
                        self.join_deadline_ms = Some(now_ms + self.rebalance_timeout_ms());
                        return;
                    }
                }
            }
        }
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader = None;
            return;
        }
        self.protocol_name = self.select_protocol();
        self.state = GroupState::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let response = self.join_response(&id);
            let member = self.members.get_mut(&id).expect("listed above");
            if let Some(r) = member.awaiting_join.take() {
                out.push(Output::Join(r, response));
            }
            member.heartbeat_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
            member.is_new = false;
            self.pending_sync.insert(id);
        }
        self.sync_deadline_ms = Some(now_ms + self.rebalance_timeout_ms());
    }

    // -----------------------------------------------------------------------------------------
    // SyncGroup

    pub fn sync(&mut self, now_ms: i64, req: SyncRequest, reply: ReplyId, out: &mut Vec<Output>) {
        let error = if self.is_fenced(req.group_instance_id.as_deref(), &req.member_id) {
            Some(GroupError::FencedInstanceId)
        } else if !self.members.contains_key(&req.member_id) {
            Some(GroupError::UnknownMemberId)
        } else if req.generation_id != self.generation {
            Some(GroupError::IllegalGeneration)
        } else if req
            .protocol_type
            .as_ref()
            .is_some_and(|t| Some(t) != self.protocol_type.as_ref())
            || req
                .protocol_name
                .as_ref()
                .is_some_and(|n| Some(n) != self.protocol_name.as_ref())
        {
            Some(GroupError::InconsistentGroupProtocol)
        } else {
            match self.state {
                GroupState::Empty | GroupState::Dead => Some(GroupError::UnknownMemberId),
                GroupState::PreparingRebalance => Some(GroupError::RebalanceInProgress),
                GroupState::CompletingRebalance | GroupState::Stable => None,
            }
        };
        if let Some(error) = error {
            out.push(Output::Sync(reply, SyncResponse::error(error)));
            return;
        }
        self.pending_sync.remove(&req.member_id);
        if self.pending_sync.is_empty() {
            self.sync_deadline_ms = None;
        }
        let session = {
            let member = self.members.get_mut(&req.member_id).expect("checked above");
            member.heartbeat_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
            member.session_timeout_ms
        };
        debug_assert!(session > 0);
        if self.state == GroupState::Stable {
            let member = &self.members[&req.member_id];
            let response = self.sync_response(member.assignment.clone());
            out.push(Output::Sync(reply, response));
            return;
        }
        // CompletingRebalance: park until the leader's assignment arrives.
        let member = self.members.get_mut(&req.member_id).expect("checked above");
        if let Some(old) = member.awaiting_sync.replace(reply) {
            out.push(Output::Sync(
                old,
                SyncResponse::error(GroupError::RebalanceInProgress),
            ));
        }
        if self.leader.as_deref() == Some(req.member_id.as_str()) {
            let mut assignments: BTreeMap<String, Bytes> = req.assignments.into_iter().collect();
            let ids: Vec<String> = self.members.keys().cloned().collect();
            for id in ids {
                let assignment = assignments.remove(&id).unwrap_or_default();
                let response = self.sync_response(assignment.clone());
                let member = self.members.get_mut(&id).expect("listed above");
                member.assignment = assignment;
                if let Some(r) = member.awaiting_sync.take() {
                    out.push(Output::Sync(r, response));
                    member.heartbeat_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
                }
            }
            self.state = GroupState::Stable;
        }
        self.check();
    }

    fn sync_response(&self, assignment: Bytes) -> SyncResponse {
        SyncResponse {
            error: None,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Heartbeat, LeaveGroup, offset commits, timers

    /// Answers a heartbeat at once; during a rebalance the answer tells the member to rejoin.
    pub fn heartbeat(
        &mut self,
        now_ms: i64,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
    ) -> Result<(), GroupError> {
        self.check_current_member(member_id, group_instance_id, generation_id)?;
        match self.state {
            GroupState::Empty | GroupState::Dead => Err(GroupError::UnknownMemberId),
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.keep_alive(now_ms, member_id);
                Ok(())
            }
            GroupState::PreparingRebalance => {
                self.keep_alive(now_ms, member_id);
                Err(GroupError::RebalanceInProgress)
            }
        }
    }

    fn check_current_member(
        &self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
    ) -> Result<(), GroupError> {
        if self.is_fenced(group_instance_id, member_id) {
            Err(GroupError::FencedInstanceId)
        } else if !self.members.contains_key(member_id) {
            Err(GroupError::UnknownMemberId)
        } else if generation_id != self.generation {
            Err(GroupError::IllegalGeneration)
        } else {
            Ok(())
        }
    }

    fn keep_alive(&mut self, now_ms: i64, member_id: &str) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
        }
    }

    /// May these offsets be committed? A commit from a member also counts as a heartbeat.
    pub fn check_commit(
        &mut self,
        now_ms: i64,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
    ) -> Result<(), GroupError> {
        let simple = generation_id < 0 && member_id.is_empty() && group_instance_id.is_none();
        if simple {
            return match self.state {
                GroupState::Empty => Ok(()),
                GroupState::Dead => Err(GroupError::CoordinatorNotAvailable),
                _ => Err(GroupError::UnknownMemberId),
            };
        }
        self.check_current_member(member_id, group_instance_id, generation_id)?;
        match self.state {
            GroupState::CompletingRebalance => Err(GroupError::RebalanceInProgress),
            GroupState::Dead => Err(GroupError::CoordinatorNotAvailable),
            _ => {
                self.keep_alive(now_ms, member_id);
                Ok(())
            }
        }
    }

    /// Removes the named members; one answer per member, in order.
    pub fn leave(
        &mut self,
        now_ms: i64,
        leaving: &[MemberRef],
        out: &mut Vec<Output>,
    ) -> Vec<Result<(), GroupError>> {
        let mut answers = Vec::with_capacity(leaving.len());
        for who in leaving {
            let instance = who.group_instance_id.as_deref();
            let member_id = match (who.member_id.as_str(), instance) {
                // An admin removing a static member by its instance id alone.
                ("", Some(i)) => match self.static_members.get(i) {
                    Some(id) => id.clone(),
                    None => {
                        answers.push(Err(GroupError::UnknownMemberId));
                        continue;
                    }
                },
                (id, _) => id.to_owned(),
            };
            if self.is_fenced(instance, &member_id) {
                answers.push(Err(GroupError::FencedInstanceId));
            } else if self.pending_members.remove(&member_id).is_some() {
                answers.push(Ok(()));
                self.try_complete_join(now_ms, out);
            } else if !self.members.contains_key(&member_id) {
                answers.push(Err(GroupError::UnknownMemberId));
            } else {
                self.remove_member_and_rebalance(now_ms, &member_id, out);
                answers.push(Ok(()));
            }
        }
        self.check();
        answers
    }

    /// Runs every deadline that has passed.
    pub fn tick(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        let before = self.pending_members.len();
        self.pending_members
            .retain(|_, deadline| *deadline > now_ms);
        if self.pending_members.len() != before {
            self.try_complete_join(now_ms, out);
        }
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.expiry_ms().is_some_and(|d| d <= now_ms))
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            if self.members.contains_key(&id) {
                tracing::debug!(member = %id, "group member session expired");
                self.remove_member_and_rebalance(now_ms, &id, out);
            }
        }
        if self.state == GroupState::PreparingRebalance
            && self.join_deadline_ms.is_some_and(|d| d <= now_ms)
        {
            self.on_join_deadline(now_ms, out);
        }
        if self.sync_deadline_ms.is_some_and(|d| d <= now_ms) {
            self.sync_deadline_ms = None;
            let late: Vec<String> = std::mem::take(&mut self.pending_sync).into_iter().collect();
            if !late.is_empty()
                && matches!(
                    self.state,
                    GroupState::CompletingRebalance | GroupState::Stable
                )
            {
                for id in &late {
                    tracing::debug!(member = %id, "group member sent no SyncGroup in time");
                    self.remove_member(id, out);
                }
                self.prepare_rebalance(now_ms, out);
            }
        }
        self.check();
        debug_assert!(
            self.next_deadline_ms().is_none_or(|d| d > now_ms),
            "a deadline is still due after tick"
        );
    }

    /// The group is being deleted (DeleteGroups): only an `Empty` group may be.
    pub fn delete(&mut self) -> Result<(), GroupError> {
        match self.state {
            GroupState::Empty => {
                self.state = GroupState::Dead;
                self.pending_members.clear();
                Ok(())
            }
            GroupState::Dead => Err(GroupError::GroupIdNotFound),
            _ => Err(GroupError::NonEmptyGroup),
        }
    }

    fn remove_member_and_rebalance(&mut self, now_ms: i64, member_id: &str, out: &mut Vec<Output>) {
        self.remove_member(member_id, out);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now_ms, out)
            }
            GroupState::PreparingRebalance => self.try_complete_join(now_ms, out),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// Drops a member; its parked requests are answered UNKNOWN_MEMBER_ID (a client still
    /// running joins again from scratch).
    fn remove_member(&mut self, member_id: &str, out: &mut Vec<Output>) {
        let Some(member) = self.members.remove(member_id) else {
            return;
        };
        if let Some(r) = member.awaiting_join {
            out.push(join_error(
                r,
                GroupError::UnknownMemberId,
                member_id.to_owned(),
            ));
        }
        if let Some(r) = member.awaiting_sync {
            out.push(Output::Sync(
                r,
                SyncResponse::error(GroupError::UnknownMemberId),
            ));
        }
        if let Some(instance) = &member.group_instance_id {
            if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                self.static_members.remove(instance);
            }
        }
        self.pending_sync.remove(member_id);
        if self.leader.as_deref() == Some(member_id) {
            self.leader = self.members.keys().next().cloned();
        }
    }

    fn is_fenced(&self, group_instance_id: Option<&str>, member_id: &str) -> bool {
        group_instance_id
            .and_then(|i| self.static_members.get(i))
            .is_some_and(|id| id != member_id)
    }

    /// The invariants between the fields (debug builds check them after every event).
    fn check(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let awaiting_join = self.members.values().any(|m| m.awaiting_join.is_some());
        let awaiting_sync = self.members.values().any(|m| m.awaiting_sync.is_some());
        match self.state {
            GroupState::Empty | GroupState::Dead => {
                assert!(
                    self.members.is_empty(),
                    "{:?} group with members",
                    self.state
                );
                assert!(self.pending_sync.is_empty());
            }
            GroupState::PreparingRebalance => {
                assert!(
                    self.join_deadline_ms.is_some(),
                    "a join phase without a deadline"
                );
                assert!(!awaiting_sync, "SyncGroup parked during a join phase");
            }
            GroupState::CompletingRebalance => {
                assert!(!awaiting_join, "JoinGroup parked after the join phase");
                assert!(!self.members.is_empty());
            }
            GroupState::Stable => {
                assert!(
                    !awaiting_join && !awaiting_sync,
                    "parked requests in a stable group"
                );
                assert!(!self.members.is_empty());
            }
        }
        if !self.members.is_empty() {
            let leader = self
                .leader
                .as_ref()
                .expect("a group with members has a leader");
            assert!(
                self.members.contains_key(leader),
                "the leader is not a member"
            );
        }
        for (instance, id) in &self.static_members {
            let member = self.members.get(id).expect("static member id is a member");
            assert_eq!(member.group_instance_id.as_deref(), Some(instance.as_str()));
        }
        for id in &self.pending_sync {
            assert!(
                self.members.contains_key(id),
                "pending sync of a non-member"
            );
        }
        for id in self.pending_members.keys() {
            assert!(!self.members.contains_key(id), "a member is still pending");
        }
    }
}

fn join_error(reply: ReplyId, error: GroupError, member_id: String) -> Output {
    Output::Join(reply, JoinResponse::error(error, member_id))
}

#[cfg(test)]
mod tests;
