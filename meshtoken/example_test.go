package meshtoken_test

import (
	stdcontext "context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// A service that accepts meshauth tokens: the Verifier finds the keys and
// the signed revocations feed through the engine's discovery document, and
// the Middleware lets only valid tokens for this service (Audience) through.
// The caller of a refused request is told how to ask Vault why; the service
// logs the reason. (The engine here is a stand-in serving what a meshauth
// mount serves.)
func ExampleVerifier_Middleware() {
	engine, sign := fakeEngine()
	defer engine.Close()

	verifier, err := meshtoken.NewVerifier(context(), meshtoken.VerifierConfig{
		DiscoveryURL: engine.URL + "/v1/meshauth/.well-known/openid-configuration",
		Audience:     "payments",
		HTTPClient:   engine.Client(), // in production: a client that trusts Vault's CA
		// Why a token was refused goes to the service, never to the caller:
		// to Logger (a *slog.Logger, at LogLevel) and to OnReject.
		OnReject: func(_ stdcontext.Context, err error) {
			fmt.Println("refused:", meshtoken.ReasonOf(err))
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	handler := verifier.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		claims, _ := meshtoken.ClaimsFromContext(r.Context())
		_, _ = fmt.Fprintf(w, "hello %s", claims.Subject)
	}))
	for _, audience := range []string{"payments", "ledger"} {
		req := httptest.NewRequest(http.MethodGet, "/charge", nil)
		req.Header.Set("Authorization", "Bearer "+sign(audience))
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		fmt.Println(rec.Code, strings.TrimSpace(rec.Body.String()))
	}
	// Output:
	// 200 hello orders
	// refused: wrong_audience
	// 401 invalid token; to see why, ask Vault: vault write meshauth/verify token=<the token> audience=payments
}

// fakeEngine serves discovery, jwks and revocations as a meshauth mount
// does, and returns a function that mints tokens of the service "orders".
func fakeEngine() (*httptest.Server, func(audience string) string) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	kid, _ := meshtoken.Thumbprint(&key.PublicKey)
	jwk, _ := meshtoken.PublicJWK(&key.PublicKey)
	jwk["kid"], jwk["alg"], jwk["use"] = kid, "ES256", "sig"
	signed := func(claims jwt.MapClaims, typ string) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
		tok.Header["kid"], tok.Header["typ"] = kid, typ
		s, _ := tok.SignedString(key)
		return s
	}
	now := time.Now().Unix()
	feed := signed(jwt.MapClaims{"iss": "meshauth", "iat": now, "tokens": map[string]int64{}}, meshtoken.RevocationsType)
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/meshauth/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]string{
			"issuer": "meshauth", "jwks_uri": "/v1/meshauth/jwks", "revocation_endpoint": "/v1/meshauth/revocations",
		})
	})
	mux.HandleFunc("/v1/meshauth/jwks", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cache-Control", "max-age=300")
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []any{jwk}})
	})
	mux.HandleFunc("/v1/meshauth/revocations", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cache-Control", "max-age=150")
		_, _ = io.WriteString(w, feed)
	})
	srv := httptest.NewTLSServer(mux)
	n := 0
	return srv, func(audience string) string {
		n++
		return signed(jwt.MapClaims{
			"iss": "meshauth", "sub": "orders", "aud": audience, "jti": fmt.Sprintf("J%d", n),
			"iat": now, "nbf": now, "exp": now + 300,
		}, "JWT")
	}
}

func context() stdcontext.Context { return stdcontext.Background() }
