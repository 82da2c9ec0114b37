package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"

	"github.com/hashicorp/vault/api"
)

// mount is deliberately not the default path: nothing may depend on it.
const mount = "mesh-e2e"

// fixture is a dev Vault with meshauth mounted, an audit log, and a mesh CA
// with a client certificate for the service "orders".
type fixture struct {
	s         *vaultlab.Server
	root      *api.Client
	audit     string
	ca        *vaultlab.CA
	orders    *vaultlab.Cert
	stranger  *vaultlab.Cert
	ordersKey string
	secrets   []string
}

func newFixture(t *testing.T) *fixture {
	s := vaultlab.StartDevServer(t)
	f := &fixture{s: s, root: s.MustClient(), audit: filepath.Join(s.Dir, "audit.log")}
	s.MustCLI(t, "audit", "enable", "file", "file_path="+f.audit)
	s.RegisterPlugin(mount)
	f.ca = vaultlab.NewCA(t, s.Dir, "mesh")
	f.orders = f.ca.Issue(t, s.Dir, "orders", []string{"orders.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	other := vaultlab.NewCA(t, s.Dir, "other")
	f.stranger = other.Issue(t, s.Dir, "stranger", []string{"orders.mesh"}, nil, x509.ExtKeyUsageClientAuth)

	out := s.MustCLI(t, "write", mount+"/services/orders", "ca_chain=@"+f.ca.File, "hostnames=orders.mesh", "allowed_audiences=payments,ledger", "claims=team=checkout")
	f.ordersKey = vaultlab.JSONData(t, out)["api_key"].(string)
	f.secrets = append(f.secrets, f.ordersKey)
	return f
}

// login logs in as name through the vault CLI, presenting cert if given.
func (f *fixture) login(t *testing.T, name, key string, cert *vaultlab.Cert, extra ...string) (map[string]any, error) {
	var env []string
	if cert != nil {
		env = []string{"VAULT_CLIENT_CERT=" + cert.CertFile, "VAULT_CLIENT_KEY=" + cert.KeyFile}
	}
	args := append([]string{"write", mount + "/login/" + name, "api_key=" + key}, extra...)
	out, err := f.s.CLI(env, args...)
	if err != nil {
		return nil, &cliError{out}
	}
	data := vaultlab.JSONData(t, out)
	f.secrets = append(f.secrets, data["token"].(string))
	return data, nil
}

type cliError struct{ out string }

func (e *cliError) Error() string { return e.out }

func (f *fixture) mustLogin(t *testing.T, name, key string, cert *vaultlab.Cert) string {
	t.Helper()
	data, err := f.login(t, name, key, cert)
	if err != nil {
		t.Fatalf("login %s: %v", name, err)
	}
	return data["token"].(string)
}

// verify calls verify through the API and returns valid and reason.
func (f *fixture) verify(t *testing.T, token string) (bool, string) {
	t.Helper()
	sec := vaultlab.Write(t, f.root, mount+"/verify", map[string]any{"token": token})
	reason, _ := sec.Data["reason"].(string)
	return sec.Data["valid"].(bool), reason
}

func TestEndToEnd(t *testing.T) {
	f := newFixture(t)
	s := f.s

	t.Run("login with client certificate binds the token", func(t *testing.T) {
		data, err := f.login(t, "orders", f.ordersKey, f.orders, "audience=ledger")
		if err != nil {
			t.Fatal(err)
		}
		if data["token_type"] != "Bearer" || data["kid"] == "" || data["jti"] == "" || data["expires_at"] == "" {
			t.Fatalf("login answer %#v", data)
		}
		claims := verifyOffline(t, s, data["token"].(string))
		cnf, _ := claims["cnf"].(map[string]any)
		if cnf == nil || cnf["x5t#S256"] != f.orders.X5t() {
			t.Fatalf("cnf %#v, want x5t#S256 %s", claims["cnf"], f.orders.X5t())
		}
		if claims["sub"] != "orders" || claims["aud"] != "ledger" || claims["team"] != "checkout" {
			t.Fatalf("claims %#v", claims)
		}
		if ok, reason := f.verify(t, data["token"].(string)); !ok {
			t.Fatalf("verify: %s", reason)
		}
	})

	t.Run("login without or with a foreign certificate is refused", func(t *testing.T) {
		// Through real Vault the refusal is the engine's own 403, not
		// Vault's "permission denied"; it names a missing certificate and
		// nothing else.
		for name, cert := range map[string]*vaultlab.Cert{"none": nil, "other CA": f.stranger} {
			_, err := f.login(t, "orders", f.ordersKey, cert) // the vault CLI: its output is the error
			if err == nil || !strings.Contains(err.Error(), "Code: 403") || !strings.Contains(err.Error(), `meshauth: login refused for service "orders": `) {
				t.Fatalf("%s: %v", name, err)
			}
			if noCert := strings.Contains(err.Error(), "no client certificate came on the TLS connection to Vault"); noCert != (cert == nil) {
				t.Fatalf("%s: the refusal %q says a certificate is missing: %v", name, err, noCert)
			}
		}
	})

	t.Run("read and list never show a key", func(t *testing.T) {
		out := s.MustCLI(t, "read", mount+"/services/orders")
		if strings.Contains(out, f.ordersKey) || !strings.Contains(out, `"api_keys"`) {
			t.Fatalf("read: %s", out)
		}
		if !strings.Contains(s.MustCLI(t, "list", mount+"/services"), "orders") {
			t.Fatal("list lacks orders")
		}
		tls := vaultlab.JSONData(t, s.MustCLI(t, "read", mount+"/services/orders/tls"))
		if tls["ca_chain"] != f.ca.PEM || tls["require_mtls"] != true {
			t.Fatalf("tls profile %#v", tls)
		}
	})

	t.Run("jwks and discovery need no token and are raw JSON", func(t *testing.T) {
		resp, body := s.RawGet("/v1/" + mount + "/jwks")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || !strings.HasPrefix(resp.Header.Get("Cache-Control"), "max-age=") {
			t.Fatalf("jwks: %d %v", resp.StatusCode, resp.Header)
		}
		if !strings.HasPrefix(string(body), `{"keys":[`) {
			t.Fatalf("jwks body is not a bare JWK Set: %s", body)
		}
		resp, body = s.RawGet("/v1/" + mount + "/.well-known/openid-configuration")
		var doc map[string]any
		if resp.StatusCode != 200 || json.Unmarshal(body, &doc) != nil || doc["jwks_uri"] != "/v1/"+mount+"/jwks" {
			t.Fatalf("discovery: %d %s", resp.StatusCode, body)
		}
	})

	t.Run("rotation keeps old tokens verifying", func(t *testing.T) {
		old := f.mustLogin(t, "orders", f.ordersKey, f.orders)
		before := vaultlab.Read(t, f.root, mount+"/keys").Data["current_kid"]
		// A rotation seconds after the engine made its next key waits
		// min_publication_age; force is for compromise and for this test.
		if out, err := s.CLI(nil, "write", "-f", mount+"/keys/rotate"); err == nil || !strings.Contains(out, "it may sign from") {
			t.Fatalf("an early rotation was not refused with its time: %v %s", err, out)
		}
		after := vaultlab.Write(t, f.root, mount+"/keys/rotate", map[string]any{"force": true}).Data["current_kid"]
		if before == after {
			t.Fatal("keys/rotate kept the current key")
		}
		if ok, reason := f.verify(t, old); !ok {
			t.Fatalf("token of the retired key: %s", reason)
		}
		verifyOffline(t, s, old)
		verifyOffline(t, s, f.mustLogin(t, "orders", f.ordersKey, f.orders))
	})

	t.Run("revoke one token, then the whole service", func(t *testing.T) {
		tok := f.mustLogin(t, "orders", f.ordersKey, f.orders)
		vaultlab.Write(t, f.root, mount+"/revoke", map[string]any{"token": tok})
		if ok, reason := f.verify(t, tok); ok || reason != "token_revoked" {
			t.Fatalf("revoked token: %v %s", ok, reason)
		}
		other := f.mustLogin(t, "orders", f.ordersKey, f.orders)
		time.Sleep(1100 * time.Millisecond)
		vaultlab.Write(t, f.root, mount+"/services/orders/revoke", nil)
		if ok, reason := f.verify(t, other); ok || reason != "service_revoked" {
			t.Fatalf("after service revoke: %v %s", ok, reason)
		}
		if ok, reason := f.verify(t, f.mustLogin(t, "orders", f.ordersKey, f.orders)); !ok {
			t.Fatalf("token after the revoke: %s", reason)
		}
		vaultlab.Write(t, f.root, mount+"/tidy", nil)
	})

	t.Run("rotate-key keeps the old key through its grace period", func(t *testing.T) {
		out := vaultlab.JSONData(t, s.MustCLI(t, "write", mount+"/services/orders/rotate-key", "grace_period=1h"))
		fresh := out["api_key"].(string)
		f.secrets = append(f.secrets, fresh)
		f.mustLogin(t, "orders", fresh, f.orders)
		f.mustLogin(t, "orders", f.ordersKey, f.orders)
		s.MustCLI(t, "write", mount+"/services/orders/rotate-key", "grace_period=0")
		if _, err := f.login(t, "orders", fresh, f.orders); err == nil {
			t.Fatal("key ended by grace_period=0 still logs in")
		}
		out = vaultlab.JSONData(t, s.MustCLI(t, "write", "-f", mount+"/services/orders/rotate-key"))
		f.ordersKey = out["api_key"].(string)
		f.secrets = append(f.secrets, f.ordersKey)
	})

	t.Run("config, metrics and path-help", func(t *testing.T) {
		s.MustCLI(t, "write", mount+"/config", "default_ttl=10m", "lockout_threshold=3")
		cfg := vaultlab.JSONData(t, s.MustCLI(t, "read", mount+"/config"))
		if cfg["default_ttl"] != float64(600) || cfg["signing_algorithm"] != "ES256" {
			t.Fatalf("config %#v", cfg)
		}
		if out, err := s.CLI(nil, "write", mount+"/config", "signing_algorithm=HS256"); err == nil || !strings.Contains(out, "not supported") {
			t.Fatalf("HS256 accepted: %s", out)
		}
		resp, err := f.root.Logical().ReadRawWithData(mount+"/metrics", map[string][]string{"format": {"prometheus"}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var sb strings.Builder
		if _, err := io.Copy(&sb, resp.Body); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(sb.String(), `meshauth_logins_total{service="orders",result="success"}`) {
			t.Fatalf("prometheus metrics:\n%s", sb.String())
		}
		help, err := s.CLI([]string{"VAULT_FORMAT=table"}, "path-help", mount+"/services/orders")
		if err != nil || !strings.Contains(help, "pinned_spki") || !strings.Contains(help, "ca_chain") {
			t.Fatalf("path-help: %v\n%s", err, help)
		}
	})

	t.Run("ACL policy limits a token to its own login", func(t *testing.T) {
		s.MustCLI(t, "write", mount+"/services/payments", "require_mtls=false")
		policy := `path "` + mount + `/login/orders" { capabilities = ["update"] }`
		policyFile := filepath.Join(s.Dir, "orders-login.hcl")
		if err := os.WriteFile(policyFile, []byte(policy), 0o600); err != nil {
			t.Fatal(err)
		}
		s.MustCLI(t, "policy", "write", "orders-login", policyFile)
		tokOut := jsonData2(t, s.MustCLI(t, "token", "create", "-policy=orders-login", "-ttl=10m"))
		limited, err := s.ClientWith(tokOut, f.orders)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := limited.Logical().Write(mount+"/login/orders", map[string]any{"api_key": f.ordersKey}); err != nil {
			t.Fatalf("allowed login: %v", err)
		}
		for _, p := range []string{"login/payments", "services/orders", "keys/rotate", "services/orders/rotate-key"} {
			if _, err := limited.Logical().Write(mount+"/"+p, map[string]any{"api_key": "x"}); err == nil || !strings.Contains(err.Error(), "403") {
				t.Fatalf("%s with a login-only token: %v", p, err)
			}
		}
		if _, err := limited.Logical().Read(mount + "/services/orders"); err == nil {
			t.Fatal("login-only token read a service")
		}
	})

	t.Run("a deny on the lower-case path cannot be walked around by another spelling", func(t *testing.T) {
		s.MustCLI(t, "write", mount+"/services/payments", "require_mtls=false")
		policy := `path "` + mount + `/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "` + mount + `/login/payments" { capabilities = ["deny"] }
path "` + mount + `/services/payments" { capabilities = ["deny"] }
path "` + mount + `/services/payments/*" { capabilities = ["deny"] }`
		policyFile := filepath.Join(s.Dir, "all-but-payments.hcl")
		if err := os.WriteFile(policyFile, []byte(policy), 0o600); err != nil {
			t.Fatal(err)
		}
		s.MustCLI(t, "policy", "write", "all-but-payments", policyFile)
		tok := jsonData2(t, s.MustCLI(t, "token", "create", "-policy=all-but-payments", "-ttl=10m"))
		cl, err := s.ClientWith(tok, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Logical().Write(mount+"/login/payments", map[string]any{"api_key": "x"}); err == nil || !strings.Contains(err.Error(), "403") {
			t.Fatalf("login/payments under the deny: %v", err)
		}
		for _, p := range []string{"login/PAYMENTS", "login/Payments", "services/PAYMENTS", "services/PAYMENTS/rotate-key", "services/Payments/revoke"} {
			want := mount + "/" + strings.ToLower(p)
			_, err := cl.Logical().Write(mount+"/"+p, map[string]any{"api_key": "x"})
			if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), want) {
				t.Fatalf("%s: %v; want a 400 naming %s", p, err, want)
			}
		}
		if _, err := cl.Logical().Read(mount + "/services/PAYMENTS"); err == nil || !strings.Contains(err.Error(), "services/payments") {
			t.Fatalf("read services/PAYMENTS: %v", err)
		}
	})

	t.Run("an invalid service name answers 400 with the rule, not 404", func(t *testing.T) {
		cl := s.MustClient()
		for _, p := range []string{"services/-lead", "login/.hidden", "services/" + strings.Repeat("a", 129) + "/rotate-key"} {
			_, err := cl.Logical().Write(mount+"/"+p, map[string]any{"api_key": "x"})
			var re *api.ResponseError
			if !errors.As(err, &re) || re.StatusCode != http.StatusBadRequest || !strings.Contains(err.Error(), "[a-z0-9][a-z0-9._-]{0,127}") {
				t.Fatalf("%s: %v; want a 400 stating the name rule", p, err)
			}
		}
	})

	t.Run("plugin reload and a killed plugin process lose nothing", func(t *testing.T) {
		tok := f.mustLogin(t, "orders", f.ordersKey, f.orders)
		s.MustCLI(t, "plugin", "reload", "-plugin="+vaultlab.CatalogName)
		if ok, reason := f.verify(t, tok); !ok {
			t.Fatalf("after reload: %s", reason)
		}
		pids := s.PluginPIDs()
		if len(pids) == 0 {
			t.Fatal("found no plugin process of this server")
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		// Vault restarts the plugin and retries the request once.
		var err error
		for range 10 {
			if _, err = f.login(t, "orders", f.ordersKey, f.orders); err == nil {
				break
			}
			time.Sleep(300 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("login after the plugin was killed: %v", err)
		}
		if ok, reason := f.verify(t, tok); !ok {
			t.Fatalf("token after the plugin was killed: %s", reason)
		}
		if vaultlab.Read(t, f.root, mount+"/services/orders") == nil {
			t.Fatal("service lost")
		}
	})

	t.Run("one-round-trip login with the key in a passed-through header", func(t *testing.T) {
		cl, err := s.ClientWith(s.Token, f.orders)
		if err != nil {
			t.Fatal(err)
		}
		cl.AddHeader("X-Meshauth-Api-Key", f.ordersKey)
		// Off by default: a read capability alone must not mint tokens.
		if _, err := cl.Logical().Read(mount + "/login/orders"); err == nil || !strings.Contains(err.Error(), "405") || !strings.Contains(err.Error(), "allow_get_login") {
			t.Fatalf("GET login before allow_get_login: %v", err)
		}
		s.MustCLI(t, "write", mount+"/config", "allow_get_login=true")
		if _, err := cl.Logical().Read(mount + "/login/orders"); err == nil || !strings.Contains(err.Error(), "passthrough-request-headers") {
			t.Fatalf("before the mount passes the header through: %v", err.Error())
		}
		s.MustCLI(t, "secrets", "tune", "-passthrough-request-headers=X-Meshauth-Api-Key", mount)
		sec, err := cl.Logical().Read(mount + "/login/orders")
		if err != nil {
			t.Fatalf("GET login: %v", err)
		}
		tok := sec.Data["token"].(string)
		f.secrets = append(f.secrets, tok)
		if cnf := decodeClaims(t, tok)["cnf"].(map[string]any); cnf["x5t#S256"] != f.orders.X5t() {
			t.Fatalf("GET login lost the certificate binding: %v", cnf)
		}
		// A key in the URL is refused, but Vault's audit log has already
		// recorded the request URI in clear: this is why the key never goes
		// there. The test uses a throwaway value.
		if _, err := cl.Logical().ReadWithData(mount+"/login/orders", map[string][]string{"api_key": {"mak_throwaway"}}); err == nil || !strings.Contains(err.Error(), "never put the API key in a URL") {
			t.Fatalf("key in the URL: %v", err)
		}
		bad, _ := s.ClientWith(s.Token, f.orders)
		bad.AddHeader("X-Meshauth-Api-Key", "mak_wrong")
		if _, err := bad.Logical().Read(mount + "/login/orders"); err == nil || !strings.Contains(err.Error(), "meshauth: login refused") {
			t.Fatalf("wrong key by header: %v", err)
		}
	})

	t.Run("a rate-limit quota on login is a second layer", func(t *testing.T) {
		s.MustCLI(t, "write", "sys/quotas/rate-limit/meshauth-login", "path="+mount+"/login/*", "rate=2", "interval=1s")
		defer s.MustCLI(t, "delete", "sys/quotas/rate-limit/meshauth-login")
		cl, err := s.ClientWith(s.Token, f.orders)
		if err != nil {
			t.Fatal(err)
		}
		limited := 0
		for range 8 {
			_, err := cl.Logical().Write(mount+"/login/orders", map[string]any{"api_key": f.ordersKey})
			if err != nil && strings.Contains(err.Error(), "429") {
				limited++
			}
		}
		if limited == 0 {
			t.Fatal("8 logins in a burst were never limited by a 2/s quota")
		}
	})

	t.Run("the audit log holds no API key and no token in clear", func(t *testing.T) {
		data, err := os.ReadFile(f.audit)
		if err != nil || len(data) == 0 {
			t.Fatalf("audit log: %v", err)
		}
		for _, secret := range f.secrets {
			if strings.Contains(string(data), secret) {
				i := strings.Index(string(data), secret)
				start := max(0, i-300)
				t.Fatalf("audit log holds a secret in clear (%d chars): ...%s", len(secret), strings.ReplaceAll(string(data[start:i]), secret, "<secret>"))
			}
		}
		if !strings.Contains(string(data), "hmac-sha256:") {
			t.Fatal("audit log has no HMACed values at all; is it the right file?")
		}
	})
}

// decodeClaims returns a token's claims without checking anything.
func decodeClaims(t *testing.T, token string) map[string]any {
	t.Helper()
	parts := strings.Split(token, ".")
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(raw, &claims); err != nil {
		t.Fatal(err)
	}
	return claims
}

// jsonData2 reads the auth.client_token of `vault token create -format=json`.
func jsonData2(t *testing.T, out string) string {
	var sec struct {
		Auth struct {
			ClientToken string `json:"client_token"`
		} `json:"auth"`
	}
	if err := json.Unmarshal([]byte(out), &sec); err != nil {
		t.Fatal(err)
	}
	return sec.Auth.ClientToken
}

// verifyOffline checks an ES256 token with the standard library alone, from
// the jwks endpoint fetched without a Vault token, and returns its claims.
func verifyOffline(t *testing.T, s *vaultlab.Server, token string) map[string]any {
	t.Helper()
	_, body := s.RawGet("/v1/" + mount + "/jwks")
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(token, ".")
	var header map[string]string
	var claims map[string]any
	h, _ := base64.RawURLEncoding.DecodeString(parts[0])
	c, _ := base64.RawURLEncoding.DecodeString(parts[1])
	if json.Unmarshal(h, &header) != nil || json.Unmarshal(c, &claims) != nil {
		t.Fatal("token does not decode")
	}
	for _, k := range set.Keys {
		if k["kid"] != header["kid"] {
			continue
		}
		x, _ := base64.RawURLEncoding.DecodeString(k["x"])
		y, _ := base64.RawURLEncoding.DecodeString(k["y"])
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			t.Fatal(err)
		}
		sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
		digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
		if !ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
			t.Fatal("signature does not verify with the published key")
		}
		if exp := int64(claims["exp"].(float64)); time.Unix(exp, 0).Before(time.Now()) {
			t.Fatal("token already expired")
		}
		return claims
	}
	t.Fatalf("kid %s not in jwks", header["kid"])
	return nil
}
