package meshtoken

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// feedServer serves a revocations feed signed by a key of j, with an ETag.
type feedServer struct {
	srv              *httptest.Server
	mu               sync.Mutex
	body, etag       string
	down             atomic.Bool
	full, notChanged atomic.Int32
}

func newFeedServer(t *testing.T, j *jwksServer, kid string, doc map[string]any) *feedServer {
	f := &feedServer{}
	f.set(t, j, kid, doc)
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.down.Load() {
			http.Error(w, "sealed", http.StatusServiceUnavailable)
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		w.Header().Set("ETag", f.etag)
		w.Header().Set("Cache-Control", "max-age=30")
		if r.Header.Get("If-None-Match") == f.etag {
			f.notChanged.Add(1)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		f.full.Add(1)
		_, _ = w.Write([]byte(f.body))
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *feedServer) set(t *testing.T, j *jwksServer, kid string, doc map[string]any) {
	j.mu.Lock()
	k, alg := j.keys[kid], j.algs[kid]
	j.mu.Unlock()
	claims := jwt.MapClaims{"iat": time.Now().Unix()}
	for k, v := range doc {
		claims[k] = v
	}
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(alg), claims)
	tok.Header["kid"], tok.Header["typ"] = kid, RevocationsType
	s, err := tok.SignedString(k)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.body, f.etag = s, `"`+s[len(s)-10:]+`"`
	f.mu.Unlock()
}

func TestVerifierRefusesWhatTheFeedRevokes(t *testing.T) {
	j := newJWKSServer(t)
	kid, removed := j.addKey("ES256"), j.addKey("ES256")
	exp := time.Now().Add(time.Hour).Unix()
	feed := newFeedServer(t, j, kid, map[string]any{
		"iss":      "meshauth",
		"tokens":   map[string]int64{"REVOKED": exp},
		"services": map[string]any{"orders": map[string]any{"gen": "R.2", "exp": exp}},
		"disabled": map[string]int64{"billing": exp},
		"keys":     map[string]int64{removed: exp},
	})
	var ages []time.Duration
	var agesMu sync.Mutex
	v, err := NewVerifier(t.Context(), VerifierConfig{
		DiscoveryURL:     j.srv.URL + "/v1/meshauth/.well-known/openid-configuration",
		AllowAnyAudience: true,
		HTTPClient:       j.srv.Client(),
		Revocations: &RevocationConfig{URL: feed.srv.URL, MaxStaleness: time.Minute, OnAge: func(age time.Duration, _ error) {
			agesMu.Lock()
			ages = append(ages, age)
			agesMu.Unlock()
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	var clockMu sync.Mutex
	v.now = func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return clock }
	advance := func(d time.Duration) { clockMu.Lock(); clock = clock.Add(d); clockMu.Unlock() }

	good := j.sign(t, kid, map[string]any{"gen": "R.2"})
	if _, err := v.Verify(t.Context(), good, nil); err != nil {
		t.Fatalf("a token the feed does not name: %v", err)
	}
	for name, tok := range map[string]string{
		"jti":                  j.sign(t, kid, map[string]any{"jti": "REVOKED", "gen": "R.2"}),
		"earlier epoch":        j.sign(t, kid, map[string]any{"gen": "R.1"}),
		"no gen":               j.sign(t, kid, map[string]any{"gen": nil}),
		"disabled":             j.sign(t, kid, map[string]any{"sub": "billing"}),
		"disabled JWT-SVID":    j.sign(t, kid, map[string]any{"sub": "spiffe://td/billing", "meshauth_service": "billing"}),
		"removed key in cache": j.sign(t, removed, map[string]any{"gen": "R.2"}),
	} {
		if _, err := v.Verify(t.Context(), tok, nil); !errors.Is(err, ErrRevoked) {
			t.Errorf("%s: %v; want ErrRevoked", name, err)
		}
	}

	// Past max-age a background fetch revalidates by ETag: 304, no body;
	// the same bytes are the same iat, so the copy is no younger.
	advance(45 * time.Second)
	if _, err := v.Verify(t.Context(), good, nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for feed.notChanged.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	v.revocations.fetch.wait()
	if feed.notChanged.Load() != 1 || feed.full.Load() != 1 {
		t.Fatalf("revalidation: %d full fetches, %d 304s", feed.full.Load(), feed.notChanged.Load())
	}
	if age := v.RevocationsAge(); age < 45*time.Second {
		t.Fatalf("a 304 made the copy younger than its iat: age %s", age)
	}

	// Vault unreachable past MaxStaleness: fail closed.
	feed.down.Store(true)
	advance(2 * time.Minute)
	if _, err := v.Verify(t.Context(), good, nil); !errors.Is(err, ErrRevocationsStale) {
		t.Fatalf("a copy past MaxStaleness: %v", err)
	}
	agesMu.Lock()
	last := ages[len(ages)-1]
	agesMu.Unlock()
	if last < 2*time.Minute {
		t.Fatalf("OnAge reported %s", last)
	}
}

func TestVerifierAllowStaleKeepsVerifying(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	feed := newFeedServer(t, j, kid, map[string]any{"iss": "meshauth", "tokens": map[string]int64{"REVOKED": time.Now().Add(time.Hour).Unix()}})
	v, err := NewVerifier(t.Context(), VerifierConfig{
		DiscoveryURL: j.srv.URL + "/v1/meshauth/.well-known/openid-configuration", AllowAnyAudience: true, HTTPClient: j.srv.Client(),
		Revocations: &RevocationConfig{URL: feed.srv.URL, MaxStaleness: time.Minute, AllowStale: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	feed.down.Store(true)
	later := time.Now().Add(3 * time.Minute)
	v.now = func() time.Time { return later }
	if _, err := v.Verify(t.Context(), j.sign(t, kid, nil), nil); err != nil {
		t.Fatalf("AllowStale: %v", err)
	}
	if _, err := v.Verify(t.Context(), j.sign(t, kid, map[string]any{"jti": "REVOKED"}), nil); !errors.Is(err, ErrRevoked) {
		t.Fatalf("AllowStale still refuses what its copy names: %v", err)
	}
}

func TestVerifierWithoutAFeedDoesNotStart(t *testing.T) {
	j := newJWKSServer(t)
	j.addKey("ES256")
	feed := newFeedServer(t, j, j.addKey("ES256"), map[string]any{"iss": "meshauth"})
	feed.down.Store(true)
	var reported error
	_, err := NewVerifier(t.Context(), VerifierConfig{
		DiscoveryURL: j.srv.URL + "/v1/meshauth/.well-known/openid-configuration", AllowAnyAudience: true, HTTPClient: j.srv.Client(),
		Revocations: &RevocationConfig{URL: feed.srv.URL, OnAge: func(_ time.Duration, err error) { reported = err }},
	})
	if err == nil || reported == nil {
		t.Fatalf("a verifier started without its revocations feed: %v, OnAge saw %v", err, reported)
	}
}

func TestVerifierRefusesAForgedFeed(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	feed := newFeedServer(t, j, kid, map[string]any{"iss": "someone-else"})
	_, err := NewVerifier(t.Context(), VerifierConfig{
		DiscoveryURL: j.srv.URL + "/v1/meshauth/.well-known/openid-configuration", AllowAnyAudience: true, HTTPClient: j.srv.Client(),
		Revocations: &RevocationConfig{URL: feed.srv.URL},
	})
	if err == nil {
		t.Fatal("a feed of another issuer was accepted")
	}
}

// BenchmarkOfflineVerifyWithFeed is BenchmarkOfflineVerify with the
// revocations feed enforced, holding 20,000 revoked tokens (the engine's
// most): the check is a few map lookups, so the two should be within 5%.
func BenchmarkOfflineVerifyWithFeed(b *testing.B) {
	j := newJWKSServerB(b)
	kid := j.addKey("ES256")
	tokens := map[string]int64{}
	exp := time.Now().Add(time.Hour).Unix()
	for i := range 20000 {
		tokens[fmt.Sprintf("%026d", i)] = exp
	}
	k, alg := j.keys[kid], j.algs[kid]
	feedTok := jwt.NewWithClaims(jwt.GetSigningMethod(alg), jwt.MapClaims{"iss": "meshauth", "iat": time.Now().Unix(), "tokens": tokens})
	feedTok.Header["kid"], feedTok.Header["typ"] = kid, RevocationsType
	body, err := feedTok.SignedString(k)
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cache-Control", "max-age=150")
		_, _ = w.Write([]byte(body))
	}))
	b.Cleanup(srv.Close)
	v, err := NewVerifier(b.Context(), VerifierConfig{
		DiscoveryURL: j.srv.URL + "/v1/meshauth/.well-known/openid-configuration", Audience: "payments", HTTPClient: j.srv.Client(),
		Revocations: &RevocationConfig{URL: srv.URL},
	})
	if err != nil {
		b.Fatal(err)
	}
	tok := j.sign(b, kid, nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(b.Context(), tok, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCheckRevoked is the feed check alone, against a list of 20,000
// revoked tokens: what the feed adds to each Verify.
func BenchmarkCheckRevoked(b *testing.B) {
	tokens := map[string]int64{}
	for i := range 20000 {
		tokens[fmt.Sprintf("%026d", i)] = 1
	}
	v := &Verifier{now: time.Now, revocations: &revocationState{cfg: RevocationConfig{MaxStaleness: time.Hour}}}
	v.revocations.list.Store(&revocationList{feed: &Feed{Tokens: tokens}, issued: time.Now(), freshUntil: time.Now().Add(time.Hour)})
	c := &Claims{Subject: "orders", ID: "ABCDEFGHIJKLMNOPQRSTUVWXYZ", Generation: "R.1", KeyID: "k1"}
	b.ReportAllocs()
	for b.Loop() {
		if err := v.checkRevoked(b.Context(), c); err != nil {
			b.Fatal(err)
		}
	}
}

// A feed older than one the Verifier accepted is refused and the newer copy
// stays (regression: a lagging node or a cache could serve an older feed and
// a revoked token verified again); staleness counts from iat, so a feed
// served now but describing long ago is stale.
func TestVerifierRefusesAnOlderFeed(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	now := time.Now()
	exp := now.Add(time.Hour).Unix()
	older := map[string]any{"iss": "meshauth", "iat": now.Add(-time.Minute).Unix()}
	newer := map[string]any{"iss": "meshauth", "iat": now.Unix(), "tokens": map[string]int64{"REVOKED": exp}}
	feed := newFeedServer(t, j, kid, newer)
	v, err := NewVerifier(t.Context(), VerifierConfig{
		DiscoveryURL: j.srv.URL + "/v1/meshauth/.well-known/openid-configuration", AllowAnyAudience: true, HTTPClient: j.srv.Client(),
		Revocations: &RevocationConfig{URL: feed.srv.URL, MaxStaleness: 5 * time.Minute},
	})
	if err != nil {
		t.Fatal(err)
	}
	revoked := j.sign(t, kid, map[string]any{"jti": "REVOKED"})
	feed.set(t, j, kid, older)
	if err := v.fetchRevocations(t.Context(), now); !errors.Is(err, ErrFeedRollback) {
		t.Fatalf("an older feed: %v; want ErrFeedRollback", err)
	}
	if _, err := v.Verify(t.Context(), revoked, nil); !errors.Is(err, ErrRevoked) {
		t.Fatalf("after a rollback attempt the revoked token: %v", err)
	}
	// An earlier render of the same step: the same iat, without the
	// revocation (found by the attacker's read of the feed: it was taken).
	feed.set(t, j, kid, map[string]any{"iss": "meshauth", "iat": now.Unix()})
	if err := v.fetchRevocations(t.Context(), now); !errors.Is(err, ErrFeedRollback) {
		t.Fatalf("a same-iat feed without an accepted entry: %v; want ErrFeedRollback", err)
	}
	if _, err := v.Verify(t.Context(), revoked, nil); !errors.Is(err, ErrRevoked) {
		t.Fatalf("after a same-iat rollback attempt the revoked token: %v", err)
	}
	// A later render of the same step, with one more entry, is taken.
	feed.set(t, j, kid, map[string]any{"iss": "meshauth", "iat": now.Unix(), "tokens": map[string]int64{"REVOKED": exp, "ALSO": exp}})
	if err := v.fetchRevocations(t.Context(), now); err != nil {
		t.Fatalf("a same-iat feed that covers the accepted one: %v", err)
	}
	// A feed served fresh but with an iat past MaxStaleness (+ leeway).
	feed.set(t, j, kid, map[string]any{"iss": "meshauth", "iat": now.Add(time.Minute).Unix()})
	if err := v.fetchRevocations(t.Context(), now); err != nil {
		t.Fatal(err)
	}
	v.revocations.fetch.attempted(now) // no refetch: the copy is what it is
	v.now = func() time.Time { return now.Add(7 * time.Minute) }
	if _, err := v.Verify(t.Context(), j.sign(t, kid, map[string]any{"exp": exp}), nil); !errors.Is(err, ErrRevocationsStale) {
		t.Fatalf("a feed whose iat is 6 minutes old: %v; want ErrRevocationsStale", err)
	}
}
