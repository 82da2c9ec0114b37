package meshtoken

import (
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// BenchmarkMiddleware is a trivial net/http handler over TLS on loopback,
// without and with the Middleware (one token, reused as callers do), at
// concurrency 1 and 16; the Middleware's overhead is the ratio of the two
// in one run (benchstat -col /mw).
func BenchmarkMiddleware(b *testing.B) {
	j := newJWKSServerB(b)
	kid := j.addKey("ES256")
	tok := j.sign(b, kid, nil)
	v, err := NewVerifier(b.Context(), VerifierConfig{DiscoveryURL: j.srv.URL + "/v1/meshauth/.well-known/openid-configuration", Audience: "payments", HTTPClient: j.srv.Client(), SkipRevocations: true})
	if err != nil {
		b.Fatal(err)
	}
	trivial := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	for _, mw := range []string{"none", "meshauth"} {
		var h http.Handler = trivial
		if mw == "meshauth" {
			h = v.Middleware(trivial)
		}
		srv := httptest.NewTLSServer(h)
		c := srv.Client()
		c.Transport.(*http.Transport).MaxIdleConnsPerHost = 32
		get := func() error {
			req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := c.Do(req)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return errStatus(resp.StatusCode)
			}
			return nil
		}
		for _, conc := range []int{1, 16} {
			b.Run("mw="+mw+"/c="+strconv.Itoa(conc), func(b *testing.B) {
				b.ReportAllocs()
				if conc == 1 {
					for b.Loop() {
						if err := get(); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				b.SetParallelism(max(1, conc/runtime.GOMAXPROCS(0)))
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := get(); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
		srv.Close()
	}
}

type errStatus int

func (e errStatus) Error() string { return "status " + strconv.Itoa(int(e)) }

// BenchmarkMiddlewareRatio interleaves calls without and with the
// Middleware (64 calls each per round, in turn, at concurrency 1 and 16) so
// that load on a shared machine moves both alike; the metrics are the
// medians over rounds of with/without. Run with -benchtime=30x or more.
func BenchmarkMiddlewareRatio(b *testing.B) {
	j := newJWKSServerB(b)
	kid := j.addKey("ES256")
	tok := j.sign(b, kid, nil)
	v, err := NewVerifier(b.Context(), VerifierConfig{DiscoveryURL: j.srv.URL + "/v1/meshauth/.well-known/openid-configuration", Audience: "payments", HTTPClient: j.srv.Client(), SkipRevocations: true})
	if err != nil {
		b.Fatal(err)
	}
	trivial := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	call := func(h http.Handler) func() error {
		srv := httptest.NewTLSServer(h)
		b.Cleanup(srv.Close)
		c := srv.Client()
		c.Transport.(*http.Transport).MaxIdleConnsPerHost = 32
		return func() error {
			req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := c.Do(req)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return errStatus(resp.StatusCode)
			}
			return nil
		}
	}
	none, mw := call(trivial), call(v.Middleware(trivial))
	c1, c16 := roundRatios(b, 64, none, mw)
	b.ReportMetric(c1, "mw/none@c1")
	b.ReportMetric(c16, "mw/none@c16")
}

// roundRatios times ops calls of base and then of other, at concurrency 1
// and 16, once per benchmark iteration, and returns the medians over
// iterations of other's time over base's at each concurrency.
func roundRatios(b *testing.B, ops int, base, other func() error) (c1, c16 float64) {
	run := func(f func() error, conc int) time.Duration {
		start := time.Now()
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
		return time.Since(start)
	}
	var r1, r16 []float64
	round := 0
	ratio := func(conc int) float64 {
		// Alternate which side runs first, so neither always inherits the
		// other's warm (or cold) caches.
		if round%2 == 0 {
			o := run(other, conc)
			return float64(o) / float64(run(base, conc))
		}
		bt := run(base, conc)
		return float64(run(other, conc)) / float64(bt)
	}
	for b.Loop() {
		r1 = append(r1, ratio(1))
		r16 = append(r16, ratio(16))
		round++
	}
	return median(r1), median(r16)
}
