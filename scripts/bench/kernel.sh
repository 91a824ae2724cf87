#!/usr/bin/env bash
# Size-vs-recall curve of knowledge kernels on the WordNet glosses (117,659 x 384,
# MiniLM, cosine), next to FAISS IVF-PQ / IVF-RaBitQ and LanceDB IVF-PQ / IVF-RQ on the
# same vectors, queries and ground truth. Results: data/kernel-results/.
#
#   scripts/bench/kernel.sh            # builds data/ann-db (embeds the corpus) if missing
#   PEERS=0 scripts/bench/kernel.sh    # kernels only
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/wordnet-db.sh
OUT=data/kernel-results
mkdir -p "$OUT"
[ -f "$OUT/sign.key" ] || "$K" keys generate --out "$OUT/sign"
# name | build flags
VARIANTS=(
  "ivf-rabitq4|--quantization rabitq4 --index ivf"
  "ivf-rabitq4-nodedup|--quantization rabitq4 --index ivf --no-dedup"
  "ivf-rabitq1|--quantization rabitq1 --index ivf"
  "ivf-int8|--quantization int8 --index ivf"
  "ivf-f32|--quantization none --index ivf"
  "hnsw-rabitq4|--quantization rabitq4 --index hnsw"
  "hnsw-int8|--quantization int8 --index hnsw"
)
echo "load before: $(cat /proc/loadavg)"
for v in "${VARIANTS[@]}"; do
    name="${v%%|*}"; flags="${v#*|}"
    # shellcheck disable=SC2086
    "$K" --data-dir data/ann-db kernel build --collection wordnet --out "$OUT/$name.kernel" --key "$OUT/sign.key" \
        --queries data/wordnet-queries.jsonl --queries-limit 1000 $flags > "$OUT/$name.txt"
    "$K" kernel inspect "$OUT/$name.kernel" --json > "$OUT/$name.json"
    "$K" bench kernel "$OUT/$name.kernel" --pubkey "$OUT/sign.pub" | tee "$OUT/$name.bench.txt" | tail -4 | head -3
    echo "$name: $(grep -E 'kernel  |recall@10' "$OUT/$name.txt" | tr -s ' ')"
done
if [ "${PEERS:-1}" = 1 ]; then
    "$K" bench ann --data-dir data/ann-db --export-only
    python3 scripts/bench/kernel_peers.py --data data/ann --nlist 686 --nprobe 8,16,32,64,128,256,512,686 \
        --rabitq-qb 8 --repeats 3 --json-out "$OUT/peers.jsonl" > /dev/null
fi
echo "load after: $(cat /proc/loadavg)"
python3 scripts/bench/kernel_table.py "$OUT"
