"""A multi-process StrataMQ cluster on 127.0.0.1 for the end-to-end tests.

Layout (DESIGN.md §3): `brokers` processes with the `meta` and `broker` roles (a
3-voter raft group for metadata, each node also a Kafka broker), and `wal_nodes`
processes with only the `wal` role, which every broker writes its WAL stream to
(R = number of WAL nodes, W = a majority). All nodes share one object store.
Each process has its own data dir and ports; kill9/start of any node is a
restart of that node.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import harness
from harness import Broker


class WalNode:
    """A `strata start --roles wal` process: a WAL replica and nothing else."""

    def __init__(self, binary: str, workdir: Path, node_id: int):
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.port = harness.free_port()
        self.admin_port = harness.free_port()
        self.node_id = node_id
        self.proc: subprocess.Popen | None = None
        self.stderr_path = self.workdir / "strata.stderr.log"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [self.binary, "start", "--roles", "wal", "--node-id", str(self.node_id),
                "--data-dir", str(self.data_dir), "--wal-listen", self.addr,
                "--admin-listen", f"127.0.0.1:{self.admin_port}"]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True) -> "WalNode":
        assert not self.alive()
        self._err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(harness._deathsig_prefix() + self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._err,
                                     env=harness.clean_env(), cwd=self.workdir)
        if wait:
            assert harness.wait_port(self.port, 30, self.proc), (
                f"WAL node {self.node_id} did not listen:\n{harness.tail(self.stderr_path)}")
        return self

    def kill9(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait(30)

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


class Cluster:
    def __init__(self, binary: str, workdir: Path, brokers: int = 3, wal_nodes: int = 3,
                 lease_ms: int = 3000, object_store: str | None = None, env: dict | None = None,
                 combined: bool = False):
        """`combined`: every node runs all three roles (the usual small cluster) and
        the WAL replicas are the brokers' own `wal` roles; `wal_nodes` is ignored."""
        workdir = Path(workdir)
        self.object_store = object_store or f"fs://{workdir / 'objects'}"
        self.wal = [] if combined else [WalNode(binary, workdir / f"wal{i}", 100 + i)
                                        for i in range(1, wal_nodes + 1)]
        meta_ports = {i: harness.free_port() for i in range(1, brokers + 1)}
        wal_ports = {i: harness.free_port() for i in range(1, brokers + 1)}
        meta_peers = ",".join(f"{i}@127.0.0.1:{p}" for i, p in meta_ports.items())
        if combined:
            wal_peers = ",".join(f"127.0.0.1:{p}" for p in wal_ports.values())
        else:
            wal_peers = ",".join(w.addr for w in self.wal)
        self.brokers: list[Broker] = []
        for i in range(1, brokers + 1):
            roles = ["--roles", "meta,wal,broker", "--wal-listen", f"127.0.0.1:{wal_ports[i]}"] if combined \
                else ["--roles", "meta,broker"]
            b = Broker(binary, workdir / f"node{i}", object_store=self.object_store, node_id=i,
                       env={"STRATA_META_BROKER_LEASE_MS": str(lease_ms),
                            "STRATA_META_HEARTBEAT_INTERVAL_MS": str(max(100, lease_ms // 6)),
                            **(env or {})},
                       extra_args=roles + ["--meta-listen", f"127.0.0.1:{meta_ports[i]}",
                                           "--meta-peers", meta_peers,
                                           "--wal-peers", wal_peers])
            self.brokers.append(b)

    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers if b.alive())

    def start(self, timeout: float = 120) -> "Cluster":
        for w in self.wal:
            w.start()
        for b in self.brokers:
            b.start(wait=False)
        for b in self.brokers:
            b.wait_ready(timeout)
            b._ports_fixed = True
        return self

    def broker(self, node_id: int) -> Broker:
        return next(b for b in self.brokers if b.node_id == node_id)

    def leaders(self, topic: str, partitions: int) -> dict[int, int]:
        """partition -> leader node id (-1 when none), as a live broker's Metadata says."""
        adm = harness.admin_client(self.bootstrap)
        md = adm.list_topics(topic=topic, timeout=10)
        t = md.topics[topic]
        return {p: t.partitions[p].leader for p in range(partitions) if p in t.partitions}

    def stop(self):
        for b in self.brokers:
            if b.alive():
                rc = b.stop(timeout=30, check=False)
                if rc is None or b.alive():
                    b.kill9()
        for w in self.wal:
            w.stop()

    def logs(self) -> str:
        out = []
        for b in self.brokers:
            out.append(f"--- node {b.node_id} stderr ---\n{b.stderr_tail(30)}")
        for w in self.wal:
            out.append(f"--- wal {w.node_id} stderr ---\n{harness.tail(w.stderr_path, 15)}")
        return "\n".join(out)


def wait_leaders(cluster: Cluster, topic: str, partitions: int, exclude: set[int] = frozenset(),
                 timeout: float = 60) -> dict[int, int]:
    def ok():
        leaders = cluster.leaders(topic, partitions)
        if len(leaders) == partitions and all(l >= 0 and l not in exclude for l in leaders.values()):
            return leaders
        return None

    return harness.eventually(ok, timeout, what=f"every partition of {topic} to have a live leader")


def now() -> float:
    return time.monotonic()
