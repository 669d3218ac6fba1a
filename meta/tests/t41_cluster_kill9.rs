//! Acknowledged writes survive `kill -9` of the meta leader, and then of every meta node.
//!
//! The test runs itself several times: as the parent it starts three copies of this test
//! binary as children (selected by an environment variable), each one meta node of a group of
//! three on 127.0.0.1. Every child commits objects to its own partition through its node
//! (forwarded to the leader where it does not lead) and prints each acknowledged end offset,
//! and prints the leader it sees. The parent kills the leader's process with SIGKILL, checks
//! that the two others keep acknowledging writes (after a re-election), kills them too, then
//! reopens all three stores in this process at the same addresses and checks that every
//! acknowledged write is there, on every node.

mod common;

use common::{config, create_topic, listen, summary, Writer, TOPIC, WAIT};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::sync::mpsc;
use std::time::Instant;
use strata_meta::{ClusterConfig, CommandResult, MetaNode, Rejection};

const TEST_NAME: &str = "acknowledged_writes_survive_kill_9_of_the_meta_leader";
/// `id;dir;1=addr,2=addr,3=addr` of the child's meta node.
const CHILD_ENV: &str = "STRATA_META_CLUSTER_CHILD";
/// Objects every child has acknowledged before the leader is killed, and objects every
/// survivor acknowledges after.
const ACKED_BEFORE_KILL: i64 = 20;
const ACKED_AFTER_KILL: i64 = 20;

fn parse_peers(s: &str) -> Vec<(u64, String)> {
    s.split(',')
        .map(|p| {
            let (id, addr) = p.split_once('=').unwrap();
            (id.parse().unwrap(), addr.to_owned())
        })
        .collect()
}

async fn open(dir: &Path, id: u64, addr: SocketAddr, peers: Vec<(u64, String)>) -> MetaNode {
    let cluster = ClusterConfig {
        listener: listen(addr).await,
        peers,
        routes: Default::default(),
    };
    MetaNode::open_cluster_with(dir, id, cluster, config())
        .await
        .unwrap_or_else(|e| panic!("meta node {id} did not open: {e}"))
}

/// One meta node that writes to partition `id - 1` until it is killed.
async fn child(spec: &str) {
    let mut parts = spec.split(';');
    let (id, dir, peers) = (
        parts.next().unwrap().parse::<u64>().unwrap(),
        parts.next().unwrap(),
        parse_peers(parts.next().unwrap()),
    );
    let addr: SocketAddr = peers.iter().find(|p| p.0 == id).unwrap().1.parse().unwrap();
    let node = open(dir.as_ref(), id, addr, peers).await;

    let mut metrics = node.raft().metrics();
    tokio::spawn(async move {
        loop {
            let (term, leader) = {
                let m = metrics.borrow_and_update();
                (m.current_term, m.current_leader)
            };
            if let Some(leader) = leader {
                println!("leader {term} {leader}");
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });

    // Every child tries to create the topic; one succeeds, the others see it exists.
    match node.write(create_topic(3)).await.expect("create topic") {
        CommandResult::TopicCreated(_)
        | CommandResult::Rejected(Rejection::TopicExists { .. })
        | CommandResult::Rejected(Rejection::TopicIdExists { .. }) => {}
        other => panic!("create topic: {other:?}"),
    }
    let partition = (id - 1) as u32;
    let mut writer = Writer::default();
    loop {
        writer.commit(&node, partition).await;
        println!("acked {}", writer.end(partition));
    }
}

enum Event {
    Leader { term: u64, leader: u64 },
    Acked { child: u64, end: i64 },
    Exited { child: u64 },
}

fn spawn_child(id: u64, dir: &Path, peers: &str, events: mpsc::Sender<Event>) -> Child {
    let mut proc = Process::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{id};{};{peers}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = proc.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let words: Vec<&str> = line.split_whitespace().collect();
            let event = match words[..] {
                ["leader", term, leader] => Event::Leader {
                    term: term.parse().unwrap(),
                    leader: leader.parse().unwrap(),
                },
                ["acked", end] => Event::Acked {
                    child: id,
                    end: end.parse().unwrap(),
                },
                _ => continue,
            };
            if events.send(event).is_err() {
                return;
            }
        }
        let _ = events.send(Event::Exited { child: id });
    });
    proc
}

/// Reads events until `done(acked, leader)` holds, for at most [`WAIT`].
fn watch(
    events: &mpsc::Receiver<Event>,
    acked: &mut BTreeMap<u64, i64>,
    leader: &mut (u64, u64),
    alive: &[u64],
    what: &str,
    done: impl Fn(&BTreeMap<u64, i64>) -> bool,
) {
    let started = Instant::now();
    while !done(acked) {
        let left = WAIT.saturating_sub(started.elapsed());
        match events.recv_timeout(left) {
            Ok(Event::Leader { term, leader: id }) => *leader = (*leader).max((term, id)),
            Ok(Event::Acked { child, end }) => {
                let entry = acked.entry(child).or_default();
                *entry = (*entry).max(end);
            }
            Ok(Event::Exited { child }) => {
                assert!(
                    !alive.contains(&child),
                    "meta child {child} exited on its own"
                )
            }
            Err(_) => panic!("gave up after {WAIT:?} waiting for {what}; acked so far: {acked:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_of_the_meta_leader() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec).await;
        return;
    }
    let root = tempfile::tempdir().unwrap();
    // Three free ports (held together, so they differ); each child binds its own again.
    let probes: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: BTreeMap<u64, SocketAddr> = (1u64..)
        .zip(&probes)
        .map(|(id, probe)| (id, probe.local_addr().unwrap()))
        .collect();
    drop(probes);
    let peers_arg = addrs
        .iter()
        .map(|(id, a)| format!("{id}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    let dir = |id: u64| root.path().join(format!("meta-{id}"));

    let (events_tx, events) = mpsc::channel();
    let mut children: BTreeMap<u64, Child> = [1u64, 2, 3]
        .into_iter()
        .map(|id| (id, spawn_child(id, &dir(id), &peers_arg, events_tx.clone())))
        .collect();
    drop(events_tx);

    let mut acked = BTreeMap::new();
    let mut leader = (0u64, 0u64);
    let (ev, ack, lead) = (&events, &mut acked, &mut leader);
    let all = [1u64, 2, 3];
    tokio::task::block_in_place(|| {
        watch(
            ev,
            ack,
            lead,
            &all,
            "every child to acknowledge writes",
            |a| {
                all.iter()
                    .all(|id| a.get(id).copied().unwrap_or(0) >= ACKED_BEFORE_KILL * 5)
            },
        )
    });
    let (term, killed) = leader;
    assert!(killed != 0, "no child reported a leader");
    eprintln!("killing meta leader {killed} (term {term}); acknowledged {acked:?}");
    let mut proc = children.remove(&killed).unwrap();
    proc.kill().unwrap(); // SIGKILL
    proc.wait().unwrap();

    // The other two elect a leader and keep acknowledging writes.
    let survivors: Vec<u64> = all.iter().copied().filter(|&id| id != killed).collect();
    let floor: BTreeMap<u64, i64> = survivors.iter().map(|&id| (id, acked[&id])).collect();
    let (ev, ack, lead) = (&events, &mut acked, &mut leader);
    tokio::task::block_in_place(|| {
        watch(
            ev,
            ack,
            lead,
            &survivors,
            "the survivors to acknowledge writes again",
            |a| {
                floor
                    .iter()
                    .all(|(id, &before)| a[id] >= before + ACKED_AFTER_KILL * 5)
            },
        )
    });
    assert!(leader.0 > term, "no new leader was reported: {leader:?}");
    eprintln!(
        "new leader {} (term {}); acknowledged {acked:?}",
        leader.1, leader.0
    );

    // Everything goes down hard.
    for (_, mut proc) in children {
        proc.kill().unwrap();
        proc.wait().unwrap();
    }
    // Lines read before the kills may acknowledge a little more.
    while let Ok(event) = events.try_recv() {
        if let Event::Acked { child, end } = event {
            let entry = acked.entry(child).or_default();
            *entry = (*entry).max(end);
        }
    }

    // All three come back in this process, at their addresses; nothing acknowledged is lost.
    let peers: Vec<(u64, String)> = parse_peers(&peers_arg);
    let mut opening = Vec::new();
    for id in all {
        let (dir, addr, peers) = (dir(id), addrs[&id], peers.clone());
        opening.push(tokio::spawn(
            async move { open(&dir, id, addr, peers).await },
        ));
    }
    let mut nodes = Vec::new();
    for handle in opening {
        nodes.push(handle.await.unwrap());
    }
    for node in &nodes {
        node.sync().await.unwrap();
    }
    let expected = summary(&nodes[0].read());
    for node in &nodes {
        let state = node.read();
        assert_eq!(summary(&state), expected, "node {}", node.node_id());
        for (&child, &end) in &acked {
            let partition = (child - 1) as u32;
            let recovered = state.indexed_end(TOPIC, partition);
            assert!(
                recovered >= end,
                "node {}: partition {partition} acknowledged up to {end}, recovered up to {recovered}",
                node.node_id()
            );
        }
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}
