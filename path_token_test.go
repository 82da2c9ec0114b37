package meshauth

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// forge builds a token with the given header and claims, signed by sign.
func forge(header, claims map[string]any, sign func(string) []byte) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	input := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	return input + "." + base64.RawURLEncoding.EncodeToString(sign(input))
}

// signWithCurrent signs arbitrary claims with the engine's own current key,
// to test claim checks independent of the signature.
func signWithCurrent(t *testing.T, e *testEnv, header, claims map[string]any) string {
	ring, err := e.b.getKeyRing(t.Context(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	k := ring.current
	if header["kid"] == nil {
		header["kid"] = k.entry.KID
	}
	if header["alg"] == nil {
		header["alg"] = k.entry.Algorithm
	}
	return forge(header, claims, func(in string) []byte {
		sig, err := k.method.Sign(in, k.signer)
		if err != nil {
			t.Fatal(err)
		}
		return sig
	})
}

func TestVerifyRefusesAttacks(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", map[string]any{"allowed_audiences": "payments"})
	e.register(t, "payments", nil)
	good := e.mustLogin(t, "orders", key)
	_, gc := decodeJWT(t, good)
	now := e.clock.now().Unix()
	claims := func(mod map[string]any) map[string]any {
		c := map[string]any{}
		for k, v := range gc {
			c[k] = v
		}
		for k, v := range mod {
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
		}
		return c
	}
	ring, _ := e.b.getKeyRing(t.Context(), e.storage)
	pubJWK, _ := json.Marshal(ring.current.jwk)
	parts := strings.Split(good, ".")

	cases := []struct {
		name   string
		token  string
		reason string
	}{
		{"alg none", forge(map[string]any{"alg": "none", "kid": ring.current.entry.KID}, gc, func(string) []byte { return nil }) + "", reasonMalformed},
		{"alg none with signature", forge(map[string]any{"alg": "none", "kid": ring.current.entry.KID}, gc, func(string) []byte { return []byte("x") }), reasonAlgNotAllowed},
		{"HS256 with the public key as secret", forge(map[string]any{"alg": "HS256", "kid": ring.current.entry.KID}, gc, func(in string) []byte {
			m := hmac.New(sha256.New, pubJWK)
			m.Write([]byte(in))
			return m.Sum(nil)
		}), reasonAlgNotAllowed},
		{"other algorithm than the key's", signWithCurrent(t, e, map[string]any{"alg": "ES384"}, gc), reasonAlgMismatch},
		{"unknown kid", signWithCurrent(t, e, map[string]any{"kid": "nope"}, gc), reasonUnknownKey},
		{"kid with path characters", signWithCurrent(t, e, map[string]any{"kid": "../../keyring"}, gc), reasonUnknownKey},
		{"crit header", signWithCurrent(t, e, map[string]any{"crit": []string{"exp"}}, gc), reasonCritHeader},
		{"missing exp", signWithCurrent(t, e, map[string]any{}, claims(map[string]any{"exp": nil})), reasonMissingClaim},
		{"exp zero", signWithCurrent(t, e, map[string]any{}, claims(map[string]any{"exp": 0})), reasonExpired},
		{"expired beyond leeway", signWithCurrent(t, e, map[string]any{}, claims(map[string]any{"exp": now - 31})), reasonExpired},
		{"nbf in the future", signWithCurrent(t, e, map[string]any{}, claims(map[string]any{"nbf": now + 120})), reasonNotYetValid},
		{"iat in the future", signWithCurrent(t, e, map[string]any{}, claims(map[string]any{"iat": now + 120, "nbf": now})), reasonIssuedInFuture},
		{"wrong issuer", signWithCurrent(t, e, map[string]any{}, claims(map[string]any{"iss": "other"})), reasonWrongIssuer},
		{"missing jti", signWithCurrent(t, e, map[string]any{}, claims(map[string]any{"jti": nil})), reasonMissingClaim},
		{"unknown service", signWithCurrent(t, e, map[string]any{}, claims(map[string]any{"sub": "ghost"})), reasonUnknownService},
		{"tampered claims", parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"payments"}`)) + "." + parts[2], reasonBadSignature},
		{"truncated signature", good[:len(good)-2], reasonBadSignature}, // 84 characters: whole bytes, one spelling
		{"CRLF inside", parts[0] + ".\r\n" + parts[1] + "." + parts[2], reasonMalformed},
		{"padding", parts[0] + "=." + parts[1] + "." + parts[2], reasonMalformed},
		{"two segments", parts[0] + "." + parts[1], reasonMalformed},
		{"not base64", "a.b!.c", reasonMalformed},
		{"1 MB token", strings.Repeat("a", 1<<20), reasonTooLarge},
		{"jwk header with the attacker's key", forge(map[string]any{"alg": "HS256", "kid": "attacker", "jwk": map[string]string{"kty": "oct", "k": "c2VjcmV0"}}, gc, func(in string) []byte {
			m := hmac.New(sha256.New, []byte("secret"))
			m.Write([]byte(in))
			return m.Sum(nil)
		}), reasonAlgNotAllowed},
		{"jku and x5u headers", signWithCurrent(t, e, map[string]any{"kid": "elsewhere", "jku": "https://evil.example/jwks", "x5u": "https://evil.example/cert"}, gc), reasonUnknownKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ok, reason := e.verify(t, tc.token, nil)
			if ok || reason != tc.reason {
				t.Fatalf("valid=%v reason=%q; want refused with %q", ok, reason, tc.reason)
			}
		})
	}
	// Key-location headers are never followed: with our own kid, the token
	// verifies against the ring as if they were absent.
	withHeaders := signWithCurrent(t, e, map[string]any{"jku": "https://evil.example/jwks", "x5u": "https://evil.example/c", "x5c": []string{"AAAA"}}, gc)
	if ok, reason := e.verify(t, withHeaders, nil); !ok {
		t.Fatalf("jku/x5u/x5c headers changed the outcome: %s", reason)
	}
	if ok, reason := e.verify(t, good, map[string]any{"audience": "ledger"}); ok || reason != reasonWrongAudience {
		t.Fatalf("wrong audience: %v %s", ok, reason)
	}
	if ok, _ := e.verify(t, good, map[string]any{"audience": "payments"}); !ok {
		t.Fatal("right audience refused")
	}
}

func TestVerifyGoodToken(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", map[string]any{"claims": map[string]any{"team": "checkout"}})
	tok := e.mustLogin(t, "orders", key)
	resp := e.mustOK(t, logical.UpdateOperation, "verify", map[string]any{"token": tok})
	if resp.Data["valid"] != true || resp.Data["service"] != "orders" || resp.Data["kid"] == "" || resp.Data["expires_at"] == "" {
		t.Fatalf("verify = %#v", resp.Data)
	}
	if resp.Data["claims"].(map[string]any)["team"] != "checkout" {
		t.Fatalf("claims = %#v", resp.Data["claims"])
	}
	// Within leeway after exp it still verifies; beyond it, it does not.
	e.clock.advance(time.Hour + 20*time.Second)
	if ok, reason := e.verify(t, tok, nil); !ok {
		t.Fatalf("inside leeway: %s", reason)
	}
	e.clock.advance(20 * time.Second)
	if ok, reason := e.verify(t, tok, nil); ok || reason != reasonExpired {
		t.Fatalf("beyond leeway: %v %s", ok, reason)
	}
	// The framework turns true into "1" for string fields; a non-token is malformed.
	if ok, reason := e.verify(t, "1", nil); ok || reason != reasonMalformed {
		t.Fatalf("token=1: %v %s", ok, reason)
	}
	e.mustFail(t, logical.UpdateOperation, "verify", map[string]any{}, "token is required")
}

func TestVerifyDisabledService(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	tok := e.mustLogin(t, "orders", key)
	e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"disabled": true})
	if ok, reason := e.verify(t, tok, nil); ok || reason != reasonServiceDisabled {
		t.Fatalf("disabled: %v %s", ok, reason)
	}
}

func TestRevokeOneTokenUntilExpiryThenTidy(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	tok := e.mustLogin(t, "orders", key)
	other := e.mustLogin(t, "orders", key)
	resp := e.mustOK(t, logical.UpdateOperation, "revoke", map[string]any{"token": tok})
	if resp.Data["revoked"] != true {
		t.Fatalf("revoke = %#v", resp.Data)
	}
	if ok, reason := e.verify(t, tok, nil); ok || reason != reasonTokenRevoked {
		t.Fatalf("revoked token: %v %s", ok, reason)
	}
	if ok, _ := e.verify(t, other, nil); !ok {
		t.Fatal("revoking one token revoked another")
	}
	// A re-signed (malleated) spelling of the same token is revoked too:
	// the deny list keys on jti, never on the token text.
	header, claims := decodeJWT(t, tok)
	if ok, reason := e.verify(t, signWithCurrent(t, e, header, claims), nil); ok || reason != reasonTokenRevoked {
		t.Fatalf("re-signed revoked token: %v %s", ok, reason)
	}
	if res := e.mustOK(t, logical.UpdateOperation, "tidy", nil); res.Data["revocations_removed"] != 0 {
		t.Fatalf("tidy removed a live revocation: %#v", res.Data)
	}
	e.clock.advance(time.Hour + time.Minute)
	if res := e.mustOK(t, logical.UpdateOperation, "tidy", nil); res.Data["revocations_removed"] != 1 {
		t.Fatalf("tidy after expiry: %#v", res.Data)
	}
	resp = e.mustOK(t, logical.UpdateOperation, "revoke", map[string]any{"token": tok})
	if resp.Data["revoked"] != false {
		t.Fatalf("revoking an expired token: %#v", resp.Data)
	}
	e.mustFail(t, logical.UpdateOperation, "revoke", map[string]any{"token": "a.b.c"}, "nothing was revoked")
}

func TestTokenFromAnotherMountFails(t *testing.T) {
	a, b := getTestBackend(t), getTestBackend(t)
	key := a.register(t, "orders", nil)
	b.register(t, "orders", nil)
	if ok, reason := b.verify(t, a.mustLogin(t, "orders", key), nil); ok || reason != reasonUnknownKey {
		t.Fatalf("foreign token: %v %s", ok, reason)
	}
}

func TestParseTokenMatchesGolangJWT(t *testing.T) {
	// Cross-check: golang-jwt with a plain key function accepts our token.
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	tok := e.mustLogin(t, "orders", key)
	ring, _ := e.b.getKeyRing(t.Context(), e.storage)
	parsed, err := jwt.Parse(tok, func(*jwt.Token) (any, error) { return ring.current.signer.Public(), nil }, jwt.WithValidMethods([]string{"ES256"}))
	if err != nil || !parsed.Valid {
		t.Fatalf("golang-jwt refuses our token: %v", err)
	}
}

// signRawPayload signs payload bytes as they are, with the engine's current
// key, so a test can send members a map cannot hold (duplicates).
func signRawPayload(t *testing.T, e *testEnv, payload string) string {
	ring, err := e.b.getKeyRing(t.Context(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	k := ring.current
	input := k.headerB64 + "." + base64.RawURLEncoding.EncodeToString([]byte(payload))
	sig, err := k.method.Sign(input, k.signer)
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func TestVerifyRefusesAmbiguousPayloads(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	e.register(t, "payments", nil)
	good := e.mustLogin(t, "orders", key)
	_, c := decodeJWT(t, good)
	body := fmt.Sprintf(`"iss":"meshauth","iat":%d,"nbf":%d,"exp":%d,"jti":%q,"gen":%q`, int64(c["iat"].(float64)), int64(c["nbf"].(float64)), int64(c["exp"].(float64)), c["jti"], c["gen"])
	if ok, reason := e.verify(t, signRawPayload(t, e, `{"sub":"orders",`+body+`}`), nil); !ok {
		t.Fatalf("the plain payload should verify: %s", reason)
	}
	for name, payload := range map[string]string{
		"duplicate sub":    `{"sub":"orders",` + body + `,"sub":"payments"}`,
		"upper-case SUB":   `{"sub":"orders",` + body + `,"SUB":"payments"}`,
		"long s (U+017F)":  "{\"sub\":\"orders\"," + body + ",\"\u017fub\":\"payments\"}",
		"escaped long s":   `{"sub":"orders",` + body + `,"\u017fub":"payments"}`,
		"EXP far away":     `{"sub":"orders",` + body + `,"EXP":4102444800}`,
		"cnf member fold":  `{"sub":"orders",` + body + `,"cnf":{"X5T#s256":"abc"}}`,
		"duplicate nested": `{"sub":"orders",` + body + `,"team":{"a":1,"a":2}}`,
	} {
		t.Run(name, func(t *testing.T) {
			if ok, reason := e.verify(t, signRawPayload(t, e, payload), nil); ok || reason != reasonAmbiguousClaims {
				t.Fatalf("verify = %v %q; want %s", ok, reason, reasonAmbiguousClaims)
			}
		})
	}
}

func TestServiceRevokeAndReRegistration(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	before := e.mustLogin(t, "orders", key)
	e.mustOK(t, logical.UpdateOperation, "services/orders/revoke", nil)
	// A login in the same second as the revoke: its iat is the real time,
	// never ahead (PyJWT and jose allow no skew), and it verifies.
	resp, err := e.login(t, "orders", key, map[string]any{"ttl": "10m"})
	if err != nil || resp.IsError() {
		t.Fatalf("login after revoke: %v %#v", err, resp)
	}
	after := resp.Data["token"].(string)
	_, c := decodeJWT(t, after)
	now := e.b.now().Unix()
	if int64(c["iat"].(float64)) > now || int64(c["nbf"].(float64)) > now {
		t.Fatalf("iat %v / nbf %v is after the issue time %d", c["iat"], c["nbf"], now)
	}
	if got := resp.Data["expires_in"].(int64); got != int64(c["exp"].(float64))-now {
		t.Fatalf("expires_in %d != exp - now %d", got, int64(c["exp"].(float64))-now)
	}
	if ok, reason := e.verify(t, before, nil); ok || reason != reasonServiceRevoked {
		t.Fatalf("token from before the revoke: %v %q", ok, reason)
	}
	if ok, reason := e.verify(t, after, nil); !ok {
		t.Fatalf("token from after the revoke: %s", reason)
	}
	// Deleting and re-registering the name revives none of the old tokens,
	// the revoked one included.
	e.mustOK(t, logical.DeleteOperation, "services/orders", nil)
	key = e.register(t, "orders", nil)
	fresh := e.mustLogin(t, "orders", key)
	for name, tok := range map[string]string{"revoked": before, "live": after} {
		if ok, reason := e.verify(t, tok, nil); ok || reason != reasonOtherRegistration {
			t.Fatalf("%s token of the earlier registration: %v %q", name, ok, reason)
		}
	}
	if ok, reason := e.verify(t, fresh, nil); !ok {
		t.Fatalf("token of the new registration: %s", reason)
	}
}

func TestServiceStoredBeforeGenerationsKeepsItsTokensUntilRevoked(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	// An entry as an earlier release stored it: no registration, no epoch.
	entry, _ := readService(t.Context(), e.storage, "orders")
	entry.Registration = ""
	raw, _ := logical.StorageEntryJSON(storageServicePrefix+"orders", entry)
	if err := e.storage.Put(t.Context(), raw); err != nil {
		t.Fatal(err)
	}
	e.b.dropService("orders")
	legacy := e.mustLogin(t, "orders", key)
	if _, c := decodeJWT(t, legacy); c["gen"] != nil {
		t.Fatalf("gen %v on a token of a legacy entry", c["gen"])
	}
	if ok, reason := e.verify(t, legacy, nil); !ok {
		t.Fatalf("legacy token: %s", reason)
	}
	e.mustOK(t, logical.UpdateOperation, "services/orders/revoke", nil)
	if ok, _ := e.verify(t, legacy, nil); ok {
		t.Fatal("a revoke did not end the legacy token")
	}
	if ok, reason := e.verify(t, e.mustLogin(t, "orders", key), nil); !ok {
		t.Fatalf("token after the revoke: %s", reason)
	}
}

func TestVerifyChecksBinding(t *testing.T) {
	e := getTestBackend(t)
	ca := newTestCA(t, "mesh-ca")
	leaf, leafKey, _ := ca.issue(t, "orders", leafOptions{})
	other, _, otherPEM := ca.issue(t, "other", leafOptions{})
	key := e.register(t, "orders", map[string]any{"ca_chain": ca.pem})
	resp, err := mtlsLogin(t, e, "orders", key, tlsConn(handshake(t, []*x509.Certificate{leaf}, leafKey)))
	if err != nil || resp.IsError() {
		t.Fatalf("mTLS login: %v %#v", err, resp)
	}
	bound := resp.Data["token"].(string)
	leafPEMText := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}))
	plainKey := e.register(t, "plain", nil)
	unbound := e.mustLogin(t, "plain", plainKey)
	cases := []struct {
		name   string
		token  string
		extra  map[string]any
		reason string
	}{
		{"bound, same certificate (PEM)", bound, map[string]any{"certificate": leafPEMText}, ""},
		{"bound, same certificate (x5t#S256)", bound, map[string]any{"certificate": certificateThumbprint(leaf)}, ""},
		{"bound, other certificate", bound, map[string]any{"certificate": otherPEM}, meshtoken.ReasonCertMismatch},
		{"bound, other thumbprint", bound, map[string]any{"certificate": certificateThumbprint(other)}, meshtoken.ReasonCertMismatch},
		{"unbound, binding required", unbound, map[string]any{"require_binding": true}, meshtoken.ReasonUnbound},
		{"bound, binding required", bound, map[string]any{"require_binding": true, "certificate": certificateThumbprint(leaf)}, ""},
		{"unbound, not required", unbound, nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ok, reason := e.verify(t, tc.token, tc.extra)
			if ok != (tc.reason == "") || reason != tc.reason {
				t.Fatalf("verify = %v %q; want reason %q", ok, reason, tc.reason)
			}
		})
	}
	e.mustFail(t, logical.UpdateOperation, "verify", map[string]any{"token": bound, "certificate": "not-a-thumbprint"}, "x5t#S256")

	// An empty cnf (or one of another method) is refused by the engine
	// exactly as by meshtoken's Verifier, with or without a certificate
	// (regression: the engine read it as unbound).
	_, claims := decodeJWT(t, unbound)
	for name, cnf := range map[string]any{"empty": map[string]any{}, "other method": map[string]any{"jkt": "x"}} {
		claims["cnf"] = cnf
		tok := signWithCurrent(t, e, map[string]any{}, claims)
		for _, extra := range []map[string]any{nil, {"certificate": certificateThumbprint(leaf)}} {
			if ok, reason := e.verify(t, tok, extra); ok || reason != meshtoken.ReasonUnsupportedConfirmation {
				t.Errorf("%s cnf: verify = %v %q; want %s", name, ok, reason, meshtoken.ReasonUnsupportedConfirmation)
			}
		}
	}
}
