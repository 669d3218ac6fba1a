"""t89 mqtt session move: MQTT sessions across brokers (issue 7), 3 nodes with every role
(meta, WAL, broker) on 127.0.0.1, every broker with its MQTT listener, `sensors/#` mapped to a
6-partition Kafka topic, short broker leases and session snapshots every 200 ms.

- takeover across brokers: a client id connected on node 1 connects again on node 2; node 1
  closes the first connection (paho MQTT 5 sees DISCONNECT 0x8E), the second gets
  session_present=1 and the subscription it made on node 1 (a publish on node 2 reaches it);
  then it moves back to node 1 the same way; an ephemeral (3.1.1 clean session) client id is
  also connected once cluster-wide;
- a dead broker: a persistent subscriber on node 1 goes offline, messages are published on
  node 3, node 1 is killed -9 and declared dead by metadata; the subscriber connects to node 2,
  which takes its session from node 1's snapshot in the object store, and receives every
  message published while it was away (duplicates allowed and counted, none lost);
- bad input: `TakeSession` without a client id is refused (INVALID_ARGUMENT), and a bad
  `mqtt.session_snapshot_interval_ms` stops the start with a message naming the key.
"""

from __future__ import annotations

import json
import queue
import uuid

import pytest

import harness

paho = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.client import MQTTv311, MQTTv5  # noqa: E402
from cluster import wait_leaders  # noqa: E402
from t95_mqtt_test import WAIT  # noqa: E402
from t98_mqtt_sessions_test import NEVER, Sess, persistent, publisher  # noqa: E402
from t88_mqtt_cluster_test import TOPIC, PARTITIONS, mqtt_cluster  # noqa: E402

LEASE_MS = 3000


@pytest.fixture(scope="module")
def cluster(strata_bin, tmp_path_factory):
    env = {"STRATA_MQTT_SESSION_SNAPSHOT_INTERVAL_MS": "200",
           "STRATA_TIERING_FLUSH_INTERVAL_MS": "200"}
    with mqtt_cluster(strata_bin, tmp_path_factory.mktemp("t89"), lease_ms=LEASE_MS,
                      combined=True, env=env) as c:
        yield c


def reason(rc) -> int:
    return int(getattr(rc, "value", rc))


def wait_live(sub: Sess, pub: Sess, topic: str):
    """Publishes probes until one reaches `sub` (its subscription is live); drains them."""
    def probe():
        pub.c.publish(topic, b"probe", 1).wait_for_publish(WAIT)
        try:
            while True:
                if sub.messages.get(timeout=2).payload == b"probe":
                    return True
        except queue.Empty:
            return False

    harness.eventually(probe, WAIT, what=f"a subscription matching {topic} to be live")
    try:
        while True:
            sub.messages.get(timeout=0.5)
    except queue.Empty:
        pass


def test_a_client_id_moves_between_live_brokers(cluster):
    cid = f"mover-{uuid.uuid4().hex[:8]}"
    b1, b2 = cluster.broker(1), cluster.broker(2)
    first = persistent(b1.mqtt_port, MQTTv5, cid, clean=True)
    assert not first.session_present
    first.subscribe("sensors/move/#", 1)

    second = persistent(b2.mqtt_port, MQTTv5, cid)
    assert second.session_present, "the session came from node 1"
    rc = first.disconnects.get(timeout=WAIT)
    first.c.loop_stop()  # no auto-reconnect: it would take the session back
    assert reason(rc) == 0x8E, f"node 1 closed the old connection with {rc}"

    pub = publisher(b2.mqtt_port)
    try:
        pub.c.publish("sensors/move/a", b"on-node-2", 1).wait_for_publish(WAIT)
        (m,) = second.take(1)
        assert (m.topic, m.payload) == ("sensors/move/a", b"on-node-2"), \
            "the subscription made on node 1 moved with the session"

        # paho acknowledges after its callback returned; until node 2 has that PUBACK a move
        # redelivers `on-node-2` (QoS 1 allows it), so wait for it first.
        harness.eventually(lambda: b2.metrics().sum("strata_mqtt_inflight_messages") == 0, WAIT,
                           what="node 2 to receive the subscriber's PUBACK")
        # And back: node 2 hands it to node 1 the same way.
        third = persistent(b1.mqtt_port, MQTTv5, cid)
        assert third.session_present, "the session came back from node 2"
        rc = second.disconnects.get(timeout=WAIT)
        second.c.loop_stop()
        assert reason(rc) == 0x8E, rc
        pub.c.publish("sensors/move/b", b"back-on-1", 1).wait_for_publish(WAIT)
        (m,) = third.take(1)
        assert m.payload == b"back-on-1"
        third.close()
    finally:
        pub.close()

    # A clean-session (ephemeral) client id is also connected once cluster-wide.
    eid = f"eph-{uuid.uuid4().hex[:8]}"
    e1 = Sess(b1.mqtt_port, MQTTv311, eid, clean=True)
    e3 = Sess(cluster.broker(3).mqtt_port, MQTTv311, eid, clean=True)
    assert not e3.session_present, "a clean session is never present"
    e1.disconnects.get(timeout=WAIT)  # node 1 closed it (3.1.1 has no reason code)
    e1.c.loop_stop()
    e3.close()


def snapshot_holds(cluster, node_id: int, cid: str) -> bool:
    """Whether node `node_id`'s session snapshot (fs:// store) names the client id."""
    path = cluster.object_store.removeprefix("fs://") + f"/mqtt/sessions/{node_id}"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return False
    assert data[:4] == b"SMQS", "the snapshot's magic"
    body = json.loads(data[13:])
    return any(s["client_id"] == cid and s["subs"] for s in body["sessions"])


def broker_alive(cluster, asker: int, node_id: int) -> bool:
    code, body = cluster.broker(asker).get("/v1/cluster")
    assert code == 200, body
    return next(b["alive"] for b in json.loads(body)["brokers"] if b["id"] == node_id)


def test_a_session_survives_its_broker_dying(cluster):
    cid = f"survivor-{uuid.uuid4().hex[:8]}"
    b1, b2, b3 = cluster.broker(1), cluster.broker(2), cluster.broker(3)
    s = persistent(b1.mqtt_port, MQTTv5, cid, expiry=NEVER)
    s.subscribe("sensors/dead/#", 1)
    pub = publisher(b3.mqtt_port)
    wait_live(s, pub, "sensors/dead/probe")
    s.close()
    # Published while the subscriber is away, on every partition (so also on node 1's).
    sent = set()
    try:
        infos = []
        for i in range(60):
            payload = f"away-{i}".encode()
            infos.append(pub.c.publish(f"sensors/dead/d{i}", payload, 1))
            sent.add((f"sensors/dead/d{i}", payload))
        for info in infos:
            info.wait_for_publish(WAIT)
            assert info.is_published()
    finally:
        pub.close()
    harness.eventually(lambda: snapshot_holds(cluster, 1, cid), WAIT,
                       what="node 1's session snapshot to hold the session")
    b1.kill9()
    harness.eventually(lambda: not broker_alive(cluster, 2, 1), 60,
                       what="metadata to declare node 1 dead")
    wait_leaders(cluster, TOPIC, PARTITIONS, exclude={1}, timeout=90)

    back = persistent(b2.mqtt_port, MQTTv5, cid, expiry=NEVER)
    try:
        assert back.session_present, "node 2 took the session from node 1's snapshot"
        got: dict = {}
        while not sent <= set(got):
            try:
                m = back.messages.get(timeout=WAIT)
            except queue.Empty:
                missing = sorted(sent - set(got))[:5]
                raise AssertionError(f"{len(sent - set(got))} of {len(sent)} lost, e.g. {missing}")
            if m.payload.startswith(b"away-"):
                got[(m.topic, m.payload)] = got.get((m.topic, m.payload), 0) + 1
        duplicates = sum(n - 1 for n in got.values())
        print(f"t89: {len(sent)} messages, {duplicates} duplicates after the move")
        assert set(got) == sent
    finally:
        back.close()


def test_take_session_without_a_client_id_is_refused(cluster):
    grpc = pytest.importorskip("grpc")
    code, body = cluster.broker(2).get("/v1/cluster")
    meta = json.loads(body)["listeners"]["meta"]
    with grpc.insecure_channel(meta) as ch:
        take = ch.unary_unary("/strata.peer.v1.Peer/TakeSession",
                              request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            take(b"", timeout=10)  # an empty TakeSessionRequest: no client id
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "client_id" in err.value.details()


def test_bad_snapshot_interval_is_refused(broker_factory, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[mqtt]\nsession_snapshot_interval_ms = 5\n")
    b = broker_factory(start=False, extra_args=["--config", str(cfg)])
    with pytest.raises(harness.BrokerDied):
        b.start(timeout=30)
    assert b.proc.returncode == 2
    assert "mqtt.session_snapshot_interval_ms" in b.stderr_tail(20)
