"""t70 consumer groups: stock clients with a group.id — confluent-kafka (librdkafka),
kafka-python, kcat's balanced consumer and kafkajs — join groups, split partitions,
rebalance when members leave or die, commit offsets and resume from them (also after a
kill -9 of the broker); the admin clients list, describe and delete groups and offsets.

Timing: every wait is a bounded poll; nothing asserts how long a rebalance took. The broker
delays a new group's first rebalance by 3 s (Kafka's group.initial.rebalance.delay.ms) and
the consumers use the smallest session timeout Kafka allows (6 s)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import harness
from harness import Rec

HERE = Path(__file__).resolve().parent
SESSION_MS = 6000
PARTITIONS = 4


# --------------------------------------------------------------------------------------
# one group member, the same interface for both Python clients


class ConfluentMember:
    def __init__(self, bootstrap: str, group: str, topic: str, **extra):
        from confluent_kafka import Consumer

        conf = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": SESSION_MS,
            "heartbeat.interval.ms": 500,
        }
        conf.update(extra)
        self.c = Consumer(conf)
        self.c.subscribe([topic])

    def poll(self, timeout: float = 0.2) -> list[tuple[int, int, bytes]]:
        from confluent_kafka import KafkaError

        out = []
        for m in self.c.consume(num_messages=1000, timeout=timeout):
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(f"consumer error: {err}")
                continue
            out.append((m.partition(), m.offset(), m.value()))
        return out

    def commit(self):
        self.c.commit(asynchronous=False)

    def assignment(self) -> set[int]:
        return {tp.partition for tp in self.c.assignment()}

    def close(self):
        self.c.close()


class KafkaPythonMember:
    """A kafka-python consumer polled by its own thread, as an application would run it.

    kafka-python 3.0.12 runs JoinGroup/SyncGroup in its IO thread but applies the result only
    inside poll(): a join that completes while nobody polls is thrown away and the member joins
    again. Polling several members in turn from one thread hits that on a slow machine (the
    leader rejoins forever), so each member polls continuously here and commits after every
    non-empty poll, before polling again (the same order `consume` keeps for the others)."""

    def __init__(self, bootstrap: str, group: str, topic: str, **extra):
        import queue
        import threading

        from kafka import KafkaConsumer

        self.c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                               enable_auto_commit=False, session_timeout_ms=SESSION_MS, heartbeat_interval_ms=500,
                               **extra)
        self.records: queue.Queue = queue.Queue()
        self._assignment: set[int] = set()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                batches = self.c.poll(timeout_ms=200)
                got = [(r.partition, r.offset, r.value) for recs in batches.values() for r in recs]
                if got:
                    self.c.commit()
                    for rec in got:
                        self.records.put(rec)
                self._assignment = {tp.partition for tp in self.c.assignment()}
        except BaseException as e:  # noqa: BLE001 - raised in the test's thread
            self._error = e

    def poll(self, timeout: float = 0.2) -> list[tuple[int, int, bytes]]:
        import queue

        if self._error is not None:
            raise AssertionError(f"kafka-python consumer failed: {self._error!r}")
        out = []
        try:
            out.append(self.records.get(timeout=timeout))
            while True:
                out.append(self.records.get_nowait())
        except queue.Empty:
            pass
        return out

    def commit(self):
        pass  # done by the polling thread after each batch

    def assignment(self) -> set[int]:
        return set(self._assignment)

    def close(self):
        self._stop.set()
        self._thread.join(60)
        self.c.close()


CLIENTS = {"confluent": ConfluentMember, "kafka-python": KafkaPythonMember}


def consume(members: list, want: int, seen: dict, timeout: float = 90, what: str = "records") -> None:
    """Poll every member in turn, committing after each non-empty poll, until `seen` holds
    `want` records. `seen` maps (partition, offset) → (member index, value); a record
    delivered twice fails the test."""
    deadline = time.monotonic() + timeout
    while len(seen) < want:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out consuming {what}: {len(seen)} of {want}; "
                                 f"assignments {[sorted(m.assignment()) for m in members]}")
        for i, m in enumerate(members):
            got = m.poll(0.2)
            for p, o, v in got:
                assert (p, o) not in seen, f"partition {p} offset {o} delivered twice ({seen[(p, o)]}, then member {i})"
                seen[(p, o)] = (i, v)
            if got:
                m.commit()


def poll_idle(members: list, seconds: float) -> list:
    """Poll for a while and return whatever arrives (expected: nothing)."""
    extra = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for m in members:
            extra.extend(m.poll(0.2))
    return extra


def wait_assignments(members: list, want: list[set[int]], timeout: float = 90):
    """Poll every member until their assignments are exactly `want` (in member order)."""
    def ok():
        for m in members:
            got = m.poll(0.2)
            assert not got, f"records while waiting for assignments: {got[:3]}"
        return [m.assignment() for m in members] == want

    harness.eventually(ok, timeout, interval=0.0, what=f"assignments {want}")


def wait_split(members: list, partitions: int, timeout: float = 90) -> list[set[int]]:
    """Poll until every member has a non-empty assignment, disjoint, covering every partition."""
    def ok():
        for m in members:
            got = m.poll(0.2)
            assert not got, f"records while waiting for the split: {got[:3]}"
        parts = [m.assignment() for m in members]
        union = set().union(*parts)
        if all(parts) and union == set(range(partitions)) and sum(map(len, parts)) == partitions:
            return parts
        return None

    return harness.eventually(ok, timeout, interval=0.0, what="partitions split across the members")


def records(prefix: str, n: int, partitions: int = PARTITIONS) -> list[Rec]:
    return [Rec(i % partitions, None, b"%s-%d" % (prefix.encode(), i)) for i in range(n)]


def values(seen: dict) -> set[bytes]:
    return {v for _, v in seen.values()}


def group_offsets(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    from confluent_kafka import ConsumerGroupTopicPartitions

    adm = harness.admin_client(bootstrap)
    res = adm.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(30)
    return {(tp.topic, tp.partition): tp.offset for tp in res.topic_partitions}


# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("restart", [False, True], ids=["live", "after-kill9"])
@pytest.mark.parametrize("client", list(CLIENTS))
def test_commit_then_resume(broker, client, restart):
    """A member consumes everything, commits and leaves; a new member of the same group
    starts at the committed offsets (also after the broker was killed -9 and restarted): it
    gets only what was produced since."""
    topic = group = f"resume-{client}" + ("-restart" if restart else "")
    harness.create_topic(broker.bootstrap, topic, PARTITIONS)
    harness.produce(broker.bootstrap, topic, records("old", 200))
    member = CLIENTS[client](broker.bootstrap, group, topic)
    seen: dict = {}
    try:
        consume([member], 200, seen, what="the first 200")
    finally:
        member.close()
    assert values(seen) == {b"old-%d" % i for i in range(200)}
    committed = group_offsets(broker.bootstrap, group)
    assert committed == {(topic, p): 50 for p in range(PARTITIONS)}, committed
    if restart:
        broker.kill9()
        broker.start()
        assert group_offsets(broker.bootstrap, group) == committed, "committed offsets changed across the restart"

    harness.produce(broker.bootstrap, topic, records("new", 100))
    member = CLIENTS[client](broker.bootstrap, group, topic)
    seen = {}
    try:
        consume([member], 100, seen, what="the 100 new records")
        assert values(seen) == {b"new-%d" % i for i in range(100)}
        assert min(o for _, o in seen) == 50, "resumed below the committed offsets"
        assert poll_idle([member], 1.5) == [], "records delivered again"
    finally:
        member.close()
    assert group_offsets(broker.bootstrap, group) == {(topic, p): 75 for p in range(PARTITIONS)}


@pytest.mark.parametrize("client", list(CLIENTS))
def test_two_members_split_then_one_takes_over(broker, client):
    """Two members split four partitions; when one leaves, the other gets all four, and with
    commits every record is consumed exactly once across the two."""
    topic = group = f"split-{client}"
    harness.create_topic(broker.bootstrap, topic, PARTITIONS)
    make = CLIENTS[client]
    a = make(broker.bootstrap, group, topic)
    b = make(broker.bootstrap, group, topic)
    try:
        parts = wait_split([a, b], PARTITIONS)
        print(f"split: {parts}")
        seen: dict = {}
        harness.produce(broker.bootstrap, topic, records("one", 400))
        consume([a, b], 400, seen, what="records with two members")
        by_member = [{p for (p, _), (i, _) in seen.items() if i == k} for k in (0, 1)]
        assert by_member == parts, f"records came from partitions {by_member}, assignments were {parts}"

        b.close()
        b = None
        wait_assignments([a], [set(range(PARTITIONS))])
        harness.produce(broker.bootstrap, topic, records("two", 200))
        consume([a], 600, seen, what="records after the other member left")
        assert values(seen) == {b"one-%d" % i for i in range(400)} | {b"two-%d" % i for i in range(200)}
        assert poll_idle([a], 1.5) == [], "records delivered again"
    finally:
        a.close()
        if b is not None:
            b.close()
    m = broker.metrics()
    # At least the generation with both members and the one after the leave.
    assert m.sum("strata_group_rebalances_total") >= 2
    assert m.sum("strata_offset_commits_total") >= 2


@pytest.mark.parametrize("client", list(CLIENTS))
def test_killed_member_is_removed_after_its_session_timeout(broker, client, tmp_path):
    """A member in another process is killed with SIGKILL (no LeaveGroup). After its session
    timeout the coordinator removes it and the survivor gets every partition, including the
    records produced to the dead member's partitions."""
    topic = group = f"kill-{client}"
    harness.create_topic(broker.bootstrap, topic, PARTITIONS)
    log_path = tmp_path / "member.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([harness.python(), str(HERE / "tools" / "group_consumer.py"), broker.bootstrap, group,
                                 topic, str(SESSION_MS)], stdout=log, stderr=subprocess.STDOUT, env=harness.clean_env())
    survivor = CLIENTS[client](broker.bootstrap, group, topic)
    try:
        def other_assignment() -> set[int] | None:
            lines = [line for line in log_path.read_text().splitlines() if line.startswith("assigned ")]
            if not lines or lines[-1] == "assigned ":
                return None
            return {int(p) for p in lines[-1].split(" ", 1)[1].split(",")}

        def split():
            assert proc.poll() is None, f"member process exited: {log_path.read_text()[-2000:]}"
            assert not survivor.poll(0.2)
            mine, theirs = survivor.assignment(), other_assignment()
            return mine and theirs and not (mine & theirs) and mine | theirs == set(range(PARTITIONS)) and theirs

        theirs = harness.eventually(split, 90, interval=0.0, what="the partitions split with the other process")
        assert broker.metrics().sum("strata_group_members") == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        harness.produce(broker.bootstrap, topic, records("after-kill", 100))
        seen: dict = {}
        consume([survivor], 100, seen, timeout=SESSION_MS / 1000 + 90, what="records of the dead member's partitions")
        assert {p for p, _ in seen} == set(range(PARTITIONS)), f"the dead member's partitions {theirs} were not taken over"
        assert survivor.assignment() == set(range(PARTITIONS))
        assert broker.metrics().sum("strata_group_members") == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        survivor.close()


def test_static_member_restart(broker):
    """A static member (group.instance.id) closes without leaving, as librdkafka's do; its
    restart takes the old member's place at once (no wait for the session timeout) and
    resumes from the committed offsets."""
    topic = group = "static-member"
    harness.create_topic(broker.bootstrap, topic, PARTITIONS)
    harness.produce(broker.bootstrap, topic, records("old", 100))
    static = {"group.instance.id": "static-1"}
    member = ConfluentMember(broker.bootstrap, group, topic, **static)
    try:
        consume([member], 100, {}, what="the first 100")
    finally:
        member.close()
    harness.produce(broker.bootstrap, topic, records("new", 40))
    member = ConfluentMember(broker.bootstrap, group, topic, **static)
    try:
        seen: dict = {}
        consume([member], 40, seen, what="the records produced while it was away")
        assert values(seen) == {b"new-%d" % i for i in range(40)}
        adm = harness.admin_client(broker.bootstrap)  # alive until the future resolves
        desc = adm.describe_consumer_groups([group])[group].result(30)
        assert [m.group_instance_id for m in desc.members] == ["static-1"], desc.members
    finally:
        member.close()


def test_committed_offsets_survive_a_broker_kill(broker):
    """Offsets are metadata: after kill -9 and a restart, the group resumes where it was."""
    from confluent_kafka import TopicPartition

    topic = group = "durable-offsets"
    harness.create_topic(broker.bootstrap, topic, PARTITIONS)
    harness.produce(broker.bootstrap, topic, records("old", 200))
    member = ConfluentMember(broker.bootstrap, group, topic)
    try:
        consume([member], 200, {}, what="the first 200")
    finally:
        member.close()
    before = group_offsets(broker.bootstrap, group)
    assert before == {(topic, p): 50 for p in range(PARTITIONS)}

    broker.kill9()
    broker.start()
    assert group_offsets(broker.bootstrap, group) == before
    harness.produce(broker.bootstrap, topic, records("new", 40))
    member = ConfluentMember(broker.bootstrap, group, topic)
    try:
        committed = member.c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
        assert sorted((tp.partition, tp.offset) for tp in committed) == [(p, 50) for p in range(PARTITIONS)]
        seen: dict = {}
        consume([member], 40, seen, what="the records produced after the restart")
        assert values(seen) == {b"new-%d" % i for i in range(40)}
    finally:
        member.close()


def test_kcat_balanced_consumer(broker, kcat_ok):
    """kcat -G (librdkafka 2.0.2 balanced consumer) reads every record and commits."""
    topic = group = "kcat-group"
    harness.create_topic(broker.bootstrap, topic, 3)
    harness.produce(broker.bootstrap, topic, records("kc", 90, partitions=3))
    r = harness.kcat(["-b", broker.bootstrap, "-G", group, "-c", "90", "-X", "auto.offset.reset=earliest",
                      "-f", r"%p %o %s\n", topic], timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    lines = r.stdout.decode().splitlines()
    assert sorted(line.split(" ")[2] for line in lines) == sorted(f"kc-{i}" for i in range(90))
    # kcat commits automatically (on close at the latest).
    harness.eventually(lambda: group_offsets(broker.bootstrap, group) == {(topic, p): 30 for p in range(3)}, 30,
                       what="kcat's committed offsets")


def test_admin_list_describe_offsets_delete(broker):
    """confluent-kafka's AdminClient (and kafka-python's for OffsetDelete) see the groups:
    an active group is Stable with its member and assignment and cannot be deleted; once
    the member leaves it is Empty and can be; an admin commit (generation -1) works on an
    empty group only."""
    from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KpTopicPartition

    topic = "admin-groups"
    group = "admin-active"
    harness.create_topic(broker.bootstrap, topic, PARTITIONS)
    harness.produce(broker.bootstrap, topic, records("adm", 40))
    adm = harness.admin_client(broker.bootstrap)
    member = ConfluentMember(broker.bootstrap, group, topic, **{"client.id": "adm-client"})
    try:
        consume([member], 40, {}, what="records")
        listed = {g.group_id: g for g in adm.list_consumer_groups().result(30).valid}
        assert group in listed, listed
        assert listed[group].state == ConsumerGroupState.STABLE
        assert not listed[group].is_simple_consumer_group

        desc = adm.describe_consumer_groups([group])[group].result(30)
        assert desc.state == ConsumerGroupState.STABLE
        assert desc.partition_assignor in ("range", "roundrobin")
        assert len(desc.members) == 1
        assert desc.members[0].client_id == "adm-client"
        assigned = sorted(tp.partition for tp in desc.members[0].assignment.topic_partitions)
        assert assigned == list(range(PARTITIONS))

        offsets = group_offsets(broker.bootstrap, group)
        assert offsets == {(topic, p): 10 for p in range(PARTITIONS)}

        # An admin commit is refused while the group has a member.
        f = adm.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 3)])])[group]
        with pytest.raises(KafkaException):
            res = f.result(30)
            errs = [tp.error for tp in res.topic_partitions if tp.error is not None]
            if errs:
                raise KafkaException(errs[0])

        fs = adm.delete_consumer_groups([group], request_timeout=30)
        with pytest.raises(KafkaException, match="(?i)not empty|NON_EMPTY"):
            fs[group].result(30)
    finally:
        member.close()

    # Empty now: the admin may move the offsets (generation -1), delete some, then the group.
    res = adm.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 3)])])[group].result(30)
    assert all(tp.error is None for tp in res.topic_partitions), res.topic_partitions
    assert group_offsets(broker.bootstrap, group)[(topic, 0)] == 3
    kadm = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        deleted = kadm.delete_group_offsets(group, [KpTopicPartition(topic, 1), KpTopicPartition("no-such-topic", 0)])
        assert deleted[KpTopicPartition(topic, 1)].errno == 0, deleted
        assert deleted[KpTopicPartition("no-such-topic", 0)].errno == 3, deleted
        kp_groups = {g["group_id"] if isinstance(g, dict) else g[0] for g in kadm.list_groups()}
        assert group in kp_groups, kp_groups
    finally:
        kadm.close()
    offsets = group_offsets(broker.bootstrap, group)
    assert offsets.get((topic, 1), -1001) < 0, offsets

    desc = adm.describe_consumer_groups([group])[group].result(30)
    assert desc.state == ConsumerGroupState.EMPTY and not desc.members
    adm.delete_consumer_groups([group], request_timeout=30)[group].result(30)
    listed = {g.group_id for g in adm.list_consumer_groups().result(30).valid}
    assert group not in listed
    assert all(o < 0 for o in group_offsets(broker.bootstrap, group).values())
    with pytest.raises(KafkaException, match="(?i)GROUP_ID_NOT_FOUND|does not exist"):
        adm.delete_consumer_groups([group], request_timeout=30)[group].result(30)
    assert broker.metrics().sum("strata_groups") >= 0


def test_kafkajs_group_consumer(broker):
    """kafkajs consumes with a group, committing each record, and leaves; the committed
    offsets are the high watermarks."""
    node_modules = HERE / "node_modules" / "kafkajs"
    if not node_modules.is_dir():
        pytest.fail("kafkajs is not installed in tests/e2e/node_modules (tests/run.sh runs npm ci)", pytrace=False)
    topic = group = "kafkajs-group"
    harness.create_topic(broker.bootstrap, topic, 3)
    harness.produce(broker.bootstrap, topic, records("js", 60, partitions=3))
    r = subprocess.run(["node", str(HERE / "tools" / "kafkajs_group.js"), broker.bootstrap, group, topic, "60", "90000"],
                       capture_output=True, timeout=180, cwd=HERE, env=harness.clean_env())
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    got = json.loads(r.stdout.decode().strip().splitlines()[-1])["records"]
    assert sorted(v for _, _, v in got) == sorted(f"js-{i}" for i in range(60))
    assert len({(p, o) for p, o, _ in got}) == 60
    assert group_offsets(broker.bootstrap, group) == {(topic, p): 20 for p in range(3)}
