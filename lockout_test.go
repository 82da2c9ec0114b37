package meshauth

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// heapInUse is the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func TestLockoutMemoryBoundedUnderSpray(t *testing.T) {
	const callers = 200_000
	longName := strings.Repeat("n", 120) // names up to 128 characters, the worst case for memory
	for _, tc := range []struct {
		name      string
		threshold int
	}{
		{"every failure locks", 1},
		{"counters below the threshold", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaultConfig()
			cfg.LockoutThreshold = tc.threshold
			tr := newLockoutTracker()
			now := time.Now()
			// A legitimate lock taken before the spray: a caller that
			// guessed wrong five times against a registered service.
			victim := lockoutKey("orders", "addr:192.0.2.7", true)
			for range max(tc.threshold, 5) {
				tr.fail(victim, now, cfg)
			}
			if _, locked := tr.lockedUntil(victim, now); !locked {
				t.Fatal("victim not locked before the spray")
			}
			before := heapInUse()
			for i := range callers {
				now := now.Add(time.Duration(i) * time.Microsecond)
				who := caller(fmt.Sprintf("addr:2001:db8:%x:%x::1", i>>16, i&0xffff))
				tr.fail(lockoutKey("orders", who, true), now, cfg)
				tr.fail(lockoutKey(fmt.Sprintf("%s%07d", longName, i), who, false), now, cfg)
			}
			grown := heapInUse() - before
			t.Logf("%d callers × (one registered name + a fresh unregistered name each): %d entries, heap grew %.1f MiB (ceiling %.1f MiB)",
				callers, tr.size(), float64(grown)/(1<<20), float64(lockoutMemoryCeiling)/(1<<20))
			if n := tr.size(); n > lockoutMaxEntries {
				t.Fatalf("tracker holds %d entries; the bound is %d", n, lockoutMaxEntries)
			}
			if grown > lockoutMemoryCeiling {
				t.Fatalf("heap grew %d bytes; the documented ceiling is %d", grown, lockoutMemoryCeiling)
			}
			if _, locked := tr.lockedUntil(victim, now.Add(time.Second)); !locked {
				t.Fatal("the spray evicted a live lock")
			}
			runtime.KeepAlive(tr)
		})
	}
}

func TestLockoutSprayOfUnregisteredNamesSparesRegisteredCounters(t *testing.T) {
	cfg := defaultConfig()
	tr := newLockoutTracker()
	now := time.Now()
	key := lockoutKey("orders", "addr:192.0.2.7", true)
	for range cfg.LockoutThreshold - 1 {
		tr.fail(key, now, cfg)
	}
	for i := range 200_000 {
		tr.fail(lockoutKey(fmt.Sprintf("ghost-%d", i), "addr:192.0.2.7", false), now, cfg)
	}
	// The caller's count against the registered service survived the
	// spray, so its next failure locks.
	if _, locked := tr.fail(key, now, cfg); !locked {
		t.Fatal("a spray of unregistered names reset a registered service's counter")
	}
}

func TestLockoutSaturatedShardTracksAgainAfterLocksEnd(t *testing.T) {
	cfg := defaultConfig()
	cfg.LockoutThreshold = 1
	tr := newLockoutTracker()
	now := time.Now()
	for i := range 200_000 {
		tr.fail(lockoutKey("orders", caller(fmt.Sprintf("addr:10.%d.%d.%d", i>>16, (i>>8)&0xff, i&0xff)), true), now, cfg)
	}
	if n := tr.size(); n < lockoutShards*maxLockoutEntriesPerShard*9/10 || n > lockoutShards*maxLockoutEntriesPerShard {
		t.Fatalf("registered pool holds %d", n)
	}
	// Once the locks end, new failures are counted and lock again.
	later := now.Add(cfg.LockoutDuration + time.Second)
	fresh := lockoutKey("orders", "addr:198.51.100.1", true)
	if _, locked := tr.fail(fresh, later, cfg); !locked {
		t.Fatal("a new caller is not tracked after the saturating locks ended")
	}
}

func TestLockoutOfUnregisteredNameLooksTheSame(t *testing.T) {
	e := getTestBackend(t)
	e.register(t, "orders", nil)
	lockMsg := func(name string) string {
		t.Helper()
		for i := range defaultLockoutThreshold {
			if _, err := e.login(t, name, "wrong", nil); !errors.Is(err, logical.ErrPermissionDenied) {
				t.Fatalf("%s failure %d: %v", name, i, err)
			}
		}
		_, err := e.login(t, name, "wrong", nil)
		if err == nil {
			t.Fatalf("%s: no error after the threshold", name)
		}
		return err.Error()
	}
	registered, ghost := lockMsg("orders"), lockMsg("ghost")
	if registered != ghost || !strings.Contains(ghost, "locked") {
		t.Fatalf("lockout answers differ:\n registered: %s\n unregistered: %s", registered, ghost)
	}
}
