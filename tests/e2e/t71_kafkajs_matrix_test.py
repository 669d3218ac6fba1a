"""t71 kafkajs cells of the client matrix that t62 (codecs, SASL, idempotent), t70 (one group
member) and t27 (partitions, configs) leave open, the same scenarios t63 runs for the Rust
`rdkafka` crate, through tools/kafkajs_matrix.js (JSON lines; each member its own process):

- a group of three kafkajs members: two split six partitions, a third joins and they rebalance,
  one is killed with SIGKILL and the two survivors take its partitions after its session
  timeout; every record produced meanwhile is read by the members;
- commit, broker kill -9 and restart, resume exactly at the committed offsets;
- an idempotent producer (`idempotent: true`, one request in flight) across a broker kill -9:
  every acknowledged record exactly once at its acknowledged offset;
- admin: createTopics, listTopics, deleteTopics, TOPIC_ALREADY_EXISTS.

Assignments are what each member's kafkajs reports on GROUP_JOIN; nothing asserts a time."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import harness
from harness import Rec

pytestmark = pytest.mark.timeout(240)

HERE = Path(__file__).resolve().parent
TOOL = HERE / "tools" / "kafkajs_matrix.js"


@pytest.fixture(scope="module", autouse=True)
def kafkajs_installed():
    if not (HERE / "node_modules" / "kafkajs").is_dir():
        pytest.fail("kafkajs is not installed in tests/e2e/node_modules (tests/run.sh runs npm ci)", pytrace=False)


class Node(harness.JsonLinesProcess):
    """One `kafkajs_matrix.js` process (its first argument says which role)."""

    def __init__(self, *args: str):
        self.args = args
        super().__init__(["node", str(TOOL), *args], cwd=HERE)

    def wait(self, timeout: float = 120) -> None:
        """Wait for the process to exit by itself; assert it exited 0."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"{self.args[0]} did not finish in {timeout}s: {self.stderr()}")
        self.reader.join(10)
        assert self.proc.returncode == 0, f"{self.args[0]} exited {self.proc.returncode}: {self.stderr()}"


class Member(Node):
    def __init__(self, bs: str, group: str, topic: str, *opts: str):
        super().__init__("member", bs, group, topic, *opts)

    def assigned(self) -> list[int] | None:
        """The partitions of this member's latest GROUP_JOIN (None before its first join)."""
        joins = self.of("join")
        return joins[-1]["partitions"] if joins else None

    def records(self) -> list[tuple[int, int, str]]:
        return [(e["p"], e["o"], e["v"]) for e in self.of("record")]


wait_split = harness.wait_split


def values(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def produce(bs: str, topic: str, partitions: int, prefix: str, n: int, **kw) -> None:
    harness.produce(bs, topic, [Rec(i % partitions, None, f"{prefix}-{i}".encode()) for i in range(n)], **kw)


# ---------------------------------------------------------------------------------------
# a group of three


def test_kafkajs_group_of_three_rebalances_on_join_and_kill(broker):
    bs, topic, group, parts = broker.bootstrap, "kjs-group", "kjs-g3", 6
    harness.create_topic(bs, topic, parts)
    produced: list[str] = []

    def batch(prefix: str, n: int):
        produce(bs, topic, parts, prefix, n)
        produced.extend(values(prefix, n))

    members = [Member(bs, group, topic, "--commit", "auto") for _ in range(2)]
    try:
        batch("before", 60)
        two = wait_split(members, parts)
        print(f"two members: {two}")
        members.append(Member(bs, group, topic, "--commit", "auto"))
        batch("joining", 60)  # while the third joins
        three = wait_split(members, parts)
        print(f"three members: {three}")
        batch("three", 60)
        victim = members.pop(1)
        victim_held = victim.assigned()
        victim.kill9()
        batch("killed", 60)  # the victim's partitions have no live reader until its session times out
        # The survivors rejoin once the coordinator drops the dead member: their new assignments
        # cover its partitions too.
        survivors = wait_split(members, parts)
        print(f"after the kill of the member holding {victim_held}: {survivors}")
        batch("after", 60)

        def union():
            got = {v for m in members + [victim] for _, _, v in m.records()}
            return got >= set(produced) and got

        try:
            harness.eventually(union, 90, what="every produced record read by some member")
        except AssertionError as e:
            got = {v for m in members + [victim] for _, _, v in m.records()}
            missing = sorted(set(produced) - got)
            raise AssertionError(f"{e}: {len(missing)} never read, first {missing[:10]}; "
                                 f"assignments {[m.assigned() for m in members]}") from None
        # At-least-once across the kill, but never a record nobody produced, and each offset
        # always holds the same record.
        where: dict[tuple[int, int], str] = {}
        for m in members + [victim]:
            for p, o, v in m.records():
                assert v in produced, f"foreign record {v!r} at {p}/{o}"
                assert where.setdefault((p, o), v) == v, f"{p}/{o} read as {where[(p, o)]!r} and {v!r}"
        # Once the two survivors are settled, what is produced is read exactly once, by the
        # member whose latest assignment holds its partition.
        after = [(m, p, v) for m in members for p, _, v in m.records() if v.startswith("after-")]
        assert sorted(v for _, _, v in after) == sorted(values("after", 60)), "an 'after' record read twice"
        for m, p, v in after:
            assert p in m.assigned(), f"{v} read from partition {p}, outside the reader's {m.assigned()}"
        assert [m.assigned() for m in members] == survivors, "a rebalance after the survivors settled"
    finally:
        for m in members:  # all leave at once
            if m.proc.poll() is None:
                m.proc.stdin.close()
        for m in members:
            m.stop()
    for m in members:
        assert m.proc.returncode == 0, m.stderr()
        assert m.of("left"), "a survivor did not leave the group cleanly"


# ---------------------------------------------------------------------------------------
# commit, broker kill -9, resume


def committed(bs: str, group: str) -> dict[int, int]:
    from confluent_kafka import ConsumerGroupTopicPartitions

    adm = harness.admin_client(bs)
    res = adm.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(30)
    return {tp.partition: tp.offset for tp in res.topic_partitions if tp.offset >= 0}


def test_kafkajs_commit_then_resume_after_broker_kill(broker):
    bs, topic, group, parts = broker.bootstrap, "kjs-resume", "kjs-resume-g", 2
    harness.create_topic(bs, topic, parts)
    # Small batches and small fetches, so the first member reads some of each partition.
    produce(bs, topic, parts, "old", 200, flush_every=10)
    first = Member(bs, group, topic, "--commit", "each", "--max-records", "70", "--max-bytes", "400")
    first.wait(120)
    read = first.records()
    assert len(read) == 70
    assert [(e["p"], e["o"]) for e in first.of("commit")] == [(p, o) for p, o, _ in read], "a commit is missing"
    # The offsets the client committed: one past the last record it read of each partition.
    want = {}
    for p, o, _ in read:
        want[p] = max(want.get(p, 0), o + 1)
    print(f"committed by the first member: {want}")
    assert sorted(want) == list(range(parts)), "the first member did not read from every partition"
    assert committed(bs, group) == want

    broker.kill9()
    broker.start()
    assert committed(bs, group) == want, "committed offsets lost in the broker kill"
    produce(bs, topic, parts, "new", 20)
    rest = 200 - 70 + 20
    second = Member(bs, group, topic, "--commit", "each", "--max-records", str(rest))
    second.wait(120)
    got = second.records()
    everything = harness.consume(bs, topic, parts, timeout=60)
    expected = sorted((p, r.offset, r.value.decode()) for p, recs in everything.items() for r in recs
                      if r.offset >= want.get(p, 0))
    assert len(expected) == rest
    assert sorted(got) == expected, "did not resume exactly at the committed offsets"
    assert committed(bs, group) == {p: len(recs) for p, recs in everything.items()}


# ---------------------------------------------------------------------------------------
# idempotent producer across a broker kill -9


def test_kafkajs_idempotent_producer_across_broker_kill(broker):
    bs, topic, parts = broker.bootstrap, "kjs-idem", 3
    n, per_send = 3000, 10
    sends = n // per_send
    harness.create_topic(bs, topic, parts)
    prod = Node("produce-idem", bs, topic, str(n), str(per_send), str(parts), "5")
    try:
        harness.eventually(lambda: len(prod.of("ack")) >= sends // 3 or prod.proc.poll() is not None, 90,
                           interval=0.01, what="a third of the sends acknowledged")
        broker.kill9()
        done_at_kill = len(prod.of("ack")) + len(prod.of("failed"))
        broker.start()
        prod.wait(180)
    finally:
        if prod.proc.poll() is None:
            prod.proc.kill()
            prod.proc.wait(10)
    assert done_at_kill < sends, "the producer finished before the broker was killed"
    acks, failed = prod.of("ack"), prod.of("failed")
    print(f"{len(acks)} sends acknowledged, {done_at_kill} of them before the kill; failed: {failed}")
    print("kafkajs logs:", *sorted({(e["level"], e["message"]) for e in prod.of("log")}), sep="\n  ")
    # kafkajs saw the broker go away mid-stream (and retried: no send failed here unless reported).
    assert any(e["level"] == "error" and "Connection" in e["message"] for e in prod.of("log")), prod.of("log")
    assert sorted(e["first"] for e in acks + failed) == list(range(0, n, per_send)), "a send was not reported"

    # Where each acknowledged record must be: its send's base offset plus its place in the send.
    want = {}
    for e in acks:
        for i in range(e["n"]):
            want[e["first"] + i] = (e["p"], e["base"] + i)
    maybe = {e["first"] + i for e in failed for i in range(e["n"])}
    got = harness.consume(bs, topic, parts, timeout=90)
    seen: dict[int, tuple[int, int]] = {}
    for p, recs in got.items():
        for r in recs:
            i = int(r.key.decode()[1:])
            assert r.value == b"v%06d" % i, f"record {i} value {r.value!r}"
            assert i not in seen, f"record {i} written twice: at {seen[i]} and {(p, r.offset)}"
            seen[i] = (p, r.offset)
        keys = [int(r.key.decode()[1:]) for r in recs]
        assert keys == sorted(keys), f"partition {p} out of order"
    missing = sorted(set(want) - set(seen))
    assert not missing, f"{len(missing)} acknowledged records missing, first {missing[:10]}"
    stray = sorted(set(seen) - set(want) - maybe)
    assert not stray, f"records never sent or reported: {stray[:10]}"
    wrong = {i: (want[i], seen[i]) for i in want if seen[i] != want[i]}
    assert not wrong, f"records not at their acknowledged offsets (want, got): {list(wrong.items())[:5]}"
    harness.assert_dense(got)


# ---------------------------------------------------------------------------------------
# admin


def test_kafkajs_admin_create_list_delete_topics(broker):
    bs, topic = broker.bootstrap, "kjs-admin-topic"
    r = subprocess.run(["node", str(TOOL), "admin", bs, topic, "4"], capture_output=True, text=True, timeout=120,
                       cwd=HERE, env=harness.clean_env())
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=1))
    assert out["create"] == {"ok": True}, out["create"]
    assert out["listed"] is True
    assert out["partitions"] == [0, 1, 2, 3]
    # Every error TOPIC_ALREADY_EXISTS: kafkajs's createTopics resolves to false.
    assert out["createAgain"] == {"ok": False}, out["createAgain"]
    # With a second topic that fails otherwise, kafkajs throws the per-topic errors.
    bad = out["createAgainWithBad"]
    assert bad.get("name") == "KafkaJSAggregateError", bad
    by_topic = {e["topic"]: e["type"] for e in bad["errors"]}
    assert by_topic[topic] == "TOPIC_ALREADY_EXISTS", bad
    assert by_topic[f"{topic}-bad"] == "INVALID_PARTITIONS", bad
    assert out["badCreated"] is False
    assert out["delete"] == {"ok": True}, out["delete"]
    assert out["listedAfterDelete"] is False
    assert out["deleteAgain"].get("error") == "UNKNOWN_TOPIC_OR_PARTITION", out["deleteAgain"]
    # Another client agrees.
    assert topic not in harness.admin_client(bs).list_topics(timeout=10).topics
