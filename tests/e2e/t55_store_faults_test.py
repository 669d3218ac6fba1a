"""t55 store faults: a broker on S3 (SeaweedFS) behind a fault-injecting proxy
(tools/s3_fault_proxy.py) keeps acknowledging produces while the store fails, catches up
once it heals, and loses nothing that it acknowledged.

- SlowDown: every write (PUT/POST) answers 503 SlowDown for ~20 s. Producers (acks=all) keep
  being acknowledged (the WAL absorbs it), the upload-failure counter rises, nothing is
  uploaded; after healing everything is uploaded, and a broker that lost its WAL (kill -9,
  WAL deleted) serves every acknowledged record, exactly once, in order, from S3 alone.
- WAL full: with a 2 MiB WAL and writes failing, produces get KAFKA_STORAGE_ERROR (a
  retriable error, promptly: no hang, no crash); after healing the retried produces succeed.
- Blackhole: writes are held unanswered (each attempt ends on the store's request timeout);
  it heals the same way.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

import harness

sys.path.insert(0, str(Path(__file__).resolve().parent / "tools"))
from s3_fault_proxy import S3FaultProxy  # noqa: E402

PARTITIONS = 3
WRITES = {"PUT", "POST"}  # single PUTs, multipart parts, initiate and complete


@pytest.fixture
def proxy(seaweed):
    p = S3FaultProxy(seaweed.s3_port).start()
    yield p
    p.stop()


def start_broker(broker_factory, seaweed, s3_bucket, proxy, **env):
    url = f"s3://{s3_bucket}?endpoint={proxy.endpoint}&region=us-east-1"
    return broker_factory(object_store=url, env={**seaweed.env, "STRATA_TIERING_FLUSH_INTERVAL_MS": "200", **env})


class Acks:
    """A producer that sends numbered records and remembers what was acknowledged."""

    def __init__(self, bootstrap: str, topic: str, tag: str, **conf):
        from confluent_kafka import Producer

        self.topic = topic
        self.tag = tag
        self.sent = 0
        self.acked: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(PARTITIONS)}
        self.ack_times: list[float] = []
        self.errors: list = []  # (value, KafkaError)
        self.producer = Producer(harness.producer_conf(bootstrap, **{"linger.ms": 5, **conf}))

    def _report(self, err, msg):
        if err is None:
            self.acked[msg.partition()].append((msg.offset(), msg.value()))
            self.ack_times.append(time.monotonic())
        else:
            self.errors.append((msg.value(), msg.partition(), err))

    def send(self, value: bytes, partition: int):
        while True:
            try:
                self.producer.produce(self.topic, value=value, partition=partition, on_delivery=self._report)
                self.sent += 1
                return
            except BufferError:
                self.producer.poll(0.05)

    def run(self, seconds: float, per_second: int, size: int = 200, until=None):
        """Sends about `per_second` records a second for `seconds` (or until `until()`)."""
        deadline = time.monotonic() + seconds
        pad = b"x" * max(0, size - 24)
        while time.monotonic() < deadline and not (until and until()):
            for _ in range(max(1, per_second // 20)):
                n = self.sent
                self.send(b"%s-%010d-" % (self.tag.encode(), n) + pad, n % PARTITIONS)
            self.producer.poll(0.05)

    def flush(self, timeout: float = 60):
        left = self.producer.flush(timeout)
        assert left == 0, f"{left} records still unacknowledged after {timeout}s; errors: {self.errors[:3]}"

    def count(self) -> int:
        return sum(len(v) for v in self.acked.values())


def merged(*producers: Acks) -> dict[int, list[tuple[int, bytes]]]:
    out = {p: [] for p in range(PARTITIONS)}
    for a in producers:
        for p, recs in a.acked.items():
            out[p].extend(recs)
    for p in out:
        out[p].sort()
    return out


def assert_consumed_exactly(b: harness.Broker, topic: str, expected: dict[int, list[tuple[int, bytes]]]):
    """Every acknowledged record is at the offset its acknowledgement gave, exactly once, in
    order, and the partition holds nothing else."""
    consumed = harness.consume(b.bootstrap, topic, PARTITIONS, timeout=60)
    harness.assert_dense(consumed)
    for p in range(PARTITIONS):
        got = [(r.offset, r.value) for r in consumed[p]]
        want = expected[p]
        assert len(got) == len(want), f"partition {p}: consumed {len(got)} records, {len(want)} were acknowledged"
        if got != want:
            i = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
            raise AssertionError(f"partition {p} differs at index {i}: consumed {got[i]!r:.80}, acknowledged {want[i]!r:.80}")


def uploaded_nothing_beyond(b: harness.Broker, topic: str, uploaded: dict[int, int]) -> bool:
    t = b.topic(topic)
    return all(p["uploaded_offset"] <= uploaded[p["partition"]] for p in t["partitions"])


def uploaded_offsets(b: harness.Broker, topic: str) -> dict[int, int]:
    return {p["partition"]: p["uploaded_offset"] for p in b.topic(topic)["partitions"]}


@pytest.mark.timeout(180)
def test_slow_down_is_absorbed_by_the_wal_and_heals(broker_factory, seaweed, s3_bucket, proxy):
    b = start_broker(broker_factory, seaweed, s3_bucket, proxy)
    topic = "slowdown"
    harness.create_topic(b.bootstrap, topic, PARTITIONS)
    before = b.metrics()
    before_uploaded = uploaded_offsets(b, topic)

    proxy.set_mode("503", methods=WRITES)
    fault_started = time.monotonic()
    a = Acks(b.bootstrap, topic, "slow")
    a.run(seconds=20, per_second=1000)
    a.flush(30)
    fault_seconds = time.monotonic() - fault_started
    assert not a.errors, f"{len(a.errors)} produce errors while the store failed: {a.errors[:3]}"
    # Acknowledgements kept coming during the whole fault (no stall waiting for the store).
    gaps = [t2 - t1 for t1, t2 in zip(a.ack_times, a.ack_times[1:])]
    assert a.count() >= 5000 and max(gaps) < 5, f"{a.count()} acks, longest gap {max(gaps):.1f}s"

    m = b.metrics()
    failures = m.sum("strata_tiering_upload_failures_total") - before.sum("strata_tiering_upload_failures_total")
    retries = m.sum("strata_object_store_retries_total") - before.sum("strata_object_store_retries_total")
    put_errors = m.sum("strata_object_store_errors_total", op="put") - before.sum("strata_object_store_errors_total", op="put")
    assert failures >= 3 and put_errors >= 3 and retries >= 3, \
        f"over {fault_seconds:.0f}s of SlowDown: {failures} upload failures, {put_errors} PUT errors, {retries} retries"
    assert proxy.stats().get("failed_503", 0) >= 10, proxy.stats()
    assert uploaded_nothing_beyond(b, topic, before_uploaded), f"uploaded during the fault: {b.topic(topic)}"

    proxy.set_mode("pass")
    b.wait_uploaded(topic, total=a.count(), timeout=60)
    assert b.alive()

    b.restart_from_store(kill=True)
    assert_consumed_exactly(b, topic, merged(a))


@pytest.mark.timeout(180)
def test_full_wal_answers_retriable_storage_error_then_recovers(broker_factory, seaweed, s3_bucket, proxy):
    from confluent_kafka import KafkaError

    # The WAL must hold at least one largest request, so requests are capped at 1 MiB too.
    b = start_broker(broker_factory, seaweed, s3_bucket, proxy,
                     STRATA_KAFKA_REQUEST_BYTES_MAX=str(1 << 20), STRATA_WAL_SEGMENT_BYTES_MAX=str(256 << 10),
                     STRATA_WAL_BYTES_MAX=str(2 << 20))
    topic = "walfull"
    harness.create_topic(b.bootstrap, topic, PARTITIONS)

    proxy.set_mode("500", methods=WRITES)
    # No client retries: every error the broker answers reaches the delivery report as is.
    a = Acks(b.bootstrap, topic, "full", **{"message.send.max.retries": 0, "message.timeout.ms": 20_000,
                                            "batch.size": 64 << 10})
    a.run(seconds=30, per_second=2000, size=1000, until=lambda: len(a.errors) >= 50)
    a.flush(30)
    assert len(a.errors) >= 50, f"the WAL never filled: {a.count()} acknowledged, {len(a.errors)} errors"
    codes = {err.code() for _, _, err in a.errors}
    assert codes == {KafkaError.KAFKA_STORAGE_ERROR}, f"errors other than KAFKA_STORAGE_ERROR: {a.errors[:3]}"
    # KAFKA_STORAGE_ERROR (56) is retriable in the Kafka protocol; librdkafka's own retriable()
    # flag is off here only because this producer was told not to retry.
    assert b.alive()
    status, body = b.get("/health")
    assert status == 200, body
    acked_while_full = a.count()
    assert acked_while_full > 0

    proxy.set_mode("pass")
    # The application retries what was refused; the broker takes it once the WAL drained.
    retry = Acks(b.bootstrap, topic, "full-retry", **{"message.timeout.ms": 60_000})
    for value, partition, _ in a.errors:
        retry.send(value, partition)
    retry.flush(60)
    assert not retry.errors, f"retried produces failed after healing: {retry.errors[:3]}"
    assert retry.count() == len(a.errors)

    total = a.count() + retry.count()
    b.wait_uploaded(topic, total=total, timeout=60)
    b.restart_from_store(kill=True)
    assert_consumed_exactly(b, topic, merged(a, retry))


@pytest.mark.timeout(180)
def test_blackholed_store_heals(broker_factory, seaweed, s3_bucket, proxy):
    # Each attempt is bounded by tiering.store_request_timeout_ms (default 30 s; 3 s here).
    b = start_broker(broker_factory, seaweed, s3_bucket, proxy, STRATA_TIERING_STORE_REQUEST_TIMEOUT_MS="3000")
    topic = "blackhole"
    harness.create_topic(b.bootstrap, topic, PARTITIONS)
    before_uploaded = uploaded_offsets(b, topic)

    proxy.set_mode("timeout", methods=WRITES)
    a = Acks(b.bootstrap, topic, "hole")
    a.run(seconds=10, per_second=1000)
    a.flush(30)
    assert not a.errors, f"{len(a.errors)} produce errors while the store was a blackhole: {a.errors[:3]}"
    harness.eventually(lambda: proxy.stats().get("failed_timeout", 0) >= 1, 10, what="a PUT held by the proxy")
    assert uploaded_nothing_beyond(b, topic, before_uploaded), f"uploaded during the blackhole: {b.topic(topic)}"

    proxy.set_mode("pass")
    # A held attempt ends on the store's request timeout, then the retry goes through.
    b.wait_uploaded(topic, total=a.count(), timeout=75)
    assert b.metrics().sum("strata_object_store_retries_total") >= 1

    b.restart_from_store(kill=True)
    assert_consumed_exactly(b, topic, merged(a))
