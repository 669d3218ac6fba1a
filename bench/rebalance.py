#!/usr/bin/env python3
"""Issue 6 benchmark: consumer-group rebalance time, 3 → 4 members (join) and 4 → 3 (leave).

    python3 bench/rebalance.py [--runs 5] [--assignor range|cooperative-sticky] [--bin target/debug/strata]

One broker on 127.0.0.1 (local fs object store), a 12-partition topic, and a producer
thread writing one record to every partition every 20 ms. Each run uses a fresh group:
three confluent-kafka members (each a thread with its own librdkafka consumer) subscribe
and settle (every partition assigned and consumed); then

- join:  a 4th member subscribes at t0. Done when the four members together own all 12
         partitions, each member owns at least one, and every partition has been consumed
         by its owner since that owner's latest assignment of it.
- leave: one member closes (LeaveGroup) at t0. Done when the three left own all 12
         partitions and every partition has been consumed by its owner since assignment.

Members: session.timeout.ms 10000, heartbeat.interval.ms 1000 (the rebalance reaches the
other members on their next heartbeat), max.poll.interval.ms 300000 (the rebalance
timeout). The broker's group.initial.rebalance.delay (3 s) applies only to an empty group,
so not to these measurements. Prints the median, min and max of each, and one JSON line.
Every process listens on 127.0.0.1 and is stopped by PID.
"""

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import harness  # noqa: E402

PARTITIONS = 12
TOPIC = "rebalance"
SESSION_MS = 10_000
HEARTBEAT_MS = 1_000


class Member(threading.Thread):
    def __init__(self, bootstrap: str, group: str, assignor: str):
        super().__init__(daemon=True)
        from confluent_kafka import Consumer

        self.lock = threading.Lock()
        self.owned: dict[int, float] = {}  # partition -> time of its latest assignment
        self.resumed: dict[int, float] = {}  # partition -> first consume after that assignment
        self.stop_flag = threading.Event()
        self.closed = threading.Event()
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "partition.assignment.strategy": assignor,
            "session.timeout.ms": SESSION_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS,
            "max.poll.interval.ms": 300_000,
            "auto.offset.reset": "latest",
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
        })

    # confluent-kafka (un)assigns itself after these callbacks (incrementally under cooperative-sticky).
    def on_assign(self, consumer, parts):
        now = time.monotonic()
        with self.lock:
            for tp in parts:
                self.owned[tp.partition] = now
                self.resumed.pop(tp.partition, None)

    def on_revoke(self, consumer, parts):
        with self.lock:
            for tp in parts:
                self.owned.pop(tp.partition, None)
                self.resumed.pop(tp.partition, None)

    def run(self):
        self.consumer.subscribe([TOPIC], on_assign=self.on_assign, on_revoke=self.on_revoke,
                                on_lost=self.on_revoke)
        try:
            while not self.stop_flag.is_set():
                for m in self.consumer.consume(num_messages=1000, timeout=0.05):
                    if m.error() is not None:
                        continue
                    now = time.monotonic()
                    with self.lock:
                        p = m.partition()
                        if p in self.owned and p not in self.resumed:
                            self.resumed[p] = now
        finally:
            self.consumer.close()  # LeaveGroup
            self.closed.set()

    def snapshot(self):
        with self.lock:
            return set(self.owned), set(self.resumed)


def settled(members: list[Member]) -> bool:
    owners: dict[int, int] = {}
    for i, m in enumerate(members):
        owned, resumed = m.snapshot()
        if not owned or owned != resumed:
            return False
        for p in owned:
            if p in owners:
                return False
            owners[p] = i
    return len(owners) == PARTITIONS


def wait_settled(members: list[Member], timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while not settled(members):
        if time.monotonic() > deadline:
            raise RuntimeError(f"group did not settle in {timeout}s: {[m.snapshot() for m in members]}")
        time.sleep(0.01)
    return time.monotonic()


def producer_loop(bootstrap: str, stop: threading.Event):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    i = 0
    while not stop.is_set():
        for part in range(PARTITIONS):
            p.produce(TOPIC, value=b"%d" % i, partition=part)
        i += 1
        p.poll(0)
        time.sleep(0.02)
    p.flush(10)


def one_run(bootstrap: str, run: int, assignor: str) -> tuple[float, float]:
    group = f"bench-{assignor}-{run}-{time.time_ns()}"
    members = [Member(bootstrap, group, assignor) for _ in range(3)]
    for m in members:
        m.start()
    try:
        wait_settled(members)
        time.sleep(1.0)  # a few heartbeats in the stable state
        t0 = time.monotonic()
        fourth = Member(bootstrap, group, assignor)
        members.append(fourth)
        fourth.start()
        join = wait_settled(members) - t0
        time.sleep(1.0)
        leaving = members.pop(0)
        t0 = time.monotonic()
        leaving.stop_flag.set()
        leave = wait_settled(members) - t0
        leaving.closed.wait(30)
        return join, leave
    finally:
        for m in members:
            m.stop_flag.set()
        for m in members:
            m.closed.wait(30)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--assignor", default="range", help="librdkafka partition.assignment.strategy")
    ap.add_argument("--bin", default=str(ROOT / "target" / "debug" / "strata"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="strata-rebalance-") as tmp:
        b = harness.Broker(args.bin, Path(tmp) / "broker")
        b.start()
        stop = threading.Event()
        prod = None
        try:
            harness.create_topic(b.bootstrap, TOPIC, PARTITIONS)
            prod = threading.Thread(target=producer_loop, args=(b.bootstrap, stop), daemon=True)
            prod.start()
            joins, leaves = [], []
            for r in range(args.runs):
                j, lv = one_run(b.bootstrap, r, args.assignor)
                joins.append(j)
                leaves.append(lv)
                print(f"run {r + 1}: join 3->4 {j * 1000:.0f} ms, leave 4->3 {lv * 1000:.0f} ms", flush=True)
        finally:
            stop.set()
            if prod is not None:
                prod.join(30)
            if b.alive():
                b.stop(timeout=30, check=False)

    def ms(xs):
        return {"median_ms": round(statistics.median(xs) * 1000), "min_ms": round(min(xs) * 1000),
                "max_ms": round(max(xs) * 1000)}

    out = {"bench": "rebalance", "assignor": args.assignor, "runs": args.runs, "partitions": PARTITIONS,
           "session_timeout_ms": SESSION_MS, "heartbeat_interval_ms": HEARTBEAT_MS,
           "join_3_to_4": ms(joins), "leave_4_to_3": ms(leaves)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
