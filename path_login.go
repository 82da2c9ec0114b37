package meshauth

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// pathLogin declares login/:name.
func pathLogin(b *backend) []*framework.Path {
	return []*framework.Path{{
		Pattern: "login/" + serviceNamePattern,
		Fields: map[string]*framework.FieldSchema{
			"name": {
				Type:        framework.TypeString,
				Description: "Name of the service logging in.",
			},
			"api_key": {
				Type:         framework.TypeString,
				Description:  "The service's API key. Required.",
				DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
			},
			"audience": {
				Type:        framework.TypeCommaStringSlice,
				Description: "Audience(s) for the token's aud claim (string or list), each within the service's allowed_audiences. Default: the service's default_audience.",
			},
			"ttl": {
				Type:        framework.TypeDurationSecond,
				Description: "Requested token lifetime (duration or seconds), capped at the service's and the engine's maximum. Default: the service's token_ttl, else the engine's default_ttl.",
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{
				Callback: b.pathLogin,
				Summary:  "Exchange the service's API key and client certificate for a signed JWT.",
			},
			logical.ReadOperation: &framework.PathOperation{
				Callback: b.pathLoginRead,
				Summary:  "The same login in one round trip: the API key in the X-Meshauth-Api-Key header (passed through by the mount), audience and ttl as query parameters.",
			},
		},
		HelpSynopsis:    "Log a service in: API key (+ client certificate) for a short-lived JWT.",
		HelpDescription: loginHelp,
	}}
}

// errLoginLocked answers a caller locked out of a service. It differs from
// the generic error on purpose, so an operator can tell a lockout from a bad
// key, and it names when the lock ends.
func errLoginLocked(until time.Time) error {
	return logical.CodedError(http.StatusForbidden, fmt.Sprintf("login locked for this caller after too many failed attempts; try again after %s", until.UTC().Format(time.RFC3339)))
}

// apiKeyHeader carries the API key of a one-round-trip login (GET). Vault
// hands it to the plugin only when the mount lists it in
// passthrough_request_headers, and audit devices do not record request
// headers unless told to.
const apiKeyHeader = "X-Meshauth-Api-Key" //nolint:gosec // a header name, not a credential

// pathLogin serves the POST login of the vault CLI: the key is a field.
func (b *backend) pathLogin(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	return b.login(ctx, req, d, d.Get("api_key").(string))
}

// pathLoginRead serves the GET login of the client library. A POST costs
// Vault two round trips to the plugin (an existence check, then the write); a
// GET costs one. The key comes from a header, never from the URL: a query
// parameter would land in access logs and the audit log's request path.
func (b *backend) pathLoginRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if _, inURL := req.Data["api_key"]; inURL {
		return logical.ErrorResponse("never put the API key in a URL; send it in the " + apiKeyHeader + " header, or use a POST with api_key in the body"), nil
	}
	key := headerValue(req.Headers, apiKeyHeader)
	if key == "" {
		return logical.ErrorResponse("a GET login needs the API key in the " + apiKeyHeader + " header; an operator enables it with: vault secrets tune -passthrough-request-headers=" + apiKeyHeader + " " + strings.TrimSuffix(req.MountPoint, "/")), nil
	}
	return b.login(ctx, req, d, key)
}

// headerValue reads a request header case-insensitively.
func headerValue(headers map[string][]string, name string) string {
	for k, v := range headers {
		if strings.EqualFold(k, name) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

// login is every login, whichever way the key arrived.
func (b *backend) login(ctx context.Context, req *logical.Request, d *framework.FieldData, apiKey string) (*logical.Response, error) {
	name, errResp := serviceName(d)
	if errResp != nil {
		return errResp, nil
	}
	if resp := rejectUnknownFields(req, d); resp != nil {
		return resp, nil
	}
	// Count what the login asks of storage: none in steady state, and the
	// metrics show it.
	storage := &countingView{Storage: req.Storage}
	defer func() { b.metrics.loginStorageOps.Add(storage.ops) }()
	req.Storage = storage
	requestedTTL := time.Duration(d.Get("ttl").(int)) * time.Second
	if requestedTTL < 0 {
		return logical.ErrorResponse("ttl must not be negative"), nil
	}
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	svc, err := b.getService(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	now := b.now()

	// The certificate is checked first because a verified one identifies the
	// caller for lockout: a stranger failing from the same address must not
	// lock out the service's own, certificate-holding instances.
	chain := peerChain(connState(req))
	x5t, certErr := b.checkClientCertificate(svc, chain, now)
	// For a service registered by SPIFFE ID: its verified ID, within the
	// trust domains config allows now (spiffe.go).
	x5t, spiffeID, certErr := spiffeLoginID(svc, cfg, chain, x5t, certErr)
	caller := callerID(req, x5t)
	lockKey := lockoutKey(name, caller)
	if cfg.LockoutThreshold > 0 {
		if until, locked := b.lockout.lockedUntil(lockKey, now); locked {
			b.metrics.loginLocked(metricsName(svc))
			b.Logger().Debug("login refused: caller locked out", "service", name, "caller", caller)
			return nil, errLoginLocked(until)
		}
	}

	if failure := authenticate(svc, apiKey, certErr, cfg, now); failure != "" {
		return nil, b.loginFailed(svc, name, caller, lockKey, failure, cfg, now)
	}
	if cfg.LockoutThreshold > 0 {
		b.lockout.succeed(lockKey)
	}

	audience, msg := loginAudience(svc.entry, d.Get("audience").([]string))
	if msg != "" {
		return logical.ErrorResponse(msg), nil
	}
	ttl, warning := loginTTL(svc.entry, cfg, requestedTTL)
	ring, err := b.getKeyRing(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	if msg := jwtSVIDLoginCheck(svc, ring.current, spiffeID, audience); msg != "" {
		return logical.ErrorResponse(msg), nil
	}
	minted, err := mintToken(ring.current, cfg, svc, audience, ttl, x5t, spiffeID, now)
	if err != nil {
		return nil, err
	}
	b.metrics.loginSucceeded(name)
	resp := &logical.Response{Data: map[string]any{
		"token":      minted.token,
		"token_type": "Bearer",
		"expires_at": minted.expiresAt.Format(time.RFC3339),
		"expires_in": int64(minted.expiresAt.Sub(now.Truncate(time.Second)) / time.Second),
		"jti":        minted.jti,
		"kid":        minted.kid,
	}}
	if warning != "" {
		resp.AddWarning(warning)
	}
	return resp, nil
}

// authenticate checks every factor and returns "" on success or, for the
// debug log only, which factor failed. Every factor is evaluated whatever the
// others gave, so the time taken says little about which one failed.
func authenticate(svc *cachedService, apiKey string, certErr error, cfg *configEntry, now time.Time) string {
	var keys []apiKeyEntry
	if svc != nil {
		keys = svc.entry.APIKeys
	}
	keyOK := matchAPIKey(keys, apiKey, now, cfg.APIKeyMaxAge)
	switch {
	case svc == nil:
		return "unknown service"
	case svc.entry.Disabled:
		return "service disabled"
	case !keyOK:
		return "api key did not match a live key"
	case svc.entry.RequireMTLS && certErr != nil:
		return "client certificate: " + certErr.Error()
	}
	return ""
}

// loginFailed counts a failure toward lockout, logs it without any secret,
// and returns the one error every failed login gets.
func (b *backend) loginFailed(svc *cachedService, name, caller, lockKey, failure string, cfg *configEntry, now time.Time) error {
	b.metrics.loginFailed(metricsName(svc))
	b.Logger().Debug("login refused", "service", name, "caller", caller, "reason", failure)
	if cfg.LockoutThreshold > 0 {
		if until, locked := b.lockout.fail(lockKey, now, cfg); locked {
			b.metrics.loginLockedOut(metricsName(svc))
			b.Logger().Warn("login locked out after repeated failures", "service", name, "caller", caller, "until", until.UTC().Format(time.RFC3339))
		}
	}
	return logical.ErrPermissionDenied
}

// checkClientCertificate verifies the presented chain against the service's
// trust, through the verified-chain cache, and returns the leaf's x5t#S256
// when it verified.
func (b *backend) checkClientCertificate(svc *cachedService, chain []*x509.Certificate, now time.Time) (string, error) {
	switch {
	case len(chain) == 0:
		return "", errNoClientCertificate
	case svc == nil:
		return "", errNoTrust
	case svc.trustErr != nil:
		return "", svc.trustErr
	case !svc.trust.hasTrust():
		return "", errNoTrust
	}
	err := b.verifiedChains.verify(svc.entry.Name, chain, svc.trust.expires, now, func() error {
		return verifyPresentedChain(svc.trust, chain, now)
	})
	if err != nil {
		return "", err
	}
	return certificateThumbprint(chain[0]), nil
}

// connState returns the TLS state of the caller's connection to Vault.
func connState(req *logical.Request) *tls.ConnectionState {
	if req.Connection == nil {
		return nil
	}
	return req.Connection.ConnState
}

// callerID identifies the caller for lockout: the verified client
// certificate when there is one, otherwise the remote address without port.
func callerID(req *logical.Request, x5t string) string {
	if x5t != "" {
		return "cert:" + x5t
	}
	if req.Connection == nil || req.Connection.RemoteAddr == "" {
		return "addr:unknown"
	}
	addr := req.Connection.RemoteAddr
	if host, _, err := net.SplitHostPort(addr); err == nil {
		addr = host
	}
	return "addr:" + strings.ToLower(addr)
}

// loginAudience picks the token's aud: the requested audiences, each allowed
// for the service, or the service's default.
func loginAudience(e *serviceEntry, requested []string) ([]string, string) {
	requested, msg := cleanList("audience", requested)
	if msg != "" {
		return nil, msg
	}
	if len(requested) == 0 {
		switch {
		case e.DefaultAudience != "":
			return []string{e.DefaultAudience}, ""
		case len(e.AllowedAudiences) > 0:
			return e.AllowedAudiences[:1], ""
		}
		return nil, ""
	}
	allowed := e.AllowedAudiences
	if len(allowed) == 0 && e.DefaultAudience != "" {
		allowed = []string{e.DefaultAudience}
	}
	for _, a := range requested {
		if !slices.Contains(allowed, a) {
			return nil, fmt.Sprintf("audience %q is not allowed for service %q; allowed: %s", a, e.Name, strings.Join(allowed, ", "))
		}
	}
	return requested, ""
}

// loginTTL picks the token lifetime: the request's, else the service's,
// else the engine's default, capped by the service's and the engine's max.
func loginTTL(e *serviceEntry, cfg *configEntry, requested time.Duration) (time.Duration, string) {
	ttl := cmp.Or(requested, e.TokenTTL, cfg.DefaultTTL)
	ceiling := cfg.MaxTTL
	if e.TokenMaxTTL > 0 && e.TokenMaxTTL < ceiling {
		ceiling = e.TokenMaxTTL
	}
	if ttl > ceiling {
		return ceiling, fmt.Sprintf("ttl of %s exceeds the maximum of %s; the token lives %s", ttl, ceiling, ceiling)
	}
	return ttl, ""
}

const loginHelp = `
Exchanges a service's API key for a signed JWT. When the service requires
mTLS, the client certificate presented on the TLS connection to Vault must
verify against the service's certificate or ca_chain, hostnames and
pinned_spki; the token then carries cnf.x5t#S256 of that certificate
(RFC 8705).

A GET does the same in one round trip to the plugin instead of two: the key
travels in the X-Meshauth-Api-Key header, which the mount must pass through
(vault secrets tune -passthrough-request-headers=X-Meshauth-Api-Key <mount>),
never in the URL; audience and ttl are query parameters.

Every failure answers the same "permission denied", whichever factor failed,
and counts toward lockout of this caller (its verified client certificate, or
its address) for this service. A locked caller gets an error that says when
the lock ends. A login never writes to storage.
`
