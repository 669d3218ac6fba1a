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
cargo build --release -p strata-broker
BIN=target/release/strata
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
if [ -n "$TANSU_BIN" ] && [ -x "$TANSU_BIN" ]; then
  echo "== tansu (memory storage)"
  "$TANSU_BIN" broker --listener-url tcp://127.0.0.1:29093 --advertised-listener-url tcp://127.0.0.1:29093 \
      --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 &
  pids+=($!)
  wait_port 29093
  "$TANSU_BIN" topic create bench --partitions 1 --broker tcp://127.0.0.1:29093 >/dev/null 2>&1 || true
  python3 bench/kafka_load.py --bootstrap 127.0.0.1:29093 --records "$RECORDS" --size "$SIZE" | tee "$OUT/tansu.json"
else
  echo "== tansu not found (set TANSU_BIN); skipping the peer run"
  rm -f "$OUT/tansu.json"
fi
python3 bench/report.py "$OUT"
