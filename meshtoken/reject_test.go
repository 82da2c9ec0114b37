package meshtoken

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The three refusals a newcomer meets first, on the receiving side: a token
// signed by a key the engine does not publish (wrong key), a bound token
// without its client certificate (missing certificate), and a token for
// another audience. The caller gets 401 "invalid token" and how to ask
// Vault's verify why; the service gets the reason through its logger (at
// the level it chose) and its OnReject hook.
func TestMiddlewareRefusalText(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	stranger := newJWKSServer(t)
	strangerKid := stranger.addKey("ES256")
	cert := testCert(t)

	var logs bytes.Buffer
	var mu sync.Mutex
	var reasons []error
	v, err := NewVerifier(t.Context(), VerifierConfig{
		DiscoveryURL:    j.srv.URL + "/v1/meshauth/.well-known/openid-configuration",
		Audience:        "payments",
		HTTPClient:      j.srv.Client(),
		SkipRevocations: true, // this test serves no revocations feed
		Logger:          slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		LogLevel:        slog.LevelWarn,
		OnReject: func(_ context.Context, err error) {
			mu.Lock()
			reasons = append(reasons, err)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	h := v.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("a refused request reached the handler") }))
	for _, tc := range []struct {
		name, token string
		want        error
	}{
		{"wrong key", stranger.sign(t, strangerKid, nil), ErrUnknownKey},
		{"missing certificate", j.sign(t, kid, map[string]any{"cnf": map[string]any{"x5t#S256": x5t(cert)}}), ErrCertMissing},
		{"wrong audience", j.sign(t, kid, map[string]any{"aud": "ledger"}), jwt.ErrTokenInvalidAudience},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			reasons = nil
			mu.Unlock()
			logs.Reset()
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.Header.Set("Authorization", "Bearer "+tc.token)
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusUnauthorized {
				t.Fatalf("status %d", rec.Code)
			}
			if body := strings.TrimSpace(rec.Body.String()); body != "invalid token; to see why, ask Vault: vault write meshauth/verify token=<the token> audience=payments" {
				t.Errorf("body = %q", body)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(reasons) != 1 || !errors.Is(reasons[0], tc.want) {
				t.Errorf("OnReject saw %v; want %v", reasons, tc.want)
			}
			if line := logs.String(); !strings.Contains(line, "level=WARN") || !strings.Contains(line, `msg="meshauth: token refused"`) || strings.Contains(line, tc.token) {
				t.Errorf("log = %q; want one Warn line with the reason and without the token", line)
			}
		})
	}
}

// The revocations feed is checked unless SkipRevocations: a Verifier finds
// it through discovery's revocation_endpoint, refuses what it lists, and
// does not start without it.
func TestVerifierChecksTheFeedByDefault(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	cfg := VerifierConfig{
		DiscoveryURL: j.srv.URL + "/v1/meshauth/.well-known/openid-configuration",
		Audience:     "payments",
		HTTPClient:   j.srv.Client(),
	}
	if _, err := NewVerifier(t.Context(), cfg); err == nil {
		t.Fatal("a Verifier started without the revocations feed it checks by default")
	}
	f := &feedServer{}
	f.set(t, j, kid, map[string]any{"iss": "meshauth", "tokens": map[string]int64{"REVOKED": time.Now().Add(time.Hour).Unix()}})
	j.feed.Store(&f.body)
	v, err := NewVerifier(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(t.Context(), j.sign(t, kid, map[string]any{"jti": "REVOKED"}), nil); !errors.Is(err, ErrRevoked) {
		t.Fatalf("a revoked token: %v; want ErrRevoked", err)
	}
	if _, err := v.Verify(t.Context(), j.sign(t, kid, nil), nil); err != nil {
		t.Fatal(err)
	}
	cfg.SkipRevocations, cfg.Revocations = true, &RevocationConfig{}
	if _, err := NewVerifier(t.Context(), cfg); err == nil {
		t.Fatal("Revocations and SkipRevocations together were accepted")
	}
}
