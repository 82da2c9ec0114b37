package meshtoken

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Defaults of a Verifier.
const (
	defaultMinRefetch   = 30 * time.Second
	defaultMaxStaleness = time.Hour
	maxJWKSBytes        = 1 << 20
	maxDiscoveryBytes   = 64 << 10
	fallbackCacheAge    = 5 * time.Minute
	verifierHTTPTimeout = 10 * time.Second
	errPrefix           = "meshauth verify: "
)

// Errors a Verifier returns; wrap-compatible with errors.Is.
var (
	ErrInvalidToken = errors.New(errPrefix + "invalid token")
	// ErrKeysStale is returned while the key set is older than MaxStaleness
	// allows and Vault cannot be reached to refresh it.
	ErrKeysStale = errors.New(errPrefix + "key set is past MaxStaleness and could not be refreshed from Vault")
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
	// Audience must be in the token's aud: the name this service is known
	// by, so a token minted for another service is not accepted here.
	// Required unless AllowAnyAudience is set.
	Audience string
	// AllowAnyAudience accepts tokens whatever their aud; set it only for a
	// verifier that checks tokens on behalf of every audience.
	AllowAnyAudience bool
	// RequireBinding refuses tokens without cnf (not bound to a client
	// certificate). A bound token is always checked against the request's
	// client certificate, whatever this says.
	RequireBinding bool
	// Leeway is the clock skew allowed on exp, nbf and iat; default 30s.
	Leeway time.Duration
	// MinRefetchInterval is the least time between two fetches of the JWKS,
	// whatever triggers them (an expired max-age, an unknown kid, a failed
	// fetch) and whatever Cache-Control says, so neither a caller sending
	// random kids nor a max-age of 0 turns the verifier into a flood;
	// default 30s.
	MinRefetchInterval time.Duration
	// MaxStaleness is how long past its max-age (at most an hour) the last
	// good key set keeps verifying while Vault cannot be reached; after it,
	// verification fails closed with ErrKeysStale until a fetch succeeds.
	// So a key that left the JWKS verifies at most max-age + MaxStaleness
	// after Vault last served it. Default 1h; negative for no grace.
	MaxStaleness time.Duration
	// HTTPClient fetches discovery and JWKS; configure it to trust Vault's CA.
	HTTPClient *http.Client
	// Revocations tunes how Verify refuses what the engine's revocations
	// feed lists (revocations.go). The feed is checked by default, found
	// through discovery's revocation_endpoint (or next to the JWKS): nil
	// means the defaults. A Verifier does not start without its first copy.
	Revocations *RevocationConfig
	// SkipRevocations turns the revocations feed off: revoked tokens,
	// revoked and disabled services and removed keys are then accepted
	// offline until the tokens expire or their key leaves the JWKS. Set it
	// only where online verify, or short token lifetimes, cover revocation.
	SkipRevocations bool
	// Logger, when set, receives one line per refused request of the
	// Middleware and the gRPC interceptors (Rejected): the reason, which
	// the caller is not told. LogLevel is its level (default Info).
	Logger *slog.Logger
	// LogLevel is the level of those lines.
	LogLevel slog.Level
	// OnReject, when set, is called with the reason of every refused
	// request of the Middleware and the gRPC interceptors, for metrics or
	// the service's own log. It must not block.
	OnReject func(ctx context.Context, err error)
	// MaxCachedTokens bounds how many verified tokens the Verifier
	// remembers, so a caller that reuses its token for many requests costs
	// one signature check, not one per request; default
	// DefaultMaxCachedTokens (about 1.1 KiB each for a 450-byte token),
	// negative to remember none. A remembered token still has its time,
	// audience and binding checked on every request, is forgotten at its
	// exp, and stops answering as soon as a key set without its signing key
	// is published.
	MaxCachedTokens int
	// TrustedProxies says which peers may tell the Middleware (and the gRPC
	// interceptor) the client certificate in a header, as a sidecar that
	// terminates mutual TLS does; nil trusts no one, and the headers are
	// ignored.
	TrustedProxies *TrustedProxies
	// MaxDelegationDepth opts in to exchanged (delegated) tokens and bounds
	// their actor chain (Claims.Actors): a token with act is accepted only
	// with at most this many actors. 0 (the default) or a negative value
	// refuses every delegated token (ErrDelegation): the receiving service
	// decides whether others may act on a caller's behalf toward it.
	MaxDelegationDepth int
	// AllowedActors, when non-nil, lists the services that may act on a
	// caller's behalf: a delegated token naming any other actor anywhere in
	// its chain is refused (ErrDelegation). Tokens without act pass.
	AllowedActors []string
}

// keySet is one JWKS answer. It is immutable once published.
type keySet struct {
	keys map[string]Key
	// freshUntil is the start of the fetch that produced the set plus its
	// max-age: counting from the start, a set can never be fresher than the
	// answer Vault computed.
	freshUntil time.Time
	// usableUntil is freshUntil plus MaxStaleness: past it the set verifies
	// nothing.
	usableUntil time.Time
}

// Verifier checks meshauth tokens offline. Safe for concurrent use.
//
// Its caches: the key set (the JWKS), replaced whole by every successful
// fetch, so a key removed from the JWKS is gone with the next fetch; the
// jwks_uri and issuer that discovery gave at NewVerifier, which hold for the
// Verifier's life (a new issuer or mount needs a new Verifier); and the
// tokens it verified (see MaxCachedTokens), each of which answers only while
// the key set it was verified with, or a later one holding the same key
// under the same kid, is current, and only until its exp.
// The key set is trusted for its max-age and then, while fetches fail, for
// MaxStaleness more, never longer; fetches run one at a time, so an older
// answer can never replace a newer one.
type Verifier struct {
	cfg     VerifierConfig
	jwksURL string
	now     func() time.Time

	// set is the current key set; verifications load it without a lock.
	set atomic.Pointer[keySet]
	// verified remembers tokens Parse accepted; nil when disabled.
	verified *tokenCache

	// keysFetch runs the key-set fetches.
	keysFetch backgroundFetch

	// revocations is the revocations feed; nil when not enforced.
	revocations *revocationState
	// revocationsURL is discovery's revocation_endpoint, resolved; "" when
	// discovery named none.
	revocationsURL string
	// verifyHint tells a refused caller how to learn why (Middleware).
	verifyHint string
}

// NewVerifier resolves discovery (if configured) and fetches the keys once.
func NewVerifier(ctx context.Context, cfg VerifierConfig) (*Verifier, error) {
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: verifierHTTPTimeout}
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = DefaultLeeway
	}
	if cfg.MinRefetchInterval <= 0 {
		cfg.MinRefetchInterval = defaultMinRefetch
	}
	switch {
	case cfg.MaxStaleness == 0:
		cfg.MaxStaleness = defaultMaxStaleness
	case cfg.MaxStaleness < 0:
		cfg.MaxStaleness = 0
	}
	switch {
	case cfg.Audience == "" && !cfg.AllowAnyAudience:
		return nil, errors.New(errPrefix + "set Audience to the name callers use for this service (a token minted for another service must not be accepted here), or set AllowAnyAudience to accept any aud on purpose")
	case cfg.Audience != "" && cfg.AllowAnyAudience:
		return nil, errors.New(errPrefix + "Audience and AllowAnyAudience contradict each other: set one")
	}
	switch {
	case cfg.SkipRevocations && cfg.Revocations != nil:
		return nil, errors.New(errPrefix + "Revocations and SkipRevocations contradict each other: set one")
	case !cfg.SkipRevocations && cfg.Revocations == nil:
		cfg.Revocations = &RevocationConfig{}
	}
	if cfg.MaxCachedTokens == 0 {
		cfg.MaxCachedTokens = DefaultMaxCachedTokens
	}
	if err := cfg.TrustedProxies.check(); err != nil {
		return nil, err
	}
	v := &Verifier{cfg: cfg, jwksURL: cfg.JWKSURL, now: time.Now, verified: newTokenCache(cfg.MaxCachedTokens, cfg.Leeway)}
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
	v.verifyHint = verifyHint(v.jwksURL, v.cfg.Audience)
	first := v.now()
	v.keysFetch.attempted(first)
	if err := v.fetch(ctx, first); err != nil {
		return nil, err
	}
	if err := v.startRevocations(ctx); err != nil {
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
		Issuer             string `json:"issuer"`
		JWKSURI            string `json:"jwks_uri"`
		RevocationEndpoint string `json:"revocation_endpoint"`
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
	if doc.RevocationEndpoint != "" {
		// The same rule as jwks_uri: a tampered document must not point
		// the verifier at another host's idea of what is revoked.
		ref, err := url.Parse(doc.RevocationEndpoint)
		if err != nil {
			return fmt.Errorf(errPrefix+"revocation_endpoint %q: %w", doc.RevocationEndpoint, err)
		}
		r := base.ResolveReference(ref)
		if r.Scheme != base.Scheme || r.Host != base.Host {
			return fmt.Errorf(errPrefix+"revocation_endpoint %s is not on %s", r, base.Host)
		}
		v.revocationsURL = r.String()
	}
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
		var unknown x509.UnknownAuthorityError
		if errors.As(err, &unknown) {
			// The usual first stumble against a Vault with its own CA
			// (make dev's included): say what to do about it.
			return nil, 0, fmt.Errorf("%w (Vault's certificate is not signed by a CA this Verifier trusts: set VerifierConfig.HTTPClient to a client whose TLS RootCAs hold Vault's CA, the file VAULT_CACERT names)", err)
		}
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
				return min(time.Duration(n)*time.Second, MaxKeyCacheAge)
			}
		}
	}
	return fallbackCacheAge
}

// fetch downloads the JWKS and publishes it as the key set; on failure the
// current set stays. start is when the fetch began.
func (v *Verifier) fetch(ctx context.Context, start time.Time) error {
	body, age, err := v.get(ctx, v.jwksURL, maxJWKSBytes)
	if err != nil {
		return fmt.Errorf(errPrefix+"fetching keys: %w", err)
	}
	keys, err := parseJWKS(body)
	if err != nil {
		return err
	}
	fresh := start.Add(age)
	next := &keySet{keys: keys, freshUntil: fresh, usableUntil: fresh.Add(v.cfg.MaxStaleness)}
	v.set.Store(next)
	// Remembered tokens whose key left the set stop answering now: a key
	// removed from the JWKS (rotated out, or revoked) ends its tokens at
	// this fetch, remembered or not.
	v.verified.carry(next, v.now())
	return nil
}

// refetch returns the channel of the key-set fetch in progress, starting
// one when none is and MinRefetchInterval has passed; nil when none runs. A
// failed fetch keeps the keys we have, within MaxStaleness: an outage of the
// JWKS endpoint must not stop verification at once.
func (v *Verifier) refetch(ctx context.Context) <-chan struct{} {
	return v.keysFetch.start(ctx, v.now(), v.cfg.MinRefetchInterval, v.fetch)
}

// parseJWKS turns a JWK Set into keys bound to their algorithms. Keys
// without an alg meshauth uses are skipped.
func parseJWKS(body []byte) (map[string]Key, error) {
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf(errPrefix+"JWKS does not parse: %w", err)
	}
	out := map[string]Key{}
	for _, k := range set.Keys {
		key, err := ParseJWK(k)
		if err != nil || k["kid"] == "" {
			continue
		}
		out[k["kid"]] = key
	}
	return out, nil
}

// key finds the key for kid. A fresh set answers at once. A set past its
// max-age still answers (within MaxStaleness) while one background fetch
// refreshes it, so verifications never wait for Vault over a key they hold.
// An unknown kid (a rotation not seen yet) or an unusable set waits for a
// fetch, at most one per MinRefetchInterval; in between it is refused.
func (v *Verifier) key(ctx context.Context, kid string) (Key, *keySet, error) {
	s := v.set.Load()
	now := v.now()
	k, ok := s.keys[kid]
	if ok && now.Before(s.freshUntil) {
		return k, s, nil
	}
	usable := now.Before(s.usableUntil)
	done := v.refetch(ctx)
	if ok && usable {
		return k, s, nil
	}
	if done != nil {
		select {
		case <-done:
		case <-ctx.Done():
			return Key{}, nil, ctx.Err()
		}
		s = v.set.Load()
		k, ok = s.keys[kid]
		usable = v.now().Before(s.usableUntil)
	}
	switch {
	case !usable:
		if err := v.keysFetch.err(); err != nil {
			return Key{}, nil, fmt.Errorf("%w: %w", ErrKeysStale, err)
		}
		return Key{}, nil, ErrKeysStale
	case !ok:
		return Key{}, nil, ErrUnknownKey
	}
	return k, s, nil
}

// Verify checks a token with Parse, the parser the engine's online verify
// uses too (form and size; a header and payload that every JSON reader
// reads alike; a kid in the key set and its one algorithm; signature; iss,
// aud unless AllowAnyAudience, exp, nbf and iat within leeway; sub, jti, iat
// and nbf present). When the token carries cnf.x5t#S256, peer (the client
// certificate of the request's mutual TLS) must match it (RFC 8705): a bound
// token presented without a certificate is refused, as is any other cnf,
// and with RequireBinding a token without cnf.
//
// A token verified before (the same text) is answered from memory: the
// signature and claim decoding are skipped, everything that depends on the
// request (time, audience, binding to peer, the key set's freshness) is
// checked again. The returned Claims may be shared with other callers: read
// them, do not modify them.
func (v *Verifier) Verify(ctx context.Context, token string, peer *x509.Certificate) (*Claims, error) {
	thumb := ""
	if peer != nil {
		thumb = CertificateThumbprint(peer)
	}
	return v.VerifyThumbprint(ctx, token, thumb)
}

// VerifyThumbprint is Verify for a peer known by its certificate's RFC 8705
// thumbprint (x5t#S256) rather than the certificate itself, as a sidecar may
// forward it; "" means no certificate was presented.
func (v *Verifier) VerifyThumbprint(ctx context.Context, token, thumbprint string) (*Claims, error) {
	claims, err := v.parse(ctx, token)
	if err != nil {
		return nil, err
	}
	if err := (Binding{Thumbprint: thumbprint, Required: v.cfg.RequireBinding}).Check(claims); err != nil {
		return nil, err
	}
	if err := v.checkDelegation(claims); err != nil {
		return nil, err
	}
	if err := v.checkRevoked(ctx, claims); err != nil {
		return nil, err
	}
	return claims, nil
}

// parse returns the claims of a token Parse accepts, from memory when this
// text was verified before with a key the current key set still holds.
func (v *Verifier) parse(ctx context.Context, token string) (*Claims, error) {
	now := v.now()
	if c, ok := v.remembered(ctx, token, now); ok {
		return c, nil
	}
	opts := Options{Issuer: v.cfg.Issuer, Audience: v.audience(), Leeway: v.cfg.Leeway, Now: now}
	var (
		used    Key
		usedSet *keySet
	)
	claims, err := Parse(token, func(kid string) (Key, error) {
		k, s, err := v.key(ctx, kid)
		used, usedSet = k, s
		return k, err
	}, opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	v.verified.put(token, claims, used, usedSet, &v.set)
	c := *claims
	return &c, nil
}

// audience is the aud a token must name; "" when any is accepted.
func (v *Verifier) audience() string {
	if v.cfg.AllowAnyAudience {
		return ""
	}
	return v.cfg.Audience
}

// remembered answers a token verified before, when every check that could
// come out differently now still passes: its key is in the current key set
// (within that set's freshness, the same rules as a fresh verification),
// and exp, nbf and iat hold at now within leeway, and aud still names the
// audience. Anything else goes the long way, which also gives the precise
// error.
func (v *Verifier) remembered(ctx context.Context, token string, now time.Time) (*Claims, bool) {
	e := v.verified.get(token)
	if e == nil {
		return nil, false
	}
	c := e.claims
	// The same checks Parse ran, at now: memory answers only what a fresh
	// Parse of the same text would answer at this instant.
	if reason, _ := c.window(now, v.cfg.Leeway); reason != "" {
		if reason == ReasonExpired {
			v.verified.drop(token, e)
		}
		return nil, false
	}
	if reason, _ := c.identity(v.cfg.Issuer, v.audience()); reason != "" {
		return nil, false
	}
	if _, s, err := v.key(ctx, c.KeyID); err != nil || s != e.set.Load() {
		return nil, false
	}
	out := *c
	return &out, true
}
