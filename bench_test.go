package meshauth

import (
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hashicorp/vault/sdk/logical"
)

// Benchmarks come in pairs: meshauth's operation, and the raw cryptographic
// baseline it cannot avoid, measured in the same run. Compare with benchstat;
// no test asserts a time.

// benchEnv is a backend with one registered service, caches warm.
func benchEnv(b *testing.B, alg string, data map[string]any) (*testEnv, string, *keyRing) {
	e := getTestBackend(b)
	e.b.Logger().SetLevel(hclog.Off)
	if alg != algES256 {
		e.mustOK(b, logical.UpdateOperation, "config", map[string]any{"signing_algorithm": alg})
	}
	key := e.register(b, "orders", data)
	_, _ = e.login(b, "orders", key, nil) // warm the caches; mTLS services refuse it, which is fine
	ring, err := e.b.getKeyRing(b.Context(), e.storage)
	if err != nil {
		b.Fatal(err)
	}
	return e, key, ring
}

var benchAlgorithms = []string{algES256, algEdDSA, algES384, algRS256}

// BenchmarkMint is minting a token (claims, encoding, signature) ...
func BenchmarkMint(b *testing.B) {
	for _, alg := range benchAlgorithms {
		b.Run(alg, func(b *testing.B) {
			e, _, ring := benchEnv(b, alg, map[string]any{"claims": map[string]any{"team": "checkout"}})
			svc, _ := e.b.getService(b.Context(), e.storage, "orders")
			cfg, _ := e.b.getConfig(b.Context(), e.storage)
			now := time.Now()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := mintToken(ring.current, cfg, svc, []string{"payments"}, time.Hour, "", "", now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// ... against BenchmarkRawSign, the signature alone over a same-sized input.
func BenchmarkRawSign(b *testing.B) {
	for _, alg := range benchAlgorithms {
		b.Run(alg, func(b *testing.B) {
			e, key, ring := benchEnv(b, alg, nil)
			input := signingInput(e.mustLogin(b, "orders", key))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ring.current.method.Sign(input, ring.current.signer); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func signingInput(tok string) string {
	return tok[:strings.LastIndexByte(tok, '.')]
}

// BenchmarkVerify is the whole online check (parse, signature, claims,
// service state, revocation) ...
func BenchmarkVerify(b *testing.B) {
	for _, alg := range benchAlgorithms {
		b.Run(alg, func(b *testing.B) {
			e, key, _ := benchEnv(b, alg, nil)
			tok := e.mustLogin(b, "orders", key)
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

// ... against BenchmarkRawVerify, the signature check alone.
func BenchmarkRawVerify(b *testing.B) {
	for _, alg := range benchAlgorithms {
		b.Run(alg, func(b *testing.B) {
			e, key, ring := benchEnv(b, alg, nil)
			tok := e.mustLogin(b, "orders", key)
			input := signingInput(tok)
			sig, _ := decodeSegment(tok[len(input)+1:])
			pub := ring.current.signer.Public()
			b.ReportAllocs()
			for b.Loop() {
				if err := ring.current.method.Verify(input, sig, pub); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLogin is the login handler through the framework, as Vault calls
// it (field decoding included), ES256, no mTLS; compare with RawSign/ES256.
func BenchmarkLogin(b *testing.B) {
	e, key, _ := benchEnv(b, algES256, nil)
	conn := &logical.Connection{RemoteAddr: "127.0.0.1"}
	before := e.storage.total()
	b.ReportAllocs()
	for b.Loop() {
		resp, err := e.b.HandleRequest(b.Context(), &logical.Request{
			Operation: logical.UpdateOperation, Path: "login/orders", Storage: e.storage,
			Data: map[string]any{"api_key": key}, Connection: conn,
		})
		if err != nil || resp.IsError() {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(e.storage.total()-before)/float64(b.N), "storage-ops/op")
}

// BenchmarkLoginMTLSWarm is the same login with a verified client
// certificate, the verified-chain cache warm.
func BenchmarkLoginMTLSWarm(b *testing.B) {
	ca := newTestCA(b, "mesh-ca")
	leaf, leafKey, _ := ca.issue(b, "orders", leafOptions{dns: []string{"orders.mesh"}})
	e, key, _ := benchEnv(b, algES256, map[string]any{"ca_chain": ca.pem, "hostnames": "orders.mesh"})
	conn := tlsConn(handshake(b, []*x509.Certificate{leaf}, leafKey))
	b.ReportAllocs()
	for b.Loop() {
		resp, err := e.b.HandleRequest(b.Context(), &logical.Request{
			Operation: logical.UpdateOperation, Path: "login/orders", Storage: e.storage,
			Data: map[string]any{"api_key": key}, Connection: conn,
		})
		if err != nil || resp.IsError() {
			b.Fatal(err)
		}
	}
}

// mtlsService registers a service with a CA and returns it cached, with a
// leaf certificate that passes its checks.
func mtlsService(b *testing.B) (*testEnv, *cachedService, []*x509.Certificate) {
	ca := newTestCA(b, "mesh-ca")
	leaf, _, _ := ca.issue(b, "orders", leafOptions{dns: []string{"orders.mesh"}})
	e, _, _ := benchEnv(b, algES256, map[string]any{"ca_chain": ca.pem, "hostnames": "orders.mesh"})
	svc, _ := e.b.getService(b.Context(), e.storage, "orders")
	return e, svc, []*x509.Certificate{leaf}
}

// BenchmarkTLSCheckWarm is the certificate check with a warm cache ...
func BenchmarkTLSCheckWarm(b *testing.B) {
	e, svc, chain := mtlsService(b)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.b.checkClientCertificate(svc, chain, now); err != nil {
			b.Fatal(err)
		}
	}
}

// ... and BenchmarkTLSCheckCold verifies the chain every time (no cache).
func BenchmarkTLSCheckCold(b *testing.B) {
	_, svc, chain := mtlsService(b)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if err := verifyPresentedChain(svc.trust, chain, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAPIKeyMatch checks a key against a service's two live keys ...
func BenchmarkAPIKeyMatch(b *testing.B) {
	now := time.Now()
	k1, _ := generateAPIKey(now)
	k2, _ := generateAPIKey(now)
	keys := []apiKeyEntry{k1.entry, k2.entry}
	b.ReportAllocs()
	for b.Loop() {
		if !matchAPIKey(keys, k2.secret, now, 0) {
			b.Fatal("no match")
		}
	}
}

// ... against BenchmarkSHA256, one hash of a key.
func BenchmarkSHA256(b *testing.B) {
	k, _ := generateAPIKey(time.Now())
	b.ReportAllocs()
	for b.Loop() {
		_ = sha256.Sum256([]byte(k.secret))
	}
}

// BenchmarkVerifyRevoked is the whole online check with no revoked tokens
// and with 10,000 (the node loaded them before the timer starts): the
// deny list is one map lookup, so the two should cost the same. Compare with
// benchstat -col /revoked.
func BenchmarkVerifyRevoked(b *testing.B) {
	for _, n := range []int{0, 10000} {
		b.Run(fmt.Sprintf("revoked=%d", n), func(b *testing.B) {
			e, key, _ := benchEnv(b, algES256, nil)
			fillRevocations(b, e, 0, n, time.Now().Add(time.Hour))
			tok := e.mustLogin(b, "orders", key)
			if v, err := e.b.verifyToken(b.Context(), e.storage, tok, ""); err != nil || v.reason != "" {
				b.Fatal(err, v.reason)
			}
			if got := e.b.revoked.size(); got != n {
				b.Fatalf("loaded %d revocations; want %d", got, n)
			}
			before := e.storage.total()
			b.ReportAllocs()
			for b.Loop() {
				v, err := e.b.verifyToken(b.Context(), e.storage, tok, "")
				if err != nil || v.reason != "" {
					b.Fatal(err, v.reason)
				}
			}
			b.ReportMetric(float64(e.storage.total()-before)/float64(b.N), "storage-ops/op")
		})
	}
}

// BenchmarkRevocationFeed is the revocations feed with 1,000 and 20,000
// (the most the engine keeps) revoked tokens: rendering and signing it after
// a change (render), serving it from the node's cache (read), and answering
// a revalidation with 304 (not-modified). The baseline is the jwks read,
// the other raw body every verifier fetches. feed-bytes is its size.
func BenchmarkRevocationFeed(b *testing.B) {
	for _, n := range []int{1000, maxRevocations} {
		e, _, _ := benchEnv(b, algES256, nil)
		fillRevocations(b, e, 0, n, time.Now().Add(time.Hour))
		read := func(b *testing.B, inm string) *logical.Response {
			req := &logical.Request{Operation: logical.ReadOperation, Path: "revocations", Storage: e.storage, MountPoint: "meshauth/"}
			if inm != "" {
				req.Headers = map[string][]string{"If-None-Match": {inm}}
			}
			resp, err := e.b.HandleRequest(b.Context(), req)
			if err != nil || resp.IsError() {
				b.Fatal(err, resp)
			}
			return resp
		}
		first := read(b, "")
		size := len(first.Data[logical.HTTPRawBody].([]byte))
		b.Run(fmt.Sprintf("revoked=%d/render", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				e.b.feed.drop()
				read(b, "")
			}
			b.ReportMetric(float64(size), "feed-bytes")
		})
		b.Run(fmt.Sprintf("revoked=%d/read", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				read(b, "")
			}
		})
		b.Run(fmt.Sprintf("revoked=%d/not-modified", n), func(b *testing.B) {
			etag := first.Headers["ETag"][0]
			b.ReportAllocs()
			for b.Loop() {
				if read(b, etag).Data[logical.HTTPStatusCode] != 304 {
					b.Fatal("no 304")
				}
			}
		})
	}
	b.Run("jwks", func(b *testing.B) {
		e, _, _ := benchEnv(b, algES256, nil)
		b.ReportAllocs()
		for b.Loop() {
			e.mustOK(b, logical.ReadOperation, "jwks", nil)
		}
	})
}

// BenchmarkMintNewGoroutine mints each token on a new goroutine, as Vault's
// gRPC server runs each request: its stack starts small, so whatever grows
// it on the login path is paid on every login, not once.
func BenchmarkMintNewGoroutine(b *testing.B) {
	e, _, ring := benchEnv(b, algES256, map[string]any{"claims": map[string]any{"team": "checkout"}})
	svc, _ := e.b.getService(b.Context(), e.storage, "orders")
	cfg, _ := e.b.getConfig(b.Context(), e.storage)
	now := time.Now()
	done := make(chan error)
	b.ReportAllocs()
	for b.Loop() {
		go func() {
			_, err := mintToken(ring.current, cfg, svc, []string{"payments"}, time.Hour, "", "", now)
			done <- err
		}()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
}
