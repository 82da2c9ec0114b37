package meshauth

import (
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
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
