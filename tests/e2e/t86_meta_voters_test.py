"""t86 meta voters at run time (issue 5): `strata cluster meta [add|remove]` over the admin API.

- three meta+broker nodes (separate WAL nodes); a fourth node starts with `--roles meta` and a
  `--meta-peers` list without itself (it waits to be added); `strata cluster meta add 4@…`
  makes it a voter (4 voters in `strata cluster meta --output json`, on every member);
- an original voter that does not lead is removed (it logs that it no longer votes), then
  killed -9 anyway, then the meta leader is killed -9: with 3 voters of which 2 are alive,
  a topic is created with confluent-kafka's AdminClient and records are produced and read back;
- errors: removing an unknown id or adding a registered broker-only id or an address where
  nothing answers exit non-zero with a clear message; a bad ID@HOST:PORT is a usage error (2);
  a bad body names its field; the last voter of a single node cannot be removed; the gRPC
  RPCs (GetMeta, RemoveMetaVoter) answer as HTTP does.
"""

import json
import subprocess

import pytest

import harness
from cluster import Cluster, wait_leaders
from harness import Broker, Rec
from t94_admin_grpc_test import http, pb, rpc_error, stub  # noqa: F401 (pb is a fixture)


def cli(strata_bin: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([strata_bin, "cluster", "meta", *args], capture_output=True, text=True,
                          timeout=timeout, env=harness.clean_env())


def meta_json(strata_bin: str, b: Broker) -> dict:
    r = cli(strata_bin, "--admin", b.admin_url, "--output", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def meta_addr(b: Broker) -> str:
    return b.extra_args[b.extra_args.index("--meta-listen") + 1]


@pytest.fixture
def cluster(strata_bin, tmp_path):
    c = Cluster(strata_bin, tmp_path, brokers=3, wal_nodes=3, lease_ms=3000)
    joiner = None
    try:
        c.start()
        peers = c.brokers[0].extra_args[c.brokers[0].extra_args.index("--meta-peers") + 1]
        port = harness.free_port()
        joiner = Broker(strata_bin, tmp_path / "node4", object_store=c.object_store, node_id=4,
                        extra_args=["--roles", "meta", "--meta-listen", f"127.0.0.1:{port}",
                                    "--meta-peers", peers])
        joiner.start(wait=False)
        assert harness.wait_port(port, 60, joiner.proc), joiner.stderr_tail()
        yield c, joiner
    finally:
        if joiner is not None and joiner.alive():
            joiner.kill9()
        c.stop()
        print(c.logs())
        if joiner is not None:
            print(f"--- node 4 stderr ---\n{joiner.stderr_tail(40)}")


def test_add_a_voter_remove_one_and_lose_the_leader(strata_bin, cluster, tmp_path):
    c, joiner = cluster
    first = c.brokers[0]
    before = meta_json(strata_bin, first)
    assert sorted(before["voters"]) == [1, 2, 3] and before["learners"] == [], before
    assert before["leader"] in (1, 2, 3)
    assert {n["id"]: n["address"] for n in before["nodes"]} == {b.node_id: meta_addr(b) for b in c.brokers}

    # Node 4 joins: learner, caught up, voter. Asked through a node that may not lead.
    added = cli(strata_bin, "add", f"4@{meta_addr(joiner)}", "--admin", first.admin_url)
    assert added.returncode == 0, added.stderr
    assert "node 4" in added.stdout and "is a meta voter" in added.stdout, added.stdout
    # A meta-only node serves /health and /metrics (its backup counters, the process), and
    # nothing of a broker's API.
    status, body = joiner.get("/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}, body
    status, body = joiner.get("/metrics")
    text = body.decode()
    assert status == 200 and "\nstrata_meta_backup_index " in text and "\nprocess_open_fds " in text, text[-2000:]
    assert "strata_kafka_" not in text and "strata_wal_replica_" not in text, text[-2000:]
    assert joiner.get("/v1/topics")[0] == 404
    assert "4 meta voters tolerate 1 failure(s)" in added.stderr, added.stderr
    for b in c.brokers:
        def four(b=b):
            m = meta_json(strata_bin, b)
            return m if sorted(m["voters"]) == [1, 2, 3, 4] and not m["joint"] else None
        m = harness.eventually(four, 30, what=f"node {b.node_id} to see 4 voters")
    row = next(n for n in m["nodes"] if n["id"] == 4)
    assert row["role"] == "voter" and row["address"] == meta_addr(joiner) and row["broker"] is False
    # Adding it again at the same address changes nothing.
    again = cli(strata_bin, "add", f"4@{meta_addr(joiner)}", "--admin", c.brokers[1].admin_url)
    assert again.returncode == 0 and "already is a meta voter" in again.stdout, again.stdout + again.stderr
    table = cli(strata_bin, "--admin", first.admin_url)
    assert table.returncode == 0, table.stderr
    assert "ROLE" in table.stdout and meta_addr(joiner) in table.stdout, table.stdout

    # Remove an original voter that does not lead, through another node.
    leader = meta_json(strata_bin, first)["leader"]
    removed = next(b for b in c.brokers if b.node_id != leader)
    asked = next(b for b in c.brokers if b is not removed)
    r = cli(strata_bin, "remove", str(removed.node_id), "--admin", asked.admin_url, "--output", "json")
    assert r.returncode == 0, r.stderr
    change = json.loads(r.stdout)
    remaining = sorted({1, 2, 3, 4} - {removed.node_id})
    assert sorted(change["voters"]) == remaining and change["learners"] == [], change
    assert change["changed"] is True and change["address"] == meta_addr(removed)
    # The removed node heard it no longer votes.
    harness.eventually(lambda: "removed from the meta voters" in removed.stderr_tail(400), 30,
                       what="the removed node to log its removal")
    # It is a registered broker without the meta role now: it cannot be added back as is.
    refused = cli(strata_bin, "add", f"{removed.node_id}@127.0.0.1:{harness.free_port()}",
                  "--admin", asked.admin_url)
    assert refused.returncode == 1, refused.stdout
    assert "is a registered broker, not a meta member" in refused.stderr, refused.stderr
    removed.kill9()

    # Lose the meta leader too: 3 voters, 2 alive.
    live = [b for b in c.brokers if b.alive()]
    leader = meta_json(strata_bin, live[0])["leader"]
    assert leader in remaining
    victim = joiner if leader == 4 else c.broker(leader)
    victim.kill9()
    survivors = [b for b in c.brokers if b.alive()]
    assert survivors, "at least one broker stays up"

    def new_leader():
        m = meta_json(strata_bin, survivors[0])
        return m if m["leader"] not in (None, leader) and m["leader"] in remaining else None

    m = harness.eventually(new_leader, 60, what="a new meta leader among the remaining voters")
    assert sorted(m["voters"]) == remaining

    # Metadata writes still succeed at once: the Kafka controller a survivor names is the meta
    # leader or itself, never a dead broker metadata has not expired yet.
    bootstrap = ",".join(b.bootstrap for b in survivors)
    dead = {removed.node_id, victim.node_id} & {1, 2, 3}
    harness.create_topic(bootstrap, "t86", 2, timeout=60)

    def expired():
        status, cl = http(survivors[0], "GET", "/v1/cluster")
        return cl if status == 200 and not {b["id"] for b in cl["brokers"] if b["alive"]} & dead else None

    cl = harness.eventually(expired, 60, what="the dead brokers to be expired")
    assert sorted(cl["meta"]["voters"]) == remaining, cl
    wait_leaders(c, "t86", 2, exclude=dead, timeout=90)
    records = [Rec(partition=i % 2, key=f"k{i}".encode(), value=f"v{i}".encode()) for i in range(200)]
    acked = harness.produce(bootstrap, "t86", records, timeout=120)
    assert sorted(o for p, o in acked if p == 0) == list(range(100))
    got = harness.consume(bootstrap, "t86", 2, timeout=60)
    assert [r.value for r in got[0]] == [f"v{i}".encode() for i in range(0, 200, 2)]
    assert [r.value for r in got[1]] == [f"v{i}".encode() for i in range(1, 200, 2)]



def test_refusals_are_clear(strata_bin, cluster, pb):
    c, joiner = cluster
    b = c.brokers[0]
    r = cli(strata_bin, "remove", "99", "--admin", b.admin_url)
    assert r.returncode == 1, r.stdout
    assert "node 99 is not a meta voter" in r.stderr and "unknown_meta_voter" in r.stderr, r.stderr

    port = harness.free_port()
    r = cli(strata_bin, "add", f"5@127.0.0.1:{port}", "--admin", b.admin_url)
    assert r.returncode == 1, r.stdout
    assert f"no meta node answers at 127.0.0.1:{port}" in r.stderr, r.stderr

    r = cli(strata_bin, "add", "5", "--admin", b.admin_url)
    assert r.returncode == 2 and "ID@HOST:PORT" in r.stderr, r.stderr

    r = cli(strata_bin, "add", f"2@{meta_addr(joiner)}", "--admin", b.admin_url)
    assert r.returncode == 1 and "node 2 is already a meta voter" in r.stderr, r.stderr

    status, body = http(b, "POST", "/v1/meta/voters", {"node_id": 0, "address": meta_addr(joiner)})
    assert status == 400 and body["field"] == "node_id", body
    status, body = http(b, "POST", "/v1/meta/voters", {"node_id": 4, "address": "nowhere"})
    assert status == 400 and body["field"] == "address", body
    status, body = http(b, "DELETE", "/v1/meta/voters/x")
    assert status == 400, body

    admin_pb2, _, grpc = pb
    s = stub(pb, b)
    m = s.GetMeta(admin_pb2.GetMetaRequest(), timeout=20)
    assert sorted(m.voters) == [1, 2, 3] and len(m.nodes) == 3
    assert sorted(n.address for n in m.nodes) == sorted(meta_addr(x) for x in c.brokers)
    err = rpc_error(pb, s.RemoveMetaVoter, admin_pb2.RemoveMetaVoterRequest(node_id=99))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "not a meta voter" in err.details()

    # Nothing changed; node 4 is still waiting outside the group.
    assert sorted(meta_json(strata_bin, b)["voters"]) == [1, 2, 3]


def test_the_last_voter_stays(strata_bin, tmp_path):
    b = Broker(strata_bin, tmp_path / "single", object_store=f"fs://{tmp_path / 'objects'}")
    try:
        b.start()
        r = cli(strata_bin, "remove", "1", "--admin", b.admin_url)
        assert r.returncode == 1, r.stdout
        assert "only meta voter" in r.stderr and "last_voter" in r.stderr, r.stderr
    finally:
        b.stop()
