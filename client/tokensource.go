// Package client is the calling side of meshauth: a TokenSource that logs a
// service in through Vault (keeping its own Vault login alive) and keeps its
// JWT fresh, and a net/http Transport that sends it. Verifying peers' tokens
// is meshtoken's (Verifier, Middleware); gRPC is grpcauth's. It depends only
// on the standard library, vault/api and meshtoken.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// APIKeyHeader carries the API key of a one-round-trip login. The mount must
// list it in passthrough_request_headers.
const APIKeyHeader = meshtoken.APIKeyHeader

// Bounds of a TokenSource.
const (
	// defaultLoginTimeout bounds one login, so a Vault that never answers
	// cannot hold every caller of Token behind it.
	defaultLoginTimeout = 30 * time.Second
	// maxTokenLife bounds the lifetime read from an answer, so a nonsensical
	// one cannot overflow the refresh arithmetic.
	maxTokenLife = 7 * 24 * time.Hour
	// maxLockoutWait bounds how long a lockout answer stops logins: a lock
	// that names a time further away (a wrong clock on either side) is
	// probed again after this long.
	maxLockoutWait = 24 * time.Hour
)

// ErrLoginLocked is wrapped by the error of a login the engine refused
// because this caller is locked out; the TokenSource does not try again
// before the time the engine named.
var ErrLoginLocked = errors.New("meshauth login: locked out after too many failed attempts")

// TokenSourceConfig says how a service logs in.
type TokenSourceConfig struct {
	// Vault is a client for the Vault that serves meshauth. Configure its TLS
	// with the service's client certificate: logins of services that require
	// mTLS present it, and the token is bound to it.
	Vault *api.Client
	// Auth logs the source into Vault (AppRole, Kubernetes, TLS certificate
	// from vault/api/auth/..., or StaticToken for development). The source
	// then owns its Vault token: it logs in on first use, keeps the token
	// alive with Vault's LifetimeWatcher, and logs in again when renewal
	// ends (max TTL reached, token revoked). Without Auth, every login uses
	// whatever token Vault carries at that moment, so a token the caller
	// renews or replaces is picked up.
	Auth api.AuthMethod
	// Logger receives one line per failed login (with its kind), per
	// recovery, and per Vault login and renewal end; nil logs nothing.
	// Tokens, API keys and Vault tokens are never logged.
	Logger *slog.Logger
	// OnError, when set, is called with the error of every failed login
	// (meshauth or Vault), outside any lock.
	OnError func(error)
	// Mount is the engine's mount path; default "meshauth".
	Mount string
	// Service is the service's name.
	Service string
	// APIKey is the service's API key.
	APIKey string
	// Audience is the requested aud; empty uses the service's default.
	Audience []string
	// TTL is the requested lifetime; 0 uses the service's default.
	TTL time.Duration
	// PreferGET tries the one-round-trip GET login (the key in APIKeyHeader)
	// before the POST. It needs config allow_get_login=true, the mount tune
	// line that passes APIKeyHeader through, and read capability on
	// login/<service>. When the GET is refused for any of these (405 from
	// the engine, or 403 from Vault's ACL: a policy that grants update
	// only), the source logs in with POST for the rest of its life. Without
	// it the source always logs in with POST, which needs update alone.
	PreferGET bool
	// MinBackoff and MaxBackoff bound the wait after a failed login, doubling
	// from one to the other with each failure in a row; defaults 500ms and
	// 30s. No login (on demand or in the background) starts before it ends.
	MinBackoff, MaxBackoff time.Duration
	// LoginTimeout bounds one login; default 30s.
	LoginTimeout time.Duration
}

// Token is a JWT and when it expires.
type Token struct {
	// Value is the compact JWT.
	Value string
	// ExpiresAt is when the token expires by the local clock: the login's
	// start plus the lifetime Vault answered (expires_in), so a skewed local
	// clock does not shorten or stretch it.
	ExpiresAt time.Time
	// refreshAt is when a refresh should start: about two thirds of the way
	// through the lifetime, with jitter so a fleet does not refresh at once.
	refreshAt time.Time
}

// TokenSource logs a service in and keeps a fresh token. It is safe for
// concurrent use: however many goroutines ask, one login runs at a time, and
// it runs on its own, so a caller that gives up does not fail the others.
//
// What it keeps, and what ends each:
//   - the current token: replaced by every successful login, never served
//     past its expiry (login start + expires_in, by the local clock). It is
//     not invalidated by a revocation in Vault (nothing tells the source);
//     verifiers refuse it, and the next refresh replaces it.
//   - the failure state (last error, when the next login may start): cleared
//     by the next successful login; it never holds a login back longer than
//     MaxBackoff, or the lockout the engine named (at most 24h).
//   - the switch to POST after a refused GET (PreferGET): kept for the
//     source's life. It can only cost a round trip inside Vault, never
//     accept or refuse anything.
type TokenSource struct {
	cfg TokenSourceConfig
	// getVault sends the GET login (a clone carrying APIKeyHeader, so the key
	// never rides on the caller's other requests); nil unless PreferGET.
	getVault *api.Client
	// postOnly is set once a GET login is refused by the mount or by Vault's
	// ACL (getRefused): from then on the source
	// logs in with POST only. It is never reset (re-probing would cost every
	// refresh a failed round trip on mounts that keep GET off); a service
	// picks the GET up again when it creates a new TokenSource.
	postOnly atomic.Bool

	mu      sync.Mutex
	current *Token
	// inflight is closed when the login in progress ends; nil when none.
	inflight chan struct{}
	lastErr  error
	// failures counts failed logins in a row; retryAt is when the next
	// login may start after them (backoff, or the end of a lockout).
	failures int
	retryAt  time.Time

	started atomic.Bool
	stop    chan struct{}
	stopped sync.Once
	now     func() time.Time

	// vault logs in to meshauth with POST: cfg.Vault, or with Auth a clone
	// carrying the source's own Vault token.
	vault *api.Client
	// session is the source's own Vault login (with Auth).
	session vaultSession
	// stats are the counters Stats reports.
	stats counters
	// exchanged caches Exchange's tokens (exchange.go).
	exchanged exchangeCache
}

// NewTokenSource checks the configuration and returns a source; call Start
// to refresh in the background, or just call Token.
func NewTokenSource(cfg TokenSourceConfig) (*TokenSource, error) {
	if cfg.Vault == nil || cfg.Service == "" || cfg.APIKey == "" {
		return nil, errors.New("meshauth client: Vault, Service and APIKey are required")
	}
	if cfg.Mount == "" {
		cfg.Mount = "meshauth"
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	cfg.MaxBackoff = max(cfg.MaxBackoff, cfg.MinBackoff)
	if cfg.LoginTimeout <= 0 {
		cfg.LoginTimeout = defaultLoginTimeout
	}
	ts := &TokenSource{cfg: cfg, stop: make(chan struct{}), now: time.Now, vault: cfg.Vault}
	if cfg.Auth != nil {
		c, err := cfg.Vault.Clone()
		if err != nil {
			return nil, err
		}
		ts.vault = c
	}
	if cfg.PreferGET {
		c, err := cfg.Vault.Clone()
		if err != nil {
			return nil, err
		}
		c.SetToken(cfg.Vault.Token())
		c.AddHeader(APIKeyHeader, cfg.APIKey)
		ts.getVault = c
	}
	return ts, nil
}

// Token returns a valid token. It logs in only when there is none (or it
// expired); a token past its refresh point is still returned while the
// background refresh works on a new one. After a failed login it answers the
// failure at once, without asking Vault, until the backoff (or the lockout
// the engine named) has passed.
func (ts *TokenSource) Token(ctx context.Context) (string, error) {
	ts.mu.Lock()
	if t := ts.validLocked(); t != nil {
		ts.mu.Unlock()
		return t.Value, nil
	}
	wait, err := ts.startLoginLocked(ctx)
	ts.mu.Unlock()
	if err != nil {
		return "", err
	}
	select {
	case <-wait:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if t := ts.validLocked(); t != nil {
		return t.Value, nil
	}
	if ts.lastErr != nil {
		return "", ts.lastErr
	}
	return "", errors.New("meshauth client: login produced no token")
}

// validLocked returns the current token if it has not expired.
func (ts *TokenSource) validLocked() *Token {
	if t := ts.current; t != nil && ts.now().Before(t.ExpiresAt) {
		return t
	}
	return nil
}

// startLoginLocked returns the channel of the login in progress, starting
// one if none is and the backoff allows; otherwise it returns why not.
func (ts *TokenSource) startLoginLocked(ctx context.Context) (<-chan struct{}, error) {
	if ts.inflight != nil {
		return ts.inflight, nil
	}
	if now := ts.now(); now.Before(ts.retryAt) {
		return nil, fmt.Errorf("%w (next attempt after %s)", ts.lastErr, ts.retryAt.UTC().Format(time.RFC3339))
	}
	done := make(chan struct{})
	ts.inflight = done
	// The login outlives the caller that started it (other callers may be
	// waiting for it), bounded by LoginTimeout instead of the caller's ctx.
	go ts.runLogin(context.WithoutCancel(ctx), done)
	return done, nil
}

// runLogin runs one login and records its outcome; it always releases
// inflight, so no failure (not even a panic) leaves later calls waiting.
func (ts *TokenSource) runLogin(ctx context.Context, done chan struct{}) {
	ctx, cancel := context.WithTimeout(ctx, ts.cfg.LoginTimeout)
	defer cancel()
	start := ts.now()
	t, err := ts.safeLogin(ctx, start)
	defer ts.report(err)
	ts.mu.Lock()
	defer ts.mu.Unlock()
	defer close(done)
	ts.inflight = nil
	ts.recordLocked(t, err, true)
}

// recordLocked records the outcome of a login: a token (kept as the
// current one when keep is set) resets the failure state; an error sets
// the time before which no login starts.
func (ts *TokenSource) recordLocked(t *Token, err error, keep bool) {
	if err == nil {
		if ts.failures > 0 {
			ts.log().Info("meshauth client: login recovered", "service", ts.cfg.Service, "failed_before", ts.failures)
		}
		ts.stats.loggedIn(ts.current, ts.now(), keep)
		if keep {
			ts.current = t
		}
		ts.lastErr, ts.failures, ts.retryAt = nil, 0, time.Time{}
		return
	}
	ts.stats.failed(err)
	ts.lastErr = err
	ts.failures++
	now := ts.now()
	ts.retryAt = now.Add(ts.backoff(ts.failures))
	var locked *lockedError
	if errors.As(err, &locked) {
		until := min(locked.until.Sub(now), maxLockoutWait)
		if until > 0 && now.Add(until).After(ts.retryAt) {
			ts.retryAt = now.Add(until)
		}
	}
}

// backoff is the wait after n failed logins in a row: MinBackoff doubled
// n-1 times, at most MaxBackoff, less up to a fifth at random so a fleet
// refused at once does not come back at once.
func (ts *TokenSource) backoff(n int) time.Duration {
	d := ts.cfg.MinBackoff
	for i := 1; i < n && d < ts.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, ts.cfg.MaxBackoff)
	return d - jitter(d/5)
}

// jitter is a random duration in [0, d); 0 when d is not positive.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(d))) //nolint:gosec // jitter, not a secret
}

// safeLogin is login with any panic turned into an error: whatever Vault
// (or something posing as it) answers, a service must not crash over it.
func (ts *TokenSource) safeLogin(ctx context.Context, start time.Time) (t *Token, err error) {
	defer func() {
		if r := recover(); r != nil {
			t, err = nil, fmt.Errorf("meshauth login as %q: unusable answer: %v", ts.cfg.Service, r)
		}
	}()
	return ts.login(ctx, start)
}

// lockedError is a login refused by a lockout that ends at until.
type lockedError struct {
	until time.Time
	err   error
}

func (e *lockedError) Error() string { return e.err.Error() }
func (e *lockedError) Unwrap() []error {
	return []error{ErrLoginLocked, e.err}
}

// lockedUntil reads the end of a lockout from the engine's 403 answer
// (meshtoken.LockoutMessage).
func lockedUntil(err error) (time.Time, bool) {
	var re *api.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusForbidden {
		return time.Time{}, false
	}
	for _, msg := range re.Errors {
		if until, ok := meshtoken.LockedUntil(msg); ok {
			return until, true
		}
	}
	return time.Time{}, false
}

// login exchanges the API key for a token.
func (ts *TokenSource) login(ctx context.Context, start time.Time) (*Token, error) {
	sec, err := ts.send(ctx)
	if err != nil {
		err = fmt.Errorf("meshauth login as %q: %w", ts.cfg.Service, err)
		if until, ok := lockedUntil(err); ok {
			return nil, &lockedError{until: until, err: err}
		}
		return nil, err
	}
	if sec == nil || sec.Data == nil {
		return nil, fmt.Errorf("meshauth login as %q: empty answer", ts.cfg.Service)
	}
	value, _ := sec.Data["token"].(string)
	life, ok := lifetime(sec.Data, start)
	if value == "" || !ok {
		return nil, fmt.Errorf("meshauth login as %q: answer lacks token or expires_in/expires_at", ts.cfg.Service)
	}
	if life <= 0 {
		return nil, fmt.Errorf("meshauth login as %q: Vault answered a token that has already expired (lifetime %s); check the service's ttl and the clocks", ts.cfg.Service, life)
	}
	life = min(life, maxTokenLife)
	// Refresh at 2/3 of the lifetime, minus up to 10% of it at random, and
	// not sooner than MinBackoff from now, so a very short lifetime cannot
	// spin the refresher.
	refreshAt := start.Add(life - life/3 - jitter(life/10))
	refreshAt = later(refreshAt, ts.now().Add(ts.cfg.MinBackoff))
	return &Token{Value: value, ExpiresAt: start.Add(life), refreshAt: refreshAt}, nil
}

// send makes the login request: the POST, or with PreferGET the GET with
// the key in a header, falling back to POST (for good) when the GET is
// refused for the way it was sent (getRefused).
func (ts *TokenSource) send(ctx context.Context) (*api.Secret, error) {
	if err := ts.ensureVaultToken(ctx); err != nil {
		return nil, err
	}
	path := ts.cfg.Mount + "/login/" + ts.cfg.Service
	params := map[string][]string{}
	if len(ts.cfg.Audience) > 0 {
		params["audience"] = ts.cfg.Audience
	}
	if ts.cfg.TTL > 0 {
		params["ttl"] = []string{fmt.Sprintf("%ds", int64(ts.cfg.TTL/time.Second))}
	}
	if ts.getVault != nil && !ts.postOnly.Load() {
		// The token of the moment: the source's own, or the caller's as it
		// is now (renewed or replaced since construction).
		ts.getVault.SetToken(ts.vault.Token())
		sec, err := ts.getVault.Logical().ReadWithDataWithContext(ctx, path, params)
		if !getRefused(err) {
			ts.checkVaultToken(err)
			return sec, err
		}
		ts.postOnly.Store(true)
		if ts.cfg.Logger != nil {
			ts.cfg.Logger.Info("meshauth: the GET login was refused by the mount or Vault's ACL; logging in with POST from now on", "service", ts.cfg.Service, "status", statusOf(err))
		}
	}
	data := map[string]any{"api_key": ts.cfg.APIKey}
	for k, v := range params {
		data[k] = v
	}
	sec, err := ts.vault.Logical().WriteWithContext(ctx, path, data)
	ts.checkVaultToken(err)
	return sec, err
}

// LoginRefusedPrefix starts the engine's text of a refused login (a 403
// that is not a lockout), so it can be told from Vault's own "permission
// denied", which comes from an ACL policy. Vault wraps the text in its own
// ("1 error occurred:\n\t* meshauth: login refused ..."): look for it
// inside the message.
const LoginRefusedPrefix = meshtoken.LoginRefusedPrefix

// getRefused reports whether a GET login was refused for the way it was
// sent rather than for the service's credentials: 405 (the engine's GET
// login is off), 400 (the key header did not reach the engine) or a 403 that is not the engine's (Vault's ACL granted
// update on login/<service> but not read). The engine's own refusals (a
// refused login, a lockout) are not: a POST would be refused the same way
// and count twice toward lockout.
func getRefused(err error) bool {
	var re *api.ResponseError
	if !errors.As(err, &re) {
		return false
	}
	switch re.StatusCode {
	case http.StatusMethodNotAllowed, http.StatusBadRequest:
		// 400: the mount does not pass the key header through (the tune
		// line is missing), or the GET is malformed; the POST is the
		// canonical login and says what is wrong, if anything.
		return true
	case http.StatusForbidden:
		if _, locked := lockedUntil(err); locked {
			return false
		}
		for _, msg := range re.Errors {
			// Vault wraps a plugin's error ("1 error occurred:\n\t* ..."),
			// so the engine's text is inside the message, not at its start.
			if strings.Contains(msg, LoginRefusedPrefix) {
				return false
			}
		}
		return true
	}
	return false
}

// statusOf is the HTTP status of a Vault answer, 0 for none.
func statusOf(err error) int {
	var re *api.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

// lifetime reads how long the answered token lives: expires_in (seconds,
// immune to clock skew between here and Vault) when present, else
// expires_at against the local clock.
func lifetime(data map[string]any, start time.Time) (time.Duration, bool) {
	var secs float64
	switch v := data["expires_in"].(type) {
	case json.Number:
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil {
			return 0, false
		}
		secs = f
	case float64:
		secs = v
	case nil:
		at, ok := data["expires_at"].(string)
		if !ok {
			return 0, false
		}
		expires, err := time.Parse(time.RFC3339, at)
		if err != nil {
			return 0, false
		}
		return expires.Sub(start), true
	default:
		return 0, false
	}
	if secs != secs { // NaN
		return 0, false
	}
	// Clamp before converting: a huge value must not overflow Duration.
	secs = max(min(secs, maxTokenLife.Seconds()), -1)
	return time.Duration(secs * float64(time.Second)), true
}

// later returns the later of two times.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Start refreshes the token in the background until ctx ends or Stop is
// called: at about two thirds of each token's life, and after a failure once
// the backoff (or lockout) has passed, while Token keeps serving the current
// token. Calling it more than once has no further effect.
func (ts *TokenSource) Start(ctx context.Context) {
	if !ts.started.CompareAndSwap(false, true) {
		return
	}
	go func() {
		for {
			ts.mu.Lock()
			var wait time.Duration
			if t := ts.current; t != nil {
				wait = t.refreshAt.Sub(ts.now())
			}
			wait = max(wait, ts.retryAt.Sub(ts.now()))
			ts.mu.Unlock()
			if wait > 0 && !ts.sleep(ctx, wait) {
				return
			}
			ts.mu.Lock()
			done, err := ts.startLoginLocked(ctx)
			ts.mu.Unlock()
			if err != nil {
				continue // the backoff moved; wait again
			}
			select {
			case <-done:
			case <-ctx.Done():
				return
			case <-ts.stop:
				return
			}
		}
	}()
}

// sleep waits for d and reports false when ctx ended or Stop was called
// instead.
func (ts *TokenSource) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-ts.stop:
		return false
	}
}

// Stop ends the background refresh.
func (ts *TokenSource) Stop() {
	ts.stopped.Do(func() { close(ts.stop) })
}

// FreshToken logs in and returns the new token without keeping it: a call
// never returns a token another call returned, for audiences that accept
// each jti once. Like Token, it does not ask Vault during a backoff or a
// lockout (it answers the failure); its failures count toward them.
func (ts *TokenSource) FreshToken(ctx context.Context) (string, error) {
	ts.mu.Lock()
	if now := ts.now(); now.Before(ts.retryAt) {
		err := fmt.Errorf("%w (next attempt after %s)", ts.lastErr, ts.retryAt.UTC().Format(time.RFC3339))
		ts.mu.Unlock()
		return "", err
	}
	ts.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, ts.cfg.LoginTimeout)
	defer cancel()
	t, err := ts.safeLogin(ctx, ts.now())
	ts.mu.Lock()
	ts.recordLocked(t, err, false)
	ts.mu.Unlock()
	if err != nil {
		ts.report(err)
		return "", err
	}
	return t.Value, nil
}
