"""t63 the Rust `rdkafka` crate (0.39, librdkafka 2.12 built from the crate's sources) as the
sixth stock client of the compatibility matrix, through `strata-rdkafka`
(tests/rdkafka-client), a small CLI the tests drive with JSON lines.

Cells: produce/consume in every codec both ways with confluent-kafka; a consumer group of three
members that rebalances when a fourth joins and when one is killed; commit, broker restart and
resume from the committed offset; an idempotent producer across a broker kill -9 (no duplicate,
no gap); admin operations; SASL/SCRAM over TLS, with a wrong password refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import harness
from t62_client_matrix_test import CODECS, PARTITIONS, check, make_records

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def rdk(strata_bin) -> str:
    path = Path(strata_bin).parent / "strata-rdkafka"
    assert path.exists(), f"{path} missing: build it with `cargo build -p strata-rdkafka-client`"
    return str(path)


def hx(b: bytes | None):
    return None if b is None else b.hex()


def unhx(s: str | None):
    return None if s is None else bytes.fromhex(s)


def run(rdk, bs, args, props=(), input: str | None = None, timeout=120) -> subprocess.CompletedProcess:
    cmd = [rdk, "-b", bs]
    for k, v in props:
        cmd += ["-X", f"{k}={v}"]
    return subprocess.run(cmd + args, input=input, capture_output=True, text=True, timeout=timeout,
                          env=harness.clean_env())


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def input_lines(records) -> str:
    return "".join(json.dumps({"p": p, "k": hx(k), "v": hx(v), "h": [[n, hx(x)] for n, x in h]}) + "\n"
                   for p, k, v, h in records)


def rdk_produce(rdk, bs, topic, records, props=()):
    r = run(rdk, bs, ["produce", "--topic", topic], props=props, input=input_lines(records))
    assert r.returncode == 0, f"strata-rdkafka produce exit {r.returncode}: {r.stderr[-2000:]}"
    acks = lines(r.stdout)
    assert [a["i"] for a in acks] == list(range(len(records))), "a delivery report is missing"
    return acks


def rdk_consume(rdk, bs, topic, props=()):
    r = run(rdk, bs, ["consume", "--topic", topic], props=props)
    assert r.returncode == 0, f"strata-rdkafka consume exit {r.returncode}: {r.stderr[-2000:]}"
    return [(m["p"], m["o"], unhx(m["k"]), unhx(m["v"]), tuple((n, unhx(x)) for n, x in m["h"]))
            for m in lines(r.stdout)]


# ---------------------------------------------------------------------------------------
# codecs, both ways


@pytest.mark.parametrize("codec", CODECS)
def test_rdkafka_produces_confluent_reads(mbroker, rdk, codec):
    topic = f"r2c-{codec}"
    harness.create_topic(mbroker.bootstrap, topic, PARTITIONS)
    records = make_records("rdkafka", codec)
    acks = rdk_produce(rdk, mbroker.bootstrap, topic, records,
                       props=[("compression.type", codec), ("acks", "all"), ("linger.ms", "20")])
    assert all("o" in a for a in acks)
    parts = harness.consume(mbroker.bootstrap, topic, PARTITIONS, timeout=60)
    got = [(r.partition, r.offset, r.key, r.value, r.headers) for recs in parts.values() for r in recs]
    check(records, got, f"rdkafka->confluent ({codec})")
    # The delivery reports name the offsets the consumer saw.
    where = {(p, o) for p, o, *_ in got}
    assert {(a["p"], a["o"]) for a in acks} == where


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_produces_rdkafka_reads(mbroker, rdk, codec):
    from confluent_kafka import Producer

    topic = f"c2r-{codec}"
    harness.create_topic(mbroker.bootstrap, topic, PARTITIONS)
    records = make_records("confluent", codec)
    p = Producer(harness.producer_conf(mbroker.bootstrap, **{"compression.type": codec}))
    errors = []
    for part, k, v, h in records:
        p.produce(topic, value=v, key=k, partition=part, headers=list(h) or None,
                  on_delivery=lambda err, msg: err and errors.append(err))
    assert p.flush(60) == 0 and not errors, errors[:3]
    check(records, rdk_consume(rdk, mbroker.bootstrap, topic), f"confluent->rdkafka ({codec})")


# ---------------------------------------------------------------------------------------
# consumer group


class Member(harness.JsonLinesProcess):
    """One `strata-rdkafka group` process."""

    def __init__(self, rdk, bs, topic, group, name, commit=False, max_records=None, props=()):
        cmd = [rdk, "-b", bs, "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500",
               "-X", "client.id=" + name]
        for k, v in props:
            cmd += ["-X", f"{k}={v}"]
        cmd += ["group", "--topic", topic, "--group", group, "--run-secs", "200"]
        if commit:
            cmd.append("--commit")
        if max_records is not None:
            cmd += ["--max-records", str(max_records)]
        self.name = name
        super().__init__(cmd)

    def assigned(self) -> set[int]:
        """The partitions this member holds now (eager protocol: revoke all, then assign)."""
        held: set[int] = set()
        with self.lock:
            for e in self.events:
                if e["event"] == "assign":
                    held = set(e["partitions"])
                elif e["event"] == "revoke":
                    held -= set(e["partitions"])
        return held

    def records(self) -> list[tuple[int, int, bytes]]:
        return [(e["p"], e["o"], unhx(e["v"])) for e in self.of("record")]


wait_split = harness.wait_split


def test_group_of_three_rebalances_on_join_and_kill(mbroker, rdk):
    topic, group, parts = "rdk-group", "rdk-g3", 6
    harness.create_topic(mbroker.bootstrap, topic, parts)
    members = [Member(rdk, mbroker.bootstrap, topic, group, f"m{i}") for i in range(3)]
    try:
        wait_split(members, parts)
        fourth = Member(rdk, mbroker.bootstrap, topic, group, "m3")
        members.append(fourth)
        wait_split(members, parts)  # the join: four members share six partitions
        victim = members.pop(0)
        victim.kill9()
        wait_split(members, parts)  # its session times out; the other three take its partitions
        # Records produced now are read by the members that hold their partitions, each once.
        records = [harness.Rec(i % parts, None, b"after-%d" % i) for i in range(60)]
        harness.produce(mbroker.bootstrap, topic, records)

        def all_read():
            got = [r for m in members for r in m.records() if r[2].startswith(b"after-")]
            return len(got) >= 60 and got
        got = harness.eventually(all_read, 60, what="the post-rebalance records read")
        values = sorted(v for _, _, v in got)
        assert values == sorted(b"after-%d" % i for i in range(60)), "a record was read twice or lost"
        for m in members:
            for p, _, v in m.records():
                if v.startswith(b"after-"):
                    assert p in m.assigned(), f"{m.name} read partition {p} it does not hold"
    finally:
        for m in members:
            m.stop()


def test_commit_then_resume_after_broker_restart(broker_factory, rdk):
    b = broker_factory()
    topic, group = "rdk-resume", "rdk-resume-g"
    harness.create_topic(b.bootstrap, topic, 1)
    harness.produce(b.bootstrap, topic, [harness.Rec(0, None, b"v%03d" % i) for i in range(100)])
    first = Member(rdk, b.bootstrap, topic, group, "first", commit=True, max_records=40)
    first.proc.wait(90)
    first.reader.join(10)
    assert first.proc.returncode == 0, first.stderr()
    assert [o for _, o, _ in first.records()] == list(range(40))
    b.restart()
    second = Member(rdk, b.bootstrap, topic, group, "second", commit=True, max_records=60)
    second.proc.wait(90)
    second.reader.join(10)
    assert second.proc.returncode == 0, second.stderr()
    got = second.records()
    assert [o for _, o, _ in got] == list(range(40, 100)), "did not resume at the committed offset"
    assert [v for *_, v in got] == [b"v%03d" % i for i in range(40, 100)]


# ---------------------------------------------------------------------------------------
# idempotent producer across a broker kill


def test_idempotent_producer_across_broker_kill(broker_factory, rdk):
    b = broker_factory()
    topic, n = "rdk-idem", 3000
    harness.create_topic(b.bootstrap, topic, PARTITIONS)
    cmd = [rdk, "-b", b.bootstrap, "-X", "enable.idempotence=true", "-X", "acks=all", "-X", "linger.ms=5",
           "-X", "message.timeout.ms=120000", "produce", "--topic", topic, "--timeout-secs", "180"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=harness.clean_env())
    records = [(i % PARTITIONS, b"k%d" % i, b"%06d|idem" % i, ()) for i in range(n)]
    body = input_lines(records).splitlines(keepends=True)
    # The first third is written and acknowledged before the kill; the rest is fed while the
    # broker is down and after it restarts, so librdkafka's retries and sequence numbers matter.
    for line in body[: n // 3]:
        proc.stdin.write(line)
    proc.stdin.flush()
    harness.eventually(lambda: b.metrics().sum("strata_produce_records_total") >= n // 3, 60,
                       what="the first third acknowledged")
    b.kill9()
    for line in body[n // 3: 2 * n // 3]:
        proc.stdin.write(line)
    proc.stdin.flush()
    b.start()
    out, err = proc.communicate(input="".join(body[2 * n // 3:]), timeout=200)
    assert proc.returncode == 0, f"exit {proc.returncode}: {err[-2000:]}"
    acks = lines(out)
    assert len(acks) == n and all("o" in a for a in acks), [a for a in acks if "error" in a][:3]
    got = rdk_consume(rdk, b.bootstrap, topic)
    check(records, got, "rdkafka idempotent across kill -9")


# ---------------------------------------------------------------------------------------
# admin


def test_admin_operations(mbroker, rdk):
    bs = mbroker.bootstrap

    def admin(*args):
        r = run(rdk, bs, ["admin", *args])
        assert r.returncode == 0, f"admin {args}: {r.stderr[-1500:]}"
        return lines(r.stdout)[0]

    assert admin("create-topic", "rdk-admin", "2", "retention.ms=3600000") == {"ok": "rdk-admin"}
    assert admin("create-topic", "rdk-admin", "2")["error"] == "TopicAlreadyExists"
    assert admin("list-topics")["topics"]["rdk-admin"] == 2
    assert admin("create-partitions", "rdk-admin", "5") == {"ok": "rdk-admin"}
    harness.eventually(lambda: admin("list-topics")["topics"]["rdk-admin"] == 5, 30, what="5 partitions")
    assert admin("describe-config", "rdk-admin")["configs"]["retention.ms"]["value"] == "3600000"
    assert admin("alter-config", "rdk-admin", "retention.ms=7200000") == {"ok": "rdk-admin"}
    assert admin("describe-config", "rdk-admin")["configs"]["retention.ms"]["value"] == "7200000"
    assert admin("delete-topic", "rdk-admin") == {"ok": "rdk-admin"}
    harness.eventually(lambda: "rdk-admin" not in admin("list-topics")["topics"], 30, what="topic gone")
    assert admin("delete-topic", "rdk-admin")["error"] == "UnknownTopicOrPartition"


# ---------------------------------------------------------------------------------------
# SASL/SCRAM over TLS


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_scram_over_tls(broker_factory, tmp_path, strata_bin, rdk, mech):
    from certs import make_certs
    from t28_kafka_security_test import ADMIN_PW, ALICE_PW, _cli

    ca, cert, key = make_certs(tmp_path / "tls")
    b = broker_factory(config={"kafka": {"tls_cert_file": str(cert), "tls_key_file": str(key),
                                         "sasl_mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256"}})
    user, pw = ("admin", ADMIN_PW) if mech == "SCRAM-SHA-512" else ("alice", ALICE_PW)
    args = ["user", "add", user, "--password-stdin", "--via-admin", b.admin_url]
    if mech == "SCRAM-SHA-256":
        args[3:3] = ["--mechanism", "SCRAM-SHA-256"]
    r = _cli(strata_bin, args, stdin=pw + "\n")
    assert r.returncode == 0, r.stderr

    def props(password):
        return [("security.protocol", "SASL_SSL"), ("ssl.ca.location", str(ca)), ("sasl.mechanism", mech),
                ("sasl.username", user), ("sasl.password", password)]

    r = run(rdk, b.bootstrap, ["admin", "create-topic", "sec", "1"], props=props(pw))
    assert r.returncode == 0 and lines(r.stdout)[0] == {"ok": "sec"}, r.stderr[-1500:]
    records = [(0, b"k", b"000000|over-tls", (("h", b"1"),))]
    rdk_produce(rdk, b.bootstrap, "sec", records, props=props(pw) + [("acks", "all")])
    check(records, rdk_consume(rdk, b.bootstrap, "sec", props=props(pw)), f"rdkafka {mech} over TLS")
    bad = run(rdk, b.bootstrap, ["produce", "--topic", "sec"], props=props(pw + "-wrong") + [
        ("message.timeout.ms", "8000")], input=input_lines(records), timeout=90)
    assert bad.returncode != 0, bad.stdout
    assert "Authentication" in bad.stderr or "SASL" in bad.stderr, bad.stderr[-1500:]
    assert b.metrics().sum("strata_kafka_auth_failures_total") >= 1
