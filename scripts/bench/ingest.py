#!/usr/bin/env python3
"""Ingest throughput, side by side in one run: the `kernelize` CLI against chromadb and
lancedb (in-process, via ingest_peers.py), on the same JSONL vectors, batches of 1000.

    python3 scripts/bench/ingest.py [--vectors data/vectors-384.jsonl] [--n 100000] [--runs 3]

kernelize: `kernelize upsert` with durability `always` (fsync of the WAL before each
batch is acknowledged), timed end to end as a process (open, parse, validate, WAL, memtable,
flushes to segments), into a fresh data directory per run. Prints a table with ratios and
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors", default=os.path.join(ROOT, "data/vectors-384.jsonl"))
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--peers", default="chromadb,lancedb")
    ap.add_argument("--durability", default="always")
    args = ap.parse_args()

    if not os.path.exists(args.vectors):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts/gen-vectors.py"), "--n", str(args.n),
                        "--dim", "384", "--out", args.vectors], check=True)
    n = sum(1 for _ in open(args.vectors, "rb"))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/kz-target"))
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "kernelize"], cwd=ROOT, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": target})
    kz = os.path.join(target, "release", "kernelize")

    times = []
    for run in range(args.runs):
        d = tempfile.mkdtemp(prefix="kz-ingest-", dir=os.path.join(ROOT, "data"))
        try:
            subprocess.run([kz, "--data-dir", d, "collection", "create", "bench", "--dim", "384"], check=True,
                           stdout=subprocess.DEVNULL)
            t = time.perf_counter()
            out = subprocess.run([kz, "--data-dir", d, "--durability", args.durability, "upsert", "-c", "bench",
                                  args.vectors, "--batch", str(args.batch)], check=True, capture_output=True,
                                 text=True).stdout
            times.append(time.perf_counter() - t)
            print(f"kernelize run {run + 1}: {n / times[-1]:,.0f} records/s ({out.strip()})", file=sys.stderr)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    ours = n / statistics.median(times)

    peers_json = os.path.join(tempfile.mkdtemp(), "peers.jsonl")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts/bench/ingest_peers.py"), "--vectors", args.vectors,
                    "--batch", str(args.batch), "--runs", str(args.runs), "--peers", args.peers,
                    "--json-out", peers_json], check=True, stdout=sys.stderr)
    peers = [json.loads(line) for line in open(peers_json)]

    print(f"\ningest of {n:,} x 384-dim vectors from JSONL, batches of {args.batch}, median of {args.runs} runs")
    print(f"{'system':<12} {'records/s':>12} {'kernelize / system':>20}")
    print(f"{'kernelize':<12} {ours:>12,.0f} {'1.00':>20}")
    for p in peers:
        print(f"{p['peer']:<12} {p['records_per_s']:>12,.0f} {ours / p['records_per_s']:>20.1f}")
    print(json.dumps({"bench": "ingest", "n": n, "batch": args.batch, "durability": args.durability,
                      "kernelize_records_per_s": ours, "kernelize_runs_s": times,
                      "peers": {p["peer"]: p["records_per_s"] for p in peers}}))


if __name__ == "__main__":
    main()
