"""t88 mqtt cluster: MQTT across brokers (issue 7), 3 brokers (meta + broker roles) and 3 WAL
nodes on 127.0.0.1, every broker with its MQTT listener, `sensors/#` mapped to a 6-partition
Kafka topic so every broker leads some of its partitions.

- a paho QoS 1 subscriber on node 1 and a publisher on node 2 publishing to 60 MQTT topics
  (keys hash to partitions led by every node): publishes to partitions led elsewhere are
  forwarded to their leader (`Peer.Append`), the subscriber gets every PUBACKed message
  (remote partitions through `Peer.Tail`), and a confluent-kafka consumer reads them all;
- a persistent session (clean_session=False) on node 3 disconnects, messages are published on
  node 1, it reconnects to node 3 and gets them all (cursors read through `Peer.Read`);
- the Peer service's own answers (grpcio stubs generated from broker/proto/peer.proto):
  NOT_LEADER_OR_FOLLOWER from a broker that does not lead the partition (Append, Read, and a
  Tail refused with FAILED_PRECONDITION), UNKNOWN_TOPIC_OR_PARTITION, CORRUPT_MESSAGE for bytes
  that are no record batch, and a Read on the leader returning what MQTT stored;
- kill -9 a broker that leads some partitions while subscribers on nodes 1 and 3 are
  connected: after failover new publishes to those partitions reach both (each moved partition
  is now led by one of them: the other's tail re-subscribes to the new leader, the new
  leader's own follower turns local, both from where they stopped).
"""

from __future__ import annotations

import contextlib
import queue
import uuid
from pathlib import Path

import pytest

import harness
from cluster import Cluster, wait_leaders

paho = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.client import MQTTv311, MQTTv5  # noqa: E402
from t95_mqtt_test import WAIT, Client  # noqa: E402

TOPIC = "sensors"
PARTITIONS = 6
MQTT_TOPICS = [f"sensors/dev{i}" for i in range(60)]

CONFIG = f"""
[[mqtt.kafka_mapping]]
filter = "sensors/#"
kafka_topic = "{TOPIC}"
"""


@contextlib.contextmanager
def mqtt_cluster(strata_bin, tmp: Path, **cluster_kw):
    """A 3-broker cluster (`cluster.Cluster(**cluster_kw)`) whose brokers all map `sensors/#`
    to the Kafka topic `sensors`, created with PARTITIONS partitions led across the brokers."""
    cfg = tmp / "mqtt.toml"
    cfg.write_text(CONFIG)
    c = Cluster(strata_bin, tmp, brokers=3, **cluster_kw)
    for b in c.brokers:
        b.extra_args += ["--config", str(cfg)]
    try:
        c.start()
        harness.create_topic(c.bootstrap, TOPIC, PARTITIONS)
        wait_leaders(c, TOPIC, PARTITIONS)
        yield c
    finally:
        c.stop()
        print(c.logs())


@pytest.fixture(scope="module")
def cluster(strata_bin, tmp_path_factory):
    with mqtt_cluster(strata_bin, tmp_path_factory.mktemp("t88"), wal_nodes=3,
                      lease_ms=3000) as c:
        yield c


def publish_all(client: Client, payload_tag: str, topics=MQTT_TOPICS, per_topic: int = 2) -> set:
    """QoS 1 publishes, each waited for until PUBACKed; returns {(topic, payload)}."""
    sent = set()
    infos = []
    for n in range(per_topic):
        for t in topics:
            payload = f"{payload_tag}-{t}-{n}".encode()
            infos.append(client.publish(t, payload, 1))
            sent.add((t, payload))
    for info in infos:
        info.wait_for_publish(WAIT)
        assert info.is_published(), "publish not acknowledged"
    return sent


def receive(client: Client, expected: set, tag: str) -> set:
    """Takes messages until every expected one (of this tag) arrived."""
    got = set()
    while not expected <= got:
        try:
            m = client.messages.get(timeout=WAIT)
        except queue.Empty:
            missing = sorted(expected - got)[:5]
            raise AssertionError(f"{len(expected - got)} of {len(expected)} messages missing, e.g. {missing}")
        if m.payload.decode(errors="replace").startswith(tag + "-"):
            got.add((m.topic, m.payload))
    return got


def test_publish_on_one_broker_reaches_a_subscriber_on_another(cluster):
    leaders = wait_leaders(cluster, TOPIC, PARTITIONS)
    assert set(leaders.values()) == {1, 2, 3}, f"every broker leads a partition: {leaders}"
    sub = Client(cluster.broker(1).mqtt_port, MQTTv311, clean=True)
    pub = Client(cluster.broker(2).mqtt_port, MQTTv5, clean=True)
    try:
        sub.subscribe(("sensors/#", 1))
        # The subscription is live once a message published after it arrives.
        harness.eventually(lambda: publish_all(pub, "probe", MQTT_TOPICS[:1], 1) and
                           _drain_until(sub, "probe"), 30, what="the subscription to be live")
        sent = publish_all(pub, "a")
        got = receive(sub, sent, "a")
        assert got == sent
    finally:
        sub.close()
        pub.close()
    # Every message is a Kafka record in the mapped topic, spread over every leader's partitions.
    parts = harness.consume(cluster.bootstrap, TOPIC, PARTITIONS)
    stored = {(r.key.decode(), r.value) for recs in parts.values() for r in recs
              if r.value.startswith(b"a-")}
    assert stored == sent
    used = {p for p, recs in parts.items() if any(r.value.startswith(b"a-") for r in recs)}
    assert {leaders[p] for p in used} == {1, 2, 3}, f"partitions used {used}, leaders {leaders}"


def _drain_until(client: Client, tag: str) -> bool:
    """True once a message of `tag` arrived (other messages are dropped)."""
    try:
        while True:
            m = client.messages.get(timeout=2)
            if m.payload.decode(errors="replace").startswith(tag + "-"):
                return True
    except queue.Empty:
        return False


def test_persistent_session_gets_what_was_published_on_another_broker(cluster):
    cid = f"persist-{uuid.uuid4().hex[:8]}"
    port3 = cluster.broker(3).mqtt_port
    s = Client(port3, MQTTv311, client_id=cid, clean=False)
    s.subscribe(("sensors/#", 1))
    s.close()
    pub = Client(cluster.broker(1).mqtt_port, MQTTv311, clean=True)
    try:
        sent = publish_all(pub, "b")
    finally:
        pub.close()
    s = Client(port3, MQTTv311, client_id=cid, clean=False)
    try:
        flags, rc, _ = s.connack
        assert flags.session_present, "the session was kept"
        got = receive(s, sent, "b")
        assert got == sent
    finally:
        s.close()


@pytest.fixture(scope="module")
def peer_pb(tmp_path_factory):
    """(peer_pb2, peer_pb2_grpc, grpc) generated from broker/proto/peer.proto."""
    return harness.grpc_stubs("peer", tmp_path_factory.mktemp("peer_stubs"))


def peer_stub(peer_pb, b):
    _, pb_grpc, grpc = peer_pb
    addr = b.extra_args[b.extra_args.index("--meta-listen") + 1]
    return pb_grpc.PeerStub(grpc.insecure_channel(addr))


def test_peer_service_answers_and_refuses(cluster, peer_pb):
    pb, _, grpc = peer_pb
    leaders = wait_leaders(cluster, TOPIC, PARTITIONS)
    p, leader = next(iter(leaders.items()))
    other = next(n for n in (1, 2, 3) if n != leader)
    on_leader, on_other = peer_stub(peer_pb, cluster.broker(leader)), peer_stub(peer_pb, cluster.broker(other))

    # Not the leader: Kafka's NOT_LEADER_OR_FOLLOWER (6); a Tail is refused outright.
    r = on_other.Append(pb.AppendRequest(topic=TOPIC, partition=p, records=b"x"), timeout=WAIT)
    assert r.error_code == 6, r
    r = on_other.Read(pb.ReadRequest(topic=TOPIC, partition=p, offset=0, max_bytes=1024), timeout=WAIT)
    assert r.error_code == 6, r
    with pytest.raises(grpc.RpcError) as e:
        next(iter(on_other.Tail(pb.TailRequest(topic=TOPIC, partition=p, from_offset=0), timeout=WAIT)))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "NOT_LEADER_OR_FOLLOWER" in e.value.details()

    # Unknown topic or partition: UNKNOWN_TOPIC_OR_PARTITION (3).
    for topic, part in (("no-such-topic", 0), (TOPIC, PARTITIONS + 5)):
        r = on_leader.Append(pb.AppendRequest(topic=topic, partition=part, records=b"x"), timeout=WAIT)
        assert r.error_code == 3, (topic, part, r)
    with pytest.raises(grpc.RpcError) as e:
        next(iter(on_leader.Tail(pb.TailRequest(topic="no-such-topic", partition=0), timeout=WAIT)))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND

    # Bytes that are no record batch: CORRUPT_MESSAGE (2), with a message; nothing stored.
    before = on_leader.Read(pb.ReadRequest(topic=TOPIC, partition=p, offset=-1), timeout=WAIT)
    assert before.error_code == 0, before
    r = on_leader.Append(pb.AppendRequest(topic=TOPIC, partition=p, records=b"\0" * 80), timeout=WAIT)
    assert r.error_code == 2 and r.message, r
    after = on_leader.Read(pb.ReadRequest(topic=TOPIC, partition=p, offset=-1), timeout=WAIT)
    assert after.high_watermark == before.high_watermark

    # The leader reads back what MQTT stored there (test (a) put records in every partition).
    assert before.high_watermark > before.log_start_offset
    r = on_leader.Read(pb.ReadRequest(topic=TOPIC, partition=p, offset=before.log_start_offset,
                                      max_bytes=1 << 20), timeout=WAIT)
    assert r.error_code == 0 and r.chunks and r.high_watermark == before.high_watermark, r
    # A Tail from the log start pushes the same history first, then follows the end.
    events = on_leader.Tail(pb.TailRequest(topic=TOPIC, partition=p, from_offset=before.log_start_offset),
                            timeout=WAIT)
    first = next(iter(events))
    assert first.high_watermark == before.high_watermark
    assert first.next_offset == before.log_start_offset
    second = next(iter(events))
    assert second.records and second.next_offset <= before.high_watermark
    events.cancel()


def test_subscriber_follows_the_new_leader_after_a_broker_dies(cluster):
    leaders = wait_leaders(cluster, TOPIC, PARTITIONS)
    victim = 2
    moved = {p for p, l in leaders.items() if l == victim}
    assert moved, f"broker {victim} leads some partition: {leaders}"
    subs = [Client(cluster.broker(n).mqtt_port, MQTTv311, clean=True) for n in (1, 3)]
    try:
        for sub in subs:
            sub.subscribe(("sensors/#", 1))
        pub = Client(cluster.broker(3).mqtt_port, MQTTv311, clean=True)
        try:
            for sub in subs:
                harness.eventually(lambda: publish_all(pub, "probe", MQTT_TOPICS[:1], 1) and
                                   _drain_until(sub, "probe"), 30, what="the subscription to be live")
            cluster.broker(victim).kill9()
            after = wait_leaders(cluster, TOPIC, PARTITIONS, exclude={victim}, timeout=90)
            sent = publish_all(pub, "c")
        finally:
            pub.close()
        for sub in subs:
            got = receive(sub, sent, "c")
            assert got == sent
    finally:
        for sub in subs:
            sub.close()
    # Some of them went to partitions the dead broker led.
    parts = harness.consume(cluster.bootstrap, TOPIC, PARTITIONS)
    used = {p for p, recs in parts.items() if any(r.value.startswith(b"c-") for r in recs)}
    assert used & moved, f"partitions used {used}, moved {moved} (now led by {after})"
