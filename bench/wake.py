#!/usr/bin/env python3
"""Issue 8 benchmark: scale to zero and back — from a sleeping cluster to the first acknowledged write.

    python3 bench/wake.py [--runs 5] [--seaweedfs] [--bin target/debug/strata]

One broker on embedded defaults with `broker.idle_timeout_ms` (default 2000 here) and an object
store (a local directory, or a local SeaweedFS with `--seaweedfs`). Each run: produce a few
records with `acks=all`, close every client, and wait until the broker scales to zero by itself
(the process exits 0: partitions uploaded, leases released, deregistered). Then the clock starts:
a new `strata start` on the same data dir, and a confluent-kafka producer that sends one record
with `acks=all` as soon as the process is spawned (librdkafka retries the connection on its own).
The time to the delivery report is "sleeping → first acked write". The record is then read back
(with everything produced before it) to check nothing was lost across the sleep.

Prints one JSON line. Every process listens on 127.0.0.1 and is stopped by PID.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import harness  # noqa: E402

TOPIC = "wake"


def produce_one(bootstrap: str, value: bytes, timeout: float = 60) -> float:
    """Sends one acks=all record; returns seconds until its delivery report (success only)."""
    from confluent_kafka import Producer

    started = time.monotonic()
    p = Producer(harness.producer_conf(bootstrap, **{
        "acks": "all", "linger.ms": 0, "reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 50,
        "retry.backoff.ms": 10, "message.timeout.ms": int(timeout * 1000)}))
    done: list = []
    p.produce(TOPIC, value=value, partition=0, on_delivery=lambda err, msg: done.append(err))
    while not done and time.monotonic() - started < timeout:
        p.poll(0.005)
    took = time.monotonic() - started
    p.flush(5)
    if not done or done[0] is not None:
        raise AssertionError(f"no successful delivery report: {done}")
    return took


def read_all(bootstrap: str, expected: int) -> list[bytes]:
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

    c = Consumer(harness.consumer_conf(bootstrap))
    got = []
    try:
        c.assign([TopicPartition(TOPIC, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 60
        while len(got) < expected and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                got.append(m.value())
    finally:
        c.close()
    return got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--idle-ms", type=int, default=2000)
    ap.add_argument("--seaweedfs", action="store_true")
    ap.add_argument("--bin", default=str(ROOT / "target" / "debug" / "strata"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="strata-wake-") as tmp:
        tmp = Path(tmp)
        weed = None
        env = {"STRATA_BROKER_IDLE_TIMEOUT_MS": str(args.idle_ms)}
        if args.seaweedfs:
            weed = harness.SeaweedFS(tmp / "weed")
            weed.start()
            store = weed.url(weed.new_bucket("wake"))
            env |= weed.env
        else:
            store = f"fs://{tmp / 'objects'}"
        b = harness.Broker(args.bin, tmp / "node", object_store=store, env=env)
        times, sleeps = [], []
        try:
            b.start()
            harness.create_topic(b.bootstrap, TOPIC, 1)
            values = []
            for run in range(args.runs + 1):
                value = b"run-%d" % run
                took = produce_one(b.bootstrap, value)
                values.append(value)
                if run > 0:  # run 0 only warms the topic up
                    times.append(took)
                slept = time.monotonic()
                rc = b.proc.wait(timeout=args.idle_ms / 1000 + 120)
                assert rc == 0, f"the broker exited with {rc}, not 0, when idle:\n{b.stderr_tail()}"
                sleeps.append(time.monotonic() - slept)
                b._close_logs()
                b.start(wait=False)
            got = read_all(b.bootstrap, len(values))
            assert got == values, f"records lost or reordered across the sleeps: {got} != {values}"
        finally:
            if b.alive():
                b.stop(check=False)
            if weed:
                weed.stop()
    print(json.dumps({
        "sleeping_to_first_acked_write_s": {
            "median": round(statistics.median(times), 3), "min": round(min(times), 3),
            "max": round(max(times), 3), "runs": [round(t, 3) for t in times]},
        "idle_to_exit_s_median": round(statistics.median(sleeps), 2),
        "idle_timeout_ms": args.idle_ms,
        "store": "seaweedfs" if args.seaweedfs else "fs",
        "binary": args.bin,
    }))


if __name__ == "__main__":
    main()
