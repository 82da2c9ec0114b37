package client

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
)

// maxExchanged bounds the exchanged tokens a TokenSource remembers: one per
// (subject token, audience) in use, each gone at its refresh time.
const maxExchanged = 4096

// exchangeKey names one cached exchange; the subject token is kept as its
// hash, so the cache holds no caller's token.
type exchangeKey struct {
	subject  [sha256.Size]byte
	audience string
}

// exchangeCache is the TokenSource's cache of exchanged tokens, with one
// exchange in flight per key.
type exchangeCache struct {
	mu       sync.Mutex
	tokens   map[exchangeKey]*Token
	inflight map[exchangeKey]chan struct{}
}

// Exchange trades subjectToken, a token this service received from a
// caller (meshtoken.TokenFromContext), for a token to call audience on the
// caller's behalf (RFC 8693, the engine's exchange/<service>). This
// service authenticates as at login: its API key and the client certificate
// its Vault client presents, to which the answer is bound. The result has
// the caller as sub and this service in act, and expires no later than
// subjectToken; it is cached per (subjectToken, audience) until two thirds
// of its lifetime, so a handler may call Exchange on every request.
//
// The engine refuses (and Exchange returns its error) a subject token not
// addressed to this service, an audience not in the service's
// exchange_audiences, a chain longer than its max_delegation_depth, and a
// service without a certificate. A wrong API key counts toward lockout, as
// at login.
func (ts *TokenSource) Exchange(ctx context.Context, subjectToken, audience string) (string, error) {
	if subjectToken == "" || audience == "" {
		return "", errors.New("meshauth exchange: subjectToken and audience are required")
	}
	key := exchangeKey{subject: sha256.Sum256([]byte(subjectToken)), audience: audience}
	c := &ts.exchanged
	for {
		c.mu.Lock()
		if t := c.tokens[key]; t != nil && ts.now().Before(t.refreshAt) {
			c.mu.Unlock()
			return t.Value, nil
		}
		wait, busy := c.inflight[key]
		if !busy {
			break // with c.mu held
		}
		c.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	if c.inflight == nil {
		c.inflight = map[exchangeKey]chan struct{}{}
		c.tokens = map[exchangeKey]*Token{}
	}
	done := make(chan struct{})
	c.inflight[key] = done
	c.mu.Unlock()

	t, err := ts.exchange(ctx, subjectToken, audience)

	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.inflight, key)
	close(done)
	if err != nil {
		delete(c.tokens, key)
		return "", err
	}
	if len(c.tokens) >= maxExchanged {
		now := ts.now()
		for k, old := range c.tokens {
			if !now.Before(old.refreshAt) {
				delete(c.tokens, k)
			}
		}
		if len(c.tokens) >= maxExchanged {
			clear(c.tokens) // every entry live: start over rather than grow
		}
	}
	c.tokens[key] = t
	return t.Value, nil
}

// exchange makes one exchange request.
func (ts *TokenSource) exchange(ctx context.Context, subjectToken, audience string) (*Token, error) {
	ctx, cancel := context.WithTimeout(ctx, ts.cfg.LoginTimeout)
	defer cancel()
	if err := ts.ensureVaultToken(ctx); err != nil {
		return nil, err
	}
	start := ts.now()
	//nolint:gosec // RFC 8693 URNs and a field name, not credentials
	sec, err := ts.vault.Logical().WriteWithContext(ctx, ts.cfg.Mount+"/exchange/"+ts.cfg.Service, map[string]any{
		"api_key":            ts.cfg.APIKey,
		"subject_token":      subjectToken,
		"audience":           audience,
		"grant_type":         "urn:ietf:params:oauth:grant-type:token-exchange",
		"subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
	})
	ts.checkVaultToken(err)
	if err != nil {
		err = fmt.Errorf("meshauth exchange as %q toward %q: %w", ts.cfg.Service, audience, err)
		if until, ok := lockedUntil(err); ok {
			return nil, &lockedError{until: until, err: err}
		}
		return nil, err
	}
	if sec == nil || sec.Data == nil {
		return nil, fmt.Errorf("meshauth exchange as %q: empty answer", ts.cfg.Service)
	}
	value, _ := sec.Data["token"].(string)
	life, ok := lifetime(sec.Data, start)
	if value == "" || !ok || life <= 0 {
		return nil, fmt.Errorf("meshauth exchange as %q: answer lacks a token or a lifetime in the future", ts.cfg.Service)
	}
	life = min(life, maxTokenLife)
	return &Token{Value: value, ExpiresAt: start.Add(life), refreshAt: start.Add(life - life/3)}, nil
}
