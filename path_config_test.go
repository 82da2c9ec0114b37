package meshauth

import (
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestConfigDefaults(t *testing.T) {
	e := getTestBackend(t)
	resp := e.mustOK(t, logical.ReadOperation, "config", nil)
	want := map[string]any{
		"issuer":                "meshauth",
		"signing_algorithm":     "ES256",
		"default_ttl":           int64(3600),
		"max_ttl":               int64(86400),
		"key_rotation_period":   int64(86400),
		"verification_ttl":      int64(86430),
		"leeway":                int64(30),
		"lockout_threshold":     5,
		"lockout_duration":      int64(900),
		"lockout_counter_reset": int64(900),
		"api_key_grace_period":  int64(86400),
		"api_key_max_age":       int64(0),
	}
	for k, v := range want {
		if resp.Data[k] != v {
			t.Errorf("%s = %#v, want %#v", k, resp.Data[k], v)
		}
	}
}

func TestConfigUpdateChangesOnlyNamedFields(t *testing.T) {
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"default_ttl": "10m", "issuer": "https://vault.example/v1/meshauth"})
	resp := e.mustOK(t, logical.ReadOperation, "config", nil)
	if resp.Data["default_ttl"] != int64(600) || resp.Data["max_ttl"] != int64(86400) || resp.Data["issuer"] != "https://vault.example/v1/meshauth" {
		t.Fatalf("unexpected config %#v", resp.Data)
	}
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"max_ttl": 7200})
	resp = e.mustOK(t, logical.ReadOperation, "config", nil)
	if resp.Data["default_ttl"] != int64(600) || resp.Data["max_ttl"] != int64(7200) {
		t.Fatalf("second update lost a field: %#v", resp.Data)
	}
}

func TestConfigRefusesBadInput(t *testing.T) {
	cases := []struct {
		name string
		data map[string]any
		want string
	}{
		{"alg none", map[string]any{"signing_algorithm": "none"}, "not supported"},
		{"alg HS256", map[string]any{"signing_algorithm": "HS256"}, "not supported"},
		{"default over max", map[string]any{"default_ttl": "48h"}, "must not exceed max_ttl"},
		{"negative ttl", map[string]any{"max_ttl": -5}, "negative"},
		{"verification shorter than max", map[string]any{"verification_ttl": "1h"}, "must not be shorter than max_ttl"},
		{"tiny rotation", map[string]any{"key_rotation_period": "10s"}, "at least 1m"},
		{"huge leeway", map[string]any{"leeway": "1h"}, "at most 10m"},
		{"negative threshold", map[string]any{"lockout_threshold": -1}, "lockout_threshold"},
		{"empty issuer", map[string]any{"issuer": " "}, "issuer must not be empty"},
		{"unknown field", map[string]any{"default_tll": "1h"}, "unknown field(s) default_tll"},
		{"not a duration", map[string]any{"max_ttl": "soon"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := getTestBackend(t)
			puts := e.storage.puts.Load()
			e.mustFail(t, logical.UpdateOperation, "config", tc.data, tc.want)
			if e.storage.puts.Load() != puts {
				t.Fatal("a refused config update wrote to storage")
			}
		})
	}
}

func TestConfigAlgorithmChangeRotates(t *testing.T) {
	for _, alg := range []string{algES384, algEdDSA, algRS256, algES256} {
		t.Run(alg, func(t *testing.T) {
			e := getTestBackend(t)
			before := e.mustOK(t, logical.ReadOperation, "keys", nil).Data["current_kid"]
			e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"signing_algorithm": alg})
			keys := e.mustOK(t, logical.ReadOperation, "keys", nil)
			if alg != algES256 && keys.Data["current_kid"] == before {
				t.Fatal("changing the algorithm did not rotate")
			}
			for _, k := range keys.Data["keys"].([]map[string]any) {
				if k["state"] != keyStateRetired && k["algorithm"] != alg {
					t.Fatalf("key %v is %v, want %s", k["kid"], k["algorithm"], alg)
				}
			}
			key := e.register(t, "svc", nil)
			tok := e.mustLogin(t, "svc", key)
			if ok, reason := e.verify(t, tok, nil); !ok {
				t.Fatalf("token signed with %s does not verify: %s", alg, reason)
			}
		})
	}
}
