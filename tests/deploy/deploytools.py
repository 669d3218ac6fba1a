"""Shared helpers of the deployment checks: paths, tools, the strata CLI's flags, the documented
config keys. Static checks only: nothing here starts a cloud resource, a container or a cluster."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "strata"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"

# checkov lives in its own virtualenv (tests/run.sh makes it): its fork of python-hcl2 installs
# the same `hcl2` package as python-hcl2, so the two cannot share one environment.
CHECKOV_VENV = Path(os.environ.get("STRATA_DEPLOY_TOOLS", Path.home() / ".cache" / "strata-deploy-tools"))


def checkov_bin() -> str | None:
    explicit = os.environ.get("CHECKOV")
    if explicit:
        return explicit
    candidate = CHECKOV_VENV / "venv" / "bin" / "checkov"
    if candidate.exists():
        return str(candidate)
    return shutil.which("checkov")


def require_checkov() -> str:
    path = checkov_bin()
    if path is None:
        pytest.skip("checkov is not installed (tests/run.sh installs it into ~/.cache/strata-deploy-tools/venv)")
    return path


def run_checkov(*args: str) -> dict:
    """Runs checkov offline (no platform calls) and returns its JSON report, one framework."""
    exe = require_checkov()
    proc = subprocess.run(
        [exe, "--skip-download", "--compact", "-o", "json", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    out = proc.stdout.strip()
    assert out, f"checkov printed no report (exit {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(out)
    if isinstance(report, list):
        assert len(report) == 1, f"one framework per run expected, got {[r.get('check_type') for r in report]}"
        report = report[0]
    return report


def assert_checkov_clean(report: dict) -> None:
    """No failed check, no parsing error, and every skip carries a real reason."""
    results = report.get("results", {})
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range']}): {c['check_name']}"
        for c in results.get("failed_checks", [])
    ]
    assert not failed, "checkov failures:\n" + "\n".join(failed)
    assert not results.get("parsing_errors"), f"checkov could not parse: {results['parsing_errors']}"
    for c in results.get("skipped_checks", []):
        reason = (c.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason.split()) >= 5, f"skip of {c['check_id']} on {c['resource']} has no real reason: {reason!r}"
    assert report["summary"]["passed"] > 0, "checkov passed no check: did it scan anything?"


def strata_bin() -> Path | None:
    explicit = os.environ.get("STRATA_BIN")
    if explicit and Path(explicit).exists():
        return Path(explicit)
    built = ROOT / "target" / "debug" / "strata"
    return built if built.exists() else None


def strata_start_flags() -> set[str]:
    """The long flags `strata start` accepts, read from the binary's own help."""
    exe = strata_bin()
    if exe is None:
        pytest.skip("target/debug/strata is not built: cannot read `strata start --help`")
    out = subprocess.run([str(exe), "start", "--help"], capture_output=True, text=True, timeout=30, check=True).stdout
    flags = set(re.findall(r"(--[a-z][a-z0-9-]*)", out))
    assert "--object-store" in flags and "--meta-peers" in flags, out
    return flags


def flags_used(text: str) -> set[str]:
    """Long flags passed to `strata start` in a script or unit (`--x value` or `--x=value`)."""
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))


def documented_config_keys() -> set[str]:
    """Dotted keys of docs/config.md's table (itself tested against broker/src/config.rs)."""
    text = (ROOT / "docs" / "config.md").read_text()
    keys = set(re.findall(r"^\| `([a-z_.]+)` \|", text, re.M))
    assert "object_store" in keys and "wal.peers" in keys, "docs/config.md table not found"
    return keys


def flatten_toml(table: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in table.items():
        if isinstance(v, dict):
            keys |= flatten_toml(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


# Variables with the STRATA_ prefix that are not config keys on purpose.
NON_CONFIG_ENV = {"STRATA_HEALTH_PORT", "STRATA_LOG", "STRATA_IMAGE", "STRATA_BUCKET"}


def env_to_key(name: str, keys: set[str]) -> str | None:
    """`STRATA_WAL_BYTES_MAX` -> `wal.bytes_max` when that key is documented."""
    rest = name.removeprefix("STRATA_").lower()
    for key in keys:
        if key.replace(".", "_") == rest and (("." not in key) or rest.startswith(key.split(".")[0] + "_")):
            return key
    return None
