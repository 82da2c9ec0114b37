package e2e

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
)

// spiffeMount is this test's mount; nothing may depend on the default path.
const spiffeMount = "mesh-spiffe"

// TestSPIFFEIdentity registers services by SPIFFE ID in a real Vault, logs in
// over mTLS with SPIRE-shaped certificates, and checks the JWT-SVIDs with
// go-spiffe against the bundle the engine serves, across a key rotation.
func TestSPIFFEIdentity(t *testing.T) {
	s := vaultlab.StartDevServer(t)
	s.RegisterPlugin(spiffeMount)
	td := spiffeid.RequireTrustDomainFromString("mesh.example")
	ordersID := "spiffe://mesh.example/ns/shop/sa/orders"

	ca := vaultlab.NewCA(t, s.Dir, "spiffe-mesh")
	orders := ca.IssueSVID(t, s.Dir, "svid-orders", ordersID)
	admin := ca.IssueSVID(t, s.Dir, "svid-admin", "spiffe://mesh.example/ns/shop/sa/admin")
	twoIDs := ca.IssueSVID(t, s.Dir, "svid-two", ordersID, "spiffe://mesh.example/ns/shop/sa/admin")
	foreignTD := ca.IssueSVID(t, s.Dir, "svid-foreign", "spiffe://other.example/ns/shop/sa/orders")
	legacy := ca.Issue(t, s.Dir, "legacy", []string{"legacy.mesh"}, nil, x509.ExtKeyUsageClientAuth)

	t.Run("go-spiffe parses the suite's certificates as X.509-SVIDs", func(t *testing.T) {
		svid, err := x509svid.Load(orders.CertFile, orders.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		if svid.ID.String() != ordersID || len(svid.Certificates[0].Subject.Names) != 0 || len(svid.Certificates[0].DNSNames) != 0 {
			t.Fatalf("svid %s subject %q dns %v", svid.ID, svid.Certificates[0].Subject, svid.Certificates[0].DNSNames)
		}
		id, _, err := x509svid.Verify(svid.Certificates, x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.X509}))
		if err != nil || id.String() != ordersID {
			t.Fatalf("x509svid.Verify: %v %s", err, id)
		}
		if _, err := x509svid.Load(twoIDs.CertFile, twoIDs.KeyFile); err == nil {
			t.Fatal("go-spiffe accepted a certificate with two URI SANs")
		}
	})

	s.MustCLI(t, "write", spiffeMount+"/config", "trust_domain=mesh.example")
	s.MustCLI(t, "write", spiffeMount+"/trust_domains/mesh.example", "bundle=@"+ca.File)

	t.Run("registration checks the SPIFFE ID against the certificate", func(t *testing.T) {
		out, err := s.CLI(nil, "write", spiffeMount+"/services/orders", "certificate=@"+twoIDs.CertFile, "ca_chain=@"+ca.File, "spiffe_ids="+ordersID)
		if err == nil || !strings.Contains(out, "2 URI SANs; an X.509-SVID has exactly one") || !strings.Contains(out, "Code: 400") {
			t.Fatalf("two URI SANs: %v %s", err, out)
		}
		out, err = s.CLI(nil, "write", spiffeMount+"/services/orders", "ca_chain=@"+ca.File, "spiffe_ids=spiffe://other.example/ns/shop/sa/orders")
		if err == nil || !strings.Contains(out, `is in trust domain "other.example"`) {
			t.Fatalf("foreign trust domain: %v %s", err, out)
		}
		if out, err := s.CLI(nil, "read", spiffeMount+"/services/orders"); err == nil && !strings.Contains(out, "No value found") {
			t.Fatalf("a refused registration was stored: %s", out)
		}
	})

	out := s.MustCLI(t, "write", spiffeMount+"/services/orders", "certificate=@"+orders.CertFile, "ca_chain=@"+ca.File,
		"spiffe_ids="+ordersID, "token_subject=spiffe_id", "allowed_audiences=payments")
	ordersKey := vaultlab.JSONData(t, out)["api_key"].(string)
	out = s.MustCLI(t, "write", spiffeMount+"/services/legacy", "ca_chain=@"+ca.File, "hostnames=legacy.mesh", "default_audience=payments")
	legacyKey := vaultlab.JSONData(t, out)["api_key"].(string)

	login := func(name, key string, cert *vaultlab.Cert) (map[string]any, error) {
		env := []string{"VAULT_CLIENT_CERT=" + cert.CertFile, "VAULT_CLIENT_KEY=" + cert.KeyFile}
		out, err := s.CLI(env, "write", spiffeMount+"/login/"+name, "api_key="+key, "audience=payments")
		if err != nil {
			return nil, &cliError{out}
		}
		return vaultlab.JSONData(t, out), nil
	}
	bundle := func(t *testing.T) (*spiffebundle.Bundle, map[string]any) {
		t.Helper()
		resp, body := s.RawGet("/v1/" + spiffeMount + "/spiffe/bundle")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("bundle: %d %s", resp.StatusCode, body)
		}
		b, err := spiffebundle.Parse(td, body)
		if err != nil {
			t.Fatalf("spiffebundle.Parse: %v\n%s", err, body)
		}
		var raw map[string]any
		_ = json.Unmarshal(body, &raw)
		return b, raw
	}

	var firstToken string
	before, rawBefore := bundle(t)
	t.Run("login over mTLS with the SVID yields a JWT-SVID go-spiffe validates", func(t *testing.T) {
		data, err := login("orders", ordersKey, orders)
		if err != nil {
			t.Fatal(err)
		}
		firstToken = data["token"].(string)
		claims := decodeClaims(t, firstToken)
		cnf, _ := claims["cnf"].(map[string]any)
		if claims["sub"] != ordersID || claims["aud"] != "payments" || claims["meshauth_service"] != "orders" || cnf == nil || cnf["x5t#S256"] != orders.X5t() {
			t.Fatalf("claims %#v", claims)
		}
		svid, err := jwtsvid.ParseAndValidate(firstToken, before, []string{"payments"})
		if err != nil || svid.ID.String() != ordersID {
			t.Fatalf("jwtsvid: %v %v", err, svid)
		}
		if _, err := jwtsvid.ParseAndValidate(firstToken, before, []string{"ledger"}); err == nil {
			t.Fatal("jwtsvid accepted the wrong audience")
		}
		sec := vaultlab.Write(t, s.MustClient(), spiffeMount+"/verify", map[string]any{"token": firstToken, "audience": "payments"})
		if sec.Data["valid"] != true || sec.Data["service"] != "orders" {
			t.Fatalf("verify %#v", sec.Data)
		}
	})

	t.Run("other SVIDs of the same CA are refused", func(t *testing.T) {
		for name, cert := range map[string]*vaultlab.Cert{"another ID": admin, "two URI SANs": twoIDs, "another trust domain": foreignTD, "a DNS certificate": legacy} {
			if _, err := login("orders", ordersKey, cert); err == nil || !strings.Contains(err.Error(), "meshauth: login refused") {
				t.Fatalf("%s: %v", name, err)
			}
		}
	})

	t.Run("DNS-hostname services are unchanged", func(t *testing.T) {
		data, err := login("legacy", legacyKey, legacy)
		if err != nil {
			t.Fatal(err)
		}
		claims := decodeClaims(t, data["token"].(string))
		if claims["sub"] != "legacy" || claims["meshauth_service"] != nil || claims["cnf"].(map[string]any)["x5t#S256"] != legacy.X5t() {
			t.Fatalf("claims %#v", claims)
		}
		if _, err := login("legacy", legacyKey, orders); err == nil {
			t.Fatal("an SVID without the DNS SAN logged in as a hostname service")
		}
	})

	t.Run("across a key rotation", func(t *testing.T) {
		s.MustCLI(t, "write", spiffeMount+"/keys/rotate", "force=true")
		data, err := login("orders", ordersKey, orders)
		if err != nil {
			t.Fatal(err)
		}
		second := data["token"].(string)
		after, rawAfter := bundle(t)
		if rawAfter["spiffe_sequence"].(float64) <= rawBefore["spiffe_sequence"].(float64) || rawAfter["spiffe_refresh_hint"].(float64) <= 0 {
			t.Fatalf("sequence %v -> %v, hint %v", rawBefore["spiffe_sequence"], rawAfter["spiffe_sequence"], rawAfter["spiffe_refresh_hint"])
		}
		// The new signing key was in the bundle before it signed: a verifier
		// holding the old bundle accepts the new token, and the new bundle
		// still holds the retired key.
		for name, b := range map[string]*spiffebundle.Bundle{"bundle before rotation": before, "bundle after rotation": after} {
			for tokName, tok := range map[string]string{"token before rotation": firstToken, "token after rotation": second} {
				if _, err := jwtsvid.ParseAndValidate(tok, b, []string{"payments"}); err != nil {
					t.Fatalf("%s with %s: %v", tokName, name, err)
				}
			}
		}
		if decodeHeader(t, second)["kid"] == decodeHeader(t, firstToken)["kid"] {
			t.Fatal("rotation did not change the signing key")
		}
	})

	t.Run("path-help explains every new field and path", func(t *testing.T) {
		for path, want := range map[string][]string{
			"services/orders":            {"spiffe_ids", "trust_domains", "withdrawn", "token_subject", "/*", "one registrant"},
			"trust_domains/mesh.example": {"bundle", "operator"},
			"config":                     {"trust_domain"},
			"spiffe/bundle":              {"jwt-svid", "spiffe_sequence", "spiffe_refresh_hint"},
		} {
			help, err := s.CLI([]string{"VAULT_FORMAT=table"}, "path-help", spiffeMount+"/"+path)
			for _, w := range want {
				if err != nil || !strings.Contains(help, w) {
					t.Fatalf("path-help %s lacks %q: %v\n%s", path, w, err, help)
				}
			}
		}
	})
}

// decodeHeader returns a token's JOSE header without checking anything.
func decodeHeader(t *testing.T, token string) map[string]any {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.SplitN(token, ".", 2)[0])
	if err != nil {
		t.Fatal(err)
	}
	var header map[string]any
	if err := json.Unmarshal(raw, &header); err != nil {
		t.Fatal(err)
	}
	return header
}

// docPolicies returns the ACL policies of docs/trust-domains.md (each an
// hcl block starting "# policy: <name>"), rewritten for mount, so the test
// applies exactly what the docs tell operators to write.
func docPolicies(t *testing.T, mount string) map[string]string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "docs", "trust-domains.md"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range regexp.MustCompile("(?s)```hcl\n# policy: (\\S+)\n(.*?)```").FindAllStringSubmatch(string(doc), -1) {
		out[m[1]] = strings.ReplaceAll(m[2], `"meshauth/`, `"`+mount+`/`)
	}
	if len(out) != 2 {
		t.Fatalf("docs/trust-domains.md gives %d policies, want the operator's and a team's", len(out))
	}
	return out
}

// TestTrustDomainsAreTheOperators splits a real Vault's tokens as the docs
// say: an operator token writes config and trust_domains/, a team token
// writes services/team-shop-* only. The team gains nothing beyond its own
// services: it cannot register a trust domain, claim another team's ID,
// cover it with a pattern, bring its own CA or a foreign trust domain; the
// JWT-SVIDs that are minted validate with go-spiffe against spiffe/bundle.
func TestTrustDomainsAreTheOperators(t *testing.T) {
	const m = "mesh-td"
	s := vaultlab.StartDevServer(t)
	s.RegisterPlugin(m)
	tokens := map[string]string{}
	for name, hcl := range docPolicies(t, m) {
		file := filepath.Join(s.Dir, name+".hcl")
		if err := os.WriteFile(file, []byte(hcl), 0o600); err != nil {
			t.Fatal(err)
		}
		s.MustCLI(t, "policy", "write", name, file)
		tokens[name] = jsonData2(t, s.MustCLI(t, "token", "create", "-policy="+name, "-ttl=30m"))
	}
	as := func(who string) func(args ...string) (string, error) {
		return func(args ...string) (string, error) {
			return s.CLI([]string{"VAULT_TOKEN=" + tokens[who]}, args...)
		}
	}
	operator, team := as("meshauth-operator"), as("meshauth-team-shop")
	mustOp := func(args ...string) string {
		t.Helper()
		out, err := operator(args...)
		if err != nil {
			t.Fatalf("operator: vault %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	refused := func(out string, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(out, want) {
			t.Fatalf("want a refusal containing %q; got %v\n%s", want, err, out)
		}
	}

	// The mesh CA as SPIRE runs it: a root, and SVIDs with one URI SAN, an
	// empty subject, no DNS SAN.
	spire := vaultlab.NewCA(t, s.Dir, "spire-root")
	own := vaultlab.NewCA(t, s.Dir, "team-own-ca")
	td := spiffeid.RequireTrustDomainFromString("mesh.example")
	ordersID := "spiffe://mesh.example/ns/shop/sa/orders"
	webID := "spiffe://mesh.example/ns/shop/sa/web"

	t.Run("the team cannot touch trust_domains/ nor config", func(t *testing.T) {
		out, err := team("write", m+"/trust_domains/mesh.example", "bundle=@"+own.File)
		refused(out, err, "permission denied")
		out, err = team("delete", m+"/trust_domains/mesh.example")
		refused(out, err, "permission denied")
		out, err = team("write", m+"/config", "trust_domain=evil.example")
		refused(out, err, "permission denied")
	})

	mustOp("write", m+"/config", "trust_domain=mesh.example")
	mustOp("write", m+"/trust_domains/mesh.example", "bundle=@"+spire.File)
	if out, err := team("read", m+"/trust_domains/mesh.example"); err != nil || !strings.Contains(out, "spire-root") {
		t.Fatalf("the team reads which trust domains exist: %v %s", err, out)
	}
	ordersKey := vaultlab.JSONData(t, mustOp("write", m+"/services/orders", "spiffe_ids="+ordersID, "token_subject=spiffe_id", "allowed_audiences=payments"))["api_key"].(string)

	login := func(name, key string, cert *vaultlab.Cert) (map[string]any, error) {
		out, err := s.CLI([]string{"VAULT_CLIENT_CERT=" + cert.CertFile, "VAULT_CLIENT_KEY=" + cert.KeyFile}, "write", m+"/login/"+name, "api_key="+key, "audience=payments")
		if err != nil {
			return nil, &cliError{out}
		}
		return vaultlab.JSONData(t, out), nil
	}
	jwtSVID := func(t *testing.T, tok, want string) {
		t.Helper()
		_, body := s.RawGet("/v1/" + m + "/spiffe/bundle")
		b, err := spiffebundle.Parse(td, body)
		if err != nil {
			t.Fatal(err)
		}
		svid, err := jwtsvid.ParseAndValidate(tok, b, []string{"payments"})
		if err != nil || svid.ID.String() != want {
			t.Fatalf("go-spiffe: %v %v", err, svid)
		}
	}

	t.Run("a team's writes that would assert another team's ID are refused", func(t *testing.T) {
		svc := m + "/services/team-shop-evil"
		out, err := team("write", svc, "spiffe_ids="+ordersID, "token_subject=spiffe_id", "allowed_audiences=payments")
		refused(out, err, `which service "orders" holds`)
		out, err = team("write", svc, "spiffe_ids=spiffe://mesh.example/ns/shop/*", "allowed_audiences=payments")
		refused(out, err, `which service "orders" holds`)
		out, err = team("write", svc, "ca_chain=@"+own.File, "spiffe_ids=spiffe://evil.example/ns/x", "trust_domains=evil.example")
		refused(out, err, "trust_domains/<name>")
		out, err = team("write", svc, "ca_chain=@"+own.File, "spiffe_ids=spiffe://evil.example/ns/x")
		refused(out, err, "trust_domains/evil.example")
		forged := own.IssueSVID(t, s.Dir, "forged-web", webID)
		out, err = team("write", svc, "certificate=@"+forged.CertFile, "spiffe_ids="+webID)
		refused(out, err, "does not chain to the bundle of trust domain")
		out, err = team("write", m+"/services/orders", "spiffe_ids="+webID)
		refused(out, err, "permission denied")
		if out, err := team("read", svc); err == nil && !strings.Contains(out, "No value found") {
			t.Fatalf("a refused write stored the service: %s", out)
		}
	})

	t.Run("the team's own CA only narrows: its SVIDs do not log in", func(t *testing.T) {
		key := vaultlab.JSONData(t, func() string {
			out, err := team("write", m+"/services/team-shop-web", "ca_chain=@"+own.File, "spiffe_ids="+webID, "token_subject=spiffe_id", "allowed_audiences=payments")
			if err != nil {
				t.Fatal(out)
			}
			return out
		}())["api_key"].(string)
		if _, err := login("team-shop-web", key, own.IssueSVID(t, s.Dir, "own-web", webID)); err == nil || !strings.Contains(err.Error(), "meshauth: login refused") {
			t.Fatalf("login with the team's own SVID: %v", err)
		}
		// An SVID of the mesh does not chain to the team's ca_chain either.
		if _, err := login("team-shop-web", key, spire.IssueSVID(t, s.Dir, "spire-web", webID)); err == nil {
			t.Fatal("login with an SVID outside ca_chain")
		}
		out, err := team("write", m+"/services/team-shop-web", "ca_chain=@"+spire.File)
		if err != nil || !strings.Contains(out, "revoked") {
			t.Fatalf("replacing ca_chain: %v %s", err, out)
		}
		data, err := login("team-shop-web", key, spire.IssueSVID(t, s.Dir, "spire-web2", webID))
		if err != nil {
			t.Fatal(err)
		}
		jwtSVID(t, data["token"].(string), webID)
	})

	t.Run("SPIRE-issued SVIDs get JWT-SVIDs go-spiffe validates", func(t *testing.T) {
		data, err := login("orders", ordersKey, spire.IssueSVID(t, s.Dir, "spire-orders", ordersID))
		if err != nil {
			t.Fatal(err)
		}
		jwtSVID(t, data["token"].(string), ordersID)
	})
}

// buildPreviousRelease builds the plugin as it was before trust domains
// became the operator's (services then listed their own trust_domains),
// from the repository's history.
func buildPreviousRelease(t *testing.T) string {
	t.Helper()
	const rev = "feb53244be055540d8c2dec84f54a72e4bd22718"
	dir := t.TempDir()
	archive := exec.Command("sh", "-c", "git -C .. archive --format=tar "+rev+" | tar -x -C "+dir)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("extracting the previous release %s: %v\n%s", rev, err, out)
	}
	bin := filepath.Join(dir, "bin", vaultlab.PluginName)
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "./cmd/"+vaultlab.PluginName)
	build.Dir = dir
	build.Env = append(os.Environ(), "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the previous release: %v\n%s", err, out)
	}
	return bin
}

// TestTrustDomainsUpgrade: the previous release writes services with their
// own trust_domains; the new build reads them, fails their logins closed
// (saying why) until an operator registers the trust domains, then logs
// them in, a federated one with name tokens.
func TestTrustDomainsUpgrade(t *testing.T) {
	next := os.Getenv("MESHAUTH_PLUGIN_NEXT")
	if next == "" {
		t.Fatal("MESHAUTH_PLUGIN_NEXT must name a second plugin build stamped " + nextVersion + "; make test-e2e builds it")
	}
	const m = "mesh-upgrade"
	prev := buildPreviousRelease(t)
	s := vaultlab.StartDevServer(t)
	vaultlab.CopyPlugin(t, prev, s.PluginDir, vaultlab.PluginName)
	s.RegisterPlugin(m)

	mesh := vaultlab.NewCA(t, s.Dir, "mesh-root")
	partner := vaultlab.NewCA(t, s.Dir, "partner-root")
	ordersID := "spiffe://mesh.example/ns/shop/sa/orders"
	partnerID := "spiffe://partner.example/ns/shop/sa/orders"
	s.MustCLI(t, "write", m+"/config", "trust_domain=mesh.example")
	ordersKey := vaultlab.JSONData(t, s.MustCLI(t, "write", m+"/services/orders", "ca_chain=@"+mesh.File, "spiffe_ids="+ordersID, "token_subject=spiffe_id", "allowed_audiences=payments"))["api_key"].(string)
	partnerKey := vaultlab.JSONData(t, s.MustCLI(t, "write", m+"/services/partner-orders", "ca_chain=@"+partner.File, "spiffe_ids="+partnerID, "trust_domains=partner.example", "default_audience=payments"))["api_key"].(string)
	ordersSVID := mesh.IssueSVID(t, s.Dir, "orders", ordersID)
	partnerSVID := partner.IssueSVID(t, s.Dir, "partner", partnerID)
	login := func(name, key string, cert *vaultlab.Cert) (map[string]any, error) {
		out, err := s.CLI([]string{"VAULT_CLIENT_CERT=" + cert.CertFile, "VAULT_CLIENT_KEY=" + cert.KeyFile}, "write", m+"/login/"+name, "api_key="+key, "audience=payments")
		if err != nil {
			return nil, &cliError{out}
		}
		return vaultlab.JSONData(t, out), nil
	}
	for name, c := range map[string]struct {
		key  string
		cert *vaultlab.Cert
	}{"orders": {ordersKey, ordersSVID}, "partner-orders": {partnerKey, partnerSVID}} {
		if _, err := login(name, c.key, c.cert); err != nil {
			t.Fatalf("previous release: login %s: %v", name, err)
		}
	}

	sum := vaultlab.CopyPlugin(t, next, s.PluginDir, vaultlab.PluginName+"-next")
	s.MustCLI(t, "plugin", "register", "-sha256="+sum, "-command="+vaultlab.PluginName+"-next", "-version="+nextVersion, "secret", vaultlab.CatalogName)
	s.MustCLI(t, "secrets", "tune", "-plugin-version="+nextVersion, m)
	s.MustCLI(t, "plugin", "reload", "-plugin="+vaultlab.CatalogName)
	if mounts := s.MustCLI(t, "secrets", "list", "-detailed"); !strings.Contains(mounts, `"running_plugin_version": "`+nextVersion+`"`) {
		t.Fatalf("mount does not run %s:\n%s", nextVersion, mounts)
	}

	// Until the operator registers the trust domains, both fail closed.
	for name, c := range map[string]struct {
		key  string
		cert *vaultlab.Cert
	}{"orders": {ordersKey, ordersSVID}, "partner-orders": {partnerKey, partnerSVID}} {
		if _, err := login(name, c.key, c.cert); err == nil || !strings.Contains(err.Error(), "meshauth: login refused") {
			t.Fatalf("login %s before the trust domains are registered: %v", name, err)
		}
	}
	read := vaultlab.JSONData(t, s.MustCLI(t, "read", m+"/services/partner-orders"))
	if msg, _ := read["identity_error"].(string); !strings.Contains(msg, "trust_domains/") || !strings.Contains(msg, "partner.example") || read["trust_domains"] == nil {
		t.Fatalf("read after the upgrade: %#v", read)
	}
	if out, err := s.CLI(nil, "write", m+"/services/partner-orders", "trust_domains=partner.example"); err == nil || !strings.Contains(out, "trust_domains/<name>") {
		t.Fatalf("writing trust_domains after the upgrade: %v %s", err, out)
	}

	s.MustCLI(t, "write", m+"/trust_domains/mesh.example", "bundle=@"+mesh.File)
	s.MustCLI(t, "write", m+"/trust_domains/partner.example", "bundle=@"+partner.File)
	data, err := login("orders", ordersKey, ordersSVID)
	if err != nil {
		t.Fatalf("orders after the operator registered its trust domain: %v", err)
	}
	if claims := decodeClaims(t, data["token"].(string)); claims["sub"] != ordersID {
		t.Fatalf("orders claims %#v", claims)
	}
	data, err = login("partner-orders", partnerKey, partnerSVID)
	if err != nil {
		t.Fatalf("partner-orders after the operator registered its trust domain: %v", err)
	}
	if claims := decodeClaims(t, data["token"].(string)); claims["sub"] != "partner-orders" {
		t.Fatalf("partner-orders claims %#v", claims)
	}
}
