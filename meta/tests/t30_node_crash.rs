//! Every acknowledged write survives `kill -9` of the meta node's process.
//!
//! The test runs itself twice: as the parent it starts a copy of this test binary as a child
//! (selected by an environment variable), which opens a meta node and commits objects,
//! printing each acknowledged end offset; the parent kills it with SIGKILL mid-stream, reopens
//! the store and checks that every acknowledged object is indexed.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};
use strata_meta::{Command, CommandResult, MetaConfig, MetaNode};
use strata_types::{BlockLocation, TopicId, TopicName};

const CHILD_DIR_ENV: &str = "STRATA_META_CRASH_CHILD_DIR";
const TOPIC_ID: TopicId = TopicId(uuid::Uuid::from_u128(
    0x5747_a7a0_0000_4000_8000_0000_0000_0001,
));
/// Acknowledged objects to see before the kill; the child never stops on its own before
/// `CHILD_OBJECTS_MAX`.
const ACKED_BEFORE_KILL: i64 = 150;
const CHILD_OBJECTS_MAX: i64 = 100_000;

fn config() -> MetaConfig {
    // Small snapshots, so recovery goes through snapshot + purge + re-apply.
    MetaConfig {
        snapshot_logs_since_last: 40,
        snapshot_logs_kept: 5,
        ..MetaConfig::default()
    }
}

fn object(i: i64) -> Command {
    let key = format!("obj-{i:06}");
    Command::CommitObject {
        stream: None,
        key: key.clone(),
        size: 100,
        blocks: vec![BlockLocation {
            key,
            topic: TOPIC_ID,
            partition: 0,
            base_offset: i * 5,
            end_offset: i * 5 + 5,
            position: 0,
            len: 100,
            max_timestamp: i,
            crc32c: 0,
            index_len: 0,
            relative: false,
        }],
    }
}

async fn child(dir: &str) {
    let node = MetaNode::open_with(dir.as_ref(), 1, config())
        .await
        .expect("open");
    let create = Command::CreateTopic {
        name: TopicName::new("crash").unwrap(),
        id: TOPIC_ID,
        partitions: 1,
        configs: Default::default(),
        created_ms: 0,
    };
    assert!(matches!(
        node.write(create).await.unwrap(),
        CommandResult::TopicCreated(_)
    ));
    let mut out = std::io::stdout().lock();
    for i in 0..CHILD_OBJECTS_MAX {
        let result = node.write(object(i)).await.expect("write");
        assert_eq!(result, CommandResult::ObjectCommitted);
        writeln!(out, "acked {}", i * 5 + 5).unwrap();
        out.flush().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        child(&dir).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Process::new(std::env::current_exe().unwrap())
        .args([
            "acknowledged_writes_survive_kill_9",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = proc.stdout.take().unwrap();
    let started = Instant::now();
    let acked = tokio::task::spawn_blocking(move || {
        let mut acked = 0i64;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(end) = line.strip_prefix("acked ") {
                acked = end.parse().unwrap();
                if acked >= ACKED_BEFORE_KILL * 5 {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "child is too slow"
            );
        }
        (acked, proc)
    });
    let (acked, mut proc) = acked.await.unwrap();
    assert!(
        acked >= ACKED_BEFORE_KILL * 5,
        "child ended early after {acked}"
    );
    proc.kill().unwrap(); // SIGKILL
    proc.wait().unwrap();

    let node = MetaNode::open_with(dir.path(), 1, config()).await.unwrap();
    {
        let state = node.read();
        state.check_invariants().unwrap();
        let end = state.indexed_end(TOPIC_ID, 0);
        assert!(
            end >= acked,
            "acknowledged up to {acked}, recovered up to {end}"
        );
        assert_eq!(state.blocks(TOPIC_ID, 0).count() as i64, end / 5);
    }
    node.shutdown().await.unwrap();
}
