//! Table-driven tests of the group core: each case is a list of events (with the time they
//! happen at) and expectations; every answer the core produces must be expected by the case.

use super::*;

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 20_000;
const DELAY_MS: i64 = 3_000;

fn config() -> GroupConfig {
    GroupConfig {
        session_timeout_ms_min: 6_000,
        session_timeout_ms_max: 60_000,
        initial_rebalance_delay_ms: DELAY_MS,
        new_member_join_timeout_ms: 300_000,
        members_max: 4,
    }
}

/// A JoinGroup. New members get the id `c-<fresh>`.
#[derive(Clone, Debug)]
struct J {
    member: &'static str,
    fresh: &'static str,
    instance: Option<&'static str>,
    protocol_type: &'static str,
    protocols: &'static [&'static str],
    kip394: bool,
    session_ms: i32,
}

/// A new member without KIP-394 (an old client), named `c-<fresh>`.
fn new(fresh: &'static str) -> J {
    J {
        member: "",
        fresh,
        instance: None,
        protocol_type: "consumer",
        protocols: &["range"],
        kip394: false,
        session_ms: SESSION_MS,
    }
}

fn rejoin(member: &'static str) -> J {
    J {
        member,
        ..new("unused")
    }
}

impl J {
    fn request(&self) -> JoinRequest {
        JoinRequest {
            member_id: self.member.to_owned(),
            group_instance_id: self.instance.map(str::to_owned),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: self.session_ms,
            rebalance_timeout_ms: REBALANCE_MS,
            protocol_type: self.protocol_type.into(),
            protocols: self
                .protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("{p}-meta"))))
                .collect(),
            require_known_member_id: self.kip394,
            fresh_id: self.fresh.to_owned(),
        }
    }
}

#[derive(Debug)]
enum Step {
    /// Advance the clock to this time (ms) and run the deadlines.
    At(i64),
    Join(ReplyId, J),
    /// `(reply, member, generation, [(member, assignment)])`
    Sync(
        ReplyId,
        &'static str,
        i32,
        &'static [(&'static str, &'static str)],
    ),
    /// `(member, instance, generation, answer)`
    Heartbeat(
        &'static str,
        Option<&'static str>,
        i32,
        Result<(), GroupError>,
    ),
    Leave(&'static [&'static str], &'static [Result<(), GroupError>]),
    /// `(member, generation, answer)`
    Commit(&'static str, i32, Result<(), GroupError>),
    /// A JoinGroup answered: `(reply, generation, protocol, leader, member, [members for the
    /// leader])`.
    Joined(
        ReplyId,
        i32,
        &'static str,
        &'static str,
        &'static str,
        &'static [&'static str],
    ),
    /// A JoinGroup refused: `(reply, error, member id in the answer)`.
    JoinFailed(ReplyId, GroupError, &'static str),
    Synced(ReplyId, &'static str),
    SyncFailed(ReplyId, GroupError),
    /// Not answered yet.
    Parked(ReplyId),
    /// `(state, generation, members)`
    Is(GroupState, i32, &'static [&'static str]),
}
use Step::*;

fn check(case: &str, steps: &[Step]) {
    let mut group = Group::new(config());
    let mut now = 0i64;
    let mut answers: BTreeMap<ReplyId, Output> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let at = format!("case `{case}` step {i} ({step:?})");
        match step {
            At(t) => {
                assert!(*t >= now, "{at}: time goes forward");
                now = *t;
                group.tick(now, &mut out);
            }
            Join(r, j) => group.join(now, j.request(), *r, &mut out),
            Sync(r, member, generation, assignments) => {
                let req = SyncRequest {
                    member_id: member.to_string(),
                    group_instance_id: None,
                    generation_id: *generation,
                    protocol_type: Some("consumer".into()),
                    protocol_name: None,
                    assignments: assignments
                        .iter()
                        .map(|(m, a)| (m.to_string(), Bytes::from_static(a.as_bytes())))
                        .collect(),
                };
                group.sync(now, req, *r, &mut out);
            }
            Heartbeat(member, instance, generation, want) => {
                let got = group.heartbeat(now, member, *instance, *generation);
                assert_eq!(&got, want, "{at}");
            }
            Leave(members, want) => {
                let refs: Vec<MemberRef> = members
                    .iter()
                    .map(|m| MemberRef {
                        member_id: m.to_string(),
                        group_instance_id: None,
                    })
                    .collect();
                let got = group.leave(now, &refs, &mut out);
                assert_eq!(&got, want, "{at}");
            }
            Commit(member, generation, want) => {
                let got = group.check_commit(now, member, None, *generation);
                assert_eq!(&got, want, "{at}");
            }
            Joined(r, generation, protocol, leader, member, members) => {
                let Some(Output::Join(_, got)) = answers.remove(r) else {
                    panic!("{at}: no JoinGroup answer; answers: {answers:?}");
                };
                let ids: Vec<&str> = got.members.iter().map(|m| m.member_id.as_str()).collect();
                assert_eq!(got.error, None, "{at}");
                assert_eq!(
                    (
                        got.generation_id,
                        got.protocol_name.as_deref(),
                        got.leader.as_str(),
                        got.member_id.as_str(),
                        ids.as_slice()
                    ),
                    (*generation, Some(*protocol), *leader, *member, *members),
                    "{at}"
                );
                for m in &got.members {
                    let want = format!("{protocol}-meta");
                    assert_eq!(m.metadata, Bytes::from(want), "{at}: metadata");
                }
            }
            JoinFailed(r, error, member) => {
                let Some(Output::Join(_, got)) = answers.remove(r) else {
                    panic!("{at}: no JoinGroup answer; answers: {answers:?}");
                };
                assert_eq!(
                    (got.error, got.member_id.as_str()),
                    (Some(*error), *member),
                    "{at}"
                );
            }
            Synced(r, assignment) => {
                let Some(Output::Sync(_, got)) = answers.remove(r) else {
                    panic!("{at}: no SyncGroup answer; answers: {answers:?}");
                };
                assert_eq!(got.error, None, "{at}");
                assert_eq!(
                    got.assignment,
                    Bytes::from_static(assignment.as_bytes()),
                    "{at}"
                );
            }
            SyncFailed(r, error) => {
                let Some(Output::Sync(_, got)) = answers.remove(r) else {
                    panic!("{at}: no SyncGroup answer; answers: {answers:?}");
                };
                assert_eq!(got.error, Some(*error), "{at}");
            }
            Parked(r) => assert!(!answers.contains_key(r), "{at}: answered"),
            Is(state, generation, members) => {
                let d = group.describe();
                let ids: Vec<&str> = d.members.iter().map(|m| m.member_id.as_str()).collect();
                assert_eq!(
                    (d.state, d.generation_id, ids.as_slice()),
                    (*state, *generation, *members),
                    "{at}"
                );
            }
        }
        for output in out.drain(..) {
            let r = match &output {
                Output::Join(r, _) | Output::Sync(r, _) => *r,
            };
            let previous = answers.insert(r, output);
            assert!(previous.is_none(), "{at}: reply {r} answered twice");
        }
        if let Some(deadline) = group.next_deadline_ms() {
            // Time never stands on a due deadline without running it.
            assert!(
                deadline > now || !matches!(step, At(_)),
                "{at}: deadline {deadline} due"
            );
        }
    }
    assert!(
        answers.is_empty(),
        "case `{case}`: unexpected answers {answers:?}"
    );
}

/// Steps that bring `c-a` (leader) into a stable generation 1 alone.
const ONE_STABLE: &[&str] = &["c-a"];

fn stable_a() -> Vec<Step> {
    vec![
        Join(1, new("a")),
        Parked(1),
        At(DELAY_MS),
        Joined(1, 1, "range", "c-a", "c-a", ONE_STABLE),
        Is(GroupState::CompletingRebalance, 1, ONE_STABLE),
        Sync(2, "c-a", 1, &[("c-a", "A")]),
        Synced(2, "A"),
        Is(GroupState::Stable, 1, ONE_STABLE),
    ]
}

/// When [`stable_ab`] ends.
const AB_MS: i64 = 2 * DELAY_MS;

/// `c-a` (leader) and `c-b` stable in generation 1, at time [`AB_MS`].
fn stable_ab() -> Vec<Step> {
    vec![
        Join(1, new("a")),
        Join(2, new("b")),
        // c-b arrived during the initial delay, which therefore runs twice.
        At(DELAY_MS),
        Parked(1),
        At(AB_MS),
        Joined(1, 1, "range", "c-a", "c-a", &["c-a", "c-b"]),
        Joined(2, 1, "range", "c-a", "c-b", &[]),
        Sync(3, "c-b", 1, &[]),
        Parked(3),
        Sync(4, "c-a", 1, &[("c-a", "A"), ("c-b", "B")]),
        Synced(3, "B"),
        Synced(4, "A"),
        Is(GroupState::Stable, 1, &["c-a", "c-b"]),
    ]
}

fn case(prefix: Vec<Step>, rest: Vec<Step>) -> Vec<Step> {
    prefix.into_iter().chain(rest).collect()
}

#[test]
fn membership_cases() {
    let t0 = DELAY_MS;
    let cases: Vec<(&str, Vec<Step>)> = vec![
        (
            "one member",
            case(stable_a(), vec![Heartbeat("c-a", None, 1, Ok(()))]),
        ),
        (
            "KIP-394: a v4 client first gets its member id",
            vec![
                Join(
                    1,
                    J {
                        kip394: true,
                        ..new("a")
                    },
                ),
                JoinFailed(1, GroupError::MemberIdRequired, "c-a"),
                Is(GroupState::Empty, 0, &[]),
                Join(
                    2,
                    J {
                        kip394: true,
                        ..rejoin("c-a")
                    },
                ),
                Parked(2),
                At(DELAY_MS),
                Joined(2, 1, "range", "c-a", "c-a", ONE_STABLE),
            ],
        ),
        (
            "the initial delay grows while members keep coming",
            vec![
                Join(1, new("a")),
                At(2_000),
                Join(2, new("b")),
                At(DELAY_MS),
                Parked(1),
                At(2 * DELAY_MS - 1),
                Parked(2),
                At(2 * DELAY_MS),
                Joined(1, 1, "range", "c-a", "c-a", &["c-a", "c-b"]),
                Joined(2, 1, "range", "c-a", "c-b", &[]),
            ],
        ),
        (
            "a new member: heartbeats say rejoin, the rebalance completes once all are in",
            case(
                stable_a(),
                vec![
                    Join(3, new("b")),
                    Is(GroupState::PreparingRebalance, 1, &["c-a", "c-b"]),
                    Parked(3),
                    Heartbeat("c-a", None, 1, Err(GroupError::RebalanceInProgress)),
                    // Members may still commit for the generation they have.
                    Commit("c-a", 1, Ok(())),
                    Join(4, rejoin("c-a")),
                    Joined(3, 2, "range", "c-a", "c-b", &[]),
                    Joined(4, 2, "range", "c-a", "c-a", &["c-a", "c-b"]),
                    Heartbeat("c-a", None, 1, Err(GroupError::IllegalGeneration)),
                    Heartbeat("c-b", None, 2, Ok(())),
                    Commit("c-b", 2, Err(GroupError::RebalanceInProgress)),
                    Sync(5, "c-b", 2, &[]),
                    Sync(6, "c-a", 2, &[("c-a", "A2"), ("c-b", "B2"), ("c-x", "X")]),
                    Synced(5, "B2"),
                    Synced(6, "A2"),
                    Commit("c-b", 2, Ok(())),
                    // A late SyncGroup in a stable group gets the member's assignment.
                    Sync(7, "c-b", 2, &[]),
                    Synced(7, "B2"),
                    Is(GroupState::Stable, 2, &["c-a", "c-b"]),
                ],
            ),
        ),
        (
            "the rebalance timeout removes members that do not rejoin",
            case(
                stable_ab(),
                vec![
                    Join(5, new("c")),
                    Join(6, rejoin("c-a")),
                    // c-b heartbeats (so its session never runs out) but never rejoins.
                    At(AB_MS + 8_000),
                    Heartbeat("c-b", None, 1, Err(GroupError::RebalanceInProgress)),
                    At(AB_MS + 16_000),
                    Heartbeat("c-b", None, 1, Err(GroupError::RebalanceInProgress)),
                    // The parked members outlive their own session timeouts.
                    Parked(5),
                    Parked(6),
                    At(AB_MS + i64::from(REBALANCE_MS) - 1),
                    Parked(5),
                    At(AB_MS + i64::from(REBALANCE_MS)),
                    Joined(5, 2, "range", "c-a", "c-c", &[]),
                    Joined(6, 2, "range", "c-a", "c-a", &["c-a", "c-c"]),
                    Heartbeat("c-b", None, 1, Err(GroupError::UnknownMemberId)),
                ],
            ),
        ),
        (
            "a silent member is removed after its session timeout",
            case(
                stable_ab(),
                vec![
                    At(AB_MS + 5_000),
                    Heartbeat("c-a", None, 1, Ok(())),
                    At(AB_MS + i64::from(SESSION_MS) - 1),
                    Heartbeat("c-a", None, 1, Ok(())),
                    Is(GroupState::Stable, 1, &["c-a", "c-b"]),
                    At(AB_MS + i64::from(SESSION_MS)),
                    Is(GroupState::PreparingRebalance, 1, &["c-a"]),
                    Heartbeat("c-a", None, 1, Err(GroupError::RebalanceInProgress)),
                    Join(5, rejoin("c-a")),
                    Joined(5, 2, "range", "c-a", "c-a", ONE_STABLE),
                ],
            ),
        ),
        (
            "the leader leaves: the other member leads the next generation",
            case(
                stable_ab(),
                vec![
                    Leave(
                        &["c-a", "c-zz"],
                        &[Ok(()), Err(GroupError::UnknownMemberId)],
                    ),
                    Is(GroupState::PreparingRebalance, 1, &["c-b"]),
                    Join(5, rejoin("c-b")),
                    Joined(5, 2, "range", "c-b", "c-b", &["c-b"]),
                    Sync(6, "c-b", 2, &[("c-b", "all")]),
                    Synced(6, "all"),
                    Leave(&["c-b"], &[Ok(())]),
                    Is(GroupState::Empty, 3, &[]),
                    // An empty group takes simple commits, not member commits.
                    Commit("", -1, Ok(())),
                    Commit("c-b", 2, Err(GroupError::UnknownMemberId)),
                ],
            ),
        ),
        (
            "a member leaving while others are parked in JoinGroup completes the join",
            case(
                stable_ab(),
                vec![
                    Join(5, rejoin("c-a")),
                    Parked(5),
                    Leave(&["c-b"], &[Ok(())]),
                    Joined(5, 2, "range", "c-a", "c-a", ONE_STABLE),
                ],
            ),
        ),
        (
            "commits need the current member and generation",
            case(
                stable_ab(),
                vec![
                    Commit("c-a", 1, Ok(())),
                    Commit("c-a", 0, Err(GroupError::IllegalGeneration)),
                    Commit("c-zz", 1, Err(GroupError::UnknownMemberId)),
                    Commit("", -1, Err(GroupError::UnknownMemberId)),
                    // A commit counts as a heartbeat.
                    At(AB_MS + 9_000),
                    Commit("c-a", 1, Ok(())),
                    Heartbeat("c-b", None, 1, Ok(())),
                    At(AB_MS + 15_000),
                    Is(GroupState::Stable, 1, &["c-a", "c-b"]),
                ],
            ),
        ),
        (
            "SyncGroup errors, and a leader that never syncs",
            case(
                stable_ab(),
                vec![
                    Join(5, rejoin("c-a")),
                    Sync(6, "c-b", 1, &[]),
                    SyncFailed(6, GroupError::RebalanceInProgress),
                    Join(7, rejoin("c-b")),
                    Joined(5, 2, "range", "c-a", "c-a", &["c-a", "c-b"]),
                    Joined(7, 2, "range", "c-a", "c-b", &[]),
                    Sync(8, "c-b", 1, &[]),
                    SyncFailed(8, GroupError::IllegalGeneration),
                    Sync(9, "c-zz", 2, &[]),
                    SyncFailed(9, GroupError::UnknownMemberId),
                    Sync(10, "c-b", 2, &[]),
                    Parked(10),
                    // The leader heartbeats (so only its missing SyncGroup can remove it).
                    At(AB_MS + 9_000),
                    Heartbeat("c-a", None, 2, Ok(())),
                    At(AB_MS + 18_000),
                    Heartbeat("c-a", None, 2, Ok(())),
                    // c-b parked in SyncGroup is kept alive; the leader's pending sync expires.
                    At(AB_MS + i64::from(REBALANCE_MS)),
                    SyncFailed(10, GroupError::RebalanceInProgress),
                    Is(GroupState::PreparingRebalance, 2, &["c-b"]),
                    Join(11, rejoin("c-b")),
                    Joined(11, 3, "range", "c-b", "c-b", &["c-b"]),
                ],
            ),
        ),
        (
            "a repeated JoinGroup supersedes the parked one",
            case(
                stable_ab(),
                vec![
                    Join(5, rejoin("c-a")),
                    Join(6, rejoin("c-a")),
                    JoinFailed(5, GroupError::RebalanceInProgress, "c-a"),
                    Join(7, rejoin("c-b")),
                    Joined(6, 2, "range", "c-a", "c-a", &["c-a", "c-b"]),
                    Joined(7, 2, "range", "c-a", "c-b", &[]),
                    // A follower's JoinGroup after the join phase is answered at once.
                    Join(8, rejoin("c-b")),
                    Joined(8, 2, "range", "c-a", "c-b", &[]),
                ],
            ),
        ),
        (
            "protocols: common and most preferred; inconsistent ones refused",
            vec![
                Join(
                    1,
                    J {
                        protocols: &["range", "roundrobin"],
                        ..new("a")
                    },
                ),
                Join(
                    2,
                    J {
                        protocols: &["roundrobin", "range"],
                        ..new("b")
                    },
                ),
                Join(
                    3,
                    J {
                        protocols: &["sticky", "roundrobin"],
                        ..new("c")
                    },
                ),
                Join(
                    4,
                    J {
                        protocols: &["sticky"],
                        ..new("d")
                    },
                ),
                JoinFailed(4, GroupError::InconsistentGroupProtocol, ""),
                Join(
                    5,
                    J {
                        protocol_type: "connect",
                        ..new("e")
                    },
                ),
                JoinFailed(5, GroupError::InconsistentGroupProtocol, ""),
                Join(
                    6,
                    J {
                        protocols: &[],
                        ..new("f")
                    },
                ),
                JoinFailed(6, GroupError::InconsistentGroupProtocol, ""),
                At(DELAY_MS),
                At(2 * DELAY_MS),
                Joined(1, 1, "roundrobin", "c-a", "c-a", &["c-a", "c-b", "c-c"]),
                Joined(2, 1, "roundrobin", "c-a", "c-b", &[]),
                Joined(3, 1, "roundrobin", "c-a", "c-c", &[]),
            ],
        ),
        (
            "limits: session timeout range and group size",
            vec![
                Join(
                    1,
                    J {
                        session_ms: 5_999,
                        ..new("a")
                    },
                ),
                JoinFailed(1, GroupError::InvalidSessionTimeout, ""),
                Join(
                    2,
                    J {
                        session_ms: 60_001,
                        ..new("a")
                    },
                ),
                JoinFailed(2, GroupError::InvalidSessionTimeout, ""),
                Join(3, new("a")),
                Join(4, new("b")),
                Join(5, new("c")),
                Join(
                    6,
                    J {
                        kip394: true,
                        ..new("d")
                    },
                ),
                JoinFailed(6, GroupError::MemberIdRequired, "c-d"),
                Join(7, new("e")),
                JoinFailed(7, GroupError::GroupMaxSizeReached, ""),
                // The pending id still gets in.
                Join(8, rejoin("c-d")),
                At(DELAY_MS),
                Parked(3),
                At(2 * DELAY_MS),
                Joined(3, 1, "range", "c-a", "c-a", &["c-a", "c-b", "c-c", "c-d"]),
                Joined(4, 1, "range", "c-a", "c-b", &[]),
                Joined(5, 1, "range", "c-a", "c-c", &[]),
                Joined(8, 1, "range", "c-a", "c-d", &[]),
            ],
        ),
        (
            "a pending member id holds the join phase until it expires",
            case(
                stable_a(),
                vec![
                    Join(
                        3,
                        J {
                            kip394: true,
                            ..new("p")
                        },
                    ),
                    JoinFailed(3, GroupError::MemberIdRequired, "c-p"),
                    Heartbeat("c-a", None, 1, Ok(())),
                    Join(4, new("b")),
                    Join(5, rejoin("c-a")),
                    Parked(4),
                    At(t0 + i64::from(SESSION_MS)),
                    Joined(4, 2, "range", "c-a", "c-b", &[]),
                    Joined(5, 2, "range", "c-a", "c-a", &["c-a", "c-b"]),
                    // The expired id is unknown now.
                    Join(6, rejoin("c-p")),
                    JoinFailed(6, GroupError::UnknownMemberId, "c-p"),
                    Is(GroupState::CompletingRebalance, 2, &["c-a", "c-b"]),
                ],
            ),
        ),
        (
            "static members: a restart takes the old place, the old id is fenced",
            vec![
                Join(1, new("a")),
                Join(
                    2,
                    J {
                        instance: Some("i"),
                        kip394: true,
                        ..new("s1")
                    },
                ),
                At(DELAY_MS),
                At(2 * DELAY_MS),
                Joined(1, 1, "range", "c-a", "c-a", &["c-a", "c-s1"]),
                Joined(2, 1, "range", "c-a", "c-s1", &[]),
                Sync(3, "c-a", 1, &[("c-a", "A"), ("c-s1", "S")]),
                Synced(3, "A"),
                // The static member restarts: same instance, no member id, same protocols.
                Join(
                    4,
                    J {
                        instance: Some("i"),
                        kip394: true,
                        ..new("s2")
                    },
                ),
                Joined(4, 1, "range", "c-a", "c-s2", &[]),
                Is(GroupState::Stable, 1, &["c-a", "c-s2"]),
                Sync(5, "c-s2", 1, &[]),
                Synced(5, "S"),
                Heartbeat("c-s1", Some("i"), 1, Err(GroupError::FencedInstanceId)),
                Heartbeat("c-s2", Some("i"), 1, Ok(())),
                Join(
                    6,
                    J {
                        instance: Some("i"),
                        ..rejoin("c-s1")
                    },
                ),
                JoinFailed(6, GroupError::FencedInstanceId, "c-s1"),
            ],
        ),
    ];
    for (name, steps) in cases {
        check(name, &steps);
    }
}

#[test]
fn deleting_needs_an_empty_group() {
    let mut group = Group::new(config());
    let mut out = Vec::new();
    group.join(0, new("a").request(), 1, &mut out);
    assert_eq!(group.delete(), Err(GroupError::NonEmptyGroup));
    let _ = group.leave(
        1,
        &[MemberRef {
            member_id: "c-a".into(),
            group_instance_id: None,
        }],
        &mut out,
    );
    assert_eq!(group.state(), GroupState::Empty);
    assert_eq!(group.delete(), Ok(()));
    assert_eq!(group.delete(), Err(GroupError::GroupIdNotFound));
    assert_eq!(
        out,
        vec![Output::Join(
            1,
            JoinResponse::error(GroupError::UnknownMemberId, "c-a".into())
        )]
    );
}
