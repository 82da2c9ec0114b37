package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// debianPython is the interpreter the Python package supports (Debian's,
// with python3-jwt, python3-cryptography and python3-requests).
const debianPython = "/usr/bin/python3"

// sidecarAddr is the loopback address the sidecar connects to the Python
// service from: the service trusts XFCC from this address only, so a
// caller on 127.0.0.1 is an untrusted peer.
const sidecarAddr = "127.0.0.2"

// TestPythonService runs the Python package against a real Vault: a Python
// service logs in with its client certificate (TokenSource, AppRole) and
// serves behind a TLS-terminating sidecar that forwards XFCC; its verifier
// accepts the service's token with its certificate and refuses it with
// another, without one, and from an untrusted peer; after each revocation
// (one token, a service, a key) and a forced rotation, it reaches the Go
// verifier's verdict within the feed's max-age; with Vault stopped it keeps
// its last keys and feed until their staleness, then answers 503, and
// recovers when Vault returns.
func TestPythonService(t *testing.T) {
	if _, err := os.Stat(debianPython); err != nil {
		t.Skipf("%s is missing (make test-python installs what the Python package needs)", debianPython)
	}
	s := vaultlab.StartDevServer(t)
	const pmount = "mesh-py"
	s.RegisterPlugin(pmount)
	issuer := s.Addr + "/v1/" + pmount
	s.MustCLI(t, "write", pmount+"/config", "issuer="+issuer, "revocation_max_staleness=10s")
	ca := vaultlab.NewCA(t, s.Dir, "mesh")
	orders := ca.Issue(t, s.Dir, "orders", []string{"orders.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	thief := ca.Issue(t, s.Dir, "thief", []string{"thief.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	serverCert := ca.Issue(t, s.Dir, "server", nil, []net.IP{net.IPv4(127, 0, 0, 1)}, x509.ExtKeyUsageServerAuth)
	key := vaultlab.JSONData(t, s.MustCLI(t, "write", pmount+"/services/orders", "ca_chain=@"+ca.File, "hostnames=orders.mesh", "allowed_audiences=payments"))["api_key"].(string)

	s.MustCLI(t, "auth", "enable", "approle")
	policyFile := filepath.Join(s.Dir, "py-orders.hcl")
	if err := os.WriteFile(policyFile, fmt.Appendf(nil, `path "%s/login/orders" { capabilities = ["update"] }`, pmount), 0o600); err != nil {
		t.Fatal(err)
	}
	s.MustCLI(t, "policy", "write", "py-orders", policyFile)
	s.MustCLI(t, "write", "auth/approle/role/py-orders", "token_policies=py-orders", "token_ttl=10m")
	roleID := vaultlab.JSONData(t, s.MustCLI(t, "read", "-format=json", "auth/approle/role/py-orders/role-id"))["role_id"].(string)
	secretID := vaultlab.JSONData(t, s.MustCLI(t, "write", "-format=json", "-f", "auth/approle/role/py-orders/secret-id"))["secret_id"].(string)

	py := startPythonService(t, map[string]any{
		"vault_addr": s.Addr, "vault_ca": s.CAFile, "mount": pmount, "service": "orders", "api_key": key,
		"role_id": roleID, "secret_id": secretID, "cert_file": orders.CertFile, "key_file": orders.KeyFile,
		"audience": "payments", "issuer": issuer, "key_max_staleness": 20, "feed_max_staleness": 10,
		"trusted_networks": []string{sidecarAddr + "/32"},
	})

	// The sidecar: terminates the caller's mutual TLS (certificate optional,
	// verified against the mesh CA), drops any XFCC the caller sent, and
	// forwards the verified certificate, connecting from sidecarAddr.
	meshCAs := x509.NewCertPool()
	meshCAs.AddCert(ca.X509)
	target, _ := url.Parse(py)
	sidecar := httptest.NewUnstartedServer(&httputil.ReverseProxy{
		Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(sidecarAddr)}}).DialContext},
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Header.Del(meshtoken.HeaderXFCC)
			if r.In.TLS != nil && len(r.In.TLS.VerifiedChains) > 0 {
				leaf := r.In.TLS.PeerCertificates[0]
				sum := sha256.Sum256(leaf.Raw)
				certPEM := url.PathEscape(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})))
				r.Out.Header.Set(meshtoken.HeaderXFCC, fmt.Sprintf(`By=spiffe://mesh/payments;Hash=%s;Cert="%s"`, hex.EncodeToString(sum[:]), certPEM))
			}
		},
	})
	sidecar.TLS = &tls.Config{Certificates: []tls.Certificate{keyPair(t, serverCert)}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: meshCAs, MinVersion: tls.VersionTLS12}
	sidecar.StartTLS()
	defer sidecar.Close()

	plain := &http.Client{Timeout: 30 * time.Second}
	get := func(c *http.Client, u, token string, header map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
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
	caller := func(cert *vaultlab.Cert) *http.Client {
		cfg := &tls.Config{RootCAs: meshCAs, MinVersion: tls.VersionTLS12}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{keyPair(t, cert)}
		}
		tr := &http.Transport{TLSClientConfig: cfg}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	pyToken := func(fresh bool) string {
		t.Helper()
		u := py + "/token"
		if fresh {
			u += "?fresh=1"
		}
		code, body := get(plain, u, "", nil)
		if code != http.StatusOK {
			t.Fatalf("the Python service's login: %d %s", code, body)
		}
		return body
	}

	token := pyToken(false)
	var claims struct {
		Cnf struct {
			X5t string `json:"x5t#S256"`
		} `json:"cnf"`
	}
	if parts := strings.Split(token, "."); len(parts) != 3 {
		t.Fatalf("the Python service's login answered %q", token)
	} else if payload, err := base64.RawURLEncoding.DecodeString(parts[1]); err != nil || json.Unmarshal(payload, &claims) != nil {
		t.Fatal("the Python service's token does not decode")
	}
	if claims.Cnf.X5t != orders.X5t() {
		t.Fatalf("the Python service's token is not bound to its certificate: cnf %q", claims.Cnf.X5t)
	}
	sum := sha256.Sum256(orders.X509.Raw)
	spoof := map[string]string{meshtoken.HeaderXFCC: "Hash=" + hex.EncodeToString(sum[:])}
	for _, c := range []struct {
		name   string
		client *http.Client
		base   string
		header map[string]string
		want   int
	}{
		{"orders through the sidecar with its certificate", caller(orders), sidecar.URL, nil, http.StatusOK},
		{"the token through the sidecar with another certificate", caller(thief), sidecar.URL, nil, http.StatusUnauthorized},
		{"the token through the sidecar without a certificate", caller(nil), sidecar.URL, nil, http.StatusUnauthorized},
		{"the token through the sidecar, XFCC spoofed by the caller", caller(thief), sidecar.URL, spoof, http.StatusUnauthorized},
		{"the token from an untrusted peer with XFCC", plain, py, spoof, http.StatusUnauthorized},
	} {
		if code, body := get(c.client, c.base+"/charge", token, c.header); code != c.want || (c.want == http.StatusOK && body != "orders") {
			t.Errorf("%s: %d %q, want %d", c.name, code, body, c.want)
		}
	}

	// The Go verifier, configured as the Python one.
	gov, err := meshtoken.NewVerifier(t.Context(), meshtoken.VerifierConfig{
		DiscoveryURL:       issuer + "/.well-known/openid-configuration",
		Audience:           "payments",
		HTTPClient:         vaultHTTPClient(t, s),
		MinRefetchInterval: time.Second,
		Revocations:        &meshtoken.RevocationConfig{MaxStaleness: 10 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	goVerdict := func(tok string) string {
		_, err := gov.VerifyThumbprint(t.Context(), tok, orders.X5t())
		switch {
		case err == nil:
			return ""
		case meshtoken.ReasonOf(err) != "":
			return meshtoken.ReasonOf(err)
		case errors.Is(err, meshtoken.ErrRevoked):
			return "revoked"
		case errors.Is(err, meshtoken.ErrRevocationsStale):
			return "revocations_stale"
		case errors.Is(err, meshtoken.ErrKeysStale):
			return "keys_stale"
		}
		return err.Error()
	}
	pyVerdict := func(tok string) string {
		_, body := get(plain, py+"/verify?"+url.Values{"token": {tok}, "thumbprint": {orders.X5t()}}.Encode(), "", nil)
		return body
	}
	// agree waits (at most the feed's max-age of 5s, plus a refetch and
	// the test's own polling) until both verifiers answer tok the same,
	// and that answer is one of want.
	agree := func(what, tok string, want ...string) {
		t.Helper()
		deadline := time.Now().Add(12 * time.Second)
		for {
			g, p := goVerdict(tok), pyVerdict(tok)
			if g == p && (len(want) == 0 || slices.Contains(want, g)) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: Go %q, Python %q, want one of %q", what, g, p, want)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	root := s.MustClient()
	agree("a fresh token", token, "")

	vaultlab.Write(t, root, pmount+"/revoke", map[string]any{"token": token})
	agree("after revoke", token, "revoked")

	second := pyToken(true)
	agree("a second token", second, "")
	vaultlab.Write(t, root, pmount+"/services/orders/revoke", nil)
	agree("after services/orders/revoke", second, "revoked")
	third := pyToken(true)
	agree("a token minted after the service revoke", third, "")

	kid := vaultlab.Read(t, root, pmount+"/keys").Data["current_kid"].(string)
	vaultlab.Write(t, root, pmount+"/keys/"+kid+"/revoke", nil)
	agree("after keys/:kid/revoke", third, "revoked", "unknown_key")
	fourth := pyToken(true)
	agree("a token of the key that replaced the removed one", fourth, "")

	vaultlab.Write(t, root, pmount+"/keys/rotate", map[string]any{"force": true})
	agree("a token of the retired key after keys/rotate force=true", fourth, "")
	fifth := pyToken(true)
	agree("a token of the new current key", fifth, "")
	if code, body := get(caller(orders), sidecar.URL+"/charge", fifth, nil); code != http.StatusOK {
		t.Fatalf("the new token through the sidecar: %d %s", code, body)
	}

	t.Run("unwrap_api_key", func(t *testing.T) { pythonUnwrap(t, s, root, py, pmount) })

	// Vault stopped (SIGSTOP: the process is there, answering nothing):
	// the last keys and feed serve until the feed's 10s, then 503.
	if err := syscall.Kill(s.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	continued := false
	resume := func() {
		if !continued {
			continued = true
			_ = syscall.Kill(s.PID(), syscall.SIGCONT)
		}
	}
	defer resume()
	stopped := time.Now()
	if code, body := get(caller(orders), sidecar.URL+"/charge", fifth, nil); code != http.StatusOK {
		t.Fatalf("right after Vault stopped: %d %s", code, body)
	}
	var code int
	for code != http.StatusServiceUnavailable {
		if time.Since(stopped) > 45*time.Second {
			t.Fatalf("still %d %s after Vault stopped", code, time.Since(stopped))
		}
		time.Sleep(500 * time.Millisecond)
		code, _ = get(caller(orders), sidecar.URL+"/charge", fifth, nil)
		if code != http.StatusOK && code != http.StatusServiceUnavailable {
			t.Fatalf("while Vault is stopped: %d", code)
		}
	}
	t.Logf("503 %s after Vault stopped (feed staleness 10s from its last confirmation)", time.Since(stopped).Round(100*time.Millisecond))
	resume()
	deadline := time.Now().Add(30 * time.Second)
	for code != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatalf("no recovery within 30s of Vault returning: %d", code)
		}
		time.Sleep(500 * time.Millisecond)
		code, _ = get(caller(orders), sidecar.URL+"/charge", fifth, nil)
	}
}

// pythonUnwrap drives the Python unwrap_api_key against real wrapped
// answers, as TestAPIKeysDeliveredWrapped drives client.UnwrapAPIKey: this
// service's registration and rotate-key are unwrapped once, then "used"; a
// token of another service or made with sys/wrapping/wrap is refused and
// left unwrapped.
func pythonUnwrap(t *testing.T, s *vaultlab.Server, root *api.Client, py, mount string) {
	type outcome struct {
		Outcome, APIKey, APIKeyID, CreationPath, Message string
	}
	unwrap := func(token, service string) outcome {
		t.Helper()
		body, _ := json.Marshal(map[string]string{"token": token, "service": service})
		resp, err := http.Post(py+"/unwrap", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var o struct {
			Outcome      string `json:"outcome"`
			APIKey       string `json:"api_key"`
			APIKeyID     string `json:"api_key_id"`
			CreationPath string `json:"creation_path"`
			Message      string `json:"message"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&o); err != nil {
			t.Fatalf("/unwrap answered %d: %v", resp.StatusCode, err)
		}
		return outcome(o)
	}
	s.MustCLI(t, "write", mount+"/config", "api_key_wrap_ttl=2m")
	defer s.MustCLI(t, "write", mount+"/config", "api_key_wrap_ttl=0")
	wrapped := func(path string) string {
		t.Helper()
		sec, err := root.Logical().Write(path, nil)
		if err != nil || sec == nil || sec.WrapInfo == nil || sec.Data != nil {
			t.Fatalf("%s: not wrapped: %v %#v", path, err, sec)
		}
		return sec.WrapInfo.Token
	}

	reg := wrapped(mount + "/services/py-wrapped")
	if o := unwrap(reg, "py-wrapped"); o.Outcome != "ok" || !strings.HasPrefix(o.APIKey, "mak_") || o.APIKeyID == "" || o.CreationPath != mount+"/services/py-wrapped" {
		t.Fatalf("registration: %+v", o)
	}
	if o := unwrap(reg, "py-wrapped"); o.Outcome != "WrappingTokenUsed" || !strings.Contains(o.Message, "grace_period=0") || strings.Contains(o.Message, reg) {
		t.Fatalf("the same token again: %+v", o)
	}

	other := wrapped(mount + "/services/py-other")
	if o := unwrap(other, "py-wrapped"); o.Outcome != "WrongCreationPath" {
		t.Fatalf("py-other's token taken for py-wrapped: %+v", o)
	}
	root.SetWrappingLookupFunc(func(string, string) string { return "1m" })
	forged, err := root.Logical().Write("sys/wrapping/wrap", map[string]any{"name": "py-wrapped", "api_key": "mak_forged", "api_key_id": "X"})
	root.SetWrappingLookupFunc(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o := unwrap(forged.WrapInfo.Token, "py-wrapped"); o.Outcome != "WrongCreationPath" {
		t.Fatalf("forged wrapping token: %+v", o)
	}
	// A refused token is not used up: its own service still reads it.
	if o := unwrap(other, "py-other"); o.Outcome != "ok" {
		t.Fatalf("py-other reading its own token: %+v", o)
	}

	rotated := wrapped(mount + "/services/py-wrapped/rotate-key")
	if o := unwrap(rotated, "py-wrapped"); o.Outcome != "ok" || o.CreationPath != mount+"/services/py-wrapped/rotate-key" {
		t.Fatalf("rotate-key: %+v", o)
	}
}

// startPythonService starts python/tests/e2e_service.py with Debian's
// interpreter and the package from this repository, and returns its URL.
// The process ends with the test.
func startPythonService(t *testing.T, cfg map[string]any) string {
	t.Helper()
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, debianPython, filepath.Join(repo, "python", "tests", "e2e_service.py"))
	cmd.Env = append(os.Environ(), "PYTHONPATH="+filepath.Join(repo, "python", "src"), "PYTHONDONTWRITEBYTECODE=1")
	input, _ := json.Marshal(cfg)
	cmd.Stdin = strings.NewReader(string(input))
	logFile, err := os.Create(filepath.Join(t.TempDir(), "python.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logFile
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		logFile.Close()
		if t.Failed() {
			data, _ := os.ReadFile(logFile.Name())
			t.Logf("python service log:\n%s", data)
		}
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if port, ok := strings.CutPrefix(sc.Text(), "ready "); ok {
				ready <- port
			}
		}
		close(ready)
	}()
	select {
	case port, ok := <-ready:
		if !ok {
			t.Fatal("the Python service exited before serving (see its log)")
		}
		return "http://127.0.0.1:" + port
	case <-time.After(30 * time.Second):
		t.Fatal("the Python service did not start within 30s")
	}
	return ""
}
