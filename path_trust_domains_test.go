package meshauth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// operatorEnv is a mount as an operator sets it up: config trust_domain and
// its bundle (the mesh CA) registered, and a victim team's JWT-SVID service
// holding spiffe://mesh.example/ns/shop/sa/orders.
func operatorEnv(t *testing.T) (*testEnv, *testPKI) {
	t.Helper()
	mesh := newTestCA(t, "mesh-ca")
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"trust_domain": testTD, "lockout_threshold": 0})
	e.trustDomain(t, testTD, mesh)
	e.register(t, "orders", map[string]any{
		"ca_chain": mesh.pem, "spiffe_ids": "spiffe://" + testTD + "/ns/shop/sa/orders",
		"token_subject": "spiffe_id", "default_audience": "payments",
	})
	return e, mesh
}

// selfSignedSVID makes a self-signed certificate shaped as an X.509-SVID
// leaf for id, usable as a client certificate.
func selfSignedSVID(t *testing.T, id string) (*x509.Certificate, *ecdsa.PrivateKey, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      pkix.Name{},
		URIs:         []*url.URL{u},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key, pemCert(der)
}

// TestWriterOfOneServiceCannotAssertAnotherTeamsID is the attack of issue
// 19: whoever may write one service entry chose its CA, its spiffe_ids and
// its trust domains, and so obtained engine-signed JWT-SVIDs for any ID.
func TestWriterOfOneServiceCannotAssertAnotherTeamsID(t *testing.T) {
	victim := "spiffe://" + testTD + "/ns/shop/sa/orders"
	// An ID of another team that is not registered with meshauth at all:
	// SPIRE issues it to that team's workload, never to the attacker.
	unclaimed := "spiffe://" + testTD + "/ns/payments/sa/api"

	t.Run("own CA", func(t *testing.T) {
		e, _ := operatorEnv(t)
		evil := newTestCA(t, "attacker-ca")
		e.mustFail(t, logical.UpdateOperation, "services/evil", map[string]any{
			"ca_chain": evil.pem, "spiffe_ids": victim, "token_subject": "spiffe_id", "default_audience": "payments",
		}, `which service "orders" holds`)
		// The unclaimed ID can be registered, but the attacker's CA does not
		// speak for the trust domain: the login fails.
		key := e.register(t, "evil", map[string]any{
			"ca_chain": evil.pem, "spiffe_ids": unclaimed, "token_subject": "spiffe_id", "default_audience": "payments",
		})
		if _, err := mtlsLogin(t, e, "evil", key, evil.svidConn(t, svidOptions{uris: []string{unclaimed}})); !errors.Is(err, logical.ErrPermissionDenied) {
			t.Fatalf("login with an SVID of the attacker's own CA: %v", err)
		}
	})

	t.Run("per-service extra trust domain", func(t *testing.T) {
		e, _ := operatorEnv(t)
		evil := newTestCA(t, "attacker-ca")
		for _, tc := range []struct {
			data map[string]any
			want string
		}{
			{map[string]any{"ca_chain": evil.pem, "spiffe_ids": "spiffe://evil.example/ns/x", "trust_domains": "evil.example"}, "trust_domains/<name>"},
			{map[string]any{"ca_chain": evil.pem, "spiffe_ids": "spiffe://evil.example/ns/x"}, "trust_domains/evil.example"},
			{map[string]any{"ca_chain": evil.pem, "spiffe_ids": "spiffe://evil.example/ns/x", "token_subject": "spiffe_id", "default_audience": "payments"}, "only for IDs in config trust_domain"},
		} {
			e.mustFail(t, logical.UpdateOperation, "services/evil", tc.data, tc.want)
		}
	})

	t.Run("self-signed certificate", func(t *testing.T) {
		e, _ := operatorEnv(t)
		cert, key, certPEM := selfSignedSVID(t, unclaimed)
		e.mustFail(t, logical.UpdateOperation, "services/evil", map[string]any{
			"certificate": certPEM, "spiffe_ids": unclaimed, "token_subject": "spiffe_id", "default_audience": "payments",
		}, "does not chain to the bundle of trust domain")
		// Stored anyway (by an older release): the login still fails,
		// because the bundle is checked at every login.
		entry := &serviceEntry{
			Name: "evil", Certificate: certPEM, SPIFFEIDs: []string{unclaimed}, RequireMTLS: true,
			TokenSubject: tokenSubjectSPIFFEID, DefaultAudience: "payments", Registration: newRegistration(), UpdatedAt: time.Now(),
		}
		created, err := generateAPIKey(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		entry.APIKeys = []apiKeyEntry{created.entry}
		if err := e.b.putService(t.Context(), e.storage, entry); err != nil {
			t.Fatal(err)
		}
		conn := tlsConn(handshake(t, []*x509.Certificate{cert}, key))
		if _, err := mtlsLogin(t, e, "evil", created.secret, conn); !errors.Is(err, logical.ErrPermissionDenied) {
			t.Fatalf("login with a self-signed SVID: %v", err)
		}
	})
}

func TestBundleAndServiceTrustMustBothHold(t *testing.T) {
	mesh := newTestCA(t, "mesh-root")
	intCert, intKey, intPEM := mesh.issue(t, "team-intermediate", leafOptions{isCA: true, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	team := &testPKI{cert: intCert, key: intKey, pem: intPEM}
	id := "spiffe://" + testTD + "/ns/shop/sa/orders"
	e := getTestBackend(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"trust_domain": testTD, "lockout_threshold": 0})
	e.trustDomain(t, testTD, mesh)
	key := e.register(t, "orders", map[string]any{"ca_chain": team.pem, "spiffe_ids": id})

	// Issued by the team's intermediate and presented with it: both hold.
	leaf, leafKey, _ := team.issueSVID(t, svidOptions{uris: []string{id}})
	if resp, err := mtlsLogin(t, e, "orders", key, tlsConn(handshake(t, []*x509.Certificate{leaf, intCert}, leafKey))); err != nil || resp.IsError() {
		t.Fatalf("login through the intermediate: %v %#v", err, resp)
	}
	// The bundle alone (another workload of the mesh): ca_chain narrows it.
	if _, err := mtlsLogin(t, e, "orders", key, mesh.svidConn(t, svidOptions{uris: []string{id}})); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("an SVID outside ca_chain: %v", err)
	}
	// ca_chain alone (the operator no longer trusts the mesh root): the
	// bundle decides.
	other := newTestCA(t, "new-mesh-root")
	e.trustDomain(t, testTD, other)
	if _, err := mtlsLogin(t, e, "orders", key, tlsConn(handshake(t, []*x509.Certificate{leaf, intCert}, leafKey))); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("an SVID outside the bundle: %v", err)
	}
}

func TestOneRegistrantPerSPIFFEID(t *testing.T) {
	e, mesh := operatorEnv(t)
	svc := func(ids string) map[string]any { return map[string]any{"ca_chain": mesh.pem, "spiffe_ids": ids} }
	e.register(t, "shop", svc("spiffe://"+testTD+"/ns/shop/sa/web/*"))
	refusals := map[string]struct{ ids, holder string }{
		"the same exact ID":               {"spiffe://" + testTD + "/ns/shop/sa/orders", "orders"},
		"a pattern covering another's ID": {"spiffe://" + testTD + "/ns/shop/*", "orders"},
		"a trust-domain-wide pattern":     {"spiffe://" + testTD + "/*", "orders"},
		"an ID under another's pattern":   {"spiffe://" + testTD + "/ns/shop/sa/web/frontend", "shop"},
		"a pattern under another's":       {"spiffe://" + testTD + "/ns/shop/sa/web/a/*", "shop"},
		"the same pattern":                {"spiffe://" + testTD + "/ns/shop/sa/web/*", "shop"},
	}
	for name, tc := range refusals {
		t.Run(name, func(t *testing.T) {
			e.mustFail(t, logical.UpdateOperation, "services/intruder", svc(tc.ids), `which service "`+tc.holder+`" holds`)
		})
	}
	// Neighbours that share no ID are fine, and a service may keep its own.
	e.register(t, "shopping", svc("spiffe://"+testTD+"/ns/shopping/*,spiffe://"+testTD+"/ns/shop/sa/web"))
	e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"spiffe_ids": "spiffe://" + testTD + "/ns/shop/sa/orders"})
	// An existing service cannot grow into another's IDs either.
	e.mustFail(t, logical.UpdateOperation, "services/shopping", map[string]any{"spiffe_ids": "spiffe://" + testTD + "/ns/*"}, "holds")
	// Overlaps stored by an older release are found at the next write of
	// an identity field, token_subject included.
	stored, _ := readService(t.Context(), e.storage, "shopping")
	stored.SPIFFEIDs = append(stored.SPIFFEIDs, "spiffe://"+testTD+"/ns/shop/sa/orders")
	if err := e.b.putService(t.Context(), e.storage, stored); err != nil {
		t.Fatal(err)
	}
	e.mustFail(t, logical.UpdateOperation, "services/shopping", map[string]any{"token_subject": "spiffe_id", "default_audience": "x"}, `which service "orders" holds`)
	e.mustOK(t, logical.UpdateOperation, "services/shopping", map[string]any{"metadata": "owner=shop"})
	// Deleting the holder frees the ID.
	e.mustOK(t, logical.DeleteOperation, "services/shop", nil)
	e.register(t, "web", svc("spiffe://"+testTD+"/ns/shop/sa/web/frontend"))
}

func TestOneRegistrantUnderConcurrentWrites(t *testing.T) {
	e, mesh := operatorEnv(t)
	id := "spiffe://" + testTD + "/ns/race/sa/winner"
	const writers = 8
	var wg sync.WaitGroup
	won := make(chan string, writers)
	for i := range writers {
		name := "racer" + string(rune('a'+i))
		wg.Go(func() {
			resp, err := e.request(t, logical.UpdateOperation, "services/"+name, map[string]any{"ca_chain": mesh.pem, "spiffe_ids": id})
			if err == nil && resp != nil && !resp.IsError() {
				won <- name
			}
		})
	}
	wg.Wait()
	close(won)
	var winners []string
	for w := range won {
		winners = append(winners, w)
	}
	if len(winners) != 1 {
		t.Fatalf("%d writers registered %s: %v", len(winners), id, winners)
	}
}

func TestSPIFFEPatternOverlaps(t *testing.T) {
	cases := []struct {
		a, b string
		want bool
	}{
		{"spiffe://td/a/b", "spiffe://td/a/b", true},
		{"spiffe://td/a/b", "spiffe://td/a/c", false},
		{"spiffe://td/a/b", "spiffe://other/a/b", false},
		{"spiffe://td/a/*", "spiffe://td/a/b", true},
		{"spiffe://td/a/*", "spiffe://td/a", false},
		{"spiffe://td/a/*", "spiffe://td/ab", false},
		{"spiffe://td/a/*", "spiffe://td/ab/*", false},
		{"spiffe://td/a/*", "spiffe://td/a/b/*", true},
		{"spiffe://td/*", "spiffe://td/x/*", true},
		{"spiffe://td/*", "spiffe://other/*", false},
	}
	for _, tc := range cases {
		p, _ := parseSPIFFEPattern(tc.a)
		q, _ := parseSPIFFEPattern(tc.b)
		if got, back := p.overlaps(q), q.overlaps(p); got != tc.want || back != tc.want {
			t.Errorf("%s overlaps %s = %v/%v, want %v", tc.a, tc.b, got, back, tc.want)
		}
	}
}

// TestRemovedSPIFFEIDRefusedOffline: online verify already refused a
// JWT-SVID whose ID the service no longer lists; an offline verifier with a
// fresh revocation feed accepted it, since nothing in the feed changed.
func TestRemovedSPIFFEIDRefusedOffline(t *testing.T) {
	e, key, conn, _ := jwtSVIDEnv(t)
	resp, err := mtlsLogin(t, e, "orders", key, conn)
	if err != nil || resp.IsError() {
		t.Fatalf("login: %v %#v", err, resp)
	}
	tok := resp.Data["token"].(string)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := strings.TrimPrefix(r.URL.Path, "/")
		out, err := e.b.HandleRequest(r.Context(), &logical.Request{Operation: logical.ReadOperation, Path: path, Storage: e.storage, MountPoint: "meshauth/"})
		if err != nil || out == nil {
			http.Error(w, "no", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", out.Data[logical.HTTPContentType].(string))
		_, _ = w.Write(out.Data[logical.HTTPRawBody].([]byte))
	}))
	defer srv.Close()
	newVerifier := func() *meshtoken.Verifier {
		v, err := meshtoken.NewVerifier(t.Context(), meshtoken.VerifierConfig{
			JWKSURL: srv.URL + "/jwks", Issuer: "meshauth", Audience: "payments", HTTPClient: srv.Client(),
			Revocations: &meshtoken.RevocationConfig{},
		})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	peer := conn.ConnState.PeerCertificates[0]
	if _, err := newVerifier().Verify(t.Context(), tok, peer); err != nil {
		t.Fatalf("offline verify before the change: %v", err)
	}
	resp = e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"spiffe_ids": "spiffe://" + testTD + "/ns/other/*"})
	if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "revoked") {
		t.Fatalf("warnings %v", resp.Warnings)
	}
	if _, err := newVerifier().Verify(t.Context(), tok, peer); !errors.Is(err, meshtoken.ErrRevoked) {
		t.Fatalf("offline verify with a fresh feed after the ID was removed: %v", err)
	}
}

func TestTrustMaterialChangeAdvancesEpoch(t *testing.T) {
	e, mesh := operatorEnv(t)
	before, _ := readService(t.Context(), e.storage, "orders")
	// Naming the same values changes nothing.
	e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"ca_chain": mesh.pem, "spiffe_ids": "spiffe://" + testTD + "/ns/shop/sa/orders"})
	if after, _ := readService(t.Context(), e.storage, "orders"); after.generation() != before.generation() {
		t.Fatal("an unchanged identity advanced the epoch")
	}
	other := newTestCA(t, "other")
	e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"ca_chain": other.pem + mesh.pem})
	if after, _ := readService(t.Context(), e.storage, "orders"); after.generation() == before.generation() {
		t.Fatal("replacing ca_chain kept the epoch")
	}
}

func TestJWTSVIDOnlyInEngineTrustDomain(t *testing.T) {
	e, mesh := operatorEnv(t)
	partner := newTestCA(t, "partner-ca")
	e.trustDomain(t, "partner.example", partner)
	fed := "spiffe://partner.example/ns/shop/sa/orders"
	e.mustFail(t, logical.UpdateOperation, "services/fed", map[string]any{"spiffe_ids": fed, "token_subject": "spiffe_id", "default_audience": "payments"}, "only for IDs in config trust_domain")
	key := e.register(t, "fed", map[string]any{"spiffe_ids": fed, "default_audience": "payments"})
	resp, err := mtlsLogin(t, e, "fed", key, partner.svidConn(t, svidOptions{uris: []string{fed}}))
	if err != nil || resp.IsError() {
		t.Fatalf("federated login: %v %#v", err, resp)
	}
	if _, claims := decodeJWT(t, resp.Data["token"].(string)); claims["sub"] != "fed" || claims["cnf"] == nil {
		t.Fatalf("federated token %#v", claims)
	}
	// The engine's trust domain moves after registration: the JWT-SVID
	// service's logins are refused, and the config write warns.
	warn := e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"trust_domain": "new.example"})
	if len(warn.Warnings) != 1 || !strings.Contains(warn.Warnings[0], "orders") {
		t.Fatalf("warnings %v", warn.Warnings)
	}
	_ = mesh
}

func TestStoredTrustDomainsFromAnOlderRelease(t *testing.T) {
	mesh := newTestCA(t, "mesh-ca")
	partner := newTestCA(t, "partner-ca")
	var logs strings.Builder
	e := getTestBackendLogging(t, &syncWriter{w: &logs})
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"trust_domain": testTD, "lockout_threshold": 1})
	// As the second release stored it: the service's own trust_domains.
	id := "spiffe://partner.example/ns/shop/sa/orders"
	created, err := generateAPIKey(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	entry := &serviceEntry{
		Name: "orders", CAChain: partner.pem, SPIFFEIDs: []string{id}, TrustDomains: []string{"partner.example"},
		RequireMTLS: true, DefaultAudience: "payments", Registration: newRegistration(), APIKeys: []apiKeyEntry{created.entry}, UpdatedAt: time.Now(),
	}
	if err := e.b.putService(t.Context(), e.storage, entry); err != nil {
		t.Fatal(err)
	}
	conn := partner.svidConn(t, svidOptions{uris: []string{id}})
	for range 3 {
		if _, err := mtlsLogin(t, e, "orders", created.secret, conn); !errors.Is(err, logical.ErrPermissionDenied) {
			t.Fatalf("login before the operator registered the trust domain: %v", err)
		}
	}
	if !strings.Contains(logs.String(), "trust_domains/partner.example") {
		t.Fatalf("the log does not say which entry is missing:\n%s", logs.String())
	}
	read := e.mustOK(t, logical.ReadOperation, "services/orders", nil)
	if msg, _ := read.Data["identity_error"].(string); !strings.Contains(msg, "partner.example") || read.Data["trust_domains"] == nil {
		t.Fatalf("read %#v", read.Data)
	}
	// A mesh CA registered for another trust domain does not help.
	e.trustDomain(t, testTD, mesh)
	if _, err := mtlsLogin(t, e, "orders", created.secret, conn); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("login: %v", err)
	}
	// The operator registers it: the same entry logs in again (failures
	// before were not the caller's, so nothing locked it out).
	e.trustDomain(t, "partner.example", partner)
	if resp, err := mtlsLogin(t, e, "orders", created.secret, conn); err != nil || resp.IsError() {
		t.Fatalf("login after the operator registered the trust domain: %v %#v", err, resp)
	}
	// The next write drops the withdrawn field, and says so.
	resp := e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"metadata": "owner=shop"})
	if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "withdrawn trust_domains") {
		t.Fatalf("warnings %v", resp.Warnings)
	}
	if stored, _ := readService(t.Context(), e.storage, "orders"); stored.TrustDomains != nil {
		t.Fatalf("stored %v", stored.TrustDomains)
	}
}

func TestTrustDomainsPath(t *testing.T) {
	e := getTestBackend(t)
	ca := newTestCA(t, "mesh-ca")
	leaf, _, leafPEM := ca.issue(t, "leaf", leafOptions{})
	_ = leaf
	e.mustFail(t, logical.UpdateOperation, "trust_domains/Mesh.Example", map[string]any{"bundle": ca.pem}, "use meshauth/trust_domains/mesh.example")
	e.mustFail(t, logical.UpdateOperation, "trust_domains/mesh.example", map[string]any{}, "bundle is required")
	e.mustFail(t, logical.UpdateOperation, "trust_domains/mesh.example", map[string]any{"bundle": leafPEM}, "is not a CA certificate")
	e.mustFail(t, logical.UpdateOperation, "trust_domains/mesh.example", map[string]any{"bundle": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}, "private key")
	e.mustFail(t, logical.UpdateOperation, "trust_domains/mesh.example", map[string]any{"bundle": ca.pem, "ca_chain": ca.pem}, "unknown field")
	e.mustFail(t, logical.UpdateOperation, "trust_domains/mesh$", map[string]any{"bundle": ca.pem}, "unsupported path")
	e.trustDomain(t, testTD, ca)
	read := e.mustOK(t, logical.ReadOperation, "trust_domains/"+testTD, nil).Data
	if read["bundle"] != ca.pem || len(read["authorities"].([]map[string]any)) != 1 {
		t.Fatalf("read %#v", read)
	}
	if list := e.mustOK(t, logical.ListOperation, "trust_domains/", nil).Data["keys"].([]string); len(list) != 1 || list[0] != testTD {
		t.Fatalf("list %v", list)
	}
	e.mustOK(t, logical.DeleteOperation, "trust_domains/"+testTD, nil)
	if resp, _ := e.request(t, logical.ReadOperation, "trust_domains/"+testTD, nil); resp != nil {
		t.Fatalf("read after delete %#v", resp)
	}
}

func TestTrustDomainWriteOnAnotherNodeInvalidates(t *testing.T) {
	// A standby serves logins from its cache; the operator's write on the
	// active node reaches it through Invalidate.
	e, mesh := operatorEnv(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"lockout_threshold": 0})
	standby := newBackend()
	conf := logical.TestBackendConfig()
	conf.StorageView = e.storage
	if err := standby.Setup(t.Context(), conf); err != nil {
		t.Fatal(err)
	}
	key := e.register(t, "web", map[string]any{"spiffe_ids": "spiffe://" + testTD + "/ns/web/sa/x"})
	conn := mesh.svidConn(t, svidOptions{uris: []string{"spiffe://" + testTD + "/ns/web/sa/x"}})
	node2 := &testEnv{b: standby, storage: e.storage, clock: e.clock}
	if resp, err := mtlsLogin(t, node2, "web", key, conn); err != nil || resp.IsError() {
		t.Fatalf("login on the standby: %v %#v", err, resp)
	}
	e.mustOK(t, logical.DeleteOperation, "trust_domains/"+testTD, nil)
	standby.invalidate(t.Context(), storageTrustDomainPrefix+testTD)
	if _, err := mtlsLogin(t, node2, "web", key, conn); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("login on the standby after the trust domain was deleted: %v", err)
	}
}

// syncWriter serialises writes of concurrent loggers into one builder.
type syncWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// A JWT-SVID holds only while the engine would still mint it. Found by the
// attacker's read of the trust-domain change: deleting the trust domain,
// moving config trust_domain or switching token_subject back to name left
// issued JWT-SVIDs valid at verify.
func TestJWTSVIDEndsWhenItsIdentityIsWithdrawn(t *testing.T) {
	id := "spiffe://" + testTD + "/ns/shop/sa/svid"
	mint := func(t *testing.T) (*testEnv, string, string) {
		e, mesh := operatorEnv(t)
		key := e.register(t, "svid", map[string]any{"spiffe_ids": id, "token_subject": "spiffe_id", "default_audience": "payments"})
		resp, err := mtlsLogin(t, e, "svid", key, mesh.svidConn(t, svidOptions{uris: []string{id}}))
		if err != nil || resp.IsError() {
			t.Fatalf("login: %v %#v", err, resp)
		}
		tok := resp.Data["token"].(string)
		if ok, reason := e.verify(t, tok, nil); !ok {
			t.Fatalf("fresh JWT-SVID refused: %s", reason)
		}
		return e, tok, key
	}
	t.Run("trust domain deleted", func(t *testing.T) {
		e, tok, _ := mint(t)
		e.mustOK(t, logical.DeleteOperation, "trust_domains/"+testTD, nil)
		if ok, reason := e.verify(t, tok, nil); ok || reason != reasonIdentityWithdrawn {
			t.Fatalf("verify after the trust domain went: %v %q", ok, reason)
		}
	})
	t.Run("config trust_domain moved", func(t *testing.T) {
		e, tok, _ := mint(t)
		e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"trust_domain": "new.example"})
		if ok, reason := e.verify(t, tok, nil); ok || reason != reasonIdentityWithdrawn {
			t.Fatalf("verify after trust_domain moved: %v %q", ok, reason)
		}
	})
	t.Run("token_subject back to name", func(t *testing.T) {
		e, tok, _ := mint(t)
		resp := e.mustOK(t, logical.UpdateOperation, "services/svid", map[string]any{"token_subject": "name"})
		if ok, reason := e.verify(t, tok, nil); ok {
			t.Fatalf("JWT-SVID still valid after token_subject=name (%q)", reason)
		}
		if len(resp.Warnings) == 0 {
			t.Fatal("the write did not warn that earlier tokens end")
		}
	})
}
