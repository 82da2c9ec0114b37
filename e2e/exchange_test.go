package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// TestTokenExchange: orders calls payments, which calls ledger on orders'
// behalf through exchange/payments (RFC 8693). Three services, three
// certificates: ledger accepts the exchanged token only with payments'
// certificate; payments cannot exchange a token addressed elsewhere, toward
// an audience not in its list, or past its depth; a wrong API key counts
// toward lockout; revoking orders' token ends the exchanged one online at
// once and offline within the feed's max-age.
func TestTokenExchange(t *testing.T) {
	const xm = "mesh-exchange"
	s := vaultlab.StartDevServer(t)
	s.RegisterPlugin(xm)
	root := s.MustClient()
	issuer := s.Addr + "/v1/" + xm
	// The feed's max-age is half of revocation_max_staleness: 5 s.
	s.MustCLI(t, "write", xm+"/config", "issuer="+issuer, "revocation_max_staleness=10s", "lockout_threshold=2")

	ca := vaultlab.NewCA(t, s.Dir, "exchange-mesh")
	certs := map[string]*vaultlab.Cert{}
	keys := map[string]string{}
	for name, extra := range map[string][]string{
		"orders":   {"allowed_audiences=payments,ledger", "default_audience=payments", "claims=tenant=acme"},
		"payments": {"allowed_audiences=ledger", "exchange_audiences=ledger"},
		"ledger":   {"allowed_audiences=payments", "exchange_audiences=payments"},
	} {
		certs[name] = ca.Issue(t, s.Dir, name, []string{name + ".mesh"}, nil, x509.ExtKeyUsageClientAuth)
		args := append([]string{"write", xm + "/services/" + name, "ca_chain=@" + ca.File, "hostnames=" + name + ".mesh"}, extra...)
		keys[name] = vaultlab.JSONData(t, s.MustCLI(t, args...))["api_key"].(string)
	}
	as := func(cert *vaultlab.Cert) []string {
		if cert == nil {
			return nil
		}
		return []string{"VAULT_CLIENT_CERT=" + cert.CertFile, "VAULT_CLIENT_KEY=" + cert.KeyFile}
	}
	login := func(name string, extra ...string) string {
		out, err := s.CLI(as(certs[name]), append([]string{"write", xm + "/login/" + name, "api_key=" + keys[name]}, extra...)...)
		if err != nil {
			t.Fatalf("login %s: %s", name, out)
		}
		return vaultlab.JSONData(t, out)["token"].(string)
	}
	exchange := func(name, key string, cert *vaultlab.Cert, subject, audience string) (map[string]any, error) {
		out, err := s.CLI(as(cert), "write", xm+"/exchange/"+name, "api_key="+key, "subject_token="+subject, "audience="+audience,
			"grant_type=urn:ietf:params:oauth:grant-type:token-exchange")
		if err != nil {
			return nil, errors.New(out)
		}
		return vaultlab.JSONData(t, out), nil
	}

	orig := login("orders")
	data, err := exchange("payments", keys["payments"], certs["payments"], orig, "ledger")
	if err != nil {
		t.Fatalf("exchange: %v", err)
	}
	if data["issued_token_type"] != "urn:ietf:params:oauth:token-type:jwt" || data["token_type"] != "Bearer" || data["jti"] == "" {
		t.Fatalf("answer %#v", data)
	}
	exchanged := data["token"].(string)
	claims := decodeClaims(t, exchanged)
	if claims["sub"] != "orders" || claims["aud"] != "ledger" || claims["tenant"] != "acme" {
		t.Fatalf("claims %#v", claims)
	}
	if act, _ := claims["act"].(map[string]any); act == nil || act["sub"] != "payments" {
		t.Fatalf("act %#v", claims["act"])
	}
	if cnf, _ := claims["cnf"].(map[string]any); cnf == nil || cnf["x5t#S256"] != certs["payments"].X5t() {
		t.Fatalf("cnf %#v; want payments' certificate", claims["cnf"])
	}

	// ledger: a meshtoken Verifier that requires binding, reading the feed.
	caPEM, err := os.ReadFile(s.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	ledger, err := meshtoken.NewVerifier(t.Context(), meshtoken.VerifierConfig{
		DiscoveryURL:       issuer + "/.well-known/openid-configuration",
		Audience:           "ledger",
		RequireBinding:     true,
		MaxDelegationDepth: 1, // ledger opts in to delegated tokens
		AllowedActors:      []string{"payments"},
		HTTPClient:         &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}},
		MinRefetchInterval: time.Second,
		Revocations:        &meshtoken.RevocationConfig{MaxStaleness: 10 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := ledger.Verify(t.Context(), exchanged, certs["payments"].X509)
	if err != nil {
		t.Fatalf("ledger refused the exchanged token with payments' certificate: %v", err)
	}
	if got := c.Actors(); len(got) != 1 || got[0] != "payments" {
		t.Fatalf("actors %v", got)
	}
	if _, err := ledger.Verify(t.Context(), exchanged, certs["orders"].X509); !errors.Is(err, meshtoken.ErrCertMismatch) {
		t.Fatalf("with orders' certificate: %v", err)
	}
	if _, err := ledger.Verify(t.Context(), exchanged, nil); !errors.Is(err, meshtoken.ErrCertMissing) {
		t.Fatalf("with no certificate: %v", err)
	}
	// Nor may orders itself spend its own token at ledger: it is for payments.
	if _, err := ledger.Verify(t.Context(), orig, certs["orders"].X509); err == nil {
		t.Fatal("ledger accepted orders' token addressed to payments")
	}

	t.Run("refusals", func(t *testing.T) {
		for name, tc := range map[string]struct {
			as, subject, audience string
			cert                  *vaultlab.Cert
			want                  string
		}{
			"addressed to someone else": {"payments", login("orders", "audience=ledger"), "ledger", certs["payments"], "wrong_audience"},
			"audience not in the list":  {"payments", orig, "orders", certs["payments"], "not in the exchange_audiences"},
			"with orders' certificate":  {"payments", orig, "ledger", certs["orders"], "login refused"},
			"with no certificate":       {"payments", orig, "ledger", nil, "no client certificate came"},
			"past the depth":            {"ledger", exchanged, "payments", certs["ledger"], "max_delegation_depth"},
		} {
			if _, err := exchange(tc.as, keys[tc.as], tc.cert, tc.subject, tc.audience); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v; want %q", name, err, tc.want)
			}
		}
	})

	t.Run("revoking the original ends the exchanged token", func(t *testing.T) {
		vaultlab.Write(t, root, xm+"/revoke", map[string]any{"token": orig})
		sec := vaultlab.Write(t, root, xm+"/verify", map[string]any{"token": exchanged})
		if sec.Data["valid"] != false || sec.Data["reason"] != "token_revoked" {
			t.Fatalf("online verify right after the revoke: %v", sec.Data)
		}
		start := time.Now()
		for {
			_, err := ledger.Verify(t.Context(), exchanged, certs["payments"].X509)
			if errors.Is(err, meshtoken.ErrRevoked) {
				t.Logf("ledger refused it offline %s after the revoke", time.Since(start).Round(100*time.Millisecond))
				break
			}
			if time.Since(start) > 5*time.Second+2*time.Second {
				t.Fatalf("ledger still accepts the exchanged token %s after the revoke (feed max-age 5s): %v", time.Since(start), err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	t.Run("a wrong API key counts toward lockout", func(t *testing.T) {
		fresh := login("orders")
		for range 2 {
			if _, err := exchange("payments", "mak_wrong", certs["payments"], fresh, "ledger"); err == nil || !strings.Contains(err.Error(), "login refused") {
				t.Fatalf("wrong key: %v", err)
			}
		}
		if _, err := exchange("payments", keys["payments"], certs["payments"], fresh, "ledger"); err == nil || !strings.Contains(err.Error(), "locked") {
			t.Fatalf("the right key after two failures: %v; want the lockout", err)
		}
		if out, err := s.CLI(as(certs["payments"]), "write", xm+"/login/payments", "api_key="+keys["payments"]); err == nil || !strings.Contains(out, "locked") {
			t.Fatalf("login after failed exchanges: %s", out)
		}
	})
}
