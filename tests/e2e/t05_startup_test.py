"""t05 startup: the command-line and admin-HTTP contract — listen addresses on
stdout, /health, /metrics, /v1/topics, config from file and env, object store
URL schemes, SIGTERM → exit 0."""

import json
import signal
import time

import pytest

import harness
from harness import Rec


def test_prints_listen_addresses_and_health(broker):
    out = broker.stdout_text()
    assert f"kafka listening on {broker.bootstrap}" in out, f"stdout: {out!r}"
    assert f"admin listening on 127.0.0.1:{broker.admin_port}" in out, f"stdout: {out!r}"
    status, body = broker.get("/health")
    assert status == 200
    assert json.loads(body) == {"status": "ok"}


def test_sigterm_exits_zero(broker):
    broker.stop(check=False)
    assert broker.last_returncode == 0, f"exit code {broker.last_returncode}\n{broker.stderr_tail()}"


def test_sigterm_the_moment_it_is_healthy_exits_zero_and_keeps_records(broker_factory):
    # The health endpoint and the Kafka listener answer before the node prints its ready
    # line; a SIGTERM in between was once the default action (exit -15). Several starts, each
    # signalled as soon as /health says ok, with a record produced the start before.
    b = broker_factory()
    harness.create_topic(b.bootstrap, "early", 1)
    for i in range(4):
        harness.produce(b.bootstrap, "early", [Rec(0, None, b"r%d" % i)])
        b.stop()
        assert b.last_returncode == 0, f"start {b.starts}: exit {b.last_returncode}\n{b.stderr_tail()}"
        b.start(wait=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert b.proc.poll() is None, f"exited before healthy\n{b.stderr_tail()}"
            try:
                status, body = harness.http_get(b.admin_url + "/health", timeout=1)
                if status == 200 and json.loads(body).get("status") == "ok":
                    break
            except OSError:
                pass
            time.sleep(0.005)
        b.proc.send_signal(signal.SIGTERM)
        b.proc.wait(60)
        assert b.proc.returncode == 0, f"start {b.starts}: exit {b.proc.returncode}\n{b.stderr_tail()}"
        b.start()
    got = harness.consume(b.bootstrap, "early", 1, {0: 4})
    assert [r.value for r in got[0]] == [b"r%d" % i for i in range(4)], got


def test_sigterm_while_waiting_for_metadata_peers_exits_zero(strata_bin, tmp_path):
    # A broker whose metadata group never answers waits in its start-up; it must still stop
    # on SIGTERM, with code 0, saying why.
    nobody = harness.free_port()
    b = harness.Broker(strata_bin, tmp_path / "lonely", node_id=4,
                       extra_args=["--roles", "broker", "--meta-peers", f"1@127.0.0.1:{nobody}",
                                   "--wal-peers", f"127.0.0.1:{harness.free_port()}"])
    try:
        b.start(wait=False)
        time.sleep(2)
        assert b.proc.poll() is None, f"exited on its own\n{b.stderr_tail()}"
        with pytest.raises(OSError):
            harness.http_get(b.admin_url + "/health", timeout=1)
        b.proc.send_signal(signal.SIGTERM)
        b.proc.wait(30)
        assert b.proc.returncode == 0, f"exit {b.proc.returncode}\n{b.stderr_tail()}"
        assert "signal during start-up" in b.stdout_text(), b.stdout_text()[-500:]
    finally:
        b.stop(check=False)


def test_v1_topics_and_metrics(broker_factory):
    b = broker_factory(env={"STRATA_TIERING_FLUSH_INTERVAL_MS": "200"})
    harness.create_topic(b.bootstrap, "shape", 3)
    harness.produce(b.bootstrap, "shape", [Rec(0, None, b"v%d" % i) for i in range(10)] +
                    [Rec(2, b"k", b"x")])
    t = b.wait_uploaded("shape", total=11, timeout=120)
    assert isinstance(t["id"], str) and t["id"], t
    parts = sorted(t["partitions"], key=lambda p: p["partition"])
    assert [p["partition"] for p in parts] == [0, 1, 2]
    assert [p["log_start_offset"] for p in parts] == [0, 0, 0]
    assert [p["high_watermark"] for p in parts] == [10, 0, 1]
    assert [p["uploaded_offset"] for p in parts] == [10, 0, 1]

    m = b.metrics()
    assert m.sum("strata_object_store_requests_total", op="put") > 0, m.text[:2000]
    assert m.sum("strata_tiering_objects_uploaded_total") > 0, m.text[:2000]
    assert m.has("strata_object_store_requests_total")


def test_config_file_and_env(broker_factory):
    # default_partitions from the config file applies to auto-created topics ...
    b = broker_factory(config={"kafka": {"default_partitions": 2, "auto_create_topics": True}})
    harness.produce(b.bootstrap, "auto-file", [Rec(1, None, b"x")])
    assert len(b.topic("auto-file")["partitions"]) == 2
    b.stop()
    # ... and an environment variable overrides the file.
    b2 = broker_factory(config={"kafka": {"default_partitions": 2}}, env={"STRATA_KAFKA_DEFAULT_PARTITIONS": "3"})
    harness.produce(b2.bootstrap, "auto-env", [Rec(2, None, b"x")])
    assert len(b2.topic("auto-env")["partitions"]) == 3


def test_fs_object_store_url(broker_factory, tmp_path):
    objects = tmp_path / "elsewhere" / "objects"
    objects.mkdir(parents=True)
    b = broker_factory(object_store=f"fs://{objects}", env={"STRATA_TIERING_FLUSH_INTERVAL_MS": "200"})
    harness.create_topic(b.bootstrap, "fs", 1)
    harness.produce(b.bootstrap, "fs", [Rec(0, None, b"%d" % i * 100) for i in range(1000)])
    b.wait_uploaded("fs", total=1000)
    files = [p for p in objects.rglob("*") if p.is_file()]
    assert files, f"no objects written under {objects}"
    assert sum(f.stat().st_size for f in files) > 1000


def test_memory_object_store(broker_factory):
    b = broker_factory(object_store="memory://")
    harness.create_topic(b.bootstrap, "mem", 1)
    recs = [Rec(0, b"k%d" % i, b"v%d" % i) for i in range(100)]
    delivered = harness.produce(b.bootstrap, "mem", recs)
    harness.assert_matches(recs, delivered, harness.consume(b.bootstrap, "mem", 1))
