#!/usr/bin/env bash
# The Python package beside hnswlib, FAISS, lancedb and chromadb, from Python, on the
# WordNet MiniLM vectors (scripts/bench/python_peers.py; results in BENCHMARKS.md):
# builds data/ann-db and its .npy export if missing, the release wheel, then runs the
# peers' script (its own venv) with that wheel.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/wordnet-db.sh      # release binary ($K), models, corpus, data/ann-db
[ -f data/ann/base.npy ] || "$K" bench ann --data-dir data/ann-db --export-only
scripts/python.sh --release             # $CARGO_TARGET_DIR/wheels/kernelize-*.whl
echo "load before: $(cat /proc/loadavg)"
python3 scripts/bench/python_peers.py --data data/ann --json-out data/python-peers.jsonl \
    --wheel "$(ls -t "$CARGO_TARGET_DIR"/wheels/kernelize-*.whl | head -1)" "$@"
echo "load after: $(cat /proc/loadavg)"
