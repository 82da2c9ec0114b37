package meshauth

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// hookStorage runs a hook after the real call, before answering, to stage
// a write from another node between a read and its use.
type hookStorage struct {
	logical.Storage
	afterGet  func(key string)
	afterList func()
}

func (s *hookStorage) Get(ctx context.Context, k string) (*logical.StorageEntry, error) {
	e, err := s.Storage.Get(ctx, k)
	if s.afterGet != nil {
		s.afterGet(k)
	}
	return e, err
}

func (s *hookStorage) List(ctx context.Context, p string) ([]string, error) {
	l, err := s.Storage.List(ctx, p)
	if s.afterList != nil {
		s.afterList()
	}
	return l, err
}

// secondNode starts another backend over e's storage and clock, as a
// standby of an HA cluster would be: it learns of writes only through
// invalidate.
func secondNode(t *testing.T, e *testEnv) (*testEnv, *hookStorage) {
	t.Helper()
	inner := e.storage.Storage
	hooks := &hookStorage{Storage: inner}
	conf := logical.TestBackendConfig()
	conf.StorageView = inner
	b := newBackend()
	if err := b.Setup(t.Context(), conf); err != nil {
		t.Fatal(err)
	}
	b.now = e.clock.now
	storage := &countingStorage{Storage: hooks}
	if err := b.Initialize(t.Context(), &logical.InitializationRequest{Storage: storage}); err != nil {
		t.Fatal(err)
	}
	return &testEnv{b: b, storage: storage, clock: e.clock}, hooks
}

// storageReads counts the Gets and Lists made so far.
func storageReads(e *testEnv) int64 { return e.storage.gets.Load() + e.storage.lists.Load() }

func TestRevocationsCostOneReadPerRevoke(t *testing.T) {
	a := getTestBackend(t)
	key := a.register(t, "orders", nil)
	good := a.mustLogin(t, "orders", key)
	var revoked []string
	for range 300 {
		tok := a.mustLogin(t, "orders", key)
		a.mustOK(t, logical.UpdateOperation, "revoke", map[string]any{"token": tok})
		revoked = append(revoked, tok)
	}

	// The node that revoked applies each revocation in place: no reads.
	before := storageReads(a)
	if ok, reason := a.verify(t, revoked[299], nil); ok || reason != reasonTokenRevoked {
		t.Fatalf("revoked token: %v %s", ok, reason)
	}
	if ok, reason := a.verify(t, good, nil); !ok {
		t.Fatalf("good token: %s", reason)
	}
	if n := storageReads(a) - before; n != 0 {
		t.Fatalf("verify after 300 local revokes made %d storage reads; want 0", n)
	}

	// Another node reads the whole set once when it first verifies ...
	b, _ := secondNode(t, a)
	if ok, reason := b.verify(t, revoked[0], nil); ok || reason != reasonTokenRevoked {
		t.Fatalf("standby, revoked token: %v %s", ok, reason)
	}
	// ... and after that, one revoke elsewhere costs it one read, on the
	// first verify of that token, and none for any other token.
	fresh := a.mustLogin(t, "orders", key)
	resp := a.mustOK(t, logical.UpdateOperation, "revoke", map[string]any{"token": fresh})
	b.b.invalidate(t.Context(), storageRevokedPrefix+resp.Data["jti"].(string))
	before = storageReads(b)
	if ok, reason := b.verify(t, good, nil); !ok {
		t.Fatalf("standby, good token: %s", reason)
	}
	if n := storageReads(b) - before; n != 0 {
		t.Fatalf("verify of another token after an invalidate made %d reads; want 0", n)
	}
	for i := range 3 {
		if ok, reason := b.verify(t, fresh, nil); ok || reason != reasonTokenRevoked {
			t.Fatalf("standby, newly revoked token (%d): %v %s", i, ok, reason)
		}
	}
	if n := storageReads(b) - before; n != 1 {
		t.Fatalf("verifying the newly revoked token three times made %d reads; want 1", n)
	}

	// Tidy's deletions reach the other node the same way.
	a.clock.advance(2 * time.Hour)
	if res := a.mustOK(t, logical.UpdateOperation, "tidy", nil); res.Data["revocations_removed"] != 301 {
		t.Fatalf("tidy = %#v", res.Data)
	}
	if a.b.revoked.size() != 0 {
		t.Fatalf("active node still holds %d revocations after tidy", a.b.revoked.size())
	}
	for _, tok := range []string{fresh, revoked[0]} {
		_, claims := decodeJWT(t, tok)
		b.b.invalidate(t.Context(), storageRevokedPrefix+claims["jti"].(string))
	}
	before = storageReads(b)
	if revokedNow, err := b.b.revoked.isRevoked(t.Context(), b.storage, mustJTI(t, fresh)); err != nil || revokedNow {
		t.Fatalf("standby after tidy: %v %v", revokedNow, err)
	}
	if n := storageReads(b) - before; n != 1 {
		t.Fatalf("standby after tidy made %d reads; want 1", n)
	}
}

func mustJTI(t *testing.T, tok string) string {
	t.Helper()
	_, claims := decodeJWT(t, tok)
	return claims["jti"].(string)
}

// revokeBehind writes a revocation for tok to storage as another node would,
// without telling node e.
func revokeBehind(t *testing.T, e *testEnv, tok string) string {
	t.Helper()
	jti := mustJTI(t, tok)
	raw, err := logical.StorageEntryJSON(storageRevokedPrefix+jti, &revocationEntry{
		Version: revocationVersion, Service: "orders", ExpiresAt: e.clock.now().Add(time.Hour), RevokedAt: e.clock.now(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.storage.Storage.Put(t.Context(), raw); err != nil {
		t.Fatal(err)
	}
	return jti
}

func TestRevocationReadRacingAWriteIsNotKept(t *testing.T) {
	a := getTestBackend(t)
	key := a.register(t, "orders", nil)
	tok := a.mustLogin(t, "orders", key)
	b, hooks := secondNode(t, a)
	if ok, _ := b.verify(t, tok, nil); !ok { // loads the (empty) set
		t.Fatal("token invalid before any revoke")
	}
	jti := mustJTI(t, tok)

	// The jti is pending (an earlier write elsewhere). The verify reads it
	// and finds nothing; before that answer is used, another node revokes
	// the token and Vault invalidates the key here.
	b.b.invalidate(t.Context(), storageRevokedPrefix+jti)
	hooks.afterGet = func(k string) {
		if k == storageRevokedPrefix+jti {
			hooks.afterGet = nil
			revokeBehind(t, a, tok)
			b.b.invalidate(t.Context(), k)
		}
	}
	if ok, _ := b.verify(t, tok, nil); !ok {
		t.Fatal("the racing verify read before the write; it answers from that read")
	}
	if ok, reason := b.verify(t, tok, nil); ok || reason != reasonTokenRevoked {
		t.Fatalf("a read from before the write was kept: %v %s", ok, reason)
	}
}

func TestRevocationLoadRacingAWriteIsNotKept(t *testing.T) {
	a := getTestBackend(t)
	key := a.register(t, "orders", nil)
	tok := a.mustLogin(t, "orders", key)
	other := a.mustLogin(t, "orders", key)
	b, hooks := secondNode(t, a)
	// The standby's first verify lists the (empty) set; a revoke lands
	// before the list is installed.
	hooks.afterList = func() {
		hooks.afterList = nil
		jti := revokeBehind(t, a, tok)
		b.b.invalidate(t.Context(), storageRevokedPrefix+jti)
	}
	if ok, _ := b.verify(t, other, nil); !ok {
		t.Fatal("other token invalid")
	}
	if ok, reason := b.verify(t, tok, nil); ok || reason != reasonTokenRevoked {
		t.Fatalf("a load from before the write hid it: %v %s", ok, reason)
	}
}

// fillRevocations stores n revocations (jtis from, from+1, ...) expiring
// at exp, as if revoked before this node started.
func fillRevocations(tb testing.TB, e *testEnv, from, n int, exp time.Time) {
	tb.Helper()
	for i := from; i < from+n; i++ {
		raw, err := logical.StorageEntryJSON(storageRevokedPrefix+fmt.Sprintf("%026d", i), &revocationEntry{
			Version: revocationVersion, Service: "orders", ExpiresAt: exp, RevokedAt: e.clock.now(),
		})
		if err != nil {
			tb.Fatal(err)
		}
		if err := e.storage.Storage.Put(context.Background(), raw); err != nil {
			tb.Fatal(err)
		}
	}
}

// A revocation is never refused for size (the feed's bound counts on the
// set's limit, and a revoke must always work): with the set full, revoke
// ends the token's whole service instead, and says so. Once room frees,
// revoke is per token again.
func TestRevokeWhenFullRevokesTheServiceInstead(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	otherKey := e.register(t, "payments", nil)
	soon := e.clock.now().Add(10 * time.Minute).UTC().Truncate(time.Second)
	fillRevocations(t, e, 0, 100, soon)
	fillRevocations(t, e, 100, maxRevocations-100, e.clock.now().Add(time.Hour))
	tok := e.mustLogin(t, "orders", key)
	sibling := e.mustLogin(t, "orders", key)
	bystander := e.mustLogin(t, "payments", otherKey)
	frees := soon.Add(defaultLeeway).Format(time.RFC3339)
	resp := e.mustOK(t, logical.UpdateOperation, "revoke", map[string]any{"token": tok})
	if resp.Data["revoked"] != true || resp.Data["service_revoked"] != true {
		t.Fatalf("revoke with the set full: %#v", resp.Data)
	}
	if len(resp.Warnings) != 1 {
		t.Fatalf("warnings %v", resp.Warnings)
	}
	for _, want := range []string{"20000 tokens are already revoked", frees, "every token of service orders"} {
		if !strings.Contains(resp.Warnings[0], want) {
			t.Errorf("warning %q lacks %q", resp.Warnings[0], want)
		}
	}
	for _, tk := range []string{tok, sibling} {
		if ok, reason := e.verify(t, tk, nil); ok || reason != reasonServiceRevoked {
			t.Fatalf("token of the revoked service: %v %s", ok, reason)
		}
	}
	if ok, reason := e.verify(t, bystander, nil); !ok {
		t.Fatalf("another service's token: %s", reason)
	}
	if n := e.b.revoked.size(); n != maxRevocations {
		t.Fatalf("set holds %d; want %d (nothing added)", n, maxRevocations)
	}
	// Once the first revoked tokens expire, revoke makes room itself and
	// revokes one token again.
	e.clock.advance(11 * time.Minute)
	fresh := e.mustLogin(t, "orders", key)
	resp = e.mustOK(t, logical.UpdateOperation, "revoke", map[string]any{"token": fresh})
	if resp.Data["service_revoked"] != nil {
		t.Fatalf("with room, revoke escalated: %#v", resp.Data)
	}
	if ok, reason := e.verify(t, fresh, nil); ok || reason != reasonTokenRevoked {
		t.Fatalf("after room freed: %v %s", ok, reason)
	}
	if n := e.b.revoked.size(); n != maxRevocations-100+1 {
		t.Fatalf("set holds %d; want %d", n, maxRevocations-100+1)
	}
	// Revoking it again needs no room.
	fillRevocations(t, e, maxRevocations, 99, e.clock.now().Add(time.Hour))
	e.b.revoked.reset()
	e.mustOK(t, logical.UpdateOperation, "revoke", map[string]any{"token": fresh})
}

func TestRevocationMarksOfUnseenTokensDoNotPileUp(t *testing.T) {
	a := getTestBackend(t)
	key := a.register(t, "orders", nil)
	good := a.mustLogin(t, "orders", key)
	b, _ := secondNode(t, a)
	if ok, _ := b.verify(t, good, nil); !ok {
		t.Fatal("good token invalid")
	}
	// A standby hears of 1,000 revokes of tokens nobody presents to it.
	before := storageReads(b)
	for i := range 1000 {
		b.b.invalidate(t.Context(), storageRevokedPrefix+fmt.Sprintf("%026d", i))
		if ok, _ := b.verify(t, good, nil); !ok {
			t.Fatal("good token invalid")
		}
	}
	if n := len(b.b.revoked.pending); n >= maxPending {
		t.Fatalf("%d marks pending; the bound is %d", n, maxPending)
	}
	if n := storageReads(b) - before; n > 1000 {
		t.Fatalf("1000 invalidations cost %d reads; want at most one each", n)
	}
}
