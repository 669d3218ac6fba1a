#!/usr/bin/env bash
# Side-by-side benchmark: this machine's disk (fdatasync p99, fsynced sequential MB/s), StrataMQ,
# and Tansu when available (TANSU_BIN, built once per machine with
# `cargo install tansu --features dynostore`; never built here or in CI).
# Loopback only; every phase bounded in time. Usage: bench/run.sh [records] [size]
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${1:-200000}
SIZE=${2:-1024}
OUT=bench/results
mkdir -p "$OUT"
python3 -m pip install -q confluent-kafka >/dev/null
if [ -z "${STRATA_BIN:-}" ]; then
  cargo build --release -p strata-broker
fi
BIN=${STRATA_BIN:-target/release/strata}
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

echo "== disk probe (the WAL's device)"
$BIN bench disk --dir "$WORK/disk" --seconds 5 | tee "$OUT/disk.json"

echo "== strata"
$BIN start --data-dir "$WORK/strata" --kafka-listen 127.0.0.1:29092 --admin-listen 127.0.0.1:28080 >"$WORK/strata.log" 2>&1 &
pids+=($!)
wait_port 29092
python3 bench/kafka_load.py --bootstrap 127.0.0.1:29092 --records "$RECORDS" --size "$SIZE" --create | tee "$OUT/strata.json"

TANSU_BIN=${TANSU_BIN:-$(command -v tansu || true)}
run_tansu() { # name storage-url port [env...]
  local name=$1 storage=$2 port=$3; shift 3
  echo "== tansu ($name)"
  env "$@" "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "$storage" >"$WORK/tansu-$name.log" 2>&1 &
  pids+=($!)
  wait_port "$port"
  "$TANSU_BIN" topic create bench --partitions 1 --broker "tcp://127.0.0.1:$port" >/dev/null 2>&1 || true
  python3 bench/kafka_load.py --bootstrap "127.0.0.1:$port" --records "$RECORDS" --size "$SIZE" | tee "$OUT/tansu-$name.json"
}
if [ -n "$TANSU_BIN" ] && [ -x "$TANSU_BIN" ]; then
  run_tansu memory memory://tansu/ 29093
  if command -v weed >/dev/null; then
    echo '{"identities":[{"name":"a","credentials":[{"accessKey":"AK","secretKey":"SK"}],"actions":["Admin","Read","List","Tagging","Write"]}]}' >"$WORK/s3.json"
    mkdir -p "$WORK/weed"
    weed mini -dir="$WORK/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port=28333 -s3.config="$WORK/s3.json" -bucket=tansu \
        -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false >"$WORK/weed.log" 2>&1 &
    pids+=($!)
    wait_port 28333; sleep 3
    run_tansu s3 s3://tansu/ 29094 AWS_ENDPOINT=http://127.0.0.1:28333 AWS_ALLOW_HTTP=true \
        AWS_ACCESS_KEY_ID=AK AWS_SECRET_ACCESS_KEY=SK AWS_DEFAULT_REGION=us-east-1
  fi
else
  echo "== tansu not found (set TANSU_BIN); skipping the peer runs"
fi
rm -f "$OUT"/tansu.json
python3 bench/mqtt_peers.py --bin "$BIN" || echo "== mqtt peers skipped or failed (needs mosquitto and rumqttd: see BENCHMARKS.md)"
python3 bench/report.py "$OUT"
