"""The Helm chart deploy/helm/strata: linted and rendered by the real Helm engine (helm-python-sdk
binds Helm's Go SDK; there is no helm binary on this machine), the manifests checked for the
contract (roles, peers, Services, PVCs, PDB, security context, probes), checkov on the rendered
manifests, and the rendered config and start script run for real against the strata binary."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tomllib

import pytest
import yaml

import deploytools as dt

sys.path.insert(0, str(dt.ROOT / "tests" / "e2e"))
import harness  # noqa: E402

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (tests/deploy/requirements.txt)")

RELEASE, NAMESPACE = "demo", "prod"


def render(values: dict | None = None) -> dict[str, str]:
    with helm.Chart.load(str(dt.CHART)) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)


def manifests(values: dict | None = None) -> list[dict]:
    docs = []
    for name, text in render(values).items():
        if name.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def chart_values() -> dict:
    return yaml.safe_load((dt.CHART / "values.yaml").read_text())


def strata_toml(docs: list[dict]) -> dict:
    (cm,) = by_kind(docs, "ConfigMap")
    return tomllib.loads(cm["data"]["strata.toml"])


def container(sts: dict) -> dict:
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict) -> dict:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


# --- chart metadata, lint, values ---------------------------------------------------------


def test_chart_metadata():
    chart = yaml.safe_load((dt.CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "strata" and chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"]), chart["version"]
    workspace = tomllib.loads((dt.ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    assert chart["appVersion"] == workspace, "appVersion (the default image tag) must follow the workspace version"


def test_helm_lint_has_no_errors():
    result = helm.lint(str(dt.CHART))
    assert result["total_charts_linted"] == 1
    assert not result["errors"], result["errors"]
    serious = [m for m in result["messages"] if m["severity"] > 1]
    assert not serious, serious


def values_paths(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        out.add(prefix + k)
        if isinstance(v, dict) and v:
            out |= values_paths(v, prefix + k + ".")
    return out


def test_template_values_exist_and_every_value_is_used():
    text = "\n".join(p.read_text() for p in (dt.CHART / "templates").iterdir())
    referenced = set(re.findall(r"\.Values\.([A-Za-z0-9_.]*[A-Za-z0-9_])", text))
    declared = values_paths(chart_values())
    missing = sorted(r for r in referenced if r not in declared)
    assert not missing, f"templates read values that values.yaml does not declare: {missing}"

    def used(path: str) -> bool:
        parts = path.split(".")
        ancestor_read = any(".".join(parts[:i]) in referenced for i in range(1, len(parts) + 1))
        return ancestor_read or any(r.startswith(path + ".") for r in referenced)

    unused = sorted(p for p in declared if not used(p))
    assert not unused, f"values.yaml declares values no template reads: {unused}"


def test_bad_topology_fails_with_a_clear_message():
    with pytest.raises(Exception) as err:
        render({"topology": "triangle"})
    assert 'topology must be combined or split, not "triangle"' in str(err.value)


# --- the combined topology (default) ------------------------------------------------------


def test_combined_runs_every_role_in_one_statefulset():
    docs = manifests()
    (sts,) = by_kind(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert env_of(container(sts))["NODE_ROLES"] == "meta,wal,broker"
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert claims == {"wal", "meta"}
    mounts = {m["name"]: m["mountPath"] for m in container(sts)["volumeMounts"]}
    assert mounts["wal"] == "/var/lib/strata/wal" and mounts["meta"] == "/var/lib/strata/meta"
    config = strata_toml(docs)
    assert config["wal"]["dir"] == mounts["wal"] and config["meta"]["dir"] == mounts["meta"]
    assert len(config["meta"]["peers"]) == 3 and len(config["wal"]["peers"]) == 3
    ids = [p.split("@")[0] for p in config["meta"]["peers"]]
    assert ids == ["1", "2", "3"], "node ids follow pod ordinals: 1..N"
    assert config["meta"]["peers"][0] == f"1@{RELEASE}-strata-0.{RELEASE}-strata-peers.{NAMESPACE}.svc.cluster.local:1228"


def test_services_headless_clients_and_admin():
    docs = manifests()
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    peers = services[f"{RELEASE}-strata-peers"]
    assert peers["spec"]["clusterIP"] == "None" and peers["spec"]["publishNotReadyAddresses"] is True
    (sts,) = by_kind(docs, "StatefulSet")
    assert sts["spec"]["serviceName"] == f"{RELEASE}-strata-peers"
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in container(sts)["ports"]}
    for name, port in [("kafka", 9092), ("mqtt", 1883), ("admin", 8080)]:
        svc = services[f"{RELEASE}-strata-{name}"]
        assert svc["spec"]["ports"][0]["port"] == port and ports[svc["spec"]["ports"][0]["targetPort"]] == port
        assert svc["spec"]["selector"].items() <= pod_labels.items(), f"{name} Service selects no pod"


def test_pod_disruption_budget_covers_the_pods():
    docs = manifests()
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    (sts,) = by_kind(docs, "StatefulSet")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert not by_kind(manifests({"podDisruptionBudget": {"enabled": False}}), "PodDisruptionBudget")


def test_security_context_and_probes():
    docs = manifests()
    (sts,) = by_kind(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    c = container(sts)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    # The uid is the image's USER.
    user = re.search(r"^USER (\d+)", dt.DOCKERFILE.read_text(), re.M).group(1)
    assert pod["securityContext"]["runAsUser"] == int(user) == sc["runAsUser"]
    # Every writable path is a volume (the root filesystem is read-only).
    volumes = {v["name"] for v in pod["volumes"]} | {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert set(mounts) <= volumes
    assert {"/tmp", "/var/lib/strata", "/var/lib/strata/cache"} <= set(mounts.values())
    admin = next(p for p in c["ports"] if p["name"] == "admin")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/health" and get["port"] == "admin", probe
    assert admin["containerPort"] == 8080


def test_realtime_priority_runs_as_root_with_sys_nice_only():
    """`wal.realtimePriority` sets `wal.realtime_priority` and gives the container the one
    capability SCHED_FIFO needs, as root (a non-root exec drops added capabilities); the
    default keeps the unprivileged user and drops everything."""
    default = container(by_kind(manifests(), "StatefulSet")[0])["securityContext"]
    assert "add" not in default["capabilities"] and default["runAsNonRoot"] is True
    assert "realtime_priority" not in strata_toml(manifests())["wal"]
    for values in ({"wal": {"realtimePriority": 10}}, {"topology": "split", "wal": {"realtimePriority": 10}}):
        docs = manifests(values)
        assert strata_toml(docs)["wal"]["realtime_priority"] == 10
        for sts in by_kind(docs, "StatefulSet"):
            sc = container(sts)["securityContext"]
            assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_NICE"]}, sc
            assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False, sc
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, sc


def test_network_policy_keeps_peer_ports_inside_the_release():
    (policy,) = by_kind(manifests(), "NetworkPolicy")
    rules = policy["spec"]["ingress"]
    client = next(r for r in rules if {p["port"] for p in r["ports"]} == {9092, 1883})
    assert "from" not in client, "clients may come from anywhere by default"
    peers = next(r for r in rules if {p["port"] for p in r["ports"]} == {8080, 1228, 1778})
    assert peers["from"] == [{"podSelector": {"matchLabels": policy["spec"]["podSelector"]["matchLabels"]}}]
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    (policy,) = by_kind(manifests({"networkPolicy": {"adminFrom": [monitoring]}}), "NetworkPolicy")
    assert {"from": [monitoring], "ports": [{"port": 8080, "protocol": "TCP"}]} in policy["spec"]["ingress"]
    assert not by_kind(manifests({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


# --- the split topology -------------------------------------------------------------------


def test_split_separates_wal_replicas_from_brokers():
    docs = manifests({"topology": "split", "replicas": 3, "wal": {"replicas": 5}})
    sets = {s["metadata"]["name"]: s for s in by_kind(docs, "StatefulSet")}
    brokers, wal = sets[f"{RELEASE}-strata"], sets[f"{RELEASE}-strata-wal"]
    assert env_of(container(brokers))["NODE_ROLES"] == "meta,broker", "a broker needs the meta role beside it"
    assert env_of(container(wal))["NODE_ROLES"] == "wal"
    assert env_of(container(wal))["NODE_ID_BASE"] == "100"
    assert wal["spec"]["replicas"] == 5 and brokers["spec"]["replicas"] == 3
    assert {t["metadata"]["name"] for t in wal["spec"]["volumeClaimTemplates"]} == {"wal"}
    assert {t["metadata"]["name"] for t in brokers["spec"]["volumeClaimTemplates"]} == {"meta"}
    config = strata_toml(docs)
    assert len(config["meta"]["peers"]) == 3
    assert config["wal"]["peers"][0].startswith(f"{RELEASE}-strata-wal-0.") and len(config["wal"]["peers"]) == 5
    assert len(by_kind(docs, "PodDisruptionBudget")) == 2
    # Client Services select the brokers, never the WAL replicas.
    kafka = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-kafka"))
    assert kafka["spec"]["selector"]["app.kubernetes.io/component"] == "broker"


# --- config and start script against the real binary ---------------------------------------


def test_rendered_config_uses_documented_keys_only():
    keys = dt.documented_config_keys()
    for values in ({}, {"topology": "split"}, {"wal": {"writeQuorum": 2, "realtimePriority": 5}}):
        used = dt.flatten_toml(strata_toml(manifests(values)))
        assert not used - keys, f"strata.toml sets undocumented keys {sorted(used - keys)} for {values}"


def test_start_script_is_valid_bash_with_real_flags():
    known = dt.strata_start_flags()
    (cm,) = by_kind(manifests(), "ConfigMap")
    script = cm["data"]["start.sh"]
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    used = dt.flags_used(script)
    assert {"--config", "--node-id", "--roles", "--advertise"} <= used
    assert not used - known, f"start.sh uses flags `strata start` does not have: {sorted(used - known)}"


def _run_pod(tmp_path, docs, ports, sts, hostname):
    """Runs `sts`'s pod `hostname` through the chart's own start.sh and config, with every
    cluster DNS name swapped for loopback and /var/lib/strata for a temporary directory.
    Returns the process and its log path."""
    (cm,) = by_kind(docs, "ConfigMap")
    data = tmp_path / "data"

    def localize(text: str) -> str:
        text = re.sub(r"[A-Za-z0-9.-]+\.svc\.cluster\.local", "127.0.0.1", text)
        return text.replace("0.0.0.0", "127.0.0.1").replace("/var/lib/strata", str(data))

    (tmp_path / "strata.toml").write_text(localize(cm["data"]["strata.toml"]))
    script = localize(cm["data"]["start.sh"])
    script = script.replace("/etc/strata/strata.toml", str(tmp_path / "strata.toml")).replace("/usr/local/bin/strata", str(dt.strata_bin()))
    (tmp_path / "start.sh").write_text(script)
    env = {k: v for k, v in env_of(container(sts)).items() if v is not None}
    env |= {"PATH": os.environ["PATH"], "HOSTNAME": hostname, "POD_NAMESPACE": NAMESPACE}
    log_path = tmp_path / "strata.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(["bash", str(tmp_path / "start.sh")], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    log.close()
    return proc, log_path


def _wait_healthy(proc, log_path, admin_port, what):
    def healthy():
        assert proc.poll() is None, f"strata exited {proc.returncode}: {log_path.read_text()[-3000:]}"
        try:
            status, body = harness.http_get(f"http://127.0.0.1:{admin_port}/health", timeout=2)
        except OSError:
            return False
        return status == 200 and b'"ok"' in body

    harness.eventually(healthy, timeout=60, what=what)


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_rendered_config_and_start_script_start_a_real_node(tmp_path):
    """A one-pod release rendered on free ports and run by its own start.sh: strata accepts the
    chart's config and flags and serves /health. Only host names and paths are swapped for
    loopback and a temporary directory."""
    if dt.strata_bin() is None:
        pytest.skip("target/debug/strata is not built")
    ports = {name: harness.free_port() for name in ("kafka", "mqtt", "admin", "meta", "wal")}
    docs = manifests({"replicas": 1, "ports": ports, "objectStore": {"url": "memory://"}, "logFormat": "text"})
    pod_host = f"{RELEASE}-strata-0.{RELEASE}-strata-peers.{NAMESPACE}.svc.cluster.local"
    (sts,) = by_kind(docs, "StatefulSet")
    proc, log_path = _run_pod(tmp_path, docs, ports, sts, f"{RELEASE}-strata-0")
    try:
        _wait_healthy(proc, log_path, ports["admin"], "/health of the chart-configured node")
        # The node id came from the pod ordinal (0 -> 1), the roles from NODE_ROLES, the
        # advertised address from the pod's DNS name, and it runs as a cluster member.
        status, body = harness.http_get(f"http://127.0.0.1:{ports['admin']}/v1/cluster", timeout=5)
        assert status == 200, body
        cluster = json.loads(body)
        assert cluster["node_id"] == 1, cluster
        assert sorted(cluster["roles"]) == ["broker", "meta", "wal"], cluster["roles"]
        assert cluster["listeners"]["kafka_advertised"] == f"{pod_host}:{ports['kafka']}", cluster["listeners"]
        assert cluster["listeners"]["meta"] == f"127.0.0.1:{ports['meta']}", cluster["listeners"]
        assert cluster["listeners"]["wal"] == f"127.0.0.1:{ports['wal']}", cluster["listeners"]
        # The node is its own WAL replica: the admin listener reports the replica server.
        status, body = harness.http_get(f"http://127.0.0.1:{ports['admin']}/metrics", timeout=5)
        assert status == 200 and b"\nstrata_wal_replica_streams " in body, body[-2000:]
    finally:
        _stop(proc)


def test_split_topology_wal_pod_passes_its_probes(tmp_path):
    """The split topology's WAL-only pod (role `wal`), run by the chart's start.sh: the
    startup, readiness and liveness probes the chart gives it (GET /health on the admin port)
    pass, and /metrics reports the replica. No broker or meta pod runs: a WAL replica serves
    before metadata answers."""
    if dt.strata_bin() is None:
        pytest.skip("target/debug/strata is not built")
    ports = {name: harness.free_port() for name in ("kafka", "mqtt", "admin", "meta", "wal")}
    docs = manifests({"topology": "split", "replicas": 1, "wal": {"replicas": 1}, "ports": ports,
                      "objectStore": {"url": "memory://"}, "logFormat": "text"})
    (wal_sts,) = [d for d in by_kind(docs, "StatefulSet") if env_of(container(d))["NODE_ROLES"] == "wal"]
    c = container(wal_sts)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "admin"}, c[probe]
    proc, log_path = _run_pod(tmp_path, docs, ports, wal_sts, f"{wal_sts['metadata']['name']}-0")
    try:
        _wait_healthy(proc, log_path, ports["admin"], "/health of the chart's WAL-only pod")
        assert harness.wait_port(ports["wal"], 10, proc), log_path.read_text()[-3000:]
        status, body = harness.http_get(f"http://127.0.0.1:{ports['admin']}/metrics", timeout=5)
        assert status == 200, body
        assert b"\nstrata_wal_replica_streams_failed 0\n" in body, body[-2000:]
        assert b"# TYPE strata_wal_replica_fdatasync_duration_seconds histogram" in body, body[-2000:]
        # A broker's API is not served by a node without the broker role.
        status, _ = harness.http_get(f"http://127.0.0.1:{ports['admin']}/v1/topics", timeout=5)
        assert status == 404
    finally:
        _stop(proc)


# --- checkov on the rendered manifests ---------------------------------------------------


def test_checkov_kubernetes_on_rendered_manifests(tmp_path):
    # checkov's own helm framework shells out to a helm binary, which this machine lacks; the
    # kubernetes framework on the manifests Helm's engine rendered checks the same objects.
    for name, values in {
        "combined": {},
        "split": {"topology": "split"},
        "digest": {"image": {"digest": "sha256:" + "0" * 64}},
    }.items():
        for path, text in render(values).items():
            if path.endswith(".yaml"):
                (tmp_path / f"{name}-{path.rsplit('/', 1)[-1]}").write_text(text)
    report = dt.run_checkov("-d", str(tmp_path), "--framework", "kubernetes")
    dt.assert_checkov_clean(report)
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped <= {"CKV_K8S_15", "CKV_K8S_43"}, f"unexpected skips: {skipped}"
    digest_skips = [c for c in report["results"]["skipped_checks"] if "digest-" in c["file_path"] and c["check_id"] == "CKV_K8S_43"]
    assert not digest_skips, "with image.digest set, the digest check must run, not be skipped"
