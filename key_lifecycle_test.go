package meshauth

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// withPublicationAge sets min_publication_age (getTestBackend turns it off).
func withPublicationAge(t *testing.T, e *testEnv, age string) {
	t.Helper()
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"min_publication_age": age})
}

// ringKey returns the stored key in state, or nil.
func ringKey(t *testing.T, e *testEnv, state string) *signingKeyEntry {
	t.Helper()
	ring, err := readKeyRingEntry(t.Context(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range ring.Keys {
		if k.State == state {
			return k
		}
	}
	return nil
}

func TestDefaultMinPublicationAgeCoversIstioAndEnvoy(t *testing.T) {
	cfg := defaultConfig()
	// istiod refetches every 20m, Envoy remote_jwks caches 10m by default,
	// and jwks may be cached for its longest max-age.
	if cfg.MinPublicationAge < 20*time.Minute+10*time.Minute || cfg.MinPublicationAge < maxJWKSCacheAge {
		t.Fatalf("default min_publication_age %s", cfg.MinPublicationAge)
	}
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"min_publication_age": "1h"})
	if got := e.mustOK(t, logical.ReadOperation, "config", nil).Data["min_publication_age"]; got != int64(3600) {
		t.Fatalf("min_publication_age read back %v", got)
	}
	e.mustFail(t, logical.UpdateOperation, "config", map[string]any{"min_publication_age": "-1"}, "negative")
	e.mustFail(t, logical.UpdateOperation, "config", map[string]any{"min_publication_age": "200h"}, "at most")
}

func TestRotationRightAfterAnotherWaitsItsTurn(t *testing.T) {
	e := getTestBackend(t)
	withPublicationAge(t, e, "1h")
	next := ringKey(t, e, keyStateNext)
	signsFrom := next.CreatedAt.Add(time.Hour).UTC().Format(time.RFC3339)
	if got := e.mustOK(t, logical.ReadOperation, "keys", nil).Data["next_signs_from"]; got != signsFrom {
		t.Fatalf("keys says next_signs_from %v; want %s", got, signsFrom)
	}
	e.mustFail(t, logical.UpdateOperation, "keys/rotate", nil, "it may sign from "+signsFrom)
	e.mustFail(t, logical.UpdateOperation, "keys/rotate", nil, "force=true")
	e.clock.advance(59 * time.Minute)
	e.mustFail(t, logical.UpdateOperation, "keys/rotate", nil, "it may sign from "+signsFrom)
	e.clock.advance(time.Minute)
	if got := e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil).Data["current_kid"]; got != next.KID {
		t.Fatalf("rotation promoted %v, not the next key %s", got, next.KID)
	}
	// The key published by that rotation is seconds old: a second
	// rotation waits a whole min_publication_age again.
	fresh := ringKey(t, e, keyStateNext)
	e.mustFail(t, logical.UpdateOperation, "keys/rotate", nil, "it may sign from "+fresh.CreatedAt.Add(time.Hour).UTC().Format(time.RFC3339))
	if cur := ringKey(t, e, keyStateCurrent); cur.KID != next.KID {
		t.Fatal("a refused rotation changed the ring")
	}
}

func TestForcedRotationPromotesAtOnce(t *testing.T) {
	e := getTestBackend(t)
	withPublicationAge(t, e, "1h")
	next := ringKey(t, e, keyStateNext)
	resp := e.mustOK(t, logical.UpdateOperation, "keys/rotate", map[string]any{"force": true})
	if resp.Data["current_kid"] != next.KID || resp.Data["rotated"] != true {
		t.Fatalf("forced rotation = %#v; want the published next key %s", resp.Data, next.KID)
	}
	help := e.mustOK(t, logical.HelpOperation, "keys/rotate", nil).Data["help"].(string)
	if !strings.Contains(help, "refuse every new token until they refetch") {
		t.Fatal("keys/rotate help does not spell out the cost of force")
	}
}

func TestScheduledRotationWaitsForPublication(t *testing.T) {
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"key_rotation_period": "10m", "max_ttl": "1h", "default_ttl": "10m"})
	withPublicationAge(t, e, "1h")
	next := ringKey(t, e, keyStateNext)
	req := &logical.Request{Storage: e.storage}
	for range 5 {
		e.clock.advance(10 * time.Minute)
		if err := e.b.periodic(t.Context(), req); err != nil {
			t.Fatal(err)
		}
		if ringKey(t, e, keyStateCurrent).KID == next.KID {
			t.Fatalf("the schedule promoted a key published %s ago", e.clock.now().Sub(next.CreatedAt))
		}
	}
	e.clock.advance(10 * time.Minute)
	if err := e.b.periodic(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if ringKey(t, e, keyStateCurrent).KID != next.KID {
		t.Fatal("the schedule did not promote the next key once it was published an hour")
	}
}

func TestAlgorithmChangeGoesThroughTheNextSlot(t *testing.T) {
	e := getTestBackend(t)
	withPublicationAge(t, e, "1h")
	key := e.register(t, "orders", nil)
	oldCurrent := ringKey(t, e, keyStateCurrent)
	resp := e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"signing_algorithm": algEdDSA})
	if len(resp.Warnings) == 0 || !strings.Contains(resp.Warnings[0], "starts signing at") {
		t.Fatalf("no warning saying when the EdDSA key signs: %#v", resp)
	}
	next := ringKey(t, e, keyStateNext)
	if next.Algorithm != algEdDSA || !slices.Contains(jwksKIDs(t, e), next.KID) {
		t.Fatalf("next key %s/%s is not a published EdDSA key", next.KID, next.Algorithm)
	}
	header, _ := decodeJWT(t, e.mustLogin(t, "orders", key))
	if header["kid"] != oldCurrent.KID || header["alg"] != algES256 {
		t.Fatalf("right after the change tokens are signed by %v/%v", header["kid"], header["alg"])
	}
	req := &logical.Request{Storage: e.storage}
	e.clock.advance(30 * time.Minute)
	if err := e.b.periodic(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if ringKey(t, e, keyStateNext).KID != next.KID {
		t.Fatal("the periodic function replaced the waiting EdDSA key")
	}
	e.mustFail(t, logical.UpdateOperation, "keys/rotate", nil, "it may sign from")
	e.clock.advance(30 * time.Minute)
	if err := e.b.periodic(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	header, _ = decodeJWT(t, e.mustLogin(t, "orders", key))
	if header["kid"] != next.KID || header["alg"] != algEdDSA {
		t.Fatalf("an hour after the change tokens are signed by %v/%v", header["kid"], header["alg"])
	}
}

func TestKeyRevokeRemovesTheCurrentKey(t *testing.T) {
	e := getTestBackend(t)
	withPublicationAge(t, e, "1h")
	key := e.register(t, "orders", nil)
	tok := e.mustLogin(t, "orders", key)
	cur, next := ringKey(t, e, keyStateCurrent), ringKey(t, e, keyStateNext)
	resp := e.mustOK(t, logical.UpdateOperation, "keys/"+cur.KID+"/revoke", nil)
	fresh := resp.Data["current_kid"].(string)
	if fresh == cur.KID || fresh == next.KID {
		t.Fatalf("after removing %s the signing key is %s (next %s)", cur.KID, fresh, next.KID)
	}
	kids := jwksKIDs(t, e)
	if slices.Contains(kids, cur.KID) || !slices.Contains(kids, fresh) || !slices.Contains(kids, next.KID) {
		t.Fatalf("jwks after removal: %v", kids)
	}
	if ok, reason := e.verify(t, tok, nil); ok || reason != reasonUnknownKey {
		t.Fatalf("a token of the removed key: valid=%v reason=%s", ok, reason)
	}
	header, _ := decodeJWT(t, e.mustLogin(t, "orders", key))
	if header["kid"] != fresh {
		t.Fatalf("new tokens signed by %v", header["kid"])
	}
	if ringKey(t, e, keyStateNext).KID != next.KID {
		t.Fatal("the published next key was replaced")
	}
	// Twice is a no-op; an unknown kid is a 4xx.
	if again := e.mustOK(t, logical.UpdateOperation, "keys/"+cur.KID+"/revoke", nil); again.Data["already"] != true {
		t.Fatalf("second removal = %#v", again.Data)
	}
	e.mustFail(t, logical.UpdateOperation, "keys/nosuchkid/revoke", nil, "no signing key has kid")

	// Nothing brings it back: rotations, tidy, the passing of its listing.
	e.clock.advance(time.Hour)
	e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil)
	e.clock.advance(48 * time.Hour)
	e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil)
	e.mustOK(t, logical.UpdateOperation, "tidy", nil)
	e.b.keyRing.drop()
	if slices.Contains(jwksKIDs(t, e), cur.KID) {
		t.Fatal("the removed key came back")
	}
	if ok, _ := e.verify(t, tok, nil); ok {
		t.Fatal("a token of the removed key verifies again")
	}
}

func TestKeyRevokeOfNextAndRetiredKeys(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	old := e.mustLogin(t, "orders", key)
	retired := ringKey(t, e, keyStateCurrent)
	e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil)
	withPublicationAge(t, e, "1h")
	cur, next := ringKey(t, e, keyStateCurrent), ringKey(t, e, keyStateNext)

	e.mustOK(t, logical.UpdateOperation, "keys/"+retired.KID+"/revoke", nil)
	if ok, reason := e.verify(t, old, nil); ok || reason != reasonUnknownKey {
		t.Fatalf("token of the removed retired key: %v %s", ok, reason)
	}
	if ringKey(t, e, keyStateCurrent).KID != cur.KID {
		t.Fatal("removing a retired key changed the signing key")
	}

	e.mustOK(t, logical.UpdateOperation, "keys/"+next.KID+"/revoke", nil)
	fresh := ringKey(t, e, keyStateNext)
	if fresh == nil || fresh.KID == next.KID || ringKey(t, e, keyStateCurrent).KID != cur.KID {
		t.Fatal("removing the next key did not publish a fresh next key, or changed the signing key")
	}
	// The fresh next key waits like any other.
	e.mustFail(t, logical.UpdateOperation, "keys/rotate", nil, "it may sign from")
	removed := e.mustOK(t, logical.ReadOperation, "keys", nil).Data["removed_keys"].([]map[string]any)
	if len(removed) != 2 {
		t.Fatalf("keys lists removed_keys %#v", removed)
	}
}

func TestKeyRevokeWorksWhenTheRingIsFull(t *testing.T) {
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"key_rotation_period": 0})
	for range maxRingKeys - 2 {
		e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil)
	}
	e.mustFail(t, logical.UpdateOperation, "keys/rotate", nil, "room frees up at")
	cur := ringKey(t, e, keyStateCurrent)
	e.mustOK(t, logical.UpdateOperation, "keys/"+cur.KID+"/revoke", nil)
	if kids := jwksKIDs(t, e); len(kids) != maxRingKeys || slices.Contains(kids, cur.KID) {
		t.Fatalf("jwks after removal in a full ring: %d keys", len(kids))
	}
	bundle := e.mustOK(t, logical.ReadOperation, "spiffe/bundle", nil).Data[logical.HTTPRawBody].([]byte)
	if strings.Count(string(bundle), `"kid"`) > maxRingKeys || strings.Contains(string(bundle), cur.KID) {
		t.Fatal("spiffe/bundle exceeds the key ceiling or holds the removed key")
	}
	e.mustFail(t, logical.UpdateOperation, "keys/rotate", map[string]any{"force": true}, "room frees up at")
}

// A key generated with a removed kid is impossible by chance; the rule is
// enforced anyway, so a broken random source cannot bring a kid back.
func TestRemovedKIDIsNeverReused(t *testing.T) {
	old := &keyRingEntry{}
	entry := &keyRingEntry{}
	k, err := entry.newKey(old, algEdDSA, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	entry.Removed = []*removedKeyEntry{{KID: k.KID, ListedUntil: time.Now().Add(time.Hour)}}
	again, err := entry.newKey(old, algEdDSA, time.Now())
	if err != nil || again.KID == k.KID {
		t.Fatal("newKey handed out a removed kid")
	}
}
