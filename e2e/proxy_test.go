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
)

// TestBehindTLSTerminatingProxy plays the part of a proxy that terminates
// the service's mutual TLS and forwards the verified client certificate to
// Vault in a header (Vault's x_forwarded_for_client_cert_header). The plugin
// sees the certificate in the same ConnState and applies the same checks.
func TestBehindTLSTerminatingProxy(t *testing.T) {
	s := startRaftServer(t)
	s.registerPlugin("meshauth")
	ca := newCA(t, s.dir, "mesh")
	orders := ca.issue(t, s.dir, "orders", []string{"orders.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	stranger := newCA(t, s.dir, "other").issue(t, s.dir, "stranger", []string{"orders.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	key := jsonData(t, s.mustCLI(t, "write", "meshauth/services/orders", "ca_chain=@"+ca.file, "hostnames=orders.mesh"))["api_key"].(string)

	proxyLogin := func(base string, cert *clientCert) (int, map[string]any) {
		pemBytes, err := os.ReadFile(cert.certFile)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(map[string]any{"api_key": key})
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/meshauth/login/orders", bytes.NewReader(body))
		req.Header.Set("X-Vault-Token", s.token)
		req.Header.Set("X-Forwarded-For", "127.0.0.1")
		req.Header.Set("X-Forwarded-Client-Cert", url.QueryEscape(string(pemBytes)))
		c, _ := s.clientWith("", nil)
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

	status, data := proxyLogin(s.proxyAddr, orders)
	if status != http.StatusOK {
		t.Fatalf("login through the proxy listener: %d %v", status, data)
	}
	claims := decodeClaims(t, data["token"].(string))
	if cnf, _ := claims["cnf"].(map[string]any); cnf == nil || cnf["x5t#S256"] != orders.x5t() {
		t.Fatalf("cnf %#v, want the forwarded certificate's x5t#S256", claims["cnf"])
	}
	if status, _ := proxyLogin(s.proxyAddr, stranger); status != http.StatusForbidden {
		t.Fatalf("a forwarded certificate of another CA: %d", status)
	}
	// The main listener does not trust the header: the same request fails.
	if status, _ := proxyLogin(s.addr, orders); status != http.StatusForbidden {
		t.Fatalf("the header was trusted on a listener not configured for it: %d", status)
	}
}
