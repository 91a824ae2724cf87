#!/usr/bin/env bash
# Image and audio encoders against their PyTorch references, side by side in one run: same
# files (the fixture folders), same thread counts, Kernelize first then PyTorch for each
# thread count. Images: scripts/bench/media_image.py (which runs both sides); audio:
# crates/media/examples/bench_audio.rs, then scripts/bench/media_audio.py (Resemblyzer's own
# preprocess_wav + embed_utterance). Prints the CPU model first; record the figures,
# ratios and CPU in BENCHMARKS.md.
#   scripts/bench/media.sh [THREADS (default 1,2)] [REPEATS (default 5)]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kz-target}"
threads="${1:-1,2}"
repeats="${2:-5}"
PY=$(scripts/media-venv.sh)
lscpu | grep 'Model name' || true
echo "== images (images/s)"
"$PY" scripts/bench/media_image.py --threads "$threads" --repeats "$repeats"
echo "== audio (audio-seconds/s)"
cargo build --quiet --release -p kernelize-media --example bench_audio
for t in ${threads//,/ }; do
  "$CARGO_TARGET_DIR/release/examples/bench_audio" --threads "$t" --repeats "$repeats"
  "$PY" scripts/bench/media_audio.py --threads "$t" --repeats "$repeats"
done
