package meshauth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"golang.org/x/crypto/ocsp"
)

// revCA is a CA that signs CRLs and OCSP answers, with loopback endpoints
// counting their hits.
type revCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string

	mu       sync.Mutex
	revoked  map[int64]bool
	crlLife  time.Duration
	crlHits  atomic.Int64
	ocspHits atomic.Int64
	down     atomic.Bool
	crlNum   int64
	srv      *httptest.Server
}

func newRevCA(t testing.TB, cn string) *revCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &revCA{cert: cert, key: key, pem: pemCert(der), revoked: map[int64]bool{}, crlLife: time.Hour}
	mux := http.NewServeMux()
	mux.HandleFunc("/crl", func(w http.ResponseWriter, _ *http.Request) {
		ca.crlHits.Add(1)
		if ca.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write(ca.crl(t))
	})
	mux.HandleFunc("/ocsp", func(w http.ResponseWriter, r *http.Request) {
		ca.ocspHits.Add(1)
		if ca.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		body, _ := io.ReadAll(r.Body)
		req, err := ocsp.ParseRequest(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, _ = w.Write(ca.ocspResponse(t, req.SerialNumber, ca.key, nil))
	})
	ca.srv = httptest.NewServer(mux)
	t.Cleanup(ca.srv.Close)
	return ca
}

func (ca *revCA) crlURL() string  { return ca.srv.URL + "/crl" }
func (ca *revCA) ocspURL() string { return ca.srv.URL + "/ocsp" }

func (ca *revCA) revoke(serial int64) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.revoked[serial] = true
}

// crl renders the CA's current CRL (DER).
func (ca *revCA) crl(t testing.TB) []byte {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.crlNum++
	var entries []x509.RevocationListEntry
	for s := range ca.revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: big.NewInt(s), RevocationTime: time.Now().Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(ca.crlNum), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(ca.crlLife),
		RevokedCertificateEntries: entries,
	}, ca.cert, ca.key)
	if err != nil {
		t.Error(err)
	}
	return der
}

func (ca *revCA) ocspResponse(t testing.TB, serial *big.Int, signer crypto.Signer, responder *x509.Certificate) []byte {
	ca.mu.Lock()
	status := ocsp.Good
	if ca.revoked[serial.Int64()] {
		status = ocsp.Revoked
	}
	ca.mu.Unlock()
	tmpl := ocsp.Response{Status: status, SerialNumber: serial, ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour), RevokedAt: time.Now().Add(-time.Minute)}
	if responder != nil {
		tmpl.Certificate = responder
	}
	respCert := ca.cert
	if responder != nil {
		respCert = responder
	}
	der, err := ocsp.CreateResponse(ca.cert, respCert, tmpl, signer)
	if err != nil {
		t.Error(err)
	}
	return der
}

// issueLeaf issues a client certificate whose CRL distribution point and
// OCSP URL are the CA's loopback endpoints.
func (ca *revCA) issueLeaf(t testing.TB, serial int64) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "orders"},
		DNSNames:  []string{"orders.internal"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(12 * time.Hour),
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		CRLDistributionPoints: []string{ca.crlURL()},
		OCSPServer:            []string{ca.ocspURL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

// revLogin logs in presenting cert.
func revLogin(t *testing.T, e *testEnv, name, apiKey string, conn *logical.Connection) (*logical.Response, error) {
	t.Helper()
	return e.requestWith(t, logical.UpdateOperation, "login/"+name, map[string]any{"api_key": apiKey}, conn)
}

func revocationCount(e *testEnv, result string) uint64 {
	return e.b.metrics.certRevocation.snapshot()[result]
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func revSetup(t *testing.T, mode string, extra map[string]any) (*testEnv, *revCA, string, *logical.Connection, *x509.Certificate) {
	t.Helper()
	e := getTestBackend(t)
	t.Cleanup(func() { e.b.certRevocation.stop() })
	ca := newRevCA(t, "mesh-ca")
	leaf, key := ca.issueLeaf(t, 1001)
	data := map[string]any{"ca_chain": ca.pem, "revocation_check": mode}
	for k, v := range extra {
		data[k] = v
	}
	apiKey := e.register(t, "orders", data)
	return e, ca, apiKey, tlsConn(handshake(t, []*x509.Certificate{leaf}, key)), leaf
}

func TestCRLRevocationRefusesLoginAndListsCertificate(t *testing.T) {
	e, ca, apiKey, conn, leaf := revSetup(t, "crl", nil)
	ca.crlLife = 2 * time.Second // refreshed after about a second
	resp, err := revLogin(t, e, "orders", apiKey, conn)
	if err != nil || resp.IsError() {
		t.Fatalf("good certificate refused: %v %v", err, resp)
	}
	token := resp.Data["token"].(string)
	ca.revoke(1001)
	waitFor(t, "login refused after revocation", func() bool {
		_, err := revLogin(t, e, "orders", apiKey, conn)
		return errors.Is(err, logical.ErrPermissionDenied)
	})
	if n := revocationCount(e, revocationResultRevoked); n == 0 {
		t.Fatal("certificate_revoked not counted")
	}
	// The token bound to it: verify refuses it, and the feed lists it.
	x5t := certificateThumbprint(leaf)
	waitFor(t, "certificate listed", func() bool {
		ok, reason := e.verify(t, token, nil)
		return !ok && reason == reasonCertificateRevoked
	})
	body, err := e.b.revocationFeed(t.Context(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	_, payload := decodeJWT(t, string(body.jws))
	certs, _ := payload["certificates"].(map[string]any)
	if _, ok := certs[x5t]; !ok {
		t.Fatalf("feed certificates %v lack %s", certs, x5t)
	}
}

func TestOCSPRevokedRefused(t *testing.T) {
	e, ca, apiKey, conn, _ := revSetup(t, "ocsp", nil)
	if resp, err := revLogin(t, e, "orders", apiKey, conn); err != nil || resp.IsError() {
		t.Fatalf("good certificate refused: %v %v", err, resp)
	}
	e2, ca2, apiKey2, conn2, _ := revSetup(t, "ocsp", nil)
	_ = ca
	ca2.revoke(1001)
	if _, err := revLogin(t, e2, "orders", apiKey2, conn2); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("OCSP revoked: got %v", err)
	}
	if revocationCount(e2, revocationResultRevoked) != 1 {
		t.Fatal("certificate_revoked not counted")
	}
}

func TestOCSPDelegatedResponderNeedsOCSPSigning(t *testing.T) {
	ca := newRevCA(t, "mesh-ca")
	leaf, _ := ca.issueLeaf(t, 7)
	for _, eku := range [][]x509.ExtKeyUsage{{x509.ExtKeyUsageOCSPSigning}, {x509.ExtKeyUsageClientAuth}} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(99), Subject: pkix.Name{CommonName: "responder"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: eku}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
		responder, _ := x509.ParseCertificate(der)
		body := ca.ocspResponse(t, leaf.SerialNumber, key, responder)
		_, err := validateOCSP(body, leaf, ca.cert, time.Now())
		if (eku[0] == x509.ExtKeyUsageOCSPSigning) != (err == nil) {
			t.Fatalf("eku %v: err %v", eku, err)
		}
	}
	// Signed by another CA of the same name: refused.
	other := newRevCA(t, "mesh-ca")
	if _, err := validateOCSP(other.ocspResponse(t, leaf.SerialNumber, other.key, nil), leaf, ca.cert, time.Now()); err == nil {
		t.Fatal("OCSP answer of another CA accepted")
	}
}

func TestRevocationResponderDown(t *testing.T) {
	e, ca, apiKey, conn, _ := revSetup(t, "ocsp", nil)
	ca.down.Store(true)
	if _, err := revLogin(t, e, "orders", apiKey, conn); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("responder down, fail closed: got %v", err)
	}
	if revocationCount(e, revocationResultUnavailable) != 1 {
		t.Fatal("revocation_unavailable not counted")
	}
	e2, ca2, apiKey2, conn2, _ := revSetup(t, "crl,ocsp", map[string]any{"revocation_fail_open": true})
	ca2.down.Store(true)
	if resp, err := revLogin(t, e2, "orders", apiKey2, conn2); err != nil || resp.IsError() {
		t.Fatalf("fail_open refused: %v %v", err, resp)
	}
	if revocationCount(e2, revocationResultFailOpen) != 1 {
		t.Fatal("revocation_fail_open not counted")
	}
}

func TestPushedCRLMustBeSignedByTrustedCAKey(t *testing.T) {
	e, ca, apiKey, conn, _ := revSetup(t, "crl", map[string]any{"crl_urls": "http://127.0.0.1:1/none"})
	imposter := newRevCA(t, "mesh-ca") // same subject name, another key
	imposter.revoke(1001)
	crlPEM := func(der []byte) string { return string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})) }
	e.mustFail(t, logical.UpdateOperation, "crls/imposter", map[string]any{"crl": crlPEM(imposter.crl(t))}, "not signed by any CA")
	// The real CA's CRL is accepted and makes the login pass with the URL down.
	e.mustOK(t, logical.UpdateOperation, "crls/mesh", map[string]any{"crl": crlPEM(ca.crl(t))})
	if resp, err := revLogin(t, e, "orders", apiKey, conn); err != nil || resp.IsError() {
		t.Fatalf("login with pushed CRL: %v %v", err, resp)
	}
	// Revoked in a newly pushed CRL: refused at once.
	ca.revoke(1001)
	e.mustOK(t, logical.UpdateOperation, "crls/mesh", map[string]any{"crl": crlPEM(ca.crl(t))})
	if _, err := revLogin(t, e, "orders", apiKey, conn); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("revoked by pushed CRL: got %v", err)
	}
	list := e.mustOK(t, logical.ListOperation, "crls/", nil)
	if keys := list.Data["keys"].([]string); len(keys) != 1 || keys[0] != "mesh" {
		t.Fatalf("list: %v", keys)
	}
}

func TestSameSerialRevokedByAnotherCAHasNoEffect(t *testing.T) {
	imposter := newRevCA(t, "mesh-ca")
	imposter.revoke(1001)
	e, _, apiKey, conn, leaf := revSetup(t, "crl", nil)
	e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"crl_urls": []string{leaf.CRLDistributionPoints[0], imposter.crlURL()}})
	if resp, err := revLogin(t, e, "orders", apiKey, conn); err != nil || resp.IsError() {
		t.Fatalf("serial revoked by another CA refused the login: %v %v", err, resp)
	}
}

func TestCRLPastNextUpdateWithDistributionPointDown(t *testing.T) {
	e, ca, apiKey, conn, _ := revSetup(t, "crl", nil)
	if resp, err := revLogin(t, e, "orders", apiKey, conn); err != nil || resp.IsError() {
		t.Fatalf("good certificate refused: %v %v", err, resp)
	}
	ca.down.Store(true)
	e.clock.advance(2 * time.Hour) // past nextUpdate (an hour)
	if _, err := revLogin(t, e, "orders", apiKey, conn); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("CRL past nextUpdate: got %v", err)
	}
}

func TestWarmRevocationCacheMakesNoFetch(t *testing.T) {
	e, ca, apiKey, conn, _ := revSetup(t, "crl,ocsp", nil)
	if resp, err := revLogin(t, e, "orders", apiKey, conn); err != nil || resp.IsError() {
		t.Fatalf("good certificate refused: %v %v", err, resp)
	}
	crl, ocspHits := ca.crlHits.Load(), ca.ocspHits.Load()
	ops := e.b.metrics.loginStorageOps.Load()
	for range 1000 {
		if _, err := revLogin(t, e, "orders", apiKey, conn); err != nil {
			t.Fatal(err)
		}
	}
	if ca.crlHits.Load() != crl || ca.ocspHits.Load() != ocspHits {
		t.Fatalf("warm logins fetched: crl %d->%d ocsp %d->%d", crl, ca.crlHits.Load(), ocspHits, ca.ocspHits.Load())
	}
	if got := e.b.metrics.loginStorageOps.Load(); got != ops {
		t.Fatalf("warm logins touched storage %d times", got-ops)
	}
}

func TestRevocationFieldsValidated(t *testing.T) {
	e := getTestBackend(t)
	ca := newRevCA(t, "mesh-ca")
	e.mustFail(t, logical.UpdateOperation, "services/a", map[string]any{"ca_chain": ca.pem, "revocation_check": "maybe"}, "revocation_check must be")
	e.mustFail(t, logical.UpdateOperation, "services/a", map[string]any{"ca_chain": ca.pem, "crl_urls": "ldap://x"}, "not an http")
	e.mustFail(t, logical.UpdateOperation, "services/a", map[string]any{"revocation_check": "crl", "require_mtls": false}, "needs ca_chain")
	e.register(t, "a", map[string]any{"ca_chain": ca.pem, "revocation_check": "ocsp,crl", "revocation_max_age": "10m"})
	got := e.mustOK(t, logical.ReadOperation, "services/a", nil).Data
	if got["revocation_check"] != "crl,ocsp" || got["revocation_max_age"] != int64(600) {
		t.Fatalf("read back %v %v", got["revocation_check"], got["revocation_max_age"])
	}
}

// BenchmarkLoginMTLSRevocationWarm is BenchmarkLoginMTLSWarm with
// revocation_check=crl,ocsp and every answer cached: the pair measures what
// revocation checking adds to a warm login.
func BenchmarkLoginMTLSRevocationWarm(b *testing.B) {
	ca := newRevCA(b, "mesh-ca")
	leaf, leafKey := ca.issueLeaf(b, 4242)
	e, key, _ := benchEnv(b, algES256, map[string]any{"ca_chain": ca.pem, "hostnames": "orders.internal", "revocation_check": "crl,ocsp"})
	b.Cleanup(e.b.certRevocation.stop)
	conn := tlsConn(handshake(b, []*x509.Certificate{leaf}, leafKey))
	login := func() {
		resp, err := e.b.HandleRequest(b.Context(), &logical.Request{
			Operation: logical.UpdateOperation, Path: "login/orders", Storage: e.storage,
			Data: map[string]any{"api_key": key}, Connection: conn,
		})
		if err != nil || resp.IsError() {
			b.Fatal(err)
		}
	}
	login()
	hits := ca.crlHits.Load() + ca.ocspHits.Load()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		login()
	}
	b.StopTimer()
	if got := ca.crlHits.Load() + ca.ocspHits.Load(); got != hits {
		b.Fatalf("warm logins fetched %d times", got-hits)
	}
}

// A verdict computed while revocation data changed is not reused: the
// change may have come after the check read the old data.
func TestChainVerdictRacingARevocationChangeIsNotKept(t *testing.T) {
	c := newChainCache(16)
	ca := newTestCA(t, "mesh-ca")
	leaf, _, _ := ca.issue(t, "orders", leafOptions{})
	trust := &serviceTrust{}
	calls := 0
	check := func() (time.Time, error) {
		calls++
		if calls == 1 {
			c.bumpRevocations() // a CRL arrives mid-check
		}
		return time.Time{}, nil
	}
	now := time.Now()
	_ = c.verifyUntil("orders", trust, []*x509.Certificate{leaf}, now, check)
	_ = c.verifyUntil("orders", trust, []*x509.Certificate{leaf}, now, check)
	_ = c.verifyUntil("orders", trust, []*x509.Certificate{leaf}, now, check)
	if calls != 2 {
		t.Fatalf("check ran %d times; want 2 (the racing verdict dropped, the next one kept)", calls)
	}
	// A verdict bounded by an answer's life is recomputed after it.
	calls = 0
	c2 := newChainCache(16)
	bounded := func() (time.Time, error) { calls++; return now.Add(time.Minute), nil }
	_ = c2.verifyUntil("orders", trust, []*x509.Certificate{leaf}, now, bounded)
	_ = c2.verifyUntil("orders", trust, []*x509.Certificate{leaf}, now.Add(2*time.Minute), bounded)
	if calls != 2 {
		t.Fatalf("bounded verdict reused past its bound (%d checks)", calls)
	}
}

// A certificate refused as revoked is listed until max_ttl from the
// refusal even when this node never saw it log in (a restart, a standby).
func TestRefusedRevokedCertificateIsListedWithoutTracking(t *testing.T) {
	e, ca, apiKey, conn, leaf := revSetup(t, "ocsp", nil)
	ca.revoke(1001)
	// Without the service's API key nothing is listed: otherwise anyone
	// controlling a CA that one service trusts could fill the mount-wide
	// list with certificates no token is bound to (attacker's read).
	for range 3 {
		if _, err := revLogin(t, e, "orders", "not-the-api-key", conn); !errors.Is(err, logical.ErrPermissionDenied) {
			t.Fatalf("revoked, wrong key: %v", err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if m, _ := e.b.certRevocation.revokedCertificates(t.Context(), e.storage); len(m) != 0 {
		t.Fatalf("listed without the API key: %v", m)
	}
	if _, err := revLogin(t, e, "orders", apiKey, conn); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("revoked: %v", err)
	}
	cfg, _ := e.b.getConfig(t.Context(), e.storage)
	waitFor(t, "listing", func() bool {
		m, err := e.b.certRevocation.revokedCertificates(t.Context(), e.storage)
		exp, ok := m[certificateThumbprint(leaf)]
		return err == nil && ok && !exp.Before(e.b.now().Add(cfg.MaxTTL).Add(-time.Second))
	})
}

// A SPIFFE service may be trusted by its trust domain's bundle alone (no
// ca_chain): its revocation checks follow the path to that bundle, and a
// CRL signed by a bundle CA may be pushed. Before this, such a service's
// revocation_check was silently skipped.
func TestRevocationOfSVIDTrustedByBundleAlone(t *testing.T) {
	e := getTestBackend(t)
	t.Cleanup(func() { e.b.certRevocation.stop() })
	ca := newRevCA(t, "td-ca")
	ca.crlLife = 2 * time.Second
	e.mustOK(t, logical.UpdateOperation, "trust_domains/"+testTD, map[string]any{"bundle": ca.pem})
	id := "spiffe://" + testTD + "/ns/shop/sa/orders"
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2002), Subject: pkix.Name{CommonName: "orders"},
		URIs:      []*url.URL{u},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(12 * time.Hour),
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		CRLDistributionPoints: []string{ca.crlURL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	apiKey := e.register(t, "orders", map[string]any{"spiffe_ids": id, "revocation_check": "crl"})
	conn := tlsConn(handshake(t, []*x509.Certificate{leaf}, key))
	if resp, err := revLogin(t, e, "orders", apiKey, conn); err != nil || resp.IsError() {
		t.Fatalf("good SVID refused: %v %v", err, resp)
	}
	if ca.crlHits.Load() == 0 {
		t.Fatal("the bundle CA's CRL was never fetched: revocation was not checked")
	}
	ca.revoke(2002)
	waitFor(t, "login refused after revocation", func() bool {
		_, err := revLogin(t, e, "orders", apiKey, conn)
		return errors.Is(err, logical.ErrPermissionDenied)
	})
	// A CRL signed by the trust domain's CA may be pushed.
	resp := e.mustOK(t, logical.UpdateOperation, "crls/td", map[string]any{"crl": string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: ca.crl(t)}))})
	if got := resp.Data["signed_by"]; got != "trust_domains/"+testTD {
		t.Fatalf("signed_by = %v", got)
	}
}
