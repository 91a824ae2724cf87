#!/usr/bin/env bash
# Build the WordNet 3.0 demo corpus for Kernelize.
#
#   scripts/wordnet-corpus.sh [OUT] [--limit N] [--queries OUT_Q [--n-queries 5000] [--seed 7]] [--force]
#
# OUT defaults to data/wordnet.jsonl (relative to the current directory).
# One JSON line per synset: {"id": "n:02084071", "text": <gloss>,
#   "metadata": {"pos": "n", "lemmas": [...], "lexname": "noun.animal"}}
# Expected: 117,659 synsets (n 82115, v 13767, a 7463 + s 10693, r 3621);
# the run fails if the parsed total differs from the data lines in the files.
#
# Examples:
#   scripts/wordnet-corpus.sh                                   # full corpus
#   scripts/wordnet-corpus.sh data/wordnet-1k.jsonl --limit 1000  # quick demo slice
#   scripts/wordnet-corpus.sh data/wordnet.jsonl \
#       --queries data/wordnet-queries.jsonl --n-queries 5000 --seed 7
#
# Idempotent: outputs are written atomically with a sha256 manifest next to
# them (<OUT>.manifest.json); a rerun with the same arguments is a no-op.
# Installs Debian's wordnet-base if /usr/share/wordnet/data.noun is missing.
# See scripts/wordnet_corpus.py for the exact format.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
dict_dir="${WNSEARCHDIR:-/usr/share/wordnet}"

# Nothing to do? (no apt, no parsing)
rc=0
"$py" "$here/wordnet_corpus.py" --check "$@" || rc=$?
case "$rc" in
  0) exit 0 ;;
  3) ;;            # work needed
  *) exit "$rc" ;; # usage error
esac

if [[ ! -f "$dict_dir/data.noun" ]]; then
  echo "wordnet-corpus: $dict_dir/data.noun missing, installing Debian package wordnet-base" >&2
  if [[ "$(id -u)" -eq 0 ]]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "wordnet-corpus: not root and no sudo; install wordnet-base yourself (apt-get install wordnet-base)" >&2
    exit 1
  fi
  "${as_root[@]}" apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y wordnet-base
fi

exec "$py" "$here/wordnet_corpus.py" "$@"
