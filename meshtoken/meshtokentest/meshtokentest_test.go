package meshtokentest_test

import (
	"errors"
	"testing"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken/meshtokentest"
)

// A Verifier pointed at the fake engine accepts its tokens and refuses the
// ones its feed revokes.
func TestEngineServesAVerifier(t *testing.T) {
	e := meshtokentest.New(t)
	v, err := meshtoken.NewVerifier(t.Context(), e.VerifierConfig("payments"))
	if err != nil {
		t.Fatal(err)
	}
	tok, jti := e.Token(t, "orders", "payments", time.Minute, nil)
	if c, err := v.Verify(t.Context(), tok, nil); err != nil || c.ServiceName() != "orders" {
		t.Fatalf("a token of the fake engine: %v", err)
	}
	e.Revoke(jti, time.Now().Add(time.Minute))
	// A Verifier started after the revoke reads it from the first feed.
	v, err = meshtoken.NewVerifier(t.Context(), e.VerifierConfig("payments"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(t.Context(), tok, nil); !errors.Is(err, meshtoken.ErrRevoked) {
		t.Fatalf("a revoked token: %v", err)
	}
}
