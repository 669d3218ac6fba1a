#!/usr/bin/env python3
"""What one disk does with several WAL streams fsyncing at once.

    python3 bench/disk_streams.py [--dir DIR] [--seconds 8] [--record-bytes 1100] LAYOUT...

Each LAYOUT is `FILES:RATE`: FILES files, each appended to by its own thread RATE times a
second (paced, not back-to-back), every append followed by fdatasync — the shape of a WAL
replica's group commit at a moderate produce rate. Prints the p50/p99/p999 of the
append + fdatasync latency over every file, one line per layout, run one after another in the
order given. Layouts are repeated with --rounds, alternating, so a disk that drifts does not
favour one.

The question it answers (issue 3): nine WAL streams on the replicas of a 3 x 3 cluster on one
disk (`9:333`) against one shared journal per replica process (`3:1000`), at the same total
rate of fdatasyncs. Files are created in DIR (default: a fresh directory under /tmp, which is on
the disk here) and removed afterwards.
"""

import argparse
import os
import tempfile
import threading
import time


def run(directory: str, files: int, rate: float, seconds: float, record_bytes: int) -> list:
    latencies: list = []
    lock = threading.Lock()
    record = b"x" * record_bytes

    def stream(i: int) -> None:
        path = os.path.join(directory, f"stream-{i}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
        mine = []
        start, k = time.monotonic(), 0
        try:
            while time.monotonic() - start < seconds:
                k += 1
                pause = start + k / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                t = time.perf_counter()
                os.write(fd, record)
                os.fdatasync(fd)
                mine.append(time.perf_counter() - t)
        finally:
            os.close(fd)
            os.unlink(path)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(files)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(latencies)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("layouts", nargs="+", help="FILES:RATE, e.g. 9:333 3:1000")
    ap.add_argument("--dir", help="where the files go (default: a new directory under /tmp)")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--record-bytes", type=int, default=1100)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    layouts = []
    for spec in args.layouts:
        files, rate = spec.split(":")
        layouts.append((int(files), float(rate)))
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="strata-disk-streams-") as directory:
        for round_no in range(1, args.rounds + 1):
            for files, rate in layouts:
                lat = run(directory, files, rate, args.seconds, args.record_bytes)
                q = lambda p: lat[int((len(lat) - 1) * p)] * 1e3  # noqa: E731
                print(f"round {round_no}  {files} files x {rate:g}/s  fdatasyncs {len(lat)}  "
                      f"p50 {q(0.5):.3f}  p99 {q(0.99):.3f}  p999 {q(0.999):.3f} ms", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
