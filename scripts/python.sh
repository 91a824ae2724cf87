#!/usr/bin/env bash
# The Python package (crates/python): makes its venv ($KZ_PYTHON_VENV, else
# ~/.cache/kz-venv-python) with the pinned scripts/tests/requirements-python.txt (maturin,
# numpy, pyarrow, pandas, pytest, torch; skipped once the venv's stamp matches the file),
# then builds the abi3 wheel with maturin into the shared target directory and installs
# it into that venv.
#
#   scripts/python.sh --prepare  the venv only (scripts/test.sh: the pytest suite then runs
#                                inside `cargo test` against the extension module of the
#                                workspace build, crates/python/tests/pytest.rs)
#   scripts/python.sh            a dev-profile wheel, installed into the venv
#   scripts/python.sh --release  a release wheel ($CARGO_TARGET_DIR/wheels), installed
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kz-target}"
VENV="${KZ_PYTHON_VENV:-$HOME/.cache/kz-venv-python}"
REQ=scripts/tests/requirements-python.txt
PY="${KERNELIZE_PYTHON:-python3}"
mode="${1:-}"

want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ "$(cat "$VENV/.kz-requirements.sha256" 2>/dev/null)" != "$want" ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # No pip cache: torch and its CUDA runtime wheels would take another 4 GB there.
  "$VENV/bin/python" -m pip install --quiet --no-cache-dir -r "$REQ"
  echo "$want" > "$VENV/.kz-requirements.sha256"
fi

[ "$mode" = "--prepare" ] && exit 0

profile=dev
out="$CARGO_TARGET_DIR/wheels/dev"
if [ "$mode" = "--release" ]; then
  profile=release
  out="$CARGO_TARGET_DIR/wheels"
fi
rm -f "$out"/kernelize-*.whl
"$VENV/bin/maturin" build --profile "$profile" --manifest-path crates/python/Cargo.toml \
  --interpreter "$VENV/bin/python" --out "$out"
"$VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps "$out"/kernelize-*.whl
echo "installed $(ls "$out"/kernelize-*.whl) into $VENV"
