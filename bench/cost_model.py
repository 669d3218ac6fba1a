#!/usr/bin/env python3
"""Monthly AWS cost of ingesting a steady rate into StrataMQ, from measured request counts.

The request counts per GiB are measurements (BENCHMARKS.md: `bench/replay.py` for the WAL mode,
`bench/direct.py` for the direct mode); the prices are list prices passed as flags, so the model
can be re-run with other regions or newer prices. Compute (instances, NVMe) is not modelled: it
is the same order for every mode and is not measured here.

    python3 bench/cost_model.py                      # 1 GiB/s, 7 days retention, us-east-1 prices
    python3 bench/cost_model.py --gib-per-s 0.1 --retention-days 30 --json
"""
from __future__ import annotations

import argparse
import json

SECONDS_PER_MONTH = 30 * 24 * 3600
GB_PER_GIB = 1.073741824

# PUT-class requests per GiB ingested, measured (BENCHMARKS.md, 2026-11-22).
MEASURED_PUT_PER_GIB = {
    "wal, 64 MiB upload objects (flush_bytes_max = 64 MiB)": 9.5,
    "wal, 8 MiB upload objects (default)": 98.9,
    "direct, 4 MiB objects (direct.batch_bytes_max default)": 256.0,
}
# GET requests per GiB read back from object storage with a cold cache, measured.
MEASURED_GET_PER_GIB = {"wal (compacted segments)": 528.0, "direct (uncompacted objects)": 1576.0}


def model(a: argparse.Namespace) -> dict:
    gib_month = a.gib_per_s * SECONDS_PER_MONTH
    stored_gb = a.gib_per_s * a.retention_days * 86400 * GB_PER_GIB
    storage = stored_gb * a.storage_per_gb_month
    rows = []
    for mode, put_per_gib in MEASURED_PUT_PER_GIB.items():
        puts = put_per_gib * gib_month
        put_cost = puts / 1000 * a.put_per_1000
        # The WAL replicates every byte to R replicas; with the broker on one of them and the
        # others in other zones, R - 1 copies cross a zone boundary (paid on both sides).
        cross_az_gb = (a.wal_replicas - 1) * gib_month * GB_PER_GIB if mode.startswith("wal") else 0.0
        cross_az = cross_az_gb * a.cross_az_per_gb * 2
        rows.append({
            "mode": mode,
            "put_per_gib": put_per_gib,
            "puts_per_month": round(puts),
            "put_usd": round(put_cost, 2),
            "wal_cross_az_gb": round(cross_az_gb),
            "wal_cross_az_usd": round(cross_az, 2),
            "storage_usd": round(storage, 2),
            "total_usd": round(put_cost + cross_az + storage, 2),
        })
    replay = {
        mode: round(get_per_gib / 1000 * a.get_per_1000, 6)
        for mode, get_per_gib in MEASURED_GET_PER_GIB.items()
    }
    return {
        "inputs": vars(a) | {"gib_ingested_per_month": gib_month, "stored_gb": round(stored_gb)},
        "monthly": rows,
        "replay_usd_per_gib_read_from_store": replay,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gib-per-s", type=float, default=1.0)
    p.add_argument("--retention-days", type=float, default=7.0)
    p.add_argument("--wal-replicas", type=int, default=3)
    # us-east-1 list prices (S3 Standard; EC2 data transfer between zones).
    p.add_argument("--put-per-1000", type=float, default=0.005)
    p.add_argument("--get-per-1000", type=float, default=0.0004)
    p.add_argument("--storage-per-gb-month", type=float, default=0.023)
    p.add_argument("--cross-az-per-gb", type=float, default=0.01, help="each direction")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    m = model(a)
    if a.json:
        print(json.dumps(m, indent=2))
        return
    print(f"{a.gib_per_s} GiB/s ingested, {a.retention_days:g} days retention "
          f"({m['inputs']['stored_gb']:,} GB stored), prices: PUT ${a.put_per_1000}/1000, "
          f"GET ${a.get_per_1000}/1000, storage ${a.storage_per_gb_month}/GB-month, "
          f"cross-zone ${a.cross_az_per_gb}/GB each way\n")
    print("| mode | PUT/GiB (measured) | PUT $/month | WAL cross-zone $/month | storage $/month | total $/month |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in m["monthly"]:
        print(f"| {r['mode']} | {r['put_per_gib']:g} | {r['put_usd']:,.0f} | {r['wal_cross_az_usd']:,.0f} "
              f"| {r['storage_usd']:,.0f} | {r['total_usd']:,.0f} |")
    print()
    for mode, usd in m["replay_usd_per_gib_read_from_store"].items():
        print(f"replay from the store, {mode}: ${usd} per GiB read "
              f"({MEASURED_GET_PER_GIB[mode]:g} GET/GiB measured)")


if __name__ == "__main__":
    main()
