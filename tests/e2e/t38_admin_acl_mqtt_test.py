"""t38 admin API completeness (issue 9): Kafka ACLs over HTTP (`/v1/acls`) and gRPC
(ListAcls, CreateAcl, DeleteAcls) enforced on a SASL confluent-kafka producer, with the
validation errors naming their field; DrainNode over gRPC (the node shows draining); the MQTT
clients of a node (`/v1/mqtt/clients`, ListMqttClients, `strata mqtt clients`) while paho
clients are connected, after they leave, and a persistent session shown offline."""

import json
import subprocess
import uuid

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

import harness
from t94_admin_grpc_test import http, pb, rpc_error, stub, trailer  # noqa: F401 (pb: fixture)

paho = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.client import MQTTv5, MQTTv311  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

ADMIN_PW = "adm1n-pass"
ALICE_PW = "alice-pass"
MECH = "SCRAM-SHA-256"


def _sasl(user, password):
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": MECH,
            "sasl.username": user, "sasl.password": password}


@pytest.fixture
def secured(broker_factory, strata_bin):
    b = broker_factory(config={"kafka": {
        "sasl_mechanisms": MECH, "authorizer": "acl", "super_users": "User:admin"}})
    for user, pw in (("admin", ADMIN_PW), ("alice", ALICE_PW)):
        r = subprocess.run([strata_bin, "user", "add", user, "--mechanism", MECH, "--password-stdin",
                            "--via-admin", b.admin_url], input=pw + "\n", capture_output=True,
                           text=True, timeout=60, env=harness.clean_env())
        assert r.returncode == 0, r.stderr
    return b


def _produce_error(b, topic):
    """alice produces one record; the delivery error (None when it landed)."""
    got = []
    p = Producer(harness.producer_conf(b.bootstrap, **_sasl("alice", ALICE_PW),
                                       **{"message.timeout.ms": 10000}))
    p.produce(topic, b"x", partition=0, on_delivery=lambda err, msg: got.append(err))
    p.flush(30)
    assert len(got) == 1
    return got[0]


def _query(path, **params):
    from urllib.parse import urlencode
    return path + ("?" + urlencode(params) if params else "")


WRITE_ALICE = {"resource_type": "Topic", "resource_name": "orders", "principal": "User:alice",
               "operation": "Write", "permission": "Allow"}


def test_acls_over_http_and_grpc_are_enforced(secured, pb):
    admin_pb2, _, grpc = pb
    b = secured
    a = stub(pb, b)
    adm = AdminClient({"bootstrap.servers": b.bootstrap, **_sasl("admin", ADMIN_PW)})
    adm.create_topics([NewTopic("orders", 1, 1)])["orders"].result(30)

    # No ACL: alice may not write.
    err = _produce_error(b, "orders")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err

    # HTTP create: defaults filled in, 201 then 200 for the same binding.
    status, acl = http(b, "POST", "/v1/acls", WRITE_ALICE)
    assert status == 201, acl
    assert acl == {**WRITE_ALICE, "pattern_type": "Literal", "host": "*"}
    status, again = http(b, "POST", "/v1/acls", {**WRITE_ALICE, "operation": "WRITE", "host": "*"})
    assert (status, again) == (200, acl)
    assert _produce_error(b, "orders") is None, "the ALLOW binding lets alice write"

    # gRPC create: a DENY (prefixed, names in Kafka's other spellings) wins over the ALLOW.
    deny = a.CreateAcl(admin_pb2.Acl(resource_type="topic", resource_name="ord",
                                     pattern_type="PREFIXED", principal="User:alice",
                                     operation="write", permission="deny"), timeout=20)
    assert (deny.pattern_type, deny.operation, deny.permission, deny.host) == \
        ("Prefixed", "Write", "Deny", "*")
    err = _produce_error(b, "orders")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err

    # Listing: both transports, DescribeAcls filters (Match finds the prefixed one too).
    status, listed = http(b, "GET", "/v1/acls")
    assert status == 200 and len(listed) == 2, listed
    status, matched = http(b, "GET", _query("/v1/acls", resource_type="topic",
                                            resource_name="orders", pattern_type="match"))
    assert status == 200 and {x["permission"] for x in matched} == {"Allow", "Deny"}, matched
    status, literal = http(b, "GET", _query("/v1/acls", pattern_type="literal"))
    assert [x["permission"] for x in literal] == ["Allow"], literal
    got = a.ListAcls(admin_pb2.AclFilter(permission="Deny"), timeout=20)
    assert [(x.resource_name, x.pattern_type) for x in got.acls] == [("ord", "Prefixed")]
    assert len(a.ListAcls(admin_pb2.AclFilter(), timeout=20).acls) == 2
    # The Kafka side sees the same bindings.
    from confluent_kafka.admin import AclBindingFilter, AclOperation, AclPermissionType
    from confluent_kafka.admin import ResourcePatternType, ResourceType
    seen = adm.describe_acls(AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None,
                                              None, AclOperation.ANY, AclPermissionType.ANY),
                             request_timeout=30).result(30)
    assert sorted(x.permission_type.name for x in seen) == ["ALLOW", "DENY"]

    # gRPC delete of the DENY: alice writes again.
    gone = a.DeleteAcls(admin_pb2.AclFilter(permission="deny"), timeout=20)
    assert [x.resource_name for x in gone.deleted] == ["ord"]
    assert _produce_error(b, "orders") is None

    # HTTP delete by query parameters, then by a JSON body (nothing left to match).
    status, out = http(b, "DELETE", _query("/v1/acls", principal="User:alice", operation="write"))
    assert status == 200 and out["deleted"] == [acl], out
    status, out = http(b, "DELETE", "/v1/acls", {"resource_type": "Any"})
    assert (status, out) == (200, {"deleted": []})
    err = _produce_error(b, "orders")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err


@pytest.mark.parametrize("body,field,words", [
    ({**WRITE_ALICE, "resource_type": "Broker"}, "resource_type", "Topic, Group, Cluster"),
    ({**WRITE_ALICE, "resource_type": "Any"}, "resource_type", "got `Any`"),
    ({**WRITE_ALICE, "pattern_type": "Match"}, "pattern_type", "Literal, Prefixed"),
    ({**WRITE_ALICE, "operation": "Any"}, "operation", "IdempotentWrite"),
    ({**WRITE_ALICE, "permission": "Maybe"}, "permission", "Deny, Allow"),
    ({k: v for k, v in WRITE_ALICE.items() if k != "principal"}, "principal", "required"),
    ({**WRITE_ALICE, "principal": "alice"}, "principal", "Type:name"),
    ({**WRITE_ALICE, "host": ""}, "host", "use *"),
    ({**WRITE_ALICE, "resource_name": ""}, "resource_name", "empty"),
    ({**WRITE_ALICE, "resource_type": "Cluster", "resource_name": "c"}, "resource_name",
     "kafka-cluster"),
    ({**WRITE_ALICE, "operation": 3}, "operation", "must be a string"),
])
def test_acl_create_errors_name_the_field(broker, body, field, words):
    status, err = http(broker, "POST", "/v1/acls", body)
    assert status == 400 and err["field"] == field, err
    assert words in err["message"], err


def test_acl_request_errors(broker, pb):
    admin_pb2, _, grpc = pb
    status, err = http(broker, "POST", "/v1/acls", {**WRITE_ALICE, "prinicpal": "User:x"})
    assert status == 400 and "unknown field `prinicpal`" in err["message"], err
    status, err = http(broker, "GET", _query("/v1/acls", operation="fly"))
    assert status == 400 and err["field"] == "operation", err
    status, err = http(broker, "GET", _query("/v1/acls", principal="nobody"))
    assert status == 400 and err["field"] == "principal", err
    status, err = http(broker, "DELETE", "/v1/acls")
    assert status == 400 and "filter is empty" in err["message"], err
    import urllib.request
    req = urllib.request.Request(broker.admin_url + "/v1/acls?resource_type=Any", method="DELETE",
                                 data=b'{"principal": "User:a"}')
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("both a body and a query were accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 400 and "not both" in json.loads(e.read())["message"]
    # Over gRPC: INVALID_ARGUMENT with the same message, the field in the trailer.
    a = stub(pb, broker)
    e = rpc_error(pb, a.CreateAcl, admin_pb2.Acl(resource_type="Topic", resource_name="t",
                                                 principal="User:a", operation="Fly",
                                                 permission="Allow"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and trailer(e, "strata-field") == "operation"
    assert "`operation` must be one of" in e.details()
    e = rpc_error(pb, a.DeleteAcls, admin_pb2.AclFilter())
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "filter is empty" in e.details()


def test_drain_over_grpc(broker, pb):
    admin_pb2, _, grpc = pb
    a = stub(pb, broker)
    r = a.DrainNode(admin_pb2.DrainNodeRequest(node_id=1, draining=True), timeout=20)
    assert (r.node_id, r.draining, r.moves_planned) == (1, True, 0)
    _, cluster = http(broker, "GET", "/v1/cluster")
    assert [x["draining"] for x in cluster["brokers"]] == [True], cluster["brokers"]
    assert [x.draining for x in a.GetCluster(admin_pb2.GetClusterRequest(), timeout=20).brokers] == [True]
    r = a.DrainNode(admin_pb2.DrainNodeRequest(node_id=1, draining=False), timeout=20)
    assert r.draining is False
    _, cluster = http(broker, "GET", "/v1/cluster")
    assert [x["draining"] for x in cluster["brokers"]] == [False]
    # Errors: an unknown node, and `draining` left out.
    e = rpc_error(pb, a.DrainNode, admin_pb2.DrainNodeRequest(node_id=99, draining=True))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "99" in e.details()
    e = rpc_error(pb, a.DrainNode, admin_pb2.DrainNodeRequest(node_id=1))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and trailer(e, "strata-field") == "draining"


def _clients(b) -> dict:
    status, doc = http(b, "GET", "/v1/mqtt/clients")
    assert status == 200, doc
    return doc


def _by_id(doc) -> dict:
    return {c["client_id"]: c for c in doc["clients"]}


def test_mqtt_clients_listed_with_their_fields(broker, pb, strata_bin):
    admin_pb2, _, _ = pb
    a = stub(pb, broker)
    assert _clients(broker)["clients"] == []
    live_id = f"live-{uuid.uuid4().hex[:6]}"
    # MQTT 3.1.1 with a user name (auth is off: the name is shown as given).
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=live_id, protocol=MQTTv311)
    c.username_pw_set("bob", "pw")
    import queue
    acks: queue.Queue = queue.Queue()
    c.on_connect = lambda *args: acks.put(args)
    c.connect("127.0.0.1", broker.mqtt_port, keepalive=37)
    c.loop_start()
    acks.get(timeout=20)
    subs: queue.Queue = queue.Queue()
    c.on_subscribe = lambda *args: subs.put(args)
    c.subscribe([("a/#", 1), ("b/+", 0)])
    subs.get(timeout=20)
    local = c.socket().getsockname()

    # A persistent MQTT 5 session that leaves: listed offline with its expiry.
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    p = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="persist-1", protocol=MQTTv5)
    p.connect("127.0.0.1", broker.mqtt_port, keepalive=20, clean_start=False, properties=props)
    p.loop_start()
    harness.eventually(lambda: "persist-1" in _by_id(_clients(broker)), 20, what="persist-1 listed")
    on = _by_id(_clients(broker))["persist-1"]
    assert on["connected"] and on["protocol"] == "5.0" and on["session_expiry_secs"] == 300, on
    p.disconnect()
    p.loop_stop()

    def settled():
        d = _by_id(_clients(broker))
        return live_id in d and d[live_id]["subscriptions"] == 2 and \
            "persist-1" in d and not d["persist-1"]["connected"]
    harness.eventually(settled, 20, what="the live client subscribed and the session offline")
    doc = _clients(broker)
    me = _by_id(doc)[live_id]
    assert me["connected"] and me["username"] == "bob" and me["protocol"] == "3.1.1", me
    assert me["transport"] == "tcp" and me["peer"] == f"{local[0]}:{local[1]}", me
    assert me["keep_alive_secs"] == 37 and isinstance(me["inflight"], int), me
    assert me["persistent"] is False and me["expires_ms"] is None, me
    off = _by_id(doc)["persist-1"]
    assert off["persistent"] and off["connected_ms"] is None and off["transport"] is None, off
    assert off["expires_ms"] == off["disconnected_ms"] + 300_000, off
    assert 0 < off["expires_in_ms"] <= 300_000, off
    assert (doc["connections"], doc["sessions"], doc["offline_sessions"]) == (1, 2, 1), doc
    assert doc["enabled"] is True and doc["node_id"] == 1
    assert [x["client_id"] for x in doc["clients"]] == [live_id, "persist-1"], "connected first"

    # gRPC answers the same.
    g = a.ListMqttClients(admin_pb2.ListMqttClientsRequest(), timeout=20)
    gm = {x.client_id: x for x in g.clients}
    assert gm[live_id].transport == "tcp" and gm[live_id].keep_alive_secs == 37
    assert gm[live_id].username == "bob" and gm[live_id].subscriptions == 2
    assert not gm["persist-1"].connected and gm["persist-1"].HasField("expires_ms")
    assert not gm["persist-1"].HasField("peer")
    assert (g.connections, g.offline_sessions) == (1, 1)

    # The CLI: JSON is the API's document; the table names the clients.
    r = subprocess.run([strata_bin, "mqtt", "clients", "--output", "json", "--admin", broker.admin_url],
                       capture_output=True, text=True, timeout=60, env=harness.clean_env())
    assert r.returncode == 0, r.stderr
    cli_doc = json.loads(r.stdout)
    assert _by_id(cli_doc)[live_id]["peer"] == me["peer"]
    r = subprocess.run([strata_bin, "mqtt", "clients", "--admin", broker.admin_url],
                       capture_output=True, text=True, timeout=60, env=harness.clean_env())
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "1 connections" in lines[0] and "CLIENT-ID" in lines[1], r.stdout
    assert any(line.startswith(live_id) and "connected" in line and "tcp" in line for line in lines)
    assert any(line.startswith("persist-1") and "offline" in line for line in lines), r.stdout
    r = subprocess.run([strata_bin, "mqtt", "clients", "--admin", "localhost:1"],
                       capture_output=True, text=True, timeout=60, env=harness.clean_env())
    assert r.returncode == 2 and "http://" in r.stderr, r.stderr

    # The live client leaves: gone from the list; the persistent session stays.
    c.disconnect()
    c.loop_stop()
    harness.eventually(lambda: live_id not in _by_id(_clients(broker)), 20, what="client gone")
    assert list(_by_id(_clients(broker))) == ["persist-1"]
