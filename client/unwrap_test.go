package client

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/hashicorp/vault/api"
)

// fakeWrapping serves sys/wrapping/lookup and sys/wrapping/unwrap for one
// wrapping token, single-use, as Vault does.
type fakeWrapping struct {
	mu          sync.Mutex
	token, path string
	used        bool
	lookupAuth  []string // client tokens sent to lookup
}

func (f *fakeWrapping) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var body map[string]string
	_ = json.NewDecoder(r.Body).Decode(&body)
	bad := func() {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"errors":["wrapping token is not valid or does not exist"]}`))
	}
	switch r.URL.Path {
	case "/v1/sys/wrapping/lookup":
		f.lookupAuth = append(f.lookupAuth, r.Header.Get("X-Vault-Token"))
		if f.used || body["token"] != f.token {
			bad()
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"creation_path": f.path, "creation_ttl": 300}})
	case "/v1/sys/wrapping/unwrap":
		if f.used || r.Header.Get("X-Vault-Token") != f.token {
			bad()
			return
		}
		f.used = true
		_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"name": "orders", "api_key": "mak_secret", "api_key_id": "K1"}})
	default:
		http.NotFound(w, r)
	}
}

func wrappingVault(t *testing.T, f *fakeWrapping) *api.Client {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	cfg := api.DefaultConfig()
	cfg.Address = srv.URL
	cfg.MaxRetries = 0
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken("operator-token")
	return c
}

func TestUnwrapAPIKey(t *testing.T) {
	f := &fakeWrapping{token: "hvs.wrap", path: "meshauth/services/orders"}
	vault := wrappingVault(t, f)
	key, err := UnwrapAPIKey(t.Context(), vault, "hvs.wrap", "/meshauth/", "orders")
	if err != nil || key.Key != "mak_secret" || key.KeyID != "K1" || key.CreationPath != "meshauth/services/orders" {
		t.Fatalf("unwrap: %v %#v", err, key)
	}
	if vault.Token() != "operator-token" {
		t.Fatal("the caller's client token was changed")
	}
	for _, tok := range f.lookupAuth {
		if tok != "" {
			t.Fatal("the lookup sent a client token")
		}
	}
	if _, err := UnwrapAPIKey(t.Context(), vault, "hvs.wrap", "meshauth", "orders"); !errors.Is(err, ErrWrappingTokenUsed) {
		t.Fatalf("second unwrap: %v", err)
	}
}

func TestUnwrapAPIKeyRefusesOtherPaths(t *testing.T) {
	for _, path := range []string{"meshauth/services/payments", "other/services/orders", "meshauth/services/orders/revoke", "meshauth/services/orders-x", "cubbyhole/x", ""} {
		f := &fakeWrapping{token: "hvs.wrap", path: path}
		vault := wrappingVault(t, f)
		if _, err := UnwrapAPIKey(t.Context(), vault, "hvs.wrap", "meshauth", "orders"); !errors.Is(err, ErrWrongCreationPath) {
			t.Fatalf("path %q: %v", path, err)
		}
		if f.used {
			t.Fatalf("path %q: unwrapped anyway", path)
		}
	}
	f := &fakeWrapping{token: "hvs.wrap", path: "meshauth/services/orders/rotate-key"}
	if _, err := UnwrapAPIKey(t.Context(), wrappingVault(t, f), "hvs.wrap", "meshauth", "orders"); err != nil {
		t.Fatalf("rotate-key path: %v", err)
	}
}

// A 403 at the lookup is an ACL on sys/wrapping/lookup, not a used token:
// only a 400 says the token is not valid (as the Python package reads it).
func TestUnwrapLookupForbiddenIsNotUsed(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"errors":["permission denied"]}`))
	}))
	t.Cleanup(srv.Close)
	cfg := api.DefaultConfig()
	cfg.Address, cfg.MaxRetries = srv.URL, 0
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = UnwrapAPIKey(t.Context(), c, "hvs.wrap", "meshauth", "orders")
	if err == nil || errors.Is(err, ErrWrappingTokenUsed) {
		t.Fatalf("a 403 at lookup: %v; want an error that is not ErrWrappingTokenUsed", err)
	}
}
