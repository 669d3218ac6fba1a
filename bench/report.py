#!/usr/bin/env python3
"""Turns bench/results/*.json into the ratio table recorded in BENCHMARKS.md."""
import json, os, sys

d = sys.argv[1]
load = lambda n: json.load(open(os.path.join(d, n))) if os.path.exists(os.path.join(d, n)) else None
disk, strata, tansu = load("disk.json"), load("strata.json"), load("tansu.json")
print("| metric | strata | tansu | strata/tansu | hardware | strata vs hardware |")
print("|---|---|---|---|---|---|")
def row(name, key, hw=None, hw_label="", better="higher"):
    s = strata.get(key) if strata else None
    t = tansu.get(key) if tansu else None
    ratio = f"{s / t:.2f}x" if s and t else "—"
    hwr = ""
    if hw:
        hwr = f"{s / hw:.2f}x of {hw_label}" if better == "higher" else f"{s - hw:+.3f} ms vs {hw_label}"
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v if v is not None else "—")
    print(f"| {name} | {fmt(s)} | {fmt(t)} | {ratio} | {fmt(hw) if hw else ''} | {hwr} |")
row("produce MB/s (acks=all)", "produce_mb_per_s", disk["seq_fsync_1mib_mb_per_s"] if disk else None, "fsynced seq MB/s")
row("produce records/s", "produce_records_per_s")
row("consume MB/s", "consume_mb_per_s")
row("produce latency p50 ms (1 in flight)", "latency_ms_p50", disk["fsync_4k_p50_us"] / 1e3 if disk else None, "fdatasync p50", better="lower")
row("produce latency p99 ms (1 in flight)", "latency_ms_p99", disk["fsync_4k_p99_us"] / 1e3 if disk else None, "fdatasync p99", better="lower")
