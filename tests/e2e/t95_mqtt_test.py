"""t95 mqtt: MQTT 3.1.1 and 5.0 over TCP on the shared storage path.

paho-mqtt (both protocol versions) and mosquitto_pub/mosquitto_sub against the broker:
QoS 0/1/2 both ways, wildcards and `$` topics, retained messages, wills, session takeover,
MQTT publishes read back over Kafka (also after a restart from object storage alone),
Kafka records delivered to MQTT subscribers, and bad input closing only its own connection."""

from __future__ import annotations

import queue
import shutil
import socket
import struct
import subprocess
import uuid

import pytest

import harness
import mqttwire
from mqttwire import mqtt_packets

paho = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.client import MQTTv5, MQTTv311  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402

WAIT = 30.0
VERSIONS = [pytest.param(MQTTv311, id="v311"), pytest.param(MQTTv5, id="v5")]

MAPPED_CONFIG = """
[mqtt]
packet_bytes_max = 4096

[[mqtt.kafka_mapping]]
filter = "sensors/#"
kafka_topic = "sensors"
"""


class Client:
    """A paho client whose received messages and disconnects land in queues."""

    def __init__(self, port: int, version, client_id: str | None = None, clean: bool = True, will=None,
                 keepalive: int = 30, connack_wait: float = WAIT):
        cid = client_id if client_id is not None else f"c-{uuid.uuid4().hex[:8]}"
        kw = {"clean_session": clean} if version == MQTTv311 else {}
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=cid, protocol=version, **kw)
        self.version = version
        self.messages: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.connacks: queue.Queue = queue.Queue()
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.c.on_connect = lambda c, u, flags, rc, props: self.connacks.put((flags, rc, props))
        if will:
            self.c.will_set(*will)
        kwargs = {"clean_start": clean} if version == MQTTv5 else {}
        self.c.connect("127.0.0.1", port, keepalive=keepalive, **kwargs)
        self.c.loop_start()
        try:
            flags, rc, props = self.connacks.get(timeout=connack_wait)
        except queue.Empty:
            self.c.loop_stop()
            raise
        self.connack = (flags, rc, props)

    def subscribe(self, *filters: tuple[str, int]):
        done: queue.Queue = queue.Queue()
        self.c.on_subscribe = lambda c, u, mid, rcs, props: done.put(rcs)
        self.c.subscribe(list(filters))
        return done.get(timeout=WAIT)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False, props=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        return info

    def take(self, n: int) -> list:
        return [self.messages.get(timeout=WAIT) for _ in range(n)]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def mqtt_match(filt: str, topic: str) -> bool:
    if topic.startswith("$") and filt[:1] in ("+", "#"):
        return False
    f, t = filt.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def raw_connect_v311(client_id: str, keepalive: int = 30, will: tuple[str, bytes] | None = None) -> bytes:
    def s(b: bytes) -> bytes:
        return struct.pack(">H", len(b)) + b

    flags = 0x02 | (0x04 | 0x08 if will else 0)  # clean session; will at QoS 1
    body = s(b"MQTT") + bytes([4, flags]) + struct.pack(">H", keepalive) + s(client_id.encode())
    if will:
        body += s(will[0].encode()) + s(will[1])
    return bytes([0x10, len(body)]) + body


def raw_session(port: int, packet: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(packet)
    ack = sock.recv(4)
    assert ack[:1] == b"\x20" and ack[3:4] == b"\x00", f"CONNACK expected, got {ack!r}"
    return sock


def wait_closed(sock: socket.socket) -> bytes:
    """Read until the broker closes the socket; returns what it sent first."""
    got = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return got
        got += chunk


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_pubsub_all_qos(broker, version):
    sub = Client(broker.mqtt_port, version)
    assert sub.subscribe(("q/#", 2)) is not None
    pub = Client(broker.mqtt_port, version)
    sent = []
    for qos in (0, 1, 2):
        for i in range(20):
            topic, payload = f"q/{qos}", f"{qos}-{i}".encode()
            pub.publish(topic, payload, qos).wait_for_publish(WAIT)
            sent.append((topic, payload, qos))
    got = sub.take(len(sent))
    # One topic is one partition, so per topic the order is the publish order.
    for qos in (0, 1, 2):
        assert [m.payload for m in got if m.topic == f"q/{qos}"] == \
               [p for t, p, q in sent if q == qos], f"qos {qos}"
    # Delivered at min(publish QoS, subscription QoS) = the publish QoS here.
    assert sorted({(m.topic, m.qos) for m in got}) == [("q/0", 0), ("q/1", 1), ("q/2", 2)]
    # A QoS 1 subscription caps the delivery QoS.
    sub1 = Client(broker.mqtt_port, version)
    sub1.subscribe(("q/2", 1))
    pub.publish("q/2", b"capped", 2).wait_for_publish(WAIT)
    (m,) = sub1.take(1)
    assert (m.payload, m.qos) == (b"capped", 1)
    for c in (sub, sub1, pub):
        c.close()


def test_v5_user_properties_and_assigned_client_id(broker):
    sub = Client(broker.mqtt_port, MQTTv5, client_id="")
    flags, rc, props = sub.connack
    assert rc == 0
    assigned = getattr(props, "AssignedClientIdentifier", None)
    assert assigned and assigned.startswith("strata-"), props
    sub.subscribe(("up/#", 1))
    pub = Client(broker.mqtt_port, MQTTv5)
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("unit", "C"), ("site", "lab-1")]
    pub.publish("up/t", b"21.5", 1, props=p).wait_for_publish(WAIT)
    (m,) = sub.take(1)
    assert m.payload == b"21.5"
    assert sorted(m.properties.UserProperty) == [("site", "lab-1"), ("unit", "C")]
    # 3.1.1: an empty client id needs a clean session (else CONNACK 2, identifier rejected).
    sock = socket.create_connection(("127.0.0.1", broker.mqtt_port), timeout=WAIT)
    body = struct.pack(">H", 4) + b"MQTT" + bytes([4, 0x00]) + struct.pack(">H", 30) + struct.pack(">H", 0)
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert wait_closed(sock) == b"\x20\x02\x00\x02"
    for c in (sub, pub):
        c.close()


def test_wildcards_and_dollar_topics(broker):
    filters = ["a/+/c", "a/#", "#", "+/b/+", "$SYS/#"]
    subs = {f: Client(broker.mqtt_port, MQTTv5) for f in filters}
    for f, c in subs.items():
        c.subscribe((f, 1))
    topics = ["a/b/c", "a/x/c", "a", "a/b", "a/b/c/d", "x/b/y", "$SYS/uptime", "$x/b/c", "b"]
    pub = Client(broker.mqtt_port, MQTTv311)
    for t in topics:
        pub.publish(t, t.encode(), 1).wait_for_publish(WAIT)
    # A sentinel every subscriber matches, published last: with the default topic's single
    # partition, delivery order is publish order, so once it arrives nothing else is due.
    for t in ("a/b/c", "$SYS/end"):
        pub.publish(t, b"end", 1).wait_for_publish(WAIT)
    for f, c in subs.items():
        want = [t for t in topics if mqtt_match(f, t)]
        got = []
        while True:
            m = c.messages.get(timeout=WAIT)
            if m.payload == b"end":
                break
            if not m.topic.startswith("$SYS/broker/"):  # the broker's own statistics (t99)
                got.append(m.topic)
        assert got == want, f"filter {f}"
    for c in list(subs.values()) + [pub]:
        c.close()


def test_retained_messages_and_clearing(broker):
    pub = Client(broker.mqtt_port, MQTTv5)
    pub.publish("r/1", b"one", 1, retain=True).wait_for_publish(WAIT)
    pub.publish("r/2", b"two", 1, retain=True).wait_for_publish(WAIT)
    sub = Client(broker.mqtt_port, MQTTv311)
    sub.subscribe(("r/#", 1))
    got = sorted((m.topic, m.payload, m.retain) for m in sub.take(2))
    assert got == [("r/1", b"one", True), ("r/2", b"two", True)]
    # A live delivery to an existing subscriber has RETAIN cleared.
    pub.publish("r/2", b"two-b", 1, retain=True).wait_for_publish(WAIT)
    (m,) = sub.take(1)
    assert (m.payload, m.retain) == (b"two-b", False)
    # An empty retained payload clears the topic's retained message.
    pub.publish("r/1", b"", 1, retain=True).wait_for_publish(WAIT)
    res = subprocess.run(["mosquitto_sub", "-p", str(broker.mqtt_port), "-h", "127.0.0.1", "-t", "r/#",
                          "-v", "-C", "1", "-W", "20", "-q", "1"], capture_output=True, timeout=40)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().splitlines() == ["r/2 two-b"]
    for c in (pub, sub):
        c.close()


def test_will_on_killed_socket_and_keep_alive(broker):
    sub = Client(broker.mqtt_port, MQTTv5)
    sub.subscribe(("w/#", 1))
    # Killed socket: no DISCONNECT, so the will is published.
    sock = raw_session(broker.mqtt_port, raw_connect_v311("dev-1", will=("w/dev-1", b"gone")))
    sock.close()
    (m,) = sub.take(1)
    assert (m.topic, m.payload) == ("w/dev-1", b"gone")
    # Keep alive 1 s and silence: the broker closes after 1.5 s and publishes the will.
    sock = raw_session(broker.mqtt_port, raw_connect_v311("dev-2", keepalive=1, will=("w/dev-2", b"silent")))
    assert wait_closed(sock) == b""
    (m,) = sub.take(1)
    assert (m.topic, m.payload) == ("w/dev-2", b"silent")
    # A clean DISCONNECT: no will. The next message is the sentinel.
    quiet = Client(broker.mqtt_port, MQTTv311, will=("w/quiet", b"no", 1))
    quiet.close()
    pub = Client(broker.mqtt_port, MQTTv311)
    pub.publish("w/sentinel", b"s", 1).wait_for_publish(WAIT)
    (m,) = sub.take(1)
    assert m.topic == "w/sentinel"
    for c in (sub, pub):
        c.close()


def test_session_takeover(broker):
    first = Client(broker.mqtt_port, MQTTv5, client_id="same")
    second = Client(broker.mqtt_port, MQTTv5, client_id="same")
    rc = first.disconnects.get(timeout=WAIT)
    assert int(rc.value if hasattr(rc, "value") else rc) == 0x8E, rc
    second.subscribe(("to/x", 1))
    second.publish("to/x", b"still here", 1).wait_for_publish(WAIT)
    (m,) = second.take(1)
    assert m.payload == b"still here"
    first.c.loop_stop()
    second.close()


def _mapped_broker(broker_factory, tmp_path):
    cfg = tmp_path / "mqtt.toml"
    cfg.write_text(MAPPED_CONFIG)
    return broker_factory(extra_args=["--config", str(cfg)],
                          env={"STRATA_TIERING_FLUSH_INTERVAL_MS": "200"})


def test_mapped_publish_read_over_kafka_and_after_restart(broker_factory, tmp_path):
    b = _mapped_broker(broker_factory, tmp_path)
    pub = Client(b.mqtt_port, MQTTv5)
    sent = []
    for i in range(30):
        topic = f"sensors/room{i % 3}/temp"
        p = Properties(PacketTypes.PUBLISH)
        p.UserProperty = [("seq", str(i))]
        pub.publish(topic, f"v{i}".encode(), 1 + i % 2, props=p).wait_for_publish(WAIT)
        sent.append((topic, f"v{i}".encode(), str(1 + i % 2), str(i)))
    # mosquitto_pub (3.1.1) into the same mapping, and one unmapped publish.
    for i in range(5):
        res = subprocess.run(["mosquitto_pub", "-p", str(b.mqtt_port), "-h", "127.0.0.1", "-q", "1",
                              "-t", "sensors/cli", "-m", f"cli{i}"], capture_output=True, timeout=30)
        assert res.returncode == 0, res.stderr
        sent.append(("sensors/cli", f"cli{i}".encode(), "1", None))
    pub.publish("elsewhere/x", b"default", 1).wait_for_publish(WAIT)
    pub.close()

    def read_back():
        parts = harness.consume(b.bootstrap, "sensors", 1)
        return [(r.key.decode(), r.value, dict(r.headers).get("mqtt.qos", b"").decode(),
                 (dict(r.headers).get("seq") or b"").decode() or None) for r in parts[0]]

    assert read_back() == sent
    other = harness.consume(b.bootstrap, "mqtt-messages", 1)[0]
    assert [(r.key, r.value) for r in other] == [(b"elsewhere/x", b"default")]
    # The record a timestamp lookup must find: the first of the second half whose timestamp
    # is above its predecessor's (publishes are acknowledged one at a time, so most are).
    records = harness.consume(b.bootstrap, "sensors", 1)[0]
    pivot = next(i for i in range(len(records) // 2, len(records))
                 if records[i].timestamp > records[i - 1].timestamp)

    b.wait_uploaded("sensors", total=len(sent), timeout=120)
    b.wait_uploaded("mqtt-messages", total=1, timeout=120)
    b.stop()
    for d in (b.wal_dir, b.cache_dir):
        shutil.rmtree(d, ignore_errors=True)
    b.start()
    assert read_back() == sent, "after a restart with the WAL gone, object storage serves the same records"
    # By timestamp, as an analytics job replays from a point in time: confluent-kafka's
    # offsets_for_times answered from the uploaded objects, then a read from there.
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer(harness.consumer_conf(b.bootstrap))
    try:
        [found] = c.offsets_for_times([TopicPartition("sensors", 0, records[pivot].timestamp)],
                                      timeout=30)
    finally:
        c.close()
    assert found.error is None and found.offset == records[pivot].offset, (found, pivot)
    tail = harness.consume(b.bootstrap, "sensors", 1, start=found.offset)[0]
    assert [(r.key.decode(), r.value) for r in tail] == [(t, v) for t, v, _, _ in sent[pivot:]]


def test_kafka_record_reaches_mqtt_subscriber(broker_factory, tmp_path):
    b = _mapped_broker(broker_factory, tmp_path)
    harness.create_topic(b.bootstrap, "sensors", 2)
    harness.wait_topic_metadata(b.bootstrap, "sensors", 2)
    sub = Client(b.mqtt_port, MQTTv5)
    sub.subscribe(("sensors/+/k", 1))
    recs = [harness.Rec(i % 2, f"sensors/{i}/k".encode(), f"from-kafka-{i}".encode(), (("trace", b"t%d" % i),))
            for i in range(6)]
    recs.append(harness.Rec(0, b"sensors/x/other", b"not subscribed"))
    recs.append(harness.Rec(1, None, b"no key: not for MQTT"))
    harness.produce(b.bootstrap, "sensors", recs)
    got = sorted((m.topic, m.payload, tuple(m.properties.UserProperty)) for m in sub.take(6))
    want = sorted((r.key.decode(), r.value, (("trace", r.headers[0][1].decode()),)) for r in recs[:6])
    assert got == want
    # The two records that match no subscription are not delivered: a last matching one is next.
    harness.produce(b.bootstrap, "sensors", [harness.Rec(0, b"sensors/last/k", b"last")])
    (m,) = sub.take(1)
    assert m.payload == b"last"
    sub.close()


def test_bad_input_closes_only_that_connection(broker_factory, tmp_path):
    b = _mapped_broker(broker_factory, tmp_path)  # packet_bytes_max = 4096
    bystander = Client(b.mqtt_port, MQTTv5)
    bystander.subscribe(("ok/#", 1))

    # Garbage instead of CONNECT: closed.
    sock = socket.create_connection(("127.0.0.1", b.mqtt_port), timeout=WAIT)
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert wait_closed(sock) == b""
    # A malformed packet after CONNECT (3.1.1): closed.
    sock = raw_session(b.mqtt_port, raw_connect_v311("bad-1"))
    sock.sendall(b"\x82\x02\x00\x01")  # SUBSCRIBE with a packet id and no filter
    assert wait_closed(sock) == b""
    # An invalid remaining length: closed.
    sock = raw_session(b.mqtt_port, raw_connect_v311("bad-2"))
    sock.sendall(b"\x30\xff\xff\xff\xff\x01")
    assert wait_closed(sock) == b""

    # Oversized PUBLISH, MQTT 5: DISCONNECT 0x95 (Packet too large), then closed.
    big = Client(b.mqtt_port, MQTTv5)
    big.publish("ok/big", b"x" * 5000, 1)
    rc = big.disconnects.get(timeout=WAIT)
    assert int(rc.value if hasattr(rc, "value") else rc) == 0x95, rc
    big.c.loop_stop()
    # Oversized PUBLISH, MQTT 3.1.1: closed.
    sock = raw_session(b.mqtt_port, raw_connect_v311("big-2"))
    body = struct.pack(">H", 5) + b"ok/xx" + b"y" * 5000
    rl = len(body)
    enc = bytes([(rl & 0x7F) | 0x80, rl >> 7])
    sock.sendall(b"\x30" + enc + body)
    assert wait_closed(sock) == b""

    # Nobody else noticed.
    pub = Client(b.mqtt_port, MQTTv311)
    pub.publish("ok/after", b"fine", 1).wait_for_publish(WAIT)
    (m,) = bystander.take(1)
    assert m.payload == b"fine"
    assert bystander.disconnects.empty()
    assert b.alive()
    for c in (bystander, pub):
        c.close()


def test_v5_receive_maximum_exceeded(broker):
    # CONNECT (MQTT 5, clean start, no properties); the broker announces Receive Maximum 256.
    def s(b: bytes) -> bytes:
        return struct.pack(">H", len(b)) + b

    body = s(b"MQTT") + bytes([5, 0x02]) + struct.pack(">H", 30) + b"\x00" + s(b"rm-1")
    sock = socket.create_connection(("127.0.0.1", broker.mqtt_port), timeout=WAIT)
    sock.sendall(bytes([0x10, len(body)]) + body)
    # 300 QoS 1 PUBLISHes in one write, never waiting for PUBACK: the 257th is one too many.
    pubs = b"".join(bytes([0x32, 6]) + s(b"r") + struct.pack(">H", i) + b"\x00" for i in range(1, 301))
    sock.sendall(pubs)
    packets = mqtt_packets(wait_closed(sock))
    assert packets[0][0] == 0x20 and packets[0][1][1] == 0, "CONNACK success first"
    disconnects = [body for first, body in packets if first == 0xE0]
    assert disconnects and disconnects[0][0] == 0x93, packets[-3:]
    # The broker goes on serving others.
    c = Client(broker.mqtt_port, MQTTv5)
    c.close()


def test_v5_shared_subscriptions_round_robin(broker):
    members = [Client(broker.mqtt_port, MQTTv5) for _ in range(3)]
    for m in members:
        rcs = m.subscribe(("$share/workers/jobs/#", 1))
        assert not rcs[0].is_failure, rcs
    plain = Client(broker.mqtt_port, MQTTv5)
    plain.subscribe(("jobs/#", 1))
    pub = Client(broker.mqtt_port, MQTTv311)
    for i in range(30):
        pub.publish("jobs/a", f"j{i}".encode(), 1).wait_for_publish(WAIT)
    got_plain = [m.payload for m in plain.take(30)]
    assert got_plain == [f"j{i}".encode() for i in range(30)], "an ordinary subscriber gets all"
    got = [sorted(int(m.payload[1:]) for m in c.take(10)) for c in members]
    # Round robin over one partition's order: member k gets every third message.
    assert sorted(got) == [list(range(k, 30, 3)) for k in range(3)], got
    # A member that unsubscribed gets no more; the other two share.
    done: queue.Queue = queue.Queue()
    members[0].c.on_unsubscribe = lambda c, u, mid, rcs, props: done.put(rcs)
    members[0].c.unsubscribe("$share/workers/jobs/#")
    done.get(timeout=WAIT)
    for i in range(4):
        pub.publish("jobs/b", f"k{i}".encode(), 1).wait_for_publish(WAIT)
    assert len(plain.take(4)) == 4
    got = sorted(m.payload for c in members[1:] for m in c.take(2))
    assert got == [b"k0", b"k1", b"k2", b"k3"]
    assert members[0].messages.empty()
    for c in members + [plain, pub]:
        c.close()


def test_v5_bad_shared_filters_are_refused(broker):
    def s(b: bytes) -> bytes:
        return struct.pack(">H", len(b)) + b

    body = s(b"MQTT") + bytes([5, 0x02]) + struct.pack(">H", 30) + b"\x00" + s(b"share-bad")
    sock = socket.create_connection(("127.0.0.1", broker.mqtt_port), timeout=WAIT)
    sock.sendall(bytes([0x10, len(body)]) + body)
    filters = [b"$share/g", b"$share/g+/x", b"$share//x", b"$share/g/a/#/b", b"$share/g/ok"]
    sub = struct.pack(">H", 7) + b"\x00" + b"".join(s(f) + b"\x01" for f in filters)
    sock.sendall(bytes([0x82, len(sub)]) + sub)
    got = b""
    while True:
        chunk = sock.recv(4096)
        assert chunk, f"closed before SUBACK; got {got!r}"
        got += chunk
        packets = mqtt_packets(got)
        subacks = [body for first, body in packets if first == 0x90]
        if subacks:
            break
    # SUBACK: packet id, properties length 0, one reason code per filter.
    assert list(subacks[0][3:]) == [0x8F, 0x8F, 0x8F, 0x8F, 0x01], subacks[0]
    sock.close()


def raw_v5(port: int, client_id: str, props: bytes = b"") -> socket.socket:
    """An MQTT 5 session over a raw socket (clean start), CONNACK read."""
    def s(b: bytes) -> bytes:
        return struct.pack(">H", len(b)) + b

    body = s(b"MQTT") + bytes([5, 0x02]) + struct.pack(">H", 30) + bytes([len(props)]) + props + s(client_id.encode())
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(bytes([0x10, len(body)]) + body)
    got = b""
    while not mqtt_packets(got):
        chunk = sock.recv(4096)
        assert chunk, "closed before CONNACK"
        got += chunk
    first, body = mqtt_packets(got)[0]
    assert first == 0x20 and body[1] == 0, body
    return sock


def raw_publish_v5(topic: bytes, payload: bytes, alias: int | None) -> bytes:
    props = b"" if alias is None else b"\x23" + struct.pack(">H", alias)
    body = struct.pack(">H", len(topic)) + topic + bytes([len(props)]) + props + payload
    return bytes([0x30, len(body)]) + body


def test_v5_topic_aliases_both_ways(broker):
    # Server → client: the subscriber allows 10 aliases; the second message on a topic carries
    # only the alias.
    sub = raw_v5(broker.mqtt_port, "alias-sub", props=b"\x22\x00\x0a")
    f = b"al/#"
    body = struct.pack(">H", 1) + b"\x00" + struct.pack(">H", len(f)) + f + b"\x00"
    sub.sendall(bytes([0x82, len(body)]) + body)
    # Client → server: paho sets alias 3 with the topic, then sends the alias alone.
    pub = Client(broker.mqtt_port, MQTTv5)
    p = Properties(PacketTypes.PUBLISH)
    p.TopicAlias = 3
    pub.publish("al/x", b"one", 1, props=p).wait_for_publish(WAIT)
    pub.publish("", b"two", 1, props=p).wait_for_publish(WAIT)
    paho_sub = Client(broker.mqtt_port, MQTTv5)  # paho resolves our aliases to names
    paho_sub.subscribe(("al/#", 0))
    pub.publish("", b"three", 1, props=p).wait_for_publish(WAIT)
    (m,) = paho_sub.take(1)
    assert (m.topic, m.payload) == ("al/x", b"three")

    got, publishes = b"", []
    while len(publishes) < 3:
        chunk = sub.recv(4096)
        assert chunk, "closed"
        got += chunk
        publishes = [b for first, b in mqtt_packets(got) if first & 0xF0 == 0x30]
    def parse(b: bytes):
        tl = struct.unpack(">H", b[:2])[0]
        topic, rest = b[2:2 + tl], b[2 + tl:]
        plen = rest[0]
        props, payload = rest[1:1 + plen], rest[1 + plen:]
        alias = struct.unpack(">H", props[props.index(0x23) + 1:][:2])[0] if 0x23 in props else None
        return topic, alias, payload
    assert [parse(b) for b in publishes] == [(b"al/x", 1, b"one"), (b"", 1, b"two"), (b"", 1, b"three")]
    sub.close()

    # Bad aliases: above our maximum (64) → DISCONNECT 0x94; unknown → 0x82 (protocol error).
    for client_id, packet, code in (("alias-big", raw_publish_v5(b"al/y", b"x", 100), 0x94),
                                    ("alias-unknown", raw_publish_v5(b"", b"x", 5), 0x82)):
        sock = raw_v5(broker.mqtt_port, client_id)
        sock.sendall(packet)
        packets = mqtt_packets(wait_closed(sock))
        assert [b[0] for first, b in packets if first == 0xE0] == [code], (client_id, packets)
    for c in (pub, paho_sub):
        c.close()


@pytest.mark.parametrize("clean", [pytest.param(True, id="ephemeral"), pytest.param(False, id="persistent")])
def test_v5_subscription_identifiers(broker, clean):
    sub = Client(broker.mqtt_port, MQTTv5)
    if not clean:  # a persistent session reads the log itself: same identifiers
        sub.close()
        sub = Client(broker.mqtt_port, MQTTv5, client_id=f"sid-{uuid.uuid4().hex[:6]}", clean=False)
    for filt, sid in (("sid/#", 7), ("sid/+", 9), ("sid/b", None)):
        props = Properties(PacketTypes.SUBSCRIBE)
        if sid is not None:
            props.SubscriptionIdentifier = sid
        done: queue.Queue = queue.Queue()
        sub.c.on_subscribe = lambda c, u, mid, rcs, p: done.put(rcs)
        sub.c.subscribe(filt, 1, properties=props)
        done.get(timeout=WAIT)
    pub = Client(broker.mqtt_port, MQTTv311)
    pub.publish("sid/a", b"a", 1).wait_for_publish(WAIT)
    pub.publish("sid/x/y", b"deep", 1).wait_for_publish(WAIT)
    a, deep = sub.take(2)
    assert sorted(a.properties.SubscriptionIdentifier) == [7, 9]
    assert deep.properties.SubscriptionIdentifier == [7]
    for c in (sub, pub):
        c.close()


def _refused_at_accept(port: int) -> bool:
    """True if a CONNECT on a new TCP connection gets the connection closed instead of a CONNACK."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        try:
            sock.sendall(mqttwire.connect_packet("over-the-limit", 4))
            return sock.recv(4) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True


def test_connections_max_closes_the_one_over_and_frees_its_slot(broker_factory):
    """`mqtt.connections_max = 2`: a third client is closed at accept (no CONNACK) while the two
    keep working; mosquitto_pub fails the same way; when one leaves, a new client gets in."""
    b = broker_factory(config={"mqtt": {"connections_max": 2}})
    sub = Client(b.mqtt_port, MQTTv5)
    pub = Client(b.mqtt_port, MQTTv311)
    assert sub.subscribe(("limit/#", 1)) is not None
    assert _refused_at_accept(b.mqtt_port)
    res = subprocess.run(["mosquitto_pub", "-p", str(b.mqtt_port), "-h", "127.0.0.1", "-q", "1",
                          "-t", "limit/cli", "-m", "refused"], capture_output=True, timeout=30)
    assert res.returncode != 0, res
    pub.publish("limit/x", b"still served", 1).wait_for_publish(WAIT)
    assert [m.payload for m in sub.take(1)] == [b"still served"]
    pub.close()

    def try_client():
        try:
            return Client(b.mqtt_port, MQTTv5, connack_wait=2)
        except queue.Empty:
            return None

    third = harness.eventually(try_client, 30, interval=0.3, what="a slot to free after a client disconnected")
    third.publish("limit/y", b"third", 1).wait_for_publish(WAIT)
    assert [m.payload for m in sub.take(1)] == [b"third"]
    for c in (sub, third):
        c.close()
