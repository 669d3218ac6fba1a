"""t90 `strata export parquet`: a middle time range of a topic produced with keys, null keys
and values, duplicate and null headers, mixed compression and CreateTimes over several days is
exported to fs:// and to SeaweedFS (S3) and read back with pyarrow. The expected rows are
computed from what was produced (delivery reports give the offsets) and from the offsets the
broker reports for the range's times (offsets_for_times), never written down by hand."""

from __future__ import annotations

import datetime
import random
import re
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, TopicPartition

import harness
from harness import Rec

DAY = 86_400_000
HOUR = 3_600_000
PARTITIONS = 3
PER_PARTITION = 300
CODECS = ["gzip", "zstd", "lz4", "snappy", "none"]
FILE_RE = re.compile(r"^(?P<topic>[^/]+)/partition=(?P<p>\d+)/(?P<first>\d{20})-(?P<last>\d{20})\.parquet$")

SCHEMA = pa.schema([
    pa.field("partition", pa.int32(), nullable=False),
    pa.field("offset", pa.int64(), nullable=False),
    pa.field("timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("timestamp_type", pa.int8(), nullable=False),
    pa.field("key", pa.binary()),
    pa.field("value", pa.binary()),
    pa.field("headers", pa.list_(pa.field("item", pa.struct([
        pa.field("key", pa.string(), nullable=False),
        pa.field("value", pa.binary()),
    ]), nullable=False)), nullable=False),
])


def make_records(base: int) -> list[Rec]:
    """Partitions 0 and 1 spread over six days; partition 2 lies wholly in the first day, so
    a range in the middle holds none of its records. Partition 1's values are 150 kB of random
    bytes, so its range takes several Fetches."""
    rng = random.Random(90)
    recs = []
    for i in range(PER_PARTITION):
        for p in range(PARTITIONS):
            span = 6 * DAY if p < 2 else DAY - HOUR
            ts = base + i * (span // PER_PARTITION) + p * 7
            key = None if i % 5 == 0 else b"key-%d-%d" % (p, i)
            if i % 7 == 0:
                value = None
            elif i % 11 == 0:
                value = b""
            elif p == 1:
                value = rng.randbytes(150_000)
            else:
                value = (b"value-%d-%d|" % (p, i)) * (1 + i % 40)
            headers = [
                (),
                (("trace", b"t%d" % i),),
                (("dup", b"first"), ("dup", b"second"), ("other", b"")),
                (("nullvalue", None),),
            ][i % 4]
            recs.append(Rec(p, key, value, headers, ts))
    return recs


def produce_mixed(bootstrap: str, topic: str, records: list[Rec]) -> dict[tuple[int, int], Rec]:
    """Produce in chunks, each with another codec (so batches of every codec interleave in
    each partition). Returns {(partition, offset): record}."""
    by_offset = {}
    chunk = 60
    for n, i in enumerate(range(0, len(records), chunk)):
        part = records[i:i + chunk]
        codec = CODECS[n % len(CODECS)]
        delivered = harness.produce(bootstrap, topic, part, **{"compression.type": codec})
        for rec, (p, off) in zip(part, delivered):
            assert p == rec.partition
            by_offset[(p, off)] = rec
    return by_offset


def offsets_for_times(bootstrap: str, topic: str, ts: int) -> dict[int, int]:
    """The broker's answer, per partition; -1 (no record that late) becomes the high
    watermark, as the export's range definition says."""
    c = Consumer(harness.consumer_conf(bootstrap))
    try:
        res = c.offsets_for_times([TopicPartition(topic, p, ts) for p in range(PARTITIONS)], timeout=15)
    finally:
        c.close()
    wm = harness.watermarks(bootstrap, topic, PARTITIONS)
    out = {}
    for tp in res:
        assert tp.error is None, tp
        out[tp.partition] = tp.offset if tp.offset >= 0 else wm[tp.partition][1]
    return out


def export(strata_bin: str, bootstrap: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([strata_bin, "export", "parquet", "--bootstrap", bootstrap, *args],
                          capture_output=True, text=True, timeout=240, env=harness.clean_env(env))


def rows_of(table: pa.Table) -> list[tuple]:
    assert table.schema.remove_metadata() == SCHEMA, f"schema:\n{table.schema}"
    ts = table.column("timestamp").cast(pa.int64()).to_pylist()
    out = []
    for i, r in enumerate(table.to_pylist()):
        headers = tuple((h["key"], h["value"]) for h in r["headers"])
        out.append((r["partition"], r["offset"], ts[i], r["timestamp_type"], r["key"], r["value"], headers))
    return out


def expected_rows(by_offset: dict, ranges: dict[int, tuple[int, int]]) -> list[tuple]:
    out = []
    for (p, off), r in sorted(by_offset.items()):
        start, stop = ranges.get(p, (0, 0))
        if start <= off < stop:
            out.append((p, off, r.timestamp, 0, r.key, r.value, tuple(r.headers)))
    return out


def check_files(files: dict[str, bytes], topic: str) -> list[tuple]:
    """Every file is named for the offsets it holds; returns all rows in (partition, offset)
    order."""
    rows = []
    for key, body in sorted(files.items()):
        m = FILE_RE.match(key)
        assert m and m["topic"] == topic, f"unexpected object {key}"
        got = rows_of(pq.read_table(pa.BufferReader(body)))
        assert got, f"{key} is empty"
        assert {r[0] for r in got} == {int(m["p"])}, f"{key} holds other partitions"
        offs = [r[1] for r in got]
        assert offs == sorted(offs) and (offs[0], offs[-1]) == (int(m["first"]), int(m["last"])), \
            f"{key}: offsets {offs[0]}..{offs[-1]}"
        rows += got
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows


def read_dir(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}


def summary_records(stderr: str) -> int:
    m = re.search(r"export: done: (\d+) records", stderr)
    assert m, f"no summary line on stderr:\n{stderr}"
    return int(m.group(1))


@pytest.fixture
def produced(broker):
    topic = "exported"
    harness.create_topic(broker.bootstrap, topic, PARTITIONS, config={"retention.ms": "-1"})
    base = (harness_now_ms() - 10 * DAY) // 1000 * 1000 + 321
    by_offset = produce_mixed(broker.bootstrap, topic, make_records(base))
    return broker, topic, base, by_offset


def harness_now_ms() -> int:
    return int(datetime.datetime.now(datetime.timezone.utc).timestamp() * 1000)


def middle_range(bootstrap: str, topic: str, base: int) -> tuple[int, int, dict[int, tuple[int, int]]]:
    frm, to = base + 2 * DAY + 1234, base + 4 * DAY + 777
    start, stop = offsets_for_times(bootstrap, topic, frm), offsets_for_times(bootstrap, topic, to)
    return frm, to, {p: (start[p], stop[p]) for p in range(PARTITIONS)}


def rfc3339(ms: int) -> str:
    t = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@pytest.mark.timeout(300)
def test_export_time_range_to_fs(strata_bin, produced, tmp_path):
    b, topic, base, by_offset = produced
    frm, to, ranges = middle_range(b.bootstrap, topic, base)
    want = expected_rows(by_offset, ranges)
    # The times are monotonic per partition, so the offset range is exactly the time range.
    assert want == [r for r in expected_rows(by_offset, {p: (0, 1 << 62) for p in range(PARTITIONS)})
                    if frm <= r[2] < to]
    assert ranges[2][0] == ranges[2][1], f"partition 2 should have nothing in range: {ranges}"
    assert all(ranges[p][1] - ranges[p][0] > 50 for p in (0, 1)), ranges

    out = tmp_path / "export"
    # --from-time as RFC 3339, --to-time as epoch milliseconds.
    res = export(strata_bin, b.bootstrap, "--topic", topic, "--from-time", rfc3339(frm),
                 "--to-time", str(to), "--to", f"fs://{out}")
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stderr}"
    files = read_dir(out)
    assert sorted(res.stdout.split()) == sorted(files), f"stdout lists the written keys:\n{res.stdout}"
    assert not any("partition=2/" in k for k in files), f"a partition with nothing in range wrote a file: {files.keys()}"
    assert check_files(files, topic) == want
    assert summary_records(res.stderr) == len(want)

    # No times: all of partitions 0 and 1 (and only them), up to the high watermark.
    whole = tmp_path / "whole"
    res = export(strata_bin, b.bootstrap, "--topic", topic, "--partitions", "1,0", "--to", f"fs://{whole}")
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stderr}"
    wm = harness.watermarks(b.bootstrap, topic, PARTITIONS)
    assert check_files(read_dir(whole), topic) == expected_rows(by_offset, {0: wm[0], 1: wm[1]})


@pytest.mark.timeout(300)
def test_export_time_range_to_s3(strata_bin, produced, seaweed, s3_bucket):
    b, topic, base, by_offset = produced
    frm, to, ranges = middle_range(b.bootstrap, topic, base)
    want = expected_rows(by_offset, ranges)
    url = seaweed.url(s3_bucket).replace(f"s3://{s3_bucket}?", f"s3://{s3_bucket}/exports/run1?")
    res = export(strata_bin, b.bootstrap, "--topic", topic, "--from-time", str(frm), "--to-time", rfc3339(to),
                 "--to", url, env=seaweed.env)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stderr}"
    objects = seaweed.list_objects(s3_bucket)
    assert objects and all(k.startswith("exports/run1/") for k, _ in objects), objects
    files = {}
    for key, size in objects:
        status, body = seaweed.request("GET", s3_bucket, key)
        assert status == 200 and len(body) == size, f"GET {key}: HTTP {status}"
        files[key.removeprefix("exports/run1/")] = body
    assert sorted(res.stdout.split()) == sorted(files)
    assert check_files(files, topic) == want
    assert summary_records(res.stderr) == len(want)


def test_export_bad_input(strata_bin, broker, tmp_path):
    harness.create_topic(broker.bootstrap, "present", 2)
    to = f"fs://{tmp_path / 'out'}"

    def fails(code: int, *args: str, says: str, bootstrap: str = broker.bootstrap):
        res = export(strata_bin, bootstrap, *args)
        assert res.returncode == code, f"{args}: exit {res.returncode}, expected {code}\n{res.stderr}"
        assert says in res.stderr, f"{args}: stderr lacks {says!r}:\n{res.stderr}"

    fails(2, "--topic", "missing", "--to", to, says="topic `missing` does not exist")
    fails(2, "--topic", "present", "--to", to, "--from-time", "yesterday", says="--from-time")
    fails(2, "--topic", "present", "--to", to, "--to-time", "2026-13-01T00:00:00Z", says="--to-time")
    fails(2, "--topic", "present", "--to", to, "--from-time", "2000", "--to-time", "1000",
          says="is after --to-time")
    fails(2, "--topic", "present", "--to", to, "--partitions", "0,7", says="has no partition 7")
    fails(2, "--topic", "present", "--to", "nope://bucket", says="nope://bucket")
    fails(1, "--topic", "present", "--to", to, says="127.0.0.1:1", bootstrap="127.0.0.1:1")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.parquet"))
