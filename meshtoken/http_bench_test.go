package meshtoken

import (
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"testing"
)

// BenchmarkMiddleware is a trivial net/http handler over TLS on loopback,
// without and with the Middleware (one token, reused as callers do), at
// concurrency 1 and 16; the Middleware's overhead is the ratio of the two
// in one run (benchstat -col /mw).
func BenchmarkMiddleware(b *testing.B) {
	j := newJWKSServerB(b)
	kid := j.addKey("ES256")
	tok := j.sign(b, kid, nil)
	v, err := NewVerifier(b.Context(), VerifierConfig{DiscoveryURL: j.srv.URL + "/v1/meshauth/.well-known/openid-configuration", Audience: "payments", HTTPClient: j.srv.Client()})
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
