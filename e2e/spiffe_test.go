package e2e

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
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
			"services/orders": {"spiffe_ids", "trust_domains", "token_subject", "/*"},
			"config":          {"trust_domain"},
			"spiffe/bundle":   {"jwt-svid", "spiffe_sequence", "spiffe_refresh_hint"},
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
