package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/datapunk/vault-plugin-secrets-meshauth/client"
	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// appRole logs in with AppRole, as vault/api/auth/approle does.
type appRole struct{ roleID, secretID string }

func (a appRole) Login(ctx context.Context, c *api.Client) (*api.Secret, error) {
	return c.Logical().WriteWithContext(ctx, "auth/approle/login", map[string]any{"role_id": a.roleID, "secret_id": a.secretID})
}

// vaultHTTPClient trusts the test Vault's CA: what a Verifier built from
// the issuer URL needs against a Vault with its own CA (make dev's too).
func vaultHTTPClient(t *testing.T, s *vaultlab.Server) *http.Client {
	caPEM, err := os.ReadFile(s.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
}

func keyPair(t *testing.T, c *vaultlab.Cert) tls.Certificate {
	pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// TestServiceBehindSidecar runs the service side as a mesh does: orders
// logs in to Vault with AppRole (the TokenSource keeps that Vault login
// alive and logs in again when its renewals end) and calls payments through
// payments' sidecar, a Go reverse proxy on loopback that terminates the
// caller's mutual TLS and forwards the verified certificate in
// X-Forwarded-Client-Cert. payments verifies the token offline with a
// Verifier built from the issuer URL, trusting the header from its sidecar
// only (by the sidecar's client certificate); anyone else who sends it is
// not believed.
func TestServiceBehindSidecar(t *testing.T) {
	s := vaultlab.StartDevServer(t)
	s.RegisterPlugin(mount)
	issuer := s.Addr + "/v1/" + mount
	s.MustCLI(t, "write", mount+"/config", "issuer="+issuer, "allow_get_login=true")
	s.MustCLI(t, "secrets", "tune", "-passthrough-request-headers="+client.APIKeyHeader, mount)
	ca := vaultlab.NewCA(t, s.Dir, "mesh")
	orders := ca.Issue(t, s.Dir, "orders", []string{"orders.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	thief := ca.Issue(t, s.Dir, "thief", []string{"thief.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	sidecarClient := ca.Issue(t, s.Dir, "sidecar", []string{"payments.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	serverCert := ca.Issue(t, s.Dir, "server", nil, []net.IP{net.IPv4(127, 0, 0, 1)}, x509.ExtKeyUsageServerAuth)
	key := vaultlab.JSONData(t, s.MustCLI(t, "write", mount+"/services/orders", "ca_chain=@"+ca.File, "hostnames=orders.mesh", "allowed_audiences=payments"))["api_key"].(string)

	// AppRole for orders: a short token life and max TTL, so renewal ends
	// within the test and the source must log in to Vault again.
	s.MustCLI(t, "auth", "enable", "approle")
	policy := fmt.Sprintf(`path "%s/login/orders" { capabilities = ["read", "update"] }`, mount)
	policyFile := s.Dir + "/orders-policy.hcl"
	if err := os.WriteFile(policyFile, []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	s.MustCLI(t, "policy", "write", "orders", policyFile)
	s.MustCLI(t, "write", "auth/approle/role/orders", "token_policies=orders", "token_ttl=2s", "token_max_ttl=4s")
	roleID := vaultlab.JSONData(t, s.MustCLI(t, "read", "-format=json", "auth/approle/role/orders/role-id"))["role_id"].(string)
	secretID := vaultlab.JSONData(t, s.MustCLI(t, "write", "-format=json", "-f", "auth/approle/role/orders/secret-id"))["secret_id"].(string)

	vault, err := s.ClientWith("", orders)
	if err != nil {
		t.Fatal(err)
	}
	source, err := client.NewTokenSource(client.TokenSourceConfig{Vault: vault, Auth: appRole{roleID, secretID}, Mount: mount, Service: "orders", APIKey: key, Audience: []string{"payments"}})
	if err != nil {
		t.Fatal(err)
	}
	defer source.Stop()
	source.Start(t.Context())

	meshCAs := x509.NewCertPool()
	meshCAs.AddCert(ca.X509)

	// payments: mutual TLS (certificate optional, so the header path is
	// exercised without one too), verifying offline from the issuer URL.
	verifier, err := meshtoken.NewVerifier(t.Context(), meshtoken.VerifierConfig{
		DiscoveryURL: issuer + "/.well-known/openid-configuration",
		Audience:     "payments",
		HTTPClient:   vaultHTTPClient(t, s),
		TrustedProxies: &meshtoken.TrustedProxies{
			Certificates: []string{sidecarClient.X5t()},
			Header:       meshtoken.HeaderXFCC,
		},
	})
	if err != nil {
		t.Fatalf("Verifier from the issuer URL: %v", err)
	}
	payments := httptest.NewUnstartedServer(verifier.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := meshtoken.ClaimsFromContext(r.Context())
		_, _ = io.WriteString(w, c.Subject)
	})))
	payments.TLS = &tls.Config{Certificates: []tls.Certificate{keyPair(t, serverCert)}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: meshCAs, MinVersion: tls.VersionTLS12}
	payments.StartTLS()
	defer payments.Close()

	// The sidecar: terminates the caller's mutual TLS (certificate
	// optional, verified against the mesh CA when given), removes whatever
	// XFCC the caller sent, and forwards the verified certificate.
	paymentsURL, _ := url.Parse(payments.URL)
	sidecar := httptest.NewUnstartedServer(&httputil.ReverseProxy{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: meshCAs, Certificates: []tls.Certificate{keyPair(t, sidecarClient)}, MinVersion: tls.VersionTLS12}},
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(paymentsURL)
			r.Out.Header.Del(meshtoken.HeaderXFCC)
			if r.In.TLS != nil && len(r.In.TLS.VerifiedChains) > 0 {
				leaf := r.In.TLS.PeerCertificates[0]
				sum := sha256.Sum256(leaf.Raw)
				certPEM := url.PathEscape(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})))
				r.Out.Header.Set(meshtoken.HeaderXFCC, fmt.Sprintf(`By=spiffe://mesh/payments;Hash=%s;Cert="%s";Subject="CN=%s"`, hex.EncodeToString(sum[:]), certPEM, leaf.Subject.CommonName))
			}
		},
	})
	sidecar.TLS = &tls.Config{Certificates: []tls.Certificate{keyPair(t, serverCert)}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: meshCAs, MinVersion: tls.VersionTLS12}
	sidecar.StartTLS()
	defer sidecar.Close()

	caller := func(cert *vaultlab.Cert, src *client.TokenSource) *http.Client {
		cfg := &tls.Config{RootCAs: meshCAs, MinVersion: tls.VersionTLS12}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{keyPair(t, cert)}
		}
		base := &http.Transport{TLSClientConfig: cfg}
		t.Cleanup(base.CloseIdleConnections)
		if src == nil {
			return &http.Client{Transport: base, Timeout: 10 * time.Second}
		}
		return &http.Client{Transport: &client.Transport{Source: src, Base: base}, Timeout: 10 * time.Second}
	}
	call := func(c *http.Client, base, token string, header map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, base+"/charge", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(body))
	}

	// orders through the sidecar, its token attached by client.Transport.
	if code, body := call(caller(orders, source), sidecar.URL, "", nil); code != http.StatusOK || body != "orders" {
		t.Fatalf("orders through the sidecar: %d %q", code, body)
	}
	token, err := source.Token(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(orders.X509.Raw)
	spoof := map[string]string{meshtoken.HeaderXFCC: "Hash=" + hex.EncodeToString(sum[:])}
	for name, c := range map[string]struct {
		client *http.Client
		base   string
		header map[string]string
		want   int
	}{
		"stolen token through the sidecar, another mesh certificate":      {caller(thief, nil), sidecar.URL, nil, http.StatusUnauthorized},
		"stolen token through the sidecar, XFCC spoofed by the caller":    {caller(thief, nil), sidecar.URL, spoof, http.StatusUnauthorized},
		"stolen token through the sidecar without a certificate":          {caller(nil, nil), sidecar.URL, nil, http.StatusUnauthorized},
		"stolen token straight to payments, XFCC spoofed":                 {caller(thief, nil), payments.URL, spoof, http.StatusUnauthorized},
		"stolen token straight to payments, no certificate, XFCC spoofed": {caller(nil, nil), payments.URL, spoof, http.StatusUnauthorized},
		"orders straight to payments with its own certificate":            {caller(orders, nil), payments.URL, nil, http.StatusOK},
	} {
		if code, body := call(c.client, c.base, token, c.header); code != c.want {
			t.Errorf("%s: %d %q, want %d", name, code, body, c.want)
		}
	}

	// The Vault token (2s TTL, 4s max) is renewed, then replaced by a new
	// AppRole login; logins keep working throughout.
	deadline := time.Now().Add(30 * time.Second)
	for source.Stats().VaultLogins < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no second Vault login after the max TTL: %+v", source.Stats())
		}
		time.Sleep(100 * time.Millisecond)
	}
	fresh, err := source.FreshToken(t.Context())
	if err != nil || fresh == token {
		t.Fatalf("FreshToken after the Vault login was replaced: %v (same token: %v)", err, fresh == token)
	}
	if code, _ := call(caller(orders, nil), sidecar.URL, fresh, nil); code != http.StatusOK {
		t.Fatalf("fresh token through the sidecar: %d", code)
	}
	st := source.Stats()
	if st.VaultRenewals < 1 || st.VaultRenewalEnds < 1 || st.Logins < 2 {
		t.Fatalf("stats: %+v", st)
	}
}
