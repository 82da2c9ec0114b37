package meshauth

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"sync/atomic"
	"time"
)

// chainCacheSize bounds the verified-chain results kept across all services.
const chainCacheSize = 4096

// failedChainTTL is how long a failed verification is remembered, so that a
// caller repeating a bad chain costs one chain build a minute, not one a login.
const failedChainTTL = time.Minute

// chainKey identifies a presented chain: the SHA-256 of every certificate in
// order, each length-prefixed, so a cached result is never reused for a
// different chain that merely shares the leaf.
type chainKey [sha256.Size]byte

// chainResult is the outcome of verifying one chain for one service.
type chainResult struct {
	// err is nil when the chain is accepted.
	err error
	// until is when the result must be recomputed: on success the earliest
	// not_after of the presented chain and of the service's registered
	// certificate and CAs, a minute after a failure.
	until time.Time
}

// chainCall is one verification, done or in flight; concurrent logins with
// the same chain wait on done instead of verifying again.
type chainCall struct {
	done chan struct{}
	res  chainResult
	// trust is the service trust the result was computed against. A result
	// is reused only for the very same trust: a login that read the service
	// before an update can finish after the update's dropService and store
	// its result, but the next login holds the new trust and never sees it.
	trust *serviceTrust
	// revocations is the revocation generation the result was computed
	// in; a result of an older one is computed again (bumpRevocations).
	revocations uint64
}

// chainCache remembers verification results per service and chain.
type chainCache struct {
	serviceMap[chainKey, *chainCall]
	// revocations advances whenever revocation data (a CRL, an OCSP
	// answer, a pushed CRL) changes.
	revocations atomic.Uint64
}

// newChainCache returns an empty cache holding at most max results.
func newChainCache(max int) *chainCache {
	return &chainCache{serviceMap: newServiceMap[chainKey, *chainCall](max)}
}

// keyOf hashes a presented chain.
func keyOf(chain []*x509.Certificate) chainKey {
	h := sha256.New()
	var n [4]byte
	for _, c := range chain {
		binary.BigEndian.PutUint32(n[:], uint32(len(c.Raw))) //nolint:gosec // a parsed certificate is far below 4 GiB
		h.Write(n[:])
		h.Write(c.Raw)
	}
	var k chainKey
	h.Sum(k[:0])
	return k
}

// verify returns the cached result for (service, chain), or runs check once
// while concurrent callers with the same chain wait for it.
func (c *chainCache) verify(service string, trust *serviceTrust, chain []*x509.Certificate, now time.Time, check func() error) error {
	return c.verifyUntil(service, trust, chain, now, func() (time.Time, error) { return time.Time{}, check() })
}

// verifyUntil is verify for a check that may also bound how long its
// success counts (a revocation answer's life; zero for no bound).
func (c *chainCache) verifyUntil(service string, trust *serviceTrust, chain []*x509.Certificate, now time.Time, check func() (time.Time, error)) error {
	key := keyOf(chain)
	// Read before the check reads any revocation data: a check racing a
	// change is stored under the old generation and never reused.
	gen := c.revocations.Load()
	c.mu.Lock()
	if call, ok := c.getLocked(service, key); ok && (call.trust != trust || call.revocations != gen) {
		// Computed against trust that has since been replaced.
		c.deleteLocked(service, key)
	} else if ok {
		select {
		case <-call.done:
			if now.Before(call.res.until) {
				c.mu.Unlock()
				return call.res.err
			}
			c.deleteLocked(service, key)
		default:
			c.mu.Unlock()
			<-call.done
			return call.res.err
		}
	}
	call := &chainCall{done: make(chan struct{}), trust: trust, revocations: gen}
	c.putLocked(service, key, call)
	c.mu.Unlock()

	bound, err := check()
	call.res.err = err
	call.res.until = now.Add(failedChainTTL)
	if call.res.err == nil {
		call.res.until = earliestNotAfter(chain)
		if !trust.expires.IsZero() && trust.expires.Before(call.res.until) {
			call.res.until = trust.expires
		}
		if !bound.IsZero() && bound.Before(call.res.until) {
			call.res.until = bound
		}
	}
	close(call.done)
	return call.res.err
}

// earliestNotAfter is when the first certificate of a chain expires.
func earliestNotAfter(chain []*x509.Certificate) time.Time {
	t := chain[0].NotAfter
	for _, c := range chain[1:] {
		if c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}

// bumpRevocations makes every stored result stale: revocation data changed.
// Called after the new data is visible to checks.
func (c *chainCache) bumpRevocations() { c.revocations.Add(1) }
