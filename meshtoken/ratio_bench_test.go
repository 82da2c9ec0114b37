package meshtoken

import (
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// BenchmarkVerifyRatios measures the ratios the verification targets are
// stated in, interleaved so that load on a shared machine moves both sides
// of a ratio alike: each iteration is one round that times a raw ES256
// check, a cold verification (a token never seen, nothing remembered) and
// a repeated one (a remembered token), 64 operations each, in turn; the
// metrics are the medians over rounds of cold/raw and cold/repeated.
// Run with -benchtime=30x or more.
func BenchmarkVerifyRatios(b *testing.B) {
	j := newJWKSServerB(b)
	kid := j.addKey("ES256")
	cold, err := NewVerifier(b.Context(), VerifierConfig{DiscoveryURL: j.srv.URL + "/v1/meshauth/.well-known/openid-configuration", Audience: "payments", HTTPClient: j.srv.Client(), MaxCachedTokens: -1, SkipRevocations: true})
	if err != nil {
		b.Fatal(err)
	}
	warm, err := NewVerifier(b.Context(), VerifierConfig{DiscoveryURL: j.srv.URL + "/v1/meshauth/.well-known/openid-configuration", Audience: "payments", HTTPClient: j.srv.Client(), SkipRevocations: true})
	if err != nil {
		b.Fatal(err)
	}
	const ops = 64
	toks := make([]string, ops)
	for i := range toks {
		toks[i] = j.sign(b, kid, map[string]any{"jti": fmt.Sprint(i)})
	}
	dot := strings.LastIndexByte(toks[0], '.')
	input := toks[0][:dot]
	sig, _ := base64.RawURLEncoding.DecodeString(toks[0][dot+1:])
	pub := j.keys[kid].Public()
	if _, err := warm.Verify(b.Context(), toks[0], nil); err != nil {
		b.Fatal(err)
	}
	timeIt := func(f func(i int)) time.Duration {
		start := time.Now()
		for i := range ops {
			f(i)
		}
		return time.Since(start)
	}
	var coldRaw, coldRepeated []float64
	for b.Loop() {
		raw := timeIt(func(int) {
			if err := jwt.SigningMethodES256.Verify(input, sig, pub); err != nil {
				b.Fatal(err)
			}
		})
		c := timeIt(func(i int) {
			if _, err := cold.Verify(b.Context(), toks[i], nil); err != nil {
				b.Fatal(err)
			}
		})
		r := timeIt(func(int) {
			if _, err := warm.Verify(b.Context(), toks[0], nil); err != nil {
				b.Fatal(err)
			}
		})
		coldRaw = append(coldRaw, float64(c)/float64(raw))
		coldRepeated = append(coldRepeated, float64(c)/float64(r))
	}
	b.ReportMetric(median(coldRaw), "cold/raw")
	b.ReportMetric(median(coldRepeated), "cold/repeated")
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
