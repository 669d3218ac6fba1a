#!/usr/bin/env python3
"""Replay benchmark: a stock consumer replaying history from object storage versus the
raw GET bandwidth of the same store, in one run; plus PUTs and GETs per GiB ingested.

    python3 bench/replay.py [--gib 2] [--partitions 4] [--bin target/release/strata]

1. starts one broker (fs object store under a scratch dir, compaction on);
2. writes --gib GiB of history (bench/history_gen.py, 1 KiB values, no compression);
3. waits until it is uploaded and compacted into segments;
4. raw: `strata bench store-read` reads every segment with ranged GETs of the segment
   chunk size, with the broker's read-ahead concurrency (run twice; the second, warm
   run is reported, so both sides read from the same page cache);
5. replay: `sync`s what setting up left dirty (else the kernel writes it back during the
   probes), restarts the broker with an empty read cache and times a confluent-kafka
   consumer reading every partition from offset 0 (bytes = the broker's fetched bytes);
6. tail probe: a producer writing one record every 5 ms and a live consumer of it, for 8 s
   before the replay and for the whole replay: produce→consume p50/p99 both ways, and
   produce→acknowledged, after a warm-up. The probe is a process of its own, so the
   replaying consumer's Python work (same interpreter, one GIL) cannot delay it;
7. prints one JSON line with both rates, their ratio, the tail latencies, requests per
   GiB ingested, the CPU seconds the broker, the store, the replaying consumer and the probe
   spent per replayed GB, how long the broker's WAL threads waited for a CPU per time slice
   (schedstat), and /proc/loadavg before and after the replay (the machine may be shared:
   compare the two rates of one run, not rates across runs).
With --wal-realtime-priority N the broker runs with wal.realtime_priority = N.
With --perf, `perf record -g` samples the broker during the replay (perf.txt, scratch dir).
Every process it starts listens on 127.0.0.1 and is stopped by PID.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCE_HIST, PRODUCE_LABEL = "strata_kafka_request_duration_seconds", 'api="produce"'
FSYNC_HIST = "strata_wal_fsync_duration_seconds"
sys.path.insert(0, str(ROOT / "bench"))
import history_gen  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(admin: int) -> dict:
    out = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
    return out


def hist_p99(before: dict, after: dict, name: str, labels: str = "") -> float | None:
    """The upper bound (ms) of the histogram bucket holding the 99th percentile of what `name`
    observed between two scrapes (the broker's buckets double from 50 µs, so this is coarse:
    enough to tell which half of a slow path is slow)."""
    sep = "," if labels else ""
    rows = []
    for k, v in after.items():
        if k.startswith(f"{name}_bucket{{{labels}{sep}le=\""):
            le = k.rsplit('le="', 1)[1].rstrip('"}')
            rows.append((float("inf") if le == "+Inf" else float(le), v - before.get(k, 0.0)))
    rows.sort()
    if not rows or rows[-1][1] <= 0:
        return None
    want = 0.99 * rows[-1][1]
    return next(round(le * 1000, 3) for le, n in rows if n >= want)


def admin_json(admin: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=10) as r:
        return json.load(r)


def topics(admin: int) -> list:
    return admin_json(admin, "/v1/topics")


class Broker:
    def __init__(self, binary: str, work: Path, chunk: int, readahead: int, flush_bytes: int, flush_ms: int,
                 store_url: str | None = None, env: dict | None = None, history_rate: int = 0):
        self.binary, self.work = binary, work
        self.store_url = store_url or f"fs://{work / 'data' / 'objects'}"
        self.env = env or {}
        self.kafka, self.admin = free_port(), free_port()
        (work / "c.toml").write_text(f"""
data_dir = "{work / 'data'}"
object_store = "{self.store_url}"
[kafka]
listen = "127.0.0.1:{self.kafka}"
[admin]
listen = "127.0.0.1:{self.admin}"
[mqtt]
listen = "127.0.0.1:{free_port()}"
[tiering]
retention_ms = -1
flush_bytes_max = {flush_bytes}
flush_interval_ms = {flush_ms}
garbage_grace_ms = 1000
retention_check_interval_ms = 1000
[compaction]
interval_ms = 1000
idle_ms = 2000
chunk_bytes = {chunk}
[cache]
readahead_chunks = {readahead}
readahead_concurrency = {readahead}
history_read_bytes_per_sec = {history_rate}
""")
        self.proc = None

    def start(self):
        log = open(self.work / "strata.log", "ab")
        self.proc = subprocess.Popen([self.binary, "start", "--config", str(self.work / "c.toml")],
                                     stdout=log, stderr=log, env={**os.environ, **self.env, "RUST_LOG": "warn"})
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                topics(self.admin)
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("broker did not start; see " + str(self.work / "strata.log"))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def replay(bootstrap: str, topic: str, partitions: int, ends: dict) -> float:
    from confluent_kafka import Consumer, TopicPartition

    # No per-message work in Python (it would be the bottleneck, not the broker): count
    # messages per batch; without partition EOF events every message is a record.
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-replay", "enable.auto.commit": False,
                  "fetch.max.bytes": 64 * 1024 * 1024, "max.partition.fetch.bytes": 16 * 1024 * 1024,
                  "queued.max.messages.kbytes": 512 * 1024, "enable.partition.eof": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    total = sum(ends.values())
    got = 0
    t0 = time.monotonic()
    while got < total:
        got += len(c.consume(num_messages=100_000, timeout=1))
    took = time.monotonic() - t0
    c.close()
    return took


def tail_probe(bootstrap: str, topic: str, seconds: float, stop=None) -> tuple:
    """Produce one small record every 5 ms to `topic` and consume it live; returns the
    produce→consume latencies (ms) seen for `seconds` (or until `stop` is set), and the
    produce→acknowledged latencies (ms) of the same records, so a slow tail can be told apart
    as a slow produce or a slow delivery. A thread of its own waits in `poll()` for the
    delivery reports: one served only between sends would carry up to 5 ms of the sender's
    sleep (librdkafka's `msg.latency()` has the same flaw)."""
    import threading

    from confluent_kafka import Consumer, Producer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-tail", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 100, "fetch.min.bytes": 1, "enable.partition.eof": False})
    c.assign([TopicPartition(topic, 0, -1)])  # the end
    c.consume(timeout=1)
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    # Records produced, acknowledged and consumed before the clock starts (until the consumer,
    # which starts at the end, sees one): connections, metadata and the partition's first write
    # are not the latency measured.
    warm_until, warm = time.monotonic() + 30, False
    while not warm and time.monotonic() < warm_until:
        p.produce(topic, value=b"-1", partition=0)
        p.flush(10)
        warm = any(m.error() is None and m.value() == b"-1" for m in c.consume(num_messages=10, timeout=0.5))
    sent = {}
    lat, acked = [], []
    done = threading.Event()

    def on_delivery(err, msg):
        at = sent.get(int(msg.value()))
        if err is None and at is not None:
            acked.append((time.monotonic() - at) * 1000)

    def produce():
        i = 0
        while not done.is_set():
            sent[i] = time.monotonic()
            p.produce(topic, value=str(i).encode(), partition=0, on_delivery=on_delivery)
            i += 1
            time.sleep(0.005)

    def reports():
        while not done.is_set():
            p.poll(0.05)
        p.flush(10)

    t, r = threading.Thread(target=produce), threading.Thread(target=reports)
    t.start()
    r.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (stop and stop.is_set()):
        for m in c.consume(num_messages=1, timeout=0.2):
            if m.error() is None:
                at = sent.get(int(m.value()))
                if at is not None:
                    lat.append((time.monotonic() - at) * 1000)
    done.set()
    t.join()
    r.join()
    c.close()
    return lat, acked


def _probe_main(bootstrap: str, topic: str, seconds: float, stop, out) -> None:
    out.put(tail_probe(bootstrap, topic, seconds, stop))


class Probe:
    """[`tail_probe`] in a process of its own (see the header); `finish()` answers its latencies,
    stopping it first unless `stop` is false (then it waits for its `seconds` to pass)."""

    def __init__(self, bootstrap: str, topic: str, seconds: float):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.stop, self.out = ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=_probe_main, args=(bootstrap, topic, seconds, self.stop, self.out))
        self.proc.start()

    def finish(self, stop: bool = True, timeout: float = 120) -> tuple:
        if stop:
            self.stop.set()
        got = self.out.get(timeout=timeout)  # before join: a full pipe would block the child
        self.proc.join(30)
        return got


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (a fresh page touched for the first time)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def renice_all_threads(pid: int, nice: int) -> None:
    """Linux keeps a nice level per thread: set it on every thread the process has now (the
    threads they start later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)
        except ProcessLookupError:
            pass


def wal_thread_waits(pid: int) -> tuple[int, int]:
    """Run-queue wait (ns) and time slices so far of the broker's WAL threads (the sequencer,
    the committer): /proc/<pid>/task/<tid>/schedstat."""
    wait = slices = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            if name not in ("strata-sequence", "strata-wal-comm"):
                continue
            _run, w, n = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        wait, slices = wait + int(w), slices + int(n)
    return wait, slices


def wait_per_slice_us(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    slices = after[1] - before[1]
    return round((after[0] - before[0]) / slices / 1000, 1) if slices else None


def settle_writeback() -> int:
    """`sync`: returns the dirty kB there were before."""
    dirty = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("Dirty:"))
    os.sync()
    return dirty


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def pct(xs: list, q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--bin", default=str(ROOT / "target" / "debug" / "strata"),
                    help="the strata binary (the dev profile is optimized in this workspace)")
    ap.add_argument("--chunk-bytes", type=int, default=1 << 20)
    ap.add_argument("--readahead", type=int, default=8)
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--flush-bytes-max", type=int, default=8 << 20, help="tiering.flush_bytes_max")
    ap.add_argument("--flush-interval-ms", type=int, default=1000, help="tiering.flush_interval_ms")
    ap.add_argument("--value-bytes", type=int, default=1024)
    ap.add_argument("--perf", action="store_true",
                    help="record the broker with `perf record -g` during the replay (perf.txt in the scratch dir)")
    ap.add_argument("--seaweedfs", action="store_true",
                    help="use a local SeaweedFS S3 server (tests/requirements.txt) instead of fs://")
    ap.add_argument("--peers-nice", type=int, default=0,
                    help="run the store and the replaying consumer at this nice level (the broker and "
                         "the tail probe stay at 0): on a one-machine run, a stand-in for the store and "
                         "the consumer being on machines of their own")
    ap.add_argument("--wal-realtime-priority", type=int, default=0,
                    help="wal.realtime_priority: the broker's WAL threads under SCHED_FIFO (0: normal)")
    ap.add_argument("--history-rate", type=int, default=0,
                    help="cache.history_read_bytes_per_sec: the broker's limit on history reads (0: none)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="strata-replay-"))
    weed = None
    store_url, store_env = None, {}
    if args.seaweedfs:
        sys.path.insert(0, str(ROOT / "tests" / "e2e"))
        import harness  # noqa: E402

        weed = harness.SeaweedFS(work / "weed", buckets=["replay"]).start()
        store_url, store_env = weed.url("replay"), weed.env
    broker_env = {**store_env, "STRATA_WAL_REALTIME_PRIORITY": str(args.wal_realtime_priority)}
    b = Broker(args.bin, work, args.chunk_bytes, args.readahead, args.flush_bytes_max, args.flush_interval_ms,
               store_url, broker_env, args.history_rate)
    try:
        b.start()
        topic = "replay"
        subprocess.run([args.bin, "topic", "create", topic, "--partitions", str(args.partitions),
                        "--bootstrap", f"127.0.0.1:{b.kafka}"], check=True, capture_output=True)
        value_bytes = args.value_bytes
        records = int(args.gib * (1 << 30) / (value_bytes + 40))
        start_ms = int(time.time() * 1000) - 180 * history_gen.DAY_MS
        gen = history_gen.generate(f"127.0.0.1:{b.kafka}", topic, records, 180, args.partitions,
                                   value_bytes, start_ms, compression="none", progress=sys.stderr)
        print(f"replay: produced {records} records in {gen['seconds']} s", file=sys.stderr)

        def settled():
            ps = topics(b.admin)[0]["partitions"]
            return all(p["uploaded_offset"] == p["high_watermark"] for p in ps), ps

        # Uploaded, then compacted: every block of every partition a segment (upload blocks are
        # always compacted, the last ones once idle for compaction.idle_ms), and the segments
        # merges replaced deleted, so the raw side, which reads `segments/`, reads what the
        # replay reads (`raw_bytes` against `replay_bytes`).
        deadline = time.time() + 1800
        while True:
            done, ps = settled()
            garbage = admin_json(b.admin, "/v1/storage")["garbage"]["objects"]
            if done and all(p["blocks"] == p["segments"] for p in ps) and garbage == 0:
                break
            if time.time() > deadline:
                raise SystemExit(f"not compacted in time: {ps}")
            time.sleep(0.5)
        m = metrics(b.admin)
        ingested = m["strata_produce_bytes_total"]
        puts = m['strata_object_store_requests_total{op="put"}']
        segments = m["strata_compaction_segments_total"]
        uploads = m["strata_tiering_objects_uploaded_total"]
        upload_bytes = m["strata_tiering_bytes_uploaded_total"]
        meta_puts = m["strata_meta_backup_log_batches_total"] + m["strata_meta_backup_snapshots_total"]
        ends = {p["partition"]: p["high_watermark"] for p in settled()[1]}
        b.stop()

        raw = None
        load_raw = loadavg()
        for _ in range(2):
            # CPU of the last (measured) pass: the reader and the store.
            reader_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            store_before = cpu_seconds(weed.proc.pid) if weed is not None else None
            out = subprocess.run([args.bin, "bench", "store-read", "--object-store", b.store_url,
                                  "--prefix", "segments/", "--concurrency", str(args.readahead),
                                  "--range-bytes", str(args.chunk_bytes)], check=True, capture_output=True, text=True,
                                 env={**os.environ, **store_env})
            raw = json.loads(out.stdout)
            reader_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            raw_cpu = {"reader": (reader_after.ru_utime + reader_after.ru_stime)
                       - (reader_before.ru_utime + reader_before.ru_stime)}
            if weed is not None:
                raw_cpu["store"] = cpu_seconds(weed.proc.pid) - store_before

        shutil.rmtree(work / "data" / "cache", ignore_errors=True)
        # Write back what setting up wrote (GBs into the store's and the WAL's files) before
        # anything is timed: left to the kernel's 30 s writeback it lands in the middle of the
        # probes and every fdatasync on the disk queues behind it.
        dirty = settle_writeback()
        b.start()
        bootstrap = f"127.0.0.1:{b.kafka}"
        subprocess.run([args.bin, "topic", "create", "tail", "--partitions", "1", "--bootstrap", bootstrap],
                       check=True, capture_output=True)
        idle_before, idle_waits_before = metrics(b.admin), wal_thread_waits(b.proc.pid)
        idle_lat, idle_ack = Probe(bootstrap, "tail", 8).finish(stop=False)
        idle_after, idle_waits_after = metrics(b.admin), wal_thread_waits(b.proc.pid)
        probe = Probe(bootstrap, "tail", 3600)
        time.sleep(3)  # the probe (a fresh interpreter) is consuming live before the replay starts
        perf = None
        if args.perf:
            perf = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-p", str(b.proc.pid), "-o",
                                     str(work / "perf.data")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # CPU each side spends on the replay: the broker, the store, this process (the replaying
        # consumer) and the tail probe.
        pids = {"broker": b.proc.pid, "client": os.getpid(), "probe": probe.proc.pid}
        if weed is not None:
            pids["store"] = weed.proc.pid
        if args.peers_nice:
            if weed is not None:
                renice_all_threads(weed.proc.pid, args.peers_nice)
            # This process replays: librdkafka's threads, started after this, inherit it.
            os.nice(args.peers_nice)
        load_before = loadavg()
        cpu_before = {k: cpu_seconds(v) for k, v in pids.items()}
        faults_before = minor_faults(b.proc.pid)
        before, waits_before = metrics(b.admin), wal_thread_waits(b.proc.pid)
        took = replay(bootstrap, topic, args.partitions, ends)
        after, waits_after = metrics(b.admin), wal_thread_waits(b.proc.pid)
        cpu_after = {k: cpu_seconds(v) for k, v in pids.items()}
        faults_after = minor_faults(b.proc.pid)
        load_after = loadavg()
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait(120)
            with open(work / "perf.txt", "w") as out:
                subprocess.run(["perf", "report", "-i", str(work / "perf.data"), "--no-children", "--stdio",
                                "-g", "none", "--percent-limit", "0.5"], stdout=out, stderr=subprocess.DEVNULL)
            print(f"replay: profile in {work / 'perf.txt'}", file=sys.stderr)
        busy_lat, busy_ack = probe.finish()
        fetched = after["strata_fetch_bytes_total"] - before["strata_fetch_bytes_total"]
        gets = after['strata_object_store_requests_total{op="get"}'] - before['strata_object_store_requests_total{op="get"}']
        replay_mb_s = fetched / 1e6 / took
        gib = ingested / (1 << 30)
        result = {
            "ingested_gib": round(gib, 3),
            "raw_get_mb_per_s": round(raw["mb_per_s"], 1),
            # What the raw side read (the `segments/` prefix): about the replay's bytes, since
            # everything was compacted first (the segments' indexes and the records' framing
            # differ a little).
            "raw_bytes": raw["bytes"],
            "replay_mb_per_s": round(replay_mb_s, 1),
            "replay_vs_raw": round(replay_mb_s / raw["mb_per_s"], 3),
            "replay_bytes": int(fetched),
            "replay_seconds": round(took, 2),
            # Every PUT, and the data path's alone (uploads and segments): the rest are the
            # metadata backup's, which go by time (a batch of raft entries a second or so),
            # not by bytes ingested, so they weigh much more in a run this short.
            "puts_per_gib_ingested": round(puts / gib, 1),
            "data_puts_per_gib": round((uploads + segments) / gib, 1),
            "segment_puts_per_gib": round(segments / gib, 1),
            "meta_backup_puts": int(meta_puts),
            "upload_mb_avg": round(upload_bytes / uploads / 1e6, 1) if uploads else None,
            "replay_gets_per_gib": round(gets / (fetched / (1 << 30)), 1) if fetched else None,
            "tail_p50_ms_idle": pct(idle_lat, 0.5),
            "tail_p99_ms_idle": pct(idle_lat, 0.99),
            "tail_p50_ms_during_replay": pct(busy_lat, 0.5),
            "tail_p99_ms_during_replay": pct(busy_lat, 0.99),
            "tail_samples": [len(idle_lat), len(busy_lat)],
            # The produce half of the tail: produce -> acknowledged (acks=all).
            "tail_ack_p99_ms_idle": pct(idle_ack, 0.99),
            "tail_ack_p99_ms_during_replay": pct(busy_ack, 0.99),
            # Inside the broker (bucket bounds): Produce requests and the WAL's fdatasync.
            "broker_produce_p99_ms_idle_replay": [hist_p99(idle_before, idle_after, PRODUCE_HIST, PRODUCE_LABEL),
                                                  hist_p99(before, after, PRODUCE_HIST, PRODUCE_LABEL)],
            "broker_fsync_p99_ms_idle_replay": [hist_p99(idle_before, idle_after, FSYNC_HIST),
                                                hist_p99(before, after, FSYNC_HIST)],
            # How long the WAL threads waited for a CPU each time they woke (µs per slice).
            "wal_thread_wait_us_per_slice_idle_replay": [wait_per_slice_us(idle_waits_before, idle_waits_after),
                                                         wait_per_slice_us(waits_before, waits_after)],
            "wal_realtime_priority": args.wal_realtime_priority,
            # CPU seconds per replayed GB, by process, and the machine's load around the replay.
            "cpu_s_per_gb": {k: round((cpu_after[k] - cpu_before[k]) / (fetched / 1e9), 2) if fetched else None
                             for k in pids},
            # The raw side's, per GB it read: on one machine both sides share two cores, so
            # replay / raw is bounded by raw's CPU per GB over the replay's (all processes).
            "raw_cpu_s_per_gb": {k: round(v / (raw["bytes"] / 1e9), 2) for k, v in raw_cpu.items()},
            # Fresh pages the broker touched per replayed GB (a 4 KiB page each).
            "broker_minor_faults_per_gb": round((faults_after - faults_before) / (fetched / 1e9)) if fetched else None,
            "peers_nice": args.peers_nice,
            "history_read_bytes_per_sec": args.history_rate,
            "dirty_kb_synced_before_probes": dirty,
            "loadavg_raw": load_raw,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "concurrency": args.readahead,
            "chunk_bytes": args.chunk_bytes,
            "value_bytes": args.value_bytes,
            "flush_bytes_max": args.flush_bytes_max,
            "flush_interval_ms": args.flush_interval_ms,
            "store": "seaweedfs-s3" if args.seaweedfs else "fs",
            "binary": args.bin,
        }
        print(json.dumps(result))
        return 0
    except BaseException:
        args.keep = True
        print(f"replay: failed; scratch dir kept: {work}", file=sys.stderr)
        raise
    finally:
        b.stop()
        if weed is not None:
            weed.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
