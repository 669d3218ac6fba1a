"""t31 Kafka security leftovers: mTLS on the Kafka listener (client certificates verified
against `kafka.tls_client_ca`; the subject — Kafka's `User:CN=…,OU=…` or what a
`kafka.tls_principal_mapping` rule makes of it — is the ACL principal; with SASL the SASL user
wins), KIP-368 re-authentication (`kafka.connections_max_reauth_ms`: confluent-kafka keeps
consuming across several session lifetimes, a deleted user is refused at its next
re-authentication, an expired session is closed at its next request), the
client certificates revoked by `kafka.tls_client_crl` (and the file re-read when it changes),
the `*_authorized_operations` of Metadata / DescribeCluster / DescribeGroups, and the bad
configurations refused at start."""

import json
import socket
import struct
import subprocess
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicCollection, TopicPartition
from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient,
                                   NewTopic, ResourcePatternType, ResourceType)

import harness
from certs import make_certs, make_client_cert, make_crl
from harness import BrokerDied

ADMIN_PW = "adm1n-pass"
ALICE_PW = "alice-pass"
MECH = "SCRAM-SHA-256"
# Refusals librdkafka reports for a failed TLS handshake.
TLS_REFUSED = (KafkaError._SSL, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
               KafkaError._AUTHENTICATION)


def _ssl(ca, cert=None, key=None):
    conf = {"security.protocol": "SSL", "ssl.ca.location": str(ca)}
    if cert is not None:
        conf.update({"ssl.certificate.location": str(cert), "ssl.key.location": str(key)})
    return conf


def _cli(strata_bin, args, env=None, stdin=None):
    return subprocess.run([strata_bin, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env=harness.clean_env(env))


def _add_user(strata_bin, b, user, pw):
    r = _cli(strata_bin, ["user", "add", user, "--mechanism", MECH, "--password-stdin",
                          "--via-admin", b.admin_url], stdin=pw + "\n")
    assert r.returncode == 0, r.stderr


def _allow(adm, principal, name, ops, ty=ResourceType.TOPIC):
    bindings = [AclBinding(ty, name, ResourcePatternType.LITERAL, principal, "*", op,
                           AclPermissionType.ALLOW) for op in ops]
    for f in adm.create_acls(bindings, request_timeout=30).values():
        f.result(30)


def _produce_one(conf, topic, value=b"v"):
    """Produce one record; the delivery error (None when delivered) and the client errors."""
    errors, reports = [], []
    p = Producer({**conf, "message.timeout.ms": 15000, "error_cb": errors.append})
    p.produce(topic, value, on_delivery=lambda err, msg: reports.append(err))
    p.flush(30)
    assert len(reports) == 1, (reports, errors)
    return reports[0], errors


def _refused(conf):
    """A client with `conf` gets no further than a TLS/authentication error."""
    errors = []
    p = Producer({**conf, "error_cb": errors.append, "message.timeout.ms": 5000})
    p.produce("anything", b"must-not-land")
    harness.eventually(lambda: p.poll(0.2) is not None and bool(errors), 30,
                       what="a TLS refusal")
    p.purge()
    p.flush(5)
    assert errors[0].code() in TLS_REFUSED, errors
    return errors


@pytest.fixture
def mtls(broker_factory, tmp_path):
    ca, cert, key = make_certs(tmp_path / "tls")
    admin = make_client_cert(ca.parent, "admin", "admin")
    alice = make_client_cert(ca.parent, "alice", "alice", ou="eng", o="Acme")
    assert admin[2] == "CN=admin" and alice[2] == "CN=alice,OU=eng,O=Acme"
    b = broker_factory(config={"kafka": {
        "tls_cert_file": str(cert), "tls_key_file": str(key),
        "tls_client_auth": "required", "tls_client_ca": str(ca),
        "authorizer": "acl", "super_users": "User:CN=admin"}})
    return b, ca, admin, alice


def test_mtls_required_cert_principal_and_acls(mtls, tmp_path):
    b, ca, admin, alice = mtls
    boot = b.bootstrap
    adm = AdminClient({"bootstrap.servers": boot, **_ssl(ca, admin[0], admin[1])})
    for f in adm.create_topics([NewTopic("mine", 1, 1), NewTopic("theirs", 1, 1)]).values():
        f.result(30)
    # ACLs name the certificate's full subject, as Kafka's default principal builder does.
    _allow(adm, "User:CN=alice,OU=eng,O=Acme", "mine",
           [AclOperation.WRITE, AclOperation.READ])
    _allow(adm, "User:CN=alice,OU=eng,O=Acme", "alice-readers", [AclOperation.READ],
           ty=ResourceType.GROUP)
    conf = {"bootstrap.servers": boot, **_ssl(ca, alice[0], alice[1])}
    err, errors = _produce_one(conf, "mine", b"from-alice")
    assert err is None and not errors, (err, errors)
    err, _ = _produce_one(conf, "theirs")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    c = Consumer({**conf, "group.id": "alice-readers", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition("mine", 0, 0)])
        m = harness.eventually(lambda: c.poll(0.5), 30, what="alice's record")
        assert m.error() is None and m.value() == b"from-alice", m.error()
    finally:
        c.close()
    # kcat with the same certificate: Metadata shows only the topic alice may describe.
    r = harness.kcat(["-b", boot, "-X", "security.protocol=SSL", "-X", f"ssl.ca.location={ca}",
                      "-X", f"ssl.certificate.location={alice[0]}",
                      "-X", f"ssl.key.location={alice[1]}", "-L", "-J"], timeout=60)
    assert r.returncode == 0, r.stderr
    topics = {t["topic"] for t in json.loads(r.stdout)["topics"]}
    assert topics == {"mine"}, topics
    # No certificate, or one from another CA: the TLS handshake is refused.
    _refused({"bootstrap.servers": boot, **_ssl(ca)})
    other_ca, _, _ = make_certs(tmp_path / "other")
    mallory = make_client_cert(other_ca.parent, "mallory", "alice", ou="eng", o="Acme")
    _refused({"bootstrap.servers": boot, **_ssl(ca, mallory[0], mallory[1])})
    b.assert_alive()


def test_mtls_requested_with_mapping_rules(broker_factory, tmp_path):
    ca, cert, key = make_certs(tmp_path / "tls")
    admin = make_client_cert(ca.parent, "admin", "Admin", ou="eng", o="Acme")
    alice = make_client_cert(ca.parent, "alice", "Alice", ou="eng", o="Acme")
    bob = make_client_cert(ca.parent, "bob", "bob", ou="ops", o="Acme")
    b = broker_factory(config={"kafka": {
        "tls_cert_file": str(cert), "tls_key_file": str(key),
        "tls_client_auth": "requested", "tls_client_ca": str(ca),
        # The first rule maps OU=eng to its lower-cased CN; others keep the full DN.
        "tls_principal_mapping": "RULE:^CN=(.*?),OU=eng,.*$/$1/L",
        "authorizer": "acl", "super_users": "User:admin"}})
    # A second broker with a DEFAULT fallback: bob keeps his full DN.
    b2 = broker_factory(config={"kafka": {
        "tls_cert_file": str(cert), "tls_key_file": str(key),
        "tls_client_auth": "requested", "tls_client_ca": str(ca),
        "authorizer": "acl", "super_users": "User:CN=Admin,OU=eng,O=Acme"}})
    adm = AdminClient({"bootstrap.servers": b.bootstrap, **_ssl(ca, admin[0], admin[1])})
    for f in adm.create_topics([NewTopic("eng-topic", 1, 1)]).values():
        f.result(30)
    _allow(adm, "User:alice", "eng-topic", [AclOperation.WRITE])
    alice_conf = {"bootstrap.servers": b.bootstrap, **_ssl(ca, alice[0], alice[1])}
    err, _ = _produce_one(alice_conf, "eng-topic")
    assert err is None, err
    # Without a certificate (allowed: `requested`) the client is User:ANONYMOUS.
    err, _ = _produce_one({"bootstrap.servers": b.bootstrap, **_ssl(ca)}, "eng-topic")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    # bob's subject matches no rule: the connection is refused.
    _refused({"bootstrap.servers": b.bootstrap, **_ssl(ca, bob[0], bob[1])})
    why = "no kafka.tls_principal_mapping rule applies to `CN=bob,OU=ops,O=Acme`"
    harness.eventually(lambda: why in b.stderr_tail(200), 10, what="the refusal in the log")

    adm2 = AdminClient({"bootstrap.servers": b2.bootstrap, **_ssl(ca, admin[0], admin[1])})
    for f in adm2.create_topics([NewTopic("ops-topic", 1, 1)]).values():
        f.result(30)
    _allow(adm2, "User:CN=bob,OU=ops,O=Acme", "ops-topic", [AclOperation.WRITE])
    err, _ = _produce_one({"bootstrap.servers": b2.bootstrap, **_ssl(ca, bob[0], bob[1])},
                          "ops-topic")
    assert err is None, err


def test_sasl_user_wins_over_certificate(broker_factory, strata_bin, tmp_path):
    ca, cert, key = make_certs(tmp_path / "tls")
    carol = make_client_cert(ca.parent, "carol", "carol")
    b = broker_factory(config={"kafka": {
        "tls_cert_file": str(cert), "tls_key_file": str(key),
        "tls_client_auth": "required", "tls_client_ca": str(ca),
        "sasl_mechanisms": MECH, "authorizer": "acl", "super_users": "User:admin"}})
    _add_user(strata_bin, b, "admin", ADMIN_PW)
    _add_user(strata_bin, b, "alice", ALICE_PW)

    def conf(user, pw):
        return {"bootstrap.servers": b.bootstrap, "security.protocol": "SASL_SSL",
                "ssl.ca.location": str(ca), "ssl.certificate.location": str(carol[0]),
                "ssl.key.location": str(carol[1]), "sasl.mechanisms": MECH,
                "sasl.username": user, "sasl.password": pw}
    adm = AdminClient(conf("admin", ADMIN_PW))
    for f in adm.create_topics([NewTopic("by-user", 1, 1), NewTopic("by-cert", 1, 1)]).values():
        f.result(30)
    _allow(adm, "User:alice", "by-user", [AclOperation.WRITE])
    _allow(adm, "User:CN=carol", "by-cert", [AclOperation.WRITE])
    err, _ = _produce_one(conf("alice", ALICE_PW), "by-user")
    assert err is None, err
    # The certificate's principal does not count once SASL has named the user.
    err, _ = _produce_one(conf("alice", ALICE_PW), "by-cert")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err


def _kcat_metadata(boot, ca, cert):
    """Whether kcat with the client certificate `cert` gets the cluster's metadata."""
    r = harness.kcat(["-b", boot, "-X", "security.protocol=SSL", "-X", f"ssl.ca.location={ca}",
                      "-X", f"ssl.certificate.location={cert[0]}",
                      "-X", f"ssl.key.location={cert[1]}", "-L", "-J", "-m", "5"], timeout=60)
    return r.returncode == 0


def test_mtls_crl_revokes_and_is_reloaded(broker_factory, tmp_path):
    ca, cert, key = make_certs(tmp_path / "tls")
    alice = make_client_cert(ca.parent, "alice", "alice")
    bob = make_client_cert(ca.parent, "bob", "bob")
    carol = make_client_cert(ca.parent, "carol", "carol")
    crl = make_crl(ca.parent, [alice[0]])
    b = broker_factory(config={"kafka": {
        "tls_cert_file": str(cert), "tls_key_file": str(key),
        "tls_client_auth": "required", "tls_client_ca": str(ca), "tls_client_crl": str(crl)}})
    boot = b.bootstrap
    assert _kcat_metadata(boot, ca, bob)
    _refused({"bootstrap.servers": boot, **_ssl(ca, alice[0], alice[1])})
    # The CA revokes bob too: new connections see the new list without a restart.
    make_crl(ca.parent, [alice[0], bob[0]])
    harness.eventually(lambda: not _kcat_metadata(boot, ca, bob), 60,
                       what="bob's revocation to take effect")
    assert _kcat_metadata(boot, ca, carol)
    # A CRL file that no longer parses is not a reason to let revoked certificates in.
    crl.write_text("-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n")
    # The file is looked at by new connections: each poll makes one (carol stays welcome).
    harness.eventually(lambda: _kcat_metadata(boot, ca, carol)
                       and "not reloaded" in b.stdout_text() + b.stderr_tail(400), 60,
                       interval=1, what="the broken CRL to be noticed")
    _refused({"bootstrap.servers": boot, **_ssl(ca, bob[0], bob[1])})
    assert _kcat_metadata(boot, ca, carol)
    b.assert_alive()


@pytest.mark.parametrize("kafka,key,text", [
    ({"tls_client_auth": "sometimes"}, "kafka.tls_client_auth", "unknown value"),
    ({"TLS": 1, "tls_client_auth": "required"}, "kafka.tls_client_ca", "required with"),
    ({"TLS": 1, "tls_client_auth": "required", "tls_client_ca": "MISSING"},
     "kafka.tls_client_ca", "cannot read"),
    ({"TLS": 1, "tls_client_auth": "requested", "tls_client_ca": "BAD"},
     "kafka.tls_client_ca", "no CERTIFICATE"),
    ({"TLS": 1, "tls_client_ca": "CA"}, "kafka.tls_client_ca", "kafka.tls_client_auth is none"),
    ({"tls_client_auth": "required", "tls_client_ca": "CA"}, "kafka.tls_client_auth",
     "need TLS"),
    ({"TLS": 1, "tls_principal_mapping": "RULE:^CN=(.*$/$1/"}, "kafka.tls_principal_mapping",
     "rule 0"),
    ({"TLS": 1, "tls_principal_mapping": "CN"}, "kafka.tls_principal_mapping",
     "expected DEFAULT or RULE"),
    ({"TLS": 1, "tls_client_auth": "required", "tls_client_ca": "CA", "tls_client_crl": "BAD"},
     "kafka.tls_client_crl", "no X509 CRL"),
    ({"TLS": 1, "tls_client_auth": "required", "tls_client_ca": "CA",
      "tls_client_crl": "MISSING"}, "kafka.tls_client_crl", "cannot read"),
    ({"TLS": 1, "tls_client_crl": "CA"}, "kafka.tls_client_crl", "kafka.tls_client_auth is none"),
])
def test_bad_mtls_config(broker_factory, tmp_path, kafka, key, text):
    ca, cert, tls_key = make_certs(tmp_path / "tls")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a pem file\n")
    subst = {"BAD": str(bad), "CA": str(ca), "MISSING": str(tmp_path / "nope.pem")}
    kafka = dict(kafka)
    if kafka.pop("TLS", None):
        kafka.update({"tls_cert_file": str(cert), "tls_key_file": str(tls_key)})
    kafka = {k: subst.get(v, v) for k, v in kafka.items()}
    with pytest.raises(BrokerDied) as ei:
        broker_factory(config={"kafka": kafka})
    assert key in str(ei.value) and text in str(ei.value), ei.value


# --- KIP-368 re-authentication ---------------------------------------------------------------


@pytest.fixture
def reauth(broker_factory, strata_bin):
    b = broker_factory(config={"kafka": {
        "sasl_mechanisms": f"{MECH},PLAIN", "sasl_plain_without_tls": True,
        "connections_max_reauth_ms": 1500}})
    _add_user(strata_bin, b, "admin", ADMIN_PW)
    _add_user(strata_bin, b, "alice", ALICE_PW)
    return b


def _sasl(b, user, pw):
    return {"bootstrap.servers": b.bootstrap, "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": MECH, "sasl.username": user, "sasl.password": pw}


def test_consumer_reauthenticates_until_user_deleted(reauth, strata_bin):
    b = reauth
    adm = AdminClient(_sasl(b, "admin", ADMIN_PW))
    adm.create_topics([NewTopic("steady", 1, 1)])["steady"].result(30)
    errors = []
    conf = {**_sasl(b, "alice", ALICE_PW), "error_cb": errors.append}
    p = Producer({**conf, "linger.ms": 5})
    c = Consumer({**conf, "group.id": "steady-readers", "auto.offset.reset": "earliest"})
    c.subscribe(["steady"])
    sent, got = 0, []
    try:
        # Keep producing and consuming until the connections have re-authenticated several
        # times (each session lasts 1.5 s).
        def several_reauths():
            nonlocal sent
            p.produce("steady", str(sent).encode())
            sent += 1
            p.poll(0)
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                got.append(int(m.value()))
            return b.metrics().sum("strata_kafka_reauthentications_total") >= 8
        harness.eventually(several_reauths, 90, interval=0.05, what="8 re-authentications")
        assert p.flush(30) == 0

        def all_consumed():
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                got.append(int(m.value()))
            return len(got) >= sent
        harness.eventually(all_consumed, 60, interval=0, what="every record consumed")
        assert got == list(range(sent)), got[:20]
        assert not errors, errors
        metrics = b.metrics()
        assert metrics.sum("strata_kafka_sessions_expired_total") == 0
        assert metrics.sum("strata_kafka_auth_failures_total") == 0

        # The consumer leaves while alice still exists (closed after her deletion, librdkafka
        # retries its LeaveGroup against refused logins until its own timeout).
        c.close()
        c = None

        # Delete alice: her producer's next re-authentication is refused and the client says so.
        env = {"STRATA_KAFKA_SASL_MECHANISM": MECH, "STRATA_KAFKA_SASL_USER": "admin",
               "STRATA_KAFKA_SASL_PASSWORD": ADMIN_PW}
        r = _cli(strata_bin, ["user", "delete", "alice", "--bootstrap", b.bootstrap], env=env)
        assert r.returncode == 0, r.stderr

        def refused():
            p.poll(0.2)
            return any(e.code() == KafkaError._AUTHENTICATION for e in errors)
        harness.eventually(refused, 60, interval=0, what="alice's re-authentication refused")
        assert b.metrics().sum("strata_kafka_auth_failures_total") >= 1
    finally:
        if c is not None:
            c.close()
        p.purge()
        p.flush(5)
    b.assert_alive()


# Raw frames: SaslHandshake v1, SaslAuthenticate v1 (PLAIN), ApiVersions v0.

def _frame(api_key, version, cid, body=b""):
    client_id = b"raw"
    payload = struct.pack(">hhih", api_key, version, cid, len(client_id)) + client_id + body
    return struct.pack(">i", len(payload)) + payload


def _recv(sock):
    def exactly(n):
        buf = b""
        while len(buf) < n:
            try:
                chunk = sock.recv(n - len(buf))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf
    size = exactly(4)
    return None if size is None else exactly(struct.unpack(">i", size)[0])


def _handshake(s, cid, mech=b"PLAIN"):
    s.sendall(_frame(17, 1, cid, struct.pack(">h", len(mech)) + mech))
    resp = _recv(s)
    assert resp is not None
    corr, code = struct.unpack(">ih", resp[:6])
    assert corr == cid
    return code


def _plain(s, cid, user, pw):
    """SaslAuthenticate v1 with a PLAIN token: (error code, session_lifetime_ms), or None when
    the connection closed."""
    token = b"\0" + user.encode() + b"\0" + pw.encode()
    s.sendall(_frame(36, 1, cid, struct.pack(">i", len(token)) + token))
    resp = _recv(s)
    if resp is None:
        return None
    corr, code, msg_len = struct.unpack(">ihh", resp[:8])
    assert corr == cid
    at = 8 + max(msg_len, 0)
    (n,) = struct.unpack(">i", resp[at:at + 4])
    at += 4 + max(n, 0)
    (lifetime,) = struct.unpack(">q", resp[at:at + 8])
    return code, lifetime


def _api_versions(s, cid):
    s.sendall(_frame(18, 0, cid))
    resp = _recv(s)
    return resp is not None and struct.unpack(">ih", resp[:6]) == (cid, 0)


def test_raw_session_lifetime_expiry_and_reauth(reauth, strata_bin):
    b = reauth
    _add_user(strata_bin, b, "bob", "bob-pass")
    with socket.create_connection(("127.0.0.1", b.kafka_port), timeout=10) as s:
        assert _handshake(s, 1) == 0
        assert _plain(s, 2, "alice", ALICE_PW) == (0, 1500)
        # Re-authenticate on the live connection (same user, same mechanism): a new session.
        assert _handshake(s, 3) == 0
        assert _plain(s, 4, "alice", ALICE_PW) == (0, 1500)
        assert _api_versions(s, 5)
        assert b.metrics().sum("strata_kafka_reauthentications_total") == 1
        # Then let the session run out: answered until it expires, then closed.
        cid = [10]

        def closed():
            cid[0] += 1
            return not _api_versions(s, cid[0])
        harness.eventually(closed, 30, interval=0.1, what="the expired session closed")
        assert cid[0] > 11, "the first requests of a live session were answered"
    assert b.metrics().sum("strata_kafka_sessions_expired_total") == 1

    # Re-authentication as another user: SASL_AUTHENTICATION_FAILED (58), closed.
    with socket.create_connection(("127.0.0.1", b.kafka_port), timeout=10) as s:
        assert _handshake(s, 1) == 0
        assert _plain(s, 2, "alice", ALICE_PW) == (0, 1500)
        assert _handshake(s, 3) == 0
        assert _plain(s, 4, "bob", "bob-pass")[0] == 58
        assert _recv(s) is None
    # With another mechanism: UNSUPPORTED_SASL_MECHANISM (33), closed.
    with socket.create_connection(("127.0.0.1", b.kafka_port), timeout=10) as s:
        assert _handshake(s, 1) == 0
        assert _plain(s, 2, "alice", ALICE_PW) == (0, 1500)
        assert _handshake(s, 3, MECH.encode()) == 33
        assert _recv(s) is None
    # A user deleted since the login cannot re-authenticate.
    with socket.create_connection(("127.0.0.1", b.kafka_port), timeout=10) as s:
        assert _handshake(s, 1) == 0
        assert _plain(s, 2, "bob", "bob-pass") == (0, 1500)
        r = subprocess.run(["curl", "-sf", "-X", "DELETE", f"{b.admin_url}/v1/users/bob"],
                           capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert _handshake(s, 3) == 0
        assert _plain(s, 4, "bob", "bob-pass")[0] == 58
        assert _recv(s) is None
    b.assert_alive()


# --- authorized operations ---------------------------------------------------------------------


def test_authorized_operations_follow_acls(broker_factory, strata_bin):
    b = broker_factory(config={"kafka": {
        "sasl_mechanisms": MECH, "authorizer": "acl", "super_users": "User:admin"}})
    _add_user(strata_bin, b, "admin", ADMIN_PW)
    _add_user(strata_bin, b, "alice", ALICE_PW)
    adm = AdminClient(_sasl(b, "admin", ADMIN_PW))
    for f in adm.create_topics([NewTopic(t, 1, 1) for t in ("ops-a", "ops-b", "ops-c")]).values():
        f.result(30)
    group = f"g-{uuid.uuid4().hex[:8]}"
    _allow(adm, "User:alice", "ops-a", [AclOperation.READ, AclOperation.WRITE])
    _allow(adm, "User:alice", "ops-b", [AclOperation.DELETE, AclOperation.ALTER_CONFIGS])
    _allow(adm, "User:alice", group, [AclOperation.READ], ty=ResourceType.GROUP)
    _allow(adm, "User:alice", "kafka-cluster", [AclOperation.DESCRIBE, AclOperation.IDEMPOTENT_WRITE],
           ty=ResourceType.BROKER)
    # A group alice belongs to, so DescribeGroups has something to describe.
    c = Consumer({**_sasl(b, "alice", ALICE_PW), "group.id": group,
                  "auto.offset.reset": "earliest"})
    c.subscribe(["ops-a"])
    try:
        harness.eventually(lambda: c.poll(0.2) is not None or bool(c.assignment()), 60,
                           what="alice's consumer joined")
        alice = AdminClient(_sasl(b, "alice", ALICE_PW))
        A = AclOperation
        topics = alice.describe_topics(TopicCollection(["ops-a", "ops-b", "ops-c"]),
                                       include_authorized_operations=True)
        assert set(topics["ops-a"].result(30).authorized_operations) == \
            {A.READ, A.WRITE, A.DESCRIBE}
        # Implied operations count: Delete implies Describe, AlterConfigs DescribeConfigs.
        assert set(topics["ops-b"].result(30).authorized_operations) == \
            {A.DELETE, A.DESCRIBE, A.ALTER_CONFIGS, A.DESCRIBE_CONFIGS}
        # A topic alice may not describe is refused, not described.
        with pytest.raises(KafkaException) as ei:
            topics["ops-c"].result(30)
        assert ei.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        cluster = alice.describe_cluster(include_authorized_operations=True).result(30)
        assert set(cluster.authorized_operations) == {A.DESCRIBE, A.IDEMPOTENT_WRITE}
        groups = alice.describe_consumer_groups([group], include_authorized_operations=True)
        assert set(groups[group].result(30).authorized_operations) == {A.READ, A.DESCRIBE}
        # Not asked: no operations.
        assert not alice.describe_cluster().result(30).authorized_operations
        # The super user may do everything Kafka lists for each resource type.
        cluster = adm.describe_cluster(include_authorized_operations=True).result(30)
        assert set(cluster.authorized_operations) == {
            A.CREATE, A.CLUSTER_ACTION, A.DESCRIBE_CONFIGS, A.ALTER_CONFIGS, A.IDEMPOTENT_WRITE,
            A.ALTER, A.DESCRIBE}
        t = adm.describe_topics(TopicCollection(["ops-b"]), include_authorized_operations=True)
        assert set(t["ops-b"].result(30).authorized_operations) == {
            A.READ, A.WRITE, A.CREATE, A.DESCRIBE, A.DELETE, A.ALTER, A.DESCRIBE_CONFIGS,
            A.ALTER_CONFIGS}
        g = adm.describe_consumer_groups([group], include_authorized_operations=True)
        assert set(g[group].result(30).authorized_operations) == {A.READ, A.DESCRIBE, A.DELETE}
    finally:
        c.close()


def test_authorized_operations_without_authorizer(broker):
    """Kafka without an authorizer reports every supported operation."""
    adm = AdminClient({"bootstrap.servers": broker.bootstrap})
    adm.create_topics([NewTopic("open", 1, 1)])["open"].result(30)
    t = adm.describe_topics(TopicCollection(["open"]), include_authorized_operations=True)
    assert len(t["open"].result(30).authorized_operations) == 8
    cluster = adm.describe_cluster(include_authorized_operations=True).result(30)
    assert len(cluster.authorized_operations) == 7
