package grpcauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// issuer is a stand-in engine: one ES256 key served as a JWKS, and an
// empty revocation feed an hour old at /revocations until feedDown is set.
type issuer struct {
	key      *ecdsa.PrivateKey
	srv      *httptest.Server
	feedDown atomic.Bool
}

func newIssuer(tb testing.TB) *issuer {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	point, _ := key.PublicKey.Bytes()
	b64 := base64.RawURLEncoding.EncodeToString
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{{"kid": "k1", "alg": "ES256", "kty": "EC", "crv": "P-256", "x": b64(point[1:33]), "y": b64(point[33:])}}})
	i := &issuer{key: key}
	i.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=300")
		if r.URL.Path != "/revocations" {
			_, _ = w.Write(jwks)
			return
		}
		if i.feedDown.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		feed := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"iss": "meshauth", "iat": time.Now().Add(-time.Hour).Unix(), "tokens": map[string]any{}, "services": map[string]any{}, "disabled": map[string]any{}, "keys": map[string]any{}})
		feed.Header["kid"], feed.Header["typ"] = "k1", meshtoken.RevocationsType
		s, _ := feed.SignedString(key)
		_, _ = w.Write([]byte(s))
	}))
	tb.Cleanup(i.srv.Close)
	return i
}

func (i *issuer) sign(tb testing.TB, bound *x509.Certificate) string {
	now := time.Now().Unix()
	claims := jwt.MapClaims{"iss": "meshauth", "sub": "orders", "aud": "payments", "iat": now, "nbf": now, "exp": now + 300, "jti": "J1"}
	if bound != nil {
		sum := sha256.Sum256(bound.Raw)
		claims["cnf"] = map[string]string{"x5t#S256": base64.RawURLEncoding.EncodeToString(sum[:])}
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	tok.Header["kid"] = "k1"
	s, err := tok.SignedString(i.key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func (i *issuer) verifier(tb testing.TB, proxies *meshtoken.TrustedProxies) *meshtoken.Verifier {
	v, err := meshtoken.NewVerifier(context.Background(), meshtoken.VerifierConfig{JWKSURL: i.srv.URL, Issuer: "meshauth", Audience: "payments", HTTPClient: i.srv.Client(), TrustedProxies: proxies, SkipRevocations: true})
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// pki is a CA, a server certificate for 127.0.0.1 and client certificates.
type pki struct {
	pool   *x509.CertPool
	server tls.Certificate
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
}

func newPKI(tb testing.TB) *pki {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(der)
	p := &pki{pool: x509.NewCertPool(), ca: ca, caKey: caKey}
	p.pool.AddCert(ca)
	p.server = p.issue(tb, "server", x509.ExtKeyUsageServerAuth)
	return p
}

func (p *pki) issue(tb testing.TB, cn string, usage x509.ExtKeyUsage) tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		tb.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// seen records the claims the handler saw.
type seen struct {
	mu     sync.Mutex
	claims *meshtoken.Claims
	token  string
	md     metadata.MD
}

func (s *seen) record(ctx context.Context) {
	c, _ := meshtoken.ClaimsFromContext(ctx)
	tok, _ := meshtoken.TokenFromContext(ctx)
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	s.claims, s.token, s.md = c, tok, md
	s.mu.Unlock()
}

// serve starts a gRPC health server behind the interceptors on loopback,
// over mutual TLS (client certificate optional) or, with plain, none.
func serve(tb testing.TB, p *pki, v *meshtoken.Verifier, plain bool) (string, *seen) {
	s := &seen{}
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(UnaryServerInterceptor(v), func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			s.record(ctx)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(StreamServerInterceptor(v), func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			s.record(ss.Context())
			return h(srv, ss)
		}),
	}
	if !plain {
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{p.server}, ClientCAs: p.pool, ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS13})))
	}
	srv := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	tb.Cleanup(srv.Stop)
	return lis.Addr().String(), s
}

func dial(tb testing.TB, addr string, p *pki, cert *tls.Certificate, opts ...grpc.DialOption) healthpb.HealthClient {
	cfg := &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS13}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}, opts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return healthpb.NewHealthClient(conn)
}

func static(tok string) TokenFunc {
	return func(context.Context) (string, error) { return tok, nil }
}

func TestInterceptorsVerifyAndBind(t *testing.T) {
	iss, p := newIssuer(t), newPKI(t)
	orders, other := p.issue(t, "orders", x509.ExtKeyUsageClientAuth), p.issue(t, "other", x509.ExtKeyUsageClientAuth)
	addr, s := serve(t, p, iss.verifier(t, nil), false)
	tok := iss.sign(t, orders.Leaf)
	ctx := t.Context()

	good := dial(t, addr, p, &orders, grpc.WithPerRPCCredentials(PerRPCCredentials(static(tok))))
	if _, err := good.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("unary with a bound token over mTLS: %v", err)
	}
	if s.claims == nil || s.claims.Subject != "orders" {
		t.Fatalf("claims in the handler's context: %#v", s.claims)
	}
	if s.token != tok {
		t.Fatal("the verified token is not in the handler's context")
	}
	s.claims = nil
	w, err := good.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	if err != nil || s.claims == nil || s.claims.Subject != "orders" {
		t.Fatalf("stream with a bound token: %v, claims %#v", err, s.claims)
	}

	for name, c := range map[string]healthpb.HealthClient{
		"token bound to another certificate": dial(t, addr, p, &other, grpc.WithPerRPCCredentials(PerRPCCredentials(static(tok)))),
		"bound token without a certificate":  dial(t, addr, p, nil, grpc.WithPerRPCCredentials(PerRPCCredentials(static(tok)))),
		"no token":                           dial(t, addr, p, &orders),
		"not a token":                        dial(t, addr, p, &orders, grpc.WithPerRPCCredentials(PerRPCCredentials(static("x.y.z")))),
	} {
		if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: unary %v; want Unauthenticated", name, err)
		}
		w, err := c.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			_, err = w.Recv()
		}
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: stream %v; want Unauthenticated", name, err)
		}
	}
}

// A revocation feed past its staleness with Vault unreachable makes calls
// Unavailable, as the Middleware answers 503 (regression: the interceptor
// mapped only a stale key set to Unavailable, a stale feed to
// Unauthenticated, which sends callers to log in again for nothing).
func TestInterceptorStaleFeedIsUnavailable(t *testing.T) {
	iss, p := newIssuer(t), newPKI(t)
	v, err := meshtoken.NewVerifier(t.Context(), meshtoken.VerifierConfig{
		JWKSURL: iss.srv.URL, Issuer: "meshauth", Audience: "payments", HTTPClient: iss.srv.Client(),
		Revocations: &meshtoken.RevocationConfig{URL: iss.srv.URL + "/revocations", MaxStaleness: time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	iss.feedDown.Store(true)
	time.Sleep(5 * time.Millisecond)
	orders := p.issue(t, "orders", x509.ExtKeyUsageClientAuth)
	addr, _ := serve(t, p, v, false)
	c := dial(t, addr, p, &orders, grpc.WithPerRPCCredentials(PerRPCCredentials(static(iss.sign(t, orders.Leaf)))))
	if _, err := c.Check(t.Context(), &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("stale feed: %v; want Unavailable", err)
	}
	if _, err := v.Verify(t.Context(), iss.sign(t, nil), nil); meshtoken.FailureOf(err) != meshtoken.FailureUnavailable {
		t.Fatalf("stale feed, Verify: %v", err)
	}
}

// The credentials never send a token without transport security: a
// channel without TLS refuses them, and so does a call on one.
func TestCredentialsRequireTransportSecurity(t *testing.T) {
	iss, p := newIssuer(t), newPKI(t)
	addr, _ := serve(t, p, iss.verifier(t, nil), true)
	asked := false
	creds := PerRPCCredentials(func(context.Context) (string, error) { asked = true; return "secret", nil })
	if !creds.RequireTransportSecurity() {
		t.Fatal("RequireTransportSecurity is false")
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(creds))
	if err == nil {
		_, err = healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{})
		_ = conn.Close()
	}
	if err == nil {
		t.Fatal("a call without transport security went through with the credentials")
	}
	// Per call, on an insecure channel: refused before the token is read.
	conn, err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	_, err = healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{}, grpc.PerRPCCredentials(creds))
	if err == nil || asked {
		t.Fatalf("per-call credentials on an insecure channel: err %v, token read %v", err, asked)
	}
}

// Behind a sidecar: the certificate comes from the forwarded-certificate
// metadata only when the peer is a trusted proxy; from anyone else it is
// ignored and removed before the handler sees it.
func TestInterceptorForwardedCertOnlyFromTrustedProxies(t *testing.T) {
	iss, p := newIssuer(t), newPKI(t)
	orders := p.issue(t, "orders", x509.ExtKeyUsageClientAuth)
	sidecar := p.issue(t, "sidecar", x509.ExtKeyUsageClientAuth)
	stranger := p.issue(t, "stranger", x509.ExtKeyUsageClientAuth)
	sum := sha256.Sum256(orders.Leaf.Raw)
	xfcc := "By=spiffe://mesh/payments;Hash=" + hex.EncodeToString(sum[:])
	tok := iss.sign(t, orders.Leaf)
	withXFCC := func(ctx context.Context) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "x-forwarded-client-cert", xfcc)
	}
	creds := grpc.WithPerRPCCredentials(PerRPCCredentials(static(tok)))

	byCert := &meshtoken.TrustedProxies{Certificates: []string{meshtoken.CertificateThumbprint(sidecar.Leaf)}, Header: meshtoken.HeaderXFCC}
	addr, s := serve(t, p, iss.verifier(t, byCert), false)
	if _, err := dial(t, addr, p, &sidecar, creds).Check(withXFCC(t.Context()), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("trusted sidecar forwarding the bound certificate: %v", err)
	}
	if _, err := dial(t, addr, p, &stranger, creds).Check(withXFCC(t.Context()), &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("untrusted peer spoofing XFCC: %v; want Unauthenticated", err)
	}
	unbound := grpc.WithPerRPCCredentials(PerRPCCredentials(static(iss.sign(t, nil))))
	if _, err := dial(t, addr, p, &stranger, unbound).Check(withXFCC(t.Context()), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("unbound token from a stranger: %v", err)
	}
	if len(s.md.Get("x-forwarded-client-cert")) != 0 {
		t.Fatal("an untrusted peer's XFCC reached the handler")
	}
	if _, err := dial(t, addr, p, &sidecar, creds).Check(t.Context(), &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("trusted sidecar without the header (its own certificate is not the client's): %v", err)
	}
	bad := metadata.AppendToOutgoingContext(t.Context(), "x-forwarded-client-cert", `Hash="`)
	if _, err := dial(t, addr, p, &sidecar, creds).Check(bad, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("trusted sidecar with a malformed header: %v; want InvalidArgument", err)
	}

	byAddr := &meshtoken.TrustedProxies{Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Header: meshtoken.HeaderXFCC}
	addr2, _ := serve(t, p, iss.verifier(t, byAddr), false)
	if _, err := dial(t, addr2, p, nil, creds).Check(withXFCC(t.Context()), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("sidecar trusted by address: %v", err)
	}
}

// A refused call tells the caller how to ask Vault why, and hands the
// reason to the service (the Verifier's OnReject), never to the caller.
func TestInterceptorHandsTheReasonToTheService(t *testing.T) {
	iss, p := newIssuer(t), newPKI(t)
	orders := p.issue(t, "orders", x509.ExtKeyUsageClientAuth)
	var mu sync.Mutex
	var reasons []error
	v, err := meshtoken.NewVerifier(t.Context(), meshtoken.VerifierConfig{
		JWKSURL: iss.srv.URL, Issuer: "meshauth", Audience: "payments", HTTPClient: iss.srv.Client(), SkipRevocations: true,
		OnReject: func(_ context.Context, err error) {
			mu.Lock()
			reasons = append(reasons, err)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serve(t, p, v, false)
	c := dial(t, addr, p, nil, grpc.WithPerRPCCredentials(PerRPCCredentials(static(iss.sign(t, orders.Leaf)))))
	_, err = c.Check(t.Context(), &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), "invalid token; to see why, ask Vault: vault write") {
		t.Fatalf("err = %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reasons) != 1 || !errors.Is(reasons[0], meshtoken.ErrCertMissing) {
		t.Fatalf("OnReject saw %v; want ErrCertMissing", reasons)
	}
}
