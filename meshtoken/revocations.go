package meshtoken

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// RevocationsType is the typ header of the engine's revocations feed.
const RevocationsType = "meshauth-revocations+jwt"

// Defaults of RevocationConfig.
const (
	// DefaultRevocationMaxStaleness is the engine's default
	// revocation_max_staleness.
	DefaultRevocationMaxStaleness = 5 * time.Minute
	// maxRevocationsBytes bounds a feed: the engine keeps at most 20000
	// revoked tokens, about 1.1 MiB encoded, plus services and keys.
	maxRevocationsBytes = 4 << 20
)

// Errors of the revocations check; wrap-compatible with errors.Is.
var (
	// ErrRevoked is returned for a token the revocations feed names: by jti,
	// by its service's revocation epoch, a disabled service, or its key.
	ErrRevoked = errors.New(errPrefix + "token is revoked")
	// ErrRevocationsStale is returned while the last copy of the feed Vault
	// confirmed is older than RevocationConfig.MaxStaleness (and
	// AllowStale is not set): revoked tokens might pass, so nothing does.
	ErrRevocationsStale = errors.New(errPrefix + "revocations feed is older than its maximum staleness and could not be refreshed from Vault")
)

// RevocationConfig makes a Verifier refuse what the engine's revocations
// feed lists. The feed is checked by default; set this in
// VerifierConfig.Revocations to tune it.
type RevocationConfig struct {
	// URL is the engine's revocations path. Default: discovery's
	// revocation_endpoint, else the jwks URL with its last element replaced
	// by "revocations".
	URL string
	// MaxStaleness is the oldest a copy of the feed may be, counted from
	// when Vault last served or confirmed it (200 or 304). Past it every
	// Verify fails closed with ErrRevocationsStale until a fetch succeeds.
	// Set it to the engine's revocation_max_staleness. Default 5m.
	MaxStaleness time.Duration
	// AllowStale keeps verifying with the last copy past MaxStaleness, for
	// services that prefer availability to prompt revocation.
	AllowStale bool
	// OnAge, when set, is called after every fetch of the feed with the age
	// of the copy in use and the fetch's error (nil on success): export it
	// as a metric. It must not block.
	OnAge func(age time.Duration, err error)
}

// revocationList is one verified feed. It is immutable once published.
type revocationList struct {
	tokens   map[string]int64
	services map[string]struct {
		Gen string `json:"gen"`
		Exp int64  `json:"exp"`
	}
	disabled map[string]int64
	keys     map[string]int64
	// certificates maps x5t#S256 of revoked client certificates to when
	// their last token expires: a token bound to one is refused.
	certificates map[string]int64
	etag         string
	// confirmed is when Vault last served or confirmed this list (the start
	// of that fetch).
	confirmed time.Time
	// freshUntil is confirmed plus the response's max-age.
	freshUntil time.Time
}

// revocationState is a Verifier's copy of the feed and its fetch state.
type revocationState struct {
	cfg  RevocationConfig
	list atomic.Pointer[revocationList]

	// fetch runs the feed's fetches.
	fetch backgroundFetch
}

// startRevocations sets up the feed for v, when configured, and fetches it
// once: a Verifier asked to enforce revocations does not start without it.
func (v *Verifier) startRevocations(ctx context.Context) error {
	if v.cfg.Revocations == nil {
		return nil
	}
	rc := *v.cfg.Revocations
	if rc.MaxStaleness <= 0 {
		rc.MaxStaleness = DefaultRevocationMaxStaleness
	}
	if rc.URL == "" {
		rc.URL = v.revocationsURL
	}
	if rc.URL == "" {
		u, err := url.Parse(v.jwksURL)
		if err != nil {
			return err
		}
		u.Path = u.Path[:strings.LastIndexByte(u.Path, '/')+1] + "revocations"
		rc.URL = u.String()
	}
	v.revocations = &revocationState{cfg: rc}
	start := v.now()
	v.revocations.fetch.attempted(start)
	return v.fetchRevocations(ctx, start)
}

// RevocationsAge is how long ago Vault last served or confirmed the feed
// this Verifier uses; 0 when it enforces no feed or holds no copy yet.
func (v *Verifier) RevocationsAge() time.Duration {
	if v.revocations == nil {
		return 0
	}
	list := v.revocations.list.Load()
	if list == nil {
		return 0
	}
	return v.now().Sub(list.confirmed)
}

// fetchRevocations downloads the feed (or has it confirmed by ETag),
// verifies its signature with the key set, and publishes it.
func (v *Verifier) fetchRevocations(ctx context.Context, start time.Time) (err error) {
	rs := v.revocations
	defer func() {
		if rs.cfg.OnAge != nil {
			rs.cfg.OnAge(v.RevocationsAge(), err)
		}
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rs.cfg.URL, nil)
	if err != nil {
		return err
	}
	old := rs.list.Load()
	if old != nil && old.etag != "" {
		req.Header.Set("If-None-Match", old.etag)
	}
	resp, err := v.cfg.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf(errPrefix+"fetching revocations: %w", err)
	}
	defer resp.Body.Close()
	age := maxAge(resp.Header.Get("Cache-Control"))
	if resp.StatusCode == http.StatusNotModified && old != nil {
		renewed := *old
		renewed.confirmed, renewed.freshUntil = start, start.Add(age)
		rs.list.Store(&renewed)
		return nil
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf(errPrefix+"fetching revocations: GET %s: %s", rs.cfg.URL, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxRevocationsBytes+1))
	if err != nil {
		return fmt.Errorf(errPrefix+"fetching revocations: %w", err)
	}
	if len(body) > maxRevocationsBytes {
		return fmt.Errorf(errPrefix+"revocations feed is larger than %d bytes", maxRevocationsBytes)
	}
	list, err := v.parseRevocations(ctx, strings.TrimSpace(string(body)))
	if err != nil {
		return err
	}
	list.etag = resp.Header.Get("ETag")
	list.confirmed, list.freshUntil = start, start.Add(age)
	rs.list.Store(list)
	return nil
}

// parseRevocations checks the feed's signature with the key its kid names
// in the key set (one algorithm per kid, as for tokens) and its issuer.
func (v *Verifier) parseRevocations(ctx context.Context, raw string) (*revocationList, error) {
	var doc struct {
		Issuer   string           `json:"iss"`
		Tokens   map[string]int64 `json:"tokens"`
		Services map[string]struct {
			Gen string `json:"gen"`
			Exp int64  `json:"exp"`
		} `json:"services"`
		Disabled map[string]int64 `json:"disabled"`
		Keys     map[string]int64 `json:"keys"`
		// Certificates lists revoked client certificates by x5t#S256.
		Certificates map[string]int64 `json:"certificates"`
	}
	_, err := jwt.NewParser(jwt.WithValidMethods(Algorithms), jwt.WithoutClaimsValidation()).Parse(raw, func(t *jwt.Token) (any, error) {
		if t.Header["typ"] != RevocationsType {
			return nil, errors.New("not a revocations feed (typ)")
		}
		kid, _ := t.Header["kid"].(string)
		k, _, err := v.key(ctx, kid)
		if err != nil {
			return nil, err
		}
		if t.Method.Alg() != k.Algorithm {
			return nil, errAlgMismatch
		}
		return k.Public, nil
	})
	if err != nil {
		return nil, fmt.Errorf(errPrefix+"revocations feed refused: %w", err)
	}
	payload, _ := base64.RawURLEncoding.DecodeString(raw[strings.IndexByte(raw, '.')+1 : strings.LastIndexByte(raw, '.')])
	if err := json.Unmarshal(payload, &doc); err != nil {
		return nil, fmt.Errorf(errPrefix+"revocations feed does not parse: %w", err)
	}
	if doc.Issuer != v.cfg.Issuer {
		return nil, fmt.Errorf(errPrefix+"revocations feed is of issuer %q, not %q", doc.Issuer, v.cfg.Issuer)
	}
	return &revocationList{tokens: doc.Tokens, services: doc.Services, disabled: doc.Disabled, keys: doc.Keys, certificates: doc.Certificates}, nil
}

// refetchRevocations starts one background fetch of the feed when none runs
// and MinRefetchInterval has passed, and returns its channel (nil if none).
func (v *Verifier) refetchRevocations(ctx context.Context) <-chan struct{} {
	return v.revocations.fetch.start(ctx, v.now(), v.cfg.MinRefetchInterval, v.fetchRevocations)
}

// checkRevoked refuses claims the feed names. A copy past its max-age is
// still used (within MaxStaleness) while a background fetch refreshes it;
// past MaxStaleness the check waits for a fetch and then fails closed
// unless AllowStale.
func (v *Verifier) checkRevoked(ctx context.Context, c *Claims) error {
	rs := v.revocations
	if rs == nil {
		return nil
	}
	list := rs.list.Load()
	now := v.now()
	// MaxStaleness may be shorter than the feed's max-age: it wins.
	if !now.Before(list.freshUntil) || now.Sub(list.confirmed) > rs.cfg.MaxStaleness {
		done := v.refetchRevocations(ctx)
		if now.Sub(list.confirmed) > rs.cfg.MaxStaleness && done != nil {
			select {
			case <-done:
			case <-ctx.Done():
				return ctx.Err()
			}
			list = rs.list.Load()
		}
		if v.now().Sub(list.confirmed) > rs.cfg.MaxStaleness && !rs.cfg.AllowStale {
			if err := rs.fetch.err(); err != nil {
				return fmt.Errorf("%w: %w", ErrRevocationsStale, err)
			}
			return ErrRevocationsStale
		}
	}
	// Entries whose tokens have all expired are harmless to check: such a
	// token fails exp anyway.
	if _, ok := list.keys[c.KeyID]; ok {
		return fmt.Errorf("%w: its signing key %s was removed", ErrRevoked, c.KeyID)
	}
	if _, ok := list.tokens[c.ID]; ok {
		return fmt.Errorf("%w: jti %s", ErrRevoked, c.ID)
	}
	// An exchanged token ends with any token it was derived from.
	for _, jti := range c.derivedFrom {
		if _, ok := list.tokens[jti]; ok {
			return fmt.Errorf("%w: it was exchanged from jti %s, which is revoked", ErrRevoked, jti)
		}
	}
	if c.Bound() {
		if _, ok := list.certificates[c.Confirmation.X5tS256]; ok {
			return fmt.Errorf("%w: its client certificate %s was revoked", ErrRevoked, c.Confirmation.X5tS256)
		}
	}
	service := c.Subject
	if c.Service != "" {
		service = c.Service
	}
	if _, ok := list.disabled[service]; ok {
		return fmt.Errorf("%w: service %s is disabled", ErrRevoked, service)
	}
	if s, ok := list.services[service]; ok && s.Gen != c.Generation {
		return fmt.Errorf("%w: every token of service %s issued before its last revoke", ErrRevoked, service)
	}
	// Each actor of an exchanged token, by the same rules.
	for i, actor := range c.actors {
		if _, ok := list.disabled[actor]; ok {
			return fmt.Errorf("%w: acting service %s is disabled", ErrRevoked, actor)
		}
		if s, ok := list.services[actor]; ok && s.Gen != c.actorGens[i] {
			return fmt.Errorf("%w: acting service %s was revoked after the exchange", ErrRevoked, actor)
		}
	}
	return nil
}
