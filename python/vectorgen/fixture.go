package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// Fixed names of the vectors: the Python tests read them from the files.
const (
	issuer   = "https://vault.example/v1/meshauth"
	audience = "payments"
	// farFuture is the exp of tokens meant to be valid whenever the vectors
	// are read (2100-01-01).
	farFuture = 4102444800
)

// signer is one signing key of the fixture.
type signer struct {
	kid, alg string
	priv     crypto.Signer
}

// fixture holds the keys, certificates and feed the vectors use.
type fixture struct {
	now     int64
	signers map[string]*signer
	jwks    []byte
	certs   map[string][]byte // name -> DER
	feed    string
}

// File is what vectors.json and differential.json hold.
type File struct {
	Comment      string            `json:"comment"`
	Issuer       string            `json:"issuer"`
	Audience     string            `json:"audience"`
	JWKS         json.RawMessage   `json:"jwks"`
	Feed         string            `json:"feed"`
	Certificates map[string]string `json:"certificates"` // name -> base64 DER
	// MaxDelegationDepth is the verifiers' opt-in to exchanged tokens
	// (meshtoken's MaxDelegationDepth, Python's max_delegation_depth): the
	// cases with act are verdicts of a verifier that accepts them.
	MaxDelegationDepth int    `json:"max_delegation_depth"`
	Cases              []Case `json:"cases"`
	// Feeds are revocation feeds and meshtoken.ParseFeed's verdict on each.
	Feeds []FeedCase `json:"feeds,omitempty"`
}

// Case is one token and the verdict both verifiers must reach.
type Case struct {
	Name string `json:"name,omitempty"`
	// Token is the compact token as presented.
	Token string `json:"token"`
	// Certificate names the client certificate presented ("" for none).
	Certificate string `json:"certificate,omitempty"`
	// Reason is "" for accepted, else the reason of the refusal.
	Reason string `json:"reason"`
	// GoPending, when set, says why meshtoken does not reach this verdict
	// yet (a rule of the contract another change brings to Go); the Go test
	// reports such cases instead of failing on them.
	GoPending string `json:"go_pending,omitempty"`
	// Extra is meshtoken's Claims.Extra() of an accepted token, as the text
	// of its JSON encoding (numbers as the float64 Extra decodes them into;
	// null when Extra cannot decode the payload into Go values); absent when
	// refused. Text, not nested JSON, so the file loads in any JSON reader
	// whatever the claims' nesting (a case nests arrays 2000 deep).
	Extra string `json:"extra,omitempty"`
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644) //nolint:gosec // checked-in test data, read by anyone
}

func seed(s string) []byte { sum := sha256.Sum256([]byte(s)); return sum[:] }

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func newFixture() (*fixture, error) {
	fx := &fixture{now: time.Now().Unix(), signers: map[string]*signer{}, certs: map[string][]byte{}}
	// Ed25519 keys from fixed seeds: the differential corpus, signed with
	// them, is the same bytes on every run.
	fx.signers["ed"] = &signer{kid: "ed-1", alg: meshtoken.EdDSA, priv: ed25519.NewKeyFromSeed(seed("meshauth vectors ed-1"))}
	fx.signers["removed"] = &signer{kid: "ed-removed", alg: meshtoken.EdDSA, priv: ed25519.NewKeyFromSeed(seed("meshauth vectors ed-removed"))}
	es256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	es384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rs, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	fx.signers["es256"] = &signer{kid: "es256-1", alg: meshtoken.ES256, priv: es256}
	fx.signers["es384"] = &signer{kid: "es384-1", alg: meshtoken.ES384, priv: es384}
	fx.signers["rs256"] = &signer{kid: "rs256-1", alg: meshtoken.RS256, priv: rs}
	var keys []map[string]string
	for _, name := range []string{"ed", "removed", "es256", "es384", "rs256"} {
		s := fx.signers[name]
		jwk, err := meshtoken.PublicJWK(s.priv.Public())
		if err != nil {
			return nil, err
		}
		jwk["kid"], jwk["alg"], jwk["use"] = s.kid, s.alg, "sig"
		keys = append(keys, jwk)
	}
	fx.jwks, _ = json.Marshal(map[string]any{"keys": keys})
	for _, name := range []string{"orders", "thief", "revoked"} {
		der, err := selfSigned(name)
		if err != nil {
			return nil, err
		}
		fx.certs[name] = der
	}
	feed := map[string]any{
		"iss":          issuer,
		"iat":          fx.now,
		"tokens":       map[string]int64{"jti-revoked": farFuture},
		"services":     map[string]any{"rotated": map[string]any{"gen": "g2", "exp": farFuture}},
		"disabled":     map[string]int64{"disabled": farFuture},
		"keys":         map[string]int64{"ed-removed": farFuture},
		"certificates": map[string]int64{fx.x5t("revoked"): farFuture},
	}
	payload, _ := json.Marshal(feed)
	header, _ := json.Marshal(map[string]string{"alg": meshtoken.EdDSA, "kid": "ed-1", "typ": meshtoken.RevocationsType})
	fx.feed = fx.sign("ed", b64(header), b64(payload))
	return fx, nil
}

func selfSigned(name string) ([]byte, error) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(100 * 365 * 24 * time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
}

func (fx *fixture) x5t(cert string) string {
	if cert == "" {
		return ""
	}
	sum := sha256.Sum256(fx.certs[cert])
	return b64(sum[:])
}

// sign returns header.payload.signature with the segments as given.
func (fx *fixture) sign(key, header, payload string) string {
	s := fx.signers[key]
	input := header + "." + payload
	var sig []byte
	switch k := s.priv.(type) {
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, []byte(input))
	case *ecdsa.PrivateKey:
		var digest []byte
		size := 32
		if s.alg == meshtoken.ES384 {
			d := sha512.Sum384([]byte(input))
			digest, size = d[:], 48
		} else {
			d := sha256.Sum256([]byte(input))
			digest = d[:]
		}
		r, ss, err := ecdsa.Sign(rand.Reader, k, digest)
		if err != nil {
			panic(err)
		}
		sig = make([]byte, 2*size)
		r.FillBytes(sig[:size])
		ss.FillBytes(sig[size:])
	case *rsa.PrivateKey:
		d := sha256.Sum256([]byte(input))
		var err error
		sig, err = rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, d[:])
		if err != nil {
			panic(err)
		}
	}
	return input + "." + b64(sig)
}

// file is the fixture's part of a vectors file.
func (fx *fixture) file(comment string) *File {
	certs := map[string]string{}
	for name, der := range fx.certs {
		certs[name] = base64.StdEncoding.EncodeToString(der)
	}
	return &File{
		Comment: comment, Issuer: issuer, Audience: audience, JWKS: fx.jwks, Feed: fx.feed, Certificates: certs,
		MaxDelegationDepth: meshtoken.MaxActorDepth,
	}
}

// goVerifier is a meshtoken Verifier over a File's keys and feed, served on
// loopback for the duration of a check.
type goVerifier struct {
	v     *meshtoken.Verifier
	srv   *httptest.Server
	certs map[string]string
}

func newGoVerifier(f *File) (*goVerifier, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cache-Control", "max-age=3600")
		_, _ = w.Write(f.JWKS)
	})
	mux.HandleFunc("/revocations", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cache-Control", "max-age=3600")
		_, _ = w.Write([]byte(f.Feed))
	})
	srv := httptest.NewServer(mux)
	v, err := meshtoken.NewVerifier(context.Background(), meshtoken.VerifierConfig{
		JWKSURL:         srv.URL + "/jwks",
		Issuer:          f.Issuer,
		Audience:        f.Audience,
		MaxCachedTokens: -1,
		// Delegated tokens are refused unless the verifier opts in.
		MaxDelegationDepth: f.MaxDelegationDepth,
		// The feed is as old as the vectors: staleness must not end them.
		Revocations: &meshtoken.RevocationConfig{URL: srv.URL + "/revocations", MaxStaleness: 100 * 365 * 24 * time.Hour},
	})
	if err != nil {
		srv.Close()
		return nil, err
	}
	certs := map[string]string{}
	for name, der := range f.Certificates {
		raw, _ := base64.StdEncoding.DecodeString(der)
		sum := sha256.Sum256(raw)
		certs[name] = b64(sum[:])
	}
	return &goVerifier{v: v, srv: srv, certs: certs}, nil
}

func (g *goVerifier) close() { g.srv.Close() }

// extra is meshtoken's Extra() of c as JSON text when c is accepted, else "".
func (g *goVerifier) extra(c Case) string {
	claims, err := g.v.VerifyThumbprint(context.Background(), c.Token, g.certs[c.Certificate])
	if err != nil {
		return ""
	}
	b, err := json.Marshal(claims.Extra())
	if err != nil {
		return strconv.Quote("unencodable: " + err.Error())
	}
	return string(b)
}

// verdict is meshtoken's answer to a case, as a reason ("" = accepted):
// the reason of every refusal (ReasonOf), and for the Verifier's two
// errors that carry none, the names the Python package gives them.
func (g *goVerifier) verdict(c Case) string {
	_, err := g.v.VerifyThumbprint(context.Background(), c.Token, g.certs[c.Certificate])
	switch {
	case err == nil:
		return ""
	case errors.Is(err, meshtoken.ErrKeysStale):
		return "keys_stale"
	case meshtoken.ReasonOf(err) != "":
		return meshtoken.ReasonOf(err)
	case errors.Is(err, meshtoken.ErrRevocationsStale):
		return "revocations_stale"
	}
	return fmt.Sprintf("unexpected error: %v", err)
}
