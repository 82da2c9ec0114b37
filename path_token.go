package meshauth

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// revocationVersion is the current layout of revocationEntry.
const revocationVersion = 1

// jtiRe is the form of the jtis meshauth issues (crypto/rand Text); a jti is
// used as a storage key only after its token's signature verified, and only
// if it has this form.
var jtiRe = regexp.MustCompile(`^[A-Z2-7]{26}$`)

// revocationEntry records one revoked token, stored at storageRevokedPrefix+jti.
type revocationEntry struct {
	// Version is the layout version of this entry.
	Version int `json:"version"`
	// Service is the revoked token's sub, for operators.
	Service string `json:"service"`
	// ExpiresAt is the token's exp; tidy drops the entry after it.
	ExpiresAt time.Time `json:"expires_at"`
	// RevokedAt is when the token was revoked.
	RevokedAt time.Time `json:"revoked_at"`
}

// revocationSet is every revoked jti and its token's expiry, in memory.
type revocationSet struct {
	expires map[string]time.Time
}

// pathToken declares verify and revoke.
func pathToken(b *backend) []*framework.Path {
	tokenField := &framework.FieldSchema{
		Type:         framework.TypeString,
		Description:  "The JWT. Required.",
		DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
	}
	return []*framework.Path{
		{
			Pattern: "verify",
			Fields: map[string]*framework.FieldSchema{
				"token": tokenField,
				"audience": {
					Type:        framework.TypeString,
					Description: "When given, the token's aud must contain it.",
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					Callback: b.pathVerify,
					Summary:  "Validate a token: signature, claims, service state and revocation.",
				},
			},
			HelpSynopsis:    "Validate a meshauth JWT online.",
			HelpDescription: verifyHelp,
		},
		{
			Pattern: "revoke",
			Fields:  map[string]*framework.FieldSchema{"token": tokenField},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					Callback: b.pathRevoke,
					Summary:  "Revoke one token before it expires.",
				},
			},
			HelpSynopsis:    "Revoke one token by its jti.",
			HelpDescription: "The token must carry a valid meshauth signature. Its jti fails verify until the token's exp, after which tidy drops the record. An expired token needs no revocation and is acknowledged as such.",
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
	name, reason := tokenServiceName(raw, parsed.claims)
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
	case svc.entry.Disabled:
		reason = reasonServiceDisabled
	case parsed.claims.IssuedAt.Unix() <= svc.entry.RevokedBefore:
		reason = reasonServiceRevoked
	}
	if reason != "" {
		return &verification{reason: reason}, nil
	}
	revoked, err := b.getRevoked(ctx, s)
	if err != nil {
		return nil, err
	}
	if _, ok := revoked.expires[parsed.claims.ID]; ok {
		return &verification{reason: reasonTokenRevoked}, nil
	}
	return &verification{parsed: parsed, service: name}, nil
}

func (b *backend) pathVerify(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if resp := rejectUnknownFields(req, d); resp != nil {
		return resp, nil
	}
	raw := d.Get("token").(string)
	if raw == "" {
		return logical.ErrorResponse("token is required"), nil
	}
	v, err := b.verifyToken(ctx, req.Storage, raw, d.Get("audience").(string))
	if err != nil {
		return nil, err
	}
	if v.reason != "" {
		b.metrics.verified(v.reason)
		return &logical.Response{Data: map[string]any{"valid": false, "reason": v.reason}}, nil
	}
	b.metrics.verified(verificationResultGood)
	c := v.parsed.claims
	return &logical.Response{Data: map[string]any{
		"valid":      true,
		"service":    v.service,
		"claims":     payloadClaims(raw),
		"expires_at": c.ExpiresAt.UTC().Format(time.RFC3339),
		"kid":        v.parsed.key.entry.KID,
	}}, nil
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
	raw2, err := logical.StorageEntryJSON(storageRevokedPrefix+parsed.claims.ID, entry)
	if err != nil {
		return nil, err
	}
	b.revokeLock.Lock()
	defer b.revokeLock.Unlock()
	if err := req.Storage.Put(ctx, raw2); err != nil {
		return nil, fmt.Errorf("writing revocation: %w", err)
	}
	b.revoked.dropAll()
	b.Logger().Info("token revoked", "service", entry.Service, "jti", parsed.claims.ID)
	return &logical.Response{Data: map[string]any{
		"revoked":    true,
		"jti":        parsed.claims.ID,
		"service":    entry.Service,
		"expires_at": entry.ExpiresAt.Format(time.RFC3339),
	}}, nil
}

// getRevoked returns the revoked jtis, loading them from storage once after
// every change (here or, through Invalidate, on another node).
func (b *backend) getRevoked(ctx context.Context, s logical.Storage) (*revocationSet, error) {
	return b.revoked.load("", func() (*revocationSet, error) {
		set := &revocationSet{expires: map[string]time.Time{}}
		jtis, err := s.List(ctx, storageRevokedPrefix)
		if err != nil {
			return nil, fmt.Errorf("listing revocations: %w", err)
		}
		for _, jti := range jtis {
			entry, err := readRevocation(ctx, s, jti)
			if err != nil {
				return nil, err
			}
			if entry != nil {
				set.expires[jti] = entry.ExpiresAt
			}
		}
		return set, nil
	})
}

// readRevocation reads one revocation, or (nil, nil) when absent.
func readRevocation(ctx context.Context, s logical.Storage, jti string) (*revocationEntry, error) {
	raw, err := s.Get(ctx, storageRevokedPrefix+jti)
	if err != nil {
		return nil, fmt.Errorf("reading revocation %q: %w", jti, err)
	}
	if raw == nil {
		return nil, nil
	}
	entry := &revocationEntry{}
	if err := raw.DecodeJSON(entry); err != nil {
		return nil, fmt.Errorf("decoding revocation %q: %w", jti, err)
	}
	return entry, nil
}

const verifyHelp = `
Answers valid=true with service, claims, expires_at and kid, or valid=false
with a reason. A token is valid only if its alg is the algorithm of the key
its kid names, that key is current, next or retired within verification_ttl,
the signature verifies, exp/nbf/iat hold within leeway, iss matches, audience
(when given) is in aud, the service exists and is not disabled, the token was
issued after the service's last revoke, and its jti is not revoked.

Reasons: malformed, too_large, algorithm_not_allowed, unknown_key,
algorithm_mismatch, unsupported_critical_header, bad_signature, expired,
not_yet_valid, issued_in_future, wrong_issuer, wrong_audience, missing_claim,
unknown_service, service_disabled, service_revoked, token_revoked,
spiffe_id_not_registered.

A JWT-SVID (a service with token_subject=spiffe_id) has the SPIFFE ID in sub
and names its service in meshauth_service; it is valid only while that
service still lists a spiffe_ids entry matching sub.
`
