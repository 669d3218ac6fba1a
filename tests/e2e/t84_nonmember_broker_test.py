"""t84 brokers that are not metadata members (issue 5: elastic brokers).

Three nodes run meta + wal + broker (the meta voters and the WAL replicas). A fourth
process runs only the `broker` role with `--meta-peers` naming the three: it is no raft
member, it follows metadata through a `MetaMirror` (the `Meta.Follow` stream) and writes
through the leader. It must:

- register, appear in Metadata and get its share of a topic's partitions (rebalance on
  join, as t82's joining broker does);
- serve a confluent-kafka producer and consumer bootstrapped only through it;
- keep serving after kill -9 of the meta leader: it follows another member, its heartbeats
  go to the new leader (it is not expired), and it sees the dead broker's partitions move.

Bad input: a broker role without the meta role and without meta.peers is refused at start
with exit code 2 and a message naming meta.peers.
"""

from __future__ import annotations

import json
import subprocess

import pytest

import harness
from cluster import Cluster, wait_leaders

PARTITIONS = 12
LEASE_MS = 3000


def led_by(bootstrap: str, topic: str) -> dict[int, int]:
    """node id -> partitions it leads, as Metadata through `bootstrap` says."""
    md = harness.admin_client(bootstrap).list_topics(topic=topic, timeout=10)
    out: dict[int, int] = {}
    for p in md.topics[topic].partitions.values():
        out[p.leader] = out.get(p.leader, 0) + 1
    return out


def arg(b: harness.Broker, flag: str) -> str:
    return b.extra_args[b.extra_args.index(flag) + 1]


def cluster_view(b: harness.Broker) -> dict:
    status, body = b.get("/v1/cluster")
    assert status == 200, (status, body)
    return json.loads(body)


def produce_and_read(bootstrap: str, topic: str, partitions: list[int], tag: str):
    """Produces 50 records to each partition through `bootstrap` and reads them back."""
    before = harness.watermarks(bootstrap, topic, PARTITIONS)
    recs = [harness.Rec(partition=p, value=f"{tag}-{p}-{i}".encode(), key=None)
            for p in partitions for i in range(50)]
    acked = harness.produce(bootstrap, topic, recs, timeout=120)
    assert all(part == r.partition for (part, _), r in zip(acked, recs)), acked[:5]
    got = harness.consume(bootstrap, topic, partitions, start=None, timeout=120)
    for p in partitions:
        mine = [r.value for r in got[p][before[p][1]:]]
        assert mine == [f"{tag}-{p}-{i}".encode() for i in range(50)], (p, mine[:3])


@pytest.mark.timeout(600)
def test_a_broker_outside_the_meta_group_serves_and_survives_a_meta_leader_kill(strata_bin, tmp_path):
    c = Cluster(strata_bin, tmp_path, brokers=3, combined=True, lease_ms=LEASE_MS)
    first = c.brokers[0]
    elastic = harness.Broker(
        strata_bin, tmp_path / "node4", object_store=c.object_store, node_id=4,
        env={"STRATA_META_BROKER_LEASE_MS": str(LEASE_MS),
             "STRATA_META_HEARTBEAT_INTERVAL_MS": str(LEASE_MS // 6)},
        extra_args=["--roles", "broker",
                    "--meta-peers", arg(first, "--meta-peers"),
                    "--wal-peers", arg(first, "--wal-peers")])
    try:
        c.start()
        topic = "elastic"
        harness.create_topic(c.bootstrap, topic, PARTITIONS)
        wait_leaders(c, topic, PARTITIONS)

        elastic.start(timeout=120)
        assert "not a meta member" in elastic.stdout_text(), elastic.stdout_text()[-500:]
        view = cluster_view(elastic)
        assert view["roles"] == ["broker"], view["roles"]
        assert view["meta"]["voters"] == [] and view["meta"]["leader"] is None, view["meta"]
        # It is no voter: the group's membership is still the three members.
        assert sorted(cluster_view(first)["meta"]["voters"]) == [1, 2, 3]

        # It is in Metadata, through itself and through a member, and gets its share.
        md = harness.admin_client(elastic.bootstrap).list_topics(timeout=10)
        assert 4 in md.brokers, md.brokers
        harness.eventually(lambda: led_by(elastic.bootstrap, topic).get(4, 0) == PARTITIONS // 4, 120,
                           what="the elastic broker to lead its share")
        assert led_by(first.bootstrap, topic).get(4, 0) == PARTITIONS // 4

        # A producer and a consumer bootstrapped only through it, on every partition.
        produce_and_read(elastic.bootstrap, topic, list(range(PARTITIONS)), "before")
        print(f"joined: leaders {led_by(elastic.bootstrap, topic)}; elastic applied "
              f"{cluster_view(elastic)['meta']['last_applied']}")

        # kill -9 the meta leader.
        leader_id = cluster_view(first)["meta"]["leader"]
        assert leader_id in (1, 2, 3), leader_id
        c.broker(leader_id).kill9()
        survivor = next(b for b in c.brokers if b.alive())

        def new_leader():
            lid = cluster_view(survivor)["meta"]["leader"]
            return lid if lid not in (None, leader_id) else None

        harness.eventually(new_leader, 60, what="a new meta leader")
        # The dead broker's partitions move; the elastic broker's mirror sees it.
        harness.eventually(lambda: led_by(elastic.bootstrap, topic).get(leader_id, 0) == 0, 120,
                           what="the dead broker's partitions to move (seen through the elastic broker)")
        # The elastic broker still leads partitions, is alive and serves reads and writes.
        elastic.assert_alive()
        mine = [p for p, l in c.leaders(topic, PARTITIONS).items() if l == 4]
        assert mine, "the elastic broker leads nothing after the fail-over"
        produce_and_read(elastic.bootstrap, topic, list(range(PARTITIONS)), "after")
        # Its lease is renewed through the new leader: it is still registered and live.
        def expired_but_elastic_alive():
            brokers = {b["id"]: b for b in cluster_view(survivor)["brokers"]}
            return brokers if not brokers[leader_id]["alive"] and brokers[4]["alive"] else None

        brokers = harness.eventually(expired_but_elastic_alive, 60,
                                     what="the dead broker expired and the elastic one live")
        assert not brokers[4]["meta_voter"], brokers[4]
        elastic.assert_alive()
        print(f"after killing meta leader {leader_id}: leaders {led_by(elastic.bootstrap, topic)}; "
              f"elastic applied {cluster_view(elastic)['meta']['last_applied']}, "
              f"survivor {cluster_view(survivor)['meta']['last_applied']}")
        print(elastic.stderr_tail(15))
    except Exception:
        print(c.logs())
        print(f"--- elastic stderr ---\n{elastic.stderr_tail(40)}")
        raise
    finally:
        if elastic.alive():
            elastic.stop(timeout=30, check=False)
        c.stop()


def test_a_broker_without_meta_role_or_peers_is_refused(strata_bin, tmp_path):
    b = harness.Broker(strata_bin, tmp_path / "lonely", extra_args=["--roles", "broker"])
    r = subprocess.run(b.command(), capture_output=True, text=True, timeout=60, env=harness.clean_env())
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "meta.peers" in r.stderr, r.stderr
