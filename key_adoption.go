package meshauth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"net"
	"sync"
	"time"
)

// maxAdoptionFetchers bounds the fetchers remembered for one next key (16
// bytes each): past it the count says "at least".
const maxAdoptionFetchers = 100000

// keyAdoption counts, on this node, how many distinct fetchers have read
// jwks while it held the current next key: an operator can see that
// verifiers hold a key before it signs. A fetcher is its remote address
// (the proxy's, behind one), hashed with a key made when the plugin starts,
// so the set holds no address, and the hashes cannot be matched to
// addresses by trying them all.
type keyAdoption struct {
	mu       sync.Mutex
	salt     [32]byte
	nextKID  string
	since    time.Time
	fetchers map[[16]byte]struct{}
}

// newKeyAdoption returns an empty tracker with a fresh hashing key.
func newKeyAdoption() *keyAdoption {
	a := &keyAdoption{fetchers: map[[16]byte]struct{}{}}
	_, _ = rand.Read(a.salt[:]) // crypto/rand never fails on supported platforms
	return a
}

// fetched records that addr read a key set whose next key is nextKID; a new
// next key starts a new count.
func (a *keyAdoption) fetched(nextKID, addr string, now time.Time) {
	if nextKID == "" || addr == "" {
		return
	}
	if host, _, err := net.SplitHostPort(addr); err == nil {
		addr = host
	}
	mac := hmac.New(sha256.New, a.salt[:])
	mac.Write([]byte(addr))
	var id [16]byte
	copy(id[:], mac.Sum(nil))
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.nextKID != nextKID {
		a.nextKID, a.since = nextKID, now
		clear(a.fetchers)
	}
	if len(a.fetchers) < maxAdoptionFetchers {
		a.fetchers[id] = struct{}{}
	}
}

// adoption is what metrics reports.
type adoption struct {
	NextKID  string
	Since    time.Time
	Fetchers int
}

// snapshot returns the count for the next key, if any fetch was seen.
func (a *keyAdoption) snapshot() adoption {
	a.mu.Lock()
	defer a.mu.Unlock()
	return adoption{NextKID: a.nextKID, Since: a.since, Fetchers: len(a.fetchers)}
}

// addTo puts the count into the JSON metrics as next_key_fetchers.
func (a *keyAdoption) addTo(data map[string]any) {
	s := a.snapshot()
	out := map[string]any{"kid": s.NextKID, "fetchers": s.Fetchers, "since": nil}
	if !s.Since.IsZero() {
		out["since"] = s.Since.UTC().Format(time.RFC3339)
	}
	data["next_key_fetchers"] = out
}

// prometheus renders the count as a gauge labelled with the next kid.
func (a *keyAdoption) prometheus() string {
	s := a.snapshot()
	if s.NextKID == "" {
		return ""
	}
	var p promText
	p.family("meshauth_next_key_fetchers", "Distinct fetchers (hashed addresses) that read jwks holding the next key, on this node.", "gauge")
	p.sample("meshauth_next_key_fetchers", uint64(max(s.Fetchers, 0)), "kid", s.NextKID)
	return p.sb.String()
}
