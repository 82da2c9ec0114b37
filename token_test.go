package meshauth

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// TestMintMatchesEncodingJSON holds the hand-built payload to what
// encoding/json writes for the same claims, byte for byte, over the inputs
// that need escaping: verifiers and checkTokenSize rely on that encoding.
func TestMintMatchesEncodingJSON(t *testing.T) {
	e := getTestBackend(t)
	ring, err := e.b.getKeyRing(t.Context(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	odd := "a<b>&c\"d\\e\u2028f\x01é\x7f"
	cases := []struct {
		name     string
		entry    serviceEntry
		issuer   string
		audience []string
		x5t      string
		spiffeID string
	}{
		{name: "plain", entry: serviceEntry{Name: "orders"}, issuer: "meshauth"},
		{name: "every member", entry: serviceEntry{Name: "orders", Claims: map[string]string{"team": "checkout", "z" + odd: odd}, Registration: "REG", RevocationEpoch: 3}, issuer: "https://vault.example/v1/meshauth", audience: []string{"payments"}, x5t: strings.Repeat("x", 43)},
		{name: "odd strings", entry: serviceEntry{Name: "orders", Registration: "R", RevocationEpoch: 1}, issuer: odd, audience: []string{odd, "b", ""}},
		{name: "one escape each", entry: serviceEntry{Name: "orders", Claims: map[string]string{"k": "c>d"}}, issuer: "x<y", audience: []string{"a&b", "q\"", "u\u2028", "t\x01", "\x7f"}},
		{name: "jwt-svid", entry: serviceEntry{Name: "orders", TokenSubject: tokenSubjectSPIFFEID, Registration: "R"}, issuer: "meshauth", audience: []string{"spiffe://example.org/x"}, spiffeID: "spiffe://example.org/orders"},
	}
	now := time.Unix(1_800_000_000, 0)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			svc := &cachedService{entry: &c.entry}
			cfg := &configEntry{Issuer: c.issuer}
			m, err := mintToken(ring.current, cfg, svc, c.audience, time.Hour, c.x5t, c.spiffeID, now)
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodeSegment(strings.Split(m.token, ".")[1])
			if err != nil {
				t.Fatal(err)
			}
			sub, service := tokenSubject(svc, c.spiffeID)
			want := mintedClaims{Issuer: c.issuer, Subject: sub, Service: service, IssuedAt: now.Unix(), NotBefore: now.Unix(), Expiry: now.Unix() + 3600, ID: m.jti, Generation: c.entry.generation()}
			switch len(c.audience) {
			case 0:
			case 1:
				want.Audience = c.audience[0]
			default:
				want.Audience = c.audience
			}
			if c.x5t != "" {
				want.Cnf = &meshtoken.Confirmation{X5tS256: c.x5t}
			}
			registered, err := json.Marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			var extra []byte
			if len(c.entry.Claims) > 0 {
				full, _ := json.Marshal(c.entry.Claims)
				extra = full[1 : len(full)-1]
			}
			if wantBytes := prependExtraClaims(extra, registered); !bytes.Equal(got, wantBytes) {
				t.Fatalf("payload\n got %s\nwant %s", got, wantBytes)
			}
		})
	}
}

// TestMintTemplateFollowsIssuerAndWrites: the per-service template never
// outlives what it was built from. A config write changes iss on the next
// login; a revoke (a write of the service) changes gen.
func TestMintTemplateFollowsIssuerAndWrites(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	claims := func() map[string]any {
		tok := e.mustLogin(t, "orders", key)
		raw, err := decodeSegment(strings.Split(tok, ".")[1])
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]any{}
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	first := claims()
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"issuer": "https://issuer.example"})
	if got := claims()["iss"]; got != "https://issuer.example" {
		t.Fatalf("iss after a config write = %v", got)
	}
	e.mustOK(t, logical.UpdateOperation, "services/orders/revoke", nil)
	after := claims()
	if after["gen"] == first["gen"] || after["gen"] == nil {
		t.Fatalf("gen after a revoke = %v, before %v", after["gen"], first["gen"])
	}
}
