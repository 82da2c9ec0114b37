package meshtoken

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A remembered token and a fresh Parse agree at every instant around the
// end of its window, exp + leeway exactly included (regression: memory
// accepted it at exp + leeway, Parse refused it).
func TestRememberedTokenAgreesWithParseAtExpPlusLeeway(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	v := j.verifier(t, "payments")
	clock := clocked(v)
	exp := time.Unix(time.Now().Unix()+60, 0)
	tok := j.sign(t, kid, map[string]any{"exp": exp.Unix()})
	end := exp.Add(v.cfg.Leeway)

	clock.set(end.Add(-time.Second))
	if _, err := v.Verify(t.Context(), tok, nil); err != nil {
		t.Fatalf("inside the window: %v", err)
	}
	if v.verified.len() != 1 {
		t.Fatal("the token was not remembered")
	}
	clock.set(end)
	_, fresh := Parse(tok, func(string) (Key, error) {
		k, _, err := v.key(t.Context(), kid)
		return k, err
	}, Options{Issuer: "meshauth", Audience: "payments", Leeway: v.cfg.Leeway, Now: end})
	if ReasonOf(fresh) != ReasonExpired {
		t.Fatalf("fresh Parse at exp+leeway: %v", fresh)
	}
	if _, err := v.Verify(t.Context(), tok, nil); !errors.Is(err, ErrInvalidToken) || ReasonOf(err) != ReasonExpired {
		t.Fatalf("remembered token at exp+leeway: %v; want the fresh Parse's answer %v", err, fresh)
	}
}

// A token has one spelling: the bits past the last whole byte of a segment
// are zero (regression: the 4 spare bits of an ES256 signature gave 16
// spellings that all verified, each its own cache entry).
func TestParseAcceptsOneSpelling(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	v := j.verifier(t, "payments")
	tok := j.sign(t, kid, nil)
	if _, err := v.Verify(t.Context(), tok, nil); err != nil {
		t.Fatal(err)
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, tok[len(tok)-1])
	accepted := 0
	for spare := 1; spare < 16; spare++ { // an 86-character segment has 4 spare bits
		other := tok[:len(tok)-1] + string(alphabet[last^spare])
		if _, err := v.Verify(t.Context(), other, nil); err == nil {
			accepted++
		} else if !errors.Is(err, ErrInvalidToken) || ReasonOf(err) != ReasonMalformed {
			t.Fatalf("spare bits %d: %v; want malformed", spare, err)
		}
	}
	if accepted != 0 || v.verified.len() != 1 {
		t.Fatalf("%d other spellings accepted, %d remembered", accepted, v.verified.len())
	}
	for name, bad := range map[string]string{
		"padding":      tok + "=",
		"line break":   tok[:10] + "\n" + tok[10:],
		"std alphabet": strings.NewReplacer("-", "+", "_", "/").Replace(tok),
	} {
		if bad == tok {
			continue
		}
		if _, err := v.Verify(t.Context(), bad, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// An empty cnf, or a cnf of a method no verifier checks, is refused by
// Parse itself, so the engine's verify and every Verifier answer alike
// (regression: the engine read {"cnf":{}} as unbound, the Verifier refused
// it).
func TestParseRefusesUncheckableConfirmation(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	v := j.verifier(t, "payments")
	keys := func(string) (Key, error) { return v.set.Load().keys[kid], nil }
	for name, cnf := range map[string]any{
		"empty":         map[string]any{},
		"empty x5t":     map[string]any{"x5t#S256": ""},
		"other method":  map[string]any{"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"},
		"short x5t":     map[string]any{"x5t#S256": "abc"},
		"non-canonical": map[string]any{"x5t#S256": strings.Repeat("A", 42) + "B"},
		"padded":        map[string]any{"x5t#S256": strings.Repeat("A", 42) + "="},
	} {
		tok := j.sign(t, kid, map[string]any{"cnf": cnf})
		_, err := Parse(tok, keys, Options{Issuer: "meshauth", Leeway: DefaultLeeway})
		if ReasonOf(err) != ReasonUnsupportedConfirmation {
			t.Errorf("%s: Parse = %v; want %s", name, err, ReasonUnsupportedConfirmation)
		}
	}
	good := j.sign(t, kid, map[string]any{"cnf": map[string]any{"x5t#S256": strings.Repeat("A", 43)}})
	c, err := Parse(good, keys, Options{Issuer: "meshauth", Leeway: DefaultLeeway})
	if err != nil || !c.Bound() {
		t.Fatalf("well-spelled x5t#S256: %v", err)
	}
	if err := (Binding{Unseen: true}).Check(c); err != nil {
		t.Fatalf("bound token, connection unseen: %v", err)
	}
	for _, tc := range []struct {
		b    Binding
		want error
	}{
		{Binding{}, ErrCertMissing},
		{Binding{Thumbprint: strings.Repeat("B", 43)}, ErrCertMismatch},
	} {
		if err := tc.b.Check(c); !errors.Is(err, tc.want) || !errors.Is(err, ErrInvalidToken) {
			t.Errorf("%+v: %v; want %v", tc.b, err, tc.want)
		}
	}
}

// The lockout answer the engine writes is the one the client reads.
func TestLockoutMessageRoundTrip(t *testing.T) {
	until := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, msg := range []string{LockoutMessage(until), "1 error occurred:\n\t* " + LockoutMessage(until) + "\n"} {
		if got, ok := LockedUntil(msg); !ok || !got.Equal(until) {
			t.Fatalf("LockedUntil(%q) = %v %v", msg, got, ok)
		}
	}
	if _, ok := LockedUntil("invalid API key or certificate"); ok {
		t.Fatal("a message that is not a lockout read as one")
	}
}

// Every refusal of a token is errors.Is(err, ErrInvalidToken) and carries
// a typed reason; unavailability is not a refusal.
func TestEveryRefusalIsInvalidToken(t *testing.T) {
	if !errors.Is(ErrMissingToken, ErrInvalidToken) {
		t.Error("ErrMissingToken is not ErrInvalidToken")
	}
	for _, err := range []error{ErrRevoked, ErrCertMismatch, ErrCertMissing, ErrNotBound} {
		if !errors.Is(err, ErrInvalidToken) || ReasonOf(err) == "" {
			t.Errorf("%v: not ErrInvalidToken, or no reason", err)
		}
	}
	for _, err := range []error{ErrKeysStale, ErrRevocationsStale} {
		if errors.Is(err, ErrInvalidToken) || FailureOf(err) != FailureUnavailable {
			t.Errorf("%v: unavailability must not read as a refusal", err)
		}
	}
}

// A revocation feed past its staleness makes the Middleware answer 503, as
// the gRPC interceptors answer Unavailable: both map Authenticate's error
// with FailureOf.
func TestMiddlewareStaleFeedIsUnavailable(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	feed := newFeedServer(t, j, kid, map[string]any{"iss": "meshauth"})
	v, err := NewVerifier(t.Context(), VerifierConfig{
		DiscoveryURL: j.srv.URL + "/v1/meshauth/.well-known/openid-configuration", Audience: "payments", HTTPClient: j.srv.Client(),
		Revocations: &RevocationConfig{URL: feed.srv.URL, MaxStaleness: time.Minute},
	})
	if err != nil {
		t.Fatal(err)
	}
	feed.down.Store(true)
	later := time.Now().Add(2 * time.Minute)
	v.now = func() time.Time { return later }
	tok := j.sign(t, kid, map[string]any{"exp": later.Add(time.Hour).Unix()})
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	rec := httptest.NewRecorder()
	v.Middleware(http.NotFoundHandler()).ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("stale feed: Middleware answered %d; want 503", rec.Code)
	}
}
