#!/usr/bin/env python3
"""Direct-mode benchmark: produce latency of `direct` vs `wal` topics side by side against a
local SeaweedFS, in one run on one broker, plus object-store PUTs and GETs per GiB in direct
mode (the inputs of the cost model).

    python3 bench/direct.py [--records 400] [--value-bytes 1024] [--mib 128] [--bin target/debug/strata]

1. starts SeaweedFS and one broker on it (`direct.batch_window_ms` default 25 ms,
   `tiering.flush_interval_ms` default 1000 ms);
2. latency: `--records` records produced one at a time (produce + flush, one in flight,
   `acks=all`, idempotence off), alternating between a `wal` topic and a `direct` topic so
   both see the same machine state; p50/p99 of each and their ratio;
3. cost: `--mib` MiB produced to a `direct` topic (4 partitions, 4 producers' worth of load
   from one librdkafka producer, `linger.ms=5`), then the broker restarts with an empty read
   cache and a consumer reads everything back; the object store's request counters
   (`strata_object_store_requests_total`) give PUTs per GiB produced and GETs per GiB read;
4. prints one JSON line.
Every process it starts listens on 127.0.0.1 and is stopped by PID. The load is bounded.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import harness  # noqa: E402

PUT_OPS = ("put", "multipart_initiate", "multipart_part", "multipart_complete")


def store_requests(admin_url: str) -> dict:
    out = {}
    with urllib.request.urlopen(admin_url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("strata_object_store_requests_total{"):
                k, v = line.rsplit(" ", 1)
                op = k.split('op="', 1)[1].split('"', 1)[0]
                out[op] = float(v)
    return out


def pct(xs: list, q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def latency(bootstrap: str, topics: list, records: int, value_bytes: int) -> dict:
    from confluent_kafka import Producer

    p = Producer(harness.producer_conf(bootstrap, **{"linger.ms": 0}))
    value = b"x" * value_bytes
    out = {t: [] for t in topics}
    for i in range(records * len(topics)):
        t = topics[i % len(topics)]
        err = []
        t0 = time.perf_counter()
        p.produce(t, value=value, partition=0, on_delivery=lambda e, m: err.append(e))
        p.flush(30)
        dt = (time.perf_counter() - t0) * 1000
        assert err == [None], err
        if i >= len(topics) * 10:  # warm-up
            out[t].append(dt)
    return {t: {"p50_ms": round(pct(v, 0.5), 2), "p99_ms": round(pct(v, 0.99), 2), "n": len(v)}
            for t, v in out.items()}


def bulk(bootstrap: str, topic: str, partitions: int, mib: int, value_bytes: int) -> int:
    from confluent_kafka import Producer

    p = Producer(harness.producer_conf(bootstrap, **{"linger.ms": 5, "batch.size": 1 << 20}))
    value = b"y" * value_bytes
    n = (mib << 20) // value_bytes
    errors = []
    for i in range(n):
        while True:
            try:
                p.produce(topic, value=value, partition=i % partitions,
                          on_delivery=lambda e, m: e and errors.append(e))
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(300) == 0 and not errors, errors[:3]
    return n * value_bytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=400)
    ap.add_argument("--value-bytes", type=int, default=1024)
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--bin", default=str(ROOT / "target" / "debug" / "strata"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="strata-direct-"))
    weed = harness.SeaweedFS(work / "weed", buckets=["direct"]).start()
    b = harness.Broker(args.bin, work / "broker", object_store=weed.url("direct"), env=weed.env)
    try:
        b.start()
        harness.create_topic(b.bootstrap, "lat-wal", 1)
        harness.create_topic(b.bootstrap, "lat-direct", 1, config={"strata.storage.mode": "direct"})
        lat = latency(b.bootstrap, ["lat-wal", "lat-direct"], args.records, args.value_bytes)

        harness.create_topic(b.bootstrap, "bulk", 4, config={"strata.storage.mode": "direct"})
        before = store_requests(b.admin_url)
        produced = bulk(b.bootstrap, "bulk", 4, args.mib, args.value_bytes)
        after = store_requests(b.admin_url)
        puts = sum(after.get(op, 0) - before.get(op, 0) for op in PUT_OPS)
        b.stop()
        shutil.rmtree(b.cache_dir, ignore_errors=True)
        b.start()
        before = store_requests(b.admin_url)
        t0 = time.perf_counter()
        parts = harness.consume(b.bootstrap, "bulk", 4, timeout=600)
        read_s = time.perf_counter() - t0
        after = store_requests(b.admin_url)
        read = sum(len(r.value) for recs in parts.values() for r in recs)
        assert read == produced, (read, produced)
        gets = after.get("get", 0) - before.get("get", 0)
        gib = produced / (1 << 30)
        result = {
            "wal": lat["lat-wal"],
            "direct": lat["lat-direct"],
            "direct_over_wal_p50": round(lat["lat-direct"]["p50_ms"] / lat["lat-wal"]["p50_ms"], 2),
            "direct_over_wal_p99": round(lat["lat-direct"]["p99_ms"] / lat["lat-wal"]["p99_ms"], 2),
            "bulk_mib": round(produced / (1 << 20), 1),
            "direct_put_per_gib": round(puts / gib, 1),
            "direct_get_per_gib_read": round(gets / gib, 1),
            "cold_read_mb_s": round(read / read_s / 1e6, 1),
        }
        print(json.dumps(result))
    finally:
        if b.alive():
            b.stop(check=False)
        weed.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
