package meshtoken

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"
)

// removeKey takes kid out of the JWKS the server answers.
func (j *jwksServer) removeKey(kid string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	delete(j.keys, kid)
	delete(j.algs, kid)
}

// clocked gives v a fake clock at now with quick refetches.
func clocked(v *Verifier) *fakeClock {
	clock := &fakeClock{t: time.Now()}
	v.now = clock.now
	v.cfg.MinRefetchInterval = time.Second
	return clock
}

// A repeated token is answered from memory, and everything that depends on
// the request is still checked on each: the certificate it is bound to,
// its presence, and exp as time passes.
func TestVerifierRemembersButChecksEachRequest(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	v := j.verifier(t, "payments")
	clock := clocked(v)
	cert, other := testCert(t), testCert(t)
	tok := j.sign(t, kid, map[string]any{"cnf": map[string]string{"x5t#S256": x5t(cert)}})
	for i := range 3 {
		if c, err := v.Verify(t.Context(), tok, cert); err != nil || c.Subject != "orders" {
			t.Fatalf("verify %d: %v", i, err)
		}
	}
	if n := v.verified.len(); n != 1 {
		t.Fatalf("remembered %d tokens, want 1", n)
	}
	if _, err := v.Verify(t.Context(), tok, other); !errors.Is(err, ErrCertMismatch) {
		t.Fatalf("remembered token with another certificate: %v", err)
	}
	if _, err := v.Verify(t.Context(), tok, nil); !errors.Is(err, ErrCertMissing) {
		t.Fatalf("remembered bound token without a certificate: %v", err)
	}
	// Handing out the remembered claims must not let a caller change what
	// the next caller reads.
	c, _ := v.Verify(t.Context(), tok, cert)
	c.Subject = "mallory"
	if c2, _ := v.Verify(t.Context(), tok, cert); c2.Subject != "orders" {
		t.Fatalf("a caller changed the remembered claims: %q", c2.Subject)
	}
	clock.advance(300*time.Second + DefaultLeeway + time.Second)
	if _, err := v.Verify(t.Context(), tok, cert); ReasonOf(err) != ReasonExpired {
		t.Fatalf("remembered token past exp+leeway: %v; want expired", err)
	}
	if n := v.verified.len(); n != 0 {
		t.Fatalf("an expired token is still remembered (%d)", n)
	}
}

// A key removed from the JWKS (rotated out, or revoked) ends the tokens
// it signed at the first key-set fetch that no longer holds it, whether
// they were remembered or not; tokens of the keys that remain stay
// remembered across the fetch.
func TestVerifierForgetsTokensOfRemovedKey(t *testing.T) {
	j := newJWKSServer(t)
	gone, stays := j.addKey("ES256"), j.addKey("ES256")
	v := j.verifier(t, "payments")
	clock := clocked(v)
	tokGone, tokStays := j.sign(t, gone, nil), j.sign(t, stays, nil)
	for _, tok := range []string{tokGone, tokStays} {
		if _, err := v.Verify(t.Context(), tok, nil); err != nil {
			t.Fatal(err)
		}
	}
	j.removeKey(gone)
	// Past max-age the held set still answers while one fetch refreshes it
	// (the behaviour of an uncached verification too); from the end of
	// that fetch on, the removed key's token is refused.
	clock.advance(301 * time.Second)
	_, _ = v.Verify(t.Context(), tokGone, nil)
	waitNoFetch(t, v)
	if _, err := v.Verify(t.Context(), tokGone, nil); ReasonOf(err) != ReasonUnknownKey {
		t.Fatalf("token of a removed key after the fetch that removed it: %v; want unknown_key", err)
	}
	if _, err := v.Verify(t.Context(), tokStays, nil); err != nil {
		t.Fatalf("token of a key that stayed: %v", err)
	}
	if e := v.verified.get(tokStays); e == nil || e.set.Load() != v.set.Load() {
		t.Fatal("the token of a key that stayed was not carried to the new key set")
	}
}

// The race the cache must not lose: a verification that read the key set
// before a fetch removed its key, and stores its verdict after that fetch
// was published, must not leave a verdict that answers.
func TestVerifierVerdictFromOldKeySetNeverAnswers(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	keep := j.addKey("ES256")
	v := j.verifier(t, "payments")
	clock := clocked(v)
	tok := j.sign(t, kid, nil)
	old := v.set.Load()
	claims, err := Parse(tok, func(string) (Key, error) { return old.keys[kid], nil }, Options{Issuer: "meshauth", Audience: "payments", Leeway: DefaultLeeway})
	if err != nil {
		t.Fatal(err)
	}
	// The fetch that removes the key is published...
	j.removeKey(kid)
	if err := v.fetch(t.Context(), clock.now()); err != nil {
		t.Fatal(err)
	}
	// ... then the slow verification stores its verdict: refused at put.
	v.verified.put(tok, claims, old.keys[kid], old, &v.set)
	if v.verified.get(tok) != nil {
		t.Fatal("a verdict reached with a replaced key set was stored")
	}
	// Even one that got in (a put racing the publish) never answers.
	e := &verdict{claims: claims, key: old.keys[kid]}
	e.set.Store(old)
	v.verified.mu.Lock()
	v.verified.m[tok] = e
	v.verified.mu.Unlock()
	if _, err := v.Verify(t.Context(), tok, nil); ReasonOf(err) != ReasonUnknownKey {
		t.Fatalf("verdict of the old key set answered: %v", err)
	}
	_ = keep
}

// A kid that comes back with other key material (a tampered or confused
// JWKS) does not carry the tokens of the old key.
func TestVerifierKidWithNewKeyDropsVerdicts(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	v := j.verifier(t, "payments")
	clock := clocked(v)
	tok := j.sign(t, kid, nil)
	if _, err := v.Verify(t.Context(), tok, nil); err != nil {
		t.Fatal(err)
	}
	old := v.set.Load()
	e := v.verified.get(tok)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	j.mu.Lock()
	j.keys[kid] = k
	j.mu.Unlock()
	if err := v.fetch(t.Context(), clock.now()); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(t.Context(), tok, nil); ReasonOf(err) != ReasonBadSignature {
		t.Fatalf("token of the old key material under the same kid: %v; want bad_signature", err)
	}
	// A verdict of the old set that got in anyway (a put racing the
	// publish) names the old set, and so never answers.
	if e == nil || e.set.Load() != old {
		t.Fatal("no verdict for the token before the fetch")
	}
	v.verified.mu.Lock()
	v.verified.m[tok] = e
	v.verified.mu.Unlock()
	if _, err := v.Verify(t.Context(), tok, nil); ReasonOf(err) != ReasonBadSignature {
		t.Fatalf("verdict of the old key set answered: %v", err)
	}
}

// The cache holds at most MaxCachedTokens verdicts, and none when
// disabled.
func TestVerifierCacheIsBounded(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	v := j.verifier(t, "payments")
	v.verified = newTokenCache(3, DefaultLeeway)
	for i := range 10 {
		if _, err := v.Verify(t.Context(), j.sign(t, kid, map[string]any{"jti": fmt.Sprint(i)}), nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := v.verified.len(); n != 3 {
		t.Fatalf("remembered %d tokens, bound 3", n)
	}
	v.verified = newTokenCache(-1, DefaultLeeway)
	if _, err := v.Verify(t.Context(), j.sign(t, kid, nil), nil); err != nil || v.verified.len() != 0 {
		t.Fatalf("disabled cache: %v, %d remembered", err, v.verified.len())
	}
}

// Two spellings of one ECDSA signature (s and n-s) are two texts: each is
// verified in full before it is remembered, and a text never verified is
// never answered from memory, whatever it shares with one that was.
func TestVerifierCacheKeyIsTheWholeText(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	v := j.verifier(t, "payments")
	tok := j.sign(t, kid, nil)
	if _, err := v.Verify(t.Context(), tok, nil); err != nil {
		t.Fatal(err)
	}
	dot := strings.LastIndexByte(tok, '.')
	sig, _ := base64.RawURLEncoding.DecodeString(tok[dot+1:])
	s := new(big.Int).SetBytes(sig[32:])
	s.Sub(elliptic.P256().Params().N, s)
	twin := append(append([]byte{}, sig[:32]...), s.FillBytes(make([]byte, 32))...)
	malleated := tok[:dot+1] + base64.RawURLEncoding.EncodeToString(twin)
	_, errTwin := v.Verify(t.Context(), malleated, nil)
	_, errCold := Parse(malleated, func(string) (Key, error) { return v.set.Load().keys[kid], nil }, Options{Issuer: "meshauth", Audience: "payments", Leeway: DefaultLeeway})
	if (errTwin == nil) != (errCold == nil) {
		t.Fatalf("cached verifier and full parse disagree on the n-s twin: %v vs %v", errTwin, errCold)
	}
	// Both spellings verify, but they share one entry: one signed token
	// cannot be multiplied in memory.
	if _, err := v.Verify(t.Context(), tok, nil); err != nil {
		t.Fatal(err)
	}
	if n := v.verified.len(); n != 1 {
		t.Fatalf("two signatures of one payload take %d entries, want 1", n)
	}
	for name, bad := range map[string]string{
		"flipped signature": tok[:len(tok)-2] + flip(tok[len(tok)-2:]),
		"other payload":     tok[:strings.IndexByte(tok, '.')+1] + "eyJzdWIiOiJ4In0" + tok[strings.LastIndexByte(tok, '.'):],
		"trailing space":    tok + " ",
		"token twice":       tok + tok,
	} {
		if _, err := v.Verify(t.Context(), bad, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func flip(s string) string {
	if s[0] == 'A' {
		return "B" + s[1:]
	}
	return "A" + s[1:]
}

// A remembered token obeys the key set's staleness like any other: past
// max-age + MaxStaleness with Vault down, it fails closed.
func TestVerifierRememberedTokenFailsClosedWhenKeysStale(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	v := j.verifier(t, "payments")
	clock := clocked(v)
	// The set was fetched with max-age=300 and the default MaxStaleness
	// (1h) at about clock start.
	n := clock.now().Unix()
	tok := j.sign(t, kid, map[string]any{"iat": n, "nbf": n, "exp": n + 3*3600})
	if _, err := v.Verify(t.Context(), tok, nil); err != nil {
		t.Fatal(err)
	}
	j.down.Store(true)
	clock.advance(301 * time.Second)
	if _, err := v.Verify(t.Context(), tok, nil); err != nil {
		t.Fatalf("within MaxStaleness: %v", err)
	}
	waitNoFetch(t, v)
	clock.advance(time.Hour)
	if _, err := v.Verify(t.Context(), tok, nil); !errors.Is(err, ErrKeysStale) {
		t.Fatalf("remembered token past MaxStaleness: %v; want ErrKeysStale", err)
	}
}
