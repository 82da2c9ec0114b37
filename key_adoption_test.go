package meshauth

import (
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestMetricsCountFetchersOfTheNextKey(t *testing.T) {
	e := getTestBackend(t)
	for _, addr := range []string{"10.0.0.1:1111", "10.0.0.1:2222", "10.0.0.2:1111"} {
		if _, err := e.requestWith(t, logical.ReadOperation, "jwks", nil, &logical.Connection{RemoteAddr: addr}); err != nil {
			t.Fatal(err)
		}
	}
	next := ringKey(t, e, keyStateNext).KID
	got := e.mustOK(t, logical.ReadOperation, "metrics", nil).Data["next_key_fetchers"].(map[string]any)
	if got["kid"] != next || got["fetchers"] != 2 {
		t.Fatalf("next_key_fetchers = %v; want 2 fetchers of %s", got, next)
	}
	prom := string(e.mustOK(t, logical.ReadOperation, "metrics", map[string]any{"format": "prometheus"}).Data[logical.HTTPRawBody].([]byte))
	if !strings.Contains(prom, `meshauth_next_key_fetchers{kid="`+next+`"} 2`) || strings.Contains(prom, "10.0.0") {
		t.Fatalf("prometheus:\n%s", prom)
	}
	// A SPIFFE bundle consumer holds the next key too.
	if _, err := e.requestWith(t, logical.ReadOperation, "spiffe/bundle", nil, &logical.Connection{RemoteAddr: "10.0.0.3:1111"}); err != nil {
		t.Fatal(err)
	}
	if got := e.mustOK(t, logical.ReadOperation, "metrics", nil).Data["next_key_fetchers"].(map[string]any); got["fetchers"] != 3 {
		t.Fatalf("after a bundle read next_key_fetchers = %v; want 3", got)
	}
	// A new next key starts a new count.
	e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil)
	if _, err := e.requestWith(t, logical.ReadOperation, "jwks", nil, &logical.Connection{RemoteAddr: "10.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	got = e.mustOK(t, logical.ReadOperation, "metrics", nil).Data["next_key_fetchers"].(map[string]any)
	if got["kid"] == next || got["fetchers"] != 1 {
		t.Fatalf("after rotation next_key_fetchers = %v", got)
	}
}
