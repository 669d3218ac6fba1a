"""t26 `strata topic …`: the CLI's admin commands against a running broker, checked through
the broker's own admin API and a stock client (confluent-kafka), plus its error exits."""

import json
import subprocess

import harness
from harness import Rec


def cli(strata_bin, broker, *args, ok=True):
    p = subprocess.run([strata_bin, "topic", *args, "--bootstrap", broker.bootstrap],
                       capture_output=True, text=True, timeout=60, env=harness.clean_env())
    if ok:
        assert p.returncode == 0, f"strata topic {args}: exit {p.returncode}\n{p.stderr}"
    return p


def test_topic_create_list_describe_delete(strata_bin, broker):
    cli(strata_bin, broker, "create", "orders", "--partitions", "3", "--config", "retention.ms=-1")
    seen = broker.topic("orders")
    assert seen is not None and len(seen["partitions"]) == 3, seen

    harness.produce(broker.bootstrap, "orders", [Rec(1, b"k", b"v%d" % i, (), None) for i in range(5)])
    assert cli(strata_bin, broker, "list").stdout.splitlines() == [
        "TOPIC   PARTITIONS  MESSAGES", "orders           3         5"]
    listed = json.loads(cli(strata_bin, broker, "list", "--output", "json").stdout)
    assert [(t["name"], len(t["partitions"])) for t in listed] == [("orders", 3)]
    table = [line.split() for line in cli(strata_bin, broker, "describe", "orders").stdout.splitlines()]
    assert table[0] == ["TOPIC", "PARTITION", "LEADER", "LOG-START", "HIGH-WATERMARK", "MESSAGES"], table
    assert table[1:] == [["orders", "0", "1", "0", "0", "0"], ["orders", "1", "1", "0", "5", "5"],
                         ["orders", "2", "1", "0", "0", "0"]], table
    described = json.loads(cli(strata_bin, broker, "describe", "orders", "-o", "json").stdout)
    assert [d["name"] for d in described] == ["orders"]
    assert described[0]["id"] == seen["id"], "the topic id Metadata reports is the broker's"
    parts = {p["partition"]: p for p in described[0]["partitions"]}
    assert sorted(parts) == [0, 1, 2]
    assert parts[1]["high_watermark"] == 5 and parts[0]["high_watermark"] == 0
    assert all(p["log_start_offset"] == 0 for p in parts.values())

    assert json.loads(cli(strata_bin, broker, "delete", "orders", "-o", "json").stdout) == {"deleted": "orders"}
    assert broker.topic("orders") is None
    assert json.loads(cli(strata_bin, broker, "create", "again", "-o", "json").stdout) == {"created": "again"}
    assert cli(strata_bin, broker, "delete", "again").stdout.strip() == "deleted topic again"
    assert cli(strata_bin, broker, "list").stdout.splitlines() == ["TOPIC  PARTITIONS  MESSAGES"]
    assert json.loads(cli(strata_bin, broker, "list", "-o", "json").stdout) == []


def test_topic_alter_over_the_kafka_admin_apis(strata_bin, broker):
    cli(strata_bin, broker, "create", "alt", "--partitions", "1", "--config", "retention.ms=-1")
    dry = cli(strata_bin, broker, "alter", "alt", "--partitions", "4", "--validate-only")
    assert dry.stdout.strip() == "would alter topic alt"
    assert len(broker.topic("alt")["partitions"]) == 1, "validate-only changed nothing"
    out = json.loads(cli(strata_bin, broker, "alter", "alt", "--partitions", "4", "--set", "retention.bytes=5000",
                         "--delete", "retention.ms", "-o", "json").stdout)
    assert out["altered"] == "alt" and out["partitions"] == 4 and out["set"] == {"retention.bytes": "5000"}
    assert len(broker.topic("alt")["partitions"]) == 4
    # The configs as a stock admin client reads them (DescribeConfigs).
    from confluent_kafka.admin import AdminClient, ConfigResource
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, "alt")
    configs = admin.describe_configs([res])[res].result(timeout=30)
    assert configs["retention.bytes"].value == "5000"
    from confluent_kafka.admin import ConfigSource
    assert configs["retention.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    # Deleted: back to the broker's value, no longer a topic config.
    assert configs["retention.ms"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value, configs["retention.ms"]

    shrink = cli(strata_bin, broker, "alter", "alt", "--partitions", "2", ok=False)
    assert shrink.returncode == 1 and "InvalidPartitions" in shrink.stderr, shrink.stderr
    bad = cli(strata_bin, broker, "alter", "alt", "--set", "no.such.key=1", ok=False)
    assert bad.returncode == 1 and "no.such.key" in bad.stderr, bad.stderr
    nothing = cli(strata_bin, broker, "alter", "alt", ok=False)
    assert nothing.returncode == 2 and "--partitions" in nothing.stderr, nothing.stderr


def test_topic_errors_exit_1_with_the_reason(strata_bin, broker):
    cli(strata_bin, broker, "create", "dup")
    again = cli(strata_bin, broker, "create", "dup", ok=False)
    assert again.returncode == 1 and "TopicAlreadyExists" in again.stderr, again.stderr
    bad = cli(strata_bin, broker, "create", "bad/name", ok=False)
    assert bad.returncode == 1 and "InvalidTopicException" in bad.stderr, bad.stderr
    missing = cli(strata_bin, broker, "delete", "never-existed", ok=False)
    assert missing.returncode == 1 and "UnknownTopicOrPartition" in missing.stderr, missing.stderr
    p = subprocess.run([strata_bin, "topic", "list", "--bootstrap", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=60, env=harness.clean_env())
    assert p.returncode == 1 and "127.0.0.1:1" in p.stderr, p.stderr
    bad = cli(strata_bin, broker, "list", "--output", "xml", ok=False)
    assert bad.returncode == 2 and "--output" in bad.stderr and "table, json" in bad.stderr, bad.stderr
