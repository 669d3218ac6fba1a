"""t93 mqtt auth: passwords, per-topic ACLs and per-client publish rate limits (issue 7).

paho-mqtt (3.1.1 and 5.0), mosquitto_pub/mosquitto_sub and raw packets (for the exact
reason-code bytes) against a broker with `mqtt.auth = "password"`: `[[mqtt.users]]` hashes
made by `strata mqtt hash-password`, a Kafka SCRAM user (admin API) logging in over MQTT,
CONNACK 0x86/0x87 (3.1.1: 0x04/0x05), PUBACK/PUBREC/SUBACK 0x87 (3.1.1: dropped-but-acked
publishes, SUBACK 0x80), `%u` / `%c` substitution, a default-deny ACL, wills and retained
messages under the publish ACL, bad configs refused at start, a throttled publisher that
still gets every message through, users, ACLs and rate limits reloaded on SIGHUP (a removed user's
connections closed), and MQTT 5 enhanced authentication and re-authentication (SCRAM-SHA-256/512
in AUTH packets, the client side from the `scramp` library)."""

from __future__ import annotations

import os
import queue
import signal
import socket
import struct
import subprocess
import uuid

import pytest

import harness
import mqttwire
from certs import make_certs, make_client_cert, make_crl
from harness import BrokerDied

paho = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.client import MQTTv5, MQTTv311  # noqa: E402

WAIT = 30.0
DEV_PW = "dev-secret"
ALICE_PW = "alice-scram-pw"


def _cli(strata_bin, args, stdin=None):
    return subprocess.run([strata_bin, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env=harness.clean_env())


def _hash(strata_bin, password: str) -> str:
    r = _cli(strata_bin, ["mqtt", "hash-password"], stdin=password + "\n")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _config(mqtt: dict, users: list[tuple[str, str]] = (), acl: list[tuple[str, str, str, str]] = (),
            extra: str = "") -> str:
    lines = [extra, "[mqtt]"]
    lines += [f"{k} = {_toml_str(v) if isinstance(v, str) else v}" for k, v in mqtt.items()]
    for name, h in users:
        lines += ["[[mqtt.users]]", f"name = {_toml_str(name)}", f"password_hash = {_toml_str(h)}"]
    for user, action, filt, perm in acl:
        lines += ["[[mqtt.acl]]", f"user = {_toml_str(user)}", f"action = {_toml_str(action)}",
                  f"filter = {_toml_str(filt)}", f"permission = {_toml_str(perm)}"]
    return "\n".join(lines) + "\n"


def _start(broker_factory, tmp_path, text: str, start: bool = True):
    cfg = tmp_path / f"mqtt-{uuid.uuid4().hex[:6]}.toml"
    cfg.write_text(text)
    return broker_factory(extra_args=["--config", str(cfg)], start=start)


# The ACL of the password broker, first match wins (default allow).
ACL = [
    ("*", "all", "users/%u/#", "allow"),
    ("*", "all", "users/#", "deny"),
    ("dev", "publish", "readonly/#", "deny"),
    ("dev", "subscribe", "secret/#", "deny"),
]


@pytest.fixture
def secured(broker_factory, tmp_path, strata_bin):
    text = _config({"auth": "password"}, users=[("dev", _hash(strata_bin, DEV_PW))], acl=ACL,
                   extra="[kafka]\ndefault_partitions = 1\n")
    return _start(broker_factory, tmp_path, text)


# -- raw packets ------------------------------------------------------------------------


def _raw_connack(port: int, version: int, user: str | None, password: str | None) -> int:
    """The CONNACK return code (3.1.1) or reason code (5.0) for these credentials."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(mqttwire.connect_packet(f"raw-{uuid.uuid4().hex[:6]}", version, user=user, password=password))
        first, body = mqttwire.read_packet(sock)
        assert first == 0x20, f"CONNACK expected, got {first:#x} {body!r}"
        return body[1]


# -- paho -------------------------------------------------------------------------------


class Client:
    """A paho client that records CONNACK, SUBACK, PUBACK reason codes and messages."""

    def __init__(self, port: int, version, user: str | None = None, password: str | None = None,
                 client_id: str | None = None, will: tuple | None = None,
                 tls: tuple | None = None, clean: bool = True):
        """`tls`: (CA file, client certificate or None, its key or None) for the TLS port.
        `clean=False`: a persistent session (3.1.1 only)."""
        cid = client_id or f"c-{uuid.uuid4().hex[:8]}"
        extra = {} if clean else {"clean_session": False}
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=cid, protocol=version,
                             **extra)
        if tls is not None:
            ca, cert, key = tls
            self.c.tls_set(ca_certs=str(ca), certfile=cert and str(cert), keyfile=key and str(key))
        self.messages: queue.Queue = queue.Queue()
        self.connacks: queue.Queue = queue.Queue()
        self.acks: dict[int, queue.Queue] = {}
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_connect = lambda c, u, flags, rc, props: self.connacks.put(rc)
        self.c.on_publish = lambda c, u, mid, rc, props: self._ack(mid).put(rc)
        if user is not None:
            self.c.username_pw_set(user, password)
        if will:
            self.c.will_set(*will)
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        self.rc = self.connacks.get(timeout=WAIT)

    def _ack(self, mid: int) -> queue.Queue:
        return self.acks.setdefault(mid, queue.Queue())

    def subscribe(self, *filters: tuple[str, int]) -> list[int]:
        done: queue.Queue = queue.Queue()
        self.c.on_subscribe = lambda c, u, mid, rcs, props: done.put(rcs)
        self.c.subscribe(list(filters))
        return [rc.value for rc in done.get(timeout=WAIT)]

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> int:
        """Publishes and waits for its acknowledgement; returns the PUBACK reason code."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        rc = self._ack(info.mid).get(timeout=WAIT)
        return rc.value

    def take(self, n: int) -> list:
        return [self.messages.get(timeout=WAIT) for _ in range(n)]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def _stored_keys(b) -> list[bytes]:
    parts = harness.consume(b.bootstrap, "mqtt-messages", 1)
    return [r.key for r in parts[0]]


# -- tests ------------------------------------------------------------------------------


def test_hash_password_cli(strata_bin):
    phc = _hash(strata_bin, "pw one")
    assert phc.startswith("$argon2id$v=19$"), phc
    assert _hash(strata_bin, "pw one") != phc, "a fresh salt each time"
    r = _cli(strata_bin, ["mqtt", "hash-password"], stdin="\n")
    assert r.returncode == 2 and "empty" in r.stderr, (r.returncode, r.stderr)


@pytest.mark.parametrize("version,ok,bad,missing", [
    pytest.param(4, 0x00, 0x04, 0x05, id="v311"),
    pytest.param(5, 0x00, 0x86, 0x87, id="v5"),
])
def test_password_reason_codes(secured, version, ok, bad, missing):
    port = secured.mqtt_port
    assert _raw_connack(port, version, "dev", DEV_PW) == ok
    assert _raw_connack(port, version, "dev", "wrong") == bad
    assert _raw_connack(port, version, "nobody", DEV_PW) == bad
    assert _raw_connack(port, version, None, None) == missing
    assert _raw_connack(port, version, "dev", None) == missing
    assert secured.metrics().sum("strata_mqtt_auth_failures_total") == 4


def test_paho_and_mosquitto_login(secured):
    port = secured.mqtt_port
    for version in (MQTTv311, MQTTv5):
        good = Client(port, version, "dev", DEV_PW)
        assert good.rc.value == 0
        good.close()
        badc = Client(port, version, "dev", "nope")
        assert badc.rc.value == 0x86, badc.rc  # paho reports 3.1.1's 0x04 as 0x86 too
        badc.c.loop_stop()
    ok = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", "dev", "-P", DEV_PW,
                         "-q", "1", "-t", "users/dev/cli", "-m", "hi"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    for ver in ("mqttv311", "mqttv5"):
        no = subprocess.run(["mosquitto_pub", "-V", ver, "-h", "127.0.0.1", "-p", str(port), "-u", "dev",
                             "-P", "bad", "-t", "users/dev/cli", "-m", "x"],
                            capture_output=True, text=True, timeout=30)
        assert no.returncode != 0 and "bad user name or password" in no.stderr.lower(), no.stderr
    assert _stored_keys(secured) == [b"users/dev/cli"]


def test_scram_user_logs_in_over_mqtt(secured, strata_bin):
    b = secured
    for mech, user in (("SCRAM-SHA-512", "alice"), ("SCRAM-SHA-256", "bob")):
        r = _cli(strata_bin, ["user", "add", user, "--mechanism", mech, "--password-stdin",
                              "--via-admin", b.admin_url], stdin=ALICE_PW + "\n")
        assert r.returncode == 0, r.stderr
        assert _raw_connack(b.mqtt_port, 5, user, ALICE_PW) == 0x00
        assert _raw_connack(b.mqtt_port, 4, user, ALICE_PW) == 0x00
        assert _raw_connack(b.mqtt_port, 5, user, ALICE_PW + "x") == 0x86
    # The SCRAM user's ACL: %u is its name.
    c = Client(b.mqtt_port, MQTTv5, "alice", ALICE_PW)
    assert c.subscribe(("users/alice/#", 1), ("users/dev/#", 1)) == [1, 0x87]
    assert c.publish("users/alice/x", b"mine", 1) == 0
    (m,) = c.take(1)
    assert (m.topic, m.payload) == ("users/alice/x", b"mine")
    # Deleting the user ends its MQTT logins too, and its open connections at once (no
    # reload): MQTT 5 is told why (DISCONNECT 0x87), 3.1.1 sees the socket close. alice's
    # connection stays.
    bobs = {}
    for version in (4, 5):
        sock = socket.create_connection(("127.0.0.1", b.mqtt_port), timeout=WAIT)
        sock.sendall(mqttwire.connect_packet(f"bob-{version}", version, user="bob", password=ALICE_PW))
        first, body = mqttwire.read_packet(sock)
        assert (first, body[1]) == (0x20, 0), (hex(first), body)
        bobs[version] = sock
    r = _cli(strata_bin, ["user", "delete", "bob", "--bootstrap", b.bootstrap])
    assert r.returncode == 0, r.stderr
    first, body = mqttwire.read_packet(bobs[5])
    assert (first, body[:1]) == (0xE0, b"\x87"), (hex(first), body)
    for sock in bobs.values():
        assert sock.recv(1) == b"", "the connection of a deleted SCRAM user stays open"
        sock.close()
    harness.eventually(lambda: _raw_connack(b.mqtt_port, 5, "bob", ALICE_PW) == 0x86, WAIT,
                       what="a deleted SCRAM user refused")
    assert c.publish("users/alice/y", b"still here", 1) == 0
    (m,) = c.take(1)
    assert m.payload == b"still here"
    c.close()


def test_acl_v5_reason_codes(secured):
    b = secured
    dev = Client(b.mqtt_port, MQTTv5, "dev", DEV_PW)
    assert dev.subscribe(("users/dev/#", 1), ("users/other/#", 1), ("secret/x", 1), ("#", 0),
                         ("readonly/#", 1), ("$share/g/users/+/x", 1)) == [1, 0x87, 0x87, 0x87, 1, 0x87]
    assert dev.publish("readonly/x", b"no", 1) == 0x87
    assert dev.publish("users/other/x", b"no", 1) == 0x87
    assert dev.publish("readonly/r", b"no", 1, retain=True) == 0x87
    assert dev.publish("users/dev/x", b"yes", 1) == 0
    (m,) = dev.take(1)
    assert (m.topic, m.payload) == ("users/dev/x", b"yes")
    dev.close()

    # QoS 2: PUBREC 0x87 (raw: paho does not expose PUBREC reason codes).
    with socket.create_connection(("127.0.0.1", b.mqtt_port), timeout=WAIT) as sock:
        sock.sendall(mqttwire.connect_packet("raw-q2", 5, user="dev", password=DEV_PW))
        assert mqttwire.read_packet(sock)[1][1] == 0
        sock.sendall(mqttwire.packet(0x34, mqttwire.utf8(b"readonly/q2") + struct.pack(">H", 7) + mqttwire.varint(0) + b"x"))
        first, body = mqttwire.read_packet(sock)
        assert first == 0x50 and body[:3] == struct.pack(">H", 7) + b"\x87", (first, body)

    # A will on a denied topic refuses the CONNECT.
    w = Client(b.mqtt_port, MQTTv5, "dev", DEV_PW, will=("readonly/will", b"bye", 1))
    assert w.rc.value == 0x87
    w.c.loop_stop()

    assert _stored_keys(b) == [b"users/dev/x"]
    s = b.metrics()
    assert s.sum("strata_mqtt_acl_denied_total", action="subscribe") == 4
    assert s.sum("strata_mqtt_acl_denied_total", action="publish") == 5  # 3 + QoS 2 + will


def test_acl_v311_drops_and_acks(secured):
    b = secured
    dev = Client(b.mqtt_port, MQTTv311, "dev", DEV_PW)
    assert dev.subscribe(("users/dev/#", 1), ("secret/#", 1), ("readonly/#", 1)) == [1, 0x80, 1]
    # Denied publishes are acknowledged (3.1.1 has no negative PUBACK) and not stored.
    assert dev.publish("readonly/x", b"dropped", 1) == 0
    assert dev.publish("readonly/y", b"dropped", 2) == 0
    assert dev.publish("readonly/r", b"dropped", 1, retain=True) == 0
    assert dev.publish("users/dev/r", b"kept", 1, retain=True) == 0
    # One partition: had a denied publish been stored, it would arrive first.
    (m,) = dev.take(1)
    assert (m.topic, m.payload) == ("users/dev/r", b"kept")
    dev.close()
    # Retained: only the allowed one was kept. Retained messages go out right after the SUBACK
    # of their own SUBSCRIBE, so the second subscription's message comes first only if the
    # first had none.
    late = Client(b.mqtt_port, MQTTv311, "dev", DEV_PW)
    assert late.subscribe(("readonly/#", 1)) == [1]
    assert late.subscribe(("users/dev/#", 1)) == [1]
    (m,) = late.take(1)
    assert (m.topic, m.payload, m.retain) == ("users/dev/r", b"kept", True)
    late.close()
    # mosquitto_sub on a denied filter is told so.
    r = subprocess.run(["mosquitto_sub", "-V", "mqttv311", "-h", "127.0.0.1", "-p", str(b.mqtt_port),
                        "-u", "dev", "-P", DEV_PW, "-t", "users/x/#", "-C", "1", "-W", "20"],
                       capture_output=True, text=True, timeout=60)
    assert "all subscription requests were denied" in r.stderr.lower() and r.stdout == "", (r.stderr, r.stdout)
    assert _stored_keys(b) == [b"users/dev/r"]
    assert b.metrics().sum("strata_mqtt_acl_denied_total", action="publish") == 3


def test_default_deny_for_anonymous_clients(broker_factory, tmp_path):
    text = _config({"acl_default": "deny"}, acl=[
        ("$anonymous", "publish", "in/%c", "allow"),
        ("*", "subscribe", "in/#", "allow"),
    ], extra="[kafka]\ndefault_partitions = 1\n")
    b = _start(broker_factory, tmp_path, text)
    port = str(b.mqtt_port)
    sub = Client(b.mqtt_port, MQTTv5)
    assert sub.subscribe(("in/#", 1), ("other/#", 1), ("#", 1)) == [1, 0x87, 0x87]
    for cid, topic in (("dev9", "in/dev8"), ("dev9", "other"), ("dev9", "in/dev9")):
        r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-i", cid, "-q", "1",
                            "-t", topic, "-m", f"{cid}->{topic}"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr  # 3.1.1: acknowledged either way
    (m,) = sub.take(1)
    assert (m.topic, m.payload) == ("in/dev9", b"dev9->in/dev9")
    sub.close()
    assert _stored_keys(b) == [b"in/dev9"]


@pytest.mark.parametrize("text,key", [
    (_config({"auth": "ldap"}), "mqtt.auth"),
    (_config({"acl_default": "maybe"}), "mqtt.acl_default"),
    (_config({}, acl=[("*", "read", "a/#", "allow")]), "mqtt.acl[0].action"),
    (_config({}, acl=[("*", "all", "a/#", "allow"), ("*", "all", "a/#/b", "deny")]), "mqtt.acl[1].filter"),
    (_config({}, acl=[("*", "all", "a", "permit")]), "mqtt.acl[0].permission"),
    (_config({}, users=[("u", "plaintext")]), "mqtt.users[0].password_hash"),
    (_config({"tls_cert_as_username": "cn"}), "mqtt.tls_cert_as_username"),
    (_config({"tls_cert_as_username": "uid"}), "mqtt.tls_cert_as_username"),
    (_config({"tls_client_auth": "required"}), "mqtt.tls_client_ca"),
    (_config({"tls_client_auth": "sometimes"}), "mqtt.tls_client_auth"),
])
def test_bad_config_rejected_at_start(broker_factory, tmp_path, text, key):
    b = _start(broker_factory, tmp_path, text, start=False)
    with pytest.raises(BrokerDied) as ei:
        b.start()
    assert key in str(ei.value), ei.value
    assert b.last_returncode == 2 or (b.proc and b.proc.returncode == 2)


def test_throttled_publisher_gets_every_message_through(broker_factory, tmp_path):
    text = _config({"client_publish_rate_max": 20}, extra="[kafka]\ndefault_partitions = 1\n")
    b = _start(broker_factory, tmp_path, text)
    sub = Client(b.mqtt_port, MQTTv5)
    assert sub.subscribe(("rate/#", 1)) == [1]
    pub = Client(b.mqtt_port, MQTTv311)
    n = 60  # three seconds of budget at 20/s, sent as fast as paho can
    infos = [pub.c.publish("rate/x", f"m{i}".encode(), qos=1) for i in range(n)]
    for info in infos:
        info.wait_for_publish(WAIT)
    got = [m.payload for m in sub.take(n)]
    assert got == [f"m{i}".encode() for i in range(n)]
    pub.close()
    sub.close()
    assert b.metrics().sum("strata_mqtt_throttled_total") >= 1
    assert len(_stored_keys(b)) == n


def _hangup(b, line: str, count: int):
    """SIGHUP the broker and wait for its `count`-th log line containing `line`."""
    os.kill(b.pid, signal.SIGHUP)
    harness.eventually(lambda: b.stderr_path.read_text(errors="replace").count(line) >= count, WAIT,
                       what=f"{line!r} logged {count} time(s)")


def _mosquitto_login(port: int, user: str, password: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", password,
                           "-q", "1", "-t", f"users/{user}/login", "-m", "hi"],
                          capture_output=True, text=True, timeout=30)


def test_sighup_reloads_users_and_acl(broker_factory, tmp_path, strata_bin):
    """SIGHUP reads the file again: a changed password and a new user apply to the next
    CONNECT (connections already open stay), the new ACL to the next PUBLISH and SUBSCRIBE,
    and subscriptions it denies are dropped — on open connections and on a persistent
    session when it comes back. An invalid file changes nothing; a change to a key that needs
    a restart is logged as such."""
    cfg = tmp_path / "reload.toml"
    partitions = "[kafka]\ndefault_partitions = 1\n"
    cfg.write_text(_config({"auth": "password"}, users=[("dev", _hash(strata_bin, DEV_PW))], acl=ACL,
                           extra=partitions))
    b = broker_factory(extra_args=["--config", str(cfg)])
    port = b.mqtt_port
    live = Client(port, MQTTv5, "dev", DEV_PW)
    assert live.subscribe(("news/#", 1), ("users/dev/#", 1)) == [1, 1]
    away = Client(port, MQTTv311, "dev", DEV_PW, client_id="dev-away", clean=False)
    assert away.subscribe(("news/#", 1), ("users/dev/#", 1)) == [1, 1]
    away.close()

    new_pw, ops_pw = "dev-new-secret", "ops-secret"
    cfg.write_text(_config({"auth": "password"},
                           users=[("dev", _hash(strata_bin, new_pw)), ("ops", _hash(strata_bin, ops_pw))],
                           acl=[("dev", "all", "news/#", "deny"), *ACL], extra=partitions))
    _hangup(b, "configuration reloaded", 1)

    # Credentials: the next CONNECT checks the new ones; the open connection stays.
    for version in (4, 5):
        assert _raw_connack(port, version, "dev", DEV_PW) == (0x86 if version == 5 else 0x04)
        assert _raw_connack(port, version, "dev", new_pw) == 0x00
    assert _mosquitto_login(port, "ops", ops_pw).returncode == 0
    bad = _mosquitto_login(port, "dev", DEV_PW)
    assert bad.returncode != 0 and "bad user name or password" in bad.stderr.lower(), bad.stderr
    assert live.publish("users/dev/still", b"open", 1) == 0

    # ACL: dev's news/# subscription is gone (ops publishes there), users/dev/# stays.
    ops = Client(port, MQTTv5, "ops", ops_pw)
    assert ops.publish("news/a", b"not for dev", 1) == 0
    assert live.publish("users/dev/after", b"for dev", 1) == 0
    got = [(m.topic, m.payload) for m in live.take(2)]
    assert got == [("users/dev/still", b"open"), ("users/dev/after", b"for dev")]
    assert live.subscribe(("news/#", 1)) == [0x87]
    assert live.publish("news/b", b"denied", 1) == 0x87
    # The persistent session comes back without news/# (it gets what users/dev/# matched).
    back = Client(port, MQTTv311, "dev", new_pw, client_id="dev-away", clean=False)
    assert ops.publish("news/c", b"not for dev either", 1) == 0
    assert live.publish("users/dev/last", b"for dev too", 1) == 0
    got = [m.topic for m in back.take(3)]
    assert got == ["users/dev/still", "users/dev/after", "users/dev/last"]
    assert [m.topic for m in live.take(1)] == ["users/dev/last"]
    assert live.messages.empty() and back.messages.empty()
    # Dropped: live's and the session's news/#, and the refused SUBSCRIBE.
    assert b.metrics().sum("strata_mqtt_acl_denied_total", action="subscribe") == 3

    # An invalid file is refused and the running settings stay; so does the broker.
    cfg.write_text(cfg.read_text() + '\n[mqtt.oops]\n')
    _hangup(b, "configuration not reloaded", 1)
    b.assert_alive()
    assert _raw_connack(port, 5, "dev", new_pw) == 0x00
    # A key that needs a restart: logged, the reloadable ones still taken.
    cfg.write_text(_config({"auth": "password", "keep_alive_max_secs": 60},
                           users=[("dev", _hash(strata_bin, DEV_PW))], acl=ACL, extra=partitions))
    _hangup(b, "configuration reloaded", 2)
    assert "take effect at the next restart" in b.stderr_path.read_text(errors="replace")
    assert "mqtt.keep_alive_max_secs" in b.stderr_path.read_text(errors="replace")
    assert _raw_connack(port, 5, "dev", DEV_PW) == 0x00
    for c in (live, back, ops):
        c.close()


def test_sighup_ends_removed_users_and_retunes_open_connections(broker_factory, tmp_path, strata_bin):
    """A reload that removes a user closes that user's open connections (MQTT 5: DISCONNECT
    0x87 Not authorized first; 3.1.1 has no such packet, the socket just closes), while other
    users' connections stay and take the new publish rate limit at once."""
    cfg = tmp_path / "reload.toml"
    ops_pw = "ops-secret"
    users = [("dev", _hash(strata_bin, DEV_PW)), ("ops", _hash(strata_bin, ops_pw))]
    partitions = "[kafka]\ndefault_partitions = 1\n"
    cfg.write_text(_config({"auth": "password"}, users=users, extra=partitions))
    b = broker_factory(extra_args=["--config", str(cfg)])
    port = b.mqtt_port
    devs = {}
    for version in (4, 5):
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        sock.sendall(mqttwire.connect_packet(f"dev-{version}", version, user="dev", password=DEV_PW))
        first, body = mqttwire.read_packet(sock)
        assert (first, body[1]) == (0x20, 0), (hex(first), body)
        devs[version] = sock
    ops = Client(port, MQTTv5, "ops", ops_pw)
    assert ops.subscribe(("ops/#", 1)) == [1]
    # No limit yet: a burst goes through unthrottled.
    burst = 12
    for i in range(burst):
        assert ops.publish("ops/x", f"a{i}".encode(), 1) == 0
    assert len(ops.take(burst)) == burst
    assert b.metrics().sum("strata_mqtt_throttled_total") == 0

    cfg.write_text(_config({"auth": "password", "client_publish_rate_max": 4}, users=users[1:],
                           extra=partitions))
    _hangup(b, "configuration reloaded", 1)

    # dev is gone: MQTT 5 is told why, then both sockets close.
    first, body = mqttwire.read_packet(devs[5])
    assert (first, body[:1]) == (0xE0, b"\x87"), (hex(first), body)
    for sock in devs.values():
        assert sock.recv(1) == b"", "the connection of a removed user stays open"
        sock.close()
    assert _raw_connack(port, 5, "dev", DEV_PW) == 0x86
    # ops stays connected, and its next burst is paced by the new limit (nothing lost).
    infos = [ops.c.publish("ops/x", f"b{i}".encode(), qos=1) for i in range(burst)]
    for info in infos:
        info.wait_for_publish(WAIT)
    assert [m.payload for m in ops.take(burst)] == [f"b{i}".encode() for i in range(burst)]
    assert b.metrics().sum("strata_mqtt_throttled_total") >= 1
    ops.close()


def test_sighup_to_password_ends_connections_that_proved_nothing(broker_factory, tmp_path, strata_bin):
    """Under `mqtt.auth = "none"` a user name is only claimed: when a reload turns passwords
    on, a connection that claimed a listed user's name (without its password) ends like an
    anonymous one (MQTT 5: DISCONNECT 0x87), and that user then logs in with the password."""
    cfg = tmp_path / "reload.toml"
    users = [("dev", _hash(strata_bin, DEV_PW))]
    cfg.write_text(_config({"auth": "none"}, users=users))
    b = broker_factory(extra_args=["--config", str(cfg)])
    socks = []
    for user in ("dev", None):
        sock = socket.create_connection(("127.0.0.1", b.mqtt_port), timeout=WAIT)
        sock.sendall(mqttwire.connect_packet(f"claimed-{user}", 5, user=user, password=None))
        first, body = mqttwire.read_packet(sock)
        assert (first, body[1]) == (0x20, 0), (hex(first), body)
        socks.append(sock)
    cfg.write_text(_config({"auth": "password"}, users=users))
    _hangup(b, "configuration reloaded", 1)
    for sock in socks:
        first, body = mqttwire.read_packet(sock)
        assert (first, body[:1]) == (0xE0, b"\x87"), (hex(first), body)
        assert sock.recv(1) == b"", "a connection that proved nothing stays open"
        sock.close()
    assert _raw_connack(b.mqtt_port, 5, "dev", None) == 0x87
    assert _raw_connack(b.mqtt_port, 5, "dev", DEV_PW) == 0x00


def _scram_connect(port: int, method: str, first: bytes) -> socket.socket:
    """Sends an MQTT 5 CONNECT with Authentication Method and Data (no user name)."""
    props = b"\x15" + mqttwire.utf8(method.encode()) + b"\x16" + mqttwire.utf8(first)
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(mqttwire.connect_packet(f"scram-{uuid.uuid4().hex[:6]}", 5, props=props))
    return sock


def _scram_login(port: int, method: str, user: str, password: str) -> tuple[socket.socket, int]:
    """The whole exchange, with scramp as the client: the socket and the CONNACK reason code.
    On success scramp has also checked the server's signature in the CONNACK."""
    from scramp import ScramClient
    client = ScramClient([method], user, password)
    sock = _scram_connect(port, method, client.get_client_first().encode())
    first, body = mqttwire.read_packet(sock)
    assert first == mqttwire.AUTH and body[0] == 0x18, (hex(first), body)
    props = mqttwire.properties(body[1:])
    assert props[0x15] == method
    client.set_server_first(props[0x16].decode())
    props = b"\x15" + mqttwire.utf8(method.encode()) + b"\x16" + \
        mqttwire.utf8(client.get_client_final().encode())
    sock.sendall(mqttwire.packet(mqttwire.AUTH, b"\x18" + mqttwire.varint(len(props)) + props))
    first, body = mqttwire.read_packet(sock)
    assert first == mqttwire.CONNACK, (hex(first), body)
    if body[1] == 0:
        props = mqttwire.properties(body[2:])
        assert props[0x15] == method
        client.set_server_final(props[0x16].decode())  # raises on a wrong server signature
    return sock, body[1]


@pytest.mark.parametrize("method", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_enhanced_authentication_with_scram(secured, strata_bin, method):
    """MQTT 5 enhanced authentication: CONNECT with Authentication Method SCRAM-SHA-*, AUTH
    0x18 both ways, CONNACK with the server-final message; the user is the SCRAM user's name
    for the ACLs. A wrong password or an unknown user gets 0x86, an unknown method 0x8C.
    Re-authentication is `test_reauthentication`."""
    b = secured
    user = f"sc{uuid.uuid4().hex[:6]}"
    r = _cli(strata_bin, ["user", "add", user, "--mechanism", method, "--password-stdin",
                          "--via-admin", b.admin_url], stdin=ALICE_PW + "\n")
    assert r.returncode == 0, r.stderr
    sock, code = _scram_login(b.mqtt_port, method, user, ALICE_PW)
    assert code == 0
    with sock:
        # The ACL sees the SCRAM user: users/%u/# is its own, users/dev/# is not.
        for pid, topic in ((1, f"users/{user}/x"), (2, "users/dev/x")):
            body = mqttwire.utf8(topic.encode()) + struct.pack(">H", pid) + b"\x00" + b"hi"
            sock.sendall(mqttwire.packet(0x32, body))
        acks = [mqttwire.ack_id_and_reason(mqttwire.read_packet(sock)[1]) for _ in range(2)]
        assert sorted(acks) == [(1, 0), (2, 0x87)], acks

    for who, password in ((user, ALICE_PW + "x"), (f"nobody{uuid.uuid4().hex[:4]}", ALICE_PW)):
        sock, code = _scram_login(b.mqtt_port, method, who, password)
        sock.close()
        assert code == 0x86, (who, hex(code))
    with _scram_connect(b.mqtt_port, "KERBEROS", b"x") as sock:
        first, body = mqttwire.read_packet(sock)
        assert (first, body[1]) == (mqttwire.CONNACK, 0x8C), (hex(first), body)
    assert _stored_keys(b) == [f"users/{user}/x".encode()]


def _auth_packet(reason: int, method: str, data: bytes) -> bytes:
    props = b"\x15" + mqttwire.utf8(method.encode()) + b"\x16" + mqttwire.utf8(data)
    return mqttwire.packet(mqttwire.AUTH, bytes([reason]) + mqttwire.varint(len(props)) + props)


def _reauth(sock: socket.socket, method: str, user: str, password: str, publish_between: bool = False):
    """Re-authenticates on an open connection: AUTH 0x19 with a client-first message, the
    server's AUTH 0x18, the client's proof. Returns the scramp client and the next packet
    (AUTH 0x00 with the server-final message on success, DISCONNECT otherwise)."""
    from scramp import ScramClient
    client = ScramClient([method], user, password)
    sock.sendall(_auth_packet(0x19, method, client.get_client_first().encode()))
    first, body = mqttwire.read_packet(sock)
    if first != mqttwire.AUTH:
        return client, (first, body)
    assert body[0] == 0x18, body
    props = mqttwire.properties(body[1:])
    assert props[0x15] == method
    client.set_server_first(props[0x16].decode())
    if publish_between:
        # Other packets flow during the exchange: a QoS 1 publish is answered in between.
        body = mqttwire.utf8(f"users/{user}/mid".encode()) + struct.pack(">H", 7) + b"\x00" + b"mid"
        sock.sendall(mqttwire.packet(0x32, body))
        first, body = mqttwire.read_packet(sock)
        assert first == mqttwire.PUBACK and mqttwire.ack_id_and_reason(body) == (7, 0), (hex(first), body)
    sock.sendall(_auth_packet(0x18, method, client.get_client_final().encode()))
    return client, mqttwire.read_packet(sock)


@pytest.mark.parametrize("method", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_reauthentication(secured, strata_bin, method):
    """MQTT 5 re-authentication (§4.12.1) on a connection that used enhanced authentication:
    AUTH 0x19, 0x18 both ways, then AUTH 0x00 carrying the server-final message (checked by
    scramp) — with a publish answered in the middle of the exchange, and the connection going
    on afterwards. A wrong proof or another user ends the connection with DISCONNECT 0x87,
    another method with 0x8C; AUTH from a client that logged in with a password is a protocol
    error (0x82)."""
    b = secured
    user, other = (f"re{uuid.uuid4().hex[:6]}" for _ in range(2))
    for name in (user, other):
        r = _cli(strata_bin, ["user", "add", name, "--mechanism", method, "--password-stdin",
                              "--via-admin", b.admin_url], stdin=ALICE_PW + "\n")
        assert r.returncode == 0, r.stderr
    failures = b.metrics().sum("strata_mqtt_auth_failures_total")

    sock, code = _scram_login(b.mqtt_port, method, user, ALICE_PW)
    assert code == 0
    with sock:
        for _ in range(2):
            client, (first, body) = _reauth(sock, method, user, ALICE_PW, publish_between=True)
            assert (first, body[0]) == (mqttwire.AUTH, 0x00), (hex(first), body)
            props = mqttwire.properties(body[1:])
            assert props[0x15] == method
            client.set_server_final(props[0x16].decode())  # raises on a wrong server signature
        sock.sendall(mqttwire.packet(mqttwire.PINGREQ, b""))
        assert mqttwire.read_packet(sock)[0] == mqttwire.PINGRESP

    # A wrong password, another user (with the right password), another method: closed.
    cases = [((user, ALICE_PW + "x", method), 0x87), ((other, ALICE_PW, method), 0x87)]
    for (who, password, m), want in cases:
        sock, code = _scram_login(b.mqtt_port, method, user, ALICE_PW)
        assert code == 0
        with sock:
            _, (first, body) = _reauth(sock, m, who, password)
            assert (first, body[:1]) == (mqttwire.DISCONNECT, bytes([want])), (who, hex(first), body)
            assert sock.recv(1) == b""
    sock, code = _scram_login(b.mqtt_port, method, user, ALICE_PW)
    with sock:
        other_method = "SCRAM-SHA-512" if method == "SCRAM-SHA-256" else "SCRAM-SHA-256"
        sock.sendall(_auth_packet(0x19, other_method, b"n,,n=x,r=abc"))
        first, body = mqttwire.read_packet(sock)
        assert (first, body[:1]) == (mqttwire.DISCONNECT, b"\x8c"), (hex(first), body)
    # A password login cannot re-authenticate.
    with socket.create_connection(("127.0.0.1", b.mqtt_port), timeout=WAIT) as sock:
        sock.sendall(mqttwire.connect_packet(f"pw-{uuid.uuid4().hex[:6]}", 5, user="dev", password=DEV_PW))
        assert mqttwire.read_packet(sock)[1][1] == 0
        sock.sendall(_auth_packet(0x19, method, b"n,,n=dev,r=abc"))
        first, body = mqttwire.read_packet(sock)
        assert (first, body[:1]) == (mqttwire.DISCONNECT, b"\x82"), (hex(first), body)
    # The wrong proof and the other user count as failed authentications.
    assert b.metrics().sum("strata_mqtt_auth_failures_total") == failures + 2
    assert sorted(_stored_keys(b)) == [f"users/{user}/mid".encode()] * 2


# --- client certificates -------------------------------------------------------------------------


@pytest.mark.parametrize("version", [MQTTv311, MQTTv5], ids=["v311", "v5"])
def test_client_certificate_names_the_user(broker_factory, tmp_path, strata_bin, version):
    """`mqtt.tls_client_auth = "requested"` with `tls_cert_as_username = "cn"` on a password
    broker: a client with a certificate the CA signed is the user its CN names (no password;
    the `%u` ACL applies to it), one without a certificate logs in with a password, and a
    revoked certificate or one from another CA fails the handshake."""
    d = tmp_path / "certs"
    ca, server_cert, server_key = make_certs(d)
    dev_cert, dev_key, _ = make_client_cert(d, "dev1", cn="dev-1", ou="sensors", o="Acme")
    gone_cert, gone_key, _ = make_client_cert(d, "gone", cn="gone")
    crl = make_crl(d, [gone_cert])
    foreign = make_certs(tmp_path / "other")
    stranger_cert, stranger_key, _ = make_client_cert(tmp_path / "other", "stranger", cn="dev-1")
    tls_port = harness.free_port()
    text = _config({
        "auth": "password", "tls_listen": f"127.0.0.1:{tls_port}",
        "tls_cert_file": str(server_cert), "tls_key_file": str(server_key),
        "tls_client_auth": "requested", "tls_client_ca": str(ca), "tls_client_crl": str(crl),
        "tls_cert_as_username": "cn",
    }, users=[("dev", _hash(strata_bin, DEV_PW))], acl=ACL, extra="[kafka]\ndefault_partitions = 1\n")
    b = _start(broker_factory, tmp_path, text)

    # The certificate is the credential: no user name or password in CONNECT.
    dev1 = Client(tls_port, version, tls=(ca, dev_cert, dev_key))
    assert dev1.rc.value == 0, dev1.rc
    assert dev1.subscribe(("users/dev-1/#", 1), ("users/dev/#", 1)) == [1, 0x87 if version == MQTTv5 else 0x80]
    # Without a certificate: the password, as on the plain port.
    dev = Client(tls_port, version, user="dev", password=DEV_PW, tls=(ca, None, None))
    assert dev.rc.value == 0, dev.rc
    anon = Client(tls_port, version, tls=(ca, None, None))
    assert anon.rc.is_failure, "no certificate and no password"
    anon.c.loop_stop()
    # mosquitto_pub with the certificate publishes as dev-1: its own tree only.
    base = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(tls_port), "--cafile", str(ca), "-q", "1"]
    r = subprocess.run(base + ["--cert", str(dev_cert), "--key", str(dev_key), "-t", "users/dev-1/t",
                               "-m", "from-mosquitto", "-V", "mqttv5"], capture_output=True, text=True, timeout=WAIT)
    assert r.returncode == 0, r.stderr
    (m,) = dev1.take(1)
    assert (m.topic, m.payload) == ("users/dev-1/t", b"from-mosquitto")
    assert dev1.publish("users/dev/t", b"not mine", 1) == (0x87 if version == MQTTv5 else 0)
    # A reload re-checks open connections' users: the certificate's CN is no `mqtt.users`
    # entry, and the connection it admitted stays (dev-1 still publishes and receives).
    _hangup(b, "configuration reloaded", 1)
    assert dev1.publish("users/dev-1/after-reload", b"kept", 1) == 0
    (m,) = dev1.take(1)
    assert m.payload == b"kept"
    # A revoked certificate, and one from another CA with the same CN, never get in.
    for cert, key, cafile in ((gone_cert, gone_key, ca), (stranger_cert, stranger_key, ca)):
        r = subprocess.run(base + ["--cert", str(cert), "--key", str(key), "-t", "users/dev-1/t",
                                   "-m", "intruder", "-V", "mqttv5"], capture_output=True, text=True, timeout=WAIT)
        assert r.returncode != 0, (cert, r.stdout, r.stderr)
    assert dev1.publish("users/dev-1/end", b"sentinel", 1) == 0
    (m,) = dev1.take(1)
    assert m.payload == b"sentinel", "nothing from the refused clients came first"
    assert foreign[0] != ca
    for c in (dev1, dev):
        c.close()
    assert b.metrics().sum("strata_mqtt_acl_denied_total", action="publish") == 1
