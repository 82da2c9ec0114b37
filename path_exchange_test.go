package meshauth

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// meshService is one registered service with its certificate and the
// connection it logs in over.
type meshService struct {
	name string
	key  string
	leaf *x509.Certificate
	conn *logical.Connection
}

// exchangeEnv registers orders, payments and ledger, each with its own
// certificate from one CA: orders may call payments, payments may exchange
// toward ledger.
func exchangeEnv(t testing.TB) (*testEnv, map[string]*meshService) {
	t.Helper()
	e := getTestBackend(t)
	ca := newTestCA(t, "mesh-ca")
	svcs := map[string]*meshService{}
	for _, name := range []string{"orders", "payments", "ledger"} {
		leaf, leafKey, _ := ca.issue(t, name, leafOptions{dns: []string{name + ".mesh"}})
		data := map[string]any{
			"ca_chain": ca.pem, "hostnames": name + ".mesh",
			"allowed_audiences": "payments,ledger,orders",
		}
		switch name {
		case "orders":
			data["default_audience"] = "payments"
			data["claims"] = map[string]any{"tenant": "acme"}
		case "payments":
			data["exchange_audiences"] = "ledger"
		}
		svcs[name] = &meshService{
			name: name,
			key:  e.register(t, name, data),
			leaf: leaf,
			conn: tlsConn(handshake(t, []*x509.Certificate{leaf}, leafKey)),
		}
	}
	return e, svcs
}

// loginAs logs a service in over its own connection.
func loginAs(t testing.TB, e *testEnv, s *meshService, extra map[string]any) string {
	t.Helper()
	data := map[string]any{"api_key": s.key}
	for k, v := range extra {
		data[k] = v
	}
	resp, err := e.requestWith(t, logical.UpdateOperation, "login/"+s.name, data, s.conn)
	if err != nil || resp.IsError() {
		t.Fatalf("login %s: %v %#v", s.name, err, resp)
	}
	return resp.Data["token"].(string)
}

// exchange calls exchange/<s.name> over conn with s's key.
func exchange(t testing.TB, e *testEnv, s *meshService, conn *logical.Connection, extra map[string]any) (*logical.Response, error) {
	t.Helper()
	data := map[string]any{"api_key": s.key}
	for k, v := range extra {
		data[k] = v
	}
	return e.requestWith(t, logical.UpdateOperation, "exchange/"+s.name, data, conn)
}

// refusedWith fails unless the exchange was refused with a message
// containing want.
func refusedWith(t *testing.T, resp *logical.Response, err error, want string) {
	t.Helper()
	msg := ""
	switch {
	case err != nil:
		msg = err.Error()
	case resp != nil && resp.IsError():
		msg = resp.Error().Error()
	default:
		t.Fatalf("exchange succeeded; want a refusal containing %q", want)
	}
	if !strings.Contains(msg, want) {
		t.Fatalf("refusal %q does not contain %q", msg, want)
	}
}

func payloadOf(t *testing.T, tok string) map[string]any {
	t.Helper()
	raw, err := decodeSegment(strings.Split(tok, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]any{}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestExchangeIssuesBoundDelegatedToken(t *testing.T) {
	e, s := exchangeEnv(t)
	orig := loginAs(t, e, s["orders"], nil)
	writes := func() int64 { return e.storage.puts.Load() + e.storage.deletes.Load() }
	before := writes()
	data := map[string]any{
		"subject_token": orig, "audience": "ledger",
		"grant_type": grantTypeTokenExchange, "subject_token_type": tokenTypeJWT,
	}
	if resp, err := exchange(t, e, s["payments"], s["payments"].conn, data); err != nil || resp.IsError() {
		t.Fatalf("exchange: %v %#v", err, resp)
	}
	if writes() != before {
		t.Error("the exchange wrote to storage")
	}
	// Warm, like a login, it makes no storage call at all.
	calls := e.storage.total()
	resp, err := exchange(t, e, s["payments"], s["payments"].conn, data)
	if err != nil || resp.IsError() {
		t.Fatalf("exchange: %v %#v", err, resp)
	}
	if got := e.storage.total() - calls; got != 0 {
		t.Errorf("a warm exchange made %d storage calls; want 0", got)
	}
	for _, f := range []string{"token", "issued_token_type", "token_type", "expires_in", "expires_at", "jti", "kid"} {
		if _, ok := resp.Data[f]; !ok {
			t.Errorf("answer lacks %s", f)
		}
	}
	if resp.Data["issued_token_type"] != tokenTypeJWT || resp.Data["token_type"] != "Bearer" {
		t.Errorf("answer %#v", resp.Data)
	}
	tok := resp.Data["token"].(string)
	p, o := payloadOf(t, tok), payloadOf(t, orig)
	if p["sub"] != "orders" || p["aud"] != "ledger" || p["tenant"] != "acme" || p["gen"] != o["gen"] {
		t.Errorf("claims %v", p)
	}
	pay, _ := e.b.getService(t.Context(), e.storage, "payments")
	if act, _ := p["act"].(map[string]any); act == nil || act["sub"] != "payments" || act["gen"] != pay.entry.generation() || act["act"] != nil {
		t.Errorf("act %v", p["act"])
	}
	if cnf, _ := p["cnf"].(map[string]any); cnf == nil || cnf["x5t#S256"] != meshtoken.CertificateThumbprint(s["payments"].leaf) {
		t.Errorf("cnf %v; want payments' certificate", p["cnf"])
	}
	if d, _ := p[meshtoken.ClaimDerivedFrom].([]any); len(d) != 1 || d[0] != o["jti"] {
		t.Errorf("derived_from %v; want [%v]", p[meshtoken.ClaimDerivedFrom], o["jti"])
	}
	if p["exp"].(float64) > o["exp"].(float64) {
		t.Errorf("exp %v after the subject's %v", p["exp"], o["exp"])
	}
	// verify shows the chain and checks the binding to payments.
	ok, reason := e.verify(t, tok, map[string]any{"audience": "ledger", "certificate": pemCert(s["payments"].leaf.Raw), "max_delegation_depth": 1})
	if !ok {
		t.Fatalf("verify with payments' certificate: %s", reason)
	}
	// Secure by default: verify refuses a token with act unless the caller
	// opts in with max_delegation_depth.
	if ok, reason := e.verify(t, tok, map[string]any{"audience": "ledger", "certificate": pemCert(s["payments"].leaf.Raw)}); ok || reason != meshtoken.ReasonDelegationNotAllowed {
		t.Errorf("verify without max_delegation_depth: %v %s", ok, reason)
	}
	e.mustFail(t, logical.UpdateOperation, "verify", map[string]any{"token": tok, "max_delegation_depth": -1}, "max_delegation_depth must be")
	if ok, reason := e.verify(t, tok, map[string]any{"certificate": pemCert(s["orders"].leaf.Raw)}); ok || reason != meshtoken.ReasonCertMismatch {
		t.Errorf("verify with orders' certificate: %v %s", ok, reason)
	}
	vr := e.mustOK(t, logical.UpdateOperation, "verify", map[string]any{"token": tok, "max_delegation_depth": 1})
	if got := vr.Data["actors"]; !equalStrings(got, []string{"payments"}) {
		t.Errorf("verify actors %v", got)
	}
}

func equalStrings(got any, want []string) bool {
	g, ok := got.([]string)
	if !ok || len(g) != len(want) {
		return false
	}
	for i := range g {
		if g[i] != want[i] {
			return false
		}
	}
	return true
}

func TestExchangeExpiresWithSubject(t *testing.T) {
	e, s := exchangeEnv(t)
	orig := loginAs(t, e, s["orders"], map[string]any{"ttl": "2m"})
	resp, err := exchange(t, e, s["payments"], s["payments"].conn, map[string]any{"subject_token": orig, "audience": "ledger"})
	if err != nil || resp.IsError() {
		t.Fatalf("exchange: %v %#v", err, resp)
	}
	if p, o := payloadOf(t, resp.Data["token"].(string)), payloadOf(t, orig); p["exp"] != o["exp"] {
		t.Errorf("exp %v; want the subject's %v", p["exp"], o["exp"])
	}
}

func TestExchangeRefusals(t *testing.T) {
	e, s := exchangeEnv(t)
	orig := loginAs(t, e, s["orders"], nil)
	pay := s["payments"]
	cases := []struct {
		name  string
		as    *meshService
		conn  *logical.Connection
		extra map[string]any
		want  string
	}{
		{"addressed to someone else", pay, pay.conn, map[string]any{"subject_token": loginAs(t, e, s["orders"], map[string]any{"audience": "ledger"}), "audience": "ledger"}, "reason wrong_audience"},
		{"audience not in list", pay, pay.conn, map[string]any{"subject_token": orig, "audience": "orders"}, "not in the exchange_audiences"},
		{"no exchange_audiences", s["ledger"], s["ledger"].conn, map[string]any{"subject_token": loginAs(t, e, s["orders"], map[string]any{"audience": "ledger"}), "audience": "payments"}, "may not exchange"},
		{"no certificate", pay, &logical.Connection{RemoteAddr: "127.0.0.1"}, map[string]any{"subject_token": orig, "audience": "ledger"}, loginRefusedPrefix},
		{"bad grant_type", pay, pay.conn, map[string]any{"subject_token": orig, "audience": "ledger", "grant_type": "client_credentials"}, "grant_type must be"},
		{"bad subject_token_type", pay, pay.conn, map[string]any{"subject_token": orig, "audience": "ledger", "subject_token_type": "urn:ietf:params:oauth:token-type:access_token"}, "subject_token_type must be"},
		{"garbage subject", pay, pay.conn, map[string]any{"subject_token": "a.b.c", "audience": "ledger"}, "reason malformed"},
		{"no subject", pay, pay.conn, map[string]any{"audience": "ledger"}, "subject_token is required"},
		{"no audience", pay, pay.conn, map[string]any{"subject_token": orig}, "audience is required"},
		{"unknown field", pay, pay.conn, map[string]any{"subject_token": orig, "audience": "ledger", "ttl": 5}, "ttl"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := exchange(t, e, tc.as, tc.conn, tc.extra)
			refusedWith(t, resp, err, tc.want)
		})
	}
}

// TestExchangeNeedsCertificate: a service that logs in without mTLS still
// cannot exchange, since the issued token is always bound.
func TestExchangeNeedsCertificate(t *testing.T) {
	e, s := exchangeEnv(t)
	key := e.register(t, "batch", map[string]any{"exchange_audiences": "ledger"})
	e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"allowed_audiences": "payments,batch"})
	orig := loginAs(t, e, s["orders"], map[string]any{"audience": "batch"})
	resp, err := exchange(t, e, &meshService{name: "batch", key: key}, &logical.Connection{RemoteAddr: "127.0.0.1"}, map[string]any{"subject_token": orig, "audience": "ledger"})
	refusedWith(t, resp, err, "no verified client certificate")
	var coded logical.HTTPCodedError
	if !errors.As(err, &coded) || coded.Code() != http.StatusForbidden {
		t.Errorf("err %v; want a 403", err)
	}
}

func TestExchangeWrongKeyCountsTowardLockout(t *testing.T) {
	e, s := exchangeEnv(t)
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"lockout_threshold": 2})
	orig := loginAs(t, e, s["orders"], nil)
	bad := *s["payments"]
	bad.key = "wrong"
	for range 2 {
		resp, err := exchange(t, e, &bad, bad.conn, map[string]any{"subject_token": orig, "audience": "ledger"})
		refusedWith(t, resp, err, loginRefusedPrefix)
	}
	// Locked: the right key is refused at exchange and at login alike.
	resp, err := exchange(t, e, s["payments"], s["payments"].conn, map[string]any{"subject_token": orig, "audience": "ledger"})
	refusedWith(t, resp, err, "locked")
	resp, err = mtlsLogin(t, e, "payments", s["payments"].key, s["payments"].conn)
	refusedWith(t, resp, err, "locked")
}

func TestExchangeDepth(t *testing.T) {
	e, s := exchangeEnv(t)
	e.mustOK(t, logical.UpdateOperation, "services/ledger", map[string]any{"exchange_audiences": "orders"})
	orig := loginAs(t, e, s["orders"], nil)
	resp, err := exchange(t, e, s["payments"], s["payments"].conn, map[string]any{"subject_token": orig, "audience": "ledger"})
	if err != nil || resp.IsError() {
		t.Fatalf("exchange: %v %#v", err, resp)
	}
	hop1 := resp.Data["token"].(string)
	// ledger (default depth 1) may not make it a second hop.
	resp, err = exchange(t, e, s["ledger"], s["ledger"].conn, map[string]any{"subject_token": hop1, "audience": "orders"})
	refusedWith(t, resp, err, "at most 1 (max_delegation_depth)")
	e.mustOK(t, logical.UpdateOperation, "services/ledger", map[string]any{"max_delegation_depth": 2})
	resp, err = exchange(t, e, s["ledger"], s["ledger"].conn, map[string]any{"subject_token": hop1, "audience": "orders"})
	if err != nil || resp.IsError() {
		t.Fatalf("second hop: %v %#v", err, resp)
	}
	hop2 := resp.Data["token"].(string)
	p, o, h := payloadOf(t, hop2), payloadOf(t, orig), payloadOf(t, hop1)
	act := p["act"].(map[string]any)
	if act["sub"] != "ledger" || act["act"].(map[string]any)["sub"] != "payments" {
		t.Errorf("act %v", act)
	}
	if d := p[meshtoken.ClaimDerivedFrom].([]any); len(d) != 2 || d[0] != o["jti"] || d[1] != h["jti"] {
		t.Errorf("derived_from %v", d)
	}
	// Revoking the original ends both hops at once.
	e.mustOK(t, logical.UpdateOperation, "revoke", map[string]any{"token": orig})
	for _, tok := range []string{hop1, hop2} {
		if ok, reason := e.verify(t, tok, nil); ok || reason != reasonTokenRevoked {
			t.Errorf("after revoking the original: %v %s", ok, reason)
		}
	}
	e.mustFail(t, logical.UpdateOperation, "services/ledger", map[string]any{"max_delegation_depth": 0}, "max_delegation_depth must be")
	e.mustFail(t, logical.UpdateOperation, "services/ledger", map[string]any{"exchange_audiences": "Not A Name"}, "not a service name")
}

// engineFeed serves the engine's read endpoints (jwks, revocations) over
// HTTP for a meshtoken.Verifier.
func engineFeed(t *testing.T, e *testEnv) *httptest.Server {
	t.Helper()
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
	t.Cleanup(srv.Close)
	return srv
}

func TestRevokingOriginalEndsExchanged(t *testing.T) {
	e, s := exchangeEnv(t)
	orig := loginAs(t, e, s["orders"], nil)
	resp, err := exchange(t, e, s["payments"], s["payments"].conn, map[string]any{"subject_token": orig, "audience": "ledger"})
	if err != nil || resp.IsError() {
		t.Fatalf("exchange: %v %#v", err, resp)
	}
	tok := resp.Data["token"].(string)
	srv := engineFeed(t, e)
	ledger := func(cfg meshtoken.VerifierConfig) *meshtoken.Verifier {
		cfg.JWKSURL, cfg.Issuer, cfg.Audience, cfg.HTTPClient = srv.URL+"/jwks", "meshauth", "ledger", srv.Client()
		cfg.RequireBinding = true
		cfg.Revocations = &meshtoken.RevocationConfig{}
		v, err := meshtoken.NewVerifier(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	c, err := ledger(meshtoken.VerifierConfig{MaxDelegationDepth: 1}).Verify(t.Context(), tok, s["payments"].leaf)
	if err != nil {
		t.Fatalf("ledger with payments' certificate: %v", err)
	}
	if got := c.Actors(); len(got) != 1 || got[0] != "payments" || c.Subject != "orders" {
		t.Errorf("claims: sub %s actors %v", c.Subject, got)
	}
	if _, err := ledger(meshtoken.VerifierConfig{}).Verify(t.Context(), tok, s["orders"].leaf); !errors.Is(err, meshtoken.ErrCertMismatch) {
		t.Errorf("ledger with orders' certificate: %v", err)
	}
	if _, err := ledger(meshtoken.VerifierConfig{}).Verify(t.Context(), tok, nil); !errors.Is(err, meshtoken.ErrCertMissing) {
		t.Errorf("ledger with no certificate: %v", err)
	}
	// The Verifier's delegation options.
	if _, err := ledger(meshtoken.VerifierConfig{MaxDelegationDepth: 1, AllowedActors: []string{"billing"}}).Verify(t.Context(), tok, s["payments"].leaf); !errors.Is(err, meshtoken.ErrDelegation) {
		t.Errorf("actor not allowed: %v", err)
	}
	if _, err := ledger(meshtoken.VerifierConfig{MaxDelegationDepth: 1, AllowedActors: []string{"payments"}}).Verify(t.Context(), tok, s["payments"].leaf); err != nil {
		t.Errorf("allowed actor: %v", err)
	}
	// Secure by default: without MaxDelegationDepth, even an allowed actor's
	// token is refused.
	for name, cfg := range map[string]meshtoken.VerifierConfig{
		"default":             {},
		"AllowedActors alone": {AllowedActors: []string{"payments"}},
		"negative depth":      {MaxDelegationDepth: -1},
	} {
		if _, err := ledger(cfg).Verify(t.Context(), tok, s["payments"].leaf); !errors.Is(err, meshtoken.ErrDelegation) || meshtoken.ReasonOf(err) != meshtoken.ReasonDelegationNotAllowed {
			t.Errorf("%s: %v", name, err)
		}
	}

	e.mustOK(t, logical.UpdateOperation, "revoke", map[string]any{"token": orig})
	if ok, reason := e.verify(t, tok, nil); ok || reason != reasonTokenRevoked {
		t.Errorf("online verify after revoking the original: %v %s", ok, reason)
	}
	if _, err := ledger(meshtoken.VerifierConfig{MaxDelegationDepth: 1}).Verify(t.Context(), tok, s["payments"].leaf); !errors.Is(err, meshtoken.ErrRevoked) {
		t.Errorf("offline verify with a fresh feed after revoking the original: %v", err)
	}
}

func TestExchangedTokenEndsWithSubjectServiceAndActor(t *testing.T) {
	e, s := exchangeEnv(t)
	orig := loginAs(t, e, s["orders"], nil)
	mint := func() string {
		resp, err := exchange(t, e, s["payments"], s["payments"].conn, map[string]any{"subject_token": orig, "audience": "ledger"})
		if err != nil || resp.IsError() {
			t.Fatalf("exchange: %v %#v", err, resp)
		}
		return resp.Data["token"].(string)
	}
	tok := mint()
	e.mustOK(t, logical.UpdateOperation, "services/payments", map[string]any{"disabled": true})
	if ok, reason := e.verify(t, tok, nil); ok || reason != reasonActorWithdrawn {
		t.Errorf("actor disabled: %v %s", ok, reason)
	}
	e.mustOK(t, logical.UpdateOperation, "services/payments", map[string]any{"disabled": false})
	// Re-enabling payments does not revive it: disabling advanced the epoch.
	if ok, reason := e.verify(t, tok, nil); ok || reason != reasonActorWithdrawn {
		t.Errorf("actor enabled again: %v %s", ok, reason)
	}
	tok = mint()
	srv := engineFeed(t, e)
	offline := func() error {
		v, err := meshtoken.NewVerifier(t.Context(), meshtoken.VerifierConfig{
			JWKSURL: srv.URL + "/jwks", Issuer: "meshauth", Audience: "ledger", HTTPClient: srv.Client(),
			Revocations: &meshtoken.RevocationConfig{}, MaxDelegationDepth: 1,
		})
		if err != nil {
			t.Fatal(err)
		}
		_, err = v.Verify(t.Context(), tok, s["payments"].leaf)
		return err
	}
	if err := offline(); err != nil {
		t.Fatalf("offline before the actor's revoke: %v", err)
	}
	e.mustOK(t, logical.UpdateOperation, "services/payments/revoke", nil)
	if ok, reason := e.verify(t, tok, nil); ok || reason != reasonActorWithdrawn {
		t.Errorf("actor's tokens revoked: %v %s", ok, reason)
	}
	if err := offline(); !errors.Is(err, meshtoken.ErrRevoked) {
		t.Errorf("offline with a fresh feed after the actor's revoke: %v", err)
	}
	tok = mint()
	e.mustOK(t, logical.UpdateOperation, "services/orders/revoke", nil)
	if ok, reason := e.verify(t, tok, nil); ok || reason != reasonServiceRevoked {
		t.Errorf("subject's service revoked: %v %s", ok, reason)
	}
}

// BenchmarkExchangeBesideLogin measures an exchange next to the login of
// the same acting service over the same connection, both warm: the
// exchange verifies one token and signs one, as a login signs one.
func BenchmarkExchangeBesideLogin(b *testing.B) {
	e, s := exchangeEnv(b)
	e.b.Logger().SetLevel(hclog.Off)
	orig := loginAs(b, e, s["orders"], nil)
	pay := s["payments"]
	b.Run("login", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if resp, err := mtlsLoginB(b, e, pay); err != nil || resp.IsError() {
				b.Fatal(err, resp)
			}
		}
	})
	b.Run("exchange", func(b *testing.B) {
		b.ReportAllocs()
		data := map[string]any{"subject_token": orig, "audience": "ledger"}
		for b.Loop() {
			if resp, err := exchange(b, e, pay, pay.conn, data); err != nil || resp.IsError() {
				b.Fatal(err, resp)
			}
		}
	})
}

func mtlsLoginB(b *testing.B, e *testEnv, s *meshService) (*logical.Response, error) {
	return e.requestWith(b, logical.UpdateOperation, "login/"+s.name, map[string]any{"api_key": s.key}, s.conn)
}

// A JWT-SVID is not exchanged: to SPIFFE verifiers, which read neither act
// nor cnf, the result would be a plain JWT-SVID of the caller (attacker's
// read of the exchange).
func TestExchangeRefusesJWTSVIDSubjects(t *testing.T) {
	e, mesh := operatorEnv(t)
	id := "spiffe://" + testTD + "/ns/shop/sa/caller"
	key := e.register(t, "caller", map[string]any{"spiffe_ids": id, "token_subject": "spiffe_id", "default_audience": "payments", "allowed_audiences": "payments"})
	resp, err := mtlsLogin(t, e, "caller", key, mesh.svidConn(t, svidOptions{uris: []string{id}}))
	if err != nil || resp.IsError() {
		t.Fatalf("login: %v %#v", err, resp)
	}
	svid := resp.Data["token"].(string)
	leaf, leafKey, _ := mesh.issue(t, "payments", leafOptions{dns: []string{"payments.mesh"}})
	payments := &meshService{
		name: "payments",
		key:  e.register(t, "payments", map[string]any{"ca_chain": mesh.pem, "hostnames": "payments.mesh", "exchange_audiences": "ledger"}),
		conn: tlsConn(handshake(t, []*x509.Certificate{leaf}, leafKey)),
	}
	resp, err = exchange(t, e, payments, payments.conn, map[string]any{"subject_token": svid, "audience": "ledger"})
	refusedWith(t, resp, err, "JWT-SVIDs are not exchanged")
}

// Revoking the caller's certificate ends the tokens exchanged from its
// tokens, online and offline, though their cnf is the actor's certificate:
// the exchanged token lists the subject token's certificate in
// meshauth_derived_cnf.
func TestRevokingCallerCertificateEndsExchanged(t *testing.T) {
	e, s := exchangeEnv(t)
	t.Cleanup(func() { e.b.certRevocation.stop() })
	ca := newRevCA(t, "orders-ca")
	ca.crlLife = 2 * time.Second // refreshed after about a second
	leaf, key := ca.issueLeaf(t, 1001)
	e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{
		"ca_chain": ca.pem, "hostnames": "orders.internal", "revocation_check": "crl",
	})
	s["orders"].leaf, s["orders"].conn = leaf, tlsConn(handshake(t, []*x509.Certificate{leaf}, key))
	orig := loginAs(t, e, s["orders"], nil)
	resp, err := exchange(t, e, s["payments"], s["payments"].conn, map[string]any{"subject_token": orig, "audience": "ledger"})
	if err != nil || resp.IsError() {
		t.Fatalf("exchange: %v %#v", err, resp)
	}
	tok := resp.Data["token"].(string)
	x5t := certificateThumbprint(leaf)
	if d, _ := payloadOf(t, tok)[meshtoken.ClaimDerivedCnf].([]any); len(d) != 1 || d[0] != x5t {
		t.Fatalf("%s %v; want [%s]", meshtoken.ClaimDerivedCnf, d, x5t)
	}
	srv := engineFeed(t, e)
	offline := func() error {
		v, err := meshtoken.NewVerifier(t.Context(), meshtoken.VerifierConfig{
			JWKSURL: srv.URL + "/jwks", Issuer: "meshauth", Audience: "ledger", HTTPClient: srv.Client(),
			Revocations: &meshtoken.RevocationConfig{}, MaxDelegationDepth: 1, RequireBinding: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		_, err = v.Verify(t.Context(), tok, s["payments"].leaf)
		return err
	}
	if ok, reason := e.verify(t, tok, map[string]any{"max_delegation_depth": 1}); !ok {
		t.Fatalf("online before the revocation: %s", reason)
	}
	if err := offline(); err != nil {
		t.Fatalf("offline before the revocation: %v", err)
	}
	ca.revoke(1001)
	waitFor(t, "orders' login refused after its certificate's revocation", func() bool {
		_, err := e.requestWith(t, logical.UpdateOperation, "login/orders", map[string]any{"api_key": s["orders"].key}, s["orders"].conn)
		return errors.Is(err, logical.ErrPermissionDenied)
	})
	waitFor(t, "the exchanged token refused online", func() bool {
		ok, reason := e.verify(t, tok, map[string]any{"max_delegation_depth": 1})
		return !ok && reason == reasonCertificateRevoked
	})
	if err := offline(); !errors.Is(err, meshtoken.ErrRevoked) {
		t.Errorf("offline with a fresh feed after the caller's certificate was revoked: %v", err)
	}
	// Nor can payments exchange it onward.
	e.mustOK(t, logical.UpdateOperation, "services/ledger", map[string]any{"exchange_audiences": "payments", "max_delegation_depth": 2})
	resp, err = exchange(t, e, s["ledger"], s["ledger"].conn, map[string]any{"subject_token": tok, "audience": "payments"})
	refusedWith(t, resp, err, reasonCertificateRevoked)
}
