//! Tests of the three cores: tables of events and the exact commands each must produce, then
//! scripted multi-owner scenarios (figure 8, a zombie after a seal) that the randomized
//! simulation (`tests/t70_replication_sim.rs`) reaches only rarely.

use std::sync::Arc;

use super::*;

// ----- vocabulary -----

fn data(lsn: u64, epoch: u64, payload: &str) -> Entry {
    Entry::data(Lsn(lsn), Epoch(epoch), Arc::from(payload.as_bytes()))
}

fn barrier(lsn: u64, epoch: u64) -> Entry {
    Entry::barrier(Lsn(lsn), Epoch(epoch))
}

fn id(lsn: u64, epoch: u64) -> EntryId {
    EntryId {
        lsn: Lsn(lsn),
        epoch: Epoch(epoch),
    }
}

fn append(epoch: u64, prev: (u64, u64), settled: u64, entries: Vec<Entry>) -> AppendMsg {
    AppendMsg {
        epoch: Epoch(epoch),
        prev: id(prev.0, prev.1),
        settled_lsn: Lsn(settled),
        entries,
    }
}

fn r(i: u16) -> ReplicaId {
    ReplicaId(i)
}

// ----- replica -----

fn reply(msg: FromReplica) -> ReplicaCommand {
    ReplicaCommand::Reply { msg }
}

fn ack(epoch: u64, durable: u64) -> FromReplica {
    FromReplica::Ack {
        epoch: Epoch(epoch),
        durable_lsn: Lsn(durable),
    }
}

fn sync(upto: u64) -> ReplicaCommand {
    ReplicaCommand::Sync {
        upto_lsn: Lsn(upto),
    }
}

fn synced(upto: u64) -> ReplicaEvent {
    ReplicaEvent::Synced {
        upto_lsn: Lsn(upto),
    }
}

fn write(entries: Vec<Entry>) -> ReplicaCommand {
    ReplicaCommand::Write { entries }
}

/// Feeds each event and compares the commands with the expected ones.
fn check_replica(replica: &mut Replica, steps: Vec<(ReplicaEvent, Vec<ReplicaCommand>)>) {
    for (i, (event, expected)) in steps.into_iter().enumerate() {
        let mut out = Vec::new();
        let shown = format!("{event:?}");
        replica.handle(event, &mut out);
        assert_eq!(out, expected, "step {i}: {shown}");
    }
}

/// A replica holding `entries` durably, sealed at `sealed`.
fn replica_with(sealed: u64, base: u64, entries: Vec<Entry>) -> Replica {
    Replica::restore(DurableState {
        sealed_epoch: Epoch(sealed),
        base_lsn: Lsn(base),
        entries,
    })
}

#[test]
fn replica_acks_only_after_the_sync() {
    let mut replica = Replica::new();
    let e = vec![barrier(1, 1), data(2, 1, "a")];
    check_replica(
        &mut replica,
        vec![
            (
                ReplicaEvent::Append(append(1, (0, 0), 0, e.clone())),
                vec![
                    ReplicaCommand::PersistSeal { epoch: Epoch(1) },
                    write(e.clone()),
                    sync(2),
                ],
            ),
            // A duplicate while the sync is outstanding: answered with that sync.
            (
                ReplicaEvent::Append(append(1, (0, 0), 0, e.clone())),
                vec![],
            ),
            (synced(2), vec![reply(ack(1, 2))]),
            // A duplicate once durable: answered at once.
            (
                ReplicaEvent::Append(append(1, (1, 1), 0, e[1..].to_vec())),
                vec![reply(ack(1, 2))],
            ),
            // Group commit: two appends, then one sync per append, acks coalesced per sync.
            (
                ReplicaEvent::Append(append(1, (2, 1), 0, vec![data(3, 1, "b")])),
                vec![write(vec![data(3, 1, "b")]), sync(3)],
            ),
            (
                ReplicaEvent::Append(append(1, (3, 1), 0, vec![data(4, 1, "c")])),
                vec![write(vec![data(4, 1, "c")]), sync(4)],
            ),
            (synced(3), vec![reply(ack(1, 3))]),
            (synced(4), vec![reply(ack(1, 4))]),
        ],
    );
    assert_eq!(replica.durable_lsn(), Lsn(4));
}

#[test]
fn replica_fences_older_epochs_and_seals_durably() {
    let mut replica = replica_with(2, 0, vec![data(1, 1, "a"), data(2, 2, "b")]);
    let fenced = |epoch: u64, sealed: u64| {
        reply(FromReplica::Nack {
            epoch: Epoch(epoch),
            reason: NackReason::Fenced {
                sealed_epoch: Epoch(sealed),
            },
        })
    };
    check_replica(
        &mut replica,
        vec![
            (
                ReplicaEvent::Append(append(1, (1, 1), 0, vec![])),
                vec![fenced(1, 2)],
            ),
            // The seal is answered only once it is on disk.
            (
                ReplicaEvent::Seal {
                    epoch: Epoch(5),
                    from_lsn: Lsn(2),
                },
                vec![ReplicaCommand::PersistSeal { epoch: Epoch(5) }, sync(2)],
            ),
            (
                synced(2),
                vec![reply(FromReplica::Sealed {
                    epoch: Epoch(5),
                    base_lsn: Lsn(0),
                    last: Some(id(2, 2)),
                })],
            ),
            // The old owner is now fenced too, and so is an older recovery.
            (
                ReplicaEvent::Append(append(2, (2, 2), 0, vec![data(3, 2, "c")])),
                vec![fenced(2, 5)],
            ),
            (
                ReplicaEvent::Seal {
                    epoch: Epoch(4),
                    from_lsn: Lsn(1),
                },
                vec![fenced(4, 5)],
            ),
            // A repeated seal of the same epoch: nothing to persist, answered at once. The last
            // entry is below from_lsn, so it is not reported.
            (
                ReplicaEvent::Seal {
                    epoch: Epoch(5),
                    from_lsn: Lsn(3),
                },
                vec![reply(FromReplica::Sealed {
                    epoch: Epoch(5),
                    base_lsn: Lsn(0),
                    last: None,
                })],
            ),
            (
                ReplicaEvent::Fetch {
                    epoch: Epoch(5),
                    from_lsn: Lsn(1),
                    upto_lsn: Lsn(9),
                    bytes_max: 1,
                },
                vec![reply(FromReplica::Fetched {
                    epoch: Epoch(5),
                    entries: vec![data(1, 1, "a")],
                })],
            ),
        ],
    );
}

#[test]
fn replica_nacks_a_missing_prev_with_a_hint() {
    let held = vec![
        data(1, 1, "a"),
        data(2, 1, "b"),
        data(3, 2, "c"),
        data(4, 2, "d"),
    ];
    let mismatch = |prev: u64, retry: u64| {
        reply(FromReplica::Nack {
            epoch: Epoch(3),
            reason: NackReason::Mismatch {
                prev_lsn: Lsn(prev),
                retry_after_lsn: Lsn(retry),
            },
        })
    };
    // (prev sent, expected retry_after): past the end → the end; a different epoch at prev →
    // before that epoch's run.
    let cases = [((6, 3), 4), ((4, 3), 2), ((3, 1), 2), ((2, 2), 0)];
    for ((prev_lsn, prev_epoch), retry) in cases {
        let mut replica = replica_with(3, 0, held.clone());
        check_replica(
            &mut replica,
            vec![(
                ReplicaEvent::Append(append(3, (prev_lsn, prev_epoch), 0, vec![])),
                vec![mismatch(prev_lsn, retry)],
            )],
        );
    }
}

#[test]
fn replica_truncates_a_divergent_tail() {
    // The replica holds entries 3 and 4 from a zombie of epoch 3; the epoch-4 recovery chose a
    // log (from other replicas) whose entry 3 is from epoch 2, and re-replicates it as it is.
    let mut replica = replica_with(
        3,
        0,
        vec![
            data(1, 1, "a"),
            data(2, 1, "b"),
            data(3, 3, "y"),
            data(4, 3, "z"),
        ],
    );
    let tail = vec![data(2, 1, "b"), data(3, 2, "c"), barrier(4, 4)];
    check_replica(
        &mut replica,
        vec![
            (
                ReplicaEvent::Append(append(4, (1, 1), 0, tail.clone())),
                vec![
                    ReplicaCommand::PersistSeal { epoch: Epoch(4) },
                    // Entry 2 agrees (same epoch) and stays; 3 conflicts (a newer epoch even): the
                    // sender wins, cut from there.
                    ReplicaCommand::Truncate { after_lsn: Lsn(2) },
                    write(tail[1..].to_vec()),
                    sync(4),
                ],
            ),
            (synced(4), vec![reply(ack(4, 4))]),
        ],
    );
    let held: Vec<Entry> = replica.entries().cloned().collect();
    assert_eq!(held[1..], tail[..]);
}

#[test]
fn replica_durability_accounts_for_truncation_under_a_pending_sync() {
    let mut replica = replica_with(1, 0, vec![data(1, 1, "a")]);
    check_replica(
        &mut replica,
        vec![
            (
                ReplicaEvent::Append(append(1, (1, 1), 0, vec![data(2, 1, "b"), data(3, 1, "c")])),
                vec![write(vec![data(2, 1, "b"), data(3, 1, "c")]), sync(3)],
            ),
            // Before that sync lands, epoch 2 replaces entries 2..: the first sync then makes
            // only entry 1 of the current log durable.
            (
                ReplicaEvent::Append(append(2, (1, 1), 0, vec![data(2, 2, "B")])),
                vec![
                    ReplicaCommand::PersistSeal { epoch: Epoch(2) },
                    ReplicaCommand::Truncate { after_lsn: Lsn(1) },
                    write(vec![data(2, 2, "B")]),
                    sync(2),
                ],
            ),
            (synced(3), vec![reply(ack(2, 1))]),
            (synced(2), vec![reply(ack(2, 2))]),
        ],
    );
}

#[test]
fn replica_trims_settled_entries_and_skips_a_gap_below_them() {
    // Far behind: it holds up to 2, the stream is settled up to 10.
    let mut replica = replica_with(1, 0, vec![data(1, 1, "a"), data(2, 1, "b")]);
    check_replica(
        &mut replica,
        vec![
            (
                ReplicaEvent::Append(append(1, (10, 0), 10, vec![data(11, 1, "k")])),
                vec![
                    ReplicaCommand::Trim { upto_lsn: Lsn(10) },
                    write(vec![data(11, 1, "k")]),
                    sync(11),
                ],
            ),
            (synced(11), vec![reply(ack(1, 11))]),
        ],
    );
    assert_eq!((replica.base_lsn(), replica.last_lsn()), (Lsn(10), Lsn(11)));
}

#[test]
fn replica_stops_for_good_after_a_failed_sync() {
    let mut replica = Replica::new();
    check_replica(
        &mut replica,
        vec![
            (
                ReplicaEvent::Append(append(1, (0, 0), 0, vec![barrier(1, 1)])),
                vec![
                    ReplicaCommand::PersistSeal { epoch: Epoch(1) },
                    write(vec![barrier(1, 1)]),
                    sync(1),
                ],
            ),
            (ReplicaEvent::SyncFailed, vec![]),
            (synced(1), vec![]),
            (
                ReplicaEvent::Seal {
                    epoch: Epoch(2),
                    from_lsn: Lsn(1),
                },
                vec![],
            ),
        ],
    );
    assert!(replica.is_stopped());
}

#[test]
fn append_messages_are_checked() {
    let ok = append(3, (1, 2), 0, vec![data(2, 2, "a"), barrier(3, 3)]);
    assert_eq!(ok.check(), Ok(()));
    let cases = [
        append(0, (0, 0), 0, vec![]),
        append(3, (1, 2), 1, vec![]),
        append(3, (1, 4), 0, vec![]),
        append(3, (1, 2), 0, vec![data(3, 2, "gap")]),
        append(3, (1, 2), 0, vec![data(2, 1, "older")]),
        append(3, (1, 2), 0, vec![data(2, 4, "newer than sender")]),
        append(
            3,
            (1, 2),
            0,
            vec![Entry {
                kind: EntryKind::Barrier,
                ..data(2, 3, "x")
            }],
        ),
    ];
    for m in cases {
        assert!(m.check().is_err(), "{m:?}");
    }
}

// ----- writer -----

/// Bytes of an entry with a one-byte payload.
const E1: u64 = ENTRY_OVERHEAD_BYTES + 1;

fn cfg() -> ReplicationConfig {
    ReplicationConfig {
        inflight_bytes_max: 3 * E1,
        message_bytes_max: 2 * E1,
        retained_bytes_max: 8 * ENTRY_OVERHEAD_BYTES,
        entry_bytes_max: 16,
        retransmit_timeout_ms: 100,
        ..ReplicationConfig::default()
    }
}

fn send(replica: u16, m: AppendMsg) -> OwnerCommand {
    OwnerCommand::Send {
        replica: r(replica),
        msg: ToReplica::Append(m),
    }
}

fn owner_ack(replica: u16, epoch: u64, durable: u64) -> OwnerEvent {
    OwnerEvent::Ack {
        replica: r(replica),
        epoch: Epoch(epoch),
        durable_lsn: Lsn(durable),
    }
}

fn committed(upto: u64) -> OwnerCommand {
    OwnerCommand::Committed {
        upto_lsn: Lsn(upto),
    }
}

fn payload(s: &str) -> Payload {
    Arc::from(s.as_bytes())
}

fn check_writer(writer: &mut Writer, steps: Vec<(OwnerEvent, Vec<OwnerCommand>)>) {
    for (i, (event, expected)) in steps.into_iter().enumerate() {
        let mut out = Vec::new();
        let shown = format!("{event:?}");
        writer.handle(event, &mut out);
        assert_eq!(out, expected, "step {i}: {shown}");
    }
}

/// A writer of epoch 2 over an empty stream; returns it with its first probes.
fn fresh_writer(cfg: ReplicationConfig) -> (Writer, Vec<OwnerCommand>) {
    let mut out = Vec::new();
    let up = vec![true; usize::from(cfg.replicas)];
    let w = Writer::new(cfg, Epoch(2), Lsn(0), Vec::new(), &up, 0, &mut out);
    (w, out)
}

#[test]
fn writer_commits_at_the_write_quorum() {
    let (mut w, probes) = fresh_writer(cfg());
    let probe = append(2, (0, 0), 0, vec![barrier(1, 2)]);
    assert_eq!(
        probes,
        vec![
            send(0, probe.clone()),
            send(1, probe.clone()),
            send(2, probe)
        ]
    );
    check_writer(
        &mut w,
        vec![
            (owner_ack(0, 2, 1), vec![]),
            // An ack of another epoch (a late answer to an older owner's message) is ignored.
            (owner_ack(1, 1, 1), vec![]),
            (owner_ack(1, 2, 1), vec![committed(1)]),
            (owner_ack(2, 2, 1), vec![]),
        ],
    );
}

#[test]
fn writer_pipelines_within_the_inflight_limit() {
    let (mut w, _) = fresh_writer(cfg());
    let mut steps = vec![
        (owner_ack(0, 2, 1), vec![]),
        (owner_ack(1, 2, 1), vec![committed(1)]),
    ];
    for (i, p) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let lsn = Lsn(i as u64 + 2);
        steps.push((
            OwnerEvent::Append {
                payload: payload(p),
            },
            vec![OwnerCommand::Appended { lsn }],
        ));
    }
    let (a, b, c, d) = (
        data(2, 2, "a"),
        data(3, 2, "b"),
        data(4, 2, "c"),
        data(5, 2, "d"),
    );
    // Two messages of at most two entries each, no round trip between them; the third entry
    // fills the window of three entries' worth. Replica 2 is still probing: nothing for it.
    steps.push((
        OwnerEvent::Flush,
        vec![
            send(0, append(2, (1, 2), 0, vec![a.clone(), b.clone()])),
            send(0, append(2, (3, 2), 0, vec![c.clone()])),
            send(1, append(2, (1, 2), 0, vec![a, b])),
            send(1, append(2, (3, 2), 0, vec![c])),
        ],
    ));
    // An ack opens the window: the rest goes out.
    steps.push((
        owner_ack(0, 2, 3),
        vec![send(0, append(2, (4, 2), 0, vec![d.clone()]))],
    ));
    steps.push((
        owner_ack(1, 2, 4),
        vec![committed(3), send(1, append(2, (4, 2), 0, vec![d]))],
    ));
    check_writer(&mut w, steps);
}

#[test]
fn writer_walks_back_on_mismatch_and_retransmits_on_timeout() {
    // The recovered tail (epoch 1) then the barrier (epoch 2).
    let tail = vec![data(1, 1, "a"), data(2, 1, "b")];
    let mut out = Vec::new();
    let mut w = Writer::new(cfg(), Epoch(2), Lsn(0), tail, &[true; 3], 0, &mut out);
    let probe = append(2, (2, 1), 0, vec![barrier(3, 2)]);
    assert_eq!(out[0], send(0, probe));
    let mismatch = |prev: u64, retry: u64| OwnerEvent::Nack {
        replica: r(0),
        epoch: Epoch(2),
        reason: NackReason::Mismatch {
            prev_lsn: Lsn(prev),
            retry_after_lsn: Lsn(retry),
        },
    };
    check_writer(
        &mut w,
        vec![
            // Replica 0 holds only entry 1: resend from 2.
            (
                mismatch(2, 1),
                vec![send(
                    0,
                    append(2, (1, 1), 0, vec![data(2, 1, "b"), barrier(3, 2)]),
                )],
            ),
            // A stale nack for the old probe changes nothing.
            (mismatch(2, 1), vec![]),
            // Old-epoch entries on a quorum are not committed by themselves (figure 8).
            (owner_ack(1, 2, 2), vec![]),
            (owner_ack(0, 2, 2), vec![]),
            // The barrier or its acks are lost; after the timeout it goes out again to all.
            (OwnerEvent::Tick { now_ms: 99 }, vec![]),
            (
                OwnerEvent::Tick { now_ms: 100 },
                (0..3)
                    .flat_map(|i| {
                        [
                            OwnerCommand::Retransmit {
                                replica: r(i),
                                from_lsn: Lsn(3),
                            },
                            send(i, append(2, (2, 1), 0, vec![barrier(3, 2)])),
                        ]
                    })
                    .collect(),
            ),
            (owner_ack(0, 2, 3), vec![]),
            (owner_ack(2, 2, 3), vec![committed(3)]),
        ],
    );
}

#[test]
fn writer_repairs_a_replica_that_comes_back_and_commits_without_it() {
    let (mut w, _) = fresh_writer(ReplicationConfig {
        inflight_bytes_max: 100 * ENTRY_OVERHEAD_BYTES,
        message_bytes_max: 100 * ENTRY_OVERHEAD_BYTES,
        ..cfg()
    });
    let (a, b) = (data(2, 2, "a"), data(3, 2, "b"));
    check_writer(
        &mut w,
        vec![
            (OwnerEvent::ReplicaDown { replica: r(2) }, vec![]),
            (owner_ack(0, 2, 1), vec![]),
            (owner_ack(1, 2, 1), vec![committed(1)]),
            (
                OwnerEvent::Append {
                    payload: payload("a"),
                },
                vec![OwnerCommand::Appended { lsn: Lsn(2) }],
            ),
            (
                OwnerEvent::Append {
                    payload: payload("b"),
                },
                vec![OwnerCommand::Appended { lsn: Lsn(3) }],
            ),
            (
                OwnerEvent::Flush,
                vec![
                    send(0, append(2, (1, 2), 0, vec![a.clone(), b.clone()])),
                    send(1, append(2, (1, 2), 0, vec![a.clone(), b.clone()])),
                ],
            ),
            (owner_ack(0, 2, 3), vec![]),
            (owner_ack(1, 2, 3), vec![committed(3)]),
            // Replica 2 acknowledged nothing: it is probed from the start of the stream.
            (
                OwnerEvent::ReplicaUp { replica: r(2) },
                vec![send(2, append(2, (0, 0), 0, vec![barrier(1, 2), a, b]))],
            ),
            (owner_ack(2, 2, 3), vec![]),
        ],
    );
}

#[test]
fn writer_refuses_when_full_or_fenced_and_trims() {
    let (mut w, _) = fresh_writer(cfg());
    let appended = |lsn: u64| vec![OwnerCommand::Appended { lsn: Lsn(lsn) }];
    let mut steps = vec![
        (owner_ack(0, 2, 1), vec![]),
        (owner_ack(1, 2, 1), vec![committed(1)]),
    ];
    // retained_bytes_max is 8 entries: the barrier and 7 empty payloads.
    for lsn in 2..=8 {
        steps.push((
            OwnerEvent::Append {
                payload: payload(""),
            },
            appended(lsn),
        ));
    }
    let full = OwnerCommand::AppendRefused {
        reason: AppendRefusal::Full {
            retained_bytes: 8 * ENTRY_OVERHEAD_BYTES,
            retained_bytes_max: 8 * ENTRY_OVERHEAD_BYTES,
        },
    };
    steps.push((
        OwnerEvent::Append {
            payload: payload(""),
        },
        vec![full],
    ));
    steps.push((
        OwnerEvent::Append {
            payload: payload("seventeen bytes!!"),
        },
        vec![OwnerCommand::AppendRefused {
            reason: AppendRefusal::TooLarge {
                len: 17,
                entry_bytes_max: 16,
            },
        }],
    ));
    // The barrier is uploaded: trimming it makes room for one more.
    steps.push((OwnerEvent::Trim { upto_lsn: Lsn(1) }, vec![]));
    steps.push((
        OwnerEvent::Append {
            payload: payload(""),
        },
        appended(9),
    ));
    steps.push((
        OwnerEvent::Nack {
            replica: r(2),
            epoch: Epoch(2),
            reason: NackReason::Fenced {
                sealed_epoch: Epoch(3),
            },
        },
        vec![OwnerCommand::Fenced {
            sealed_epoch: Epoch(3),
        }],
    ));
    steps.push((
        OwnerEvent::Append {
            payload: payload(""),
        },
        vec![OwnerCommand::AppendRefused {
            reason: AppendRefusal::Fenced,
        }],
    ));
    steps.push((OwnerEvent::Flush, vec![]));
    check_writer(&mut w, steps);
    assert_eq!(w.settled_lsn(), Lsn(1));
}

// ----- recovery -----

fn seal(replica: u16, epoch: u64, from: u64) -> OwnerCommand {
    OwnerCommand::Send {
        replica: r(replica),
        msg: ToReplica::Seal {
            epoch: Epoch(epoch),
            from_lsn: Lsn(from),
        },
    }
}

fn sealed(replica: u16, epoch: u64, last: Option<(u64, u64)>) -> OwnerEvent {
    OwnerEvent::Sealed {
        replica: r(replica),
        epoch: Epoch(epoch),
        base_lsn: Lsn(0),
        last: last.map(|(l, e)| id(l, e)),
    }
}

fn fetch(replica: u16, epoch: u64, from: u64, upto: u64, bytes_max: u64) -> OwnerCommand {
    OwnerCommand::Send {
        replica: r(replica),
        msg: ToReplica::Fetch {
            epoch: Epoch(epoch),
            from_lsn: Lsn(from),
            upto_lsn: Lsn(upto),
            bytes_max,
        },
    }
}

fn fetched(replica: u16, epoch: u64, entries: Vec<Entry>) -> OwnerEvent {
    OwnerEvent::Fetched {
        replica: r(replica),
        epoch: Epoch(epoch),
        entries,
    }
}

fn check_recovery(rec: &mut Recovery, steps: Vec<(OwnerEvent, Vec<OwnerCommand>)>) {
    for (i, (event, expected)) in steps.into_iter().enumerate() {
        let mut out = Vec::new();
        let shown = format!("{event:?}");
        rec.handle(event, &mut out);
        assert_eq!(out, expected, "step {i}: {shown}");
    }
}

#[test]
fn recovery_of_a_fresh_stream_commits_a_barrier() {
    let mut out = Vec::new();
    let mut rec = Recovery::start(cfg(), Epoch(1), Lsn(1), 0, &mut out);
    assert_eq!(out, vec![seal(0, 1, 1), seal(1, 1, 1), seal(2, 1, 1)]);
    let probe = append(1, (0, 0), 0, vec![barrier(1, 1)]);
    check_recovery(
        &mut rec,
        vec![
            (
                OwnerEvent::Append {
                    payload: payload("early"),
                },
                vec![OwnerCommand::AppendRefused {
                    reason: AppendRefusal::Recovering,
                }],
            ),
            (sealed(2, 1, None), vec![]),
            // Duplicates count once.
            (sealed(2, 1, None), vec![]),
            (
                sealed(0, 1, None),
                vec![
                    send(0, probe.clone()),
                    send(1, probe.clone()),
                    send(2, probe),
                ],
            ),
            (
                OwnerEvent::Append {
                    payload: payload("early"),
                },
                vec![OwnerCommand::AppendRefused {
                    reason: AppendRefusal::Recovering,
                }],
            ),
            (owner_ack(0, 1, 1), vec![]),
            (
                owner_ack(2, 1, 1),
                vec![
                    OwnerCommand::Recovered {
                        from_lsn: Lsn(1),
                        upto_lsn: Lsn(0),
                        barrier_lsn: Lsn(1),
                        entries: vec![],
                    },
                    committed(1),
                ],
            ),
        ],
    );
    let mut w = rec.into_writer();
    let mut out = Vec::new();
    w.handle(
        OwnerEvent::Append {
            payload: payload("x"),
        },
        &mut out,
    );
    assert_eq!(out, vec![OwnerCommand::Appended { lsn: Lsn(2) }]);
}

#[test]
fn recovery_takes_the_highest_epoch_then_the_longest_log() {
    let from = 4;
    let mut out = Vec::new();
    let mut rec = Recovery::start(cfg(), Epoch(5), Lsn(from), 0, &mut out);
    let tail = vec![data(4, 2, "a"), data(5, 3, "b"), data(6, 3, "c")];
    // The answers below are cut to one entry, as a replica does when entries are large.
    let page = cfg().fetch_bytes_max;
    check_recovery(
        &mut rec,
        vec![
            // Replica 0 has the longest log, but replica 1's last entry is from a newer epoch.
            (sealed(0, 5, Some((7, 2))), vec![]),
            (sealed(1, 5, Some((6, 3))), vec![fetch(1, 5, 4, 6, page)]),
            // Late answers change nothing.
            (sealed(2, 5, Some((9, 4))), vec![]),
            (
                fetched(1, 5, tail[..1].to_vec()),
                vec![fetch(1, 5, 5, 6, page)],
            ),
            // A duplicate answer is ignored.
            (fetched(1, 5, tail[..1].to_vec()), vec![]),
            (fetched(0, 5, tail[1..].to_vec()), vec![]),
            (
                fetched(1, 5, tail[1..].to_vec()),
                vec![
                    send(0, append(5, (6, 3), 3, vec![barrier(7, 5)])),
                    send(1, append(5, (6, 3), 3, vec![barrier(7, 5)])),
                    send(2, append(5, (6, 3), 3, vec![barrier(7, 5)])),
                ],
            ),
            (owner_ack(1, 5, 7), vec![]),
            // Old-epoch entries on a quorum do not finish recovery; the barrier does.
            (owner_ack(0, 5, 6), vec![]),
            (
                owner_ack(0, 5, 7),
                vec![
                    OwnerCommand::Recovered {
                        from_lsn: Lsn(4),
                        upto_lsn: Lsn(6),
                        barrier_lsn: Lsn(7),
                        entries: tail,
                    },
                    committed(7),
                ],
            ),
        ],
    );
}

#[test]
fn recovery_reseals_when_its_source_goes_down_and_stops_when_fenced() {
    let mut out = Vec::new();
    let mut rec = Recovery::start(cfg(), Epoch(3), Lsn(1), 0, &mut out);
    let page = cfg().fetch_bytes_max;
    check_recovery(
        &mut rec,
        vec![
            (sealed(0, 3, Some((2, 1))), vec![]),
            (sealed(1, 3, None), vec![fetch(0, 3, 1, 2, page)]),
            (OwnerEvent::ReplicaDown { replica: r(1) }, vec![]),
            (
                OwnerEvent::ReplicaDown { replica: r(0) },
                vec![seal(2, 3, 1)],
            ),
            (
                OwnerEvent::Tick { now_ms: 100 },
                vec![
                    OwnerCommand::Retransmit {
                        replica: r(2),
                        from_lsn: Lsn(1),
                    },
                    seal(2, 3, 1),
                ],
            ),
            (OwnerEvent::ReplicaUp { replica: r(1) }, vec![seal(1, 3, 1)]),
            (
                OwnerEvent::Nack {
                    replica: r(1),
                    epoch: Epoch(3),
                    reason: NackReason::Fenced {
                        sealed_epoch: Epoch(4),
                    },
                },
                vec![OwnerCommand::Fenced {
                    sealed_epoch: Epoch(4),
                }],
            ),
            (
                OwnerEvent::Append {
                    payload: payload("x"),
                },
                vec![OwnerCommand::AppendRefused {
                    reason: AppendRefusal::Fenced,
                }],
            ),
            (sealed(2, 3, None), vec![]),
        ],
    );
    assert!(rec.is_fenced());
}

// ----- scripted scenarios -----

/// Replica cores whose syncs complete at once, and a network the script controls.
struct Cluster {
    replicas: Vec<Replica>,
}

/// One stream owner in a scenario: its recovery/writer, and the messages it has not sent yet.
struct Owner {
    recovery: Option<Recovery>,
    writer: Option<Writer>,
    outbox: Vec<(ReplicaId, ToReplica)>,
    committed: Vec<Entry>,
    recovered: Option<Vec<Entry>>,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        Cluster {
            replicas: (0..n).map(|_| Replica::new()).collect(),
        }
    }

    /// Delivers one message; the replica's syncs complete at once. Returns its replies.
    fn deliver(&mut self, to: ReplicaId, msg: ToReplica) -> Vec<FromReplica> {
        let replica = &mut self.replicas[to.index()];
        let mut out = Vec::new();
        replica.handle(msg.into(), &mut out);
        let mut queue: std::collections::VecDeque<ReplicaCommand> = out.into();
        let mut replies = Vec::new();
        while let Some(cmd) = queue.pop_front() {
            match cmd {
                ReplicaCommand::Sync { upto_lsn } => {
                    let mut more = Vec::new();
                    replica.handle(ReplicaEvent::Synced { upto_lsn }, &mut more);
                    queue.extend(more);
                }
                ReplicaCommand::Reply { msg } => replies.push(msg),
                _ => {}
            }
        }
        replies
    }

    /// Starts an owner of `epoch` recovering from `from_lsn`.
    fn owner(&self, epoch: u64, from_lsn: u64) -> Owner {
        let mut cfg = ReplicationConfig {
            replicas: self.replicas.len() as u16,
            // One entry per message: the script decides which entries arrive.
            message_bytes_max: 1,
            fetch_bytes_max: 1,
            ..ReplicationConfig::default()
        };
        cfg.write_quorum = cfg.replicas / 2 + 1;
        let mut out = Vec::new();
        let rec = Recovery::start(cfg, Epoch(epoch), Lsn(from_lsn), 0, &mut out);
        let mut o = Owner {
            recovery: Some(rec),
            writer: None,
            outbox: Vec::new(),
            committed: Vec::new(),
            recovered: None,
        };
        o.take(out);
        o
    }

    /// Runs the network for `owner` until it has nothing more to send; messages from the owner
    /// that `link` refuses are lost (replies always arrive).
    fn pump(&mut self, owner: &mut Owner, link: impl Fn(ReplicaId, &ToReplica) -> bool) {
        while !owner.outbox.is_empty() {
            for (to, msg) in std::mem::take(&mut owner.outbox) {
                if !link(to, &msg) {
                    continue;
                }
                for reply in self.deliver(to, msg) {
                    owner.handle(OwnerEvent::from_reply(to, reply));
                }
            }
        }
    }
}

impl Owner {
    fn handle(&mut self, event: OwnerEvent) {
        let mut out = Vec::new();
        match (&mut self.recovery, &mut self.writer) {
            (Some(rec), _) => rec.handle(event, &mut out),
            (None, Some(w)) => w.handle(event, &mut out),
            (None, None) => unreachable!(),
        }
        self.take(out);
    }

    fn take(&mut self, out: Vec<OwnerCommand>) {
        for cmd in out {
            match cmd {
                OwnerCommand::Send { replica, msg } => self.outbox.push((replica, msg)),
                OwnerCommand::Recovered { entries, .. } => self.recovered = Some(entries),
                OwnerCommand::Committed { upto_lsn } => {
                    let w = match (&self.recovery, &self.writer) {
                        (Some(rec), _) => rec.writer().expect("committing"),
                        (None, Some(w)) => w,
                        (None, None) => unreachable!(),
                    };
                    let from = self.committed.last().map_or(w.settled_lsn(), |e| e.lsn);
                    let mut lsn = from.next();
                    while lsn <= upto_lsn {
                        self.committed.push(w.entry(lsn).expect("retained").clone());
                        lsn = lsn.next();
                    }
                }
                _ => {}
            }
        }
        if self.recovered.is_some() && self.recovery.is_some() {
            self.writer = Some(self.recovery.take().expect("checked").into_writer());
        }
    }

    fn append(&mut self, p: &str) {
        self.handle(OwnerEvent::Append {
            payload: payload(p),
        });
        self.handle(OwnerEvent::Flush);
    }
}

/// A link that lets every message to the replicas in `set` through.
fn to(set: &[u16]) -> impl Fn(ReplicaId, &ToReplica) -> bool {
    let set = set.to_vec();
    move |r, _| set.contains(&r.0)
}

/// Raft's figure 8 with external epochs: an entry from an old epoch that a recovery copied to a
/// majority is not committed until the recovery's own barrier is, because a later recovery may
/// still prefer a newer epoch's entry at that LSN.
#[test]
fn figure_8_an_old_epoch_entry_on_a_majority_is_not_committed_by_itself() {
    let (a, b, c) = (0u16, 1u16, 2u16);
    let mut cluster = Cluster::new(3);
    let mut all_committed: Vec<Entry> = Vec::new();

    // Epoch 2 takes the fresh stream (barrier at 1 on all), then writes x at 2 to A only.
    let mut e2 = cluster.owner(2, 1);
    cluster.pump(&mut e2, to(&[a, b, c]));
    assert!(e2.recovered.is_some());
    e2.append("x");
    cluster.pump(&mut e2, to(&[a]));
    all_committed.extend(e2.committed.clone());

    // Epoch 3 seals B and C (A unreachable); its barrier at 2 reaches C only. It dies.
    let mut e3 = cluster.owner(3, 1);
    cluster.pump(&mut e3, |r, m| match m {
        ToReplica::Append(_) => r.0 == c,
        _ => r.0 == b || r.0 == c,
    });
    assert!(e3.recovered.is_none());
    assert_eq!(
        cluster.replicas[c as usize].entry(Lsn(2)),
        Some(&barrier(2, 3))
    );

    // Epoch 4 seals A and B and takes A's tail (x at 2, epoch 2). A takes the barrier at 3; B
    // gets x (after a reconnect probes it from the start) but never the barrier. x is now on a
    // majority (A, B)...
    let mut e4 = cluster.owner(4, 1);
    let link = |r: ReplicaId, m: &ToReplica| match m {
        ToReplica::Append(m) => r.0 == a || (r.0 == b && m.entries.iter().all(|e| e.lsn <= Lsn(2))),
        _ => r.0 == a || r.0 == b,
    };
    cluster.pump(&mut e4, link);
    e4.handle(OwnerEvent::ReplicaDown { replica: r(b) });
    e4.handle(OwnerEvent::ReplicaUp { replica: r(b) });
    cluster.pump(&mut e4, link);
    assert_eq!(
        cluster.replicas[b as usize].entry(Lsn(2)),
        Some(&data(2, 2, "x"))
    );
    // ...but it must not count as committed: epoch 4 commits nothing.
    assert_eq!(e4.committed, vec![], "epoch 4 committed an old-epoch entry");
    assert!(e4.recovered.is_none());

    // Epoch 5 seals B and C: C's barrier of epoch 3 beats B's x of epoch 2.
    let mut e5 = cluster.owner(5, 1);
    cluster.pump(&mut e5, to(&[b, c]));
    let tail = e5.recovered.clone().expect("epoch 5 recovers");
    assert_eq!(tail, vec![barrier(1, 2), barrier(2, 3)]);
    for e in all_committed.iter().chain(&e4.committed) {
        assert_eq!(
            tail.get(e.lsn.0 as usize - 1),
            Some(e),
            "committed {e:?} lost"
        );
    }
}

/// A zombie owner keeps writing after a new owner sealed a quorum: it can still reach the one
/// unsealed replica but never a write quorum, and the new owner's appends fence it there too.
#[test]
fn a_zombie_cannot_commit_after_the_seal_quorum() {
    let (a, b, c) = (0u16, 1u16, 2u16);
    let mut cluster = Cluster::new(3);
    let mut e1 = cluster.owner(1, 1);
    cluster.pump(&mut e1, to(&[a, b, c]));
    e1.append("before");
    cluster.pump(&mut e1, to(&[a, b, c]));
    assert_eq!(e1.committed.last(), Some(&data(2, 1, "before")));

    // Epoch 2 seals A and B; C is cut off from it.
    let mut e2 = cluster.owner(2, 1);
    cluster.pump(&mut e2, |r, m| {
        r.0 != c && !matches!(m, ToReplica::Append(_))
    });
    // The zombie appends: C accepts, A and B fence it.
    e1.append("zombie");
    cluster.pump(&mut e1, to(&[a, b, c]));
    assert_eq!(e1.committed.last(), Some(&data(2, 1, "before")));
    assert!(e1.writer.as_ref().expect("writer").is_fenced());
    assert_eq!(
        cluster.replicas[c as usize].entry(Lsn(3)),
        Some(&data(3, 1, "zombie"))
    );

    // Epoch 2 recovers without the zombie's entry (its probes were lost: they go out again
    // after the timeout) and overwrites it on C.
    e2.handle(OwnerEvent::Tick { now_ms: 1_000 });
    cluster.pump(&mut e2, to(&[a, b, c]));
    let tail = e2.recovered.clone().expect("recovered");
    assert_eq!(tail, vec![barrier(1, 1), data(2, 1, "before")]);
    assert_eq!(
        cluster.replicas[c as usize].entry(Lsn(3)),
        Some(&barrier(3, 2))
    );
}

fn commands_of(w: &mut Writer, event: OwnerEvent) -> Vec<OwnerCommand> {
    let mut out = Vec::new();
    w.handle(event, &mut out);
    out
}

#[test]
fn writer_replaces_a_dead_replica_in_the_safe_order() {
    let (mut w, _) = fresh_writer(ReplicationConfig {
        replace_after_ms: 1_000,
        ..cfg()
    });
    assert_eq!(w.joiner_id(), r(3));
    assert_eq!(commands_of(&mut w, owner_ack(0, 2, 1)), vec![]);
    assert_eq!(commands_of(&mut w, owner_ack(1, 2, 1)), vec![committed(1)]);
    commands_of(&mut w, OwnerEvent::ReplicaDown { replica: r(2) });
    // Unhealthy since it last was caught up (never: 0 ms); reported once the period passed.
    let early = commands_of(&mut w, OwnerEvent::Tick { now_ms: 999 });
    assert!(!early
        .iter()
        .any(|c| matches!(c, OwnerCommand::ReplaceReplica { .. })));
    let due = commands_of(&mut w, OwnerEvent::Tick { now_ms: 1_000 });
    assert!(due.contains(&OwnerCommand::ReplaceReplica {
        replica: r(2),
        unhealthy_since_ms: 0
    }));
    // Once per period.
    let again = commands_of(&mut w, OwnerEvent::Tick { now_ms: 1_500 });
    assert!(!again
        .iter()
        .any(|c| matches!(c, OwnerCommand::ReplaceReplica { .. })));

    // An event for the joiner before a replacement starts is ignored.
    assert_eq!(
        commands_of(&mut w, OwnerEvent::ReplicaUp { replica: r(3) }),
        vec![]
    );
    assert_eq!(
        commands_of(
            &mut w,
            OwnerEvent::Append {
                payload: payload("a")
            }
        ),
        vec![OwnerCommand::Appended { lsn: Lsn(2) }]
    );
    commands_of(&mut w, OwnerEvent::Flush);
    commands_of(&mut w, owner_ack(0, 2, 2));
    assert_eq!(commands_of(&mut w, owner_ack(1, 2, 2)), vec![committed(2)]);

    // Start: the joiner is probed from the trim point once connected.
    assert_eq!(
        commands_of(&mut w, OwnerEvent::ReplaceStart { replica: r(2) }),
        vec![]
    );
    assert_eq!(w.replacing(), Some(r(2)));
    assert_eq!(
        commands_of(&mut w, OwnerEvent::ReplicaUp { replica: r(3) }),
        vec![send(
            3,
            append(2, (0, 0), 0, vec![barrier(1, 2), data(2, 2, "a")])
        )]
    );
    // The replaced replica no longer counts past the target (2), nor does the joiner.
    commands_of(
        &mut w,
        OwnerEvent::Append {
            payload: payload("b"),
        },
    );
    commands_of(&mut w, OwnerEvent::Flush);
    let out = commands_of(&mut w, owner_ack(2, 2, 3));
    assert!(!out
        .iter()
        .any(|c| matches!(c, OwnerCommand::Committed { .. })));
    let out = commands_of(&mut w, owner_ack(0, 2, 3));
    assert!(
        !out.iter()
            .any(|c| matches!(c, OwnerCommand::Committed { .. })),
        "committed with the replaced replica's ack: {out:?}"
    );
    // The joiner caught up to the target: reported once.
    let out = commands_of(&mut w, owner_ack(3, 2, 2));
    assert!(out.contains(&OwnerCommand::ReplacementCaughtUp {
        replica: r(2),
        durable_lsn: Lsn(2)
    }));
    assert!(!out
        .iter()
        .any(|c| matches!(c, OwnerCommand::Committed { .. })));
    assert!(w.replacement_caught_up());
    let out = commands_of(&mut w, owner_ack(3, 2, 3));
    assert!(!out.iter().any(|c| matches!(
        c,
        OwnerCommand::ReplacementCaughtUp { .. } | OwnerCommand::Committed { .. }
    )));

    // Recorded in metadata: the joiner takes slot 2 with what it acknowledged, and counts.
    assert_eq!(
        commands_of(&mut w, OwnerEvent::ReplaceDone { replica: r(2) }),
        vec![]
    );
    assert_eq!(w.replacing(), None);
    assert_eq!(w.acked_lsn(r(2)), Lsn(3));
    assert_eq!(
        commands_of(&mut w, owner_ack(3, 2, 3)),
        vec![],
        "the joiner is gone"
    );
    assert_eq!(commands_of(&mut w, owner_ack(2, 2, 3)), vec![committed(3)]);
}

#[test]
fn a_spare_that_never_answers_is_not_caught_up_even_with_nothing_to_copy() {
    let (mut w, _) = fresh_writer(ReplicationConfig {
        replace_after_ms: 1_000,
        ..cfg()
    });
    commands_of(&mut w, owner_ack(0, 2, 1));
    assert_eq!(commands_of(&mut w, owner_ack(1, 2, 1)), vec![committed(1)]);
    commands_of(&mut w, OwnerEvent::ReplicaDown { replica: r(2) });
    // Everything committed is in object storage: the target is at the trim point.
    commands_of(&mut w, OwnerEvent::Trim { upto_lsn: Lsn(1) });
    commands_of(&mut w, OwnerEvent::ReplaceStart { replica: r(2) });
    // The driver connected (something listens on the spare's port): with nothing to copy,
    // an empty probe at the trim point asks it to answer. It never does.
    assert_eq!(
        commands_of(&mut w, OwnerEvent::ReplicaUp { replica: r(3) }),
        vec![send(3, append(2, (1, 0), 1, vec![]))]
    );
    for now_ms in [10, 1_000, 60_000] {
        let out = commands_of(&mut w, OwnerEvent::Tick { now_ms });
        assert!(
            !out.iter()
                .any(|c| matches!(c, OwnerCommand::ReplacementCaughtUp { .. })),
            "a silent spare was reported caught up at {now_ms} ms: {out:?}"
        );
    }
    assert!(!w.replacement_caught_up());
    // Its first answer (the probe at the trim point acknowledged) makes it caught up.
    let out = commands_of(&mut w, owner_ack(3, 2, 1));
    assert!(
        out.contains(&OwnerCommand::ReplacementCaughtUp {
            replica: r(2),
            durable_lsn: Lsn(1)
        }),
        "{out:?}"
    );
}

#[test]
fn an_aborted_replacement_lets_the_replica_count_again() {
    let (mut w, _) = fresh_writer(ReplicationConfig {
        replace_after_ms: 0,
        ..cfg()
    });
    commands_of(&mut w, owner_ack(0, 2, 1));
    assert_eq!(commands_of(&mut w, owner_ack(1, 2, 1)), vec![committed(1)]);
    // replace_after_ms = 0: never reported.
    commands_of(&mut w, OwnerEvent::ReplicaDown { replica: r(2) });
    let out = commands_of(&mut w, OwnerEvent::Tick { now_ms: 1_000_000 });
    assert!(!out
        .iter()
        .any(|c| matches!(c, OwnerCommand::ReplaceReplica { .. })));
    commands_of(&mut w, OwnerEvent::ReplaceStart { replica: r(2) });
    // A second start while one is under way is ignored; so is a done before the catch-up.
    commands_of(&mut w, OwnerEvent::ReplaceStart { replica: r(1) });
    assert_eq!(w.replacing(), Some(r(2)));
    commands_of(
        &mut w,
        OwnerEvent::Append {
            payload: payload("a"),
        },
    );
    commands_of(&mut w, OwnerEvent::Flush);
    commands_of(&mut w, owner_ack(0, 2, 2));
    assert_eq!(commands_of(&mut w, owner_ack(2, 2, 2)), vec![]);
    commands_of(&mut w, OwnerEvent::ReplaceAborted);
    assert_eq!(w.replacing(), None);
    // Replica 2's ack of 2 counts again with the next ack.
    assert_eq!(commands_of(&mut w, owner_ack(0, 2, 2)), vec![committed(2)]);
}
