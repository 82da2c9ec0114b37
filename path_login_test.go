package meshauth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestLoginIssuesContractToken(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", map[string]any{
		"allowed_audiences": "payments,ledger",
		"claims":            map[string]any{"team": "checkout"},
	})
	resp, err := e.login(t, "orders", key, map[string]any{"audience": "payments,ledger", "ttl": "5m"})
	if err != nil || resp.IsError() {
		t.Fatalf("login: %v %#v", err, resp)
	}
	d := resp.Data
	if d["token_type"] != "Bearer" || d["expires_in"].(int64) != 300 || d["jti"] == "" || d["kid"] == "" {
		t.Fatalf("login answer %#v", d)
	}
	if _, err := time.Parse(time.RFC3339, d["expires_at"].(string)); err != nil {
		t.Fatal(err)
	}
	header, claims := decodeJWT(t, d["token"].(string))
	if header["alg"] != "ES256" || header["typ"] != "JWT" || header["kid"] != d["kid"] {
		t.Fatalf("header %#v", header)
	}
	if claims["iss"] != "meshauth" || claims["sub"] != "orders" || claims["jti"] != d["jti"] || claims["team"] != "checkout" {
		t.Fatalf("claims %#v", claims)
	}
	aud := claims["aud"].([]any)
	if len(aud) != 2 || aud[0] != "payments" {
		t.Fatalf("aud %#v", claims["aud"])
	}
	if claims["exp"].(float64)-claims["iat"].(float64) != 300 || claims["nbf"] != claims["iat"] {
		t.Fatalf("times %#v", claims)
	}
	if _, has := claims["cnf"]; has {
		t.Fatal("cnf without a client certificate")
	}
	if jti, _ := base64.RawURLEncoding.DecodeString(d["jti"].(string)); len(d["jti"].(string)) < 26 {
		t.Fatalf("jti %q carries fewer than 128 bits (%d)", d["jti"], len(jti))
	}
	verifyWithJWKS(t, e, d["token"].(string))
}

// decodeJWT splits a token into its decoded header and claims.
func decodeJWT(tb testing.TB, tok string) (map[string]any, map[string]any) {
	tb.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		tb.Fatalf("token has %d parts", len(parts))
	}
	var header, claims map[string]any
	for i, dst := range []*map[string]any{&header, &claims} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			tb.Fatal(err)
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			tb.Fatal(err)
		}
	}
	return header, claims
}

// verifyWithJWKS checks an ES256 token's signature with the standard library
// alone, from the JWK Set the engine serves: not through meshauth's verify.
func verifyWithJWKS(tb testing.TB, e *testEnv, tok string) {
	tb.Helper()
	resp := e.mustOK(tb, logical.ReadOperation, "jwks", nil)
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(resp.Data[logical.HTTPRawBody].([]byte), &set); err != nil {
		tb.Fatal(err)
	}
	header, _ := decodeJWT(tb, tok)
	parts := strings.Split(tok, ".")
	for _, k := range set.Keys {
		if k["kid"] != header["kid"] {
			continue
		}
		if k["kty"] != "EC" || k["crv"] != "P-256" || k["alg"] != "ES256" {
			tb.Fatalf("unexpected JWK %#v", k)
		}
		x, _ := base64.RawURLEncoding.DecodeString(k["x"])
		y, _ := base64.RawURLEncoding.DecodeString(k["y"])
		pub, err := ecdsa.ParseUncompressedPublicKey(ellipticP256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			tb.Fatal(err)
		}
		sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
		digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		if !ecdsa.Verify(pub, digest[:], r, s) {
			tb.Fatal("signature does not verify with the published JWK")
		}
		return
	}
	tb.Fatalf("kid %v is not in jwks", header["kid"])
}

func TestLoginFailuresAreIndistinguishable(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	e.register(t, "off", map[string]any{"disabled": true})
	cases := map[string][2]string{
		"wrong key":       {"orders", "mak_wrong"},
		"empty key":       {"orders", ""},
		"other's key":     {"off", key},
		"unknown service": {"ghost", key},
		"huge key":        {"orders", strings.Repeat("k", 10000)},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			resp, err := e.login(t, c[0], c[1], nil)
			if !errors.Is(err, logical.ErrPermissionDenied) || resp != nil {
				t.Fatalf("got %#v, %v; want only permission denied", resp, err)
			}
		})
	}
}

func TestLoginWritesNothing(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	e.mustLogin(t, "orders", key) // warm the caches
	before := e.storage.total()
	for range 20 {
		e.mustLogin(t, "orders", key)
		_, _ = e.login(t, "orders", "wrong", nil)
	}
	if got := e.storage.total() - before; got != 0 {
		t.Fatalf("20 logins made %d storage calls; want 0", got)
	}
}

func TestLoginAudienceAndTTL(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", map[string]any{"allowed_audiences": "payments,ledger", "token_max_ttl": "30m"})
	_, claims := decodeJWT(t, e.mustLogin(t, "orders", key))
	if claims["aud"] != "payments" {
		t.Fatalf("default aud = %#v, want the first allowed", claims["aud"])
	}
	resp, err := e.login(t, "orders", key, map[string]any{"audience": "billing"})
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), `audience "billing" is not allowed`) {
		t.Fatalf("disallowed audience: %#v %v", resp, err)
	}
	resp, _ = e.login(t, "orders", key, map[string]any{"ttl": "2h"})
	if resp.Data["expires_in"].(int64) != 1800 || len(resp.Warnings) != 1 {
		t.Fatalf("ttl over the service max: %#v", resp)
	}
	resp, _ = e.login(t, "orders", key, map[string]any{"ttl": -3})
	if resp == nil || !resp.IsError() {
		t.Fatalf("negative ttl: %#v", resp)
	}
}

func TestLockoutPerServiceAndCaller(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	stranger := &logical.Connection{RemoteAddr: "192.0.2.7:5555"}
	bad := map[string]any{"api_key": "mak_guess"}
	for i := range 5 {
		_, err := e.requestWith(t, logical.UpdateOperation, "login/orders", bad, stranger)
		if !errors.Is(err, logical.ErrPermissionDenied) {
			t.Fatalf("failure %d: %v", i, err)
		}
	}
	// The stranger is locked out, even with the right key, and told until when.
	_, err := e.requestWith(t, logical.UpdateOperation, "login/orders", map[string]any{"api_key": key}, &logical.Connection{RemoteAddr: "192.0.2.7:6666"})
	if err == nil || !strings.Contains(err.Error(), "locked") || !strings.Contains(err.Error(), "try again after") {
		t.Fatalf("locked caller: %v", err)
	}
	// The service itself, from its own address, is not.
	e.mustLogin(t, "orders", key)
	// Another spelling of the name is no way around the lock: it is refused.
	resp, err := e.requestWith(t, logical.UpdateOperation, "login/ORDERS", map[string]any{"api_key": key}, stranger)
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "login/orders") {
		t.Fatalf("login/ORDERS: %v %#v", err, resp)
	}
	e.clock.advance(15*time.Minute + time.Second)
	if _, err := e.requestWith(t, logical.UpdateOperation, "login/orders", map[string]any{"api_key": key}, stranger); err != nil {
		t.Fatalf("lock did not end: %v", err)
	}
	snap := e.mustOK(t, logical.ReadOperation, "metrics", nil).Data["services"].(map[string]any)["orders"].(map[string]uint64)
	if snap["lockouts"] != 1 || snap["logins_failed"] != 5 || snap["refused_as_locked"] != 1 {
		t.Fatalf("metrics %#v", snap)
	}
}

func TestLockoutCounterResets(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	for range 4 {
		_, _ = e.login(t, "orders", "bad", nil)
	}
	e.clock.advance(16 * time.Minute)
	for range 4 {
		_, _ = e.login(t, "orders", "bad", nil)
	}
	e.mustLogin(t, "orders", key) // 8 failures, never 5 in one window
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"lockout_threshold": 0})
	for range 10 {
		_, _ = e.login(t, "orders", "bad", nil)
	}
	e.mustLogin(t, "orders", key)
}

func TestConcurrentLoginsRotationsAndUpdates(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	var wg sync.WaitGroup
	tokens := make(chan string, 400)
	for w := range 8 {
		wg.Go(func() {
			for i := range 40 {
				switch {
				case w == 0 && i%10 == 0:
					e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil)
				case w == 1:
					e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"metadata": map[string]any{"i": string(rune('a' + i%26))}})
				case w == 2:
					e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"claims": map[string]any{"n": "x"}})
				default:
					tokens <- e.mustLogin(t, "orders", key)
				}
			}
		})
	}
	wg.Wait()
	close(tokens)
	for tok := range tokens {
		if ok, reason := e.verify(t, tok, nil); !ok {
			t.Fatalf("token minted under concurrency fails verify: %s", reason)
		}
	}
	read := e.mustOK(t, logical.ReadOperation, "services/orders", nil)
	if read.Data["claims"].(map[string]string)["n"] != "x" || read.Data["metadata"].(map[string]string)["i"] == "" {
		t.Fatalf("an update was lost: %#v", read.Data)
	}
}

func TestHeaderLoginIsTheSameLoginInOneRoundTrip(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", map[string]any{"allowed_audiences": "payments"})
	get := func(headers map[string][]string, data map[string]any) (*logical.Response, error) {
		return e.b.HandleRequest(t.Context(), &logical.Request{
			Operation: logical.ReadOperation, Path: "login/orders", Storage: e.storage, MountPoint: "meshauth/",
			Headers: headers, Data: data, Connection: &logical.Connection{RemoteAddr: "127.0.0.1"},
		})
	}
	// Off by default: read capability alone must not mint tokens.
	if _, err := get(map[string][]string{"X-Meshauth-Api-Key": {key}}, nil); err == nil || !strings.Contains(err.Error(), "allow_get_login") {
		t.Fatalf("GET login while allow_get_login is off: %v", err)
	} else if coded := logical.HTTPCodedError(nil); !errors.As(err, &coded) || coded.Code() != 405 {
		t.Fatalf("GET login while off answered %v; want a 405", err)
	}
	// Another spelling is refused first, with the path to use.
	if resp, err := e.b.HandleRequest(t.Context(), &logical.Request{
		Operation: logical.ReadOperation, Path: "login/ORDERS", Storage: e.storage, MountPoint: "meshauth/",
		Headers: map[string][]string{"X-Meshauth-Api-Key": {key}}, Connection: &logical.Connection{RemoteAddr: "127.0.0.1"},
	}); err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "meshauth/login/orders") {
		t.Fatalf("GET login/ORDERS: %v %#v", err, resp)
	}
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"allow_get_login": true})
	e.mustLogin(t, "orders", key) // warm the caches
	warm := e.b.metrics.loginStorageOps.Load()
	resp, err := get(map[string][]string{"X-Meshauth-Api-Key": {key}}, map[string]any{"ttl": "5m"})
	if err != nil || resp.IsError() || resp.Data["expires_in"].(int64) != 300 {
		t.Fatalf("header login: %v %#v", err, resp)
	}
	if _, claims := decodeJWT(t, resp.Data["token"].(string)); claims["aud"] != "payments" {
		t.Fatalf("claims %#v", claims)
	}
	// Any spelling of the header name works, as HTTP header names are case-insensitive.
	if _, err := get(map[string][]string{"x-meshauth-api-key": {key}}, nil); err != nil {
		t.Fatalf("lower-case header: %v", err)
	}
	resp, _ = get(nil, map[string]any{"api_key": key})
	if resp == nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "never put the API key in a URL") {
		t.Fatalf("key in the URL: %#v", resp)
	}
	resp, _ = get(nil, nil)
	if resp == nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "passthrough-request-headers=X-Meshauth-Api-Key -passthrough-request-headers=If-None-Match meshauth") {
		t.Fatalf("no header: %#v", resp)
	}
	if _, err := get(map[string][]string{"X-Meshauth-Api-Key": {"mak_wrong"}}, nil); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("wrong key by header: %v", err)
	}
	if got := e.b.metrics.loginStorageOps.Load() - warm; got != 0 {
		t.Fatalf("warm logins made %d storage calls", got)
	}
}

// The three refusals a newcomer meets first, by their text: a wrong API key,
// a missing client certificate and an audience the service may not ask for.
// A refused login is recognisably meshauth's (not Vault's "permission
// denied"), says where the reason is logged, names a missing certificate
// (the caller knows whether it sent one), and never which factor failed; the
// reason is in the log at Info, Vault's default level.
func TestLoginRefusalText(t *testing.T) {
	var logs bytes.Buffer
	e := getTestBackendLogging(t, &logs)
	ca := newTestCA(t, "mesh-ca")
	leaf, leafKey, _ := ca.issue(t, "orders", leafOptions{})
	withCert := tlsConn(handshake(t, []*x509.Certificate{leaf}, leafKey))
	key := e.register(t, "orders", map[string]any{"ca_chain": ca.pem, "allowed_audiences": "payments"})

	refusal := func(t *testing.T, err error) string {
		t.Helper()
		var coded logical.HTTPCodedError
		if !errors.As(err, &coded) || coded.Code() != http.StatusForbidden {
			t.Fatalf("err = %v; want a 403", err)
		}
		msg := err.Error()
		for _, want := range []string{`meshauth: login refused for service "orders": `, "does not say which", `message "login refused"`, "vault monitor -log-level=info"} {
			if !strings.Contains(msg, want) {
				t.Errorf("refusal %q lacks %q", msg, want)
			}
		}
		for _, leak := range []string{"api key", "API key did", "did not match", "chain", "unknown service", "disabled"} {
			if strings.Contains(msg, leak) {
				t.Errorf("refusal %q says which factor failed (%q)", msg, leak)
			}
		}
		return msg
	}

	t.Run("wrong key", func(t *testing.T) {
		_, err := mtlsLogin(t, e, "orders", "mak_wrong", withCert)
		if msg := refusal(t, err); strings.Contains(msg, "no client certificate") {
			t.Errorf("refusal %q speaks of a missing certificate that was presented", msg)
		}
		if !strings.Contains(logs.String(), `[INFO]  login refused: service=orders`) || !strings.Contains(logs.String(), `reason="api key did not match a live key"`) {
			t.Errorf("the reason is not logged at Info:\n%s", logs.String())
		}
	})
	t.Run("missing certificate", func(t *testing.T) {
		_, err := e.login(t, "orders", key, nil)
		if msg := refusal(t, err); !strings.Contains(msg, "no client certificate came on the TLS connection to Vault") {
			t.Errorf("refusal %q does not say that no certificate came", msg)
		}
	})
	t.Run("wrong audience", func(t *testing.T) {
		resp, err := e.requestWith(t, logical.UpdateOperation, "login/orders", map[string]any{"api_key": key, "audience": "ledger"}, withCert)
		if err != nil || resp == nil || !resp.IsError() {
			t.Fatalf("got %v, %v; want a 400", resp, err)
		}
		if msg := resp.Error().Error(); msg != `audience "ledger" is not allowed for service "orders"; allowed: payments` {
			t.Errorf("refusal = %q", msg)
		}
	})
	if strings.Contains(logs.String(), key) {
		t.Error("the API key reached the log")
	}
}
