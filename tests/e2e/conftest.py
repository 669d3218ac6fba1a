"""Fixtures for the end-to-end suite. The harness itself lives in harness.py.

- `strata_bin`: the binary under test (env STRATA_BIN, else target/debug/strata).
- `broker_factory`: make Brokers, each with its own ports and tmp dirs; all of them
  are stopped at the end of the test, and their log tails are printed (pytest shows
  them for failed tests).
- `broker`: one started broker with defaults.
- `seaweed`: one SeaweedFS for the whole session, started on first use;
  `s3_bucket` gives each test its own fresh bucket in it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import harness
from harness import Broker, SeaweedFS


@pytest.fixture(scope="session")
def strata_bin() -> str:
    path = Path(os.environ.get("STRATA_BIN") or harness.debug_binary("strata"))
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"strata binary not found at {path}: build it (cargo build -p strata-broker) "
                    f"or set STRATA_BIN", pytrace=False)
    return str(path)


@pytest.fixture
def broker_factory(strata_bin, tmp_path):
    made: list[Broker] = []

    def make(name: str | None = None, start: bool = True, **kw) -> Broker:
        b = Broker(strata_bin, tmp_path / (name or f"broker{len(made)}"), **kw)
        made.append(b)
        if start:
            b.start()
        return b

    yield make
    for b in made:
        if b.alive():
            rc = b.stop(timeout=30, check=False)
            if rc is None or b.alive():
                b.kill9()
        print(f"\n--- {b.workdir.name}: kafka {b.bootstrap}, admin {b.admin_url}, starts {b.starts}, "
              f"last exit {b.last_returncode}; stderr tail ---\n{b.stderr_tail(40)}")


@pytest.fixture
def broker(broker_factory) -> Broker:
    return broker_factory()


@pytest.fixture(scope="module")
def mbroker(strata_bin, tmp_path_factory, request) -> Broker:
    """One default broker shared by a whole test module (for tests that each use topics of
    their own and never restart it)."""
    name = request.module.__name__.split("_")[0]
    b = Broker(strata_bin, tmp_path_factory.mktemp(name))
    b.start()
    yield b
    if b.alive():
        if b.stop(timeout=30, check=False) is None or b.alive():
            b.kill9()
    print(f"\n--- {name} broker stderr tail ---\n{b.stderr_tail(40)}")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    s = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    try:
        s.start()
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"could not start SeaweedFS: {e}", pytrace=False)
    yield s
    s.stop()


@pytest.fixture
def s3_bucket(seaweed) -> str:
    return seaweed.new_bucket()


@pytest.fixture(scope="session")
def kcat_ok():
    try:
        out = subprocess.run([harness.kcat_bin(), "-V"], capture_output=True, timeout=10)
    except (RuntimeError, OSError) as e:
        pytest.fail(str(e), pytrace=False)
    return out.stdout.decode(errors="replace")
