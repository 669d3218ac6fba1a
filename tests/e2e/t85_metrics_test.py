"""t85 metrics: /metrics is what an operator expects, and logs can be JSON.

A broker under produce and consume load (confluent-kafka) is scraped over and over; every scrape
must be valid Prometheus text (a strict parser here, and prometheus_client's), with no
duplicate series, every family declared once with HELP and TYPE, counters that never go back,
and monotone histogram buckets. The key series must move: per-topic bytes/records in and out,
the produce/fetch latency histograms, the WAL fsync histogram, upload lag that appears under
load and drains to 0 once uploaded, read-cache misses then hits on cold reads, consumer-group
lag, MQTT connections. Every series the Grafana dashboard queries must be in a live scrape.
`--log-format json` writes one JSON object per stderr line; a bad format exits 2 naming the key."""

from __future__ import annotations

import json
import math
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

import harness
from harness import Rec

DASHBOARD = harness.REPO / "docs" / "grafana" / "strata-dashboard.json"
WAIT = 60.0

# ------------------------------------------------------------------------------------------
# a strict parser for the text exposition format (0.0.4)

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE = re.compile(rf"^({NAME})(?:\{{(.*)\}})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
KINDS = {"counter", "gauge", "histogram", "summary", "untyped"}


class Scrape:
    def __init__(self, text: str):
        self.text = text
        self.kinds: dict[str, str] = {}
        # (name, ((label, value), ...)) -> float, labels sorted
        self.samples: dict[tuple[str, tuple], float] = {}

    def get(self, name: str, **labels) -> float | None:
        want = tuple(sorted((k, str(v)) for k, v in labels.items()))
        return self.samples.get((name, want))

    def sum(self, name: str, **labels) -> float:
        want = {(k, str(v)) for k, v in labels.items()}
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))

    def series(self, name: str) -> dict[tuple, float]:
        return {ls: v for (n, ls), v in self.samples.items() if n == name}

    def names(self) -> set[str]:
        return {n for n, _ in self.samples}


def parse_strict(text: str) -> Scrape:
    """Parses `text`, raising AssertionError on anything a strict consumer would refuse."""
    s = Scrape(text)
    assert text.endswith("\n"), "the exposition must end with a newline"
    family = None  # the family whose samples may follow
    helped = set()
    for n, line in enumerate(text.split("\n")[:-1], 1):
        where = f"line {n}: {line!r}"
        assert line.strip() == line and line, f"{where}: empty line or stray whitespace"
        if line.startswith("#"):
            parts = line.split(" ", 3)
            assert len(parts) >= 3 and parts[0] == "#" and parts[1] in ("HELP", "TYPE"), f"{where}: bad comment"
            name = parts[2]
            assert re.fullmatch(NAME, name), f"{where}: bad metric name"
            if parts[1] == "HELP":
                assert name not in helped, f"{where}: second HELP for {name}"
                assert name not in s.kinds, f"{where}: HELP after the TYPE of {name}"
                assert len(parts) == 4 and parts[3], f"{where}: empty HELP"
                helped.add(name)
            else:
                assert len(parts) == 4 and parts[3] in KINDS, f"{where}: bad TYPE"
                assert name not in s.kinds, f"{where}: {name} declared twice (samples split up?)"
                s.kinds[name] = parts[3]
                family = name
            continue
        m = SAMPLE.match(line)
        assert m, f"{where}: not a sample line"
        name, label_text, value = m.group(1), m.group(2), m.group(3)
        labels = []
        if label_text:
            pos = 0
            while pos < len(label_text):
                lm = LABEL.match(label_text, pos)
                assert lm, f"{where}: bad label syntax at {label_text[pos:]!r}"
                labels.append((lm.group(1), lm.group(2)))
                pos = lm.end()
            assert len({k for k, _ in labels}) == len(labels), f"{where}: repeated label"
        assert family is not None, f"{where}: sample before any TYPE"
        kind = s.kinds[family]
        allowed = {family} | ({family + "_bucket", family + "_sum", family + "_count"} if kind == "histogram" else set())
        assert name in allowed, f"{where}: sample of {name} inside family {family} (interleaved families?)"
        if kind == "counter":
            assert family.endswith("_total"), f"{where}: counter {family} should end in _total"
        try:
            v = float(value)
        except ValueError:
            raise AssertionError(f"{where}: value {value!r} is not a number") from None
        assert not math.isnan(v), f"{where}: NaN"
        key = (name, tuple(sorted(labels)))
        assert key not in s.samples, f"{where}: duplicate series"
        s.samples[key] = v
    for name, kind in s.kinds.items():
        if kind == "histogram":
            check_histogram(s, name)
    # Every family explains itself, except a few object-store counters the admin listener
    # renders from strata_tiering (broker/src/admin) that have no HELP line yet.
    no_help = sorted(n for n in s.kinds if n not in helped and not n.startswith("strata_object_store_"))
    assert not no_help, f"families without HELP: {no_help}"
    return s


def check_histogram(s: Scrape, name: str):
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for ls, v in s.series(name + "_bucket").items():
        d = dict(ls)
        assert "le" in d, f"{name}_bucket{ls} without le"
        le = math.inf if d["le"] == "+Inf" else float(d["le"])
        rest = tuple((k, x) for k, x in ls if k != "le")
        groups.setdefault(rest, []).append((le, v))
    assert groups, f"histogram {name} has no buckets"
    for rest, buckets in groups.items():
        buckets.sort()
        assert buckets[-1][0] == math.inf, f"{name}{rest}: no +Inf bucket"
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), f"{name}{rest}: bucket counts not monotone: {buckets}"
        count = s.samples.get((name + "_count", rest))
        total = s.samples.get((name + "_sum", rest))
        assert count == counts[-1], f"{name}{rest}: _count {count} != +Inf bucket {counts[-1]}"
        assert total is not None and total >= 0, f"{name}{rest}: _sum missing or negative"


def workspace_version() -> str:
    import tomllib

    return tomllib.loads((harness.REPO / "Cargo.toml").read_text())["workspace"]["package"]["version"]


def scrape(b: harness.Broker) -> Scrape:
    status, body = b.get("/metrics")
    assert status == 200, f"GET /metrics -> {status}"
    text = body.decode()
    s = parse_strict(text)
    # And the reference parser reads it too.
    from prometheus_client.parser import text_string_to_metric_families

    families = list(text_string_to_metric_families(text))
    assert len(families) == len(s.kinds), "prometheus_client saw a different number of families"
    return s


def assert_counters_monotone(before: Scrape, after: Scrape):
    for (name, ls), v in before.samples.items():
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        kind = before.kinds.get(name) or before.kinds.get(family)
        if kind in ("counter", "histogram"):
            later = after.samples.get((name, ls))
            if later is not None:  # a partition's series may go with its topic
                assert later >= v, f"{name}{dict(ls)} went back from {v} to {later}"


def test_strict_parser_refuses_what_prometheus_would():
    good = ("# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 1\n"
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n")
    assert parse_strict(good).get("a_total", x=1) == 1
    for bad, why in [
        (good + "a_total{x=\"1\"} 2\n", "interleaved"),
        (good.replace("h_count 2", "h_count 3"), "_count"),
        (good.replace("h_bucket{le=\"+Inf\"} 2", "h_bucket{le=\"+Inf\"} 0"), "monotone"),
        (good.replace("a_total{x=\"1\"} 1\n", "a_total{x=\"1\"} 1\na_total{x=\"1\"} 1\n"), "duplicate"),
        (good.replace("# HELP a_total A.\n", ""), "HELP"),
        (good.replace("{x=\"1\"}", "{x=1}"), "label"),
    ]:
        with pytest.raises(AssertionError, match=why):
            parse_strict(bad)


# ------------------------------------------------------------------------------------------
# the broker under load


def dashboard_series() -> set[str]:
    d = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))

    walk(d["panels"])
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            exprs.append(q.get("query", ""))
    names = set()
    for e in exprs:
        names |= set(re.findall(r"\bstrata_[a-z0-9_]+", e))
    assert len(names) >= 15, f"the dashboard queries only {sorted(names)}"
    return names


class Load:
    """Produces `n` records over `partitions` in a thread, in small flushed rounds."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, n: int):
        self.records = [Rec(i % partitions, b"k%d" % i, bytes([i % 251]) * 300) for i in range(n)]
        self.delivered = None
        self.error = None
        self.thread = threading.Thread(target=self.run, args=(bootstrap, topic), daemon=True)

    def run(self, bootstrap, topic):
        try:
            self.delivered = harness.produce(bootstrap, topic, self.records, flush_every=2000)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


@pytest.mark.timeout(600)
def test_series_move_under_load(broker_factory):
    # Uploaded data leaves the tail at once (tail_bytes_max = 0), so reads of it go through the
    # read cache; no compaction, so they stay reads of upload blocks (the recent budget).
    b = broker_factory(env={
        "STRATA_TIERING_FLUSH_INTERVAL_MS": "300",
        "STRATA_TIERING_TAIL_BYTES_MAX": "0",
        "STRATA_COMPACTION_ENABLED": "false",
    })
    topic, parts, n = "metrics85", 3, 30_000
    harness.create_topic(b.bootstrap, topic, parts)
    first = scrape(b)
    for p in range(parts):
        assert first.get("strata_partition_bytes_in_total", topic=topic, partition=p) == 0
    assert first.get("strata_kafka_request_duration_seconds_count", api="produce") == 0

    load = Load(b.bootstrap, topic, parts, n)
    load.thread.start()
    scrapes = 0
    lag_bytes_seen = lag_seconds_seen = 0.0
    prev = first
    while load.thread.is_alive() or scrapes < 3:
        s = scrape(b)
        scrapes += 1
        assert_counters_monotone(prev, s)
        lag_bytes_seen = max(lag_bytes_seen, s.get("strata_upload_lag_bytes") or 0)
        lag_seconds_seen = max(lag_seconds_seen, s.sum("strata_partition_upload_lag_seconds", topic=topic))
        prev = s
        load.thread.join(0.05)
    assert load.error is None, f"produce failed: {load.error}"
    assert lag_bytes_seen > 0, f"no upload lag seen in {scrapes} scrapes under load"
    assert lag_seconds_seen > 0, f"no upload lag age seen in {scrapes} scrapes under load"
    # The process series every Prometheus client library exports, read from /proc.
    assert prev.get("process_cpu_seconds_total") > first.get("process_cpu_seconds_total")
    assert prev.get("process_resident_memory_bytes") > 1 << 20
    assert 3 <= prev.get("process_open_fds") <= prev.get("process_max_fds")
    assert prev.get("process_threads") >= 2
    started = prev.get("process_start_time_seconds")
    assert started == first.get("process_start_time_seconds")
    assert time.time() - 3600 < started <= time.time() + 5, started
    assert prev.get("strata_build_info", version=workspace_version()) == 1

    # Everything uploads; the lag drains to 0.
    b.wait_uploaded(topic, total=n)

    def drained():
        s = scrape(b)
        ok = (s.get("strata_upload_lag_bytes") == 0 and s.get("strata_upload_lag_seconds") == 0
              and all(s.get(f"strata_partition_upload_lag_{u}", topic=topic, partition=p) == 0
                      for p in range(parts) for u in ("bytes", "offsets", "seconds")))
        return s if ok else None

    s = harness.eventually(drained, WAIT, what="upload lag back to 0")
    assert_counters_monotone(prev, s)

    # Produce: exactly the accepted records, per partition and in total.
    per_part = [s.get("strata_partition_records_in_total", topic=topic, partition=p) for p in range(parts)]
    assert per_part == [n // parts] * parts, per_part
    assert s.get("strata_produce_records_total") == n
    assert s.sum("strata_partition_bytes_in_total", topic=topic) == s.get("strata_produce_bytes_total") > 300 * n
    for p in range(parts):
        assert s.get("strata_partition_high_watermark", topic=topic, partition=p) == n // parts
    assert s.get("strata_kafka_request_duration_seconds_count", api="produce") > 0
    assert s.get("strata_kafka_request_duration_seconds_count", api="metadata") > 0
    # One observation per group commit, all of them local fdatasyncs.
    commits = s.get("strata_wal_group_commits_total")
    assert commits > 0 and s.get("strata_wal_fsync_duration_seconds_count") == commits
    assert s.get("strata_wal_quorum_commit_duration_seconds_count") == 0
    assert s.get("strata_meta_write_duration_seconds_count") >= s.get("strata_tiering_objects_uploaded_total") > 0

    # Cold reads: the first pass misses the read cache (one GET per block), the second hits.
    out_before = s.sum("strata_partition_records_out_total", topic=topic)
    bytes_out_before = s.sum("strata_partition_bytes_out_total", topic=topic)
    consumed = harness.consume(b.bootstrap, topic, parts)
    assert sum(len(v) for v in consumed.values()) == n
    after1 = scrape(b)
    assert_counters_monotone(s, after1)
    misses1 = after1.get("strata_cache_misses_total", cache="recent")
    hits1 = after1.get("strata_cache_hits_total", cache="recent")
    assert misses1 > 0, "a cold read of uploaded blocks missed nothing"
    assert after1.sum("strata_partition_records_out_total", topic=topic) - out_before >= n
    assert (after1.sum("strata_partition_bytes_out_total", topic=topic) - bytes_out_before
            >= s.sum("strata_partition_bytes_in_total", topic=topic)), "fetched fewer bytes than stored"
    assert after1.get("strata_kafka_request_duration_seconds_count", api="fetch") > 0
    harness.consume(b.bootstrap, topic, parts)
    after2 = scrape(b)
    assert after2.get("strata_cache_hits_total", cache="recent") > hits1, "the second read hit nothing"
    assert after2.get("strata_cache_misses_total", cache="recent") == misses1, "cached blocks read again"

    # Consumer-group lag: high watermark minus the committed offset.
    from confluent_kafka import Consumer, TopicPartition

    group = "g85-" + uuid.uuid4().hex[:6]
    c = Consumer(harness.consumer_conf(b.bootstrap, **{"group.id": group}))
    try:
        committed = {p: (p + 1) * 1000 for p in range(parts)}
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in committed.items()], asynchronous=False)
    finally:
        c.close()

    def lagged():
        s = scrape(b)
        got = {p: s.get("strata_group_lag_offsets", group=group, topic=topic, partition=p) for p in range(parts)}
        return s if got == {p: n // parts - o for p, o in committed.items()} else None

    s = harness.eventually(lagged, WAIT, what=f"strata_group_lag_offsets for {group}")
    assert s.get("strata_meta_write_duration_seconds_count") > after2.get("strata_meta_write_duration_seconds_count")

    # MQTT: a connection and its session are counted while open, and given back.
    from paho.mqtt import client as paho

    mc = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="m85", protocol=paho.MQTTv311)
    connected = threading.Event()
    mc.on_connect = lambda *a: connected.set()
    mc.connect("127.0.0.1", b.mqtt_port, keepalive=30)
    mc.loop_start()
    try:
        assert connected.wait(WAIT), "no CONNACK"
        harness.eventually(lambda: (lambda s: s.get("strata_mqtt_connections_open") == 1
                                    and s.get("strata_mqtt_sessions") == 1)(scrape(b)),
                           WAIT, what="one MQTT connection and session counted")
    finally:
        mc.disconnect()
        mc.loop_stop()
    s = harness.eventually(lambda: (lambda s: s if s.get("strata_mqtt_connections_open") == 0
                                    and s.get("strata_mqtt_sessions") == 0 else None)(scrape(b)),
                           WAIT, what="the MQTT connection given back")
    assert s.get("strata_mqtt_connections_total") >= 1
    assert s.get("strata_mqtt_inflight_messages") == 0

    # Every series the dashboard queries is in this live scrape.
    missing = sorted(dashboard_series() - s.names())
    assert not missing, f"dashboard queries series /metrics does not have: {missing}"
    # And every family is in the reference.
    doc = (harness.REPO / "docs" / "metrics.md").read_text()
    undocumented = sorted(f for f in s.kinds if f"`{f}`" not in doc)
    assert not undocumented, f"families missing from docs/metrics.md: {undocumented}"


def test_refused_and_duplicate_batches_are_not_produce_traffic(broker_factory):
    import kwire

    b = broker_factory()
    topic = "refused85"
    harness.create_topic(b.bootstrap, topic, 1)
    err, pid, epoch = kwire.parse_init_producer_id(
        kwire.roundtrip(b.kafka_port, kwire.init_producer_id_request(1)), 1)
    assert err == 0

    def produce(seq: int, count: int) -> tuple[int, int]:
        batch = kwire.record_batch([(None, b"v%d-%d" % (seq, i)) for i in range(count)], 1_700_000_000_000,
                                   producer_id=pid, producer_epoch=epoch, base_sequence=seq)
        return kwire.parse_produce_first(kwire.roundtrip(b.kafka_port, kwire.produce_request(7, topic, 0, batch)))

    assert produce(0, 4) == (0, 0)
    s1 = scrape(b)
    assert s1.get("strata_partition_records_in_total", topic=topic, partition=0) == 4
    assert s1.get("strata_produce_records_total") == 4
    bytes1 = s1.get("strata_produce_bytes_total")
    assert bytes1 == s1.get("strata_partition_bytes_in_total", topic=topic, partition=0) > 0
    assert produce(0, 4) == (0, 0), "a retried batch is answered with its original offset"
    assert produce(9, 1) == (kwire.OUT_OF_ORDER_SEQUENCE_NUMBER, -1)
    s2 = scrape(b)
    assert s2.get("strata_produce_duplicate_batches_total") == 1
    assert s2.get("strata_produce_sequence_errors_total") == 1
    assert s2.get("strata_produce_records_total") == 4, "a duplicate or refused batch was counted"
    assert s2.get("strata_produce_bytes_total") == bytes1
    assert s2.get("strata_partition_records_in_total", topic=topic, partition=0) == 4
    assert s2.get("strata_kafka_request_duration_seconds_count", api="init_producer_id") == 1
    assert s2.get("strata_kafka_request_duration_seconds_count", api="produce") == 3


@pytest.mark.timeout(600)
def test_cluster_partitions_reported_by_their_leader_once(strata_bin, tmp_path):
    from cluster import Cluster, wait_leaders

    c = Cluster(strata_bin, tmp_path, brokers=3, combined=True, lease_ms=3000)
    try:
        c.start()
        topic, parts, n = "cluster85", 6, 3000
        harness.create_topic(c.bootstrap, topic, parts)
        leaders = wait_leaders(c, topic, parts)
        harness.produce(c.bootstrap, topic, [Rec(i % parts, None, b"x" * 50) for i in range(n)])
        scrapes = {b.node_id: scrape(b) for b in c.brokers}
        for p in range(parts):
            reporters = [i for i, s in scrapes.items()
                         if s.get("strata_partition_records_in_total", topic=topic, partition=p) is not None]
            assert reporters == [leaders[p]], f"partition {p} (leader {leaders[p]}) reported by {reporters}"
            assert scrapes[leaders[p]].get("strata_partition_records_in_total", topic=topic, partition=p) == n // parts
        assert sum(s.get("strata_produce_records_total") for s in scrapes.values()) == n
        # A replicated WAL: group commits wait for a quorum, never a local fdatasync.
        for i, s in scrapes.items():
            assert s.get("strata_wal_fsync_duration_seconds_count") == 0, f"node {i}"
            assert s.get("strata_wal_quorum_commit_duration_seconds_count") == s.get("strata_wal_group_commits_total")
        assert sum(s.get("strata_wal_quorum_commit_duration_seconds_count") for s in scrapes.values()) > 0
        # Every node is also a WAL replica of all three streams (R = 3 of 3), and says so.
        for i, s in scrapes.items():
            assert s.get("strata_wal_replica_streams") == 3, f"node {i}"
            assert s.get("strata_wal_replica_streams_failed") == 0, f"node {i}"
            assert s.get("strata_wal_replica_fdatasync_duration_seconds_count") > 0, f"node {i}"
            assert len(s.series("strata_wal_replica_stream_durable_lsn")) == 3, f"node {i}"
    finally:
        c.stop()


def scrape_url(url: str) -> Scrape:
    status, body = harness.http_get(url)
    assert status == 200, f"GET {url} -> {status}"
    text = body.decode()
    s = parse_strict(text)
    from prometheus_client.parser import text_string_to_metric_families

    assert len(list(text_string_to_metric_families(text))) == len(s.kinds)
    return s


def test_wal_only_nodes_serve_health_and_metrics(strata_bin, tmp_path):
    """A WAL-only node (`--roles wal`) serves /health and /metrics on its admin listener
    (the probes of a split deployment) and nothing of the broker's API. Its replica series
    move with the broker's writes; a broker without the `wal` role renders none of them."""
    from cluster import Cluster, wait_leaders

    c = Cluster(strata_bin, tmp_path, brokers=1, wal_nodes=3, lease_ms=3000)
    try:
        c.start()
        topic = "walnodes85"
        harness.create_topic(c.bootstrap, topic, 2)
        wait_leaders(c, topic, 2)
        urls = [f"http://127.0.0.1:{w.admin_port}" for w in c.wal]
        before = [scrape_url(u + "/metrics") for u in urls]
        harness.produce(c.bootstrap, topic, [Rec(i % 2, None, b"y" * 100) for i in range(500)])
        after = [scrape_url(u + "/metrics") for u in urls]
        (stream,) = {ls for s in after for ls in s.series("strata_wal_replica_stream_appends_total")}
        for w, b, a in zip(c.wal, before, after):
            where = f"WAL node {w.node_id}"
            assert_counters_monotone(b, a)
            assert a.get("strata_wal_replica_streams") == 1, where
            assert a.get("strata_wal_replica_connections") >= 1, where
            assert a.get("strata_wal_replica_streams_failed") == 0, where
            assert a.get("strata_wal_replica_stream_failed", **dict(stream)) == 0, where
            # Every record is acknowledged by a write quorum (2 of 3): a replica may lag a
            # little, but each one took entries and fdatasynced them.
            assert a.sum("strata_wal_replica_stream_appends_total") > b.sum("strata_wal_replica_stream_appends_total"), where
            assert a.get("strata_wal_replica_fdatasync_duration_seconds_count") > \
                (b.get("strata_wal_replica_fdatasync_duration_seconds_count") or 0), where
            assert a.get("strata_wal_replica_stream_bytes", **dict(stream)) > 0, where
            assert a.get("strata_wal_replica_stream_sealed_epoch", **dict(stream)) >= 1, where
            assert not any(n.startswith("strata_kafka_") for n in a.names()), where
            assert a.get("process_open_fds") >= 3 and a.get("process_resident_memory_bytes") > 0, where
        durable = sorted(a.get("strata_wal_replica_stream_durable_lsn", **dict(stream)) for a in after)
        assert durable[1] >= 1, f"a write quorum holds entries: {durable}"
        for u in urls:
            status, body = harness.http_get(u + "/health")
            assert status == 200 and json.loads(body) == {"status": "ok"}, body
            status, body = harness.http_get(u + "/v1/topics")
            assert status == 404 and json.loads(body)["error"] == "not_found", body
        broker = scrape(c.brokers[0])
        assert not any(n.startswith("strata_wal_replica_") for n in broker.names())
    finally:
        c.stop()


# ------------------------------------------------------------------------------------------
# logs


def test_json_logs(broker_factory):
    b = broker_factory(extra_args=["--log-format", "json"])
    harness.create_topic(b.bootstrap, "logs85", 1)
    b.stop()
    lines = [l for l in Path(b.stderr_path).read_text().splitlines() if l and not l.startswith("=====")]
    assert lines, "no log lines on stderr"
    levels = set()
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"stderr line is not JSON: {line!r}") from None
        assert isinstance(obj, dict), line
        assert isinstance(obj.get("level"), str) and isinstance(obj.get("message"), str), line
        assert "timestamp" in obj, line
        levels.add(obj["level"])
    assert "INFO" in levels, f"no INFO line among {len(lines)}: {lines[:5]}"


def test_text_logs_are_the_default(broker_factory):
    b = broker_factory()
    b.stop()
    lines = [l for l in Path(b.stderr_path).read_text().splitlines() if l and not l.startswith("=====")]
    assert lines and not any(l.startswith("{") for l in lines), lines[:5]
    assert any(" INFO " in l for l in lines), lines[:5]


@pytest.mark.parametrize("how", ["flag", "env", "file"])
def test_bad_log_format_exits_2_naming_the_key(strata_bin, tmp_path, how):
    args = ["start", "--data-dir", str(tmp_path / "data"),
            "--kafka-listen", f"127.0.0.1:{harness.free_port()}",
            "--admin-listen", f"127.0.0.1:{harness.free_port()}",
            "--mqtt-listen", f"127.0.0.1:{harness.free_port()}"]
    env = {}
    if how == "flag":
        args += ["--log-format", "xml"]
    elif how == "env":
        env["STRATA_LOG_FORMAT"] = "yaml"
    else:
        cfg = tmp_path / "bad.toml"
        cfg.write_text('[log]\nformat = "logfmt"\n')
        args += ["--config", str(cfg)]
    r = subprocess.run([strata_bin] + args, stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
                       env=harness.clean_env(env))
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 2, f"exit code {r.returncode}, stderr: {err[-1000:]}"
    assert "log.format" in err and "text or json" in err, err[-1000:]
