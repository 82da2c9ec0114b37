// Package client is the service side of meshauth: a TokenSource that logs a
// service in through Vault and keeps its JWT fresh, a Verifier that checks
// peers' tokens offline from the engine's JWKS, and net/http glue for both.
// It depends only on the standard library, vault/api and golang-jwt.
package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
)

// APIKeyHeader carries the API key of a one-round-trip login. The mount must
// list it in passthrough_request_headers.
const APIKeyHeader = "X-Meshauth-Api-Key" //nolint:gosec // a header name, not a credential

// TokenSourceConfig says how a service logs in.
type TokenSourceConfig struct {
	// Vault is a client for the Vault that serves meshauth. Configure its TLS
	// with the service's client certificate: logins of services that require
	// mTLS present it, and the token is bound to it.
	Vault *api.Client
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
	// UsePOST logs in with a POST (two round trips inside Vault) instead of a
	// GET with the key in APIKeyHeader (one), for mounts that do not pass the
	// header through.
	UsePOST bool
	// MinBackoff and MaxBackoff bound the wait between failed refreshes;
	// defaults 500ms and 30s.
	MinBackoff, MaxBackoff time.Duration
}

// Token is a JWT and when it expires.
type Token struct {
	// Value is the compact JWT.
	Value string
	// ExpiresAt is the token's exp.
	ExpiresAt time.Time
	// refreshAt is when a refresh should start: about two thirds of the way
	// through the lifetime, with jitter so a fleet does not refresh at once.
	refreshAt time.Time
}

// TokenSource logs a service in and keeps a fresh token. It is safe for
// concurrent use: however many goroutines ask, one login runs at a time.
type TokenSource struct {
	cfg   TokenSourceConfig
	vault *api.Client

	mu      sync.Mutex
	current *Token
	// inflight is closed when the login in progress ends; nil when none.
	inflight chan struct{}
	lastErr  error

	stop    chan struct{}
	stopped sync.Once
	now     func() time.Time
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
	vault := cfg.Vault
	if !cfg.UsePOST {
		// A clone, so the key header never rides on the caller's other requests.
		c, err := cfg.Vault.Clone()
		if err != nil {
			return nil, err
		}
		c.SetToken(cfg.Vault.Token())
		c.AddHeader(APIKeyHeader, cfg.APIKey)
		vault = c
	}
	return &TokenSource{cfg: cfg, vault: vault, stop: make(chan struct{}), now: time.Now}, nil
}

// Token returns a valid token. It logs in only when there is none (or it
// expired); a token past its refresh point is still returned while the
// background refresh works on a new one.
func (ts *TokenSource) Token(ctx context.Context) (string, error) {
	if t := ts.valid(); t != nil {
		return t.Value, nil
	}
	if err := ts.joinLogin(ctx, func() bool { return ts.current == nil || !ts.now().Before(ts.current.ExpiresAt) }); err != nil {
		return "", err
	}
	if t := ts.valid(); t != nil {
		return t.Value, nil
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.lastErr != nil {
		return "", ts.lastErr
	}
	return "", errors.New("meshauth client: login produced no token")
}

// valid returns the current token if it has not expired.
func (ts *TokenSource) valid() *Token {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if t := ts.current; t != nil && ts.now().Before(t.ExpiresAt) {
		return t
	}
	return nil
}

// joinLogin runs a login when needed() still holds (checked under the lock,
// so a login that just finished is not repeated), or waits for the login in
// progress. Either way it returns when that login has ended.
func (ts *TokenSource) joinLogin(ctx context.Context, needed func() bool) error {
	ts.mu.Lock()
	wait := ts.inflight
	if wait == nil {
		if !needed() {
			ts.mu.Unlock()
			return nil
		}
		ts.inflight = make(chan struct{})
		ts.mu.Unlock()
		ts.refresh(ctx)
		return nil
	}
	ts.mu.Unlock()
	select {
	case <-wait:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// refresh runs one login; the caller owns ts.inflight.
func (ts *TokenSource) refresh(ctx context.Context) {
	t, err := ts.login(ctx)
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if err == nil {
		ts.current = t
	}
	ts.lastErr = err
	close(ts.inflight)
	ts.inflight = nil
}

// login exchanges the API key for a token.
func (ts *TokenSource) login(ctx context.Context) (*Token, error) {
	path := ts.cfg.Mount + "/login/" + ts.cfg.Service
	params := map[string][]string{}
	if len(ts.cfg.Audience) > 0 {
		params["audience"] = ts.cfg.Audience
	}
	if ts.cfg.TTL > 0 {
		params["ttl"] = []string{fmt.Sprintf("%ds", int64(ts.cfg.TTL/time.Second))}
	}
	var sec *api.Secret
	var err error
	if ts.cfg.UsePOST {
		data := map[string]any{"api_key": ts.cfg.APIKey}
		for k, v := range params {
			data[k] = v
		}
		sec, err = ts.vault.Logical().WriteWithContext(ctx, path, data)
	} else {
		sec, err = ts.vault.Logical().ReadWithDataWithContext(ctx, path, params)
	}
	if err != nil {
		return nil, fmt.Errorf("meshauth login as %q: %w", ts.cfg.Service, err)
	}
	if sec == nil || sec.Data == nil {
		return nil, fmt.Errorf("meshauth login as %q: empty answer", ts.cfg.Service)
	}
	value, _ := sec.Data["token"].(string)
	expires, err := time.Parse(time.RFC3339, fmt.Sprint(sec.Data["expires_at"]))
	if value == "" || err != nil {
		return nil, fmt.Errorf("meshauth login as %q: answer lacks token or expires_at", ts.cfg.Service)
	}
	now := ts.now()
	life := expires.Sub(now)
	// Refresh at 2/3 of the lifetime, minus up to 10% of it at random.
	refreshAt := now.Add(life*2/3 - time.Duration(rand.Int64N(int64(life/10)+1))) //nolint:gosec // jitter, not a secret
	return &Token{Value: value, ExpiresAt: expires, refreshAt: refreshAt}, nil
}

// Start refreshes the token in the background until ctx ends or Stop is
// called: at about two thirds of each token's life, retrying failures with
// exponential backoff while Token keeps serving the current token.
func (ts *TokenSource) Start(ctx context.Context) {
	go func() {
		backoff := ts.cfg.MinBackoff
		for {
			ts.mu.Lock()
			wait := time.Duration(0)
			if t := ts.current; t != nil {
				wait = t.refreshAt.Sub(ts.now())
			}
			ts.mu.Unlock()
			if wait > 0 && !ts.sleep(ctx, wait) {
				return
			}
			if err := ts.forceRefresh(ctx); err != nil {
				if !ts.sleep(ctx, backoff) {
					return
				}
				backoff = min(backoff*2, ts.cfg.MaxBackoff)
				continue
			}
			backoff = ts.cfg.MinBackoff
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

// forceRefresh logs in now, joining a login already in progress.
func (ts *TokenSource) forceRefresh(ctx context.Context) error {
	if err := ts.joinLogin(ctx, func() bool { return true }); err != nil {
		return err
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.lastErr
}

// Stop ends the background refresh.
func (ts *TokenSource) Stop() {
	ts.stopped.Do(func() { close(ts.stop) })
}
