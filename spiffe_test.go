package meshauth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hashicorp/vault/sdk/logical"
)

const testTD = "mesh.example"

// svidOptions shape a SPIRE-style X.509-SVID: URI SANs only, empty subject.
type svidOptions struct {
	uris     []string
	dns      []string
	keyUsage x509.KeyUsage
	isCA     bool
}

// issueSVID signs an X.509-SVID-shaped leaf from the CA.
func (ca *testPKI) issueSVID(tb testing.TB, o svidOptions) (*x509.Certificate, *ecdsa.PrivateKey, string) {
	tb.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		DNSNames:              o.dns,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(12 * time.Hour),
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		IsCA:                  o.isCA,
		BasicConstraintsValid: true,
	}
	if o.keyUsage != 0 {
		tmpl.KeyUsage = o.keyUsage
	}
	for _, s := range o.uris {
		u, err := url.Parse(s)
		if err != nil {
			tb.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key, pemCert(der)
}

// trustDomain registers a trust domain with the CAs' bundle, as an operator.
func (e *testEnv) trustDomain(tb testing.TB, td string, cas ...*testPKI) {
	tb.Helper()
	bundle := ""
	for _, ca := range cas {
		bundle += ca.pem
	}
	e.mustOK(tb, logical.UpdateOperation, "trust_domains/"+td, map[string]any{"bundle": bundle})
}

// svidConn is a real TLS connection state in which the caller presents an SVID.
func (ca *testPKI) svidConn(tb testing.TB, o svidOptions) *logical.Connection {
	tb.Helper()
	cert, key, _ := ca.issueSVID(tb, o)
	return tlsConn(handshake(tb, []*x509.Certificate{cert}, key))
}

func TestParseSPIFFEID(t *testing.T) {
	good := []string{
		"spiffe://mesh.example",
		"spiffe://mesh.example/ns/shop/sa/orders",
		"spiffe://a-b_c.9/Path.With-Mixed_Case/x",
		"spiffe://" + strings.Repeat("a", 255) + "/x",
		"spiffe://td/" + strings.Repeat("p", 2048-len("spiffe://td/")),
	}
	for _, s := range good {
		id, err := parseSPIFFEID(s)
		if err != nil || id.String() != s {
			t.Errorf("parseSPIFFEID(%q) = %v, %v; want it back unchanged", s, id, err)
		}
	}
	bad := map[string]string{
		"":                                            "spiffe://",
		"SPIFFE://mesh.example/x":                     "spiffe://",
		"https://mesh.example/x":                      "spiffe://",
		"spiffe:mesh.example/x":                       "spiffe://",
		"spiffe:///x":                                 "no trust domain",
		"spiffe://Mesh.example/x":                     `character 'M'`,
		"spiffe://mesh.example:8443/x":                `character ':'`,
		"spiffe://user@mesh.example/x":                `character '@'`,
		"spiffe://mesh.example/x?y=1":                 `character '?'`,
		"spiffe://mesh.example/x#frag":                `character '#'`,
		"spiffe://mesh.example/a%2Fb":                 `character '%'`,
		"spiffe://mesh.example/a b":                   `character ' '`,
		"spiffe://mesh.example/caf\u00e9":             "byte 0xc3",
		"spiffe://mesh.example/":                      "empty path segment",
		"spiffe://mesh.example/a//b":                  "empty path segment",
		"spiffe://mesh.example/a/":                    "empty path segment",
		"spiffe://mesh.example/a/./b":                 `"." path segment`,
		"spiffe://mesh.example/a/../b":                `".." path segment`,
		"spiffe://mesh.example/*":                     `character '*'`,
		"spiffe://" + strings.Repeat("a", 256) + "/x": "at most 255",
		"spiffe://td/" + strings.Repeat("p", 2049-len("spiffe://td/")): "at most 2048",
	}
	for s, want := range bad {
		if _, err := parseSPIFFEID(s); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseSPIFFEID(%q) = %v; want an error containing %q", s, err, want)
		}
	}
}

func TestSPIFFEPatternMatches(t *testing.T) {
	cases := []struct {
		pattern, id string
		want        bool
	}{
		{"spiffe://td/ns/shop/sa/orders", "spiffe://td/ns/shop/sa/orders", true},
		{"spiffe://td/ns/shop/sa/orders", "spiffe://td/ns/shop/sa/orders2", false},
		{"spiffe://td/ns/shop/sa/orders", "spiffe://td/ns/shop/sa/Orders", false},
		{"spiffe://td/ns/shop/sa/orders", "spiffe://other/ns/shop/sa/orders", false},
		{"spiffe://td/ns/shop/*", "spiffe://td/ns/shop/sa/orders", true},
		{"spiffe://td/ns/shop/*", "spiffe://td/ns/shop/x", true},
		{"spiffe://td/ns/shop/*", "spiffe://td/ns/shop", false},
		{"spiffe://td/ns/shop/*", "spiffe://td/ns/shopping", false},
		{"spiffe://td/ns/shop/*", "spiffe://td/ns/shopping/x", false},
		{"spiffe://td/ns/shop/*", "spiffe://td2/ns/shop/x", false},
		{"spiffe://td/*", "spiffe://td/anything/at/all", true},
		{"spiffe://td/*", "spiffe://td", false},
		{"spiffe://td/*", "spiffe://tdx/a", false},
	}
	for _, tc := range cases {
		p, err := parseSPIFFEPattern(tc.pattern)
		if err != nil {
			t.Fatalf("%s: %v", tc.pattern, err)
		}
		id, err := parseSPIFFEID(tc.id)
		if err != nil {
			t.Fatalf("%s: %v", tc.id, err)
		}
		if got := p.matches(id); got != tc.want {
			t.Errorf("%s matches %s = %v, want %v", tc.pattern, tc.id, got, tc.want)
		}
	}
	for s, want := range map[string]string{
		"spiffe://td":        "names a trust domain",
		"spiffe://td/a/*/b":  `character '*'`,
		"spiffe://td/a*":     `character '*'`,
		"spiffe://td//*":     "empty path segment",
		"spiffe://TD/a/*":    `character 'T'`,
		"spiffe://td/a/**":   `character '*'`,
		"spiffe://td/a/../*": `".." path segment`,
	} {
		if _, err := parseSPIFFEPattern(s); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseSPIFFEPattern(%q) = %v; want an error containing %q", s, err, want)
		}
	}
}

func TestRegistrationBySPIFFEID(t *testing.T) {
	ca := newTestCA(t, "mesh-ca")
	_, _, orders := ca.issueSVID(t, svidOptions{uris: []string{"spiffe://" + testTD + "/ns/shop/sa/orders"}})
	_, _, twoURIs := ca.issueSVID(t, svidOptions{uris: []string{"spiffe://" + testTD + "/ns/shop/sa/orders", "spiffe://" + testTD + "/ns/shop/sa/payments"}})
	_, _, noURI := ca.issue(t, "orders", leafOptions{dns: []string{"orders.mesh"}})
	_, _, caFlag := ca.issueSVID(t, svidOptions{uris: []string{"spiffe://" + testTD + "/ns/shop/sa/orders"}, isCA: true, keyUsage: x509.KeyUsageDigitalSignature})
	_, _, noDigSig := ca.issueSVID(t, svidOptions{uris: []string{"spiffe://" + testTD + "/ns/shop/sa/orders"}, keyUsage: x509.KeyUsageKeyEncipherment})
	_, _, badURI := ca.issueSVID(t, svidOptions{uris: []string{"spiffe://" + testTD + "/ns/a%20b"}})
	base := func(extra map[string]any) map[string]any {
		d := map[string]any{"ca_chain": ca.pem, "spiffe_ids": "spiffe://" + testTD + "/ns/shop/sa/orders"}
		for k, v := range extra {
			d[k] = v
		}
		return d
	}
	cases := []struct {
		name     string
		trustDom string
		data     map[string]any
		want     string
	}{
		{"trust domain not registered", "", base(map[string]any{"spiffe_ids": "spiffe://unregistered.example/x"}), `is in trust domain "unregistered.example", which is not registered: an operator registers it with its CA bundle at trust_domains/unregistered.example`},
		{"other trust domain", testTD, base(map[string]any{"spiffe_ids": "spiffe://other.example/x"}), `trust_domains/other.example`},
		{"malformed ID", testTD, base(map[string]any{"spiffe_ids": "spiffe://" + testTD + "/a/../b"}), `".." path segment`},
		{"upper-case trust domain", testTD, base(map[string]any{"spiffe_ids": "spiffe://Mesh.example/a"}), `character 'M'`},
		{"trust domain itself", testTD, base(map[string]any{"spiffe_ids": "spiffe://" + testTD}), "names a trust domain, not a workload"},
		{"duplicate", testTD, base(map[string]any{"spiffe_ids": []string{"spiffe://" + testTD + "/a", "spiffe://" + testTD + "/a"}}), "twice"},
		{"with hostnames", testTD, base(map[string]any{"hostnames": "orders.mesh"}), "either by spiffe_ids"},
		{"trust_domains named", testTD, base(map[string]any{"trust_domains": "other.example"}), "trust_domains is withdrawn"},
		{"trust_domains named empty", testTD, base(map[string]any{"trust_domains": ""}), "trust_domains is withdrawn"},
		{"certificate without URI SAN", testTD, base(map[string]any{"certificate": noURI}), "0 URI SANs"},
		{"certificate with two URI SANs", testTD, base(map[string]any{"certificate": twoURIs}), "2 URI SANs"},
		{"certificate of another ID", testTD, base(map[string]any{"certificate": orders, "spiffe_ids": "spiffe://" + testTD + "/ns/shop/sa/payments"}), `SPIFFE ID "spiffe://` + testTD + `/ns/shop/sa/orders" matches none of spiffe_ids`},
		{"certificate that is a CA", testTD, base(map[string]any{"certificate": caFlag}), "is a CA certificate"},
		{"certificate without digitalSignature", testTD, base(map[string]any{"certificate": noDigSig}), "lacks digitalSignature"},
		{"certificate with escaped URI", testTD, base(map[string]any{"certificate": badURI}), `character '%'`},
		{"claims shadowing the service claim", testTD, base(map[string]any{"claims": map[string]any{"Meshauth_\u017fervice": "payments"}}), "meshauth_service"},
		{"unknown token_subject", testTD, base(map[string]any{"token_subject": "cn"}), `token_subject "cn" is not one of`},
		{"JWT-SVID without audience", testTD, base(map[string]any{"token_subject": "spiffe_id"}), "must carry an audience"},
		{"JWT-SVID without spiffe_ids", testTD, map[string]any{"ca_chain": ca.pem, "token_subject": "spiffe_id", "default_audience": "x"}, "register the service's spiffe_ids first"},
		{"JWT-SVID without mTLS", testTD, base(map[string]any{"token_subject": "spiffe_id", "default_audience": "x", "require_mtls": false}), "needs require_mtls=true"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := getTestBackend(t)
			e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"trust_domain": tc.trustDom})
			e.trustDomain(t, testTD, ca)
			for k, v := range tc.data {
				if v == nil {
					delete(tc.data, k)
				}
			}
			e.mustFail(t, logical.UpdateOperation, "services/orders", tc.data, tc.want)
			if entry, _ := readService(t.Context(), e.storage, "orders"); entry != nil {
				t.Fatal("a refused registration stored the service")
			}
		})
	}

	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"trust_domain": testTD})
	e.trustDomain(t, testTD, ca)
	e.trustDomain(t, "partner.example", ca)
	e.register(t, "orders", base(map[string]any{"certificate": orders, "token_subject": "spiffe_id", "default_audience": "payments"}))
	e.register(t, "shop", base(map[string]any{"spiffe_ids": "spiffe://" + testTD + "/ns/shop/sa/web,spiffe://partner.example/ns/shop/*"}))
	read := e.mustOK(t, logical.ReadOperation, "services/shop", nil).Data
	if ids := read["spiffe_ids"].([]string); len(ids) != 2 || read["token_subject"] != "name" || read["trust_domains"] != nil || read["identity_error"] != nil {
		t.Fatalf("read = %#v", read)
	}
	// A federated trust domain gets name tokens only.
	e.mustFail(t, logical.UpdateOperation, "services/shop", map[string]any{"token_subject": "spiffe_id", "default_audience": "x"}, `spiffe_ids entry "spiffe://partner.example/ns/shop/*" is not in it`)
	if uris := e.mustOK(t, logical.ReadOperation, "services/orders", nil).Data["certificate_info"].(map[string]any)["uris"].([]string); len(uris) != 1 {
		t.Fatalf("certificate_info uris = %v", uris)
	}
	// An update that would drop what a JWT-SVID needs is refused too.
	e.mustFail(t, logical.UpdateOperation, "services/orders", map[string]any{"spiffe_ids": []string{}}, "register the service's spiffe_ids first")
}

func TestSPIFFELogin(t *testing.T) {
	ca := newTestCA(t, "mesh-ca")
	other := newTestCA(t, "other-mesh-ca")
	id := "spiffe://" + testTD + "/ns/shop/sa/orders"
	var logs bytes.Buffer
	e := getTestBackendLogging(t, &logs)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"trust_domain": testTD, "lockout_threshold": 0})
	e.trustDomain(t, testTD, ca)
	key := e.register(t, "orders", map[string]any{"ca_chain": ca.pem, "spiffe_ids": "spiffe://" + testTD + "/ns/shop/*", "default_audience": "payments"})

	login := func(conn *logical.Connection) (*logical.Response, error) {
		return mtlsLogin(t, e, "orders", key, conn)
	}
	good := ca.svidConn(t, svidOptions{uris: []string{id}})
	resp, err := login(good)
	if err != nil || resp.IsError() {
		t.Fatalf("login with a matching SVID: %v %#v", err, resp)
	}
	_, claims := decodeJWT(t, resp.Data["token"].(string))
	if claims["sub"] != "orders" || claims[serviceClaim] != nil || claims["cnf"].(map[string]any)["x5t#S256"] != certificateThumbprint(good.ConnState.PeerCertificates[0]) {
		t.Fatalf("token_subject=name claims %#v", claims)
	}
	// DNS SANs are neither required nor consulted.
	if resp, err := login(ca.svidConn(t, svidOptions{uris: []string{id}, dns: []string{"unrelated.example"}})); err != nil || resp.IsError() {
		t.Fatalf("an SVID with a DNS SAN: %v %#v", err, resp)
	}

	refusals := []struct {
		name string
		conn *logical.Connection
		why  string
	}{
		{"the service itself, not under it", ca.svidConn(t, svidOptions{uris: []string{"spiffe://" + testTD + "/ns/shop"}}), "matches none of spiffe_ids"},
		{"a sibling prefix", ca.svidConn(t, svidOptions{uris: []string{"spiffe://" + testTD + "/ns/shopping/sa/x"}}), "matches none of spiffe_ids"},
		{"another trust domain", ca.svidConn(t, svidOptions{uris: []string{"spiffe://other.example/ns/shop/sa/orders"}}), "matches none of spiffe_ids"},
		{"two URI SANs", ca.svidConn(t, svidOptions{uris: []string{id, "spiffe://" + testTD + "/ns/shop/sa/admin"}}), "2 URI SANs"},
		{"no URI SAN", ca.svidConn(t, svidOptions{dns: []string{"orders.mesh"}}), "0 URI SANs"},
		{"another CA", other.svidConn(t, svidOptions{uris: []string{id}}), "does not chain to ca_chain"},
		{"no certificate", &logical.Connection{RemoteAddr: "127.0.0.1"}, "no client certificate"},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			logs.Reset()
			if _, err := login(tc.conn); !errors.Is(err, logical.ErrPermissionDenied) {
				t.Fatalf("err = %v; want the generic permission denied", err)
			}
			if !strings.Contains(logs.String(), tc.why) {
				t.Fatalf("debug log does not name the failed check %q:\n%s", tc.why, logs.String())
			}
		})
	}

	// Deleting the trust domain fails the service's logins closed, not
	// counted toward lockout, with the reason in the log, the metrics and
	// the service's read; registering it again restores them.
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"lockout_threshold": 1})
	e.mustOK(t, logical.DeleteOperation, "trust_domains/"+testTD, nil)
	logs.Reset()
	for range 3 {
		if _, err := login(good); !errors.Is(err, logical.ErrPermissionDenied) {
			t.Fatalf("login after its trust domain was deleted: %v", err)
		}
	}
	if !strings.Contains(logs.String(), "[WARN]") || !strings.Contains(logs.String(), "have no entry at trust_domains/") {
		t.Fatalf("log does not say why:\n%s", logs.String())
	}
	read := e.mustOK(t, logical.ReadOperation, "services/orders", nil)
	if msg, _ := read.Data["identity_error"].(string); !strings.Contains(msg, "trust_domains/"+testTD) || len(read.Warnings) != 1 {
		t.Fatalf("read = %#v %v", read.Data["identity_error"], read.Warnings)
	}
	m := e.mustOK(t, logical.ReadOperation, "metrics", nil).Data["services"].(map[string]any)["orders"].(map[string]uint64)
	if m["refused_trust_domain_missing"] != 3 || m["lockouts"] != 0 {
		t.Fatalf("metrics %v", m)
	}
	e.trustDomain(t, testTD, ca)
	if resp, err := login(good); err != nil || resp.IsError() {
		t.Fatalf("login once the trust domain is registered again: %v %#v", err, resp)
	}
}

// jwtSVIDEnv registers a JWT-SVID service and returns its environment,
// API key and a connection presenting its SVID.
func jwtSVIDEnv(t *testing.T) (*testEnv, string, *logical.Connection, *testPKI) {
	t.Helper()
	ca := newTestCA(t, "mesh-ca")
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"trust_domain": testTD})
	e.trustDomain(t, testTD, ca)
	key := e.register(t, "orders", map[string]any{
		"ca_chain":          ca.pem,
		"spiffe_ids":        "spiffe://" + testTD + "/ns/shop/*",
		"token_subject":     "spiffe_id",
		"allowed_audiences": "payments,ledger",
		"claims":            map[string]any{"team": "checkout"},
	})
	return e, key, ca.svidConn(t, svidOptions{uris: []string{"spiffe://" + testTD + "/ns/shop/sa/orders"}}), ca
}

func TestJWTSVIDLoginAndVerify(t *testing.T) {
	e, key, conn, ca := jwtSVIDEnv(t)
	resp, err := mtlsLogin(t, e, "orders", key, conn)
	if err != nil || resp.IsError() {
		t.Fatalf("login: %v %#v", err, resp)
	}
	tok := resp.Data["token"].(string)
	header, claims := decodeJWT(t, tok)
	if header["alg"] != "ES256" || header["kid"] == nil || header["typ"] != "JWT" {
		t.Fatalf("header %#v", header)
	}
	if claims["sub"] != "spiffe://"+testTD+"/ns/shop/sa/orders" || claims[serviceClaim] != "orders" || claims["aud"] != "payments" || claims["exp"] == nil || claims["team"] != "checkout" {
		t.Fatalf("claims %#v", claims)
	}
	if claims["cnf"].(map[string]any)["x5t#S256"] != certificateThumbprint(conn.ConnState.PeerCertificates[0]) {
		t.Fatalf("cnf %#v", claims["cnf"])
	}
	v := e.mustOK(t, logical.UpdateOperation, "verify", map[string]any{"token": tok, "audience": "payments"}).Data
	if v["valid"] != true || v["service"] != "orders" || v["claims"].(map[string]any)["sub"] != claims["sub"] {
		t.Fatalf("verify = %#v", v)
	}
	verifyWithJWKS(t, e, tok)

	// No other service may match the same ID: a SPIFFE ID has one registrant.
	e.mustFail(t, logical.UpdateOperation, "services/shadow", map[string]any{"ca_chain": ca.pem, "spiffe_ids": "spiffe://" + testTD + "/*", "token_subject": "spiffe_id", "default_audience": "payments"},
		`which service "orders" holds`)
	if v := e.mustOK(t, logical.UpdateOperation, "verify", map[string]any{"token": tok}).Data; v["service"] != "orders" {
		t.Fatalf("verify names %v", v["service"])
	}

	// Removing the ID from the service ends its tokens.
	e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"spiffe_ids": "spiffe://" + testTD + "/ns/other/*"})
	if ok, reason := e.verify(t, tok, nil); ok || reason != reasonSPIFFEIDNotRegistered {
		t.Fatalf("after the ID was removed: %v %s", ok, reason)
	}
}

func TestJWTSVIDServiceCannotBeRespelled(t *testing.T) {
	e, _, _, _ := jwtSVIDEnv(t)
	e.register(t, "payments", map[string]any{"default_audience": "x"})
	now := time.Now().Unix()
	claims := func(over map[string]any) map[string]any {
		entry, _ := readService(t.Context(), e.storage, "orders")
		c := map[string]any{"iss": "meshauth", "sub": "spiffe://" + testTD + "/ns/shop/sa/orders", serviceClaim: "orders", "aud": "payments", "iat": now, "nbf": now, "exp": now + 300, "jti": "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "gen": entry.generation()}
		for k, v := range over {
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
		}
		return c
	}
	sign := func(c map[string]any) string { return signWithCurrent(t, e, map[string]any{}, c) }
	if ok, reason := e.verify(t, sign(claims(nil)), nil); !ok {
		t.Fatalf("the well-formed JWT-SVID was refused: %s", reason)
	}
	// A payload with a second, folded spelling of the service claim (as a
	// service's extra claims could once add after ours): Go would read the
	// last one.
	payloadWithFold := func() string {
		c := claims(nil)
		body, _ := json.Marshal(c)
		body = append(body[:len(body)-1], []byte(`,"Meshauth_\u017fervice":"payments"}`)...)
		return signRawPayload(t, e, string(body))
	}()
	cases := []struct {
		name, token, reason string
	}{
		{"service claim of another service", sign(claims(map[string]any{serviceClaim: "payments"})), reasonSPIFFEIDNotRegistered},
		{"service claim missing", sign(claims(map[string]any{serviceClaim: nil})), reasonMissingClaim},
		{"service claim in upper case", sign(claims(map[string]any{serviceClaim: "ORDERS"})), reasonUnknownService},
		{"folded second service claim", payloadWithFold, reasonAmbiguousClaims},
		{"name token carrying a service claim", sign(claims(map[string]any{"sub": "payments", serviceClaim: "orders"})), reasonSPIFFEIDNotRegistered},
		{"SPIFFE sub outside the service", sign(claims(map[string]any{"sub": "spiffe://" + testTD + "/ns/shopping/x"})), reasonSPIFFEIDNotRegistered},
		{"malformed SPIFFE sub", sign(claims(map[string]any{"sub": "spiffe://" + testTD + "/ns/shop/../x"})), reasonSPIFFEIDNotRegistered},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if ok, reason := e.verify(t, tc.token, nil); ok || reason != tc.reason {
				t.Fatalf("valid=%v reason=%q; want %q", ok, reason, tc.reason)
			}
		})
	}
}

func TestJWTSVIDStoredShadowClaimDoesNotRedirect(t *testing.T) {
	// A service stored before the claim name was reserved, with an extra
	// claim that folds to it: its tokens must not verify as another service.
	e, key, conn, _ := jwtSVIDEnv(t)
	e.register(t, "payments", map[string]any{"default_audience": "x"})
	entry, err := readService(t.Context(), e.storage, "orders")
	if err != nil {
		t.Fatal(err)
	}
	entry.Claims["MESHAUTH_SERVICE"] = "payments"
	if err := e.b.putService(t.Context(), e.storage, entry); err != nil {
		t.Fatal(err)
	}
	// Such an entry fails its logins closed: no token is minted at all.
	if _, err := mtlsLogin(t, e, "orders", key, conn); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("login with a stored shadowing claim: %v", err)
	}
}

func TestJWTSVIDAndEdDSARefusedBothWays(t *testing.T) {
	e, _, _, _ := jwtSVIDEnv(t)
	e.mustFail(t, logical.UpdateOperation, "config", map[string]any{"signing_algorithm": "EdDSA"}, "these services have token_subject=spiffe_id: orders")
	if cfg := e.mustOK(t, logical.ReadOperation, "config", nil).Data; cfg["signing_algorithm"] != "ES256" {
		t.Fatalf("config changed: %v", cfg["signing_algorithm"])
	}
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"signing_algorithm": "RS256"})
	e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"token_subject": "name"})
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"signing_algorithm": "EdDSA"})
	e.mustFail(t, logical.UpdateOperation, "services/orders", map[string]any{"token_subject": "spiffe_id"}, "while config signing_algorithm is EdDSA")
}

func TestJWTSVIDLoginRefusesEdDSAKey(t *testing.T) {
	// A ring still signing with EdDSA (a rotation that failed after the
	// algorithm changed) must not mint a JWT-SVID.
	e, key, conn, _ := jwtSVIDEnv(t)
	ring, err := e.b.getKeyRing(t.Context(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	edKey, err := generateSigningKey(algEdDSA, 99, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := parseSigningKey(edKey)
	if err != nil {
		t.Fatal(err)
	}
	ring.current = parsed
	resp, err := mtlsLogin(t, e, "orders", key, conn)
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "JWT-SVIDs may not use") {
		t.Fatalf("login with an EdDSA current key: %v %#v", err, resp)
	}
}

func TestSPIFFEBundle(t *testing.T) {
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"key_rotation_period": "2h", "max_ttl": "1h", "default_ttl": "10m"})
	read := func(env *testEnv) (spiffeBundle, []byte) {
		t.Helper()
		resp := env.mustOK(t, logical.ReadOperation, "spiffe/bundle", nil)
		body := resp.Data[logical.HTTPRawBody].([]byte)
		var doc spiffeBundle
		if err := json.Unmarshal(body, &doc); err != nil {
			t.Fatal(err)
		}
		if resp.Data[logical.HTTPContentType] != "application/json" || !strings.HasPrefix(resp.Data[logical.HTTPCacheControlHeader].(string), "max-age=") {
			t.Fatalf("headers %#v", resp.Data)
		}
		return doc, body
	}
	doc, body := read(e)
	if doc.RefreshHint != 3600 || len(doc.Keys) != 2 {
		t.Fatalf("bundle %s", body)
	}
	var jwks struct {
		Keys []map[string]string `json:"keys"`
	}
	_ = json.Unmarshal(e.mustOK(t, logical.ReadOperation, "jwks", nil).Data[logical.HTTPRawBody].([]byte), &jwks)
	for i, k := range doc.Keys {
		if k["use"] != "jwt-svid" || k["kid"] != jwks.Keys[i]["kid"] || k["x"] != jwks.Keys[i]["x"] || jwks.Keys[i]["use"] != "sig" {
			t.Fatalf("bundle key %d %v vs jwks %v", i, k, jwks.Keys[i])
		}
	}

	// Another node over the same storage serves the same bytes.
	node2 := &testEnv{b: newBackend(), storage: e.storage, clock: e.clock}
	conf := logical.TestBackendConfig()
	conf.StorageView = e.storage
	if err := node2.b.Setup(t.Context(), conf); err != nil {
		t.Fatal(err)
	}
	node2.b.now = e.clock.now
	if _, body2 := read(node2); !bytes.Equal(body, body2) {
		t.Fatalf("nodes differ:\n%s\n%s", body, body2)
	}

	// Every change of the key set raises the sequence; reads between
	// changes do not move it.
	seq := doc.Sequence
	e.mustOK(t, logical.UpdateOperation, "keys/rotate", nil)
	node2.b.invalidate(t.Context(), storageKeyRing)
	doc, body = read(e)
	if doc.Sequence <= seq || len(doc.Keys) != 3 {
		t.Fatalf("after rotation: %s (was sequence %d)", body, seq)
	}
	if _, body2 := read(node2); !bytes.Equal(body, body2) {
		t.Fatalf("nodes differ after rotation:\n%s\n%s", body, body2)
	}
	seq = doc.Sequence
	e.clock.advance(time.Hour)
	if doc, _ = read(e); doc.Sequence != seq {
		t.Fatalf("sequence moved without a change: %d -> %d", seq, doc.Sequence)
	}
	// Past the verification_ttl in force while the retired key signed (the
	// default 24h30s: the ring was made before the test lowered max_ttl),
	// the retired key leaves.
	e.clock.advance(25 * time.Hour)
	if doc, body = read(e); doc.Sequence <= seq || len(doc.Keys) != 2 {
		t.Fatalf("after the retired key left: %s (was sequence %d)", body, seq)
	}
	seq = doc.Sequence

	// EdDSA keys never appear: JWT-SVIDs may not use them.
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"signing_algorithm": "EdDSA"})
	doc, body = read(e)
	for _, k := range doc.Keys {
		if k["alg"] == "EdDSA" || k["kty"] == "OKP" {
			t.Fatalf("EdDSA key in the bundle: %s", body)
		}
	}
	if doc.Sequence <= seq {
		t.Fatalf("sequence did not move when keys left: %s", body)
	}
	if !strings.Contains(strings.Join(e.b.PathsSpecial.Unauthenticated, " "), "spiffe/bundle") {
		t.Fatal("spiffe/bundle needs a Vault token")
	}
}

func TestBundleRefreshHint(t *testing.T) {
	for period, want := range map[time.Duration]int64{0: 3600, time.Minute: 30, 24 * time.Hour: 3600, 10 * time.Second: 10, 30 * time.Minute: 900} {
		if got := bundleRefreshHint(&configEntry{KeyRotationPeriod: period}); got != want {
			t.Errorf("period %s: hint %d, want %d", period, got, want)
		}
	}
}

// FuzzParseSPIFFEID checks the SPIFFE ID grammar on any input (a URI SAN is
// untrusted): no panic, an accepted ID has exactly the input's spelling and
// obeys the limits, and a pattern never matches an ID outside its subtree.
func FuzzParseSPIFFEID(f *testing.F) {
	for _, s := range []string{"spiffe://td/a/b", "spiffe://td/*", "spiffe://td/a/*", "spiffe://TD/a", "spiffe://td/a/../b", "spiffe://td//a", "spiffe://td/a%2f", "spiffe://td"} {
		f.Add(s, "spiffe://td/a/b/c")
	}
	f.Fuzz(func(t *testing.T, s, other string) {
		if id, err := parseSPIFFEID(s); err == nil {
			if id.String() != s || len(s) > maxSPIFFEIDLen || len(id.trustDomain) > maxTrustDomainLen {
				t.Fatalf("accepted %q as %q", s, id)
			}
		}
		p, err := parseSPIFFEPattern(s)
		if err != nil {
			return
		}
		id, err := parseSPIFFEID(other)
		if err != nil || !p.matches(id) {
			return
		}
		base := p.id.String()
		if p.prefix && !strings.HasPrefix(other, base+"/") || !p.prefix && other != base {
			t.Fatalf("%q matches %q", s, other)
		}
	})
}

// BenchmarkSPIFFEVerify is online verify of a JWT-SVID (service claim read
// exactly, payload member check, sub matched against spiffe_ids) against the
// same check of a token whose sub is the service name, in the same run.
func BenchmarkSPIFFEVerify(b *testing.B) {
	ca := newTestCA(b, "mesh-ca")
	cert, key, _ := ca.issueSVID(b, svidOptions{uris: []string{"spiffe://" + testTD + "/ns/shop/sa/orders"}})
	conn := tlsConn(handshake(b, []*x509.Certificate{cert}, key))
	for _, subject := range []string{tokenSubjectName, tokenSubjectSPIFFEID} {
		b.Run(subject, func(b *testing.B) {
			e := getTestBackend(b)
			e.b.Logger().SetLevel(hclog.Off)
			e.mustOK(b, logical.UpdateOperation, "config", map[string]any{"trust_domain": testTD})
			e.trustDomain(b, testTD, ca)
			apiKey := e.register(b, "orders", map[string]any{"ca_chain": ca.pem, "spiffe_ids": "spiffe://" + testTD + "/ns/shop/*", "token_subject": subject, "default_audience": "payments", "claims": map[string]any{"team": "checkout"}})
			resp, err := e.requestWith(b, logical.UpdateOperation, "login/orders", map[string]any{"api_key": apiKey}, conn)
			if err != nil || resp.IsError() {
				b.Fatal(err, resp)
			}
			tok := resp.Data["token"].(string)
			b.ReportAllocs()
			for b.Loop() {
				v, err := e.b.verifyToken(b.Context(), e.storage, tok, "")
				if err != nil || v.reason != "" {
					b.Fatal(err, v.reason)
				}
			}
		})
	}
}

// BenchmarkSPIFFEBundle renders spiffe/bundle (no render cache) against the
// cached jwks body, both through the framework.
func BenchmarkSPIFFEBundle(b *testing.B) {
	for _, path := range []string{"jwks", "spiffe/bundle"} {
		b.Run(strings.ReplaceAll(path, "/", "_"), func(b *testing.B) {
			e := getTestBackend(b)
			e.b.Logger().SetLevel(hclog.Off)
			e.mustOK(b, logical.UpdateOperation, "keys/rotate", nil)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := e.request(b, logical.ReadOperation, path, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestSPIFFEOptionalMTLSBindsOnlyAMatchingCertificate(t *testing.T) {
	ca := newTestCA(t, "mesh-ca")
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"trust_domain": testTD})
	e.trustDomain(t, testTD, ca)
	key := e.register(t, "orders", map[string]any{"ca_chain": ca.pem, "spiffe_ids": "spiffe://" + testTD + "/ns/shop/*", "require_mtls": false})
	for name, tc := range map[string]struct {
		id    string
		bound bool
	}{
		"matching SVID":     {"spiffe://" + testTD + "/ns/shop/sa/orders", true},
		"non-matching SVID": {"spiffe://" + testTD + "/ns/admin/sa/root", false},
	} {
		t.Run(name, func(t *testing.T) {
			resp, err := mtlsLogin(t, e, "orders", key, ca.svidConn(t, svidOptions{uris: []string{tc.id}}))
			if err != nil || resp.IsError() {
				t.Fatalf("login: %v %#v", err, resp)
			}
			_, claims := decodeJWT(t, resp.Data["token"].(string))
			if _, bound := claims["cnf"]; bound != tc.bound || claims["sub"] != "orders" {
				t.Fatalf("claims %#v; want bound=%v", claims, tc.bound)
			}
		})
	}
	// An SVID of another CA chains to neither the bundle nor ca_chain: the
	// token is not bound to it.
	other := newTestCA(t, "other-ca")
	resp, err := mtlsLogin(t, e, "orders", key, other.svidConn(t, svidOptions{uris: []string{"spiffe://" + testTD + "/ns/shop/sa/orders"}}))
	if err != nil || resp.IsError() {
		t.Fatalf("login: %v %#v", err, resp)
	}
	if _, claims := decodeJWT(t, resp.Data["token"].(string)); claims["cnf"] != nil {
		t.Fatalf("token bound to a certificate outside the trust domain's bundle: %#v", claims)
	}
}
