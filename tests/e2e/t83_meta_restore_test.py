"""t83 metadata disaster recovery: the meta leader backs metadata up to the object store
(snapshots under meta/snapshots/, the log since under meta/log/); after the node's whole
data dir is deleted, `strata meta restore --from URL` rebuilds the metadata store and the
restarted node serves every record, byte-equal and in order, and the committed group
offsets. Also: a restore refuses to overwrite a metadata store (exit 2, naming the path),
and a store without backups is refused clearly (exit 1)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import harness
from cluster import Cluster
from harness import Broker, Rec

GROUP = "restore-group"


def config(**meta) -> dict:
    """Fast uploads and backups, so a test needs no long waits (nothing asserts a time); a
    free port for the node's gRPC listener (tests run side by side)."""
    return {
        "tiering": {"flush_interval_ms": 100},
        "meta": {"backup_interval_ms": 1000, "backup_log_ms": 100, "backup_keep": 2,
                 "listen": f"127.0.0.1:{harness.free_port()}", **meta},
    }


def records(topic_partitions: int, n: int, tag: bytes) -> list[Rec]:
    out = []
    for i in range(n):
        key = None if i % 7 == 0 else b"k%d" % (i % 13)
        headers = (("h", b"%d" % i),) if i % 3 == 0 else ()
        value = tag + b"-%06d-" % i + bytes([i % 256]) * (i % 200)
        out.append(Rec(i % topic_partitions, key, value, headers, 1_600_000_000_000 + i))
    return out


def restore(strata_bin: str, url: str, data_dir: Path, *extra: str, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run(
        [strata_bin, "meta", "restore", "--from", url, "--data-dir", str(data_dir), *extra],
        capture_output=True, timeout=120, env=harness.clean_env(env))


def last_applied(b) -> int:
    status, body = b.get("/v1/cluster")
    assert status == 200, body[:300]
    return json.loads(body)["meta"]["last_applied"]


def commit_offsets(bootstrap: str, topic: str, offsets: dict[int, int]):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(harness.consumer_conf(bootstrap, **{"group.id": GROUP}))
    try:
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        c.close()


def committed(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(harness.consumer_conf(bootstrap, **{"group.id": GROUP}))
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        return {tp.partition: tp.offset for tp in got}
    finally:
        c.close()


def backed_up_through(b, index: int):
    """Wait until the backup has put metadata up to `index` into the store."""
    harness.eventually(lambda: b.metrics().sum("strata_meta_backup_index") >= index, 60,
                       what=f"metadata backed up through log index {index}")


def run_restore_case(broker_factory, strata_bin, url: str, list_keys, env: dict | None = None):
    b = broker_factory("before", object_store=url, config=config(), env=env)
    topics = {"history": 3, "single": 1}
    expected: dict[str, list[Rec]] = {}
    for name, parts in topics.items():
        harness.create_topic(b.bootstrap, name, parts)
        recs = records(parts, 1500 if parts > 1 else 400, name.encode())
        delivered = harness.produce(b.bootstrap, name, recs, flush_every=250)
        assert len(delivered) == len(recs)
        expected[name] = recs
    for name, recs in expected.items():
        b.wait_uploaded(name, total=len(recs))
    group_offsets = {0: 123, 1: 77, 2: 500}
    commit_offsets(b.bootstrap, "history", group_offsets)
    assert committed(b.bootstrap, "history", 3) == group_offsets
    backed_up_through(b, last_applied(b))
    keys = list_keys()
    assert any(k.startswith("meta/snapshots/") and k.endswith(".snap") for k in keys), keys
    assert any(k.startswith("meta/log/") for k in keys), keys
    m = b.metrics()
    assert m.sum("strata_meta_backup_snapshots_total") >= 1
    assert m.sum("strata_meta_backup_log_batches_total") >= 1
    b.stop()

    # Lose every local byte: metadata, WAL, cache.
    shutil.rmtree(b.data_dir)
    out = restore(strata_bin, url, b.data_dir, "--node-id", "1", "-o", "json", env=env)
    assert out.returncode == 0, out.stderr.decode()
    report = json.loads(out.stdout)
    assert report["topics"] == 2 and report["partitions"] == 4, report
    assert report["groups"] == 1 and report["objects"] >= 1, report
    assert report["brokers_expired"] == [1], report
    assert (b.data_dir / "meta" / "meta.redb").is_file()

    # A second restore into the same dir refuses, naming the store.
    again = restore(strata_bin, url, b.data_dir, env=env)
    assert again.returncode == 2, again
    err = again.stderr.decode()
    assert str(b.data_dir / "meta" / "meta.redb") in err and "refusing to overwrite" in err, err

    b.start()
    for name, recs in expected.items():
        parts = topics[name]
        wm = harness.watermarks(b.bootstrap, name, parts)
        want = {p: [r for r in recs if r.partition == p] for p in range(parts)}
        assert {p: wm[p] for p in range(parts)} == {p: (0, len(want[p])) for p in range(parts)}, wm
        got = harness.consume(b.bootstrap, name, parts)
        harness.assert_dense(got)
        for p in range(parts):
            assert [r.content() for r in got[p]] == [r.content() for r in want[p]], f"{name}/{p} differs"
    assert committed(b.bootstrap, "history", 3) == group_offsets

    # The restored node takes writes again, after the restored history.
    more = [Rec(0, b"after", b"restored-%d" % i) for i in range(10)]
    delivered = harness.produce(b.bootstrap, "single", more)
    assert [o for _, o in delivered] == list(range(400, 410))
    return b


def test_restore_from_fs_store(broker_factory, strata_bin, tmp_path):
    objects = tmp_path / "objects"  # outside the data dir: it survives the wipe
    url = f"fs://{objects}"

    def list_keys():
        return [str(p.relative_to(objects)) for p in objects.rglob("*") if p.is_file()]

    b = run_restore_case(broker_factory, strata_bin, url, list_keys)
    # Old snapshots are pruned down to meta.backup_keep once more are taken.
    harness.eventually(
        lambda: len([k for k in list_keys() if k.startswith("meta/snapshots/")]) == 2
        and b.metrics().sum("strata_meta_backup_objects_deleted_total") >= 1, 60,
        what="old metadata snapshots pruned to backup_keep = 2")


def test_restore_from_s3(broker_factory, strata_bin, tmp_path, seaweed, s3_bucket):
    url = seaweed.url(s3_bucket)

    def list_keys():
        return [k for k, _ in seaweed.list_objects(s3_bucket)]

    run_restore_case(broker_factory, strata_bin, url, list_keys, env=seaweed.env)


def test_restore_refuses_an_existing_store_and_force_replaces_it(broker_factory, strata_bin, tmp_path):
    objects = tmp_path / "objects"
    url = f"fs://{objects}"
    b = broker_factory("node", object_store=url, config=config())
    harness.create_topic(b.bootstrap, "t", 1)
    backed_up_through(b, last_applied(b))
    b.stop()
    out = restore(strata_bin, url, b.data_dir)
    assert out.returncode == 2, out
    err = out.stderr.decode()
    assert f"a metadata store already exists at {b.meta_dir / 'meta.redb'}" in err, err
    assert "--force" in err, err
    forced = restore(strata_bin, url, b.data_dir, "--force")
    assert forced.returncode == 0, forced.stderr.decode()
    assert "topics            1" in forced.stdout.decode(), forced.stdout.decode()


def test_restore_replays_the_log_after_the_snapshot(broker_factory, strata_bin, tmp_path):
    """Only the snapshot taken when the node began to lead exists (the interval is an hour):
    the topics and the group offsets created after it come back from the log batches."""
    objects = tmp_path / "objects"
    url = f"fs://{objects}"
    b = broker_factory("node", object_store=url,
                       config=config(backup_interval_ms=3_600_000, backup_log_ms=50))
    harness.create_topic(b.bootstrap, "from-log", 2)
    recs = records(2, 200, b"log")
    harness.produce(b.bootstrap, "from-log", recs)
    b.wait_uploaded("from-log", total=len(recs))
    commit_offsets(b.bootstrap, "from-log", {0: 5, 1: 6})
    backed_up_through(b, last_applied(b))
    snaps = list((objects / "meta" / "snapshots").glob("*.snap"))
    assert len(snaps) == 1, snaps
    b.stop()
    shutil.rmtree(b.data_dir)
    out = restore(strata_bin, url, b.data_dir, "-o", "json")
    assert out.returncode == 0, out.stderr.decode()
    report = json.loads(out.stdout)
    assert report["log_entries_applied"] >= 3 and report["stopped_early"] is None, report
    assert report["snapshot_index"] < report["last_index"], report
    assert (report["topics"], report["groups"]) == (1, 1), report
    b.start()
    got = harness.consume(b.bootstrap, "from-log", 2)
    for p in range(2):
        assert [r.content() for r in got[p]] == [r.content() for r in recs if r.partition == p]
    assert committed(b.bootstrap, "from-log", 2) == {0: 5, 1: 6}


def test_restore_from_a_store_without_backups_fails_clearly(strata_bin, tmp_path):
    empty = tmp_path / "empty-store"
    empty.mkdir()
    out = restore(strata_bin, f"fs://{empty}", tmp_path / "data")
    assert out.returncode == 1, out
    err = out.stderr.decode()
    assert "no metadata snapshot under meta/snapshots/" in err, err
    assert not (tmp_path / "data" / "meta" / "meta.redb").exists()


@pytest.mark.parametrize("url, why", [
    ("nope://x", "nope"),
    ("s3://", "bucket"),
])
def test_restore_rejects_a_bad_url(strata_bin, tmp_path, url, why):
    out = restore(strata_bin, url, tmp_path / "data")
    assert out.returncode == 2, out
    assert why in out.stderr.decode().lower(), out.stderr.decode()


def test_restore_skips_a_corrupt_snapshot(broker_factory, strata_bin, tmp_path):
    objects = tmp_path / "objects"
    url = f"fs://{objects}"
    b = broker_factory("node", object_store=url, config=config())
    harness.create_topic(b.bootstrap, "kept", 2)
    backed_up_through(b, last_applied(b))
    b.stop()
    snaps = sorted((objects / "meta" / "snapshots").glob("*.snap"))
    assert snaps
    # A newer snapshot that is damaged: the restore warns, uses the older one plus the log.
    newest = snaps[-1]
    bogus = newest.with_name("%020d.snap" % (int(newest.stem) + 1_000_000))
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    bogus.write_bytes(bytes(data))
    shutil.rmtree(b.data_dir)
    out = restore(strata_bin, url, b.data_dir, "-o", "json")
    assert out.returncode == 0, out.stderr.decode()
    assert "checksum mismatch" in out.stderr.decode(), out.stderr.decode()
    assert json.loads(out.stdout)["topics"] == 1


def test_restore_a_three_node_cluster_into_one_node(strata_bin, tmp_path):
    """3 meta+broker nodes and 3 WAL nodes; wipe every node's data dir; restore node 1 and
    start it alone (single-node metadata, its own local WAL): it serves all the history the
    three brokers wrote, and the group offsets."""
    env = {"STRATA_META_BACKUP_INTERVAL_MS": "1000", "STRATA_META_BACKUP_LOG_MS": "100",
           "STRATA_TIERING_FLUSH_INTERVAL_MS": "100", "STRATA_TIERING_RETENTION_MS": "-1"}
    c = Cluster(strata_bin, tmp_path / "cluster", brokers=3, wal_nodes=3, lease_ms=3000, env=env)
    restored = None
    try:
        c.start()
        parts = 6
        harness.create_topic(c.bootstrap, "spread", parts)
        recs = records(parts, 1200, b"spread")
        harness.produce(c.bootstrap, "spread", recs, flush_every=300)
        for b in c.brokers:
            b.wait_uploaded("spread", total=len(recs))
        leaders = {b.node_id for b in c.brokers if b.topic("spread") and any(
            p["led_here"] for p in b.topic("spread")["partitions"])}
        assert len(leaders) >= 2, f"partitions should be spread over brokers: {leaders}"
        offsets = {0: 10, 3: 20, 5: 30}
        commit_offsets(c.bootstrap, "spread", offsets)

        def meta_leader():
            for b in c.brokers:
                status, body = b.get("/v1/cluster")
                if status == 200 and json.loads(body)["meta"]["this_node_leads"]:
                    return b
            return None

        lead = harness.eventually(meta_leader, 30, what="a meta leader")
        backed_up_through(lead, last_applied(lead))
        c.stop()
        for b in c.brokers:
            shutil.rmtree(b.data_dir)
        for w in c.wal:
            shutil.rmtree(w.data_dir, ignore_errors=True)

        restored = Broker(strata_bin, tmp_path / "restored", object_store=c.object_store, node_id=1,
                          env=env, config=config())
        out = restore(strata_bin, c.object_store, restored.data_dir, "--node-id", "1", "-o", "json")
        assert out.returncode == 0, out.stderr.decode()
        report = json.loads(out.stdout)
        assert report["topics"] == 1 and report["partitions"] == parts, report
        # Brokers stopped cleanly deregistered (if the backup caught it); the others are expired.
        assert report["brokers"] == 3 and set(report["brokers_expired"]) <= {1, 2, 3}, report
        restored.start()
        wm = harness.watermarks(restored.bootstrap, "spread", parts)
        want = {p: [r for r in recs if r.partition == p] for p in range(parts)}
        assert {p: wm[p][1] for p in range(parts)} == {p: len(want[p]) for p in range(parts)}, wm
        got = harness.consume(restored.bootstrap, "spread", parts)
        for p in range(parts):
            assert [r.content() for r in got[p]] == [r.content() for r in want[p]], f"partition {p} differs"
        assert {p: o for p, o in committed(restored.bootstrap, "spread", parts).items() if o >= 0} == offsets
    finally:
        c.stop()
        if restored is not None and restored.alive():
            restored.stop(check=False)
        print(c.logs())
