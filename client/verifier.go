package client

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/datapunk/vault-plugin-secrets-meshauth/internal/jws"
)

// Defaults of a Verifier.
const (
	defaultLeeway       = 30 * time.Second
	defaultMinRefetch   = 30 * time.Second
	defaultMaxCacheAge  = time.Hour
	maxTokenLength      = 16 << 10
	maxJWKSBytes        = 1 << 20
	maxDiscoveryBytes   = 64 << 10
	fallbackCacheAge    = 5 * time.Minute
	verifierHTTPTimeout = 10 * time.Second
	errPrefix           = "meshauth verify: "
)

// supportedAlgorithms are the only algorithms a Verifier accepts.
var supportedAlgorithms = []string{"ES256", "ES384", "EdDSA", "RS256"}

// Errors a Verifier returns; wrap-compatible with errors.Is.
var (
	ErrInvalidToken  = errors.New(errPrefix + "invalid token")
	ErrUnknownKey    = errors.New(errPrefix + "unknown signing key")
	ErrCertMismatch  = errors.New(errPrefix + "token is bound to another client certificate")
	ErrCertMissing   = errors.New(errPrefix + "token is bound to a client certificate, but none was presented")
	errCritHeader    = errors.New(errPrefix + "crit header not understood")
	errAlgMismatch   = errors.New(errPrefix + "alg does not match the key named by kid")
	errMalformedForm = errors.New(errPrefix + "not a compact JWS of three base64url segments")
)

// VerifierConfig says where the keys are and what a token must say.
type VerifierConfig struct {
	// DiscoveryURL is the engine's .well-known/openid-configuration; it gives
	// the jwks_uri and the issuer. Set it or JWKSURL.
	DiscoveryURL string
	// JWKSURL is the engine's jwks, used as is when DiscoveryURL is empty.
	JWKSURL string
	// Issuer is the required iss; default the discovery document's issuer.
	Issuer string
	// Audience, when set, must be in the token's aud.
	Audience string
	// Leeway is the clock skew allowed on exp, nbf and iat; default 30s.
	Leeway time.Duration
	// MinRefetchInterval bounds refetches triggered by unknown kids, so a
	// caller sending random kids cannot turn the verifier into a flood;
	// default 30s.
	MinRefetchInterval time.Duration
	// HTTPClient fetches discovery and JWKS; configure it to trust Vault's CA.
	HTTPClient *http.Client
}

// Claims are what a verified token says.
type Claims struct {
	// Service is the sub claim: the calling service's name.
	Service string
	// Audience is the aud claim.
	Audience []string
	// ExpiresAt, IssuedAt are exp and iat.
	ExpiresAt, IssuedAt time.Time
	// ID is the jti.
	ID string
	// CertificateThumbprint is cnf.x5t#S256 when the token is bound.
	CertificateThumbprint string
	// payload is the token's decoded claims segment, for ExtraClaims.
	payload []byte
}

// ExtraClaims decodes the claims other than the registered ones (the
// service's configured claims). It is computed on demand: most handlers only
// need Service, and decoding twice would cost the verifier a fifth more.
func (c *Claims) ExtraClaims() map[string]any {
	var mc map[string]any
	if json.Unmarshal(c.payload, &mc) != nil {
		return nil
	}
	for _, reg := range []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "cnf"} {
		delete(mc, reg)
	}
	return mc
}

// verificationKey is one JWK bound to its algorithm.
type verificationKey struct {
	alg string
	pub crypto.PublicKey
}

// Verifier checks meshauth tokens offline. Safe for concurrent use.
type Verifier struct {
	cfg     VerifierConfig
	jwksURL string
	now     func() time.Time

	mu         sync.RWMutex
	keys       map[string]verificationKey
	expires    time.Time
	lastFetch  time.Time
	fetchMu    sync.Mutex // one fetch at a time
	fetchCount int
}

// NewVerifier resolves discovery (if configured) and fetches the keys once.
func NewVerifier(ctx context.Context, cfg VerifierConfig) (*Verifier, error) {
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: verifierHTTPTimeout}
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = defaultLeeway
	}
	if cfg.MinRefetchInterval == 0 {
		cfg.MinRefetchInterval = defaultMinRefetch
	}
	v := &Verifier{cfg: cfg, jwksURL: cfg.JWKSURL, now: time.Now, keys: map[string]verificationKey{}}
	if cfg.DiscoveryURL != "" {
		if err := v.discover(ctx); err != nil {
			return nil, err
		}
	}
	if v.jwksURL == "" {
		return nil, errors.New(errPrefix + "set DiscoveryURL or JWKSURL")
	}
	if v.cfg.Issuer == "" {
		return nil, errors.New(errPrefix + "no issuer: set Issuer, or use DiscoveryURL")
	}
	if err := v.fetch(ctx); err != nil {
		return nil, err
	}
	return v, nil
}

// discover reads the discovery document for jwks_uri and issuer.
func (v *Verifier) discover(ctx context.Context) error {
	body, _, err := v.get(ctx, v.cfg.DiscoveryURL, maxDiscoveryBytes)
	if err != nil {
		return fmt.Errorf(errPrefix+"discovery: %w", err)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(body, &doc); err != nil || doc.JWKSURI == "" {
		return fmt.Errorf(errPrefix+"discovery document at %s has no jwks_uri", v.cfg.DiscoveryURL)
	}
	base, err := url.Parse(v.cfg.DiscoveryURL)
	if err != nil {
		return err
	}
	ref, err := url.Parse(doc.JWKSURI)
	if err != nil {
		return fmt.Errorf(errPrefix+"jwks_uri %q: %w", doc.JWKSURI, err)
	}
	// A relative jwks_uri (/v1/<mount>/jwks) resolves against the discovery
	// URL; an absolute one must stay on the same scheme and host, so a
	// tampered document cannot point the verifier elsewhere.
	resolved := base.ResolveReference(ref)
	if resolved.Scheme != base.Scheme || resolved.Host != base.Host {
		return fmt.Errorf(errPrefix+"jwks_uri %s is not on %s", resolved, base.Host)
	}
	v.jwksURL = resolved.String()
	if v.cfg.Issuer == "" {
		v.cfg.Issuer = doc.Issuer
	}
	return nil
}

// get fetches a URL with a size bound and returns the body and max-age.
func (v *Verifier) get(ctx context.Context, u string, limit int64) ([]byte, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := v.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, 0, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, 0, err
	}
	if int64(len(body)) > limit {
		return nil, 0, fmt.Errorf("GET %s: more than %d bytes", u, limit)
	}
	return body, maxAge(resp.Header.Get("Cache-Control")), nil
}

// maxAge reads max-age from Cache-Control, bounded to an hour; without one,
// keys are kept five minutes.
func maxAge(cc string) time.Duration {
	for _, part := range strings.Split(cc, ",") {
		part = strings.TrimSpace(part)
		if secs, ok := strings.CutPrefix(part, "max-age="); ok {
			if n, err := strconv.Atoi(secs); err == nil && n >= 0 {
				return min(time.Duration(n)*time.Second, defaultMaxCacheAge)
			}
		}
	}
	return fallbackCacheAge
}

// fetch downloads the JWKS and replaces the key set.
func (v *Verifier) fetch(ctx context.Context) error {
	v.fetchMu.Lock()
	defer v.fetchMu.Unlock()
	return v.fetchLocked(ctx)
}

// refetch fetches again unless another caller did within the refetch
// interval while this one waited (then its result serves both), or the set
// has not expired and an unknown kid asked too soon.
func (v *Verifier) refetch(ctx context.Context) {
	v.fetchMu.Lock()
	defer v.fetchMu.Unlock()
	v.mu.RLock()
	expired := !v.now().Before(v.expires)
	recent := v.now().Sub(v.lastFetch) < v.cfg.MinRefetchInterval
	v.mu.RUnlock()
	if recent && !expired {
		return
	}
	// A failed refresh keeps the keys we have: an outage of the JWKS
	// endpoint must not stop verification of tokens we can check.
	_ = v.fetchLocked(ctx)
}

// fetchLocked is fetch for a caller holding fetchMu.
func (v *Verifier) fetchLocked(ctx context.Context) error {
	v.mu.Lock()
	v.lastFetch = v.now()
	v.fetchCount++
	v.mu.Unlock()
	body, age, err := v.get(ctx, v.jwksURL, maxJWKSBytes)
	if err != nil {
		return fmt.Errorf(errPrefix+"fetching keys: %w", err)
	}
	keys, err := parseJWKS(body)
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.keys = keys
	v.expires = v.now().Add(age)
	v.mu.Unlock()
	return nil
}

// parseJWKS turns a JWK Set into keys bound to their algorithms. Keys
// without an alg meshauth uses are skipped.
func parseJWKS(body []byte) (map[string]verificationKey, error) {
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf(errPrefix+"JWKS does not parse: %w", err)
	}
	out := map[string]verificationKey{}
	for _, k := range set.Keys {
		pub, err := publicKey(k)
		if err != nil || k["kid"] == "" {
			continue
		}
		out[k["kid"]] = verificationKey{alg: k["alg"], pub: pub}
	}
	return out, nil
}

// publicKey decodes one JWK, checking that its type fits its alg.
func publicKey(k map[string]string) (crypto.PublicKey, error) {
	b64 := func(s string) []byte { b, _ := base64.RawURLEncoding.DecodeString(s); return b }
	switch {
	case k["alg"] == "EdDSA" && k["kty"] == "OKP" && k["crv"] == "Ed25519":
		x := b64(k["x"])
		if len(x) != ed25519.PublicKeySize {
			return nil, errors.New("bad Ed25519 key")
		}
		return ed25519.PublicKey(x), nil
	case k["alg"] == "ES256" && k["kty"] == "EC" && k["crv"] == "P-256",
		k["alg"] == "ES384" && k["kty"] == "EC" && k["crv"] == "P-384":
		curve := elliptic.P256()
		if k["crv"] == "P-384" {
			curve = elliptic.P384()
		}
		pt := append(append([]byte{4}, b64(k["x"])...), b64(k["y"])...)
		return ecdsa.ParseUncompressedPublicKey(curve, pt)
	case k["alg"] == "RS256" && k["kty"] == "RSA":
		n, e := new(big.Int).SetBytes(b64(k["n"])), new(big.Int).SetBytes(b64(k["e"]))
		if n.BitLen() < 2048 || !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31 {
			return nil, errors.New("bad RSA key")
		}
		return &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
	}
	return nil, fmt.Errorf("unsupported JWK (alg %q, kty %q)", k["alg"], k["kty"])
}

// key finds the key for kid, refreshing the set when it expired, and once
// per MinRefetchInterval when the kid is unknown (a rotation we have not
// seen yet).
func (v *Verifier) key(ctx context.Context, kid string) (verificationKey, error) {
	v.mu.RLock()
	k, ok := v.keys[kid]
	expired := !v.now().Before(v.expires)
	mayRefetch := v.now().Sub(v.lastFetch) >= v.cfg.MinRefetchInterval
	v.mu.RUnlock()
	if ok && !expired {
		return k, nil
	}
	if expired || mayRefetch {
		v.refetch(ctx)
		v.mu.RLock()
		k, ok = v.keys[kid]
		v.mu.RUnlock()
	}
	if !ok {
		return verificationKey{}, ErrUnknownKey
	}
	return k, nil
}

// Verify checks a token: form and size, a kid we hold and its one
// algorithm, signature, iss, aud (when configured), exp, nbf, iat within
// leeway. When peer is the client certificate of the request's mutual TLS
// and the token carries cnf.x5t#S256, the two must match (RFC 8705); a bound
// token presented without a certificate is refused.
func (v *Verifier) Verify(ctx context.Context, token string, peer *x509.Certificate) (*Claims, error) {
	if len(token) > maxTokenLength || !jws.WellFormed(token) {
		return nil, fmt.Errorf("%w: %w", ErrInvalidToken, errMalformedForm)
	}
	keyFunc := func(t *jwt.Token) (any, error) {
		if _, ok := t.Header["crit"]; ok {
			return nil, errCritHeader
		}
		kid, _ := t.Header["kid"].(string)
		k, err := v.key(ctx, kid)
		if err != nil {
			return nil, err
		}
		if t.Method.Alg() != k.alg {
			return nil, errAlgMismatch
		}
		return k.pub, nil
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(supportedAlgorithms),
		jwt.WithIssuer(v.cfg.Issuer),
		jwt.WithIssuedAt(),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(v.cfg.Leeway),
		jwt.WithTimeFunc(v.now),
	}
	if v.cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(v.cfg.Audience))
	}
	var rc struct {
		jwt.RegisteredClaims
		Cnf *struct {
			X5t string `json:"x5t#S256"`
		} `json:"cnf"`
	}
	if _, err := jwt.NewParser(opts...).ParseWithClaims(token, &rc, keyFunc); err != nil {
		if errors.Is(err, ErrUnknownKey) {
			return nil, fmt.Errorf("%w: %w", ErrInvalidToken, ErrUnknownKey)
		}
		return nil, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if rc.Subject == "" || rc.ID == "" {
		return nil, fmt.Errorf("%w: sub and jti are required", ErrInvalidToken)
	}
	claims := &Claims{Service: rc.Subject, Audience: rc.Audience, ExpiresAt: rc.ExpiresAt.Time, IssuedAt: rc.IssuedAt.Time, ID: rc.ID}
	if rc.Cnf != nil && rc.Cnf.X5t != "" {
		claims.CertificateThumbprint = rc.Cnf.X5t
		if peer == nil {
			return nil, ErrCertMissing
		}
		sum := sha256.Sum256(peer.Raw)
		if subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(sum[:])), []byte(rc.Cnf.X5t)) != 1 {
			return nil, ErrCertMismatch
		}
	}
	first := strings.IndexByte(token, '.')
	second := first + 1 + strings.IndexByte(token[first+1:], '.')
	claims.payload, _ = base64.RawURLEncoding.DecodeString(token[first+1 : second])
	return claims, nil
}
