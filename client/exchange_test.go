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

// exchangeVault answers exchange/payments, counting the calls.
func exchangeVault(t *testing.T, life time.Duration) (*TokenSource, *atomic.Int32) {
	t.Helper()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		if r.URL.Path != "/v1/meshauth/exchange/payments" || json.NewDecoder(r.Body).Decode(&body) != nil {
			http.NotFound(w, r)
			return
		}
		if body["api_key"] != "mak_key" || body["grant_type"] != "urn:ietf:params:oauth:grant-type:token-exchange" {
			http.Error(w, `{"errors":["meshauth: login refused for service \"payments\""]}`, http.StatusForbidden)
			return
		}
		time.Sleep(20 * time.Millisecond)
		n := calls.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{
			"token":      fmt.Sprintf("exchanged-%s-%s-%d", body["subject_token"], body["audience"], n),
			"expires_in": int64(life / time.Second),
		}})
	}))
	t.Cleanup(srv.Close)
	cfg := api.DefaultConfig()
	cfg.Address = srv.URL
	cfg.MaxRetries = 0
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken("vault-token")
	ts, err := NewTokenSource(TokenSourceConfig{Vault: c, Service: "payments", APIKey: "mak_key"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ts.Stop)
	return ts, &calls
}

func TestExchangeCachedPerSubjectAndAudience(t *testing.T) {
	ts, calls := exchangeVault(t, time.Hour)
	now := time.Now()
	ts.now = func() time.Time { return now }
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got, err := ts.Exchange(t.Context(), "subj-a", "ledger"); err != nil || got != "exchanged-subj-a-ledger-1" {
				t.Errorf("Exchange: %q %v", got, err)
			}
		}()
	}
	wg.Wait()
	if calls.Load() != 1 {
		t.Fatalf("%d exchanges for one (subject, audience); want 1", calls.Load())
	}
	if _, err := ts.Exchange(t.Context(), "subj-b", "ledger"); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Exchange(t.Context(), "subj-a", "audit"); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 3 {
		t.Fatalf("%d exchanges; want one per (subject, audience)", calls.Load())
	}
	// Near expiry (past two thirds of the lifetime) it exchanges again.
	now = now.Add(41 * time.Minute)
	if got, err := ts.Exchange(t.Context(), "subj-a", "ledger"); err != nil || got != "exchanged-subj-a-ledger-4" {
		t.Fatalf("after two thirds of the lifetime: %q %v", got, err)
	}
}

func TestExchangeErrorsAreNotCached(t *testing.T) {
	ts, calls := exchangeVault(t, time.Hour)
	ts.cfg.APIKey = "wrong"
	for range 2 {
		if _, err := ts.Exchange(t.Context(), "subj", "ledger"); err == nil {
			t.Fatal("a refused exchange returned a token")
		}
	}
	if _, err := ts.Exchange(t.Context(), "", "ledger"); err == nil {
		t.Fatal("an empty subject token was sent")
	}
	if calls.Load() != 0 {
		t.Fatalf("calls %d", calls.Load())
	}
}
