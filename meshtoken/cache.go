package meshtoken

import (
	"crypto"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultMaxCachedTokens is how many verified tokens a Verifier remembers
// unless VerifierConfig.MaxCachedTokens says otherwise.
const DefaultMaxCachedTokens = 10000

// verdict is a token that Parse accepted, remembered so a repeat of the
// same text skips the signature check and the JSON decoding.
type verdict struct {
	claims *Claims
	// key is the key that verified the signature.
	key Key
	// set is the key set the key was taken from. A verdict answers only
	// while set is the Verifier's current key set; publishing a new set
	// moves it forward when the new set still holds the same key under the
	// same kid (carry), and otherwise leaves it behind, so it never answers
	// again.
	set atomic.Pointer[keySet]
}

// tokenCache remembers verified tokens, keyed by the token's whole text.
//
// What invalidates an entry:
//   - its exp (plus leeway) passing: a lookup treats it as absent and
//     deletes it;
//   - a key set without its key: the publish that drops the key drops the
//     entry (carry), and an entry stored by a verification that read the old
//     set after that publish still names the old set, so it never answers;
//   - room: a full cache drops one entry at random (the bound).
//
// Nothing else is cached: a lookup answers only what Parse decided from
// this exact text; audience, binding and time are checked per request by
// the caller. Two spellings of one token (e.g. an ECDSA signature with s and
// n-s) are two entries, each verified in full before it is stored.
type tokenCache struct {
	max    int
	leeway time.Duration
	mu     sync.RWMutex
	m      map[string]*verdict
}

func newTokenCache(max int, leeway time.Duration) *tokenCache {
	if max <= 0 {
		return nil
	}
	return &tokenCache{max: max, leeway: leeway, m: make(map[string]*verdict)}
}

// get returns the verdict for token, if any; the caller checks it against
// the current key set and the time.
func (c *tokenCache) get(token string) *verdict {
	if c == nil {
		return nil
	}
	c.mu.RLock()
	e := c.m[token]
	c.mu.RUnlock()
	return e
}

// put remembers a verdict reached with set, unless set is no longer the
// current key set (cur): such an entry could never answer.
func (c *tokenCache) put(token string, claims *Claims, key Key, set *keySet, cur *atomic.Pointer[keySet]) {
	if c == nil {
		return
	}
	e := &verdict{claims: claims, key: key}
	e.set.Store(set)
	// A copy of the text: the token is often a slice of a request's header
	// block, which must not stay alive for the entry's sake.
	token = strings.Clone(token)
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur.Load() != set {
		return
	}
	if len(c.m) >= c.max {
		for k := range c.m { // map order is random: a random victim
			delete(c.m, k)
			break
		}
	}
	c.m[token] = e
}

// drop forgets token (expired, or no longer answerable).
func (c *tokenCache) drop(token string, e *verdict) {
	if c == nil {
		return
	}
	c.mu.Lock()
	if c.m[token] == e {
		delete(c.m, token)
	}
	c.mu.Unlock()
}

// carry runs when next replaces prev as the key set: entries verified with
// a key that next holds unchanged under the same kid move to next; the
// others are dropped. It runs under the cache lock, so a put racing with it
// either lands before (and is carried or dropped) or names prev after it
// (and never answers, since next is current).
func (c *tokenCache) carry(next *keySet, now time.Time) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for tok, e := range c.m {
		k, ok := next.keys[e.claims.KeyID]
		if !ok || !sameKey(k, e.key) || now.Add(-c.leeway).After(e.claims.ExpiresAt) {
			delete(c.m, tok)
			continue
		}
		e.set.Store(next)
	}
}

// len is the number of remembered tokens.
func (c *tokenCache) len() int {
	if c == nil {
		return 0
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

// sameKey reports whether two keys are the same algorithm and public key.
func sameKey(a, b Key) bool {
	if a.Algorithm != b.Algorithm {
		return false
	}
	eq, ok := a.Public.(interface{ Equal(x crypto.PublicKey) bool })
	return ok && eq.Equal(b.Public)
}
