"""t25 topics: create/delete through the Kafka admin API, error codes for bad
requests, topics surviving restarts, and a deleted topic's data never coming back
when a topic of the same name is created again (also after a restart)."""

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

import harness
from harness import Rec


def _create_error(bootstrap, topic: NewTopic) -> KafkaError | None:
    adm = harness.admin_client(bootstrap)
    try:
        adm.create_topics([topic], request_timeout=15)[topic.topic].result(30)
        return None
    except KafkaException as e:
        return e.args[0]


def test_create_topic_errors(broker):
    harness.create_topic(broker.bootstrap, "exists", 2)
    err = _create_error(broker.bootstrap, NewTopic("exists", 2, 1))
    assert err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS, err
    for bad in ["bad/name", "a" * 250, "..", ""]:
        err = _create_error(broker.bootstrap, NewTopic(bad, 1, 1))
        assert err is not None and err.code() == KafkaError.TOPIC_EXCEPTION, f"name {bad!r}: {err}"
    err = _create_error(broker.bootstrap, NewTopic("zero-parts", 0, 1))
    assert err is not None and err.code() == KafkaError.INVALID_PARTITIONS, err
    assert broker.topic("bad/name") is None and broker.topic("zero-parts") is None

    adm = harness.admin_client(broker.bootstrap)
    with pytest.raises(KafkaException) as ei:
        adm.delete_topics(["never-existed"], request_timeout=15)["never-existed"].result(30)
    assert ei.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART, ei.value


def test_topics_survive_restart_and_kill9(broker_factory):
    b = broker_factory()
    shapes = {"one": 1, "three": 3, "eight": 8}
    for name, n in shapes.items():
        harness.create_topic(b.bootstrap, name, n)
    ids = {t["name"]: t["id"] for t in b.topics()}
    assert set(shapes) <= set(ids)
    for restart in (b.restart, lambda: (b.kill9(), b.start())):
        restart()
        got = {t["name"]: (t["id"], len(t["partitions"])) for t in b.topics()}
        for name, n in shapes.items():
            assert got.get(name) == (ids[name], n), f"{name}: {got.get(name)} after restart, expected {(ids[name], n)}"
        md = harness.admin_client(b.bootstrap).list_topics(timeout=10)
        for name, n in shapes.items():
            assert len(md.topics[name].partitions) == n


@pytest.mark.parametrize("restart_between", [False, True])
def test_recreated_topic_starts_empty(broker_factory, restart_between):
    b = broker_factory(config={"tiering": {"flush_interval_ms": 200}})
    harness.create_topic(b.bootstrap, "again", 2)
    harness.produce(b.bootstrap, "again", [Rec(i % 2, None, b"old-%d" % i) for i in range(500)])
    old_id = b.topic("again")["id"]
    b.wait_uploaded("again", total=500)

    adm = harness.admin_client(b.bootstrap)
    adm.delete_topics(["again"], request_timeout=15)["again"].result(30)
    harness.eventually(lambda: b.topic("again") is None, 30, what="topic gone from /v1/topics")
    if restart_between:
        b.restart()
        assert b.topic("again") is None, "a deleted topic came back after a restart"

    harness.create_topic(b.bootstrap, "again", 3)
    t = b.topic("again")
    assert t["id"] != old_id, "a recreated topic must get a new id"
    assert all(p["high_watermark"] == 0 and p["log_start_offset"] == 0 for p in t["partitions"]), t
    recs = [Rec(i % 3, None, b"new-%d" % i) for i in range(30)]
    delivered = harness.produce(b.bootstrap, "again", recs)
    harness.assert_matches(recs, delivered, harness.consume(b.bootstrap, "again", 3))

    b.restart()
    harness.assert_matches(recs, delivered, harness.consume(b.bootstrap, "again", 3))
