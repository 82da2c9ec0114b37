package meshauth

import (
	"context"
	"errors"
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
			HelpDescription: "Lists every key in the ring: kid, key_version, state (next, current, retired), algorithm, created_at, promoted_at (when it became current), retires_at (when a retired key leaves jwks) and the public JWK. Private keys never leave the engine.",
		},
		{
			Pattern:      "keys/rotate",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "rotate", OperationSuffix: "keys"},
					Callback:     b.pathKeysRotate,
					Summary:      "Promote the next key to current now and publish a new next key.",
				},
			},
			HelpSynopsis:    "Rotate the signing key now.",
			HelpDescription: "The next key (already published in jwks) becomes current; the current key retires and keeps verifying for verification_ttl; a new next key is generated and published. Rotation also runs on its own every key_rotation_period.",
		},
	}
}

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
	return &logical.Response{Data: map[string]any{
		"keys":        keys,
		"current_kid": ring.current.entry.KID,
	}}, nil
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

func (b *backend) pathKeysRotate(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	b.keyRingLock.Lock()
	entry, err := b.rotateKeyRingLocked(ctx, req.Storage, cfg, rotationRequested)
	b.keyRingLock.Unlock()
	var full *keyRingFullError
	if errors.As(err, &full) {
		return logical.ErrorResponse(full.Error()), nil
	}
	if err != nil {
		return nil, err
	}
	ring, err := parseKeyRing(entry)
	if err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]any{
		"current_kid": ring.current.entry.KID,
		"algorithm":   ring.current.entry.Algorithm,
	}}, nil
}
