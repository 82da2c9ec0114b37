package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// TestCertificateRevocation: a CRL served over HTTP on loopback; a good
// certificate logs in; once the CA revokes it, its login is refused within
// the CRL's refresh interval, and the token already bound to it is refused
// offline by the meshtoken Verifier reading the feed, and by verify.
func TestCertificateRevocation(t *testing.T) {
	const rmount = "mesh-crl"
	s := vaultlab.StartDevServer(t)
	s.RegisterPlugin(rmount)
	root := s.MustClient()
	issuer := s.Addr + "/v1/" + rmount
	s.MustCLI(t, "write", rmount+"/config", "issuer="+issuer, "revocation_max_staleness=10s")

	ca := vaultlab.NewCA(t, s.Dir, "crl-mesh")
	var (
		mu      sync.Mutex
		number  int64
		revoked []*big.Int
		hits    atomic.Int64
	)
	// CRLs valid 4 s: refreshed about every 2 s.
	crlSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		mu.Lock()
		number++
		der := ca.CRL(t, number, 4*time.Second, revoked...)
		mu.Unlock()
		_, _ = w.Write(der)
	}))
	defer crlSrv.Close()
	cert := ca.IssueRevocable(t, s.Dir, "orders-rev", []string{"orders.mesh"}, crlSrv.URL+"/mesh.crl")

	key := vaultlab.JSONData(t, s.MustCLI(t, "write", rmount+"/services/orders", "ca_chain=@"+ca.File, "hostnames=orders.mesh", "allowed_audiences=payments", "revocation_check=crl"))["api_key"].(string)
	login := func() (string, error) {
		out, err := s.CLI([]string{"VAULT_CLIENT_CERT=" + cert.CertFile, "VAULT_CLIENT_KEY=" + cert.KeyFile}, "write", rmount+"/login/orders", "api_key="+key, "audience=payments")
		if err != nil {
			return "", errors.New(out)
		}
		return vaultlab.JSONData(t, out)["token"].(string), nil
	}
	token, err := login()
	if err != nil {
		t.Fatalf("good certificate refused: %v", err)
	}
	if hits.Load() == 0 {
		t.Fatal("the CRL was never fetched")
	}

	caPEM, err := os.ReadFile(s.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	v, err := meshtoken.NewVerifier(t.Context(), meshtoken.VerifierConfig{
		DiscoveryURL:       issuer + "/.well-known/openid-configuration",
		Audience:           "payments",
		HTTPClient:         &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}},
		MinRefetchInterval: time.Second,
		Revocations:        &meshtoken.RevocationConfig{MaxStaleness: 10 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(t.Context(), token, cert.X509); err != nil {
		t.Fatalf("token of a good certificate refused offline: %v", err)
	}

	mu.Lock()
	revoked = append(revoked, cert.X509.SerialNumber)
	mu.Unlock()
	revokedAt := time.Now()

	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := login(); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("login of a revoked certificate still succeeds 15 s after the CRL listed it")
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("login refused %s after revocation", time.Since(revokedAt).Round(100*time.Millisecond))

	deadline = time.Now().Add(30 * time.Second)
	for {
		_, err := v.Verify(t.Context(), token, cert.X509)
		if errors.Is(err, meshtoken.ErrRevoked) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token of a revoked certificate still verifies offline: %v", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	sec := vaultlab.Write(t, root, rmount+"/verify", map[string]any{"token": token})
	if sec.Data["valid"].(bool) || sec.Data["reason"] != "certificate_revoked" {
		t.Fatalf("online verify: %v", sec.Data)
	}
	m := vaultlab.Read(t, root, rmount+"/metrics").Data["certificate_revocation"].(map[string]any)
	if m["certificate_revoked"] == nil {
		t.Fatalf("metrics: %v", m)
	}
}
