package meshtoken

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// Defaults of RevocationConfig.
const (
	// DefaultRevocationMaxStaleness is the engine's default
	// revocation_max_staleness.
	DefaultRevocationMaxStaleness = 5 * time.Minute
)

// ReasonRevoked is the reason of ErrRevoked.
const ReasonRevoked = "revoked"

// Errors of the revocations check; wrap-compatible with errors.Is.
var (
	// ErrRevoked is returned for a token the revocations feed names: by jti,
	// by its service's revocation epoch, a disabled service, or its key.
	// It is an *Error of reason ReasonRevoked and wraps ErrInvalidToken.
	ErrRevoked = refuse(ReasonRevoked, fmt.Errorf("%w: token is revoked", ErrInvalidToken))
	// ErrRevocationsStale is returned while the last copy of the feed Vault
	// confirmed is older than RevocationConfig.MaxStaleness (and
	// AllowStale is not set): revoked tokens might pass, so nothing does.
	ErrRevocationsStale = errors.New(errPrefix + "revocations feed is older than its maximum staleness and could not be refreshed from Vault")
	// ErrFeedRollback is a fetch's error when Vault (a lagging node, a
	// cache, anyone on the path) served a feed older than one this
	// Verifier already accepted: the newer copy stays, so a revoked token
	// cannot verify again.
	ErrFeedRollback = errors.New(errPrefix + "revocations feed is older than one already accepted")
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
	// its iat (the time it describes; the engine renders a new one every
	// tenth of its revocation_max_staleness and serves it with a max-age of
	// half of it, so a copy is refetched well before this). Past it every
	// Verify fails closed with ErrRevocationsStale until a fetch brings a
	// newer one. Set it to the engine's revocation_max_staleness. Default
	// 5m. This Verifier's clock running ahead of Vault's counts against it.
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
	feed *Feed
	etag string
	// issued is the feed's iat: staleness counts from it.
	issued time.Time
	// freshUntil is the start of the fetch that last served or confirmed
	// it plus the response's max-age: when to fetch again.
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
	return v.now().Sub(list.issued)
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
		// The same bytes, so the same iat: a 304 says when to ask again,
		// not that the copy is any younger.
		renewed := *old
		renewed.freshUntil = start.Add(age)
		rs.list.Store(&renewed)
		return nil
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf(errPrefix+"fetching revocations: GET %s: %s", rs.cfg.URL, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxFeedLength+1))
	if err != nil {
		return fmt.Errorf(errPrefix+"fetching revocations: %w", err)
	}
	feed, err := ParseFeed(strings.TrimSpace(string(body)), func(kid string) (Key, error) {
		k, _, err := v.key(ctx, kid)
		return k, err
	}, v.cfg.Issuer)
	if err != nil {
		return fmt.Errorf(errPrefix+"revocations feed refused: %w", err)
	}
	if old != nil && feed.IssuedAt < old.feed.IssuedAt {
		return fmt.Errorf("%w (iat %d, accepted %d)", ErrFeedRollback, feed.IssuedAt, old.feed.IssuedAt)
	}
	if old != nil && feed.IssuedAt == old.feed.IssuedAt && !feed.Covers(old.feed) {
		// Within one step every render has the same iat, and entries only
		// leave at a step boundary: a feed of the same iat that lacks an
		// entry of the accepted one is an earlier render of the step (from
		// a cache, a lagging node, or anyone on the path), and taking it
		// would let a revoked token verify again. A service enabled again
		// within the step stays refused until the next step's feed.
		return fmt.Errorf("%w (iat %d, an earlier render of the same step)", ErrFeedRollback, feed.IssuedAt)
	}
	// Fetches run one at a time (backgroundFetch), so old is still the
	// current copy here: nothing older can replace a newer one.
	rs.list.Store(&revocationList{feed: feed, etag: resp.Header.Get("ETag"), issued: feed.Time(), freshUntil: start.Add(age)})
	return nil
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
	stale := func(now time.Time, l *revocationList) bool {
		return now.Sub(l.issued) > rs.cfg.MaxStaleness
	}
	// MaxStaleness may be shorter than the feed's max-age: it wins.
	if !now.Before(list.freshUntil) || stale(now, list) {
		done := v.refetchRevocations(ctx)
		if stale(now, list) && done != nil {
			select {
			case <-done:
			case <-ctx.Done():
				return ctx.Err()
			}
			list = rs.list.Load()
		}
		if stale(v.now(), list) && !rs.cfg.AllowStale {
			if err := rs.fetch.err(); err != nil {
				return fmt.Errorf("%w: %w", ErrRevocationsStale, err)
			}
			return ErrRevocationsStale
		}
	}
	// Entries whose tokens have all expired are harmless to check: such a
	// token fails exp anyway.
	f := list.feed
	if _, ok := f.Keys[c.KeyID]; ok {
		return fmt.Errorf("%w: its signing key %s was removed", ErrRevoked, c.KeyID)
	}
	if _, ok := f.Tokens[c.ID]; ok {
		return fmt.Errorf("%w: jti %s", ErrRevoked, c.ID)
	}
	// An exchanged token ends with any token it was derived from.
	for _, jti := range c.derivedFrom {
		if _, ok := f.Tokens[jti]; ok {
			return fmt.Errorf("%w: it was exchanged from jti %s, which is revoked", ErrRevoked, jti)
		}
	}
	if c.Bound() {
		if _, ok := f.Certificates[c.Confirmation.X5tS256]; ok {
			return fmt.Errorf("%w: its client certificate %s was revoked", ErrRevoked, c.Confirmation.X5tS256)
		}
	}
	// And with the certificate of any token it was exchanged from: revoking
	// the caller's certificate ends what others obtained on its behalf.
	for _, x5t := range c.derivedCnf {
		if _, ok := f.Certificates[x5t]; ok && x5t != "" {
			return fmt.Errorf("%w: it was exchanged from a token bound to client certificate %s, which was revoked", ErrRevoked, x5t)
		}
	}
	service := c.ServiceName()
	if _, ok := f.Disabled[service]; ok {
		return fmt.Errorf("%w: service %s is disabled", ErrRevoked, service)
	}
	if s, ok := f.Services[service]; ok && s.Gen != c.Generation {
		return fmt.Errorf("%w: every token of service %s issued before its last revoke", ErrRevoked, service)
	}
	// Each actor of an exchanged token, by the same rules.
	for i, actor := range c.actors {
		if _, ok := f.Disabled[actor]; ok {
			return fmt.Errorf("%w: acting service %s is disabled", ErrRevoked, actor)
		}
		if s, ok := f.Services[actor]; ok && s.Gen != c.actorGens[i] {
			return fmt.Errorf("%w: acting service %s was revoked after the exchange", ErrRevoked, actor)
		}
	}
	return nil
}
