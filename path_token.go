package meshauth

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// pathToken declares verify and revoke.
func pathToken(b *backend) []*framework.Path {
	tokenField := &framework.FieldSchema{
		Type:         framework.TypeString,
		Description:  "The JWT. Required.",
		DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
	}
	return []*framework.Path{
		{
			Pattern:      "verify",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields: map[string]*framework.FieldSchema{
				"token": tokenField,
				"audience": {
					Type:        framework.TypeString,
					Description: "When given, the token's aud must contain it.",
				},
				"certificate": {
					Type:        framework.TypeString,
					Description: "The caller's client certificate as the resource server saw it: PEM, or its x5t#S256 (base64url SHA-256 of the DER). A token bound with cnf.x5t#S256 is then valid only when it matches. Optional.",
				},
				"require_binding": {
					Type:        framework.TypeBool,
					Description: "Refuse tokens that carry no cnf.x5t#S256 binding (reason unbound_token). Default: false.",
				},
				"max_delegation_depth": {
					Type:        framework.TypeInt,
					Description: "Accept exchanged (delegated) tokens, those carrying act, with at most this many actors. 0 (the default) refuses every token with act (reason delegation_not_allowed): the receiving service opts in to tokens another service obtained on a caller's behalf. 0 to " + strconv.Itoa(meshtoken.MaxActorDepth) + ".",
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "verify", OperationSuffix: "token"},
					Callback:     b.pathVerify,
					Summary:      "Validate a token: signature, claims, service state and revocation.",
				},
			},
			HelpSynopsis:    "Validate a meshauth JWT online.",
			HelpDescription: verifyHelp,
		},
		{
			Pattern:      "revoke",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields:       map[string]*framework.FieldSchema{"token": tokenField},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "revoke", OperationSuffix: "token"},
					Callback:     b.pathRevoke,
					Summary:      "Revoke one token before it expires.",
				},
			},
			HelpSynopsis:    "Revoke one token: send the token itself; its jti is denied.",
			HelpDescription: revokeHelp,
		},
	}
}

// verification is the outcome of verify.
type verification struct {
	parsed *parsedToken
	reason string
	// service is the token's service: sub, or a JWT-SVID's service claim.
	service string
}

// verifyToken runs every check of the contract on a token.
func (b *backend) verifyToken(ctx context.Context, s logical.Storage, raw, audience string) (*verification, error) {
	cfg, err := b.getConfig(ctx, s)
	if err != nil {
		return nil, err
	}
	ring, err := b.getKeyRing(ctx, s)
	if err != nil {
		return nil, err
	}
	now := b.now()
	parsed, reason := parseToken(raw, ring, cfg, audience, now, true)
	if reason != "" {
		return &verification{reason: reason}, nil
	}
	// A JWT-SVID names its service in a claim of its own (spiffe.go).
	name, reason := tokenServiceName(parsed.claims)
	if reason != "" {
		return &verification{reason: reason}, nil
	}
	svc, err := b.getService(ctx, s, name)
	if err != nil {
		return nil, err
	}
	switch {
	case svc == nil:
		reason = reasonUnknownService
	case !subjectBelongs(svc, parsed.claims.Subject):
		reason = reasonSPIFFEIDNotRegistered
	case svc.identityErr != nil:
		// The service's stored identity no longer passes (its trust domain
		// was deleted, or it still carries the withdrawn per-service
		// trust_domains): its logins fail closed, and so do its tokens.
		reason = reasonIdentityWithdrawn
	case strings.HasPrefix(parsed.claims.Subject, spiffeScheme) &&
		(svc.entry.TokenSubject != tokenSubjectSPIFFEID || !inEngineTrustDomain(parsed.claims.Subject, cfg)):
		// A JWT-SVID holds only while the engine would still mint it: the
		// service still asks for SPIFFE subjects and the ID is still in
		// config trust_domain.
		reason = reasonIdentityWithdrawn
	case svc.entry.Disabled:
		reason = reasonServiceDisabled
	default:
		reason = generationReason(svc.entry, parsed.claims)
	}
	if reason != "" {
		return &verification{reason: reason}, nil
	}
	revoked, err := b.revoked.isRevoked(ctx, s, parsed.claims.ID)
	if err != nil {
		return nil, err
	}
	if revoked {
		return &verification{reason: reasonTokenRevoked}, nil
	}
	// An exchanged token: its origins and actors (path_exchange.go).
	if reason, err = b.delegationReason(ctx, s, parsed.claims); err != nil || reason != "" {
		return &verification{reason: reason}, err
	}
	return &verification{parsed: parsed, service: name}, nil
}

// bindingOf reads verify's certificate field (PEM, or an x5t#S256 already
// computed by the resource server) into the binding check every verifier
// shares. Without a certificate the connection is unseen: a bound token is
// then the caller's to match (RFC 8705 leaves it to whoever sees the
// connection).
func bindingOf(cert string, required bool) (meshtoken.Binding, string) {
	cert = strings.TrimSpace(cert)
	b := meshtoken.Binding{Required: required}
	switch {
	case cert == "":
		b.Unseen = true
	case strings.HasPrefix(cert, "-----BEGIN"):
		certs, err := parseCertificates("certificate", cert, 1)
		if err != nil {
			return b, err.Error()
		}
		b.Thumbprint = certificateThumbprint(certs[0])
	case meshtoken.IsThumbprint(cert):
		b.Thumbprint = cert
	default:
		return b, "certificate must be a PEM certificate or its x5t#S256 (43 base64url characters)"
	}
	return b, ""
}

// generationReason checks a token's gen claim against the service's
// registration and revocation epoch: a token of an earlier registration of
// the name, or minted before the service's last revoke, never verifies.
func generationReason(e *serviceEntry, c *meshtoken.Claims) string {
	want := e.generation()
	if c.Generation == want {
		if want == "" && c.IssuedAt.Unix() <= e.RevokedBefore {
			return reasonServiceRevoked // an entry stored before gen existed
		}
		return ""
	}
	registration, _, _ := strings.Cut(c.Generation, ".")
	if registration != e.Registration {
		return reasonOtherRegistration
	}
	return reasonServiceRevoked
}

func (b *backend) pathVerify(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if resp := rejectUnknownFields(req, d); resp != nil {
		return resp, nil
	}
	raw := d.Get("token").(string)
	if raw == "" {
		return logical.ErrorResponse("token is required"), nil
	}
	binding, msg := bindingOf(d.Get("certificate").(string), d.Get("require_binding").(bool))
	if msg != "" {
		return logical.ErrorResponse(msg), nil
	}
	maxDepth := d.Get("max_delegation_depth").(int)
	if maxDepth < 0 || maxDepth > meshtoken.MaxActorDepth {
		return logical.ErrorResponse(fmt.Sprintf("max_delegation_depth must be 0 (no delegated tokens) to %d", meshtoken.MaxActorDepth)), nil
	}
	v, err := b.verifyToken(ctx, req.Storage, raw, d.Get("audience").(string))
	if err != nil {
		return nil, err
	}
	if v.reason == "" {
		v.reason = meshtoken.ReasonOf(binding.Check(v.parsed.claims))
	}
	if v.reason == "" {
		// The receiving service opts in to delegated tokens (path_exchange.go).
		v.reason = delegationDepthReason(v.parsed.claims, maxDepth)
	}
	if v.reason == "" && v.parsed.claims.Bound() {
		// A token bound to a certificate revoked since (cert_revocation.go).
		if v.reason, err = b.certificateRevokedReason(ctx, req.Storage, v.parsed.claims.Confirmation.X5tS256); err != nil {
			return nil, err
		}
	}
	if v.reason != "" {
		b.metrics.verified(v.reason)
		return &logical.Response{Data: map[string]any{"valid": false, "reason": v.reason}}, nil
	}
	b.metrics.verified(verificationResultGood)
	c := v.parsed.claims
	resp := &logical.Response{Data: map[string]any{
		"valid":      true,
		"service":    v.service,
		"claims":     payloadClaims(c),
		"expires_at": c.ExpiresAt.UTC().Format(time.RFC3339),
		"kid":        v.parsed.key.entry.KID,
	}}
	addActorsResponse(resp.Data, c) // an exchanged token's actor chain (path_exchange.go)
	return resp, nil
}

func (b *backend) pathRevoke(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if resp := rejectUnknownFields(req, d); resp != nil {
		return resp, nil
	}
	raw := d.Get("token").(string)
	if raw == "" {
		return logical.ErrorResponse("token is required"), nil
	}
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	ring, err := b.getKeyRing(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	now := b.now()
	parsed, reason := parseToken(raw, ring, cfg, "", now, false)
	switch {
	case reason == reasonExpired:
		return &logical.Response{Data: map[string]any{"revoked": false, "reason": "token already expired"}}, nil
	case reason != "":
		return logical.ErrorResponse(fmt.Sprintf("not a valid meshauth token of this engine (%s); nothing was revoked", reason)), nil
	case !jtiRe.MatchString(parsed.claims.ID):
		return logical.ErrorResponse("token's jti is not one this engine issues; nothing was revoked"), nil
	}
	entry := &revocationEntry{
		Version:   revocationVersion,
		Service:   serviceOfClaims(parsed.claims),
		ExpiresAt: parsed.claims.ExpiresAt.UTC(),
		RevokedAt: now.UTC(),
	}
	b.revokeLock.Lock()
	defer b.revokeLock.Unlock()
	if msg, err := b.roomForRevocation(ctx, req.Storage, parsed.claims.ID, cfg, now); msg != "" || err != nil {
		if err != nil {
			return nil, err
		}
		// A revocation is never refused for size: with the set full, the
		// token's whole service is revoked instead (a new epoch, one write
		// whatever the count), which ends this token with the others, online
		// and offline, and adds nothing to the feed's bounded lists.
		return b.revokeServiceForToken(ctx, req.Storage, entry.Service, parsed.claims, msg)
	}
	if err := writeEntry(ctx, req.Storage, storageRevokedPrefix+parsed.claims.ID, "revocation", entry, false); err != nil {
		return nil, err
	}
	// Only this jti changes: the set takes it in place, no reload.
	b.revoked.set(parsed.claims.ID, entry.ExpiresAt)
	b.feed.drop()
	b.Logger().Info("token revoked", "service", entry.Service, "jti", parsed.claims.ID)
	return &logical.Response{Data: map[string]any{
		"revoked":    true,
		"jti":        parsed.claims.ID,
		"service":    entry.Service,
		"expires_at": entry.ExpiresAt.Format(time.RFC3339),
	}}, nil
}

const verifyHelp = `
Answers valid=true with service, claims, expires_at and kid, or valid=false
with a reason. Give certificate (the caller's client certificate as the
resource server saw it, PEM or x5t#S256) to check a bound token's
cnf.x5t#S256, and require_binding=true to refuse unbound tokens. A token is valid only if its alg is the algorithm of the key
its kid names, that key is current, next or retired within verification_ttl,
the signature verifies, exp/nbf/iat hold within leeway, iss matches, audience
(when given) is in aud, the service exists and is not disabled, the token was
issued after the service's last revoke, and its jti is not revoked.

Reasons: malformed, too_large, algorithm_not_allowed, unknown_key,
algorithm_mismatch, unsupported_critical_header, bad_signature, expired,
not_yet_valid, issued_in_future, wrong_issuer, wrong_audience, missing_claim,
unknown_service, service_disabled, service_revoked, other_registration,
token_revoked, ambiguous_claims, unsupported_confirmation (a cnf that is not
one well-spelled x5t#S256, refused by every meshauth verifier alike),
certificate_mismatch, unbound_token, spiffe_id_not_registered,
identity_withdrawn (the service's trust domain is no longer registered, or a
JWT-SVID's service no longer gets SPIFFE subjects in config trust_domain),
certificate_revoked (the token is bound to a client certificate found revoked
after it logged in; see revocation_check), actor_withdrawn (an exchanged
token whose acting service was since disabled, revoked, deleted or
re-registered), delegation_not_allowed (a token with act, exchanged on a
caller's behalf, while max_delegation_depth is 0, the default, or smaller
than its chain: the verifying service opts in to delegated tokens). An
exchanged token (exchange/<name>) also fails with token_revoked when any
token it derives from (meshauth_derived_from) is revoked, and with
certificate_revoked when any certificate one of them was bound to
(meshauth_derived_cnf) is revoked; its answer
carries actors, the actor chain, outermost first.

A JWT-SVID (a service with token_subject=spiffe_id) has the SPIFFE ID in sub
and names its service in meshauth_service; it is valid only while that
service still lists a spiffe_ids entry matching sub.
`

const revokeHelp = `
The token must carry a valid meshauth signature. Its jti fails verify until the
token's exp, after which tidy drops the record. Offline verifiers learn of it
from the revocations feed. An expired token needs no
revocation and is acknowledged as such; revoking a revoked token again is a
no-op.

At most 20000 revoked tokens that have not yet expired are kept one by one
(every node holds them in memory, and the feed's size bound counts on it).
Past that a revoke is never refused: it revokes every token of the token's
service instead (as services/<name>/revoke does), answers service_revoked=true
and warns with the time the first revoked token expires and frees room. To
cut off every token of a service at once, use services/<name>/revoke.
`

// revokeServiceForToken ends a token by advancing its service's epoch, when
// the set of tokens revoked one by one is full. The answer says so, with why.
func (b *backend) revokeServiceForToken(ctx context.Context, s logical.Storage, name string, c *meshtoken.Claims, full string) (*logical.Response, error) {
	lock := b.serviceLock(name)
	lock.Lock()
	defer lock.Unlock()
	e, err := readService(ctx, s, name)
	if err != nil {
		return nil, err
	}
	if e == nil {
		// No service by that name (deleted): its tombstone already refuses
		// every token of the old registration.
		return &logical.Response{Data: map[string]any{"revoked": true, "jti": c.ID, "service": name, "service_revoked": true}}, nil
	}
	if generationReason(e, c) != "" {
		// A token of an earlier registration or epoch is refused already.
		return &logical.Response{Data: map[string]any{"revoked": true, "jti": c.ID, "service": name, "service_revoked": true}}, nil
	}
	now := b.now().UTC()
	e.advanceEpoch()
	e.RevokedBefore = now.Unix()
	e.UpdatedAt = now
	if err := b.putService(ctx, s, e); err != nil {
		return nil, err
	}
	b.Logger().Warn("revocation set full: revoked every token of the service instead of one", "service", name, "jti", c.ID)
	resp := &logical.Response{Data: map[string]any{
		"revoked":               true,
		"jti":                   c.ID,
		"service":               name,
		"service_revoked":       true,
		"tokens_revoked_before": now.Format(time.RFC3339),
	}}
	resp.AddWarning(full + " So every token of service " + name + " issued until now was revoked instead (as services/" + name + "/revoke does); it logs in again for new ones.")
	return resp, nil
}
