"""t46 compaction: small multi-partition upload objects are rewritten as per-partition
segments with an offset and time index in their footer; the swap is atomic, replaced
objects are swept, orphans (objects nothing references) are collected, and a kill -9 at
any moment of a compaction loses nothing and shows nothing twice.

Every expectation is computed from what the test produced and what the broker
acknowledged: offsets from delivery reports, timestamps from the records."""

import random
import time
from pathlib import Path

import pytest

import harness
from harness import Rec

# Small everything: an upload every 100 ms, compaction every 300 ms of runs of >= 3 blocks,
# 8 KiB chunks, so a few thousand records make many segments of many chunks.
CONFIG = {
    "tiering": {"flush_interval_ms": 100, "garbage_grace_ms": 500},
    "compaction": {
        "interval_ms": 300,
        "min_blocks": 3,
        "chunk_bytes": 8192,
        "segment_bytes": 4 * 1024 * 1024,
        "orphan_sweep_interval_ms": 1000,
        "orphan_grace_ms": 3000,
    },
    "cache": {"readahead_chunks": 2},
}
ENV = {"STRATA_TIERING_RETENTION_CHECK_INTERVAL_MS": "200"}


def objects(b, prefix: str) -> set[Path]:
    root = b.data_dir / "objects" / prefix
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def partitions(b, topic: str) -> list[dict]:
    t = b.topic(topic)
    assert t is not None, f"topic {topic} not in /v1/topics"
    return t["partitions"]


def produce_waves(b, topic: str, parts: int, waves: int, per_wave: int, t0: int, seed: int):
    """`waves` separate produce rounds (each uploaded as its own objects), records with
    increasing CreateTime from `t0`, spread over `parts` partitions."""
    rng = random.Random(seed)
    recs, delivered = [], []
    n = 0
    for w in range(waves):
        wave = []
        for _ in range(per_wave):
            p = n % parts
            value = b"v%06d-" % n + rng.randbytes(rng.randint(20, 400))
            wave.append(Rec(p, b"k%d" % n, value, (("n", str(n).encode()),), t0 + n * 1000))
            n += 1
        delivered += harness.produce(b.bootstrap, topic, wave, **{"linger.ms": 5})
        recs += wave
        b.wait_uploaded(topic, total=n, timeout=60)
    return recs, delivered


def wait_compacted(b, topic: str, timeout: float = 60):
    def done():
        ps = partitions(b, topic)
        # Every partition's index is mostly segments: fewer than min_blocks plain blocks left.
        return all(p["segments"] >= 1 and p["blocks"] - p["segments"] < 3 for p in ps)

    try:
        harness.eventually(done, timeout, what=f"topic {topic} compacted")
    except AssertionError as e:
        raise AssertionError(f"{e}: {partitions(b, topic)}\n{b.stderr_tail(30)}")


def first_at_or_after(recs: list[Rec], delivered, partition: int, ts: int):
    best = None
    for r, (p, off) in zip(recs, delivered):
        if p == partition and r.timestamp >= ts and (best is None or off < best[0]):
            best = (off, r.timestamp)
    return best


@pytest.mark.timeout(300)
def test_compaction_keeps_every_record_and_time_lookups(broker_factory):
    b = broker_factory(config=CONFIG, env=ENV)
    topic = "compact"
    harness.create_topic(b.bootstrap, topic, 2)
    t0 = 1_700_000_000_000
    recs, delivered = produce_waves(b, topic, 2, waves=8, per_wave=300, t0=t0, seed=1)
    wait_compacted(b, topic)
    m = b.metrics()
    assert m.sum("strata_compaction_segments_total") >= 2
    assert m.sum("strata_compaction_blocks_replaced_total") >= 6
    assert objects(b, "segments"), "no segment object in the store"

    # Replaced upload objects are deleted by the sweeper once nothing references them.
    harness.eventually(lambda: b.metrics().sum("strata_tiering_objects_deleted_total") >= 1, 30,
                       what="replaced upload objects deleted")

    # Read everything from object storage only: restart without WAL and cache.
    b.restart_from_store()
    # Small fetches (two chunks at most) so the replay reads segments chunk by chunk.
    got = harness.consume(b.bootstrap, topic, 2, **{"max.partition.fetch.bytes": 16384})
    harness.assert_matches(recs, delivered, got)
    assert b.metrics().sum("strata_cold_read_readahead_chunks_total") >= 1, "no read-ahead happened"

    # ListOffsets by timestamp through the segments' time index: before the start, exact
    # record times, between records, past the end.
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(harness.consumer_conf(b.bootstrap))
    try:
        for ts in [t0 - 5, t0, t0 + 777_500, t0 + 1_000_000, t0 + 2399 * 1000, t0 + 10**9]:
            for p in (0, 1):
                [tp] = c.offsets_for_times([TopicPartition(topic, p, ts)], timeout=20)
                want = first_at_or_after(recs, delivered, p, ts)
                got_off = tp.offset if tp.offset >= 0 else None
                assert got_off == (want[0] if want else None), f"partition {p} ts {ts}: {tp.offset} vs {want}"
    finally:
        c.close()


@pytest.mark.timeout(300)
def test_big_upload_blocks_and_an_idle_tail_become_segments(broker_factory):
    """An upload block of half a segment or more is still compacted (it has no chunk or time
    index, and its multi-partition object stays while it is referenced), and so are the last
    few blocks of a partition that has gone quiet, once compaction.idle_ms has passed."""
    seg = 256 * 1024
    config = {
        "tiering": {"flush_interval_ms": 1500, "garbage_grace_ms": 500},
        "compaction": {"interval_ms": 300, "chunk_bytes": 8192, "segment_bytes": seg,
                       "idle_ms": 2000, "orphan_sweep_interval_ms": 0},
    }
    b = broker_factory(config=config, env=ENV)
    topic = "bigblocks"
    harness.create_topic(b.bootstrap, topic, 2)
    rng = random.Random(7)
    t0 = 1_700_000_000_000
    recs, delivered, n = [], [], 0
    # One burst inside a flush interval: partition 0 gets about 2.5 segments' worth (upload
    # blocks bigger than half a segment), partition 1 a little. Then two small waves.
    for wave, (p0_bytes, p1_bytes) in enumerate([(640 * 1024, 16 * 1024), (8 * 1024, 8 * 1024),
                                                 (8 * 1024, 8 * 1024)]):
        batch = []
        for p, total in ((0, p0_bytes), (1, p1_bytes)):
            for _ in range(total // 2048):
                batch.append(Rec(p, b"k%d" % n, b"w%d-%06d-" % (wave, n) + rng.randbytes(2040),
                                 (), t0 + n * 1000))
                n += 1
        delivered += harness.produce(b.bootstrap, topic, batch, **{"linger.ms": 20})
        recs += batch
        b.wait_uploaded(topic, total=n, timeout=60)

    def all_segments():
        ps = partitions(b, topic)
        return all(p["blocks"] >= 1 and p["blocks"] == p["segments"] for p in ps)

    try:
        harness.eventually(all_segments, 60, what=f"every block of {topic} a segment")
    except AssertionError as e:
        raise AssertionError(f"{e}: {partitions(b, topic)}\n{b.stderr_tail(30)}")
    assert b.metrics().sum("strata_compaction_failures_total") == 0

    # Everything reads back from the segments alone.
    b.restart_from_store()
    got = harness.consume(b.bootstrap, topic, 2, **{"max.partition.fetch.bytes": 65536})
    harness.assert_matches(recs, delivered, got)


@pytest.mark.timeout(120)
def test_orphans_are_swept_and_others_left_alone(broker_factory):
    b = broker_factory(config=CONFIG, env=ENV)
    root = b.data_dir / "objects"
    old_orphan = root / "data" / "99" / "0000000001000-0123456789abcdef.sob"
    young_orphan = root / "segments" / "99" / ("%013d-feedfacefeedface.seg" % (int(time.time() * 1000) + 3_600_000))
    foreign = root / "data" / "99" / "not-ours.txt"
    for f in (old_orphan, young_orphan, foreign):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * 100)
    harness.eventually(lambda: not old_orphan.exists(), 30, what="old orphan deleted")
    assert b.metrics().sum("strata_tiering_orphans_deleted_total") >= 1
    time.sleep(2.5)  # at least two more sweeps
    assert young_orphan.exists(), "an orphan inside its grace period was deleted"
    assert foreign.exists(), "a key not written by strata was deleted"


@pytest.mark.timeout(400)
def test_kill9_during_compaction_loses_nothing(broker_factory):
    """Produce in waves while compaction runs constantly; kill -9 at random moments;
    after each restart every acknowledged record is there exactly once, in order."""
    b = broker_factory(config=CONFIG, env=ENV)
    topic = "compact-crash"
    harness.create_topic(b.bootstrap, topic, 3)
    rng = random.Random(46)
    recs, delivered = [], []
    t0 = 1_700_000_000_000
    n = 0
    for round_ in range(4):
        for _ in range(5):
            wave = []
            for _ in range(150):
                wave.append(Rec(n % 3, b"k%d" % n, b"crash-%06d" % n + rng.randbytes(200), (), t0 + n))
                n += 1
            delivered += harness.produce(b.bootstrap, topic, wave, **{"linger.ms": 5})
            recs += wave
            time.sleep(0.15)
        # Kill while the compactor is (likely) mid-flight: a random moment within two intervals.
        time.sleep(rng.uniform(0.05, 0.6))
        b.kill9()
        b.start()
        got = harness.consume(b.bootstrap, topic, 3)
        harness.assert_matches(recs, delivered, got)
    b.wait_uploaded(topic, total=n, timeout=60)
    wait_compacted(b, topic)
    got = harness.consume(b.bootstrap, topic, 3)
    harness.assert_matches(recs, delivered, got)
    # Whatever a kill left behind unreferenced is collected after the grace period: in the
    # end the store holds only objects the index references (or garbage within its grace).
    def only_referenced():
        ps = partitions(b, topic)
        seg_files = objects(b, "segments")
        return len(seg_files) <= sum(p["segments"] for p in ps) + 1

    harness.eventually(only_referenced, 60, what="orphan segments collected")
