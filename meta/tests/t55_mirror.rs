//! `MetaMirror` and the `Follow` stream against a three-node meta group in this process, over
//! the real gRPC transport on 127.0.0.1: a mirror reaches exactly a member's state (compared as
//! the serialized `MetaState`, applied index included) after writes made through it and through
//! members; it reads its own writes; it keeps following after the leader stops; and a member
//! whose log no longer reaches back to the caller's index answers `Resnapshot`; a mirror whose
//! only member was away while the group wrote on catches up once it is back.

mod common;

use common::{create_topic, eventually, object, Cluster, TOPIC, WAIT};
use strata_meta::grpc::{pb, WIRE_FORMAT};
use strata_meta::{CommandResult, MetaError, MetaMirror, MetaNode, MetaState, RemoteMeta};

fn json(state: &MetaState) -> serde_json::Value {
    serde_json::to_value(state).unwrap()
}

/// Waits until the mirror's state is the member's, byte for byte of its JSON.
async fn same_as(mirror: &MetaMirror, member: &MetaNode) {
    eventually("the mirror to equal a member", || {
        (json(&mirror.read()) == json(&member.read())).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_equals_a_member_reads_its_writes_and_follows_across_a_leader_stop() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let followers = cluster.followers(leader);
    let all: Vec<String> = cluster.peers.iter().map(|(_, a)| a.clone()).collect();
    let remote = RemoteMeta::new(all, WAIT).unwrap();
    let mirror = MetaMirror::start(remote, WAIT).await.unwrap();
    let changes = mirror.subscribe();

    // Its own write is visible at once: `write` waits until the mirror applied it.
    let created = mirror.write(create_topic(4)).await.unwrap();
    assert!(
        matches!(created, CommandResult::TopicCreated(_)),
        "{created:?}"
    );
    assert!(mirror.read().topic("cluster").is_some());
    assert!(changes.has_changed().unwrap());
    let rejected = mirror.write(create_topic(4)).await.unwrap();
    assert!(
        matches!(rejected, CommandResult::Rejected(_)),
        "{rejected:?}"
    );

    // Writes through members arrive through the stream; after `sync` every one is visible.
    for base in (0..50).step_by(5) {
        let node = cluster.node(followers[(base as usize / 5) % 2]);
        assert_eq!(
            node.write(object((base / 5 % 4) as u32, base / 20 * 5))
                .await
                .unwrap(),
            CommandResult::ObjectCommitted
        );
    }
    mirror.sync().await.unwrap();
    let ends: Vec<i64> = (0..4)
        .map(|p| mirror.read().indexed_end(TOPIC, p))
        .collect();
    assert_eq!(ends, [15, 15, 10, 10]);
    cluster.node(leader).sync().await.unwrap();
    same_as(&mirror, cluster.node(leader)).await;

    // The leader stops; the mirror follows another member and keeps reading its writes.
    cluster.stop(leader).await;
    let new_leader = cluster.leader().await;
    for round in 0..30 {
        let partition = round % 4;
        let base = mirror.read().indexed_end(TOPIC, partition);
        // A write cut off by the stop may have been applied: committing the same object
        // again is a no-op, so the test may repeat it.
        let mut written = mirror.write(object(partition, base)).await;
        if matches!(written, Err(MetaError::RemoteOutcomeUnknown { .. })) {
            written = mirror.write(object(partition, base)).await;
        }
        assert_eq!(written.unwrap(), CommandResult::ObjectCommitted);
        assert_eq!(mirror.read().indexed_end(TOPIC, partition), base + 5);
    }
    cluster.node(new_leader).sync().await.unwrap();
    same_as(&mirror, cluster.node(new_leader)).await;

    // The old leader comes back (catching up, by snapshot if its log is too old); a second
    // mirror started now equals the first one.
    cluster.restart(leader).await;
    let second = MetaMirror::start(
        RemoteMeta::new(vec![cluster.addrs[&leader].to_string()], WAIT).unwrap(),
        WAIT,
    )
    .await
    .unwrap();
    mirror.sync().await.unwrap();
    second.sync().await.unwrap();
    assert_eq!(json(&second.read()), json(&mirror.read()));
    same_as(&second, cluster.node(leader)).await;
    mirror.shutdown();
    second.shutdown();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_from_a_purged_index_answers_resnapshot_and_a_current_one_streams() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let node = cluster.node(leader);
    node.write(create_topic(1)).await.unwrap();
    // The test config snapshots every 20 entries and keeps 5 behind: index 1 is purged.
    for base in (0..200).step_by(5) {
        node.write(object(0, base)).await.unwrap();
    }
    let addr = format!("http://{}", cluster.addrs[&leader]);
    let mut client = pb::meta_client::MetaClient::connect(addr).await.unwrap();
    let follow = |from_applied| pb::FollowRequest {
        format: WIRE_FORMAT,
        from_applied,
    };

    let mut stream = client.follow(follow(1)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(first.event, Some(pb::follow_event::Event::Resnapshot(_))),
        "{first:?}"
    );
    assert!(
        stream.message().await.unwrap().is_none(),
        "the stream goes on"
    );

    // From a few entries back: those entries, in order, then live ones.
    let applied = node.read().last_applied();
    let mut stream = client
        .follow(follow(applied - 3))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    for _ in 0..3 {
        match stream.message().await.unwrap().unwrap().event {
            Some(pb::follow_event::Event::Entry(e)) => seen.push(e.index),
            other => panic!("expected an entry, got {other:?}"),
        }
    }
    assert_eq!(seen, [applied - 2, applied - 1, applied]);
    node.write(object(0, 200)).await.unwrap();
    let live = tokio::time::timeout(WAIT, stream.message()).await.unwrap();
    match live.unwrap().unwrap().event {
        Some(pb::follow_event::Event::Entry(e)) => {
            assert_eq!(e.index, applied + 1);
            assert!(!e.command_json.is_empty());
        }
        other => panic!("expected the live entry, got {other:?}"),
    }

    // Another format is refused.
    let refused = client
        .follow(pb::FollowRequest {
            format: WIRE_FORMAT + 1,
            from_applied: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    drop(stream);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_whose_only_member_was_away_catches_up_with_the_group() {
    let mut cluster = Cluster::start(&[1, 2, 3, 4, 5]).await;
    let leader = cluster.leader().await;
    let followed = cluster.followers(leader)[0];
    // The mirror knows only `followed`: once the leader it found first is gone, it can follow
    // nobody else.
    let remote = RemoteMeta::new(vec![cluster.addrs[&followed].to_string()], WAIT).unwrap();
    let mirror = MetaMirror::start(remote, WAIT).await.unwrap();
    mirror.write(create_topic(1)).await.unwrap();
    cluster.stop(leader).await;
    cluster.leader().await;

    // `followed` stops too (it may lead by now); the group (3 of 5) writes on far past its
    // snapshot policy (every 20 entries, 5 kept). When `followed` comes back it catches up
    // (by log or by snapshot; after a snapshot it cannot stream the entries the mirror missed
    // and the mirror reads the whole state again), and so does the mirror.
    cluster.stop(followed).await;
    let writer = cluster.node(cluster.leader().await).clone();
    for base in (0..300).step_by(5) {
        assert_eq!(
            writer.write(object(0, base)).await.unwrap(),
            CommandResult::ObjectCommitted
        );
    }
    assert_eq!(mirror.read().indexed_end(TOPIC, 0), 0);
    cluster.restart(followed).await;
    mirror.sync().await.unwrap();
    assert_eq!(mirror.read().indexed_end(TOPIC, 0), 300);
    // And it follows on from there.
    let base = mirror.read().indexed_end(TOPIC, 0);
    assert_eq!(
        mirror.write(object(0, base)).await.unwrap(),
        CommandResult::ObjectCommitted
    );
    cluster.node(followed).sync().await.unwrap();
    same_as(&mirror, cluster.node(followed)).await;
    println!("whole-state reads: {}", mirror.resnapshots());
    mirror.shutdown();
    cluster.shutdown().await;
}
