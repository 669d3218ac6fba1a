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
    assert cli(strata_bin, broker, "list").stdout.split() == ["orders"]
    described = json.loads(cli(strata_bin, broker, "describe", "orders").stdout)
    assert [d["name"] for d in described] == ["orders"]
    assert described[0]["id"] == seen["id"], "the topic id Metadata reports is the broker's"
    parts = {p["partition"]: p for p in described[0]["partitions"]}
    assert sorted(parts) == [0, 1, 2]
    assert parts[1]["high_watermark"] == 5 and parts[0]["high_watermark"] == 0
    assert all(p["log_start_offset"] == 0 for p in parts.values())

    cli(strata_bin, broker, "delete", "orders")
    assert broker.topic("orders") is None
    assert cli(strata_bin, broker, "list").stdout.split() == []


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
