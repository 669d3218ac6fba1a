"""t29 Kafka ACLs: CreateAcls / DescribeAcls / DeleteAcls with confluent-kafka and
kafka-python, enforcement on produce, consume, groups and metadata (DENY over ALLOW, prefixed
patterns, super users), ACLs surviving a restart, `strata acl add|list|delete`, kcat seeing the
refusal, an unauthenticated listener with allow_everyone_if_no_acl_found, and the refusals
(SECURITY_DISABLED, INVALID_REQUEST, CLUSTER_AUTHORIZATION_FAILED, bad config)."""

import json
import subprocess
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                   AdminClient, NewTopic, ResourcePatternType, ResourceType)

import harness
from harness import BrokerDied, Rec

ADMIN_PW = "adm1n-pass"
ALICE_PW = "alice-pass"
MECH = "SCRAM-SHA-256"
AUTHZ_ERRORS = (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED)


def _cli(strata_bin, args, user="admin", password=ADMIN_PW, stdin=None):
    env = {"STRATA_KAFKA_SASL_MECHANISM": MECH, "STRATA_KAFKA_SASL_USER": user,
           "STRATA_KAFKA_SASL_PASSWORD": password}
    return subprocess.run([strata_bin, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env=harness.clean_env(env))


def _sasl(user, password):
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": MECH,
            "sasl.username": user, "sasl.password": password}


@pytest.fixture
def secured(broker_factory, strata_bin):
    b = broker_factory(config={"kafka": {
        "sasl_mechanisms": MECH, "authorizer": "acl", "super_users": "User:admin"}})
    for user, pw, via in (("admin", ADMIN_PW, ["--via-admin", b.admin_url]),
                          ("alice", ALICE_PW, ["--bootstrap", b.bootstrap])):
        r = _cli(strata_bin, ["user", "add", user, "--mechanism", MECH, "--password-stdin", *via],
                 stdin=pw + "\n")
        assert r.returncode == 0, r.stderr
    return b


def _admin(b, user="admin", pw=ADMIN_PW):
    return AdminClient({"bootstrap.servers": b.bootstrap, **_sasl(user, pw)})


def _binding(name, op, perm=AclPermissionType.ALLOW, ty=ResourceType.TOPIC,
             pattern=ResourcePatternType.LITERAL, principal="User:alice"):
    return AclBinding(ty, name, pattern, principal, "*", op, perm)


def _create_acls(adm, bindings):
    for f in adm.create_acls(bindings, request_timeout=30).values():
        f.result(30)


def _produce_error(b, topic, user="alice", pw=ALICE_PW):
    """Produce one record; the delivery error librdkafka reports (None when it landed)."""
    got = []
    p = Producer(harness.producer_conf(b.bootstrap, **_sasl(user, pw),
                                       **{"message.timeout.ms": 10000}))
    p.produce(topic, b"x", partition=0, on_delivery=lambda err, msg: got.append(err))
    p.flush(30)
    assert len(got) == 1
    return got[0]


def _consume(b, topic, n, group, user="alice", pw=ALICE_PW):
    """The first `n` values of `topic` through a subscribed group consumer that commits, or
    the first error it reports."""
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  **_sasl(user, pw)})
    c.subscribe([topic])
    out, errors = [], []
    try:
        def more():
            m = c.poll(0.5)
            if m is not None:
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        errors.append(m.error())
                else:
                    out.append(m.value())
            return len(out) >= n or bool(errors)
        harness.eventually(more, 60, interval=0, what=f"{n} records of {topic} or an error")
        if not errors:
            c.commit(asynchronous=False)
    finally:
        c.close()
    return (out, None) if not errors else (out, errors[0])


def test_acls_enforced(secured, strata_bin):
    b = secured
    adm = _admin(b)
    for t in ("orders", "logs-app", "secret"):
        adm.create_topics([NewTopic(t, 1, 1)])[t].result(30)
    harness.produce(b.bootstrap, "logs-app", [Rec(0, None, b"log-1")], timeout=60,
                    **_sasl("admin", ADMIN_PW))

    # No ACLs: alice may neither produce nor consume; admin (a super user) may.
    err = _produce_error(b, "orders")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    _, err = _consume(b, "orders", 1, "g1")
    assert err is not None and err.code() in AUTHZ_ERRORS, err
    assert _produce_error(b, "orders", "admin", ADMIN_PW) is None

    # Write on the topic: produce works.
    _create_acls(adm, [_binding("orders", AclOperation.WRITE)])
    assert _produce_error(b, "orders") is None
    # Read on the topic but not the group: the group is refused.
    _create_acls(adm, [_binding("orders", AclOperation.READ)])
    _, err = _consume(b, "orders", 1, "g1")
    assert err is not None and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, err
    # Read on the group too: consume and commit work.
    _create_acls(adm, [_binding("g1", AclOperation.READ, ty=ResourceType.GROUP)])
    values, err = _consume(b, "orders", 2, "g1")
    assert err is None and values == [b"x", b"x"], (values, err)

    # A prefixed ACL covers every topic with the prefix.
    _create_acls(adm, [_binding("logs-", AclOperation.READ, pattern=ResourcePatternType.PREFIXED)])
    values, err = _consume(b, "logs-app", 1, "g1")
    assert err is None and values == [b"log-1"], (values, err)

    # Metadata: alice's "all topics" shows what she may describe, and not `secret`.
    alice_adm = _admin(b, "alice", ALICE_PW)
    assert set(alice_adm.list_topics(timeout=30).topics) == {"orders", "logs-app"}
    assert {"orders", "logs-app", "secret"} <= set(adm.list_topics(timeout=30).topics)
    # Named explicitly, it is an authorization error.
    md = alice_adm.list_topics(topic="secret", timeout=30)
    assert md.topics["secret"].error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    # DENY wins over the prefixed ALLOW.
    _create_acls(adm, [_binding("logs-app", AclOperation.READ, perm=AclPermissionType.DENY)])
    _, err = _consume(b, "logs-app", 1, "g1")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err

    # DescribeAcls with filters.
    every = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                             AclOperation.ANY, AclPermissionType.ANY)
    assert len(adm.describe_acls(every, request_timeout=30).result(30)) == 5
    matching = AclBindingFilter(ResourceType.TOPIC, "logs-app", ResourcePatternType.MATCH, None,
                                None, AclOperation.ANY, AclPermissionType.ANY)
    got = adm.describe_acls(matching, request_timeout=30).result(30)
    assert {(a.name, a.resource_pattern_type, a.permission_type) for a in got} == {
        ("logs-", ResourcePatternType.PREFIXED, AclPermissionType.ALLOW),
        ("logs-app", ResourcePatternType.LITERAL, AclPermissionType.DENY)}

    # kafka-python's admin client reads the same ACLs.
    from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType, KafkaAdminClient
    from kafka.admin import ResourcePatternFilter, ACLResourcePatternType
    from kafka.admin import ResourceType as KResourceType
    kp = KafkaAdminClient(bootstrap_servers=b.bootstrap, security_protocol="SASL_PLAINTEXT",
                          sasl_mechanism=MECH, sasl_plain_username="admin",
                          sasl_plain_password=ADMIN_PW)
    try:
        acls, error = kp.describe_acls(ACLFilter(
            principal="User:alice", host="*", operation=ACLOperation.WRITE,
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePatternFilter(KResourceType.TOPIC, "orders",
                                                   ACLResourcePatternType.LITERAL)))
        assert [(a.resource_pattern.resource_name, a.operation) for a in acls] == [
            ("orders", ACLOperation.WRITE)], (acls, error)
        # ... and writes them: create, then delete, an ACL for carol.
        from kafka.admin import ACL, ResourcePattern
        carol = ACL(principal="User:carol", host="*", operation=ACLOperation.READ,
                    permission_type=ACLPermissionType.ALLOW,
                    resource_pattern=ResourcePattern(KResourceType.TOPIC, "orders"))
        created = kp.create_acls([carol])
        assert len(created["succeeded"]) == 1 and not created["failed"], created
        carol_filter = ACLFilter(principal="User:carol", host=None, operation=ACLOperation.ANY,
                                 permission_type=ACLPermissionType.ANY,
                                 resource_pattern=ResourcePatternFilter(
                                     KResourceType.ANY, None, ACLResourcePatternType.ANY))
        [(_, removed, err)] = kp.delete_acls([carol_filter])
        assert len(removed) == 1 and removed[0].principal == "User:carol", (removed, err)
    finally:
        kp.close()

    # Delete the Write ACL: refused again.
    write = AclBindingFilter(ResourceType.TOPIC, "orders", ResourcePatternType.LITERAL,
                             "User:alice", None, AclOperation.WRITE, AclPermissionType.ANY)
    deleted = adm.delete_acls([write], request_timeout=30)[write].result(30)
    assert [(d.name, d.operation) for d in deleted] == [("orders", AclOperation.WRITE)]
    err = _produce_error(b, "orders")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err

    # kcat sees the refusal.
    r = subprocess.run([harness.kcat_bin(), "-b", b.bootstrap, "-X", "security.protocol=SASL_PLAINTEXT",
                        "-X", f"sasl.mechanisms={MECH}", "-X", "sasl.username=alice",
                        "-X", f"sasl.password={ALICE_PW}", "-X", "message.timeout.ms=10000",
                        "-P", "-t", "orders", "-p", "0"],
                       input=b"from-kcat\n", capture_output=True, timeout=60)
    assert "authorization failed" in r.stderr.decode().lower(), r

    # ACLs survive a restart: Read still works, Write is still gone.
    b.restart()
    adm = _admin(b)
    assert len(adm.describe_acls(every, request_timeout=30).result(30)) == 4
    assert _produce_error(b, "orders", "admin", ADMIN_PW) is None
    values, err = _consume(b, "orders", 1, "g1")
    assert err is None and values == [b"x"], (values, err)  # resumes after the commit
    err = _produce_error(b, "orders")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err


def test_admin_apis_and_idempotence_enforced(secured):
    b = secured
    adm = _admin(b)
    adm.create_topics([NewTopic("orders", 1, 1)])["orders"].result(30)
    alice = _admin(b, "alice", ALICE_PW)

    def code(fut):
        with pytest.raises(KafkaException) as ei:
            fut.result(30)
        return ei.value.args[0].code()

    # CreateTopics needs Create on the cluster or the topic (here: a prefix).
    new = NewTopic("alice-new", 1, 1)
    assert code(alice.create_topics([new])["alice-new"]) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    _create_acls(adm, [_binding("alice-", AclOperation.CREATE,
                                pattern=ResourcePatternType.PREFIXED)])
    alice.create_topics([NewTopic("alice-new", 1, 1)])["alice-new"].result(30)
    # DeleteTopics needs Delete; DescribeConfigs needs DescribeConfigs (AlterConfigs implies it).
    assert code(alice.delete_topics(["orders"])["orders"]) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    from confluent_kafka.admin import ConfigResource
    res = ConfigResource("topic", "orders")
    assert code(alice.describe_configs([res])[res]) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    _create_acls(adm, [_binding("orders", AclOperation.ALTER_CONFIGS)])
    res = ConfigResource("topic", "orders")
    configs = alice.describe_configs([res])[res].result(30)
    assert "retention.ms" in configs
    assert "orders" in adm.list_topics(timeout=30).topics  # not deleted

    # An idempotent producer: InitProducerId needs IdempotentWrite on the cluster or Write on
    # some topic.
    def idempotent_error():
        got = []
        p = Producer(harness.producer_conf(b.bootstrap, **_sasl("alice", ALICE_PW),
                                           **{"enable.idempotence": True,
                                              "message.timeout.ms": 10000}))
        p.produce("orders", b"idem", partition=0, on_delivery=lambda err, msg: got.append(err))
        p.flush(30)
        return got[0] if got else "no delivery report"
    assert idempotent_error() is not None
    _create_acls(adm, [_binding("orders", AclOperation.WRITE)])
    assert idempotent_error() is None


def test_acl_cli(secured, strata_bin):
    b = secured
    boot = ["--bootstrap", b.bootstrap]
    r = _cli(strata_bin, ["acl", "add", "--allow-principal", "User:bob", "--operation", "Read",
                          "--operation", "Describe", "--topic", "t1", "--resource-pattern-type",
                          "prefixed", "-o", "json", *boot])
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == 2
    r = _cli(strata_bin, ["acl", "add", "--deny-principal", "User:bob", "--operation", "Write",
                          "--cluster", *boot])
    assert r.returncode == 0, r.stderr
    assert "Cluster" in r.stdout and "kafka-cluster" in r.stdout and "Deny" in r.stdout

    r = _cli(strata_bin, ["acl", "list", "--principal", "User:bob", "-o", "json", *boot])
    assert r.returncode == 0, r.stderr
    listed = sorted((a["resource_type"], a["resource_name"], a["pattern_type"], a["operation"],
                     a["permission"]) for a in json.loads(r.stdout))
    assert listed == [("Cluster", "kafka-cluster", "Literal", "Write", "Deny"),
                      ("Topic", "t1", "Prefixed", "Describe", "Allow"),
                      ("Topic", "t1", "Prefixed", "Read", "Allow")]
    r = _cli(strata_bin, ["acl", "list", "--topic", "t1", *boot])
    assert r.returncode == 0 and r.stdout.count("User:bob") == 2, r

    r = _cli(strata_bin, ["acl", "delete", "--topic", "t1", "--resource-pattern-type", "prefixed",
                          "--operation", "Read", "-o", "json", *boot])
    assert r.returncode == 0, r.stderr
    assert [a["operation"] for a in json.loads(r.stdout)] == ["Read"]
    r = _cli(strata_bin, ["acl", "delete", "--principal", "User:bob", "-o", "json", *boot])
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 2, r
    r = _cli(strata_bin, ["acl", "list", "-o", "json", *boot])
    assert r.returncode == 0 and json.loads(r.stdout) == [], r

    # Not a super user, no Alter on the cluster: refused by the broker.
    r = _cli(strata_bin, ["acl", "add", "--allow-principal", "User:alice", "--operation", "All",
                          "--topic", "*", *boot], user="alice", password=ALICE_PW)
    assert r.returncode == 1 and "ClusterAuthorizationFailed" in r.stderr, r
    # Bad arguments: exit 2 with a clear message.
    for args, text in ((["--operation", "Read", "--topic", "t"], "principal"),
                       (["--allow-principal", "User:a", "--topic", "t"], "operation"),
                       (["--allow-principal", "User:a", "--operation", "Read"], "resource"),
                       (["--allow-principal", "alice", "--operation", "Read", "--topic", "t"],
                        "Type:name"),
                       (["--allow-principal", "User:a", "--operation", "Fly", "--topic", "t"],
                        "unknown operation")):
        r = _cli(strata_bin, ["acl", "add", *args, *boot])
        assert r.returncode == 2 and text in r.stderr, (args, r)
    r = _cli(strata_bin, ["acl", "delete", *boot])
    assert r.returncode == 2 and "needs a resource" in r.stderr, r


def test_invalid_acls_refused(secured, strata_bin):
    adm = _admin(secured)
    bad = [AclBinding(ResourceType.BROKER, "not-the-cluster", ResourcePatternType.LITERAL,
                      "User:alice", "*", AclOperation.ALTER, AclPermissionType.ALLOW),
           AclBinding(ResourceType.TOPIC, "t", ResourcePatternType.LITERAL,
                      "alice", "*", AclOperation.READ, AclPermissionType.ALLOW)]
    for binding, f in adm.create_acls(bad, request_timeout=30).items():
        with pytest.raises(KafkaException) as ei:
            f.result(30)
        assert ei.value.args[0].code() == KafkaError.INVALID_REQUEST, (binding, ei.value)
    every = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                             AclOperation.ANY, AclPermissionType.ANY)
    assert adm.describe_acls(every, request_timeout=30).result(30) == []
    # A user without Describe on the cluster may not list ACLs. librdkafka drops DescribeAcls'
    # error code (an empty list either way), so read it with the CLI.
    r = _cli(strata_bin, ["acl", "list", "--bootstrap", secured.bootstrap], user="alice",
             password=ALICE_PW)
    assert r.returncode == 1 and "ClusterAuthorizationFailed" in r.stderr, r


def test_security_disabled(broker, strata_bin):
    adm = AdminClient({"bootstrap.servers": broker.bootstrap})
    f = adm.create_acls([_binding("t", AclOperation.READ)], request_timeout=30)
    with pytest.raises(KafkaException) as ei:
        list(f.values())[0].result(30)
    assert ei.value.args[0].code() == KafkaError.SECURITY_DISABLED
    r = subprocess.run([strata_bin, "acl", "list", "--bootstrap", broker.bootstrap],
                       capture_output=True, text=True, timeout=60, env=harness.clean_env())
    assert r.returncode == 1 and "SecurityDisabled" in r.stderr, r


def test_anonymous_allow_everyone_if_no_acl_found(broker_factory):
    # No SASL: every client is User:ANONYMOUS. With allow_everyone_if_no_acl_found, a resource
    # no ACL names is open; once an ACL names it, only what the ACLs allow.
    b = broker_factory(config={"kafka": {"authorizer": "acl",
                                         "allow_everyone_if_no_acl_found": True}})
    free, guarded = f"free-{uuid.uuid4().hex[:6]}", "guarded"
    harness.create_topic(b.bootstrap, guarded, 1)
    harness.produce(b.bootstrap, free, [Rec(0, None, b"open")], timeout=60)  # auto-created
    adm = AdminClient({"bootstrap.servers": b.bootstrap})
    _create_acls(adm, [_binding(guarded, AclOperation.WRITE, principal="User:alice")])
    err = _produce_error_plain(b, guarded)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    assert _produce_error_plain(b, free) is None
    # The anonymous principal can be granted like any other.
    _create_acls(adm, [_binding(guarded, AclOperation.WRITE, principal="User:ANONYMOUS")])
    assert _produce_error_plain(b, guarded) is None


def _produce_error_plain(b, topic):
    got = []
    p = Producer(harness.producer_conf(b.bootstrap, **{"message.timeout.ms": 10000}))
    try:
        p.produce(topic, b"x", partition=0, on_delivery=lambda err, msg: got.append(err))
    except KafkaException as e:
        # librdkafka refuses at once when its metadata already says the topic is not authorized.
        return e.args[0]
    p.flush(30)
    assert len(got) == 1
    return got[0]


@pytest.mark.parametrize("kafka,key,text", [
    ({"authorizer": "ldap"}, "kafka.authorizer", "unknown authorizer"),
    ({"authorizer": "acl", "super_users": "admin"}, "kafka.super_users", "Type:name"),
])
def test_bad_acl_config(broker_factory, kafka, key, text):
    with pytest.raises(BrokerDied) as ei:
        broker_factory(config={"kafka": kafka})
    assert key in str(ei.value) and text in str(ei.value), ei.value


def test_offset_delete_needs_read_on_each_topic(secured):
    """OffsetDelete: Delete on the group, and Read on every topic named; a topic without Read
    answers TOPIC_AUTHORIZATION_FAILED for its partitions and keeps its offsets, the others are
    deleted (kafka-python's delete_group_offsets)."""
    from kafka import TopicPartition as KTP
    from kafka.admin import KafkaAdminClient
    from kafka.errors import NoError, TopicAuthorizationFailedError
    from kafka.structs import OffsetAndMetadata

    b = secured
    adm = _admin(b)
    for f in adm.create_topics([NewTopic("od-ok", 1), NewTopic("od-deny", 1)]).values():
        f.result(30)
    _create_acls(adm, [_binding("od-g", AclOperation.DELETE, ty=ResourceType.GROUP),
                       _binding("od-g", AclOperation.READ, ty=ResourceType.GROUP),
                       _binding("od-ok", AclOperation.READ),
                       _binding("od-deny", AclOperation.DESCRIBE)])

    def kp(user, pw):
        return KafkaAdminClient(bootstrap_servers=b.bootstrap, security_protocol="SASL_PLAINTEXT",
                                sasl_mechanism=MECH, sasl_plain_username=user, sasl_plain_password=pw)

    root = kp("admin", ADMIN_PW)
    ok, deny = KTP("od-ok", 0), KTP("od-deny", 0)
    try:
        root.alter_group_offsets("od-g", {ok: OffsetAndMetadata(5, "", -1), deny: OffsetAndMetadata(7, "", -1)})
        alice = kp("alice", ALICE_PW)
        try:
            res = alice.delete_group_offsets("od-g", [ok, deny])
        finally:
            alice.close()
        assert res[ok] is NoError, res
        assert res[deny] is TopicAuthorizationFailedError, res
        left = root.list_group_offsets({"od-g": [ok, deny]})["od-g"]
        assert left[deny].offset == 7, left
        assert ok not in left or left[ok].offset == -1, left
    finally:
        root.close()
