package client

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"
)

// Kinds of failed logins, as Stats counts them and the Logger names them.
const (
	// FailureLocked is a login the engine refused because the caller is
	// locked out; no login starts before the time it named.
	FailureLocked = "locked"
	// FailureRefused is any other refusal (4xx): a wrong API key, a
	// certificate the service does not accept, a disabled service, a Vault
	// token without the policy. Logins back off (MinBackoff..MaxBackoff).
	FailureRefused = "refused"
	// FailureUnavailable is Vault not answering, or answering 5xx.
	FailureUnavailable = "unavailable"
	// FailureBadAnswer is an answer without a usable token.
	FailureBadAnswer = "bad_answer"
	// FailureVaultAuth is a failed login to Vault with the auth method.
	FailureVaultAuth = "vault_auth"
)

// Stats are a TokenSource's counters, for a service to export (e.g. as
// Prometheus counters and gauges). Counters only grow.
type Stats struct {
	// Logins counts successful meshauth logins; FreshLogins those of them
	// made by FreshToken.
	Logins, FreshLogins uint64
	// Failures counts failed logins by kind (the Failure constants).
	Failures map[string]uint64
	// VaultLogins counts logins to Vault with the auth method;
	// VaultRenewals the renewals of the Vault token; VaultRenewalEnds the
	// times its renewal ended and the source logged in to Vault again.
	VaultLogins, VaultRenewals, VaultRenewalEnds uint64
	// LastRefreshLag is how far past its refresh point the previous token
	// was when a new one replaced it (0 when on time).
	LastRefreshLag time.Duration
	// RefreshOverdue is how far past its refresh point the current token is
	// now: 0 while refreshes keep up, growing while they fail.
	RefreshOverdue time.Duration
	// ExpiresAt is when the current token expires; zero without one.
	ExpiresAt time.Time
}

// counters are the atomics behind Stats; the lag is guarded by ts.mu.
type counters struct {
	logins, freshLogins                          atomic.Uint64
	locked, refused, unavailable, badAnswer      atomic.Uint64
	vaultFailures                                atomic.Uint64
	vaultLogins, vaultRenewals, vaultRenewalEnds atomic.Uint64
	lastLag                                      time.Duration
}

// loggedIn counts a successful login; prev is the token it may replace.
func (c *counters) loggedIn(prev *Token, now time.Time, keep bool) {
	c.logins.Add(1)
	if !keep {
		c.freshLogins.Add(1)
		return
	}
	if prev != nil {
		c.lastLag = max(0, now.Sub(prev.refreshAt))
	}
}

// failed counts a failed login by its kind.
func (c *counters) failed(err error) {
	switch failureKind(err) {
	case FailureLocked:
		c.locked.Add(1)
	case FailureRefused:
		c.refused.Add(1)
	case FailureUnavailable:
		c.unavailable.Add(1)
	case FailureVaultAuth:
		// counted where the Vault login failed (the watcher's too)
	default:
		c.badAnswer.Add(1)
	}
}

// failureKind classifies a login error.
func failureKind(err error) string {
	var (
		locked *lockedError
		va     *vaultAuthError
		re     *api.ResponseError
		ue     *url.Error
		ne     net.Error
	)
	switch {
	case errors.As(err, &locked):
		return FailureLocked
	case errors.As(err, &va):
		return FailureVaultAuth
	case errors.As(err, &re):
		if re.StatusCode >= http.StatusInternalServerError {
			return FailureUnavailable
		}
		return FailureRefused
	case errors.As(err, &ue), errors.As(err, &ne), errors.Is(err, context.DeadlineExceeded):
		return FailureUnavailable
	}
	return FailureBadAnswer
}

// Stats returns the source's counters.
func (ts *TokenSource) Stats() Stats {
	c := &ts.stats
	s := Stats{
		Logins:      c.logins.Load(),
		FreshLogins: c.freshLogins.Load(),
		Failures: map[string]uint64{
			FailureLocked:      c.locked.Load(),
			FailureRefused:     c.refused.Load(),
			FailureUnavailable: c.unavailable.Load(),
			FailureBadAnswer:   c.badAnswer.Load(),
			FailureVaultAuth:   c.vaultFailures.Load(),
		},
		VaultLogins:      c.vaultLogins.Load(),
		VaultRenewals:    c.vaultRenewals.Load(),
		VaultRenewalEnds: c.vaultRenewalEnds.Load(),
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	s.LastRefreshLag = c.lastLag
	if t := ts.current; t != nil {
		s.ExpiresAt = t.ExpiresAt
		s.RefreshOverdue = max(0, ts.now().Sub(t.refreshAt))
	}
	return s
}

// log is the configured logger, or one that discards.
func (ts *TokenSource) log() *slog.Logger {
	if ts.cfg.Logger != nil {
		return ts.cfg.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// report makes a failed login visible: one log line with its kind and the
// error callback. It runs outside ts.mu.
func (ts *TokenSource) report(err error) {
	if err == nil {
		return
	}
	ts.log().Warn("meshauth client: login failed", "service", ts.cfg.Service, "kind", failureKind(err), "error", err)
	if ts.cfg.OnError != nil {
		ts.cfg.OnError(err)
	}
}
