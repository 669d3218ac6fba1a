"""t27 Kafka admin APIs with stock clients: CreatePartitions, DescribeConfigs, AlterConfigs,
IncrementalAlterConfigs, DescribeCluster, DeleteRecords, OffsetForLeaderEpoch,
DescribeLogDirs and ListOffsets by max timestamp — through confluent-kafka (librdkafka),
kafka-python, kafkajs and kcat. Each effect is checked for real: new partitions take
produce/consume and survive a restart, a shorter retention.ms makes retention trim, deleted
records are never served again, configs survive a restart. Every handled error has a case."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException,
                             TopicPartition)
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource,
                                   NewPartitions, OffsetSpec, ResourceType)

import harness
import kwire
from harness import Rec

HERE = Path(__file__).resolve().parent
DAY = 86_400_000

INVALID_PARTITIONS = 37
INVALID_CONFIG = 40
OFFSET_OUT_OF_RANGE = 1
FENCED_LEADER_EPOCH = 74
UNKNOWN_LEADER_EPOCH = 75


# --------------------------------------------------------------------------------------------
# helpers


def adm(b):
    return harness.admin_client(b.bootstrap)


def kafka_error(fut, timeout=30) -> KafkaError:
    """The KafkaError a future fails with (and fail the test if it succeeds)."""
    try:
        got = fut.result(timeout)
    except KafkaException as e:
        return e.args[0]
    raise AssertionError(f"expected an error, got {got!r}")


def topic_configs(b, topic: str) -> dict[str, ConfigEntry]:
    res = ConfigResource(ResourceType.TOPIC, topic)
    a = adm(b)  # keep the handle alive until the future resolves
    return a.describe_configs([res])[res].result(30)


def partitions_of(b, topic: str) -> int:
    md = adm(b).list_topics(topic=topic, timeout=10)
    t = md.topics[topic]
    assert t.error is None, t.error
    return len(t.partitions)


def leader_epoch(b, topic: str, partition: int) -> int:
    """The leader epoch Metadata reports (kafka-python keeps it in its cluster metadata)."""
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTopicPartition

    c = KafkaConsumer(bootstrap_servers=b.bootstrap)
    try:
        c.topics()  # forces a metadata refresh
        epoch = c._client.cluster.leader_epoch_for_partition(KTopicPartition(topic, partition))
        assert epoch is not None, "kafka-python saw no leader epoch"
        return epoch
    finally:
        c.close()


def consume_from(b, topic: str, partition: int, offset: int, count: int, **conf) -> list:
    """Messages from `offset` on (or the error the consumer reports)."""
    c = Consumer(harness.consumer_conf(b.bootstrap, **conf))
    got, errors = [], []
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + 60
        while len(got) < count and time.monotonic() < deadline:
            for m in c.consume(num_messages=1000, timeout=0.5):
                if m.error() is None:
                    got.append((m.offset(), m.value()))
                elif m.error().code() != KafkaError._PARTITION_EOF:
                    errors.append(m.error())
            if errors:
                break
    finally:
        c.close()
    return got if not errors else errors


def produce_values(b, topic: str, partition: int, values: list[bytes], timestamps=None):
    recs = [Rec(partition, None, v, (), None if timestamps is None else timestamps[i])
            for i, v in enumerate(values)]
    return harness.produce(b.bootstrap, topic, recs)


# --------------------------------------------------------------------------------------------
# CreatePartitions


@pytest.mark.timeout(240)
def test_create_partitions_then_produce_consume_and_restart(broker_factory):
    b = broker_factory()
    topic = "grow"
    harness.create_topic(b.bootstrap, topic, 1)
    a = adm(b)

    # validate_only: accepted, nothing changes.
    a.create_partitions([NewPartitions(topic, 5)], validate_only=True)[topic].result(30)
    assert partitions_of(b, topic) == 1

    a.create_partitions([NewPartitions(topic, 3)])[topic].result(30)
    harness.wait_topic_metadata(b.bootstrap, topic, 3)

    # Errors: not an increase, over the maximum, unknown topic.
    for count in (3, 2):
        err = kafka_error(a.create_partitions([NewPartitions(topic, count)])[topic])
        assert err.code() == KafkaError.INVALID_PARTITIONS, err
        assert "3 partitions" in err.str(), err
    err = kafka_error(a.create_partitions([NewPartitions(topic, 10_001)])[topic])
    assert err.code() == KafkaError.INVALID_PARTITIONS, err
    err = kafka_error(a.create_partitions([NewPartitions("no-such-topic", 4)])["no-such-topic"])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, err
    assert partitions_of(b, topic) == 3

    # confluent-kafka produces to the new partition 2, kcat to the new partition 1.
    values = [b"p2-%d" % i for i in range(20)]
    delivered = produce_values(b, topic, 2, values)
    assert [o for _, o in delivered] == list(range(20))
    r = harness.kcat(["-P", "-b", b.bootstrap, "-t", topic, "-p", "1"], input=b"k1\nk2\nk3\n")
    assert r.returncode == 0, r.stderr.decode()

    def check():
        got = harness.consume(b.bootstrap, topic, [1, 2], timeout=60)
        assert [r.value for r in got[2]] == values
        assert [r.value for r in got[1]] == [b"k1", b"k2", b"k3"]
        out = harness.kcat(["-C", "-b", b.bootstrap, "-t", topic, "-p", "2", "-o", "beginning",
                            "-e", "-f", harness.KCAT_FORMAT])
        assert out.returncode == 0, out.stderr.decode()
        assert [r.value for r in harness.parse_kcat(out.stdout)[2]] == values

    check()
    b.restart()
    harness.wait_topic_metadata(b.bootstrap, topic, 3)
    check()
    # Still writable after the restart.
    delivered = produce_values(b, topic, 2, [b"after"])
    assert delivered == [(2, 20)]


# --------------------------------------------------------------------------------------------
# DescribeConfigs / AlterConfigs / IncrementalAlterConfigs (confluent-kafka)


@pytest.mark.timeout(240)
def test_topic_configs_alter_describe_and_survive_restart(broker_factory):
    b = broker_factory()
    topic = "cfg"
    harness.create_topic(b.bootstrap, topic, 1, config={"retention.bytes": "5000000"})
    a = adm(b)

    cfg = topic_configs(b, topic)
    assert {"retention.ms", "retention.bytes", "cleanup.policy", "max.message.bytes"} <= set(cfg)
    assert cfg["retention.bytes"].value == "5000000"
    assert cfg["retention.bytes"].source == 1  # DYNAMIC_TOPIC_CONFIG
    # The harness sets the broker default (tiering.retention_ms) to -1.
    assert cfg["retention.ms"].value == "-1"
    assert cfg["retention.ms"].source != 1
    assert cfg["max.message.bytes"].is_read_only

    res = lambda *entries: ConfigResource(ResourceType.TOPIC, topic, incremental_configs=list(entries))  # noqa: E731
    set_ = lambda k, v: ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)  # noqa: E731

    # validate_only changes nothing.
    r = res(set_("retention.ms", "1234"))
    a.incremental_alter_configs([r], validate_only=True)[r].result(30)
    assert topic_configs(b, topic)["retention.ms"].value == "-1"

    # Incremental SET keeps the other keys; DELETE goes back to the default.
    r = res(set_("retention.ms", "1234"))
    a.incremental_alter_configs([r])[r].result(30)
    cfg = topic_configs(b, topic)
    assert (cfg["retention.ms"].value, cfg["retention.bytes"].value) == ("1234", "5000000")
    r = res(ConfigEntry("retention.bytes", None, incremental_operation=AlterConfigOpType.DELETE))
    a.incremental_alter_configs([r])[r].result(30)
    cfg = topic_configs(b, topic)
    assert (cfg["retention.ms"].value, cfg["retention.bytes"].value) == ("1234", "-1")

    # Errors, each naming the key: unknown key, bad value, read-only key, unsupported policy.
    for entry, needle in [(set_("segment.ms", "10"), "segment.ms"),
                          (set_("retention.ms", "soon"), "retention.ms"),
                          (set_("max.message.bytes", "10"), "max.message.bytes"),
                          (set_("cleanup.policy", "compact"), "cleanup.policy")]:
        r = res(entry)
        err = kafka_error(a.incremental_alter_configs([r])[r])
        assert err.code() == KafkaError.INVALID_CONFIG, err
        assert needle in err.str(), err
    r = ConfigResource(ResourceType.TOPIC, "no-such-topic", incremental_configs=[set_("retention.ms", "1")])
    err = kafka_error(a.incremental_alter_configs([r])[r])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, err
    nope = ConfigResource(ResourceType.TOPIC, "no-such-topic")
    err = kafka_error(a.describe_configs([nope])[nope])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, err
    assert topic_configs(b, topic)["retention.ms"].value == "1234"

    # Legacy AlterConfigs replaces the whole set: retention.ms not listed goes back to default.
    r = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.bytes": "777"})
    a.alter_configs([r])[r].result(30)
    cfg = topic_configs(b, topic)
    assert (cfg["retention.ms"].value, cfg["retention.bytes"].value) == ("-1", "777")
    r = ConfigResource(ResourceType.TOPIC, topic, set_config={"bogus.key": "1"})
    err = kafka_error(a.alter_configs([r])[r])
    assert err.code() == KafkaError.INVALID_CONFIG and "bogus.key" in err.str(), err

    # Broker configs: Kafka's names, read-only.
    br = ConfigResource(ResourceType.BROKER, str(b.node_id))
    bcfg = a.describe_configs([br])[br].result(30)
    assert bcfg["log.retention.ms"].value == "-1"
    assert bcfg["log.retention.ms"].is_read_only
    assert bcfg["broker.id"].value == str(b.node_id)
    br = ConfigResource(ResourceType.BROKER, str(b.node_id),
                        incremental_configs=[set_("log.retention.ms", "5")])
    err = kafka_error(a.incremental_alter_configs([br])[br])
    assert err.code() == KafkaError.INVALID_CONFIG and "log.retention.ms" in err.str(), err

    # CreateTopics refuses unknown configs too.
    from confluent_kafka.admin import NewTopic
    fs = a.create_topics([NewTopic("cfg-bad", 1, 1, config={"segment.ms": "5"})])
    err = kafka_error(fs["cfg-bad"])
    assert err.code() == KafkaError.INVALID_CONFIG and "segment.ms" in err.str(), err

    # Durable: a restart keeps them.
    b.restart()
    cfg = topic_configs(b, topic)
    assert (cfg["retention.ms"].value, cfg["retention.bytes"].value) == ("-1", "777")


@pytest.mark.timeout(240)
def test_shorter_retention_ms_makes_retention_trim(broker_factory):
    b = broker_factory(config={"tiering": {"flush_interval_ms": 100, "garbage_grace_ms": 0}},
                       env={"STRATA_TIERING_RETENTION_CHECK_INTERVAL_MS": "200"})
    topic = "cfg-ret"
    harness.create_topic(b.bootstrap, topic, 1, config={"retention.ms": "-1"})
    now = int(time.time() * 1000)
    produce_values(b, topic, 0, [b"old%d" % i for i in range(20)],
                   [now - 10 * DAY + i for i in range(20)])
    # Kept forever for now: uploaded, and the log still starts at 0.
    b.wait_uploaded(topic, total=20, timeout=60)
    assert harness.watermarks(b.bootstrap, topic, 1)[0] == (0, 20)

    r = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", str(DAY), incremental_operation=AlterConfigOpType.SET)])
    a = adm(b)
    a.incremental_alter_configs([r])[r].result(30)
    harness.eventually(lambda: harness.watermarks(b.bootstrap, topic, 1)[0] == (20, 20), 60,
                       what="retention to trim the 10-day-old records after retention.ms=1 day")
    produce_values(b, topic, 0, [b"new"])
    got = consume_from(b, topic, 0, OFFSET_BEGINNING, 1, **{"auto.offset.reset": "earliest"})
    assert got == [(20, b"new")]


# --------------------------------------------------------------------------------------------
# DeleteRecords


def delete_records_v0(port: int, topic: str, parts: list[tuple[int, int]]) -> dict:
    """DeleteRecords v0, hand-encoded: [(partition, offset)] → {partition: (low_watermark,
    error_code)}."""
    body = struct.pack(">i", 1) + kwire.string(topic) + struct.pack(">i", len(parts))
    for p, off in parts:
        body += struct.pack(">iq", p, off)
    body += struct.pack(">i", 10_000)
    frame = kwire.roundtrip(port, kwire.request(21, 0, 9, body))
    pos = 4 + 4  # correlation id, throttle
    (ntopics,) = struct.unpack_from(">i", frame, pos)
    assert ntopics == 1
    (tlen,) = struct.unpack_from(">h", frame, pos + 4)
    pos += 4 + 2 + tlen
    (nparts,) = struct.unpack_from(">i", frame, pos)
    pos += 4
    out = {}
    for _ in range(nparts):
        p, low, err = struct.unpack_from(">iqh", frame, pos)
        pos += 14
        out[p] = (low, err)
    return out


@pytest.mark.timeout(240)
def test_delete_records_moves_the_low_watermark(broker_factory):
    b = broker_factory()
    topic = "delrec"
    harness.create_topic(b.bootstrap, topic, 2)
    a = adm(b)
    values = [b"v%d" % i for i in range(10)]
    produce_values(b, topic, 0, values)

    fs = a.delete_records([TopicPartition(topic, 0, 4)])
    res = list(fs.values())[0].result(30)
    assert res.low_watermark == 4
    assert harness.watermarks(b.bootstrap, topic, 1)[0] == (4, 10)
    # A consumer from the beginning starts at the new low watermark.
    got = consume_from(b, topic, 0, OFFSET_BEGINNING, 6)
    assert got == [(i, values[i]) for i in range(4, 10)]
    # Below it is out of range (auto.offset.reset=error makes the consumer report it).
    got = consume_from(b, topic, 0, 2, 1)
    assert got and isinstance(got[0], KafkaError), got
    assert got[0].code() == KafkaError._AUTO_OFFSET_RESET or "out of range" in got[0].str().lower(), got
    # Backwards is a no-op that answers the current low watermark.
    res = list(a.delete_records([TopicPartition(topic, 0, 1)]).values())[0].result(30)
    assert res.low_watermark == 4

    # Errors: past the high watermark, unknown partition, unknown topic.
    err = kafka_error(list(a.delete_records([TopicPartition(topic, 0, 11)]).values())[0])
    assert err.code() == KafkaError.OFFSET_OUT_OF_RANGE, err
    # (librdkafka refuses unknown partitions itself, so these go over the raw wire.)
    assert delete_records_v0(b.kafka_port, topic, [(7, 0)]) == {7: (-1, kwire.UNKNOWN_TOPIC_OR_PARTITION)}
    assert delete_records_v0(b.kafka_port, "nope", [(0, 0)]) == {0: (-1, kwire.UNKNOWN_TOPIC_OR_PARTITION)}
    assert delete_records_v0(b.kafka_port, topic, [(0, -7)]) == {0: (-1, OFFSET_OUT_OF_RANGE)}
    assert delete_records_v0(b.kafka_port, topic, [(0, 3)]) == {0: (4, 0)}

    # The start is durable, and still in force after a restart.
    b.restart()
    assert harness.watermarks(b.bootstrap, topic, 1)[0] == (4, 10)
    got = consume_from(b, topic, 0, OFFSET_BEGINNING, 6)
    assert got == [(i, values[i]) for i in range(4, 10)]

    # OFFSET_END (-1): everything up to the high watermark. A new client: librdkafka (2.10+)
    # forgets a lone broker that went away ("re-bootstrap") and fails a leader lookup made
    # before it has reconnected with "No leaders found" — a client matter, not the broker's.
    a = adm(b)
    res = list(a.delete_records([TopicPartition(topic, 0, -1)]).values())[0].result(30)
    assert res.low_watermark == 10
    produce_values(b, topic, 0, [b"later"])
    assert consume_from(b, topic, 0, OFFSET_BEGINNING, 1) == [(10, b"later")]


@pytest.mark.timeout(240)
def test_delete_records_inside_an_uploaded_block(broker_factory):
    """The new start lies inside a block already in object storage: the block stays (it
    holds later records), the log starts exactly there, before and after a restart, and
    a later DeleteRecords past the block drops it from the store."""
    b = broker_factory(config={"tiering": {"flush_interval_ms": 100, "garbage_grace_ms": 0}},
                       env={"STRATA_TIERING_RETENTION_CHECK_INTERVAL_MS": "200"})
    topic = "delrec-cold"
    harness.create_topic(b.bootstrap, topic, 1)
    values = [b"c%d" % i for i in range(10)]
    base_ts = 1_700_000_000_000
    produce_values(b, topic, 0, values, [base_ts + i for i in range(10)])  # one batch, one block
    b.wait_uploaded(topic, total=10, timeout=60)
    a = adm(b)
    res = list(a.delete_records([TopicPartition(topic, 0, 6)]).values())[0].result(30)
    assert res.low_watermark == 6
    assert consume_from(b, topic, 0, OFFSET_BEGINNING, 4) == [(i, values[i]) for i in range(6, 10)]
    # A time lookup never answers a deleted record: the first kept one at or after the time.
    c = Consumer(harness.consumer_conf(b.bootstrap))
    try:
        found = [c.offsets_for_times([TopicPartition(topic, 0, base_ts + i)], timeout=20)[0].offset
                 for i in (2, 8)]
    finally:
        c.close()
    assert found == [6, 8]
    b.restart()
    assert harness.watermarks(b.bootstrap, topic, 1)[0] == (6, 10)
    assert consume_from(b, topic, 0, OFFSET_BEGINNING, 4) == [(i, values[i]) for i in range(6, 10)]
    objects = {p for p in (b.data_dir / "objects" / "data").rglob("*") if p.is_file()}
    assert objects, "the block should be in the object store"
    a = adm(b)  # a new client after the restart (as in the test above)
    res = list(a.delete_records([TopicPartition(topic, 0, 10)]).values())[0].result(30)
    assert res.low_watermark == 10
    harness.eventually(lambda: not any(p.exists() for p in objects), 60,
                       what="the sweeper to delete the object DeleteRecords dropped")


# --------------------------------------------------------------------------------------------
# ListOffsets max timestamp, DescribeCluster, DescribeLogDirs, OffsetForLeaderEpoch


@pytest.mark.timeout(180)
def test_list_offsets_max_timestamp_and_describe_cluster(broker):
    b = broker
    topic = "maxts"
    harness.create_topic(b.bootstrap, topic, 1)
    produce_values(b, topic, 0, [b"a", b"b", b"c", b"d"], [1_000, 9_000, 3_000, 2_000])
    a = adm(b)
    tp = TopicPartition(topic, 0)
    specs = {"max": OffsetSpec.max_timestamp(), "earliest": OffsetSpec.earliest(),
             "latest": OffsetSpec.latest()}
    got = {k: a.list_offsets({tp: s})[tp].result(30) for k, s in specs.items()}
    assert (got["max"].offset, got["max"].timestamp) == (1, 9_000)
    assert got["earliest"].offset == 0 and got["latest"].offset == 4
    assert got["latest"].leader_epoch == leader_epoch(b, topic, 0)

    desc = a.describe_cluster().result(30)
    assert desc.cluster_id
    assert [n.id for n in desc.nodes] == [b.node_id]
    assert (desc.nodes[0].host, desc.nodes[0].port) == ("127.0.0.1", b.kafka_port)
    assert desc.controller.id == b.node_id


def offset_for_leader_epoch_v2(port: int, topic: str, parts: list[tuple[int, int, int]]):
    """OffsetForLeaderEpoch v2 (non-flexible), hand-encoded: [(partition,
    current_leader_epoch, leader_epoch)] → {partition: (error, leader_epoch, end_offset)}."""
    body = struct.pack(">i", 1) + kwire.string(topic) + struct.pack(">i", len(parts))
    for p, current, epoch in parts:
        body += struct.pack(">iii", p, current, epoch)
    frame = kwire.roundtrip(port, kwire.request(23, 2, 7, body))
    pos = 4 + 4  # correlation id, throttle
    (ntopics,) = struct.unpack_from(">i", frame, pos)
    pos += 4
    assert ntopics == 1
    (tlen,) = struct.unpack_from(">h", frame, pos)
    pos += 2 + tlen
    (nparts,) = struct.unpack_from(">i", frame, pos)
    pos += 4
    out = {}
    for _ in range(nparts):
        err, p, epoch, end = struct.unpack_from(">hiiq", frame, pos)
        pos += 18
        out[p] = (err, epoch, end)
    return out


@pytest.mark.timeout(180)
def test_offset_for_leader_epoch_validates_positions(broker):
    b = broker
    topic = "epochs"
    harness.create_topic(b.bootstrap, topic, 1)
    values = [b"e%d" % i for i in range(8)]
    produce_values(b, topic, 0, values)
    epoch = leader_epoch(b, topic, 0)
    assert epoch >= 0

    got = offset_for_leader_epoch_v2(b.kafka_port, topic, [(0, epoch, epoch)])
    assert got[0] == (0, epoch, 8)
    # No current epoch given (-1): no fencing check.
    assert offset_for_leader_epoch_v2(b.kafka_port, topic, [(0, -1, epoch)])[0] == (0, epoch, 8)
    # An epoch the partition never had: undefined.
    assert offset_for_leader_epoch_v2(b.kafka_port, topic, [(0, -1, epoch + 5)])[0] == (0, -1, -1)
    # Fencing: the client's current epoch is older / newer than ours.
    if epoch > 0:
        assert offset_for_leader_epoch_v2(b.kafka_port, topic, [(0, epoch - 1, epoch)])[0][0] \
            == FENCED_LEADER_EPOCH
    assert offset_for_leader_epoch_v2(b.kafka_port, topic, [(0, epoch + 1, epoch)])[0][0] \
        == UNKNOWN_LEADER_EPOCH
    assert offset_for_leader_epoch_v2(b.kafka_port, topic, [(3, -1, epoch)])[3][0] \
        == kwire.UNKNOWN_TOPIC_OR_PARTITION

    # librdkafka validates a position carrying a leader epoch (KIP-320) with
    # OffsetForLeaderEpoch before fetching; no truncation is found, so it reads on.
    c = Consumer(harness.consumer_conf(b.bootstrap))
    got = []
    try:
        c.assign([TopicPartition(topic, 0, 5, leader_epoch=epoch)])
        deadline = time.monotonic() + 60
        while len(got) < 3 and time.monotonic() < deadline:
            for m in c.consume(num_messages=100, timeout=0.5):
                if m.error() is None:
                    got.append((m.offset(), m.value()))
                else:
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
    finally:
        c.close()
    assert got == [(i, values[i]) for i in range(5, 8)]


# --------------------------------------------------------------------------------------------
# kafka-python KafkaAdminClient


@pytest.mark.timeout(240)
def test_kafka_python_admin(broker):
    from kafka.admin import ConfigResource as KConfigResource
    from kafka.admin import ConfigResourceType, KafkaAdminClient
    from kafka.admin import NewPartitions as KNewPartitions
    from kafka.errors import InvalidPartitionsError

    b = broker
    topic = "kpy-admin"
    harness.create_topic(b.bootstrap, topic, 1)
    a = KafkaAdminClient(bootstrap_servers=b.bootstrap, request_timeout_ms=30000)
    try:
        a.create_partitions({topic: KNewPartitions(total_count=2)})
        harness.wait_topic_metadata(b.bootstrap, topic, 2)
        with pytest.raises(InvalidPartitionsError):
            a.create_partitions({topic: KNewPartitions(total_count=1)})

        res = a.alter_configs([KConfigResource(ConfigResourceType.TOPIC, topic,
                                               configs={"retention.ms": "86400000"})])
        assert res["topic"][topic] == "OK", res
        desc = a.describe_configs([KConfigResource(ConfigResourceType.TOPIC, topic)],
                                  config_filter="all")
        entries = desc["topic"][topic]
        assert entries["retention.ms"]["value"] == "86400000", entries
        # Unknown keys: kafka-python checks against what DescribeConfigs lists, and the broker
        # refuses them when the client does not.
        with pytest.raises(ValueError):
            a.alter_configs([KConfigResource(ConfigResourceType.TOPIC, topic, configs={"nope.key": "1"})])
        res = a.alter_configs([KConfigResource(ConfigResourceType.TOPIC, topic, configs={"nope.key": "1"})],
                              raise_on_unknown=False)
        assert "nope.key" in res["topic"][topic] and "InvalidConfig" in res["topic"][topic], res

        cluster = a.describe_cluster()
        assert cluster["cluster_id"]
        assert [br["broker_id"] for br in cluster["brokers"]] == [b.node_id]

        produce_values(b, topic, 1, [b"x" * 100] * 5)
        dirs = a.describe_log_dirs()
        assert len(dirs) == 1 and len(dirs[0]["log_dirs"]) == 1, dirs
        d = dirs[0]["log_dirs"][0]
        assert d["error_code"] == 0 and d["log_dir"], d
        sizes = {(t["name"], p["partition_index"]): p["partition_size"]
                 for t in d["topics"] for p in t["partitions"]}
        assert sizes[(topic, 1)] > 500 and sizes[(topic, 0)] == 0, sizes
    finally:
        a.close()


# --------------------------------------------------------------------------------------------
# kafkajs admin


@pytest.mark.timeout(240)
def test_kafkajs_admin(broker):
    if not (HERE / "node_modules" / "kafkajs").is_dir():
        pytest.fail("kafkajs is not installed in tests/e2e/node_modules (tests/run.sh runs npm ci)",
                    pytrace=False)
    b = broker
    topic = "kjs-admin"
    harness.create_topic(b.bootstrap, topic, 1)
    r = subprocess.run(["node", str(HERE / "tools" / "kafkajs_admin.js"), b.bootstrap, topic],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=180,
                       env=harness.clean_env())
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    out = json.loads(r.stdout.decode().strip().splitlines()[-1])

    assert "ok" in out["grow"], out["grow"]
    assert out["partitions"] == 3
    assert out["shrink"].get("error") == "INVALID_PARTITIONS", out["shrink"]
    assert out["growUnknown"].get("error") == "UNKNOWN_TOPIC_OR_PARTITION", out["growUnknown"]
    assert "ok" in out["alter"], out["alter"]
    assert out["alterUnknown"].get("error") == "INVALID_CONFIG", out["alterUnknown"]
    assert out["configs"]["retention.ms"]["value"] == "123456789"
    assert out["describeUnknown"].get("error") == "UNKNOWN_TOPIC_OR_PARTITION", out["describeUnknown"]
    by_ts = {p["partition"]: int(p["offset"]) for p in out["byTimestamp"]}
    assert by_ts[2] == 3, out["byTimestamp"]  # the first record at or after base + 2.5 s
    assert "ok" in out["deleteRecords"], out["deleteRecords"]
    offs = {p["partition"]: (int(p["low"]), int(p["high"])) for p in out["offsets"]}
    assert offs[2] == (3, 5), out["offsets"]
    assert [br["nodeId"] for br in out["cluster"]["brokers"]] == [b.node_id]
    assert out["cluster"]["controller"] == b.node_id

    # The effects are real for other clients too.
    assert harness.watermarks(b.bootstrap, topic, 3)[2] == (3, 5)
    assert topic_configs(b, topic)["retention.ms"].value == "123456789"


def test_admin_apis_are_advertised_in_api_versions(broker):
    """ApiVersions lists exactly the ranges handled (kcat's old librdkafka parses them too)."""
    frame = kwire.roundtrip(broker.kafka_port, kwire.api_versions_v0())
    _, err, versions = kwire.parse_api_versions_v0(frame)
    assert err == 0
    want = {37: (0, 3), 32: (1, 4), 33: (0, 2), 44: (0, 1), 60: (0, 2), 21: (0, 2), 23: (2, 4),
            35: (1, 4), 2: (1, 7)}
    for key, rng in want.items():
        assert versions.get(key) == rng, (key, versions.get(key))
    r = harness.kcat(["-L", "-b", broker.bootstrap])
    assert r.returncode == 0, r.stderr.decode()


# --------------------------------------------------------------------------------------------
# In a cluster


@pytest.mark.timeout(400)
def test_admin_in_a_cluster_leases_new_partitions_and_routes_to_leaders(strata_bin, tmp_path):
    """Three combined nodes: new partitions get leases spread over the brokers and are
    writable on their leaders; a config change and a DeleteRecords made through one broker
    are seen by all."""
    from cluster import Cluster, wait_leaders

    c = Cluster(strata_bin, tmp_path, brokers=3, lease_ms=3000, combined=True)
    try:
        c.start()
        topic = "cl-grow"
        harness.create_topic(c.bootstrap, topic, 1)
        a = harness.admin_client(c.bootstrap)
        a.create_partitions([NewPartitions(topic, 6)])[topic].result(60)
        leaders = wait_leaders(c, topic, 6)
        assert len(set(leaders.values())) == 3, f"new partitions should spread over brokers: {leaders}"

        recs = [Rec(p, None, b"c%d-%d" % (p, i)) for p in range(6) for i in range(5)]
        delivered = harness.produce(c.bootstrap, topic, recs)
        harness.assert_matches(recs, delivered, harness.consume(c.bootstrap, topic, 6))

        # DeleteRecords goes to each partition's leader (librdkafka routes it).
        fs = a.delete_records([TopicPartition(topic, p, 2) for p in range(6)])
        assert sorted(f.result(60).low_watermark for f in fs.values()) == [2] * 6
        wm = harness.watermarks(c.bootstrap, topic, 6)
        assert all(wm[p] == (2, 5) for p in range(6)), wm

        # A config altered through the cluster is described the same by every broker.
        r = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
            ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET)])
        a.incremental_alter_configs([r])[r].result(60)
        for b in c.brokers:
            harness.eventually(lambda: topic_configs(b, topic)["retention.ms"].value == "3600000", 30,
                               what=f"node {b.node_id} to see retention.ms")
            one = harness.admin_client(b.bootstrap)
            desc = one.describe_cluster().result(30)
            assert sorted(n.id for n in desc.nodes) == [1, 2, 3]
    finally:
        c.stop()
        print(c.logs())
