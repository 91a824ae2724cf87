#!/usr/bin/env python3
"""Generate random unit-norm float32 vectors for the ingest benchmarks.

    python3 scripts/gen-vectors.py --n 100000 --dim 384 --out data/vectors-384.jsonl --seed 1

Writes
  * OUT (JSONL), one record per line:
        {"id": "v000000", "vector": [...dim floats...], "metadata": {"group": i % 10}}
  * OUT with .jsonl replaced by .npy: the same vectors, float32 little-endian,
    shape (n, dim), NPY format 1.0 (readable by numpy.load)
  * OUT with .jsonl replaced by .ids.txt: the ids, one per line, in row order.

Plain python3, standard library only. numpy is NOT needed (and not used) so
the output is byte-identical on every machine for a given --seed: the .npy
file is written directly in the documented NPY 1.0 layout.

Values: x_j ~ N(0, 1) from random.Random(seed).gauss, divided by the float64
norm math.hypot(*x), then rounded to float32. Each float is printed as the
shortest repr of that float32 value widened to float64, i.e. exactly what
`json.dumps(np.asarray(v, np.float32).tolist())` prints (e.g. a
sentence-transformers embedding dumped from Python): typically 9 to 11
significant digits, like 0.05184371769428253.

All files are written to temp files and renamed into place, so an
interrupted run leaves no half-written output behind.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from array import array


def log(msg: str) -> None:
    print(f"gen-vectors: {msg}", file=sys.stderr, flush=True)


class AtomicFile:
    """Write to a temp file in the target directory; fsync + rename on commit."""

    def __init__(self, path: str, mode: str = "w"):
        self.path = path
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        if mode == "wb":
            self.f = os.fdopen(fd, "wb", buffering=1 << 20)
        else:
            self.f = os.fdopen(fd, "w", encoding="utf-8", newline="\n", buffering=1 << 20)

    def commit(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass


def npy_header(n: int, dim: int) -> bytes:
    """NPY format 1.0 header for a C-order little-endian float32 (n, dim) array."""
    d = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (n, dim)
    # magic(6) + version(2) + header_len(2) + header, padded with spaces and a
    # final newline so the data starts at a multiple of 64 bytes.
    total = 10 + len(d) + 1
    pad = (-total) % 64
    header = (d + " " * pad + "\n").encode("latin-1")
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def sibling(out: str, suffix: str) -> str:
    base = out[: -len(".jsonl")] if out.endswith(".jsonl") else out
    return base + suffix


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="random unit-norm float32 vectors as JSONL (+ .npy + .ids.txt)")
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--out", default=None, help="JSONL path (default data/vectors-<dim>.jsonl)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--groups", type=int, default=10, help="metadata.group = i %% groups")
    ap.add_argument("--no-npy", action="store_true", help="skip the .npy and .ids.txt sidecars")
    args = ap.parse_args(argv)
    if args.n <= 0 or args.dim <= 0 or args.groups <= 0:
        ap.error("--n, --dim and --groups must be > 0")
    out = args.out or f"data/vectors-{args.dim}.jsonl"
    npy_path = sibling(out, ".npy")
    ids_path = sibling(out, ".ids.txt")

    rng = random.Random(args.seed)
    gauss = rng.gauss
    hypot = math.hypot
    dumps = json.JSONEncoder(separators=(", ", ": ")).encode
    little = sys.byteorder == "little"
    rng_dim = range(args.dim)

    files = [AtomicFile(out)]
    if not args.no_npy:
        files += [AtomicFile(npy_path, "wb"), AtomicFile(ids_path)]
    t0 = time.perf_counter()
    try:
        jf = files[0].f
        if not args.no_npy:
            nf, idf = files[1].f, files[2].f
            nf.write(npy_header(args.n, args.dim))
        for i in range(args.n):
            x = [gauss(0.0, 1.0) for _ in rng_dim]
            norm = hypot(*x)
            v = array("f", [c / norm for c in x])  # round to float32
            vid = "v%06d" % i
            jf.write(dumps({"id": vid, "vector": v.tolist(), "metadata": {"group": i % args.groups}}))
            jf.write("\n")
            if not args.no_npy:
                if not little:
                    v.byteswap()
                nf.write(v.tobytes())
                idf.write(vid + "\n")
            if (i + 1) % 20000 == 0:
                log(f"{i + 1}/{args.n} ({time.perf_counter() - t0:.1f}s)")
        for f in files:
            f.commit()
    except BaseException:
        for f in files:
            f.abort()
        raise
    dt = time.perf_counter() - t0
    size = os.path.getsize(out)
    log(f"wrote {out}: {args.n} x {args.dim} float32, seed {args.seed}, {size / 1e6:.1f} MB in {dt:.1f}s")
    if not args.no_npy:
        log(f"wrote {npy_path} ({os.path.getsize(npy_path) / 1e6:.1f} MB) and {ids_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
