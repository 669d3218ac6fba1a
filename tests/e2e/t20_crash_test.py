"""t20 crash: kill -9 the broker under an acks=all producer, twice; after each
restart on the same data dir every acknowledged record is at its acknowledged
offset, and every partition is dense from 0 with no gap and no duplicate.
Run against the default fs object store and against S3 with uploads every 100 ms
(so uploads and WAL trims are in flight at the kill), plus a SIGTERM under load."""

import signal
import subprocess
import time
from pathlib import Path

import pytest

import harness

PARTITIONS = 3
TOOL = Path(__file__).resolve().parent / "tools" / "ack_producer.py"


def read_acks(path: Path) -> list[tuple[int, int, bytes]]:
    out = []
    data = path.read_bytes() if path.exists() else b""
    for line in data.split(b"\n")[:-1]:  # an unterminated last line is dropped
        p, o, v = line.split(b" ")
        out.append((int(p), int(o), v))
    return out


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


class Acked:
    """Every acknowledged record so far: value -> (partition, offset) and back."""

    def __init__(self):
        self.by_value: dict[bytes, tuple[int, int]] = {}
        self.at: dict[tuple[int, int], bytes] = {}

    def add(self, acks):
        for p, o, v in acks:
            assert v not in self.by_value, f"value {v!r} acknowledged twice: {self.by_value[v]} and {(p, o)}"
            assert self.at.get((p, o), v) == v, f"offset {p}/{o} acknowledged for {self.at[(p, o)]!r} and {v!r}"
            self.by_value[v] = (p, o)
            self.at[(p, o)] = v


def produce_and_stop(b, topic: str, tmp_path: Path, tag: str, first: int, stop) -> list:
    """Run the acking producer against `b`, let it write ~2 s past its first acks,
    then `stop(b)` under it; stop the producer and return what it saw acknowledged."""
    ack_file = tmp_path / f"acks-{tag}.txt"
    log_path = tmp_path / f"producer-{tag}.log"
    with open(log_path, "wb") as log:
        prod = subprocess.Popen(
            [harness.python(), str(TOOL), b.bootstrap, topic, str(PARTITIONS), str(ack_file), str(first), "90",
             "2000000"], stdout=log, stderr=subprocess.STDOUT, env=harness.clean_env())
        try:
            harness.eventually(lambda: count_lines(ack_file) >= 100, 60, what=f"{tag}: the producer's first 100 acks")
            time.sleep(2.0)
            assert prod.poll() is None, f"producer exited early: {log_path.read_text(errors='replace')[-2000:]}"
            stop(b)
            time.sleep(0.5)
        finally:
            if prod.poll() is None:
                prod.send_signal(signal.SIGTERM)
            try:
                prod.wait(30)
            except subprocess.TimeoutExpired:
                prod.kill()
                prod.wait(10)
    acks = read_acks(ack_file)
    assert len(acks) >= 100, f"{tag}: only {len(acks)} acks"
    return acks


def verify(b, topic: str, acked: Acked, tag: str):
    hw = harness.watermarks(b.bootstrap, topic, PARTITIONS)
    for p in range(PARTITIONS):
        max_acked = max((o for (pp, o) in acked.at if pp == p), default=-1)
        assert hw[p][0] == 0, f"{tag}: partition {p}: log start {hw[p][0]}, expected 0"
        assert hw[p][1] >= max_acked + 1, (f"{tag}: partition {p} high watermark {hw[p][1]} after restart, "
                                           f"but offset {max_acked} was acknowledged")
    parts = harness.consume(b.bootstrap, topic, PARTITIONS, end={p: hw[p][1] for p in hw})
    harness.assert_dense(parts)
    seen = {}
    for p, recs in parts.items():
        assert len(recs) == hw[p][1], f"{tag}: partition {p}: {len(recs)} records below high watermark {hw[p][1]}"
        for r in recs:
            assert r.value not in seen, f"{tag}: value {r.value!r} stored twice: at {seen[r.value]} and {(p, r.offset)}"
            seen[r.value] = (p, r.offset)
    lost = [(v, po) for v, po in acked.by_value.items() if seen.get(v) != po]
    assert not lost, (f"{tag}: {len(lost)} of {len(acked.by_value)} acknowledged records are not at their "
                      f"acknowledged offset, e.g. {[(v, po, seen.get(v)) for v, po in lost[:5]]}")


def kill9(b):
    b.kill9()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("store", ["fs", "s3"])
def test_kill9_keeps_acknowledged_records(broker_factory, tmp_path, request, store):
    if store == "s3":
        seaweed = request.getfixturevalue("seaweed")
        b = broker_factory(object_store=seaweed.url(seaweed.new_bucket()),
                           env={**seaweed.env, "STRATA_TIERING_FLUSH_INTERVAL_MS": "100"})
    else:
        b = broker_factory()
    topic = "crash"
    harness.create_topic(b.bootstrap, topic, PARTITIONS)
    acked = Acked()
    for round_ in range(2):
        acked.add(produce_and_stop(b, topic, tmp_path, f"kill-{round_}", round_ * 100_000_000, kill9))
        b.start()
        verify(b, topic, acked, f"after kill -9 #{round_ + 1}")



@pytest.mark.timeout(600)
def test_sigterm_under_load_keeps_acknowledged_records(broker_factory, tmp_path):
    b = broker_factory()
    topic = "term"
    harness.create_topic(b.bootstrap, topic, PARTITIONS)
    acked = Acked()
    acked.add(produce_and_stop(b, topic, tmp_path, "term", 0, lambda br: br.stop(check=True)))
    b.start()
    verify(b, topic, acked, "after SIGTERM under load")
