"""t98 mqtt sessions: persistent sessions that survive disconnects and kill -9.

A persistent session (3.1.1 clean_session=0, 5.0 clean start=0 with a Session Expiry Interval)
keeps its subscriptions and a cursor per partition; what was published while its client was
away is read back from the log on reconnect. The big test pushes 100,000 QoS 1 messages with
`mosquitto_pub -l` past an offline paho subscriber, kills the broker with SIGKILL in the middle
of publishing and again in the middle of the subscriber's catch-up, and checks the subscriber
against the partition as Kafka reads it: nothing acknowledged is lost, order is kept, and
duplicates only come from re-reading after a reconnect."""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading
import time
import uuid

import pytest

import harness
from mqttwire import PUBCOMP, PUBLISH, PUBREC, PUBREL, RawClient, ack_id_and_reason, parse_publish

paho = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.client import MQTTv5, MQTTv311  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

WAIT = 30.0
NEVER = 0xFFFFFFFF
VERSIONS = [pytest.param(MQTTv311, id="v311"), pytest.param(MQTTv5, id="v5")]

MAPPED_CONFIG = """
[[mqtt.kafka_mapping]]
filter = "sensors/#"
kafka_topic = "sensors"
"""


def mapped_broker(broker_factory, tmp_path, extra: str = "", **kw):
    cfg = tmp_path / f"mqtt-{uuid.uuid4().hex[:6]}.toml"
    cfg.write_text(extra + MAPPED_CONFIG)
    env = {"STRATA_TIERING_FLUSH_INTERVAL_MS": "200", **kw.pop("env", {})}
    return broker_factory(extra_args=["--config", str(cfg)], env=env, **kw)


class Sess:
    """A paho client with a chosen session: clean or not, and (MQTT 5) an expiry."""

    def __init__(self, port: int, version, client_id: str, clean: bool, expiry: int | None = None,
                 inflight: int = 100):
        kw = {"clean_session": clean} if version == MQTTv311 else {}
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version, **kw)
        self.c.max_inflight_messages_set(inflight)
        self.messages: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        connacks: queue.Queue = queue.Queue()
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.c.on_connect = lambda c, u, flags, rc, props: connacks.put((flags, rc, props))
        kwargs = {}
        if version == MQTTv5:
            kwargs["clean_start"] = clean
            if expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = expiry
                kwargs["properties"] = props
        self.c.connect("127.0.0.1", port, keepalive=60, **kwargs)
        self.c.loop_start()
        flags, rc, props = connacks.get(timeout=WAIT)
        assert not rc.is_failure, rc
        self.session_present = bool(flags.session_present)
        self.props = props

    def subscribe(self, filt: str, qos: int = 1):
        done: queue.Queue = queue.Queue()
        self.c.on_subscribe = lambda c, u, mid, rcs, props: done.put(rcs)
        self.c.subscribe(filt, qos)
        rcs = done.get(timeout=WAIT)
        assert not rcs[0].is_failure, rcs

    def take(self, n: int) -> list:
        return [self.messages.get(timeout=WAIT) for _ in range(n)]

    def nothing_more(self, sentinel_pub, topic: str):
        """Publishes a sentinel on `topic` and checks it is the next (and only) message."""
        sentinel_pub.publish(topic, b"sentinel", 1).wait_for_publish(WAIT)
        (m,) = self.take(1)
        assert m.payload == b"sentinel", m.payload

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()

    def drop(self):
        """Stops without DISCONNECT handling on our side (the broker may be gone)."""
        self.c.loop_stop()
        try:
            self.c.socket() and self.c.socket().close()
        except Exception:  # noqa: BLE001 - the socket may already be closed
            pass


def publisher(port: int) -> Sess:
    return Sess(port, MQTTv5, f"pub-{uuid.uuid4().hex[:6]}", clean=True)


def persistent(port: int, version, cid: str, clean: bool = False, expiry: int = NEVER) -> Sess:
    return Sess(port, version, cid, clean=clean, expiry=expiry if version == MQTTv5 else None)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_offline_messages_and_session_present_across_kill9(broker_factory, tmp_path, version):
    b = mapped_broker(broker_factory, tmp_path)
    cid = f"dev-{uuid.uuid4().hex[:6]}"
    s = persistent(b.mqtt_port, version, cid)
    assert not s.session_present, "a new session is not present"
    s.subscribe("sensors/+/t", 1)
    s.subscribe("other/#", 1)  # unmapped: stored in the default Kafka topic
    s.close()

    pub = publisher(b.mqtt_port)
    for i in range(10):
        pub.c.publish(f"sensors/{i % 2}/t", f"m{i}".encode(), 1).wait_for_publish(WAIT)
    pub.c.publish("other/x", b"unmapped", 1).wait_for_publish(WAIT)
    pub.c.publish("sensors/0/not-subscribed", b"no", 1).wait_for_publish(WAIT)
    pub.close()

    # Back while the broker still runs: present, and the missed messages in order per topic.
    s = persistent(b.mqtt_port, version, cid)
    assert s.session_present
    got = s.take(11)
    for t in ("sensors/0/t", "sensors/1/t"):
        want = [f"m{i}".encode() for i in range(10) if f"sensors/{i % 2}/t" == t]
        assert [m.payload for m in got if m.topic == t] == want, t
    assert [m.payload for m in got if m.topic == "other/x"] == [b"unmapped"]
    pub = publisher(b.mqtt_port)
    s.nothing_more(pub.c, "sensors/end/t")
    s.close()

    # Offline again; more messages; SIGKILL; the session and its backlog survive the restart.
    for i in range(5):
        pub.c.publish("sensors/k/t", f"k{i}".encode(), 1).wait_for_publish(WAIT)
    pub.close()
    b.kill9()
    b.start()
    s = persistent(b.mqtt_port, version, cid)
    assert s.session_present, "the session survived kill -9"
    # Cursors are persisted in batches: messages acknowledged just before the kill may come
    # again (never lost); the new ones follow in order.
    seen = {f"m{i}".encode() for i in range(10)} | {b"unmapped", b"sentinel"}
    got = []
    while len(got) < 5:
        m = s.messages.get(timeout=WAIT)
        if m.payload not in seen:
            got.append(m.payload)
    assert got == [f"k{i}".encode() for i in range(5)]
    pub = publisher(b.mqtt_port)
    s.nothing_more(pub.c, "other/last")
    s.close()

    # Clean start discards it: not present, and nothing published meanwhile arrives.
    pub.c.publish("sensors/z/t", b"lost on purpose", 1).wait_for_publish(WAIT)
    s = persistent(b.mqtt_port, version, cid, clean=True)
    assert not s.session_present
    s.subscribe("sensors/+/t", 1)
    s.nothing_more(pub.c, "sensors/after/t")
    s.close()
    pub.close()


@pytest.mark.parametrize("proto", ["mqttv311", "mqttv5"])
def test_mosquitto_sub_persistent_session(broker_factory, tmp_path, proto):
    """mosquitto_sub -c: subscribe and leave, miss 20 messages, come back for exactly them."""
    b = mapped_broker(broker_factory, tmp_path)
    cid = f"msub-{proto}"
    base = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(b.mqtt_port), "-i", cid, "-c", "-q", "1",
            "-t", "sensors/ms/#", "-V", proto]
    if proto == "mqttv5":
        base += ["-x", "3600"]  # a session expiry interval: persistent
    res = subprocess.run(base + ["-E"], capture_output=True, text=True, timeout=WAIT)
    assert res.returncode == 0, res.stderr
    pub = publisher(b.mqtt_port)
    for i in range(20):
        pub.c.publish(f"sensors/ms/{i % 2}", f"p{i}".encode(), 1).wait_for_publish(WAIT)
    pub.close()
    res = subprocess.run(base + ["-C", "20", "-v"], capture_output=True, text=True, timeout=WAIT)
    assert res.returncode == 0, res.stderr
    got = [line.split(" ", 1) for line in res.stdout.splitlines()]
    for t in ("sensors/ms/0", "sensors/ms/1"):
        assert [p for topic, p in got if topic == t] == [f"p{i}" for i in range(20) if f"sensors/ms/{i % 2}" == t]


def test_v5_message_expiry_in_the_offline_queue(broker_factory, tmp_path):
    b = mapped_broker(broker_factory, tmp_path)
    cid = f"mexp-{uuid.uuid4().hex[:6]}"
    s = persistent(b.mqtt_port, MQTTv5, cid)
    s.subscribe("sensors/exp/#", 1)
    s.close()
    pub = publisher(b.mqtt_port)
    for payload, expiry in ((b"short", 1), (b"long", 3600), (b"none", None)):
        props = Properties(PacketTypes.PUBLISH)
        if expiry is not None:
            props.MessageExpiryInterval = expiry
        pub.c.publish("sensors/exp/a", payload, 1, properties=props).wait_for_publish(WAIT)
    pub.close()
    # Expiry is wall-clock behaviour: wait past the 1 s message's lifetime.
    time.sleep(2.5)
    s = persistent(b.mqtt_port, MQTTv5, cid)
    assert s.session_present
    long_msg, none_msg = s.take(2)
    assert (long_msg.payload, none_msg.payload) == (b"long", b"none"), "the expired one is not sent"
    left = long_msg.properties.MessageExpiryInterval
    assert 3590 <= left <= 3600, f"the remaining lifetime is sent: {left}"
    assert not hasattr(none_msg.properties, "MessageExpiryInterval")
    pub = publisher(b.mqtt_port)
    s.nothing_more(pub.c, "sensors/exp/end")
    s.close()
    pub.close()


def test_v5_expiry_zero_is_not_persistent(broker_factory, tmp_path):
    b = mapped_broker(broker_factory, tmp_path)
    cid = f"eph-{uuid.uuid4().hex[:6]}"
    s = persistent(b.mqtt_port, MQTTv5, cid, expiry=0)
    s.subscribe("sensors/#", 1)
    s.close()
    pub = publisher(b.mqtt_port)
    pub.c.publish("sensors/a", b"while away", 1).wait_for_publish(WAIT)
    s = persistent(b.mqtt_port, MQTTv5, cid, expiry=0)
    assert not s.session_present, "expiry 0: the session ended with its connection"
    s.subscribe("sensors/#", 1)
    s.nothing_more(pub.c, "sensors/b")
    s.close()
    pub.close()


def test_session_expiry_and_cap(broker_factory, tmp_path):
    b = mapped_broker(broker_factory, tmp_path)
    short, forever = f"short-{uuid.uuid4().hex[:6]}", f"forever-{uuid.uuid4().hex[:6]}"
    for cid, expiry in ((short, 1), (forever, NEVER)):
        s = persistent(b.mqtt_port, MQTTv5, cid, expiry=expiry)
        assert s.props is None or getattr(s.props, "SessionExpiryInterval", expiry) == expiry
        s.subscribe("sensors/#", 1)
        s.close()
    # Expiry is wall-clock behaviour: no event to poll for without reconnecting (which would
    # renew the session), so wait past it. The router checks once a second.
    time.sleep(3.5)
    s = persistent(b.mqtt_port, MQTTv5, short, expiry=1)
    assert not s.session_present, "a 1 s session is gone after 3.5 s"
    s.close()
    s = persistent(b.mqtt_port, MQTTv5, forever, expiry=NEVER)
    assert s.session_present, "0xFFFFFFFF never expires"
    s.close()

    # mqtt.session_expiry_max_secs caps both versions; MQTT 5 is told the interval used.
    capped = mapped_broker(broker_factory, tmp_path, extra="[mqtt]\nsession_expiry_max_secs = 1\n")
    v5, v3 = f"c5-{uuid.uuid4().hex[:6]}", f"c3-{uuid.uuid4().hex[:6]}"
    s5 = persistent(capped.mqtt_port, MQTTv5, v5, expiry=3600)
    assert getattr(s5.props, "SessionExpiryInterval", None) == 1, s5.props
    s5.close()
    s3 = persistent(capped.mqtt_port, MQTTv311, v3)
    s3.close()
    time.sleep(3.5)
    for cid, version in ((v5, MQTTv5), (v3, MQTTv311)):
        s = persistent(capped.mqtt_port, version, cid, expiry=3600)
        assert not s.session_present, f"{cid}: capped at 1 s"
        s.close()


def test_persistent_takeover_keeps_subscriptions_and_backlog(broker_factory, tmp_path):
    b = mapped_broker(broker_factory, tmp_path)
    cid = f"take-{uuid.uuid4().hex[:6]}"
    first = persistent(b.mqtt_port, MQTTv5, cid)
    first.subscribe("sensors/to/#", 1)
    pub = publisher(b.mqtt_port)
    pub.c.publish("sensors/to/1", b"one", 1).wait_for_publish(WAIT)
    assert first.take(1)[0].payload == b"one"
    # paho acknowledges after its callback returned; until the broker has that PUBACK, a
    # takeover redelivers `one` (QoS 1 allows it), so wait for it before taking over.
    harness.eventually(lambda: b.metrics().sum("strata_mqtt_inflight_messages") == 0, WAIT,
                       what="the broker to receive the subscriber's PUBACK")
    second = persistent(b.mqtt_port, MQTTv5, cid)
    assert second.session_present, "taking over a live persistent session: present"
    rc = first.disconnects.get(timeout=WAIT)
    assert int(getattr(rc, "value", rc)) == 0x8E, rc
    first.c.loop_stop()
    pub.c.publish("sensors/to/2", b"two", 1).wait_for_publish(WAIT)
    (m,) = second.take(1)
    assert m.payload == b"two", "the subscription moved with the session; `one` was acknowledged"
    second.close()
    pub.close()


def test_bad_session_config_is_refused(broker_factory, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[mqtt]\nsession_expiry_max_secs = 0\n")
    b = broker_factory(start=False, extra_args=["--config", str(cfg)])
    with pytest.raises(harness.BrokerDied):
        b.start(timeout=30)
    assert b.proc.returncode == 2
    assert "mqtt.session_expiry_max_secs" in b.stderr_tail(20)


# ---------------------------------------------------------------------------------------------
# 100,000 messages past an offline subscriber, with two SIGKILLs.

TOTAL = 100_000
TOPIC = "sensors/bulk/x"


def run_mosquitto_pub(port: int, cid: str, lines: list[str], kill_after: int | None, broker) -> int:
    """Publishes `lines` at QoS 1 with `mosquitto_pub -l`; returns how many PUBACKs it got
    (counted from its debug output; the broker acknowledges in publish order). With
    `kill_after`, SIGKILLs the broker once that many were acknowledged, then stops
    mosquitto_pub. stdin stays open until every PUBACK is in: mosquitto_pub disconnects at
    EOF without waiting for the messages in flight."""
    # Line-buffered output (else the last PUBACK lines sit in its stdio buffer).
    unbuffer = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
    proc = subprocess.Popen(
        unbuffer + ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-i", cid, "-q", "1", "-t", TOPIC,
         "-l", "-d", "-M", "100", "-V", "mqttv311"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: queue.Queue = queue.Queue()

    def feed():
        try:
            proc.stdin.write("\n".join(lines) + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # mosquitto_pub exited when the broker was killed

    def read():
        for line in proc.stdout:
            out.put(line)
        out.put(None)

    threading.Thread(target=feed, daemon=True).start()
    threading.Thread(target=read, daemon=True).start()
    acked = 0
    killed = False
    last: list[str] = []
    try:
        while acked < len(lines):
            try:
                line = out.get(timeout=5 if killed else 60)
            except queue.Empty:
                break  # killed: no more PUBACKs can come
            if line is None:
                break
            last = (last + [line.strip()])[-4:]
            if "received PUBACK" in line:
                acked += 1
                if kill_after is not None and not killed and acked >= kill_after:
                    broker.kill9()
                    killed = True
    finally:
        try:
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()  # it may be retrying the dead broker
            proc.wait(WAIT)
    if kill_after is not None:
        assert killed, f"only {acked} PUBACKs before mosquitto_pub ended"
    else:
        assert acked == len(lines), f"{acked} of {len(lines)} acknowledged; mosquitto_pub's last lines: {last}"
    return acked


def test_100k_offline_subscriber_survives_kill9(broker_factory, tmp_path):
    b = mapped_broker(broker_factory, tmp_path)
    cid = "bulk-sub"
    s = persistent(b.mqtt_port, MQTTv5, cid)
    s.subscribe("sensors/bulk/#", 1)
    s.close()

    # Phase A: publish until half is acknowledged, then SIGKILL the broker.
    lines_a = [f"A{i}" for i in range(TOTAL)]
    acked_a = run_mosquitto_pub(b.mqtt_port, "pub-a", lines_a, TOTAL // 2, b)
    assert TOTAL // 2 <= acked_a < TOTAL
    b.start()
    # Phase B: the rest, from the first unacknowledged one (it may be stored already: the log
    # then holds it twice, as A and as B).
    lines_b = [f"B{i}" for i in range(acked_a, TOTAL)]
    acked_b = run_mosquitto_pub(b.mqtt_port, "pub-b", lines_b, None, b)
    assert acked_b == len(lines_b)

    # The truth: the partition as a Kafka consumer reads it.
    log = [r.value.decode() for r in harness.consume(b.bootstrap, "sensors", 1)[0] if r.key == TOPIC.encode()]
    seqs = [int(v[1:]) for v in log]
    assert set(seqs) == set(range(TOTAL)), "every acknowledged message is stored"
    assert seqs[:acked_a] == list(range(acked_a)), "phase A in publish order"
    assert log[-len(lines_b):] == lines_b, "phase B in publish order"
    position = {v: i for i, v in enumerate(log)}
    assert len(position) == len(log)

    # The subscriber comes back and catches up; SIGKILL the broker again halfway.
    runs: list[list[str]] = []
    dups: list[list[bool]] = []
    for attempt in range(2):
        s = persistent(b.mqtt_port, MQTTv5, cid)
        assert s.session_present, f"attempt {attempt}: the session survived"
        run: list[str] = []
        runs.append(run)
        dup: list[bool] = []
        dups.append(dup)
        stop_at = len(log) // 2 if attempt == 0 else None
        while True:
            want_last = run and position[run[-1]] == len(log) - 1
            if want_last or (stop_at is not None and len(run) >= stop_at):
                break
            m = s.messages.get(timeout=60)
            run.append(m.payload.decode())
            dup.append(bool(m.dup))
        if attempt == 0:
            b.kill9()
            s.drop()
            b.start()
        else:
            s.close()

    # Each connection got a contiguous run of the log, in order; the second started at or
    # before where the first stopped (no gap), and ended at the end of the log.
    starts = []
    for i, run in enumerate(runs):
        start = position[run[0]]
        assert run == log[start:start + len(run)], f"connection {i}: not a contiguous run of the log"
        starts.append(start)
    assert starts[0] == 0
    first_end = starts[0] + len(runs[0])
    assert starts[1] <= first_end, f"gap: second connection started at {starts[1]}, first ended at {first_end}"
    assert starts[1] + len(runs[1]) == len(log)
    redelivered = first_end - starts[1]
    flagged = dups[1].count(True)
    print(f"\n100k: acked A={acked_a} B={acked_b}, stored={len(log)}, redelivered after kill={redelivered}, "
          f"DUP-flagged={flagged}")
    # Nothing had been sent to the subscriber before its first connection: no DUP there. After the
    # kill, the broker re-sends what it had persisted as sent (with DUP) before anything new: the
    # flagged messages are a leading block. (They may exceed `redelivered`: a message the broker
    # sent but the client had not handed to the test before the kill is a re-send too.)
    assert not any(dups[0]), "DUP on a first delivery"
    assert dups[1] == [True] * flagged + [False] * (len(dups[1]) - flagged), "DUP after a first delivery"


# --- QoS 2 exchanges that outlive a connection ---------------------------------------------------


def stored_copies(b, payload: bytes) -> int:
    """How many records of the default MQTT topic (`mqtt-messages`) carry `payload`."""
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(topic="mqtt-messages", timeout=10)
    parts = len(md.topics["mqtt-messages"].partitions)
    recs = harness.consume(b.bootstrap, "mqtt-messages", parts)
    return sum(1 for rs in recs.values() for r in rs if r.value == payload)


RESTARTS = [pytest.param(False, id="reconnect"), pytest.param(True, id="restart")]


@pytest.mark.parametrize("restart", RESTARTS)
@pytest.mark.parametrize("version", VERSIONS)
def test_qos2_publish_is_stored_once_across_reconnect(broker, version, restart):
    """A QoS 2 PUBLISH answered with PUBREC whose connection breaks before the client saw the
    PUBREC: the client sends it again with DUP on its resumed session (MQTT 5 §4.3.3), and it is
    not stored twice; its PUBREL then finds the packet id (PUBCOMP success, not 0x92)."""
    v5 = version == MQTTv5
    cid = f"q2in-{uuid.uuid4().hex[:6]}"
    payload = f"exactly-once-{uuid.uuid4().hex}".encode()
    c = RawClient(broker.mqtt_port, cid, v5=v5, clean=False)
    c.publish("q2/in", payload, qos=2, packet_id=7)
    assert ack_id_and_reason(c.expect(PUBREC)) == (7, 0)
    c.drop()
    if restart:
        broker.stop()  # SIGTERM: the session log has the session's last state
        broker.start()
    c = harness.eventually(lambda: RawClient(broker.mqtt_port, cid, v5=v5, clean=False), WAIT,
                           what="reconnect (the broker has seen the old connection go)")
    assert c.session_present
    c.publish("q2/in", payload, qos=2, packet_id=7, dup=True)
    assert ack_id_and_reason(c.expect(PUBREC)) == (7, 0)
    c.ack(PUBREL, 7)
    assert ack_id_and_reason(c.expect(PUBCOMP)) == (7, 0), "PUBREL found its packet id"
    # The id is free again: a new message may use it.
    c.publish("q2/in", payload + b"-2", qos=2, packet_id=7)
    assert ack_id_and_reason(c.expect(PUBREC)) == (7, 0)
    c.ack(PUBREL, 7)
    assert ack_id_and_reason(c.expect(PUBCOMP)) == (7, 0)
    c.drop()
    assert stored_copies(broker, payload) == 1
    assert stored_copies(broker, payload + b"-2") == 1


def test_qos2_delivery_refused_with_pubrec_ends_there(broker):
    """MQTT 5: a subscriber that answers PUBREC with a failure reason (0x80) turns the
    message down: the exchange ends there — no PUBREL, its slot in the Receive Maximum window
    is free for the next message, and a resumed session does not send it again."""
    cid = f"q2refuse-{uuid.uuid4().hex[:6]}"
    topic = f"q2/refuse/{uuid.uuid4().hex[:6]}"
    s = RawClient(broker.mqtt_port, cid, v5=True, clean=False, receive_max=1)
    s.subscribe(topic, 2)
    pub = publisher(broker.mqtt_port)
    for payload in (b"one", b"two"):
        pub.c.publish(topic, payload, 2).wait_for_publish(WAIT)
    one = parse_publish(*s.next(), True)
    assert one[4] == b"one"
    s.ack(PUBREC, one[2], reason=0x80)
    first, body = s.next()
    assert first & 0xF0 == PUBLISH, f"the next message, not a PUBREL: {first:#x} {body!r}"
    two = parse_publish(first, body, True)
    assert two[4] == b"two"
    s.ack(PUBREC, two[2])
    assert ack_id_and_reason(s.expect(PUBREL)) == (two[2], 0)
    s.ack(PUBCOMP, two[2])
    # The PUBCOMP must be read before the break: a new connection can take the session over
    # before the old one reads its last bytes, and then the PUBREL is rightly sent again.
    s.ping()
    s.drop()
    s = harness.eventually(lambda: RawClient(broker.mqtt_port, cid, v5=True, clean=False), WAIT,
                           what="reconnect")
    assert s.session_present
    pub.c.publish(topic, b"three", 2).wait_for_publish(WAIT)
    first, body = s.next()
    assert first & 0xF0 == PUBLISH and parse_publish(first, body, True)[4] == b"three", (first, body)
    s.drop()
    pub.close()


@pytest.mark.parametrize("restart", RESTARTS)
@pytest.mark.parametrize("version", VERSIONS)
def test_qos2_delivery_released_before_a_break_is_not_sent_again(broker, version, restart):
    """A QoS 2 delivery the subscriber answered with PUBREC is the subscriber's: after its
    connection breaks before PUBCOMP, the resumed session sends the PUBREL again (MQTT 5
    §4.4), never the PUBLISH; a delivery without PUBREC is sent again with DUP."""
    v5 = version == MQTTv5
    cid = f"q2out-{uuid.uuid4().hex[:6]}"
    topic = f"q2/out/{uuid.uuid4().hex[:6]}"
    s = RawClient(broker.mqtt_port, cid, v5=v5, clean=False)
    s.subscribe(topic, 2)
    pub = publisher(broker.mqtt_port)
    pub.c.publish(topic, b"released", 2).wait_for_publish(WAIT)
    pub.c.publish(topic, b"unanswered", 2).wait_for_publish(WAIT)
    got = [parse_publish(*s.next(), v5) for _ in range(2)]
    assert [(g[1], g[4]) for g in got] == [(2, b"released"), (2, b"unanswered")]
    released_id = got[0][2]
    s.ack(PUBREC, released_id)
    assert ack_id_and_reason(s.expect(PUBREL)) == (released_id, 0)
    s.drop()  # no PUBCOMP, no PUBREC for the second
    if restart:
        pub.close()
        broker.stop()
        broker.start()
        pub = publisher(broker.mqtt_port)
    s = harness.eventually(lambda: RawClient(broker.mqtt_port, cid, v5=v5, clean=False), WAIT,
                           what="reconnect")
    assert s.session_present
    first, body = s.next()
    assert first & 0xF0 == PUBREL, f"PUBREL first, got {first:#x} {body!r}"
    assert ack_id_and_reason(body)[0] == released_id
    s.ack(PUBCOMP, released_id)
    pub.c.publish(topic, b"after", 2).wait_for_publish(WAIT)
    again, open_ids = [], set()
    while not again or again[-1][4] != b"after" or open_ids:
        first, body = s.next()
        if first & 0xF0 == PUBREL:
            pid = ack_id_and_reason(body)[0]
            assert pid in open_ids, f"PUBREL {pid} for no PUBREC of ours"
            open_ids.discard(pid)
            s.ack(PUBCOMP, pid)
            continue
        assert first & 0xF0 == PUBLISH, f"only PUBLISH and PUBREL now, got {first:#x} {body!r}"
        p = parse_publish(first, body, v5)
        again.append(p)
        open_ids.add(p[2])
        s.ack(PUBREC, p[2])
    assert [(p[3], p[4]) for p in again] == [(True, b"unanswered"), (False, b"after")], \
        "the released message is not sent again; the unanswered one is, with DUP"
    s.drop()
    pub.close()
