"""t40 offsets_for_times: ListOffsets by timestamp returns the first offset whose
CreateTime is >= the target, across and inside batches, from memory and (after a
SIGTERM flush and losing the WAL and cache) from object storage."""

import time

import pytest
from confluent_kafka import Consumer, TopicPartition

import harness
from harness import Rec

DAY = 86_400_000
HOUR = 3_600_000
PARTITIONS = 2
BATCHES = [[0, 1, 2], [3], [4, 5, 6, 7], [8, 9]]  # record numbers per produce call (batch)


def times(base: int, p: int) -> list[int]:
    return [base + i * DAY + p * 6 * HOUR for i in range(10)]


def cases(ts: list[int]) -> list[tuple[str, int, int]]:
    """(what, target timestamp, expected offset); -1 = no such record (end)."""
    c = [("a day before the first", ts[0] - DAY, 0), ("1 ms before the first", ts[0] - 1, 0),
         ("1 ms after the first", ts[0] + 1, 1)]
    c += [(f"exactly record {i}", t, i) for i, t in enumerate(ts)]
    c += [(f"between record {i} and {i + 1}", ts[i] + DAY // 2, i + 1) for i in range(9)]
    c += [("1 ms after the last", ts[9] + 1, -1), ("a day after the last", ts[9] + DAY, -1)]
    return c


def check_offsets_for_times(bootstrap: str, topic: str, base: int):
    c = Consumer(harness.consumer_conf(bootstrap))
    failures = []
    try:
        per_part = [cases(times(base, p)) for p in range(PARTITIONS)]
        for j in range(len(per_part[0])):
            query = [TopicPartition(topic, p, per_part[p][j][1]) for p in range(PARTITIONS)]
            res = c.offsets_for_times(query, timeout=15)
            for p, tp in enumerate(sorted(res, key=lambda x: x.partition)):
                what, target, want = per_part[p][j]
                if tp.error is not None or tp.offset != want:
                    failures.append(f"partition {p}, {what} (ts {target}): got offset {tp.offset} "
                                    f"error {tp.error}, expected {want}")
    finally:
        c.close()
    assert not failures, "ListOffsets by timestamp:\n" + "\n".join(failures)
    wm = harness.watermarks(bootstrap, topic, PARTITIONS)
    assert wm == {p: (0, 10) for p in range(PARTITIONS)}, f"earliest/latest: {wm}"


def check_records(bootstrap: str, topic: str, base: int):
    parts = harness.consume(bootstrap, topic, PARTITIONS)
    harness.assert_dense(parts)
    for p in range(PARTITIONS):
        got = [(r.value, r.timestamp) for r in parts[p]]
        assert got == [(b"r%d" % i, t) for i, t in enumerate(times(base, p))], f"partition {p}: {got}"


@pytest.mark.timeout(300)
def test_offsets_for_times_memory_and_object_store(broker_factory):
    # A long flush interval keeps the first checks on data that is not uploaded yet;
    # SIGTERM must then flush it to the object store.
    b = broker_factory(config={"tiering": {"flush_interval_ms": 600_000}})
    topic = "times"
    # The records are weeks old; keep them past the default 7-day retention.
    harness.create_topic(b.bootstrap, topic, PARTITIONS, config={"retention.ms": "-1"})
    base = (int(time.time() * 1000) - 30 * DAY) // 1000 * 1000 + 123
    for group in BATCHES:
        recs = [Rec(p, None, b"r%d" % i, (), times(base, p)[i]) for i in group for p in range(PARTITIONS)]
        harness.produce(b.bootstrap, topic, recs, **{"linger.ms": 100})

    check_offsets_for_times(b.bootstrap, topic, base)
    check_records(b.bootstrap, topic, base)

    b.restart_from_store()
    t = b.topic(topic)
    assert t is not None and sorted(p["high_watermark"] for p in t["partitions"]) == [10, 10], (
        f"after SIGTERM and losing the WAL: {t} (did SIGTERM flush to the object store?)")
    assert all(p["uploaded_offset"] == p["high_watermark"] for p in t["partitions"]), t

    check_offsets_for_times(b.bootstrap, topic, base)
    check_records(b.bootstrap, topic, base)
