#!/usr/bin/env python3
"""Markdown tables for BENCHMARKS.md from scripts/bench/kernel.sh's results.

    python3 scripts/bench/kernel_table.py data/kernel-results

Reads <dir>/*.json (kernel manifests from `kernelize kernel inspect --json`),
<dir>/*.bench.txt (`kernelize bench kernel`) and <dir>/peers.jsonl
(scripts/bench/kernel_peers.py). Prints: the kernels (file, vector part, ratio to
the raw bytes, recall@10 at the default and over the probe sweep) and one
size-vs-recall table where every system's *vector index* bytes (for a kernel:
codes, factors, centroids, rotation, lists or graph; text, ids and metadata
apart) stand next to recall@10 at the same probes.
"""

import glob
import json
import os
import sys

VECTOR_SECTIONS = ("rabitq.", "int8.", "vectors", "centroids", "ivf.", "hnsw.")


def mb(b):
    return f"{b / 1e6:.1f}"


def main(d):
    kernels = []
    for p in sorted(glob.glob(os.path.join(d, "*.json"))):
        with open(p) as f:
            m = json.load(f)
        name = os.path.basename(p)[:-5]
        vec = sum(s["len"] for s in m["sections"] if s["name"].startswith(VECTOR_SECTIONS))
        bench = os.path.join(d, name + ".bench.txt")
        first = q50 = None
        if os.path.exists(bench):
            for line in open(bench):
                if line.startswith("{"):
                    j = json.loads(line)
                    first, q50 = j["first_query_ms_p50"], j["query_ms_p50"]
        kernels.append((name, m, vec, first, q50))
    print("| kernel | rows | file MB | raw MB | raw / file | vector part MB (B/row) | default probe | recall@10 | open→first query ms | query ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, m, vec, first, q50 in kernels:
        r = m["report"]
        e = r["eval"]
        print(
            f"| {name} | {m['rows']:,} | {mb(m['file_bytes'])} | {mb(r['raw']['total'])} | "
            f"{r['raw']['total'] / m['file_bytes']:.2f} | {mb(vec)} ({vec / m['rows']:.0f}) | {e['param']} {e['chosen']} | "
            f"{e['recall']:.4f} | {first if first is None else f'{first:.1f}'} | {q50 if q50 is None else f'{q50:.2f}'} |"
        )
    probes = [8, 16, 32, 64, 128, 256, 512, 686]
    print()
    print("Size vs recall@10 (vector index bytes; recall at nprobe, or at ef for graphs):")
    print()
    print("| system | setting | vector index MB | B/vector | " + " | ".join(f"@{p}" for p in probes) + " |")
    print("|---|---|---|---|" + "---|" * len(probes))
    for name, m, vec, _, _ in kernels:
        curve = dict(m["report"]["eval"]["curve"])
        cells = [f"{curve[p]:.3f}" if p in curve else "" for p in probes]
        if m["index"]["kind"] == "hnsw":
            cells = [", ".join(f"ef {p}: {r:.3f}" for p, r in m["report"]["eval"]["curve"])] + [""] * (len(probes) - 1)
        print(f"| kernelize | {name} | {mb(vec)} | {vec / m['rows']:.0f} | " + " | ".join(cells) + " |")
    peers = os.path.join(d, "peers.jsonl")
    if os.path.exists(peers):
        rows = {}
        for line in open(peers):
            j = json.loads(line)
            key = (j["system"], j["setting"])
            rows.setdefault(key, {"bytes": j["index_bytes"], "n": j["n"], "r": {}, "floats": j.get("floats_kept")})
            rows[key]["r"][j["nprobe"]] = j["recall_at_10"]
        for (system, setting), v in rows.items():
            cells = [f"{v['r'][p]:.3f}" if p in v["r"] else "" for p in probes]
            note = " (+ float vectors in the table)" if v["floats"] else ""
            print(f"| {system}{note} | {setting} | {mb(v['bytes'])} | {v['bytes'] / v['n']:.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/kernel-results")
