#!/usr/bin/env python3
"""Broker CPU time per delivered MQTT message, QoS 0 fan-out: a noise-robust measure of the
fan-out path's cost (unlike wall-clock msgs/s, CPU time spent by the broker barely moves when
other work shares the machine).

    python3 bench/mqtt_cpu.py [--bin target/debug/strata] [--loadgen target/debug/strata]
                              [--runs 3] [--messages 20000] [--subscribers 100]
                              [--payload-bytes 64]

Starts one broker (`--bin`, its own data dir in a temporary directory, every listener on
127.0.0.1), warms it up with a small fan-out run (first connections, the auto-created topic
MQTT publishes go to), then `--runs` times: reads the broker's utime + stime from
/proc/<pid>/stat, runs `strata bench mqtt --mode fanout` (`--loadgen`, hand-encoded MQTT 3.1.1:
one QoS 0 publisher, `--subscribers` QoS 0 subscribers of one topic), reads them again, and
divides by the deliveries the subscribers counted. Prints one JSON object: every run and the
median CPU microseconds per delivered message. The broker's CPU includes everything it did
in the run (ingest, WAL, tailer, router, connections); the load generator's is not counted.
The broker is stopped by its PID at the end.

This measures cost, not speed: on a shared machine compare two binaries with it (for
example a "before" copy and the current build), not against other brokers; the release
throughput comparison is `bench/mqtt_peers.py`, to be run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import harness  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid` in clock ticks (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[11]) + int(fields[12])


def fanout(args, port: int, messages: int) -> dict:
    cmd = [args.loadgen, "bench", "mqtt", "--addr", f"127.0.0.1:{port}", "--mode", "fanout",
           "--messages", str(messages), "--subscribers", str(args.subscribers),
           "--payload-bytes", str(args.payload_bytes)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=harness.clean_env())
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()}")
    return json.loads(res.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default=str(ROOT / "target" / "debug" / "strata"), help="the broker measured")
    p.add_argument("--loadgen", default=str(ROOT / "target" / "debug" / "strata"),
                   help="the binary whose `bench mqtt` generates the load")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--subscribers", type=int, default=100)
    p.add_argument("--payload-bytes", type=int, default=64)
    p.add_argument("--timeout", type=float, default=300, help="seconds per load-generator run")
    args = p.parse_args()
    if args.runs < 1 or args.messages < 1 or args.subscribers < 1:
        p.error("--runs, --messages and --subscribers must be at least 1")
    for b in (args.bin, args.loadgen):
        if not os.access(b, os.X_OK):
            p.error(f"{b} is not an executable file")

    with tempfile.TemporaryDirectory(prefix="mqtt-cpu-") as work:
        mqtt, kafka, admin, meta = (harness.free_port() for _ in range(4))
        log = open(Path(work) / "strata.log", "ab")
        cmd = [args.bin, "start", "--data-dir", str(Path(work) / "data"),
               "--kafka-listen", f"127.0.0.1:{kafka}", "--admin-listen", f"127.0.0.1:{admin}",
               "--meta-listen", f"127.0.0.1:{meta}", "--mqtt-listen", f"127.0.0.1:{mqtt}"]
        proc = subprocess.Popen(harness._deathsig_prefix() + cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, env=harness.clean_env(), cwd=work)
        try:
            if not harness.wait_port(mqtt, 60, proc):
                raise SystemExit(f"the broker did not open port {mqtt}:\n"
                                 + harness.tail(Path(work) / "strata.log", 20))
            fanout(args, mqtt, min(args.messages, 1000))  # warm-up, not measured
            runs = []
            for _ in range(args.runs):
                before = cpu_ticks(proc.pid)
                report = fanout(args, mqtt, args.messages)
                ticks = cpu_ticks(proc.pid) - before
                cpu_us = ticks * 1e6 / TICKS
                runs.append({
                    "broker_cpu_seconds": ticks / TICKS,
                    "delivered": report["delivered"],
                    "delivered_fraction": report["delivered_fraction"],
                    "delivered_msgs_per_s": report["delivered_msgs_per_s"],
                    "cpu_us_per_delivery": cpu_us / max(report["delivered"], 1),
                })
                print(f"run: {runs[-1]}", file=sys.stderr, flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    print(json.dumps({
        "binary": args.bin,
        "messages": args.messages,
        "subscribers": args.subscribers,
        "payload_bytes": args.payload_bytes,
        "clock_ticks_per_s": TICKS,
        "runs": runs,
        "median_cpu_us_per_delivery": statistics.median(r["cpu_us_per_delivery"] for r in runs),
    }, indent=2))


if __name__ == "__main__":
    main()
