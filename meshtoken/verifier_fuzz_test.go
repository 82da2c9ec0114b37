package meshtoken

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// FuzzVerifierSigned feeds the Verifier tokens whose signatures are valid
// over arbitrary headers and payloads: everything an attacker holding a
// signing key's output (or a buggy issuer) could send. The Verifier must
// not panic, and whatever it accepts must be a token every JSON reader
// reads alike, carrying the claims it reports.
func FuzzVerifierSigned(f *testing.F) {
	now := time.Now().Unix()
	claims := func(extra string) string {
		return fmt.Sprintf(`{"iss":"meshauth","sub":"orders","aud":"payments","iat":%d,"nbf":%d,"exp":%d,"jti":"J"%s}`, now, now, now+300, extra)
	}
	good := `{"alg":"EdDSA","kid":"k1","typ":"JWT"}`
	for _, seed := range [][2]string{
		{good, claims("")},
		{good, claims(`,"team":"checkout"`)},
		{good, claims(`,"SUB":"payments"`)},
		{good, claims(`,"sub":"payments"`)},
		{good, claims(`,"ſub":"payments"`)},
		{good, claims(`,"cnf":{"x5t#S256":"abc"}`)},
		{good, claims(`,"cnf":{}`)},
		{good, claims(`,"cnf":null`)},
		{good, claims(`,"cnf":"x"`)},
		{good, `{"iss":"meshauth","sub":"orders","aud":"payments","exp":4102444800,"jti":"J"}`},
		{good, `{"iss":"meshauth","sub":"orders","aud":["payments","x"],"iat":1e300,"exp":1e308,"jti":"J"}`},
		{good, `{"iss":"meshauth","sub":7,"aud":{},"iat":"now","exp":-1,"jti":null}`},
		{good, `{"aud":"payments","a":[[[[[[[[{"b":{"c":[]}}]]]]]]]]}`},
		{good, `[]`},
		{good, `null`},
		{`{"alg":"EdDSA","kid":"k1","crit":["exp"]}`, claims("")},
		{`{"alg":"EdDSA","kid":"k1","kid":"k2"}`, claims("")},
		{`{"alg":"none","kid":"k1"}`, claims("")},
		{`{"alg":"EdDSA"}`, claims("")},
		{`{"alg":"ES256","kid":"k1"}`, claims("")},
		{`{"alg":"EdDSA","kid":"k1","jku":"https://evil.example/jwks"}`, claims("")},
	} {
		f.Add([]byte(seed[0]), []byte(seed[1]), false)
		f.Add([]byte(seed[0]), []byte(seed[1]), true)
	}

	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	cert := testCert(f)
	sum := sha256.Sum256(cert.Raw)
	thumb := base64.RawURLEncoding.EncodeToString(sum[:])
	v := &Verifier{
		cfg: VerifierConfig{
			SkipRevocations: true, // this test serves no revocations feed
			Issuer:          "meshauth", Audience: "payments", Leeway: DefaultLeeway,
			MinRefetchInterval: 24 * time.Hour, MaxStaleness: time.Hour,
		},
		now: time.Now,
	}
	v.keysFetch.attempted(time.Now()) // no fetch: the verifier never goes to the network here
	far := time.Now().Add(24 * time.Hour)
	v.set.Store(&keySet{keys: map[string]Key{"k1": {Algorithm: EdDSA, Public: priv.Public()}}, freshUntil: far, usableUntil: far})

	f.Fuzz(func(t *testing.T, header, payload []byte, present bool) {
		b64 := base64.RawURLEncoding.EncodeToString
		input := b64(header) + "." + b64(payload)
		token := input + "." + b64(ed25519.Sign(priv, []byte(input)))
		peer := cert
		if !present {
			peer = nil
		}
		c, err := v.Verify(t.Context(), token, peer)
		if err != nil {
			if !errors.Is(err, ErrInvalidToken) && !errors.Is(err, ErrCertMismatch) && !errors.Is(err, ErrCertMissing) {
				t.Fatalf("error outside the documented ones: %v", err)
			}
			return
		}
		if CheckMembers(payload) != nil || CheckMembers(header) != nil {
			t.Fatalf("accepted an ambiguous token: %s . %s", header, payload)
		}
		// Read the payload as a reader that matches names exactly would.
		var exact map[string]json.RawMessage
		if err := json.Unmarshal(payload, &exact); err != nil {
			t.Fatalf("accepted a payload that is not an object: %v", err)
		}
		var sub string
		if json.Unmarshal(exact["sub"], &sub) != nil || sub != c.Subject || sub == "" {
			t.Fatalf("reported service %q; the payload's exact sub is %s", c.Subject, exact["sub"])
		}
		if !slices.Contains(c.Audience, "payments") || c.IssuedAt.IsZero() || c.ExpiresAt.IsZero() || c.ID == "" {
			t.Fatalf("accepted incomplete claims %#v", c)
		}
		if c.Thumbprint() != "" && (!present || c.Thumbprint() != thumb) {
			t.Fatalf("accepted a bound token without its certificate: %#v", c)
		}
		if _, ok := exact["cnf"]; ok && c.Thumbprint() == "" && string(exact["cnf"]) != "null" {
			t.Fatalf("accepted a cnf it did not check: %s", exact["cnf"])
		}
		_ = c.Extra()
	})
}
