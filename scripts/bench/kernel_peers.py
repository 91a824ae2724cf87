#!/usr/bin/env python3
"""Compressed vector indexes of peers (FAISS IVF-PQ / IVF-RaBitQ, LanceDB IVF-PQ /
IVF-RQ) on the data the knowledge kernel is measured on: index size against
recall@10 and QPS over a sweep of nprobe.

    python3 scripts/bench/kernel_peers.py --data data/ann
    python3 scripts/bench/kernel_peers.py --data /tmp/kp-syn --make-synthetic 20000  # dev data
    python3 scripts/bench/kernel_peers.py --data /tmp/kp-syn --nlist 128

Run with any python3 >= 3.9. Unless already running inside --venv (default
/tmp/kz-kernel-venv), it creates that venv, pip-installs the pinned
scripts/bench/requirements-kernel.txt (skipped when the venv's stamp matches
the file) and re-executes itself inside it.

Input, in --data DIR (the same files as scripts/bench/ann_peers.py):
  base.npy     float32, n x d, unit-normalised vectors (cosine = inner product)
  queries.npy  float32, q x d
  gt.npy       int32/int64, q x >=10, exact nearest base rows by cosine, best first
Rows whose norm is not 1 (|norm - 1| > 1e-3) are normalised with a warning.
--make-synthetic N writes clustered gaussian data of that shape (exact ground
truth by brute force in numpy) into DIR and exits (ann_peers.py's generator).

Systems (--systems), all inner-product metric on the unit vectors, k = 10,
IVF with --nlist lists (default 1024) trained on the base vectors, searched
at each --nprobe (default 8,16,32,64,128; values above nlist are skipped),
no re-ranking with the float vectors:
  faiss-ivfpq      faiss.IndexIVFPQ(IndexFlatIP(d), d, nlist, m, 8, METRIC_INNER_PRODUCT),
                   m in --pq-m (default 48,96,192; code = m bytes per vector);
                   train(base) (coarse k-means + PQ on the residuals; faiss
                   subsamples 256 points per centroid), add(base), nprobe
  faiss-ivfrabitq  faiss.IndexIVFRaBitQ(IndexFlatIP(d), d, nlist, METRIC_INNER_PRODUCT,
                   True, nb_bits), nb_bits in --rabitq-bits (default 1,4; only
                   1 when the installed faiss has no multi-bit RaBitQ); query
                   quantised to index.qb bits (--rabitq-qb, default: faiss's
                   default, 4; 0 = float queries). Skipped with a message when
                   faiss has no IndexIVFRaBitQ (< 1.11).
  lancedb-ivfpq    lancedb.connect(tmp dir); create_table with columns id int64 +
                   vector FixedSizeList<float32, d>; create_index("vector",
                   config=IvfPq(distance_type="dot", num_partitions=nlist,
                   num_sub_vectors=m, num_bits=8)), m in --lance-m (default 48,96);
                   search(q).distance_type("dot").nprobes(p).limit(10), no
                   refine_factor (None: no float re-ranking).
  lancedb-ivfrq    as lancedb-ivfpq with config=IvfRq(distance_type="dot",
                   num_partitions=nlist, num_bits=b) (LanceDB's RaBitQ), b in
                   --lance-rq-bits (default 1,4).
LanceDB trains fewer IVF partitions than requested when the table is small
(it logs "training X of the Y requested IVF partitions"); the number actually
trained is captured from that message and reported as "partitions".

Threads (--threads T, default 2): faiss.omp_set_num_threads(T) before every
build and search; for LanceDB LANCE_CPU_THREADS = LANCE_IO_THREADS =
RAYON_NUM_THREADS = OMP_NUM_THREADS = T in the environment before lancedb is
imported (it has no per-call thread setting).

For each (system, setting): build the index, timed (build_secs wall,
build_cpu_secs process CPU; for faiss train + add, for LanceDB create_index
only; writing the LanceDB table is reported as table_write_secs). Index size:
  faiss   faiss.write_index to a temp file in --tmp-dir, its size
  LanceDB the index's own directory <table>.lance/_indices/<uuid>/ (index.idx
          + auxiliary.idx), NOT the table's data files, which still hold every
          float32 vector (their size is reported as table_data_bytes; LanceDB
          keeps the floats, the faiss indexes do not).
bytes_per_vector = index_bytes / n (codes + ids + centroids + metadata);
code_bytes = the per-vector code alone (faiss index.code_size; LanceDB PQ:
num_sub_vectors; LanceDB RQ: d * bits / 8 without its per-vector factors).
Then one untimed warm-up search, and for each nprobe --repeats timed searches:
  faiss   one index.search call with all queries (T OpenMP threads)
  LanceDB one search call with all queries as a list of query vectors (results
          tagged by query_index); also, timed once, the queries one by one
          (one search call per query) -> qps_one_by_one
QPS = q / median wall seconds; recall@10 = mean over queries of
|returned top 10 & gt[:, :10]| / 10.

Output: one JSON line per (system, setting, nprobe) on stdout as soon as it
is measured (--json-out FILE also writes them to FILE), e.g.
  {"bench": "kernel", "system": "faiss-ivfpq", "setting": "m=96", "params": {...},
   "nlist": 1024, "partitions": 1024, "nprobe": 32, "k": 10, "recall_at_10": ...,
   "qps": ..., "build_secs": ..., "build_cpu_secs": ..., "index_bytes": ...,
   "bytes_per_vector": ..., "code_bytes": 96, "index_bytes_source": ...,
   "floats_kept": false, "n": ..., "dim": ..., "queries": ..., "threads": 2,
   "version": "1.15.1", "search_secs": [...], "search_cpu_secs": ...,
   "loadavg_1m": [...], "settings": {...}, "python": "3.11.7"}
LanceDB lines add "qps_one_by_one", "recall_at_10_one_by_one",
"table_data_bytes", "table_write_secs" and "floats_kept": true. Progress and a
table at the end go to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import kzvenv  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ann_peers  # noqa: E402  (data helpers: make_synthetic, load_data, recall_at_k)
from ingest_peers import dir_size  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
REQUIREMENTS = os.path.join(HERE, "requirements-kernel.txt")
SYSTEMS = ("faiss-ivfpq", "faiss-ivfrabitq", "lancedb-ivfpq", "lancedb-ivfrq")
K = ann_peers.K  # 10
DEFAULT_NPROBE = "8,16,32,64,128"
THREAD_ENV = ("LANCE_CPU_THREADS", "LANCE_IO_THREADS", "RAYON_NUM_THREADS", "OMP_NUM_THREADS")


def log(msg: str) -> None:
    print(f"kernel-peers: {msg}", file=sys.stderr, flush=True)


# ann_peers' helpers log through its module-level `log`; route them through ours.
ann_peers.log = log


# ---------------------------------------------------------------- venv bootstrap

def ensure_venv_and_reexec(args, argv: list[str]) -> None:
    py = kzvenv.ensure(args.venv, REQUIREMENTS, args.fresh_venv, log)
    os.execv(py, [py, os.path.abspath(__file__), *argv])


# ---------------------------------------------------------------- helpers

def timed(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def capture_stderr(fn):
    """Run fn() with file descriptor 2 redirected to a temp file (native libraries log
    there); return (fn's result, captured text). The text is echoed to stderr afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            out = fn()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("utf-8", "replace")
    if text:
        sys.stderr.write(text)
        sys.stderr.flush()
    return out, text


# ---------------------------------------------------------------- systems
#
# Each system: settings_list(dim) -> [(label, params)] (or a skip message),
# build(base, params, threads) -> extra dict, index_size() -> dict with index_bytes
# and more, set_nprobe(p), search(queries, threads) -> int64 ids (q x K, -1 where
# fewer than K were found), close(); `version`, `settings()`, `floats_kept`.

class FaissIvf:
    floats_kept = False
    index_bytes_source = "faiss.write_index file size"

    def __init__(self, args):
        import faiss

        self.faiss = faiss
        self.args = args
        self.version = faiss.__version__
        self.index = None
        self.quantizer = None

    def base_settings(self) -> dict:
        return {"metric": "METRIC_INNER_PRODUCT", "quantizer": "IndexFlatIP (coarse k-means, "
                "spherical for IP, faiss default niter and subsampling)",
                "rerank": "none (distances from the codes)",
                "search": "one index.search() call with all queries",
                "simd": self.faiss.SIMDConfig.get_level_name() if hasattr(self.faiss, "SIMDConfig") else None,
                "threads": "faiss.omp_set_num_threads(T) before build and search"}

    def build(self, base, params: dict, threads: int) -> dict:
        self.faiss.omp_set_num_threads(threads)
        n, dim = base.shape
        self.quantizer = self.faiss.IndexFlatIP(dim)
        self.index = self.new_index(dim, params)
        t0 = time.perf_counter()
        self.index.train(base)
        train_s = time.perf_counter() - t0
        self.index.add(base)
        return {"train_secs": round(train_s, 3), "partitions": self.index.nlist,
                "code_bytes": int(self.index.code_size)}

    def index_size(self) -> dict:
        fd, path = tempfile.mkstemp(prefix="kz-kernel-", suffix=".faissindex", dir=self.args.tmp_dir)
        os.close(fd)
        try:
            self.faiss.write_index(self.index, path)
            return {"index_bytes": os.path.getsize(path)}
        finally:
            os.unlink(path)

    def set_nprobe(self, nprobe: int) -> None:
        self.index.nprobe = nprobe

    def search(self, queries, threads: int):
        self.faiss.omp_set_num_threads(threads)
        _, labels = self.index.search(queries, K)
        return labels  # int64, -1 where fewer than K were found

    def close(self) -> None:
        self.index = None
        self.quantizer = None


class FaissIvfPq(FaissIvf):
    name = "faiss-ivfpq"

    def settings_list(self, dim: int):
        out = []
        for m in self.args.pq_m:
            if dim % m:
                log(f"{self.name}: skipping m={m}: d={dim} is not a multiple of m")
                continue
            out.append((f"m={m}", {"m": m, "nbits": 8}))
        return out

    def settings(self) -> dict:
        return {**self.base_settings(), "index": "IndexIVFPQ(IndexFlatIP(d), d, nlist, m, 8, "
                "METRIC_INNER_PRODUCT)", "by_residual": True}

    def new_index(self, dim: int, params: dict):
        return self.faiss.IndexIVFPQ(self.quantizer, dim, self.args.nlist, params["m"], params["nbits"],
                                     self.faiss.METRIC_INNER_PRODUCT)


class FaissIvfRaBitQ(FaissIvf):
    name = "faiss-ivfrabitq"

    def __init__(self, args):
        super().__init__(args)
        self.available = hasattr(self.faiss, "IndexIVFRaBitQ")
        self.multibit = False
        self.has_qb = False
        if self.available:
            # Multi-bit RaBitQ (faiss >= 1.13): a sixth constructor argument nb_bits and
            # rabitq.nb_bits; qb (query bits) is an index attribute.
            try:
                probe = self.faiss.IndexIVFRaBitQ(self.faiss.IndexFlatIP(8), 8, 1,
                                                  self.faiss.METRIC_INNER_PRODUCT, True, 4)
                self.multibit = getattr(probe.rabitq, "nb_bits", None) == 4
            except (TypeError, NotImplementedError, RuntimeError):
                probe = self.faiss.IndexIVFRaBitQ(self.faiss.IndexFlatIP(8), 8, 1,
                                                  self.faiss.METRIC_INNER_PRODUCT)
            self.has_qb = hasattr(probe, "qb")
            self.default_qb = int(probe.qb) if self.has_qb else None
            log(f"{self.name}: faiss {self.version} IndexIVFRaBitQ: multi-bit (nb_bits) "
                f"{'available' if self.multibit else 'NOT available'}; query bits qb "
                f"{'available, default ' + str(self.default_qb) if self.has_qb else 'NOT available'}")

    def settings_list(self, dim: int):
        if not self.available:
            log(f"{self.name}: faiss {self.version} has no IndexIVFRaBitQ (needs faiss-cpu >= 1.11); skipping")
            return []
        out = []
        for b in self.args.rabitq_bits:
            if b != 1 and not self.multibit:
                log(f"{self.name}: skipping bits={b}: this faiss has 1-bit RaBitQ only")
                continue
            out.append((f"bits={b}", {"nb_bits": b, "qb": self.qb()}))
        return out

    def qb(self):
        if not self.has_qb:
            return None
        return self.args.rabitq_qb if self.args.rabitq_qb is not None else self.default_qb

    def settings(self) -> dict:
        return {**self.base_settings(), "index": "IndexIVFRaBitQ(IndexFlatIP(d), d, nlist, "
                "METRIC_INNER_PRODUCT, True, nb_bits)", "by_residual": True,
                "multibit_available": self.multibit, "qb_available": self.has_qb,
                "qb_meaning": "bits of the quantised query (0 = float query)"}

    def new_index(self, dim: int, params: dict):
        if self.multibit:
            index = self.faiss.IndexIVFRaBitQ(self.quantizer, dim, self.args.nlist,
                                              self.faiss.METRIC_INNER_PRODUCT, True, params["nb_bits"])
        else:
            index = self.faiss.IndexIVFRaBitQ(self.quantizer, dim, self.args.nlist,
                                              self.faiss.METRIC_INNER_PRODUCT)
        if params["qb"] is not None:
            index.qb = params["qb"]
        return index


class Lance:
    floats_kept = True
    index_bytes_source = ("size of the index directory <table>.lance/_indices/<uuid>/ (index files "
                          "only; the table's data files still hold the float32 vectors)")

    def __init__(self, args):
        import lancedb

        self.lancedb = lancedb
        self.args = args
        self.version = lancedb.__version__
        self.dir = None
        self.db = None
        self.tbl = None
        self.table_write_s = None
        self.nprobe = None

    def settings_list(self, dim: int):
        raise NotImplementedError

    def settings(self) -> dict:
        return {"api": "lancedb.connect(tmp dir) (sync API, local filesystem)",
                "table": "columns id int64, vector FixedSizeList<float32, d>; one create_table call",
                "distance_type": "dot", "refine_factor": None,
                "rerank": "none (refine_factor not set: distances from the codes)",
                "nprobes": "query.nprobes(p) (minimum = maximum = p)",
                "search": "one search() call with the list of all query vectors (qps); "
                          "and one search() call per query, timed once (qps_one_by_one)",
                "env": {k: os.environ.get(k) for k in THREAD_ENV},
                "threads": "LANCE_CPU_THREADS / LANCE_IO_THREADS set before import; no per-call setting"}

    def ensure_table(self, base) -> None:
        if self.tbl is not None:
            return
        import numpy as np
        import pyarrow as pa

        n, dim = base.shape
        self.dir = tempfile.mkdtemp(prefix=f"kz-kernel-{self.name}-", dir=self.args.tmp_dir)
        t0 = time.perf_counter()
        self.db = self.lancedb.connect(self.dir)
        vec = pa.FixedSizeListArray.from_arrays(pa.array(base.reshape(-1), type=pa.float32()), dim)
        data = pa.table({"id": pa.array(np.arange(n, dtype=np.int64)), "vector": vec})
        self.tbl = self.db.create_table("kernel", data=data)
        self.table_write_s = time.perf_counter() - t0
        log(f"{self.name}: wrote table {n} x {dim} in {self.table_write_s:.2f} s "
            f"({dir_size(self.dir) / 1e6:.1f} MB on disk)")

    def build(self, base, params: dict, threads: int) -> dict:
        self.ensure_table(base)
        cfg = self.config(params)
        _, text = capture_stderr(lambda: self.tbl.create_index("vector", config=cfg, replace=True))
        m = re.search(r"training (\d+) of the (\d+) requested IVF partitions", text)
        partitions = int(m.group(1)) if m else self.args.nlist
        return {"partitions": partitions, "code_bytes": self.code_bytes(base.shape[1], params)}

    def index_size(self) -> dict:
        idx = [i for i in self.tbl.list_indices() if "vector" in list(i.columns)]
        if len(idx) != 1:
            raise RuntimeError(f"{self.name}: expected one vector index, got {idx}")
        idx = idx[0]
        table_dir = os.path.join(self.dir, "kernel.lance")
        index_dir = os.path.join(table_dir, "_indices", str(idx.index_uuid))
        if not os.path.isdir(index_dir):
            raise RuntimeError(f"{self.name}: index directory {index_dir} not found")
        out = {"index_bytes": dir_size(index_dir),
               "table_data_bytes": dir_size(os.path.join(table_dir, "data")),
               "table_write_secs": round(self.table_write_s, 3)}
        reported = getattr(idx, "size_bytes", None)
        if reported is not None:
            out["lance_reported_index_bytes"] = int(reported)
        return out

    def set_nprobe(self, nprobe: int) -> None:
        self.nprobe = nprobe

    def query(self, q):
        return (self.tbl.search(q).distance_type("dot").nprobes(self.nprobe).limit(K)
                .select(["id", "_distance"]))

    def search(self, queries, threads: int):
        """All queries in one call (a list of query vectors; rows tagged by query_index)."""
        import numpy as np

        res = self.query(list(queries)).to_arrow()
        qi = res["query_index"].to_numpy()
        ids = res["id"].to_numpy()
        dist = res["_distance"].to_numpy()
        order = np.lexsort((dist, qi))  # by query, then by distance
        qi, ids = qi[order], ids[order]
        out = np.full((queries.shape[0], K), -1, dtype=np.int64)
        starts = np.searchsorted(qi, np.arange(queries.shape[0]))
        rank = np.arange(len(qi)) - starts[qi]
        keep = rank < K
        out[qi[keep], rank[keep]] = ids[keep]
        return out

    def search_one_by_one(self, queries):
        import numpy as np

        out = np.full((queries.shape[0], K), -1, dtype=np.int64)
        for i in range(queries.shape[0]):
            got = self.query(queries[i]).to_arrow()["id"].to_numpy()
            out[i, :len(got)] = got[:K]
        return out

    def close(self) -> None:
        self.tbl = None
        self.db = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class LanceIvfPq(Lance):
    name = "lancedb-ivfpq"

    def settings_list(self, dim: int):
        out = []
        for m in self.args.lance_m:
            if dim % m:
                log(f"{self.name}: skipping num_sub_vectors={m}: d={dim} is not a multiple of it")
                continue
            out.append((f"m={m}", {"num_sub_vectors": m, "num_bits": 8}))
        return out

    def settings(self) -> dict:
        return {**super().settings(), "index": "create_index('vector', config=IvfPq(distance_type='dot', "
                "num_partitions=nlist, num_sub_vectors=m, num_bits=8)) (= index_type='IVF_PQ')"}

    def config(self, params: dict):
        import lancedb.index as li

        return li.IvfPq(distance_type="dot", num_partitions=self.args.nlist,
                        num_sub_vectors=params["num_sub_vectors"], num_bits=params["num_bits"])

    @staticmethod
    def code_bytes(dim: int, params: dict) -> int:
        return params["num_sub_vectors"] * params["num_bits"] // 8


class LanceIvfRq(Lance):
    name = "lancedb-ivfrq"

    def settings_list(self, dim: int):
        import lancedb.index as li

        if not hasattr(li, "IvfRq"):
            log(f"{self.name}: lancedb {self.version} has no IvfRq; skipping")
            return []
        return [(f"bits={b}", {"num_bits": b}) for b in self.args.lance_rq_bits]

    def settings(self) -> dict:
        return {**super().settings(), "index": "create_index('vector', config=IvfRq(distance_type='dot', "
                "num_partitions=nlist, num_bits=b)) (= index_type='IVF_RQ', RaBitQ)"}

    def config(self, params: dict):
        import lancedb.index as li

        return li.IvfRq(distance_type="dot", num_partitions=self.args.nlist, num_bits=params["num_bits"])

    @staticmethod
    def code_bytes(dim: int, params: dict) -> int:
        return dim * params["num_bits"] // 8


CLASSES = {"faiss-ivfpq": FaissIvfPq, "faiss-ivfrabitq": FaissIvfRaBitQ,
           "lancedb-ivfpq": LanceIvfPq, "lancedb-ivfrq": LanceIvfRq}


# ---------------------------------------------------------------- driver

def bench_system(system, base, queries, gt, args, emit) -> None:
    n, dim = base.shape
    q = queries.shape[0]
    threads = args.threads
    nprobes = [p for p in args.nprobe if p <= args.nlist]
    if len(nprobes) < len(args.nprobe):
        log(f"skipping nprobe > nlist={args.nlist}: {[p for p in args.nprobe if p > args.nlist]}")
    try:
        for label, params in system.settings_list(dim):
            gc.collect()
            log(f"{system.name} {system.version} {label}: building, {n} x {dim}, nlist {args.nlist}, "
                f"{threads} thread(s)")
            load0 = os.getloadavg()[0]
            extra, build_s, build_cpu = timed(lambda: system.build(base, params, threads))
            sizes = system.index_size()
            size = sizes["index_bytes"]
            log(f"{system.name} {label}: built in {build_s:.2f} s ({build_cpu:.2f} CPU s), index "
                f"{size / 1e6:.2f} MB = {size / n:.1f} B/vector, {json.dumps({**extra, **sizes})}")
            system.set_nprobe(nprobes[0])
            system.search(queries, threads)  # warm-up, untimed
            for nprobe in nprobes:
                system.set_nprobe(nprobe)
                walls, cpus = [], []
                for _ in range(args.repeats):
                    ids, wall, cpu = timed(lambda: system.search(queries, threads))
                    walls.append(wall)
                    cpus.append(cpu)
                med = statistics.median(walls)
                row = {
                    "bench": "kernel", "system": system.name, "setting": label, "params": params,
                    "nlist": args.nlist, "partitions": extra.get("partitions"), "nprobe": nprobe, "k": K,
                    "recall_at_10": round(ann_peers.recall_at_k(ids, gt), 5),
                    "qps": round(q / med, 1),
                    "build_secs": round(build_s, 3), "build_cpu_secs": round(build_cpu, 3),
                    "index_bytes": size, "bytes_per_vector": round(size / n, 2),
                    "code_bytes": extra.get("code_bytes"),
                    "index_bytes_source": system.index_bytes_source,
                    "floats_kept": system.floats_kept,
                    "n": n, "dim": dim, "queries": q, "threads": threads, "version": system.version,
                    "search_secs": [round(w, 5) for w in walls],
                    "search_cpu_secs": round(statistics.median(cpus), 5),
                }
                if isinstance(system, Lance):
                    ids1, wall1, _ = timed(lambda: system.search_one_by_one(queries))
                    row["qps_one_by_one"] = round(q / wall1, 1)
                    row["recall_at_10_one_by_one"] = round(ann_peers.recall_at_k(ids1, gt), 5)
                row.update({k: v for k, v in extra.items() if k not in row})
                row.update({k: v for k, v in sizes.items() if k not in row})
                row["loadavg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
                row["settings"] = system.settings()
                emit(row)
    finally:
        system.close()


def print_table(rows: list[dict]) -> None:
    err = sys.stderr
    if not rows:
        return
    print(file=err)
    print(f"n={rows[0]['n']} dim={rows[0]['dim']} queries={rows[0]['queries']} k={K} "
          f"nlist={rows[0]['nlist']} threads={rows[0]['threads']}; QPS from the median of the timed "
          f"batch searches (all queries in one call); 1by1 = LanceDB one query per call (one pass); "
          f"B/vec = index bytes / n; part = IVF lists actually trained; "
          f"1-min load average {rows[0]['loadavg_1m'][0]} -> {rows[-1]['loadavg_1m'][1]}", file=err)
    print(f"{'system':<16} {'version':<8} {'setting':<8} {'build_s':>8} {'index_MB':>9} {'B/vec':>7} "
          f"{'code_B':>6} {'part':>5} {'nprobe':>6} {'recall@10':>9} {'QPS':>8} {'QPS 1by1':>8}", file=err)
    prev = None
    for r in rows:
        key = (r["system"], r["setting"])
        head = (f"{r['system']:<16} {r['version']:<8} {r['setting']:<8} {r['build_secs']:>8.2f} "
                f"{r['index_bytes'] / 1e6:>9.2f} {r['bytes_per_vector']:>7.1f} {r['code_bytes']:>6} "
                f"{r['partitions']:>5}") if key != prev else " " * 74
        one = f"{r['qps_one_by_one']:>8.0f}" if "qps_one_by_one" in r else f"{'-':>8}"
        print(f"{head} {r['nprobe']:>6} {r['recall_at_10']:>9.4f} {r['qps']:>8.0f} {one}", file=err)
        prev = key
    lance = [r for r in rows if r.get("floats_kept")]
    if lance:
        print(f"LanceDB index_MB counts only the index files (_indices/<uuid>/); the table's data files "
              f"still hold all float32 vectors ({lance[0]['table_data_bytes'] / 1e6:.1f} MB).", file=err)
    print(file=err, flush=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(REPO, "data", "ann"),
                    help="directory with base.npy, queries.npy, gt.npy (default: data/ann)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma list of: " + ", ".join(SYSTEMS))
    ap.add_argument("--threads", type=int, default=2, help="threads for builds and searches (default 2)")
    ap.add_argument("--nlist", type=int, default=1024, help="IVF lists / LanceDB num_partitions (default 1024)")
    ap.add_argument("--nprobe", type=ann_peers.int_list, default=ann_peers.int_list(DEFAULT_NPROBE),
                    help=f"comma list (default {DEFAULT_NPROBE}); values above --nlist are skipped")
    ap.add_argument("--pq-m", type=ann_peers.int_list, default=[48, 96, 192],
                    help="faiss-ivfpq subquantizers (8 bits each; code bytes per vector = m) (default 48,96,192)")
    ap.add_argument("--rabitq-bits", type=ann_peers.int_list, default=[1, 4], help="faiss-ivfrabitq nb_bits (default 1,4)")
    ap.add_argument("--rabitq-qb", type=int, default=None,
                    help="faiss-ivfrabitq query bits qb (default: faiss's default; 0 = float queries)")
    ap.add_argument("--lance-m", type=ann_peers.int_list, default=[48, 96],
                    help="lancedb-ivfpq num_sub_vectors (8 bits each) (default 48,96)")
    ap.add_argument("--lance-rq-bits", type=ann_peers.int_list, default=[1, 4], help="lancedb-ivfrq num_bits (default 1,4)")
    ap.add_argument("--repeats", type=int, default=3, help="timed batch searches per nprobe; the median is reported")
    ap.add_argument("--tmp-dir", default=None,
                    help="where faiss indexes are serialised and LanceDB tables written (default: $TMPDIR or /tmp)")
    ap.add_argument("--json-out", default=None, help="also write the JSON lines here")
    ann_peers.add_synthetic_arguments(ap)
    kzvenv.add_arguments(ap, "/tmp/kz-kernel-venv")
    args = ap.parse_args(argv)

    if kzvenv.should_reexec(args):
        ensure_venv_and_reexec(args, argv)  # does not return

    if args.make_synthetic is not None:
        ann_peers.make_synthetic(args.data, args.make_synthetic, args.synthetic_dim, args.synthetic_queries,
                                 args.seed, args.force)
        return 0

    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in wanted:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s!r}")
    if args.threads < 1 or args.nlist < 1 or args.repeats < 1 or not args.nprobe or min(args.nprobe) < 1:
        ap.error("--threads, --nlist, --nprobe and --repeats take positive integers")
    if min(args.nprobe) > args.nlist:
        ap.error(f"every --nprobe is above --nlist {args.nlist}")
    if not os.path.exists(os.path.join(args.data, "base.npy")):
        log(f"{args.data}/base.npy not found (for development data: --make-synthetic 20000)")
        return 2

    # Thread limits must be in the environment before the native libraries start.
    for k in THREAD_ENV:
        os.environ[k] = str(args.threads)

    import numpy

    base, queries, gt = ann_peers.load_data(args.data)
    n = base.shape[0]
    if n < 39 * args.nlist:
        log(f"warning: n={n} is below 39 x nlist={args.nlist}; k-means will be poorly trained "
            f"(use --nlist {max(1, n // 100)} or so)")
    log(f"python {platform.python_version()}, numpy {numpy.__version__}, {os.cpu_count()} cpus; "
        f"{args.data}: base {base.shape}, queries {queries.shape}, gt {gt.shape}; k={K}, "
        f"nlist {args.nlist}, nprobe {args.nprobe}, threads {args.threads}, {args.repeats} repeats")

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
        one = f", {row['qps_one_by_one']:.0f} QPS one by one" if "qps_one_by_one" in row else ""
        log(f"{row['system']} {row['setting']} nprobe={row['nprobe']}: "
            f"recall@10 {row['recall_at_10']:.4f}, {row['qps']:.0f} QPS{one}")

    try:
        for name in wanted:
            bench_system(CLASSES[name](args), base, queries, gt, args, emit)
    finally:
        if out:
            out.close()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
