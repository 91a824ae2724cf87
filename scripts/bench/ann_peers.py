#!/usr/bin/env python3
"""Approximate-nearest-neighbour search of peer HNSW libraries, on the data
`kernelize bench ann` uses: recall@10 against QPS over a sweep of ef.

    python3 scripts/bench/ann_peers.py --data data/ann
    python3 scripts/bench/ann_peers.py --data /tmp/ann-syn --make-synthetic 20000  # dev data

Run with any python3 >= 3.9. Unless already running inside --venv (default
/tmp/kz-ann-venv), it creates that venv, pip-installs the pinned
scripts/bench/requirements-ann.txt (skipped when the venv's stamp matches the
file) and re-executes itself inside it.

Input, in --data DIR:
  base.npy     float32, n x d, unit-normalised vectors (cosine metric)
  queries.npy  float32, q x d
  gt.npy       int32/int64, q x >=10, exact nearest base rows by cosine, best first
Rows whose norm is not 1 (|norm - 1| > 1e-3) are normalised with a warning.
--make-synthetic N writes clustered gaussian data of that shape (exact ground
truth by brute force in numpy) into DIR and exits.

Systems (--systems), all HNSW with M = 16, efConstruction = 200, inner-product
metric (equal to cosine on unit vectors), float32 input, k = 10:
  hnswlib         hnswlib.Index(space="ip"); init_index(M=16, ef_construction=200);
                  add_items(num_threads=T); set_ef(ef); knn_query(num_threads=T)
  faiss-hnsw      faiss.IndexHNSWFlat(d, 16, METRIC_INNER_PRODUCT); add();
                  hnsw.efSearch = ef; search(); threads: faiss.omp_set_num_threads(T)
  faiss-hnsw-sq8  faiss.IndexHNSWSQ(d, QT_8bit, 16, METRIC_INNER_PRODUCT); train()
                  on the base vectors (per-dimension min/max), then as faiss-hnsw.
                  Searches the 8-bit codes only (no float re-ranking).
  usearch         usearch.index.Index(metric="ip", dtype="f32", connectivity=16,
                  expansion_add=200); add(threads=T); expansion_search = ef;
                  search(threads=T)

For each system and each --threads T: build the index with T threads (wall and
process CPU seconds of one build, faiss-hnsw-sq8 including train()), serialise
it to a temp file in --tmp-dir and record its size (index_bytes), run all
queries once untimed (warm-up), then for each --ef: --repeats timed batch
searches (one call with all queries, T threads); QPS = q / median wall seconds;
recall@10 = mean over queries of |returned top 10 & gt[:, :10]| / 10.

Output: one JSON line per (system, threads, ef) on stdout as soon as it is
measured (--json-out FILE also writes them to FILE); progress and a table at
the end go to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import kzvenv  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
REQUIREMENTS = os.path.join(HERE, "requirements-ann.txt")
SYSTEMS = ("hnswlib", "faiss-hnsw", "faiss-hnsw-sq8", "usearch")
M = 16
EF_CONSTRUCTION = 200
K = 10
DEFAULT_EF = "10,16,24,32,48,64,96,128,192,256"


def log(msg: str) -> None:
    print(f"ann-peers: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- venv bootstrap

def ensure_venv_and_reexec(args, argv: list[str]) -> None:
    py = kzvenv.ensure(args.venv, REQUIREMENTS, args.fresh_venv, log)
    os.execv(py, [py, os.path.abspath(__file__), *argv])


# ---------------------------------------------------------------- data

def exact_top(base, queries, k: int):
    """Exact top-k rows of `base` by inner product for each query, best first (int64)."""
    import numpy as np

    # Query chunks sized so that one similarity block stays around 256 MB.
    chunk = max(1, (256 << 20) // (4 * base.shape[0]))
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for i in range(0, queries.shape[0], chunk):
        sims = queries[i:i + chunk] @ base.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        out[i:i + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def make_synthetic(out_dir: str, n: int, dim: int, n_queries: int, seed: int, force: bool) -> None:
    """Clustered gaussian unit vectors: base.npy, queries.npy, exact top-100 gt.npy."""
    import numpy as np

    paths = {name: os.path.join(out_dir, f"{name}.npy") for name in ("base", "queries", "gt")}
    if not force and any(os.path.exists(p) for p in paths.values()):
        raise SystemExit(f"ann-peers: {out_dir} already holds .npy files; pass --force to overwrite")
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    # About 100 points per cluster; a point is its centre plus gaussian noise of the
    # same scale, so the clusters overlap and the neighbours are not trivially found.
    n_clusters = max(1, n // 100)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)

    def sample(count: int):
        x = centres[rng.integers(0, n_clusters, count)]
        x += rng.standard_normal((count, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    base = sample(n)
    queries = sample(n_queries)
    t0 = time.perf_counter()
    gt = exact_top(base, queries, min(100, n))
    gt = gt.astype(np.int32 if n < 2**31 else np.int64)
    np.save(paths["base"], base)
    np.save(paths["queries"], queries)
    np.save(paths["gt"], gt)
    log(f"wrote {out_dir}: base {base.shape}, queries {queries.shape}, gt {gt.shape} {gt.dtype} "
        f"(exact, {time.perf_counter() - t0:.1f} s), {n_clusters} clusters, seed {seed}")


def unit_rows(x, what: str):
    """float32, C-contiguous, rows of norm 1 (normalised with a warning if not)."""
    import numpy as np

    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    worst = float(np.max(np.abs(norms - 1.0))) if len(norms) else 0.0
    if worst > 1e-3:
        log(f"warning: {what} rows are not unit-normalised (max |norm - 1| = {worst:.3g}); normalising")
        x /= np.maximum(norms, 1e-30)[:, None]
    return x


def load_data(data_dir: str):
    import numpy as np

    base = unit_rows(np.load(os.path.join(data_dir, "base.npy")), "base")
    queries = unit_rows(np.load(os.path.join(data_dir, "queries.npy")), "queries")
    gt = np.load(os.path.join(data_dir, "gt.npy")).astype(np.int64, copy=False)
    n, dim = base.shape
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise SystemExit(f"ann-peers: queries.npy is {queries.shape}, base.npy is {base.shape}")
    if gt.ndim != 2 or gt.shape[0] != queries.shape[0] or gt.shape[1] < K:
        raise SystemExit(f"ann-peers: gt.npy is {gt.shape}, expected ({queries.shape[0]}, >= {K})")
    if gt[:, :K].min() < 0 or gt[:, :K].max() >= n:
        raise SystemExit(f"ann-peers: gt.npy holds row indices outside [0, {n})")
    return base, queries, gt


def recall_at_k(ids, gt) -> float:
    """Mean over queries of |ids[i, :K] & gt[i, :K]| / K (invalid ids, e.g. -1, never match)."""
    hits = (ids[:, :K, None] == gt[:, None, :K]).any(axis=2)
    return float(hits.sum()) / (ids.shape[0] * K)


# ---------------------------------------------------------------- systems
#
# Each system: build(base, threads), set_ef(ef), search(queries, threads) -> int64
# ids (q x K, -1 where fewer than K were found), save(path), close(), and
# `version` / `settings()` for the JSON lines.

class Hnswlib:
    name = "hnswlib"

    def __init__(self):
        import hnswlib
        from importlib.metadata import version

        self.hnswlib = hnswlib
        self.version = version("hnswlib")
        self.index = None

    def settings(self) -> dict:
        return {"space": "ip", "threads": "add_items/knn_query num_threads=T (std::thread per call; "
                "1 = the calling thread)"}

    def build(self, base, threads: int) -> dict:
        import numpy as np

        n, dim = base.shape
        self.index = self.hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(max_elements=n, ef_construction=EF_CONSTRUCTION, M=M)
        self.index.set_num_threads(threads)
        self.index.add_items(base, np.arange(n), num_threads=threads)
        return {}

    def set_ef(self, ef: int) -> None:
        self.index.set_ef(ef)

    def search(self, queries, threads: int):
        import numpy as np

        labels, _ = self.index.knn_query(queries, k=K, num_threads=threads)
        return labels.astype(np.int64)

    def save(self, path: str) -> None:
        self.index.save_index(path)

    def close(self) -> None:
        self.index = None


class FaissHnsw:
    name = "faiss-hnsw"

    def __init__(self):
        import faiss

        self.faiss = faiss
        self.version = faiss.__version__
        self.index = None

    def settings(self) -> dict:
        return {"index": "IndexHNSWFlat", "metric": "METRIC_INNER_PRODUCT",
                "simd": self.faiss.SIMDConfig.get_level_name(),
                "threads": "faiss.omp_set_num_threads(T) (process-wide OpenMP pool)"}

    def new_index(self, dim: int):
        return self.faiss.IndexHNSWFlat(dim, M, self.faiss.METRIC_INNER_PRODUCT)

    def build(self, base, threads: int) -> dict:
        self.faiss.omp_set_num_threads(threads)
        self.index = self.new_index(base.shape[1])
        self.index.hnsw.efConstruction = EF_CONSTRUCTION
        extra = {}
        if not self.index.is_trained:
            t0 = time.perf_counter()
            self.index.train(base)
            extra["train_secs"] = round(time.perf_counter() - t0, 3)
        self.index.add(base)
        return extra

    def set_ef(self, ef: int) -> None:
        self.index.hnsw.efSearch = ef

    def search(self, queries, threads: int):
        self.faiss.omp_set_num_threads(threads)
        _, labels = self.index.search(queries, K)
        return labels  # int64, -1 where fewer than K were found

    def save(self, path: str) -> None:
        self.faiss.write_index(self.index, path)

    def close(self) -> None:
        self.index = None


class FaissHnswSq8(FaissHnsw):
    name = "faiss-hnsw-sq8"

    def settings(self) -> dict:
        return {**super().settings(), "index": "IndexHNSWSQ",
                "quantizer": "ScalarQuantizer.QT_8bit (per-dimension min/max, trained on base)",
                "rerank": "none (distances from the 8-bit codes)"}

    def new_index(self, dim: int):
        return self.faiss.IndexHNSWSQ(dim, self.faiss.ScalarQuantizer.QT_8bit, M,
                                      self.faiss.METRIC_INNER_PRODUCT)


class USearch:
    name = "usearch"

    def __init__(self):
        import usearch
        from usearch.index import Index

        self.Index = Index
        self.version = usearch.__version__
        self.index = None
        self.accel = None

    def settings(self) -> dict:
        return {"metric": "ip", "dtype": "f32", "connectivity": M, "expansion_add": EF_CONSTRUCTION,
                "simd": self.accel,
                "threads": "add/search threads=T (0 would mean all cores)"}

    def build(self, base, threads: int) -> dict:
        import numpy as np

        n, dim = base.shape
        self.index = self.Index(ndim=dim, metric="ip", dtype="f32", connectivity=M,
                                expansion_add=EF_CONSTRUCTION)
        self.accel = self.index.hardware_acceleration
        self.index.add(np.arange(n, dtype=np.uint64), base, threads=threads)
        return {}

    def set_ef(self, ef: int) -> None:
        self.index.expansion_search = ef

    def search(self, queries, threads: int):
        import numpy as np

        m = self.index.search(queries, K, threads=threads)
        ids = m.keys.astype(np.int64)
        ids[np.arange(K)[None, :] >= m.counts[:, None]] = -1
        return ids

    def save(self, path: str) -> None:
        self.index.save(path)

    def close(self) -> None:
        self.index = None


CLASSES = {"hnswlib": Hnswlib, "faiss-hnsw": FaissHnsw, "faiss-hnsw-sq8": FaissHnswSq8, "usearch": USearch}


# ---------------------------------------------------------------- driver

def index_bytes(system, tmp_dir: str | None) -> int:
    """Size of the index serialised by the library's own save call."""
    fd, path = tempfile.mkstemp(prefix=f"kz-ann-{system.name}-", suffix=".index", dir=tmp_dir)
    os.close(fd)
    try:
        system.save(path)
        return os.path.getsize(path)
    finally:
        os.unlink(path)


def timed(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def bench_system(system, base, queries, gt, args, emit) -> None:
    n, dim = base.shape
    q = queries.shape[0]
    for threads in args.threads:
        gc.collect()
        log(f"{system.name} {system.version}: building, {n} x {dim}, {threads} thread(s)")
        load0 = os.getloadavg()[0]
        extra, build_s, build_cpu = timed(lambda: system.build(base, threads))
        size = index_bytes(system, args.tmp_dir)
        log(f"{system.name}: built in {build_s:.2f} s ({build_cpu:.2f} CPU s), "
            f"index file {size / 1e6:.1f} MB{', ' + json.dumps(extra) if extra else ''}")
        system.set_ef(args.ef[0])
        system.search(queries, threads)  # warm-up, untimed
        for ef in args.ef:
            system.set_ef(ef)
            walls, cpus = [], []
            for _ in range(args.repeats):
                ids, wall, cpu = timed(lambda: system.search(queries, threads))
                walls.append(wall)
                cpus.append(cpu)
            med = statistics.median(walls)
            emit({
                "bench": "ann", "system": system.name, "threads": threads, "M": M,
                "ef_construction": EF_CONSTRUCTION, "ef": ef, "k": K,
                "recall_at_10": round(recall_at_k(ids, gt), 5),
                "qps": round(q / med, 1),
                "build_secs": round(build_s, 3), "build_cpu_secs": round(build_cpu, 3),
                "index_bytes": size, "index_bytes_source": "serialised file size",
                "n": n, "dim": dim, "queries": q, "version": system.version,
                "search_secs": [round(w, 5) for w in walls],
                "search_cpu_secs": round(statistics.median(cpus), 5),
                "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
                **extra, "settings": system.settings(),
            })
        system.close()


def print_table(rows: list[dict]) -> None:
    err = sys.stderr
    if not rows:
        return
    print(file=err)
    print(f"n={rows[0]['n']} dim={rows[0]['dim']} queries={rows[0]['queries']} k={K} M={M} "
          f"efConstruction={EF_CONSTRUCTION}; QPS from the median of the timed batch searches; "
          f"cpu/wall = process CPU / wall of a search (about T when T threads get a core each); "
          f"1-min load average {rows[0]['loadavg_1m'][0]} -> {rows[-1]['loadavg_1m'][1]}", file=err)
    print(f"{'system':<15} {'version':<8} {'thr':>3} {'build_s':>8} {'index_MB':>9} "
          f"{'ef':>4} {'recall@10':>9} {'QPS':>9} {'cpu/wall':>8}", file=err)
    prev = None
    for r in rows:
        key = (r["system"], r["threads"])
        head = (f"{r['system']:<15} {r['version']:<8} {r['threads']:>3} {r['build_secs']:>8.2f} "
                f"{r['index_bytes'] / 1e6:>9.1f}") if key != prev else " " * 47
        par = r["search_cpu_secs"] / statistics.median(r["search_secs"])
        print(f"{head} {r['ef']:>4} {r['recall_at_10']:>9.4f} {r['qps']:>9.0f} {par:>8.2f}", file=err)
        prev = key
    print(file=err, flush=True)


def int_list(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def add_synthetic_arguments(ap: argparse.ArgumentParser) -> None:
    """The --make-synthetic options (shared with kernel_peers.py)."""
    ap.add_argument("--make-synthetic", type=int, default=None, metavar="N",
                    help="write N clustered gaussian base vectors + queries + exact gt into --data and exit")
    ap.add_argument("--synthetic-queries", type=int, default=1000)
    ap.add_argument("--synthetic-dim", type=int, default=384)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--force", action="store_true", help="let --make-synthetic overwrite existing files")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(REPO, "data", "ann"),
                    help="directory with base.npy, queries.npy, gt.npy (default: data/ann)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma list of: " + ", ".join(SYSTEMS))
    ap.add_argument("--threads", type=int_list, default=[1, 2], help="comma list (default 1,2)")
    ap.add_argument("--ef", type=int_list, default=int_list(DEFAULT_EF), help=f"comma list (default {DEFAULT_EF})")
    ap.add_argument("--repeats", type=int, default=3, help="timed searches per ef; the median is reported")
    ap.add_argument("--tmp-dir", default=None, help="where indexes are serialised to be measured (default: $TMPDIR or /tmp)")
    ap.add_argument("--json-out", default=None, help="also write the JSON lines here")
    add_synthetic_arguments(ap)
    kzvenv.add_arguments(ap, "/tmp/kz-ann-venv")
    args = ap.parse_args(argv)

    if kzvenv.should_reexec(args):
        ensure_venv_and_reexec(args, argv)  # does not return

    if args.make_synthetic is not None:
        make_synthetic(args.data, args.make_synthetic, args.synthetic_dim, args.synthetic_queries,
                       args.seed, args.force)
        return 0

    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in wanted:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s!r}")
    if not args.threads or min(args.threads) < 1 or not args.ef or min(args.ef) < 1 or args.repeats < 1:
        ap.error("--threads, --ef and --repeats take positive integers")
    if not os.path.exists(os.path.join(args.data, "base.npy")):
        log(f"{args.data}/base.npy not found (for development data: --make-synthetic 20000)")
        return 2

    import numpy

    base, queries, gt = load_data(args.data)
    log(f"python {platform.python_version()}, numpy {numpy.__version__}, {os.cpu_count()} cpus; "
        f"{args.data}: base {base.shape}, queries {queries.shape}, gt {gt.shape}; "
        f"M={M}, efConstruction={EF_CONSTRUCTION}, k={K}, threads {args.threads}, ef {args.ef}, "
        f"{args.repeats} repeats")

    rows: list[dict] = []
    out = open(args.json_out, "w") if args.json_out else None

    def emit(row: dict) -> None:
        row["python"] = platform.python_version()
        line = json.dumps(row)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()
        rows.append(row)
        log(f"{row['system']} threads={row['threads']} ef={row['ef']}: "
            f"recall@10 {row['recall_at_10']:.4f}, {row['qps']:.0f} QPS")

    try:
        for name in wanted:
            bench_system(CLASSES[name](), base, queries, gt, args, emit)
    finally:
        if out:
            out.close()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
