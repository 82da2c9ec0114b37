package meshauth

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// pathKeys declares keys and keys/rotate.
func pathKeys(b *backend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern:      "keys/?$",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "keys"},
					Callback:     b.pathKeysRead,
					Summary:      "List signing key versions with their state and public key.",
				},
			},
			HelpSynopsis:    "Signing key versions and their public keys.",
			HelpDescription: "Lists every key in the ring: kid, key_version, state (next, current, retired), algorithm, created_at (when it was published in jwks), promoted_at (when it became current), retires_at (when a retired key leaves jwks) and the public JWK; next_kid and next_signs_from (created_at + min_publication_age, the earliest a rotation may promote it); and removed_keys (taken out at keys/<kid>/revoke, with listed_until, when they leave the revocations feed). Private keys never leave the engine.",
		},
		{
			Pattern:      "keys/rotate",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields: map[string]*framework.FieldSchema{
				"force": {
					Type:        framework.TypeBool,
					Description: "Promote the next key now even if it has been in jwks for less than min_publication_age (for a compromised current key). Cost: verifiers that cached the key set before the next key was published (istiod for up to 20 minutes, Envoy remote_jwks for its cache_duration, HTTP caches for jwks' max-age) refuse every new token until they refetch. Default: false.",
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "rotate", OperationSuffix: "keys"},
					Callback:     b.pathKeysRotate,
					Summary:      "Promote the next key to current and publish a new next key, once the next key has been published min_publication_age.",
				},
			},
			HelpSynopsis:    "Rotate the signing key.",
			HelpDescription: keysRotateHelp,
		},
		{
			Pattern:      "keys/" + kidPattern + "/revoke",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields: map[string]*framework.FieldSchema{
				"kid": {
					Type:        framework.TypeString,
					Description: "The kid of the key to remove, as keys lists it.",
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "revoke", OperationSuffix: "key"},
					Callback:     b.pathKeyRevoke,
					Summary:      "Remove a compromised signing key at once: it leaves jwks and nothing it signed verifies again.",
				},
			},
			HelpSynopsis:    "Emergency removal of a signing key.",
			HelpDescription: keyRevokeHelp,
		},
	}
}

// kidPattern matches a kid in a path: an RFC 7638 thumbprint is 43
// base64url characters.
const kidPattern = `(?P<kid>[A-Za-z0-9_-]{1,128})`

const keysRotateHelp = `
The next key (already published in jwks) becomes current; the current key
retires and keeps verifying for verification_ttl; a new next key is generated
and published. Rotation also runs on its own every key_rotation_period.

No key signs before it has been in jwks for min_publication_age (default 1h):
istiod fetches jwks every 20 minutes and does not refetch on an unknown kid,
so a key that signed sooner would make Istio-fronted services refuse every new
token. A rotation asked for earlier is refused with the time from which it is
allowed; a scheduled rotation waits for it. A change of signing_algorithm
publishes a next key of the new algorithm, which waits the same way.

force=true promotes the next key at once, for a compromised current key. The
cost: verifiers that fetched the key set before the next key was published
(istiod up to 20 minutes, Envoy remote_jwks its cache_duration, HTTP caches
jwks' max-age, at most 1h) refuse every new token until they refetch. To take
a key out of jwks and end every token it signed, use keys/<kid>/revoke.

The ring, and so jwks, holds at most 20 keys; a rotation that would exceed
that is refused with the time when room frees up. keys/<kid>/revoke always
works.
`

const keyRevokeHelp = `
Takes the key out of the ring at once: it leaves jwks and spiffe/bundle, verify
answers unknown_key for every token it signed, and the revocations feed names
its kid until every token it signed has expired and every verifier has
refetched jwks (at least 1h), so offline verifiers that still hold it refuse
its tokens too.

Removing the current key makes a freshly generated key sign at once (there is
no time to publish it first): verifiers refetch on its unknown kid, but istiod
only at its next fetch (up to 20 minutes), during which Istio-fronted services
refuse new tokens. Removing the next key publishes a fresh next key, which
waits min_publication_age like any other. Removing a retired key only removes
it. A removed kid is never used again; removing it twice is a no-op.

This always works, even when the ring holds 20 keys. A Vault snapshot restored
from before the removal brings the key back: remove it again after a restore.
`

func (b *backend) pathKeysRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	ring, err := b.getKeyRing(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	now := b.now()
	keys := make([]map[string]any, 0, len(ring.keys))
	for _, k := range ring.keys {
		if !k.usableAt(now) {
			continue
		}
		keys = append(keys, describeKey(k))
	}
	removed := make([]map[string]any, 0, len(ring.removed))
	for _, r := range ring.removed {
		if now.Before(r.ListedUntil) {
			removed = append(removed, map[string]any{
				"kid":          r.KID,
				"state":        r.State,
				"removed_at":   r.RemovedAt.Format(time.RFC3339),
				"listed_until": r.ListedUntil.Format(time.RFC3339),
			})
		}
	}
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	data := map[string]any{
		"keys":         keys,
		"current_kid":  ring.current.entry.KID,
		"removed_keys": removed,
	}
	for _, k := range ring.keys {
		if k.entry.State == keyStateNext {
			data["next_kid"] = k.entry.KID
			data["next_signs_from"] = k.entry.CreatedAt.Add(cfg.MinPublicationAge).Format(time.RFC3339)
		}
	}
	return &logical.Response{Data: data}, nil
}

// describeKey renders one key version without its private part.
func describeKey(k *signingKey) map[string]any {
	out := map[string]any{
		"kid":         k.entry.KID,
		"key_version": k.entry.KeyVersion,
		"state":       k.entry.State,
		"algorithm":   k.entry.Algorithm,
		"created_at":  k.entry.CreatedAt.Format(time.RFC3339),
		"promoted_at": nil,
		"retires_at":  nil,
		"public_key":  k.jwk,
	}
	if !k.entry.PromotedAt.IsZero() {
		out["promoted_at"] = k.entry.PromotedAt.Format(time.RFC3339)
	}
	if !k.entry.RetiresAt.IsZero() {
		out["retires_at"] = k.entry.RetiresAt.Format(time.RFC3339)
	}
	return out
}

func (b *backend) pathKeysRotate(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if resp := rejectUnknownFields(req, d); resp != nil {
		return resp, nil
	}
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	b.keyRingLock.Lock()
	res, err := b.rotateKeyRingLocked(ctx, req.Storage, cfg, rotationRequested, d.Get("force").(bool))
	b.keyRingLock.Unlock()
	var full *keyRingFullError
	var early *notYetPublishedError
	switch {
	case errors.As(err, &full):
		return logical.ErrorResponse(full.Error()), nil
	case errors.As(err, &early):
		return logical.ErrorResponse(early.Error()), nil
	case err != nil:
		return nil, err
	}
	ring, err := parseKeyRing(res.entry)
	if err != nil {
		return nil, err
	}
	resp := &logical.Response{Data: map[string]any{
		"current_kid": ring.current.entry.KID,
		"algorithm":   ring.current.entry.Algorithm,
		"rotated":     res.promoted,
	}}
	if !res.promoted {
		resp.AddWarning(fmt.Sprintf("the next key had another algorithm than signing_algorithm; a %s next key is published now and may sign from %s", cfg.SigningAlgorithm, res.signsAt.UTC().Format(time.RFC3339)))
	}
	return resp, nil
}

func (b *backend) pathKeyRevoke(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if resp := rejectUnknownFields(req, d); resp != nil {
		return resp, nil
	}
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	b.keyRingLock.Lock()
	res, err := b.removeKeyLocked(ctx, req.Storage, cfg, d.Get("kid").(string))
	b.keyRingLock.Unlock()
	var missing *keyNotFoundError
	if errors.As(err, &missing) {
		return logical.ErrorResponse(missing.Error()), nil
	}
	if err != nil {
		return nil, err
	}
	data := map[string]any{
		"kid":          res.removed.KID,
		"state":        res.removed.State,
		"removed_at":   res.removed.RemovedAt.Format(time.RFC3339),
		"listed_until": res.removed.ListedUntil.Format(time.RFC3339),
		"already":      res.already,
	}
	if !res.already {
		data["current_kid"] = res.currentKID
	}
	return &logical.Response{Data: data}, nil
}
