#!/usr/bin/env bash
# System packages the build needs beyond the Rust toolchain: cmake and libclang (llama.cpp,
# the local model of LLM programs, is compiled from the sources llama-cpp-sys-2 ships and
# bound with bindgen); nats-server and PostgreSQL's binaries for the cluster's fault tests; with --console also what the web console's browser test runs on:
# Chromium at /usr/bin/chromium and Node.js with npm. Installs them from Debian's packages
# when missing; no-op otherwise.
#   scripts/deps.sh [--console]
set -euo pipefail
missing=()
if [ "${1:-}" = "--console" ]; then
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
fi
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
# bindgen loads libclang itself (libclang.so / libclang-N.so), not libclang-cpp, which
# other packages bring and which it cannot use.
compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null || compgen -G "/usr/lib/*-linux-gnu/libclang-[0-9]*.so*" >/dev/null || missing+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
# The cluster's fault tests run private copies of NATS and PostgreSQL (the same packages
# as the services the tests use on their standard ports).
[ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]} (Debian packages)" >&2
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "deps: not root and no sudo; apt-get install ${missing[*]}" >&2; exit 1; }
  as_root=(sudo)
fi
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
