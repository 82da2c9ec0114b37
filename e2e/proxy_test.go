package e2e

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"testing"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
)

// TestBehindTLSTerminatingProxy plays the part of a proxy that terminates
// the service's mutual TLS and forwards the verified client certificate to
// Vault in a header (Vault's x_forwarded_for_client_cert_header). The plugin
// sees the certificate in the same ConnState and applies the same checks.
func TestBehindTLSTerminatingProxy(t *testing.T) {
	s := vaultlab.StartRaftServer(t)
	s.RegisterPlugin("meshauth")
	ca := vaultlab.NewCA(t, s.Dir, "mesh")
	orders := ca.Issue(t, s.Dir, "orders", []string{"orders.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	stranger := vaultlab.NewCA(t, s.Dir, "other").Issue(t, s.Dir, "stranger", []string{"orders.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	key := vaultlab.JSONData(t, s.MustCLI(t, "write", "meshauth/services/orders", "ca_chain=@"+ca.File, "hostnames=orders.mesh"))["api_key"].(string)

	proxyLogin := func(base string, cert *vaultlab.Cert) (int, map[string]any) {
		pemBytes, err := os.ReadFile(cert.CertFile)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(map[string]any{"api_key": key})
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/meshauth/login/orders", bytes.NewReader(body))
		req.Header.Set("X-Vault-Token", s.Token)
		req.Header.Set("X-Forwarded-For", "127.0.0.1")
		req.Header.Set("X-Forwarded-Client-Cert", url.QueryEscape(string(pemBytes)))
		c, _ := s.ClientWith("", nil)
		resp, err := c.CloneConfig().HttpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var out struct {
			Data map[string]any `json:"data"`
		}
		_ = json.Unmarshal(raw, &out)
		return resp.StatusCode, out.Data
	}

	status, data := proxyLogin(s.ProxyAddr, orders)
	if status != http.StatusOK {
		t.Fatalf("login through the proxy listener: %d %v", status, data)
	}
	claims := decodeClaims(t, data["token"].(string))
	if cnf, _ := claims["cnf"].(map[string]any); cnf == nil || cnf["x5t#S256"] != orders.X5t() {
		t.Fatalf("cnf %#v, want the forwarded certificate's x5t#S256", claims["cnf"])
	}
	if status, _ := proxyLogin(s.ProxyAddr, stranger); status != http.StatusForbidden {
		t.Fatalf("a forwarded certificate of another CA: %d", status)
	}
	// The main listener does not trust the header: the same request fails.
	if status, _ := proxyLogin(s.Addr, orders); status != http.StatusForbidden {
		t.Fatalf("the header was trusted on a listener not configured for it: %d", status)
	}
}
