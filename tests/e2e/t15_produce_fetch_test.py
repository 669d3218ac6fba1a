"""t15 produce/fetch: acks 0/1/all, fetch from any offset (inside a batch, from
memory and from the object store), out-of-range fetch positions, long-poll tail."""

import threading

import pytest
from confluent_kafka import OFFSET_END, Consumer, KafkaError, Producer, TopicPartition

import harness
from harness import Rec


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_acks_levels(broker, acks):
    harness.create_topic(broker.bootstrap, "acks", 2)
    p = Producer(harness.producer_conf(broker.bootstrap, acks=acks, **{"linger.ms": 5}))
    errors = []
    sent = {0: [], 1: []}
    for i in range(5000):
        part = i % 2
        v = b"acks%s-%d" % (acks.encode(), i)
        p.produce("acks", value=v, partition=part, on_delivery=lambda e, m: e and errors.append(e))
        sent[part].append(v)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    assert not errors, errors[:5]
    # acks=0 has no response to wait for: read until the high watermark covers everything.
    harness.eventually(lambda: all(hw == 2500 for _, hw in harness.watermarks(broker.bootstrap, "acks", 2).values()),
                       30, what="all 5000 records visible")
    got = harness.consume(broker.bootstrap, "acks", 2)
    harness.assert_dense(got)
    for part in (0, 1):
        assert [r.value for r in got[part]] == sent[part], f"partition {part} differs from what was sent, in order"


def _first_from(bootstrap, topic, partition, offset, **conf):
    c = Consumer(harness.consumer_conf(bootstrap, **conf))
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        return harness.eventually(lambda: next((m for m in c.consume(10, 1.0)
                                                if m.error() is None), None), 30,
                                  what=f"a record from {topic}/{partition} at {offset}")
    finally:
        c.close()


def test_fetch_from_any_offset_memory_and_object_store(broker_factory):
    b = broker_factory(config={"tiering": {"flush_interval_ms": 200}})
    harness.create_topic(b.bootstrap, "mid", 1)
    recs = [Rec(0, b"%d" % i, b"value-%d" % i, (), 1_600_000_000_000 + i) for i in range(1000)]
    harness.produce(b.bootstrap, "mid", recs, flush_every=100, **{"compression.type": "lz4"})  # 10+ batches
    starts = [0, 1, 99, 100, 101, 537, 998, 999]

    def check(when):
        for start in starts:
            m = _first_from(b.bootstrap, "mid", 0, start)
            assert (m.offset(), m.value()) == (start, b"value-%d" % start), f"{when}: fetch at {start} -> {m.offset()}"
        parts = harness.consume(b.bootstrap, "mid", [0], start=537)
        assert [r.offset for r in parts[0]] == list(range(537, 1000)), when

    check("from memory")
    b.wait_uploaded("mid", total=1000)
    b.restart_from_store()
    check("from the object store")


def test_out_of_range_positions(broker):
    harness.create_topic(broker.bootstrap, "oor", 1)
    harness.produce(broker.bootstrap, "oor", [Rec(0, None, b"r%d" % i) for i in range(50)])
    # A position past the end is OFFSET_OUT_OF_RANGE; the client resets as configured.
    m = _first_from(broker.bootstrap, "oor", 0, 500, **{"auto.offset.reset": "earliest"})
    assert (m.offset(), m.value()) == (0, b"r0")

    # With no reset policy the client reports the error to the application.
    c = Consumer(harness.consumer_conf(broker.bootstrap, **{"auto.offset.reset": "error"}))
    try:
        c.assign([TopicPartition("oor", 0, 500)])
        err = harness.eventually(lambda: next((m.error() for m in c.consume(10, 1.0)
                                               if m.error() is not None
                                               and m.error().code() != KafkaError._PARTITION_EOF), None),
                                 30, what="an out-of-range error")
        assert err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE), str(err)
    finally:
        c.close()


def test_long_poll_tail_receives_new_records(broker):
    harness.create_topic(broker.bootstrap, "tail", 1)
    harness.produce(broker.bootstrap, "tail", [Rec(0, None, b"old")])
    c = Consumer(harness.consumer_conf(broker.bootstrap, **{"fetch.wait.max.ms": 5000}))
    got = []
    waiting = threading.Event()
    try:
        c.assign([TopicPartition("tail", 0, OFFSET_END)])

        def poll():
            for _ in range(60):
                for m in c.consume(10, 0.5):
                    if m.error() is None:
                        got.append((m.offset(), m.value()))
                    elif m.error().code() == KafkaError._PARTITION_EOF:
                        waiting.set()  # positioned at the end, now long-polling
                if len(got) >= 3:
                    return

        t = threading.Thread(target=poll)
        t.start()
        assert waiting.wait(30), "consumer never reached the end of the partition"
        for i in range(3):
            harness.produce(broker.bootstrap, "tail", [Rec(0, None, b"new%d" % i)])
        t.join(60)
        assert got == [(1, b"new0"), (2, b"new1"), (3, b"new2")], got
    finally:
        c.close()


def test_concurrent_producers_share_partitions(broker):
    """Four producers write to the same four partitions at once: every record is at
    the offset its delivery report named, partitions dense, nothing interleaved wrong."""
    harness.create_topic(broker.bootstrap, "conc", 4)
    batches = [[Rec(i % 4, b"p%d" % w, b"w%d-%d" % (w, i), (("w", b"%d" % w),), 1_600_000_000_000 + i)
                for i in range(20_000)] for w in range(4)]
    results = [None] * 4
    errors = []

    def run(w):
        try:
            results[w] = harness.produce(broker.bootstrap, "conc", batches[w], **{"linger.ms": 1 + w * 3})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    expected = [r for b in batches for r in b]
    delivered = [d for res in results for d in res]
    harness.assert_matches(expected, delivered, harness.consume(broker.bootstrap, "conc", 4))


def test_small_fetch_limits_still_progress(broker):
    """Batches far larger than fetch.max.bytes / max.partition.fetch.bytes are still
    returned whole, one at a time (KIP-74), so a consumer with tiny limits progresses."""
    harness.create_topic(broker.bootstrap, "big", 2)
    recs = [Rec(i % 2, None, bytes([i % 251]) * 30_000) for i in range(200)]
    delivered = harness.produce(broker.bootstrap, "big", recs, **{"linger.ms": 50})
    got = harness.consume(broker.bootstrap, "big", 2, **{"fetch.max.bytes": 1024, "max.partition.fetch.bytes": 1024, "message.max.bytes": 1000,
                                                         "receive.message.max.bytes": 2_000_000})
    harness.assert_matches(recs, delivered, got)
