package meshauth

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// TestFillFirstKeepsTheFirstLoadOfAnEpoch: two loads that began in the same
// epoch share the first one's value; a load from before a drop stores
// nothing.
func TestFillFirstKeepsTheFirstLoadOfAnEpoch(t *testing.T) {
	c := newEpochCache[string, *int]()
	_, epoch, _ := c.get("k")
	a, b := new(int), new(int)
	if got := c.fillFirst("k", a, epoch); got != a {
		t.Fatal("the first load was not stored")
	}
	if got := c.fillFirst("k", b, epoch); got != a {
		t.Fatal("a second load of the same epoch replaced the first")
	}
	c.drop("k")
	if got := c.fillFirst("k", b, epoch); got != b {
		t.Fatal("a stale load did not get its own value back")
	}
	if _, _, ok := c.get("k"); ok {
		t.Fatal("a load from before the drop was stored")
	}
}

// barrierStorage holds every read of one key until n readers wait on it, so
// that n loads of a service run at once, as in a re-login storm.
type barrierStorage struct {
	logical.Storage
	key     string
	n       int
	mu      sync.Mutex
	arrived int
	all     chan struct{}
}

func (s *barrierStorage) Get(ctx context.Context, k string) (*logical.StorageEntry, error) {
	if k == s.key {
		s.mu.Lock()
		s.arrived++
		if s.arrived == s.n {
			close(s.all)
		}
		s.mu.Unlock()
		select {
		case <-s.all:
		case <-time.After(5 * time.Second):
		}
	}
	return s.Storage.Get(ctx, k)
}

// TestConcurrentServiceLoadsShareOneValue: logins that miss the service
// cache together (every instance logging in again after a revoke) end up
// with one cachedService. When each load replaced the last, a login's
// serviceIsCurrent saw the cached value change under it and started over,
// and after three such changes the login was refused: the load tool's
// re-login storm saw a few 403s out of 5,000 before this.
func TestConcurrentServiceLoadsShareOneValue(t *testing.T) {
	e := getTestBackend(t)
	e.register(t, "orders", nil)
	e.b.dropService("orders")
	const n = 4
	gate := &barrierStorage{Storage: e.storage, key: storageServicePrefix + "orders", n: n, all: make(chan struct{})}
	var got [n]*cachedService
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			svc, err := e.b.getService(t.Context(), gate, "orders")
			if err != nil {
				t.Error(err)
			}
			got[i] = svc
		})
	}
	wg.Wait()
	for i := range n {
		if got[i] == nil || got[i] != got[0] {
			t.Fatalf("concurrent loads returned different services: %v", got)
		}
		if current, err := e.b.serviceIsCurrent(t.Context(), e.storage, "orders", got[i]); err != nil || !current {
			t.Fatalf("load %d is not current (err %v)", i, err)
		}
	}
}

// A failed load is not handed to the callers waiting for it: they load
// again (the failure may be the loading caller's ended context).
func TestEpochValueLoadFreshWaitersRetryAFailedLoad(t *testing.T) {
	var c epochValue[int]
	started, release := make(chan struct{}), make(chan struct{})
	go func() {
		_, _ = c.loadFresh(t.Context(), func(int) bool { return true }, func() (int, error) {
			close(started)
			<-release
			return 0, context.Canceled
		})
	}()
	<-started
	got := make(chan int)
	go func() {
		v, _ := c.loadFresh(t.Context(), func(int) bool { return true }, func() (int, error) { return 7, nil })
		got <- v
	}()
	time.Sleep(10 * time.Millisecond) // the second caller waits on the first load
	close(release)
	if v := <-got; v != 7 {
		t.Fatalf("waiter got %d, want its own load's 7", v)
	}
}
