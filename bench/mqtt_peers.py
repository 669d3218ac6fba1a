#!/usr/bin/env python3
"""MQTT side by side: StrataMQ, mosquitto and rumqttd in one run, each broker on core 0
(`taskset -c 0`), the load generator (`strata bench mqtt`, hand-encoded MQTT 3.1.1 over
tokio) on core 1.

    python3 bench/mqtt_peers.py [--bin target/release/strata] [--rumqttd PATH] [--runs 3]

Scenarios (every broker starts fresh for each phase; the median of `--runs` is kept):
1. qos1: 1 publisher → 1 subscriber, QoS 1 both ways, pipelined (window of PUBACKs); end to
   end msgs/s. StrataMQ fsyncs every acknowledged publish (group commit, its default);
   mosquitto runs with `persistence false`, rumqttd keeps its commit log in memory.
2. fanout: 1 QoS 0 publisher → 100 QoS 0 subscribers of one topic; delivered msgs/s.
3. routing: 1 QoS 0 publisher → 1,000 QoS 0 subscribers, each of its own device topic (half
   through a `+` wildcard); publishes go round-robin over the devices, so each is delivered to
   exactly one subscriber: the cost of finding one match among many subscriptions.
4. latency: publish → deliver p50/p99 at half of mosquitto's qos1 rate of this run, QoS 1.
5. idle: 10,000 connections that CONNECT and SUBSCRIBE and sit; (RSS after − RSS before) /
   connections, RSS from /proc/PID/status.

Peers: mosquitto from Debian (`apt-get install mosquitto`), rumqttd from crates.io
(`cargo install rumqttd`, once per machine; see BENCHMARKS.md). Limits are raised so that no
broker drops or refuses in the test: mosquitto `max_inflight_messages` 1000 and
`max_queued_messages` 1,000,000, `set_tcp_nodelay` only in the latency phase (its default,
Nagle on, gives it more fan-out throughput and 100+ ms latency); rumqttd `max_inflight_count` 1000, 20,010 connections;
StrataMQ `mqtt.connections_max` 20,000. Writes bench/results/mqtt_peers.json and prints the
markdown table of BENCHMARKS.md. Everything listens on 127.0.0.1; every process is stopped by
its PID; the whole run is bounded (each load-generator run has a timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import harness  # noqa: E402

BROKER_CPU = "0"
LOADGEN_CPU = "1"
IDLE_CONNECTIONS = 10_000
WARMUP_ERRORS: list[str] = []


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def settled_rss_kib(pid: int, timeout: float = 10.0) -> int:
    """RSS once two samples 0.5 s apart differ by less than 1 % (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    last = rss_kib(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_kib(pid)
        if abs(now - last) <= last * 0.01:
            return now
        last = now
    return last


def raise_nofile() -> None:
    """Children inherit our limit on open files: 10k connections need more than 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < IDLE_CONNECTIONS + 100:
        raise SystemExit(f"the hard limit on open files is {hard}; the idle phase needs {IDLE_CONNECTIONS + 100}")


class Server:
    """One broker process pinned to core 0."""

    name = "?"

    def __init__(self, work: Path):
        self.work = work
        self.port = harness.free_port()
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict:
        return harness.clean_env()

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = open(self.work / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(harness._deathsig_prefix() + ["taskset", "-c", BROKER_CPU] + self.command(),
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     env=self.env(), cwd=self.work)
        if not harness.wait_port(self.port, 60, self.proc):
            raise SystemExit(f"{self.name} did not open port {self.port}; see {self.work / (self.name + '.log')}:\n"
                             + harness.tail(self.work / f"{self.name}.log", 20))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Mosquitto(Server):
    name = "mosquitto"

    def __init__(self, work: Path, binary: str, nodelay: bool):
        super().__init__(work)
        self.binary = binary
        self.nodelay = nodelay

    def command(self) -> list[str]:
        conf = self.work / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_inflight_messages 1000\n"
            "max_queued_messages 1000000\n"
            f"set_tcp_nodelay {'true' if self.nodelay else 'false'}\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )
        return [self.binary, "-c", str(conf)]


class Rumqttd(Server):
    name = "rumqttd"

    def __init__(self, work: Path, binary: str):
        super().__init__(work)
        self.binary = binary
        self.v5_port = harness.free_port()

    def command(self) -> list[str]:
        conn = ("connection_timeout_ms = 60000\nmax_payload_size = 1048576\n"
                "max_inflight_count = 1000\ndynamic_filters = true\n")
        conf = self.work / "rumqttd.toml"
        conf.write_text(
            "id = 0\n\n[router]\nid = 0\nmax_connections = 20010\nmax_outgoing_packet_count = 200\n"
            "max_segment_size = 104857600\nmax_segment_count = 10\n\n"
            f'[v4.1]\nname = "v4-1"\nlisten = "127.0.0.1:{self.port}"\nnext_connection_delay_ms = 0\n'
            f"[v4.1.connections]\n{conn}\n"
            f'[v5.1]\nname = "v5-1"\nlisten = "127.0.0.1:{self.v5_port}"\nnext_connection_delay_ms = 0\n'
            f"[v5.1.connections]\n{conn}"
        )
        return [self.binary, "-q", "-c", str(conf)]


class Strata(Server):
    name = "strata"

    def __init__(self, work: Path, binary: str):
        super().__init__(work)
        self.binary = binary
        self.kafka_port, self.admin_port, self.meta_port = harness.free_port(), harness.free_port(), harness.free_port()

    def command(self) -> list[str]:
        return [self.binary, "start", "--data-dir", str(self.work / "data"),
                "--kafka-listen", f"127.0.0.1:{self.kafka_port}", "--admin-listen", f"127.0.0.1:{self.admin_port}",
                "--meta-listen", f"127.0.0.1:{self.meta_port}", "--mqtt-listen", f"127.0.0.1:{self.port}"]

    def env(self) -> dict:
        return harness.clean_env({"STRATA_MQTT_CONNECTIONS_MAX": "20000"})


def loadgen(args, port: int, mode: str, *extra: str, timeout: float = 120) -> dict:
    cmd = ["taskset", "-c", LOADGEN_CPU, args.loadgen, "bench", "mqtt", "--addr", f"127.0.0.1:{port}",
           "--mode", mode, *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=harness.clean_env())
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()}")
    return json.loads(res.stdout)


def measured(fn):
    """Runs `fn()` and records the load average before and after it."""
    before = loadavg()
    out = fn()
    out["loadavg_before"], out["loadavg_after"] = before, loadavg()
    return out


def idle_rss(args, server: Server) -> dict:
    """Baseline RSS, then 10k connections that sit, then RSS again (both settled)."""
    time.sleep(1)
    before = settled_rss_kib(server.proc.pid)
    cmd = ["taskset", "-c", LOADGEN_CPU, args.loadgen, "bench", "mqtt", "--addr", f"127.0.0.1:{server.port}",
           "--mode", "idle", "--connections", str(args.connections), "--hold-secs", "120"]
    load_before = loadavg()
    gen = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=harness.clean_env())
    try:
        line = gen.stdout.readline()
        if not line:
            raise RuntimeError(f"idle load generator ended early: {gen.stderr.read().strip()}")
        ready = json.loads(line)
        after = settled_rss_kib(server.proc.pid)
        gen.stdin.close()  # let the connections go
        rest = gen.stdout.read()
        gen.wait(60)
        if gen.returncode != 0:
            raise RuntimeError(f"idle load generator exited {gen.returncode}: {gen.stderr.read().strip()}")
        report = json.loads(rest)
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait()
    return {"connections": ready["connections"], "connect_seconds": ready["connect_seconds"],
            "open_at_end": report["open_at_end"], "rss_before_kib": before, "rss_after_kib": after,
            "rss_per_connection_kib": (after - before) / ready["connections"],
            "loadavg_before": load_before, "loadavg_after": loadavg()}


def attempt(fn) -> dict:
    """One measured run; a failed run is recorded with its error instead of ending the phase."""
    try:
        return measured(fn)
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
        print(f"   run failed: {e}", file=sys.stderr, flush=True)
        return {"error": str(e)}


def median_run(runs: list[dict], key: str) -> dict:
    good = sorted((r for r in runs if key in r), key=lambda r: r[key])
    best = dict(good[len(good) // 2]) if good else {}
    best["runs"] = [r.get(key) for r in runs]
    best["errors"] = [r["error"] for r in runs if "error" in r]
    return best


def warm_up(args, name: str, port: int) -> None:
    """Not measured: first connections, and StrataMQ's auto-created topic for MQTT publishes.
    On a fresh rumqttd the first QoS 1 run stalls after its first window (see BENCHMARKS.md),
    so a failure here is only reported."""
    try:
        loadgen(args, port, "qos1", "--messages", "1000", "--window", "16", "--stall-ms", "3000")
    except RuntimeError as e:
        WARMUP_ERRORS.append(f"{name}: {e}")
        print(f"   warm-up failed: {e}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_bin = ROOT / "target" / "release" / "strata"
    if not default_bin.exists():
        default_bin = ROOT / "target" / "debug" / "strata"
    ap.add_argument("--bin", default=str(default_bin), help="the strata broker")
    ap.add_argument("--loadgen", default=None, help="the strata binary running `bench mqtt` (default: --bin)")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--rumqttd", default=shutil.which("rumqttd") or str(Path.home() / ".cargo" / "bin" / "rumqttd"))
    ap.add_argument("--runs", type=int, default=3, help="runs of qos1 and fanout per broker (median kept)")
    ap.add_argument("--qos1-messages", type=int, default=50_000)
    ap.add_argument("--fanout-messages", type=int, default=20_000)
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument("--routing-messages", type=int, default=200_000)
    ap.add_argument("--devices", type=int, default=1000, help="subscribers (one topic each) of the routing phase")
    ap.add_argument("--payload-bytes", type=int, default=256)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--latency-seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=IDLE_CONNECTIONS)
    ap.add_argument("--only", default="qos1,fanout,routing,latency,idle", help="phases to run, comma-separated")
    ap.add_argument("--keep", action="store_true", help="keep the brokers' work dirs and logs")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "mqtt_peers.json"))
    args = ap.parse_args()
    args.loadgen = args.loadgen or args.bin
    args.bin, args.loadgen = str(Path(args.bin).resolve()), str(Path(args.loadgen).resolve())
    for what, path in (("strata", args.bin), ("mosquitto", args.mosquitto), ("rumqttd", args.rumqttd)):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            raise SystemExit(f"{what} not found at {path} (see the header of this script for how to install it)")
    if subprocess.run([args.loadgen, "bench", "mqtt", "--help"], capture_output=True).returncode != 0:
        raise SystemExit(f"{args.loadgen} has no `bench mqtt`: rebuild it")
    raise_nofile()
    phases = args.only.split(",")
    work = Path(tempfile.mkdtemp(prefix="strata-mqtt-peers-"))
    brokers = {
        # Nagle's algorithm (mosquitto's default) batches its per-message writes: more fan-out
        # throughput, but 100+ ms latency with delayed ACKs. Each phase gets the
        # better setting for mosquitto in that phase (qos1 not compared: see BENCHMARKS.md); StrataMQ and rumqttd always set TCP_NODELAY.
        "mosquitto": lambda w: Mosquitto(w, args.mosquitto, nodelay=w.name.startswith("latency")),
        "rumqttd": lambda w: Rumqttd(w, args.rumqttd),
        "strata": lambda w: Strata(w, args.bin),
    }
    results: dict = {
        "command": "python3 bench/mqtt_peers.py " + " ".join(sys.argv[1:]),
        "strata_bin": args.bin, "loadavg_start": loadavg(),
        "versions": {
            "mosquitto": subprocess.run([args.mosquitto, "-h"], capture_output=True, text=True).stdout.split("\n")[0],
            "rumqttd": subprocess.run([args.rumqttd, "--version"], capture_output=True, text=True).stdout.strip(),
        },
        "brokers": {n: {} for n in brokers},
        "mosquitto_tcp_nodelay": {"qos1": False, "fanout": False, "routing": False, "latency": True, "idle": False},
    }
    started = time.monotonic()

    def phase(tag: str, body):
        for name, make in brokers.items():
            server = make(work / f"{tag}-{name}")
            server.start()
            try:
                print(f"== {tag}: {name}", file=sys.stderr, flush=True)
                results["brokers"][name][tag] = body(name, server)
            finally:
                server.stop()

    def median_phase(mode: str, key: str, *flags: str):
        """A throughput phase: warm-up, then `--runs` load-generator runs; the median by `key`."""
        phase(mode, lambda n, s: warm_up(args, n, s.port) or median_run(
            [attempt(lambda: loadgen(args, s.port, mode, *flags, "--payload-bytes", str(args.payload_bytes)))
             for _ in range(args.runs)], key))

    try:
        if "qos1" in phases or "latency" in phases:
            median_phase("qos1", "msgs_per_s", "--messages", str(args.qos1_messages), "--window", str(args.window))
        if "fanout" in phases:
            median_phase("fanout", "delivered_msgs_per_s", "--messages", str(args.fanout_messages),
                         "--subscribers", str(args.subscribers))
        if "routing" in phases:
            median_phase("routing", "delivered_msgs_per_s", "--messages", str(args.routing_messages),
                         "--subscribers", str(args.devices))
        if "latency" in phases:
            rate = int(results["brokers"]["mosquitto"]["qos1"]["msgs_per_s"] / 2)
            results["latency_rate_per_s"] = rate
            phase("latency", lambda n, s: warm_up(args, n, s.port) or attempt(lambda: loadgen(
                args, s.port, "latency", "--rate", str(rate), "--seconds", str(args.latency_seconds),
                "--warmup-secs", "2", "--payload-bytes", str(args.payload_bytes), "--qos", "1",
                timeout=args.latency_seconds + 120)))
        if "idle" in phases:
            phase("idle", lambda n, s: idle_rss(args, s))
    finally:
        results["seconds"] = time.monotonic() - started
        results["warmup_errors"] = WARMUP_ERRORS
        results["loadavg_end"] = loadavg()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        if args.keep:
            print(f"work dirs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results))


def table(results: dict) -> str:
    b = results["brokers"]

    def get(name, tag, key):
        return b.get(name, {}).get(tag, {}).get(key)

    def num(v, unit=""):
        if v is None:
            return "—"
        return f"{v:,.0f}{unit}" if abs(v) >= 100 else f"{v:,.2f}{unit}"

    def ratio(s, p, lower_is_better=False):
        if s is None or p is None or s == 0 or p == 0:
            return "—"
        return f"{(p / s if lower_is_better else s / p):.2f}×"

    rows = [
        ("QoS 1, 1 → 1, msgs/s (strata fsyncs; mosquitto persistence off)", "qos1", "msgs_per_s", False, "≥ 1.0× mosquitto"),
        ("QoS 0, 1 → 100 fan-out, delivered msgs/s", "fanout", "delivered_msgs_per_s", False,
         "≥ 1.2× mosquitto, ≥ 1.0× rumqttd"),
        (f"QoS 0, 1 → 1 of {get('strata', 'routing', 'subscribers') or 0:,} device topics, delivered msgs/s",
         "routing", "delivered_msgs_per_s", False, "—"),
        (f"publish → deliver p50 ms, QoS 1 at {results.get('latency_rate_per_s', 0):,} msgs/s", "latency", "p50_ms", True, "—"),
        ("publish → deliver p99 ms, same run", "latency", "p99_ms", True, "—"),
        (f"RSS per idle connection, KiB ({get('strata', 'idle', 'connections') or 0:,} connections)", "idle", "rss_per_connection_kib", True, "—"),
    ]
    out = ["| measure | strata | mosquitto | rumqttd | strata vs mosquitto | strata vs rumqttd | target |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, tag, key, lower, target in rows:
        names = ("strata", "mosquitto", "rumqttd")
        s, m, r = (get(n, tag, key) for n in names)
        cells = [num(v) for v in (s, m, r)]
        if tag in ("fanout", "routing"):  # QoS 0 may be dropped: say how much arrived
            cells = [c if get(n, tag, "delivered_fraction") is None else
                     f"{c} ({get(n, tag, 'delivered_fraction'):.0%} delivered)" for c, n in zip(cells, names)]
        out.append(f"| {label} | {' | '.join(cells)} | {ratio(s, m, lower)} | {ratio(s, r, lower)} | {target} |")
    out.append("")
    out.append("Ratios are strata ÷ peer for rates and peer ÷ strata for latency and memory: above 1× strata is ahead.")
    return "\n".join(out)


if __name__ == "__main__":
    main()
