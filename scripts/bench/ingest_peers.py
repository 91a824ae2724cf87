#!/usr/bin/env python3
"""Ingest throughput of peer vector stores (chromadb, lancedb) on a JSONL file.

    python3 scripts/bench/ingest_peers.py --vectors data/vectors-384.jsonl --batch 1000

Run with any python3 >= 3.9. Unless already running inside --venv (default
/tmp/kz-peers-venv), it creates that venv, pip-installs the pinned
scripts/bench/requirements-ingest.txt (skipped when the venv's stamp matches the
file) and re-executes itself inside it.

Per peer and run (fresh temp directory each run), the JSONL file is streamed in
batches of --batch records. For each batch:
  parse  = read lines + json.loads + build ids / float32 matrix / metadata
           (the same work `kernelize` does when it ingests JSONL), then
  ingest = the peer's own write call(s) for that batch:
    chromadb: collection.add(ids=, embeddings=, metadatas=) on a PersistentClient
              collection with cosine space. Chroma inserts into its HNSW index
              inside add(), so ingest time includes index construction.
    lancedb:  create_table(first batch), then table.add(batch) per batch
              (pyarrow table: id, vector FixedSizeList<float32>, metadata
              columns). No vector index is built by add(); use --lance-index
              to also time create_index() separately (not part of records/s).
parse_s and ingest_s are the sums over all batches; records/s = n / (parse_s
+ ingest_s). The median run (by total time) of --runs runs is reported.
After each run (untimed) the record count is verified and one k=10 query is
timed, to show whether the index is usable right away.

Output: a table on stdout, then one JSON line per peer:
  {"peer": ..., "records_per_s": ..., "parse_s": ..., "ingest_s": ..., "runs": [...], ...}
(--json-out FILE also writes those lines to FILE). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import kzvenv  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIREMENTS = os.path.join(HERE, "requirements-ingest.txt")
PEERS = ("chromadb", "lancedb")


def log(msg: str) -> None:
    print(f"ingest-peers: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- venv bootstrap

def ensure_venv_and_reexec(args, argv: list[str]) -> None:
    venv = args.venv
    py = kzvenv.ensure(venv, REQUIREMENTS, args.fresh_venv, log)
    os.execv(py, [py, os.path.abspath(__file__), *argv])


# ---------------------------------------------------------------- input

def batches(path: str, batch: int, limit: int | None, timer: dict):
    """Yield (ids, float32 matrix, metadatas) per batch; parse time goes into timer.

    A `.npy` file (as scripts/gen-vectors.py writes beside its JSONL) is read whole with
    numpy.load and sliced into batches (views, no copies); its ids come from the
    `.ids.txt` file beside it, and its rows have no metadata (None)."""
    import numpy as np

    if path.endswith(".npy"):
        yield from npy_batches(path, batch, limit, timer)
        return

    loads = json.loads
    perf = time.perf_counter
    n = 0
    with open(path, "rb") as f:
        while True:
            t0 = perf()
            ids, vecs, metas = [], [], []
            for line in f:
                if not line.strip():
                    continue
                r = loads(line)
                ids.append(r["id"])
                vecs.append(r["vector"])
                metas.append(r.get("metadata") or {})
                n += 1
                if len(ids) == batch or (limit is not None and n >= limit):
                    break
            if not ids:
                timer["parse_s"] += perf() - t0
                return
            mat = np.asarray(vecs, dtype=np.float32)
            timer["parse_s"] += perf() - t0
            yield ids, mat, metas
            if limit is not None and n >= limit:
                return


def npy_batches(path: str, batch: int, limit: int | None, timer: dict):
    import numpy as np

    t0 = time.perf_counter()
    mat = np.load(path)
    if mat.dtype != np.float32 or mat.ndim != 2:
        raise SystemExit(f"{path}: want a 2-D float32 array, got {mat.dtype} {mat.shape}")
    with open(path[: -len(".npy")] + ".ids.txt") as f:
        ids = f.read().split("\n")[: len(mat)]
    n = len(mat) if limit is None else min(limit, len(mat))
    timer["parse_s"] += time.perf_counter() - t0
    for start in range(0, n, batch):
        end = min(start + batch, n)
        yield ids[start:end], mat[start:end], None


def warm_page_cache(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


# ---------------------------------------------------------------- peers

class Chroma:
    name = "chromadb"

    def __init__(self, args):
        import chromadb

        self.chromadb = chromadb
        self.args = args
        self.version = chromadb.__version__

    def settings(self) -> dict:
        return {
            "client": "PersistentClient (embedded, Rust core)",
            "hnsw": {"space": "cosine", "num_threads": self.args.threads,
                     "ef_construction": 100, "max_neighbors": 16,
                     "batch_size": 100, "sync_threshold": 1000},
            "note": "HNSW is built inside collection.add(); ef/M/batch/sync are Chroma defaults, set explicitly",
        }

    def run(self, path: str, tmp: str, timer: dict) -> dict:
        from chromadb.config import Settings

        client = self.chromadb.PersistentClient(
            path=tmp, settings=Settings(anonymized_telemetry=False, allow_reset=True)
        )
        col = client.create_collection(
            "bench",
            configuration={"hnsw": self.settings()["hnsw"]},
            embedding_function=None,
        )
        perf = time.perf_counter
        last = None
        for ids, mat, metas in batches(path, self.args.batch, self.args.limit, timer):
            t0 = perf()
            col.add(ids=ids, embeddings=mat, metadatas=metas or None)
            timer["ingest_s"] += perf() - t0
            last = mat[-1]
        count = col.count()
        t0 = perf()
        res = col.query(query_embeddings=[last], n_results=10)
        q_ms = (perf() - t0) * 1e3
        self_hit = bool(res["ids"] and res["ids"][0] and res["ids"][0][0] == ids[-1])
        try:
            client.reset()
        except Exception:
            pass
        try:
            self.chromadb.api.client.SharedSystemClient.clear_system_cache()
        except Exception:
            pass
        return {"count": count, "first_query_ms": round(q_ms, 2), "query_self_hit": self_hit}


class Lance:
    name = "lancedb"

    def __init__(self, args):
        import lancedb

        self.lancedb = lancedb
        self.args = args
        self.version = lancedb.__version__

    def settings(self) -> dict:
        s = {
            "api": "lancedb.connect(dir) (sync API, local filesystem)",
            "write": "create_table(first batch) then table.add(batch) in append mode; one new fragment + table version per call",
            "env": {k: os.environ.get(k) for k in ("LANCE_CPU_THREADS", "LANCE_IO_THREADS")},
            "write_parallelism": self.args.threads,
            "vector_index": "none during ingest (brute force until create_index)",
        }
        if self.args.lance_index:
            s["timed_separately"] = f"create_index({self.args.lance_index}, metric=cosine)"
        return s

    @staticmethod
    def to_arrow(ids, mat, metas):
        import pyarrow as pa

        n, dim = mat.shape
        vec = pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1), type=pa.float32()), dim)
        cols = {"id": pa.array(ids, type=pa.string()), "vector": vec}
        keys = []
        for m in metas or ():
            for k in m:
                if k not in cols and k not in keys:
                    keys.append(k)
        for k in keys:
            cols[k] = pa.array([m.get(k) for m in metas])
        return pa.table(cols)

    def run(self, path: str, tmp: str, timer: dict) -> dict:
        db = self.lancedb.connect(tmp)
        perf = time.perf_counter
        tbl = None
        last = None
        for ids, mat, metas in batches(path, self.args.batch, self.args.limit, timer):
            t0 = perf()
            data = self.to_arrow(ids, mat, metas)
            if tbl is None:
                tbl = db.create_table("bench", data=data)
            else:
                tbl.add(data, write_parallelism=self.args.threads)
            timer["ingest_s"] += perf() - t0
            last = (ids[-1], mat[-1])
        count = tbl.count_rows()
        extra: dict = {"count": count, "table_version": tbl.version}
        t0 = perf()
        res = tbl.search(last[1]).distance_type("cosine").limit(10).to_list()
        extra["first_query_ms"] = round((perf() - t0) * 1e3, 2)
        extra["query_self_hit"] = bool(res and res[0]["id"] == last[0])
        if self.args.lance_index:
            t0 = perf()
            import lancedb.index as li

            cfg = {"IVF_HNSW_SQ": li.HnswSq, "IVF_HNSW_PQ": li.HnswPq, "IVF_PQ": li.IvfPq,
                   "IVF_SQ": li.IvfSq, "IVF_FLAT": li.IvfFlat}[self.args.lance_index.upper()]
            tbl.create_index("vector", config=cfg(distance_type="cosine"))
            extra["create_index_s"] = round(perf() - t0, 3)
            t0 = perf()
            tbl.search(last[1]).distance_type("cosine").limit(10).to_list()
            extra["indexed_query_ms"] = round((perf() - t0) * 1e3, 2)
        return extra


# ---------------------------------------------------------------- driver

def dir_size(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for fn in files:
            try:
                total += os.path.getsize(os.path.join(root, fn))
            except OSError:
                pass
    return total


def bench_peer(peer, args) -> dict:
    runs = []
    for i in range(args.runs):
        gc.collect()
        tmp = tempfile.mkdtemp(prefix=f"kz-ingest-{peer.name}-", dir=args.tmp_dir)
        timer = {"parse_s": 0.0, "ingest_s": 0.0}
        load0 = os.getloadavg()[0]
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        try:
            t0 = time.perf_counter()
            extra = peer.run(args.vectors, tmp, timer)
            wall = time.perf_counter() - t0
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            disk = dir_size(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        n = extra.pop("count")
        if args.expect_n is not None and n != args.expect_n:
            raise SystemExit(f"{peer.name}: run {i + 1} holds {n} records, expected {args.expect_n}")
        total = timer["parse_s"] + timer["ingest_s"]
        r = {
            "run": i + 1,
            "n": n,
            "parse_s": round(timer["parse_s"], 3),
            "ingest_s": round(timer["ingest_s"], 3),
            "total_s": round(total, 3),
            "records_per_s": round(n / total, 1),
            "ingest_records_per_s": round(n / timer["ingest_s"], 1),
            "wall_s": round(wall, 3),
            "disk_bytes": disk,
            # CPU seconds of this process (all threads), incl. the untimed checks
            "cpu_user_s": round(ru1.ru_utime - ru0.ru_utime, 2),
            "cpu_sys_s": round(ru1.ru_stime - ru0.ru_stime, 2),
            "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
            **extra,
        }
        log(f"{peer.name} run {i + 1}/{args.runs}: {json.dumps(r)}")
        runs.append(r)
        args.expect_n = n if args.expect_n is None else args.expect_n
    med = sorted(runs, key=lambda r: r["total_s"])[len(runs) // 2]
    return {
        "peer": peer.name,
        "version": peer.version,
        "records_per_s": round(statistics.median(r["records_per_s"] for r in runs), 1),
        "ingest_records_per_s": round(statistics.median(r["ingest_records_per_s"] for r in runs), 1),
        "parse_s": med["parse_s"],
        "ingest_s": med["ingest_s"],
        "total_s": med["total_s"],
        "n": med["n"],
        "batch": args.batch,
        "threads": args.threads,
        "settings": peer.settings(),
        "runs": runs,
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="ingest throughput of chromadb and lancedb on a vectors JSONL or .npy file")
    ap.add_argument("--vectors", default="data/vectors-384.jsonl",
                    help="JSONL, or .npy with its ids in the .ids.txt beside it (scripts/gen-vectors.py writes both)")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="threads where a peer lets you set it")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma list of: " + ", ".join(PEERS))
    ap.add_argument("--limit", type=int, default=None, help="ingest only the first N records (smoke test)")
    ap.add_argument("--lance-index", default=None, metavar="TYPE", help="also time lancedb create_index(TYPE): IVF_HNSW_SQ, IVF_HNSW_PQ, IVF_PQ, IVF_SQ or IVF_FLAT (cosine, defaults otherwise)")
    kzvenv.add_arguments(ap, "/tmp/kz-peers-venv")
    ap.add_argument("--tmp-dir", default=None, help="parent of the per-run temp dirs (default: $TMPDIR or /tmp)")
    ap.add_argument("--json-out", default=None, help="also write the per-peer JSON lines here")
    args = ap.parse_args(argv)
    args.expect_n = None

    if kzvenv.should_reexec(args):
        ensure_venv_and_reexec(args, argv)  # does not return

    # Thread limits must be in the environment before the peers' native code starts.
    t = str(args.threads)
    for k in ("LANCE_CPU_THREADS", "LANCE_IO_THREADS", "RAYON_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[k] = t
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

    if not os.path.exists(args.vectors):
        log(f"{args.vectors} not found; generate it with scripts/gen-vectors.py")
        return 2
    wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
    for p in wanted:
        if p not in PEERS:
            ap.error(f"unknown peer {p!r}")

    import numpy
    import pyarrow

    log(f"python {platform.python_version()}, numpy {numpy.__version__}, pyarrow {pyarrow.__version__}, "
        f"{os.cpu_count()} cpus, threads={t} (LANCE_CPU_THREADS, LANCE_IO_THREADS, RAYON_NUM_THREADS, OMP_NUM_THREADS, chroma hnsw num_threads, lance write_parallelism)")
    log(f"warming page cache with {args.vectors} ({os.path.getsize(args.vectors) / 1e6:.0f} MB)")
    warm_page_cache(args.vectors)

    results = []
    for name in wanted:
        peer = Chroma(args) if name == "chromadb" else Lance(args)
        log(f"{name} {peer.version}: {args.runs} runs, batch {args.batch}")
        results.append(bench_peer(peer, args))

    print()
    print(f"{'peer':<10} {'version':<8} {'n':>8} {'records/s':>10} {'ingest-only/s':>14} {'parse_s':>8} {'ingest_s':>9} {'total_s':>8}  runs (records/s)")
    for r in results:
        rs = ", ".join(f"{x['records_per_s']:.0f}" for x in r["runs"])
        print(f"{r['peer']:<10} {r['version']:<8} {r['n']:>8} {r['records_per_s']:>10.0f} {r['ingest_records_per_s']:>14.0f} "
              f"{r['parse_s']:>8.2f} {r['ingest_s']:>9.2f} {r['total_s']:>8.2f}  [{rs}]")
    print()
    lines = [json.dumps({"peer": r["peer"], "records_per_s": r["records_per_s"], "parse_s": r["parse_s"],
                         "ingest_s": r["ingest_s"], "runs": r["runs"],
                         **{k: v for k, v in r.items() if k not in ("peer", "records_per_s", "parse_s", "ingest_s", "runs")},
                         "python": platform.python_version(), "numpy": numpy.__version__, "pyarrow": pyarrow.__version__})
             for r in results]
    for line in lines:
        print(line)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
