"""The admin API over gRPC (broker/proto/admin.proto, served on `meta.listen`).

Every RPC against a running node with Python grpcio stubs generated from the repo's proto at
test time, compared with the HTTP/JSON admin API's answers for the same objects (a topic made
by a Kafka client, a group made by confluent-kafka consumers); the error codes (unknown topic,
bad argument naming the field, a reset refused while the group has live members); start-up
when `meta.listen` is taken; and a 3-node cluster where GetCluster lists all three brokers.
"""

import json
import socket
import subprocess
import time

import pytest

import harness
from cluster import Cluster



@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """(admin_pb2, admin_pb2_grpc, grpc) generated from broker/proto/admin.proto."""
    return harness.grpc_stubs("admin", tmp_path_factory.mktemp("admin_stubs"))


def meta_addr(b: harness.Broker) -> str:
    if "--meta-listen" in b.extra_args:
        return b.extra_args[b.extra_args.index("--meta-listen") + 1]
    return f"127.0.0.1:{b.meta_port}"


def stub(pb, b: harness.Broker):
    _, pb_grpc, grpc = pb
    channel = grpc.insecure_channel(meta_addr(b))
    return pb_grpc.AdminStub(channel)


def http(b: harness.Broker, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(b.admin_url + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def rpc_error(pb, call, request):
    """The grpc.RpcError a call raises (fails if it succeeds)."""
    grpc = pb[2]
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=20)
    return info.value


def trailer(err, key: str) -> str | None:
    return dict(err.trailing_metadata() or ()).get(key)


def produce_n(bootstrap: str, topic: str, per_partition: dict[int, int]):
    from confluent_kafka import Producer

    p = Producer(harness.producer_conf(bootstrap))
    for part, n in per_partition.items():
        for i in range(n):
            p.produce(topic, value=f"v{i}".encode(), partition=part)
    assert p.flush(60) == 0


def partitions_of(topic_msg) -> dict[int, tuple]:
    return {p.partition: (p.leader if p.HasField("leader") else None, p.leader_epoch,
                          p.log_start_offset, p.high_watermark, p.messages)
            for p in topic_msg.partitions}


def partitions_of_json(topic_json) -> dict[int, tuple]:
    return {p["partition"]: (p["leader"], p["leader_epoch"], p["log_start_offset"],
                             p["high_watermark"], p["messages"])
            for p in topic_json["partitions"]}


def test_startup_line_and_taken_port(strata_bin, broker, pb, tmp_path):
    assert f"strata: admin gRPC listening on {meta_addr(broker)}" in broker.stdout_text()
    # meta.listen taken: a clear start-up error naming the key.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = f"127.0.0.1:{s.getsockname()[1]}"
        r = subprocess.run([strata_bin, "start", "--data-dir", str(tmp_path / "taken"),
                            "--kafka-listen", f"127.0.0.1:{harness.free_port()}",
                            "--admin-listen", f"127.0.0.1:{harness.free_port()}",
                            "--mqtt-listen", f"127.0.0.1:{harness.free_port()}",
                            "--meta-listen", taken],
                           capture_output=True, timeout=120, env=harness.clean_env())
    err = r.stderr.decode(errors="replace")
    assert r.returncode != 0, err[-1000:]
    assert "meta.listen" in err and taken in err, err[-1000:]
    assert "panicked" not in err, err[-2000:]


def test_topics_match_http_and_errors_map_to_codes(broker, pb):
    admin_pb2, _, grpc = pb
    a = stub(pb, broker)
    harness.create_topic(broker.bootstrap, "kt", 3, config={"retention.ms": "86400000"})
    produce_n(broker.bootstrap, "kt", {0: 5, 1: 2, 2: 0})

    listed = a.ListTopics(admin_pb2.ListTopicsRequest(), timeout=20)
    _, http_topics = http(broker, "GET", "/v1/topics")
    assert [t.name for t in listed.topics] == [t["name"] for t in http_topics]
    kt = next(t for t in listed.topics if t.name == "kt")
    assert kt.messages == 7
    assert partitions_of(kt) == partitions_of_json(next(t for t in http_topics if t["name"] == "kt"))

    d = a.DescribeTopic(admin_pb2.DescribeTopicRequest(name="kt"), timeout=20)
    status, hd = http(broker, "GET", "/v1/topics/kt")
    assert status == 200
    assert (d.name, d.id, d.partition_count, d.created_ms, d.storage_mode) == \
        (hd["name"], hd["id"], hd["partition_count"], hd["created_ms"], hd["storage_mode"])
    assert d.storage_mode == "wal"
    assert dict(d.configs) == hd["configs"] and d.configs["retention.ms"] == "86400000"
    assert partitions_of(d) == partitions_of_json(hd)
    assert {p.partition: p.high_watermark for p in d.partitions} == {0: 5, 1: 2, 2: 0}

    # Create, alter, delete over gRPC; HTTP sees each change.
    c = a.CreateTopic(admin_pb2.CreateTopicRequest(name="gt", partitions=2,
                                                   configs={"strata.storage.mode": "wal"}), timeout=30)
    assert (c.name, c.partition_count, len(c.partitions)) == ("gt", 2, 2)
    assert http(broker, "GET", "/v1/topics/gt")[1]["id"] == c.id
    alt = a.AlterTopic(admin_pb2.AlterTopicRequest(name="gt", partitions=4, set={"retention.ms": "3600000"}),
                       timeout=30)
    assert alt.partition_count == 4 and alt.configs["retention.ms"] == "3600000"
    hg = http(broker, "GET", "/v1/topics/gt")[1]
    assert hg["partition_count"] == 4 and hg["configs"]["retention.ms"] == "3600000"
    dl = a.DeleteTopic(admin_pb2.DeleteTopicRequest(name="gt"), timeout=30)
    assert (dl.deleted, dl.id) == ("gt", c.id)
    assert http(broker, "GET", "/v1/topics/gt")[0] == 404

    # Errors: the same message as HTTP, the code by class, the field in the trailers.
    err = rpc_error(pb, a.DescribeTopic, admin_pb2.DescribeTopicRequest(name="nope"))
    status, body = http(broker, "GET", "/v1/topics/nope")
    assert err.code() == grpc.StatusCode.NOT_FOUND and status == 404
    assert err.details() == body["message"]
    assert trailer(err, "strata-error") == body["error"] == "unknown_topic"
    for call, req in [(a.DeleteTopic, admin_pb2.DeleteTopicRequest(name="nope")),
                      (a.AlterTopic, admin_pb2.AlterTopicRequest(name="nope", partitions=9))]:
        assert rpc_error(pb, call, req).code() == grpc.StatusCode.NOT_FOUND

    err = rpc_error(pb, a.CreateTopic, admin_pb2.CreateTopicRequest(name="bad", partitions=0))
    status, body = http(broker, "POST", "/v1/topics", {"name": "bad", "partitions": 0})
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and status == 400
    assert err.details() == body["message"]
    assert trailer(err, "strata-field") == body["field"] == "partitions"

    err = rpc_error(pb, a.CreateTopic, admin_pb2.CreateTopicRequest(name="bad name!"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and trailer(err, "strata-field") == "name"

    err = rpc_error(pb, a.CreateTopic, admin_pb2.CreateTopicRequest(name="kt"))
    status, body = http(broker, "POST", "/v1/topics", {"name": "kt"})
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and status == 409
    assert err.details() == body["message"]

    err = rpc_error(pb, a.AlterTopic, admin_pb2.AlterTopicRequest(name="kt"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and trailer(err, "strata-field") == "body"
    err = rpc_error(pb, a.AlterTopic, admin_pb2.AlterTopicRequest(name="kt", partitions=2))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and trailer(err, "strata-field") == "partitions"


def test_groups_storage_wal_cluster_match_http(broker, pb):
    admin_pb2, _, grpc = pb
    from t70_consumer_groups_test import ConfluentMember

    a = stub(pb, broker)
    harness.create_topic(broker.bootstrap, "gq", 2)
    produce_n(broker.bootstrap, "gq", {0: 4, 1: 6})

    m = ConfluentMember(broker.bootstrap, "g94", "gq")
    try:
        got = []
        harness.eventually(lambda: got.extend(m.poll()) or len(got) >= 10, 60, what="the member consumes 10")
        m.commit()
        g = a.DescribeGroup(admin_pb2.DescribeGroupRequest(group_id="g94"), timeout=20)
        _, hg = http(broker, "GET", "/v1/groups/g94")
        assert g.state == hg["state"] == "Stable"
        assert [x.member_id for x in g.members] == [x["member_id"] for x in hg["members"]]
        assert len(g.members) == 1
        assert {(t.topic, tuple(t.partitions)) for t in g.members[0].assignment} == {("gq", (0, 1))}
        # A reset while the group has a live member: FAILED_PRECONDITION, as HTTP's 409.
        err = rpc_error(pb, a.ResetGroupOffsets,
                        admin_pb2.ResetGroupOffsetsRequest(group_id="g94", topic="gq", to="earliest"))
        status, body = http(broker, "POST", "/v1/groups/g94/reset-offsets", {"topic": "gq", "to": "earliest"})
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and status == 409
        assert err.details() == body["message"] and trailer(err, "strata-error") == "group_active"
    finally:
        m.close()

    def empty():
        return a.DescribeGroup(admin_pb2.DescribeGroupRequest(group_id="g94"), timeout=20).state == "Empty"
    harness.eventually(empty, 60, what="group g94 empty after its member left")

    produce_n(broker.bootstrap, "gq", {1: 3})
    listed = a.ListGroups(admin_pb2.ListGroupsRequest(), timeout=20)
    _, hl = http(broker, "GET", "/v1/groups")
    mine = next(x for x in listed.groups if x.group_id == "g94")
    hmine = next(x for x in hl if x["group_id"] == "g94")
    assert (mine.state, mine.partitions, mine.lag, mine.coordinator) == \
        (hmine["state"], hmine["partitions"], hmine["lag"], hmine["coordinator"])
    assert mine.lag == 3
    g = a.DescribeGroup(admin_pb2.DescribeGroupRequest(group_id="g94"), timeout=20)
    _, hg = http(broker, "GET", "/v1/groups/g94")
    assert sorted((o.topic, o.partition, o.committed_offset, o.high_watermark, o.lag) for o in g.offsets) == \
        sorted((o["topic"], o["partition"], o["committed_offset"], o["high_watermark"], o["lag"])
               for o in hg["offsets"])

    # Reset: a dry run changes nothing; then to an offset, checked over HTTP.
    dry = a.ResetGroupOffsets(admin_pb2.ResetGroupOffsetsRequest(group_id="g94", topic="gq", to="earliest",
                                                                 dry_run=True), timeout=30)
    assert dry.dry_run and {p.partition: p.new_offset for p in dry.partitions} == {0: 0, 1: 0}
    assert {p.partition: p.previous_offset for p in dry.partitions} == {0: 4, 1: 6}
    r = a.ResetGroupOffsets(admin_pb2.ResetGroupOffsetsRequest(group_id="g94", topic="gq", partitions=[1],
                                                               to_offset=2), timeout=30)
    assert [(p.partition, p.previous_offset, p.new_offset) for p in r.partitions] == [(1, 6, 2)]
    _, hg = http(broker, "GET", "/v1/groups/g94")
    assert {o["partition"]: o["committed_offset"] for o in hg["offsets"]} == {0: 4, 1: 2}

    bad = admin_pb2.ResetGroupOffsetsRequest(group_id="g94", topic="gq", to="newest")
    err = rpc_error(pb, a.ResetGroupOffsets, bad)
    status, body = http(broker, "POST", "/v1/groups/g94/reset-offsets", {"topic": "gq", "to": "newest"})
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and status == 400
    assert err.details() == body["message"] and trailer(err, "strata-field") == "to"
    two = admin_pb2.ResetGroupOffsetsRequest(group_id="g94", topic="gq", to="latest", to_offset=1)
    assert trailer(rpc_error(pb, a.ResetGroupOffsets, two), "strata-field") == "to"
    err = rpc_error(pb, a.ResetGroupOffsets,
                    admin_pb2.ResetGroupOffsetsRequest(group_id="g94", topic="gq", partitions=[7], to="latest"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and trailer(err, "strata-field") == "partitions"
    err = rpc_error(pb, a.DescribeGroup, admin_pb2.DescribeGroupRequest(group_id="no-such-group"))
    assert err.code() == grpc.StatusCode.NOT_FOUND

    # Storage and WAL: the same numbers as HTTP (objects once uploaded).
    broker.wait_uploaded("gq", 13)
    s = a.GetStorage(admin_pb2.GetStorageRequest(), timeout=20)
    _, hs = http(broker, "GET", "/v1/storage")
    assert s.object_store == hs["object_store"]
    assert {t.name: (t.partitions, t.objects, t.blocks, t.bytes) for t in s.topics} == \
        {t["name"]: (t["partitions"], t["objects"], t["blocks"], t["bytes"]) for t in hs["topics"]}
    assert s.total.blocks == hs["total"]["blocks"] and s.total.blocks > 0
    assert s.total.bytes == hs["total"]["bytes"] > 0

    w = a.GetWal(admin_pb2.GetWalRequest(), timeout=20)
    status, hw = http(broker, "GET", "/v1/wal")
    assert status == 200
    assert w.node_id == hw["node_id"] == broker.node_id
    assert w.HasField("local") and w.local.healthy and w.local.bytes > 0
    assert [(x.stream, x.epoch, x.holder if x.HasField("holder") else None) for x in w.streams] == \
        [(x["stream"], x["epoch"], x["holder"]) for x in hw["streams"]]

    c = a.GetCluster(admin_pb2.GetClusterRequest(), timeout=20)
    _, hc = http(broker, "GET", "/v1/cluster")
    assert (c.node_id, c.cluster_id, c.version, list(c.roles)) == \
        (hc["node_id"], hc["cluster_id"], hc["version"], hc["roles"])
    assert c.listeners.kafka == broker.bootstrap and c.listeners.admin == hc["listeners"]["admin"]
    assert [(b.id, b.address, b.alive) for b in c.brokers] == \
        [(b["id"], b["address"], b["alive"]) for b in hc["brokers"]]
    assert c.topics == hc["topics"] and c.partitions == hc["partitions"]


def test_three_node_cluster_lists_all_brokers(strata_bin, tmp_path, pb):
    admin_pb2, _, grpc = pb
    c = Cluster(strata_bin, tmp_path, brokers=3, combined=True)
    try:
        c.start()
        for b in c.brokers:
            a = stub(pb, b)

            def three_alive():
                got = a.GetCluster(admin_pb2.GetClusterRequest(), timeout=20)
                return [x.id for x in got.brokers if x.alive] == [1, 2, 3] and got.meta.HasField("leader")
            harness.eventually(three_alive, 60, what=f"node {b.node_id} lists three live brokers")
            got = a.GetCluster(admin_pb2.GetClusterRequest(), timeout=20)
            _, hc = http(b, "GET", "/v1/cluster")
            assert got.node_id == b.node_id
            assert got.listeners.meta == meta_addr(b) == hc["listeners"]["meta"]
            assert sorted(got.meta.voters) == [1, 2, 3]
            assert got.meta.leader == hc["meta"]["leader"]
            assert {x.id: x.address for x in got.brokers} == {x["id"]: x["address"] for x in hc["brokers"]}
        # The meta services and the admin service share the port: a topic made over gRPC on
        # one node is seen by another.
        stub(pb, c.brokers[0]).CreateTopic(admin_pb2.CreateTopicRequest(name="c94", partitions=3), timeout=60)

        def seen():
            try:
                return stub(pb, c.brokers[2]).DescribeTopic(
                    admin_pb2.DescribeTopicRequest(name="c94"), timeout=20).partition_count == 3
            except grpc.RpcError:
                return False
        harness.eventually(seen, 60, what="topic c94 on node 3")
    finally:
        c.stop()


def test_users_match_http(broker, pb):
    import hashlib

    admin_pb2, _, grpc = pb
    a = stub(pb, broker)
    salt = b"t94-salt-0123456"
    salted = hashlib.pbkdf2_hmac("sha256", b"secret", salt, 4096, 32)
    up = a.UpsertUser(admin_pb2.UpsertUserRequest(name="alice", mechanism="SCRAM-SHA-256", iterations=4096,
                                                  salt=salt, salted_password=salted), timeout=30)
    assert (up.name, up.mechanism) == ("alice", "SCRAM-SHA-256")
    listed = a.ListUsers(admin_pb2.ListUsersRequest(), timeout=20)
    status, hu = http(broker, "GET", "/v1/users")
    assert status == 200
    got = {u.name: [(c.mechanism, c.iterations) for c in u.credentials] for u in listed.users}
    assert got == {u["name"]: [(c["mechanism"], c["iterations"]) for c in u["credentials"]] for u in hu}
    assert got["alice"] == [("SCRAM-SHA-256", 4096)]

    bad = admin_pb2.UpsertUserRequest(name="bob", mechanism="MD5", iterations=4096, salt=salt, salted_password=salted)
    err = rpc_error(pb, a.UpsertUser, bad)
    import base64
    status, body = http(broker, "POST", "/v1/users", {
        "name": "bob", "mechanism": "MD5", "iterations": 4096,
        "salt": base64.b64encode(salt).decode(), "salted_password": base64.b64encode(salted).decode()})
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and status == 400
    assert err.details() == body["message"] and trailer(err, "strata-field") == body["field"] == "mechanism"
    no_salt = admin_pb2.UpsertUserRequest(name="bob", mechanism="SCRAM-SHA-256", iterations=4096,
                                          salted_password=salted)
    assert trailer(rpc_error(pb, a.UpsertUser, no_salt), "strata-field") == "salt"

    d = a.DeleteUser(admin_pb2.DeleteUserRequest(name="alice"), timeout=30)
    assert (d.deleted, list(d.mechanisms)) == ("alice", ["SCRAM-SHA-256"])
    assert all(u["name"] != "alice" for u in http(broker, "GET", "/v1/users")[1])
    err = rpc_error(pb, a.DeleteUser, admin_pb2.DeleteUserRequest(name="alice"))
    status, body = http(broker, "DELETE", "/v1/users/alice")
    assert err.code() == grpc.StatusCode.NOT_FOUND and status == 404
    assert err.details() == body["message"]


def test_server_reflection_describes_the_admin_service(broker, pb):
    """grpcurl-style discovery without the proto file (grpcio-reflection's v1alpha client)."""
    grpc = pb[2]
    reflection = pytest.importorskip("grpc_reflection.v1alpha.proto_reflection_descriptor_database")
    channel = grpc.insecure_channel(meta_addr(broker))
    db = reflection.ProtoReflectionDescriptorDatabase(channel)
    assert "strata.admin.v1.Admin" in db.get_services()
    from google.protobuf.descriptor_pool import DescriptorPool

    service = DescriptorPool(db).FindServiceByName("strata.admin.v1.Admin")
    assert {"GetCluster", "CreateTopic", "ResetGroupOffsets", "GetWal"} <= {m.name for m in service.methods}
