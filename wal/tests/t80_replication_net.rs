//! The replicated WAL end to end: replica servers and stream owners in-process, over real
//! sockets on 127.0.0.1 and real files in temporary directories.

mod common;

use std::time::{Duration, Instant};

use common::net::*;
use strata_wal::net::store::{stream_dir, StreamStore, StreamStoreConfig};
use strata_wal::net::{
    frame, NetError, OwnerError, ReplicaServer, ReplicaServerConfig, StreamOwner,
};
use strata_wal::replication::{DurableState, EntryKind, Epoch, Lsn, ToReplica};
use strata_wal::WalError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STREAM: u64 = 42;
const PAYLOAD_LEN: usize = 100;

/// Appends entries `range` in groups (append × group, then one flush), optionally waiting for
/// each group to commit, and waits for the last one. Runs on a blocking thread.
fn append_groups(
    owner: &StreamOwner,
    range: std::ops::Range<u64>,
    group: usize,
    wait_each_group: bool,
) -> Vec<(u64, Vec<u8>)> {
    let mut appended = Vec::new();
    let ids: Vec<u64> = range.collect();
    for chunk in ids.chunks(group) {
        for &i in chunk {
            let payload = net_payload(i, PAYLOAD_LEN);
            let lsn = owner.append(&payload).expect("append");
            if let Some(&(prev, _)) = appended.last() {
                assert_eq!(lsn, prev + 1, "LSNs are dense");
            }
            appended.push((lsn, payload));
        }
        owner.flush();
        if wait_each_group {
            let last = appended.last().expect("appended").0;
            owner.wait_committed_blocking(last).expect("commit");
        }
    }
    let last = appended.last().expect("appended").0;
    owner.wait_committed_blocking(last).expect("commit");
    assert!(owner.committed_lsn() >= last);
    appended
}

async fn append_on_thread(
    owner: &StreamOwner,
    range: std::ops::Range<u64>,
    group: usize,
    wait_each_group: bool,
) -> Vec<(u64, Vec<u8>)> {
    let owner = owner.clone();
    tokio::task::spawn_blocking(move || append_groups(&owner, range, group, wait_each_group))
        .await
        .expect("appender thread")
}

fn data_entries(state: &DurableState) -> Vec<(u64, Vec<u8>)> {
    state
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Data)
        .map(|e| (e.lsn.0, e.payload.to_vec()))
        .collect()
}

fn open_store(dir: &std::path::Path) -> DurableState {
    let cfg = server_config(dir);
    let (_, state) = StreamStore::open(StreamStoreConfig {
        dir: stream_dir(dir, STREAM),
        segment_bytes_max: cfg.segment_bytes_max,
        entry_bytes_max: cfg.entry_bytes_max,
    })
    .expect("open the stream store");
    state
}

/// R = 3, W = 2: pipelined appends commit; one replica is stopped while appending and commits
/// go on with two; restarted from its directory it catches up; a second owner (epoch 2)
/// recovers exactly every committed entry in order; the first owner is fenced; and every
/// replica's durable log ends up identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_restart_catch_up_and_fence() {
    init_tracing();
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut servers: Vec<Option<TestReplica>> = dirs
        .iter()
        .map(|d| Some(TestReplica::start(d.path(), None)))
        .collect();
    let cfg = {
        let refs: Vec<&TestReplica> = servers.iter().flatten().collect();
        owner_config(STREAM, &refs, 2)
    };

    let (owner1, recovered) = StreamOwner::recover(cfg.clone(), 1, 1)
        .await
        .expect("recover epoch 1");
    assert!(recovered.is_empty(), "a fresh stream recovers nothing");
    assert_eq!(owner1.committed_lsn(), 1, "the barrier of epoch 1 is lsn 1");
    assert_eq!(owner1.replicas_up(), 3);

    // Phase 1: thousands of pipelined appends.
    let mut expected = append_on_thread(&owner1, 0..3000, 50, false).await;
    assert_eq!(expected.first().map(|e| e.0), Some(2));
    assert_eq!(owner1.committed_lsn(), 3001);

    // Phase 2: stop replica 2 while an appender runs.
    let appender = {
        let owner = owner1.clone();
        tokio::task::spawn_blocking(move || append_groups(&owner, 3000..5000, 20, true))
    };
    owner1
        .wait_committed(3300)
        .await
        .expect("appender under way");
    let stopped = servers[2].take().expect("replica 2");
    let addr2 = stopped.addr;
    stopped.stop().await;
    eventually("the owner sees replica 2 down", || {
        owner1.replicas_up() == 2
    })
    .await;
    let last_when_down = owner1.last_lsn();
    expected.extend(appender.await.expect("appender"));
    // And more, certainly after the replica is gone: commits go on with two of three.
    expected.extend(append_on_thread(&owner1, 5000..5500, 25, true).await);
    let last = expected.last().expect("entries").0;
    assert!(owner1.committed_lsn() >= last);
    assert!(last >= last_when_down + 500);
    let acked = owner1.stats().acked_lsns;
    assert!(
        acked[2] <= last_when_down,
        "replica 2 acked {} while down",
        acked[2]
    );

    // Phase 3: restart replica 2 from its directory; it catches up.
    servers[2] = Some(TestReplica::start(dirs[2].path(), Some(addr2)));
    eventually("replica 2 reconnects", || owner1.replicas_up() == 3).await;
    expected.extend(append_on_thread(&owner1, 5500..6000, 50, false).await);
    let last = expected.last().expect("entries").0;
    eventually("replica 2 acknowledges everything", || {
        owner1.stats().acked_lsns[2] == last
    })
    .await;
    let restarted = servers[2].as_ref().expect("replica 2");
    eventually("replica 2 has everything on disk", || {
        restarted
            .stream(STREAM)
            .is_some_and(|s| s.durable_lsn == last)
    })
    .await;
    assert_eq!(owner1.committed_lsn(), last);

    // Phase 4: a new owner at epoch 2 recovers exactly the committed entries, in order.
    let (owner2, recovered) = StreamOwner::recover(cfg.clone(), 2, 1)
        .await
        .expect("recover epoch 2");
    let recovered: Vec<(u64, Vec<u8>)> =
        recovered.into_iter().map(|e| (e.lsn, e.payload)).collect();
    assert_eq!(recovered.len(), expected.len());
    assert!(
        recovered == expected,
        "epoch 2 recovers every committed entry"
    );
    assert_eq!(owner2.committed_lsn(), last + 1, "the barrier of epoch 2");

    // The first owner is fenced: its next append cannot commit, and later calls fail.
    match owner1.append(b"zombie") {
        Ok(lsn) => {
            owner1.flush();
            assert_eq!(
                owner1.wait_committed(lsn).await,
                Err(OwnerError::Fenced { sealed_epoch: 2 })
            );
        }
        Err(e) => assert_eq!(e, OwnerError::Fenced { sealed_epoch: 2 }),
    }
    assert_eq!(
        owner1.append(b"again"),
        Err(OwnerError::Fenced { sealed_epoch: 2 })
    );
    let o1 = owner1.clone();
    let blocked = tokio::task::spawn_blocking(move || o1.wait_committed_blocking(u64::MAX))
        .await
        .expect("waiter");
    assert_eq!(blocked, Err(OwnerError::Fenced { sealed_epoch: 2 }));
    assert_eq!(owner1.fenced_by(), Some(2));
    // An owner of an older epoch cannot even recover.
    assert_eq!(
        StreamOwner::recover(cfg.clone(), 1, 1).await.map(|_| ()),
        Err(OwnerError::Fenced { sealed_epoch: 2 })
    );

    // The new owner writes on; every replica ends with the same durable log.
    let more = append_on_thread(&owner2, 6000..6200, 20, false).await;
    assert_eq!(more[0].0, last + 2, "appends continue after the barrier");
    expected.extend(more);
    let last = owner2.last_lsn();
    for (i, s) in servers.iter().enumerate() {
        let s = s.as_ref().expect("server");
        eventually(&format!("replica {i} has lsn {last} on disk"), || {
            s.stream(STREAM)
                .is_some_and(|st| st.durable_lsn == last && st.sealed_epoch == 2)
        })
        .await;
    }
    owner1.close().await;
    owner2.close().await;
    for s in servers.into_iter().flatten() {
        s.stop().await;
    }
    let states: Vec<DurableState> = dirs.iter().map(|d| open_store(d.path())).collect();
    for (i, state) in states.iter().enumerate() {
        assert_eq!(state.sealed_epoch, Epoch(2), "replica {i}");
        assert_eq!(state.base_lsn, Lsn(0), "replica {i}");
        assert_eq!(state.entries.len() as u64, last, "replica {i}");
        assert!(
            state.entries == states[0].entries,
            "replica {i} matches replica 0"
        );
    }
    assert!(
        data_entries(&states[0]) == expected,
        "the logs hold every entry"
    );
    let barriers: Vec<(u64, u64)> = states[0]
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Barrier)
        .map(|e| (e.lsn.0, e.epoch.0))
        .collect();
    assert_eq!(barriers, vec![(1, 1), (6002, 2)]);
}

/// R = 1, W = 1: single-node mode works, and a restart of everything recovers every entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_replica_commits_and_recovers_after_restart() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestReplica::start(dir.path(), None);
    let cfg = owner_config(STREAM, &[&server], 1);
    let (owner, recovered) = StreamOwner::recover(cfg.clone(), 7, 1)
        .await
        .expect("recover");
    assert!(recovered.is_empty());
    let expected = append_on_thread(&owner, 0..500, 10, true).await;
    owner.close().await;
    assert_eq!(owner.append(b"late"), Err(OwnerError::Closed));
    let addr = server.addr;
    server.stop().await;

    let server = TestReplica::start(dir.path(), Some(addr));
    let (owner, recovered) = StreamOwner::recover(cfg, 8, 1)
        .await
        .expect("recover again");
    let recovered: Vec<(u64, Vec<u8>)> =
        recovered.into_iter().map(|e| (e.lsn, e.payload)).collect();
    assert!(recovered == expected, "every entry comes back");
    let lsn = owner.append(b"after").expect("append");
    owner.flush();
    owner.wait_committed(lsn).await.expect("commit");
    owner.close().await;
    server.stop().await;
}

/// The owner refuses appends once it retains `retained_bytes_max`, and a trim frees room; the
/// replica trims its files once the owner tells it the settled point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_until_trimmed() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestReplica::start(dir.path(), None);
    let mut cfg = owner_config(STREAM, &[&server], 1);
    cfg.replication.entry_bytes_max = 8 << 10;
    cfg.replication.retained_bytes_max = 64 << 10;
    let (owner, _) = StreamOwner::recover(cfg, 1, 1).await.expect("recover");

    let payload = vec![7u8; 4000];
    let mut last = 0;
    let refusal = loop {
        match owner.append(&payload) {
            Ok(lsn) => last = lsn,
            Err(e) => break e,
        }
        assert!(last < 100, "the limit must refuse at some point");
    };
    assert!(
        matches!(
            refusal,
            OwnerError::Full {
                retained_bytes_max: 65536,
                ..
            }
        ),
        "{refusal}"
    );
    assert!(refusal.is_retryable());
    assert!(owner.retained_bytes() <= 64 << 10);
    owner.flush();
    owner.wait_committed(last).await.expect("commit");
    let bytes_before = server.stream(STREAM).expect("stream").bytes_on_disk;

    owner.trim(last);
    assert_eq!(owner.retained_bytes(), 0, "a trim frees what it covers");
    let next = owner.append(&payload).expect("room again after the trim");
    assert_eq!(next, last + 1);
    owner.flush();
    owner.wait_committed(next).await.expect("commit");
    eventually("the replica trims its files", || {
        server
            .stream(STREAM)
            .is_some_and(|s| s.bytes_on_disk < bytes_before / 2)
    })
    .await;
    owner.close().await;
    server.stop().await;

    // The trimmed replica restores from its files: nothing at or below the trim point.
    let state = open_store(dir.path());
    assert!(state.base_lsn.0 >= last, "base {:?}", state.base_lsn);
    assert_eq!(state.entries.last().map(|e| e.lsn.0), Some(next));
}

/// Garbage, oversized frames and a request before `Hello` close only their own connection;
/// an owner on the same server is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_connection() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestReplica::start(dir.path(), None);
    let cfg = owner_config(STREAM, &[&server], 1);
    let (owner, _) = StreamOwner::recover(cfg, 1, 1).await.expect("recover");

    let frame_of = |msg: &frame::Message| {
        let mut out = Vec::new();
        frame::encode(msg, &mut out);
        out
    };
    let hello = frame_of(&frame::Message::Hello { stream: STREAM });
    let seal = frame_of(&frame::Message::ToReplica(ToReplica::Seal {
        epoch: Epoch(9),
        from_lsn: Lsn(1),
    }));
    let mut bad_crc = hello.clone();
    bad_crc.extend_from_slice(&seal);
    let at = bad_crc.len() - 1;
    bad_crc[at] ^= 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "http request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "huge length",
            [&u32::MAX.to_le_bytes()[..], &[0; 8]].concat(),
        ),
        ("request before hello", seal.clone()),
        ("bad crc after hello", bad_crc),
        ("hello twice", [&hello[..], &hello[..]].concat()),
    ];
    for (name, bytes) in cases {
        let mut socket = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        socket.write_all(&bytes).await.expect("write");
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(POLL_TIMEOUT, socket.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("case {name}: the server did not close"));
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "case {name}: expected a closed connection, got {read:?}"
        );
        // The owner still commits.
        let lsn = owner.append(name.as_bytes()).expect("append");
        owner.flush();
        owner.wait_committed(lsn).await.expect("commit");
    }
    // The request sent after its connection was refused never reached the stream.
    assert_eq!(
        server.stream(STREAM).expect("stream").sealed_epoch,
        1,
        "a Seal before Hello must not be applied"
    );
    owner.close().await;
    server.stop().await;
}

/// Recovery without a seal quorum gives up with NoQuorum; config errors name the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_needs_a_quorum_and_a_valid_config() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestReplica::start(dir.path(), None);
    let mut cfg = owner_config(STREAM, &[&server], 2);
    // Two addresses where nothing listens.
    for _ in 0..2 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        cfg.replicas.push(l.local_addr().expect("addr").to_string());
    }
    cfg.replication.replicas = 3;
    cfg.recover_timeout_ms = 300;
    match StreamOwner::recover(cfg.clone(), 1, 1).await {
        Err(OwnerError::NoQuorum {
            replicas_up,
            replicas,
            ..
        }) => {
            assert_eq!((replicas_up, replicas), (1, 3));
        }
        other => panic!("expected NoQuorum, got {other:?}"),
    }

    let mut bad = cfg.clone();
    bad.replicas.pop();
    let cases: Vec<(&str, strata_wal::net::OwnerConfig, u64, u64)> = vec![
        ("replicas", bad, 1, 1),
        (
            "tick_ms",
            strata_wal::net::OwnerConfig {
                tick_ms: 0,
                ..cfg.clone()
            },
            1,
            1,
        ),
        (
            "write_quorum",
            {
                let mut c = cfg.clone();
                c.replication.write_quorum = 4;
                c
            },
            1,
            1,
        ),
        (
            "message_bytes_max",
            {
                let mut c = cfg.clone();
                c.replication.message_bytes_max = 32 << 20;
                c
            },
            1,
            1,
        ),
        ("epoch", cfg.clone(), 0, 1),
        ("from_lsn", cfg.clone(), 1, 0),
    ];
    for (key, cfg, epoch, from_lsn) in cases {
        match StreamOwner::recover(cfg, epoch, from_lsn).await {
            Err(OwnerError::InvalidConfig { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{key}: expected InvalidConfig, got {other:?}"),
        }
    }
    server.stop().await;
}

/// A damaged stream store stops the replica server at start, naming the file; bad server
/// configs name the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_start_refuses_a_corrupt_store_and_bad_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = server_config(dir.path());
    {
        let (mut store, _) = StreamStore::open(StreamStoreConfig {
            dir: stream_dir(dir.path(), STREAM),
            segment_bytes_max: cfg.segment_bytes_max,
            entry_bytes_max: cfg.entry_bytes_max,
        })
        .expect("open");
        store.persist_seal(Epoch(3)).expect("seal");
    }
    let seal = stream_dir(dir.path(), STREAM).join("seal");
    let mut bytes = std::fs::read(&seal).expect("read seal");
    bytes[10] ^= 0xff;
    std::fs::write(&seal, &bytes).expect("damage the seal");
    let addr = "127.0.0.1:0".parse().expect("addr");
    match ReplicaServer::bind(cfg.clone(), addr) {
        Err(e @ NetError::Store { stream: STREAM, .. }) => {
            assert!(e.is_corrupt(), "{e}");
            let NetError::Store {
                source: WalError::Corrupt { path, .. },
                ..
            } = &e
            else {
                panic!("{e}")
            };
            assert_eq!(path, &seal);
        }
        other => panic!("expected a corrupt store, got {other:?}"),
    }
    let cases = [
        (
            "entry_bytes_max",
            ReplicaServerConfig {
                entry_bytes_max: 0,
                ..cfg.clone()
            },
        ),
        (
            "segment_bytes_max",
            ReplicaServerConfig {
                segment_bytes_max: 10,
                ..cfg.clone()
            },
        ),
        (
            "dir",
            ReplicaServerConfig {
                dir: "".into(),
                ..cfg.clone()
            },
        ),
        (
            "realtime_priority",
            ReplicaServerConfig {
                realtime_priority: 100,
                ..cfg.clone()
            },
        ),
    ];
    for (key, cfg) in cases {
        match ReplicaServer::bind(cfg, addr) {
            Err(NetError::InvalidConfig { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{key}: expected InvalidConfig, got {other:?}"),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Not a benchmark and asserts no time: prints append → committed latency on loopback with
/// R = 3, W = 2 (one entry at a time, so every commit waits for a network round trip and the
/// replicas' fdatasync), and the pipelined rate. Run with `--nocapture` to see the numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_latency_on_loopback() {
    init_tracing();
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let servers: Vec<TestReplica> = dirs
        .iter()
        .map(|d| TestReplica::start(d.path(), None))
        .collect();
    let refs: Vec<&TestReplica> = servers.iter().collect();
    let (owner, _) = StreamOwner::recover(owner_config(STREAM, &refs, 2), 1, 1)
        .await
        .expect("recover");
    let o = owner.clone();
    let (latencies, rate) = tokio::task::spawn_blocking(move || {
        let payload = vec![1u8; PAYLOAD_LEN];
        let mut latencies = Vec::new();
        for _ in 0..500 {
            let t = Instant::now();
            let lsn = o.append(&payload).expect("append");
            o.flush();
            o.wait_committed_blocking(lsn).expect("commit");
            latencies.push(t.elapsed());
        }
        let big = vec![2u8; 1024];
        let t = Instant::now();
        let mut last = 0;
        for _ in 0..100 {
            for _ in 0..100 {
                last = o.append(&big).expect("append");
            }
            o.flush();
        }
        o.wait_committed_blocking(last).expect("commit");
        (latencies, 10_000.0 / t.elapsed().as_secs_f64())
    })
    .await
    .expect("thread");
    let mut sorted = latencies.clone();
    sorted.sort();
    println!(
        "append→committed, {PAYLOAD_LEN} B entries, R=3 W=2 loopback: p50 {:?} p99 {:?} max {:?}; \
         pipelined 1 KiB entries: {rate:.0} entries/s",
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted[sorted.len() - 1],
    );
    assert_eq!(latencies.len(), 500);
    assert_eq!(owner.committed_lsn(), owner.last_lsn());
    let syncs: u64 = servers
        .iter()
        .map(|s| s.stream(STREAM).expect("stream").syncs)
        .sum();
    println!(
        "replica fdatasyncs: {syncs} for {} entries x 3 replicas",
        owner.last_lsn()
    );
    owner.close().await;
    for s in servers {
        s.stop().await;
    }
}

/// A replica that holds an uncommitted tail of an old epoch comes back after a new owner
/// recovered without it: the new owner's appends truncate the divergent tail, and its log
/// ends identical to the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_divergent_tail_is_truncated_on_a_returning_replica() {
    init_tracing();
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut servers: Vec<Option<TestReplica>> = dirs
        .iter()
        .map(|d| Some(TestReplica::start(d.path(), None)))
        .collect();
    let addrs: Vec<std::net::SocketAddr> = servers.iter().flatten().map(|s| s.addr).collect();
    let cfg = {
        let refs: Vec<&TestReplica> = servers.iter().flatten().collect();
        owner_config(STREAM, &refs, 2)
    };
    let (owner1, _) = StreamOwner::recover(cfg.clone(), 1, 1)
        .await
        .expect("recover");
    let committed = append_on_thread(&owner1, 0..300, 30, false).await;
    let committed_last = committed.last().expect("entries").0;
    let a = servers[0].as_ref().expect("replica 0");
    eventually("replica 0 has every committed entry", || {
        a.stream(STREAM)
            .is_some_and(|s| s.durable_lsn == committed_last)
    })
    .await;

    // Replicas 1 and 2 go away: what owner 1 appends now reaches replica 0 only.
    for i in [1, 2] {
        servers[i].take().expect("server").stop().await;
    }
    eventually("owner 1 sees one replica", || owner1.replicas_up() == 1).await;
    let mut uncommitted = Vec::new();
    for i in 0..50u64 {
        let payload = format!("uncommitted-{i}").into_bytes();
        uncommitted.push(owner1.append(&payload).expect("append"));
    }
    owner1.flush();
    let tail_last = *uncommitted.last().expect("appended");
    let a = servers[0].as_ref().expect("replica 0");
    eventually("replica 0 holds the uncommitted tail", || {
        a.stream(STREAM).is_some_and(|s| s.durable_lsn == tail_last)
    })
    .await;
    assert_eq!(
        owner1.committed_lsn(),
        committed_last,
        "one replica cannot commit"
    );
    owner1.close().await;
    servers[0].take().expect("server").stop().await;

    // Epoch 2 recovers from replicas 1 and 2, without the tail.
    for i in [1, 2] {
        servers[i] = Some(TestReplica::start(dirs[i].path(), Some(addrs[i])));
    }
    let (owner2, recovered) = StreamOwner::recover(cfg, 2, 1)
        .await
        .expect("recover epoch 2");
    let recovered: Vec<(u64, Vec<u8>)> =
        recovered.into_iter().map(|e| (e.lsn, e.payload)).collect();
    assert!(
        recovered == committed,
        "only the committed entries come back"
    );

    // Replica 0 returns; the new owner's appends replace its tail.
    servers[0] = Some(TestReplica::start(dirs[0].path(), Some(addrs[0])));
    let more = append_on_thread(&owner2, 1000..1100, 20, false).await;
    let last = owner2.last_lsn();
    assert!(last > tail_last, "the new log is longer than the old tail");
    for (i, s) in servers.iter().enumerate() {
        let s = s.as_ref().expect("server");
        eventually(&format!("replica {i} has lsn {last} on disk"), || {
            s.stream(STREAM).is_some_and(|st| st.durable_lsn == last)
        })
        .await;
    }
    owner2.close().await;
    for s in servers.into_iter().flatten() {
        s.stop().await;
    }
    let states: Vec<DurableState> = dirs.iter().map(|d| open_store(d.path())).collect();
    assert!(
        states[0].entries == states[1].entries,
        "replica 0 matches replica 1"
    );
    assert!(
        states[1].entries == states[2].entries,
        "replica 1 matches replica 2"
    );
    let mut expected = committed;
    expected.extend(more);
    assert!(data_entries(&states[0]) == expected);
    assert!(
        !states[0]
            .entries
            .iter()
            .any(|e| e.payload.starts_with(b"uncommitted")),
        "the divergent tail is gone"
    );
}

/// How a fake replica answers the first request it can answer.
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// Claims it trimmed past `from_lsn` (a broken trim invariant or stale metadata).
    StaleBase,
    /// Not a frame at all.
    Garbage,
    /// Seals properly, then acknowledges entries the owner never sent.
    AckPastTheEnd,
}

/// A fake replica: answers according to `how`, counts the connections it got.
async fn fake_replica(
    listener: tokio::net::TcpListener,
    how: Misbehaviour,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use strata_wal::replication::FromReplica;
    let limits = frame::Limits {
        frame_bytes_max: 1 << 20,
        entry_bytes_max: 1 << 16,
    };
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut buf = Vec::new();
        'conn: loop {
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while let Ok(Some((msg, used))) = frame::decode(&buf, limits) {
                buf.drain(..used);
                let reply = match (how, msg) {
                    (Misbehaviour::Garbage, frame::Message::ToReplica(_)) => {
                        let _ = socket.write_all(b"this is not a frame at all").await;
                        continue;
                    }
                    (
                        Misbehaviour::StaleBase,
                        frame::Message::ToReplica(ToReplica::Seal { epoch, from_lsn }),
                    ) => FromReplica::Sealed {
                        epoch,
                        base_lsn: Lsn(from_lsn.0 + 5),
                        last: None,
                    },
                    (
                        Misbehaviour::AckPastTheEnd,
                        frame::Message::ToReplica(ToReplica::Seal { epoch, .. }),
                    ) => FromReplica::Sealed {
                        epoch,
                        base_lsn: Lsn(0),
                        last: None,
                    },
                    (
                        Misbehaviour::AckPastTheEnd,
                        frame::Message::ToReplica(ToReplica::Append(m)),
                    ) => FromReplica::Ack {
                        epoch: m.epoch,
                        durable_lsn: Lsn(1_000),
                    },
                    _ => continue,
                };
                let mut out = Vec::new();
                frame::encode(&frame::Message::FromReplica(reply), &mut out);
                if socket.write_all(&out).await.is_err() {
                    break 'conn;
                }
            }
        }
    }
}

/// A replica that breaks the protocol makes the owner drop and retry its connection (and,
/// without another replica, give up with NoQuorum); it never panics the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_replica_cannot_panic_the_owner() {
    init_tracing();
    for how in [
        Misbehaviour::StaleBase,
        Misbehaviour::Garbage,
        Misbehaviour::AckPastTheEnd,
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let fake = tokio::spawn(fake_replica(listener, how, connections.clone()));
        let mut cfg = strata_wal::net::OwnerConfig::new(STREAM, vec![addr.to_string()]);
        cfg.recover_timeout_ms = 500;
        match StreamOwner::recover(cfg, 3, 1).await {
            Err(OwnerError::NoQuorum { .. }) => {}
            other => panic!("{how:?}: expected NoQuorum, got {other:?}"),
        }
        let n = connections.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            n >= 2,
            "{how:?}: the owner reconnects after dropping a bad connection ({n})"
        );
        fake.abort();
    }
}
