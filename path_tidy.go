package meshauth

import (
	"context"
	"fmt"
	"time"

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
	tombstones  int
}

func (b *backend) pathTidy(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	res, err := b.tidy(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]any{
		"revocations_removed": res.revocations,
		"keys_removed":        res.keys,
		"tombstones_removed":  res.tombstones,
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

	if res.tombstones, err = b.tidyDeletedServices(ctx, s, cfg, now); err != nil {
		return res, err
	}
	// Revoked client certificates whose tokens have all expired (path_crls.go).
	if err := b.certRevocation.tidyRevokedCertificates(ctx, s, now.Add(-cfg.Leeway)); err != nil {
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
	if res.keys+res.revocations+res.tombstones > 0 {
		b.Logger().Debug("tidy removed expired state", "revocations", res.revocations, "keys", res.keys, "tombstones", res.tombstones)
	}
	return res, nil
}

// tidyDeletedServices deletes the tombstones of deleted services whose last
// tokens have expired: the longest verification_ttl any key recorded, plus
// leeway, after the delete (the bound the revocation feed lists them for).
func (b *backend) tidyDeletedServices(ctx context.Context, s logical.Storage, cfg *configEntry, now time.Time) (int, error) {
	names, err := s.List(ctx, storageDeletedPrefix)
	if err != nil || len(names) == 0 {
		return 0, err
	}
	ttl := cfg.verificationTTL()
	if ring, err := b.getKeyRing(ctx, s); err == nil {
		for _, k := range ring.keys {
			ttl = max(ttl, k.entry.MaxVerificationTTL)
		}
	}
	removed := 0
	for _, name := range names {
		tomb, err := readEntry[deletedService](ctx, s, storageDeletedPrefix+name, fmt.Sprintf("tombstone of service %q", name))
		if err != nil {
			return removed, err
		}
		if tomb == nil || now.Before(tomb.DeletedAt.Add(ttl+cfg.Leeway)) {
			continue
		}
		if err := s.Delete(ctx, storageDeletedPrefix+name); err != nil {
			return removed, fmt.Errorf("deleting tombstone of service %q: %w", name, err)
		}
		removed++
	}
	if removed > 0 {
		b.feed.drop()
	}
	return removed, nil
}
