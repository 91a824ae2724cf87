#!/usr/bin/env bash
# Side-by-side ANN benchmark on the WordNet glosses (117,659 x 384, MiniLM, cosine):
# kernelize (f32, int8, RaBitQ 1/4-bit + rerank) and hnswlib, FAISS HNSW flat/SQ8,
# USearch, all at M=16, efConstruction=200, threads 1 and 2, one ef sweep, run one after
# the other on the same machine. Results: data/ann-results/{kernelize,peers}.jsonl.
#
#   scripts/bench/ann.sh            # builds data/ann-db (embeds the corpus) if missing
set -euo pipefail
cd "$(dirname "$0")/../.."
EF="${EF:-10,16,24,32,48,64,96,128,192,256}"
source scripts/bench/wordnet-db.sh
mkdir -p data/ann-results
echo "load before: $(cat /proc/loadavg)"
"$K" bench ann --data-dir data/ann-db --ef "$EF" --threads 1,2 | tee data/ann-results/kernelize.txt \
    | grep '^{' > data/ann-results/kernelize.jsonl
echo "load between: $(cat /proc/loadavg)"
python3 scripts/bench/ann_peers.py --data data/ann --ef "$EF" --threads 1,2 --json-out data/ann-results/peers.jsonl \
    2>&1 | grep -v '^{' | tee data/ann-results/peers.txt
echo "load after: $(cat /proc/loadavg)"
