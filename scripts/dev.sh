#!/usr/bin/env bash
# Starts a dev Vault (in-memory, TLS) with meshauth registered from its plugin
# directory by SHA-256 and mounted at meshauth/, prints what to try, and
# stops Vault on Ctrl-C. Builds Vault first if this machine has none.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# MESHAUTH_DEV_DIR moves .dev elsewhere (the README's end-to-end test does).
dev=${MESHAUTH_DEV_DIR:-$root/.dev}
mkdir -p "$dev" && dev=$(cd "$dev" && pwd)
port=${MESHAUTH_DEV_PORT:-8200}
addr=127.0.0.1:$port
plugin=vault-plugin-secrets-meshauth

vault=$("$root/scripts/vault-bin.sh")

if curl -s -o /dev/null "https://$addr" --insecure 2>/dev/null || curl -s -o /dev/null "http://$addr" 2>/dev/null; then
  echo "Something already listens on $addr. Stop it, or run: MESHAUTH_DEV_PORT=8300 make dev" >&2
  exit 1
fi

rm -rf "$dev/plugins" "$dev/tls" "$dev/certs" "$dev/env" "$dev/vault.log" && mkdir -p "$dev/plugins" "$dev/tls" "$dev/certs"
echo "==> Building the plugin"
(cd "$root" && go build -trimpath -o "$dev/plugins/$plugin" ./cmd/$plugin)

echo "==> Starting a dev Vault with TLS on https://$addr (log: $dev/vault.log)"
"$vault" server -dev -dev-tls -dev-root-token-id=root \
  -dev-listen-address="$addr" -dev-tls-cert-dir="$dev/tls" \
  -dev-plugin-dir="$dev/plugins" >"$dev/vault.log" 2>&1 &
vault_pid=$!
cleanup() {
  echo
  echo "==> Stopping Vault (pid $vault_pid)"
  kill "$vault_pid" 2>/dev/null || true
  wait "$vault_pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

export VAULT_ADDR=https://$addr VAULT_CACERT=$dev/tls/vault-ca.pem VAULT_TOKEN=root
# Poll instead of sleeping: ready as soon as Vault answers, or a clear error.
for _ in $(seq 1 60); do
  if "$vault" status >/dev/null 2>&1; then break; fi
  if ! kill -0 "$vault_pid" 2>/dev/null; then
    echo "Vault exited during start-up; its log says:" >&2
    tail -20 "$dev/vault.log" >&2
    exit 1
  fi
  sleep 0.5
done
"$vault" status >/dev/null || { echo "Vault did not become ready in 30s; see $dev/vault.log" >&2; exit 1; }

sha=$(sha256sum "$dev/plugins/$plugin" | cut -d' ' -f1)
echo "==> Registering meshauth (command $plugin, sha256 $sha) and mounting it at meshauth/"
"$vault" plugin register -sha256="$sha" -command="$plugin" secret meshauth >/dev/null
"$vault" secrets enable meshauth >/dev/null
# The one tune line (docs/operating.md): the revocations feed's ETag out and
# If-None-Match in, and the GET login's key header in. A tune replaces each
# list, so every header is named in one command.
"$vault" secrets tune -allowed-response-headers=ETag -passthrough-request-headers=X-Meshauth-Api-Key -passthrough-request-headers=If-None-Match meshauth >/dev/null

echo "==> Making a demo mesh CA and certificates for the services 'orders' and 'payments' in $dev/certs"
(
  cd "$dev/certs"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=demo mesh CA" -keyout ca.key -out ca.pem \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign >/dev/null 2>&1
  # Each service both calls (clientAuth: it logs in to Vault and calls its
  # peers with it) and serves (serverAuth).
  for svc in orders payments; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$svc" \
      -keyout "$svc.key" -out "$svc.csr" >/dev/null 2>&1
    printf 'subjectAltName=DNS:%s.mesh,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=clientAuth,serverAuth\nkeyUsage=critical,digitalSignature\n' "$svc" >"$svc.ext"
    openssl x509 -req -in "$svc.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
      -extfile "$svc.ext" -out "$svc.pem" >/dev/null 2>&1
  done
)

# The environment for other shells, written last: once it exists, all of the
# above is ready.
cat >"$dev/env.tmp" <<ENV
# Written by make dev (scripts/dev.sh). In another shell: source .dev/env
export VAULT_ADDR=$VAULT_ADDR
export VAULT_CACERT=$VAULT_CACERT
export VAULT_TOKEN=root
export MESHAUTH_DEV=$dev
export PATH="$(dirname "$vault"):\$PATH"
ENV
mv "$dev/env.tmp" "$dev/env"

cat <<MSG

meshauth is running on $VAULT_ADDR. In another shell, at the root of the clone:

  source ${dev#"$root"/}/env     # VAULT_ADDR, VAULT_CACERT, VAULT_TOKEN, MESHAUTH_DEV, and vault on PATH

then follow the README's walkthrough:

  API_KEY=\$(vault write -field=api_key meshauth/services/orders \\
      ca_chain=@\$MESHAUTH_DEV/certs/ca.pem hostnames=orders.mesh allowed_audiences=payments)
  VAULT_CLIENT_CERT=\$MESHAUTH_DEV/certs/orders.pem VAULT_CLIENT_KEY=\$MESHAUTH_DEV/certs/orders.key \\
    vault write meshauth/login/orders api_key=\$API_KEY audience=payments
  vault path-help meshauth/login/orders     # every path documents its fields

Vault's log (login refusals give their reason there): $dev/vault.log
Press Ctrl-C to stop Vault.
MSG
wait "$vault_pid"
