package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"sync/atomic"
	"testing"
	"time"

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

// meshProxy is a TLS-terminating reverse proxy on loopback, written the way
// the README asks: it verifies the caller's client certificate against the
// mesh CAs, drops any X-Forwarded-Client-Cert or X-Forwarded-For the caller
// sent, and forwards the verified certificate URL-encoded to Vault's proxy
// listener. reuse says whether it keeps one upstream connection for every
// caller (HTTP keep-alive, as proxies do by default) or opens a new one for
// each request.
type meshProxy struct {
	url   string
	ca    *x509.CertPool
	dials atomic.Int32
}

func startMeshProxy(t *testing.T, s *vaultlab.Server, reuse bool, meshCAs ...*vaultlab.CA) *meshProxy {
	t.Helper()
	upstream, err := url.Parse(s.ProxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	vaultCA, err := os.ReadFile(s.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(vaultCA)
	p := &meshProxy{}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	transport := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			p.dials.Add(1)
			return dialer.DialContext(ctx, network, addr)
		},
		// HTTP/1.1 upstream: HTTP/2 would multiplex callers on one connection.
		ForceAttemptHTTP2: false,
	}
	if reuse {
		transport.MaxConnsPerHost, transport.MaxIdleConnsPerHost = 1, 1
	} else {
		transport.DisableKeepAlives = true
	}
	t.Cleanup(transport.CloseIdleConnections)
	rp := &httputil.ReverseProxy{
		Transport: transport,
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(upstream)
			r.Out.Host = upstream.Host
			// Rewrite already dropped the caller's X-Forwarded-For; the
			// certificate header is the proxy's to set, never the caller's.
			r.Out.Header.Del("X-Forwarded-Client-Cert")
			r.SetXForwarded()
			if r.In.TLS != nil && len(r.In.TLS.VerifiedChains) > 0 {
				leaf := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.In.TLS.PeerCertificates[0].Raw})
				r.Out.Header.Set("X-Forwarded-Client-Cert", url.QueryEscape(string(leaf)))
			}
		},
	}
	clientCAs := x509.NewCertPool()
	for _, ca := range meshCAs {
		clientCAs.AddCert(ca.X509)
	}
	srv := httptest.NewUnstartedServer(rp)
	srv.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: clientCAs, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	p.url = srv.URL
	p.ca = x509.NewCertPool()
	p.ca.AddCert(srv.Certificate())
	return p
}

// loginResult is what one caller got from a login through the proxy.
type loginResult struct {
	status int
	x5t    string // the token's cnf x5t#S256; "" when none or refused
}

// login logs in as service with key through the proxy, as a separate
// caller presenting cert (nil: none) and, if spoof is set, sending its own
// X-Forwarded-Client-Cert header.
func (p *meshProxy) login(t *testing.T, token, service, key string, cert *vaultlab.Cert, spoof *vaultlab.Cert) loginResult {
	t.Helper()
	cfg := &tls.Config{RootCAs: p.ca, MinVersion: tls.VersionTLS12}
	if cert != nil {
		pair, err := tls.LoadX509KeyPair(cert.CertFile, cert.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	// Each caller has its own connection to the proxy.
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
	body, _ := json.Marshal(map[string]any{"api_key": key})
	req, _ := http.NewRequest(http.MethodPost, p.url+"/v1/meshauth/login/"+service, bytes.NewReader(body))
	req.Header.Set("X-Vault-Token", token)
	if spoof != nil {
		pemBytes, err := os.ReadFile(spoof.CertFile)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Forwarded-Client-Cert", url.QueryEscape(string(pemBytes)))
		req.Header.Set("X-Forwarded-For", "127.0.0.1")
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	res := loginResult{status: resp.StatusCode}
	var out struct {
		Data map[string]any `json:"data"`
	}
	if json.Unmarshal(raw, &out) == nil && resp.StatusCode == http.StatusOK {
		tok, _ := out.Data["token"].(string)
		if tok == "" {
			t.Fatalf("login answered 200 without a token: %s", raw)
		}
		if cnf, _ := decodeClaims(t, tok)["cnf"].(map[string]any); cnf != nil {
			res.x5t, _ = cnf["x5t#S256"].(string)
		}
	}
	return res
}

// proxyCaller is one caller of the proxy scenarios.
type proxyCaller struct {
	name    string
	service string
	cert    *vaultlab.Cert // presented to the proxy; nil for none
	spoof   *vaultlab.Cert // sent in its own X-Forwarded-Client-Cert
}

// TestProxyReusingConnectionsFailsClosed reproduces Vault 1.21's handling of
// x_forwarded_for_client_cert_header over a keep-alive proxy connection:
// Vault prepends each request's forwarded certificate to the connection's
// shared TLS state, so a later request on that connection carries the
// certificates of earlier callers. The plugin refuses every such chain; what
// it cannot see (a request without a certificate that inherits exactly one
// earlier caller's) is why the README requires a fresh upstream connection
// per request, which TestProxyWithFreshConnectionsIsSafe checks.
func TestProxyReusingConnectionsFailsClosed(t *testing.T) {
	s := vaultlab.StartRaftServer(t)
	s.RegisterPlugin("meshauth")
	mesh := vaultlab.NewCA(t, s.Dir, "mesh")
	orders := mesh.Issue(t, s.Dir, "orders", []string{"orders.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	billing := mesh.Issue(t, s.Dir, "billing", []string{"billing.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	keys := registerProxyServices(t, s, mesh)
	p := startMeshProxy(t, s, true, mesh)

	if r := p.login(t, s.Token, "orders", keys["orders"], orders, nil); r.status != http.StatusOK || r.x5t != orders.X5t() {
		t.Fatalf("first login on a fresh upstream connection: %+v", r)
	}
	// Vault's own hazard, out of the plugin's sight: a caller without a
	// certificate right after orders carries orders' certificate alone.
	if r := p.login(t, s.Token, "orders", keys["orders"], nil, nil); r.status == http.StatusOK {
		t.Logf("as documented: over a reused connection Vault 1.21 gave a request without a certificate the previous caller's (cnf %s)", r.x5t)
	}
	// billing's own certificate arrives after orders': not one leaf and
	// its CAs, refused.
	if r := p.login(t, s.Token, "billing", keys["billing"], billing, nil); r.status == http.StatusOK {
		t.Errorf("billing logged in on a chain that carries orders' certificate after its own: %+v", r)
	}
	// A caller holding billing's API key but no certificate now inherits
	// [billing, orders]: it must not log in as billing.
	if r := p.login(t, s.Token, "billing", keys["billing"], nil, nil); r.status == http.StatusOK {
		t.Errorf("a request without a certificate logged in with billing's certificate: %+v", r)
	}
	// Past eight accumulated certificates the chain is over the limit too;
	// every login on this connection keeps failing closed.
	for i := range 8 {
		if r := p.login(t, s.Token, "orders", keys["orders"], orders, nil); r.status == http.StatusOK {
			t.Errorf("login %d with accumulated certificates succeeded: %+v", i+1, r)
		}
	}
	if n := p.dials.Load(); n != 1 {
		t.Fatalf("the proxy opened %d upstream connections; the scenario needs one reused connection", n)
	}
}

// TestProxyWithFreshConnectionsIsSafe runs the setup the README documents:
// the proxy opens a new upstream connection for every request (no
// keep-alive to Vault), sets X-Forwarded-Client-Cert only from a verified
// client certificate and drops the caller's own; Vault's proxy listener
// trusts the headers only from the proxy's address, refuses requests
// without them and requests no client certificate itself. Different callers,
// callers without a certificate and callers forging the header take turns
// for many requests; each logs in exactly when its own certificate allows,
// bound to that certificate.
func TestProxyWithFreshConnectionsIsSafe(t *testing.T) {
	s := vaultlab.StartRaftServer(t)
	s.RegisterPlugin("meshauth")
	mesh := vaultlab.NewCA(t, s.Dir, "mesh")
	other := vaultlab.NewCA(t, s.Dir, "other")
	orders := mesh.Issue(t, s.Dir, "orders", []string{"orders.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	billing := mesh.Issue(t, s.Dir, "billing", []string{"billing.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	stranger := other.Issue(t, s.Dir, "stranger", []string{"orders.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	keys := registerProxyServices(t, s, mesh)
	p := startMeshProxy(t, s, false, mesh, other)

	callers := []proxyCaller{
		{"orders", "orders", orders, nil},
		{"no certificate, orders' key", "orders", nil, nil},
		{"billing", "billing", billing, nil},
		{"billing's certificate, orders' key", "orders", billing, nil},
		{"no certificate, billing's key", "billing", nil, nil},
		{"forged header with orders' certificate", "orders", nil, orders},
		{"billing forging orders' certificate", "orders", billing, orders},
		{"another CA", "orders", stranger, nil},
	}
	requests := 0
	for round := range 3 {
		for _, c := range callers {
			requests++
			r := p.login(t, s.Token, c.service, keys[c.service], c.cert, c.spoof)
			own := c.cert != nil && c.spoof == nil && c.cert.X509.Subject.CommonName == c.service
			switch {
			case own && (r.status != http.StatusOK || r.x5t != c.cert.X5t()):
				t.Fatalf("round %d, %s: %+v; want a token bound to its own certificate", round+1, c.name, r)
			case !own && r.status == http.StatusOK:
				t.Fatalf("round %d, %s logged in with a certificate it did not present: cnf %s", round+1, c.name, r.x5t)
			}
		}
	}
	if n := int(p.dials.Load()); n != requests {
		t.Fatalf("%d upstream connections for %d requests; the safe setup opens one per request", n, requests)
	}
}

// registerProxyServices registers orders and billing, each with the mesh CA
// and its own hostname, and returns their API keys.
func registerProxyServices(t *testing.T, s *vaultlab.Server, mesh *vaultlab.CA) map[string]string {
	t.Helper()
	keys := map[string]string{}
	for _, name := range []string{"orders", "billing"} {
		out := s.MustCLI(t, "write", "meshauth/services/"+name, "ca_chain=@"+mesh.File, fmt.Sprintf("hostnames=%s.mesh", name))
		keys[name] = vaultlab.JSONData(t, out)["api_key"].(string)
	}
	return keys
}
