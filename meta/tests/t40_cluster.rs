//! A three-node meta group in one process, over the real gRPC transport on 127.0.0.1:
//! election, writes through followers, fail-over, catch-up after a restart (through a snapshot
//! transfer), and membership changes at run time.

mod common;

use common::{config, create_topic, eventually, summary, Cluster, Writer, TOPIC};
use strata_meta::{CommandResult, MetaNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_fail_over_and_a_restarted_node_catches_up() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let followers = cluster.followers(leader);
    assert_eq!(followers.len(), 2);
    for node in cluster.nodes.values() {
        let membership = node.membership();
        assert_eq!(membership.voters.len(), 3, "{membership:?}");
        for (id, addr) in &cluster.peers {
            assert_eq!(&membership.voters[id], addr);
        }
    }

    // A follower forwards writes to the leader and reads its own writes at once.
    let created = cluster
        .node(followers[0])
        .write(create_topic(3))
        .await
        .unwrap();
    assert!(
        matches!(created, CommandResult::TopicCreated(_)),
        "{created:?}"
    );
    assert!(cluster.node(followers[0]).read().topic("cluster").is_some());
    let mut writer = Writer::default();
    for i in 0..15 {
        let via = [leader, followers[0], followers[1]][i % 3];
        writer.commit(cluster.node(via), (i % 3) as u32).await;
    }
    let before = cluster.converged().await;

    // The leader goes; the other two elect a new one and writes continue through both.
    let old_leader_last_log = cluster
        .node(leader)
        .raft()
        .metrics()
        .borrow()
        .last_log_index
        .unwrap();
    cluster.stop(leader).await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    // Enough writes for the new leader to snapshot and purge past the old leader's log.
    for i in 0..60 {
        let via = followers[i % 2];
        writer.commit(cluster.node(via), (i % 3) as u32).await;
    }
    let after = cluster.converged().await;
    assert_ne!(before, after);
    let purged = eventually("the new leader to purge its log", || {
        let metrics = cluster.node(new_leader).raft().metrics();
        let purged = metrics.borrow().purged.map_or(0, |id| id.index);
        (purged > old_leader_last_log).then_some(purged)
    })
    .await;
    eprintln!("old leader's log ends at {old_leader_last_log}; new leader purged to {purged}");

    // The old leader comes back from its directory. The entries it misses are gone from the
    // leader's log, so it catches up through a snapshot; `open_cluster` returns once its read
    // view holds every acknowledged write.
    cluster.restart(leader).await;
    assert_eq!(summary(&cluster.node(leader).read()), after);
    for p in 0..3 {
        assert_eq!(
            cluster.node(leader).read().indexed_end(TOPIC, p),
            writer.end(p)
        );
    }
    // And it takes writes again (as a follower: the group keeps its leader).
    for i in 0..6 {
        writer.commit(cluster.node(leader), (i % 3) as u32).await;
    }
    cluster.converged().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_promoted_and_removed_at_run_time() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let followers = cluster.followers(leader);
    cluster
        .node(followers[0])
        .write(create_topic(2))
        .await
        .unwrap();
    let mut writer = Writer::default();
    for i in 0..10 {
        writer
            .commit(cluster.node(followers[i % 2]), (i % 2) as u32)
            .await;
    }

    // Node 4 starts outside the group and is added as a learner (through a follower).
    let addr4 = cluster.start_joiner(4).await;
    assert_eq!(cluster.node(4).leader(), None);
    let view = cluster
        .node(followers[1])
        .add_learner(4, addr4.to_string())
        .await
        .unwrap();
    assert_eq!(view.learners.get(&4), Some(&addr4.to_string()), "{view:?}");
    assert_eq!(view.voters.len(), 3);
    cluster.node(4).sync().await.unwrap();
    assert_eq!(cluster.node(4).read().indexed_end(TOPIC, 1), writer.end(1));
    // A learner forwards writes too.
    writer.commit(cluster.node(4), 0).await;

    // Promoted to voter, through the learner itself.
    let view = cluster
        .node(4)
        .change_membership([1, 2, 3, 4], false)
        .await
        .unwrap();
    assert_eq!(
        view.voters.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(view.learners.is_empty() && !view.joint, "{view:?}");

    // The leader is removed; it steps down and the other three go on.
    let remaining: Vec<u64> = [1, 2, 3, 4]
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    let view = cluster
        .node(followers[0])
        .change_membership(remaining.clone(), false)
        .await
        .unwrap();
    assert_eq!(view.voters.keys().copied().collect::<Vec<_>>(), remaining);
    cluster.stop(leader).await;
    let new_leader = cluster.leader().await;
    assert!(remaining.contains(&new_leader));
    for (i, id) in remaining.iter().enumerate() {
        writer.commit(cluster.node(*id), (i % 2) as u32).await;
    }
    let state = cluster.converged().await;
    for node in cluster.nodes.values() {
        let membership = node.membership();
        assert_eq!(
            membership.voters.keys().copied().collect::<Vec<_>>(),
            remaining,
            "node {}",
            node.node_id()
        );
    }
    assert!(
        state.contains(&format!("p0 [0, {})", writer.end(0))),
        "{state}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_store_grows_into_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let dir1 = dir.path().join("meta-1");
    let mut writer = Writer::default();
    {
        let node = MetaNode::open_with(&dir1, 1, config()).await.unwrap();
        node.write(create_topic(1)).await.unwrap();
        writer.commit(&node, 0).await;
        assert_eq!(
            node.membership().voters[&1],
            "",
            "`open` records no address"
        );
        node.shutdown().await.unwrap();
    }

    // The same store, now served: node 1 leads alone and records its address.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr1 = listener.local_addr().unwrap().to_string();
    let node1 = MetaNode::open_cluster_with(
        &dir1,
        1,
        strata_meta::ClusterConfig {
            listener,
            peers: vec![(1, addr1.clone())],
            routes: Default::default(),
        },
        config(),
    )
    .await
    .unwrap();
    assert!(node1.is_leader());
    assert_eq!(node1.membership().voters[&1], addr1);

    // Two fresh nodes join, as learners first, then as voters.
    let mut others = Vec::new();
    for id in [2u64, 3] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let node = MetaNode::open_cluster_with(
            &dir.path().join(format!("meta-{id}")),
            id,
            strata_meta::ClusterConfig {
                listener,
                peers: vec![(1, addr1.clone())],
                routes: Default::default(),
            },
            config(),
        )
        .await
        .unwrap();
        node1.add_learner(id, addr).await.unwrap();
        others.push(node);
    }
    let view = node1.change_membership([1, 2, 3], false).await.unwrap();
    assert_eq!(view.voters.len(), 3, "{view:?}");
    writer.commit(&others[1], 0).await;

    // Now the first node can go and the group goes on.
    node1.shutdown().await.unwrap();
    eventually("nodes 2 and 3 to elect a leader", || {
        others.iter().any(MetaNode::is_leader).then_some(())
    })
    .await;
    writer.commit(&others[0], 0).await;
    writer.commit(&others[1], 0).await;
    // Node 2 may not have applied node 3's last write yet; after `sync` it has.
    others[0].sync().await.unwrap();
    assert_eq!(
        summary(&others[0].read()),
        summary(&others[1].read()),
        "after sync, node 2 reads what node 3 wrote"
    );
    for node in others {
        node.shutdown().await.unwrap();
    }
}
