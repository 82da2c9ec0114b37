package meshauth

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

func TestServiceCreateReadNeverShowsKey(t *testing.T) {
	e := getTestBackend(t)
	resp := e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{
		"allowed_audiences": "payments,ledger",
		"claims":            map[string]any{"team": "checkout"},
		"metadata":          map[string]any{"owner": "alice"},
		"token_ttl":         "10m",
	})
	key := resp.Data["api_key"].(string)
	if !strings.HasPrefix(key, apiKeyPrefix) || len(key) < 43 {
		t.Fatalf("api key %q is not a 256-bit meshauth key", key)
	}
	if resp.Data["api_key_id"] == "" || resp.Data["name"] != "orders" {
		t.Fatalf("unexpected create response %#v", resp.Data)
	}
	read := e.mustOK(t, logical.ReadOperation, "services/orders", nil)
	flat := strings.Join(flatten(read.Data), " ")
	if strings.Contains(flat, key) || strings.Contains(flat, "hash") {
		t.Fatal("read shows the key or its hash")
	}
	keys := read.Data["api_keys"].([]map[string]any)
	if len(keys) != 1 || keys[0]["id"] != resp.Data["api_key_id"] {
		t.Fatalf("api_keys = %#v", keys)
	}
	if read.Data["token_ttl"] != int64(600) || read.Data["require_mtls"] != false {
		t.Fatalf("read = %#v", read.Data)
	}
	// One spelling reaches a service: another is refused with the path to use.
	e.mustFail(t, logical.ReadOperation, "services/ORDERS", nil, "use meshauth/services/orders")
	list := e.mustOK(t, logical.ListOperation, "services/", nil)
	if got := list.Data["keys"].([]string); len(got) != 1 || got[0] != "orders" {
		t.Fatalf("list = %v", got)
	}
}

func flatten(v any) []string {
	switch x := v.(type) {
	case map[string]any:
		var out []string
		for k, v := range x {
			out = append(out, k)
			out = append(out, flatten(v)...)
		}
		return out
	case []map[string]any:
		var out []string
		for _, m := range x {
			out = append(out, flatten(m)...)
		}
		return out
	case string:
		return []string{x}
	}
	return nil
}

func TestServiceUpdateChangesOnlyNamedFields(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", map[string]any{"allowed_audiences": "payments", "claims": map[string]any{"team": "a"}})
	e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"disabled": true})
	read := e.mustOK(t, logical.ReadOperation, "services/orders", nil)
	if read.Data["disabled"] != true || read.Data["claims"].(map[string]string)["team"] != "a" || len(read.Data["allowed_audiences"].([]string)) != 1 {
		t.Fatalf("update changed more than disabled: %#v", read.Data)
	}
	if resp := e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"disabled": false}); resp != nil {
		t.Fatalf("update answered %#v; only create shows an API key", resp.Data)
	}
	e.mustLogin(t, "orders", key)
}

func TestServiceRefusesBadInputAndWritesNothing(t *testing.T) {
	long := strings.Repeat("a", 300)
	cases := []struct {
		name string
		data map[string]any
		want string
	}{
		{"reserved claim", map[string]any{"claims": map[string]any{"sub": "root"}}, `registered claim "sub"`},
		{"token_ttl over engine max", map[string]any{"token_ttl": "48h"}, "exceeds the engine's max_ttl"},
		{"token_max_ttl over engine max", map[string]any{"token_max_ttl": "25h"}, "exceeds the engine's max_ttl"},
		{"ttl over own max", map[string]any{"token_ttl": "2h", "token_max_ttl": "1h"}, "exceeds token_max_ttl"},
		{"negative ttl", map[string]any{"token_ttl": -1}, "negative"},
		{"default audience outside allowed", map[string]any{"allowed_audiences": "a", "default_audience": "b"}, "not in allowed_audiences"},
		{"empty list entry", map[string]any{"allowed_audiences": []any{"a", ""}}, "empty entry"},
		{"duplicate list entry", map[string]any{"allowed_audiences": "a,a"}, "twice"},
		{"oversized list entry", map[string]any{"allowed_audiences": long}, "longer than"},
		{"require mtls without trust", map[string]any{"require_mtls": true}, "neither certificate, ca_chain nor spiffe_ids"},
		{"unknown field", map[string]any{"token_tll": "1h"}, "unknown field(s) token_tll"},
		{"private key as certificate", map[string]any{"certificate": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}, "private key"},
		{"garbage certificate", map[string]any{"certificate": "not pem"}, "no PEM certificate"},
		{"oversized metadata value", map[string]any{"metadata": map[string]any{"k": strings.Repeat("v", 2000)}}, "longer than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := getTestBackend(t)
			puts := e.storage.puts.Load()
			e.mustFail(t, logical.UpdateOperation, "services/orders", tc.data, tc.want)
			if e.storage.puts.Load() != puts {
				t.Fatal("a refused registration wrote to storage")
			}
			if resp, _ := e.request(t, logical.ReadOperation, "services/orders", nil); resp != nil {
				t.Fatal("a refused registration left a service behind")
			}
		})
	}
}

// A name outside the syntax is refused with a 400 that states the rule, on
// every path that takes a name, instead of Vault's "404 unsupported path"
// (which told the caller nothing), and nothing is written.
func TestInvalidServiceNamesAreRefusedWithTheRule(t *testing.T) {
	e := getTestBackend(t)
	for _, name := range []string{"-lead", ".hidden", strings.Repeat("a", 129), "a b", "ünï"} {
		for _, tc := range []struct {
			op   logical.Operation
			path string
		}{
			{logical.UpdateOperation, "services/" + name},
			{logical.ReadOperation, "services/" + name},
			{logical.UpdateOperation, "login/" + name},
			{logical.UpdateOperation, "services/" + name + "/rotate-key"},
			{logical.UpdateOperation, "services/" + name + "/revoke"},
			{logical.ReadOperation, "services/" + name + "/tls"},
		} {
			puts := e.storage.puts.Load()
			resp, err := e.request(t, tc.op, tc.path, map[string]any{"api_key": "mak_x"})
			if err != nil || resp == nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), serviceNameRule) {
				t.Errorf("%s %q: got %v, %v; want a 400 stating the name rule", tc.op, tc.path, resp, err)
			}
			if e.storage.puts.Load() != puts {
				t.Errorf("%s %q wrote to storage", tc.op, tc.path)
			}
		}
	}
	// A slash is a path separator, never part of a name: no path matches.
	if _, err := e.request(t, logical.UpdateOperation, "services/a/b", nil); err == nil {
		t.Error(`"services/a/b" was accepted`)
	}
}

func TestServiceDeleteStopsLoginAndVerify(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	tok := e.mustLogin(t, "orders", key)
	e.mustOK(t, logical.DeleteOperation, "services/orders", nil)
	if _, err := e.login(t, "orders", key, nil); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("login after delete: %v", err)
	}
	if ok, reason := e.verify(t, tok, nil); ok || reason != reasonUnknownService {
		t.Fatalf("verify after delete: %v %s", ok, reason)
	}
}

func TestServiceExistenceCheckSeparatesCreateFromUpdate(t *testing.T) {
	e := getTestBackend(t)
	req := &logical.Request{Operation: logical.UpdateOperation, Path: "services/orders", Storage: e.storage}
	found, exists, err := e.b.HandleExistenceCheck(t.Context(), req)
	if err != nil || !found || exists {
		t.Fatalf("before create: found=%v exists=%v err=%v", found, exists, err)
	}
	e.register(t, "orders", nil)
	_, exists, _ = e.b.HandleExistenceCheck(t.Context(), req)
	if !exists {
		t.Fatal("existence check does not see the service")
	}
}

func TestRotateKeyGracePeriod(t *testing.T) {
	e := getTestBackend(t)
	old := e.register(t, "orders", nil)
	resp := e.mustOK(t, logical.UpdateOperation, "services/orders/rotate-key", map[string]any{"grace_period": "1h"})
	fresh := resp.Data["api_key"].(string)
	if fresh == old || resp.Data["api_key_id"] == "" {
		t.Fatal("rotate-key did not issue a new key")
	}
	e.mustLogin(t, "orders", old)
	e.mustLogin(t, "orders", fresh)
	e.clock.advance(61 * time.Minute)
	if _, err := e.login(t, "orders", old, nil); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("old key after grace: %v", err)
	}
	e.mustLogin(t, "orders", fresh)

	// grace_period=0 ends the old key at once, and prunes it.
	resp = e.mustOK(t, logical.UpdateOperation, "services/orders/rotate-key", map[string]any{"grace_period": 0})
	if _, err := e.login(t, "orders", fresh, nil); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("old key with zero grace: %v", err)
	}
	e.mustLogin(t, "orders", resp.Data["api_key"].(string))
	if keys := e.mustOK(t, logical.ReadOperation, "services/orders", nil).Data["api_keys"].([]map[string]any); len(keys) != 1 {
		t.Fatalf("expired keys were kept: %v", keys)
	}
	e.mustFail(t, logical.UpdateOperation, "services/nobody/rotate-key", nil, "not registered")
}

func TestRotateKeyFailedWriteKeepsOldKey(t *testing.T) {
	e := getTestBackend(t)
	old := e.register(t, "orders", nil)
	e.storage.failPut.Store(true)
	resp, err := e.request(t, logical.UpdateOperation, "services/orders/rotate-key", nil)
	e.storage.failPut.Store(false)
	if err == nil || (resp != nil && resp.Data["api_key"] != nil) {
		t.Fatalf("rotate-key with failing storage answered %#v, %v", resp, err)
	}
	e.mustLogin(t, "orders", old)
}

func TestAPIKeyMaxAge(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"api_key_max_age": "2h"})
	e.mustLogin(t, "orders", key)
	e.clock.advance(2*time.Hour + time.Second)
	if _, err := e.login(t, "orders", key, nil); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("key past max age: %v", err)
	}
}

func TestServiceRevokeStopsEarlierTokensOnly(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	before := e.mustLogin(t, "orders", key)
	e.clock.advance(2 * time.Second)
	e.mustOK(t, logical.UpdateOperation, "services/orders/revoke", nil)
	if ok, reason := e.verify(t, before, nil); ok || reason != reasonServiceRevoked {
		t.Fatalf("token from before revoke: %v %s", ok, reason)
	}
	// Same second as the revoke: still a good token.
	after := e.mustLogin(t, "orders", key)
	if ok, reason := e.verify(t, after, nil); !ok {
		t.Fatalf("token minted right after revoke: %s", reason)
	}
	e.mustOK(t, logical.UpdateOperation, "services/orders/revoke", map[string]any{"disable": true})
	if _, err := e.login(t, "orders", key, nil); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("login after revoke with disable: %v", err)
	}
}

func TestClaimNamesCannotShadowRegisteredClaims(t *testing.T) {
	e := getTestBackend(t)
	for _, name := range []string{"sub", "SUB", "Aud", "EXP", "\u017fub", "\u212aid", "Cnf", "gen", "x5t#s256", "CRIT"} {
		t.Run(name, func(t *testing.T) {
			e.mustFail(t, logical.UpdateOperation, "services/orders", map[string]any{"claims": map[string]any{name: "payments"}}, "claims may not set")
		})
	}
	// The example: none of these may reach a token.
	e.mustFail(t, logical.UpdateOperation, "services/orders", map[string]any{"claims": "SUB=payments,AUD=x,EXP=4102444800"}, "claims may not set")
	if entry, _ := readService(t.Context(), e.storage, "orders"); entry != nil {
		t.Fatal("a refused registration stored something")
	}

	// An entry stored by an older release with such a claim fails closed at
	// login instead of minting a token other readers see as another service.
	key := e.register(t, "orders", map[string]any{"claims": map[string]any{"team": "checkout"}})
	entry, _ := readService(t.Context(), e.storage, "orders")
	entry.Claims["SUB"] = "payments"
	raw, _ := logical.StorageEntryJSON(storageServicePrefix+"orders", entry)
	if err := e.storage.Put(t.Context(), raw); err != nil {
		t.Fatal(err)
	}
	e.b.dropService("orders")
	if _, err := e.login(t, "orders", key, nil); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("login with a stored shadowing claim: %v", err)
	}
}

func TestMintedRegisteredClaimsComeLast(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", map[string]any{"claims": map[string]any{"team": "checkout"}})
	tok := e.mustLogin(t, "orders", key)
	payload, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	if !strings.HasPrefix(string(payload), `{"team":"checkout","iss":`) {
		t.Fatalf("payload %s: extra claims must come before the registered ones", payload)
	}
}

func TestClaimsThatCouldOverflowATokenAreRefused(t *testing.T) {
	e := getTestBackend(t)
	big := map[string]any{}
	for i := range 12 {
		big[fmt.Sprintf("c%02d", i)] = strings.Repeat("x", 1000)
	}
	e.mustFail(t, logical.UpdateOperation, "services/orders", map[string]any{"claims": big}, "over the 16384-byte limit")
	for i := range 6 {
		delete(big, fmt.Sprintf("c%02d", i))
	}
	e.register(t, "orders", map[string]any{"claims": big})
	// Audiences count too: every allowed audience may be asked for at once.
	auds := make([]string, 0, 40)
	for i := range 40 {
		auds = append(auds, fmt.Sprintf("%03d-%s", i, strings.Repeat("a", 240)))
	}
	e.mustFail(t, logical.UpdateOperation, "services/orders", map[string]any{"allowed_audiences": strings.Join(auds, ",")}, "over the 16384-byte limit")
}

func TestAddingTrustMaterialTurnsMTLSOn(t *testing.T) {
	ca := newTestCA(t, "mesh-ca")
	e := getTestBackend(t)
	e.register(t, "orders", nil)
	resp := e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"ca_chain": ca.pem})
	if resp == nil || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "require_mtls is now true") {
		t.Fatalf("update answered %#v; want a warning that mTLS is on", resp)
	}
	if read := e.mustOK(t, logical.ReadOperation, "services/orders", nil); read.Data["require_mtls"] != true {
		t.Fatal("adding ca_chain left require_mtls off")
	}
	// Naming require_mtls keeps the operator's choice, and says so when it
	// leaves trust material unused.
	e.register(t, "legacy", nil)
	resp = e.mustOK(t, logical.UpdateOperation, "services/legacy", map[string]any{"ca_chain": ca.pem, "require_mtls": false})
	if resp != nil && len(resp.Warnings) > 0 {
		t.Fatalf("explicit require_mtls=false warned: %v", resp.Warnings)
	}
	resp = e.mustOK(t, logical.UpdateOperation, "services/legacy", map[string]any{"ca_chain": ca.pem})
	if resp == nil || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "require_mtls stays false") {
		t.Fatalf("update answered %#v; want a warning that mTLS stays off", resp)
	}
}

func TestDisablingEndsTokensForGood(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	tok := e.mustLogin(t, "orders", key)
	e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"disabled": true})
	e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"disabled": false})
	if ok, reason := e.verify(t, tok, nil); ok || reason != reasonServiceRevoked {
		t.Fatalf("token from before the disable: %v %q", ok, reason)
	}
	if ok, reason := e.verify(t, e.mustLogin(t, "orders", key), nil); !ok {
		t.Fatalf("token after re-enabling: %s", reason)
	}
}

func TestBrokenStoredEntryDoesNotLockItsInstancesOut(t *testing.T) {
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"lockout_threshold": 2})
	key := e.register(t, "orders", map[string]any{"claims": map[string]any{"team": "checkout"}})
	entry, _ := readService(t.Context(), e.storage, "orders")
	entry.Claims["SUB"] = "payments"
	raw, _ := logical.StorageEntryJSON(storageServicePrefix+"orders", entry)
	if err := e.storage.Put(t.Context(), raw); err != nil {
		t.Fatal(err)
	}
	e.b.dropService("orders")
	for range 3 {
		if _, err := e.login(t, "orders", key, nil); !errors.Is(err, logical.ErrPermissionDenied) {
			t.Fatalf("login with a broken stored entry: %v", err)
		}
	}
	e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"claims": map[string]any{"team": "checkout"}})
	e.mustLogin(t, "orders", key) // not locked out by the server's own fault
}

// The service-name syntax has one spelling, its length the one the
// revocation feed's size bound counts on.
func TestServiceNameSyntaxIsOneSpelling(t *testing.T) {
	e := getTestBackend(t)
	long := strings.Repeat("a", meshtoken.MaxServiceNameLength)
	e.register(t, long, nil)
	e.mustFail(t, logical.CreateOperation, "services/"+long+"a", map[string]any{}, "")
	if serviceNameSyntax != `[a-z0-9][a-z0-9._-]{0,127}` {
		t.Fatalf("syntax %s", serviceNameSyntax)
	}
}
