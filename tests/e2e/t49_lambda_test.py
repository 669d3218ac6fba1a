"""t49 Lambda: the `bootstrap` binary (lambda/) driven through a Lambda Runtime API emulator
(lambda_emulator.py), against SeaweedFS and a normal broker's metadata on the same bucket.

- list topics; produce 200 records (keys, headers, timestamps, a few explicit partitions)
  in several invocations; keyed records land on Kafka's murmur2 partition; fetch them back
  through the Lambda by offset (whole and paged) and by timestamp; a stock confluent-kafka
  consumer through the BROKER reads exactly those records at exactly those offsets;
- base64 bodies; a broker-side produce (direct topic, and a WAL topic once uploaded) is
  visible through the Lambda fetch;
- every refusal answers its status: 404 unknown topic / partition / route, 405, 409 WAL
  topic, 400 bad JSON / base64 / partition / query, 413 over 6 MB, 416 past the end, 503
  metadata or object store unreachable; an unknown event shape is an invocation error; a
  missing config is a Runtime API init error;
- a scheduled event after many small produces compacts (the index block count drops) and
  every record is still fetched in order, through the Lambda and through the broker.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest

import harness
from harness import Rec
from lambda_emulator import LambdaEmulator, function_url_event, http_answer, scheduled_event

MODE = "strata.storage.mode"
DIRECT = {MODE: "direct"}
BOOTSTRAP = harness.debug_binary("bootstrap")
# The broker's own compactor is off: compaction here is the Lambda's scheduled handler.
BROKER_CONFIG = {
    "tiering": {"flush_interval_ms": 100},
    "compaction": {"enabled": False},
}


def murmur2(data: bytes) -> int:
    """Kafka's Utils.murmur2, as an unsigned 32-bit value."""
    m, r = 0x5BD1E995, 24
    h = (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    n4 = len(data) // 4
    for i in range(n4):
        k = int.from_bytes(data[i * 4:i * 4 + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = data[n4 * 4:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if len(tail) >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def kafka_partition(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Function:
    """One bootstrap process polling its own emulator."""

    def __init__(self, workdir: Path, env: dict):
        if not BOOTSTRAP.is_file():
            pytest.fail(f"{BOOTSTRAP} not built: cargo build -p strata-lambda", pytrace=False)
        self.emulator = LambdaEmulator().start()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "bootstrap.stderr.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(BOOTSTRAP)], stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, env=harness.clean_env({**self.emulator.env(), **env}),
                                     cwd=workdir)

    def invoke(self, event, timeout: float = 60):
        return self.emulator.invoke(event, timeout)

    def http(self, method: str, path: str, query: dict | None = None, body=None, timeout: float = 60,
             **kw) -> tuple[int, dict]:
        ok, payload = self.invoke(function_url_event(method, path, query, body, **kw), timeout)
        assert ok, f"invocation failed: {payload}\n{self.log_tail()}"
        return http_answer(payload)

    def log_tail(self, lines: int = 40) -> str:
        return harness.tail(self.log_path, lines)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()  # by PID; Lambda itself freezes/kills environments the same way
            self.proc.wait(10)
        self._log.close()
        self.emulator.stop()


@pytest.fixture
def env(broker_factory, seaweed, tmp_path):
    """A broker on a fresh SeaweedFS bucket and a function factory pointed at it."""
    url = seaweed.url(seaweed.new_bucket())
    # A plain single-node broker: its meta.listen serves the Meta service (Write, ReadState)
    # that the function's remote metadata client talks to, beside the admin gRPC API.
    b = broker_factory(object_store=url, env=seaweed.env, config=BROKER_CONFIG)
    made: list[Function] = []

    def function(name: str = "fn", **overrides) -> Function:
        e = {
            "STRATA_META_ADDRS": f"127.0.0.1:{b.meta_port}",
            "STRATA_OBJECT_STORE": url,
            "STRATA_LAMBDA_NODE_ID": "900",
            "STRATA_COMPACTION_MIN_BLOCKS": "4",
            "STRATA_COMPACTION_CHUNK_BYTES": "8192",
            # As the harness's brokers: the tests write historical CreateTimes.
            "STRATA_TIERING_RETENTION_MS": "-1",
            **seaweed.env,
        }
        for k, v in overrides.items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        f = Function(tmp_path / f"lambda-{name}-{len(made)}", e)
        made.append(f)
        return f

    yield b, function
    for f in made:
        f.stop()
        print(f"\n--- bootstrap {f.log_path.parent.name} stderr tail ---\n{f.log_tail()}")


def produce_via(fn: Function, topic: str, records: list[dict], encoding: str | None = None) -> list[dict]:
    body = {"records": records}
    if encoding:
        body["encoding"] = encoding
    status, got = fn.http("POST", f"/v1/topics/{topic}/records", body=body)
    assert status == 200, got
    assert len(got["offsets"]) == len(records)
    return got["offsets"]


def fetch_via(fn: Function, topic: str, p: int, **query) -> dict:
    status, got = fn.http("GET", f"/v1/topics/{topic}/partitions/{p}/records", query=query)
    assert status == 200, got
    return got


def fetch_all(fn: Function, topic: str, p: int, page: int = 1000) -> list[dict]:
    out, offset = [], 0
    while True:
        got = fetch_via(fn, topic, p, offset=offset, max_records=page)
        if not got["records"]:
            assert got["next_offset"] == got["high_watermark"]
            return out
        out += got["records"]
        assert got["next_offset"] > offset
        offset = got["next_offset"]


@pytest.mark.timeout(600)
def test_lambda_produce_fetch_and_a_kafka_consumer_agree(env):
    b, function = env
    harness.create_topic(b.bootstrap, "lam", 3, config=DIRECT)
    harness.create_topic(b.bootstrap, "walt", 1)
    fn = function()

    status, got = fn.http("GET", "/v1/topics")
    assert status == 200, got
    by_name = {t["name"]: t for t in got["topics"]}
    assert by_name["lam"] == {"name": "lam", "partitions": 3, "storage_mode": "direct"}
    assert by_name["walt"] == {"name": "walt", "partitions": 1, "storage_mode": "wal"}

    # 200 records in 4 invocations: keys (murmur2-partitioned), headers, CreateTimes, and every
    # tenth record to an explicit partition.
    t0 = int(time.time() * 1000) - 100_000
    sent = []
    for i in range(200):
        r = {"key": f"key-{i}", "value": f"value-{i}-" + "x" * (i % 50),
             "headers": {"n": str(i), "src": "lambda"}, "timestamp": t0 + i * 10}
        if i % 10 == 0:
            r["partition"] = i % 3
        sent.append(r)
    offsets = []
    for chunk in range(4):
        offsets += produce_via(fn, "lam", sent[chunk * 50:(chunk + 1) * 50])
    expected: dict[int, list[tuple]] = {0: [], 1: [], 2: []}
    for i, (r, o) in enumerate(zip(sent, offsets)):
        want_p = r.get("partition", kafka_partition(r["key"].encode(), 3))
        assert o["partition"] == want_p, f"record {i}: partition {o['partition']}, Kafka's is {want_p}"
        assert o["offset"] == len(expected[want_p]), f"record {i}: offsets are dense per partition"
        expected[want_p].append((o["offset"], r["key"], r["value"], r["headers"], r["timestamp"]))
    assert all(expected[p] for p in range(3)), "every partition got records"

    # Fetch through the Lambda: whole, paged, by timestamp.
    for p in range(3):
        whole = fetch_via(fn, "lam", p, offset=0, max_records=1000)
        assert whole["high_watermark"] == len(expected[p])
        got = [(r["offset"], r["key"], r["value"], r["headers"], r["timestamp"]) for r in whole["records"]]
        assert got == expected[p], f"partition {p}"
        paged = fetch_all(fn, "lam", p, page=7)
        assert [r["offset"] for r in paged] == [e[0] for e in expected[p]]
        mid = expected[p][len(expected[p]) // 2]
        from_mid = fetch_via(fn, "lam", p, offset=mid[0], max_records=3)
        assert [r["offset"] for r in from_mid["records"]] == [e[0] for e in expected[p][len(expected[p]) // 2:][:3]]
        by_time = fetch_via(fn, "lam", p, timestamp=mid[4], max_records=2)
        assert by_time["records"][0]["offset"] == mid[0] and by_time["records"][0]["timestamp"] == mid[4]
        past = fetch_via(fn, "lam", p, timestamp=t0 + 10_000_000)
        assert past["records"] == [] and past["next_offset"] == len(expected[p])

    # A stock Kafka consumer through the broker reads exactly those records.
    consumed = harness.consume(b.bootstrap, "lam", 3)
    for p in range(3):
        got = [(r.offset, r.key.decode(), r.value.decode(),
                {k: v.decode() for k, v in r.headers}, r.timestamp) for r in consumed[p]]
        assert got == expected[p], f"partition {p}: the broker's consumer disagrees"

    # base64: binary keys, values and header values.
    blob = bytes(range(256))
    [o] = produce_via(fn, "lam", [{"key": base64.b64encode(b"\xff\x00k").decode(),
                                   "value": base64.b64encode(blob).decode(),
                                   "headers": {"bin": base64.b64encode(b"\x80").decode()}, "partition": 1}],
                      encoding="base64")
    got = fetch_via(fn, "lam", 1, offset=o["offset"])["records"]
    assert len(got) == 1 and got[0]["encoding"] == "base64"
    assert base64.b64decode(got[0]["value"]) == blob and base64.b64decode(got[0]["key"]) == b"\xff\x00k"
    assert base64.b64decode(got[0]["headers"]["bin"]) == b"\x80"
    # Null keys go round robin; null values are tombstones.
    offs = produce_via(fn, "lam", [{"value": "rr"} for _ in range(6)] + [{"key": "t", "value": None}])
    assert {o["partition"] for o in offs[:6]} == {0, 1, 2}
    tomb = fetch_via(fn, "lam", offs[6]["partition"], offset=offs[6]["offset"])["records"][0]
    assert tomb["key"] == "t" and tomb["value"] is None

    # A broker-side produce is visible through the Lambda: at once on a direct topic, after
    # its upload on a WAL topic.
    [(p, off)] = harness.produce(b.bootstrap, "lam", [Rec(2, b"from-broker", b"hello", (("h", b"1"),))])
    got = fetch_via(fn, "lam", 2, offset=off)["records"]
    assert [(r["offset"], r["key"], r["value"], r["headers"]) for r in got] == \
        [(off, "from-broker", "hello", {"h": "1"})]
    harness.produce(b.bootstrap, "walt", [Rec(0, b"w%d" % i, b"wal-%d" % i) for i in range(20)])

    def wal_visible():
        got = fetch_via(fn, "walt", 0, offset=0)
        return [r["value"] for r in got["records"]] == [f"wal-{i}" for i in range(20)]

    harness.eventually(wal_visible, 60, what="the WAL topic's records uploaded and fetched through the Lambda")


def test_lambda_idempotent_produce(env):
    """A client that retries through the HTTP API gets no duplicates: producer ids from
    `POST /v1/producers`, per-partition sequences checked by metadata at commit."""
    b, function = env
    harness.create_topic(b.bootstrap, "idem", 2, config=DIRECT)
    fn = function()
    status, p1 = fn.http("POST", "/v1/producers")
    assert status == 200 and p1["producer_epoch"] == 0, p1
    status, p2 = fn.http("POST", "/v1/producers")
    assert status == 200 and p2["producer_id"] != p1["producer_id"], (p1, p2)
    pid = p1["producer_id"]

    def send(records, sequences, producer_id=pid, epoch=0):
        body = {"records": records,
                "producer": {"id": producer_id, "epoch": epoch, "sequences": sequences}}
        return fn.http("POST", "/v1/topics/idem/records", body=body)

    first = [{"value": f"a{i}", "partition": i % 2} for i in range(6)]
    status, got = send(first, {"0": 0, "1": 0})
    assert status == 200 and got["duplicate"] is False, got
    assert got["next_sequences"] == {"0": 3, "1": 3}, got
    # The same request again (a client retrying after a lost answer): the original offsets,
    # nothing written twice.
    status, again = send(first, {"0": 0, "1": 0})
    assert status == 200 and again["duplicate"] is True, again
    assert again["offsets"] == got["offsets"]
    # The next request follows on; another producer interleaves freely.
    status, nxt = send([{"value": "b0", "partition": 0}], {"0": 3})
    assert status == 200 and nxt["offsets"] == [{"partition": 0, "offset": 3}], nxt
    status, other = send([{"value": "c0", "partition": 0}], {"0": 0}, producer_id=p2["producer_id"])
    assert status == 200 and other["offsets"] == [{"partition": 0, "offset": 4}], other
    # A gap is refused with 409 and writes nothing; so is a sequence for an unwritten partition.
    status, gap = send([{"value": "lost", "partition": 0}], {"0": 9})
    assert status == 409 and "expected 4" in gap["error"], gap
    status, bad = send([{"value": "x", "partition": 0}], {"0": 4, "1": 3})
    assert status == 400 and "exactly the partitions" in bad["error"], bad
    status, bad = send([{"value": "x", "partition": 0}], {"zero": 4})
    assert status == 400 and "not a partition number" in bad["error"], bad
    # A stock Kafka consumer sees each record once, in order.
    consumed = harness.consume(b.bootstrap, "idem", 2)
    assert [r.value for r in consumed[0]] == [b"a0", b"a2", b"a4", b"b0", b"c0"]
    assert [r.value for r in consumed[1]] == [b"a1", b"a3", b"a5"]


@pytest.mark.timeout(600)
def test_lambda_refusals(env, seaweed):
    b, function = env
    harness.create_topic(b.bootstrap, "d", 2, config=DIRECT)
    harness.create_topic(b.bootstrap, "w", 1)
    fn = function()

    def check(method, path, want_status, want_text, query=None, body=None, **kw):
        status, got = fn.http(method, path, query, body, **kw)
        assert status == want_status, f"{method} {path}: {status} {got}"
        assert want_text in got["error"], f"{method} {path}: {got['error']!r} lacks {want_text!r}"

    rec = {"records": [{"value": "v"}]}
    check("POST", "/v1/topics/w/records", 409, "strata.storage.mode=direct", body=rec)
    check("POST", "/v1/topics/nope/records", 404, "topic `nope` does not exist", body=rec)
    check("POST", "/v1/topics/d/records", 400, "malformed produce body", body="{not json")
    check("POST", "/v1/topics/d/records", 400, "malformed produce body", body={"records": [{"valu": "x"}]})
    check("POST", "/v1/topics/d/records", 400, "`records` is empty", body={"records": []})
    check("POST", "/v1/topics/d/records", 400, "not base64",
          body={"records": [{"value": "***"}], "encoding": "base64"})
    check("POST", "/v1/topics/d/records", 400, "encoding `hex`",
          body={"records": [{"value": "00"}], "encoding": "hex"})
    check("POST", "/v1/topics/d/records", 400, "partition 2 is out of range",
          body={"records": [{"value": "v", "partition": 2}]})
    check("POST", "/v1/topics/d/records", 400, "timestamp -5 is negative",
          body={"records": [{"value": "v", "timestamp": -5}]})
    big = {"records": [{"value": "x" * (6 * 1024 * 1024 + 10)}]}
    check("POST", "/v1/topics/d/records", 413, "over the limit", body=big, timeout=120)
    check("GET", "/v1/topics/d/partitions/5/records", 404, "partition 5 does not exist")
    check("GET", "/v1/topics/nope/partitions/0/records", 404, "topic `nope` does not exist")
    check("GET", "/v1/topics/d/partitions/x/records", 400, "partition `x` is not a number")
    check("GET", "/v1/topics/d/partitions/0/records", 416, "past the high watermark", query={"offset": 1})
    check("GET", "/v1/topics/d/partitions/0/records", 400, "not both", query={"offset": 0, "timestamp": 0})
    check("GET", "/v1/topics/d/partitions/0/records", 400, "from 0 to 10000", query={"max_records": 10001})
    check("GET", "/v1/topics/d/partitions/0/records", 400, "unknown parameter", query={"from": 0})
    check("GET", "/v1/nothing", 404, "no route")
    check("DELETE", "/v1/topics", 405, "use GET")
    # Nothing refused was written.
    assert fetch_via(fn, "d", 0, offset=0)["high_watermark"] == 0
    assert fetch_via(fn, "d", 1, offset=0)["high_watermark"] == 0

    ok, payload = fn.invoke({"hello": "world"})
    assert not ok and "unsupported event" in payload["errorMessage"], payload

    # Metadata unreachable: 503 naming it.
    dead = harness.free_port()
    no_meta = function("nometa", STRATA_META_ADDRS=f"127.0.0.1:{dead}", STRATA_META_TIMEOUT_MS="1500")
    status, got = no_meta.http("GET", "/v1/topics")
    assert status == 503 and "metadata unavailable" in got["error"], got
    # Object store unreachable: 503 naming it, and nothing committed.
    no_store = function("nostore", STRATA_OBJECT_STORE=seaweed.url("b").replace(
        seaweed.endpoint, f"http://127.0.0.1:{dead}"))
    status, got = no_store.http("POST", "/v1/topics/d/records", body={"records": [{"value": "v", "partition": 0}]},
                                timeout=15)
    assert status == 503 and "object store PUT" in got["error"], got
    assert fetch_via(fn, "d", 0, offset=0)["high_watermark"] == 0

    # A missing setting is a Runtime API init error naming it, and the process ends.
    bad = function("noconfig", STRATA_OBJECT_STORE=None)
    err = bad.emulator.wait_init_error(30)
    assert err is not None and "STRATA_OBJECT_STORE" in err["errorMessage"], err
    assert bad.proc.wait(30) != 0


@pytest.mark.timeout(600)
def test_scheduled_event_compacts_and_keeps_every_record(env):
    b, function = env
    harness.create_topic(b.bootstrap, "small", 1, config=DIRECT)
    fn = function()
    values = []
    for i in range(12):  # 12 invocations: 12 index blocks
        batch = [f"r{i}-{j}" for j in range(5)]
        produce_via(fn, "small", [{"key": v, "value": v, "partition": 0} for v in batch])
        values += batch

    def blocks():
        [p] = b.topic("small")["partitions"]
        return p["blocks"], p["segments"]

    before, segs = blocks()
    assert before == 12 and segs == 0, (before, segs)
    ok, summary = fn.invoke(scheduled_event())
    assert ok, summary
    assert summary["segments_written"] >= 1 and not summary["errors"], summary
    assert summary["blocks_after"] < summary["blocks_before"], summary
    after, segs = blocks()
    assert after < before and segs >= 1, (after, segs)
    # Every record, in order, through the Lambda and through the broker.
    got = fetch_all(fn, "small", 0, page=5)
    assert [(r["offset"], r["value"]) for r in got] == list(enumerate(values))
    by_time = fetch_via(fn, "small", 0, timestamp=got[30]["timestamp"], max_records=1)["records"]
    assert by_time[0]["offset"] <= 30 and by_time[0]["timestamp"] == got[30]["timestamp"]
    consumed = harness.consume(b.bootstrap, "small", 1)
    assert [(r.offset, r.value.decode()) for r in consumed[0]] == list(enumerate(values))
    # Later produces go after the segment.
    [o] = produce_via(fn, "small", [{"value": "after", "partition": 0}])
    assert o["offset"] == len(values)
    assert fetch_via(fn, "small", 0, offset=len(values))["records"][0]["value"] == "after"
