package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"

	"github.com/hashicorp/vault/api"
)

// TestKeyLifecycleAndRevocationFeed drives the key lifecycle and the
// revocations feed through a real Vault: a rotation right after another
// waits its turn, force and emergency key removal behave as documented, the
// feed's ETag and 304 pass through Vault once the mount is tuned, and a Go
// Verifier refuses a revoked token and a removed key's token without any
// online call, and refuses everything once its feed is too old.
func TestKeyLifecycleAndRevocationFeed(t *testing.T) {
	const lmount = "mesh-keys"
	s := vaultlab.StartDevServer(t)
	s.RegisterPlugin(lmount)
	root := s.MustClient()
	issuer := s.Addr + "/v1/" + lmount
	s.MustCLI(t, "write", lmount+"/config", "issuer="+issuer, "revocation_max_staleness=10s")
	key := vaultlab.JSONData(t, s.MustCLI(t, "write", lmount+"/services/orders", "require_mtls=false", "allowed_audiences=payments"))["api_key"].(string)
	login := func() string {
		t.Helper()
		return vaultlab.Write(t, root, lmount+"/login/orders", map[string]any{"api_key": key, "audience": "payments"}).Data["token"].(string)
	}
	caPEM, err := os.ReadFile(s.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	httpClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
	newVerifier := func(t *testing.T, staleness time.Duration) *meshtoken.Verifier {
		t.Helper()
		v, err := meshtoken.NewVerifier(t.Context(), meshtoken.VerifierConfig{
			DiscoveryURL:       issuer + "/.well-known/openid-configuration",
			Audience:           "payments",
			HTTPClient:         httpClient,
			MinRefetchInterval: time.Second,
			Revocations:        &meshtoken.RevocationConfig{MaxStaleness: staleness},
		})
		if err != nil {
			t.Fatalf("NewVerifier: %v", err)
		}
		return v
	}
	// refusedWithin polls the verifier (offline: it only fetches jwks and
	// the feed) until it refuses tok with want.
	refusedWithin := func(t *testing.T, v *meshtoken.Verifier, tok string, d time.Duration, want ...error) {
		t.Helper()
		deadline := time.Now().Add(d)
		var err error
		for time.Now().Before(deadline) {
			_, err = v.Verify(t.Context(), tok, nil)
			for _, w := range want {
				if errors.Is(err, w) {
					return
				}
			}
			time.Sleep(250 * time.Millisecond)
		}
		t.Fatalf("not refused with %v within %s: %v", want, d, err)
	}

	t.Run("a rotation right after another waits its turn", func(t *testing.T) {
		out, err := s.CLI(nil, "write", "-f", lmount+"/keys/rotate")
		if err == nil || !strings.Contains(out, "it may sign from") || !strings.Contains(out, "force=true") {
			t.Fatalf("early rotation: %v %s", err, out)
		}
		next := vaultlab.Read(t, root, lmount+"/keys").Data["next_kid"]
		if got := vaultlab.Write(t, root, lmount+"/keys/rotate", map[string]any{"force": true}).Data["current_kid"]; got != next {
			t.Fatalf("forced rotation promoted %v, not the published next key %v", got, next)
		}
		if out, err := s.CLI(nil, "write", "-f", lmount+"/keys/rotate"); err == nil || !strings.Contains(out, "it may sign from") {
			t.Fatalf("a rotation right after a forced one: %v %s", err, out)
		}
		help := s.MustCLI(t, "path-help", lmount+"/keys/rotate")
		if !strings.Contains(help, "min_publication_age") || !strings.Contains(help, "refuse every new token until they refetch") {
			t.Fatalf("path-help of keys/rotate:\n%s", help)
		}
	})

	t.Run("the feed's ETag and 304 pass through a tuned mount", func(t *testing.T) {
		resp, body := s.RawGet("/v1/" + lmount + "/revocations")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/jwt" || strings.Count(string(body), ".") != 2 {
			t.Fatalf("feed: %d %s %.80s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		if resp.Header.Get("Cache-Control") != "max-age=5" {
			t.Fatalf("Cache-Control %q with revocation_max_staleness=10s", resp.Header.Get("Cache-Control"))
		}
		if resp.Header.Get("ETag") != "" {
			t.Fatal("Vault passed ETag before the mount allowed it; the tune line in the docs is then wrong")
		}
		s.MustCLI(t, "secrets", "tune", "-allowed-response-headers=ETag", "-passthrough-request-headers=If-None-Match", lmount)
		resp, _ = s.RawGet("/v1/" + lmount + "/revocations")
		etag := resp.Header.Get("ETag")
		if etag == "" {
			t.Fatal("no ETag after tuning the mount")
		}
		cl, err := s.ClientWith("", nil)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, s.Addr+"/v1/"+lmount+"/revocations", nil)
		req.Header.Set("If-None-Match", etag)
		resp2, err := cl.CloneConfig().HttpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp2.Body.Close()
		if resp2.StatusCode != http.StatusNotModified || resp2.Header.Get("ETag") != etag {
			t.Fatalf("If-None-Match with the current ETag: %d %q", resp2.StatusCode, resp2.Header.Get("ETag"))
		}
	})

	t.Run("a revoked token is refused offline within the staleness", func(t *testing.T) {
		v := newVerifier(t, 10*time.Second)
		tok := login()
		if _, err := v.Verify(t.Context(), tok, nil); err != nil {
			t.Fatalf("fresh token: %v", err)
		}
		vaultlab.Write(t, root, lmount+"/revoke", map[string]any{"token": tok})
		refusedWithin(t, v, tok, 12*time.Second, meshtoken.ErrRevoked)
		other := login()
		vaultlab.Write(t, root, lmount+"/services/orders/revoke", nil)
		refusedWithin(t, v, other, 12*time.Second, meshtoken.ErrRevoked)
		if _, err := v.Verify(t.Context(), login(), nil); err != nil {
			t.Fatalf("a token minted after the service revoke: %v", err)
		}
	})

	t.Run("emergency key removal", func(t *testing.T) {
		v := newVerifier(t, 10*time.Second)
		tok := login()
		if _, err := v.Verify(t.Context(), tok, nil); err != nil {
			t.Fatal(err)
		}
		kid := vaultlab.Read(t, root, lmount+"/keys").Data["current_kid"].(string)
		removed := vaultlab.Write(t, root, lmount+"/keys/"+kid+"/revoke", nil)
		fresh := removed.Data["current_kid"].(string)
		if fresh == kid {
			t.Fatal("the removed key still signs")
		}
		if _, body := s.RawGet("/v1/" + lmount + "/jwks"); strings.Contains(string(body), kid) {
			t.Fatal("the removed key is still in jwks")
		}
		if ok, reason := verifyAt(t, root, lmount, tok); ok || reason != "unknown_key" {
			t.Fatalf("online verify of a removed key's token: %v %s", ok, reason)
		}
		// The verifier holds the key in its cached jwks. The feed names the
		// key (ErrRevoked); or, as the feed is now signed by the fresh key
		// the verifier does not know, fetching the feed refetches jwks and
		// the key is gone (ErrUnknownKey). Either way, within the staleness.
		refusedWithin(t, v, tok, 12*time.Second, meshtoken.ErrRevoked, meshtoken.ErrUnknownKey)
		// A verifier that fetched jwks after the removal does not know the key.
		if _, err := newVerifier(t, 10*time.Second).Verify(t.Context(), tok, nil); !errors.Is(err, meshtoken.ErrUnknownKey) {
			t.Fatalf("after refetch: %v", err)
		}
		// The fresh key signs, and verifies offline on first sight.
		next := login()
		if _, err := v.Verify(t.Context(), next, nil); err != nil {
			t.Fatalf("token of the fresh key: %v", err)
		}
	})

	t.Run("a verifier whose feed is too old refuses", func(t *testing.T) {
		v := newVerifier(t, 3*time.Second)
		tok := login()
		if _, err := v.Verify(t.Context(), tok, nil); err != nil {
			t.Fatal(err)
		}
		s.MustCLI(t, "operator", "seal")
		refusedWithin(t, v, tok, 15*time.Second, meshtoken.ErrRevocationsStale)
	})
}

// verifyAt calls verify on mount and returns valid and reason.
func verifyAt(t *testing.T, cl *api.Client, m, tok string) (bool, string) {
	t.Helper()
	sec, err := cl.Logical().Write(m+"/verify", map[string]any{"token": tok})
	if err != nil {
		t.Fatal(err)
	}
	reason, _ := sec.Data["reason"].(string)
	return sec.Data["valid"].(bool), reason
}
