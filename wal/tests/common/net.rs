//! Helpers for the network tests: replica servers in-process on 127.0.0.1, owner configs, and
//! polling with a deadline (a poll that times out fails the test; it never asserts a time).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_wal::net::{
    OwnerConfig, ReplicaServer, ReplicaServerConfig, ReplicaServerHandle, StreamStats,
};
use strata_wal::replication::ReplicationConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a poll waits before the test fails: generous, CI machines have 2 busy cores.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(30);

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A replica server running on the current tokio runtime.
pub struct TestReplica {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub handle: ReplicaServerHandle,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub fn server_config(dir: &Path) -> ReplicaServerConfig {
    ReplicaServerConfig {
        dir: dir.to_path_buf(),
        // Small segments so trims and truncations cross segment files.
        segment_bytes_max: 256 << 10,
        entry_bytes_max: 64 << 10,
        realtime_priority: 0,
    }
}

impl TestReplica {
    /// Starts a server on `dir`, on an ephemeral port (`addr` None) or on `addr` (a restart).
    pub fn start(dir: &Path, addr: Option<SocketAddr>) -> TestReplica {
        let addr = addr.unwrap_or_else(|| "127.0.0.1:0".parse().expect("addr"));
        let server = ReplicaServer::bind(server_config(dir), addr)
            .unwrap_or_else(|e| panic!("bind a replica on {}: {e}", dir.display()));
        let addr = server.local_addr();
        let handle = server.handle();
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(server.run(rx));
        TestReplica {
            addr,
            dir: dir.to_path_buf(),
            handle,
            shutdown,
            task,
        }
    }

    /// Shuts the server down and waits until its stream threads are gone.
    pub async fn stop(self) {
        self.shutdown.send_replace(true);
        self.task.await.expect("replica server task");
    }

    pub fn stream(&self, stream: u64) -> Option<StreamStats> {
        self.handle
            .stats()
            .streams
            .into_iter()
            .find(|s| s.stream == stream)
    }
}

/// Owner config for `stream` on `replicas` with R = their count and the given W.
pub fn owner_config(stream: u64, replicas: &[&TestReplica], write_quorum: u16) -> OwnerConfig {
    let addrs: Vec<String> = replicas.iter().map(|r| r.addr.to_string()).collect();
    OwnerConfig {
        stream,
        replication: ReplicationConfig {
            replicas: addrs.len() as u16,
            write_quorum,
            entry_bytes_max: 64 << 10,
            ..ReplicationConfig::default()
        },
        replicas: addrs,
        connect_timeout_ms: 1_000,
        tick_ms: 5,
        recover_timeout_ms: 20_000,
    }
}

/// Polls `check` every few milliseconds until it is true; fails the test after
/// [`POLL_TIMEOUT`], naming `what`.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + POLL_TIMEOUT;
    loop {
        if check() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Deterministic payload of the `i`-th appended entry.
pub fn net_payload(i: u64, len: usize) -> Vec<u8> {
    let mut p = format!("entry-{i:08}-").into_bytes();
    p.resize(len.max(p.len()), (i % 251) as u8);
    p
}
