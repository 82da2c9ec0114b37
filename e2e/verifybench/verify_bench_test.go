package verifybench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/golang-jwt/jwt/v5"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// BenchmarkVerifyLibraries puts meshtoken's Verifier beside two common
// ways Go services verify the same ES256 token from the same JWKS: go-oidc
// (RemoteKeySet + IDTokenVerifier) and golang-jwt with a JWKS key function
// (keys fetched once, looked up by kid). mode=first is a token never seen
// before on every call; mode=repeated is one token again and again, as a
// caller reuses it. lib=raw is the bare ES256 signature check, the floor.
// No Vault is involved: the JWKS is served on loopback. Compare with
// benchstat -col /mode or -col /lib.
func BenchmarkVerifyLibraries(b *testing.B) {
	one, sign, libs := setup(b)
	for _, mode := range []string{"first", "repeated"} {
		for _, lib := range libs {
			if lib.name == "raw" && mode == "first" {
				continue
			}
			b.Run("mode="+mode+"/lib="+lib.name, func(b *testing.B) {
				toks := []string{one}
				if mode == "first" {
					toks = make([]string, b.N)
					for i := range toks {
						toks[i] = sign(i)
					}
				}
				if err := lib.verify(toks[0]); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					if err := lib.verify(toks[i%len(toks)]); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkVerifyLibrariesRatios interleaves the libraries so load on a
// shared machine moves every side of a ratio alike: each iteration is one
// round timing 32 operations of each library and mode in turn; the metrics
// are medians over rounds of each one's time over the raw ES256 check's.
// Run with -benchtime=30x or more.
func BenchmarkVerifyLibrariesRatios(b *testing.B) {
	one, sign, libs := setup(b)
	const ops = 32
	ratios := map[string][]float64{}
	seq := 0
	for b.Loop() {
		var raw time.Duration
		for _, lib := range libs {
			for _, mode := range []string{"first", "repeated"} {
				if lib.name == "raw" && mode == "first" {
					continue
				}
				toks := make([]string, ops)
				for i := range toks {
					toks[i] = one
					if mode == "first" {
						seq++
						toks[i] = sign(seq)
					}
				}
				_ = lib.verify(one)
				start := time.Now()
				for _, tok := range toks {
					if err := lib.verify(tok); err != nil {
						b.Fatal(err)
					}
				}
				d := time.Since(start)
				if lib.name == "raw" {
					raw = d
					continue
				}
				k := lib.name + "-" + mode + "/raw"
				ratios[k] = append(ratios[k], float64(d)/float64(raw))
			}
		}
	}
	for k, xs := range ratios {
		slices.Sort(xs)
		b.ReportMetric(xs[len(xs)/2], k)
	}
}

type lib struct {
	name   string
	verify func(string) error
}

func setup(b *testing.B) (string, func(int) string, []lib) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	point, _ := key.PublicKey.Bytes()
	b64 := base64.RawURLEncoding.EncodeToString
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{{"kid": "k1", "alg": "ES256", "use": "sig", "kty": "EC", "crv": "P-256", "x": b64(point[1:33]), "y": b64(point[33:])}}})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cache-Control", "max-age=300")
		_, _ = w.Write(jwks)
	}))
	b.Cleanup(srv.Close)
	const iss = "https://vault.example/v1/meshauth"
	sign := func(i int) string {
		now := time.Now().Unix()
		tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"iss": iss, "sub": "orders", "aud": "payments", "iat": now, "nbf": now, "exp": now + 600, "jti": fmt.Sprintf("j-%d", i)})
		tok.Header["kid"] = "k1"
		s, err := tok.SignedString(key)
		if err != nil {
			b.Fatal(err)
		}
		return s
	}

	meshFor := func(cached int) func(string) error {
		v, err := meshtoken.NewVerifier(b.Context(), meshtoken.VerifierConfig{JWKSURL: srv.URL, Issuer: iss, Audience: "payments", HTTPClient: srv.Client(), MaxCachedTokens: cached, SkipRevocations: true})
		if err != nil {
			b.Fatal(err)
		}
		return func(tok string) error { _, err := v.Verify(context.Background(), tok, nil); return err }
	}
	ctx := oidc.ClientContext(context.Background(), srv.Client())
	oidcV := oidc.NewVerifier(iss, oidc.NewRemoteKeySet(ctx, srv.URL), &oidc.Config{ClientID: "payments", SupportedSigningAlgs: []string{oidc.ES256}})
	goOIDC := func(tok string) error { _, err := oidcV.Verify(ctx, tok); return err }
	jwtKeys := map[string]any{"k1": &key.PublicKey} // fetched once, as JWKS key functions do
	parser := jwt.NewParser(jwt.WithValidMethods([]string{"ES256"}), jwt.WithIssuer(iss), jwt.WithAudience("payments"), jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithLeeway(30*time.Second))
	golangJWT := func(tok string) error {
		_, err := parser.Parse(tok, func(t *jwt.Token) (any, error) {
			kid, _ := t.Header["kid"].(string)
			if k, ok := jwtKeys[kid]; ok {
				return k, nil
			}
			return nil, fmt.Errorf("unknown kid %q", kid)
		})
		return err
	}
	one := sign(-1)
	dot := strings.LastIndexByte(one, '.')
	sig, _ := base64.RawURLEncoding.DecodeString(one[dot+1:])
	raw := func(string) error { return jwt.SigningMethodES256.Verify(one[:dot], sig, &key.PublicKey) }

	return one, sign, []lib{{"raw", raw}, {"meshtoken", meshFor(0)}, {"go-oidc", goOIDC}, {"golang-jwt", golangJWT}}
}
