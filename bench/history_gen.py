#!/usr/bin/env python3
"""Generate months of back-dated history into a Kafka topic (any Kafka-compatible broker).

    python3 bench/history_gen.py --bootstrap 127.0.0.1:9092 --topic history \
        --records 1000000 --days 180 --partitions 4 --value-bytes 200

Records get CreateTime timestamps spread evenly over the last `--days` days (oldest
first), round-robin over the partitions, key `k<n>`, a value of `--value-bytes` bytes
that starts with the record number, and a header `n`. The layout is a pure function of
the arguments (`record_time`, `record_partition`), so a test can compute which records
any time range holds without reading them back. Prints one progress line a second on
stderr and a JSON summary on stdout.
"""

import argparse
import json
import sys
import time

DAY_MS = 86_400_000


def record_time(n: int, records: int, start_ms: int, days: int) -> int:
    """CreateTime of record `n` of `records`: evenly from `start_ms` over `days` days."""
    span = days * DAY_MS
    return start_ms + (n * span) // max(records, 1)


def record_partition(n: int, partitions: int) -> int:
    return n % partitions


def record_value(n: int, value_bytes: int) -> bytes:
    head = b"h%010d-" % n
    if value_bytes <= len(head):
        return head
    filler = (b"%010d" % (n * 2654435761 % 10**10)) * (value_bytes // 10 + 1)
    return head + filler[: value_bytes - len(head)]


def generate(bootstrap: str, topic: str, records: int, days: int, partitions: int,
             value_bytes: int, start_ms: int, compression: str = "lz4",
             progress=sys.stderr) -> dict:
    from confluent_kafka import Producer

    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 20,
        "batch.size": 512 * 1024,
        "compression.type": compression,
        "queue.buffering.max.kbytes": 512 * 1024,
        "message.timeout.ms": 300_000,
    })
    errors = []
    acked = [0]

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(str(err))
        else:
            acked[0] += 1

    t0 = time.monotonic()
    last = t0
    for n in range(records):
        kw = dict(
            partition=record_partition(n, partitions),
            key=b"k%d" % n,
            value=record_value(n, value_bytes),
            headers=[("n", str(n).encode())],
            timestamp=record_time(n, records, start_ms, days),
            on_delivery=on_delivery,
        )
        while True:
            try:
                p.produce(topic, **kw)
                break
            except BufferError:
                p.poll(0.05)
        if n % 5000 == 0:
            p.poll(0)
            now = time.monotonic()
            if now - last >= 1 and progress:
                print(f"history: {n}/{records} records, {acked[0]} acked, {n / (now - t0):.0f} rec/s",
                      file=progress, flush=True)
                last = now
        if len(errors) > 100:
            break
    left = p.flush(300)
    took = time.monotonic() - t0
    if errors or left:
        raise RuntimeError(f"{len(errors)} delivery errors (first: {errors[:3]}), {left} undelivered")
    return {
        "topic": topic,
        "records": records,
        "partitions": partitions,
        "days": days,
        "start_ms": start_ms,
        "value_bytes": value_bytes,
        "seconds": round(took, 3),
        "records_per_s": round(records / took, 1) if took > 0 else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=180)
    ap.add_argument("--partitions", type=int, default=1, help="partitions the topic has (records go round-robin)")
    ap.add_argument("--value-bytes", type=int, default=200)
    ap.add_argument("--compression", default="lz4", choices=["none", "gzip", "snappy", "lz4", "zstd"])
    ap.add_argument("--start-ms", type=int, default=None,
                    help="CreateTime of the first record (default: now - days)")
    args = ap.parse_args()
    start = args.start_ms if args.start_ms is not None else int(time.time() * 1000) - args.days * DAY_MS
    summary = generate(args.bootstrap, args.topic, args.records, args.days, args.partitions,
                       args.value_bytes, start, args.compression)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
