package meshauth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/hashicorp/vault/sdk/logical"
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
		{"truncated signature", good[:len(good)-4], reasonBadSignature},
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
