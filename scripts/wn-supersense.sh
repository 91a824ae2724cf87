#!/usr/bin/env bash
# Build the WN-Supersense task (train 400 / val 200 / test 400, stratified, seeded) from
# Debian's wordnet-base: scripts/wn-supersense.sh [--out DIR] [--seed N]. See scripts/wn_supersense.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
rc=0
"$py" "$here/wn_supersense.py" --check "$@" || rc=$?
case "$rc" in
  0) exit 0 ;;
  3) ;;
  *) exit "$rc" ;;
esac
if [[ ! -f "${WNSEARCHDIR:-/usr/share/wordnet}/data.noun" ]]; then
  echo "wn-supersense: installing Debian package wordnet-base" >&2
  as_root=(); [[ "$(id -u)" -eq 0 ]] || as_root=(sudo)
  "${as_root[@]}" apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y wordnet-base
fi
exec "$py" "$here/wn_supersense.py" "$@"
