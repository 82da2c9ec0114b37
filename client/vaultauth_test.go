package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// authVault is a fake Vault with an auth method (auth/fake/login), token
// renewal and lookup, and the meshauth login, which it answers only for
// the Vault token it issued last.
type authVault struct {
	srv *httptest.Server
	// issued counts Vault logins; the current Vault token is vt-<issued>.
	issued atomic.Int32
	// leaseSecs is the TTL of issued Vault tokens.
	leaseSecs int
	// renewRefused makes renew-self answer permission denied (renewal
	// then ends when the token is due).
	renewRefused atomic.Bool
	// revoked makes the current Vault token invalid for meshauth logins.
	revoked   atomic.Bool
	renewals  atomic.Int32
	mu        sync.Mutex
	tokensFor []string // the Vault token of each meshauth login
	logins    atomic.Int32
}

func newAuthVault(t *testing.T, leaseSecs int) *authVault {
	v := &authVault{leaseSecs: leaseSecs}
	v.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		current := fmt.Sprintf("vt-%d", v.issued.Load())
		tok := r.Header.Get("X-Vault-Token")
		switch r.URL.Path {
		case "/v1/auth/fake/login":
			n := v.issued.Add(1)
			_ = json.NewEncoder(w).Encode(map[string]any{"auth": map[string]any{"client_token": fmt.Sprintf("vt-%d", n), "lease_duration": v.leaseSecs, "renewable": true}})
		case "/v1/auth/token/renew-self":
			v.renewals.Add(1)
			if v.renewRefused.Load() || tok != current {
				http.Error(w, `{"errors":["permission denied"]}`, http.StatusForbidden)
				return
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"auth": map[string]any{"client_token": tok, "lease_duration": v.leaseSecs, "renewable": true}})
		case "/v1/auth/token/lookup-self":
			_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"ttl": 0, "renewable": false, "id": tok}})
		case "/v1/meshauth/login/orders":
			if tok != current || v.revoked.Load() {
				http.Error(w, `{"errors":["permission denied","invalid token"]}`, http.StatusForbidden)
				return
			}
			v.mu.Lock()
			v.tokensFor = append(v.tokensFor, tok)
			v.mu.Unlock()
			n := v.logins.Add(1)
			_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"token": fmt.Sprintf("token-%d", n), "expires_in": 3600}})
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(v.srv.Close)
	return v
}

func (v *authVault) client(t *testing.T) *api.Client {
	cfg := api.DefaultConfig()
	cfg.Address = v.srv.URL
	cfg.MaxRetries = 0
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken("")
	return c
}

// fakeAuth logs in at auth/fake/login, as AppRole or Kubernetes would at
// their paths.
type fakeAuth struct{}

func (fakeAuth) Login(ctx context.Context, c *api.Client) (*api.Secret, error) {
	return c.Logical().WriteWithContext(ctx, "auth/fake/login", map[string]any{"role_id": "r"})
}

func (v *authVault) lastVaultToken() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.tokensFor) == 0 {
		return ""
	}
	return v.tokensFor[len(v.tokensFor)-1]
}

// With an auth method the source logs in to Vault on first use, keeps the
// Vault token alive (renewals), logs in again when renewal ends, and uses
// the new Vault token from then on.
func TestTokenSourceAuthMethodRenewsAndLogsInAgain(t *testing.T) {
	v := newAuthVault(t, 2)
	ts, err := NewTokenSource(TokenSourceConfig{Vault: v.client(t), Auth: fakeAuth{}, Service: "orders", APIKey: "mak_key"})
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Stop()
	if _, err := ts.FreshToken(t.Context()); err != nil || v.lastVaultToken() != "vt-1" {
		t.Fatalf("first login: %v with Vault token %q", err, v.lastVaultToken())
	}
	// The watcher renews before the 2s TTL runs out...
	waitFor(t, "a renewal of the Vault token", func() bool { return ts.Stats().VaultRenewals > 0 })
	// ... and when renewal stops working, logs in to Vault again.
	v.renewRefused.Store(true)
	waitFor(t, "a second Vault login after renewal ended", func() bool { return v.issued.Load() >= 2 })
	v.renewRefused.Store(false)
	if _, err := ts.FreshToken(t.Context()); err != nil || v.lastVaultToken() == "vt-1" {
		t.Fatalf("login after renewal ended: %v with Vault token %q", err, v.lastVaultToken())
	}
	s := ts.Stats()
	if s.VaultLogins < 2 || s.VaultRenewalEnds < 1 {
		t.Fatalf("stats: %+v", s)
	}
}

// A Vault token revoked under the source: the refused login is visible,
// and the next one logs in to Vault again instead of failing forever.
func TestTokenSourceLogsInToVaultAgainAfterRevocation(t *testing.T) {
	v := newAuthVault(t, 3600)
	var seen []error
	var mu sync.Mutex
	ts, err := NewTokenSource(TokenSourceConfig{
		Vault: v.client(t), Auth: fakeAuth{}, Service: "orders", APIKey: "mak_key",
		MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond,
		OnError: func(err error) { mu.Lock(); seen = append(seen, err); mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Stop()
	if _, err := ts.FreshToken(t.Context()); err != nil {
		t.Fatal(err)
	}
	v.revoked.Store(true)
	if _, err := ts.FreshToken(t.Context()); err == nil {
		t.Fatal("login with a revoked Vault token succeeded")
	}
	v.revoked.Store(false)
	time.Sleep(5 * time.Millisecond)
	if _, err := ts.FreshToken(t.Context()); err != nil || v.lastVaultToken() != "vt-2" {
		t.Fatalf("login after the revocation: %v with Vault token %q", err, v.lastVaultToken())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || failureKind(seen[0]) != FailureRefused {
		t.Fatalf("OnError saw %v", seen)
	}
}

// StaticToken (development) reads the token's TTL; one without TTL needs
// no renewal and is used as is.
func TestTokenSourceStaticToken(t *testing.T) {
	v := newAuthVault(t, 0)
	v.issued.Store(7) // the meshauth login accepts vt-7
	ts, err := NewTokenSource(TokenSourceConfig{Vault: v.client(t), Auth: StaticToken("vt-7"), Service: "orders", APIKey: "mak_key"})
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Stop()
	if _, err := ts.Token(t.Context()); err != nil || v.lastVaultToken() != "vt-7" {
		t.Fatalf("static token: %v, %q", err, v.lastVaultToken())
	}
	if ts.session.watcher != nil {
		t.Fatal("a token without TTL got a renewal watcher")
	}
}

// Without an auth method, the caller's Vault token is read at each login:
// a token the caller replaced after construction is the one used.
func TestTokenSourceUsesCallersCurrentVaultToken(t *testing.T) {
	v := newAuthVault(t, 0)
	c := v.client(t)
	c.SetToken("vt-0")
	ts, err := NewTokenSource(TokenSourceConfig{Vault: c, Service: "orders", APIKey: "mak_key"})
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Stop()
	if _, err := ts.FreshToken(t.Context()); err != nil {
		t.Fatal(err)
	}
	v.issued.Store(1)
	c.SetToken("vt-1")
	if _, err := ts.FreshToken(t.Context()); err != nil || v.lastVaultToken() != "vt-1" {
		t.Fatalf("after the caller replaced its token: %v, %q", err, v.lastVaultToken())
	}
}

// FreshToken never returns a token twice, and never one Token serves.
func TestTokenSourceFreshToken(t *testing.T) {
	f := newFakeVault(t, time.Hour)
	ts := f.source(t)
	cached, err := ts.Token(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{cached: true}
	for range 3 {
		tok, err := ts.FreshToken(t.Context())
		if err != nil || seen[tok] {
			t.Fatalf("FreshToken: %q %v (seen before: %v)", tok, err, seen[tok])
		}
		seen[tok] = true
	}
	if tok, _ := ts.Token(t.Context()); tok != cached {
		t.Fatalf("Token after FreshToken: %q, want the cached %q", tok, cached)
	}
	if s := ts.Stats(); s.Logins != 4 || s.FreshLogins != 3 {
		t.Fatalf("stats: %+v", s)
	}
}

// Failures are counted by kind, logged with their kind, and never log a
// secret; the refresh lag shows a token past its refresh point.
func TestTokenSourceFailuresAreVisible(t *testing.T) {
	f := newFakeVault(t, time.Hour)
	var buf bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&buf, &mu}, nil))
	cfg := api.DefaultConfig()
	cfg.Address = f.srv.URL
	cfg.MaxRetries = 0
	c, _ := api.NewClient(cfg)
	c.SetToken("vault-token")
	var calls atomic.Int32
	ts, err := NewTokenSource(TokenSourceConfig{Vault: c, Service: "orders", APIKey: "mak_key", Logger: logger, OnError: func(error) { calls.Add(1) }, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Stop()
	clock := &fakeClock{t: time.Now()}
	ts.now = clock.now
	if _, err := ts.Token(t.Context()); err != nil {
		t.Fatal(err)
	}
	for status, kind := range map[int]string{http.StatusInternalServerError: FailureUnavailable, http.StatusForbidden: FailureRefused} {
		f.answerWith(status, `{"errors":["no"]}`)
		clock.advance(time.Second)
		if _, err := ts.FreshToken(t.Context()); failureKind(err) != kind {
			t.Fatalf("%d: %v, kind %q", status, err, failureKind(err))
		}
	}
	f.answerWith(http.StatusOK, `{"data":{"token":"t"}}`)
	clock.advance(time.Second)
	_, _ = ts.FreshToken(t.Context())
	s := ts.Stats()
	if s.Failures[FailureUnavailable] != 1 || s.Failures[FailureRefused] != 1 || s.Failures[FailureBadAnswer] != 1 || calls.Load() != 3 {
		t.Fatalf("failures %v, OnError calls %d", s.Failures, calls.Load())
	}
	mu.Lock()
	out := buf.String()
	mu.Unlock()
	for _, kind := range []string{FailureUnavailable, FailureRefused, FailureBadAnswer} {
		if !strings.Contains(out, "kind="+kind) {
			t.Errorf("log lacks kind=%s:\n%s", kind, out)
		}
	}
	for _, secret := range []string{"mak_key", "vault-token", "token-1"} {
		if strings.Contains(out, secret) {
			t.Errorf("log carries %q:\n%s", secret, out)
		}
	}
	if s.RefreshOverdue != 0 {
		t.Fatalf("overdue before the refresh point: %v", s.RefreshOverdue)
	}
	clock.advance(50 * time.Minute)
	if s := ts.Stats(); s.RefreshOverdue < 5*time.Minute {
		t.Fatalf("token 50m into a 1h life is not overdue: %v", s.RefreshOverdue)
	}
}

type lockedWriter struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
