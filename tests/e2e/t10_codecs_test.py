"""t10 codecs: every compression codec round-trips byte for byte, through
confluent-kafka (librdkafka 2.16) and kcat (librdkafka 2.0.2, an old client),
before and after a broker restart (then served from the WAL / object store)."""

import random
import time
import zlib

import pytest

import harness
from harness import Rec

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
N = 100_000
PARTITIONS = 4

VALUE_SIZES = [0, 1, 7, 50, 200, 1000, 8000, 20000]
VALUE_WEIGHTS = [5, 3, 10, 40, 27, 12, 2, 1]
HEADER_NAMES = ["trace-id", "h", "content-type", "ümlaut-ключ", "x"]


def make_records(n: int, partitions: int, seed: int) -> list[Rec]:
    """Deterministic records that cover what a codec or a broker could mangle:
    null / empty / binary keys and values, sizes from 0 to 20 KB, compressible
    and incompressible data, zero to several headers with repeated names and
    null or empty values, explicit CreateTime timestamps that are not monotonic."""
    rng = random.Random(seed)
    base_ts = 1_700_000_000_000
    sizes = rng.choices(VALUE_SIZES, VALUE_WEIGHTS, k=n)
    out = []
    for i in range(n):
        r = rng.random()
        if r < 0.01:
            value = None
        else:
            size = sizes[i]
            if rng.random() < 0.5:
                value = rng.randbytes(size)
            else:
                word = b"strata %d " % rng.randrange(50)
                value = (word * (size // len(word) + 1))[:size]
        r = rng.random()
        if r < 0.05:
            key = None
        elif r < 0.08:
            key = b""
        elif r < 0.13:
            key = rng.randbytes(16)
        else:
            key = b"key-%d" % (i % 5000)
        if i % 10 == 0:
            headers = (("dup", b"1"), ("dup", b"2"), ("dup", None), ("empty", b""))
        else:
            headers = tuple(
                (rng.choice(HEADER_NAMES), None if rng.random() < 0.1 else rng.randbytes(rng.randrange(0, 40)))
                for _ in range(rng.choice([0, 0, 1, 2, 3]))
            )
        ts = base_ts + i * 10 - rng.randrange(0, 5000)
        out.append(Rec(i % partitions, key, value, headers, ts))
    return out


@pytest.mark.timeout(600)
@pytest.mark.parametrize("codec", CODECS)
def test_confluent_roundtrip(broker_factory, codec):
    b = broker_factory()
    topic = f"codec-{codec}"
    harness.create_topic(b.bootstrap, topic, PARTITIONS)
    records = make_records(N, PARTITIONS, seed=CODECS.index(codec))
    delivered = harness.produce(b.bootstrap, topic, records, **{"compression.type": codec})

    consumed = harness.consume(b.bootstrap, topic, PARTITIONS)
    harness.assert_matches(records, delivered, consumed)
    for p in range(PARTITIONS):
        assert len(consumed[p]) == N // PARTITIONS

    del consumed
    b.restart()
    after = harness.consume(b.bootstrap, topic, PARTITIONS)
    harness.assert_matches(records, delivered, after)


def kcat_lines(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """(key, value) per line; the value carries the line number first, then 0..300
    bytes of anything but NUL, newline and the key delimiter ':'."""
    rng = random.Random(seed)
    alphabet = bytes(b for b in range(1, 256) if b not in (0x0A, 0x0D, ord(":")))
    lines = []
    for i in range(n):
        key = b"k%d" % (i % 997)
        size = rng.choice([0, 1, 10, 40, 100, 300])
        payload = bytes(rng.choices(alphabet, k=size)) if rng.random() < 0.5 else b"abc" * (size // 3)
        lines.append((key, b"%07d|" % i + payload))
    return lines


def check_kcat_output(parts: dict, lines: list, partitions: int, t0_ms: int, t1_ms: int):
    harness.assert_dense(parts)
    assert sorted(parts) == list(range(partitions)), f"partitions seen: {sorted(parts)}"
    seen = set()
    want_headers = ((b"src", b"kcat"), (b"dup", b"1"), (b"dup", b"2"))
    for p, recs in parts.items():
        last = -1
        for r in recs:
            idx = int(r.value[:7])
            assert idx > last, f"partition {p} offset {r.offset}: line {idx} after line {last} (reordered/duplicate)"
            last = idx
            key, value = lines[idx]
            assert (r.key, r.value) == (key, value), f"line {idx} at {p}/{r.offset}: got {(r.key, r.value[:60])}"
            # librdkafka's default partitioner for keyed messages: crc32(key) % partitions.
            assert p == zlib.crc32(key) % partitions, f"key {key!r} in partition {p}"
            assert r.headers == want_headers, f"line {idx}: headers {r.headers}"
            assert t0_ms - 300_000 <= r.timestamp <= t1_ms + 300_000, f"line {idx}: timestamp {r.timestamp}"
            seen.add(idx)
    assert len(seen) == len(lines), f"{len(lines) - len(seen)} lines missing"


def kcat_consume(bootstrap: str, topic: str) -> dict:
    res = harness.kcat(["-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q",
                        "-X", "check.crcs=true", "-f", harness.KCAT_FORMAT], timeout=300)
    assert res.returncode == 0, f"kcat -C exit {res.returncode}: {res.stderr.decode(errors='replace')[-2000:]}"
    return harness.parse_kcat(res.stdout)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("codec", CODECS)
def test_kcat_roundtrip(broker_factory, kcat_ok, codec):
    b = broker_factory()
    topic = f"kcat-{codec}"
    harness.create_topic(b.bootstrap, topic, PARTITIONS)
    lines = kcat_lines(N, seed=100 + CODECS.index(codec))
    data = b"".join(k + b":" + v + b"\n" for k, v in lines)
    t0 = int(time.time() * 1000)
    res = harness.kcat(["-P", "-b", b.bootstrap, "-t", topic, "-z", codec, "-K", ":",
                        "-H", "src=kcat", "-H", "dup=1", "-H", "dup=2",
                        "-X", "acks=all", "-X", "linger.ms=20", "-X", "batch.size=1000000"], input=data)
    t1 = int(time.time() * 1000)
    assert res.returncode == 0, f"kcat -P exit {res.returncode}: {res.stderr.decode(errors='replace')[-2000:]}"

    parts = kcat_consume(b.bootstrap, topic)
    check_kcat_output(parts, lines, PARTITIONS, t0, t1)

    b.restart()
    after = kcat_consume(b.bootstrap, topic)
    assert after == parts, "kcat reads different records after a restart"
