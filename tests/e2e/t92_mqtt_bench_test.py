"""t92 mqtt bench: `strata bench mqtt`, the load generator of bench/mqtt_peers.py.

Every mode against a running broker (small runs: the numbers are not checked, what arrived
is), and each error it handles: bad flags (exit 2, naming the flag), a broker that is not
there, one that refuses CONNECT or sends garbage, and too few open files for an idle run
(exit 1 with the reason)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading

import pytest

import harness


def bench(strata_bin: str, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([strata_bin, "bench", "mqtt", *args], capture_output=True, text=True,
                          timeout=timeout, env=harness.clean_env(), **kw)


def ok_report(res: subprocess.CompletedProcess) -> dict:
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_qos1_delivers_every_message(broker, strata_bin):
    r = ok_report(bench(strata_bin, "--addr", f"127.0.0.1:{broker.mqtt_port}", "--mode", "qos1",
                        "--messages", "3000", "--payload-bytes", "100", "--window", "64"))
    assert (r["mode"], r["messages"], r["received"]) == ("qos1", 3000, 3000)
    assert r["msgs_per_s"] > 0 and r["publish_seconds"] <= r["seconds"] + 1


def test_progress_goes_to_stderr_and_ends_at_the_total(broker, strata_bin):
    res = bench(strata_bin, "--addr", f"127.0.0.1:{broker.mqtt_port}", "--mode", "fanout",
                "--messages", "300", "--subscribers", "4", "--payload-bytes", "64")
    r = ok_report(res)  # stdout is still exactly the JSON report
    lines = [line for line in res.stderr.splitlines() if line.startswith("bench mqtt fanout: ")]
    assert lines, res.stderr
    # The last line is the final state: every delivery of the report, out of the expected total.
    assert lines[-1].startswith(f"bench mqtt fanout: {r['delivered']}/1200 messages delivered (100 %)"), lines


def test_fanout_counts_deliveries_of_every_subscriber(broker, strata_bin):
    r = ok_report(bench(strata_bin, "--addr", f"127.0.0.1:{broker.mqtt_port}", "--mode", "fanout",
                        "--messages", "400", "--subscribers", "5", "--payload-bytes", "64"))
    assert (r["expected"], r["delivered"], r["delivered_fraction"]) == (2000, 2000, 1.0)


def test_routing_gives_each_device_topic_its_share(broker, strata_bin):
    # 1003 publishes round-robin over 7 device topics: subscribers 0..2 get 144, the rest 143.
    r = ok_report(bench(strata_bin, "--addr", f"127.0.0.1:{broker.mqtt_port}", "--mode", "routing",
                        "--messages", "1003", "--subscribers", "7", "--payload-bytes", "64"))
    assert (r["mode"], r["topics"], r["expected"]) == ("routing", 7, 1003), r
    assert (r["delivered"], r["delivered_fraction"]) == (1003, 1.0), r


@pytest.mark.parametrize("qos", ["0", "1"])
def test_latency_measures_each_delivery_after_the_warmup(broker, strata_bin, qos):
    r = ok_report(bench(strata_bin, "--addr", f"127.0.0.1:{broker.mqtt_port}", "--mode", "latency",
                        "--rate", "200", "--seconds", "2", "--warmup-secs", "0.5", "--qos", qos))
    assert r["sent"] == 400 and r["received"] == 400, r
    # Sends at 0.5 s and later: 300 of the 400 (exactly, by the schedule: message i at i/200 s).
    assert r["samples"] == 300, r
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]


def test_idle_connections_sit_until_stdin_closes(broker, strata_bin):
    gen = subprocess.Popen([strata_bin, "bench", "mqtt", "--addr", f"127.0.0.1:{broker.mqtt_port}", "--mode",
                            "idle", "--connections", "200", "--hold-secs", "120"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=harness.clean_env())
    try:
        ready = json.loads(gen.stdout.readline())
        assert ready["ready"] is True and ready["connections"] == 200
        # The broker holds them all now (its connection gauge says so).
        harness.eventually(lambda: broker.metrics().sum("strata_mqtt_connections_open") >= 200, 30,
                           what="200 MQTT connections on the broker")
        gen.stdin.close()  # the generator lets its connections go
        out = gen.stdout.read()
        assert gen.wait(60) == 0, gen.stderr.read()
        report = json.loads(out)
        assert report["open_at_end"] == 200 and report["held_seconds"] < 100
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait()


@pytest.mark.parametrize("args, flag", [
    (["--mode", "qos1", "--window", "0"], "--window"),
    (["--mode", "qos1", "--messages", "0"], "--messages"),
    (["--mode", "qos1", "--payload-bytes", "4"], "--payload-bytes"),
    (["--mode", "latency", "--payload-bytes", "12"], "--payload-bytes"),
    (["--mode", "latency", "--qos", "2"], "--qos"),
    (["--mode", "latency", "--seconds", "1", "--warmup-secs", "1"], "--warmup-secs"),
    (["--mode", "fanout", "--subscribers", "0"], "--subscribers"),
    (["--mode", "routing", "--subscribers", "10001"], "--subscribers"),
    (["--mode", "idle", "--connections", "0"], "--connections"),
    (["--mode", "qos1", "--topic", "a/#"], "--topic"),
])
def test_bad_flags_exit_2_naming_the_flag(strata_bin, args, flag):
    res = bench(strata_bin, "--addr", "127.0.0.1:1", *args)
    assert res.returncode == 2 and flag in res.stderr, (res.returncode, res.stderr)


def test_no_broker_is_a_clear_error(strata_bin):
    port = harness.free_port()  # nothing listens there
    res = bench(strata_bin, "--addr", f"127.0.0.1:{port}", "--mode", "qos1", "--messages", "1")
    assert res.returncode == 1 and f"cannot connect to 127.0.0.1:{port}" in res.stderr, res.stderr


def fake_broker(reply: bytes) -> tuple[int, threading.Thread]:
    """A listener that answers the first packet of one connection with `reply`, then closes."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def serve():
        with srv:
            conn, _ = srv.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(reply)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return port, t


@pytest.mark.parametrize("reply, message", [
    (b"\x20\x02\x00\x05", "refused CONNECT (CONNACK return code 5)"),
    (b"\x90\x03\x00\x01\x00", "expected CONNACK, got packet type 9"),
    (b"\x30\xff\xff\xff\xff\x01", "remaining length longer than four bytes"),
    (b"", "closed the connection (waiting for CONNACK)"),
])
def test_a_broker_that_refuses_or_misbehaves(strata_bin, reply, message):
    port, t = fake_broker(reply)
    res = bench(strata_bin, "--addr", f"127.0.0.1:{port}", "--mode", "qos1", "--messages", "1", timeout=30)
    t.join(10)
    assert res.returncode == 1 and message in res.stderr, res.stderr


def test_idle_run_with_too_few_open_files_says_so(strata_bin):
    res = subprocess.run(["prlimit", "--nofile=128:128", strata_bin, "bench", "mqtt", "--addr", "127.0.0.1:1",
                          "--mode", "idle", "--connections", "1000"],
                         capture_output=True, text=True, timeout=30, env=harness.clean_env())
    assert res.returncode == 1, res.stderr
    assert "1064 open files are needed and the limit is 128" in res.stderr, res.stderr
