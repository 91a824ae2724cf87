#!/usr/bin/env python3
"""Local-model speed of llama.cpp (llama-cpp-python), measured like kernelize's own.

    python3 scripts/bench/llm_peers.py --model PATH.gguf --threads 1,2 --reps 5

Creates /tmp/kz-llama-venv on first use (pip builds llama-cpp-python from source with
llama.cpp's default flags; on CPUs that advertise AMX, /tmp/kz-llama-venv-noamx, built
native without AMX: see BENCHMARKS.md), then re-executes itself inside it. Per thread count:
  load      Llama(model_path, n_ctx=4096, n_batch=512, n_threads=t, n_threads_batch=t)
            wall time (first load after the file is in the page cache; one untimed load first).
  prefill   a 512-token prompt (the same text, tokenized the same way, as kernelize's
            `LocalModel::bench`) evaluated in one batch from an empty cache: tokens/s.
  decode    128 tokens, one at a time, greedy (argmax of the last logits): tokens/s.
The median of --reps repetitions. One JSON line per thread count on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import kzvenv  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog while the knowledge kernel answers offline. "


DEFAULT_VENV = "/tmp/kz-llama-venv"


def cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_tile" in line for line in f)
    except OSError:
        return False


def log(msg: str) -> None:
    print(f"llm_peers: {msg}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--generate", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    kzvenv.add_arguments(ap, DEFAULT_VENV)
    args = ap.parse_args()
    if kzvenv.should_reexec(args):
        req = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements-llm.txt")
        if cpu_has_amx():
            # llama.cpp's native build turns on its AMX backend where the CPU advertises
            # AMX; in guests that cannot use it (KVM here) the first matmul segfaults.
            # Build native without AMX, bypassing pip's wheel cache (a cached AMX wheel).
            flags = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
            for var in ("CFLAGS", "CXXFLAGS"):
                os.environ[var] = f"{os.environ.get(var, '')} {flags}".strip()
            os.environ["PIP_NO_CACHE_DIR"] = "1"
            if args.venv == DEFAULT_VENV:
                args.venv = DEFAULT_VENV + "-noamx"
                sys.argv += ["--venv", args.venv]
            log(f"AMX advertised: building llama.cpp without it ({flags}) in {args.venv}")
        py = kzvenv.ensure(args.venv, req, args.fresh_venv, log)
        os.execv(py, [py] + sys.argv)
    import ctypes

    import llama_cpp
    import numpy as np
    from llama_cpp import Llama, __version__

    for t in [int(x) for x in args.threads.split(",")]:
        kw = dict(model_path=args.model, n_ctx=4096, n_batch=512, n_ubatch=512, n_threads=t, n_threads_batch=t, verbose=False)
        Llama(**kw).close()
        start = time.perf_counter()
        llm = Llama(**kw)
        load = time.perf_counter() - start
        one = llm.tokenize(TEXT.encode(), add_bos=False, special=False)
        tokens = (one * (args.prompt // len(one) + 1))[: args.prompt]
        pre, dec = [], []
        for _ in range(args.reps):
            llm.reset()  # n_tokens = 0: eval() drops the cache past it and evaluates all
            s = time.perf_counter()
            llm.eval(tokens)
            pre.append(time.perf_counter() - s)
            s = time.perf_counter()
            n_vocab = llm.n_vocab()
            for _ in range(args.generate):
                ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
                logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
                llm.eval([int(np.argmax(logits))])
            dec.append(time.perf_counter() - s)
        print(json.dumps({
            "engine": f"llama-cpp-python {__version__}", "threads": t, "load_s": load,
            "prefill_tok_s": args.prompt / statistics.median(pre),
            "decode_tok_s": args.generate / statistics.median(dec),
        }), flush=True)
        llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
