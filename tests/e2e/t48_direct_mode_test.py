"""t48 direct mode: topics with `strata.storage.mode=direct` are acknowledged once their
object is in object storage (no WAL), with offsets assigned by metadata.

- Topics created through confluent-kafka's AdminClient and through `strata topic create
  --config`; the mode is reported by DescribeConfigs and cannot be altered (INVALID_CONFIG
  naming the key), a bad mode is refused at creation.
- confluent-kafka (acks=all), kafka-python and kcat produce; kcat and confluent-kafka read
  everything back byte for byte, offsets dense per partition and equal to the delivery reports;
  the WAL directory never sees a byte of the direct topic's payloads. On fs and on SeaweedFS.
- Idempotent producers (deduplicated by metadata's CommitDirect apply): confluent-kafka with
  enable.idempotence=true gets exactly its records at dense offsets; on the wire, a retried
  batch gets its original offset and is stored once, a gap is OUT_OF_ORDER_SEQUENCE_NUMBER, an
  old epoch INVALID_PRODUCER_EPOCH, and the state survives a restart; kill -9 under an
  idempotent producer leaves every value exactly once, in order. The direct metrics move.
- kill -9 of the broker under an acks=all producer, then restart: every acknowledged record is
  at its acknowledged offset; a value is stored twice only when a copy was never acknowledged.
- Object store down (writes answer 503 through tools/s3_fault_proxy.py): produces fail with a
  retriable storage error; once it heals, produces succeed again and nothing failed is visible.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import harness
import kwire
from harness import Rec
from t35_idempotent_producer_test import init_pid
from t35_idempotent_producer_test import produce as produce_idem

sys.path.insert(0, str(Path(__file__).resolve().parent / "tools"))
from s3_fault_proxy import S3FaultProxy  # noqa: E402

MODE = "strata.storage.mode"
DIRECT = {MODE: "direct"}
TOOL = Path(__file__).resolve().parent / "tools" / "ack_producer.py"


def make_broker(broker_factory, request, store: str, **env):
    if store == "s3":
        seaweed = request.getfixturevalue("seaweed")
        return broker_factory(object_store=seaweed.url(seaweed.new_bucket()), env={**seaweed.env, **env})
    return broker_factory(env=env)


def cli(strata_bin, broker, *args, ok=True):
    p = subprocess.run([strata_bin, "topic", *args, "--bootstrap", broker.bootstrap],
                       capture_output=True, text=True, timeout=60, env=harness.clean_env())
    if ok:
        assert p.returncode == 0, f"strata topic {args}: exit {p.returncode}\n{p.stderr}"
    return p


def topic_configs(b, topic: str):
    from confluent_kafka.admin import ConfigResource, ResourceType

    res = ConfigResource(ResourceType.TOPIC, topic)
    a = harness.admin_client(b.bootstrap)
    return a.describe_configs([res])[res].result(30)


def kafka_error(fut, timeout=30):
    from confluent_kafka import KafkaException

    try:
        got = fut.result(timeout)
    except KafkaException as e:
        return e.args[0]
    raise AssertionError(f"expected an error, got {got!r}")


def files_containing(root: Path, needle: bytes) -> list[Path]:
    hits = []
    for f in root.rglob("*"):
        if f.is_file() and needle in f.read_bytes():
            hits.append(f)
    return hits


@pytest.mark.timeout(600)
@pytest.mark.parametrize("store", ["fs", "s3"])
def test_direct_topics_round_trip_byte_equal(broker_factory, request, strata_bin, kcat_ok, store):
    from kafka import KafkaProducer

    b = make_broker(broker_factory, request, store)
    harness.create_topic(b.bootstrap, "direct-a", 3, config=DIRECT)
    cli(strata_bin, b, "create", "direct-b", "--partitions", "2", "--config", f"{MODE}=direct")
    harness.wait_topic_metadata(b.bootstrap, "direct-b", 2)
    harness.create_topic(b.bootstrap, "plain", 1)
    assert topic_configs(b, "direct-a")[MODE].value == "direct"
    assert topic_configs(b, "direct-b")[MODE].value == "direct"
    assert topic_configs(b, "plain")[MODE].value == "wal"

    marker = uuid.uuid4().hex.encode()  # in every value: searched for in the WAL afterwards
    now = int(time.time() * 1000)
    # confluent-kafka, acks=all: keys, null keys/values, headers (repeated keys), timestamps.
    recs = []
    for i in range(3000):
        p = i % 3
        key = None if i % 11 == 0 else b"k%d" % i
        value = None if i % 97 == 0 else marker + b"-ck-%d-" % i + bytes(range(256))[: i % 200]
        headers = (("h", b"%d" % i), ("h", None)) if i % 7 == 0 else ()
        recs.append(Rec(p, key, value, headers, now - 1000 + i))
    delivered = harness.produce(b.bootstrap, "direct-a", recs, flush_every=700)
    # kafka-python (its own codec), idempotent (its default).
    kp = KafkaProducer(bootstrap_servers=b.bootstrap, acks="all", linger_ms=5, enable_idempotence=True)
    futures = []
    for i in range(300):
        value = marker + b"-kp-%d" % i
        recs.append(Rec(i % 3, b"kp%d" % i, value, (), now + i))
        futures.append(kp.send("direct-a", key=b"kp%d" % i, value=value, partition=i % 3, timestamp_ms=now + i))
    kp.flush(60)
    for f in futures:
        md = f.get(60)
        delivered.append((md.partition, md.offset))
    kp.close()
    # kcat to direct-b.
    lines = [marker + b"-kcat-%d" % i for i in range(500)]
    out = harness.kcat(["-P", "-b", b.bootstrap, "-t", "direct-b", "-p", "1", "-X", "acks=all"],
                       input=b"\n".join(lines) + b"\n")
    assert out.returncode == 0, out.stderr

    # Read back with confluent-kafka: every record at its delivered offset, byte for byte.
    hw = harness.watermarks(b.bootstrap, "direct-a", 3)
    assert sum(h for _, h in hw.values()) == len(recs)
    consumed = harness.consume(b.bootstrap, "direct-a", 3)
    harness.assert_matches(recs, delivered, consumed)
    # ... and with kcat (librdkafka's consumer path through a different client).
    out = harness.kcat(["-C", "-b", b.bootstrap, "-t", "direct-a", "-o", "beginning", "-e", "-f",
                        harness.KCAT_FORMAT])
    assert out.returncode == 0, out.stderr
    by_kcat = harness.parse_kcat(out.stdout)
    for p in range(3):
        assert [(r.offset, r.key, r.value) for r in by_kcat.get(p, [])] == \
            [(r.offset, r.key, r.value) for r in consumed[p]], f"partition {p}: kcat disagrees"
    out = harness.kcat(["-C", "-b", b.bootstrap, "-t", "direct-b", "-p", "1", "-o", "beginning", "-e", "-f",
                        harness.KCAT_FORMAT])
    assert out.returncode == 0, out.stderr
    got = harness.parse_kcat(out.stdout)[1]
    assert [r.value for r in got] == lines
    assert [r.offset for r in got] == list(range(len(lines)))

    # No byte of a direct topic went through the WAL.
    assert b.wal_dir.exists()
    assert files_containing(b.wal_dir, marker) == []
    # A WAL topic on the same broker still works (and does use the WAL).
    harness.produce(b.bootstrap, "plain", [Rec(0, None, marker + b"-wal")])
    assert harness.consume(b.bootstrap, "plain", 1)[0][0].value == marker + b"-wal"

    # Restart: everything is still there (direct topics have no local state to replay).
    b.stop()
    b.start()
    again = harness.consume(b.bootstrap, "direct-a", 3)
    assert {p: [r.content() for r in again[p]] for p in again} == \
        {p: [r.content() for r in consumed[p]] for p in consumed}


def test_storage_mode_errors(broker_factory, strata_bin):
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, ResourceType

    b = broker_factory()
    harness.create_topic(b.bootstrap, "d", 1, config=DIRECT)
    harness.create_topic(b.bootstrap, "w", 1)
    a = harness.admin_client(b.bootstrap)

    # A bad mode at creation: INVALID_CONFIG naming the key (AdminClient and CLI).
    fs = a.create_topics([NewTopic("bad", num_partitions=1, replication_factor=1, config={MODE: "memory"})])
    err = kafka_error(fs["bad"])
    assert err.code() == KafkaError.INVALID_CONFIG and MODE in err.str(), err
    p = cli(strata_bin, b, "create", "bad2", "--config", f"{MODE}=tape", ok=False)
    assert p.returncode != 0 and MODE in p.stderr, p.stderr

    # The mode is fixed: incremental SET/DELETE and legacy AlterConfigs are refused.
    set_ = lambda k, v: ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)  # noqa: E731
    for topic, entry in [("d", set_(MODE, "wal")), ("w", set_(MODE, "direct")),
                         ("d", ConfigEntry(MODE, None, incremental_operation=AlterConfigOpType.DELETE))]:
        r = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
        err = kafka_error(a.incremental_alter_configs([r])[r])
        assert err.code() == KafkaError.INVALID_CONFIG and MODE in err.str(), (topic, err)
    r = ConfigResource(ResourceType.TOPIC, "d", set_config={MODE: "wal"})
    err = kafka_error(a.alter_configs([r])[r])
    assert err.code() == KafkaError.INVALID_CONFIG and MODE in err.str(), err
    # Setting it to what it is, and legacy AlterConfigs of other keys, keep the mode.
    r = ConfigResource(ResourceType.TOPIC, "d", incremental_configs=[set_(MODE, "direct")])
    a.incremental_alter_configs([r])[r].result(30)
    r = ConfigResource(ResourceType.TOPIC, "d", set_config={"retention.ms": "-1"})
    a.alter_configs([r])[r].result(30)
    assert topic_configs(b, "d")[MODE].value == "direct"
    assert topic_configs(b, "w")[MODE].value == "wal"

    # A batch without a producer id is accepted on the wire.
    frame = kwire.roundtrip(b.kafka_port, kwire.produce_request(8, "d", 0, kwire.record_batch(
        [(None, b"y")], int(time.time() * 1000))))
    assert kwire.parse_produce_first(frame) == (0, 0)
    assert harness.watermarks(b.bootstrap, "d", 1)[0] == (0, 1)


def read_acks(path: Path) -> list[tuple[int, int, bytes]]:
    data = path.read_bytes() if path.exists() else b""
    out = []
    for line in data.split(b"\n")[:-1]:
        p, o, v = line.split(b" ")
        out.append((int(p), int(o), v))
    return out


@pytest.mark.timeout(600)
@pytest.mark.parametrize("store", ["fs", "s3"])
def test_kill9_keeps_acknowledged_direct_records(broker_factory, request, tmp_path, store):
    b = make_broker(broker_factory, request, store)
    topic, partitions = "crash", 3
    harness.create_topic(b.bootstrap, topic, partitions, config=DIRECT)
    acked: dict[bytes, tuple[int, int]] = {}
    sent_first = []
    for round_ in range(2):
        ack_file = tmp_path / f"acks-{round_}.txt"
        first = round_ * 100_000_000
        sent_first.append(first)
        log_path = tmp_path / f"producer-{round_}.log"
        with open(log_path, "wb") as log:
            prod = subprocess.Popen([harness.python(), str(TOOL), b.bootstrap, topic, str(partitions),
                                     str(ack_file), str(first), "90", "2000000"],
                                    stdout=log, stderr=subprocess.STDOUT, env=harness.clean_env())
            try:
                harness.eventually(lambda: ack_file.exists() and ack_file.read_bytes().count(b"\n") >= 200, 60,
                                   what="the producer's first 200 acks")
                time.sleep(1.0)
                b.kill9()
            finally:
                prod.send_signal(signal.SIGTERM)
                try:
                    prod.wait(30)
                except subprocess.TimeoutExpired:
                    prod.kill()
                    prod.wait(10)
        for p, o, v in read_acks(ack_file):
            assert v not in acked, f"{v!r} acknowledged twice"
            acked[v] = (p, o)
        b.start()

        hw = harness.watermarks(b.bootstrap, topic, partitions)
        parts = harness.consume(b.bootstrap, topic, partitions, end={p: hw[p][1] for p in hw})
        harness.assert_dense(parts)
        at: dict[tuple[int, int], bytes] = {}
        copies: dict[bytes, list[tuple[int, int]]] = {}
        for p, recs in parts.items():
            assert len(recs) == hw[p][1]
            for r in recs:
                at[(p, r.offset)] = r.value
                copies.setdefault(r.value, []).append((p, r.offset))
        lost = [(v, po, at.get(po)) for v, po in acked.items() if at.get(po) != v]
        assert not lost, f"round {round_}: {len(lost)} of {len(acked)} acknowledged records moved or lost: {lost[:5]}"
        # A value stored twice must be a retry of a send whose first copy was never
        # acknowledged: at most one of its copies is the acknowledged one.
        for v, where in copies.items():
            if len(where) > 1:
                assert v not in acked or where.count(acked[v]) == 1, f"{v!r} stored at {where}"
        # Nothing stored that the producers did not send.
        for v in copies:
            n = int(v.split(b"-")[1])
            assert any(f <= n < f + 100_000_000 for f in sent_first), v


@pytest.mark.timeout(600)
def test_store_down_fails_produces_then_recovers(broker_factory, seaweed, s3_bucket):
    from confluent_kafka import KafkaError, Producer

    proxy = S3FaultProxy(seaweed.s3_port).start()
    try:
        url = f"s3://{s3_bucket}?endpoint={proxy.endpoint}&region=us-east-1"
        b = broker_factory(object_store=url, env={**seaweed.env, "STRATA_DIRECT_COMMIT_TIMEOUT_MS": "1500"})
        harness.create_topic(b.bootstrap, "d", 1, config=DIRECT)
        harness.produce(b.bootstrap, "d", [Rec(0, None, b"before-%d" % i) for i in range(10)])

        proxy.set_mode("503", methods={"PUT", "POST"})
        results = []
        prod = Producer(harness.producer_conf(b.bootstrap, **{"message.timeout.ms": 6000, "linger.ms": 5}))
        for i in range(20):
            prod.produce("d", value=b"down-%d" % i, partition=0, on_delivery=lambda e, m: results.append(e))
        prod.flush(60)
        assert len(results) == 20
        assert all(e is not None for e in results), results
        # librdkafka retries KAFKA_STORAGE_ERROR until its message timeout.
        assert {e.code() for e in results} <= {KafkaError._MSG_TIMED_OUT, KafkaError.KAFKA_STORAGE_ERROR}, results
        assert harness.watermarks(b.bootstrap, "d", 1)[0][1] == 10, "nothing failed is visible"

        proxy.set_mode("pass")
        after = harness.produce(b.bootstrap, "d", [Rec(0, None, b"after-%d" % i) for i in range(10)])
        offs = [o for _, o in after]
        assert offs == list(range(offs[0], offs[0] + 10))
        got = [r.value for r in harness.consume(b.bootstrap, "d", 1)[0]]
        assert got[:10] == [b"before-%d" % i for i in range(10)]
        assert got[offs[0]:] == [b"after-%d" % i for i in range(10)]
        # Between them only produces whose outcome the producer could not know: a retry that
        # reached the writer just before the store healed may still have been committed.
        assert set(got[10:offs[0]]) <= {b"down-%d" % i for i in range(20)}, got[10:offs[0]]
    finally:
        proxy.stop()


def test_node_default_mode_and_bad_node_config(broker_factory, strata_bin, tmp_path):
    # direct.default_storage_mode=direct: topics created without a mode are direct ...
    b = broker_factory(env={"STRATA_DIRECT_DEFAULT_STORAGE_MODE": "direct"})
    harness.create_topic(b.bootstrap, "by-default", 1)
    harness.create_topic(b.bootstrap, "explicit-wal", 1, config={MODE: "wal"})
    assert topic_configs(b, "by-default")[MODE].value == "direct"
    assert topic_configs(b, "explicit-wal")[MODE].value == "wal"
    marker = uuid.uuid4().hex.encode()
    harness.produce(b.bootstrap, "by-default", [Rec(0, None, marker + b"-%d" % i) for i in range(50)])
    assert [r.value for r in harness.consume(b.bootstrap, "by-default", 1)[0]] == \
        [marker + b"-%d" % i for i in range(50)]
    assert files_containing(b.wal_dir, marker) == []
    # ... and stay direct when the node's default goes back to `wal`.
    b.stop()
    b.env.pop("STRATA_DIRECT_DEFAULT_STORAGE_MODE")
    b.start()
    assert topic_configs(b, "by-default")[MODE].value == "direct"

    # A bad node config refuses to start (exit 2), naming the key.
    for key, value in [("default_storage_mode", '"tape"'), ("batch_window_ms", "0")]:
        cfg = tmp_path / f"bad-{key}.toml"
        cfg.write_text(f"[direct]\n{key} = {value}\n")
        r = subprocess.run([strata_bin, "start", "--config", str(cfg), "--data-dir", str(tmp_path / "bad"),
                            "--kafka-listen", f"127.0.0.1:{harness.free_port()}",
                            "--admin-listen", f"127.0.0.1:{harness.free_port()}"],
                           capture_output=True, timeout=60, env=harness.clean_env())
        err = r.stderr.decode(errors="replace")
        assert r.returncode == 2 and f"direct.{key}" in err, (r.returncode, err[-1000:])


@pytest.mark.timeout(300)
def test_compaction_and_time_lookups_read_relative_blocks(broker_factory):
    from confluent_kafka import Consumer, TopicPartition

    config = {"compaction": {"interval_ms": 300, "min_blocks": 3, "chunk_bytes": 8192,
                             "segment_bytes": 4 * 1024 * 1024}}
    b = broker_factory(config=config)
    harness.create_topic(b.bootstrap, "dc", 2, config=DIRECT)
    t0 = 1_700_000_000_000
    recs, delivered = [], []
    for wave in range(6):  # each wave is its own objects (flushed), so its own blocks
        batch = [Rec(n % 2, b"k%d" % n, b"v%06d-" % n + bytes(range(200)), (("n", b"%d" % n),), t0 + n * 1000)
                 for n in range(wave * 200, (wave + 1) * 200)]
        delivered += harness.produce(b.bootstrap, "dc", batch, **{"linger.ms": 5})
        recs += batch

    def compacted():
        ps = b.topic("dc")["partitions"]
        return all(p["segments"] >= 1 and p["blocks"] - p["segments"] < 3 for p in ps)

    harness.eventually(compacted, 60, what="direct topic compacted")
    # Everything from the segments (absolute offsets), after a restart without cache.
    b.stop()
    import shutil
    shutil.rmtree(b.cache_dir, ignore_errors=True)
    b.start()
    got = harness.consume(b.bootstrap, "dc", 2, **{"max.partition.fetch.bytes": 16384})
    harness.assert_matches(recs, delivered, got)
    # offsets_for_times lands on the right record.
    c = Consumer(harness.consumer_conf(b.bootstrap))
    try:
        for n in (0, 333, 1199):
            want = delivered[n]
            found = c.offsets_for_times([TopicPartition("dc", want[0], t0 + n * 1000)], timeout=20)[0]
            assert (found.partition, found.offset) == want, (n, found)
    finally:
        c.close()


# --------------------------------------------------------------------------------------
# idempotent producers


def test_idempotent_confluent_producer_on_direct_topic(broker_factory):
    from confluent_kafka import Producer

    b = broker_factory()
    topic, partitions, n = "idem-direct", 3, 3000
    harness.create_topic(b.bootstrap, topic, partitions, config=DIRECT)
    acks: list[tuple[int, int, bytes]] = []
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acks.append((msg.partition(), msg.offset(), msg.value()))

    prod = Producer(harness.producer_conf(b.bootstrap, **{"enable.idempotence": True, "acks": "all",
                                                          "linger.ms": 5}))
    for i in range(n):
        prod.produce(topic, value=b"%d" % i, partition=i % partitions, on_delivery=on_delivery)
        if i % 500 == 499:
            prod.flush(60)
    assert prod.flush(60) == 0
    assert errors == [] and len(acks) == n, (errors[:5], len(acks))

    hw = harness.watermarks(b.bootstrap, topic, partitions)
    parts = harness.consume(b.bootstrap, topic, partitions, end={p: hw[p][1] for p in hw})
    harness.assert_dense(parts)
    for p, recs in parts.items():
        # Exactly the values sent to this partition, once each, in the order sent.
        assert [int(r.value) for r in recs] == list(range(p, n, partitions)), f"partition {p}"
    assert sorted(acks) == sorted((p, r.offset, r.value) for p, recs in parts.items() for r in recs)

    m = b.metrics()
    objects = m.sum("strata_direct_objects_committed_total")
    assert objects >= 1
    assert m.sum("strata_direct_batches_total") >= objects
    assert m.sum("strata_direct_object_bytes_total") > 0
    assert m.sum("strata_direct_commit_duration_seconds_count") == objects
    assert m.sum("strata_direct_duplicate_batches_total") == 0
    assert m.sum("strata_direct_commit_failures_total") == 0


def test_idempotent_wire_rules_on_direct_topic_survive_restart(broker_factory):
    b = broker_factory()
    port, topic = b.kafka_port, "idem-direct-wire"
    harness.create_topic(b.bootstrap, topic, 1, config=DIRECT)
    err, pid, epoch = init_pid(port)
    assert (err, epoch) == (0, 0) and pid >= 0
    steps = [
        # (epoch, first sequence, records) -> (error, base offset)
        ((0, 0, 3), (0, 0)),
        ((0, 0, 3), (0, 0)),  # the same batch sent again: its original offset, not stored twice
        ((0, 5, 1), (kwire.OUT_OF_ORDER_SEQUENCE_NUMBER, -1)),  # a gap
        ((0, 3, 2), (0, 3)),
        ((0, 0, 3), (0, 0)),  # still among the last five batches
    ]
    for i, ((ep, seq, n), want) in enumerate(steps):
        assert produce_idem(port, topic, pid, ep, seq, n) == want, f"step {i}"
    # KIP-360 re-init: the new epoch starts at 0; the old epoch is fenced.
    assert init_pid(port, version=3, producer_id=pid, producer_epoch=0) == (0, pid, 1)
    assert produce_idem(port, topic, pid, 1, 3, 1) == (kwire.OUT_OF_ORDER_SEQUENCE_NUMBER, -1)
    assert produce_idem(port, topic, pid, 1, 0, 2) == (0, 5)
    assert produce_idem(port, topic, pid, 0, 5, 1) == (kwire.INVALID_PRODUCER_EPOCH, -1)
    assert harness.watermarks(b.bootstrap, topic, 1)[0][1] == 7
    m = b.metrics()
    assert m.sum("strata_direct_duplicate_batches_total") == 2
    assert m.sum("strata_produce_sequence_errors_total") == 3

    # The producer state is metadata's: a kill -9 keeps it.
    b.kill9()
    b.start()
    assert produce_idem(port, topic, pid, 1, 0, 2) == (0, 5)
    assert produce_idem(port, topic, pid, 0, 7, 1) == (kwire.INVALID_PRODUCER_EPOCH, -1)
    assert produce_idem(port, topic, pid, 1, 4, 1) == (kwire.OUT_OF_ORDER_SEQUENCE_NUMBER, -1)
    assert produce_idem(port, topic, pid, 1, 2, 1) == (0, 7)
    parts = harness.consume(b.bootstrap, topic, 1)
    harness.assert_dense(parts)
    assert [r.value for r in parts[0]] == [b"0-0-0", b"0-0-1", b"0-0-2", b"0-3-0", b"0-3-1", b"1-0-0", b"1-0-1",
                                           b"1-2-0"]


IDEM_TOOL = Path(__file__).resolve().parent / "tools" / "idem_producer.py"


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.timeout(600)
def test_idempotent_producer_through_kill9_on_direct_topic(broker_factory, tmp_path):
    b = broker_factory()
    topic, partitions = "idem-direct-crash", 3
    harness.create_topic(b.bootstrap, topic, partitions, config=DIRECT)
    ack_file, summary_file = tmp_path / "acks.txt", tmp_path / "summary.json"
    log_path = tmp_path / "producer.log"
    with open(log_path, "wb") as log:
        prod = subprocess.Popen(
            [harness.python(), str(IDEM_TOOL), b.bootstrap, topic, str(partitions), str(ack_file),
             str(summary_file), "300"],
            stdout=log, stderr=subprocess.STDOUT, env=harness.clean_env())
        try:
            seen = 0
            for round_ in range(2):
                want = seen + 2000
                harness.eventually(lambda: count_lines(ack_file) >= want, 90,
                                   what=f"round {round_}: {want} acknowledged records")
                assert prod.poll() is None, f"producer exited early: {log_path.read_text(errors='replace')[-2000:]}"
                b.kill9()
                b.start()
                seen = count_lines(ack_file)
            harness.eventually(lambda: count_lines(ack_file) >= seen + 2000, 90,
                               what="acknowledgements after the last restart")
        finally:
            if prod.poll() is None:
                prod.send_signal(signal.SIGTERM)
            try:
                prod.wait(180)
            except subprocess.TimeoutExpired:
                prod.kill()
                prod.wait(10)
    summary = json.loads(summary_file.read_text())
    assert not summary["fatal"], f"fatal producer errors: {summary}"
    assert summary["errors"] == 0 and summary["unflushed"] == 0, f"undelivered records: {summary}"
    assert summary["acked"] == summary["sent"], summary

    acks = []
    for line in ack_file.read_bytes().split(b"\n")[:-1]:
        p, o, v = line.split(b" ")
        acks.append((int(p), int(o), int(v)))
    assert len(acks) == summary["sent"]
    hw = harness.watermarks(b.bootstrap, topic, partitions)
    parts = harness.consume(b.bootstrap, topic, partitions, end={p: hw[p][1] for p in hw})
    harness.assert_dense(parts)
    at = {}
    for p, recs in parts.items():
        values = [int(r.value) for r in recs]
        # No duplicates, no gaps: exactly the values sent to this partition, in order.
        assert values == list(range(p, summary["sent"], partitions)), (
            f"partition {p}: {len(values)} records; first difference at "
            f"{next((i for i, (x, y) in enumerate(zip(values, range(p, summary['sent'], partitions))) if x != y), None)}")
        for r in recs:
            at[int(r.value)] = (p, r.offset)
    wrong = [(v, (p, o), at.get(v)) for p, o, v in acks if at.get(v) != (p, o)]
    assert not wrong, f"{len(wrong)} acknowledged records not at their acknowledged offset, e.g. {wrong[:5]}"
