#!/usr/bin/env python3
"""Turns bench/results/*.json into the ratio table recorded in BENCHMARKS.md."""
import json, os, sys

d = sys.argv[1]
def load(n):
    p = os.path.join(d, n)
    return json.load(open(p)) if os.path.exists(p) else None
disk, strata = load("disk.json"), load("strata.json")
peers = [(n, load(f"tansu-{n}.json")) for n in ("memory", "s3")]
peers = [(n, p) for n, p in peers if p]
fmt = lambda v: "—" if v is None else (f"{v:,.3f}" if isinstance(v, float) else str(v))
head = ["metric", "strata"] + [f"tansu {n}" for n, _ in peers] + [f"strata ÷ tansu {n}" for n, _ in peers] + ["hardware (same run)", "strata vs hardware"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
def row(name, key, hw=None, hw_label="", lower_is_better=False):
    s = strata.get(key)
    cells = [name, fmt(s)] + [fmt(p.get(key)) for _, p in peers]
    for _, p in peers:
        t = p.get(key)
        cells.append(f"{s / t:.2f}×" if s and t else "—")
    if hw:
        cells += [f"{fmt(hw)} ({hw_label})",
                  f"{s - hw:+.3f} ms" if lower_is_better else f"{s / hw:.2f}×"]
    else:
        cells += ["", ""]
    print("| " + " | ".join(cells) + " |")
row("produce MB/s, 1 KiB, acks=all", "produce_mb_per_s", disk and disk["seq_fsync_1mib_mb_per_s"], "fsynced seq MB/s")
row("produce records/s", "produce_records_per_s")
row("consume MB/s (read back)", "consume_mb_per_s")
row("produce latency p50 ms, 1 in flight", "latency_ms_p50", disk and disk["fsync_4k_p50_us"] / 1e3, "fdatasync p50 ms", True)
row("produce latency p99 ms, 1 in flight", "latency_ms_p99", disk and disk["fsync_4k_p99_us"] / 1e3, "fdatasync p99 ms", True)
