package meshauth

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// Fuzz targets for every parser of untrusted input. Seeds live in
// testdata/fuzz/<target>; `make fuzz` runs each for FUZZ_TIME and `make test`
// for a few seconds. None may panic: a panic kills the plugin process and
// every mount it serves.

func FuzzParseToken(f *testing.F) {
	e := getTestBackend(f)
	key := e.register(f, "orders", nil)
	good := e.mustLogin(f, "orders", key)
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add("eyJhbGciOiJub25lIn0.eyJzdWIiOiJvcmRlcnMifQ.")
	f.Add("a.b.c")
	ring, _ := e.b.getKeyRing(f.Context(), e.storage)
	cfg, _ := e.b.getConfig(f.Context(), e.storage)
	f.Fuzz(func(t *testing.T, token string) {
		parsed, reason := parseToken(token, ring, cfg, "", time.Now(), true)
		if reason == "" && (parsed == nil || parsed.claims.Subject == "") {
			t.Fatalf("accepted without a subject: %q", token)
		}
		if reason == "" && token != good && !strings.HasPrefix(token, good[:strings.LastIndexByte(good, '.')]) {
			t.Fatalf("accepted a token meshauth did not sign: %q", token)
		}
	})
}

func FuzzParseCertificates(f *testing.F) {
	ca := newTestCA(f, "fuzz-ca")
	_, _, leaf := ca.issue(f, "leaf", leafOptions{})
	f.Add(ca.pem)
	f.Add(leaf + ca.pem)
	f.Add("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
	f.Add("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
	f.Add(ca.pem + "trailing")
	f.Fuzz(func(t *testing.T, text string) {
		certs, err := parseCertificates("ca_chain", text, maxCACertificates)
		if err == nil && (len(certs) == 0 || len(certs) > maxCACertificates) {
			t.Fatalf("accepted %d certificates", len(certs))
		}
		if err == nil && strings.Contains(text, "PRIVATE KEY") {
			t.Fatal("accepted a bundle holding a private key")
		}
	})
}

// FuzzServiceWrite feeds hostile values to every field of services/:name
// through the framework's own decoding, then checks that a refusal wrote
// nothing and an acceptance can be read back.
func FuzzServiceWrite(f *testing.F) {
	f.Add("orders", "payments,ledger", "team=a", "1h", "true", "")
	f.Add("a", "", "sub=root", "-1", "1", "-----BEGIN CERTIFICATE-----")
	f.Add("x.y-z", ",,", "=", "99999999999", "yes", "\x00")
	f.Fuzz(func(t *testing.T, name, audiences, claim, ttl, disabled, cert string) {
		e := getTestBackend(t)
		k, v, _ := strings.Cut(claim, "=")
		data := map[string]any{
			"allowed_audiences": audiences,
			"claims":            map[string]any{k: v},
			"token_ttl":         ttl,
			"disabled":          disabled,
		}
		if cert != "" {
			data["certificate"] = cert
		}
		puts := e.storage.puts.Load()
		resp, err := e.request(t, logical.UpdateOperation, "services/"+name, data)
		refused := err != nil || (resp != nil && resp.IsError())
		if refused && e.storage.puts.Load() != puts {
			t.Fatalf("a refused write stored something: %v %v", err, resp)
		}
		if !refused {
			if _, err := e.request(t, logical.ReadOperation, "services/"+name, nil); err != nil {
				t.Fatalf("accepted service cannot be read: %v", err)
			}
		}
	})
}

// FuzzLoginFields feeds hostile login input; every failure must be the
// generic error or a 4xx response, never a panic or a token.
func FuzzLoginFields(f *testing.F) {
	f.Add("mak_x", "payments", "5m")
	f.Add("", "", "")
	f.Add(strings.Repeat("k", 300), "a,b,,", "-1")
	e := getTestBackend(f)
	e.register(f, "orders", map[string]any{"allowed_audiences": "payments"})
	f.Fuzz(func(t *testing.T, key, audience, ttl string) {
		resp, _ := e.login(t, "orders", key, map[string]any{"audience": audience, "ttl": ttl})
		if resp != nil && !resp.IsError() && resp.Data["token"] != nil {
			t.Fatalf("a fuzzed key logged in: %q", key)
		}
	})
}
