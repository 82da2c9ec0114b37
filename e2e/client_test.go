package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/datapunk/vault-plugin-secrets-meshauth/client"
	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// TestClientLibraryAgainstVault drives the service-side library against a
// real Vault: the TokenSource logs in with the header GET and a client
// certificate, the Verifier checks the token offline through discovery
// (requiring its audience and a bound token), an independent OIDC library
// (go-oidc) accepts the same token unchanged, and a TokenSource refused into
// a lockout stops asking Vault until the time the engine names.
func TestClientLibraryAgainstVault(t *testing.T) {
	s := vaultlab.StartDevServer(t)
	s.RegisterPlugin(mount)
	issuer := s.Addr + "/v1/" + mount
	s.MustCLI(t, "write", mount+"/config", "issuer="+issuer, "allow_get_login=true")
	s.MustCLI(t, "secrets", "tune", "-passthrough-request-headers="+client.APIKeyHeader, mount)
	ca := vaultlab.NewCA(t, s.Dir, "mesh")
	orders := ca.Issue(t, s.Dir, "orders", []string{"orders.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	other := ca.Issue(t, s.Dir, "other", []string{"orders.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	key := vaultlab.JSONData(t, s.MustCLI(t, "write", mount+"/services/orders", "ca_chain=@"+ca.File, "hostnames=orders.mesh", "allowed_audiences=payments"))["api_key"].(string)

	vault, err := s.ClientWith(s.Token, orders)
	if err != nil {
		t.Fatal(err)
	}
	source, err := client.NewTokenSource(client.TokenSourceConfig{Vault: vault, Mount: mount, Service: "orders", APIKey: key, Audience: []string{"payments"}, TTL: 5 * time.Minute, PreferGET: true})
	if err != nil {
		t.Fatal(err)
	}
	token, err := source.Token(t.Context())
	if err != nil {
		t.Fatalf("TokenSource: %v", err)
	}

	caPEM, err := os.ReadFile(s.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	httpClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}

	verifier, err := meshtoken.NewVerifier(t.Context(), meshtoken.VerifierConfig{
		DiscoveryURL:   issuer + "/.well-known/openid-configuration",
		Audience:       "payments",
		RequireBinding: true,
		HTTPClient:     httpClient,
	})
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	claims, err := verifier.Verify(t.Context(), token, orders.X509)
	if err != nil || claims.Subject != "orders" || claims.Thumbprint() != orders.X5t() {
		t.Fatalf("offline verify: %v %#v", err, claims)
	}
	if _, err := verifier.Verify(t.Context(), token, other.X509); !errors.Is(err, meshtoken.ErrCertMismatch) {
		t.Fatalf("token presented with another certificate: %v", err)
	}

	// After a rotation, the verifier picks up the new key on first sight.
	s.MustCLI(t, "write", mount+"/keys/rotate", "force=true")
	source2, _ := client.NewTokenSource(client.TokenSourceConfig{Vault: vault, Mount: mount, Service: "orders", APIKey: key})
	rotated, err := source2.Token(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifier.Verify(t.Context(), rotated, orders.X509); err != nil {
		t.Fatalf("token of the rotated key: %v", err)
	}

	// Interoperability: go-oidc, through the discovery document, unchanged.
	ctx := oidc.ClientContext(context.Background(), httpClient)
	provider, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		t.Fatalf("go-oidc discovery: %v", err)
	}
	idToken, err := provider.Verifier(&oidc.Config{ClientID: "payments"}).Verify(ctx, token)
	if err != nil {
		t.Fatalf("go-oidc refuses a meshauth token: %v", err)
	}
	if idToken.Subject != "orders" || idToken.Issuer != issuer {
		t.Fatalf("go-oidc read sub=%q iss=%q", idToken.Subject, idToken.Issuer)
	}
	if _, err := provider.Verifier(&oidc.Config{ClientID: "ledger"}).Verify(ctx, token); err == nil {
		t.Fatal("go-oidc accepted the token for another audience")
	}

	// A lockout, as real Vault carries it (403 and the engine's message):
	// the source stops logging in until the time it names. Another
	// certificate is the locked caller, so orders itself is not locked.
	s.MustCLI(t, "write", mount+"/config", "lockout_threshold=2", "lockout_duration=10m")
	otherVault, err := s.ClientWith(s.Token, other)
	if err != nil {
		t.Fatal(err)
	}
	wrong, err := client.NewTokenSource(client.TokenSourceConfig{Vault: otherVault, Mount: mount, Service: "orders", APIKey: "mak_not-the-key", MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		_, err := wrong.Token(t.Context())
		if errors.Is(err, client.ErrLoginLocked) {
			break
		}
		if i == 50 {
			t.Fatalf("no lockout after 50 refused logins: %v", err)
		}
		time.Sleep(15 * time.Millisecond)
	}
	counters := func() map[string]any {
		services, _ := vaultlab.JSONData(t, s.MustCLI(t, "read", "-format=json", mount+"/metrics"))["services"].(map[string]any)
		orders, _ := services["orders"].(map[string]any)
		return orders
	}
	before := counters()
	for range 20 {
		if _, err := wrong.Token(t.Context()); !errors.Is(err, client.ErrLoginLocked) {
			t.Fatalf("Token during the lockout: %v", err)
		}
	}
	if after := counters(); after["logins_failed"] != before["logins_failed"] || after["refused_as_locked"] != before["refused_as_locked"] {
		t.Fatalf("the source kept logging in during the lockout: before %v, after %v", before, after)
	}
}
