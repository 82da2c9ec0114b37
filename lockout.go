package meshauth

import (
	"hash/maphash"
	"sync"
	"time"
)

// lockoutShards spreads lockout state over several locks so concurrent logins
// of different services and callers do not contend on one mutex.
const lockoutShards = 32

// maxLockoutEntriesPerShard bounds memory when many callers fail at once.
const maxLockoutEntriesPerShard = 2048

// lockoutTracker counts failed logins per (service, caller) in memory. It is
// per node and never stored: a login must not write to storage, and a caller
// locked on one node is still refused there for the whole lockout.
type lockoutTracker struct {
	seed   maphash.Seed
	shards [lockoutShards]lockoutShard
}

// lockoutShard is one lock's worth of counters.
type lockoutShard struct {
	mu      sync.Mutex
	entries map[string]*lockoutEntry
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
	for i := range t.shards {
		t.shards[i].entries = make(map[string]*lockoutEntry)
	}
	return t
}

// lockoutKey joins a normalised service name and a caller identifier. The
// NUL cannot occur in either, so two pairs never share a key.
func lockoutKey(service, caller string) string {
	return service + "\x00" + caller
}

func (t *lockoutTracker) shard(key string) *lockoutShard {
	return &t.shards[maphash.String(t.seed, key)%lockoutShards]
}

// lockedUntil returns when the lock on key ends, if it is locked at now.
func (t *lockoutTracker) lockedUntil(key string, now time.Time) (time.Time, bool) {
	s := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[key]
	if e == nil || !now.Before(e.lockedUntil) {
		return time.Time{}, false
	}
	return e.lockedUntil, true
}

// fail records a failed login and reports whether it locked key, and until when.
func (t *lockoutTracker) fail(key string, now time.Time, cfg *configEntry) (time.Time, bool) {
	s := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[key]
	if e == nil {
		s.makeRoom(now, cfg)
		e = &lockoutEntry{}
		s.entries[key] = e
	}
	if now.Sub(e.lastFailure) >= cfg.LockoutCounterReset {
		e.failures = 0
	}
	e.failures++
	e.lastFailure = now
	if e.failures < cfg.LockoutThreshold {
		return time.Time{}, false
	}
	e.failures = 0
	e.lockedUntil = now.Add(cfg.LockoutDuration)
	return e.lockedUntil, true
}

// succeed forgets key's failures after a successful login.
func (t *lockoutTracker) succeed(key string) {
	s := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.entries, key)
}

// makeRoom drops forgotten entries when the shard is full, and if that is not
// enough, an arbitrary unlocked one. The caller holds s.mu.
func (s *lockoutShard) makeRoom(now time.Time, cfg *configEntry) {
	if len(s.entries) < maxLockoutEntriesPerShard {
		return
	}
	for k, e := range s.entries {
		if !now.Before(e.lockedUntil) && now.Sub(e.lastFailure) >= cfg.LockoutCounterReset {
			delete(s.entries, k)
		}
	}
	for k, e := range s.entries {
		if len(s.entries) < maxLockoutEntriesPerShard {
			return
		}
		if !now.Before(e.lockedUntil) {
			delete(s.entries, k)
		}
	}
}

// locked counts keys locked at now, for metrics.
func (t *lockoutTracker) locked(now time.Time) int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for _, e := range s.entries {
			if now.Before(e.lockedUntil) {
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}
