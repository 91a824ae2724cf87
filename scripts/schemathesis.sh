#!/usr/bin/env bash
# Runs schemathesis (PyPI, in a throwaway venv) against a real `kernelize serve` on
# 127.0.0.1 with a valid admin key: every operation of /openapi.json, generated and
# mutated requests. Fails on any 5xx or any response that violates the schema (status,
# content type, headers, body).
#
#   scripts/schemathesis.sh [--max-examples N] [--seed S]
#
# Key rotation and revocation run in a second pass: in the first, a rotation with no
# grace period of the very key schemathesis uses would lock it out of everything else.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kz-target}"
MAX_EXAMPLES=25
SEED=20261122
while [ $# -gt 0 ]; do
  case "$1" in
    --max-examples) MAX_EXAMPLES="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

VENV="${KZ_SCHEMATHESIS_VENV:-$HOME/.cache/kz-venvs/schemathesis}"
REQ=scripts/requirements-schemathesis.txt
STAMP="$VENV/.kz-requirements.sha256"
HASH=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  echo "== installing schemathesis into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r "$REQ"
  echo "$HASH" > "$STAMP"
fi

# The workspace test build (as scripts/test.sh makes it): no rebuild after the tests.
cargo build --locked --workspace --all-targets
K="$CARGO_TARGET_DIR/debug/kernelize"
WORK=$(mktemp -d)
KEY="kz_schemathesis_$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$K" --data-dir "$WORK/data" serve --listen "127.0.0.1:$PORT" --admin-key "$KEY" --rate-limit 100000 \
  --log-format json >"$WORK/server.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
BASE="http://127.0.0.1:$PORT"
for _ in $(seq 1 100); do
  curl -sf "$BASE/readyz" >/dev/null && break
  sleep 0.2
done
curl -sf "$BASE/readyz" >/dev/null || { cat "$WORK/server.log"; echo "server did not start" >&2; exit 1; }
# Data the examples refer to: collection "docs", record "r1".
auth=(-H "Authorization: Bearer $KEY" -H "Content-Type: application/json")
curl -sf "${auth[@]}" -X POST "$BASE/v1/collections" -d '{"name": "docs", "dim": 384}' >/dev/null
curl -sf "${auth[@]}" -X POST "$BASE/v1/collections/docs/records" \
  -d '{"records": [{"id": "r1", "text": "a small domesticated cat", "metadata": {"pos": "n"}}]}' >/dev/null

CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
st() {
  "$VENV/bin/schemathesis" run "$BASE/openapi.json" -H "Authorization: Bearer $KEY" --checks "$CHECKS" \
    --max-examples "$MAX_EXAMPLES" --seed "$SEED" --workers 2 --no-color --request-timeout 30 \
    --generation-database none --output-sanitize true "$@"
}
status=0
echo "== pass 1: every operation but key rotation and revocation (and the fleet's event stream,"
echo "   which never ends by design; tests/it/fleet.rs reads it)"
st --exclude-path-regex '^/v1/keys/\{id\}|^/v1/fleet/events$' || status=1
echo "== pass 2: key rotation and revocation"
st --include-path-regex '^/v1/keys/\{id\}' || status=1
if grep -q '"level":"ERROR"' "$WORK/server.log"; then
  echo "== server logged errors:"; grep '"level":"ERROR"' "$WORK/server.log" | head -20; status=1
fi
exit $status
