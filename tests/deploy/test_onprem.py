"""terraform/examples/onprem-minio: the compose file (MinIO + three strata nodes), its env file,
the systemd units and the node config. Static checks, systemd-analyze, and the compose file's
three strata command lines run for real as three local processes (loopback ports instead of the
compose network, a shared directory instead of MinIO) until they form one cluster."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import deploytools as dt

sys.path.insert(0, str(dt.ROOT / "tests" / "e2e"))
import harness  # noqa: E402

EXAMPLE = dt.TERRAFORM / "examples" / "onprem-minio"
STRATA_NODES = ("strata1", "strata2", "strata3")


def compose() -> dict:
    return yaml.safe_load((EXAMPLE / "docker-compose.yml").read_text())


def env_file() -> dict[str, str]:
    out = {}
    for line in (EXAMPLE / "strata.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"strata.env: not KEY=VALUE: {line!r}"
            out[key] = value
    return out


def substitute(text: str, env: dict[str, str]) -> str:
    """Compose-style ${VAR}, ${VAR:-default} and ${VAR:?message} against the env file."""

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        if op == ":-":
            return arg
        raise AssertionError(f"${{{name}}} is not set in strata.env")

    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:-|:\?)([^}]*))?\}", one, text)


def node_args(name: str) -> dict[str, str]:
    cmd = compose()["services"][name]["command"]
    assert cmd[0] == "start"
    args = {}
    for item in cmd[1:]:
        flag, sep, value = item.partition("=")
        assert sep, f"{name}: write flags as --flag=value: {item}"
        args[flag] = substitute(value, env_file())
    return args


def test_compose_services_and_air_gapped_images():
    services = compose()["services"]
    assert {"minio", "minio-init", *STRATA_NODES} <= set(services)
    for name, svc in services.items():
        assert svc.get("pull_policy") == "never", f"{name}: nothing may be pulled at run time (pull_policy: never)"
        assert not re.search(r":latest\b", str(svc["image"])), f"{name}: pin the image tag"
    for name in STRATA_NODES:
        svc = services[name]
        assert svc["user"] == "10001:10001" and svc["read_only"] is True
        assert svc["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
        assert svc["healthcheck"]["test"] == ["CMD", "strata-healthcheck"]


def test_compose_variables_are_all_defined_in_the_env_file():
    text = (EXAMPLE / "docker-compose.yml").read_text()
    env = env_file()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    assert used, "no variables found"
    missing = sorted(v for v in used if v not in env)
    assert not missing, f"docker-compose.yml uses variables strata.env does not set: {missing}"
    assert env["AWS_SECRET_ACCESS_KEY"] == env["MINIO_ROOT_PASSWORD"], "strata's S3 keys must match MinIO's account"
    assert env["AWS_ACCESS_KEY_ID"] == env["MINIO_ROOT_USER"]


def test_strata_environment_names_config_keys():
    keys = dt.documented_config_keys()
    names = set(env_file()) | set(compose()["services"]["strata1"].get("environment", {}))
    for name in sorted(n for n in names if n.startswith("STRATA_")):
        assert name in dt.NON_CONFIG_ENV or dt.env_to_key(name, keys), f"{name} names no config key (docs/config.md)"


def test_compose_nodes_agree_on_peers_and_own_addresses():
    known = dt.strata_start_flags()
    services = compose()["services"]
    subnet = ipaddress.ip_network(compose()["networks"]["strata"]["ipam"]["config"][0]["subnet"])
    meta_peers, wal_peers, ids = set(), set(), []
    for name in STRATA_NODES:
        args = node_args(name)
        assert not set(args) - known, f"{name}: unknown flags {sorted(set(args) - known)}"
        ip = services[name]["networks"]["strata"]["ipv4_address"]
        assert ipaddress.ip_address(ip) in subnet
        node_id = args["--node-id"]
        ids.append(node_id)
        assert f"{node_id}@{ip}:1228" in args["--meta-peers"].split(","), f"{name} is not in its own --meta-peers"
        assert args["--meta-listen"] == f"{ip}:1228" and args["--wal-listen"] == f"{ip}:1778"
        assert f"{ip}:1778" in args["--wal-peers"].split(",")
        meta_peers.add(args["--meta-peers"])
        wal_peers.add(args["--wal-peers"])
        # The advertised port is the one published on the host for this node's Kafka port.
        published = {p.split(":")[-1]: p.split(":")[-2] for p in services[name]["ports"]}
        assert args["--advertise"].rsplit(":", 1)[1] == published["9092"], name
    assert len(set(ids)) == 3, "node ids must be unique"
    assert len(meta_peers) == 1 and len(wal_peers) == 1, "every node must get the same peer lists, in the same order"


def test_node_config_file_uses_documented_keys_and_lists_itself():
    config = tomllib.loads((EXAMPLE / "strata.toml").read_text())
    used = dt.flatten_toml(config)
    assert not used - dt.documented_config_keys(), f"undocumented keys: {sorted(used - dt.documented_config_keys())}"
    host = config["meta"]["listen"].rsplit(":", 1)[0]
    assert f"{config['node_id']}@{config['meta']['listen']}" in config["meta"]["peers"]
    assert config["wal"]["listen"] in config["wal"]["peers"]
    assert config["kafka"]["advertised"].startswith(host + ":")
    assert "secret_access_key=" not in config["object_store"], "S3 secrets belong in the env file, not the config"


def unit(name: str) -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    for line in (EXAMPLE / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            entries.setdefault(key.strip(), []).append(value.strip())
    return entries


def test_systemd_units():
    strata = unit("strata.service")
    exec_start = strata["ExecStart"][0]
    assert exec_start.startswith("/usr/local/bin/strata start --config /etc/strata/strata.toml")
    assert not dt.flags_used(exec_start) - dt.strata_start_flags()
    assert strata["User"] == ["strata"] and strata["NoNewPrivileges"] == ["true"]
    # Exit codes 2 (bad config) and 3 (corrupt local data) are not retried (README's exit codes).
    assert set(strata["RestartPreventExitStatus"][0].split()) == {"2", "3"}
    data_dir = tomllib.loads((EXAMPLE / "strata.toml").read_text())["data_dir"]
    assert data_dir in strata["ReadWritePaths"][0].split()
    minio = unit("minio.service")
    assert minio["User"] == ["minio"] and minio["ExecStart"][0].startswith("/usr/local/bin/minio server")


def test_systemd_analyze_verify(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed")
    for f in (EXAMPLE / "systemd").glob("*.service"):
        shutil.copy(f, tmp_path / f.name)
    proc = subprocess.run(
        [exe, "verify", "--man=no", *sorted(str(p) for p in tmp_path.glob("*.service"))],
        capture_output=True, text=True, timeout=60,
    )
    lines = [l for l in (proc.stdout + proc.stderr).splitlines() if l.strip()]
    # The binaries are installed by the operator, not on this machine.
    problems = [l for l in lines if not re.search(r"Command /usr/local/bin/(strata|minio) is not executable", l)]
    assert not problems, "\n".join(problems)


def test_compose_command_lines_form_a_three_node_cluster(tmp_path):
    exe = dt.strata_bin()
    if exe is None:
        pytest.skip("target/debug/strata is not built")
    services = compose()["services"]
    # Each node's compose address:port becomes a free loopback port.
    remap: dict[str, str] = {}
    for name in STRATA_NODES:
        ip = services[name]["networks"]["strata"]["ipv4_address"]
        for port in ("1228", "1778", "9092", "1883", "8080"):
            remap[f"{ip}:{port}"] = f"127.0.0.1:{harness.free_port()}"

    def local(name: str, value: str) -> str:
        ip = services[name]["networks"]["strata"]["ipv4_address"]
        value = value.replace("0.0.0.0:", f"{ip}:")
        for old, new in remap.items():
            value = value.replace(old, new)
        return value

    objects = tmp_path / "objects"
    procs: dict[str, subprocess.Popen] = {}
    admin: dict[str, str] = {}
    try:
        for name in STRATA_NODES:
            args = node_args(name)
            argv = [str(exe), "start"]
            for flag, value in args.items():
                if flag == "--data-dir":
                    value = str(tmp_path / name)
                elif flag != "--advertise":
                    value = local(name, value)
                argv += [flag, value]
            argv += ["--object-store", f"fs://{objects}"]
            admin[name] = local(name, "0.0.0.0:8080")
            env = {"PATH": os.environ["PATH"], "STRATA_LOG_FORMAT": env_file()["STRATA_LOG_FORMAT"]}
            log = open(tmp_path / f"{name}.log", "wb")
            procs[name] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
            log.close()

        def cluster_formed():
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited {proc.returncode}: {(tmp_path / f'{name}.log').read_text()[-3000:]}"
            try:
                bodies = [json.loads(harness.http_get(f"http://{admin[n]}/v1/cluster", timeout=2)[1]) for n in STRATA_NODES]
            except (OSError, ValueError):
                return False
            return all(len([b for b in body.get("brokers", []) if b.get("alive")]) == 3 for body in bodies)

        harness.eventually(cluster_formed, timeout=120, what="three alive brokers seen by every node")
        for name in STRATA_NODES:
            status, body = harness.http_get(f"http://{admin[name]}/health", timeout=5)
            assert status == 200, (name, body)
        body = json.loads(harness.http_get(f"http://{admin['strata1']}/v1/cluster", timeout=5)[1])
        advertised = {b["address"] for b in body["brokers"]}
        assert advertised == {node_args(n)["--advertise"] for n in STRATA_NODES}, advertised
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
