#!/usr/bin/env python3
"""Issue 5 benchmark: metadata commit latency on a 3-node meta group.

    python3 bench/meta_commit.py [--commits 500] [--topics 60] [--bin target/debug/strata]

1. starts 3 nodes on 127.0.0.1, each with every role (meta, wal, broker: a 3-voter raft
   group, R=3/W=2 WAL), metadata backups on (the defaults);
2. OffsetCommit: `--commits` synchronous commits of one offset by a confluent-kafka consumer,
   one at a time. Each is one raft write (`CommitOffsets`: the leader appends and fsyncs, a
   follower appends and fsyncs, the leader applies) plus, when the group's coordinator is not
   the meta leader, one forward. Client-side p50/p99;
3. CreateTopics: `--topics` single-partition topics created one at a time through the admin
   API (one raft write each, then the broker waits to see the topic's lease);
4. the server side: `strata_meta_write_duration_seconds` (proposal to applied, as the
   brokers see it) summed over the three nodes, p50/p99 from the histogram buckets;
5. the disk's own fdatasync p99 (`strata bench disk`, 3 s) for scale: a raft write is at
   least two sequential fsyncs (leader, then follower ack) on this one disk.

Prints one JSON line. Every process listens on 127.0.0.1 and is stopped by PID.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import harness  # noqa: E402
from cluster import Cluster  # noqa: E402


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def hist_quantiles(nodes, name):
    """p50/p99 (seconds) of a histogram summed over nodes, from cumulative buckets."""
    buckets: dict[float, float] = {}
    for b in nodes:
        for (n, labels), v in b.metrics().samples.items():
            if n == f"{name}_bucket":
                le = dict(labels)["le"]
                le = float("inf") if le == "+Inf" else float(le)
                buckets[le] = buckets.get(le, 0) + v
    total = buckets.get(float("inf"), 0)
    if not total:
        return None, None, 0

    def q(x):
        for le in sorted(buckets):
            if buckets[le] >= x * total:
                return le
        return float("inf")

    return q(0.5), q(0.99), int(total)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=500)
    ap.add_argument("--topics", type=int, default=60)
    ap.add_argument("--bin", default=str(ROOT / "target" / "debug" / "strata"))
    args = ap.parse_args()
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import NewTopic

    work = Path(tempfile.mkdtemp(prefix="strata-meta-bench-"))
    disk = json.loads(subprocess.run([args.bin, "bench", "disk", "--dir", str(work), "--seconds", "3"],
                                     capture_output=True, check=True).stdout)
    c = Cluster(args.bin, work / "cluster", brokers=3, combined=True, lease_ms=6000)
    try:
        c.start()
        harness.create_topic(c.bootstrap, "bench-offsets", 1)
        cons = Consumer(harness.consumer_conf(c.bootstrap, **{"group.id": "meta-bench"}))
        commit_ms = []
        for i in range(args.commits):
            t0 = time.perf_counter()
            cons.commit(offsets=[TopicPartition("bench-offsets", 0, i)], asynchronous=False)
            commit_ms.append((time.perf_counter() - t0) * 1000)
        cons.close()
        adm = harness.admin_client(c.bootstrap)
        create_ms = []
        for i in range(args.topics):
            t0 = time.perf_counter()
            adm.create_topics([NewTopic(f"bench-t{i}", 1, 1)])[f"bench-t{i}"].result(30)
            create_ms.append((time.perf_counter() - t0) * 1000)
        p50, p99, n = hist_quantiles(c.brokers, "strata_meta_write_duration_seconds")
        out = {
            "bench": "meta_commit",
            "nodes": 3,
            "offset_commit_ms": {"n": len(commit_ms), "p50": round(statistics.median(commit_ms), 2),
                                 "p99": round(pct(commit_ms, 0.99), 2), "max": round(max(commit_ms), 2)},
            "create_topic_ms": {"n": len(create_ms), "p50": round(statistics.median(create_ms), 2),
                                "p99": round(pct(create_ms, 0.99), 2)},
            "server_meta_write_s": {"n": n, "p50_le": p50, "p99_le": p99},
            "disk_fdatasync": {k: v for k, v in disk.items() if "fsync" in k or "sync" in k},
        }
        print(json.dumps(out))
    finally:
        c.stop()


if __name__ == "__main__":
    main()
