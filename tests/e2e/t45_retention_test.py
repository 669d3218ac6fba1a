"""t45 retention: a topic's `retention.ms` / `retention.bytes` drop whole objects from
the metadata index; the log start offset moves (ListOffsets EARLIEST, Fetch from the
beginning), and the garbage sweeper deletes the dropped objects from the store."""

import time
from pathlib import Path

import pytest
from confluent_kafka.admin import NewTopic

import harness
from harness import Rec

DAY = 86_400_000


def start_broker(broker_factory):
    return broker_factory(
        config={"tiering": {"flush_interval_ms": 100, "garbage_grace_ms": 0}},
        env={"STRATA_TIERING_RETENTION_CHECK_INTERVAL_MS": "200"},
    )


def create_topic(bootstrap: str, name: str, config: dict):
    adm = harness.admin_client(bootstrap)
    fs = adm.create_topics([NewTopic(name, num_partitions=1, replication_factor=1, config=config)],
                           request_timeout=30)
    fs[name].result(30)
    harness.wait_topic_metadata(bootstrap, name, 1)


def object_files(b) -> set[Path]:
    """Record-data objects (`data/…`); metadata backups live under `meta/`."""
    root = b.data_dir / "objects" / "data"
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def produce_uploaded(b, topic: str, recs: list[Rec], total: int) -> set[Path]:
    """Produce `recs` as one batch, wait until the topic is fully uploaded with `total`
    records, and return the object files that appeared meanwhile (retention may already
    have deleted an object that is outside it)."""
    before = object_files(b)
    harness.produce(b.bootstrap, topic, recs, **{"linger.ms": 200})
    b.wait_uploaded(topic, total=total, timeout=60)
    return object_files(b) - before


def earliest(b, topic: str) -> int:
    return harness.watermarks(b.bootstrap, topic, 1)[0][0]


def wait_earliest(b, topic: str, want: int, timeout: float = 30):
    got = {}

    def ok():
        got["e"] = earliest(b, topic)
        return got["e"] == want

    try:
        harness.eventually(ok, timeout, what=f"earliest offset of {topic} == {want}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last earliest {got.get('e')}\n{b.stderr_tail(30)}")


def wait_deleted(b, files: set[Path], timeout: float = 30):
    harness.eventually(lambda: not any(f.exists() for f in files), timeout,
                       what=f"objects {sorted(f.name for f in files)} deleted by the sweeper")


@pytest.mark.timeout(240)
def test_retention_by_time(broker_factory):
    b = start_broker(broker_factory)
    topic = "ret-time"
    create_topic(b.bootstrap, topic, {"retention.ms": str(DAY)})
    now = int(time.time() * 1000)
    old = [Rec(0, None, b"old%d" % i, (), now - 10 * DAY + i) for i in range(20)]
    new = [Rec(0, None, b"new%d" % i, (), now + i) for i in range(15)]

    produce_uploaded(b, topic, old, 20)
    new_files = produce_uploaded(b, topic, new, 35)
    assert new_files, "the second upload made no object file"

    wait_earliest(b, topic, 20)
    # The old group's object (seen or not: the sweeper may be faster than us) is gone; the
    # new group's stays.
    harness.eventually(lambda: object_files(b) == new_files, 30,
                       what=f"only the new objects {sorted(f.name for f in new_files)} left")

    parts = harness.consume(b.bootstrap, topic, 1)
    got = [(r.offset, r.value, r.timestamp) for r in parts[0]]
    assert got == [(20 + i, r.value, r.timestamp) for i, r in enumerate(new)], got
    assert harness.watermarks(b.bootstrap, topic, 1)[0] == (20, 35)

    # Offsets below the log start are out of range for Fetch.
    from confluent_kafka import Consumer, KafkaError, TopicPartition
    c = Consumer(harness.consumer_conf(b.bootstrap))
    try:
        c.assign([TopicPartition(topic, 0, 5)])
        deadline = time.monotonic() + 20
        err = None
        while err is None and time.monotonic() < deadline:
            for m in c.consume(num_messages=10, timeout=0.5):
                assert m.error() is not None, f"read offset {m.offset()} below the log start"
                if m.error().code() != KafkaError._PARTITION_EOF:
                    err = m.error()
        assert err is not None and err.code() in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET), err
    finally:
        c.close()

    m = b.metrics()
    assert m.sum("strata_tiering_objects_deleted_total") >= 1
    assert m.sum("strata_retention_trims_total") >= 1

    # The new log start survives a restart (it is in metadata).
    b.stop()
    b.start()
    assert earliest(b, topic) == 20


@pytest.mark.timeout(240)
def test_retention_by_size(broker_factory):
    b = start_broker(broker_factory)
    topic = "ret-size"
    # Each group is one ~10 KB batch; 15 KB keeps only the newest group.
    create_topic(b.bootstrap, topic, {"retention.ms": "-1", "retention.bytes": "15000"})
    groups = [[Rec(0, None, bytes([65 + g]) * 1000, ()) for _ in range(10)] for g in range(3)]
    files = [produce_uploaded(b, topic, recs, 10 * (g + 1)) for g, recs in enumerate(groups)]
    assert all(files), f"every upload makes an object: {files}"

    wait_earliest(b, topic, 20)
    wait_deleted(b, files[0] | files[1])
    assert all(f.exists() for f in files[2])
    parts = harness.consume(b.bootstrap, topic, 1)
    assert [r.offset for r in parts[0]] == list(range(20, 30))
    assert all(r.value == b"C" * 1000 for r in parts[0])
