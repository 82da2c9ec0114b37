package meshauth

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// readFeedOn reads revocations from b, with If-None-Match when inm is set.
func readFeedOn(t *testing.T, b *backend, s logical.Storage, inm string) *logical.Response {
	t.Helper()
	req := &logical.Request{Operation: logical.ReadOperation, Path: "revocations", Storage: s, MountPoint: "meshauth/"}
	if inm != "" {
		req.Headers = map[string][]string{"If-None-Match": {inm}}
	}
	resp, err := b.HandleRequest(context.Background(), req)
	if err != nil || resp == nil || resp.IsError() {
		t.Fatalf("read revocations: %v %#v", err, resp)
	}
	return resp
}

// feedOf reads the feed as every Verifier does, with meshtoken.ParseFeed
// and the keys the engine's jwks publishes, so the boundary between the
// engine that writes it and the library that reads it is checked without
// Vault.
func feedOf(t *testing.T, e *testEnv, resp *logical.Response) *meshtoken.Feed {
	t.Helper()
	if resp.Data[logical.HTTPStatusCode] != http.StatusOK || resp.Data[logical.HTTPContentType] != "application/jwt" {
		t.Fatalf("feed answered %v %v", resp.Data[logical.HTTPStatusCode], resp.Data[logical.HTTPContentType])
	}
	raw := string(resp.Data[logical.HTTPRawBody].([]byte))
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(jwksJSONOf(t, e), &set); err != nil {
		t.Fatal(err)
	}
	keys := func(kid string) (meshtoken.Key, error) {
		for _, k := range set.Keys {
			if k["kid"] == kid {
				return meshtoken.ParseJWK(k)
			}
		}
		return meshtoken.Key{}, meshtoken.ErrUnknownKey
	}
	cfg, err := e.b.getConfig(t.Context(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := meshtoken.ParseFeed(raw, keys, cfg.Issuer)
	if err != nil {
		t.Fatalf("meshtoken refuses the engine's feed: %v", err)
	}
	return doc
}

func jwksJSONOf(t *testing.T, e *testEnv) []byte {
	return e.mustOK(t, logical.ReadOperation, "jwks", nil).Data[logical.HTTPRawBody].([]byte)
}

func TestRevocationFeedListsEveryKindOfRevocation(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	e.register(t, "billing", nil)
	e.register(t, "quiet", nil)
	doc := feedOf(t, e, readFeedOn(t, e.b, e.storage, ""))
	if len(doc.Tokens)+len(doc.Services)+len(doc.Disabled)+len(doc.Keys) != 0 || doc.Issuer != defaultIssuer {
		t.Fatalf("feed of a fresh engine: %#v", doc)
	}

	tok := e.mustLogin(t, "orders", key)
	_, claims := decodeJWT(t, tok)
	e.mustOK(t, logical.UpdateOperation, "revoke", map[string]any{"token": tok})
	e.mustOK(t, logical.UpdateOperation, "services/orders/revoke", nil)
	e.mustOK(t, logical.UpdateOperation, "services/billing", map[string]any{"disabled": true})
	cur := ringKey(t, e, keyStateCurrent)
	e.mustOK(t, logical.UpdateOperation, "keys/"+cur.KID+"/revoke", nil)

	doc = feedOf(t, e, readFeedOn(t, e.b, e.storage, ""))
	if doc.Tokens[claims["jti"].(string)] != int64(claims["exp"].(float64)) {
		t.Fatalf("revoked token missing: %v", doc.Tokens)
	}
	svc, _ := e.b.getService(t.Context(), e.storage, "orders")
	if doc.Services["orders"].Gen != svc.entry.generation() || doc.Services["orders"].Gen == claims["gen"] {
		t.Fatalf("orders in feed %#v; its tokens carry %v", doc.Services["orders"], claims["gen"])
	}
	if _, ok := doc.Disabled["billing"]; !ok {
		t.Fatalf("disabled services: %v", doc.Disabled)
	}
	if _, ok := doc.Services["billing"]; !ok {
		t.Fatal("disabling ended billing's tokens but the feed does not say so")
	}
	if _, ok := doc.Keys[cur.KID]; !ok {
		t.Fatalf("removed keys: %v", doc.Keys)
	}
	if _, ok := doc.Services["quiet"]; ok {
		t.Fatal("a service never revoked is in the feed")
	}
}

func TestRevocationFeedETagAndMaxAge(t *testing.T) {
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"revocation_max_staleness": "2m"})
	first := readFeedOn(t, e.b, e.storage, "")
	etag := first.Headers["ETag"][0]
	if !strings.HasPrefix(etag, `"`) || first.Data[logical.HTTPCacheControlHeader] != "max-age=60" {
		t.Fatalf("ETag %q, Cache-Control %v", etag, first.Data[logical.HTTPCacheControlHeader])
	}
	for _, inm := range []string{etag, "W/" + etag, `"other", ` + etag, "*"} {
		resp := readFeedOn(t, e.b, e.storage, inm)
		if resp.Data[logical.HTTPStatusCode] != http.StatusNotModified || resp.Data[logical.HTTPRawBody] != nil || resp.Headers["ETag"][0] != etag {
			t.Fatalf("If-None-Match %s: %#v", inm, resp.Data)
		}
	}
	if resp := readFeedOn(t, e.b, e.storage, `"other"`); resp.Data[logical.HTTPStatusCode] != http.StatusOK {
		t.Fatal("a non-matching If-None-Match got no body")
	}
	// Any revocation changes the validator.
	key := e.register(t, "orders", nil)
	e.mustOK(t, logical.UpdateOperation, "revoke", map[string]any{"token": e.mustLogin(t, "orders", key)})
	if resp := readFeedOn(t, e.b, e.storage, etag); resp.Data[logical.HTTPStatusCode] != http.StatusOK || resp.Headers["ETag"][0] == etag {
		t.Fatal("after a revoke the old ETag still matched")
	}
	e.mustFail(t, logical.UpdateOperation, "config", map[string]any{"revocation_max_staleness": "5s"}, "between 10s and 1h0m0s")
}

func TestRevocationFeedEntriesLeaveWhenTheirTokensExpire(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	resp, err := e.login(t, "orders", key, map[string]any{"ttl": "10m"})
	if err != nil || resp.IsError() {
		t.Fatal(err, resp)
	}
	tok := resp.Data["token"].(string)
	e.mustOK(t, logical.UpdateOperation, "revoke", map[string]any{"token": tok})
	if doc := feedOf(t, e, readFeedOn(t, e.b, e.storage, "")); len(doc.Tokens) != 1 {
		t.Fatal("revoked token not listed")
	}
	// Without tidy: the feed is rendered anew when an entry's time is up.
	e.clock.advance(10*time.Minute + defaultLeeway + 2*time.Minute)
	if doc := feedOf(t, e, readFeedOn(t, e.b, e.storage, "")); len(doc.Tokens) != 0 {
		t.Fatalf("an expired token's revocation stayed: %v", doc.Tokens)
	}
}

// Two nodes over one storage: each renders the feed from stored data, and
// Invalidate drops the other's cached copy. The check fails if Invalidate
// of a revoked/ key leaves the feed cache alone.
func TestRevocationFeedIsIdenticalOnEveryNode(t *testing.T) {
	e := getTestBackend(t)
	standby := newBackend()
	conf := logical.TestBackendConfig()
	conf.StorageView = e.storage
	if err := standby.Setup(t.Context(), conf); err != nil {
		t.Fatal(err)
	}
	standby.now = e.clock.now
	same := func(when string) {
		t.Helper()
		a := readFeedOn(t, e.b, e.storage, "")
		b := readFeedOn(t, standby, e.storage, "")
		if string(a.Data[logical.HTTPRawBody].([]byte)) != string(b.Data[logical.HTTPRawBody].([]byte)) || a.Headers["ETag"][0] != b.Headers["ETag"][0] {
			t.Fatalf("%s: the nodes serve different feeds", when)
		}
	}
	same("fresh")
	key := e.register(t, "orders", nil)
	standby.invalidate(t.Context(), storageServicePrefix+"orders")
	same("after a registration")
	tok := e.mustLogin(t, "orders", key)
	_, claims := decodeJWT(t, tok)
	e.mustOK(t, logical.UpdateOperation, "revoke", map[string]any{"token": tok})
	standby.invalidate(t.Context(), storageRevokedPrefix+claims["jti"].(string))
	same("after a revoke")
	e.mustOK(t, logical.UpdateOperation, "services/orders/revoke", nil)
	standby.invalidate(t.Context(), storageServicePrefix+"orders")
	same("after a service revoke")
	cur := ringKey(t, e, keyStateCurrent)
	e.mustOK(t, logical.UpdateOperation, "keys/"+cur.KID+"/revoke", nil)
	standby.invalidate(t.Context(), storageKeyRing)
	same("after a key removal")
	// Rendering again from scratch gives the same bytes (deterministic
	// signatures), for every algorithm.
	for _, alg := range meshtoken.Algorithms() {
		e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"signing_algorithm": alg})
		standby.invalidate(t.Context(), storageConfig)
		standby.invalidate(t.Context(), storageKeyRing)
		same(alg)
	}
}

// A render that began before a write must not be cached past it, nor
// served to a reader that came after the write.
func TestRevocationFeedRenderRacingAWriteIsNotKept(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	tok := e.mustLogin(t, "orders", key)
	now := e.clock.now()
	_, err := e.b.feed.loadFresh(t.Context(), func(*feedBody) bool { return false }, func() (*feedBody, error) {
		stale, err := e.b.renderFeed(t.Context(), e.storage, now)
		// The revoke lands while this render is in flight.
		e.mustOK(t, logical.UpdateOperation, "revoke", map[string]any{"token": tok})
		return stale, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if doc := feedOf(t, e, readFeedOn(t, e.b, e.storage, "")); len(doc.Tokens) != 1 {
		t.Fatal("a feed rendered before the revoke was served after it")
	}
}

// A deleted service's tokens stay refused offline until they expire, also
// once the name is registered anew; tidy then forgets the tombstone.
func TestRevocationFeedListsDeletedServices(t *testing.T) {
	e := getTestBackend(t)
	e.register(t, "orders", nil)
	e.mustOK(t, logical.DeleteOperation, "services/orders", nil)
	doc := feedOf(t, e, readFeedOn(t, e.b, e.storage, ""))
	if _, ok := doc.Disabled["orders"]; !ok {
		t.Fatalf("a deleted service's tokens are not refused offline: %#v", doc)
	}
	e.register(t, "orders", nil)
	doc = feedOf(t, e, readFeedOn(t, e.b, e.storage, ""))
	svc, _ := e.b.getService(t.Context(), e.storage, "orders")
	if _, ok := doc.Disabled["orders"]; ok || doc.Services["orders"].Gen != svc.entry.generation() {
		t.Fatalf("after re-registration the feed must refuse only the old registration's tokens: %#v", doc)
	}
	e.clock.advance(25 * time.Hour)
	resp := e.mustOK(t, logical.UpdateOperation, "tidy", nil)
	if resp.Data["tombstones_removed"] != 1 {
		t.Fatalf("tidy answered %#v", resp.Data)
	}
	doc = feedOf(t, e, readFeedOn(t, e.b, e.storage, ""))
	if _, ok := doc.Services["orders"]; ok {
		t.Fatalf("the tombstone outlived the tokens it names: %#v", doc)
	}
}

// slowListStorage makes every List of services take a while and counts
// them: one per render.
type slowListStorage struct {
	logical.Storage
	renders atomic.Int64
}

func (s *slowListStorage) List(ctx context.Context, prefix string) ([]string, error) {
	if prefix == storageServicePrefix {
		s.renders.Add(1)
		time.Sleep(20 * time.Millisecond)
	}
	return s.Storage.List(ctx, prefix)
}

// Concurrent readers of an expired feed are served from one render
// (regression: 32 anonymous readers gave 32 renders and signatures).
func TestRevocationFeedRendersOnceForConcurrentReaders(t *testing.T) {
	e := getTestBackend(t)
	e.register(t, "orders", nil)
	slow := &slowListStorage{Storage: e.storage}
	readFeedOn(t, e.b, slow, "")
	e.clock.advance(time.Minute) // the cached feed has expired
	slow.renders.Store(0)
	var wg sync.WaitGroup
	bodies := make([][]byte, 32)
	for i := range bodies {
		wg.Go(func() {
			bodies[i] = readFeedOn(t, e.b, slow, "").Data[logical.HTTPRawBody].([]byte)
		})
	}
	wg.Wait()
	if n := slow.renders.Load(); n != 1 {
		t.Fatalf("32 concurrent readers caused %d renders, want 1", n)
	}
	for _, b := range bodies {
		if string(b) != string(bodies[0]) {
			t.Fatal("concurrent readers were served different feeds")
		}
	}
}

// The feed carries iat, a multiple of its step, and a new one each step even when
// nothing changed, so a verifier counting staleness from iat sees the
// feed's real age.
func TestRevocationFeedCarriesIssuedAt(t *testing.T) {
	e := getTestBackend(t)
	doc := feedOf(t, e, readFeedOn(t, e.b, e.storage, ""))
	// The default revocation_max_staleness (5m) gives a 30s step.
	if want := e.clock.now().Truncate(30 * time.Second).Unix(); doc.IssuedAt != want {
		t.Fatalf("iat %d, want %d", doc.IssuedAt, want)
	}
	e.clock.advance(30 * time.Second)
	if later := feedOf(t, e, readFeedOn(t, e.b, e.storage, "")); later.IssuedAt != doc.IssuedAt+30 {
		t.Fatalf("a step later iat %d, want %d", later.IssuedAt, doc.IssuedAt+30)
	}
}

// The largest feed the engine's limits allow, signed with the largest
// signature it makes, fits what every Verifier reads, and meshtoken reads
// it (regression: 10,000 services created then disabled made a 4.2 MiB feed
// over the Verifier's 4 MiB, and every Verifier failed closed).
func TestRevocationFeedWorstCaseFitsVerifiers(t *testing.T) {
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"signing_algorithm": "RS256"})
	ring, err := e.b.getKeyRing(t.Context(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	const maxNumber = -(1 << 63)
	doc := &meshtoken.Feed{
		Issuer:   strings.Repeat("<", meshtoken.MaxIssuerLength),
		IssuedAt: 1 << 62,
		Tokens:   map[string]int64{},
		Services: map[string]meshtoken.FeedService{},
		Disabled: map[string]int64{},
		Keys:     map[string]int64{},

		Certificates: map[string]int64{},
	}
	for i := range meshtoken.MaxRevokedTokens {
		doc.Tokens[fmt.Sprintf("%026d", i)] = maxNumber
	}
	for i := range meshtoken.MaxRevokedCertificates {
		doc.Certificates[fmt.Sprintf("%043d", i)] = maxNumber
	}
	for i := range meshtoken.MaxServiceNames {
		name := fmt.Sprintf("%0*d", meshtoken.MaxServiceNameLength, i)
		doc.Services[name] = meshtoken.FeedService{Gen: newRegistration() + "." + strconv.Itoa(math.MaxInt), Exp: maxNumber}
		doc.Disabled[name] = maxNumber
	}
	for i := range meshtoken.MaxRemovedKeys {
		doc.Keys[fmt.Sprintf("%043d", i)] = maxNumber
	}
	payload, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signDeterministic(ring.current, meshtoken.RevocationsType, payload)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("worst-case feed: %d bytes; verifiers read up to %d", len(jws), meshtoken.MaxFeedLength)
	if len(jws) > meshtoken.MaxFeedLength {
		t.Fatalf("the worst-case feed is %d bytes, over the %d a Verifier reads", len(jws), meshtoken.MaxFeedLength)
	}
	pub := ring.current.signer.Public()
	got, err := meshtoken.ParseFeed(string(jws), func(string) (meshtoken.Key, error) {
		return meshtoken.Key{Algorithm: ring.current.entry.Algorithm, Public: pub}, nil
	}, doc.Issuer)
	if err != nil || len(got.Tokens) != meshtoken.MaxRevokedTokens {
		t.Fatalf("meshtoken reads the worst-case feed: %v", err)
	}
}

// Creating a service past the mount's name bound is refused; disabling and
// deleting never are, and a tombstone holds its room until tidy.
func TestServiceNamesAreBounded(t *testing.T) {
	e := getTestBackend(t)
	old := maxServiceNames
	maxServiceNames = 3
	t.Cleanup(func() { maxServiceNames = old })
	e.register(t, "a", nil)
	e.register(t, "b", nil)
	e.mustOK(t, logical.DeleteOperation, "services/b", nil)
	e.register(t, "c", nil)
	e.mustFail(t, logical.CreateOperation, "services/d", map[string]any{}, "service names")
	e.mustOK(t, logical.UpdateOperation, "services/a", map[string]any{"disabled": true})
	e.mustOK(t, logical.UpdateOperation, "services/a/revoke", nil)
	e.mustOK(t, logical.DeleteOperation, "services/a", nil)
	e.mustOK(t, logical.UpdateOperation, "services/c", map[string]any{"token_ttl": "5m"})
}

// Concurrent creations of different names cannot race past the bound the
// feed's size counts on (attacker's read: with per-name locks alone, 300
// racing creations stored up to 50 names past a bound of 3).
func TestServiceNameBoundHoldsUnderConcurrentCreations(t *testing.T) {
	e := getTestBackend(t)
	old := maxServiceNames
	maxServiceNames = 3
	t.Cleanup(func() { maxServiceNames = old })
	e.register(t, "a", nil)
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = e.request(t, logical.CreateOperation, fmt.Sprintf("services/team-%d", i), map[string]any{})
		}()
	}
	wg.Wait()
	names, err := e.storage.List(t.Context(), storageServicePrefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 3 {
		t.Fatalf("%d service names stored; the bound is 3", len(names))
	}
}
