"""t97 the web dashboard: headless Chromium (Debian's /usr/bin/chromium, driven by
playwright-core through tools/dashboard.js) loads the page from the admin listener and shows
a topic the test created, with its message count, its partitions, the node and a consumer
group; names are inserted as text (a topic-like name with markup stays text). The MQTT page
(nav link, `#mqtt`) lists a connected paho client. Screenshots go to the test's tmp dir."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import harness
from harness import Rec

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"


def run_dashboard(broker, topic: str, messages: int, shot: Path) -> dict:
    node = shutil.which("node")
    assert node, "node (Node.js 20) is needed for the dashboard test"
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium (tests/run.sh does)"
    p = subprocess.run([node, str(HERE / "tools" / "dashboard.js"), broker.admin_url + "/", topic,
                        str(messages), str(shot)],
                       capture_output=True, text=True, timeout=120, cwd=HERE)
    assert p.returncode == 0, f"dashboard.js exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_dashboard_shows_topics_partitions_and_groups(broker, tmp_path):
    harness.create_topic(broker.bootstrap, "dash-orders", 3)
    harness.produce(broker.bootstrap, "dash-orders",
                    [Rec(p, b"k", b"v", (), None) for p, n in {0: 4, 1: 2, 2: 1}.items() for _ in range(n)])
    # A group known by its committed offsets (kcat-style, no live members).
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer(harness.consumer_conf(broker.bootstrap, **{"group.id": "dash-group"}))
    c.commit(offsets=[TopicPartition("dash-orders", 0, 1)], asynchronous=False)
    c.close()

    shot = tmp_path / "dashboard.png"
    seen = run_dashboard(broker, "dash-orders", 7, shot)
    print(f"dashboard screenshot: {shot}")
    assert seen["title"] == "StrataMQ" and seen["messages"] == "7", seen
    assert seen["detail"] == "dash-orders"
    assert [row[0] for row in seen["partitions"]] == ["0", "1", "2"], seen
    assert [row[4] for row in seen["partitions"]] == ["4", "2", "1"], "messages per partition"
    assert seen["nodes"] == ["1 (this node)"], seen
    assert "dash-group" in seen["groups"] and "dash-orders" in seen["storage"], seen
    assert seen["errors"] == [], seen["errors"]
    assert shot.stat().st_size > 10_000, "a real screenshot was written"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dashboard_inserts_names_as_text(broker, tmp_path):
    # Topic names cannot hold markup, but group ids can: a group id with a tag must show as
    # text, never become an element.
    harness.create_topic(broker.bootstrap, "plain", 1)
    harness.produce(broker.bootstrap, "plain", [Rec(0, None, b"x", (), None)])
    from confluent_kafka import Consumer, TopicPartition
    evil = '<img src=x onerror="document.title=1">'
    c = Consumer(harness.consumer_conf(broker.bootstrap, **{"group.id": evil}))
    c.commit(offsets=[TopicPartition("plain", 0, 1)], asynchronous=False)
    c.close()
    seen = run_dashboard(broker, "plain", 1, tmp_path / "escaped.png")
    assert evil in seen["groups"], seen
    assert seen["title"] == "StrataMQ", "the group id's markup did not run"


def test_dashboard_mqtt_page_lists_a_connected_client(broker, tmp_path):
    paho = pytest.importorskip("paho.mqtt.client")
    import queue
    acks: queue.Queue = queue.Queue()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="dash-mqtt-1",
                    protocol=paho.MQTTv5)
    c.on_connect = lambda *args: acks.put(args)
    c.connect("127.0.0.1", broker.mqtt_port, keepalive=45)
    c.loop_start()
    try:
        acks.get(timeout=20)
        node = shutil.which("node")
        assert node, "node (Node.js 20) is needed for the dashboard test"
        shot = tmp_path / "dashboard-mqtt.png"
        p = subprocess.run([node, str(HERE / "tools" / "dashboard_mqtt.js"), broker.admin_url + "/",
                            "dash-mqtt-1", str(shot)],
                           capture_output=True, text=True, timeout=120, cwd=HERE)
        assert p.returncode == 0, f"dashboard_mqtt.js exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
        seen = json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        c.disconnect()
        c.loop_stop()
    print(f"dashboard MQTT screenshot: {shot}")
    (row,) = [r for r in seen["rows"] if r[0] == "dash-mqtt-1"]
    assert row[1:5] == ["connected", "–", "5.0", "tcp"], row
    assert row[7] == "45s", row
    assert "1 connections" in seen["summary"], seen
    assert seen["nav"] == ["Overview", "MQTT"] and seen["active"] == "MQTT", seen
    assert seen["overview_hidden"] and seen["hash"] == "#mqtt", seen
    assert seen["errors"] == [], seen["errors"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
