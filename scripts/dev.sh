#!/usr/bin/env bash
# Starts a dev Vault (in-memory, TLS) with meshauth registered from its plugin
# directory by SHA-256 and mounted at meshauth/, prints what to try, and
# stops Vault on Ctrl-C. Builds Vault first if this machine has none.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dev=$root/.dev
port=${MESHAUTH_DEV_PORT:-8200}
addr=127.0.0.1:$port
plugin=vault-plugin-secrets-meshauth

vault=$("$root/scripts/vault-bin.sh")

if curl -s -o /dev/null "https://$addr" --insecure 2>/dev/null || curl -s -o /dev/null "http://$addr" 2>/dev/null; then
  echo "Something already listens on $addr. Stop it, or run: MESHAUTH_DEV_PORT=8300 make dev" >&2
  exit 1
fi

rm -rf "$dev" && mkdir -p "$dev/plugins" "$dev/tls" "$dev/certs"
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
# Let the revocations feed's ETag reach clients and If-None-Match reach the
# engine (Vault drops both unless the mount lists them).
"$vault" secrets tune -allowed-response-headers=ETag -passthrough-request-headers=If-None-Match meshauth/ >/dev/null

echo "==> Making a demo mesh CA and a client certificate for the service 'orders' in $dev/certs"
(
  cd "$dev/certs"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=demo mesh CA" -keyout ca.key -out ca.pem \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign >/dev/null 2>&1
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=orders" \
    -keyout orders.key -out orders.csr >/dev/null 2>&1
  printf 'subjectAltName=DNS:orders.mesh\nextendedKeyUsage=clientAuth\n' >orders.ext
  openssl x509 -req -in orders.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
    -extfile orders.ext -out orders.pem >/dev/null 2>&1
  # A server certificate for the example's payments service (make dev prints how to run it).
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=payments" \
    -keyout payments.key -out payments.csr >/dev/null 2>&1
  printf 'subjectAltName=DNS:payments.mesh,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >payments.ext
  openssl x509 -req -in payments.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
    -extfile payments.ext -out payments.pem >/dev/null 2>&1
)

cat <<MSG

meshauth is running. In another shell:

  export VAULT_ADDR=$VAULT_ADDR VAULT_CACERT=$VAULT_CACERT VAULT_TOKEN=root

  # Register a service with its mTLS identity (the response shows its API key once)
  vault write meshauth/services/orders ca_chain=@$dev/certs/ca.pem hostnames=orders.mesh allowed_audiences=payments

  # Log in as the service: API key + the client certificate on the TLS connection
  VAULT_CLIENT_CERT=$dev/certs/orders.pem VAULT_CLIENT_KEY=$dev/certs/orders.key \\
    vault write meshauth/login/orders api_key=<api_key>

  # Verify the token online, or fetch the public keys (no token needed)
  vault write meshauth/verify token=<token>
  curl --cacert \$VAULT_CACERT \$VAULT_ADDR/v1/meshauth/jwks
  curl -i --cacert \$VAULT_CACERT \$VAULT_ADDR/v1/meshauth/revocations   # ETag; If-None-Match gives 304

  vault path-help meshauth/login/orders     # every path documents its fields

  # The example: orders calls payments over mutual TLS with a meshauth JWT
  # (a tune replaces the header list, so it names the feed's If-None-Match again)
  vault secrets tune -passthrough-request-headers=X-Meshauth-Api-Key -passthrough-request-headers=If-None-Match meshauth
  go run ./examples/payments &
  MESHAUTH_API_KEY=<api_key> go run ./examples/orders

Press Ctrl-C to stop Vault.
MSG
wait "$vault_pid"
