package meshauth

import (
	"crypto/x509"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestTrustChangeDropsVerifiedChains(t *testing.T) {
	ca := newTestCA(t, "mesh-ca")
	other := newTestCA(t, "other-ca")
	leaf, leafKey, _ := ca.issue(t, "orders", leafOptions{})
	conn := tlsConn(handshake(t, []*x509.Certificate{leaf}, leafKey))
	e := getTestBackend(t)
	key := e.register(t, "orders", map[string]any{"ca_chain": ca.pem})
	if _, err := mtlsLogin(t, e, "orders", key, conn); err != nil {
		t.Fatal(err)
	}
	e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"ca_chain": other.pem})
	if _, err := mtlsLogin(t, e, "orders", key, conn); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("a cached verification outlived the trust it was made with: %v", err)
	}
}

func TestChainCacheVerifiesOnceUnderConcurrency(t *testing.T) {
	ca := newTestCA(t, "mesh-ca")
	leaf, _, _ := ca.issue(t, "orders", leafOptions{})
	c := newChainCache(16)
	trust := &serviceTrust{}
	var calls atomic.Int32
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			_ = c.verify("orders", trust, []*x509.Certificate{leaf}, time.Now(), func() error {
				calls.Add(1)
				time.Sleep(10 * time.Millisecond)
				return nil
			})
		})
	}
	wg.Wait()
	if calls.Load() != 1 {
		t.Fatalf("%d verifications for one chain; want 1", calls.Load())
	}
	// Results are keyed by the whole chain, not the leaf alone.
	_ = c.verify("orders", trust, []*x509.Certificate{leaf, ca.cert}, time.Now(), func() error { calls.Add(1); return nil })
	if calls.Load() != 2 {
		t.Fatal("a longer chain with the same leaf reused the cached result")
	}
	// A success is cached no longer than the registered trust lives.
	trustEnds := time.Now().Add(time.Minute)
	short := &serviceTrust{expires: trustEnds}
	_ = c.verify("payments", short, []*x509.Certificate{leaf}, time.Now(), func() error { calls.Add(1); return nil })
	_ = c.verify("payments", short, []*x509.Certificate{leaf}, trustEnds.Add(time.Second), func() error { calls.Add(1); return nil })
	if calls.Load() != 4 {
		t.Fatal("a cached verification outlived the registered CA")
	}
	// A result computed against replaced trust is never reused, even when a
	// racing login stored it after the update dropped the service's results.
	_ = c.verify("payments", &serviceTrust{}, []*x509.Certificate{leaf}, time.Now(), func() error { calls.Add(1); return nil })
	if calls.Load() != 5 {
		t.Fatal("a result computed against other trust was reused")
	}
}

// TestNoLoginSucceedsOnReplacedTrust swaps a service's ca_chain back and forth
// while logins run, and fails if a login that ran entirely after a swap to
// the other CA returned still succeeded with a certificate of the old one: a
// verification in flight during the swap must not leave a result behind.
func TestNoLoginSucceedsOnReplacedTrust(t *testing.T) {
	ca1, ca2 := newTestCA(t, "ca-one"), newTestCA(t, "ca-two")
	leaf, leafKey, _ := ca1.issue(t, "orders", leafOptions{})
	conn := tlsConn(handshake(t, []*x509.Certificate{leaf}, leafKey))
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"lockout_threshold": 0})
	key := e.register(t, "orders", map[string]any{"ca_chain": ca1.pem})

	// gen is odd while an update runs; at an even gen g the registered CA is
	// ca1 when (g/2) is even, else ca2.
	var gen atomic.Int64
	var stale atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				before := gen.Load()
				resp, err := mtlsLogin(t, e, "orders", key, conn)
				after := gen.Load()
				if before == after && before%2 == 0 && (before/2)%2 == 1 && err == nil && !resp.IsError() {
					stale.Add(1)
				}
			}
		})
	}
	for i := range 200 {
		gen.Add(1)
		pem := ca2.pem
		if i%2 == 1 {
			pem = ca1.pem
		}
		e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"ca_chain": pem})
		gen.Add(1)
		time.Sleep(200 * time.Microsecond)
	}
	close(stop)
	wg.Wait()
	if n := stale.Load(); n > 0 {
		t.Fatalf("%d logins succeeded with a certificate of a CA the service no longer trusted", n)
	}
}
