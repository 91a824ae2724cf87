# Sourced by the WordNet benchmarks (ann.sh, kernel.sh): builds the release binary (sets
# $K), installs the model, writes the corpus and held-out queries, and ingests the corpus
# into data/ann-db (collection `wordnet`) unless it is there already.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kz-target}"
cargo build --release --locked -p kernelize
K="$CARGO_TARGET_DIR/release/kernelize"
"$K" models install
scripts/wordnet-corpus.sh data/wordnet.jsonl --queries data/wordnet-queries.jsonl --n-queries 5000 --seed 7
if [ ! -d data/ann-db/collections/wordnet ]; then
    "$K" --data-dir data/ann-db ingest data/wordnet.jsonl --collection wordnet --create --durability buffered
fi
