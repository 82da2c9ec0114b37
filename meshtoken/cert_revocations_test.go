package meshtoken

import (
	"errors"
	"testing"
	"time"
)

// A token bound to a certificate the feed lists under certificates is
// refused; one bound to another certificate is not.
func TestVerifierRefusesTokensOfRevokedCertificates(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	exp := time.Now().Add(time.Hour).Unix()
	cert, other := testCert(t), testCert(t)
	revoked := x5t(cert)
	feed := newFeedServer(t, j, kid, map[string]any{
		"iss":          "meshauth",
		"tokens":       map[string]int64{},
		"services":     map[string]any{},
		"disabled":     map[string]int64{},
		"keys":         map[string]int64{},
		"certificates": map[string]int64{revoked: exp},
	})
	v, err := NewVerifier(t.Context(), VerifierConfig{
		DiscoveryURL:     j.srv.URL + "/v1/meshauth/.well-known/openid-configuration",
		AllowAnyAudience: true,
		HTTPClient:       j.srv.Client(),
		Revocations:      &RevocationConfig{URL: feed.srv.URL, MaxStaleness: time.Minute},
	})
	if err != nil {
		t.Fatal(err)
	}
	bad := j.sign(t, kid, map[string]any{"cnf": map[string]any{"x5t#S256": revoked}})
	if _, err := v.Verify(t.Context(), bad, cert); !errors.Is(err, ErrRevoked) {
		t.Fatalf("token of a revoked certificate: %v; want ErrRevoked", err)
	}
	good := j.sign(t, kid, map[string]any{"cnf": map[string]any{"x5t#S256": x5t(other)}})
	if _, err := v.Verify(t.Context(), good, other); err != nil {
		t.Fatalf("token of another certificate: %v", err)
	}
}
