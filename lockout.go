package meshauth

import (
	"hash/maphash"
	"sync"
	"time"
)

// lockoutShards spreads lockout state over several locks so concurrent logins
// of different services and callers do not contend on one mutex.
const lockoutShards = 32

// Capacity of the two pools of lockout entries, per shard. Registered names
// get 32 × 2048 = 65,536 entries, unregistered names 32 × 512 = 16,384, so a
// spray against names that do not exist cannot take room from the services
// that do.
const (
	maxLockoutEntriesPerShard        = 2048
	maxUnknownLockoutEntriesPerShard = 512
)

// lockoutMaxEntries is the most entries the tracker ever holds.
const lockoutMaxEntries = lockoutShards * (maxLockoutEntriesPerShard + maxUnknownLockoutEntriesPerShard)

// lockoutMaxBytesPerEntry bounds the heap one entry takes: a key of at most
// 1 + 128 (name) + 1 + 50 (caller) bytes in a 208-byte allocation, and a
// 72-byte map slot (string header and lockoutEntry) at the maps' worst
// load, a little under 2 slots per entry.
const lockoutMaxBytesPerEntry = 208 + 2*72

// lockoutMemoryCeiling is the heap the tracker can hold at most: 81,920
// entries × 352 bytes ≈ 27.5 MiB, whatever the number of callers and names
// (measured by TestLockoutMemoryBoundedUnderSpray with 200,000 callers).
const lockoutMemoryCeiling = lockoutMaxEntries * lockoutMaxBytesPerEntry

// lockoutTracker counts failed logins per (service, caller) in memory. It is
// per node and never stored: a login must not write to storage, and a caller
// locked on one node is still refused there for the whole lockout.
//
// Memory is bounded by lockoutMemoryCeiling. When a shard is full it first
// drops forgotten entries, then unlocked counters; it never drops a live
// lock. When a shard holds nothing but live locks, a new caller's failure is
// not tracked until the earliest lock ends. The trade-off: a spray from more
// distinct callers than the pool holds (65,536 locked callers within one
// lockout_duration) cannot unlock anyone already locked, a caller that is
// locked stays locked, and what the spray gains is that its further new
// callers are not counted. Those get only the API key's 256 bits to guess
// against, and the spray is visible in the lockout metrics and Warn logs.
// Evicting locks instead would let a locked caller free itself by spraying.
//
// Failures against unregistered names are tracked too, in a pool of their
// own: a caller must see the same answers whether or not a name exists (the
// lock error after lockout_threshold failures included), or lockout would
// tell which services are registered.
type lockoutTracker struct {
	seed       maphash.Seed
	registered lockoutPool
	unknown    lockoutPool
}

// lockoutPool is one bounded set of shards.
type lockoutPool struct {
	perShard int
	shards   [lockoutShards]lockoutShard
}

// lockoutShard is one lock's worth of counters.
type lockoutShard struct {
	mu      sync.Mutex
	entries map[lockKey]lockoutEntry
	// saturatedUntil is set when the shard is full of live locks: until it
	// (the earliest lock's end) a new key is not tracked, and no sweep runs.
	saturatedUntil time.Time
}

// lockoutEntry is one caller's recent failures against one service.
type lockoutEntry struct {
	// failures counts failures in a row since lastFailure's window began.
	failures int
	// lastFailure is when the latest failure happened.
	lastFailure time.Time
	// lockedUntil is when a lock ends; zero when not locked.
	lockedUntil time.Time
}

// newLockoutTracker returns an empty tracker.
func newLockoutTracker() *lockoutTracker {
	t := &lockoutTracker{seed: maphash.MakeSeed()}
	t.registered.perShard = maxLockoutEntriesPerShard
	t.unknown.perShard = maxUnknownLockoutEntriesPerShard
	for _, p := range []*lockoutPool{&t.registered, &t.unknown} {
		for i := range p.shards {
			p.shards[i].entries = make(map[lockKey]lockoutEntry)
		}
	}
	return t
}

// caller identifies who attempts a login, for lockout: "cert:" and the
// x5t#S256 of a verified client certificate, or "addr:" and the remote
// address (callerID).
type caller string

// lockKey names one lockout counter: a pool byte (registered service or
// not), the service name and the caller (lockoutKey). A distinct type, so
// that neither a service name nor a caller can be passed for it.
type lockKey string

// lockoutKey joins a service name and a caller, after a byte naming the
// pool: registered or not. The NUL cannot occur in either, so two pairs
// never share a key.
func lockoutKey(service string, who caller, registered bool) lockKey {
	pool := "u"
	if registered {
		pool = "r"
	}
	return lockKey(pool + service + "\x00" + string(who))
}

func (t *lockoutTracker) shard(key lockKey) (*lockoutShard, int) {
	p := &t.unknown
	if key != "" && key[0] == 'r' {
		p = &t.registered
	}
	return &p.shards[maphash.String(t.seed, string(key))%lockoutShards], p.perShard
}

// lockedUntil returns when the lock on key ends, if it is locked at now.
func (t *lockoutTracker) lockedUntil(key lockKey, now time.Time) (time.Time, bool) {
	s, _ := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[key]
	if !ok || !now.Before(e.lockedUntil) {
		return time.Time{}, false
	}
	return e.lockedUntil, true
}

// fail records a failed login and reports whether it locked key, and until when.
func (t *lockoutTracker) fail(key lockKey, now time.Time, cfg *configEntry) (time.Time, bool) {
	s, capacity := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[key]
	if !ok && !s.makeRoom(now, cfg, capacity) {
		return time.Time{}, false
	}
	if now.Sub(e.lastFailure) >= cfg.LockoutCounterReset {
		e.failures = 0
	}
	e.failures++
	e.lastFailure = now
	locked := e.failures >= cfg.LockoutThreshold
	if locked {
		e.failures = 0
		e.lockedUntil = now.Add(cfg.LockoutDuration)
	}
	s.entries[key] = e
	return e.lockedUntil, locked
}

// succeed forgets key's failures after a successful login.
func (t *lockoutTracker) succeed(key lockKey) {
	s, _ := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.entries[key]; ok {
		delete(s.entries, key)
		s.saturatedUntil = time.Time{}
	}
}

// makeRoom reports whether a new entry fits, after dropping forgotten
// entries and then unlocked counters (down to 7/8 of capacity, so a spray
// pays for one sweep per capacity/8 new callers, not one per failure). It
// never drops a live lock. The caller holds s.mu.
func (s *lockoutShard) makeRoom(now time.Time, cfg *configEntry, capacity int) bool {
	if len(s.entries) < capacity {
		return true
	}
	if now.Before(s.saturatedUntil) {
		return false
	}
	for k, e := range s.entries {
		if !now.Before(e.lockedUntil) && now.Sub(e.lastFailure) >= cfg.LockoutCounterReset {
			delete(s.entries, k)
		}
	}
	target := capacity - capacity/8
	for k, e := range s.entries {
		if len(s.entries) <= target {
			break
		}
		if !now.Before(e.lockedUntil) {
			delete(s.entries, k)
		}
	}
	if len(s.entries) < capacity {
		s.saturatedUntil = time.Time{}
		return true
	}
	earliest := time.Time{}
	for _, e := range s.entries {
		if earliest.IsZero() || e.lockedUntil.Before(earliest) {
			earliest = e.lockedUntil
		}
	}
	s.saturatedUntil = earliest
	return false
}

// size is the number of entries held, for tests.
func (t *lockoutTracker) size() int {
	n := 0
	for _, p := range []*lockoutPool{&t.registered, &t.unknown} {
		for i := range p.shards {
			s := &p.shards[i]
			s.mu.Lock()
			n += len(s.entries)
			s.mu.Unlock()
		}
	}
	return n
}

// locked counts keys locked at now, for metrics.
func (t *lockoutTracker) locked(now time.Time) int {
	n := 0
	for _, p := range []*lockoutPool{&t.registered, &t.unknown} {
		for i := range p.shards {
			s := &p.shards[i]
			s.mu.Lock()
			for _, e := range s.entries {
				if now.Before(e.lockedUntil) {
					n++
				}
			}
			s.mu.Unlock()
		}
	}
	return n
}
