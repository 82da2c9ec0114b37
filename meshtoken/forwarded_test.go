package meshtoken

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
)

// xfccCertValue is an XFCC Cert value as Envoy writes it: URL-encoded PEM
// (space as %20, every reserved character escaped).
func xfccCertValue(c *x509.Certificate) string {
	var b strings.Builder
	for _, ch := range pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}) {
		if ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-' {
			b.WriteByte(ch)
		} else {
			fmt.Fprintf(&b, "%%%02X", ch)
		}
	}
	return b.String()
}

func xfccHash(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

func clientCertValue(c *x509.Certificate) string {
	return ":" + base64.StdEncoding.EncodeToString(c.Raw) + ":"
}

func TestParseXFCC(t *testing.T) {
	cert, other := testCert(t), testCert(t)
	want := x5t(cert)
	by := `By=spiffe://cluster.local/ns/default/sa/payments;`
	for name, c := range map[string]struct {
		value string
		want  string // "" with ok: no certificate
		ok    bool
	}{
		"hash only":               {by + "Hash=" + xfccHash(cert), want, true},
		"quoted cert":             {by + `Hash=` + xfccHash(cert) + `;Cert="` + xfccCertValue(cert) + `";Subject="CN=orders,O=x;y"`, want, true},
		"unquoted cert":           {"Cert=" + xfccCertValue(cert), want, true},
		"keys in any case":        {"hash=" + xfccHash(cert), want, true},
		"no certificate":          {by + `Subject="CN=x"`, "", true},
		"last element wins":       {"Hash=" + xfccHash(other) + "," + by + "Hash=" + xfccHash(cert), want, true},
		"escaped quote":           {`Subject="a\"b,Hash=` + xfccHash(other) + `";Hash=` + xfccHash(cert), want, true},
		"hash and cert disagree":  {"Hash=" + xfccHash(other) + ";Cert=" + xfccCertValue(cert), "", false},
		"short hash":              {"Hash=abcd", "", false},
		"hash not hex":            {"Hash=" + strings.Repeat("z", 64), "", false},
		"key twice":               {"Hash=" + xfccHash(cert) + ";Hash=" + xfccHash(other), "", false},
		"unterminated quote":      {`Subject="CN=x;Hash=` + xfccHash(cert), "", false},
		"trailing comma":          {"Hash=" + xfccHash(cert) + ",", "", false},
		"empty":                   {"", "", false},
		"no equals":               {"Hash", "", false},
		"quote inside unquoted":   {`Hash=` + xfccHash(cert) + `";Cert=x`, "", false},
		"junk after quoted value": {`Subject="x"y;Hash=` + xfccHash(cert), "", false},
		"cert not PEM":            {"Cert=" + url.QueryEscape("hello"), "", false},
		"two PEM blocks":          {"Cert=" + xfccCertValue(cert) + xfccCertValue(other), "", false},
		"bad escape":              {"Cert=%zz", "", false},
	} {
		got, err := ParseXFCC(c.value)
		if c.ok != (err == nil) || got != c.want {
			t.Errorf("%s: %q, %v; want %q ok=%v", name, got, err, c.want, c.ok)
		}
		if err != nil && !errors.Is(err, ErrForwardedCert) {
			t.Errorf("%s: error %v does not wrap ErrForwardedCert", name, err)
		}
	}
}

func TestParseClientCert(t *testing.T) {
	cert := testCert(t)
	good := clientCertValue(cert)
	if got, err := ParseClientCert(" " + good + " "); err != nil || got != x5t(cert) {
		t.Fatalf("good value: %q %v", got, err)
	}
	for name, v := range map[string]string{
		"no colons":  strings.Trim(good, ":"),
		"one colon":  good[:len(good)-1],
		"two items":  good + ", " + good,
		"base64url":  ":" + base64.RawURLEncoding.EncodeToString(cert.Raw) + ":",
		"not a cert": ":" + base64.StdEncoding.EncodeToString([]byte("hello")) + ":",
		"empty":      "::",
		"too long":   ":" + strings.Repeat("A", maxForwardedHeader) + ":",
	} {
		if got, err := ParseClientCert(v); err == nil || !errors.Is(err, ErrForwardedCert) {
			t.Errorf("%s: accepted (%q) or wrong error %v", name, got, err)
		}
	}
}

// The middleware takes the client certificate from the forwarded header
// only from a proxy the service trusts; from anyone else the header is
// ignored (and removed), and a bound token without a certificate fails.
func TestMiddlewareForwardedCertOnlyFromTrustedProxies(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	client, proxy, stranger := testCert(t), testCert(t), testCert(t)
	bound := j.sign(t, kid, map[string]any{"cnf": map[string]string{"x5t#S256": x5t(client)}})
	boundToProxy := j.sign(t, kid, map[string]any{"cnf": map[string]string{"x5t#S256": x5t(proxy)}, "jti": "J2"})
	unbound := j.sign(t, kid, map[string]any{"jti": "J3"})
	mk := func(header string) http.Handler {
		v, err := NewVerifier(t.Context(), VerifierConfig{
			SkipRevocations: true, // this test serves no revocations feed
			DiscoveryURL:    j.srv.URL + "/v1/meshauth/.well-known/openid-configuration",
			Audience:        "payments",
			HTTPClient:      j.srv.Client(),
			TrustedProxies: &TrustedProxies{
				Certificates: []string{x5t(proxy)},
				Networks:     []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32")},
				Header:       header,
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		return v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get(HeaderXFCC) != "" || r.Header.Get(HeaderClientCert) != "" {
				if _, trusted := r.Header["X-Test-Trusted"]; !trusted {
					t.Error("an untrusted peer's forwarded-certificate header reached the handler")
				}
			}
		}))
	}
	xfcc, cc := mk(HeaderXFCC), mk(HeaderClientCert)
	type req struct {
		h       http.Handler
		remote  string
		tlsPeer *x509.Certificate
		token   string
		headers map[string][]string
		want    int
	}
	fwd := func(name string, c *x509.Certificate) map[string][]string {
		if name == HeaderXFCC {
			return map[string][]string{name: {"Hash=" + xfccHash(c)}}
		}
		return map[string][]string{name: {clientCertValue(c)}}
	}
	for name, c := range map[string]req{
		"trusted address, XFCC":                {xfcc, "192.0.2.1:4000", nil, bound, fwd(HeaderXFCC, client), 200},
		"trusted certificate, Client-Cert":     {cc, "203.0.113.5:4000", proxy, bound, fwd(HeaderClientCert, client), 200},
		"trusted, other certificate forwarded": {xfcc, "192.0.2.1:4000", nil, bound, fwd(HeaderXFCC, stranger), 401},
		"untrusted address spoofs XFCC":        {xfcc, "203.0.113.5:4000", nil, bound, fwd(HeaderXFCC, client), 401},
		"untrusted cert spoofs Client-Cert":    {cc, "203.0.113.5:4000", stranger, bound, fwd(HeaderClientCert, client), 401},
		"spoofed header, direct cert counts":   {xfcc, "203.0.113.5:4000", client, bound, fwd(HeaderXFCC, stranger), 200},
		"trusted proxy sends no header":        {xfcc, "203.0.113.5:4000", proxy, boundToProxy, nil, 401},
		"trusted proxy sends the other header": {cc, "192.0.2.1:4000", nil, bound, fwd(HeaderXFCC, client), 401},
		"trusted proxy sends the header twice": {xfcc, "192.0.2.1:4000", nil, bound, map[string][]string{HeaderXFCC: {"Hash=" + xfccHash(client), "Hash=" + xfccHash(client)}}, 400},
		"trusted proxy, malformed header":      {xfcc, "192.0.2.1:4000", nil, unbound, map[string][]string{HeaderXFCC: {`Hash="`}}, 400},
		"unbound token needs no certificate":   {xfcc, "203.0.113.5:4000", nil, unbound, fwd(HeaderXFCC, client), 200},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = c.remote
		if c.tlsPeer != nil {
			r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{c.tlsPeer}}
		}
		r.Header.Set("Authorization", "Bearer "+c.token)
		for k, vs := range c.headers {
			for _, v := range vs {
				r.Header.Add(k, v)
			}
		}
		if c.want == 200 && (c.remote == "192.0.2.1:4000" || c.tlsPeer == proxy) {
			r.Header.Set("X-Test-Trusted", "1")
		}
		rec := httptest.NewRecorder()
		c.h.ServeHTTP(rec, r)
		if rec.Code != c.want {
			t.Errorf("%s: %d, want %d", name, rec.Code, c.want)
		}
	}
}

func TestTrustedProxiesConfig(t *testing.T) {
	for name, p := range map[string]*TrustedProxies{
		"no header":     {Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}},
		"other header":  {Header: "X-Client-Cert", Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}},
		"nobody":        {Header: HeaderXFCC},
		"bad thumb":     {Header: HeaderXFCC, Certificates: []string{"abc"}},
		"invalid range": {Header: HeaderXFCC, Networks: []netip.Prefix{{}}},
	} {
		if err := p.check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzForwardedCert: neither parser panics; what they return is a
// thumbprint or nothing; and no prefix an attacker puts before the trusted
// proxy's XFCC element changes the certificate read from it.
func FuzzForwardedCert(f *testing.F) {
	cert := testCert(f)
	good := "By=spiffe://x;Hash=" + xfccHash(cert) + `;Subject="CN=a,b"`
	for _, s := range []string{
		good, "Cert=" + xfccCertValue(cert), `a="\"",b=c`, `Hash="`, "a=b;;c=d", ",", `x="a\`,
		clientCertValue(cert), ":AAAA:", "",
	} {
		f.Add(s)
	}
	want := x5t(cert)
	f.Fuzz(func(t *testing.T, s string) {
		for _, parse := range []func(string) (string, error){ParseXFCC, ParseClientCert} {
			got, err := parse(s)
			if err == nil && got != "" {
				if b, e := base64.RawURLEncoding.DecodeString(got); e != nil || len(b) != sha256.Size {
					t.Fatalf("%q gave %q, not a thumbprint", s, got)
				}
			}
			if err != nil && got != "" {
				t.Fatalf("%q: both %q and %v", s, got, err)
			}
		}
		if got, err := ParseXFCC(s + "," + good); err == nil && got != want {
			t.Fatalf("prefix %q changed the certificate to %q", s, got)
		}
	})
}
