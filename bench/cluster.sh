#!/usr/bin/env bash
# Replicated-WAL benchmark (issue 3): a 3-broker cluster (meta + broker roles) writing to 3 WAL
# replicas (R=3, W=2), all separate processes on 127.0.0.1, next to the same machine's disk
# probe measured in the same run. acks=all produce: throughput and latency at saturation,
# latency at a moderate rate, and one-in-flight latency (p50/p99/p999).
# Usage: bench/cluster.sh [records] [size] [moderate records/s]
# The WAL replicas' and brokers' own histograms (group commits, quorum commits, Produce
# requests) are scraped around the moderate and one-in-flight phases and reported next to the
# client's percentiles. WAL_WRAP prefixes the replicas' command (e.g. WAL_WRAP="chrt -f 10").
# The moderate rate defaults to 1,000 records/s: with linger.ms=0 each record is one WAL entry,
# so every replica flushes up to that many times a second, and here all three share one disk
# (2,000/s would be 6,000 fdatasyncs/s, more than this machine's disk does; BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${1:-200000}
SIZE=${2:-1024}
RATE=${3:-1000}
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
wait_port() { for _ in $(seq 1 900); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; tail -n 20 "$WORK"/*.log >&2; return 1; }

echo "== disk probe (the WAL replicas' device)"
$BIN bench disk --dir "$WORK/disk" --seconds 5 | tee "$OUT/disk.json"

echo "== 3 WAL replicas"
WAL_PEERS=""
for i in 1 2 3; do
  port=$((27780 + i))
  ${WAL_WRAP:-} $BIN start --roles wal --node-id $((100 + i)) --data-dir "$WORK/wal$i" --wal-listen "127.0.0.1:$port" \
      --admin-listen "127.0.0.1:$((28180 + i))" >"$WORK/wal$i.log" 2>&1 &
  pids+=($!)
  WAL_PEERS="${WAL_PEERS:+$WAL_PEERS,}127.0.0.1:$port"
done
for i in 1 2 3; do wait_port $((27780 + i)); done

echo "== 3 brokers (meta + broker)"
META_PEERS="1@127.0.0.1:21281,2@127.0.0.1:21282,3@127.0.0.1:21283"
BOOT=""
for i in 1 2 3; do
  $BIN start --roles meta,broker --node-id $i --data-dir "$WORK/node$i" --object-store "fs://$WORK/objects" \
      --kafka-listen "127.0.0.1:2909$i" --admin-listen "127.0.0.1:2808$i" --mqtt-listen "127.0.0.1:2188$i" \
      --meta-listen "127.0.0.1:2128$i" --meta-peers "$META_PEERS" --wal-peers "$WAL_PEERS" >"$WORK/node$i.log" 2>&1 &
  pids+=($!)
  BOOT="${BOOT:+$BOOT,}127.0.0.1:2909$i"
done
for i in 1 2 3; do wait_port "2909$i"; done
sleep 2
python3 bench/kafka_load.py --bootstrap "$BOOT" --records "$RECORDS" --size "$SIZE" --partitions 3 \
    --rate "$RATE" --create --replica-metrics 127.0.0.1:28181,127.0.0.1:28182,127.0.0.1:28183 \
    --broker-metrics 127.0.0.1:28081,127.0.0.1:28082,127.0.0.1:28083 \
    | tee "$OUT/strata-r3.json"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
d = json.load(open(f"{out}/disk.json")); s = json.load(open(f"{out}/strata-r3.json"))
fp99 = d["fsync_4k_p99_us"] / 1000
print("\n| acks=all, R=3 W=2, loopback | p50 ms | p99 ms | p999 ms | p99 − fdatasync p99 |")
print("|---|---|---|---|---|")
for name, k in [("one in flight", "latency_ms"), (f"moderate ({s['moderate_rate']} rec/s)", "moderate_latency_ms"),
                ("saturating", "saturated_latency_ms")]:
    p50, p99, p999 = s.get(f"{k}_p50"), s.get(f"{k}_p99"), s.get(f"{k}_p999")
    if p99 is None:
        continue
    print(f"| {name} | {p50:.3f} | {p99:.3f} | {p999:.3f} | {p99 - fp99:+.3f} ms |")
ss = s.get("server_side", {})
if ss:
    # Histogram buckets double from 50 µs, so server-side percentiles are bucket bounds.
    print("\n| same phases, server side (bucket bounds) | count | p50 ≤ ms | p99 ≤ ms | p999 ≤ ms | > 1.6 ms |")
    print("|---|---|---|---|---|---|")
    for name, k in [("one in flight", "one_in_flight"), (f"moderate ({s['moderate_rate']} rec/s)", "moderate")]:
        for what, hk in [("replicas' group commits (write + fdatasync)", "replica_group_commit"),
                         ("brokers' quorum commits", "broker_quorum_commit"),
                         ("brokers' Produce requests", "broker_produce_request")]:
            r = ss.get(k, {}).get(hk)
            if r and r.get("count"):
                print(f"| {name}: {what} | {r['count']} | {r['p50_le_ms']:g} | {r['p99_le_ms']:g} | "
                      f"{r['p999_le_ms']:g} | {100 * r['share_over_1_6_ms']:.2f} % |")
print(f"\nfdatasync p99 {fp99:.3f} ms (same run); saturating produce {s['produce_mb_per_s']:.1f} MB/s "
      f"({s['produce_records_per_s']:.0f} rec/s of {s['record_bytes']} B), errors {s['errors']}")
PY
