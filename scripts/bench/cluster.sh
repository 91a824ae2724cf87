#!/usr/bin/env bash
# `kernelize bench cluster` against the services of this machine: NATS JetStream
# (127.0.0.1:4222), PostgreSQL (127.0.0.1:5432, database test), and a moto S3 server this
# script starts (and stops, by its PID). Extra arguments go to the benchmark
# (e.g. --records 20000 --nodes 1,3). Results: data/cluster-results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kz-target}"
PY="${KERNELIZE_PYTHON:-python3}"
MOTO_VERSION=5.2.1   # as scripts/test.sh
if ! "$PY" -c "import moto, flask, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  "$PY" -m pip install --quiet "moto[server]==$MOTO_VERSION"
fi
cargo build --release --locked -p kernelize
OUT=data/cluster-results
mkdir -p "$OUT"
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$PY" -m moto.server -H 127.0.0.1 -p "$PORT" > "$OUT/moto.log" 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.2; done
curl -fs -X PUT "http://127.0.0.1:$PORT/kz-bench" >/dev/null
cat > "$OUT/cluster.toml" <<TOML
nats_url = "${KERNELIZE_TEST_NATS_URL:-nats://127.0.0.1:4222}"
database_url = "${KERNELIZE_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}"
cache_dir = "$OUT/cache"
shards = 8
[blobs]
kind = "s3"
bucket = "kz-bench"
endpoint = "http://127.0.0.1:$PORT"
access_key_id = "test"
secret_access_key = "test"
allow_http = true
[timing]
heartbeat_ms = 500
lease_ms = 2000
request_ms = 20000
TOML
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) ($(nproc) cpus); load before: $(cat /proc/loadavg)"
"$CARGO_TARGET_DIR/release/kernelize" bench cluster --cluster "$OUT/cluster.toml" --dir "$OUT/scratch" "$@" | tee "$OUT/bench.txt"
echo "load after: $(cat /proc/loadavg)"
