package grpcauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

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

// BenchmarkUnaryCallRatio interleaves calls to a trivial method without and
// with the interceptor (64 calls each per round, in turn, at concurrency 1
// and 16) so load on a shared machine moves both alike; the metrics are the
// medians over rounds of with/without. Run with -benchtime=30x or more.
func BenchmarkUnaryCallRatio(b *testing.B) {
	iss, p := newIssuer(b), newPKI(b)
	orders := p.issue(b, "orders", x509.ExtKeyUsageClientAuth)
	tok := iss.sign(b, orders.Leaf)
	start := func(mode string) func() error {
		opts := []grpc.ServerOption{grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{p.server}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: p.pool, MinVersion: tls.VersionTLS13}))}
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
		b.Cleanup(srv.Stop)
		c := dial(b, lis.Addr().String(), p, &orders, dialOpts...)
		return func() error {
			_, err := c.Check(context.Background(), &healthpb.HealthCheckRequest{})
			return err
		}
	}
	none, mesh := start("none"), start("meshauth")
	run := func(f func() error, conc, ops int) time.Duration {
		begin := time.Now()
		var wg sync.WaitGroup
		for w := range conc {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < ops; i += conc {
					if err := f(); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		return time.Since(begin)
	}
	var r1, r16 []float64
	round := 0
	ratio := func(conc int) float64 {
		// Alternate which side runs first, so neither always inherits the
		// other's warm (or cold) caches.
		if round%2 == 0 {
			m := run(mesh, conc, 64)
			return float64(m) / float64(run(none, conc, 64))
		}
		n := run(none, conc, 64)
		return float64(run(mesh, conc, 64)) / float64(n)
	}
	for b.Loop() {
		r1 = append(r1, ratio(1))
		r16 = append(r16, ratio(16))
		round++
	}
	slices.Sort(r1)
	slices.Sort(r16)
	b.ReportMetric(r1[len(r1)/2], "meshauth/none@c1")
	b.ReportMetric(r16[len(r16)/2], "meshauth/none@c16")
}
