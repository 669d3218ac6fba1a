//! `RemoteMeta` against a three-node meta group in this process, over the real gRPC transport
//! on 127.0.0.1: a client that knows only a follower finds the leader through its hint; its
//! state reads are linearizable (they see writes made through members) and cached (an unchanged
//! state is the same `Arc`); it finds a new leader after the old one stops; and with every member
//! gone it fails within its timeout, naming the addresses it tried.

mod common;

use common::{create_topic, object, summary, Cluster, TOPIC, WAIT};
use std::sync::Arc;
use std::time::Duration;
use strata_meta::{CommandResult, MetaError, RemoteMeta};

/// An address where nothing listens (bound, then released).
fn dead_addr() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_client_follows_the_leader_reads_linearizably_and_survives_fail_over() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let followers = cluster.followers(leader);
    let addr = |id: u64| cluster.addrs[&id].to_string();

    // Knows only a follower: the first call follows its NotLeader hint to the leader.
    let via_follower = RemoteMeta::new(vec![addr(followers[0])], WAIT).unwrap();
    let created = via_follower.write(create_topic(3)).await.unwrap();
    assert!(
        matches!(created, CommandResult::TopicCreated(_)),
        "{created:?}"
    );
    // A rejected command is a result, not an error.
    let again = via_follower.write(create_topic(3)).await.unwrap();
    assert!(matches!(again, CommandResult::Rejected(_)), "{again:?}");
    let state = via_follower.state().await.unwrap();
    assert!(state.topic("cluster").is_some());
    assert_eq!(state.indexed_end(TOPIC, 0), 0);

    // Nothing applied since: the leader answers `unchanged` and the client the same Arc.
    let same = via_follower.state().await.unwrap();
    assert!(
        Arc::ptr_eq(&state, &same),
        "an unchanged state was fetched again"
    );
    // Clones share the cache.
    let clone = via_follower.clone();
    assert!(Arc::ptr_eq(&state, &clone.state().await.unwrap()));

    // A write acknowledged by a member is in the next remote read, whichever node took it.
    cluster
        .node(followers[1])
        .write(object(0, 0))
        .await
        .unwrap();
    let after = via_follower.state().await.unwrap();
    assert!(!Arc::ptr_eq(&state, &after));
    assert_eq!(after.indexed_end(TOPIC, 0), 5);
    assert!(after.last_applied() > state.last_applied());
    assert_eq!(summary(&after), cluster.converged().await);

    // A second client knows every member, and learns the leader as its first answer.
    let knows_all =
        RemoteMeta::new(cluster.peers.iter().map(|(_, a)| a.clone()).collect(), WAIT).unwrap();
    assert_eq!(
        knows_all.write(object(1, 0)).await.unwrap(),
        CommandResult::ObjectCommitted
    );
    assert_eq!(via_follower.state().await.unwrap().indexed_end(TOPIC, 1), 5);

    // The leader stops. Both clients find the new one: the follower-only one through its
    // follower, the other one after its remembered leader refuses connections.
    cluster.stop(leader).await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    assert_eq!(
        knows_all.write(object(1, 5)).await.unwrap(),
        CommandResult::ObjectCommitted
    );
    assert_eq!(
        via_follower.write(object(2, 0)).await.unwrap(),
        CommandResult::ObjectCommitted
    );
    let state = knows_all.state().await.unwrap();
    assert_eq!(state.indexed_end(TOPIC, 0), 5);
    assert_eq!(state.indexed_end(TOPIC, 1), 10);
    assert_eq!(state.indexed_end(TOPIC, 2), 5);
    assert_eq!(summary(&state), cluster.converged().await);
    assert_eq!(
        summary(&via_follower.state().await.unwrap()),
        summary(&state)
    );

    // With every member gone, calls fail within the timeout, naming what they tried.
    let short = RemoteMeta::new(
        cluster.peers.iter().map(|(_, a)| a.clone()).collect(),
        Duration::from_secs(2),
    )
    .unwrap();
    let peers = cluster.peers.clone();
    cluster.shutdown().await;
    let err = short.state().await.unwrap_err();
    assert!(
        matches!(err, MetaError::RemoteUnavailable { .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    for (_, a) in &peers {
        assert!(err.to_string().contains(a.as_str()), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_members_are_an_error_naming_every_address() {
    let dead = vec![dead_addr(), dead_addr()];
    let remote = RemoteMeta::new(dead.clone(), Duration::from_millis(1_500)).unwrap();
    for err in [
        remote.state().await.unwrap_err(),
        remote.write(create_topic(1)).await.unwrap_err(),
    ] {
        let MetaError::RemoteUnavailable { tried, last, .. } = &err else {
            panic!("expected RemoteUnavailable, got {err:?}");
        };
        for addr in &dead {
            assert!(tried.contains(addr.as_str()), "{err}");
        }
        assert!(!last.is_empty(), "{err}");
        // A write that could not connect was never sent: safe to retry.
        assert!(err.is_retryable(), "{err}");
    }
}
