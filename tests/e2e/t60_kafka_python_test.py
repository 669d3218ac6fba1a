"""t60 kafka-python: a pure-Python client (its own protocol codec, not librdkafka)
creates, lists and deletes topics, produces and consumes with assign()."""

import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

import harness

PARTITIONS = 3
N = 3000


def consume_all(bootstrap: str, topic: str, partitions: int, n: int, timeout: float = 60) -> list:
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="earliest", consumer_timeout_ms=1000)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                got.extend(recs)
        return got
    finally:
        c.close()


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_kafka_python_admin_produce_consume(broker, compression):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        names = ["kp-a", "kp-b"]
        admin.create_topics([NewTopic(n, num_partitions=PARTITIONS, replication_factor=1) for n in names])
        harness.eventually(lambda: set(names) <= set(admin.list_topics()), 30, what="created topics listed")

        # kafka-python 3 defaults to an idempotent producer (InitProducerId, sequence numbers).
        prod = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", compression_type=compression,
                             linger_ms=10)
        futures = []
        sent = []
        for i in range(N):
            p = i % PARTITIONS
            key = None if i % 17 == 0 else b"key-%d" % i
            value = b"" if i % 31 == 0 else b"value-%d-" % i + bytes(range(256))[: i % 256]
            headers = [("h", b"%d" % i), ("h", b"again")] if i % 5 == 0 else []
            ts = 1_650_000_000_000 + i
            futures.append(prod.send("kp-a", key=key, value=value, partition=p, headers=headers, timestamp_ms=ts))
            sent.append((p, key, value, tuple(headers), ts))
        prod.flush(60)
        metas = [f.get(timeout=30) for f in futures]
        prod.close(timeout=10)

        expected = {}
        for m, s in zip(metas, sent):
            assert m.partition == s[0]
            assert (m.partition, m.offset) not in expected
            expected[(m.partition, m.offset)] = s
        for p in range(PARTITIONS):
            assert sorted(o for (pp, o) in expected if pp == p) == list(range(N // PARTITIONS))

        got = consume_all(broker.bootstrap, "kp-a", PARTITIONS, N)
        assert len(got) == N, f"consumed {len(got)} of {N}"
        for r in got:
            want = expected[(r.partition, r.offset)]
            assert (r.partition, r.key, r.value, tuple(r.headers), r.timestamp) == want, (r, want)

        admin.delete_topics(["kp-b"])
        harness.eventually(lambda: "kp-b" not in admin.list_topics() and "kp-a" in admin.list_topics(), 30,
                           what="kp-b deleted, kp-a kept")
        assert broker.topic("kp-b") is None
        assert broker.topic("kp-a") is not None
    finally:
        admin.close()
