//! A meta node keeps its state across shutdown, drop and reopen, with and without snapshots.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use strata_meta::{Command, CommandResult, MetaConfig, MetaError, MetaNode, MetaState, Rejection};
use strata_types::{BlockLocation, TopicId, TopicName};

fn create(name: &str, id: TopicId, partitions: u32) -> Command {
    Command::CreateTopic {
        name: TopicName::new(name).unwrap(),
        id,
        partitions,
        configs: BTreeMap::from([("cleanup.policy".to_owned(), "delete".to_owned())]),
        created_ms: 1_700_000_000_000,
    }
}

/// One object with one block per `(topic, partition, base, end)`.
fn object(key: &str, blocks: &[(TopicId, u32, i64, i64)]) -> Command {
    let blocks: Vec<BlockLocation> = blocks
        .iter()
        .enumerate()
        .map(
            |(i, &(topic, partition, base_offset, end_offset))| BlockLocation {
                key: key.to_owned(),
                topic,
                partition,
                base_offset,
                end_offset,
                position: i as u64 * 64,
                len: 64,
                max_timestamp: end_offset * 10,
                crc32c: 0,
                index_len: 0,
                relative: false,
            },
        )
        .collect();
    Command::CommitObject {
        stream: None,
        key: key.to_owned(),
        size: blocks.len() as u64 * 64,
        blocks,
    }
}

/// Everything a reader can see, in a stable text form (without the raft applied index, which
/// moves on at every restart when the new term's first entry is applied).
fn summary(state: &MetaState) -> String {
    state.check_invariants().unwrap();
    let mut out = String::new();
    for topic in state.topics() {
        out += &format!("{topic:?}\n");
        for p in 0..topic.partitions {
            out += &format!(
                "  p{p} [{}, {})",
                state.indexed_start(topic.id, p),
                state.indexed_end(topic.id, p)
            );
            for block in state.blocks(topic.id, p) {
                out += &format!(" {block:?}");
            }
            out += "\n";
        }
    }
    out += &format!("garbage {:?}\n", state.garbage_keys().collect::<Vec<_>>());
    out += &format!("next producer id {}\n", state.next_producer_id());
    out
}

async fn write_ok(node: &MetaNode, cmd: Command) -> CommandResult {
    let result = node.write(cmd).await.expect("write");
    assert!(!matches!(result, CommandResult::Rejected(_)), "{result:?}");
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_shutdown_drop_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let meta_dir = dir.path().join("meta");
    let (orders, clicks, gone) = (TopicId::random(), TopicId::random(), TopicId::random());

    let node = MetaNode::open(&meta_dir, 1).await.unwrap();
    assert!(meta_dir.join("meta.redb").exists());
    let mut applied = node.subscribe();
    let before = *applied.borrow_and_update();

    let created = write_ok(&node, create("orders", orders, 2)).await;
    assert!(matches!(created, CommandResult::TopicCreated(ref m) if m.id == orders));
    assert!(
        applied.has_changed().unwrap(),
        "subscribers hear about applies"
    );
    assert!(*applied.borrow_and_update() > before);

    write_ok(&node, create("clicks", clicks, 1)).await;
    write_ok(&node, create("gone", gone, 1)).await;
    write_ok(
        &node,
        object(
            "o1",
            &[(orders, 0, 0, 10), (orders, 1, 0, 4), (gone, 0, 0, 3)],
        ),
    )
    .await;
    write_ok(
        &node,
        object("o2", &[(orders, 0, 10, 25), (clicks, 0, 0, 7)]),
    )
    .await;
    write_ok(&node, object("o3", &[(gone, 0, 3, 9)])).await;
    let pids = write_ok(&node, Command::AllocateProducerIds { count: 1000 }).await;
    assert_eq!(pids, CommandResult::ProducerIdsAllocated { first: 0 });
    write_ok(
        &node,
        Command::DeleteTopic {
            name: TopicName::new("gone").unwrap(),
        },
    )
    .await;
    // Results of rejected commands come back as data, and the read view is updated on return.
    let rejected = node
        .write(object("o4", &[(orders, 0, 30, 40)]))
        .await
        .unwrap();
    assert_eq!(
        rejected,
        CommandResult::Rejected(Rejection::OffsetGap {
            topic: orders,
            partition: 0,
            expected: 25,
            got: 30
        })
    );
    assert_eq!(node.read().indexed_end(orders, 0), 25);
    assert_eq!(node.read().garbage_keys().collect::<Vec<_>>(), ["o3"]);
    let expected = summary(&node.read());

    node.shutdown().await.unwrap();
    assert!(matches!(
        node.write(create("late", TopicId::random(), 1)).await,
        Err(MetaError::ShutDown)
    ));

    // Reopen after a clean shutdown.
    let node = MetaNode::open(&meta_dir, 1).await.unwrap();
    assert_eq!(summary(&node.read()), expected);
    assert_eq!(
        node.read()
            .find_block(orders, 0, 12)
            .map(|b| b.key.as_str()),
        Some("o2")
    );
    // A retry of an object committed before the restart is still idempotent.
    write_ok(
        &node,
        object(
            "o1",
            &[(orders, 0, 0, 10), (orders, 1, 0, 4), (gone, 0, 0, 3)],
        ),
    )
    .await;
    write_ok(&node, object("o5", &[(orders, 1, 4, 6)])).await;
    // Producer ids handed out before the restart are never handed out again.
    let pids = write_ok(&node, Command::AllocateProducerIds { count: 10 }).await;
    assert_eq!(pids, CommandResult::ProducerIdsAllocated { first: 1000 });
    let expected = summary(&node.read());

    // Reopen after a plain drop: the store is released in the background.
    drop(node);
    let node = MetaNode::open(&meta_dir, 1).await.unwrap();
    assert_eq!(summary(&node.read()), expected);

    // The store remembers its node.
    node.shutdown().await.unwrap();
    let err = MetaNode::open(&meta_dir, 2).await.unwrap_err();
    assert!(
        matches!(
            err,
            MetaError::NodeIdMismatch {
                stored: 1,
                given: 2
            }
        ),
        "{err}"
    );
}

type Metrics = openraft::RaftMetrics<u64, openraft::BasicNode>;

async fn wait_for(node: &MetaNode, what: &str, cond: impl Fn(&Metrics) -> bool + Send) {
    node.raft()
        .wait(Some(Duration::from_secs(20)))
        .metrics(cond, what)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

fn small_snapshots() -> MetaConfig {
    MetaConfig {
        snapshot_logs_since_last: 50,
        snapshot_logs_kept: 0,
        ..MetaConfig::default()
    }
}

async fn commit_many(node: &MetaNode, topic: TopicId, from: i64, count: i64) {
    for i in from..from + count {
        write_ok(
            node,
            object(&format!("obj-{i:05}"), &[(topic, 0, i * 10, i * 10 + 10)]),
        )
        .await;
    }
}

fn check_dir(dir: &Path) {
    assert!(dir.join("meta.redb").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_snapshot_purge_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let topic = TopicId::random();

    let node = MetaNode::open_with(dir.path(), 7, small_snapshots())
        .await
        .unwrap();
    write_ok(&node, create("history", topic, 1)).await;
    // Allocated before the snapshot: the counter must come back from it.
    write_ok(&node, Command::AllocateProducerIds { count: 1000 }).await;
    commit_many(&node, topic, 0, 180).await;
    let last = node.read().last_applied();
    wait_for(&node, "snapshot and purge", |m| {
        m.snapshot.is_some_and(|s| s.index >= 100) && m.purged.is_some_and(|p| p.index >= 100)
    })
    .await;
    let expected = summary(&node.read());
    node.shutdown().await.unwrap();
    check_dir(dir.path());

    // On reopen the state comes from the snapshot plus the re-applied entries after it.
    let node = MetaNode::open_with(dir.path(), 7, small_snapshots())
        .await
        .unwrap();
    {
        let metrics = node.raft().metrics().borrow().clone();
        assert!(
            metrics.purged.is_some_and(|p| p.index >= 100),
            "{metrics:?}"
        );
        assert!(
            metrics.snapshot.is_some_and(|s| s.index >= 100),
            "{metrics:?}"
        );
    }
    assert_eq!(summary(&node.read()), expected);
    assert_eq!(node.read().next_producer_id(), 1000);
    assert!(node.read().last_applied() >= last);
    assert_eq!(node.read().indexed_end(topic, 0), 1_800);
    assert_eq!(
        node.read()
            .find_block(topic, 0, 1_234)
            .map(|b| b.key.as_str()),
        Some("obj-00123")
    );
    assert_eq!(
        node.read()
            .find_block_by_time(topic, 0, 5_001)
            .map(|b| b.base_offset),
        Some(500)
    );

    // Work goes on after recovery, and survives another round.
    commit_many(&node, topic, 180, 20).await;
    let expected = summary(&node.read());
    node.shutdown().await.unwrap();
    let node = MetaNode::open_with(dir.path(), 7, small_snapshots())
        .await
        .unwrap();
    assert_eq!(summary(&node.read()), expected);
    assert_eq!(node.read().indexed_end(topic, 0), 2_000);
    node.shutdown().await.unwrap();
}
