"""t28 Kafka security: TLS on the Kafka listener, SASL PLAIN / SCRAM-SHA-256 /
SCRAM-SHA-512 against users kept in metadata, `strata user add|delete|list`, and the
refusals (wrong password, unknown user, plaintext to a TLS port, requests before
authentication, bad security config)."""

import json
import socket
import ssl
import struct
import subprocess
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

import harness
from certs import make_certs
from harness import BrokerDied, Rec

ADMIN_PW = "adm1n-pass"
ALICE_PW = "alice-256-pass"


def _cli(strata_bin, args, env=None, stdin=None):
    return subprocess.run([strata_bin, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env=harness.clean_env(env))


def _client_env(ca, user="admin", password=ADMIN_PW, mech="SCRAM-SHA-512"):
    return {"STRATA_KAFKA_TLS_CA": str(ca), "STRATA_KAFKA_SASL_MECHANISM": mech,
            "STRATA_KAFKA_SASL_USER": user, "STRATA_KAFKA_SASL_PASSWORD": password}


def _sasl(ca, mech, user, password):
    return {"security.protocol": "SASL_SSL", "ssl.ca.location": str(ca),
            "sasl.mechanisms": mech, "sasl.username": user, "sasl.password": password}


def _frame(api_key, version, cid, body=b"", flexible=False):
    client_id = b"raw"
    header = struct.pack(">hhih", api_key, version, cid, len(client_id)) + client_id
    if flexible:
        header += b"\x00"
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def _recv_frame(sock):
    """One size-prefixed response, or None when the peer closed the connection."""
    def exactly(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf
    size = exactly(4)
    if size is None:
        return None
    return exactly(struct.unpack(">i", size)[0])


def _auth_error(conf, topic):
    """Produce one record with `conf` and return the error librdkafka reports."""
    errors = []
    p = Producer(harness.producer_conf(conf["bootstrap.servers"], **conf,
                                       **{"message.timeout.ms": 5000},
                                       error_cb=lambda e: errors.append(e)))
    p.produce(topic, b"must-not-land")
    harness.eventually(lambda: p.poll(0.2) is not None and bool(errors), 30,
                       what="an authentication error")
    p.purge()
    p.flush(5)
    return errors[0]


@pytest.fixture
def secure(broker_factory, tmp_path, strata_bin):
    ca, cert, key = make_certs(tmp_path / "tls")
    b = broker_factory(config={"kafka": {
        "tls_cert_file": str(cert), "tls_key_file": str(key),
        "sasl_mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN"}})
    # The first user: over the loopback admin API (nobody can authenticate yet).
    r = _cli(strata_bin, ["user", "add", "admin", "--password-stdin", "--via-admin", b.admin_url],
             stdin=ADMIN_PW + "\n")
    assert r.returncode == 0, r.stderr
    # The next one over the Kafka protocol, authenticated as the first.
    r = _cli(strata_bin, ["user", "add", "alice", "--mechanism", "SCRAM-SHA-256", "--password-stdin",
                          "--bootstrap", b.bootstrap], env=_client_env(ca), stdin=ALICE_PW + "\n")
    assert r.returncode == 0, r.stderr
    return b, ca


def test_clients_over_sasl_ssl(secure, strata_bin):
    b, ca = secure
    boot = b.bootstrap
    admin512 = {"bootstrap.servers": boot, **_sasl(ca, "SCRAM-SHA-512", "admin", ADMIN_PW)}
    adm = __import__("confluent_kafka.admin", fromlist=["AdminClient"]).AdminClient(admin512)
    from confluent_kafka.admin import NewTopic
    adm.create_topics([NewTopic("sec", 1, 1)])["sec"].result(30)

    # confluent-kafka with each mechanism; PLAIN checks against the SCRAM credentials.
    logins = [("SCRAM-SHA-512", "admin", ADMIN_PW), ("SCRAM-SHA-256", "alice", ALICE_PW),
              ("PLAIN", "admin", ADMIN_PW), ("PLAIN", "alice", ALICE_PW)]
    for i, (mech, user, pw) in enumerate(logins):
        harness.produce(boot, "sec", [Rec(0, None, f"{mech}-{user}".encode())], timeout=60,
                        **_sasl(ca, mech, user, pw))
    got = _consume(boot, "sec", len(logins), _sasl(ca, "SCRAM-SHA-256", "alice", ALICE_PW))
    assert got == [f"{m}-{u}".encode() for m, u, _ in logins]

    # kafka-python over SASL_SSL with SCRAM-SHA-512.
    from kafka import KafkaConsumer, KafkaProducer
    kp_conf = dict(bootstrap_servers=boot, security_protocol="SASL_SSL", ssl_cafile=str(ca),
                   sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="admin",
                   sasl_plain_password=ADMIN_PW)
    kp = KafkaProducer(**kp_conf)
    kp.send("sec", b"kafka-python", partition=0).get(timeout=30)
    kp.close()
    kc = KafkaConsumer(**kp_conf, auto_offset_reset="earliest", consumer_timeout_ms=10000)
    kc.assign([__import__("kafka").TopicPartition("sec", 0)])
    values = [m.value for m in kc]
    kc.close()
    assert values[-1] == b"kafka-python" and len(values) == len(logins) + 1

    # kcat over SASL_SSL with SCRAM-SHA-256.
    kcat = [harness.kcat_bin(), "-b", boot, "-X", "security.protocol=SASL_SSL",
            "-X", f"ssl.ca.location={ca}", "-X", "sasl.mechanisms=SCRAM-SHA-256",
            "-X", "sasl.username=alice", "-X", f"sasl.password={ALICE_PW}"]
    r = subprocess.run(kcat + ["-P", "-t", "sec", "-p", "0"], input=b"from-kcat\n",
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    r = subprocess.run(kcat + ["-C", "-t", "sec", "-p", "0", "-o", "-1", "-e", "-q"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == b"from-kcat", r

    # The CLI over SASL_SSL: list shows users and mechanisms, never key material.
    r = _cli(strata_bin, ["user", "list", "-o", "json", "--bootstrap", boot], env=_client_env(ca))
    assert r.returncode == 0, r.stderr
    users = {u["user"]: u["credentials"] for u in json.loads(r.stdout)}
    assert users == {"admin": [{"mechanism": "SCRAM-SHA-512", "iterations": 8192}],
                     "alice": [{"mechanism": "SCRAM-SHA-256", "iterations": 8192}]}
    assert ADMIN_PW not in r.stdout and "salt" not in r.stdout and "key" not in r.stdout
    assert ADMIN_PW not in b.stderr_tail(2000) and ADMIN_PW not in b.stdout_text()

    # Wrong password and unknown user: the same error, nothing produced.
    end_before = _hwm(boot, ca)
    wrong = _auth_error({"bootstrap.servers": boot, **_sasl(ca, "SCRAM-SHA-512", "admin", "nope")}, "sec")
    unknown = _auth_error({"bootstrap.servers": boot, **_sasl(ca, "SCRAM-SHA-512", "ghost", "nope")}, "sec")
    plain_wrong = _auth_error({"bootstrap.servers": boot, **_sasl(ca, "PLAIN", "ghost", "x")}, "sec")
    for e in (wrong, unknown, plain_wrong):
        assert e.code() == KafkaError._AUTHENTICATION, e
        assert "invalid credentials" in e.str(), e
    assert wrong.str().split("(")[0] == unknown.str().split("(")[0]
    assert _hwm(boot, ca) == end_before

    # Delete: alice can no longer log in.
    r = _cli(strata_bin, ["user", "delete", "alice", "--bootstrap", boot], env=_client_env(ca))
    assert r.returncode == 0, r.stderr
    e = _auth_error({"bootstrap.servers": boot, **_sasl(ca, "SCRAM-SHA-256", "alice", ALICE_PW)}, "sec")
    assert e.code() == KafkaError._AUTHENTICATION
    r = _cli(strata_bin, ["user", "delete", "alice", "--bootstrap", boot], env=_client_env(ca))
    assert r.returncode == 2 and "no user `alice`" in r.stderr, r

    # Users survive a restart.
    b.restart()
    harness.produce(boot, "sec", [Rec(0, None, b"after-restart")], timeout=60,
                    **_sasl(ca, "SCRAM-SHA-512", "admin", ADMIN_PW))
    assert _hwm(boot, ca) == end_before + 1


def _consume(boot, topic, n, conf):
    """The first `n` values of partition 0."""
    from confluent_kafka import OFFSET_BEGINNING
    c = Consumer({"bootstrap.servers": boot, "group.id": "t28", "enable.auto.commit": False, **conf})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out = []
    try:
        def more():
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                out.append(m.value())
            return len(out) >= n
        harness.eventually(more, 60, interval=0, what=f"{n} records of {topic}")
    finally:
        c.close()
    return out


def _hwm(boot, ca):
    c = Consumer({"bootstrap.servers": boot, "group.id": "hwm",
                  **_sasl(ca, "SCRAM-SHA-512", "admin", ADMIN_PW)})
    try:
        return c.get_watermark_offsets(TopicPartition("sec", 0), timeout=30)[1]
    finally:
        c.close()


def test_raw_connections(secure):
    b, ca = secure
    # Plaintext Kafka to the TLS port: no Kafka answer, the connection ends.
    with socket.create_connection(("127.0.0.1", b.kafka_port), timeout=10) as s:
        s.sendall(_frame(18, 0, 1))
        data = s.recv(4096)
        assert data == b"" or data[0] == 0x15, data  # closed, or a TLS alert record
    # Over TLS: ApiVersions is answered before authentication, Metadata closes the connection.
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", b.kafka_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(_frame(18, 0, 7))
            resp = _recv_frame(s)
            assert resp is not None and struct.unpack(">ih", resp[:6]) == (7, 0)
            s.sendall(_frame(3, 1, 8, struct.pack(">i", -1)))
            assert _recv_frame(s) is None
    # A mechanism not enabled: UNSUPPORTED_SASL_MECHANISM (33), then the connection closes.
    with socket.create_connection(("127.0.0.1", b.kafka_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            mech = b"GSSAPI"
            s.sendall(_frame(17, 1, 9, struct.pack(">h", len(mech)) + mech))
            resp = _recv_frame(s)
            assert resp is not None and struct.unpack(">ih", resp[:6]) == (9, 33)
            assert _recv_frame(s) is None
    # SaslAuthenticate before SaslHandshake: ILLEGAL_SASL_STATE (34).
    with socket.create_connection(("127.0.0.1", b.kafka_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(_frame(36, 1, 10, struct.pack(">i", 1) + b"x"))
            resp = _recv_frame(s)
            assert resp is not None and struct.unpack(">ih", resp[:6]) == (10, 34)
    b.assert_alive()


def test_auth_off_refuses_sasl(broker):
    # Default config: SaslHandshake is advertised but no mechanism is enabled.
    with socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=10) as s:
        mech = b"PLAIN"
        s.sendall(_frame(17, 1, 5, struct.pack(">h", len(mech)) + mech))
        resp = _recv_frame(s)
        assert resp is not None and struct.unpack(">ih", resp[:6]) == (5, 33)


@pytest.mark.parametrize("kafka,key,text", [
    ({"tls_cert_file": "/nonexistent/c.pem", "tls_key_file": "/nonexistent/k.pem"},
     "kafka.tls_cert_file", "cannot read"),
    ({"tls_cert_file": "BAD", "tls_key_file": "BAD"}, "kafka.tls_cert_file", "no CERTIFICATE"),
    ({"tls_cert_file": "CERT"}, "kafka.tls_key_file", "required"),
    ({"tls_cert_file": "CERT", "tls_key_file": "BAD"}, "kafka.tls_key_file", "no usable private key"),
    ({"sasl_mechanisms": "SCRAM-SHA-1"}, "kafka.sasl_mechanisms", "unknown mechanism"),
    ({"sasl_mechanisms": "PLAIN"}, "kafka.sasl_mechanisms", "kafka.sasl_plain_without_tls"),
])
def test_bad_security_config(broker_factory, tmp_path, kafka, key, text):
    _, cert, _ = make_certs(tmp_path / "tls")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a pem file\n")
    subst = {"BAD": str(bad), "CERT": str(cert)}
    kafka = {k: subst.get(v, v) if isinstance(v, str) else v for k, v in kafka.items()}
    with pytest.raises(BrokerDied) as ei:
        broker_factory(config={"kafka": kafka})
    assert key in str(ei.value) and text in str(ei.value), ei.value


def test_plain_without_tls_when_allowed(broker_factory, strata_bin):
    b = broker_factory(config={"kafka": {"sasl_mechanisms": "PLAIN, SCRAM-SHA-256",
                                         "sasl_plain_without_tls": True}})
    r = _cli(strata_bin, ["user", "add", "bob", "--mechanism", "SCRAM-SHA-256", "--password-stdin",
                          "--via-admin", b.admin_url], stdin="bobpw\n")
    assert r.returncode == 0, r.stderr
    conf = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN",
            "sasl.username": "bob", "sasl.password": "bobpw"}
    harness.produce(b.bootstrap, "plain", [Rec(0, None, b"v")], timeout=60, **conf)
    assert _consume(b.bootstrap, "plain", 1, conf) == [b"v"]
    # Bad iterations are refused by the CLI before anything is sent.
    r = _cli(strata_bin, ["user", "add", "x", "--iterations", "100", "--password-stdin",
                          "--via-admin", b.admin_url], stdin="pw\n")
    assert r.returncode == 2 and "100" in r.stderr, r


def test_admin_client_manages_users(secure):
    """confluent-kafka's AdminClient (AlterUserScramCredentials / Describe…) on the wire."""
    from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialDeletion, UserScramCredentialUpsertion)
    b, ca = secure
    adm = AdminClient({"bootstrap.servers": b.bootstrap, **_sasl(ca, "SCRAM-SHA-512", "admin", ADMIN_PW)})
    fs = adm.alter_user_scram_credentials([UserScramCredentialUpsertion(
        "carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"carol-pw")])
    fs["carol"].result(30)
    desc = adm.describe_user_scram_credentials(["carol"])["carol"].result(30)
    assert [(i.mechanism, i.iterations) for i in desc.scram_credential_infos] == \
        [(ScramMechanism.SCRAM_SHA_512, 4096)]
    harness.produce(b.bootstrap, "carol-topic", [Rec(0, None, b"c")], timeout=60,
                    **_sasl(ca, "SCRAM-SHA-512", "carol", "carol-pw"))
    # Too few iterations: refused with a clear error, nothing stored.
    fs = adm.alter_user_scram_credentials([UserScramCredentialUpsertion(
        "dave", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 1000), b"pw")])
    with pytest.raises(Exception) as ei:
        fs["dave"].result(30)
    assert "iterations" in str(ei.value), ei.value
    # Unknown user: RESOURCE_NOT_FOUND.
    with pytest.raises(Exception) as ei:
        adm.describe_user_scram_credentials(["nobody"])["nobody"].result(30)
    assert "RESOURCE_NOT_FOUND" in str(ei.value) or "does not exist" in str(ei.value), ei.value
    adm.alter_user_scram_credentials([UserScramCredentialDeletion(
        "carol", ScramMechanism.SCRAM_SHA_512)])["carol"].result(30)
    e = _auth_error({"bootstrap.servers": b.bootstrap, **_sasl(ca, "SCRAM-SHA-512", "carol", "carol-pw")},
                    "carol-topic")
    assert e.code() == KafkaError._AUTHENTICATION


def test_tls_without_sasl(broker_factory, tmp_path):
    ca, cert, key = make_certs(tmp_path / "tls")
    b = broker_factory(config={"kafka": {"tls_cert_file": str(cert), "tls_key_file": str(key)}})
    conf = {"security.protocol": "SSL", "ssl.ca.location": str(ca)}
    harness.produce(b.bootstrap, "tls-only", [Rec(0, None, b"t")], timeout=60, **conf)
    assert _consume(b.bootstrap, "tls-only", 1, conf) == [b"t"]
    # A client that does not trust the CA fails the handshake, and the broker carries on.
    other_ca, _, _ = make_certs(tmp_path / "other")
    errors = []
    p = Producer({"bootstrap.servers": b.bootstrap, "security.protocol": "SSL",
                  "ssl.ca.location": str(other_ca), "error_cb": errors.append})
    harness.eventually(lambda: p.poll(0.2) is not None and bool(errors), 30, what="a TLS error")
    assert errors[0].code() in (KafkaError._SSL, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN), errors
    b.assert_alive()


def _scram_salt(port: int, user: str, mech: str = "SCRAM-SHA-256") -> str:
    """The salt the broker's server-first message names for `user` (SaslHandshake v1 then one
    SaslAuthenticate v1); the exchange is abandoned there."""
    import kwire

    with kwire.connect(port) as s:
        s.sendall(kwire.request(17, 1, 1, kwire.string(mech)))
        r = kwire.Reader(kwire.recv_frame(s))
        assert r.i32() == 1 and r.i16() == 0, "SaslHandshake refused"
        first = f"n,,n={user},r=fyko+d2lbbFgONRv9qkxdawL".encode()
        s.sendall(kwire.request(36, 1, 2, struct.pack(">i", len(first)) + first))
        r = kwire.Reader(kwire.recv_frame(s))
        assert r.i32() == 2
        code = r.i16()
        r.string()  # error message
        n = r.take(">i")
        server_first = r.take(f">{n}s").decode()
        assert code == 0, f"server-first refused with {code}"
    return dict(kv.split("=", 1) for kv in server_first.split(","))["s"]


def test_unknown_user_salt_is_stable_across_restarts(broker_factory, strata_bin):
    """A prober must not tell an unknown user from a known one: the decoy salt of an unknown
    user is keyed by a cluster secret kept in metadata, so it stays the same after a restart,
    like a real user's salt. Each refused login is counted."""
    b = broker_factory(config={"kafka": {"sasl_mechanisms": "SCRAM-SHA-256"}})
    r = _cli(strata_bin, ["user", "add", "alice", "--mechanism", "SCRAM-SHA-256", "--password-stdin",
                          "--via-admin", b.admin_url], stdin=ALICE_PW + "\n")
    assert r.returncode == 0, r.stderr
    before = (_scram_salt(b.kafka_port, "alice"), _scram_salt(b.kafka_port, "ghost"))
    assert before[1] == _scram_salt(b.kafka_port, "ghost"), "the decoy salt changes between attempts"
    assert before[0] != before[1]
    b.restart()
    after = (_scram_salt(b.kafka_port, "alice"), _scram_salt(b.kafka_port, "ghost"))
    assert after == before, "a salt changed across the restart"
    # A wrong password is refused and counted.
    p = Producer(harness.producer_conf(b.bootstrap, **{
        "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "alice",
        "sasl.password": "not-" + ALICE_PW, "message.timeout.ms": 5000}))
    p.produce("t", b"x")
    p.flush(15)
    harness.eventually(lambda: b.metrics().sum("strata_kafka_auth_failures_total") >= 1, 20,
                       what="strata_kafka_auth_failures_total counted the refusal")
