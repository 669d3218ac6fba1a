#!/usr/bin/env python3
"""Produce/consume load against any Kafka-protocol broker, through librdkafka (confluent-kafka).

Two phases, each bounded in time and count:
  throughput: N records of SIZE bytes, acks=all, linger 5 ms, then a full read back;
  latency:    M records produced one at a time (produce + flush), acks=all — the round trip a
              producer waits for, which is what the WAL's group commit must keep near fsync.
Prints one JSON object. Loopback only.
"""
import argparse, json, os, sys, time
from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.admin import AdminClient, NewTopic


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int((len(xs) - 1) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", default="bench")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--latency-records", type=int, default=2000)
    ap.add_argument("--seconds-max", type=float, default=120)
    ap.add_argument("--create", action="store_true", help="create the topic with the admin API")
    a = ap.parse_args()

    if a.create:
        fs = AdminClient({"bootstrap.servers": a.bootstrap}).create_topics(
            [NewTopic(a.topic, num_partitions=a.partitions, replication_factor=1)])
        for f in fs.values():
            try:
                f.result()
            except Exception as e:  # already exists is fine for re-runs
                print(f"create: {e}", file=sys.stderr)

    payload = os.urandom(a.size)
    p = Producer({"bootstrap.servers": a.bootstrap, "acks": "all", "linger.ms": 5,
                  "batch.size": 1_000_000, "queue.buffering.max.messages": 1_000_000,
                  "enable.idempotence": False})
    errors = []
    done = [0]

    def cb(err, msg):
        if err:
            errors.append(str(err))
        else:
            done[0] += 1

    t0 = time.perf_counter()
    deadline = t0 + a.seconds_max
    sent = 0
    while sent < a.records and time.perf_counter() < deadline:
        try:
            p.produce(a.topic, value=payload, partition=sent % a.partitions, on_delivery=cb)
            sent += 1
        except BufferError:
            p.poll(0.01)
    p.flush(a.seconds_max)
    produce_s = time.perf_counter() - t0

    c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": "bench", "enable.auto.commit": False,
                  "fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 10485760})
    c.assign([TopicPartition(a.topic, i, OFFSET_BEGINNING) for i in range(a.partitions)])
    got = 0
    t1 = time.perf_counter()
    while got < done[0] and time.perf_counter() - t1 < a.seconds_max:
        for m in c.consume(10000, 1.0):
            if not m.error():
                got += 1
    consume_s = time.perf_counter() - t1
    c.close()

    lat = []
    lp = Producer({"bootstrap.servers": a.bootstrap, "acks": "all", "linger.ms": 0, "enable.idempotence": False})
    small = os.urandom(min(a.size, 1024))
    lt = time.perf_counter()
    for i in range(a.latency_records):
        if time.perf_counter() - lt > a.seconds_max:
            break
        s = time.perf_counter()
        lp.produce(a.topic, value=small, partition=0)
        lp.flush(10)
        lat.append((time.perf_counter() - s) * 1e3)

    print(json.dumps({
        "records_acked": done[0], "errors": len(errors), "first_errors": errors[:3],
        "produce_records_per_s": done[0] / produce_s,
        "produce_mb_per_s": done[0] * a.size / produce_s / 1e6,
        "consume_records": got, "consume_mb_per_s": got * a.size / consume_s / 1e6,
        "latency_ms_p50": pct(lat, 0.50) if lat else None,
        "latency_ms_p99": pct(lat, 0.99) if lat else None,
        "latency_samples": len(lat), "record_bytes": a.size,
    }))


if __name__ == "__main__":
    main()
