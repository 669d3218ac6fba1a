"""t35 idempotent producer: InitProducerId, sequence checks and duplicate answers on the
wire; kafka-python's default (idempotent) KafkaProducer; and an idempotent confluent-kafka
producer that keeps producing through broker kill -9s, after which every partition holds
each produced value exactly once, in order, at dense offsets. In a cluster, the producers'
state moves with a partition in a planned move (`strata cluster drain`): the new leader
answers a retry of a batch written before the move with its original offset, and a gap
with OUT_OF_ORDER_SEQUENCE_NUMBER; a confluent-kafka producer writing across the drain gets
no error and every value lands exactly once."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

import harness
import kwire
from cluster import Cluster, wait_leaders

TOOL = Path(__file__).resolve().parent / "tools" / "idem_producer.py"


# --------------------------------------------------------------------------------------
# the protocol, poked by hand


def init_pid(port: int, version: int = 1, **kw) -> tuple[int, int, int]:
    return kwire.parse_init_producer_id(kwire.roundtrip(port, kwire.init_producer_id_request(version, **kw)), version)


def produce(port: int, topic: str, pid: int, epoch: int, seq: int, count: int, partition: int = 0) -> tuple[int, int]:
    """One idempotent batch of `count` records -> (error_code, base_offset)."""
    batch = kwire.record_batch([(None, b"%d-%d-%d" % (epoch, seq, i)) for i in range(count)], 1_700_000_000_000,
                               producer_id=pid, producer_epoch=epoch, base_sequence=seq)
    return kwire.parse_produce_first(kwire.roundtrip(port, kwire.produce_request(7, topic, partition, batch)))


def high_watermark(b, topic: str) -> int:
    return harness.watermarks(b.bootstrap, topic, 1)[0][1]


def test_wire_init_producer_id_sequences_and_restart(broker_factory):
    # No upload (so no WAL trim) until the test asks for one: the kill -9 below must find
    # every batch still in the WAL.
    b = broker_factory(env={"STRATA_TIERING_FLUSH_INTERVAL_MS": "3600000"})
    port = b.kafka_port
    topic = "idem-wire"
    harness.create_topic(b.bootstrap, topic, 1)

    _, err, apis = kwire.parse_api_versions_v0(kwire.roundtrip(port, kwire.api_versions_v0()))
    assert err == 0 and apis.get(kwire.API_INIT_PRODUCER_ID) == (0, 5)

    err, pid, epoch = init_pid(port)
    assert (err, epoch) == (0, 0) and pid >= 0
    err, pid2, _ = init_pid(port, version=3)
    assert err == 0 and pid2 != pid
    # Transactions are refused with an error every client treats as fatal.
    assert init_pid(port, transactional_id="tx-1")[0] == kwire.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    assert init_pid(port, version=3, transactional_id="tx-1")[0] == kwire.TRANSACTIONAL_ID_AUTHORIZATION_FAILED

    steps = [
        # (epoch, first sequence, records) -> (error, base offset)
        ((0, 0, 3), (0, 0)),
        ((0, 0, 3), (0, 0)),  # a retry: the original offset, nothing written
        ((0, 5, 1), (kwire.OUT_OF_ORDER_SEQUENCE_NUMBER, -1)),
        ((0, 3, 2), (0, 3)),
        ((0, 0, 3), (0, 0)),  # still among the last five batches
    ]
    for i, ((ep, seq, n), want) in enumerate(steps):
        assert produce(port, topic, pid, ep, seq, n) == want, f"step {i}"
    assert high_watermark(b, topic) == 5

    # KIP-360 re-init: same id, next epoch. The new epoch starts at sequence 0; once a
    # partition has seen it, the old epoch is fenced there.
    assert init_pid(port, version=3, producer_id=pid, producer_epoch=0) == (0, pid, 1)
    assert produce(port, topic, pid, 1, 3, 1) == (kwire.OUT_OF_ORDER_SEQUENCE_NUMBER, -1)
    assert produce(port, topic, pid, 1, 0, 2) == (0, 5)
    assert produce(port, topic, pid, 0, 5, 1) == (kwire.INVALID_PRODUCER_EPOCH, -1)
    # An id the cluster never handed out gets a fresh one.
    err, fresh, ep = init_pid(port, version=3, producer_id=10**15, producer_epoch=4)
    assert err == 0 and ep == 0 and fresh not in (pid, pid2, 10**15)

    # After kill -9 the WAL rebuilds the producer state: retries are still duplicates.
    b.kill9()
    b.start()
    assert produce(port, topic, pid, 1, 0, 2) == (0, 5)
    assert produce(port, topic, pid, 0, 3, 2) == (kwire.INVALID_PRODUCER_EPOCH, -1)
    assert produce(port, topic, pid, 1, 4, 1) == (kwire.OUT_OF_ORDER_SEQUENCE_NUMBER, -1)
    assert produce(port, topic, pid, 1, 2, 1) == (0, 7)
    assert high_watermark(b, topic) == 8
    # Producer ids are never reused across restarts.
    err, after, _ = init_pid(port)
    assert err == 0 and after > max(pid, pid2, fresh)

    m = b.metrics()
    assert m.sum("strata_produce_duplicate_batches_total") == 1
    assert m.sum("strata_produce_sequence_errors_total") == 2

    # Once everything is uploaded the WAL is trimmed, and a restart finds no producer state:
    # the producer is unknown, so its next batch is accepted whatever its sequence (Kafka's
    # rule after state loss; the documented limit of what a restart can rebuild).
    b.stop()
    b.env["STRATA_TIERING_FLUSH_INTERVAL_MS"] = "100"
    b.start()
    wal_dir = b.data_dir / "wal"
    harness.eventually(lambda: sum(f.stat().st_size for f in wal_dir.glob("*.wal")) < 100, 60,
                       what="the WAL trimmed to an empty segment")
    b.kill9()
    b.start()
    assert b.metrics().sum("strata_producer_states") == 0
    assert produce(port, topic, pid, 1, 3, 1) == (0, 8)
    assert b.metrics().sum("strata_producer_states") == 1
    assert produce(port, topic, pid, 1, 5, 1) == (kwire.OUT_OF_ORDER_SEQUENCE_NUMBER, -1)

    parts = harness.consume(b.bootstrap, topic, 1)
    harness.assert_dense(parts)
    assert [r.value for r in parts[0]] == [b"0-0-0", b"0-0-1", b"0-0-2", b"0-3-0", b"0-3-1", b"1-0-0", b"1-0-1",
                                           b"1-2-0", b"1-3-0"]


# --------------------------------------------------------------------------------------
# kafka-python, default configuration


def test_kafka_python_default_producer_is_idempotent_and_exact(broker):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    partitions, n = 3, 5000
    topic = "idem-kp"
    harness.create_topic(broker.bootstrap, topic, partitions)
    prod = KafkaProducer(bootstrap_servers=broker.bootstrap)  # defaults: idempotent, acks=all
    try:
        futures = [prod.send(topic, value=b"%d" % i, partition=i % partitions) for i in range(n)]
        prod.flush(60)
        metas = [f.get(timeout=30) for f in futures]
    finally:
        prod.close(timeout=10)
    assert sorted((m.partition, m.offset) for m in metas) == sorted(
        (p, o) for p in range(partitions) for o in range(n // partitions + (1 if p < n % partitions else 0)))
    # The batches carried a producer id: the broker tracks one producer per partition.
    assert broker.metrics().sum("strata_producer_states") == partitions

    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="earliest", consumer_timeout_ms=1000)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        got = []
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                got.extend(recs)
    finally:
        c.close()
    values = sorted(int(r.value) for r in got)
    assert values == list(range(n)), f"consumed {len(got)} records for {n} sent (exactly once expected)"
    for r in got:
        assert int(r.value) % partitions == r.partition


# --------------------------------------------------------------------------------------
# confluent-kafka through kill -9


def read_acks(path: Path) -> list[tuple[int, int, int]]:
    data = path.read_bytes() if path.exists() else b""
    out = []
    for line in data.split(b"\n")[:-1]:
        p, o, v = line.split(b" ")
        out.append((int(p), int(o), int(v)))
    return out


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.timeout(600)
@pytest.mark.parametrize("store", ["fs", "s3"])
def test_idempotent_producer_through_kill9(broker_factory, tmp_path, request, store):
    partitions = 3
    if store == "s3":
        # Uploads (and WAL trims) every 100 ms: much of the producers' history is only in
        # object storage at the kill.
        seaweed = request.getfixturevalue("seaweed")
        b = broker_factory(object_store=seaweed.url(seaweed.new_bucket()),
                           env={**seaweed.env, "STRATA_TIERING_FLUSH_INTERVAL_MS": "100"})
    else:
        b = broker_factory()
    topic = "idem-crash"
    harness.create_topic(b.bootstrap, topic, partitions)
    ack_file, summary_file = tmp_path / "acks.txt", tmp_path / "summary.json"
    log_path = tmp_path / "producer.log"
    with open(log_path, "wb") as log:
        prod = subprocess.Popen(
            [harness.python(), str(TOOL), b.bootstrap, topic, str(partitions), str(ack_file), str(summary_file), "300"],
            stdout=log, stderr=subprocess.STDOUT, env=harness.clean_env())
        duplicates = 0  # retries answered with their original offset, over all runs of the broker
        try:
            seen = 0
            for round_ in range(2):
                want = seen + 2000
                harness.eventually(lambda: count_lines(ack_file) >= want, 90,
                                   what=f"round {round_}: {want} acknowledged records")
                assert prod.poll() is None, f"producer exited early: {log_path.read_text(errors='replace')[-2000:]}"
                duplicates += b.metrics().sum("strata_produce_duplicate_batches_total")
                b.kill9()
                time.sleep(1.0)  # the producer keeps retrying against a dead port
                b.start()
                seen = count_lines(ack_file)
            harness.eventually(lambda: count_lines(ack_file) >= seen + 2000, 90,
                               what="acknowledgements after the last restart")
            duplicates += b.metrics().sum("strata_produce_duplicate_batches_total")
        finally:
            if prod.poll() is None:
                prod.send_signal(signal.SIGTERM)
            try:
                prod.wait(180)
            except subprocess.TimeoutExpired:
                prod.kill()
                prod.wait(10)
    summary = json.loads(summary_file.read_text())
    print(f"producer: {summary}; duplicate batches answered by the broker: {duplicates:.0f}")
    verify_exactly_once(b.bootstrap, topic, partitions, summary, ack_file)


def verify_exactly_once(bootstrap: str, topic: str, partitions: int, summary: dict, ack_file: Path):
    """idem_producer.py's run: no error reached the app, and every partition holds exactly the
    values sent to it, once each, in the order sent, at dense offsets, each at its
    acknowledged offset."""
    assert not summary["fatal"], f"fatal producer errors: {summary}"
    assert summary["errors"] == 0 and summary["unflushed"] == 0, f"undelivered records: {summary}"
    assert summary["acked"] == summary["sent"], summary

    acks = read_acks(ack_file)
    assert len(acks) == summary["sent"]
    hw = harness.watermarks(bootstrap, topic, partitions)
    parts = harness.consume(bootstrap, topic, partitions, end={p: hw[p][1] for p in hw})
    harness.assert_dense(parts)
    at = {}
    for p, recs in parts.items():
        values = [int(r.value) for r in recs]
        # Exactly the values sent to this partition, once each, in the order sent.
        assert values == list(range(p, summary["sent"], partitions)), (
            f"partition {p}: {len(values)} records; first difference at "
            f"{next((i for i, (x, y) in enumerate(zip(values, range(p, summary['sent'], partitions))) if x != y), None)}")
        for r in recs:
            at[int(r.value)] = (p, r.offset)
    wrong = [(v, (p, o), at.get(v)) for p, o, v in acks if at.get(v) != (p, o)]
    assert not wrong, f"{len(wrong)} acknowledged records not at their acknowledged offset, e.g. {wrong[:5]}"


# --------------------------------------------------------------------------------------
# a planned move (issue 5): the producers' state goes with the partition


def stop_idem_producer(prod, log_path: Path):
    if prod.poll() is None:
        prod.send_signal(signal.SIGTERM)
    try:
        prod.wait(180)
    except subprocess.TimeoutExpired:
        prod.kill()
        prod.wait(10)
    return log_path.read_text(errors="replace")


@pytest.mark.timeout(600)
def test_producer_state_moves_with_a_drained_partition(strata_bin, tmp_path):
    c = Cluster(strata_bin, tmp_path, brokers=3, combined=True, lease_ms=3000)
    try:
        c.start()
        # By hand, on the wire: a producer whose batches the drained broker wrote.
        wire = "idem-move-wire"
        harness.create_topic(c.bootstrap, wire, 1)
        leaving = wait_leaders(c, wire, 1)[0]
        port = c.broker(leaving).kafka_port
        err, pid, epoch = init_pid(port)
        assert err == 0 and pid >= 0
        assert produce(port, wire, pid, epoch, 0, 3) == (0, 0)
        assert produce(port, wire, pid, epoch, 3, 2) == (0, 3)

        # A confluent-kafka idempotent producer writes throughout the drain.
        topic, partitions = "idem-move", 6
        harness.create_topic(c.bootstrap, topic, partitions)
        wait_leaders(c, topic, partitions)
        ack_file, summary_file = tmp_path / "acks.txt", tmp_path / "summary.json"
        log_path = tmp_path / "producer.log"
        with open(log_path, "wb") as log:
            prod = subprocess.Popen(
                [harness.python(), str(TOOL), c.bootstrap, topic, str(partitions), str(ack_file),
                 str(summary_file), "300"],
                stdout=log, stderr=subprocess.STDOUT, env=harness.clean_env())
        try:
            harness.eventually(lambda: count_lines(ack_file) >= 3000, 90, what="acknowledgements before the drain")
            r = subprocess.run([strata_bin, "cluster", "drain", str(leaving), "--admin", c.brokers[0].admin_url],
                               capture_output=True, text=True, timeout=60, env=harness.clean_env())
            assert r.returncode == 0, r
            harness.eventually(lambda: leaving not in c.leaders(wire, 1).values()
                               and leaving not in c.leaders(topic, partitions).values(), 120,
                               what=f"every partition to leave broker {leaving}")
            seen = count_lines(ack_file)
            harness.eventually(lambda: count_lines(ack_file) >= seen + 3000, 90,
                               what="acknowledgements after the drain")
            assert prod.poll() is None, f"producer exited early: {log_path.read_text(errors='replace')[-2000:]}"
        finally:
            out = stop_idem_producer(prod, log_path)
        summary = json.loads(summary_file.read_text())
        print(f"producer across the drain: {summary}")
        assert prod.returncode == 0, out[-2000:]
        verify_exactly_once(c.bootstrap, topic, partitions, summary, ack_file)

        # The new leader knows the producer: a retry of a batch the old leader wrote is a
        # duplicate (its original offset, nothing written), a gap is out of order. Without
        # the handover it would have written the retry again at offset 5.
        new = wait_leaders(c, wire, 1, exclude={leaving})[0]
        port = c.broker(new).kafka_port
        dups = c.broker(new).metrics().sum("strata_produce_duplicate_batches_total")
        assert produce(port, wire, pid, epoch, 3, 2) == (0, 3)
        assert produce(port, wire, pid, epoch, 0, 3) == (0, 0)
        assert produce(port, wire, pid, epoch, 6, 1) == (kwire.OUT_OF_ORDER_SEQUENCE_NUMBER, -1)
        assert produce(port, wire, pid, epoch, 5, 1) == (0, 5)
        assert c.broker(new).metrics().sum("strata_produce_duplicate_batches_total") == dups + 2
        parts = harness.consume(c.bootstrap, wire, 1)
        harness.assert_dense(parts)
        assert [r.value for r in parts[0]] == [b"0-0-0", b"0-0-1", b"0-0-2", b"0-3-0", b"0-3-1", b"0-5-0"]
    finally:
        c.stop()
