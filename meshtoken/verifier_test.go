package meshtoken

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// jwksServer is an in-process engine stand-in: a discovery document and a
// JWKS whose keys a test can rotate.
type jwksServer struct {
	srv     *httptest.Server
	mu      sync.Mutex
	keys    map[string]crypto.Signer
	algs    map[string]string
	fetches atomic.Int32
	// cacheControl is the jwks answer's Cache-Control (default max-age=300).
	cacheControl atomic.Pointer[string]
	// down makes jwks answer 503.
	down atomic.Bool
	// block, when set, holds every jwks answer until it is closed; started
	// gets a value when a held request arrives.
	block   atomic.Pointer[chan struct{}]
	started chan struct{}
	// feed, when set, is the revocations feed served at
	// /v1/meshauth/feed and advertised as discovery's revocation_endpoint.
	feed atomic.Pointer[string]
}

func newJWKSServer(t *testing.T) *jwksServer { return newJWKSServerB(t) }

func newJWKSServerB(t testing.TB) *jwksServer {
	j := &jwksServer{keys: map[string]crypto.Signer{}, algs: map[string]string{}, started: make(chan struct{}, 100)}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/meshauth/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		doc := map[string]any{"issuer": "meshauth", "jwks_uri": "/v1/meshauth/jwks"}
		if j.feed.Load() != nil {
			doc["revocation_endpoint"] = "/v1/meshauth/feed"
		}
		_ = json.NewEncoder(w).Encode(doc)
	})
	mux.HandleFunc("/v1/meshauth/feed", func(w http.ResponseWriter, _ *http.Request) {
		body := j.feed.Load()
		if body == nil {
			http.NotFound(w, nil)
			return
		}
		w.Header().Set("Cache-Control", "max-age=30")
		_, _ = w.Write([]byte(*body))
	})
	mux.HandleFunc("/v1/meshauth/jwks", func(w http.ResponseWriter, _ *http.Request) {
		j.fetches.Add(1)
		if b := j.block.Load(); b != nil {
			j.started <- struct{}{}
			<-*b
		}
		if j.down.Load() {
			http.Error(w, "sealed", http.StatusServiceUnavailable)
			return
		}
		j.mu.Lock()
		defer j.mu.Unlock()
		var keys []map[string]string
		for kid, k := range j.keys {
			keys = append(keys, jwk(kid, j.algs[kid], k.Public()))
		}
		cc := "max-age=300"
		if p := j.cacheControl.Load(); p != nil {
			cc = *p
		}
		w.Header().Set("Cache-Control", cc)
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": keys})
	})
	j.srv = httptest.NewTLSServer(mux)
	t.Cleanup(j.srv.Close)
	return j
}

func jwk(kid, alg string, pub crypto.PublicKey) map[string]string {
	b64 := base64.RawURLEncoding.EncodeToString
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		point, _ := k.Bytes()
		return map[string]string{"kid": kid, "alg": alg, "kty": "EC", "crv": "P-256", "x": b64(point[1:33]), "y": b64(point[33:])}
	case ed25519.PublicKey:
		return map[string]string{"kid": kid, "alg": alg, "kty": "OKP", "crv": "Ed25519", "x": b64(k)}
	}
	panic("unsupported key")
}

// addKey publishes a new key and returns its kid.
func (j *jwksServer) addKey(alg string) string {
	var k crypto.Signer
	if alg == "EdDSA" {
		_, k, _ = ed25519.GenerateKey(rand.Reader)
	} else {
		k, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	kid := fmt.Sprintf("k%d", time.Now().UnixNano())
	j.mu.Lock()
	j.keys[kid], j.algs[kid] = k, alg
	j.mu.Unlock()
	return kid
}

// sign makes a token with the key kid; mod changes claims (nil deletes).
func (j *jwksServer) sign(t testing.TB, kid string, mod map[string]any) string {
	j.mu.Lock()
	k, alg := j.keys[kid], j.algs[kid]
	j.mu.Unlock()
	now := time.Now().Unix()
	claims := jwt.MapClaims{"iss": "meshauth", "sub": "orders", "aud": "payments", "iat": now, "nbf": now, "exp": now + 300, "jti": "J1", "team": "checkout"}
	for key, v := range mod {
		if v == nil {
			delete(claims, key)
		} else {
			claims[key] = v
		}
	}
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(alg), claims)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (j *jwksServer) verifier(t *testing.T, audience string) *Verifier {
	v, err := NewVerifier(t.Context(), VerifierConfig{
		SkipRevocations:  true, // this test serves no revocations feed
		DiscoveryURL:     j.srv.URL + "/v1/meshauth/.well-known/openid-configuration",
		Audience:         audience,
		AllowAnyAudience: audience == "",
		HTTPClient:       j.srv.Client(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func testCert(t testing.TB) *x509.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "orders"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	c, _ := x509.ParseCertificate(der)
	return c
}

func x5t(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func TestVerifierAcceptsAndRefuses(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	ed := j.addKey("EdDSA")
	v := j.verifier(t, "payments")
	cert, other := testCert(t), testCert(t)

	claims, err := v.Verify(t.Context(), j.sign(t, kid, nil), nil)
	if err != nil || claims.Subject != "orders" || claims.Extra()["team"] != "checkout" {
		t.Fatalf("good token: %v %#v", err, claims)
	}
	if _, err := v.Verify(t.Context(), j.sign(t, ed, nil), nil); err != nil {
		t.Fatalf("EdDSA token: %v", err)
	}
	bound := j.sign(t, kid, map[string]any{"cnf": map[string]string{"x5t#S256": x5t(cert)}})
	if _, err := v.Verify(t.Context(), bound, cert); err != nil {
		t.Fatalf("bound token with its certificate: %v", err)
	}
	cases := map[string]struct {
		token string
		peer  *x509.Certificate
		want  error
	}{
		"expired":           {j.sign(t, kid, map[string]any{"exp": time.Now().Unix() - 60}), nil, jwt.ErrTokenExpired},
		"no exp":            {j.sign(t, kid, map[string]any{"exp": nil}), nil, jwt.ErrTokenRequiredClaimMissing},
		"wrong audience":    {j.sign(t, kid, map[string]any{"aud": "ledger"}), nil, jwt.ErrTokenInvalidAudience},
		"wrong issuer":      {j.sign(t, kid, map[string]any{"iss": "evil"}), nil, jwt.ErrTokenInvalidIssuer},
		"future iat":        {j.sign(t, kid, map[string]any{"iat": time.Now().Unix() + 600}), nil, jwt.ErrTokenUsedBeforeIssued},
		"cnf mismatch":      {bound, other, ErrCertMismatch},
		"cnf without cert":  {bound, nil, ErrCertMissing},
		"malformed":         {"a.b", nil, ErrInvalidToken},
		"alg not key's alg": {forgeAlg(t, j, kid), nil, errAlgMismatch},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := v.Verify(t.Context(), c.token, c.peer); !errors.Is(err, c.want) {
				t.Fatalf("err = %v; want %v", err, c.want)
			}
		})
	}
}

// forgeAlg signs with the ES256 key but claims ES384 in the header.
func forgeAlg(t testing.TB, j *jwksServer, kid string) string {
	j.mu.Lock()
	k := j.keys[kid]
	j.mu.Unlock()
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"sub": "orders"})
	tok.Header["kid"], tok.Header["alg"] = kid, "ES384"
	s, err := tok.SignedString(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestVerifierFollowsRotationAndResistsUnknownKidFlood(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	v := j.verifier(t, "")
	v.cfg.MinRefetchInterval = time.Hour
	start := j.fetches.Load()
	// A flood of random kids costs at most one refetch per interval.
	for i := range 200 {
		tok := j.sign(t, kid, nil)
		hdr := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"alg":"ES256","kid":"random-%d","typ":"JWT"}`, i)))
		if _, err := v.Verify(t.Context(), hdr+tok[len(tokenHeader(tok)):], nil); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("random kid: %v", err)
		}
	}
	if got := j.fetches.Load() - start; got > 1 {
		t.Fatalf("%d refetches for 200 unknown kids; want at most 1", got)
	}
	// Rotation mid-stream: a new key appears; once the interval allows, the
	// verifier fetches it on first sight.
	v.cfg.MinRefetchInterval = time.Millisecond
	time.Sleep(2 * time.Millisecond)
	fresh := j.addKey("ES256")
	if _, err := v.Verify(t.Context(), j.sign(t, fresh, nil), nil); err != nil {
		t.Fatalf("token of a key published after start: %v", err)
	}
	if _, err := v.Verify(t.Context(), j.sign(t, kid, nil), nil); err != nil {
		t.Fatalf("token of the older key: %v", err)
	}
}

func tokenHeader(tok string) string {
	for i := range len(tok) {
		if tok[i] == '.' {
			return tok[:i]
		}
	}
	return tok
}

func TestMiddlewareAndTransport(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	v := j.verifier(t, "payments")
	h := v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := ClaimsFromContext(r.Context())
		if !ok {
			t.Error("no claims in context")
		}
		_, _ = w.Write([]byte("hello " + c.Subject))
	}))
	for name, c := range map[string]struct {
		auth string
		code int
	}{
		"good":    {"Bearer " + j.sign(t, kid, nil), http.StatusOK},
		"missing": {"", http.StatusUnauthorized},
		"bad":     {"Bearer x.y.z", http.StatusUnauthorized},
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		h.ServeHTTP(rec, req)
		if rec.Code != c.code {
			t.Errorf("%s: %d, want %d", name, rec.Code, c.code)
		}
		if c.code == http.StatusUnauthorized && rec.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("%s: no WWW-Authenticate", name)
		}
	}
}

// BenchmarkVerifyES256 puts side by side, in one run: a raw ES256
// signature check of the token's signing input (the floor), a cold
// verification (nothing remembered: what a Verifier pays for a token it
// sees for the first time), and a repeated one (the same token, as a caller
// reuses it for many requests). Compare them with benchstat -col /mode.
func BenchmarkVerifyES256(b *testing.B) {
	j := newJWKSServerB(b)
	kid := j.addKey("ES256")
	tok := j.sign(b, kid, nil)
	mk := func(cached int) *Verifier {
		v, err := NewVerifier(b.Context(), VerifierConfig{DiscoveryURL: j.srv.URL + "/v1/meshauth/.well-known/openid-configuration", Audience: "payments", HTTPClient: j.srv.Client(), MaxCachedTokens: cached, SkipRevocations: true})
		if err != nil {
			b.Fatal(err)
		}
		return v
	}
	dot := strings.LastIndexByte(tok, '.')
	input := tok[:dot]
	sig, _ := base64.RawURLEncoding.DecodeString(tok[dot+1:])
	pub := j.keys[kid].Public()
	b.Run("mode=raw", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := jwt.SigningMethodES256.Verify(input, sig, pub); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, c := range []struct {
		mode   string
		cached int
	}{{"cold", -1}, {"repeated", 0}} {
		v := mk(c.cached)
		b.Run("mode="+c.mode, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(b.Context(), tok, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerifiedTokenMemory fills a Verifier's memory with distinct
// tokens and reports the heap it holds per token (bytes/token).
func BenchmarkVerifiedTokenMemory(b *testing.B) {
	j := newJWKSServerB(b)
	kid := j.addKey("ES256")
	const n = 2000
	toks := make([]string, n)
	for i := range toks {
		toks[i] = j.sign(b, kid, map[string]any{"jti": fmt.Sprintf("jti-%08d", i), "cnf": map[string]string{"x5t#S256": strings.Repeat("A", 43)}})
	}
	for b.Loop() {
		v, err := NewVerifier(b.Context(), VerifierConfig{DiscoveryURL: j.srv.URL + "/v1/meshauth/.well-known/openid-configuration", Audience: "payments", HTTPClient: j.srv.Client(), MaxCachedTokens: n, SkipRevocations: true})
		if err != nil {
			b.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for _, tok := range toks {
			if _, err := v.parse(b.Context(), tok); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/token")
		b.ReportMetric(float64(len(toks[0])), "token-bytes")
		runtime.KeepAlive(v)
	}
}
