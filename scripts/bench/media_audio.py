#!/usr/bin/env python3
"""Resemblyzer's own pipeline on the audio benchmark's files: the PyTorch side of
crates/media/examples/bench_audio.rs.

    PY=$(scripts/media-venv.sh)
    "$PY" scripts/bench/media_audio.py [--dir crates/media/tests/fixtures/audio] \\
        [--threads 1,2] [--repeats 5] [--json]

For each file: `VoiceEncoder("cpu").embed_utterance(preprocess_wav(path))` (librosa load,
soxr HQ resampling, volume normalisation, webrtcvad trimming, librosa mel spectrogram,
PyTorch LSTM), files one after another, with `torch.set_num_threads(N)` (intra-op
threads; the preprocessing is single-threaded Python/NumPy, as Resemblyzer ships it).
Files are read from the page cache (one untimed pass first, which also warms up numba
and measures each file's decoded duration); the figure is audio seconds / median pass
time over --repeats timed passes, the same measure as bench_audio.

OMP_WAIT_POLICY defaults to PASSIVE here: PyTorch's OpenMP threads otherwise spin at every
barrier, and on a shared machine (another process on one of the cores) a spinning thread
that loses its core stalls each of the LSTM's small parallel regions; at 2 threads that
made PyTorch 5-7x slower than at 1 thread. PASSIVE is the better figure for PyTorch there;
set OMP_WAIT_POLICY=ACTIVE to measure the default.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=str(ROOT / "crates/media/tests/fixtures/audio"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import librosa
    import numpy as np
    import torch
    from resemblyzer import VoiceEncoder, preprocess_wav

    files = sorted(p for p in Path(args.dir).iterdir() if p.suffix in (".wav", ".flac", ".mp3", ".ogg"))
    if not files:
        sys.exit(f"no audio files in {args.dir}")
    encoder = VoiceEncoder("cpu", verbose=False)

    def one_pass():
        for path in files:
            with np.errstate(all="ignore"):
                encoder.embed_utterance(preprocess_wav(path))

    print(f"{'threads':>7}  {'files':>6}  {'audio s':>9}  {'median s':>11}  {'audio-s per s':>14}")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        one_pass()
        audio_secs = 0.0
        for path in files:
            y, sr = librosa.load(str(path), sr=None)
            audio_secs += len(y) / sr
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            one_pass()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        rate = audio_secs / median
        print(f"{threads:>7}  {len(files):>6}  {audio_secs:>9.1f}  {median:>11.3f}  {rate:>14.1f}")
        if args.json:
            print(json.dumps({
                "bench": "media_audio", "impl": "resemblyzer-pytorch", "torch": torch.__version__,
                "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
                "threads": threads, "files": len(files), "audio_secs": audio_secs,
                "repeats": args.repeats, "median_secs": median, "audio_secs_per_sec": rate,
            }))


if __name__ == "__main__":
    main()
