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
	// sig is the signature segment that was verified; the entry answers
	// only a token with exactly this signature.
	sig string
}

// cacheKey splits a token into the key its verdict is remembered under (the
// signed part: header and payload) and its signature segment.
func cacheKey(token string) (signed, sig string) {
	i := strings.LastIndexByte(token, '.')
	if i < 0 {
		return token, ""
	}
	return token[:i], token[i+1:]
}

// tokenCache remembers verified tokens, keyed by what was signed (header
// and payload) and answering only the signature that was verified.
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
// the caller. Parse accepts one spelling of each segment, but a signature
// scheme may accept two signatures of one payload (ECDSA's s and n-s): both
// are verified in full, and they share one entry (the last stored), so no
// caller can multiply the entries of one signed token.
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
	signed, sig := cacheKey(token)
	c.mu.RLock()
	e := c.m[signed]
	c.mu.RUnlock()
	if e == nil || e.sig != sig {
		return nil
	}
	return e
}

// put remembers a verdict reached with set, unless set is no longer the
// current key set (cur): such an entry could never answer.
func (c *tokenCache) put(token string, claims *Claims, key Key, set *keySet, cur *atomic.Pointer[keySet]) {
	if c == nil {
		return
	}
	// A copy of the text: the token is often a slice of a request's header
	// block, which must not stay alive for the entry's sake.
	token = strings.Clone(token)
	signed, sig := cacheKey(token)
	e := &verdict{claims: claims, key: key, sig: sig}
	e.set.Store(set)
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur.Load() != set {
		return
	}
	if _, again := c.m[signed]; !again && len(c.m) >= c.max {
		for k := range c.m { // map order is random: a random victim
			delete(c.m, k)
			break
		}
	}
	c.m[signed] = e
}

// drop forgets token (expired, or no longer answerable).
func (c *tokenCache) drop(token string, e *verdict) {
	if c == nil {
		return
	}
	signed, _ := cacheKey(token)
	c.mu.Lock()
	if c.m[signed] == e {
		delete(c.m, signed)
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
		if !ok || !sameKey(k, e.key) || expired(e.claims, now, c.leeway) {
			delete(c.m, tok)
			continue
		}
		e.set.Store(next)
	}
}

// expired reports whether the window check finds c expired at now.
func expired(c *Claims, now time.Time, leeway time.Duration) bool {
	reason, _ := c.window(now, leeway)
	return reason == ReasonExpired
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
