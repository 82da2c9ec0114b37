#!/usr/bin/env bash
# Prints the path of the pinned Vault binary, building it first if needed.
#
# Vault has no download here; the tools module in tools/vault builds the real
# release from its Go module. The binary lands in a cache folder outside the
# clone, keyed by version, so fresh clones and CI runs on the same machine
# reuse it. Set VAULT_BIN to use a Vault you already have.
set -euo pipefail

VAULT_VERSION=1.21.0
root=$(cd "$(dirname "$0")/.." && pwd)

if [[ -n "${VAULT_BIN:-}" ]]; then
  if [[ ! -x "$VAULT_BIN" ]]; then
    echo "VAULT_BIN=$VAULT_BIN is not an executable file; unset it to build Vault $VAULT_VERSION instead." >&2
    exit 1
  fi
  echo "$VAULT_BIN"
  exit 0
fi

cache=${XDG_CACHE_HOME:-$HOME/.cache}/meshauth/vault-$VAULT_VERSION
bin=$cache/vault
if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache"
# The Makefile pins GOTOOLCHAIN for the plugin; Vault is built with the
# machine's Go (or what tools/vault/go.mod asks for), whatever the caller set.
unset GOTOOLCHAIN
{
  echo "==> Building Vault $VAULT_VERSION from its Go module into $cache"
  echo "    A cold build downloads about 4 GB of modules and takes 20-35 minutes on 2 cores;"
  echo "    later builds reuse Go's caches and take about a minute. This happens once per machine."
} >&2
start=$(date +%s)
# Build to a temporary name and rename, so an interrupted build never leaves a
# half-written binary that the check above would take for a good one.
(cd "$root/tools/vault" && go build -trimpath -o "$bin.tmp.$$" .) >&2 || {
  rm -f "$bin.tmp.$$"
  echo "Vault build failed. Check that the Go module proxy is reachable and there is disk space (df -h), then run this again." >&2
  exit 1
}
mv "$bin.tmp.$$" "$bin"
echo "==> Built Vault $VAULT_VERSION in $(( $(date +%s) - start ))s" >&2
echo "$bin"
