package main

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
)

// env is a running Vault with both flows set up, and the one keep-alive
// HTTP client every measurement uses.
type env struct {
	lab          *lab
	s            *vaultlab.Server
	http         *http.Client
	apiKey       string
	ca           *vaultlab.CA
	roots        *x509.CertPool
	noCert       *http.Client
	optionalHTTP *http.Client
	optionalKey  string
	optionalCert *vaultlab.Cert
	stormKey     string
	validToken   string
	roleID       map[string]string
	secretID     map[string]string
	vaultVersion string
}

// flow is one measured operation: one or two HTTP requests.
type flow struct {
	name string
	run  func() error
}

// identity-token variants: AppRole role (service or batch tokens) and the
// identity key's algorithm.
var identityVariants = []struct{ role, key, alg string }{
	{"svc", "rs256", "RS256"},
	{"svc", "es256", "ES256"},
	{"svc", "eddsa", "EdDSA"},
	{"batch", "es256", "ES256"},
}

func setup(l *lab) *env {
	s := vaultlab.StartDevServer(l)
	l.server = s
	s.RegisterPlugin("meshauth")
	e := &env{lab: l, s: s, roleID: map[string]string{}, secretID: map[string]string{}}
	out, _ := exec.Command(vaultlab.VaultBin, "version").Output() //nolint:gosec // our own vault binary
	e.vaultVersion = strings.TrimSpace(string(out))

	// meshauth: a service with an mTLS identity; the client presents its certificate.
	ca := vaultlab.NewCA(l, s.Dir, "mesh")
	cert := ca.Issue(l, s.Dir, "orders", []string{"orders.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	e.apiKey = vaultlab.JSONData(l, s.MustCLI(l, "write", "meshauth/services/orders", "ca_chain=@"+ca.File, "hostnames=orders.mesh"))["api_key"].(string)
	e.ca = ca
	e.optionalCert = ca.Issue(l, s.Dir, optionalService, []string{optionalHostname}, nil, x509.ExtKeyUsageClientAuth)
	e.optionalKey = vaultlab.JSONData(l, s.MustCLI(l, "write", "meshauth/services/"+optionalService, "ca_chain=@"+ca.File, "hostnames="+optionalHostname, "require_mtls=false"))["api_key"].(string)
	s.MustCLI(l, "secrets", "tune", "-allowed-response-headers=ETag", "-passthrough-request-headers=X-Meshauth-Api-Key", "-passthrough-request-headers=If-None-Match", "meshauth")
	s.MustCLI(l, "write", "meshauth/config", "allow_get_login=true")

	// Vault's native flow: AppRole login, then an identity token.
	s.MustCLI(l, "auth", "enable", "approle")
	policy := l.TempDir() + "/oidc.hcl"
	if err := os.WriteFile(policy, []byte(`path "identity/oidc/token/*" { capabilities = ["read"] }`), 0o600); err != nil {
		l.Fatal(err)
	}
	s.MustCLI(l, "policy", "write", "oidc", policy)
	s.MustCLI(l, "write", "auth/approle/role/svc", "token_policies=oidc", "token_ttl=10m")
	s.MustCLI(l, "write", "auth/approle/role/batch", "token_policies=oidc", "token_ttl=10m", "token_type=batch")
	for _, role := range []string{"svc", "batch"} {
		e.roleID[role] = vaultlab.JSONData(l, s.MustCLI(l, "read", "auth/approle/role/"+role+"/role-id"))["role_id"].(string)
		e.secretID[role] = vaultlab.JSONData(l, s.MustCLI(l, "write", "-f", "auth/approle/role/"+role+"/secret-id"))["secret_id"].(string)
	}
	for _, v := range identityVariants {
		s.MustCLI(l, "write", "identity/oidc/key/"+v.key, "algorithm="+v.alg, "allowed_client_ids=*")
		s.MustCLI(l, "write", "identity/oidc/role/orders-"+v.key, "key="+v.key, "ttl=1h")
	}

	caPEM, err := os.ReadFile(s.CAFile)
	if err != nil {
		l.Fatal(err)
	}
	e.roots = x509.NewCertPool()
	e.roots.AppendCertsFromPEM(caPEM)
	e.http = e.clientFor(cert, 64)
	e.optionalHTTP = e.clientFor(e.optionalCert, 64)
	e.noCert = e.clientFor(nil, 64)
	tok, err := e.meshauthLogin()
	if err != nil {
		l.Fatalf("first login: %v", err)
	}
	e.validToken = tok
	for _, f := range e.flows() { // every flow works before anything is timed
		if err := f.run(); err != nil {
			l.Fatalf("flow %s: %v", f.name, err)
		}
	}
	return e
}

// call sends one request through the main client and decodes the JSON
// answer into out (if non-nil).
func (e *env) call(method, path, token string, body any, headers map[string]string, out any) error {
	return e.callWith(e.http, method, path, token, body, headers, out)
}

// callWith sends one request through client c.
func (e *env) callWith(c *http.Client, method, path, token string, body any, headers map[string]string, out any) error {
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.s.Addr+path, rd)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("X-Vault-Token", token)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// secret is the part of Vault's answer the flows read.
type secret struct {
	Data map[string]any `json:"data"`
	Auth struct {
		ClientToken string `json:"client_token"`
	} `json:"auth"`
}

func (e *env) meshauthLogin() (string, error) {
	var s secret
	if err := e.call("POST", "/v1/meshauth/login/orders", e.s.Token, map[string]any{"api_key": e.apiKey}, nil, &s); err != nil {
		return "", err
	}
	return s.Data["token"].(string), nil
}

func (e *env) meshauthLoginGET() error {
	var s secret
	if err := e.call("GET", "/v1/meshauth/login/orders", e.s.Token, nil, map[string]string{"X-Meshauth-Api-Key": e.apiKey}, &s); err != nil {
		return err
	}
	if s.Data["token"] == nil {
		return fmt.Errorf("no token in %v", s.Data)
	}
	return nil
}

// appRoleIdentityToken is Vault's two-call flow: AppRole login, then an
// identity token signed with the given key.
func (e *env) appRoleIdentityToken(role, key string) error {
	var login secret
	if err := e.call("POST", "/v1/auth/approle/login", "", map[string]any{"role_id": e.roleID[role], "secret_id": e.secretID[role]}, nil, &login); err != nil {
		return err
	}
	var tok secret
	if err := e.call("GET", "/v1/identity/oidc/token/orders-"+key, login.Auth.ClientToken, nil, nil, &tok); err != nil {
		return err
	}
	if tok.Data["token"] == nil {
		return fmt.Errorf("no identity token in %v", tok.Data)
	}
	return nil
}

// flows lists everything timed at concurrency 1, in the order each round
// runs them (interleaved: every flow once per round).
func (e *env) flows() []flow {
	fs := []flow{
		{"sys/health", func() error { return e.call("GET", "/v1/sys/health", "", nil, nil, nil) }},
		{"plugin GET (config)", func() error { return e.call("GET", "/v1/meshauth/config", e.s.Token, nil, nil, nil) }},
		{"plugin POST (verify of a malformed token)", func() error {
			return e.call("POST", "/v1/meshauth/verify", e.s.Token, map[string]any{"token": "x"}, nil, nil)
		}},
		{"meshauth login (POST)", func() error { _, err := e.meshauthLogin(); return err }},
		{"meshauth login (GET, header)", e.meshauthLoginGET},
		{"meshauth verify", func() error {
			var s secret
			if err := e.call("POST", "/v1/meshauth/verify", e.s.Token, map[string]any{"token": e.validToken}, nil, &s); err != nil {
				return err
			}
			if s.Data["valid"] != true {
				return fmt.Errorf("verify: %v", s.Data)
			}
			return nil
		}},
		{"meshauth jwks", func() error { return e.call("GET", "/v1/meshauth/jwks", "", nil, nil, nil) }},
		{flowOptCert, func() error { return e.loginGETWith(e.optionalHTTP, optionalService, e.optionalKey) }},
		{flowOptNoCert, func() error { return e.loginGETWith(e.noCert, optionalService, e.optionalKey) }},
	}
	for _, v := range identityVariants {
		fs = append(fs, flow{fmt.Sprintf("AppRole(%s) + identity token %s", v.role, v.alg), func() error { return e.appRoleIdentityToken(v.role, v.key) }})
	}
	return fs
}

// throughputFlows are the flows compared at high concurrency.
func (e *env) throughputFlows() []flow {
	keep := map[string]bool{
		"plugin GET (config)": true, "plugin POST (verify of a malformed token)": true,
		"meshauth login (POST)": true, "meshauth login (GET, header)": true, "meshauth verify": true,
		"AppRole(batch) + identity token ES256": true, "AppRole(svc) + identity token RS256": true,
		flowOptCert: true, flowOptNoCert: true,
	}
	var out []flow
	for _, f := range e.flows() {
		if keep[f.name] {
			out = append(out, f)
		}
	}
	return out
}

// storageOpsPerLogin reads the plugin's own count of storage calls made by
// logins across n steady-state logins.
func (e *env) storageOpsPerLogin(n int) float64 {
	read := func() float64 {
		var s secret
		if err := e.call("GET", "/v1/meshauth/metrics", e.s.Token, nil, nil, &s); err != nil {
			e.lab.Fatal(err)
		}
		v, _ := s.Data["login_storage_operations"].(float64)
		return v
	}
	before := read()
	for range n {
		if _, err := e.meshauthLogin(); err != nil {
			e.lab.Fatal(err)
		}
	}
	return (read() - before) / float64(n)
}

// coldStart is the first login after `vault plugin reload` against the
// steady state, over several reloads.
type coldStart struct {
	first, steady []float64
}

// firstLoginAfterReload reloads the plugin n times and times the first
// login after each, then the median of 20 logins right after.
func (e *env) firstLoginAfterReload(n int) coldStart {
	var c coldStart
	for range n {
		e.s.MustCLI(e.lab, "plugin", "reload", "-plugin="+vaultlab.CatalogName)
		start := now()
		if _, err := e.meshauthLogin(); err != nil {
			e.lab.Fatal(err)
		}
		c.first = append(c.first, msSince(start))
		var steady []float64
		for range 20 {
			start := now()
			if _, err := e.meshauthLogin(); err != nil {
				e.lab.Fatal(err)
			}
			steady = append(steady, msSince(start))
		}
		c.steady = append(c.steady, percentile(sortedCopy(steady), 50))
	}
	return c
}

// msSince is the time since start in milliseconds.
func msSince(start time.Time) float64 {
	return float64(time.Since(start)) / float64(time.Millisecond)
}
