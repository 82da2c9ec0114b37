#!/usr/bin/env bash
# Installs the Debian packages the Python package and its checks need, when
# missing, saying what it installs. Only Debian's interpreter and packages
# are used (python/ needs nothing from another package index).
set -euo pipefail
PY=/usr/bin/python3
if [[ ! -x $PY ]]; then
  echo "python-deps: $PY is missing: install Debian's python3 (apt-get install python3)" >&2
  exit 1
fi
declare -A module_of=(
  [python3-jwt]=jwt [python3-cryptography]=cryptography [python3-requests]=requests
  [python3-pytest]=pytest [python3-pyflakes]=pyflakes
)
missing=()
for pkg in "${!module_of[@]}"; do
  $PY -c "import ${module_of[$pkg]}" 2>/dev/null || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "python-deps: installing missing Debian packages: ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; fi
$SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null || {
  $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
}
