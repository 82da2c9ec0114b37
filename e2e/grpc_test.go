package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/datapunk/vault-plugin-secrets-meshauth/client"
	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
	"github.com/datapunk/vault-plugin-secrets-meshauth/grpcauth"
	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// TestGRPCAgainstVault: orders gets its tokens from a real Vault (logged
// in with a static Vault token, as in development) and calls a gRPC service
// over mutual TLS with grpcauth's per-RPC credentials; the service's
// interceptors verify offline and bind the token to the connection's
// certificate. A token stolen by another mesh member fails; FreshToken
// gives every call its own token.
func TestGRPCAgainstVault(t *testing.T) {
	s := vaultlab.StartDevServer(t)
	s.RegisterPlugin(mount)
	issuer := s.Addr + "/v1/" + mount
	s.MustCLI(t, "write", mount+"/config", "issuer="+issuer)
	ca := vaultlab.NewCA(t, s.Dir, "mesh")
	orders := ca.Issue(t, s.Dir, "orders", []string{"orders.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	thief := ca.Issue(t, s.Dir, "thief", []string{"thief.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	serverCert := ca.Issue(t, s.Dir, "server", nil, []net.IP{net.IPv4(127, 0, 0, 1)}, x509.ExtKeyUsageServerAuth)
	key := vaultlab.JSONData(t, s.MustCLI(t, "write", mount+"/services/orders", "ca_chain=@"+ca.File, "hostnames=orders.mesh", "allowed_audiences=payments"))["api_key"].(string)

	vault, err := s.ClientWith("", orders)
	if err != nil {
		t.Fatal(err)
	}
	source, err := client.NewTokenSource(client.TokenSourceConfig{Vault: vault, Auth: client.StaticToken(s.Token), Mount: mount, Service: "orders", APIKey: key, Audience: []string{"payments"}})
	if err != nil {
		t.Fatal(err)
	}
	defer source.Stop()

	verifier, err := meshtoken.NewVerifier(t.Context(), meshtoken.VerifierConfig{DiscoveryURL: issuer + "/.well-known/openid-configuration", Audience: "payments", RequireBinding: true, HTTPClient: vaultHTTPClient(t, s)})
	if err != nil {
		t.Fatal(err)
	}
	meshCAs := x509.NewCertPool()
	meshCAs.AddCert(ca.X509)
	seen := make(chan string, 16)
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{keyPair(t, serverCert)}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: meshCAs, MinVersion: tls.VersionTLS12})),
		grpc.ChainUnaryInterceptor(grpcauth.UnaryServerInterceptor(verifier), func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			c, _ := meshtoken.ClaimsFromContext(ctx)
			seen <- c.ID
			return h(ctx, req)
		}),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	dial := func(cert *vaultlab.Cert, tok grpcauth.TokenFunc) healthpb.HealthClient {
		conn, err := grpc.NewClient(lis.Addr().String(),
			grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: meshCAs, Certificates: []tls.Certificate{keyPair(t, cert)}, MinVersion: tls.VersionTLS12})),
			grpc.WithPerRPCCredentials(grpcauth.PerRPCCredentials(tok)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return healthpb.NewHealthClient(conn)
	}
	c := dial(orders, source.Token)
	for range 3 {
		if _, err := c.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("orders over gRPC: %v", err)
		}
	}
	first := <-seen
	for range 2 {
		if id := <-seen; id != first {
			t.Fatalf("Token gave a new token per call (%s, %s)", first, id)
		}
	}
	stolen, _ := source.Token(t.Context())
	if _, err := dial(thief, func(context.Context) (string, error) { return stolen, nil }).Check(t.Context(), &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("stolen token over gRPC with another mesh certificate: %v", err)
	}
	fresh := dial(orders, source.FreshToken)
	ids := map[string]bool{}
	for range 3 {
		if _, err := fresh.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("FreshToken over gRPC: %v", err)
		}
		ids[<-seen] = true
	}
	if len(ids) != 3 {
		t.Fatalf("FreshToken calls carried %d distinct jti, want 3", len(ids))
	}
}
