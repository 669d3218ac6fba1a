"""t50 bad input: garbage, truncated and oversized frames, unknown API keys,
unsupported versions, unknown topics and bad config get a clear answer (an error
code, a closed connection, exit code 2 naming the key) — never a crash — and a
healthy client using the same broker notices nothing."""

import random
import re
import socket
import struct
import subprocess
import threading
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

import harness
import kwire
from harness import Rec

# 2 MiB: above the broker's default kafka.message_bytes_max (1 MiB + 12, as in Kafka),
# which must not exceed it.
REQUEST_BYTES_MAX = 2 << 20


class Background:
    """A producer and a tailing consumer on topic `bg`, counting successes."""

    def __init__(self, bootstrap: str, topic: str = "bg"):
        self.bootstrap = bootstrap
        self.topic = topic
        self.acked = 0
        self.consumed = 0
        self.errors: list[str] = []
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self._produce, daemon=True),
                        threading.Thread(target=self._consume, daemon=True)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _produce(self):
        p = Producer(harness.producer_conf(self.bootstrap, **{"linger.ms": 5, "message.timeout.ms": 30000}))

        def dr(err, msg):
            if err is None:
                self.acked += 1
            else:
                self.errors.append(f"delivery: {err}")

        deadline = time.monotonic() + 280  # bounded even if the test forgets to stop us
        i = 0
        while not self.stop_flag.is_set() and time.monotonic() < deadline:
            try:
                p.produce(self.topic, value=b"bg-%d" % i, partition=0, on_delivery=dr)
                i += 1
            except BufferError:
                pass
            p.poll(0.01)  # ~100 records/s
        p.flush(10)

    def _consume(self):
        c = Consumer(harness.consumer_conf(self.bootstrap, **{"fetch.wait.max.ms": 100}))
        c.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 280
        try:
            while not self.stop_flag.is_set() and time.monotonic() < deadline:
                for m in c.consume(num_messages=1000, timeout=0.2):
                    if m.error() is None:
                        self.consumed += 1
                    elif m.error().code() != KafkaError._PARTITION_EOF:
                        self.errors.append(f"consume: {m.error()}")
        finally:
            c.close()

    def wait_progress(self, after: str, min_new: int = 20, timeout: float = 30):
        a0, c0 = self.acked, self.consumed
        harness.eventually(lambda: self.acked >= a0 + min_new and self.consumed >= c0 + min_new, timeout,
                           what=f"the background client to keep producing and consuming after {after} "
                                f"(acked {a0}->{self.acked}, consumed {c0}->{self.consumed}, errors {self.errors[:3]})")

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)


@pytest.fixture
def attacked(broker_factory):
    b = broker_factory(config={"kafka": {"request_bytes_max": REQUEST_BYTES_MAX, "auto_create_topics": False}})
    harness.create_topic(b.bootstrap, "bg", 1)
    bg = Background(b.bootstrap).start()
    bg.wait_progress("start", timeout=60)
    yield b, bg
    bg.stop()
    assert not bg.errors, f"the background client saw errors: {bg.errors[:10]}"


def api_versions_ok(b) -> dict:
    """A fresh connection still gets a good ApiVersions v0 answer."""
    corr, err, apis = kwire.parse_api_versions_v0(kwire.roundtrip(b.kafka_port, kwire.api_versions_v0(77)))
    assert (corr, err) == (77, 0), f"ApiVersions v0: correlation {corr}, error {err}"
    return apis


def after_attack(b, bg, what: str):
    b.assert_alive()
    api_versions_ok(b)
    bg.wait_progress(what)


def test_api_versions_v0_lists_the_contract(attacked):
    b, _ = attacked
    apis = api_versions_ok(b)
    for key in (kwire.API_PRODUCE, kwire.API_FETCH, kwire.API_LIST_OFFSETS, kwire.API_METADATA,
                kwire.API_API_VERSIONS, kwire.API_CREATE_TOPICS, kwire.API_DELETE_TOPICS):
        assert key in apis, f"ApiVersions does not list api key {key}: {apis}"
        lo, hi = apis[key]
        assert 0 <= lo <= hi, f"api key {key}: versions {lo}..{hi}"
    assert apis[kwire.API_API_VERSIONS][1] >= 3, "ApiVersions v3 (flexible) expected"


def test_garbage_closes_connection(attacked):
    b, bg = attacked
    # Random bytes. The first four are a negative size prefix, which no framing can accept.
    rng = random.Random(50)
    junk = bytes([0xF3]) + rng.randbytes(64 * 1024 - 1)
    with kwire.connect(b.kafka_port) as s:
        try:
            s.sendall(junk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        closed, got = kwire.wait_closed(s, 10)
    assert closed, f"broker kept a connection open after 64 KiB of garbage (received {len(got)} bytes)"
    after_attack(b, bg, "random bytes")

    # Someone points an HTTP client at the Kafka port: "GET " is a 1.2 GB size prefix.
    with kwire.connect(b.kafka_port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        closed, got = kwire.wait_closed(s, 10)
    assert closed, "broker kept a connection open after an HTTP request on the Kafka port"
    after_attack(b, bg, "an HTTP request")

    # A well-framed Produce request whose body is garbage: an answer or a close, never a hang.
    with kwire.connect(b.kafka_port) as s:
        s.sendall(kwire.request(kwire.API_PRODUCE, 7, 4321, rng.randbytes(200)))
        closed, got = kwire.wait_closed(s, 10)
    if not closed:
        assert len(got) >= 8 and struct.unpack(">i", got[4:8])[0] == 4321, (
            f"a Produce request with a garbage body got neither a close nor a response within 10 s "
            f"(received {got[:32]!r})")
    after_attack(b, bg, "a garbage Produce body")


def test_truncated_frame_then_close(attacked):
    b, bg = attacked
    for _ in range(20):
        with kwire.connect(b.kafka_port) as s:
            s.sendall(struct.pack(">i", 100) + b"\x00\x12\x00\x00\x00\x00\x00\x01\x00\x00")
    after_attack(b, bg, "truncated frames")


def test_oversized_frame_closes_connection(attacked):
    b, bg = attacked
    with kwire.connect(b.kafka_port) as s:
        # Claim twice request_bytes_max but send only a little: the broker
        # must close on the size prefix alone, not wait for (or buffer) the body.
        s.sendall(struct.pack(">i", 2 * REQUEST_BYTES_MAX) + b"\x00\x12\x00\x00\x00\x00\x00\x01" + b"\x00" * 100)
        closed, got = kwire.wait_closed(s, 10)
    assert closed, "broker did not close a connection whose frame size exceeds request_bytes_max"
    after_attack(b, bg, "an oversized frame")

    # Just under the limit is fine: a 900 KB record is accepted.
    recs = [Rec(0, b"big", bytes(range(256)) * 3500)]
    harness.produce(b.bootstrap, "bg", recs)
    bg.wait_progress("a 900 KB record")


def test_unknown_api_key_gets_an_error(attacked):
    b, bg = attacked
    with kwire.connect(b.kafka_port) as s:
        s.sendall(kwire.request(9999, 0, 4242))
        try:
            frame = kwire.recv_frame(s)
        except (ConnectionError, socket.timeout) as e:
            pytest.fail(f"unknown api key 9999: no response, connection dropped ({e!r})")
    corr, = struct.unpack(">i", frame[:4])
    assert corr == 4242, f"unknown api key: response correlation id {corr}"
    assert len(frame) >= 6, f"unknown api key: response without an error code: {frame!r}"
    err, = struct.unpack(">h", frame[4:6])
    assert err != 0, f"unknown api key: error code 0 in {frame!r}"
    after_attack(b, bg, "an unknown api key")


def test_unsupported_api_versions_version(attacked):
    b, bg = attacked
    frame = kwire.roundtrip(b.kafka_port, kwire.api_versions_v0(correlation_id=31337, version=99))
    corr, err, apis = kwire.parse_api_versions_v0(frame)
    assert corr == 31337
    assert err == kwire.UNSUPPORTED_VERSION, f"ApiVersions v99: error code {err}, expected 35 UNSUPPORTED_VERSION"
    # Kafka lists its versions in this v0-format answer, so a newer client can retry with the max it may use.
    assert kwire.API_API_VERSIONS in apis, f"ApiVersions v99 answer lists no ApiVersions range: {apis}"
    after_attack(b, bg, "ApiVersions v99")


def test_unknown_topic_without_auto_create(attacked):
    b, bg = attacked
    # Metadata for a missing topic: error 3, and asking does not create it.
    corr, brokers, topics = kwire.parse_metadata_v1(
        kwire.roundtrip(b.kafka_port, kwire.metadata_v1(["no-such-topic"], correlation_id=5)))
    assert corr == 5
    assert brokers and brokers[0][1:] == ("127.0.0.1", b.kafka_port), f"advertised brokers: {brokers}"
    assert topics.get("no-such-topic", (None,))[0] == kwire.UNKNOWN_TOPIC_OR_PARTITION, f"topics: {topics}"

    # A raw Produce to it: UNKNOWN_TOPIC_OR_PARTITION (3).
    apis = api_versions_ok(b)
    lo, hi = apis[kwire.API_PRODUCE]
    version = max(lo, min(hi, 8))
    assert 3 <= version <= 8, f"no non-flexible Produce version in {lo}..{hi}"
    batch = kwire.record_batch([(b"k", b"v")], int(time.time() * 1000))
    corr, topic, part, err = kwire.parse_produce_first_error(kwire.roundtrip(
        b.kafka_port, kwire.produce_request(version, "no-such-topic", 0, batch, correlation_id=6)))
    assert (corr, topic, part) == (6, "no-such-topic", 0)
    assert err == kwire.UNKNOWN_TOPIC_OR_PARTITION, f"Produce v{version} to a missing topic: error {err}"

    # confluent-kafka: the delivery report carries the error.
    p = Producer(harness.producer_conf(b.bootstrap, **{"message.timeout.ms": 20000,
                                                       "topic.metadata.propagation.max.ms": 2000}))
    errs = []
    p.produce("no-such-topic", value=b"x", on_delivery=lambda e, m: errs.append(e))
    p.flush(30)
    assert len(errs) == 1 and errs[0] is not None, f"delivery reports: {errs}"
    assert errs[0].code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC), str(errs[0])

    # kafka-python
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError, UnknownTopicOrPartitionError

    kp = KafkaProducer(bootstrap_servers=b.bootstrap, max_block_ms=5000, request_timeout_ms=10000)
    try:
        with pytest.raises((UnknownTopicOrPartitionError, KafkaTimeoutError)):
            kp.send("no-such-topic", b"x", partition=0).get(timeout=15)
    finally:
        kp.close(timeout=5)
    assert b.topic("no-such-topic") is None, "the topic was created although auto_create_topics=false"
    after_attack(b, bg, "produce to a missing topic")


def test_garbage_on_admin_port(attacked):
    b, bg = attacked
    with socket.create_connection(("127.0.0.1", b.admin_port), timeout=10) as s:
        s.sendall(random.Random(5).randbytes(8192))
        closed, got = kwire.wait_closed(s, 10)
    assert closed or got.startswith(b"HTTP/1.1 4"), f"admin port answered garbage with {got[:80]!r}"
    status, _ = b.get("/health")
    assert status == 200
    after_attack(b, bg, "garbage on the admin port")


def run_strata(strata_bin, args, env=None, timeout=120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([strata_bin] + args, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, env=harness.clean_env(env))
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"strata {' '.join(args)} still running after {timeout}s (it should have refused to start); "
                    f"stderr: {(e.stderr or b'')[-1000:]!r}")


@pytest.mark.parametrize("section,key,value", [
    ("kafka", "bogus_key", "1"),
    ("tiering", "flush_interval_ms", '"soon"'),
    (None, "no_such_top_level_key", "true"),
])
def test_bad_config_exits_2_naming_the_key(strata_bin, tmp_path, section, key, value):
    cfg = tmp_path / "bad.toml"
    cfg.write_text((f"[{section}]\n" if section else "") + f"{key} = {value}\n")
    r = run_strata(strata_bin, ["start", "--config", str(cfg), "--data-dir", str(tmp_path / "data"),
                                "--kafka-listen", f"127.0.0.1:{harness.free_port()}",
                                "--admin-listen", f"127.0.0.1:{harness.free_port()}"])
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 2, f"exit code {r.returncode}, stderr: {err[-1000:]}"
    assert key in err, f"stderr does not name {key!r}: {err[-1000:]}"
    assert "panicked" not in err, err[-2000:]


def test_bad_env_value_exits_2_naming_the_key(strata_bin, tmp_path):
    r = run_strata(strata_bin, ["start", "--data-dir", str(tmp_path / "data"),
                                "--kafka-listen", f"127.0.0.1:{harness.free_port()}",
                                "--admin-listen", f"127.0.0.1:{harness.free_port()}"],
                   env={"STRATA_TIERING_FLUSH_INTERVAL_MS": "soon"})
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 2, f"exit code {r.returncode}, stderr: {err[-1000:]}"
    assert "flush_interval_ms" in err.lower(), f"stderr does not name the key: {err[-1000:]}"


def test_unreachable_object_store(strata_bin, tmp_path):
    secret = "s3cr3t-Value-Never-Logged"
    url = "s3://b?endpoint=http://127.0.0.1:1&region=us-east-1"
    r = run_strata(strata_bin, ["start", "--object-store", url, "--data-dir", str(tmp_path / "data"),
                                "--kafka-listen", f"127.0.0.1:{harness.free_port()}",
                                "--admin-listen", f"127.0.0.1:{harness.free_port()}"],
                   env={"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": secret}, timeout=180)
    err = r.stderr.decode(errors="replace")
    out = r.stdout.decode(errors="replace")
    assert r.returncode != 0, f"started against an unreachable object store; stderr: {err[-1000:]}"
    mention = [l for l in err.splitlines() if re.search(r"127\.0\.0\.1:1(?!\d)", l)]
    assert len(mention) == 1, f"expected one stderr line naming the endpoint, got {len(mention)}:\n{err[-2000:]}"
    assert secret not in err and secret not in out, "the secret key was printed"
    assert "panicked" not in err, err[-2000:]
