"""t80 cluster: 3 brokers (meta + broker roles, one raft group) and 3 WAL
replicas as separate processes on 127.0.0.1, R=3 W=2 (issue 3).

- kill -9 one WAL replica under an acks=all producer and restart it: the
  producer sees no error beyond retries, and every acknowledged record is read
  back at its acknowledged offset, dense, no duplicates;
- kill -9 a broker under load: its partitions move (through metadata) to a live
  broker, which recovers the dead broker's WAL stream from the replicas and
  uploads it; every acknowledged record is readable, and the partitions take
  writes again.
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

import harness
from cluster import Cluster, wait_leaders
from t20_crash_test import Acked, count_lines, read_acks

PARTITIONS = 3
TOOL = Path(__file__).resolve().parent / "tools" / "ack_producer.py"


@pytest.fixture
def cluster(strata_bin, tmp_path):
    c = Cluster(strata_bin, tmp_path, brokers=3, wal_nodes=3, lease_ms=3000)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        print(c.logs())


def start_producer(bootstrap: str, topic: str, tmp_path: Path, tag: str, first: int, idempotent: bool = False):
    ack_file = tmp_path / f"acks-{tag}.txt"
    log_path = tmp_path / f"producer-{tag}.log"
    log = open(log_path, "wb")
    prod = subprocess.Popen([harness.python(), str(TOOL), bootstrap, topic, str(PARTITIONS), str(ack_file),
                             str(first), "120", "5000000"] + (["idempotent"] if idempotent else []),
                            stdout=log, stderr=subprocess.STDOUT, env=harness.clean_env())
    return prod, ack_file, log_path


def stop_producer(prod, log_path: Path) -> int:
    """Stops the producer; returns the delivery errors it reported."""
    if prod.poll() is None:
        prod.terminate()
    prod.wait(60)
    text = log_path.read_text(errors="replace")
    m = re.search(r"delivery errors (\d+)", text)
    assert m, f"producer did not report: {text[-2000:]}"
    return int(m.group(1))


def verify(c: Cluster, topic: str, acked: Acked, tag: str, duplicates_allowed: bool = False):
    """Every acknowledged record is at its acknowledged offset and offsets are dense.
    Without idempotence a record whose ack was lost in the kill is retried by the
    client and may be stored twice (Kafka's at-least-once); with it, never."""
    hw = harness.watermarks(c.bootstrap, topic, PARTITIONS)
    parts = harness.consume(c.bootstrap, topic, PARTITIONS, end={p: hw[p][1] for p in hw})
    harness.assert_dense(parts)
    seen: dict[bytes, set] = {}
    for p, recs in parts.items():
        for r in recs:
            seen.setdefault(r.value, set()).add((p, r.offset))
    twice = {v: at for v, at in seen.items() if len(at) > 1}
    if not duplicates_allowed:
        assert not twice, f"{tag}: {len(twice)} values stored twice, e.g. {list(twice.items())[:3]}"
    lost = [(v, po) for v, po in acked.by_value.items() if po not in seen.get(v, ())]
    assert not lost, (f"{tag}: {len(lost)} of {len(acked.by_value)} acknowledged records are not at their "
                      f"acknowledged offset, e.g. {[(v, po, seen.get(v)) for v, po in lost[:5]]}")
    print(f"{tag}: {len(acked.by_value)} acknowledged records verified; {len(twice)} stored twice by client retries")
    return parts


@pytest.mark.timeout(600)
def test_wal_replica_kill9_under_acks_all(cluster, tmp_path):
    c = cluster
    topic = "walkill"
    harness.create_topic(c.bootstrap, topic, PARTITIONS)
    leaders = wait_leaders(c, topic, PARTITIONS)
    assert len(set(leaders.values())) > 1, f"partitions should spread over brokers: {leaders}"

    prod, ack_file, log_path = start_producer(c.bootstrap, topic, tmp_path, "walkill", 0)
    try:
        harness.eventually(lambda: count_lines(ack_file) >= 200, 60, what="the producer's first acks")
        victim = c.wal[1]
        victim.kill9()
        before = count_lines(ack_file)
        # Writes keep committing on the two replicas left.
        harness.eventually(lambda: count_lines(ack_file) >= before + 500, 60,
                           what="acks to continue with one WAL replica down")
        victim.start()
        after = count_lines(ack_file)
        harness.eventually(lambda: count_lines(ack_file) >= after + 500, 60,
                           what="acks to continue after the replica came back")
    finally:
        errors = stop_producer(prod, log_path)
    assert errors == 0, f"the producer saw {errors} delivery errors"
    acked = Acked()
    acked.add(read_acks(ack_file))
    assert len(acked.by_value) >= 1200
    verify(c, topic, acked, "after a WAL replica's kill -9")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("idempotent,combined", [(False, False), (True, False), (True, True)],
                         ids=["at-least-once", "idempotent", "idempotent-combined-roles"])
def test_broker_kill9_fails_over_to_a_live_broker(strata_bin, tmp_path, idempotent, combined):
    """`combined`: every node is meta + WAL replica + broker, so the kill also takes
    one of the three WAL replicas of every stream (and the dead broker's own)."""
    c = Cluster(strata_bin, tmp_path, brokers=3, wal_nodes=3, lease_ms=3000, combined=combined)
    try:
        c.start()
        failover(c, tmp_path, idempotent)
    finally:
        c.stop()
        print(c.logs())


def failover(c: Cluster, tmp_path: Path, idempotent: bool):
    topic = "failover"
    harness.create_topic(c.bootstrap, topic, PARTITIONS)
    leaders = wait_leaders(c, topic, PARTITIONS)
    victim_id = leaders[0]
    victim = c.broker(victim_id)

    prod, ack_file, log_path = start_producer(c.bootstrap, topic, tmp_path, "failover", 0, idempotent)
    try:
        harness.eventually(lambda: count_lines(ack_file) >= 300, 60, what="the producer's first acks")
        victim.kill9()
        killed_at = time.monotonic()
        moved = wait_leaders(c, topic, PARTITIONS, exclude={victim_id}, timeout=60)
        # Writable again: acks for the moved partition resume.
        acks_at_kill = read_acks(ack_file)
        last = max((o for p, o, _ in acks_at_kill if p == 0), default=-1)
        harness.eventually(lambda: any(p == 0 and o > last for p, o, _ in read_acks(ack_file)), 60,
                           what="partition 0 to take writes on its new leader")
        print(f"failover: partition 0 moved {victim_id} -> {moved[0]}, writable again "
              f"{time.monotonic() - killed_at:.1f} s after the kill")
    finally:
        stop_producer(prod, log_path)
    acked = Acked()
    acked.add(read_acks(ack_file))
    c.brokers.remove(victim)  # the rest of the test talks to the live brokers only
    try:
        parts = verify(c, topic, acked, "after a broker's kill -9", duplicates_allowed=not idempotent)
        assert sum(len(r) for r in parts.values()) >= len(acked.by_value)
    finally:
        c.brokers.append(victim)


@pytest.mark.timeout(600)
def test_wal_replica_disk_full_is_absorbed_by_the_quorum(strata_bin, tmp_path):
    """One WAL replica's disk fills up (a 1 MiB tmpfs): it stops that stream for good
    (a failed write or fdatasync may have lost pages) and says so by name; the two
    others keep the quorum, so producers see nothing and lose nothing."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    c = Cluster(strata_bin, tmp_path, brokers=3, wal_nodes=3, lease_ms=3000)
    victim = c.wal[2]
    victim.data_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(victim.data_dir)], check=True)
    try:
        c.start()
        topic = "diskfull"
        harness.create_topic(c.bootstrap, topic, PARTITIONS)
        wait_leaders(c, topic, PARTITIONS)
        prod, ack_file, log_path = start_producer(c.bootstrap, topic, tmp_path, "diskfull", 0)
        try:
            harness.eventually(lambda: "No space left on device" in harness.tail(victim.stderr_path, 200), 120,
                               what="the WAL replica to hit the full disk")
            before = count_lines(ack_file)
            harness.eventually(lambda: count_lines(ack_file) >= before + 1000, 60,
                               what="acks to continue past the full replica")
        finally:
            errors = stop_producer(prod, log_path)
        assert errors == 0, f"the producer saw {errors} delivery errors"
        assert victim.alive(), "a full disk stops the stream on that replica, not the process"
        # The replica says so on its admin listener: /health is 503 naming the stopped streams
        # (the probes of a WAL-only pod), /metrics counts them; a healthy replica is 200 and
        # has timed its group commits.
        status, body = harness.http_get(f"http://127.0.0.1:{victim.admin_port}/health")
        health = json.loads(body)
        assert status == 503 and health["status"] == "failed", (status, health)
        assert health["failed_wal_streams"], health
        assert "store failed" in health["reason"], health
        _, body = harness.http_get(f"http://127.0.0.1:{victim.admin_port}/metrics")
        metrics = harness.Metrics.parse(body.decode())
        assert metrics.sum("strata_wal_replica_streams_failed") == len(health["failed_wal_streams"]), metrics.text
        for stream in health["failed_wal_streams"]:
            assert metrics.sum("strata_wal_replica_stream_failed", stream=stream) == 1, metrics.text
        status, body = harness.http_get(f"http://127.0.0.1:{c.wal[0].admin_port}/health")
        assert status == 200 and json.loads(body) == {"status": "ok"}, body
        _, body = harness.http_get(f"http://127.0.0.1:{c.wal[0].admin_port}/metrics")
        metrics = harness.Metrics.parse(body.decode())
        commits = metrics.sum("strata_wal_replica_fdatasync_duration_seconds_count")
        assert commits >= 1 and metrics.sum("strata_wal_replica_stream_syncs_total") >= 1, metrics.text
        acked = Acked()
        acked.add(read_acks(ack_file))
        verify(c, topic, acked, "after a WAL replica's disk filled up")
    finally:
        c.stop()
        subprocess.run(["umount", "-l", str(victim.data_dir)], check=False)
        print(c.logs())


@pytest.mark.timeout(600)
def test_corrupted_wal_replica_segment_is_a_named_fatal_error(cluster, tmp_path):
    """A WAL replica whose segment is damaged in the middle refuses to start (exit 3)
    and names the file and byte offset; the cluster keeps writing on the others."""
    c = cluster
    topic = "corrupt"
    harness.create_topic(c.bootstrap, topic, PARTITIONS)
    wait_leaders(c, topic, PARTITIONS)
    records = [harness.Rec(i % PARTITIONS, None, b"r-%06d" % i) for i in range(3000)]
    harness.produce(c.bootstrap, topic, records[:1500], flush_every=100)
    victim = c.wal[0]
    victim.stop()
    segments = sorted(victim.data_dir.glob("wal/streams/*/*.wal"), key=lambda p: p.stat().st_size)
    segment = segments[-1]
    size = segment.stat().st_size
    assert size > 4096, f"expected a segment with records, got {[(s, s.stat().st_size) for s in segments]}"
    with open(segment, "r+b") as f:
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    victim.start(wait=False)
    rc = victim.proc.wait(60)
    err = harness.tail(victim.stderr_path, 40)
    assert rc == 3, f"a corrupted WAL replica must exit 3, got {rc}:\n{err}"
    assert segment.name in err and "offset" in err, f"the error must name the file and offset:\n{err}"
    # Two replicas of three are a quorum: writes go on.
    delivered = harness.produce(c.bootstrap, topic, records[1500:], flush_every=100)
    assert len(delivered) == 1500
    parts = harness.consume(c.bootstrap, topic, PARTITIONS)
    assert sum(len(r) for r in parts.values()) == 3000
    harness.assert_dense(parts)
