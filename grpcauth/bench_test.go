package grpcauth

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"runtime"
	"strconv"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// BenchmarkUnaryCall is a trivial gRPC method (health Check) over mutual
// TLS on loopback, without and with the meshauth interceptor (a bound token,
// reused as callers do), at concurrency 1 and 16: the interceptor's
// overhead is the ratio of the two in one run (benchstat).
func BenchmarkUnaryCall(b *testing.B) {
	iss, p := newIssuer(b), newPKI(b)
	orders := p.issue(b, "orders", x509.ExtKeyUsageClientAuth)
	tok := iss.sign(b, orders.Leaf)
	for _, mode := range []string{"none", "meshauth"} {
		var opts []grpc.ServerOption
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{p.server}, ClientCAs: p.pool, ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS13})))
		var dialOpts []grpc.DialOption
		if mode == "meshauth" {
			opts = append(opts, grpc.UnaryInterceptor(UnaryServerInterceptor(iss.verifier(b, nil))))
			dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(PerRPCCredentials(static(tok))))
		}
		srv := grpc.NewServer(opts...)
		healthpb.RegisterHealthServer(srv, health.NewServer())
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		go func() { _ = srv.Serve(lis) }()
		c := dial(b, lis.Addr().String(), p, &orders, dialOpts...)
		for _, conc := range []int{1, 16} {
			b.Run(mode+"/c"+strconv.Itoa(conc), func(b *testing.B) {
				b.ReportAllocs()
				if conc == 1 {
					for b.Loop() {
						if _, err := c.Check(b.Context(), &healthpb.HealthCheckRequest{}); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				b.SetParallelism(max(1, conc/ncpu()))
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := c.Check(b.Context(), &healthpb.HealthCheckRequest{}); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
		srv.Stop()
	}
}

func ncpu() int { return runtime.GOMAXPROCS(0) }
