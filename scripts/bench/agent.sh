#!/usr/bin/env bash
# The device agent on the WordNet kernel: `kernelize bench agent` (memory at rest and
# serving, query latency on the device API, a 1% change's download against the full
# file, staging and switch times) with the agent as shipped (`--profile device`), plus
# binary sizes. Results: data/agent-results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/wordnet-db.sh
# The agent as shipped: the `device` profile (LTO, size-optimised but for the hot crates,
# stripped); the release build, stripped, for comparison.
cargo build --release --locked -p kernelize-agent
cargo build --profile device --locked -p kernelize-agent
OUT=data/agent-results
mkdir -p "$OUT"
for b in kernelize-agent kernelize; do
    strip -o "$OUT/$b.stripped" "$CARGO_TARGET_DIR/release/$b"
    echo "$b (release): $(stat -c %s "$CARGO_TARGET_DIR/release/$b") bytes, stripped $(stat -c %s "$OUT/$b.stripped")" | tee "$OUT/$b.size.txt"
done
echo "kernelize-agent (device profile): $(stat -c %s "$CARGO_TARGET_DIR/device/kernelize-agent") bytes" | tee -a "$OUT/kernelize-agent.size.txt"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) ($(nproc) cpus); load before: $(cat /proc/loadavg)"
"$K" bench agent --source data/ann-db --collection wordnet --agent-bin "$CARGO_TARGET_DIR/device/kernelize-agent" | tee "$OUT/bench.txt"
echo "load after: $(cat /proc/loadavg)"
