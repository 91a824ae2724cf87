#!/usr/bin/env python3
"""Render the side-by-side ANN results (data/ann-results/{kernelize,peers}.jsonl, written by
scripts/bench/ann.sh) as Markdown tables for BENCHMARKS.md: per thread count, recall@10 and
QPS per system over the ef sweep; build time, index bytes and vector memory; and, at the
smallest ef where each system reaches recall@10 >= 0.95, the QPS ratios against the peers.

    python3 scripts/bench/ann_table.py [--dir data/ann-results]
"""
import argparse
import json
from pathlib import Path


def load(path):
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="data/ann-results")
    ap.add_argument("--target", type=float, default=0.95)
    a = ap.parse_args()
    ours = [r for r in load(Path(a.dir) / "kernelize.jsonl") if r.get("bench") == "ann"]
    filtered = [r for r in load(Path(a.dir) / "kernelize.jsonl") if r.get("bench") == "ann-filtered"]
    peers = [r for r in load(Path(a.dir) / "peers.jsonl") if r.get("bench") == "ann"]
    rows = ours + peers
    systems = list(dict.fromkeys(r["system"] for r in rows))
    threads = sorted({r["threads"] for r in rows})
    efs = sorted({r["ef"] for r in rows})

    for t in threads:
        print(f"\n#### {t} thread{'s' if t > 1 else ''}: recall@10 / QPS by ef\n")
        print("| ef | " + " | ".join(systems) + " |")
        print("|---:|" + "---:|" * len(systems))
        for ef in efs:
            cells = []
            for s in systems:
                r = next((r for r in rows if r["system"] == s and r["threads"] == t and r["ef"] == ef), None)
                cells.append(f"{r['recall_at_10']:.4f} / {r['qps']:,.0f}" if r else "")
            print(f"| {ef} | " + " | ".join(cells) + " |")

    print("\n#### Build, size, memory\n")
    print("| system | build 1 thr (s) | build 2 thr (s) | graph only 1 / 2 thr (s) | index file (MB) | vectors the walk reads (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for s in systems:
        b = {t: next((r for r in rows if r["system"] == s and r["threads"] == t), None) for t in threads}
        first = next(r for r in rows if r["system"] == s)
        mem = first.get("memory", {}).get("vectors")
        builds = " | ".join(f"{b[t]['build_secs']:.1f}" if b[t] else "" for t in threads)
        graph = " / ".join(f"{b[t]['graph_secs']:.1f}" if b[t] and b[t].get("graph_secs") else "–" for t in threads)
        vec = f"{mem / 1e6:.1f}" if mem else "(inside the index file)"
        print(f"| {s} | {builds} | {graph} | {first['index_bytes'] / 1e6:.1f} | {vec} |")

    print(f"\n#### At the smallest ef reaching recall@10 >= {a.target}\n")
    print("| threads | system | ef | recall@10 | QPS | QPS / hnswlib | QPS / faiss-hnsw |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for t in threads:
        best = {}
        for s in systems:
            ok = sorted((r for r in rows if r["system"] == s and r["threads"] == t and r["recall_at_10"] >= a.target),
                        key=lambda r: r["ef"])
            if ok:
                best[s] = ok[0]
        for s, r in best.items():
            ratios = []
            for p in ("hnswlib", "faiss-hnsw"):
                ratios.append(f"{r['qps'] / best[p]['qps']:.2f}" if p in best else "")
            print(f"| {t} | {s} | {r['ef']} | {r['recall_at_10']:.4f} | {r['qps']:,.0f} | " + " | ".join(ratios) + " |")

    if filtered:
        print("\n#### Filtered (1 thread, collection search path, records decoded)\n")
        print("| filter | selectivity | ef | plan | recall@10 vs exact filtered | QPS |")
        print("|---|---:|---:|---|---:|---:|")
        for r in filtered:
            print(f"| `{r['filter']}` | {r['selectivity'] * 100:.2f}% | {r['ef']} | {r.get('plan', 'auto')} | "
                  f"{r['recall_at_10']:.4f} | {r['qps']:,.0f} |")


if __name__ == "__main__":
    main()
