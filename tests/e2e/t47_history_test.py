"""t47 history: months of back-dated records (CreateTime over 180 days, made by
bench/history_gen.py), compacted into segments; after the WAL and the cache are wiped, a
stock consumer seeks by timestamp to a day in the middle and reads exactly the records
from that day on — the lookup uses the segments' time index (no LIST, at most two GETs
per partition) — with history reads held to a byte rate (`cache.history_read_bytes_per_sec`):
the replay waits for it and still reads every record. Then retention by time cuts whole segments: everything inside retention is
still readable in order, nothing below the new log start is.

The generator's layout is a pure function (record n: partition n % P, offset n // P,
time record_time(n)), so every expectation here is computed, not recorded."""

import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

import harness

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import history_gen  # noqa: E402

DAY = history_gen.DAY_MS
PARTS = 2
RECORDS = 80_000
DAYS = 180

CONFIG = {
    "tiering": {"flush_interval_ms": 200, "flush_bytes_max": 64 * 1024, "garbage_grace_ms": 500},
    "compaction": {
        "interval_ms": 300,
        "min_blocks": 4,
        "chunk_bytes": 16 * 1024,
        "segment_bytes": 512 * 1024,
        "orphan_sweep_interval_ms": 0,
    },
    # The metadata backup prunes old snapshots with a LIST after each one it stores (and it
    # stores one soon after a restart); the lookup below must LIST nothing, so keep it off.
    "meta": {"backup_interval_ms": 0},
}
ENV = {"STRATA_TIERING_RETENTION_CHECK_INTERVAL_MS": "300"}


def first_at_or_after(ts: int, partition: int, start_ms: int) -> int | None:
    """Offset in `partition` of the first generated record with time >= ts."""
    lo, hi = 0, RECORDS  # record_time is monotonic in n: binary search the first n
    while lo < hi:
        mid = (lo + hi) // 2
        if history_gen.record_time(mid, RECORDS, start_ms, DAYS) >= ts:
            hi = mid
        else:
            lo = mid + 1
    n = lo
    while n < RECORDS and history_gen.record_partition(n, PARTS) != partition:
        n += 1
    return n // PARTS if n < RECORDS else None


def read_from(b, topic: str, partition: int, offset: int, end: int, timeout: float = 120) -> list:
    c = Consumer(harness.consumer_conf(b.bootstrap))
    out = []
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout
        while (not out or out[-1].offset() < end - 1) and time.monotonic() < deadline:
            for m in c.consume(num_messages=5000, timeout=0.5):
                if m.error() is None:
                    out.append(m)
                elif m.error().code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(f"consumer error: {m.error()}")
    finally:
        c.close()
    return out


def check_records(msgs, partition: int, first_offset: int, start_ms: int):
    for i, m in enumerate(msgs):
        off = first_offset + i
        n = off * PARTS + partition
        assert m.offset() == off, f"p{partition}: got offset {m.offset()} at index {i}, want {off}"
        assert m.key() == b"k%d" % n
        assert m.value() == history_gen.record_value(n, 120)
        assert m.timestamp()[1] == history_gen.record_time(n, RECORDS, start_ms, DAYS)
        assert dict(m.headers()) == {"n": str(n).encode()}


@pytest.mark.timeout(600)
def test_replay_by_time_from_months_of_history(broker_factory):
    b = broker_factory(config=CONFIG, env=ENV)
    topic = "history"
    harness.create_topic(b.bootstrap, topic, PARTS)
    start_ms = int(time.time() * 1000) - DAYS * DAY
    history_gen.generate(b.bootstrap, topic, RECORDS, DAYS, PARTS, 120, start_ms, progress=None)
    b.wait_uploaded(topic, total=RECORDS, timeout=120)

    def compacted():
        ps = b.topic(topic)["partitions"]
        return all(p["segments"] >= 2 and p["blocks"] - p["segments"] < 4 for p in ps)  # min_blocks

    harness.eventually(compacted, 120, what=f"history compacted: {b.topic(topic)}")

    # Only object storage and metadata remain. No compaction after the restart: `compacted`
    # allows a few small blocks the planner may still merge, and that round's GETs would be
    # counted with the lookup's below.
    # ~5 MB are read back below in 16 KiB chunks. At 1 MB/s the burst allowance (100 ms) is
    # 100 KB, less than the 8 chunks one read-ahead books at once, so chunk GETs wait however
    # slowly the consumer reads (a loaded machine must not make the check below pass or fail).
    b.restart_from_store(env={"STRATA_COMPACTION_ENABLED": "false",
                              "STRATA_CACHE_HISTORY_READ_BYTES_PER_SEC": str(1_000_000)})

    # A day in the middle: the UTC midnight 90 days after the first record.
    day = (start_ms + 90 * DAY) // DAY * DAY
    before = b.metrics()
    c = Consumer(harness.consumer_conf(b.bootstrap))
    try:
        found = c.offsets_for_times([TopicPartition(topic, p, day) for p in range(PARTS)], timeout=30)
    finally:
        c.close()
    after = b.metrics()
    lists = after.sum("strata_object_store_requests_total", op="list") - before.sum(
        "strata_object_store_requests_total", op="list")
    gets = after.sum("strata_object_store_requests_total", op="get") - before.sum(
        "strata_object_store_requests_total", op="get")
    assert lists == 0, f"a timestamp lookup LISTed the store {lists} times"
    assert gets <= 2 * PARTS, f"a timestamp lookup took {gets} GETs for {PARTS} partitions"

    for tp in found:
        want = first_at_or_after(day, tp.partition, start_ms)
        assert tp.offset == want, f"p{tp.partition}: offsets_for_times({day}) = {tp.offset}, want {want}"
        end = (RECORDS - tp.partition + PARTS - 1) // PARTS
        msgs = read_from(b, topic, tp.partition, tp.offset, end)
        assert len(msgs) == end - tp.offset, f"p{tp.partition}: read {len(msgs)} of {end - tp.offset}"
        check_records(msgs, tp.partition, tp.offset, start_ms)
        assert msgs[0].timestamp()[1] >= day
        if tp.offset > 0:
            prev = (tp.offset - 1) * PARTS + tp.partition
            assert history_gen.record_time(prev, RECORDS, start_ms, DAYS) < day
    waited = b.metrics().sum("strata_cold_read_rate_wait_seconds_total")
    assert waited > 0, "the replay never waited for cache.history_read_bytes_per_sec"



@pytest.mark.timeout(600)
def test_retention_cuts_whole_blocks_of_history(broker_factory):
    """A topic keeping 60 days gets 180 days of history: retention drops whole blocks and
    segments; the log start moves; every record inside retention is readable in order and
    every record below the log start is older than retention."""
    b = broker_factory(config=CONFIG, env=ENV)
    topic = "history-ret"
    harness.create_topic(b.bootstrap, topic, PARTS, config={"retention.ms": str(60 * DAY)})
    start_ms = int(time.time() * 1000) - DAYS * DAY
    history_gen.generate(b.bootstrap, topic, RECORDS, DAYS, PARTS, 120, start_ms, progress=None)
    b.wait_uploaded(topic, total=RECORDS, timeout=120)
    cut_time = int(time.time() * 1000) - 60 * DAY

    def settled():
        ps = b.topic(topic)["partitions"]
        return all(p["log_start_offset"] > 0 and p["segments"] >= 1 and p["blocks"] - p["segments"] < 4
                   for p in ps)

    harness.eventually(settled, 120, what=f"retention and compaction ran: {b.topic(topic)}")
    b.restart_from_store()
    wm = harness.watermarks(b.bootstrap, topic, PARTS)
    for p in range(PARTS):
        start, end = wm[p]
        inside = first_at_or_after(cut_time, p, start_ms)
        assert 0 < start <= inside, f"p{p}: log start {start}, first record inside retention {inside}"
        last_gone = (start - 1) * PARTS + p
        assert history_gen.record_time(last_gone, RECORDS, start_ms, DAYS) < cut_time
        msgs = read_from(b, topic, p, start, end)
        assert len(msgs) == end - start
        check_records(msgs, p, start, start_ms)
        # Below the log start nothing is served: the consumer is told the offset is out of range.
        c = Consumer(harness.consumer_conf(b.bootstrap))
        try:
            c.assign([TopicPartition(topic, p, start - 1)])
            errs = []
            deadline = time.monotonic() + 20
            while not errs and time.monotonic() < deadline:
                for m in c.consume(num_messages=10, timeout=0.5):
                    assert m.error() is not None, f"p{p}: offset {m.offset()} below the log start was served"
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        errs.append(m.error())
            # librdkafka reports the broker's OFFSET_OUT_OF_RANGE as an auto-reset failure
            # when auto.offset.reset is "error".
            assert errs and errs[0].code() in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET), errs
            assert "out of range" in errs[0].str().lower(), errs
        finally:
            c.close()
