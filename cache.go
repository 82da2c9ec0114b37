package meshauth

import (
	"context"
	"sync"

	"github.com/hashicorp/vault/sdk/logical"
)

// epochCache is a map of lazily loaded values that writes and Vault's
// Invalidate callback drop. Loading happens outside the lock (it reads
// storage), so a load can race a write: every drop advances the epoch, and a
// load that began in an older epoch is not stored. A reader therefore never
// caches a value older than the last write it could have missed.
type epochCache[K comparable, V any] struct {
	mu    sync.RWMutex
	epoch uint64
	items map[K]V
}

// newEpochCache returns an empty cache.
func newEpochCache[K comparable, V any]() *epochCache[K, V] {
	return &epochCache[K, V]{items: make(map[K]V)}
}

// get returns the cached value for k and whether there was one. When there is
// none it also returns the epoch to hand to fillFirst after loading.
func (c *epochCache[K, V]) get(k K) (V, uint64, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	v, ok := c.items[k]
	return v, c.epoch, ok
}

// fillFirst stores v for k unless something was dropped since epoch was
// read or another load of the same epoch got there first, and returns what
// the cache holds for k now (v when nothing is cached). Loads of one epoch
// all read storage after the last drop, so the first is as fresh as any;
// keeping it means that concurrent misses (every instance of a service
// logging in at once after a write) end up sharing one value instead of each
// replacing the last, which would make every login that compares its value
// with the cached one (serviceIsCurrent) see a change that never happened.
func (c *epochCache[K, V]) fillFirst(k K, v V, epoch uint64) V {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.epoch != epoch {
		return v
	}
	if held, ok := c.items[k]; ok {
		return held
	}
	c.items[k] = v
	return v
}

// drop forgets k and invalidates every load in flight.
func (c *epochCache[K, V]) drop(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	delete(c.items, k)
}

// dropAll forgets everything and invalidates every load in flight.
func (c *epochCache[K, V]) dropAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	clear(c.items)
}

// epochValue is a single lazily loaded value (the config, the key ring) with
// the same discipline as epochCache: a drop advances the epoch, and a load
// that began before the drop is not kept.
type epochValue[V any] struct {
	mu    sync.RWMutex
	epoch uint64
	value V
	ok    bool
	// flight is loadFresh's load in progress; nil when none.
	flight *epochFlight[V]
}

// epochFlight is one load of loadFresh and the callers waiting for it.
type epochFlight[V any] struct {
	epoch uint64
	done  chan struct{}
	value V
	err   error
}

// loadFresh is load for a value that also expires (fresh says whether the
// held value still answers), loaded one at a time: concurrent callers wait
// for the load in flight and share its result, so an expensive value (the
// signed revocation feed) is built once however many read it at once. A
// caller that arrives after a drop never joins a load that began before
// it, and that load's result is not kept. A waiter whose load failed tries
// again (the failure may be the loading caller's ended context).
func (c *epochValue[V]) loadFresh(ctx context.Context, fresh func(V) bool, loader func() (V, error)) (V, error) {
	c.mu.Lock()
	for {
		if c.ok && fresh(c.value) {
			v := c.value
			c.mu.Unlock()
			return v, nil
		}
		f := c.flight
		if f == nil || f.epoch != c.epoch {
			break
		}
		c.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			var zero V
			return zero, ctx.Err()
		}
		if f.err == nil {
			return f.value, nil
		}
		// The load failed (its caller's context may have ended): try
		// again rather than answer with another caller's error.
		c.mu.Lock()
	}
	f := &epochFlight[V]{epoch: c.epoch, done: make(chan struct{})}
	c.flight = f
	c.mu.Unlock()

	f.value, f.err = loader()
	c.mu.Lock()
	if f.err == nil && c.epoch == f.epoch {
		c.value, c.ok = f.value, true
	}
	if c.flight == f {
		c.flight = nil
	}
	c.mu.Unlock()
	close(f.done)
	return f.value, f.err
}

// load returns the value, or calls loader and keeps its result unless a drop
// happened meanwhile.
func (c *epochValue[V]) load(loader func() (V, error)) (V, error) {
	c.mu.RLock()
	v, ok, epoch := c.value, c.ok, c.epoch
	c.mu.RUnlock()
	if ok {
		return v, nil
	}
	v, err := loader()
	if err != nil {
		return v, err
	}
	c.mu.Lock()
	if c.epoch == epoch {
		c.value, c.ok = v, true
	}
	c.mu.Unlock()
	return v, nil
}

// current reports whether v is the value held now, so a caller can tell
// that nothing was written since it loaded v.
func (c *epochValue[V]) current(is func(V) bool) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.ok && is(c.value)
}

// drop forgets the value and invalidates every load in flight.
func (c *epochValue[V]) drop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	var zero V
	c.value, c.ok = zero, false
}

// countingView counts the storage calls made through it. One request uses it
// from one goroutine, so a plain counter suffices.
type countingView struct {
	logical.Storage
	ops uint64
}

func (v *countingView) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	v.ops++
	return v.Storage.Get(ctx, key)
}

func (v *countingView) List(ctx context.Context, prefix string) ([]string, error) {
	v.ops++
	return v.Storage.List(ctx, prefix)
}

func (v *countingView) Put(ctx context.Context, e *logical.StorageEntry) error {
	v.ops++
	return v.Storage.Put(ctx, e)
}

func (v *countingView) Delete(ctx context.Context, key string) error {
	v.ops++
	return v.Storage.Delete(ctx, key)
}

// serviceMap is the shape of the login's per-service caches (verified
// chains, rendered claims): entries grouped by service so that a write to a
// service drops all of its entries at once, and a total bound past which the
// map starts over rather than track recency on the login path. The *Locked
// methods expect the caller to hold mu.
type serviceMap[K comparable, V any] struct {
	mu        sync.Mutex
	max, size int
	byService map[string]map[K]V
}

func newServiceMap[K comparable, V any](maxEntries int) serviceMap[K, V] {
	return serviceMap[K, V]{max: maxEntries, byService: make(map[string]map[K]V)}
}

func (m *serviceMap[K, V]) getLocked(service string, key K) (V, bool) {
	v, ok := m.byService[service][key]
	return v, ok
}

func (m *serviceMap[K, V]) deleteLocked(service string, key K) {
	if _, ok := m.byService[service][key]; ok {
		delete(m.byService[service], key)
		m.size--
	}
}

// putLocked stores v; a new entry in a full map first empties it.
func (m *serviceMap[K, V]) putLocked(service string, key K, v V) {
	inner := m.byService[service]
	if _, ok := inner[key]; !ok {
		if m.size >= m.max {
			clear(m.byService)
			m.size = 0
			inner = nil
		}
		m.size++
	}
	if inner == nil {
		inner = make(map[K]V)
		m.byService[service] = inner
	}
	inner[key] = v
}

// dropService forgets every entry of one service: it was written.
func (m *serviceMap[K, V]) dropService(service string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.size -= len(m.byService[service])
	delete(m.byService, service)
}

// dropAll forgets every entry.
func (m *serviceMap[K, V]) dropAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.byService)
	m.size = 0
}
