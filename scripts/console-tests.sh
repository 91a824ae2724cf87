#!/usr/bin/env bash
# What the web console's browser tests need (crates/server/tests/it/console.rs, sso.rs and
# map.rs run crates/server/console-tests/*.test.mjs with node): Debian's Chromium at
# /usr/bin/chromium and Node.js (scripts/deps.sh --console; never a browser that a package
# downloads itself), then `npm ci` of the committed lockfile (playwright-core, axe-core,
# oidc-provider: the real OpenID provider the single sign-on test starts) when
# node_modules does not match it. No-op once everything is in place.
#   scripts/console-tests.sh --prepare
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = "--prepare" ] || { echo "usage: $0 --prepare" >&2; exit 2; }
scripts/deps.sh --console   # Chromium, Node.js and npm from Debian when missing (with the build's packages)
dir=crates/server/console-tests
# npm ci records what it installed in node_modules/.package-lock.json: install again only
# when the packages' integrity hashes differ from the committed lockfile's.
pins() { grep '"integrity"' "$1" 2>/dev/null | sort; }
if [ "$(pins "$dir/package-lock.json")" != "$(pins "$dir/node_modules/.package-lock.json")" ]; then
  (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
