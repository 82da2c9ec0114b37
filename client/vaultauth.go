package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"
)

// vaultSession is the source's own Vault login, when it has an auth
// method. What ends it: the LifetimeWatcher's end of renewal (max TTL
// reached, renewal refused), or Vault answering "invalid token" to a
// meshauth login (revoked); the next login (or the watcher, at once) logs
// in again.
type vaultSession struct {
	// mu serializes Vault logins: concurrent meshauth logins (Token and
	// FreshToken) wait for one Vault login instead of each starting one.
	mu sync.Mutex
	// valid is set while the Vault token is believed usable.
	valid atomic.Bool
	// watcher keeps the current Vault token alive; nil when it needs no
	// renewal (a token without TTL) or before the first login.
	watcher *api.LifetimeWatcher
}

// vaultAuthError is a failed login to Vault itself (the auth method).
type vaultAuthError struct{ err error }

func (e *vaultAuthError) Error() string {
	return "meshauth client: logging in to Vault: " + e.err.Error()
}
func (e *vaultAuthError) Unwrap() error { return e.err }

// ensureVaultToken logs in to Vault with the auth method when the source
// has one and holds no usable Vault token.
func (ts *TokenSource) ensureVaultToken(ctx context.Context) error {
	if ts.cfg.Auth == nil || ts.session.valid.Load() {
		return nil
	}
	ts.session.mu.Lock()
	defer ts.session.mu.Unlock()
	if ts.session.valid.Load() {
		return nil
	}
	sec, err := ts.vault.Auth().Login(ctx, ts.cfg.Auth)
	if err != nil {
		ts.stats.vaultFailures.Add(1)
		return &vaultAuthError{err: err}
	}
	ts.stats.vaultLogins.Add(1)
	ttl := time.Duration(sec.Auth.LeaseDuration) * time.Second
	ts.log().Info("meshauth client: logged in to Vault", "service", ts.cfg.Service, "ttl", ttl, "renewable", sec.Auth.Renewable)
	if ts.session.watcher != nil {
		ts.session.watcher.Stop()
		ts.session.watcher = nil
	}
	ts.session.valid.Store(true)
	if ttl <= 0 {
		return nil // a token without TTL (root, or a static dev token) needs no renewal
	}
	w, err := ts.vault.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: sec})
	if err != nil {
		return nil // the token works now; the next refusal logs in again
	}
	ts.session.watcher = w
	go w.Start()
	// The watcher outlives the login that started it: it follows the
	// Vault token until renewal ends or the source stops.
	go ts.watch(context.WithoutCancel(ctx), w)
	return nil
}

// watch follows one LifetimeWatcher: it counts renewals and, when renewal
// ends, marks the Vault token unusable and logs in again at once (a failure
// is retried by the next meshauth login, within its backoff). It ends with
// the source (Stop) or when a newer login replaced its watcher.
func (ts *TokenSource) watch(ctx context.Context, w *api.LifetimeWatcher) {
	for {
		select {
		case <-w.RenewCh():
			ts.stats.vaultRenewals.Add(1)
		case err := <-w.DoneCh():
			ts.session.mu.Lock()
			current := ts.session.watcher == w
			if current {
				ts.session.valid.Store(false)
			}
			ts.session.mu.Unlock()
			if !current {
				return
			}
			ts.stats.vaultRenewalEnds.Add(1)
			if err != nil {
				ts.log().Warn("meshauth client: Vault token renewal failed; logging in to Vault again", "service", ts.cfg.Service, "error", err)
			} else {
				ts.log().Info("meshauth client: Vault token reached the end of its renewals; logging in to Vault again", "service", ts.cfg.Service)
			}
			ctx, cancel := context.WithTimeout(ctx, ts.cfg.LoginTimeout)
			err = ts.ensureVaultToken(ctx)
			cancel()
			ts.report(err)
			return
		case <-ts.stop:
			w.Stop()
			return
		}
	}
}

// checkVaultToken notes a meshauth login refused because the source's own
// Vault token is no longer valid (revoked, or expired early), so the next
// login logs in to Vault first.
func (ts *TokenSource) checkVaultToken(err error) {
	if ts.cfg.Auth == nil || err == nil {
		return
	}
	var re *api.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusForbidden {
		return
	}
	for _, m := range re.Errors {
		if strings.Contains(m, "invalid token") {
			ts.session.valid.Store(false)
			return
		}
	}
}

// StaticToken is an auth method for development: a Vault token given as
// is. Its TTL and renewability are read with token/lookup-self, so a
// renewable token is kept alive like any other login; when it can no
// longer be renewed, logins fail visibly (there is nothing to log in with).
func StaticToken(token string) api.AuthMethod { return staticToken(token) }

type staticToken string

// Login implements api.AuthMethod.
func (s staticToken) Login(ctx context.Context, c *api.Client) (*api.Secret, error) {
	if s == "" {
		return nil, errors.New("static token is empty")
	}
	lc, err := c.Clone()
	if err != nil {
		return nil, err
	}
	lc.SetToken(string(s))
	self, err := lc.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("looking up the static token: %w", err)
	}
	ttl, err := self.TokenTTL()
	if err != nil {
		return nil, err
	}
	renewable, _ := self.TokenIsRenewable()
	return &api.Secret{Auth: &api.SecretAuth{ClientToken: string(s), LeaseDuration: int(ttl / time.Second), Renewable: renewable}}, nil
}
