#!/usr/bin/env python3
"""Produce/consume load against any Kafka-protocol broker, through librdkafka (confluent-kafka).

Phases, each bounded in time and count:
  throughput: N records of SIZE bytes, acks=all, linger 5 ms, then a full read back; every
              100th record's produce→ack time gives the latency percentiles *at saturation*;
  moderate:   --rate records/s for --rate-seconds (acks=all, linger 0): latency percentiles of
              a producer that does not saturate the broker;
  latency:    M records produced one at a time (produce + flush), acks=all — the round trip a
              producer waits for, which is what the WAL's group commit must keep near fsync.
With --replica-metrics (the WAL replicas' admin listeners), the replicas' own group commits
(`strata_wal_replica_fdatasync_duration_seconds`, write + fdatasync) are scraped before and
after the moderate and one-in-flight phases: the disk's latency under exactly that load. With
--broker-metrics (the brokers' admin listeners), so are the brokers' quorum commits
(`strata_wal_quorum_commit_duration_seconds`) and Produce requests as the broker timed them
(`strata_kafka_request_duration_seconds{api="produce"}`): where a client's latency goes.
Prints one JSON object. Loopback only.
"""
import argparse, json, os, re, sys, threading, time, urllib.request
from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.admin import AdminClient, NewTopic


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int((len(xs) - 1) * p))]


REPLICA_FSYNC = "strata_wal_replica_fdatasync_duration_seconds"
QUORUM_COMMIT = "strata_wal_quorum_commit_duration_seconds"
PRODUCE = "strata_kafka_request_duration_seconds"


def histogram_buckets(urls, name, labels=""):
    """{le: cumulative count} of histogram `name` (with `labels`, e.g. 'api="produce",'),
    summed over the /metrics of `urls`."""
    bucket = re.compile(r'^' + name + r'_bucket\{' + re.escape(labels) + r'le="([^"]+)"\} (\d+)$', re.M)
    total = {}
    for url in urls:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        for le, n in bucket.findall(text):
            total[le] = total.get(le, 0) + int(n)
    return total


def scrape(replica_urls, broker_urls):
    out = {}
    if replica_urls:
        out["replica_group_commit"] = histogram_buckets(replica_urls, REPLICA_FSYNC)
    if broker_urls:
        out["broker_quorum_commit"] = histogram_buckets(broker_urls, QUORUM_COMMIT)
        out["broker_produce_request"] = histogram_buckets(broker_urls, PRODUCE, 'api="produce",')
    return out


def phase(before, after):
    return {k: histogram_phase(before[k], after[k]) for k in before}


def histogram_phase(before, after):
    """The group commits between two scrapes: their count, the histogram's p50/p99/p999 as
    bucket upper bounds (ms; buckets double from 50 µs), and the share above 0.8/1.6/3.2 ms."""
    delta = sorted(((float(le), after[le] - before.get(le, 0)) for le in after), key=lambda x: x[0])
    count = delta[-1][1] if delta else 0
    if count == 0:
        return {"count": 0}
    def bound(q):
        return next(le for le, n in delta if n >= q * count) * 1e3
    def over(ms):
        return 1 - max((n for le, n in delta if le * 1e3 <= ms + 1e-9), default=0) / count
    return {"count": count, "p50_le_ms": bound(0.50), "p99_le_ms": bound(0.99), "p999_le_ms": bound(0.999),
            "share_over_0_8_ms": over(0.8), "share_over_1_6_ms": over(1.6), "share_over_3_2_ms": over(3.2)}


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
    ap.add_argument("--replica-metrics", default="",
                    help="comma-separated host:port of the WAL replicas' admin listeners")
    ap.add_argument("--broker-metrics", default="",
                    help="comma-separated host:port of the brokers' admin listeners")
    a = ap.parse_args()
    replica_urls = [f"http://{h}/metrics" for h in a.replica_metrics.split(",") if h]
    broker_urls = [f"http://{h}/metrics" for h in a.broker_metrics.split(",") if h]
    scraping = bool(replica_urls or broker_urls)
    server_side = {}

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
        scraped = scrape(replica_urls, broker_urls) if scraping else None
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
        if scraped is not None:
            server_side["moderate"] = phase(scraped, scrape(replica_urls, broker_urls))
        stop.set()
        polling.join()

    lat = []
    lp = Producer({"bootstrap.servers": a.bootstrap, "acks": "all", "linger.ms": 0, "enable.idempotence": False})
    small = os.urandom(min(a.size, 1024))
    scraped = scrape(replica_urls, broker_urls) if scraping else None
    lt = time.perf_counter()
    for i in range(a.latency_records):
        if time.perf_counter() - lt > a.seconds_max:
            break
        s = time.perf_counter()
        lp.produce(a.topic, value=small, partition=0)
        lp.flush(10)
        lat.append((time.perf_counter() - s) * 1e3)
    if scraped is not None:
        server_side["one_in_flight"] = phase(scraped, scrape(replica_urls, broker_urls))

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
        "server_side": server_side,
    }))


if __name__ == "__main__":
    main()
