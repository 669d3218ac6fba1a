"""t96 the admin HTTP API (/v1: cluster, topics, groups, reset-offsets, storage, the OpenAPI
document, the dashboard's files) and the CLI built on it (`strata cluster status`,
`strata group list|describe|reset-offsets`, `strata produce`, `strata consume`), in table
and JSON output, with their errors. The consumer group is a real one: confluent-kafka
(librdkafka) joins it and commits."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request

import pytest

import harness
from cluster import Cluster
from harness import Rec

SESSION_MS = 6000


def call(broker, method: str, path: str, body=None, raw: bytes | None = None):
    """(status, parsed JSON or text) of one admin API request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(broker.admin_url + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, text, ctype = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, text, ctype = e.code, e.read(), e.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        return status, json.loads(text)
    return status, text.decode()


def expect_error(broker, method, path, status, kind, body=None, raw=None, field=None, says=None):
    got_status, got = call(broker, method, path, body, raw)
    assert got_status == status, f"{method} {path} -> {got_status} {got}"
    assert isinstance(got, dict) and got.get("error") == kind, got
    assert isinstance(got.get("message"), str) and got["message"], got
    if field is not None:
        assert got.get("field") == field, got
    if says is not None:
        assert says in got["message"], got
    return got


def strata(strata_bin, *args, input: str | None = None, ok=True, env=None):
    p = subprocess.run([strata_bin, *args], capture_output=True, text=True, timeout=120,
                       input=input, env=harness.clean_env(env))
    if ok:
        assert p.returncode == 0, f"strata {args}: exit {p.returncode}\n{p.stderr}"
    return p


# --------------------------------------------------------------------------------------
# the API


def test_openapi_document_dashboard_files_and_unknown_routes(broker):
    status, doc = call(broker, "GET", "/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1"), doc
    for path in ["/v1/cluster", "/v1/topics", "/v1/topics/{name}", "/v1/groups", "/v1/groups/{id}",
                 "/v1/groups/{id}/reset-offsets", "/v1/storage", "/health", "/metrics"]:
        assert path in doc["paths"], path
    assert set(doc["paths"]["/v1/topics/{name}"]) >= {"get", "delete"}

    status, page = call(broker, "GET", "/")
    assert status == 200 and "<title>StrataMQ</title>" in page and "/ui/app.js" in page
    status, js = call(broker, "GET", "/ui/app.js")
    assert status == 200 and "textContent" in js and ".innerHTML" not in js and "insertAdjacentHTML" not in js
    status, css = call(broker, "GET", "/ui/style.css")
    assert status == 200 and "body" in css
    expect_error(broker, "GET", "/ui/nope.js", 404, "not_found", says="nope.js")
    expect_error(broker, "GET", "/v1/nothing-here", 404, "not_found", says="/v1/nothing-here")
    expect_error(broker, "PUT", "/v1/cluster", 405, "method_not_allowed", body={})
    # /health and /metrics are unchanged.
    assert call(broker, "GET", "/health") == (200, {"status": "ok"})
    assert "strata_object_store_requests_total" in call(broker, "GET", "/metrics")[1]


def test_every_documented_route_is_served(broker):
    harness.create_topic(broker.bootstrap, "doc-topic", 1)
    call(broker, "POST", "/v1/groups/doc-group/reset-offsets", {"topic": "doc-topic", "to": "earliest"})
    status, doc = call(broker, "GET", "/v1/openapi.json")
    values = {"name": "doc-topic", "id": "doc-group", "file": "app.js"}
    served = []
    for path, item in doc["paths"].items():
        if "get" not in item:
            continue
        url = path
        for k, v in values.items():
            url = url.replace("{" + k + "}", v)
        status, body = call(broker, "GET", url)
        assert status == 200, f"GET {url} (documented as {path}) -> {status} {body}"
        declared = item["get"]["responses"]["200"].get("content", {})
        if "application/json" in declared:
            assert isinstance(body, (dict, list)), f"GET {url} is documented as JSON"
        served.append(path)
    assert len(served) >= 10, served


def test_reset_offsets_by_timestamp_finds_the_first_later_record(broker):
    harness.create_topic(broker.bootstrap, "timed", 1)
    base = 1_700_000_000_000
    harness.produce(broker.bootstrap, "timed", [Rec(0, None, b"r%d" % i, (), base + 1000 * i) for i in range(10)])
    for ts, want in [(base + 2500, 3), (base, 0), (base + 9000, 9), (base + 60_000, 10)]:
        status, r = call(broker, "POST", "/v1/groups/by-time/reset-offsets",
                         {"topic": "timed", "to": {"timestamp": ts}})
        assert status == 200 and r["partitions"] == [
            {"partition": 0, "previous_offset": r["partitions"][0]["previous_offset"], "new_offset": want}], (ts, r)
    # Also once the records are only in object storage (the tail trimmed or not, the index answers).
    broker.wait_uploaded("timed", total=10)
    status, r = call(broker, "POST", "/v1/groups/by-time/reset-offsets",
                     {"topic": "timed", "to": {"timestamp": base + 4200}})
    assert r["partitions"][0]["new_offset"] == 5 and r["partitions"][0]["previous_offset"] == 10, r
    status, g = call(broker, "GET", "/v1/groups/by-time")
    assert g["state"] == "Empty" and g["offsets"][0]["committed_offset"] == 5 and g["lag"] == 5, g


def test_cluster_describes_this_node(broker):
    status, c = call(broker, "GET", "/v1/cluster")
    assert status == 200, c
    assert c["node_id"] == 1 and c["healthy"] is True
    assert set(c["roles"]) == {"meta", "wal", "broker"}
    assert c["listeners"]["kafka"] == broker.bootstrap
    assert c["listeners"]["admin"] == f"127.0.0.1:{broker.admin_port}"
    assert c["meta"]["leader"] == 1 and c["meta"]["voters"] == [1]
    [b] = c["brokers"]
    assert b["id"] == 1 and b["alive"] is True and b["address"] == broker.bootstrap
    assert b["lease_expires_ms"] > b["heartbeat_ms"]
    assert c["wal"]["healthy"] is True and c["wal"]["bytes"] >= 0
    assert isinstance(c["uptime_ms"], int) and c["version"]

    harness.create_topic(broker.bootstrap, "led", 3)
    status, c = call(broker, "GET", "/v1/cluster")
    assert c["partitions"] == 3 and c["brokers"][0]["partitions_led"] == 3, c


def test_topic_create_describe_delete_and_errors(broker):
    status, t = call(broker, "POST", "/v1/topics",
                     {"name": "orders", "partitions": 3, "configs": {"retention.ms": -1, "cleanup.policy": "delete"}})
    assert status == 201, t
    assert t["name"] == "orders" and t["partition_count"] == 3 and len(t["partitions"]) == 3
    assert t["configs"] == {"retention.ms": "-1", "cleanup.policy": "delete"}
    # Visible to a stock client: the API went through the same path as CreateTopics.
    harness.wait_topic_metadata(broker.bootstrap, "orders", 3)
    harness.produce(broker.bootstrap, "orders", [Rec(1, b"k", b"v%d" % i, (), None) for i in range(5)])

    status, d = call(broker, "GET", "/v1/topics/orders")
    assert status == 200 and d["id"] == t["id"], d
    parts = {p["partition"]: p for p in d["partitions"]}
    assert parts[1]["high_watermark"] == 5 and parts[1]["messages"] == 5 and parts[0]["messages"] == 0
    assert d["messages"] == 5
    assert all(p["leader"] == 1 and p["led_here"] for p in parts.values())
    # The list keeps its fields (other tests read them) and adds counts.
    listed = broker.topic("orders")
    assert {"name", "id", "partitions"} <= set(listed)
    assert {"partition", "log_start_offset", "high_watermark", "uploaded_offset", "blocks", "segments"} <= set(listed["partitions"][0])
    uploaded = broker.wait_uploaded("orders", total=5)
    assert sum(p["blocks"] for p in uploaded["partitions"]) >= 1
    status, d = call(broker, "GET", "/v1/topics/orders")
    assert d["object_bytes"] > 0 and parts[1]["partition"] == 1

    expect_error(broker, "POST", "/v1/topics", 409, "exists", {"name": "orders", "partitions": 1}, says="orders")
    expect_error(broker, "POST", "/v1/topics", 400, "bad_json", raw=b'{"name": ')
    expect_error(broker, "POST", "/v1/topics", 400, "bad_request", raw=b"", field="body")
    expect_error(broker, "POST", "/v1/topics", 400, "bad_request", body=["orders"], field="body")
    expect_error(broker, "POST", "/v1/topics", 400, "bad_request", {"partitions": 1}, field="name")
    expect_error(broker, "POST", "/v1/topics", 400, "bad_request", {"name": 7}, field="name")
    expect_error(broker, "POST", "/v1/topics", 400, "bad_request", {"name": "bad/name"}, field="name")
    expect_error(broker, "POST", "/v1/topics", 400, "bad_request", {"name": "z", "partitions": 0}, field="partitions")
    expect_error(broker, "POST", "/v1/topics", 400, "bad_request", {"name": "z", "partitions": "3"}, field="partitions")
    expect_error(broker, "POST", "/v1/topics", 400, "bad_request", {"name": "z", "configs": [1]}, field="configs")
    expect_error(broker, "POST", "/v1/topics", 400, "bad_request", {"name": "z", "partiton": 2}, says="partiton")
    got = expect_error(broker, "POST", "/v1/topics", 400, "bad_request", {"name": "z", "configs": {"retention.ms": "soon"}})
    assert "retention.ms" in got["message"], got
    assert broker.topic("z") is None, "no failed create left a topic behind"

    expect_error(broker, "GET", "/v1/topics/nope", 404, "unknown_topic", says="nope")
    expect_error(broker, "DELETE", "/v1/topics/nope", 404, "unknown_topic")
    status, gone = call(broker, "DELETE", "/v1/topics/orders")
    assert status == 200 and gone == {"deleted": "orders", "id": t["id"]}, gone
    expect_error(broker, "GET", "/v1/topics/orders", 404, "unknown_topic")
    assert broker.topic("orders") is None

    # Defaults: the broker's partition count, no configs.
    status, t = call(broker, "POST", "/v1/topics", {"name": "plain"})
    assert status == 201 and t["partition_count"] == 1 and t["configs"] == {}, t


def test_topic_alter_grows_partitions_and_changes_configs(broker):
    status, _ = call(broker, "POST", "/v1/topics", {"name": "grow", "partitions": 1, "configs": {"retention.ms": "-1"}})
    assert status == 201
    # validate_only checks and changes nothing.
    status, t = call(broker, "PATCH", "/v1/topics/grow", {"partitions": 3, "set": {"retention.bytes": "1000"},
                                                          "validate_only": True})
    assert status == 200 and t["partition_count"] == 1 and t["configs"] == {"retention.ms": "-1"}, t
    status, t = call(broker, "PATCH", "/v1/topics/grow", {"partitions": 3, "set": {"retention.bytes": "1000"},
                                                          "delete": ["retention.ms"]})
    assert status == 200 and t["partition_count"] == 3 and t["configs"] == {"retention.bytes": "1000"}, t
    # A stock client sees the new partitions and can write to them.
    harness.wait_topic_metadata(broker.bootstrap, "grow", 3)
    harness.produce(broker.bootstrap, "grow", [Rec(2, b"k", b"v", (), None)])
    status, d = call(broker, "GET", "/v1/topics/grow")
    assert {p["partition"]: p["high_watermark"] for p in d["partitions"]} == {0: 0, 1: 0, 2: 1}, d

    expect_error(broker, "PATCH", "/v1/topics/grow", 400, "bad_request", {"partitions": 2}, field="partitions")
    got = expect_error(broker, "PATCH", "/v1/topics/grow", 400, "bad_request", {"set": {"segment.ms": "1"}}, field="set")
    assert "segment.ms" in got["message"], got
    # A bad config refuses the whole request: the partitions asked for in it are not added.
    expect_error(broker, "PATCH", "/v1/topics/grow", 400, "bad_request",
                 {"partitions": 5, "set": {"retention.ms": "soon"}}, field="set")
    assert call(broker, "GET", "/v1/topics/grow")[1]["partition_count"] == 3
    expect_error(broker, "PATCH", "/v1/topics/grow", 400, "bad_request", {}, field="body")
    expect_error(broker, "PATCH", "/v1/topics/grow", 400, "bad_request", {"partitons": 4}, says="partitons")
    expect_error(broker, "PATCH", "/v1/topics/nope", 404, "unknown_topic", {"partitions": 2})


def test_storage_reports_the_index(broker):
    call(broker, "POST", "/v1/topics", {"name": "stored", "partitions": 2})
    harness.produce(broker.bootstrap, "stored", [Rec(p, b"k", b"x" * 100, (), None) for p in (0, 1) for _ in range(20)])
    broker.wait_uploaded("stored", total=40)
    status, s = call(broker, "GET", "/v1/storage")
    assert status == 200, s
    [t] = [t for t in s["topics"] if t["name"] == "stored"]
    assert t["partitions"] == 2 and t["blocks"] >= 2 and t["objects"] >= 1 and t["bytes"] > 4000, t
    assert s["total"]["bytes"] >= t["bytes"] and s["total"]["objects"] >= t["objects"]
    assert s["garbage"]["objects"] >= 0 and "unuploaded_bytes" in s["wal"]
    assert s["object_store"].startswith("fs://")


# --------------------------------------------------------------------------------------
# groups


class Member:
    """A confluent-kafka group member that consumes everything and commits."""

    def __init__(self, bootstrap: str, group: str, topic: str):
        from confluent_kafka import Consumer

        self.c = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group, "client.id": "t96-member",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": 500,
        })
        self.c.subscribe([topic])
        self.seen = 0

    def consume_and_commit(self, want: int):
        def step():
            for m in self.c.consume(num_messages=100, timeout=0.2):
                if m.error() is None:
                    self.seen += 1
            if self.seen >= want:
                self.c.commit(asynchronous=False)
                return True
        harness.eventually(step, 60, interval=0, what=f"consumer read {want} records")

    def close(self):
        self.c.close()


def produce_lines(broker, topic, per_partition: dict[int, int]):
    harness.produce(broker.bootstrap, topic,
                    [Rec(p, None, b"m-%d-%d" % (p, i), (), None) for p, n in per_partition.items() for i in range(n)])


def test_group_describe_lag_and_reset_offsets(broker, strata_bin):
    call(broker, "POST", "/v1/topics", {"name": "events", "partitions": 2})
    produce_lines(broker, "events", {0: 6, 1: 4})
    member = Member(broker.bootstrap, "g1", "events")
    try:
        member.consume_and_commit(10)

        def stable():
            status, g = call(broker, "GET", "/v1/groups/g1")
            return g if status == 200 and g["state"] == "Stable" and g["members"] else None
        g = harness.eventually(stable, 60, what="group g1 stable with a member")
        [m] = g["members"]
        assert m["client_id"] == "t96-member" and "client_host" in m and m["member_id"], m
        assigned = {p for a in m["assignment"] if a["topic"] == "events" for p in a["partitions"]}
        assert assigned == {0, 1}, m
        assert g["protocol_type"] == "consumer" and g["protocol_name"], g
        offsets = {o["partition"]: o for o in g["offsets"]}
        assert offsets[0]["committed_offset"] == 6 and offsets[1]["committed_offset"] == 4, offsets
        assert all(o["lag"] == 0 for o in offsets.values()) and g["lag"] == 0

        produce_lines(broker, "events", {0: 3})
        status, g = call(broker, "GET", "/v1/groups/g1")
        assert {o["partition"]: o["lag"] for o in g["offsets"]} == {0: 3, 1: 0}, g
        status, listed = call(broker, "GET", "/v1/groups")
        [row] = [r for r in listed if r["group_id"] == "g1"]
        assert row["state"] == "Stable" and row["lag"] == 3 and row["protocol_type"] == "consumer", row

        # Live members: refused, through the API and the CLI.
        expect_error(broker, "POST", "/v1/groups/g1/reset-offsets", 409, "group_active",
                     {"topic": "events", "to": "earliest"}, says="live member")
        p = strata(strata_bin, "group", "reset-offsets", "g1", "--topic", "events", "--to-earliest",
                   "--admin", broker.admin_url, ok=False)
        assert p.returncode == 1 and "live member" in p.stderr and "409" in p.stderr, p.stderr
    finally:
        member.close()

    def empty():
        status, g = call(broker, "GET", "/v1/groups/g1")
        return g if status == 200 and not g["members"] else None
    harness.eventually(empty, 30, what="group g1 empty after close")

    status, r = call(broker, "POST", "/v1/groups/g1/reset-offsets",
                     {"topic": "events", "to": "earliest", "dry_run": True})
    assert status == 200 and r["dry_run"] is True, r
    assert {p["partition"]: (p["previous_offset"], p["new_offset"]) for p in r["partitions"]} == {0: (6, 0), 1: (4, 0)}
    status, g = call(broker, "GET", "/v1/groups/g1")
    assert {o["partition"]: o["committed_offset"] for o in g["offsets"]} == {0: 6, 1: 4}, "a dry run writes nothing"

    status, r = call(broker, "POST", "/v1/groups/g1/reset-offsets", {"topic": "events", "to": "earliest"})
    assert status == 200 and r["dry_run"] is False, r
    status, g = call(broker, "GET", "/v1/groups/g1")
    assert {o["partition"]: (o["committed_offset"], o["lag"]) for o in g["offsets"]} == {0: (0, 9), 1: (0, 4)}, g

    status, r = call(broker, "POST", "/v1/groups/g1/reset-offsets",
                     {"topic": "events", "partitions": [0], "to": {"offset": 5}})
    assert status == 200 and [(p["partition"], p["new_offset"]) for p in r["partitions"]] == [(0, 5)], r
    status, r = call(broker, "POST", "/v1/groups/g1/reset-offsets",
                     {"topic": "events", "partitions": [1], "to": {"offset": 1000}})
    assert [p["new_offset"] for p in r["partitions"]] == [4], "an offset past the end is clamped to it"
    status, r = call(broker, "POST", "/v1/groups/g1/reset-offsets", {"topic": "events", "to": "latest"})
    assert {p["partition"]: p["new_offset"] for p in r["partitions"]} == {0: 9, 1: 4}, r
    # Every record is at or after timestamp 0: the position is the first record.
    status, r = call(broker, "POST", "/v1/groups/g1/reset-offsets",
                     {"topic": "events", "to": {"timestamp": 0}, "partitions": [1]})
    assert status == 200 and [p["new_offset"] for p in r["partitions"]] == [0], r

    # A stock client resumes from the reset position.
    status, r = call(broker, "POST", "/v1/groups/g1/reset-offsets",
                     {"topic": "events", "partitions": [0], "to": {"offset": 7}})
    assert status == 200
    member = Member(broker.bootstrap, "g1", "events")
    try:
        member.consume_and_commit(2 + 4)  # partition 0 from 7 (2 records), partition 1 from 0 (4)
    finally:
        member.close()

    # Errors.
    expect_error(broker, "POST", "/v1/groups/g1/reset-offsets", 400, "bad_request",
                 {"topic": "events", "to": "newest"}, field="to", says="newest")
    expect_error(broker, "POST", "/v1/groups/g1/reset-offsets", 400, "bad_request",
                 {"topic": "events"}, field="to")
    expect_error(broker, "POST", "/v1/groups/g1/reset-offsets", 400, "bad_request",
                 {"to": "earliest"}, field="topic")
    expect_error(broker, "POST", "/v1/groups/g1/reset-offsets", 400, "bad_request",
                 {"topic": "events", "to": "earliest", "partitions": [2]}, field="partitions", says="0..2")
    expect_error(broker, "POST", "/v1/groups/g1/reset-offsets", 400, "bad_request",
                 {"topic": "events", "to": "earliest", "dry_run": "yes"}, field="dry_run")
    expect_error(broker, "POST", "/v1/groups/g1/reset-offsets", 400, "bad_json", raw=b"{")
    expect_error(broker, "POST", "/v1/groups/g1/reset-offsets", 404, "unknown_topic",
                 {"topic": "nope", "to": "earliest"})
    expect_error(broker, "GET", "/v1/groups/never-seen", 404, "unknown_group", says="never-seen")


# --------------------------------------------------------------------------------------
# the CLI


def test_cli_cluster_and_group_commands(broker, strata_bin):
    admin = ["--admin", broker.admin_url]
    table = strata(strata_bin, "cluster", "status", *admin).stdout
    assert "BROKER" in table and broker.bootstrap in table and "alive" in table and "leader" in table, table
    c = json.loads(strata(strata_bin, "cluster", "status", *admin, "--output", "json").stdout)
    assert c["node_id"] == 1 and c["brokers"][0]["alive"] is True
    # The environment variable works as --admin does.
    env_run = strata(strata_bin, "cluster", "status", "-o", "json", env={"STRATA_ADMIN": broker.admin_url})
    assert json.loads(env_run.stdout)["node_id"] == 1

    call(broker, "POST", "/v1/topics", {"name": "clicks", "partitions": 2})
    produce_lines(broker, "clicks", {0: 3, 1: 2})
    member = Member(broker.bootstrap, "cli-group", "clicks")
    try:
        member.consume_and_commit(5)
    finally:
        member.close()
    harness.eventually(lambda: call(broker, "GET", "/v1/groups/cli-group")[1].get("members") == [], 30,
                       what="cli-group empty")

    listed = strata(strata_bin, "group", "list", *admin).stdout
    assert listed.splitlines()[0].split() == ["GROUP", "STATE", "PROTOCOL", "PARTITIONS", "LAG"], listed
    assert any(line.split()[:2] == ["cli-group", "Empty"] for line in listed.splitlines()), listed
    as_json = json.loads(strata(strata_bin, "group", "list", *admin, "-o", "json").stdout)
    assert [g["lag"] for g in as_json if g["group_id"] == "cli-group"] == [0]

    described = strata(strata_bin, "group", "describe", "cli-group", *admin).stdout
    rows = [line.split() for line in described.splitlines()]
    assert ["clicks", "0", "3", "3", "0"] in rows and ["clicks", "1", "2", "2", "0"] in rows, described
    d = json.loads(strata(strata_bin, "group", "describe", "cli-group", *admin, "-o", "json").stdout)
    assert d["group_id"] == "cli-group" and len(d["offsets"]) == 2

    dry = strata(strata_bin, "group", "reset-offsets", "cli-group", "--topic", "clicks", "--to-earliest",
                 "--dry-run", *admin).stdout
    assert "dry run" in dry and ["clicks", "0", "3", "0"] in [l.split() for l in dry.splitlines()], dry
    done = json.loads(strata(strata_bin, "group", "reset-offsets", "cli-group", "--topic", "clicks",
                             "--partitions", "1", "--to-offset", "1", *admin, "-o", "json").stdout)
    assert done["partitions"] == [{"partition": 1, "previous_offset": 2, "new_offset": 1}], done
    by_time = json.loads(strata(strata_bin, "group", "reset-offsets", "cli-group", "--topic", "clicks",
                                "--to-datetime", "2000-01-01T00:00:00Z", *admin, "-o", "json").stdout)
    assert {p["partition"]: p["new_offset"] for p in by_time["partitions"]} == {0: 0, 1: 0}, by_time
    latest = json.loads(strata(strata_bin, "group", "reset-offsets", "cli-group", "--topic", "clicks",
                               "--to-latest", *admin, "-o", "json").stdout)
    assert {p["partition"]: p["new_offset"] for p in latest["partitions"]} == {0: 3, 1: 2}

    # Errors: the bad flag and its accepted values, the address tried, the API's message.
    bad = strata(strata_bin, "group", "list", *admin, "--output", "yaml", ok=False)
    assert bad.returncode == 2 and "--output" in bad.stderr and "table" in bad.stderr and "json" in bad.stderr, bad.stderr
    bad = strata(strata_bin, "cluster", "status", "--admin", "127.0.0.1:8080", ok=False)
    assert bad.returncode == 2 and "--admin" in bad.stderr and "http://" in bad.stderr, bad.stderr
    port = harness.free_port()
    refused = strata(strata_bin, "cluster", "status", "--admin", f"http://127.0.0.1:{port}", ok=False)
    assert refused.returncode == 1 and f"127.0.0.1:{port}" in refused.stderr, refused.stderr
    missing = strata(strata_bin, "group", "describe", "nobody", *admin, ok=False)
    assert missing.returncode == 1 and "nobody" in missing.stderr and "404" in missing.stderr, missing.stderr
    two = strata(strata_bin, "group", "reset-offsets", "cli-group", "--topic", "clicks", "--to-earliest",
                 "--to-latest", *admin, ok=False)
    assert two.returncode == 2 and "--to-latest" in two.stderr, two.stderr
    none = strata(strata_bin, "group", "reset-offsets", "cli-group", "--topic", "clicks", *admin, ok=False)
    assert none.returncode == 2 and "--to-earliest" in none.stderr, none.stderr
    gone = strata(strata_bin, "group", "reset-offsets", "cli-group", "--topic", "nope", "--to-earliest",
                  *admin, ok=False)
    assert gone.returncode == 1 and "nope" in gone.stderr, gone.stderr


def test_cli_drain_wait_fails_when_nothing_can_take_the_partitions(broker, strata_bin):
    """A lone broker cannot be drained: `--wait` says so (exit 1) instead of waiting forever,
    and `--undo` brings it back."""
    admin = ["--admin", broker.admin_url]
    call(broker, "POST", "/v1/topics", {"name": "stay", "partitions": 2})
    res = strata(strata_bin, "cluster", "drain", "1", "--wait", "--timeout-secs", "60", *admin, ok=False)
    assert res.returncode == 1, res
    assert "broker 1 still leads 2 partition(s) and no move is planned" in res.stderr, res.stderr
    # The progress line was written (its final state: nothing moved).
    assert "drain broker 1: 0/2 partitions moved (0 %)" in res.stderr, res.stderr
    c = json.loads(strata(strata_bin, "cluster", "status", *admin, "-o", "json").stdout)
    assert c["brokers"][0]["draining"] is True
    undone = json.loads(strata(strata_bin, "cluster", "drain", "1", "--undo", *admin, "-o", "json").stdout)
    assert undone["draining"] is False, undone
    # --wait with --undo is a usage error naming both flags.
    bad = strata(strata_bin, "cluster", "drain", "1", "--undo", "--wait", *admin, ok=False)
    assert bad.returncode == 2 and "--undo" in bad.stderr and "--wait" in bad.stderr, bad.stderr


def test_bench_disk_reports_json_with_progress_on_stderr(strata_bin, tmp_path):
    res = strata(strata_bin, "bench", "disk", "--dir", str(tmp_path / "probe"), "--seconds", "1")
    r = json.loads(res.stdout)
    assert r["fsync_4k_samples"] > 0 and r["seq_bytes"] > 0, r
    assert 0 < r["fsync_4k_p50_us"] <= r["fsync_4k_p99_us"], r
    assert "bench disk: fdatasync of 4 KiB writes: " in res.stderr, res.stderr
    assert "bench disk: fsynced sequential 1 MiB writes: " in res.stderr, res.stderr
    assert list((tmp_path / "probe").iterdir()) == [], "the scratch file is removed"


def test_bench_store_read_reads_every_object_of_a_prefix(broker, strata_bin):
    """`strata bench store-read`: every object under the prefix, in ranged GETs, counted."""
    call(broker, "POST", "/v1/topics", {"name": "raw", "partitions": 2})
    harness.produce(broker.bootstrap, "raw", [Rec(i % 2, None, b"v" * 500, (), None) for i in range(3000)])
    broker.wait_uploaded("raw", total=3000)
    broker.stop()  # nothing writes to the store while it is read
    root = broker.data_dir / "objects"
    files = [p for p in root.rglob("*") if p.is_file()]
    sizes = [p.stat().st_size for p in files]
    assert sum(sizes) > 3000 * 500, sizes
    res = strata(strata_bin, "bench", "store-read", "--object-store", f"fs://{root}", "--prefix", "",
                 "--range-bytes", "4096", "--concurrency", "3")
    r = json.loads(res.stdout)
    assert (r["objects"], r["bytes"]) == (len(files), sum(sizes)), (r, len(files), sum(sizes))
    assert r["gets"] == sum(-(-n // 4096) for n in sizes), r
    assert r["mb_per_s"] > 0 and (r["concurrency"], r["range_bytes"]) == (3, 4096), r
    last = [line for line in res.stderr.splitlines() if line.startswith("bench store-read: ")][-1]
    assert "(100 %)" in last, res.stderr
    bad = strata(strata_bin, "bench", "store-read", "--object-store", "nope://x", ok=False)
    assert bad.returncode != 0 and "nope" in bad.stderr, bad.stderr


def test_cli_produce_and_consume(broker, strata_bin):
    boot = ["--bootstrap", broker.bootstrap]
    harness.create_topic(broker.bootstrap, "lines", 3)
    lines = "".join(f"k{i}:value {i}\n" for i in range(30)) + "no key here\n"
    p = strata(strata_bin, "produce", "lines", "--key-sep", ":", *boot, input=lines)
    assert "produced 31 records" in p.stderr, p.stderr
    # Checked by a stock client: keys split off, keyed records partitioned like Kafka does.
    wm = harness.watermarks(broker.bootstrap, "lines", 3)
    assert sum(hi for _, hi in wm.values()) == 31, wm
    got = harness.consume(broker.bootstrap, "lines", 3)
    records = [r for part in got.values() for r in part]
    assert {(r.key, r.value) for r in records if r.key} == {(b"k%d" % i, b"value %d" % i) for i in range(30)}
    assert [r.value for r in records if r.key is None] == [b"no key here"]

    strata(strata_bin, "produce", "lines", "--partition", "2", *boot, input="a\nb\nc\n")
    out = strata(strata_bin, "consume", "lines", "--partition", "2", "--offset", str(wm[2][1]),
                 "--count", "3", *boot).stdout
    assert out.splitlines() == ["a", "b", "c"], out
    out = strata(strata_bin, "consume", "lines", "--from-beginning", "--count", "34", "--print-key",
                 "--key-sep", "=", "--timeout-ms", "60000", *boot).stdout
    assert sorted(out.splitlines()) == sorted([f"k{i}=value {i}" for i in range(30)] + ["=no key here", "=a", "=b", "=c"])
    assert len(strata(strata_bin, "consume", "lines", "--from-beginning", "--count", "5", *boot).stdout.splitlines()) == 5

    # Errors: the bad partition named with the range, a missing topic, fewer records than asked.
    bad = strata(strata_bin, "produce", "lines", "--partition", "7", *boot, input="x\n", ok=False)
    assert bad.returncode == 2 and "--partition 7" in bad.stderr and "0..3" in bad.stderr, bad.stderr
    bad = strata(strata_bin, "consume", "lines", "--partition", "3", "--count", "1", *boot, ok=False)
    assert bad.returncode == 2 and "--partition 3" in bad.stderr, bad.stderr
    bad = strata(strata_bin, "consume", "nope", "--count", "1", *boot, ok=False)
    assert bad.returncode == 1 and "nope" in bad.stderr, bad.stderr
    bad = strata(strata_bin, "consume", "lines", "--offset", "3", *boot, ok=False)
    assert bad.returncode == 2 and "--partition" in bad.stderr, bad.stderr
    short = strata(strata_bin, "consume", "lines", "--partition", "2", "--from-beginning", "--count", "1000",
                   "--timeout-ms", "1500", *boot, ok=False)
    assert short.returncode == 1 and "of 1000 records" in short.stderr, short.stderr
    assert len(short.stdout.splitlines()) == wm[2][1] + 3, "what arrived was printed"
    bad = strata(strata_bin, "produce", "lines", "--key-sep", "", *boot, input="x\n", ok=False)
    assert bad.returncode == 2 and "--key-sep" in bad.stderr, bad.stderr
    refused = strata(strata_bin, "produce", "lines", "--bootstrap", "127.0.0.1:1", input="x\n", ok=False)
    assert refused.returncode == 1 and "127.0.0.1:1" in refused.stderr, refused.stderr


# --------------------------------------------------------------------------------------
# a cluster


def test_cluster_view_and_topic_writes_from_any_node(strata_bin, tmp_path):
    c = Cluster(strata_bin, tmp_path, brokers=3, combined=True, lease_ms=3000)
    try:
        c.start()

        def agreed():
            views = [call(b, "GET", "/v1/cluster")[1] for b in c.brokers]
            leaders = {v["meta"]["leader"] for v in views}
            alive = [sorted(x["id"] for x in v["brokers"] if x["alive"]) for v in views]
            return views if len(leaders) == 1 and None not in leaders and alive == [[1, 2, 3]] * 3 else None
        views = harness.eventually(agreed, 60, what="every node sees 3 live brokers and one meta leader")
        leader = views[0]["meta"]["leader"]
        assert [v["node_id"] for v in views] == [1, 2, 3]
        assert all(sorted(v["meta"]["voters"]) == [1, 2, 3] for v in views)
        assert all(v["listeners"]["wal"] and v["listeners"]["meta"] for v in views), views[0]["listeners"]

        # A node that does not lead metadata forwards the write to the leader.
        follower = next(b for b in c.brokers if b.node_id != leader)
        status, t = call(follower, "POST", "/v1/topics", {"name": "spread", "partitions": 6})
        assert status == 201, t
        expect_error(c.brokers[leader - 1], "POST", "/v1/topics", 409, "exists", {"name": "spread"})

        def described_everywhere():
            ds = [call(b, "GET", "/v1/topics/spread") for b in c.brokers]
            if any(s != 200 for s, _ in ds):
                return None
            ds = [d for _, d in ds]
            leaders = [[p["leader"] for p in d["partitions"]] for d in ds]
            return ds if all(x is not None for x in leaders[0]) and leaders.count(leaders[0]) == 3 else None
        ds = harness.eventually(described_everywhere, 60, what="every node describes `spread` alike")
        assert {d["id"] for d in ds} == {t["id"]}
        # Each partition is led here on exactly one node.
        for p in range(6):
            assert sum(d["partitions"][p]["led_here"] for d in ds) == 1, [d["partitions"][p] for d in ds]
        status, v = call(c.brokers[0], "GET", "/v1/cluster")
        assert sum(b["partitions_led"] for b in v["brokers"]) == 6 and v["partitions"] == 6, v

        table = strata(strata_bin, "cluster", "status", "--admin", follower.admin_url).stdout
        rows = [line.split() for line in table.splitlines()]
        assert sorted(r[0] for r in rows if len(r) > 2 and r[2] == "alive") == ["1", "2", "3"], table

        status, gone = call(follower, "DELETE", "/v1/topics/spread")
        assert status == 200, gone
        harness.eventually(lambda: all(call(b, "GET", "/v1/topics/spread")[0] == 404 for b in c.brokers),
                           30, what="`spread` gone on every node")
    finally:
        c.stop()
        print(c.logs())
