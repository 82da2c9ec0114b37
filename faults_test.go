package meshauth

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// faultyStorage fails the named operations on demand.
type faultyStorage struct {
	logical.Storage
	mu   sync.Mutex
	fail map[string]bool
}

func (s *faultyStorage) set(op string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[op] = on
}

func (s *faultyStorage) failing(op string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fail[op]
}

var errInjected = errors.New("injected storage failure")

func (s *faultyStorage) Get(ctx context.Context, k string) (*logical.StorageEntry, error) {
	if s.failing("get") {
		return nil, errInjected
	}
	return s.Storage.Get(ctx, k)
}

func (s *faultyStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	if s.failing("put") {
		return errInjected
	}
	return s.Storage.Put(ctx, e)
}

func (s *faultyStorage) Delete(ctx context.Context, k string) error {
	if s.failing("delete") {
		return errInjected
	}
	return s.Storage.Delete(ctx, k)
}

func (s *faultyStorage) List(ctx context.Context, p string) ([]string, error) {
	if s.failing("get") {
		return nil, errInjected
	}
	return s.Storage.List(ctx, p)
}

func faultyEnv(t *testing.T) (*testEnv, *faultyStorage) {
	e := getTestBackend(t)
	fs := &faultyStorage{Storage: e.storage.Storage, fail: map[string]bool{}}
	e.storage.Storage = fs
	return e, fs
}

func TestFailedWritesLeaveNothingHalfDone(t *testing.T) {
	e, fs := faultyEnv(t)
	fs.set("put", true)
	resp, err := e.request(t, logical.UpdateOperation, "services/orders", nil)
	if err == nil || (resp != nil && resp.Data["api_key"] != nil) {
		t.Fatalf("registration on failing storage answered %#v, %v", resp, err)
	}
	fs.set("put", false)
	if resp, _ := e.request(t, logical.ReadOperation, "services/orders", nil); resp != nil {
		t.Fatal("a failed registration left a service")
	}

	key := e.register(t, "orders", nil)
	tok := e.mustLogin(t, "orders", key)
	before := e.mustOK(t, logical.ReadOperation, "keys", nil).Data["current_kid"]
	fs.set("put", true)
	if _, err := e.request(t, logical.UpdateOperation, "keys/rotate", nil); err == nil {
		t.Fatal("rotation on failing storage reported success")
	}
	if _, err := e.request(t, logical.UpdateOperation, "revoke", map[string]any{"token": tok}); err == nil {
		t.Fatal("revocation on failing storage reported success")
	}
	fs.set("put", false)
	if after := e.mustOK(t, logical.ReadOperation, "keys", nil).Data["current_kid"]; after != before {
		t.Fatal("a failed rotation changed the key ring")
	}
	if ok, reason := e.verify(t, tok, nil); !ok {
		t.Fatalf("token after failed rotation and revocation: %s", reason)
	}
	e.mustLogin(t, "orders", key)

	// Reads failing: an error, never a panic and never a login.
	e.b.services.dropAll()
	fs.set("get", true)
	if _, err := e.login(t, "orders", key, nil); err == nil {
		t.Fatal("login succeeded while storage reads fail and the cache is cold")
	}
	fs.set("get", false)
	fs.set("delete", true)
	if _, err := e.request(t, logical.DeleteOperation, "services/orders", nil); err == nil {
		t.Fatal("delete on failing storage reported success")
	}
	fs.set("delete", false)
	e.mustLogin(t, "orders", key)
}

func TestConcurrentEverythingKeepsInvariants(t *testing.T) {
	e := getTestBackend(t)
	keys := map[string]string{}
	for _, n := range []string{"a", "b", "c"} {
		keys[n] = e.register(t, n, nil)
	}
	var mu sync.Mutex
	issued := map[string]string{} // token -> service
	revoked := map[string]bool{}
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for i := range 30 {
				name := []string{"a", "b", "c"}[(w+i)%3]
				switch {
				case w == 0 && i%5 == 0:
					e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil)
				case w == 1 && i%7 == 0:
					mu.Lock()
					key := keys[name]
					mu.Unlock()
					resp := e.mustOK(t, logical.UpdateOperation, "services/"+name+"/rotate-key", map[string]any{"grace_period": "1h"})
					mu.Lock()
					if resp.Data["api_key"] != nil && key != "" {
						keys[name] = resp.Data["api_key"].(string)
					}
					mu.Unlock()
				case w == 2 && i%3 == 0:
					mu.Lock()
					var victim string
					for tok := range issued {
						if !revoked[tok] {
							victim = tok
							break
						}
					}
					mu.Unlock()
					if victim != "" {
						e.mustOK(t, logical.UpdateOperation, "revoke", map[string]any{"token": victim})
						mu.Lock()
						revoked[victim] = true
						mu.Unlock()
					}
				default:
					mu.Lock()
					key := keys[name]
					mu.Unlock()
					tok := e.mustLogin(t, name, key)
					mu.Lock()
					issued[tok] = name
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	for tok := range issued {
		ok, reason := e.verify(t, tok, nil)
		if revoked[tok] && (ok || reason != reasonTokenRevoked) {
			t.Fatalf("revoked token: %v %s", ok, reason)
		}
		if !revoked[tok] && !ok {
			t.Fatalf("issued token fails verify: %s", reason)
		}
	}
}

func TestClockJumpBackRefusesFutureTokens(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	tok := e.mustLogin(t, "orders", key)
	e.clock.advance(-29 * time.Second)
	if ok, reason := e.verify(t, tok, nil); !ok {
		t.Fatalf("29s back, inside leeway: %s", reason)
	}
	e.clock.advance(-2 * time.Second)
	if ok, reason := e.verify(t, tok, nil); ok || reason != reasonNotYetValid && reason != reasonIssuedInFuture {
		t.Fatalf("31s back, beyond leeway: %v %s", ok, reason)
	}
}

func TestLogsHoldNoSecret(t *testing.T) {
	var buf syncBuffer
	e := getTestBackendLogging(t, &buf)
	ca := newTestCA(t, "mesh-ca")
	key := e.register(t, "orders", map[string]any{"ca_chain": ca.pem, "require_mtls": false})
	secrets := []string{key}
	tok := e.mustLogin(t, "orders", key)
	secrets = append(secrets, tok)
	for range 6 {
		_, _ = e.login(t, "orders", key+"x", nil)
	}
	resp := e.mustOK(t, logical.UpdateOperation, "services/orders/rotate-key", nil)
	secrets = append(secrets, resp.Data["api_key"].(string))
	e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil)
	e.mustOK(t, logical.UpdateOperation, "revoke", map[string]any{"token": tok})
	e.verify(t, tok, nil)
	e.mustOK(t, logical.UpdateOperation, "services/orders/revoke", nil)
	e.mustOK(t, logical.UpdateOperation, "tidy", nil)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"signing_algorithm": "EdDSA"})
	entry, _ := readKeyRingEntry(t.Context(), e.storage)
	logs := buf.String()
	if !strings.Contains(logs, "login refused") {
		t.Fatalf("debug logs missing; logs:\n%s", logs)
	}
	if !strings.Contains(logs, "login locked out") || !strings.Contains(logs, "api key rotated") {
		t.Fatalf("the scenario did not log what it should; logs:\n%s", logs)
	}
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Fatalf("logs hold a secret (%d chars)", len(s))
		}
	}
	for _, k := range entry.Keys {
		if strings.Contains(logs, string(k.PrivateKey)) {
			t.Fatal("logs hold a private key")
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
