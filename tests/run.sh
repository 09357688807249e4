#!/bin/sh
# Runs every test: Rust unit and integration tests, the client library's
# node tests and type check, the real-browser tests and the benchmark's
# smoke test (cargo test --workspace runs them all: wspd and the bench/
# package). First installs what they need when it is missing:
#   - Debian packages: chromium, dnsmasq-base, iproute2, pebble (the ACME
#     test CA), redis-server (as root: apt-get);
#   - npm packages from package-lock.json (npm ci).
set -eu
cd "$(dirname "$0")/.."

missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v dnsmasq >/dev/null 2>&1 || missing="$missing dnsmasq-base"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
command -v pebble >/dev/null 2>&1 || missing="$missing pebble"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing:$missing"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y $missing
  else
    echo "the tests need:$missing; install them with:" >&2
    echo "  sudo apt-get install -y$missing" >&2
    exit 1
  fi
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  echo "== npm ci"
  npm ci --no-audit --no-fund
fi

echo "== cargo test"
exec cargo test --workspace "$@"
