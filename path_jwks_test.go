package meshauth

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// An overdue rotation (the periodic function has not run yet) must not
// answer max-age=0, which makes every verifier refetch on every token.
func TestJWKSCacheControlHasAFloor(t *testing.T) {
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"key_rotation_period": "10m", "max_ttl": "1h", "default_ttl": "10m"})
	e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil)
	for _, advance := range []time.Duration{9*time.Minute + 50*time.Second, time.Minute, time.Hour} {
		e.clock.advance(advance)
		for _, path := range []string{"jwks", ".well-known/openid-configuration"} {
			cc := e.mustOK(t, logical.ReadOperation, path, nil).Data[logical.HTTPCacheControlHeader].(string)
			var age int
			if _, err := fmtSscanf(cc, "max-age=%d", &age); err != nil {
				t.Fatal(err)
			}
			if age < 60 {
				t.Fatalf("%s: %s while the rotation is due; want at least 60s", path, cc)
			}
		}
	}
}

func TestJWKSCacheControlNeverPastNextRotation(t *testing.T) {
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"key_rotation_period": "10m", "max_ttl": "2h"})
	e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil)
	e.clock.advance(5 * time.Minute)
	for range 20 {
		resp := e.mustOK(t, logical.ReadOperation, "jwks", nil)
		cc := resp.Data[logical.HTTPCacheControlHeader].(string)
		var age int
		if _, err := fmtSscanf(cc, "max-age=%d", &age); err != nil {
			t.Fatal(err)
		}
		if age > 300 || age < 270 {
			t.Fatalf("max-age %d with 300s to the next rotation", age)
		}
		if resp.Data[logical.HTTPContentType] != "application/json" {
			t.Fatal("jwks is not application/json")
		}
	}
}

func TestDiscoveryDocument(t *testing.T) {
	e := getTestBackend(t)
	doc := func() map[string]any {
		var d map[string]any
		_ = json.Unmarshal(e.mustOK(t, logical.ReadOperation, ".well-known/openid-configuration", nil).Data[logical.HTTPRawBody].([]byte), &d)
		return d
	}
	if d := doc(); d["issuer"] != "meshauth" || d["jwks_uri"] != "/v1/meshauth/jwks" {
		t.Fatalf("discovery %#v", d)
	}
	// The advertised claims are meshtoken's registered claims, all of them
	// (regression: discovery listed 8 of the 10).
	var advertised []string
	for _, c := range doc()["claims_supported"].([]any) {
		advertised = append(advertised, c.(string))
	}
	if !slices.Equal(advertised, meshtoken.RegisteredClaims()) {
		t.Fatalf("claims_supported %v; meshtoken registers %v", advertised, meshtoken.RegisteredClaims())
	}
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"issuer": "https://127.0.0.1:8200/v1/mesh/"})
	if d := doc(); !strings.HasSuffix(d["jwks_uri"].(string), "/v1/mesh/jwks") || !strings.HasPrefix(d["jwks_uri"].(string), "https://") {
		t.Fatalf("discovery %#v", d)
	}
}

// Discovery advertises the revocations feed, so verifiers find it without
// configuration, and config read names the same URLs.
func TestDiscoveryAndConfigNameTheRevocationFeed(t *testing.T) {
	e := getTestBackend(t)
	var d map[string]any
	_ = json.Unmarshal(e.mustOK(t, logical.ReadOperation, ".well-known/openid-configuration", nil).Data[logical.HTTPRawBody].([]byte), &d)
	cfg := e.mustOK(t, logical.ReadOperation, "config", nil).Data
	if d["revocation_endpoint"] != "/v1/meshauth/revocations" || cfg["revocation_endpoint"] != d["revocation_endpoint"] || cfg["jwks_uri"] != d["jwks_uri"] {
		t.Fatalf("discovery %#v, config %#v", d, cfg)
	}
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"issuer": "https://vault.example:8200/v1/meshauth"})
	_ = json.Unmarshal(e.mustOK(t, logical.ReadOperation, ".well-known/openid-configuration", nil).Data[logical.HTTPRawBody].([]byte), &d)
	if d["revocation_endpoint"] != "https://vault.example:8200/v1/meshauth/revocations" {
		t.Fatalf("discovery %#v", d)
	}
}
