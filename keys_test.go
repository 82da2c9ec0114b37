package meshauth

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// jwksKIDs reads jwks and returns its kids in order.
func jwksKIDs(t *testing.T, e *testEnv) []string {
	resp := e.mustOK(t, logical.ReadOperation, "jwks", nil)
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(resp.Data[logical.HTTPRawBody].([]byte), &set); err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range set.Keys {
		if k["d"] != "" || k["p"] != "" {
			t.Fatal("jwks holds private key material")
		}
		kids = append(kids, k["kid"])
	}
	return kids
}

func TestKeyRingNextKeyIsPublishedBeforeItSigns(t *testing.T) {
	e := getTestBackend(t)
	keys := e.mustOK(t, logical.ReadOperation, "keys", nil).Data["keys"].([]map[string]any)
	if len(keys) != 2 || keys[0]["state"] != keyStateCurrent || keys[1]["state"] != keyStateNext {
		t.Fatalf("new ring = %#v", keys)
	}
	next := keys[1]["kid"].(string)
	if kids := jwksKIDs(t, e); len(kids) != 2 || kids[1] != next {
		t.Fatalf("jwks %v does not publish the next key %s", kids, next)
	}
	key := e.register(t, "orders", nil)
	old := e.mustLogin(t, "orders", key)
	rotated := e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil)
	if rotated.Data["current_kid"] != next {
		t.Fatalf("rotation promoted %v, not the published next key %s", rotated.Data["current_kid"], next)
	}
	header, _ := decodeJWT(t, e.mustLogin(t, "orders", key))
	if header["kid"] != next {
		t.Fatal("new tokens are not signed by the promoted key")
	}
	if ok, reason := e.verify(t, old, nil); !ok {
		t.Fatalf("token of the retired key: %s", reason)
	}
	keys = e.mustOK(t, logical.ReadOperation, "keys", nil).Data["keys"].([]map[string]any)
	if len(keys) != 3 || keys[0]["state"] != keyStateRetired || keys[0]["retires_at"] == nil {
		t.Fatalf("after rotation = %#v", keys)
	}
	// After verification_ttl the retired key leaves jwks and stops verifying;
	// no token outlives it (default ttl 1h < verification_ttl).
	e.clock.advance(24*time.Hour + 31*time.Second)
	if ok, reason := e.verify(t, old, nil); ok || reason != reasonUnknownKey && reason != reasonExpired {
		t.Fatalf("token of a key past verification_ttl: %v %s", ok, reason)
	}
	if kids := jwksKIDs(t, e); len(kids) != 2 {
		t.Fatalf("jwks still holds the expired key: %v", kids)
	}
	if res := e.mustOK(t, logical.UpdateOperation, "tidy", nil); res.Data["keys_removed"] != 1 {
		t.Fatalf("tidy = %#v", res.Data)
	}
}

func TestPeriodicRotatesOncePerPeriod(t *testing.T) {
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"key_rotation_period": "1h", "max_ttl": "12h"})
	req := &logical.Request{Storage: e.storage}
	current := func() any { return e.mustOK(t, logical.ReadOperation, "keys", nil).Data["current_kid"] }
	first := current()
	rotations := e.b.metrics.keyRotations.Load()
	for range 3 {
		if err := e.b.periodic(t.Context(), req); err != nil {
			t.Fatal(err)
		}
	}
	if current() != first {
		t.Fatal("periodic rotated before the period ended")
	}
	e.clock.advance(time.Hour)
	for range 3 { // safe to run twice: rotates once
		if err := e.b.periodic(t.Context(), req); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.b.metrics.keyRotations.Load() - rotations; current() == first || got != 1 {
		t.Fatalf("rotations = %d; want exactly 1", got)
	}
}

func TestKeyEntrySizes(t *testing.T) {
	for _, alg := range meshtoken.Algorithms() {
		k, err := generateSigningKey(alg, 1<<30, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		k.State, k.PromotedAt, k.RetiresAt, k.MaxVerificationTTL = keyStateRetired, time.Now(), time.Now(), 1<<62
		raw, _ := json.Marshal(k)
		if len(raw)+1 > keyEntryBytes[alg] { // +1: the comma between keys
			t.Errorf("%s key takes %d bytes; keyEntryBytes says %d", alg, len(raw)+1, keyEntryBytes[alg])
		}
		if maxRingKeys*keyEntryBytes[alg] > keyRingBudget {
			t.Errorf("%d %s keys exceed the ring budget", maxRingKeys, alg)
		}
	}
	if keyRingBudget > 1<<20/2 {
		t.Error("the ring budget is not well under a Raft entry")
	}
}

func TestConfigRefusesKeyRingThatOutgrowsOneEntry(t *testing.T) {
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"signing_algorithm": algRS256})
	e.mustFail(t, logical.UpdateOperation, "config", map[string]any{"key_rotation_period": "1m", "max_ttl": "24h"},
		"key_rotation_period=1m0s with verification_ttl=24h0m30s would keep up to 1443 signing keys")
	e.mustFail(t, logical.UpdateOperation, "config", map[string]any{"key_rotation_period": "1m", "max_ttl": "24h"},
		"Set key_rotation_period to at least 1h21m0s")
	e.mustFail(t, logical.UpdateOperation, "config", map[string]any{"key_rotation_period": "1h"}, "at most 20 keys")
	if got := e.mustOK(t, logical.ReadOperation, "config", nil).Data["key_rotation_period"]; got != int64(86400) {
		t.Fatalf("a refused config was stored: key_rotation_period=%v", got)
	}
	// The longest schedule accepted at a 1m period, rotated past its
	// steady state: the ring stays within the key count and the budget.
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"key_rotation_period": "1m", "max_ttl": "17m", "default_ttl": "10m", "leeway": "1m"})
	e.mustFail(t, logical.UpdateOperation, "config", map[string]any{"max_ttl": "18m"}, "at most 18 × key_rotation_period = 18m0s")
	req := &logical.Request{Storage: e.storage}
	for range 25 {
		e.clock.advance(time.Minute)
		if err := e.b.periodic(t.Context(), req); err != nil {
			t.Fatal(err)
		}
		raw, _ := e.storage.Get(t.Context(), storageKeyRing)
		ring, _ := readKeyRingEntry(t.Context(), e.storage)
		if len(raw.Value) > keyRingBudget || len(ring.Keys) > maxRingKeys {
			t.Fatalf("ring of %d keys takes %d bytes", len(ring.Keys), len(raw.Value))
		}
	}
	if kids := jwksKIDs(t, e); len(kids) != maxRingKeys {
		t.Fatalf("steady state holds %d keys; want %d", len(kids), maxRingKeys)
	}
}

func TestManualRotationRefusedWhenRingFull(t *testing.T) {
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"key_rotation_period": 0})
	for range maxRingKeys - 2 {
		e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil)
	}
	ring, _ := readKeyRingEntry(t.Context(), e.storage)
	frees := ring.Keys[0].RetiresAt.UTC().Format(time.RFC3339)
	e.mustFail(t, logical.UpdateOperation, "keys/rotate", nil, "room frees up at "+frees)
	if kids := jwksKIDs(t, e); len(kids) != maxRingKeys {
		t.Fatalf("jwks holds %d keys", len(kids))
	}
	e.clock.advance(25 * time.Hour)
	e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil)
}

// loginTTL24h logs in for a token living 24 hours.
func loginTTL24h(t *testing.T, e *testEnv, key string) string {
	t.Helper()
	resp, err := e.login(t, "orders", key, map[string]any{"ttl": "24h"})
	if err != nil || resp.IsError() || len(resp.Warnings) > 0 {
		t.Fatalf("24h login: %v %#v", err, resp)
	}
	return resp.Data["token"].(string)
}

func TestRetiredKeyOutlivesLoweredMaxTTL(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	tok := loginTTL24h(t, e, key)
	header, _ := decodeJWT(t, tok)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"max_ttl": "1h", "default_ttl": "30m"})
	e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil)
	e.clock.advance(2 * time.Hour)
	if ok, reason := e.verify(t, tok, nil); !ok {
		t.Fatalf("a 24h token signed before max_ttl was lowered stopped verifying after 2h: %s", reason)
	}
	if !slices.Contains(jwksKIDs(t, e), header["kid"].(string)) {
		t.Fatal("its key left jwks before the token expired")
	}
	e.clock.advance(22*time.Hour + time.Minute)
	if slices.Contains(jwksKIDs(t, e), header["kid"].(string)) {
		t.Fatal("the key stayed past its last token's expiry and leeway")
	}
}

func TestRaisedMaxTTLIsRecordedOnTheCurrentKey(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"max_ttl": "1h", "default_ttl": "30m"})
	e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil) // current key promoted under max_ttl=1h
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"max_ttl": "24h"})
	tok := loginTTL24h(t, e, key)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"max_ttl": "1h"})
	e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil)
	e.clock.advance(2 * time.Hour)
	if ok, reason := e.verify(t, tok, nil); !ok {
		t.Fatalf("token minted while max_ttl was raised: %s", reason)
	}
}
