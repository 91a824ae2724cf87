#!/usr/bin/env bash
# The main job: builds kernelize, creates a demo collection, ingests a demo corpus,
# reads it back, shows stats, takes a backup and verifies it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kz-target}"
cargo build --release --locked -p kernelize
K="$CARGO_TARGET_DIR/release/kernelize"
export KERNELIZE_DATA_DIR="${KERNELIZE_DATA_DIR:-kernelize-data}"
DEMO="${KERNELIZE_DEMO_DIR:-data/demo}"
mkdir -p "$DEMO"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "demo corpus: 5,000 pre-computed 384-dim vectors"
[ -s "$DEMO/vectors.jsonl" ] || python3 scripts/gen-vectors.py --n 5000 --dim 384 --out "$DEMO/vectors.jsonl" --no-npy

step "create collection demo"
"$K" collection drop demo >/dev/null 2>&1 || true
"$K" collection create demo --dim 384 --metric cosine
step "upsert (batches of 1,000, durability always)"
"$K" upsert --collection demo "$DEMO/vectors.jsonl"
step "get v000042"
"$K" get --collection demo v000042 | cut -c1-160
step "stats"
"$K" stats --collection demo
step "backup + verify"
rm -rf "$DEMO/backup.tar"
"$K" backup "$DEMO/backup.tar"
"$K" verify "$DEMO/backup.tar"
"$K" verify
