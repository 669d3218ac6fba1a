#!/usr/bin/env python3
"""What writing an object file does to a concurrent fdatasync on the same disk.

A writer appends 3 KB and fdatasyncs about 1,000 times a second (a WAL's group commit under
moderate load); every second another thread writes an OBJECT MiB file the way an `fs://`
object store does (temporary file, fsync, rename, directory fsync), either in one write
(OpenDAL's fs writer) or paced like `strata-tiering`'s `fs_put_paced`: STEP KiB at a time,
each step's writeback started with sync_file_range(WRITE) and the previous step's awaited.
Reports the loop's worst fdatasync and how many took over 4 ms, per run.

    python3 bench/object_write_stall.py --dir /path/on/the/wal/disk --runs 2

Prints one JSON object. Writes and deletes only files it creates under --dir. Linux only.
"""
import argparse, ctypes, json, os, threading, time

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
WAIT_BEFORE, WRITE, WAIT_AFTER = 1, 2, 4


def put(d, n, body, step):
    tmp, final = os.path.join(d, "tmp", f"o{n}"), os.path.join(d, f"o{n}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        if step is None:
            os.write(fd, body)
        else:
            for off in range(0, len(body), step):
                os.write(fd, body[off:off + step])
                libc.sync_file_range(fd, off, step, WRITE)
                if off >= step:
                    libc.sync_file_range(fd, off - step, step, WAIT_BEFORE | WRITE | WAIT_AFTER)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, final)
    dfd = os.open(d, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)


def one_run(d, body, step, seconds):
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    seg = os.path.join(d, "live.seg")
    fd = os.open(seg, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC)
    lat, writers, n, start, next_put = [], [], 0, time.monotonic(), 0.5
    try:
        while time.monotonic() - start < seconds:
            if time.monotonic() - start > next_put:
                t = threading.Thread(target=put, args=(d, n, body, step))
                t.start()
                writers.append(t)
                n, next_put = n + 1, next_put + 1.0
            t0 = time.monotonic()
            os.write(fd, b"x" * 3000)
            os.fdatasync(fd)
            lat.append(time.monotonic() - t0)
            time.sleep(0.0008)
        for t in writers:
            t.join()
    finally:
        os.close(fd)
        os.unlink(seg)
        for name in os.listdir(d):
            if name.startswith("o"):
                os.unlink(os.path.join(d, name))
    lat.sort()
    return {"max_ms": round(lat[-1] * 1e3, 2), "p99_ms": round(lat[int((len(lat) - 1) * 0.99)] * 1e3, 3),
            "over_4ms": sum(1 for x in lat if x > 0.004), "fdatasyncs": len(lat), "objects": n}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="a directory on the disk to measure")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--object-mib", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=6.0)
    a = ap.parse_args()
    d = os.path.join(a.dir, f"object-write-stall-{os.getpid()}")
    os.makedirs(d)
    body = os.urandom(a.object_mib << 20)
    modes = {"whole": None, "paced_1mib": 1 << 20, "paced_256kib": 256 << 10}
    runs = {m: [] for m in modes}
    try:
        for _ in range(a.runs):  # alternated, so drift in the disk hits every mode alike
            for m, step in modes.items():
                runs[m].append(one_run(d, body, step, a.seconds))
    finally:
        os.rmdir(os.path.join(d, "tmp"))
        os.rmdir(d)
    print(json.dumps({"object_mib": a.object_mib, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
