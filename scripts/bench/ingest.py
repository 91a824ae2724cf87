#!/usr/bin/env python3
"""Ingest throughput, side by side in one run: the `kernelize` CLI against chromadb and
lancedb (in-process, via ingest_peers.py), on the same JSONL vectors, batches of 1000.

    python3 scripts/bench/ingest.py [--vectors data/vectors-384.jsonl] [--n 100000] [--runs 3]

kernelize: `kernelize upsert` with durability `always` (fsync of the WAL before each
batch is acknowledged), timed end to end as a process (open, parse, validate, WAL, memtable,
flushes to segments), into a fresh data directory per run. Prints a table with ratios and
one JSON line.

    python3 scripts/bench/ingest.py --input npy --durability always,buffered

reads the same vectors from the `.npy` gen-vectors.py writes beside the JSONL (ids from its
`.ids.txt`): kernelize `ingest --format npy --ids-file …`, the peers `numpy.load` then
batches of 1,000 slices (lancedb as Arrow tables to `table.add`). Ratios are given against
the peers' whole load (file read + calls) and against their write calls alone.
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

from cpuinfo import cpu_model  # noqa: E402  (scripts/bench, this script's folder)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors", default=os.path.join(ROOT, "data/vectors-384.jsonl"))
    ap.add_argument("--input", choices=["jsonl", "npy"], default="jsonl",
                    help="read the JSONL, or the .npy (+ .ids.txt) written beside it")
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--peers", default="chromadb,lancedb")
    ap.add_argument("--durability", default="always", help="comma list: always, buffered")
    args = ap.parse_args()
    if not os.path.exists(args.vectors):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts/gen-vectors.py"), "--n", str(args.n),
                        "--dim", "384", "--out", args.vectors], check=True)
    source = args.vectors
    if args.input == "npy":
        source = args.vectors[: -len(".jsonl")] + ".npy"
    n = sum(1 for _ in open(args.vectors, "rb"))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/kz-target"))
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "kernelize"], cwd=ROOT, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": target})
    kz = os.path.join(target, "release", "kernelize")
    with open(source, "rb") as f:  # page cache, as the peers get it
        while f.read(1 << 24):
            pass

    ours = {}
    for durability in [d.strip() for d in args.durability.split(",") if d.strip()]:
        times = []
        for run in range(args.runs):
            d = tempfile.mkdtemp(prefix="kz-ingest-", dir=os.path.join(ROOT, "data"))
            try:
                subprocess.run([kz, "--data-dir", d, "collection", "create", "bench", "--dim", "384"], check=True,
                               stdout=subprocess.DEVNULL)
                if args.input == "npy":
                    cmd = [kz, "--data-dir", d, "--durability", durability, "ingest", "-c", "bench", source,
                           "--format", "npy", "--ids-file", source[: -len(".npy")] + ".ids.txt",
                           "--batch", str(args.batch)]
                else:
                    cmd = [kz, "--data-dir", d, "--durability", durability, "upsert", "-c", "bench", source,
                           "--batch", str(args.batch)]
                t = time.perf_counter()
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                times.append(time.perf_counter() - t)
                last = out.strip().splitlines()[-1] if out.strip() else ""
                print(f"kernelize {durability} run {run + 1}: {n / times[-1]:,.0f} records/s ({last[:200]})",
                      file=sys.stderr)
            finally:
                shutil.rmtree(d, ignore_errors=True)
        ours[durability] = (n / statistics.median(times), times)

    peers_json = os.path.join(tempfile.mkdtemp(), "peers.jsonl")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts/bench/ingest_peers.py"), "--vectors", source,
                    "--batch", str(args.batch), "--runs", str(args.runs), "--peers", args.peers,
                    "--json-out", peers_json], check=True, stdout=sys.stderr)
    peers = [json.loads(line) for line in open(peers_json)]

    print(f"\ningest of {n:,} x 384-dim vectors from {args.input}, batches of {args.batch}, "
          f"median of {args.runs} runs; CPU {cpu_model()}")
    print(f"{'system':<24} {'records/s':>12} {'write calls only':>17}")
    for durability, (rate, _) in ours.items():
        print(f"{'kernelize ' + durability:<24} {rate:>12,.0f} {'(whole process)':>17}")
    for p in peers:
        print(f"{p['peer'] + ' (no fsync)':<24} {p['records_per_s']:>12,.0f} {p['ingest_records_per_s']:>17,.0f}")
    print("\nkernelize / system (against the whole load; against the write calls only)")
    for durability, (rate, _) in ours.items():
        cells = ", ".join(f"{p['peer']} {rate / p['records_per_s']:.2f}x; {rate / p['ingest_records_per_s']:.2f}x"
                          for p in peers)
        print(f"  kernelize {durability}: {cells}")
    print(json.dumps({"bench": "ingest", "input": args.input, "n": n, "batch": args.batch, "cpu": cpu_model(),
                      "kernelize": {d: {"records_per_s": r, "runs_s": t} for d, (r, t) in ours.items()},
                      "peers": {p["peer"]: {"records_per_s": p["records_per_s"],
                                            "write_calls_records_per_s": p["ingest_records_per_s"]}
                                for p in peers}}))


if __name__ == "__main__":
    main()
