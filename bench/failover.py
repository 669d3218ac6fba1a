#!/usr/bin/env python3
"""Issue 5 benchmark: broker failover time, start-to-first-fetch on a long history, idle RSS.

    python3 bench/failover.py [--runs 5] [--history-mib 1024] [--bin target/debug/strata]

1. kill -9 → writable (`--runs` times, each on a fresh cluster): 3 brokers (meta + broker
   roles) and 3 WAL replicas (R=3, W=2) on 127.0.0.1, `meta.broker_lease_ms` 3000, a
   12-partition topic under an acks=all producer (tests/e2e/tools/ack_producer.py). Broker 2
   is killed with SIGKILL; the time is taken when every partition it led has acknowledged a
   write on another broker (Metadata shows a live leader, then acks above the last ack seen).
   The median and the spread are printed. A lease must run out before anything moves, so
   the floor is `broker_lease_ms` plus up to one heartbeat interval (500 ms here).
2. start → first fetch: one broker on an fs object store; `--history-mib` MiB of history
   (64 KiB values, 4 partitions) produced and uploaded, the broker stopped, then started
   again; the time from process start to the first record returned by a fetch of offset 0
   (from object storage) and of the newest record. Measured at 64 MiB on the way, to show
   it does not grow with the history.
3. idle RSS: the restarted broker's VmRSS after 5 s without clients.

Prints one JSON line. Every process listens on 127.0.0.1 and is stopped by PID.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import harness  # noqa: E402
from cluster import Cluster, wait_leaders  # noqa: E402

PARTITIONS = 12
TOOL = ROOT / "tests" / "e2e" / "tools" / "ack_producer.py"


def read_acks(path: Path):
    data = path.read_bytes() if path.exists() else b""
    for line in data.split(b"\n")[:-1]:
        p, o, _ = line.split(b" ")
        yield int(p), int(o)


def last_acked(path: Path) -> dict:
    last = {}
    for p, o in read_acks(path):
        last[p] = max(last.get(p, -1), o)
    return last


def kill_run(binary: str, workdir: Path) -> float:
    c = Cluster(binary, workdir, brokers=3, wal_nodes=3, lease_ms=3000)
    prod = None
    try:
        c.start()
        topic = "failover"
        harness.create_topic(c.bootstrap, topic, PARTITIONS)
        leaders = wait_leaders(c, topic, PARTITIONS)
        theirs = {p for p, l in leaders.items() if l == 2}
        acks = workdir / "acks.txt"
        prod = subprocess.Popen([harness.python(), str(TOOL), c.bootstrap, topic, str(PARTITIONS), str(acks),
                                 "0", "120", "50000000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=harness.clean_env())
        harness.eventually(lambda: acks.exists() and acks.read_bytes().count(b"\n") > 2000, 60,
                           what="first acks")
        victim = c.broker(2)
        victim.kill9()
        killed = time.monotonic()
        c.brokers.remove(victim)
        wait_leaders(c, topic, PARTITIONS, exclude={2}, timeout=120)
        mark = last_acked(acks)

        def moved():
            return theirs <= {p for p, o in read_acks(acks) if o > mark.get(p, -1)}

        harness.eventually(moved, 120, interval=0.02, what="writes on the new leaders")
        took = time.monotonic() - killed
        c.brokers.append(victim)
        return took
    finally:
        if prod and prod.poll() is None:
            prod.terminate()
            prod.wait(60)
        c.stop()


def first_fetch_s(b: harness.Broker, topic: str, offset: int) -> float:
    """Starts `b` and returns seconds from process start to the first record fetched at
    `offset` of partition 0."""
    from confluent_kafka import Consumer, TopicPartition

    started = time.monotonic()
    b.start(wait=False)
    deadline = started + 120
    while time.monotonic() < deadline:
        try:
            harness.http_get(b.admin_url + "/health", timeout=1)
            break
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.01)
    c = Consumer(harness.consumer_conf(b.bootstrap, **{"fetch.wait.max.ms": 10}))
    try:
        c.assign([TopicPartition(topic, 0, offset)])
        while time.monotonic() < deadline:
            m = c.poll(0.05)
            if m is not None and m.error() is None:
                return time.monotonic() - started
    finally:
        c.close()
    raise AssertionError("no record fetched within 120 s")


def produce_mib(bootstrap: str, topic: str, mib: int, first: int) -> int:
    from confluent_kafka import Producer

    p = Producer(harness.producer_conf(bootstrap, **{"linger.ms": 20}))
    value = os.urandom(64 * 1024)
    n = mib * 16
    for i in range(first, first + n):
        while True:
            try:
                p.produce(topic, value=value, key=b"%d" % i, partition=i % 4)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(600) == 0
    return first + n


def restart_bench(binary: str, workdir: Path, history_mib: int) -> dict:
    b = harness.Broker(binary, workdir / "single", object_store=f"fs://{workdir / 'single-objects'}",
                       env={"STRATA_COMPACTION_ENABLED": "false"})
    out = {}
    try:
        b.start()
        topic = "history"
        harness.create_topic(b.bootstrap, topic, 4)
        n = 0
        for mib in sorted({64, history_mib}):
            n = produce_mib(b.bootstrap, topic, mib - n // 16, n)
            b.wait_uploaded(topic, timeout=900)
            b.stop()
            first = first_fetch_s(b, topic, 0)
            b.stop()
            newest = first_fetch_s(b, topic, n // 4 - 1)
            out[f"{mib}MiB"] = {"start_to_first_fetch_offset0_s": round(first, 3),
                               "start_to_first_fetch_newest_s": round(newest, 3)}
        time.sleep(5)
        rss_kib = next(int(line.split()[1]) for line in open(f"/proc/{b.pid}/status")
                       if line.startswith("VmRSS:"))
        out["idle_rss_mib"] = round(rss_kib / 1024, 1)
    finally:
        if b.alive():
            b.stop(check=False)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--history-mib", type=int, default=1024)
    ap.add_argument("--bin", default=str(ROOT / "target" / "debug" / "strata"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="strata-failover-") as tmp:
        tmp = Path(tmp)
        times = [kill_run(args.bin, tmp / f"kill{i}") for i in range(args.runs)]
        result = {
            "kill9_to_writable_s": {"median": round(statistics.median(times), 2),
                                    "min": round(min(times), 2), "max": round(max(times), 2),
                                    "runs": [round(t, 2) for t in times], "lease_ms": 3000},
            "restart": restart_bench(args.bin, tmp, args.history_mib),
            "binary": args.bin,
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
