package client

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// fakeVault answers meshauth logins, counting them; fail makes them 500.
type fakeVault struct {
	srv    *httptest.Server
	logins atomic.Int32
	gets   atomic.Int32
	posts  atomic.Int32
	fail   atomic.Bool
	// getOff answers every GET login 405, as the engine does while
	// config.allow_get_login is off.
	getOff atomic.Bool
	// getACLDenied answers every GET login Vault's own 403, as an ACL
	// policy with update (and not read) on login/<service> does.
	getACLDenied atomic.Bool
	// preferGET makes source() build a source with PreferGET.
	preferGET bool
	// answer, when set, writes the whole answer of a login instead.
	answer atomic.Pointer[func(w http.ResponseWriter)]
	ttl    time.Duration
	delay  time.Duration
}

func newFakeVault(t *testing.T, ttl time.Duration) *fakeVault {
	f := &fakeVault{ttl: ttl}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/meshauth/login/orders" {
			http.NotFound(w, r)
			return
		}
		if r.Method == http.MethodGet {
			f.gets.Add(1)
			if f.getOff.Load() {
				http.Error(w, `{"errors":["the GET login is off on this mount: an operator enables it with config.allow_get_login=true; or log in with a POST"]}`, http.StatusMethodNotAllowed)
				return
			}
			if f.getACLDenied.Load() {
				http.Error(w, `{"errors":["1 error occurred:\n\t* permission denied\n\n"]}`, http.StatusForbidden)
				return
			}
		} else {
			f.posts.Add(1)
			var body map[string]any
			if json.NewDecoder(r.Body).Decode(&body) != nil || body["api_key"] != "mak_key" {
				http.Error(w, `{"errors":["1 error occurred:\n\t* meshauth: login refused for service \"orders\": ...\n\n"]}`, http.StatusForbidden)
				return
			}
		}
		if r.Method == http.MethodGet && r.Header.Get(APIKeyHeader) != "mak_key" || r.URL.Query().Get("api_key") != "" {
			http.Error(w, `{"errors":["1 error occurred:\n\t* meshauth: login refused for service \"orders\": ...\n\n"]}`, http.StatusForbidden)
			return
		}
		time.Sleep(f.delay)
		n := f.logins.Add(1)
		if a := f.answer.Load(); a != nil {
			(*a)(w)
			return
		}
		if f.fail.Load() {
			http.Error(w, `{"errors":["unavailable"]}`, http.StatusInternalServerError)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{
			"token":      fmt.Sprintf("token-%d", n),
			"expires_at": time.Now().Add(f.ttl).UTC().Format(time.RFC3339),
			"expires_in": int64(f.ttl / time.Second),
		}})
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// answerWith makes every login answer status and body.
func (f *fakeVault) answerWith(status int, body string) {
	fn := func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}
	f.answer.Store(&fn)
}

func (f *fakeVault) source(t *testing.T) *TokenSource {
	cfg := api.DefaultConfig()
	cfg.Address = f.srv.URL
	cfg.MaxRetries = 0
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken("vault-token")
	ts, err := NewTokenSource(TokenSourceConfig{Vault: c, Service: "orders", APIKey: "mak_key", PreferGET: f.preferGET, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ts.Stop)
	return ts
}

func TestTokenSourceOneLoginForManyCallers(t *testing.T) {
	f := newFakeVault(t, time.Hour)
	f.delay = 50 * time.Millisecond
	ts := f.source(t)
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if tok, err := ts.Token(t.Context()); err != nil || tok != "token-1" {
				t.Errorf("Token = %q, %v", tok, err)
			}
		})
	}
	wg.Wait()
	if n := f.logins.Load(); n != 1 {
		t.Fatalf("%d logins for 50 concurrent callers; want 1", n)
	}
}

func TestTokenSourceRefreshesAndRidesOutFailures(t *testing.T) {
	f := newFakeVault(t, 6*time.Second)
	ts := f.source(t)
	first, err := ts.Token(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	f.fail.Store(true)
	ts.Start(t.Context())
	// Past the refresh point (about 3.5s) the refresh fails and retries; the
	// current token (exp about 5-6s) keeps being served.
	time.Sleep(4500 * time.Millisecond)
	if tok, err := ts.Token(t.Context()); err != nil || tok != first {
		t.Fatalf("during failing refreshes: %q, %v", tok, err)
	}
	if f.logins.Load() < 3 {
		t.Fatalf("only %d login attempts: the refresh is not retrying", f.logins.Load())
	}
	f.fail.Store(false)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if tok, _ := ts.Token(t.Context()); tok != first {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("the token was never refreshed after Vault recovered")
}

func TestTokenSourceFailedLoginIsOneAttempt(t *testing.T) {
	f := newFakeVault(t, time.Hour)
	f.fail.Store(true)
	ts := f.source(t)
	if _, err := ts.Token(t.Context()); err == nil {
		t.Fatal("Token succeeded against a failing Vault")
	}
	if n := f.logins.Load(); n != 1 {
		t.Fatalf("%d login attempts for one Token call; want 1", n)
	}
}
