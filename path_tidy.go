package meshauth

import (
	"context"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// pathTidy declares tidy.
func pathTidy(b *backend) []*framework.Path {
	return []*framework.Path{{
		Pattern:      "tidy",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "tidy"},
				Callback:     b.pathTidy,
				Summary:      "Drop revocations of expired tokens and retired keys past verification_ttl.",
			},
		},
		HelpSynopsis:    "Prune expired state now.",
		HelpDescription: "Deletes revocation records whose token has expired (beyond leeway) and signing keys retired longer than verification_ttl. It also runs about once a minute on the active node.",
	}}
}

// tidyResult counts what a tidy removed.
type tidyResult struct {
	revocations int
	keys        int
}

func (b *backend) pathTidy(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	res, err := b.tidy(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]any{
		"revocations_removed": res.revocations,
		"keys_removed":        res.keys,
	}}, nil
}

// tidy removes expired revocations and retired keys. Revocations are taken
// from this node's set under revokeLock (the active node applies every
// revoke to it, so it is complete), and each deletion is applied to the set
// after the Delete; the key ring is re-read under keyRingLock, so two tidies
// at once, or a tidy and a rotation, are safe.
func (b *backend) tidy(ctx context.Context, s logical.Storage) (tidyResult, error) {
	var res tidyResult
	cfg, err := b.getConfig(ctx, s)
	if err != nil {
		return res, err
	}
	now := b.now()
	b.revokeLock.Lock()
	res.revocations, _, err = b.tidyRevocations(ctx, s, now, cfg.Leeway)
	b.revokeLock.Unlock()
	if err != nil {
		return res, err
	}

	b.keyRingLock.Lock()
	defer b.keyRingLock.Unlock()
	entry, err := readKeyRingEntry(ctx, s)
	if err != nil || entry == nil {
		return res, err
	}
	kept := entry.Keys[:0:0]
	for _, k := range entry.Keys {
		if k.State == keyStateRetired && !now.Before(k.RetiresAt) {
			res.keys++
			continue
		}
		kept = append(kept, k)
	}
	removed := pruneRemoved(entry.Removed, now)
	if res.keys > 0 || len(removed) != len(entry.Removed) {
		// Removed keys stay removed: only their listing in the feed ends.
		entry.Keys, entry.Removed = kept, removed
		if err := b.writeKeyRingLocked(ctx, s, entry); err != nil {
			return res, err
		}
	}
	if res.keys+res.revocations > 0 {
		b.Logger().Debug("tidy removed expired state", "revocations", res.revocations, "keys", res.keys)
	}
	return res, nil
}
