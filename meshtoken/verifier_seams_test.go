package meshtoken

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// signRaw signs header and payload exactly as given, so a test can send
// member spellings that no claims map can express.
func (j *jwksServer) signRaw(t testing.TB, kid, header, payload string) string {
	t.Helper()
	j.mu.Lock()
	k, alg := j.keys[kid], j.algs[kid]
	j.mu.Unlock()
	if header == "" {
		header = fmt.Sprintf(`{"alg":%q,"kid":%q,"typ":"JWT"}`, alg, kid)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	input := b64([]byte(header)) + "." + b64([]byte(payload))
	sig, err := jwt.GetSigningMethod(alg).Sign(input, k)
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + b64(sig)
}

// payloadWith is a valid payload for audience payments with extra appended
// verbatim after the registered claims.
func payloadWith(now time.Time, extra string) string {
	n := now.Unix()
	return fmt.Sprintf(`{"iss":"meshauth","sub":"orders","aud":"payments","iat":%d,"nbf":%d,"exp":%d,"jti":"J1"%s}`, n, n, n+300, extra)
}

// Issue 11 item 1: a payload that spells a registered claim twice, or in a
// spelling that folds to it, is refused before any claim is trusted. Today's
// verifier read `"SUB":"payments"` after `"sub":"orders"` as payments.
func TestVerifierRefusesShadowedClaims(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	v := j.verifier(t, "payments")
	now := time.Now()
	if c, err := v.Verify(t.Context(), j.signRaw(t, kid, "", payloadWith(now, `,"team":"a"`)), nil); err != nil || c.Subject != "orders" {
		t.Fatalf("plain payload: %v", err)
	}
	for name, extra := range map[string]string{
		"SUB after sub":         `,"SUB":"payments"`,
		"Sub after sub":         `,"Sub":"payments"`,
		"long s (U+017F)":       `,"ſub":"payments"`,
		"escaped long s":        `,"\u017fub":"payments"`,
		"duplicate sub":         `,"sub":"payments"`,
		"AUD":                   `,"AUD":"ledger"`,
		"EXP far away":          `,"EXP":4102444800`,
		"escaped duplicate jti": `,"j\u0074i":"J2"`,
		"cnf member spelling":   `,"cnf":{"x5t#S256":"a","X5T#s256":"b"}`,
	} {
		t.Run(name, func(t *testing.T) {
			c, err := v.Verify(t.Context(), j.signRaw(t, kid, "", payloadWith(now, extra)), nil)
			if !errors.Is(err, ErrInvalidToken) || !errors.Is(err, ErrAmbiguousMembers) {
				t.Fatalf("Verify = %#v, %v; want ErrInvalidToken wrapping ErrAmbiguousMembers", c, err)
			}
		})
	}
	dupKid := fmt.Sprintf(`{"alg":"ES256","kid":%q,"kid":"other"}`, kid)
	if _, err := v.Verify(t.Context(), j.signRaw(t, kid, dupKid, payloadWith(now, "")), nil); !errors.Is(err, ErrAmbiguousMembers) {
		t.Fatalf("header with duplicate kid: %v", err)
	}
}

// Issue 11 item 13: a signed token without iat is refused cleanly (today's
// verifier dereferenced the missing iat).
func TestVerifierRefusesTokenWithoutIat(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	v := j.verifier(t, "payments")
	for _, drop := range []string{"iat", "exp", "jti", "sub"} {
		if _, err := v.Verify(t.Context(), j.sign(t, kid, map[string]any{drop: nil}), nil); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("token without %s: %v", drop, err)
		}
	}
}

// Issue 11 item 14: an audience is required unless waived on purpose, and
// bound tokens can be required.
func TestVerifierAudienceAndBindingRequirements(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	discovery := j.srv.URL + "/v1/meshauth/.well-known/openid-configuration"
	_, err := NewVerifier(t.Context(), VerifierConfig{DiscoveryURL: discovery, HTTPClient: j.srv.Client(), SkipRevocations: true})
	if err == nil || !strings.Contains(err.Error(), "Audience") || !strings.Contains(err.Error(), "AllowAnyAudience") {
		t.Fatalf("NewVerifier without Audience: %v; want an error naming Audience and AllowAnyAudience", err)
	}
	if _, err := NewVerifier(t.Context(), VerifierConfig{DiscoveryURL: discovery, HTTPClient: j.srv.Client(), Audience: "payments", AllowAnyAudience: true, SkipRevocations: true}); err == nil {
		t.Fatal("NewVerifier accepted Audience with AllowAnyAudience")
	}
	anyAud, err := NewVerifier(t.Context(), VerifierConfig{DiscoveryURL: discovery, HTTPClient: j.srv.Client(), AllowAnyAudience: true, SkipRevocations: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := anyAud.Verify(t.Context(), j.sign(t, kid, map[string]any{"aud": "ledger"}), nil); err != nil {
		t.Fatalf("AllowAnyAudience refused another audience: %v", err)
	}

	bound, err := NewVerifier(t.Context(), VerifierConfig{DiscoveryURL: discovery, HTTPClient: j.srv.Client(), Audience: "payments", RequireBinding: true, SkipRevocations: true})
	if err != nil {
		t.Fatal(err)
	}
	cert := testCert(t)
	if _, err := bound.Verify(t.Context(), j.sign(t, kid, nil), cert); !errors.Is(err, ErrNotBound) {
		t.Fatalf("unbound token with RequireBinding: %v", err)
	}
	if _, err := bound.Verify(t.Context(), j.sign(t, kid, map[string]any{"cnf": map[string]string{"x5t#S256": x5t(cert)}}), cert); err != nil {
		t.Fatalf("bound token with RequireBinding: %v", err)
	}
	// A cnf this verifier cannot check never passes as no cnf at all.
	plain := j.verifier(t, "payments")
	for _, cnf := range []any{map[string]string{}, map[string]string{"jkt": "abc"}} {
		if _, err := plain.Verify(t.Context(), j.sign(t, kid, map[string]any{"cnf": cnf}), cert); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("cnf %v: %v", cnf, err)
		}
	}
}

// Issue 11 item 8: max-age=0 (an overdue rotation) costs at most one fetch
// per MinRefetchInterval, not one per verification.
func TestVerifierMaxAgeZeroIsNoFetchStorm(t *testing.T) {
	j := newJWKSServer(t)
	zero := "max-age=0"
	j.cacheControl.Store(&zero)
	kid := j.addKey("ES256")
	v := j.verifier(t, "payments")
	v.cfg.MinRefetchInterval = time.Hour
	start := j.fetches.Load()
	tok := j.sign(t, kid, nil)
	for range 200 {
		if _, err := v.Verify(t.Context(), tok, nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := j.fetches.Load() - start; got > 1 {
		t.Fatalf("%d fetches for 200 verifications under max-age=0; want at most 1 per MinRefetchInterval", got)
	}
}

// Issue 11 item 8: while a refetch hangs on a slow Vault, verifications
// with keys we hold do not wait for it.
func TestVerifierDoesNotWaitForSlowRefetch(t *testing.T) {
	j := newJWKSServer(t)
	zero := "max-age=0"
	j.cacheControl.Store(&zero)
	kid := j.addKey("ES256")
	v := j.verifier(t, "payments")
	v.cfg.MinRefetchInterval = time.Millisecond
	time.Sleep(5 * time.Millisecond)
	release := make(chan struct{})
	j.block.Store(&release)
	defer close(release)

	tok := j.sign(t, kid, nil)
	results := make(chan error, 20)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			_, err := v.Verify(context.Background(), tok, nil)
			results <- err
		})
	}
	// A deadlock detector, not a timing assertion: the refetch is held
	// until the test ends, so a verification that waits for it never
	// returns.
	for range 20 {
		select {
		case err := <-results:
			if err != nil {
				t.Fatalf("verification during a hung refetch: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("verifications wait for a hung JWKS refetch")
		}
	}
	if got := len(j.started); got > 1 {
		t.Fatalf("%d concurrent refetches; want one", got)
	}
}

// Issue 11 item 8: while Vault is down, the last good key set keeps
// verifying for MaxStaleness past its max-age, then verification fails
// closed until a fetch succeeds again.
func TestVerifierRidesOutOutageWithinMaxStaleness(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	v := j.verifier(t, "payments")
	clock := &fakeClock{t: time.Now()}
	v.now = clock.now
	v.cfg.MinRefetchInterval = time.Second
	v.cfg.MaxStaleness = time.Hour
	// The set was fetched with max-age=300 at about clock start.
	j.down.Store(true)
	verify := func() error {
		n := clock.now().Unix()
		tok := j.sign(t, kid, map[string]any{"iat": n, "nbf": n, "exp": n + 300})
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		_, err := v.Verify(ctx, tok, nil)
		return err
	}
	clock.advance(301 * time.Second)
	if err := verify(); err != nil {
		t.Fatalf("past max-age, Vault down, within MaxStaleness: %v", err)
	}
	clock.advance(time.Hour - 10*time.Second)
	if err := verify(); err != nil {
		t.Fatalf("just within MaxStaleness: %v", err)
	}
	waitNoFetch(t, v)
	clock.advance(time.Minute)
	if err := verify(); !errors.Is(err, ErrKeysStale) {
		t.Fatalf("past MaxStaleness with Vault down: %v; want ErrKeysStale", err)
	}
	n := clock.now().Unix()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set("Authorization", "Bearer "+j.sign(t, kid, map[string]any{"iat": n, "nbf": n, "exp": n + 300}))
	v.Middleware(http.NotFoundHandler()).ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("Middleware past MaxStaleness answered %d; want 503", rec.Code)
	}
	j.down.Store(false)
	clock.advance(2 * time.Second)
	if err := verify(); err != nil {
		t.Fatalf("after Vault came back: %v", err)
	}
}

// waitNoFetch waits until no background fetch runs.
func waitNoFetch(t *testing.T, v *Verifier) {
	t.Helper()
	v.keysFetch.wait()
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// A Verifier pointed at a Vault whose CA it does not trust says how to fix
// it, instead of only "unknown authority".
func TestVerifierNamesTheCAProblem(t *testing.T) {
	j := newJWKSServer(t)
	_, err := NewVerifier(t.Context(), VerifierConfig{DiscoveryURL: j.srv.URL + "/v1/meshauth/.well-known/openid-configuration", Audience: "payments", SkipRevocations: true})
	if err == nil || !strings.Contains(err.Error(), "HTTPClient") || !strings.Contains(err.Error(), "VAULT_CACERT") {
		t.Fatalf("NewVerifier against an untrusted CA: %v", err)
	}
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}
