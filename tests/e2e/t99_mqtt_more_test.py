"""t99 mqtt more: the WebSocket and TLS listeners, durable retained messages, and MQTT 5 extras.

paho-mqtt over WebSocket and TLS (a CA made here with `cryptography`), mosquitto_pub/sub over
TLS, mqtt.js over TCP, TLS and WebSocket; retained messages (and their clearing) across a restart;
No Local, Retain Handling 2 / Retain As Published, Will Delay both ways, Server Keep Alive,
Response Topic / Correlation Data / user properties passed through, `$SYS` statistics, and a
SIGTERM → restart without redelivery. Bad input (a WebSocket upgrade without the `mqtt`
subprotocol, a text frame, a TLS handshake of garbage) closes only its own connection."""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import socket
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

import harness
from certs import make_certs

paho = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.client import MQTTv5, MQTTv311  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

WAIT = 30.0
E2E = Path(__file__).resolve().parent


# --- helpers -----------------------------------------------------------------------------------


class Client:
    """A paho client over tcp / websockets / tls whose messages and disconnects land in queues."""

    def __init__(self, port: int, version=MQTTv5, client_id: str | None = None, clean: bool = True,
                 transport: str = "tcp", ca: Path | None = None, keepalive: int = 30,
                 will: tuple | None = None, will_props=None, session_expiry: int | None = None):
        cid = client_id if client_id is not None else f"c-{uuid.uuid4().hex[:8]}"
        kw = {"clean_session": clean} if version == MQTTv311 else {}
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=cid, protocol=version,
                             transport=transport, **kw)
        self.client_id = cid
        if transport == "websockets":
            self.c.ws_set_options(path="/mqtt")
        if ca is not None:
            self.c.tls_set(ca_certs=str(ca))
        self.messages: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.connacks: queue.Queue = queue.Queue()
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.c.on_connect = lambda c, u, flags, rc, props: self.connacks.put((flags, rc, props))
        if will:
            self.c.will_set(*will, properties=will_props)
        kwargs = {}
        if version == MQTTv5:
            kwargs["clean_start"] = clean
            if session_expiry is not None:
                p = Properties(PacketTypes.CONNECT)
                p.SessionExpiryInterval = session_expiry
                kwargs["properties"] = p
        self.c.connect("127.0.0.1", port, keepalive=keepalive, **kwargs)
        self.c.loop_start()
        flags, rc, props = self.connacks.get(timeout=WAIT)
        assert not rc.is_failure, f"CONNACK {rc}"
        self.connack = (flags, rc, props)

    def subscribe(self, *filters):
        done: queue.Queue = queue.Queue()
        self.c.on_subscribe = lambda c, u, mid, rcs, props: done.put(rcs)
        self.c.subscribe(list(filters))
        return done.get(timeout=WAIT)

    def publish(self, topic, payload, qos=1, retain=False, props=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(WAIT)
        return info

    def take(self, n: int) -> list:
        return [self.messages.get(timeout=WAIT) for _ in range(n)]

    def none_within(self, marker_topic: str) -> list:
        """Messages received before the marker (published by the caller after the others)."""
        out = []
        while True:
            m = self.messages.get(timeout=WAIT)
            if m.topic == marker_topic:
                return out
            out.append(m)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()

    def drop(self):
        """Ends the connection without DISCONNECT (the will goes out)."""
        self.c.loop_stop()
        self.c.socket().close()


def ws_handshake(port: int, protocol: str | None, path: str = "/mqtt") -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n")
    if protocol:
        req += f"Sec-WebSocket-Protocol: {protocol}\r\n"
    sock.sendall((req + "\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_all(sock: socket.socket) -> bytes:
    got = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


@pytest.fixture
def ports():
    return {"ws": harness.free_port(), "tls": harness.free_port()}


@pytest.fixture
def certs(tmp_path):
    return make_certs(tmp_path / "certs")


@pytest.fixture
def node(broker_factory, ports, certs):
    _, cert, key = certs
    return broker_factory(config={"mqtt": {
        "ws_listen": f"127.0.0.1:{ports['ws']}",
        "tls_listen": f"127.0.0.1:{ports['tls']}",
        "tls_cert_file": str(cert),
        "tls_key_file": str(key),
        "keep_alive_max_secs": 20,
        "sys_interval_secs": 1,
    }})


def roundtrip(sub: Client, pub: Client, prefix: str, n: int = 20):
    assert sub.subscribe((f"{prefix}/#", 1)) is not None
    for i in range(n):
        pub.publish(f"{prefix}/x", f"m{i}".encode(), qos=1)
    got = sub.take(n)
    assert [m.payload for m in got] == [f"m{i}".encode() for i in range(n)]
    assert {m.qos for m in got} == {1}


# --- listeners ---------------------------------------------------------------------------------


def test_startup_prints_listeners(node, ports):
    # The lines may still be on their way through the pipe when the node already serves.
    lines = [f"mqtt websocket listening on 127.0.0.1:{ports['ws']}",
             f"mqtt tls listening on 127.0.0.1:{ports['tls']}"]
    harness.eventually(lambda: all(line in node.stdout_text() for line in lines), 15,
                       what="the listener lines on stdout")


@pytest.mark.parametrize("version", [MQTTv311, MQTTv5], ids=["v311", "v5"])
def test_websocket_pubsub_and_retained(node, ports, version):
    prefix = f"ws/{uuid.uuid4().hex[:6]}"
    pub = Client(ports["ws"], version, transport="websockets")
    pub.publish(f"{prefix}/kept", b"r1", qos=1, retain=True)
    sub = Client(ports["ws"], version, transport="websockets")
    # A TCP client and a WebSocket client see the same topics.
    tcp = Client(node.mqtt_port, version)
    assert tcp.subscribe((f"{prefix}/#", 1)) is not None
    assert sub.subscribe((f"{prefix}/#", 1)) is not None
    kept = sub.take(1)[0]
    assert (kept.topic, kept.payload, kept.retain) == (f"{prefix}/kept", b"r1", True)
    assert tcp.take(1)[0].payload == b"r1"
    for i in range(50):
        pub.publish(f"{prefix}/x", f"m{i}".encode(), qos=1)
    want = [f"m{i}".encode() for i in range(50)]
    assert [m.payload for m in sub.take(50)] == want
    assert [m.payload for m in tcp.take(50)] == want
    # A payload larger than one WebSocket read (frames and packets do not line up).
    big = os.urandom(200_000)
    pub.publish(f"{prefix}/big", big, qos=1)
    assert sub.take(1)[0].payload == big
    for c in (pub, sub, tcp):
        c.close()


def test_websocket_bad_upgrades_and_text_frame(node, ports):
    prefix = f"wsbad/{uuid.uuid4().hex[:6]}"
    bystander = Client(ports["ws"], MQTTv5, transport="websockets")
    assert bystander.subscribe((f"{prefix}/#", 1)) is not None
    # No `mqtt` subprotocol: an HTTP error reply naming it, and the socket closes.
    sock, head = ws_handshake(ports["ws"], None)
    assert head.startswith(b"HTTP/1.1 400"), head
    assert b"mqtt" in read_all(sock) + head
    sock.close()
    # Another path: 404.
    sock, head = ws_handshake(ports["ws"], "mqtt", path="/other")
    assert head.startswith(b"HTTP/1.1 404"), head
    sock.close()
    # The subprotocol offered among others is chosen.
    sock, head = ws_handshake(ports["ws"], "mqttv3.1, mqtt")
    assert head.startswith(b"HTTP/1.1 101"), head
    assert b"sec-websocket-protocol: mqtt" in head.lower()
    # A text frame: a Close frame with 1003 (unsupported data), then the socket closes.
    sock.sendall(ws_frame(0x1, b"hello"))
    rest = read_all(sock)
    assert rest[:1] == b"\x88", rest  # FIN + Close
    assert struct.unpack(">H", rest[2:4])[0] == 1003
    sock.close()
    # The other client was not disturbed.
    pub = Client(node.mqtt_port, MQTTv5)
    pub.publish(f"{prefix}/ok", b"still here")
    assert bystander.take(1)[0].payload == b"still here"
    pub.close()
    bystander.close()


@pytest.mark.parametrize("version", [MQTTv311, MQTTv5], ids=["v311", "v5"])
def test_tls_paho(node, ports, certs, version):
    ca = certs[0]
    prefix = f"tls/{uuid.uuid4().hex[:6]}"
    sub = Client(ports["tls"], version, ca=ca)
    pub = Client(ports["tls"], version, ca=ca)
    roundtrip(sub, pub, prefix)
    sub.close()
    pub.close()


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto clients not installed")
def test_tls_mosquitto_clients(node, ports, certs):
    ca = certs[0]
    topic = f"mtls/{uuid.uuid4().hex[:6]}"

    def mpub(msg: str, *extra: str):
        r = subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(ports["tls"]), "--cafile", str(ca),
             "-t", topic, "-q", "1", "-m", msg, *extra], capture_output=True, timeout=WAIT)
        assert r.returncode == 0, r.stderr

    mpub("hello-0", "-r")  # retained: the subscriber gets it once subscribed
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(ports["tls"]), "--cafile", str(ca),
         "-t", topic, "-q", "1", "-C", "5", "-W", "30", "-V", "mqttv5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert sub.stdout.readline().decode().strip() == "hello-0"
    for i in range(1, 5):
        mpub(f"hello-{i}")
    out, err = sub.communicate(timeout=WAIT)
    assert out.decode().split() == [f"hello-{i}" for i in range(1, 5)], (out, err)
    assert sub.returncode == 0
    # A wrong CA fails the handshake.
    other_ca = make_certs(Path(str(ca.parent) + "-other"))[0]
    r = subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(ports["tls"]), "--cafile", str(other_ca),
         "-t", topic, "-m", "x"], capture_output=True, timeout=WAIT)
    assert r.returncode != 0


def test_tls_garbage_closes_only_its_connection(node, ports, certs):
    prefix = f"tlsbad/{uuid.uuid4().hex[:6]}"
    bystander = Client(ports["tls"], MQTTv5, ca=certs[0])
    assert bystander.subscribe((f"{prefix}/#", 1)) is not None
    sock = socket.create_connection(("127.0.0.1", ports["tls"]), timeout=WAIT)
    sock.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x1e" + os.urandom(64))  # plain MQTT
    got = read_all(sock)
    assert b"MQTT" not in got  # at most a TLS alert, never an MQTT answer
    sock.close()
    # Plain text on the TLS port from paho fails; TLS still serves.
    with pytest.raises(Exception):
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=MQTTv5)
        c.connect("127.0.0.1", ports["tls"], keepalive=5)
        c.loop_start()
        ok = queue.Queue()
        c.on_connect = lambda *a: ok.put(1)
        ok.get(timeout=3)
    pub = Client(ports["tls"], MQTTv5, ca=certs[0])
    pub.publish(f"{prefix}/ok", b"fine")
    assert bystander.take(1)[0].payload == b"fine"
    pub.close()
    bystander.close()


def test_bad_listener_config_is_a_clear_error(broker_factory, tmp_path):
    b = broker_factory(start=False, config={"mqtt": {"tls_cert_file": str(tmp_path / "none.pem")}})
    with pytest.raises(harness.BrokerDied) as e:
        b.start(timeout=30)
    assert "mqtt.tls_key_file" in str(e.value)
    c = broker_factory(start=False, config={"mqtt": {
        "tls_cert_file": str(tmp_path / "none.pem"), "tls_key_file": str(tmp_path / "none.key")}})
    with pytest.raises(harness.BrokerDied) as e:
        c.start(timeout=30)
    assert "mqtt.tls_cert_file" in str(e.value)
    d = broker_factory(start=False, config={"mqtt": {"ws_listen": "not-an-address"}})
    with pytest.raises(harness.BrokerDied) as e:
        d.start(timeout=30)
    assert "mqtt.ws_listen" in str(e.value)


# --- mqtt.js -----------------------------------------------------------------------------------


def _node_ok():
    return shutil.which("node") and (E2E / "node_modules" / "mqtt").is_dir()


@pytest.mark.skipif(not _node_ok(), reason="node or the mqtt npm package missing (npm ci in tests/e2e)")
@pytest.mark.parametrize("scheme", ["mqtt", "mqtts", "ws"])
@pytest.mark.parametrize("version", [4, 5])
def test_mqttjs(node, ports, certs, scheme, version):
    url = {
        "mqtt": f"mqtt://127.0.0.1:{node.mqtt_port}",
        # TLS: mqtt.js verifies the broker's certificate against the CA made for this test.
        "mqtts": f"mqtts://127.0.0.1:{ports['tls']}",
        "ws": f"ws://127.0.0.1:{ports['ws']}/mqtt",
    }[scheme]
    prefix = f"js/{scheme}{version}/{uuid.uuid4().hex[:6]}"
    ca, _, _ = certs
    r = subprocess.run(["node", str(E2E / "tools" / "mqttjs_check.js"), url, str(version), prefix,
                        str(ca)],
                       capture_output=True, timeout=60, cwd=E2E)
    assert r.returncode == 0, r.stderr.decode()
    got = json.loads(r.stdout.decode().strip().splitlines()[-1])
    kept = [g for g in got if g["topic"] == f"{prefix}/retained"]
    data = [g for g in got if g["topic"] == f"{prefix}/data"]
    assert len(kept) == 1 and kept[0]["payload"] == "kept" and kept[0]["retain"] is True
    assert [d["payload"] for d in data] == [f"m{i}" for i in range(10)]
    assert all(d["qos"] == 1 and d["retain"] is False for d in data)
    if version == 5:
        assert all(d["user"] == {"unit": "C"} for d in data), data[0]
        assert all(d["response_topic"] == f"{prefix}/reply" for d in data)
        assert all(d["correlation"] == "010203" for d in data)


# --- retained across restarts ------------------------------------------------------------------


def test_retained_survives_restart_and_clear_too(broker):
    pub = Client(broker.mqtt_port, MQTTv5)
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = ("k", "v")
    pub.publish("ret/a", b"alpha", qos=1, retain=True, props=p)
    pub.publish("ret/b", b"beta", qos=1, retain=True)
    pub.publish("ret/c", b"gamma", qos=1, retain=True)
    pub.publish("ret/c", b"", qos=1, retain=True)  # cleared
    pub.publish("ret/b", b"beta2", qos=1, retain=True)  # replaced
    pub.close()
    broker.kill9()  # PUBACK came after the retained log was durable
    broker.start()
    sub = Client(broker.mqtt_port, MQTTv5)
    sub.subscribe(("ret/#", 1))
    got = {m.topic: m for m in sub.take(2)}
    assert {t: m.payload for t, m in got.items()} == {"ret/a": b"alpha", "ret/b": b"beta2"}
    assert all(m.retain for m in got.values())
    assert got["ret/a"].properties.UserProperty == [("k", "v")]
    pub = Client(broker.mqtt_port, MQTTv5)
    pub.publish("ret/end", b"marker")
    assert sub.none_within("ret/end") == []  # nothing for ret/c
    pub.publish("ret/a", b"", qos=1, retain=True)
    pub.close()
    sub.close()
    broker.stop()
    broker.start()
    sub = Client(broker.mqtt_port, MQTTv5)
    sub.subscribe(("ret/#", 1))
    assert [m.payload for m in sub.take(1)] == [b"beta2"]
    sub.close()


# --- MQTT 5 subscription options ---------------------------------------------------------------


def test_no_local(broker):
    me = Client(broker.mqtt_port, MQTTv5)
    other = Client(broker.mqtt_port, MQTTv5)
    o = paho.SubscribeOptions(qos=1, noLocal=True)
    me.subscribe(("nl/#", o))
    other.subscribe(("nl/#", paho.SubscribeOptions(qos=1)))
    me.publish("nl/mine", b"own")
    other.publish("nl/theirs", b"other")
    got = me.take(1)[0]
    assert (got.topic, got.payload) == ("nl/theirs", b"other")
    # The other subscriber (no No Local) gets both, including its own.
    assert sorted(m.payload for m in other.take(2)) == [b"other", b"own"]
    other.publish("nl/end", b"m")
    assert [m.payload for m in me.none_within("nl/end")] == []
    me.close()
    other.close()


def test_no_local_persistent_session(broker):
    me = Client(broker.mqtt_port, MQTTv5, session_expiry=300)
    me.subscribe(("nlp/#", paho.SubscribeOptions(qos=1, noLocal=True)))
    other = Client(broker.mqtt_port, MQTTv5)
    me.publish("nlp/mine", b"own")
    other.publish("nlp/theirs", b"other")
    assert [m.payload for m in me.take(1)] == [b"other"]
    other.publish("nlp/end", b"m")
    assert me.none_within("nlp/end") == []
    me.close()
    other.close()


def test_retain_handling_and_retain_as_published(broker):
    pub = Client(broker.mqtt_port, MQTTv5)
    pub.publish("rh/x", b"kept", retain=True)
    never = Client(broker.mqtt_port, MQTTv5)
    never.subscribe(("rh/#", paho.SubscribeOptions(qos=1, retainHandling=2, retainAsPublished=True)))
    always = Client(broker.mqtt_port, MQTTv5)
    always.subscribe(("rh/#", paho.SubscribeOptions(qos=1, retainHandling=0)))
    got = always.take(1)[0]
    assert (got.payload, got.retain) == (b"kept", True)
    # Live publishes: RETAIN kept for Retain As Published, cleared otherwise.
    pub.publish("rh/x", b"live", retain=True)
    pub.publish("rh/end", b"m")
    live = never.none_within("rh/end")
    assert [(m.payload, m.retain) for m in live] == [(b"live", True)]
    live = always.none_within("rh/end")
    assert [(m.payload, m.retain) for m in live] == [(b"live", False)]
    # Retain Handling 1: only for a new subscription.
    once = Client(broker.mqtt_port, MQTTv5)
    once.subscribe(("rh/x", paho.SubscribeOptions(qos=1, retainHandling=1)))
    assert once.take(1)[0].payload == b"live"
    once.subscribe(("rh/x", paho.SubscribeOptions(qos=1, retainHandling=1)))
    pub.publish("rh/x2", b"m")
    once.subscribe(("rh/x2", paho.SubscribeOptions(qos=1)))
    pub.publish("rh/x2", b"after")
    assert [m.payload for m in once.take(1)] == [b"after"]
    for c in (pub, never, always, once):
        c.close()


# --- wills, keep alive, request/response, $SYS ----------------------------------------------


def _will_props(delay: int):
    p = Properties(PacketTypes.WILLMESSAGE)
    p.WillDelayInterval = delay
    return p


def test_will_delay_cancelled_by_reconnect(broker):
    watcher = Client(broker.mqtt_port, MQTTv5)
    watcher.subscribe(("wd/#", 1))
    cid = f"wd-{uuid.uuid4().hex[:6]}"
    c = Client(broker.mqtt_port, MQTTv5, client_id=cid, clean=False, session_expiry=300,
               will=("wd/gone", b"bye", 1, False), will_props=_will_props(4))
    c.drop()
    again = Client(broker.mqtt_port, MQTTv5, client_id=cid, clean=False, session_expiry=300)
    # Past the delay: still no will (the reconnect cancelled it). The marker comes after 5 s
    # of broker time, published by a delayed will of another client.
    marker = Client(broker.mqtt_port, MQTTv5, will=("wd/marker", b"m", 1, False),
                    will_props=_will_props(5), session_expiry=60)
    marker.drop()
    got = watcher.none_within("wd/marker")
    assert [m.payload for m in got] == []
    again.close()
    watcher.close()


def test_will_delay_sent_after_delay_or_session_end(broker):
    watcher = Client(broker.mqtt_port, MQTTv5)
    watcher.subscribe(("wd2/#", 1))
    # Delay 3 s, session expiry 300 s: the will comes after the delay.
    c = Client(broker.mqtt_port, MQTTv5, will=("wd2/delayed", b"late", 1, False),
               will_props=_will_props(3), session_expiry=300)
    # Delay 3600 s but the session ends with the connection (expiry 0): the will goes at once.
    d = Client(broker.mqtt_port, MQTTv5, will=("wd2/session", b"now", 1, False),
               will_props=_will_props(3600))
    c.drop()
    d.drop()
    got = watcher.take(2)
    assert [m.topic for m in got] == ["wd2/session", "wd2/delayed"]
    watcher.close()


def test_server_keep_alive(node):
    over = Client(node.mqtt_port, MQTTv5, keepalive=600)
    props = over.connack[2]
    assert getattr(props, "ServerKeepAlive", None) == 20
    under = Client(node.mqtt_port, MQTTv5, keepalive=10)
    assert getattr(under.connack[2], "ServerKeepAlive", None) is None
    over.close()
    under.close()


def test_request_response_properties_pass_through(broker):
    responder = Client(broker.mqtt_port, MQTTv5)
    responder.subscribe(("rr/req", 1))
    requester = Client(broker.mqtt_port, MQTTv5)
    requester.subscribe(("rr/resp/#", 1))
    p = Properties(PacketTypes.PUBLISH)
    p.ResponseTopic = "rr/resp/1"
    p.CorrelationData = b"\x00\xffid"
    p.ContentType = "text/plain"
    p.UserProperty = [("a", "1"), ("b", "2")]
    requester.publish("rr/req", b"ping", props=p)
    req = responder.take(1)[0]
    assert req.properties.ResponseTopic == "rr/resp/1"
    assert req.properties.CorrelationData == b"\x00\xffid"
    assert req.properties.ContentType == "text/plain"
    assert req.properties.UserProperty == [("a", "1"), ("b", "2")]
    r = Properties(PacketTypes.PUBLISH)
    r.CorrelationData = req.properties.CorrelationData
    responder.publish(req.properties.ResponseTopic, b"pong", props=r)
    resp = requester.take(1)[0]
    assert (resp.topic, resp.payload, resp.properties.CorrelationData) == \
        ("rr/resp/1", b"pong", b"\x00\xffid")
    responder.close()
    requester.close()


def test_sys_topics(node):
    c = Client(node.mqtt_port, MQTTv5)
    c.subscribe(("$SYS/broker/#", 0))
    seen = {}

    def all_seen():
        while not c.messages.empty():
            m = c.messages.get()
            seen[m.topic] = m.payload.decode()
        return {"version", "uptime", "clients/connected", "messages/received",
                "messages/sent"} <= {t.removeprefix("$SYS/broker/") for t in seen} \
            and int(seen["$SYS/broker/clients/connected"]) >= 1

    # Published periodically: the retained value at subscribe time may predate this client,
    # a later one counts it.
    harness.eventually(all_seen, WAIT, what="$SYS topics counting this client")
    assert int(seen["$SYS/broker/uptime"]) >= 0
    assert seen["$SYS/broker/version"]
    # `#` alone does not match `$SYS` topics.
    other = Client(node.mqtt_port, MQTTv5)
    other.subscribe(("#", 0))
    c.publish("sys/end", b"m")
    assert [m.topic for m in other.none_within("sys/end")] == []
    c.close()
    other.close()


# --- clean stop ----------------------------------------------------------------------------------


def test_sigterm_restart_no_redelivery(broker):
    cid = f"st-{uuid.uuid4().hex[:6]}"
    sub = Client(broker.mqtt_port, MQTTv311, client_id=cid, clean=False)
    sub.subscribe(("st/#", 1))
    pub = Client(broker.mqtt_port, MQTTv311)
    for i in range(200):
        pub.publish("st/x", f"m{i}".encode(), qos=1)
    got = sub.take(200)
    assert [m.payload for m in got] == [f"m{i}".encode() for i in range(200)]
    # paho acknowledges as it hands messages over; wait until the broker has every PUBACK.
    harness.eventually(lambda: broker.metrics().sum("strata_mqtt_inflight_messages") == 0, WAIT,
                       what="no QoS 1 message in flight")
    pub.close()
    sub.c.loop_stop()
    broker.stop()  # SIGTERM
    broker.start()
    sub = Client(broker.mqtt_port, MQTTv311, client_id=cid, clean=False)
    assert sub.connack[0].session_present
    pub = Client(broker.mqtt_port, MQTTv311)
    pub.publish("st/end", b"marker")
    assert [m.payload for m in sub.none_within("st/end")] == []
    sub.close()
    pub.close()
