"""t91 mqtt fan-out: batched delivery to many QoS 0 subscribers, and drops counted.

The router hands each connection its share of a routed batch at once (`mqtt/router.rs`,
`DeliveryTx`). A QoS 0 subscriber that keeps up gets every message, in order, however many
other subscribers share the topic; a subscriber that never reads may lose QoS 0 messages
(MQTT allows it), which `strata_mqtt_dropped_total` counts, and the others do not notice."""

from __future__ import annotations

import queue
import socket
import struct
import time
import uuid

import pytest

paho = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.client import MQTTv311  # noqa: E402

WAIT = 30.0


class Sub:
    """A paho QoS 0 subscriber that only collects payloads."""

    def __init__(self, port: int, topic: str):
        self.got: queue.Queue = queue.Queue()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"f-{uuid.uuid4().hex[:10]}",
                             protocol=MQTTv311, clean_session=True)
        self.c.on_message = lambda c, u, m: self.got.put(m.payload)
        acks: queue.Queue = queue.Queue()
        self.c.on_connect = lambda c, u, flags, rc, props: acks.put(rc)
        self.c.on_subscribe = lambda c, u, mid, rcs, props: acks.put(rcs)
        self.c.connect("127.0.0.1", port, keepalive=60)
        self.c.loop_start()
        assert not acks.get(timeout=WAIT).is_failure
        self.c.subscribe(topic, 0)
        assert [rc.value for rc in acks.get(timeout=WAIT)] == [0]
        self.payloads: list[bytes] = []

    def take_until(self, n: int, deadline: float) -> None:
        while len(self.payloads) < n and time.monotonic() < deadline:
            try:
                self.payloads.append(self.got.get(timeout=0.2))
            except queue.Empty:
                pass

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def publisher(port: int):
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"p-{uuid.uuid4().hex[:10]}", protocol=MQTTv311)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_start()
    return c


def test_fanout_to_50_qos0_subscribers_that_keep_up_loses_nothing(broker):
    topic = f"fan/{uuid.uuid4().hex[:8]}"
    subs = [Sub(broker.mqtt_port, topic) for _ in range(50)]
    pub = publisher(broker.mqtt_port)
    total, chunk = 1000, 250
    try:
        # Published in chunks of 250 (below the 1,024 a connection may have queued), each as
        # fast as the client can write; the next chunk once every subscriber has the last one:
        # subscribers that keep up, by construction.
        for start in range(0, total, chunk):
            for i in range(start, start + chunk):
                pub.publish(topic, struct.pack(">I", i) + b"x" * 60, qos=0)
            deadline = time.monotonic() + WAIT
            for s in subs:
                s.take_until(start + chunk, deadline)
            short = [len(s.payloads) for s in subs if len(s.payloads) < start + chunk]
            assert not short, f"after {start + chunk} published, subscribers had {short}"
        expected = [struct.pack(">I", i) + b"x" * 60 for i in range(total)]
        for s in subs:
            assert s.payloads == expected  # all of them, in publish order, once each
        assert broker.metrics().sum("strata_mqtt_dropped_total") == 0
    finally:
        pub.loop_stop()
        pub.disconnect()
        for s in subs:
            s.close()


def _s(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def test_subscriber_that_never_reads_drops_are_counted_and_others_get_everything(broker):
    topic = f"stuck/{uuid.uuid4().hex[:8]}"
    # A raw client: CONNECT, SUBSCRIBE at QoS 0, read the two acks, then never read again.
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small: fills soon
    stuck.settimeout(WAIT)
    stuck.connect(("127.0.0.1", broker.mqtt_port))
    body = _s(b"MQTT") + bytes([4, 0x02]) + struct.pack(">H", 600) + _s(b"stuck-" + uuid.uuid4().hex[:8].encode())
    stuck.sendall(bytes([0x10, len(body)]) + body)
    sub = struct.pack(">H", 1) + _s(topic.encode()) + b"\x00"
    stuck.sendall(bytes([0x82, len(sub)]) + sub)
    acks = b""
    while len(acks) < 9:  # CONNACK (4) + SUBACK (5)
        acks += stuck.recv(9 - len(acks))
    assert acks[:2] == b"\x20\x02" and acks[3] == 0 and acks[4] == 0x90 and acks[8] == 0, acks

    good = Sub(broker.mqtt_port, topic)
    pub = publisher(broker.mqtt_port)
    payload = b"y" * 2000
    sent = 0
    try:
        # Publish in chunks until the broker reports drops (the stuck client's socket buffers
        # and then its queue of 1,024 fill up); the reading subscriber keeps pace each chunk.
        for _ in range(200):
            for _ in range(500):
                pub.publish(topic, struct.pack(">I", sent) + payload, qos=0)
                sent += 1
            good.take_until(sent, time.monotonic() + WAIT)
            assert len(good.payloads) == sent, f"the reading subscriber got {len(good.payloads)} of {sent}"
            if broker.metrics().sum("strata_mqtt_dropped_total") > 0:
                break
        dropped = broker.metrics().sum("strata_mqtt_dropped_total")
        assert dropped > 0, f"no drops counted after {sent} messages to a client that never reads"
        assert dropped <= sent
        assert good.payloads == [struct.pack(">I", i) + payload for i in range(sent)]
    finally:
        stuck.close()
        pub.loop_stop()
        pub.disconnect()
        good.close()
