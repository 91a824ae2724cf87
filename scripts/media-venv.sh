#!/usr/bin/env bash
# The Python environment of the image and audio references (fixture vectors, the PyTorch
# side of the media benchmark): the Python package's venv (scripts/python.sh --prepare:
# torch, numpy) plus scripts/tests/requirements-media.txt, installed once (stamped).
# Prints the interpreter's path.
#   PY=$(scripts/media-venv.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${KZ_PYTHON_VENV:-$HOME/.cache/kz-venv-python}"
REQ=scripts/tests/requirements-media.txt
scripts/python.sh --prepare >&2
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ "$(cat "$VENV/.kz-media-requirements.sha256" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install --quiet -r "$REQ" >&2
  echo "$want" > "$VENV/.kz-media-requirements.sha256"
fi
echo "$VENV/bin/python"
