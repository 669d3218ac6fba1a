"""t30 s3 replay: with SeaweedFS as the object store, data that was fully
uploaded is served from S3 after the WAL and the cache are deleted."""

import random
import shutil
import time

import pytest

import harness
from harness import Rec

N = 50_000
PARTITIONS = 4


@pytest.mark.timeout(600)
def test_replay_from_s3_after_wal_and_cache_loss(broker_factory, seaweed, s3_bucket, kcat_ok):
    b = broker_factory(object_store=seaweed.url(s3_bucket), env={**seaweed.env, "STRATA_TIERING_FLUSH_INTERVAL_MS": "200"})
    topic = "replay"
    harness.create_topic(b.bootstrap, topic, PARTITIONS)
    rng = random.Random(30)
    records = [Rec(i % PARTITIONS, b"k%d" % i, rng.randbytes(rng.choice([0, 10, 100, 500, 2000])),
                   (("i", b"%d" % i),), 1_600_000_000_000 + i) for i in range(N)]
    delivered = harness.produce(b.bootstrap, topic, records, **{"compression.type": "zstd"})
    value_bytes = sum(len(r.value) for r in records)

    t = b.wait_uploaded(topic, total=N, timeout=180)
    assert sorted(p["high_watermark"] for p in t["partitions"]) == [N // PARTITIONS] * PARTITIONS
    m = b.metrics()
    assert m.sum("strata_object_store_requests_total", op="put") > 0, "no PUT counted"
    assert m.sum("strata_tiering_objects_uploaded_total") > 0, "no uploaded object counted"

    objects = seaweed.list_objects(s3_bucket)
    stored = sum(size for _, size in objects)
    # The values are random bytes, which no codec shrinks: the bucket must hold at least that much.
    assert stored >= value_bytes, (f"bucket {s3_bucket} holds {len(objects)} objects, {stored} bytes, less than the "
                                   f"{value_bytes} bytes of uncompressed values produced")

    b.stop()  # SIGTERM: flush, exit 0
    assert b.meta_dir.is_dir(), f"no metadata dir at {b.meta_dir}: {sorted(p.name for p in b.data_dir.iterdir())}"
    for d in (b.wal_dir, b.cache_dir):
        shutil.rmtree(d, ignore_errors=True)
    assert not b.wal_dir.exists()
    b.start()

    gets_before = b.metrics().sum("strata_object_store_requests_total", op="get")
    t = b.topic(topic)
    assert t is not None, "topic lost after restart"
    assert sorted(p["high_watermark"] for p in t["partitions"]) == [N // PARTITIONS] * PARTITIONS, t
    consumed = harness.consume(b.bootstrap, topic, PARTITIONS)
    harness.assert_matches(records, delivered, consumed)
    # The old client (kcat, librdkafka 2.0.2) reads the same history from S3.
    res = harness.kcat(["-C", "-b", b.bootstrap, "-t", topic, "-o", "beginning", "-e", "-q",
                        "-X", "check.crcs=true", "-f", harness.KCAT_FORMAT])
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
    via_kcat = harness.parse_kcat(res.stdout)
    for p in range(PARTITIONS):
        assert [(r.offset, r.key, r.value, r.timestamp) for r in via_kcat[p]] == \
               [(r.offset, r.key, r.value, r.timestamp) for r in consumed[p]], f"kcat differs on partition {p}"
    gets_after = b.metrics().sum("strata_object_store_requests_total", op="get")
    # The counter is per process; with the WAL and cache gone every byte read came
    # through it (a broker may legitimately preload index pages before /health).
    assert gets_after > 0, f"GET counter {gets_before} -> {gets_after}: the data did not come from S3"


@pytest.mark.timeout(300)
def test_uploads_by_size_are_whole_objects(broker_factory, seaweed, s3_bucket):
    """Under a steady produce rate, each upload `flush_bytes_max` triggers holds at least that
    much: a round right after one (woken by publishes that arrived while it was uploading)
    would PUT a small object and double the PUTs per GiB."""
    flush = 1 << 20
    b = broker_factory(object_store=seaweed.url(s3_bucket), env=seaweed.env,
                       config={"tiering": {"flush_bytes_max": flush, "flush_interval_ms": 600_000}})
    topic = "bysize"
    harness.create_topic(b.bootstrap, topic, PARTITIONS)
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 5})
    value = random.Random(31).randbytes(4000)
    # About 4 MB/s for 4 s: a flush every quarter second, each PUT under way while the next
    # records arrive.
    for step in range(40):
        for i in range(100):
            p.produce(topic, value, partition=(step * 100 + i) % PARTITIONS)
        p.flush(30)
        time.sleep(0.1)
    harness.eventually(lambda: b.metrics().sum("strata_tiering_objects_uploaded_total") >= 8, 60,
                       what="uploads by size")
    uploads = [(k, size) for k, size in seaweed.list_objects(s3_bucket) if k.startswith("data/")]
    assert len(uploads) >= 8, uploads
    small = [(k, size) for k, size in uploads if size < flush]
    assert not small, f"uploads smaller than flush_bytes_max ({flush}): {small} of {len(uploads)}"
