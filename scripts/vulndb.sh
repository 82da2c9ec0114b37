#!/usr/bin/env bash
# Prints the path of a local Go vulnerability database for govulncheck
# (-db file://...), building it first if needed from the vulndb module pinned
# in tools/vulndb (about 30 s). Set GOVULNDB to use a database you have.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -n "${GOVULNDB:-}" ]]; then
  echo "$GOVULNDB"
  exit 0
fi
version=$(cd "$root/tools/vulndb" && go list -m -f '{{.Version}}' golang.org/x/vulndb)
out=${XDG_CACHE_HOME:-$HOME/.cache}/meshauth/govulndb-$version
if [[ -f "$out/index/db.json" ]]; then
  echo "$out"
  exit 0
fi
echo "==> Building the Go vulnerability database $version into $out (about 30 s)" >&2
src=$(cd "$root/tools/vulndb" && go list -m -f '{{.Dir}}' golang.org/x/vulndb)
if [[ -z "$src" || ! -d "$src/data/osv" ]]; then
  (cd "$root/tools/vulndb" && go mod download golang.org/x/vulndb) >&2
  src=$(cd "$root/tools/vulndb" && go list -m -f '{{.Dir}}' golang.org/x/vulndb)
fi
rm -rf "$out.tmp.$$"
(cd "$root/tools/vulndb" && go run golang.org/x/vulndb/cmd/indexdb -vulns "$src/data/osv" -out "$out.tmp.$$") >&2
mv "$out.tmp.$$" "$out"
echo "$out"
