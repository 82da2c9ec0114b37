// Package meshtokentest is a fake meshauth engine for testing services
// that verify meshauth tokens, without Vault: it serves discovery, a JWKS
// and a signed revocation feed over TLS, and signs tokens with its one
// ES256 key. Point a meshtoken.Verifier at it with VerifierConfig.
//
// It is for tests only: its key is generated per Engine and never leaves
// memory, and it checks nothing about who asks for a token.
package meshtokentest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// Issuer is the iss of the Engine's tokens and feed.
const Issuer = "meshauth"

// Engine is a fake meshauth engine. Safe for concurrent use.
type Engine struct {
	// Server serves /v1/meshauth/.well-known/openid-configuration,
	// /v1/meshauth/jwks and /v1/meshauth/revocations over TLS.
	Server *httptest.Server
	key    *ecdsa.PrivateKey
	kid    string

	mu      sync.Mutex
	revoked map[string]int64
	now     func() time.Time
}

// New starts an Engine; it stops when the test ends.
func New(tb testing.TB) *Engine {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	kid, err := meshtoken.JWKThumbprint(key.Public())
	if err != nil {
		tb.Fatal(err)
	}
	e := &Engine{key: key, kid: kid, revoked: map[string]int64{}, now: time.Now}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/meshauth/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		e.json(w, map[string]any{
			"issuer":                                Issuer,
			"jwks_uri":                              "/v1/meshauth/jwks",
			"id_token_signing_alg_values_supported": []string{meshtoken.ES256},
			"claims_supported":                      meshtoken.RegisteredClaims(),
		})
	})
	mux.HandleFunc("GET /v1/meshauth/jwks", func(w http.ResponseWriter, _ *http.Request) {
		jwk, _ := meshtoken.PublicJWK(key.Public()) // an ECDSA key always encodes
		jwk["kid"], jwk["alg"], jwk["use"] = kid, meshtoken.ES256, "sig"
		e.json(w, map[string]any{"keys": []map[string]string{jwk}})
	})
	mux.HandleFunc("GET /v1/meshauth/revocations", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/jwt")
		w.Header().Set("Cache-Control", "max-age=1")
		_, _ = w.Write([]byte(e.feed()))
	})
	e.Server = httptest.NewTLSServer(mux)
	tb.Cleanup(e.Server.Close)
	return e
}

func (e *Engine) json(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "max-age=300")
	_ = json.NewEncoder(w).Encode(v)
}

// DiscoveryURL is the Engine's discovery document.
func (e *Engine) DiscoveryURL() string {
	return e.Server.URL + "/v1/meshauth/.well-known/openid-configuration"
}

// VerifierConfig is a configuration for a Verifier of audience that trusts
// the Engine (its discovery, its TLS certificate) and enforces its
// revocation feed.
func (e *Engine) VerifierConfig(audience string) meshtoken.VerifierConfig {
	return meshtoken.VerifierConfig{
		DiscoveryURL: e.DiscoveryURL(),
		Audience:     audience,
		HTTPClient:   e.Server.Client(),
		Revocations:  &meshtoken.RevocationConfig{},
	}
}

// Token signs a token of service for audience, valid for ttl, with the
// registered claims a real engine writes (iss, sub, aud, iat, nbf, exp,
// jti) and extra on top (nil deletes a claim): add "cnf" with
// map[string]string{"x5t#S256": meshtoken.CertificateThumbprint(cert)} for
// a token bound to cert. It returns the token and its jti.
func (e *Engine) Token(tb testing.TB, service, audience string, ttl time.Duration, extra map[string]any) (token, jti string) {
	tb.Helper()
	now := e.clock().Unix()
	jti = rand.Text()
	claims := jwt.MapClaims{
		meshtoken.ClaimIssuer: Issuer, meshtoken.ClaimSubject: service, meshtoken.ClaimAudience: audience,
		meshtoken.ClaimIssuedAt: now, meshtoken.ClaimNotBefore: now, meshtoken.ClaimExpiry: now + int64(ttl/time.Second),
		meshtoken.ClaimID: jti,
	}
	for k, v := range extra {
		if v == nil {
			delete(claims, k)
		} else {
			claims[k] = v
		}
	}
	return e.sign(tb, claims, meshtoken.TokenType), jti
}

// Revoke lists jti in the revocation feed until exp.
func (e *Engine) Revoke(jti string, exp time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.revoked[jti] = exp.Unix()
}

// SetClock makes the Engine sign with now's time (default time.Now).
func (e *Engine) SetClock(now func() time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = now
}

func (e *Engine) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now()
}

// feed signs the current revocation feed.
func (e *Engine) feed() string {
	e.mu.Lock()
	tokens := make(map[string]int64, len(e.revoked))
	for k, v := range e.revoked {
		tokens[k] = v
	}
	now := e.now()
	e.mu.Unlock()
	b, _ := json.Marshal(meshtoken.Feed{ // maps of strings and numbers always marshal
		Issuer: Issuer, IssuedAt: now.Unix(), Tokens: tokens,
		Services: map[string]meshtoken.FeedService{}, Disabled: map[string]int64{}, Keys: map[string]int64{},
	})
	var claims jwt.MapClaims
	_ = json.Unmarshal(b, &claims)
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	tok.Header["kid"], tok.Header["typ"] = e.kid, meshtoken.RevocationsType
	s, _ := tok.SignedString(e.key) // ECDSA with a valid key does not fail
	return s
}

func (e *Engine) sign(tb testing.TB, claims jwt.MapClaims, typ string) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	tok.Header["kid"], tok.Header["typ"] = e.kid, typ
	s, err := tok.SignedString(e.key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}
