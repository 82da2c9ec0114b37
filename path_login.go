package meshauth

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// pathLogin declares login/:name.
func pathLogin(b *backend) []*framework.Path {
	return []*framework.Path{{
		Pattern:      "login/" + serviceNamePattern,
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
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
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "login"},
				Callback:     b.pathLogin,
				Summary:      "Exchange the service's API key and client certificate for a signed JWT.",
			},
			logical.ReadOperation: &framework.PathOperation{
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "login", OperationSuffix: "with-header"},
				Callback:     b.pathLoginRead,
				Summary:      "The same login in one round trip, when config allow_get_login is on: the API key in the X-Meshauth-Api-Key header (passed through by the mount), audience and ttl as query parameters.",
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
	return logical.CodedError(http.StatusForbidden, meshtoken.LockoutMessage(until))
}

// loginRefusal is the answer of every refused login (not a lockout). It is
// meshauth's own, so a caller can tell it from Vault's ACL refusal
// ("permission denied"), and it says where the reason is, but not which
// factor failed: that stays in Vault's log, for the operator. It names a
// missing client certificate, which the caller knows anyway. It unwraps to
// logical.ErrPermissionDenied for code inside the plugin; across the plugin
// boundary Vault carries its code and text (logical.HTTPCodedError).
type loginRefusal struct{ msg string }

func (e *loginRefusal) Error() string { return e.msg }
func (e *loginRefusal) Code() int     { return http.StatusForbidden }
func (e *loginRefusal) Unwrap() error { return logical.ErrPermissionDenied }

// loginRefusedPrefix starts every refused login's answer; the client
// library and scripts recognise meshauth's refusal by it.
const loginRefusedPrefix = meshtoken.LoginRefusedPrefix

// loginRefusedLogMessage is the log message of a refused login, at Info;
// the answer tells the caller to look for it.
const loginRefusedLogMessage = "login refused"

// errLoginRefused builds the refusal of a login as name over req's
// connection.
func errLoginRefused(req *logical.Request, name string) error {
	var b strings.Builder
	b.WriteString(loginRefusedPrefix + " for service " + strconv.Quote(name) + ": ")
	if len(peerChain(connState(req))) == 0 {
		b.WriteString("no client certificate came on the TLS connection to Vault (a service that requires mTLS must present its certificate: VAULT_CLIENT_CERT and VAULT_CLIENT_KEY for the vault CLI); ")
	}
	b.WriteString("the API key, the client certificate or the service's state did not pass, and the answer does not say which. " +
		"Vault's server log has the reason at level info (message \"" + loginRefusedLogMessage + "\", fields service, caller and reason): " +
		"see it in the server's log output, or live with: vault monitor -log-level=info")
	return &loginRefusal{msg: b.String()}
}

// errGetLoginOff answers a GET login while config allow_get_login is off. A
// GET is a read, and read capability alone must not mint tokens unless an
// operator chose that; 405 tells a client to use the POST login.
func errGetLoginOff(req *logical.Request) error {
	mount := strings.TrimSuffix(req.MountPoint, "/")
	return logical.CodedError(http.StatusMethodNotAllowed, "the one-round-trip GET login is off for this mount (config allow_get_login=false): log in with a POST (vault write "+mount+"/"+req.Path+" api_key=...), or have an operator run: vault write "+mount+"/config allow_get_login=true")
}

// apiKeyHeader carries the API key of a one-round-trip login (GET). Vault
// hands it to the plugin only when the mount lists it in
// passthrough_request_headers, and audit devices do not record request
// headers unless told to.
const apiKeyHeader = meshtoken.APIKeyHeader

// pathLogin serves the POST login of the vault CLI: the key is a field.
func (b *backend) pathLogin(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	return b.login(ctx, req, d, d.Get("api_key").(string))
}

// pathLoginRead serves the GET login of the client library. A POST costs
// Vault two round trips to the plugin (an existence check, then the write); a
// GET costs one. The key comes from a header, never from the URL: a query
// parameter would land in access logs and the audit log's request path.
func (b *backend) pathLoginRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	// The one spelling of the name is checked first, whatever else is
	// wrong with the request, so the refusal names the path to use.
	if _, errResp := serviceName(req, d); errResp != nil {
		return errResp, nil
	}
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	if !cfg.AllowGetLogin {
		return nil, errGetLoginOff(req)
	}
	if _, inURL := req.Data["api_key"]; inURL {
		return logical.ErrorResponse("never put the API key in a URL; send it in the " + apiKeyHeader + " header, or use a POST with api_key in the body"), nil
	}
	key := headerValue(req.Headers, apiKeyHeader)
	if key == "" {
		return logical.ErrorResponse("a GET login needs the API key in the " + apiKeyHeader + " header; an operator enables it with: vault secrets tune -allowed-response-headers=ETag -passthrough-request-headers=" + apiKeyHeader + " -passthrough-request-headers=If-None-Match " + strings.TrimSuffix(req.MountPoint, "/") + " (a tune replaces the whole list, so it names the revocation feed's headers too)"), nil
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
	name, errResp := serviceName(req, d)
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
	var requestedTTL time.Duration
	if sent(d, "ttl") {
		requestedTTL = time.Duration(d.Get("ttl").(int)) * time.Second
	}
	if requestedTTL < 0 {
		return logical.ErrorResponse("ttl must not be negative"), nil
	}
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	id, err := b.authenticateCaller(ctx, req, name, apiKey, cfg)
	if err != nil {
		return nil, err
	}
	svc, x5t, spiffeID, cfg := id.svc, id.x5t, id.spiffeID, id.cfg
	now := b.now()

	var requested []string
	if sent(d, "audience") {
		requested = d.Get("audience").([]string)
	}
	audience, msg := loginAudience(svc.entry, requested)
	if msg != "" {
		return logical.ErrorResponse(msg), nil
	}
	ttl, warning := loginTTL(svc.entry, cfg, requestedTTL)
	ring, err := b.getKeyRing(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	if msg := jwtSVIDLoginCheck(svc, cfg, ring.current, spiffeID, audience); msg != "" {
		return logical.ErrorResponse(msg), nil
	}
	// The caller authenticated: its claims_template, if any, is rendered
	// now (claims_template.go).
	templated, err := b.templateClaims(req, id, now)
	if err != nil {
		return nil, err
	}
	minted, err := mintTokenWith(ring.current, cfg, svc, audience, ttl, x5t, spiffeID, templated, now)
	if err != nil {
		return nil, err
	}
	if x5t != "" {
		// Remembered so that a later revocation lists it in the feed.
		b.certRevocation.track(x5t, peerChain(connState(req)), svc.trust, minted.expiresAt, now)
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

// sent reports whether the request carries a field. The login decodes its
// optional fields only when sent: the framework's Get runs a reflective
// decoder even for an absent field (about eight allocations each), and most
// logins send neither ttl nor audience.
func sent(d *framework.FieldData, name string) bool {
	_, ok := d.Raw[name]
	return ok
}

// loginIdentity is what authenticating a login established.
type loginIdentity struct {
	// svc is the service, current when the login was checked.
	svc *cachedService
	// x5t is the x5t#S256 of the verified client certificate, or "".
	x5t string
	// spiffeID is the verified SPIFFE ID of a service registered by one.
	spiffeID string
	// cfg is the config the login was checked against.
	cfg *configEntry
}

// maxLoginAttempts bounds how often a login starts over because the service
// changed under it.
const maxLoginAttempts = 3

// authenticateCaller checks every factor of a login against the service and
// returns the service, the verified certificate's x5t#S256 and the config
// the login was checked against. A login that
// read the service before an update and would succeed after the update
// returned starts over with the new entry: no login succeeds on trust that an
// update has already replaced.
func (b *backend) authenticateCaller(ctx context.Context, req *logical.Request, name, apiKey string, cfg *configEntry) (*loginIdentity, error) {
	for attempt := 1; ; attempt++ {
		svc, err := b.getService(ctx, req.Storage, name)
		if err != nil {
			return nil, err
		}
		now := b.now()
		// The certificate is checked first because a verified one
		// identifies the caller for lockout: a stranger failing from the
		// same address must not lock out the service's own,
		// certificate-holding instances.
		chain := peerChain(connState(req))
		x5t, certErr := b.checkClientCertificate(svc, chain, now)
		// For a service registered by SPIFFE ID: its verified ID (spiffe.go).
		x5t, spiffeID, certErr := spiffeLoginID(svc, chain, x5t, certErr)
		who := callerID(req, x5t)
		key := lockoutKey(name, who, svc != nil)
		if cfg.LockoutThreshold > 0 {
			if until, locked := b.lockout.lockedUntil(key, now); locked {
				b.metrics.loginLocked(metricsName(svc))
				b.Logger().Debug("login refused: caller locked out", "service", name, "caller", who)
				return nil, errLoginLocked(until)
			}
		}
		if failure, stored := authenticate(svc, apiKey, certErr, cfg, now); failure != "" {
			if errors.Is(certErr, errCertificateRevoked) && svc != nil && len(chain) > 0 &&
				matchAPIKey(svc.entry.APIKeys, apiKey, now, cfg.APIKeyMaxAge) {
				// A revoked certificate whose holder also has the API key
				// may have tokens bound to it: the feed lists it
				// (cert_revocation.go).
				go b.listRefusedCertificate(chain[0]) //nolint:gosec // G118: the listing outlives the refused request on purpose, with its own timeout
			}
			b.loginFailed(svc, name, who, key, failure, !stored, cfg, now)
			return nil, errLoginRefused(req, name)
		}
		current, err := b.serviceIsCurrent(ctx, req.Storage, name, svc)
		if err != nil {
			return nil, err
		}
		if !b.config.current(func(c *configEntry) bool { return c == cfg }) {
			// The config changed under the login (api_key_max_age, lockout):
			// start over with the new one.
			if cfg, err = b.getConfig(ctx, req.Storage); err != nil {
				return nil, err
			}
			current = false
		}
		if current {
			if cfg.LockoutThreshold > 0 {
				b.lockout.succeed(key)
			}
			return &loginIdentity{svc: svc, x5t: x5t, spiffeID: spiffeID, cfg: cfg}, nil
		}
		if attempt == maxLoginAttempts {
			b.metrics.loginFailed(metricsName(svc))
			b.Logger().Warn(loginRefusedLogMessage, "service", name, "reason", "the service kept changing while it was checked")
			return nil, errLoginRefused(req, name)
		}
	}
}

// authenticate checks every factor and returns "" on success or, for the
// debug log only, which factor failed; stored reports a failure of the
// service's stored entry (claims or trust material that no longer pass the
// checks) rather than of the caller, which must not lock the caller out. Every factor is evaluated whatever the
// others gave, so the time taken says little about which one failed.
func authenticate(svc *cachedService, apiKey string, certErr error, cfg *configEntry, now time.Time) (failure string, stored bool) {
	var keys []apiKeyEntry
	if svc != nil {
		keys = svc.entry.APIKeys
	}
	keyOK := matchAPIKey(keys, apiKey, now, cfg.APIKeyMaxAge)
	switch {
	case svc == nil:
		return "unknown service", false
	case svc.entry.Disabled:
		return "service disabled", false
	case !keyOK:
		return "api key did not match a live key", false
	case svc.claimsErr != nil:
		return "stored claims: " + svc.claimsErr.Error(), true
	case svc.identityErr != nil:
		return "stored identity: " + svc.identityErr.Error(), true
	case svc.entry.RequireMTLS && svc.trustErr != nil:
		return "stored trust material: " + svc.trustErr.Error(), true
	case svc.entry.RequireMTLS && certErr != nil:
		return "client certificate: " + certErr.Error(), false
	}
	return "", false
}

// loginFailed counts a failure toward lockout (when it is the caller's) and
// logs it without any secret, at Info: Vault's default level, so the
// operator the refusal points to finds the reason without turning on debug.
func (b *backend) loginFailed(svc *cachedService, name string, who caller, key lockKey, failure string, callersFault bool, cfg *configEntry, now time.Time) {
	b.metrics.loginFailed(metricsName(svc))
	if !callersFault && svc != nil {
		// The stored entry fails closed: an operator must act, so the
		// reason is logged where they look and counted apart.
		if svc.identityErr != nil {
			b.metrics.loginRefusedIdentity(svc.entry.Name)
		}
		b.Logger().Warn("login refused: the service's stored entry does not pass today's checks", "service", name, "caller", who, "reason", failure)
	} else {
		b.Logger().Info(loginRefusedLogMessage, "service", name, "caller", who, "reason", failure)
	}
	if callersFault && cfg.LockoutThreshold > 0 {
		if until, locked := b.lockout.fail(key, now, cfg); locked {
			b.metrics.loginLockedOut(metricsName(svc))
			b.Logger().Warn("login locked out after repeated failures", "service", name, "caller", who, "until", until.UTC().Format(time.RFC3339))
		}
	}
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
	err := b.verifiedChains.verifyUntil(svc.entry.Name, svc.trust, chain, now, func() (time.Time, error) {
		if err := verifyPresentedChain(svc.trust, chain, now); err != nil {
			return time.Time{}, err
		}
		return b.checkRevocation(svc.trust, chain, now) // cert_revocation.go
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
func callerID(req *logical.Request, x5t string) caller {
	if x5t != "" {
		return caller("cert:" + x5t)
	}
	if req.Connection == nil || req.Connection.RemoteAddr == "" {
		return "addr:unknown"
	}
	addr := req.Connection.RemoteAddr
	if host, _, err := net.SplitHostPort(addr); err == nil {
		addr = host
	}
	return caller("addr:" + strings.ToLower(addr))
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

A GET does the same in one round trip to the plugin instead of two, when an
operator turned it on (config allow_get_login=true; off, a GET answers 405).
A GET is a read: with it on, read capability on login/<name> mints tokens of
that service. The key travels in the X-Meshauth-Api-Key header, which the
mount must pass through (vault secrets tune -allowed-response-headers=ETag
-passthrough-request-headers=X-Meshauth-Api-Key
-passthrough-request-headers=If-None-Match <mount>: a tune replaces the whole
list, so it keeps the revocation feed's headers), never in the URL; audience
and ttl are query parameters.

Every failure answers the same 403, "meshauth: login refused for service
<name>: ...", whichever factor failed; it says so when no client certificate
came on the TLS connection, and points to Vault's server log, where the
reason is logged at level info (message "login refused"). Every failure counts toward lockout of this caller (its verified client certificate, or
its address) for this service. A locked caller gets an error that says when
the lock ends. A login never writes to storage.

A service with a claims_template renders it after every factor passed; a
login it refuses (template_missing=fail) gets the same refusal,
is logged naming the directive, and does not count toward lockout.
`
