#!/usr/bin/env python3
"""Produce/consume load against any Kafka-protocol broker, through librdkafka (confluent-kafka).

Phases, each bounded in time and count:
  throughput: N records of SIZE bytes, acks=all, linger 5 ms, then a full read back; every
              100th record's produce→ack time gives the latency percentiles *at saturation*;
  moderate:   --rate records/s for --rate-seconds (acks=all, linger 0): latency percentiles of
              a producer that does not saturate the broker;
  latency:    M records produced one at a time (produce + flush), acks=all — the round trip a
              producer waits for, which is what the WAL's group commit must keep near fsync.
Prints one JSON object. Loopback only.
"""
import argparse, json, os, sys, threading, time
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
    ap.add_argument("--rate", type=int, default=0, help="records/s of the moderate-rate phase (0: skip)")
    ap.add_argument("--rate-seconds", type=float, default=10)
    a = ap.parse_args()

    if a.create:
        admin = AdminClient({"bootstrap.servers": a.bootstrap})  # alive until the futures resolve
        fs = admin.create_topics([NewTopic(a.topic, num_partitions=a.partitions, replication_factor=1)])
        for f in fs.values():
            try:
                f.result(30)
            except Exception as e:  # already exists is fine for re-runs
                print(f"create: {e}", file=sys.stderr)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # every partition has a leader before producing
            t = admin.list_topics(topic=a.topic, timeout=10).topics.get(a.topic)
            if t and t.error is None and len(t.partitions) == a.partitions and \
                    all(p.leader >= 0 for p in t.partitions.values()):
                break
            time.sleep(0.2)

    payload = os.urandom(a.size)
    p = Producer({"bootstrap.servers": a.bootstrap, "acks": "all", "linger.ms": 5,
                  "batch.size": 1_000_000, "queue.buffering.max.messages": 1_000_000,
                  "enable.idempotence": False})
    errors = []
    done = [0]
    sat_lat = []

    def cb(err, msg):
        if err:
            errors.append(str(err))
        else:
            done[0] += 1

    def timed_cb(started):
        def f(err, msg):
            cb(err, msg)
            if not err:
                sat_lat.append((time.perf_counter() - started) * 1e3)
        return f

    t0 = time.perf_counter()
    deadline = t0 + a.seconds_max
    sent = 0
    while sent < a.records and time.perf_counter() < deadline:
        try:
            on = timed_cb(time.perf_counter()) if sent % 100 == 0 else cb
            p.produce(a.topic, value=payload, partition=sent % a.partitions, on_delivery=on)
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

    mod_lat = []
    if a.rate > 0:
        mp = Producer({"bootstrap.servers": a.bootstrap, "acks": "all", "linger.ms": 0,
                       "enable.idempotence": False})
        small_payload = os.urandom(min(a.size, 1024))
        # Connections and metadata first: the timed records measure the broker, not the
        # producer's bootstrap.
        for part in range(a.partitions):
            mp.produce(a.topic, value=small_payload, partition=part)
        mp.flush(a.seconds_max)

        # Delivery reports are taken by a thread blocked in poll(), so each is timed when it
        # arrives; the sender sleeps between records. (A single loop polling with the time
        # left to the next record spins: poll() takes whole milliseconds, so a 0.5 ms wait is
        # poll(0) — one core of busy loop that the brokers then lack — and a loop that
        # sleeps instead reads each report only at the next send.)
        stop = threading.Event()

        def poller():
            while not stop.is_set():
                mp.poll(0.05)

        def mod_cb(started):
            def f(err, msg):
                if not err:
                    mod_lat.append((time.perf_counter() - started) * 1e3)
            return f

        polling = threading.Thread(target=poller, daemon=True)
        polling.start()
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < a.rate_seconds:
            wait = start + n / a.rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            mp.produce(a.topic, value=small_payload, partition=n % a.partitions,
                       on_delivery=mod_cb(time.perf_counter()))
            n += 1
        mp.flush(a.seconds_max)
        stop.set()
        polling.join()

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
        "latency_ms_p999": pct(lat, 0.999) if lat else None,
        "saturated_latency_ms_p50": pct(sat_lat, 0.50) if sat_lat else None,
        "saturated_latency_ms_p99": pct(sat_lat, 0.99) if sat_lat else None,
        "saturated_latency_ms_p999": pct(sat_lat, 0.999) if sat_lat else None,
        "moderate_rate": a.rate,
        "moderate_latency_ms_p50": pct(mod_lat, 0.50) if mod_lat else None,
        "moderate_latency_ms_p99": pct(mod_lat, 0.99) if mod_lat else None,
        "moderate_latency_ms_p999": pct(mod_lat, 0.999) if mod_lat else None,
        "latency_samples": len(lat), "record_bytes": a.size,
    }))


if __name__ == "__main__":
    main()
