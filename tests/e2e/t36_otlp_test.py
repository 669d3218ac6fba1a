"""t36 OTLP trace export (`telemetry.otlp_endpoint`, `--otlp-endpoint`): a tiny OTLP/HTTP
collector in this process (http.server, POST /v1/traces, bodies decoded with the
`opentelemetry-proto` package) receives the broker's spans. Produce and Fetch requests
from confluent-kafka arrive as spans named after the API with the topic attribute and the
configured service.name; the spans of the last request before SIGTERM arrive too (the
exporter is flushed on shutdown). Bad telemetry keys are refused at start naming the key;
an unreachable collector costs a warning, never service."""

from __future__ import annotations

import http.server
import subprocess
import threading

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import NewTopic
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

import harness
from harness import Rec


def _value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Collector:
    """OTLP/HTTP protobuf trace receiver on 127.0.0.1. Keeps every span as a dict:
    name, service (resource service.name), attrs, status (its code; 2 = error)."""

    def __init__(self):
        self.spans: list[dict] = []
        self.requests = 0
        self.bad: list[str] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces" or "protobuf" not in self.headers.get("Content-Type", ""):
                    with collector.lock:
                        collector.bad.append(f"{self.path} {self.headers.get('Content-Type')}")
                    self.send_response(404)
                    self.end_headers()
                    return
                req = trace_service_pb2.ExportTraceServiceRequest()
                req.ParseFromString(body)
                got = []
                for rs in req.resource_spans:
                    res = {a.key: _value(a.value) for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            got.append({
                                "name": s.name,
                                "service": res.get("service.name"),
                                "attrs": {a.key: _value(a.value) for a in s.attributes},
                                "status": s.status.code,
                            })
                with collector.lock:
                    collector.requests += 1
                    collector.spans.extend(got)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def find(self, name: str, topic: str) -> list[dict]:
        with self.lock:
            return [s for s in self.spans
                    if s["name"] == name and topic in str(s["attrs"].get("messaging.destination.name", "")).split(",")]

    def spans_named(self, name: str) -> list[dict]:
        with self.lock:
            return [s for s in self.spans if s["name"] == name]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


def test_produce_fetch_spans_and_flush_on_sigterm(broker_factory, collector):
    b = broker_factory(
        extra_args=["--otlp-endpoint", collector.url],
        config={"telemetry": {"otlp_service_name": "strata-t36"}},
    )
    harness.create_topic(b.bootstrap, "traced", 1)
    harness.produce(b.bootstrap, "traced", [Rec(0, None, b"v%d" % i) for i in range(20)],
                    **{"client.id": "t36-producer"})
    got = harness.consume(b.bootstrap, "traced", 1, **{"client.id": "t36-consumer"})
    assert [r.value for r in got[0]] == [b"v%d" % i for i in range(20)]

    produce = harness.eventually(lambda: collector.find("Produce", "traced"), 60, what="a Produce span for `traced`")
    fetch = harness.eventually(lambda: collector.find("Fetch", "traced"), 60, what="a Fetch span for `traced`")
    for span in produce + fetch:
        assert span["service"] == "strata-t36", span
        assert span["attrs"]["kafka.topic_count"] == 1, span
        assert span["attrs"]["rpc.system"] == "kafka", span
        assert "kafka.error_code" not in span["attrs"] and span["status"] != 2, span
    assert {s["attrs"]["kafka.client_id"] for s in produce} == {"t36-producer"}
    assert {s["attrs"]["kafka.client_id"] for s in fetch} == {"t36-consumer"}
    assert all(s["attrs"]["kafka.api_key"] == 0 and 3 <= s["attrs"]["kafka.api_version"] <= 9 for s in produce)
    assert all(s["attrs"]["kafka.api_key"] == 1 for s in fetch)
    # A request that fails carries its error code: creating a topic that exists.
    adm = harness.admin_client(b.bootstrap)  # keep the handle alive until the future resolves
    err = adm.create_topics([NewTopic("traced", 1, 1)])["traced"].exception(30)
    assert err is not None and err.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS, err
    failed = harness.eventually(
        lambda: [s for s in collector.find("CreateTopics", "traced") if "kafka.error_code" in s["attrs"]],
        60, what="a CreateTopics span with an error code")
    assert failed[0]["attrs"]["kafka.error_code"] == KafkaError.TOPIC_ALREADY_EXISTS, failed
    assert failed[0]["status"] == 2, failed  # STATUS_CODE_ERROR
    assert not collector.bad, collector.bad

    # The other request boundaries: the WAL group commit (fdatasync on a single node), the
    # object upload, and an MQTT publish.
    wal = harness.eventually(lambda: [s for s in collector.spans_named("wal.fsync")
                                      if s["attrs"].get("wal.lsn", 0) > 0], 60, what="a wal.fsync span")
    assert all(s["service"] == "strata-t36" for s in wal)
    uploads = harness.eventually(lambda: collector.spans_named("object.put"), 60, what="an object.put span")
    assert all(s["attrs"]["object.bytes"] > 0 and s["attrs"]["object.key"] for s in uploads), uploads
    import paho.mqtt.client as mqtt

    m = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t36-mqtt")
    m.connect("127.0.0.1", b.mqtt_port)
    m.loop_start()
    try:
        m.publish("t36/sensor", b"hello", qos=1).wait_for_publish(30)
    finally:
        m.disconnect()
        m.loop_stop()
    published = harness.eventually(
        lambda: [s for s in collector.spans_named("mqtt.publish") if s["attrs"].get("mqtt.topic") == "t36/sensor"],
        60, what="an mqtt.publish span")
    assert published[0]["attrs"]["mqtt.payload_bytes"] == 5, published

    # The last request before SIGTERM: its span is still queued in the batch processor
    # (exported every 5 s) when the signal comes, so only the shutdown flush delivers it.
    harness.create_topic(b.bootstrap, "last-one", 1)
    harness.produce(b.bootstrap, "last-one", [Rec(0, None, b"bye")], **{"client.id": "t36-last"})
    b.stop()
    last = collector.find("Produce", "last-one")
    assert len(last) == 1 and last[0]["attrs"]["kafka.client_id"] == "t36-last", last


def _start_refused(strata_bin, tmp_path, config: dict | None, env: dict | None, args: list[str]):
    cmd = [strata_bin, "start", "--data-dir", str(tmp_path / "data"),
           "--kafka-listen", f"127.0.0.1:{harness.free_port()}",
           "--admin-listen", f"127.0.0.1:{harness.free_port()}",
           "--mqtt-listen", f"127.0.0.1:{harness.free_port()}",
           "--meta-listen", f"127.0.0.1:{harness.free_port()}"] + args
    if config is not None:
        path = tmp_path / "strata.toml"
        path.write_text(harness.to_toml(config))
        cmd += ["--config", str(path)]
    return subprocess.run(cmd, env=harness.clean_env(env), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("config,env,args,key", [
    ({"telemetry": {"trace_sample_ratio": 1.5}}, None, [], "telemetry.trace_sample_ratio"),
    (None, {"STRATA_TELEMETRY_TRACE_SAMPLE_RATIO": "-0.5"}, [], "telemetry.trace_sample_ratio"),
    (None, {"STRATA_TELEMETRY_TRACE_SAMPLE_RATIO": "half"}, [], "trace_sample_ratio"),
    (None, None, ["--otlp-endpoint", "collector:4318"], "telemetry.otlp_endpoint"),
    ({"telemetry": {"otlp_service_name": " "}}, None, [], "telemetry.otlp_service_name"),
], ids=["ratio-file", "ratio-env", "ratio-not-a-number", "endpoint-no-scheme", "empty-service-name"])
def test_bad_telemetry_config_is_refused(strata_bin, tmp_path, config, env, args, key):
    r = _start_refused(strata_bin, tmp_path, config, env, args)
    assert r.returncode == 2, f"exit {r.returncode}, stderr: {r.stderr[-2000:]}"
    assert key in r.stderr, r.stderr[-2000:]


def test_unreachable_collector_does_not_stop_serving(broker_factory):
    dead = harness.free_port()  # nothing listens here: every export is refused
    b = broker_factory(extra_args=["--otlp-endpoint", f"http://127.0.0.1:{dead}"])
    harness.create_topic(b.bootstrap, "untraced", 1)
    harness.produce(b.bootstrap, "untraced", [Rec(0, None, b"x%d" % i) for i in range(10)])
    got = harness.consume(b.bootstrap, "untraced", 1)
    assert [r.value for r in got[0]] == [b"x%d" % i for i in range(10)]
    harness.eventually(lambda: "OTLP trace export failed" in b.stderr_tail(200), 60,
                       what="a warning about the failed export")
    # Still serving after the failed exports.
    harness.produce(b.bootstrap, "untraced", [Rec(0, None, b"after")])
    assert b.stderr_tail(200).count("OTLP trace export failed") == 1, "one warning per failing stretch"
    b.stop()
