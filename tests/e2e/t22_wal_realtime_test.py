"""t22 `wal.realtime_priority`: the threads that write, fdatasync and commit WAL entries
(the sequencer, the quorum committer, a replica's stream threads) run under SCHED_FIFO at
the configured priority and nothing else of the broker does. Where the process may not
raise priorities, the broker warns once, keeps normal scheduling and loses nothing.

The policy and priority of every thread are read from /proc/<pid>/task/*/stat."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import harness
from cluster import Cluster
from harness import Rec

SCHED_OTHER, SCHED_FIFO = 0, 1
# Thread names as /proc shows them (at most 15 characters).
SEQUENCER, COMMITTER, STREAM = "strata-sequence", "strata-wal-comm", "wal-stream-"
REFUSED = "wal.realtime_priority: the WAL threads keep their normal priority"


def threads(pid: int) -> list[tuple[str, int, int]]:
    """(name, policy, rt_priority) of each thread of `pid`."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread exited meanwhile
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
        out.append((name, int(fields[41 - 3]), int(fields[40 - 3])))
    return out


def wal_thread(name: str) -> bool:
    return name in (SEQUENCER, COMMITTER) or name.startswith(STREAM)


def may_raise_priority() -> bool:
    chrt = shutil.which("chrt")
    return chrt is not None and subprocess.run([chrt, "-f", "1", "true"], capture_output=True).returncode == 0


def round_trip(bootstrap: str, topic: str, n: int = 2000):
    """Every record produced with acks=all is read back, in order, byte for byte."""
    harness.create_topic(bootstrap, topic, 2)
    recs = [Rec(i % 2, f"k{i}".encode(), f"v{i}".encode() * 20) for i in range(n)]
    delivered = harness.produce(bootstrap, topic, recs, flush_every=250)
    harness.assert_matches(recs, delivered, harness.consume(bootstrap, topic, 2))


def assert_priorities(pid: int, expected_wal_threads: set[str], priority: int):
    seen = threads(pid)
    wal = [t for t in seen if wal_thread(t[0])]
    names = {n if not n.startswith(STREAM) else STREAM for n, _, _ in wal}
    assert names == expected_wal_threads, f"WAL threads found: {wal}"
    assert all((policy, prio) == (SCHED_FIFO, priority) for _, policy, prio in wal), wal
    others = [t for t in seen if not wal_thread(t[0])]
    assert others and all(policy == SCHED_OTHER for _, policy, _ in others), [t for t in others if t[1] != SCHED_OTHER]


@pytest.mark.skipif(not may_raise_priority(), reason="this process may not use SCHED_FIFO (no CAP_SYS_NICE)")
def test_single_node_sequencer_runs_realtime(broker_factory):
    b = broker_factory(config={"wal": {"realtime_priority": 7}})
    round_trip(b.bootstrap, "rt-single")
    # The single-node WAL is written and fdatasynced by the sequencer itself.
    assert_priorities(b.pid, {SEQUENCER}, 7)
    assert "WAL threads run under SCHED_FIFO" in b.stderr_tail(200)
    assert REFUSED not in b.stderr_tail(200)


@pytest.mark.timeout(300)
@pytest.mark.skipif(not may_raise_priority(), reason="this process may not use SCHED_FIFO (no CAP_SYS_NICE)")
def test_replicated_wal_threads_run_realtime(strata_bin, tmp_path):
    """One node with all three roles writing its stream through its own replica server:
    sequencer, committer and the replica's stream thread all run at the priority."""
    c = Cluster(strata_bin, tmp_path, brokers=1, combined=True,
                env={"STRATA_WAL_REALTIME_PRIORITY": "9"})
    try:
        c.start()
        round_trip(c.bootstrap, "rt-cluster")
        assert_priorities(c.brokers[0].pid, {SEQUENCER, COMMITTER, STREAM}, 9)
    finally:
        c.stop()
        print(c.logs())


@pytest.mark.timeout(300)
@pytest.mark.skipif(not (shutil.which("setpriv") and shutil.which("prlimit")), reason="needs util-linux")
def test_refused_priority_warns_once_and_loses_nothing(strata_bin, tmp_path):
    """Without CAP_SYS_NICE and with RLIMIT_RTPRIO 0, each of the three WAL threads is
    refused: one warning names the key, every thread keeps normal scheduling, and every
    acknowledged record is read back."""
    c = Cluster(strata_bin, tmp_path, brokers=1, combined=True,
                env={"STRATA_WAL_REALTIME_PRIORITY": "9"})
    b = c.brokers[0]
    command = b.command
    # setpriv and prlimit exec the broker, so the PID is still the broker's own.
    b.command = lambda: ["setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice", "--",
                         "prlimit", "--rtprio=0", "--"] + command()
    try:
        c.start()
        round_trip(c.bootstrap, "rt-refused")
        seen = threads(b.pid)
        wal = [t for t in seen if wal_thread(t[0])]
        assert {n for n, _, _ in wal} >= {SEQUENCER, COMMITTER}, seen
        assert all(policy == SCHED_OTHER for _, policy, _ in seen), seen
        log = b.stderr_path.read_text(errors="replace")
        assert log.count(REFUSED) == 1, harness.tail(b.stderr_path, 40)
        assert "WAL threads run under SCHED_FIFO" not in log
    finally:
        c.stop()
        print(c.logs())


# What the deployment advice in docs/operations.md rests on: the image runs as uid 10001, and
# an unprivileged process may use SCHED_FIFO through RLIMIT_RTPRIO (`docker run --ulimit
# rtprio=N`, systemd's `LimitRTPRIO=N`) or an ambient CAP_SYS_NICE (systemd's
# `AmbientCapabilities=`), but not through a capability that is only in its bounding set
# (`docker run --cap-add SYS_NICE`, a pod's `capabilities.add`): a non-root exec drops it.
UNPRIVILEGED = {
    "rtprio rlimit": (["prlimit", "--rtprio=7", "--"], [], True),
    "ambient capability": ([], ["--inh-caps=+sys_nice", "--ambient-caps=+sys_nice"], True),
    "bounding capability only": ([], [], False),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", list(UNPRIVILEGED))
@pytest.mark.skipif(not (shutil.which("setpriv") and shutil.which("prlimit") and os.geteuid() == 0
                         and may_raise_priority()), reason="needs root, util-linux and SCHED_FIFO")
def test_unprivileged_user_gets_realtime_only_as_documented(strata_bin, how):
    before, setpriv_args, realtime = UNPRIVILEGED[how]
    if before and subprocess.run(before + ["true"], capture_output=True).returncode != 0:
        pytest.skip("raising RLIMIT_RTPRIO needs CAP_SYS_RESOURCE, which this process lacks")
    # Somewhere uid 10001 can reach (pytest's tmp dirs are private to root), with its own
    # copy of the binary.
    work = Path(tempfile.mkdtemp(prefix="strata-t22-", dir="/tmp"))
    try:
        os.chmod(work, 0o755)
        binary = work / "strata"
        shutil.copy2(strata_bin, binary)
        b = harness.Broker(str(binary), work / "node", config={"wal": {"realtime_priority": 7}})
        for path in [b.workdir, *b.workdir.rglob("*")]:
            os.chown(path, 10001, 10001)
        command = b.command
        b.command = lambda: before + ["setpriv", "--reuid=10001", "--regid=10001", "--clear-groups",
                                      *setpriv_args, "--"] + command()
        b.start()
        try:
            round_trip(b.bootstrap, "rt-unprivileged", n=200)
            seen = threads(b.pid)
            sequencer = [t for t in seen if t[0] == SEQUENCER]
            assert sequencer, seen
            log = b.stderr_path.read_text(errors="replace")
            if realtime:
                assert all((policy, prio) == (SCHED_FIFO, 7) for _, policy, prio in sequencer), sequencer
                assert REFUSED not in log
            else:
                assert all(policy == SCHED_OTHER for _, policy, _ in seen), seen
                assert log.count(REFUSED) == 1, harness.tail(b.stderr_path, 40)
        finally:
            b.stop(timeout=30, check=False)
            if b.alive():
                b.kill9()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_out_of_range_priority_is_a_config_error(broker_factory):
    b = broker_factory(start=False, config={"wal": {"realtime_priority": 100}})
    with pytest.raises(harness.BrokerDied):
        b.start(timeout=30)
    assert "wal.realtime_priority" in b.stderr_tail(20)
