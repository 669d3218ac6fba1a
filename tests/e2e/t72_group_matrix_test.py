"""t72 the client-matrix holes of kcat, confluent-kafka and kafka-python (issue 6), in the shape
of the Rust cell (t63):

- a consumer group of three members on six partitions, for each of the three clients, every
  member in its own process: two split the partitions, a third joins and gets a share, one is
  killed with SIGKILL and the two survivors take its partitions; every record produced along
  the way (also while the third joins and right after the kill) is read exactly once;
- kcat -G commits, the broker is killed (-9) and restarted on the same data dir, and a new
  member of the group resumes from the committed offsets (confluent-kafka and kafka-python:
  t70's `test_commit_then_resume[...-after-kill9]`);
- kcat (`-X enable.idempotence=true`, records on stdin) and kafka-python
  (`enable_idempotence=True`) produce across a broker kill -9 and restart: every acknowledged
  record is in the log exactly once, in the order sent;
- kcat and kafka-python over SASL/SCRAM on TLS: a wrong password is refused with an
  authentication error, the right one works.

Timing: every wait is a bounded poll; nothing asserts how long a rebalance took. Members use
the smallest session timeout Kafka allows (6 s), as in t70."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

import harness
from harness import Rec
from t28_kafka_security_test import ADMIN_PW, ALICE_PW, _sasl, secure  # noqa: F401 - `secure` is a fixture
from t70_consumer_groups_test import SESSION_MS, KafkaPythonMember, consume, group_offsets, poll_idle, values

HERE = Path(__file__).resolve().parent
MEMBER_TOOL = HERE / "tools" / "group_member.py"

pytestmark = pytest.mark.timeout(240)


# --------------------------------------------------------------------------------------
# a group member in its own process: t70's member classes through tools/group_member.py,
# or kcat's balanced consumer


def kcat_member_cmd(bootstrap: str, group: str, topic: str, name: str) -> list[str]:
    return [harness.kcat_bin(), "-b", bootstrap, "-G", group, "-u",
            "-X", f"session.timeout.ms={SESSION_MS}", "-X", "heartbeat.interval.ms=500",
            "-X", "auto.offset.reset=earliest", "-X", "auto.commit.interval.ms=100", "-X", f"client.id={name}",
            "-f", r"%p %o %s\n", topic]


# kcat's rebalance callback (stderr, verbosity 1):
# "% Group G rebalanced (memberid M): assigned: topic [0], topic [3]" (or "revoked: ...")
KCAT_REBALANCE = re.compile(r"rebalanced \(memberid [^)]*\): (assigned|revoked): ?(.*)$")


class ProcMember:
    """One group member process. Its stdout (and kcat's stderr) is read on threads into
    events: ("assign", {P}), ("revoke", {P}), ("record", P, O, VALUE), ("commit_error", TEXT)."""

    def __init__(self, client: str, bootstrap: str, group: str, topic: str, name: str):
        self.client, self.name = client, name
        if client == "kcat":
            cmd = kcat_member_cmd(bootstrap, group, topic, name)
        else:
            cmd = [harness.python(), str(MEMBER_TOOL), client, bootstrap, group, topic]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=harness.clean_env())
        self.events: list[tuple] = []
        self.stderr_lines: list[str] = []
        self.lock = threading.Lock()
        self.readers = [threading.Thread(target=self._read_stdout, daemon=True),
                        threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self.readers:
            t.start()

    def _add(self, event: tuple):
        with self.lock:
            self.events.append(event)

    def _read_stdout(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if not line:
                continue
            if self.client == "kcat":
                p, o, v = line.split(" ", 2)
                self._add(("record", int(p), int(o), v))
                continue
            e = json.loads(line)
            if "assigned" in e:
                self._add(("assign", set(e["assigned"])))
            elif "p" in e:
                self._add(("record", e["p"], e["o"], e["v"]))
            elif "commit_error" in e:
                self._add(("commit_error", e["commit_error"]))

    def _read_stderr(self):
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            with self.lock:
                self.stderr_lines.append(line)
            m = KCAT_REBALANCE.search(line) if self.client == "kcat" else None
            if m:
                parts = {int(p) for p in re.findall(r"\[(\d+)\]", m.group(2))}
                self._add(("assign" if m.group(1) == "assigned" else "revoke", parts))

    def assigned(self) -> set[int]:
        """The partitions it holds now (eager protocol: revoke all, then assign)."""
        held: set[int] = set()
        with self.lock:
            for e in self.events:
                if e[0] == "assign":
                    held = set(e[1])
                elif e[0] == "revoke":
                    held -= e[1]
        return held

    def records(self) -> list[tuple[int, int, str]]:
        with self.lock:
            return [e[1:] for e in self.events if e[0] == "record"]

    def commit_errors(self) -> list[str]:
        with self.lock:
            return [e[1] for e in self.events if e[0] == "commit_error"]

    def check_running(self):
        assert self.proc.poll() is None, (f"member {self.name} ({self.client}) exited with {self.proc.returncode}:\n"
                                          + "\n".join(self.stderr_lines[-30:]))

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        for t in self.readers:
            t.join(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for t in self.readers:
            t.join(10)


def wait_split(members: list[ProcMember], partitions: int, timeout: float = 90) -> list[set[int]]:
    """Until every member holds some partitions, disjoint, covering all of them; returns the split."""
    def split():
        for m in members:
            m.check_running()
        held = [m.assigned() for m in members]
        every = sorted(p for h in held for p in h)
        return held if all(held) and every == list(range(partitions)) else None

    try:
        return harness.eventually(split, timeout, interval=0.2,
                                  what=f"{len(members)} members to split {partitions} partitions")
    except AssertionError as e:
        raise AssertionError(f"{e}; assignments now {[sorted(m.assigned()) for m in members]}") from None


def wait_read(members: list[ProcMember], want: set[str], timeout: float = 90):
    """Until every value in `want` has been read by some member (dead ones included)."""
    def done():
        for m in members:
            if m.proc.returncode is None:
                m.check_running()
        got = {v for m in members for _, _, v in m.records()}
        return want <= got

    try:
        harness.eventually(done, timeout, interval=0.2, what="every produced record to be read")
    except AssertionError as e:
        got = {v for m in members for _, _, v in m.records()}
        missing = sorted(want - got)
        raise AssertionError(f"{e}: {len(missing)} of {len(want)} unread, e.g. {missing[:5]}; "
                             f"assignments {[sorted(m.assigned()) for m in members]}") from None


def wait_committed(bootstrap: str, group: str, topic: str, partitions: int, timeout: float = 60):
    """Until the group's committed offsets are the end offsets of every partition."""
    def ok():
        ends = {(topic, p): hi for p, (_, hi) in harness.watermarks(bootstrap, topic, partitions).items()}
        return group_offsets(bootstrap, group) == ends

    harness.eventually(ok, timeout, interval=0.3, what=f"group {group} to commit every partition's end offset")


@pytest.mark.parametrize("client", ["confluent", "kafka-python", "kcat"])
def test_group_of_three_join_and_kill(broker, client):
    """Two members split six partitions; a third joins and all three own disjoint shares
    covering the six; one is killed with SIGKILL (no LeaveGroup) and after its session timeout
    the two survivors own all six. Records are produced in every phase — also while the third
    joins and right after the kill — and each is read exactly once, in a stable phase by the
    member that owns its partition."""
    parts = 6
    topic = group = f"g3-{client}"
    bs = broker.bootstrap
    harness.create_topic(bs, topic, parts)
    produced: dict[str, int] = {}  # value -> partition

    def batch(tag: str, n: int = 60) -> set[str]:
        recs = [Rec(i % parts, None, b"%s-%d" % (tag.encode(), i)) for i in range(n)]
        harness.produce(bs, topic, recs)
        vals = {r.value.decode(): r.partition for r in recs}
        produced.update(vals)
        return set(vals)

    def check_owners(members: list[ProcMember], split: list[set[int]], tag_values: set[str]):
        for m, held in zip(members, split):
            for p, _, v in m.records():
                if v in tag_values:
                    assert p in held, f"{m.name} read {v} of partition {p}, but held {sorted(held)}"

    members = [ProcMember(client, bs, group, topic, f"m{i}") for i in range(2)]
    everyone = list(members)
    try:
        two = wait_split(members, parts)
        vals = batch("two")
        wait_read(everyone, vals)
        check_owners(members, two, vals)

        third = ProcMember(client, bs, group, topic, "m2")
        members.append(third)
        everyone.append(third)
        batch("joining")  # produced while the third member joins
        three = wait_split(members, parts)
        print(f"{client}: two members {two}, three members {three}")
        wait_read(everyone, set(produced))
        vals = batch("three")
        wait_read(everyone, vals)
        check_owners(members, three, vals)
        # Everything read so far is committed: the victim leaves nothing to read again.
        wait_committed(bs, group, topic, parts)

        victim = members.pop(0)
        victim.kill9()
        batch("after-kill")  # partly on the dead member's partitions, read once they move
        survivors = wait_split(members, parts, timeout=SESSION_MS / 1000 + 90)
        print(f"{client}: after killing {victim.name} (held {sorted(three[0])}): {survivors}")
        assert set().union(*survivors) >= three[0]
        wait_read(everyone, set(produced))
        vals = batch("survivors")
        wait_read(everyone, vals)
        check_owners(members, survivors, vals)

        reads = Counter(v for m in everyone for _, _, v in m.records())
        errors = {m.name: m.commit_errors() for m in everyone if m.commit_errors()}
        assert set(reads) == set(produced), f"read values that were never produced: {set(reads) - set(produced)}"
        twice = {v: c for v, c in reads.items() if c > 1}
        assert not twice, f"{len(twice)} records read more than once, e.g. {list(twice.items())[:5]}; " \
                          f"commit errors: {errors}"
        # Each value was read from the partition it was produced to, at a distinct offset.
        where = {(p, o): v for m in everyone for p, o, v in m.records()}
        assert len(where) == len(produced)
        assert all(produced[v] == p for (p, _), v in where.items())
        wait_committed(bs, group, topic, parts)
    finally:
        for m in everyone:
            if m.proc.poll() is None:
                m.stop()


# --------------------------------------------------------------------------------------
# commit, broker kill -9 + restart, resume


def kcat_group_read(bootstrap: str, group: str, topic: str, extra: list[str]) -> list[tuple[int, int, str]]:
    r = harness.kcat(["-b", bootstrap, "-G", group, "-X", "auto.offset.reset=earliest",
                      "-X", f"session.timeout.ms={SESSION_MS}", "-f", r"%p %o %s\n", *extra, topic], timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    out = []
    for line in r.stdout.decode().splitlines():
        p, o, v = line.split(" ", 2)
        out.append((int(p), int(o), v))
    return out


def test_kcat_commit_then_resume_after_broker_kill(broker, kcat_ok):
    """kcat -G reads 40 of 100 records and commits them (on close); the broker is killed (-9)
    and restarted on the same data dir; a new kcat -G in the group resumes at the committed
    offsets: nothing read before comes again, nothing is missing, new records included."""
    parts = 3
    topic = group = "kcat-resume"
    bs = broker.bootstrap
    harness.create_topic(bs, topic, parts)
    old = [Rec(i % parts, None, b"old-%d" % i) for i in range(100)]
    harness.produce(bs, topic, old)

    first = kcat_group_read(bs, group, topic, ["-c", "40"])
    assert len(first) == 40
    read_to = {p: 0 for p in range(parts)}
    for p, o, _ in first:
        assert o == read_to[p], f"partition {p}: read offset {o}, expected {read_to[p]} (in order, no gap)"
        read_to[p] = o + 1
    # A partition it read nothing of has no committed offset (and starts from the beginning).
    committed = {k: o for k, o in group_offsets(bs, group).items() if o >= 0}
    assert committed == {(topic, p): read_to[p] for p in range(parts) if read_to[p]}, (committed, read_to)

    broker.kill9()
    broker.start()
    assert {k: o for k, o in group_offsets(bs, group).items() if o >= 0} == committed, \
        "committed offsets changed across the restart"
    new = [Rec(i % parts, None, b"new-%d" % i) for i in range(30)]
    harness.produce(bs, topic, new)

    second = kcat_group_read(bs, group, topic, ["-e"])
    firsts = {(p, o) for p, o, _ in first}
    again = [(p, o) for p, o, _ in second if (p, o) in firsts]
    assert not again, f"read again after the restart: {again[:5]}"
    for p in range(parts):
        offs = [o for q, o, _ in second if q == p]
        assert offs == list(range(read_to[p], read_to[p] + len(offs))), f"partition {p}: offsets {offs[:5]}..."
    all_values = sorted(v for _, _, v in first + second)
    assert all_values == sorted(r.value.decode() for r in old + new), "a record is missing or read twice"
    ends = {(topic, p): hi for p, (_, hi) in harness.watermarks(bs, topic, parts).items()}
    harness.eventually(lambda: group_offsets(bs, group) == ends, 30, what="kcat's commit of the end offsets")


# --------------------------------------------------------------------------------------
# idempotent producers across a broker kill -9


def consume_all(bootstrap: str, topic: str, partitions: int) -> dict[int, list[Rec]]:
    parts = harness.consume(bootstrap, topic, partitions, timeout=90)
    harness.assert_dense(parts)
    return parts


def check_exact(parts: dict[int, list[Rec]], sent: list[bytes], acked: set[tuple[int, int]]):
    """Every sent value is in the log exactly once, each partition in the order sent, and the
    acknowledged (partition, offset) pairs are exactly where the records are."""
    order = {v: i for i, v in enumerate(sent)}
    got = [r.value for recs in parts.values() for r in recs]
    dup = [v for v, c in Counter(got).items() if c > 1]
    assert not dup, f"{len(dup)} values written more than once, e.g. {dup[:5]}"
    assert sorted(got) == sorted(sent), f"{len(got)} records in the log for {len(sent)} sent; " \
                                        f"missing e.g. {sorted(set(sent) - set(got))[:5]}"
    for p, recs in parts.items():
        idx = [order[r.value] for r in recs]
        assert idx == sorted(idx), f"partition {p}: records out of the order sent"
    assert acked == {(p, r.offset) for p, recs in parts.items() for r in recs}, \
        "delivery reports do not name the offsets the records are at"


def test_kcat_idempotent_producer_across_broker_kill(broker, kcat_ok):
    """kcat -P with enable.idempotence=true and acks=all, fed on stdin: a third of the records
    is acknowledged, the broker is killed (-9), a third is fed while it is down, it restarts on
    the same data dir and the rest follows. kcat exits 0 with one delivery report per record
    (`-v -v` prints them), and the log holds each record exactly once, in order, at the offsets
    the reports name."""
    parts, n = 3, 3000
    topic = "kcat-idem"
    bs = broker.bootstrap
    harness.create_topic(bs, topic, parts)
    sent = [b"%06d|kcat-idem" % i for i in range(n)]
    lines = [b"k%d:%s\n" % (i, v) for i, v in enumerate(sent)]
    # -E: do not exit on the transport errors of the kill; -v -v: a delivery report per record.
    cmd = [harness.kcat_bin(), "-P", "-E", "-v", "-v", "-b", bs, "-t", topic, "-K", ":",
           "-X", "enable.idempotence=true", "-X", "acks=all", "-X", "linger.ms=5", "-X", "batch.num.messages=20",
           "-X", "message.timeout.ms=120000", "-X", "reconnect.backoff.ms=50", "-X", "reconnect.backoff.max.ms=500"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=harness.clean_env())
    err_lines: list[bytes] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    reader.start()
    delivered = re.compile(rb"Message delivered to partition (\d+) \(offset (\d+)\)")

    def reports() -> list[tuple[int, int]]:
        return [(int(m.group(1)), int(m.group(2))) for m in map(delivered.search, list(err_lines)) if m]

    try:
        proc.stdin.write(b"".join(lines[: n // 3]))
        proc.stdin.flush()
        # kcat prints delivery reports only between reads of stdin, and keeps up to about 1 KiB
        # of input back until more comes: count on the broker's side, most of the first third.
        harness.eventually(lambda: broker.metrics().sum("strata_produce_records_total") >= n // 4, 60,
                           what="most of the first third written")
        broker.kill9()
        proc.stdin.write(b"".join(lines[n // 3: 2 * n // 3]))
        proc.stdin.flush()
        broker.start()
        proc.stdin.write(b"".join(lines[2 * n // 3:]))
        proc.stdin.close()
        proc.wait(180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    reader.join(10)
    stderr = b"".join(err_lines).decode(errors="replace")
    assert proc.returncode == 0, f"kcat exit {proc.returncode}:\n{stderr[-3000:]}"
    acks = reports()
    assert len(acks) == n, f"{len(acks)} delivery reports for {n} records:\n{stderr[-2000:]}"
    assert len(set(acks)) == n, "two records reported at the same partition and offset"
    parts_got = consume_all(bs, topic, parts)
    check_exact(parts_got, sent, set(acks))
    print(f"kcat: {sum(1 for line in err_lines if b'ERROR' in line)} error lines while the broker was down; "
          f"duplicate batches answered after the restart: "
          f"{broker.metrics().sum('strata_produce_duplicate_batches_total'):.0f}")
    # The key decides the partition: a record never moved partitions on a retry.
    for p, recs in parts_got.items():
        assert len({r.key for r in recs}) == len(recs)


def test_kafka_python_idempotent_producer_across_broker_kill(broker):
    """kafka-python 3.0.12 with enable_idempotence=True (acks=all): the broker is killed while
    the first third is being written, a third is sent while it is down and the rest after it
    restarts; every send's future succeeds and the log holds each record exactly once at the
    offset its future named, in order."""
    from kafka import KafkaProducer

    parts, n = 3, 3000
    topic = "kp-idem"
    bs = broker.bootstrap
    harness.create_topic(bs, topic, parts)
    sent = [b"%06d|kp-idem" % i for i in range(n)]
    # Small batches: many requests, so the kill finds some in flight.
    prod = KafkaProducer(bootstrap_servers=bs, enable_idempotence=True, acks="all", linger_ms=5, batch_size=512,
                         reconnect_backoff_ms=50, reconnect_backoff_max_ms=500, retry_backoff_ms=100,
                         request_timeout_ms=10000, delivery_timeout_ms=120000)
    futures = []
    try:
        futures += [prod.send(topic, value=v, partition=i % parts) for i, v in enumerate(sent[: n // 3])]
        # Killed while the first third is partly written: some requests are in flight.
        harness.eventually(lambda: broker.metrics().sum("strata_produce_records_total") >= n // 6, 60,
                           what="half of the first third written")
        broker.kill9()
        futures += [prod.send(topic, value=v, partition=(n // 3 + i) % parts)
                    for i, v in enumerate(sent[n // 3: 2 * n // 3])]
        broker.start()
        futures += [prod.send(topic, value=v, partition=(2 * n // 3 + i) % parts)
                    for i, v in enumerate(sent[2 * n // 3:])]
        prod.flush(150)
    finally:
        prod.close(timeout=10)
    failed = [(i, f.exception) for i, f in enumerate(futures) if not f.succeeded()]
    assert not failed, f"{len(failed)} sends failed, e.g. {failed[:3]}"
    metas = [f.value for f in futures]
    assert all(m.partition == i % parts for i, m in enumerate(metas))
    acked = {(m.partition, m.offset) for m in metas}
    assert len(acked) == n, "two records acknowledged at the same partition and offset"
    check_exact(consume_all(bs, topic, parts), sent, acked)
    print(f"kafka-python: duplicate batches answered after the restart: "
          f"{broker.metrics().sum('strata_produce_duplicate_batches_total'):.0f}")


# --------------------------------------------------------------------------------------
# SASL/SCRAM over TLS: wrong password refused, right one works


def kcat_sasl(boot: str, ca, mech: str, user: str, password: str) -> list[str]:
    return [harness.kcat_bin(), "-b", boot, "-X", "security.protocol=SASL_SSL", "-X", f"ssl.ca.location={ca}",
            "-X", f"sasl.mechanisms={mech}", "-X", f"sasl.username={user}", "-X", f"sasl.password={password}"]


def test_kcat_scram_over_tls_wrong_password_refused(secure):
    b, ca = secure
    boot = b.bootstrap
    failures = b.metrics().sum("strata_kafka_auth_failures_total")
    bad = kcat_sasl(boot, ca, "SCRAM-SHA-512", "admin", ADMIN_PW + "-wrong")
    r = subprocess.run(bad + ["-P", "-t", "kc-sec", "-p", "0", "-X", "message.timeout.ms=8000"],
                       input=b"must-not-land\n", capture_output=True, timeout=60)
    err = r.stderr.decode(errors="replace")
    assert r.returncode != 0, f"kcat with a wrong password exited 0:\n{err[-2000:]}"
    assert re.search(r"(?i)authentication", err), err[-2000:]
    r = subprocess.run(bad + ["-L", "-t", "kc-sec"], capture_output=True, timeout=60)
    err = r.stderr.decode(errors="replace")
    assert r.returncode != 0 and re.search(r"(?i)authentication", err), (r.returncode, err[-2000:])
    assert b.metrics().sum("strata_kafka_auth_failures_total") >= failures + 2

    good = kcat_sasl(boot, ca, "SCRAM-SHA-512", "admin", ADMIN_PW)
    r = subprocess.run(good + ["-P", "-t", "kc-sec", "-p", "0"], input=b"one\ntwo\n", capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    r = subprocess.run(good + ["-C", "-t", "kc-sec", "-p", "0", "-o", "beginning", "-e", "-q"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    # Nothing of the refused producer landed.
    assert r.stdout.splitlines() == [b"one", b"two"], r.stdout


def test_kafka_python_scram_over_tls_wrong_password_refused(secure, caplog):
    """kafka-python over SASL_SSL with SCRAM-SHA-256 (t28 covers SHA-512): the right password
    produces and consumes; a wrong one is refused, and what kafka-python reports names the
    authentication failure (the broker's SASL_AUTHENTICATION_FAILED and its message)."""
    import logging

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.errors import KafkaError

    b, ca = secure
    boot = b.bootstrap

    def conf(password: str) -> dict:
        return dict(bootstrap_servers=boot, security_protocol="SASL_SSL", ssl_cafile=str(ca),
                    sasl_mechanism="SCRAM-SHA-256", sasl_plain_username="alice", sasl_plain_password=password,
                    request_timeout_ms=10000)

    p = KafkaProducer(**conf(ALICE_PW))
    try:
        meta = p.send("kp-sec", b"over-scram-256", partition=0).get(timeout=30)
    finally:
        p.close(timeout=10)
    assert (meta.partition, meta.offset) == (0, 0)
    c = KafkaConsumer(**conf(ALICE_PW), auto_offset_reset="earliest", consumer_timeout_ms=5000)
    try:
        c.assign([TopicPartition("kp-sec", 0)])
        got = [(m.offset, m.value) for m in c]
    finally:
        c.close()
    assert got == [(0, b"over-scram-256")]

    failures = b.metrics().sum("strata_kafka_auth_failures_total")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kafka"):
        with pytest.raises(KafkaError) as ei:
            p = KafkaProducer(**conf(ALICE_PW + "-wrong"), bootstrap_timeout_ms=6000, max_block_ms=6000)
            try:
                p.send("kp-sec", b"must-not-land", partition=0).get(timeout=20)
            finally:
                p.close(timeout=5)
    assert b.metrics().sum("strata_kafka_auth_failures_total") >= failures + 1
    # kafka-python retries its bootstrap until bootstrap_timeout_ms and then raises a timeout;
    # it logs why each attempt failed: every one must be the broker's authentication error.
    attempts = [r.getMessage() for r in caplog.records if "Bootstrap connection to" in r.getMessage()]
    assert attempts, f"{type(ei.value).__name__}: {ei.value}; no failed bootstrap attempt logged"
    other = [m for m in attempts if "SaslAuthenticationFailedError" not in m or "Authentication failed" not in m]
    assert not other, f"{len(other)} of {len(attempts)} refused attempts not reported as an authentication " \
                      f"error, e.g. {other[:2]}"
    c = KafkaConsumer(**conf(ALICE_PW))
    try:
        assert c.end_offsets([TopicPartition("kp-sec", 0)]) == {TopicPartition("kp-sec", 0): 1}, "something landed"
    finally:
        c.close()
