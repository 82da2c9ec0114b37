package meshtoken

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// testKey is an ES256 key and its kid.
type testKey struct {
	priv *ecdsa.PrivateKey
	kid  string
}

func newTestKey(tb testing.TB) *testKey {
	tb.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	kid, err := JWKThumbprint(priv.Public())
	if err != nil {
		tb.Fatal(err)
	}
	return &testKey{priv: priv, kid: kid}
}

func (k *testKey) keys(kid string) (Key, error) {
	if kid != k.kid {
		return Key{}, ErrUnknownKey
	}
	return Key{Algorithm: ES256, Public: k.priv.Public()}, nil
}

// signRaw signs a header and payload given as raw JSON.
func (k *testKey) signRaw(tb testing.TB, header, payload string) string {
	tb.Helper()
	in := base64.RawURLEncoding.EncodeToString([]byte(header)) + "." + base64.RawURLEncoding.EncodeToString([]byte(payload))
	sig, err := jwt.SigningMethodES256.Sign(in, k.priv)
	if err != nil {
		tb.Fatal(err)
	}
	return in + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func (k *testKey) sign(tb testing.TB, claims map[string]any) string {
	h := fmt.Sprintf(`{"alg":"ES256","kid":%q,"typ":"JWT"}`, k.kid)
	p, _ := json.Marshal(claims)
	return k.signRaw(tb, h, string(p))
}

func goodClaims(now time.Time) map[string]any {
	return map[string]any{"iss": "meshauth", "sub": "orders", "aud": "payments", "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(), "jti": "J", "team": "checkout"}
}

func with(m map[string]any, k string, v any) map[string]any {
	out := map[string]any{}
	for a, b := range m {
		out[a] = b
	}
	if v == nil {
		delete(out, k)
	} else {
		out[k] = v
	}
	return out
}

func TestParse(t *testing.T) {
	k := newTestKey(t)
	now := time.Now()
	opts := Options{Issuer: "meshauth", Audience: "payments", Leeway: DefaultLeeway, Now: now}
	good := goodClaims(now)
	c, err := Parse(k.sign(t, good), k.keys, opts)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject != "orders" || c.KeyID != k.kid || c.Extra()["team"] != "checkout" || c.Bound() {
		t.Fatalf("claims %#v", c)
	}
	header := fmt.Sprintf(`{"alg":"ES256","kid":%q}`, k.kid)
	cases := map[string]struct {
		token  string
		reason string
	}{
		"no iat":           {k.sign(t, with(good, "iat", nil)), ReasonMissingClaim},
		"no nbf":           {k.sign(t, with(good, "nbf", nil)), ReasonMissingClaim},
		"no exp":           {k.sign(t, with(good, "exp", nil)), ReasonMissingClaim},
		"no sub":           {k.sign(t, with(good, "sub", nil)), ReasonMissingClaim},
		"expired":          {k.sign(t, with(good, "exp", now.Add(-time.Minute).Unix())), ReasonExpired},
		"future iat":       {k.sign(t, with(good, "iat", now.Add(time.Minute).Unix())), ReasonIssuedInFuture},
		"wrong aud":        {k.sign(t, with(good, "aud", "ledger")), ReasonWrongAudience},
		"wrong iss":        {k.sign(t, with(good, "iss", "other")), ReasonWrongIssuer},
		"duplicate sub":    {k.signRaw(t, header, `{"iss":"meshauth","sub":"orders","aud":"payments","iat":1,"nbf":1,"exp":9999999999,"jti":"J","sub":"payments"}`), ReasonAmbiguousClaims},
		"folded SUB":       {k.signRaw(t, header, `{"iss":"meshauth","sub":"orders","aud":"payments","iat":1,"nbf":1,"exp":9999999999,"jti":"J","SUB":"payments"}`), ReasonAmbiguousClaims},
		"duplicate alg":    {k.signRaw(t, `{"alg":"ES256","kid":"`+k.kid+`","alg":"HS256"}`, `{}`), ReasonMalformed},
		"crit":             {k.signRaw(t, `{"alg":"ES256","kid":"`+k.kid+`","crit":["x"]}`, `{"sub":"a"}`), ReasonCritHeader},
		"unknown kid":      {k.signRaw(t, `{"alg":"ES256","kid":"nope"}`, `{"sub":"a"}`), ReasonUnknownKey},
		"alg mismatch":     {k.signRaw(t, `{"alg":"ES384","kid":"`+k.kid+`"}`, `{"sub":"a"}`), ReasonAlgMismatch},
		"none":             {k.signRaw(t, `{"alg":"none","kid":"`+k.kid+`"}`, `{"sub":"a"}`), ReasonAlgNotAllowed},
		"not compact":      {"a.b", ReasonMalformed},
		"too large":        {string(make([]byte, MaxTokenLength+1)), ReasonTooLarge},
		"payload not JSON": {k.signRaw(t, header, `[1]`), ReasonAmbiguousClaims},
		"iat is a string":  {k.sign(t, with(good, "iat", "yesterday")), ReasonMalformed},
		"aud is an object": {k.sign(t, with(good, "aud", map[string]any{"a": 1})), ReasonMalformed},
		"signature of another token": {func() string {
			a, b := k.sign(t, good), k.sign(t, with(good, "sub", "payments"))
			return a[:len(a)-86] + b[len(b)-86:]
		}(), ReasonBadSignature},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c, err := Parse(tc.token, k.keys, opts)
			if c != nil || ReasonOf(err) != tc.reason {
				t.Fatalf("Parse = %v, %v; want reason %s", c, err, tc.reason)
			}
		})
	}
	// The revoke path reads an expired token's claims.
	c, err = Parse(k.sign(t, with(good, "exp", now.Add(-time.Minute).Unix())), k.keys, Options{Issuer: "meshauth", AllowExpired: true, Now: now})
	if c == nil || ReasonOf(err) != ReasonExpired {
		t.Fatalf("AllowExpired: %v %v", c, err)
	}
}

func TestThumbprintRFC7638(t *testing.T) {
	// RFC 7638 section 3.1's RSA key thumbprint.
	jwk := map[string]string{
		"kty": "RSA", "alg": RS256,
		"n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
		"e": "AQAB",
	}
	k, err := ParseJWK(jwk)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := JWKThumbprint(k.Public); got != "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs" {
		t.Fatalf("thumbprint %s", got)
	}
	round, err := PublicJWK(k.Public)
	if err != nil || round["n"] != jwk["n"] || round["e"] != jwk["e"] {
		t.Fatalf("PublicJWK round trip: %v %v", round, err)
	}
}

// FuzzParse feeds the parser signed tokens with arbitrary headers and
// payloads (valid signatures over odd shapes) and arbitrary strings; it
// must never panic, and anything it accepts must carry the required claims.
func FuzzParse(f *testing.F) {
	k := newTestKey(f)
	now := time.Unix(1_800_000_000, 0)
	f.Add(fmt.Sprintf(`{"alg":"ES256","kid":%q}`, k.kid), `{"iss":"m","sub":"a","iat":1800000000,"nbf":1800000000,"exp":1800000100,"jti":"j"}`, "")
	f.Add(fmt.Sprintf(`{"alg":"ES256","kid":%q}`, k.kid), `{"sub":"a","iat":null,"exp":1e400,"cnf":{"x5t#S256":7}}`, "")
	f.Add(`{"alg":"ES256"}`, `{"aud":[1,{"a":[]}],"nbf":-1}`, "x.y.z")
	f.Fuzz(func(t *testing.T, header, payload, raw string) {
		tok := k.signRaw(t, header, payload)
		for _, candidate := range []string{tok, raw} {
			c, err := Parse(candidate, k.keys, Options{Now: now, Leeway: DefaultLeeway})
			if err == nil && (c.Subject == "" || c.ID == "" || c.IssuedAt.IsZero() || c.ExpiresAt.IsZero()) {
				t.Fatalf("accepted %q without required claims: %#v", candidate, c)
			}
		}
	})
}
