"""t87 WAL replica replacement and stream-directory GC (issue 3).

Three brokers (meta + broker roles) and four WAL nodes: the first and the fourth
WAL-only (`--roles wal`, following metadata through a mirror), the second and
third meta + wal; five meta voters. `wal.peers` = the three first WAL nodes, a
decoy (a plain TCP listener, no WAL node) and the fourth; `wal.replicas` = 3
(R = 3, W = 2), so every stream starts on the first three and the fourth is the
only real spare. Every WAL node registers and heartbeats its address in metadata.

- every WAL node, WAL-only ones too, shows up alive in `/v1/wal`;
- kill -9 one replica for good under an acks=all producer: every broker replaces
  it with the fourth node, chosen by its metadata liveness over the decoy that
  comes first in `wal.peers` and accepts connections (a TCP probe would pick the
  decoy, which never catches up); `/v1/wal` shows the new replica sets and the
  dead node as not alive. Then a second original replica is killed too and
  produce keeps working (with only the original set it could not: one replica
  of three left); every acknowledged record is read back at its acknowledged
  offset, dense;
- the replaced node (WAL-only, no meta role), restarted, deletes its stale
  stream directories by its mirrored metadata (keeping a tombstone of each
  seal), and the cluster still takes writes;
- `wal.replicas` above the number of `wal.peers` is refused by name.
"""

import json
import re
import socket
import subprocess
from pathlib import Path

import pytest

import harness
from cluster import Cluster, WalNode, wait_leaders
from harness import Broker
from t20_crash_test import Acked, count_lines, read_acks
from t80_cluster_test import PARTITIONS, start_producer, stop_producer

REPLACE_AFTER_MS = 1500


class ClusterWalNode(WalNode):
    """A `strata start --roles meta,wal` process (a WAL replica that is also a meta voter),
    or with `meta=False` a `--roles wal` one that follows metadata from the voters."""

    def __init__(self, binary: str, workdir: Path, node_id: int, env: dict, meta: bool):
        super().__init__(binary, workdir, node_id)
        self.meta = meta
        self.meta_port = harness.free_port()
        self.meta_peers = ""
        self.wal_peers = ""
        self.env = env

    def command(self) -> list[str]:
        cmd = [self.binary, "start", "--node-id", str(self.node_id), "--data-dir", str(self.data_dir),
               "--roles", "meta,wal" if self.meta else "wal", "--wal-listen", self.addr,
               "--admin-listen", f"127.0.0.1:{self.admin_port}",
               "--meta-peers", self.meta_peers, "--wal-peers", self.wal_peers]
        if self.meta:
            cmd += ["--meta-listen", f"127.0.0.1:{self.meta_port}"]
        return cmd

    def start(self, wait: bool = True) -> "ClusterWalNode":
        assert not self.alive()
        self._err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(harness._deathsig_prefix() + self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._err,
                                     env=harness.clean_env(self.env), cwd=self.workdir)
        if wait:
            assert harness.wait_port(self.port, 30, self.proc), (
                f"WAL node {self.node_id} did not listen:\n{harness.tail(self.stderr_path)}")
        return self

    def stream_dirs(self) -> set[int]:
        root = self.data_dir / "wal" / "streams"
        if not root.exists():
            return set()
        return {int(p.name) for p in root.iterdir() if p.is_dir() and re.fullmatch(r"\d{20}", p.name)}

    def tombstones(self) -> set[int]:
        root = self.data_dir / "wal" / "streams"
        if not root.exists():
            return set()
        return {int(p.name.split(".")[0]) for p in root.glob("*.tombstone")}


class ReplaceCluster(Cluster):
    """3 meta+broker nodes, 2 WAL-only and 2 meta+WAL nodes, and a decoy TCP listener in
    `wal.peers` before the spare (R=3 of 5 WAL peers); the rest is `Cluster`'s."""

    def __init__(self, binary: str, workdir: Path, lease_ms: int = 3000):
        workdir = Path(workdir)
        timing = {"STRATA_META_BROKER_LEASE_MS": str(lease_ms),
                  "STRATA_META_HEARTBEAT_INTERVAL_MS": str(max(100, lease_ms // 6))}
        env = {"STRATA_WAL_REPLICAS": "3",
               "STRATA_WAL_REPLICA_REPLACE_AFTER_MS": str(REPLACE_AFTER_MS)}
        self.object_store = f"fs://{workdir / 'objects'}"
        # WAL-only: the first (the replaced one) and the fourth (the spare).
        self.wal = [ClusterWalNode(binary, workdir / f"wal{i}", 10 + i, {**env, **timing}, meta=i in (2, 3))
                    for i in range(1, 5)]
        # Accepts connections and never answers: what a TCP probe cannot tell from a WAL node.
        self.decoy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.decoy.bind(("127.0.0.1", 0))
        self.decoy.listen(64)
        self.decoy_addr = f"127.0.0.1:{self.decoy.getsockname()[1]}"
        broker_meta = {i: harness.free_port() for i in range(1, 4)}
        meta_peers = ",".join([f"{i}@127.0.0.1:{p}" for i, p in broker_meta.items()]
                              + [f"{w.node_id}@127.0.0.1:{w.meta_port}" for w in self.wal if w.meta])
        wal_peers = ",".join([w.addr for w in self.wal[:3]] + [self.decoy_addr, self.wal[3].addr])
        for w in self.wal:
            w.meta_peers, w.wal_peers = meta_peers, wal_peers
        self.brokers = [
            Broker(binary, workdir / f"node{i}", object_store=self.object_store, node_id=i,
                   env={**timing, **env},
                   extra_args=["--roles", "meta,broker", "--meta-listen", f"127.0.0.1:{broker_meta[i]}",
                               "--meta-peers", meta_peers, "--wal-peers", wal_peers])
            for i in range(1, 4)]

    def start(self, timeout: float = 180) -> "ReplaceCluster":
        return super().start(timeout)

    def stop(self):
        super().stop()
        self.decoy.close()

    def wal_view(self) -> dict:
        status, body = next(b for b in self.brokers if b.alive()).get("/v1/wal")
        assert status == 200, body
        return json.loads(body)

    def streams(self) -> dict[int, dict]:
        """Every WAL stream in metadata, as a broker's admin API shows it."""
        return {s["stream"]: s for s in self.wal_view()["streams"]}

    def wal_nodes(self) -> dict[str, bool]:
        """Registered WAL address -> alive, as a broker's admin API shows them."""
        return {n["wal_addr"]: n["alive"] for n in self.wal_view()["wal_nodes"]}


@pytest.fixture
def cluster(strata_bin, tmp_path):
    c = ReplaceCluster(strata_bin, tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        print(c.logs())


def wait_replaced(c: ReplaceCluster, gone: str, spare: str, timeout: float = 90) -> dict[int, dict]:
    """Until every broker's stream lists `spare` instead of `gone`."""
    brokers = {b.node_id for b in c.brokers}

    def done():
        streams = c.streams()
        if all(i in streams and spare in streams[i]["replicas"] and gone not in streams[i]["replicas"]
               for i in brokers):
            return streams
        return None
    return harness.eventually(done, timeout, what=f"every stream to replace {gone} with {spare}")


def verify(c: ReplaceCluster, topic: str, acked: Acked, tag: str):
    hw = harness.watermarks(c.bootstrap, topic, PARTITIONS)
    parts = harness.consume(c.bootstrap, topic, PARTITIONS, end={p: hw[p][1] for p in hw})
    harness.assert_dense(parts)
    seen: dict[bytes, set] = {}
    for p, recs in parts.items():
        for r in recs:
            seen.setdefault(r.value, set()).add((p, r.offset))
    lost = [(v, po) for v, po in acked.by_value.items() if po not in seen.get(v, ())]
    assert not lost, (f"{tag}: {len(lost)} of {len(acked.by_value)} acknowledged records are not at their "
                      f"acknowledged offset, e.g. {[(v, po, seen.get(v)) for v, po in lost[:5]]}")
    print(f"{tag}: {len(acked.by_value)} acknowledged records verified")


@pytest.mark.timeout(900)
def test_a_dead_replica_is_replaced_and_a_second_loss_is_survived(cluster, tmp_path):
    c = cluster
    first, second, third, spare = (w.addr for w in c.wal)
    before = c.streams()
    for i in (1, 2, 3):
        assert before[i]["replicas"] == [first, second, third], before[i]
    # Every WAL node registers, the WAL-only ones (no meta role) too; the decoy never does.
    everyone = {first: True, second: True, third: True, spare: True}
    harness.eventually(lambda: c.wal_nodes() == everyone, 60, what=f"every WAL node alive in /v1/wal: {everyone}")

    topic = "walreplace"
    harness.create_topic(c.bootstrap, topic, PARTITIONS)
    leaders = wait_leaders(c, topic, PARTITIONS)
    assert len(set(leaders.values())) > 1, f"partitions should spread over brokers: {leaders}"

    prod, ack_file, log_path = start_producer(c.bootstrap, topic, tmp_path, "replace", 0)
    try:
        harness.eventually(lambda: count_lines(ack_file) >= 200, 60, what="the producer's first acks")
        c.wal[0].kill9()
        # The decoy comes before the spare in wal.peers and accepts connections: only
        # metadata liveness can pass it over (a probe would pick it and never catch it up).
        streams = wait_replaced(c, first, spare)
        for i in (1, 2, 3):
            assert streams[i]["replicas"] == [spare, second, third], streams[i]
        harness.eventually(lambda: c.wal_nodes() == {**everyone, first: False}, 30,
                           what="the killed WAL node to show as not alive")
        # The new set is what the owners write to: a second original replica dies, and writes
        # still reach W = 2 (the spare and the third). With the original set only one was left.
        c.wal[1].kill9()
        at_kill = count_lines(ack_file)
        harness.eventually(lambda: count_lines(ack_file) >= at_kill + 500, 90,
                           what="acks to continue with two original replicas dead")
    finally:
        errors = stop_producer(prod, log_path)
    assert errors == 0, f"the producer saw {errors} delivery errors"
    acked = Acked()
    acked.add(read_acks(ack_file))
    assert len(acked.by_value) >= 700
    verify(c, topic, acked, "after replacing a WAL replica and losing another")
    # Replaced, not just told: the brokers' counters say so.
    replaced = sum(b.metrics().sum("strata_wal_replicas_replaced_total") for b in c.brokers)
    assert replaced >= 3, f"expected each broker's stream to replace one replica, got {replaced}"


@pytest.mark.timeout(900)
def test_the_replaced_node_deletes_its_stale_stream_directories(cluster, tmp_path):
    c = cluster
    first, _, _, spare = (w.addr for w in c.wal)
    topic = "walgc"
    harness.create_topic(c.bootstrap, topic, PARTITIONS)
    wait_leaders(c, topic, PARTITIONS)
    recs = [harness.Rec(partition=i % PARTITIONS, key=None, value=f"before-{i}".encode()) for i in range(300)]
    harness.produce(c.bootstrap, topic, recs)
    victim = c.wal[0]
    assert not victim.meta, "the replaced node must be WAL-only: it sweeps by its mirrored metadata"
    held = victim.stream_dirs()
    assert {1, 2, 3} <= held, f"the first replica should hold every broker's stream: {held}"

    victim.kill9()
    wait_replaced(c, first, spare)
    # Everything acknowledged so far goes to object storage (the index): the old copy is stale.
    harness.eventually(lambda: all(c.streams()[i]["settled_lsn"] > 0 for i in (1, 2, 3)), 120,
                       what="every stream to upload")

    victim.start()
    harness.eventually(lambda: not ({1, 2, 3} & victim.stream_dirs()), 60,
                       what="the replaced node to delete its stale stream directories")
    assert {1, 2, 3} <= victim.tombstones(), "each dropped stream keeps its seal as a tombstone"
    assert "no longer one of its replicas" in victim.stderr_path.read_text(errors="replace")

    # The cluster keeps working, and everything is still there.
    more = [harness.Rec(partition=i % PARTITIONS, key=None, value=f"after-{i}".encode()) for i in range(300)]
    harness.produce(c.bootstrap, topic, more)
    hw = harness.watermarks(c.bootstrap, topic, PARTITIONS)
    parts = harness.consume(c.bootstrap, topic, PARTITIONS, end={p: hw[p][1] for p in hw})
    harness.assert_dense(parts)
    values = {r.value for rs in parts.values() for r in rs}
    assert {r.value for r in recs + more} <= values


def test_more_replicas_than_peers_is_refused_by_name(strata_bin, tmp_path):
    b = Broker(strata_bin, tmp_path / "bad", env={"STRATA_WAL_REPLICAS": "3"},
               extra_args=["--wal-peers", "127.0.0.1:1,127.0.0.1:2"])
    with pytest.raises(harness.BrokerDied) as died:
        b.start(timeout=30)
    assert "wal.replicas" in str(died.value) and "1..=2" in str(died.value), str(died.value)
