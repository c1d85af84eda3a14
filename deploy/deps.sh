#!/usr/bin/env bash
# Installs exactly the Debian 12 packages the project uses. Idempotent and quick when all is present:
# apt-get update runs only when something is missing. npm packages for the browser and client tests come last.
# Usage: deploy/deps.sh [run]   run: only what building and running the stack needs (make run), not the
#                               test tools (cmocka, cppcheck, chromium, promtool, node and the tests' npm).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}

PKGS=(
  build-essential pkg-config
  libjson-c-dev libjwt-dev libcurl4-openssl-dev libmariadb-dev libzmq3-dev libssl-dev
  libfcgi-dev libwebsockets-dev libwebsockets-evlib-ev
  mariadb-server mariadb-client lighttpd curl
  libjemalloc2 # the private MariaDB's allocator (deploy/mariadb.sh): full-text searches spent a third of
               # the server's CPU in glibc's malloc
)
if [ "$MODE" != run ]; then
  PKGS+=(cppcheck libcmocka-dev chromium prometheus) # prometheus: promtool, for the metrics tests
  PKGS+=(iproute2 galera-4 rsync) # make test-cluster: ip netns, Galera nodes and their rsync state transfer
  command -v node >/dev/null 2>&1 || PKGS+=(nodejs)
  command -v npm  >/dev/null 2>&1 || PKGS+=(npm)
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# mariadb-server's package starts a system instance; the project never uses it (it runs its own).

# The npm packages of a test folder (its package-lock.json), when the one it needs is missing.
npm_ci() { # dir package
  if [ -f "$1/package.json" ] && [ ! -d "$1/node_modules/$2" ]; then
    echo "deps: npm ci in $1"
    (cd "$1" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
if [ "$MODE" != run ]; then
  npm_ci tests/browser playwright-core # the real-browser test
  npm_ci tests/clients openai          # the official OpenAI client against /v1
fi
echo "deps: all present"
