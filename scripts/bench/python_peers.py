#!/usr/bin/env python3
"""The Python package against its peers, from Python, in one run, on the same data
(`kernelize bench ann --export-only`: the WordNet glosses embedded with MiniLM) and the
same threads:

1. batch search of the held-out queries: `kernelize` (`Collection.search`, one call with
   every query) vs `hnswlib` (`knn_query`) and FAISS (`IndexHNSWFlat.search`), all HNSW
   with M = 16, efConstruction = 200, k = 10, over an ef sweep; recall@10 against the
   exact ground truth; the figure per system is the best QPS at recall@10 >= 0.95.
   kernelize runs once per index kind in --quantizations (`none`: f32 graph; `int8`,
   `rabitq4`: quantized codes in the graph, the top candidates re-ranked with the exact
   f32 vectors), before and after the peers;
2. upsert of every base vector from one numpy array: `kernelize` (`Collection.upsert`,
   durability `always`: fsynced before it returns) vs `lancedb` (`table.add` of an Arrow
   table) and `chromadb` (`PersistentClient` `collection.add` in its largest batches);
   what each has done when it returns is counted with `strace -f -c` when available
   (fsync/fdatasync calls) and stated;
3. per-call overhead: one query per call, k = 10, ef = 64, 1 thread, on the first 20,000
   base vectors (median of 5 passes over 1,000 queries).

    python3 scripts/bench/python_peers.py --data data/ann --wheel $CARGO_TARGET_DIR/wheels/kernelize-*.whl

Unless running inside --venv (default /tmp/kz-pybench-venv), it creates that venv,
pip-installs scripts/bench/requirements-python.txt and the given kernelize wheel, and
re-executes itself there. Prints a table per section and, with --json-out, one JSON
object per measurement.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import kzvenv  # noqa: E402

REQUIREMENTS = os.path.join(HERE, "requirements-python.txt")


def log(msg: str) -> None:
    print(f"[python_peers] {msg}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def recall_at_10(found, gt) -> float:
    hits = 0
    for row, truth in zip(found, gt):
        hits += len(set(int(x) for x in row[:10] if x is not None and int(x) >= 0) & set(int(t) for t in truth[:10]))
    return hits / (10 * len(gt))


def timed(fn, repeats: int) -> float:
    """Median wall seconds of `repeats` calls (after one untimed warm-up)."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


class Out:
    def __init__(self, path):
        self.f = open(path, "w") if path else None

    def emit(self, **row):
        row["cpu"] = cpu_model()
        if self.f:
            self.f.write(json.dumps(row) + "\n")
            self.f.flush()


# -- 1. batch search --------------------------------------------------------------------


def kernelize_name(quantization: str) -> str:
    return "kernelize" if quantization == "none" else f"kernelize-{quantization}"


def search_kernelize(base, queries, gt, threads, efs, repeats, tmp, out, quantization="none"):
    import kernelize

    kernelize.set_num_threads(threads)
    name = kernelize_name(quantization)
    path = tempfile.mkdtemp(prefix=f"kz-search-{threads}-", dir=tmp)
    db = kernelize.open(path, durability="buffered")
    c = db.create_collection("wordnet", dim=base.shape[1], metric="dot", m=16, ef_construction=200,
                             quantization=quantization)
    ids = [str(i) for i in range(len(base))]
    t = time.perf_counter()
    c.upsert(ids, base)
    c.compact()  # one segment, as the peers' one graph
    load = time.perf_counter() - t
    t = time.perf_counter()
    c.build_index()
    build = time.perf_counter() - t
    rows = []
    for ef in efs:
        res = c.search(queries, k=10, ef=ef)
        rec = recall_at_10(res.ids, gt)
        secs = timed(lambda: c.search(queries, k=10, ef=ef), repeats)
        rows.append((name, threads, ef, rec, len(queries) / secs, build))
        out.emit(section="search", system=name, threads=threads, ef=ef, recall=rec,
                 qps=len(queries) / secs, build_s=build, load_s=load)
    db.close()
    shutil.rmtree(path, ignore_errors=True)
    return rows


def search_hnswlib(base, queries, gt, threads, efs, repeats, out):
    import hnswlib

    ix = hnswlib.Index(space="ip", dim=base.shape[1])
    ix.init_index(max_elements=len(base), M=16, ef_construction=200, random_seed=1)
    t = time.perf_counter()
    ix.add_items(base, num_threads=threads)
    build = time.perf_counter() - t
    rows = []
    for ef in efs:
        ix.set_ef(ef)
        labels, _ = ix.knn_query(queries, k=10, num_threads=threads)
        rec = recall_at_10(labels, gt)
        secs = timed(lambda: ix.knn_query(queries, k=10, num_threads=threads), repeats)
        rows.append(("hnswlib", threads, ef, rec, len(queries) / secs, build))
        out.emit(section="search", system="hnswlib", threads=threads, ef=ef, recall=rec,
                 qps=len(queries) / secs, build_s=build)
    return rows


def search_faiss(base, queries, gt, threads, efs, repeats, out):
    import faiss

    faiss.omp_set_num_threads(threads)
    ix = faiss.IndexHNSWFlat(base.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    ix.hnsw.efConstruction = 200
    t = time.perf_counter()
    ix.add(base)
    build = time.perf_counter() - t
    rows = []
    for ef in efs:
        ix.hnsw.efSearch = ef
        _, labels = ix.search(queries, 10)
        rec = recall_at_10(labels, gt)
        secs = timed(lambda: ix.search(queries, 10), repeats)
        rows.append(("faiss-hnsw", threads, ef, rec, len(queries) / secs, build))
        out.emit(section="search", system="faiss-hnsw", threads=threads, ef=ef, recall=rec,
                 qps=len(queries) / secs, build_s=build)
    return rows


# -- 2. upsert --------------------------------------------------------------------------


def upsert_kernelize(base, path):
    import kernelize

    db = kernelize.open(path, durability="always")
    c = db.create_collection("wordnet", dim=base.shape[1], metric="cosine")
    ids = [str(i) for i in range(len(base))]
    t = time.perf_counter()
    c.upsert(ids, base)
    secs = time.perf_counter() - t
    assert c.count() == len(base)
    db.close()
    return secs


def upsert_lancedb(base, path):
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(path)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(base.reshape(-1)), base.shape[1])
    table = pa.table({"id": pa.array([str(i) for i in range(len(base))]), "vector": vec})
    t = time.perf_counter()
    tbl = db.create_table("wordnet", schema=table.schema)
    tbl.add(table)
    secs = time.perf_counter() - t
    assert tbl.count_rows() == len(base)
    return secs


def upsert_chromadb(base, path):
    import chromadb

    client = chromadb.PersistentClient(path=path)
    coll = client.create_collection("wordnet", metadata={"hnsw:space": "cosine"})
    ids = [str(i) for i in range(len(base))]
    step = client.get_max_batch_size()
    t = time.perf_counter()
    for s in range(0, len(base), step):
        coll.add(ids=ids[s:s + step], embeddings=base[s:s + step])
    secs = time.perf_counter() - t
    assert coll.count() == len(base)
    return secs


UPSERTS = {"kernelize": upsert_kernelize, "lancedb": upsert_lancedb, "chromadb": upsert_chromadb}


def upsert_child(system: str, base_path: str, path: str) -> None:
    """Runs one upsert in this (child) process and prints its seconds."""
    import numpy as np

    base = np.load(base_path).astype(np.float32)
    print(json.dumps({"secs": UPSERTS[system](base, path)}), flush=True)


def fsyncs(system, args, tmp) -> tuple:
    """Seconds of one upsert in a child process, and its fsync/fdatasync count under strace
    (None when strace is absent)."""
    path = os.path.join(tmp, f"upsert-{system}")
    cmd = [sys.executable, __file__, "--no-venv", "--upsert-child", system, "--data", args.data, "--path", path]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(args.threads)))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    secs = json.loads(p.stdout.strip().splitlines()[-1])["secs"]
    shutil.rmtree(path, ignore_errors=True)
    syncs = None
    if shutil.which("strace"):
        summary = os.path.join(tmp, f"strace-{system}.txt")
        subprocess.run(["strace", "-f", "--seccomp-bpf", "-c", "-e", "trace=fsync,fdatasync,sync_file_range", "-o", summary] + cmd,
                       capture_output=True, text=True, env=env, check=True)
        syncs = 0
        for line in open(summary):
            parts = line.split()
            if parts and parts[-1] in ("fsync", "fdatasync", "sync_file_range"):
                syncs += int(parts[3]) if len(parts) >= 5 else 0
        shutil.rmtree(path, ignore_errors=True)
    return secs, syncs


# -- 3. per-call overhead ---------------------------------------------------------------


def per_call(base, queries, n_calls, tmp, out):
    import faiss
    import hnswlib
    import kernelize

    kernelize.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    sub = base[:20000]
    db = kernelize.open(os.path.join(tmp, "kz-percall"), durability="buffered")
    c = db.create_collection("w", dim=base.shape[1], metric="dot")
    c.upsert([str(i) for i in range(len(sub))], sub)
    c.compact()
    c.build_index()
    h = hnswlib.Index(space="ip", dim=base.shape[1])
    h.init_index(max_elements=len(sub), M=16, ef_construction=200)
    h.add_items(sub, num_threads=1)
    h.set_ef(64)
    f = faiss.IndexHNSWFlat(base.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    f.hnsw.efConstruction = 200
    f.add(sub)
    f.hnsw.efSearch = 64
    qs = [queries[i:i + 1] for i in range(min(n_calls, len(queries)))]
    systems = {
        "kernelize": lambda q: c.search(q, k=10, ef=64),
        "hnswlib": lambda q: h.knn_query(q, k=10, num_threads=1),
        "faiss-hnsw": lambda q: f.search(q, 10),
    }
    rows = []
    for name, fn in systems.items():
        def one_pass():
            for q in qs:
                fn(q)

        us = timed(one_pass, 5) / len(qs) * 1e6  # median of 5 passes after a warm-up pass
        rows.append((name, us))
        out.emit(section="per_call", system=name, us_per_call=us, calls=len(qs), rows=len(sub), ef=64)
    db.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/ann", help="base.npy, queries.npy, gt.npy")
    ap.add_argument("--wheel", help="the kernelize wheel to install into the venv")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--ef", default="32,48,64,96,128,192")
    ap.add_argument("--n-queries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--sections", default="search,upsert,per_call")
    ap.add_argument("--quantizations", default="none,int8,rabitq4",
                    help="kernelize index kinds to search (each re-ranks with exact distances)")
    ap.add_argument("--tmp-dir", default=None)
    ap.add_argument("--json-out")
    ap.add_argument("--upsert-child", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    kzvenv.add_arguments(ap, "/tmp/kz-pybench-venv")
    args = ap.parse_args()
    if args.upsert_child:
        upsert_child(args.upsert_child, os.path.join(args.data, "base.npy"), args.path)
        return
    if kzvenv.should_reexec(args):
        py = kzvenv.ensure(args.venv, REQUIREMENTS, args.fresh_venv, log)
        wheel = args.wheel or max(glob.glob(os.path.join(os.environ.get("CARGO_TARGET_DIR", ""), "wheels",
                                                         "kernelize-*.whl")), default=None, key=os.path.getmtime)
        if not wheel:
            sys.exit("no kernelize wheel: build one with scripts/python.sh --release, or pass --wheel")
        log(f"installing {wheel}")
        subprocess.run([py, "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", wheel], check=True)
        os.execv(py, [py, __file__, *sys.argv[1:]])
    args.threads = [int(t) for t in args.threads.split(",")]
    import numpy as np

    base = np.load(os.path.join(args.data, "base.npy")).astype(np.float32)
    queries = np.ascontiguousarray(np.load(os.path.join(args.data, "queries.npy"))[: args.n_queries].astype(np.float32))
    gt = np.load(os.path.join(args.data, "gt.npy"))[: args.n_queries]
    efs = [int(e) for e in args.ef.split(",")]
    sections = args.sections.split(",")
    out = Out(args.json_out)
    tmp = tempfile.mkdtemp(prefix="kz-pybench-", dir=args.tmp_dir)
    print(f"# {len(base)} x {base.shape[1]} base, {len(queries)} queries; CPU {cpu_model()}; "
          f"load {open('/proc/loadavg').read().split()[:3]}")
    try:
        if "search" in sections:
            print("\n## batch search (k=10, one call with every query)")
            print(f"{'system':<12} {'thr':>3} {'ef':>4} {'recall':>7} {'QPS':>9} {'build s':>8}")
            best = {}
            kinds = args.quantizations.split(",")
            for threads in args.threads:
                rows = []
                for q in kinds:
                    rows += search_kernelize(base, queries, gt, threads, efs, args.repeats, tmp, out, q)
                rows += search_hnswlib(base, queries, gt, threads, efs, args.repeats, out)
                rows += search_faiss(base, queries, gt, threads, efs, args.repeats, out)
                for q in kinds:  # bracketing the peers
                    rows += search_kernelize(base, queries, gt, threads, efs, args.repeats, tmp, out, q)
                for sys_, thr, ef, rec, qps, build in rows:
                    print(f"{sys_:<12} {thr:>3} {ef:>4} {rec:>7.4f} {qps:>9.0f} {build:>8.1f}")
                    if rec >= 0.95:
                        key = (sys_, thr)
                        best[key] = max(best.get(key, 0.0), qps)
            print("\nbest QPS at recall@10 >= 0.95:")
            for threads in args.threads:
                peer = max((v for (s, t), v in best.items() if t == threads and not s.startswith("kernelize")),
                           default=None)
                print(f"  {threads} thread(s): " + ", ".join(f"{s} {v:.0f}" for (s, t), v in sorted(best.items())
                                                         if t == threads))
                for q in kinds:
                    kz = best.get((kernelize_name(q), threads))
                    ratio = f"{kz / peer:.2f}x the better peer" if kz and peer else "n/a"
                    print(f"    {kernelize_name(q)}: {ratio}")
                    out.emit(section="search_best", threads=threads, system=kernelize_name(q), kernelize=kz,
                             best_peer=peer, ratio=(kz / peer) if kz and peer else None)
        if "upsert" in sections:
            print(f"\n## upsert of {len(base)} vectors from one numpy array (child process each)")
            for system in UPSERTS:
                secs, syncs = fsyncs(system, args, tmp)
                print(f"{system:<10} {secs:7.2f} s  {len(base) / secs:9.0f} vectors/s  fsync calls: {syncs}")
                out.emit(section="upsert", system=system, secs=secs, vectors_per_s=len(base) / secs, fsyncs=syncs)
        if "per_call" in sections:
            print("\n## per-call overhead: one query per call, k=10, ef=64, 20k rows, 1 thread")
            for name, us in per_call(base, queries, args.calls, tmp, out):
                print(f"{name:<12} {us:8.1f} us/call")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
