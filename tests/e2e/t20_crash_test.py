"""t20 crash: kill -9 the broker under an acks=all producer, twice; after each
restart on the same data dir every acknowledged record is at its acknowledged
offset, and every partition is dense from 0 with no gap and no duplicate."""

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


@pytest.mark.timeout(600)
def test_kill9_keeps_acknowledged_records(broker_factory, tmp_path):
    b = broker_factory()
    topic = "crash"
    harness.create_topic(b.bootstrap, topic, PARTITIONS)

    acked: dict[bytes, tuple[int, int]] = {}  # value -> (partition, offset)
    at: dict[tuple[int, int], bytes] = {}  # (partition, offset) -> value
    for round_ in range(2):
        ack_file = tmp_path / f"acks-{round_}.txt"
        log = open(tmp_path / f"producer-{round_}.log", "wb")
        prod = subprocess.Popen(
            [harness.python(), str(TOOL), b.bootstrap, topic, str(PARTITIONS), str(ack_file),
             str(round_ * 100_000_000), "90", "2000000"],
            stdout=log, stderr=subprocess.STDOUT, env=harness.clean_env())
        try:
            harness.eventually(lambda: count_lines(ack_file) >= 100, 60,
                               what=f"round {round_}: the producer's first 100 acks")
            time.sleep(2.0)
            assert prod.poll() is None, f"producer exited early: {(tmp_path / f'producer-{round_}.log').read_text()}"
            b.kill9()
            time.sleep(0.5)
        finally:
            if prod.poll() is None:
                prod.send_signal(signal.SIGTERM)
            try:
                prod.wait(30)
            except subprocess.TimeoutExpired:
                prod.kill()
                prod.wait(10)
            log.close()

        new = read_acks(ack_file)
        assert len(new) >= 100
        for p, o, v in new:
            assert v not in acked, f"value {v!r} acknowledged twice: {acked[v]} and {(p, o)}"
            assert at.get((p, o), v) == v, f"offset {p}/{o} acknowledged for {at[(p, o)]!r} and {v!r}"
            acked[v] = (p, o)
            at[(p, o)] = v

        b.start()
        hw = harness.watermarks(b.bootstrap, topic, PARTITIONS)
        for p in range(PARTITIONS):
            max_acked = max((o for (pp, o) in at if pp == p), default=-1)
            assert hw[p][0] == 0, f"partition {p}: log start {hw[p][0]}, expected 0"
            assert hw[p][1] >= max_acked + 1, (f"round {round_}: partition {p} high watermark {hw[p][1]} after restart, "
                                               f"but offset {max_acked} was acknowledged")
        parts = harness.consume(b.bootstrap, topic, PARTITIONS, end={p: hw[p][1] for p in hw})
        harness.assert_dense(parts)
        values_seen = {}
        for p, recs in parts.items():
            assert len(recs) == hw[p][1], f"partition {p}: {len(recs)} records below high watermark {hw[p][1]}"
            for r in recs:
                assert r.value not in values_seen, (f"value {r.value!r} stored twice: at {values_seen[r.value]} and "
                                                    f"{(p, r.offset)}")
                values_seen[r.value] = (p, r.offset)
        lost = [(v, po) for v, po in acked.items() if values_seen.get(v) != po]
        assert not lost, (f"round {round_}: {len(lost)} of {len(acked)} acknowledged records are not at their "
                          f"acknowledged offset, e.g. {[(v, po, values_seen.get(v)) for v, po in lost[:5]]}")
