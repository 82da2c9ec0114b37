package meshauth

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestRegistrationChecksCertificates(t *testing.T) {
	ca := newTestCA(t, "mesh-ca")
	other := newTestCA(t, "other-ca")
	_, _, good := ca.issue(t, "orders", leafOptions{dns: []string{"orders.mesh"}})
	_, _, serverOnly := ca.issue(t, "orders", leafOptions{dns: []string{"orders.mesh"}, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	_, _, expired := ca.issue(t, "orders", leafOptions{notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-time.Hour)})
	_, _, future := ca.issue(t, "orders", leafOptions{notBefore: time.Now().Add(time.Hour)})
	_, _, foreign := other.issue(t, "orders", leafOptions{dns: []string{"orders.mesh"}})
	goodCert, _ := parseCertificates("c", good, 1)
	cases := []struct {
		name string
		data map[string]any
		want string
	}{
		{"no clientAuth", map[string]any{"certificate": serverOnly}, "lacks the clientAuth"},
		{"expired", map[string]any{"certificate": expired}, "expired at"},
		{"not yet valid", map[string]any{"certificate": future}, "not valid before"},
		{"wrong CA", map[string]any{"certificate": foreign, "ca_chain": ca.pem}, "does not chain to ca_chain"},
		{"hostname not covered", map[string]any{"certificate": good, "hostnames": "payments.mesh"}, `does not cover hostname "payments.mesh"`},
		{"non-CA in ca_chain", map[string]any{"ca_chain": good}, "is not a CA certificate"},
		{"own pin missing", map[string]any{"certificate": good, "pinned_spki": spkiPin(ca.cert)}, "not among pinned_spki"},
		{"pin not base64", map[string]any{"certificate": good, "pinned_spki": "%%%"}, "not base64"},
		{"pin wrong size", map[string]any{"certificate": good, "pinned_spki": "AAAA"}, "a SHA-256 pin is 32"},
		{"private key in ca_chain", map[string]any{"ca_chain": ca.pem + "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"}, "private key"},
		{"other block", map[string]any{"ca_chain": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"}, `"PUBLIC KEY" block`},
		{"trailing garbage", map[string]any{"ca_chain": ca.pem + "junk"}, "outside well-formed PEM CERTIFICATE blocks"},
		{"two leaves", map[string]any{"certificate": good + good}, "more than 1 certificates"},
		{"oversized", map[string]any{"ca_chain": strings.Repeat(ca.pem, 200)}, "at most 65536"},
		{"hostnames without trust", map[string]any{"hostnames": "orders.mesh", "require_mtls": false}, "need a certificate or ca_chain"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := getTestBackend(t)
			e.mustFail(t, logical.UpdateOperation, "services/orders", tc.data, tc.want)
		})
	}
	e := getTestBackend(t)
	e.register(t, "orders", map[string]any{"certificate": good, "ca_chain": ca.pem, "hostnames": "orders.mesh", "pinned_spki": spkiPin(goodCert[0])})
	read := e.mustOK(t, logical.ReadOperation, "services/orders", nil)
	info := read.Data["certificate_info"].(map[string]any)
	if read.Data["require_mtls"] != true || info["spki_pin"] != spkiPin(goodCert[0]) || info["subject"] != "CN=orders" {
		t.Fatalf("read = %#v", read.Data)
	}
	profile := e.mustOK(t, logical.ReadOperation, "services/orders/tls", nil).Data
	if profile["ca_chain"] != ca.pem || profile["days_left"].(int) < 0 || len(profile["ca_certificates"].([]map[string]any)) != 1 {
		t.Fatalf("tls profile = %#v", profile)
	}
}

// mtlsLogin logs in with the given ConnectionState.
func mtlsLogin(t *testing.T, e *testEnv, name, key string, conn *logical.Connection) (*logical.Response, error) {
	return e.requestWith(t, logical.UpdateOperation, "login/"+name, map[string]any{"api_key": key}, conn)
}

func TestMTLSLogin(t *testing.T) {
	root := newTestCA(t, "mesh-root")
	interCert, interKey, _ := root.issue(t, "mesh-intermediate", leafOptions{isCA: true, eku: []x509.ExtKeyUsage{}})
	inter := &testPKI{cert: interCert, key: interKey}
	other := newTestCA(t, "other-ca")

	leaf, leafKey, _ := inter.issue(t, "orders", leafOptions{dns: []string{"orders.mesh"}})
	good := handshake(t, []*x509.Certificate{leaf, interCert}, leafKey)

	e := getTestBackend(t)
	key := e.register(t, "orders", map[string]any{"ca_chain": root.pem, "hostnames": "orders.mesh"})

	resp, err := mtlsLogin(t, e, "orders", key, tlsConn(good))
	if err != nil || resp.IsError() {
		t.Fatalf("good mTLS login: %v %#v", err, resp)
	}
	_, claims := decodeJWT(t, resp.Data["token"].(string))
	cnf, _ := claims["cnf"].(map[string]any)
	if cnf == nil || cnf["x5t#S256"] != certificateThumbprint(leaf) {
		t.Fatalf("cnf = %#v, want x5t#S256 of the presented leaf", claims["cnf"])
	}

	refused := map[string]*logical.Connection{
		"no certificate":       {RemoteAddr: "127.0.0.1"},
		"TLS without cert":     tlsConn(handshake(t, nil, nil)),
		"other CA":             tlsConn(handshakeWith(t, other, leafOptions{dns: []string{"orders.mesh"}})),
		"leaf without chain":   tlsConn(handshake(t, []*x509.Certificate{leaf}, leafKey)),
		"server-only EKU":      tlsConn(handshakeWith(t, inter, leafOptions{dns: []string{"orders.mesh"}, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, interCert)),
		"wrong SAN":            tlsConn(handshakeWith(t, inter, leafOptions{dns: []string{"payments.mesh"}}, interCert)),
		"expired":              tlsConn(handshakeWith(t, inter, leafOptions{dns: []string{"orders.mesh"}, notBefore: time.Now().Add(-3 * time.Hour), notAfter: time.Now().Add(-time.Hour)}, interCert)),
		"not yet valid":        tlsConn(handshakeWith(t, inter, leafOptions{dns: []string{"orders.mesh"}, notBefore: time.Now().Add(time.Hour), notAfter: time.Now().Add(2 * time.Hour)}, interCert)),
		"chain over the limit": tlsConn(handshake(t, append([]*x509.Certificate{leaf}, repeatCert(interCert, 9)...), leafKey)),
	}
	for name, conn := range refused {
		t.Run(name, func(t *testing.T) {
			resp, err := mtlsLogin(t, e, "orders", key, conn)
			if !errors.Is(err, logical.ErrPermissionDenied) || resp != nil {
				t.Fatalf("got %#v, %v; want the generic permission denied", resp, err)
			}
			e.b.lockout = newLockoutTracker() // keep the address unlocked between cases
		})
	}
}

func repeatCert(c *x509.Certificate, n int) []*x509.Certificate {
	out := make([]*x509.Certificate, n)
	for i := range out {
		out[i] = c
	}
	return out
}

// handshakeWith issues a leaf from ca and hands it over a real handshake,
// followed by extra chain certificates.
func handshakeWith(t *testing.T, ca *testPKI, o leafOptions, extra ...*x509.Certificate) *tls.ConnectionState {
	leaf, key, _ := ca.issue(t, "orders", o)
	return handshake(t, append([]*x509.Certificate{leaf}, extra...), key)
}

func TestPinnedCertificateIsComparedByBytesNotSerial(t *testing.T) {
	ca := newTestCA(t, "mesh-ca")
	leaf, leafKey, leafPEM := ca.issue(t, "orders", leafOptions{serial: 42})
	// Same subject, same serial, same issuer name, another key: the forgery
	// that matching by serial number and key id let through.
	impostorCA := newTestCA(t, "mesh-ca")
	impostor, impostorKey, _ := impostorCA.issue(t, "orders", leafOptions{serial: 42})

	e := getTestBackend(t)
	key := e.register(t, "orders", map[string]any{"certificate": leafPEM})
	if resp, err := mtlsLogin(t, e, "orders", key, tlsConn(handshake(t, []*x509.Certificate{leaf}, leafKey))); err != nil || resp.IsError() {
		t.Fatalf("pinned certificate refused: %v", err)
	}
	if _, err := mtlsLogin(t, e, "orders", key, tlsConn(handshake(t, []*x509.Certificate{impostor}, impostorKey))); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("impostor with the same serial: %v", err)
	}
}

func TestSPKIPinAtLogin(t *testing.T) {
	ca := newTestCA(t, "mesh-ca")
	pinned, pinnedKey, _ := ca.issue(t, "orders", leafOptions{})
	otherLeaf, otherKey, _ := ca.issue(t, "orders", leafOptions{})
	e := getTestBackend(t)
	key := e.register(t, "orders", map[string]any{"ca_chain": ca.pem, "pinned_spki": spkiPin(pinned)})
	if _, err := mtlsLogin(t, e, "orders", key, tlsConn(handshake(t, []*x509.Certificate{pinned}, pinnedKey))); err != nil {
		t.Fatalf("pinned key refused: %v", err)
	}
	if _, err := mtlsLogin(t, e, "orders", key, tlsConn(handshake(t, []*x509.Certificate{otherLeaf}, otherKey))); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("unpinned key from the right CA: %v", err)
	}
}

func TestOptionalMTLSStillBindsToken(t *testing.T) {
	ca := newTestCA(t, "mesh-ca")
	leaf, leafKey, _ := ca.issue(t, "orders", leafOptions{})
	e := getTestBackend(t)
	key := e.register(t, "orders", map[string]any{"ca_chain": ca.pem, "require_mtls": false})
	tok := e.mustLogin(t, "orders", key)
	if _, claims := decodeJWT(t, tok); claims["cnf"] != nil {
		t.Fatal("cnf without a certificate")
	}
	resp, err := mtlsLogin(t, e, "orders", key, tlsConn(handshake(t, []*x509.Certificate{leaf}, leafKey)))
	if err != nil {
		t.Fatal(err)
	}
	if _, claims := decodeJWT(t, resp.Data["token"].(string)); claims["cnf"] == nil {
		t.Fatal("a verified certificate did not bind the token")
	}
}

func TestLockoutByCertificateSparesTheService(t *testing.T) {
	ca := newTestCA(t, "mesh-ca")
	leaf, leafKey, _ := ca.issue(t, "orders", leafOptions{})
	e := getTestBackend(t)
	key := e.register(t, "orders", map[string]any{"ca_chain": ca.pem})
	for range 6 {
		_, _ = e.login(t, "orders", "mak_guess", nil) // a stranger on the same address
	}
	if _, err := mtlsLogin(t, e, "orders", key, tlsConn(handshake(t, []*x509.Certificate{leaf}, leafKey))); err != nil {
		t.Fatalf("the service with its certificate was locked out by a stranger: %v", err)
	}
}

// TestPresentedChainIsOneLeafThenItsCAs is the plugin's side of a proxy
// that reuses one connection to Vault for several callers: Vault 1.21
// prepends each forwarded certificate to the connection's TLS state, so a
// request carries its own certificate followed by earlier callers' ones, or
// (with no header) only theirs. Such chains fail closed.
func TestPresentedChainIsOneLeafThenItsCAs(t *testing.T) {
	root := newTestCA(t, "mesh-root")
	interCert, interKey, _ := root.issue(t, "mesh-intermediate", leafOptions{isCA: true, eku: []x509.ExtKeyUsage{}})
	inter := &testPKI{cert: interCert, key: interKey}
	orders, ordersKey, _ := root.issue(t, "orders", leafOptions{dns: []string{"orders.mesh"}})
	billing, _, _ := root.issue(t, "billing", leafOptions{dns: []string{"billing.mesh"}})
	viaInter, viaInterKey, _ := inter.issue(t, "orders", leafOptions{dns: []string{"orders.mesh"}})

	e := getTestBackend(t)
	key := e.register(t, "orders", map[string]any{"ca_chain": root.pem, "hostnames": "orders.mesh"})
	accepted := map[string]*tls.ConnectionState{
		"leaf alone":                 handshake(t, []*x509.Certificate{orders}, ordersKey),
		"leaf, intermediate":         handshake(t, []*x509.Certificate{viaInter, interCert}, viaInterKey),
		"leaf, intermediate, root":   handshake(t, []*x509.Certificate{viaInter, interCert, root.cert}, viaInterKey),
		"leaf of the root, the root": handshake(t, []*x509.Certificate{orders, root.cert}, ordersKey),
	}
	for name, st := range accepted {
		if resp, err := mtlsLogin(t, e, "orders", key, tlsConn(st)); err != nil || resp.IsError() {
			t.Fatalf("%s: %v %#v", name, err, resp)
		}
	}
	refused := map[string]*tls.ConnectionState{
		// What a reused proxy connection hands over: the caller's own
		// certificate, then an earlier caller's.
		"own leaf, another caller's leaf": handshake(t, []*x509.Certificate{orders, billing}, ordersKey),
		"own leaf twice":                  handshake(t, []*x509.Certificate{orders, orders}, ordersKey),
		"leaf, intermediate twice":        handshake(t, []*x509.Certificate{viaInter, interCert, interCert}, viaInterKey),
		"CAs out of order":                handshake(t, []*x509.Certificate{viaInter, root.cert, interCert}, viaInterKey),
		"a CA that did not issue it":      handshake(t, []*x509.Certificate{orders, interCert}, ordersKey),
	}
	for name, st := range refused {
		t.Run(name, func(t *testing.T) {
			resp, err := mtlsLogin(t, e, "orders", key, tlsConn(st))
			if !errors.Is(err, logical.ErrPermissionDenied) || resp != nil {
				t.Fatalf("got %#v, %v; want permission denied", resp, err)
			}
			e.b.lockout = newLockoutTracker()
		})
	}
	if err := checkChainShape([]*x509.Certificate{orders, billing}); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("checkChainShape = %v", err)
	}
}

// TestRegistrationRefusesContentOutsideCertificateBlocks sends private keys
// with damaged armour, which pem.Decode skips silently, through
// services/:name and checks that nothing was stored and services/:name/tls
// never shows them.
func TestRegistrationRefusesContentOutsideCertificateBlocks(t *testing.T) {
	ca := newTestCA(t, "mesh-ca")
	_, leafKey, leaf := ca.issue(t, "orders", leafOptions{dns: []string{"orders.mesh"}})
	der, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	keyBody := strings.Join(strings.Split(strings.TrimSpace(keyPEM), "\n")[1:strings.Count(keyPEM, "\n")-1], "\n")
	noEnd := keyPEM[:strings.Index(keyPEM, "-----END")]
	cases := []struct {
		name, field, text, want string
	}{
		{"key without END before the CA", "ca_chain", noEnd + ca.pem, "never send a private key"},
		{"key without END before the certificate", "certificate", noEnd + leaf, "never send a private key"},
		{"mangled dashes", "ca_chain", strings.ReplaceAll(keyPEM, "-----", "----") + ca.pem, "never send a private key"},
		{"END of another type", "ca_chain", strings.Replace(keyPEM, "END PRIVATE KEY", "END CERTIFICATE", 1) + ca.pem, "never send a private key"},
		{"bare key body", "ca_chain", keyBody + "\n" + ca.pem, "never send a private key"},
		{"key body between certificates", "ca_chain", ca.pem + keyBody + "\n" + ca.pem, "never send a private key"},
		{"key labelled CERTIFICATE", "ca_chain", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), "never send a private key"},
		{"prose before the CA", "ca_chain", "issuer: mesh\n" + ca.pem, "outside well-formed PEM CERTIFICATE blocks"},
		{"damaged certificate before the CA", "ca_chain", "-----BEGIN CERTIFICATE-----\nAAAA\n" + ca.pem, "outside well-formed PEM CERTIFICATE blocks"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := getTestBackend(t)
			e.mustFail(t, logical.UpdateOperation, "services/orders", map[string]any{tc.field: tc.text}, tc.want)
			if resp, err := e.request(t, logical.ReadOperation, "services/orders/tls", nil); err != nil || resp != nil {
				t.Fatalf("services/orders/tls after a refused write: %#v, %v", resp, err)
			}
			// An existing service keeps its trust when an update is refused.
			e.register(t, "orders", map[string]any{"ca_chain": ca.pem})
			e.mustFail(t, logical.UpdateOperation, "services/orders", map[string]any{tc.field: tc.text}, tc.want)
			profile := e.mustOK(t, logical.ReadOperation, "services/orders/tls", nil).Data
			if profile["ca_chain"] != ca.pem || profile["certificate"] != nil {
				t.Fatalf("tls profile changed by a refused update: %#v", profile)
			}
		})
	}
	// Whitespace around and between blocks is fine.
	e := getTestBackend(t)
	e.register(t, "orders", map[string]any{"ca_chain": "\n\n" + ca.pem + "\r\n\t\n", "certificate": "\n" + leaf + "\n\n"})
	e.mustOK(t, logical.ReadOperation, "services/orders/tls", nil)
}
