#!/usr/bin/env python3
"""What deleting a large file does to a concurrent fdatasync on the same filesystem.

A writer appends 300 bytes and fdatasyncs in a loop (a WAL's group commit at low load); half
a second in, another thread deletes a SIZE MiB file that was written and fsynced beforehand,
either at once (unlink + directory fsync: what a WAL trim did inline) or the way
`strata-wal`'s unlink thread does it (rename + directory fsync, then shrink STEP MiB at a
time with an fdatasync per step, then unlink). Reports the writer's worst and p99.9 fdatasync
in each run. On a filesystem mounted with online discard (`mount | grep discard`) the
journal commit that frees the blocks waits for their discard, and an fdatasync landing in it
waits too.

    python3 bench/unlink_stall.py --dir /path/on/the/wal/disk --runs 4

Prints one JSON object. Writes and deletes only files it creates under --dir.
"""
import argparse, json, os, threading, time


def write_file(path, mib):
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def delete(path, mode, dir_fd, step_bytes):
    if mode == "inline":
        os.unlink(path)
        os.fsync(dir_fd)
        return
    retired = path + ".trimmed"
    os.rename(path, retired)
    os.fsync(dir_fd)
    fd = os.open(retired, os.O_WRONLY)
    try:
        size = os.fstat(fd).st_size
        while size > step_bytes:
            size -= step_bytes
            os.ftruncate(fd, size)
            os.fdatasync(fd)
    finally:
        os.close(fd)
    os.unlink(retired)


def one_run(d, mode, mib, step_bytes, seconds):
    big, seg = os.path.join(d, "old.seg"), os.path.join(d, "live.seg")
    write_file(big, mib)
    dir_fd = os.open(d, os.O_RDONLY)
    fd = os.open(seg, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC)
    lat, deleter = [], None
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            if deleter is None and time.monotonic() - start > 0.5:
                deleter = threading.Thread(target=delete, args=(big, mode, dir_fd, step_bytes))
                deleter.start()
            t = time.monotonic()
            os.write(fd, b"x" * 300)
            os.fdatasync(fd)
            lat.append(time.monotonic() - t)
        deleter.join()
    finally:
        os.close(fd)
        os.close(dir_fd)
        os.unlink(seg)
    lat.sort()
    return {"max_ms": round(lat[-1] * 1e3, 2),
            "p999_ms": round(lat[int((len(lat) - 1) * 0.999)] * 1e3, 2),
            "fdatasyncs": len(lat)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="a directory on the filesystem to measure")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--size-mib", type=int, default=64, help="the deleted file (a WAL segment)")
    ap.add_argument("--step-mib", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args()
    d = os.path.join(a.dir, f"unlink-stall-{os.getpid()}")
    os.makedirs(d)
    try:
        runs = {"inline": [], "stepped": []}
        for _ in range(a.runs):  # alternated, so drift in the disk hits both alike
            for mode in runs:
                runs[mode].append(one_run(d, mode, a.size_mib, a.step_mib << 20, a.seconds))
    finally:
        os.rmdir(d)
    out = {"size_mib": a.size_mib, "step_mib": a.step_mib, "runs": runs}
    for mode, rs in runs.items():
        out[f"{mode}_max_ms_median"] = sorted(r["max_ms"] for r in rs)[len(rs) // 2]
    out["ratio_max_inline_over_stepped"] = round(
        out["inline_max_ms_median"] / out["stepped_max_ms_median"], 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
