package meshtoken_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken/meshtokentest"
)

// t stands in for the *testing.T of a real test.
var t = &testing.T{}

// A service verifies the tokens its callers send: offline, with the keys
// and revocation feed of the engine (here a fake one, meshtokentest).
func ExampleVerifier_Verify() {
	engine := meshtokentest.New(t)
	v, err := meshtoken.NewVerifier(context.Background(), engine.VerifierConfig("payments"))
	if err != nil {
		fmt.Println(err)
		return
	}
	token, _ := engine.Token(t, "orders", "payments", time.Minute, nil)
	claims, err := v.Verify(context.Background(), token, nil)
	fmt.Println(claims.ServiceName(), err)

	// A token for another service is refused, with a typed reason.
	other, _ := engine.Token(t, "orders", "ledger", time.Minute, nil)
	_, err = v.Verify(context.Background(), other, nil)
	fmt.Println(errors.Is(err, meshtoken.ErrInvalidToken), meshtoken.ReasonOf(err))
	// Output:
	// orders <nil>
	// true wrong_audience
}

// The Middleware answers 401 without a valid token, and hands the claims to
// the handler. The caller of a refused request is told how to ask Vault
// why; the reason goes to the service (Logger at LogLevel, and OnReject),
// never to the caller.
func ExampleVerifier_Middleware() {
	engine := meshtokentest.New(t)
	cfg := engine.VerifierConfig("payments")
	cfg.OnReject = func(_ context.Context, err error) {
		fmt.Println("refused:", meshtoken.ReasonOf(err))
	}
	v, err := meshtoken.NewVerifier(context.Background(), cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	h := v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := meshtoken.ClaimsFromContext(r.Context())
		_, _ = fmt.Fprint(w, "hello "+c.ServiceName())
	}))
	token, _ := engine.Token(t, "orders", "payments", time.Minute, nil)
	other, _ := engine.Token(t, "orders", "ledger", time.Minute, nil)
	for _, auth := range []string{"Bearer " + token, "Bearer " + other} {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		fmt.Println(w.Code, w.Body.String())
	}
	// Output:
	// 200 hello orders
	// refused: wrong_audience
	// 401 invalid token; to see why, ask Vault: vault write meshauth/verify token=<the token> audience=payments
}

// Parse checks a token against keys the caller holds: the parser both the
// engine's online verify and the Verifier use. Every refusal has a reason.
func ExampleParse() {
	keys := func(kid string) (meshtoken.Key, error) {
		return meshtoken.Key{}, meshtoken.ErrUnknownKey // no key in this example
	}
	opts := meshtoken.Options{Issuer: "meshauth", Leeway: meshtoken.DefaultLeeway}
	for _, token := range []string{
		"not a token",
		"eyJhbGciOiJFUzI1NiIsImtpZCI6Im5vbmUifQ.eyJzdWIiOiJvcmRlcnMifQ.c2ln",
		"eyJhbGciOiJFUzI1NiIsImtpZCI6Im5vbmUifQ.eyJzdWIiOiJvcmRlcnMifR.c2ln", // spare bits set
	} {
		_, err := meshtoken.Parse(token, keys, opts)
		fmt.Println(meshtoken.ReasonOf(err))
	}
	// Output:
	// malformed
	// unknown_key
	// malformed
}
