package meshauth

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// maxRemovedKeys bounds the removed keys the ring remembers. Each stays
// only while the revocation feed names it (removeKeyLocked), so the list
// holds the removals of about one verification_ttl; past this many the one
// that leaves the feed first goes early (it is out of jwks already, so a
// verifier that refetched jwks refuses its tokens regardless).
const maxRemovedKeys = meshtoken.MaxRemovedKeys

// removedKeyEntry records a key taken out of the ring at keys/<kid>/revoke.
type removedKeyEntry struct {
	// KID is the removed key's kid; no key is ever generated with it again.
	KID string `json:"kid"`
	// State is what the key was when removed: next, current or retired.
	State string `json:"state"`
	// RemovedAt is when it left the ring and jwks.
	RemovedAt time.Time `json:"removed_at"`
	// ListedUntil is when it leaves the revocation feed: every token it
	// signed has expired, and every verifier that honours jwks' max-age has
	// fetched a key set without it.
	ListedUntil time.Time `json:"listed_until"`
}

// pruneRemoved keeps the removals still listed at now, at most
// maxRemovedKeys of them, in a new slice.
func pruneRemoved(list []*removedKeyEntry, now time.Time) []*removedKeyEntry {
	var kept []*removedKeyEntry
	for _, r := range list {
		if now.Before(r.ListedUntil) {
			c := *r
			kept = append(kept, &c)
		}
	}
	for len(kept) > maxRemovedKeys {
		first := 0
		for i, r := range kept {
			if r.ListedUntil.Before(kept[first].ListedUntil) {
				first = i
			}
		}
		kept = slices.Delete(kept, first, first+1)
	}
	return kept
}

// keyNotFoundError says no key in the ring has the kid asked for.
type keyNotFoundError struct{ kid string }

func (e *keyNotFoundError) Error() string {
	return fmt.Sprintf("no signing key has kid %q; list them with a read of keys", e.kid)
}

// keyRemoval is what removeKeyLocked did.
type keyRemoval struct {
	removed *removedKeyEntry
	// already says the kid had been removed before; nothing changed.
	already bool
	// currentKID is the key that signs after the removal.
	currentKID string
}

// removeKeyLocked takes the key kid out of the ring at once: it leaves jwks,
// verify no longer finds it, and the revocation feed names it so offline
// verifiers holding an older jwks refuse its tokens too. A removed current
// key is replaced by a freshly generated current key (there is no time to
// publish one first; verifiers refetch on its unknown kid, istiod only at
// its next 20-minute fetch), a removed next key by a fresh next key. The
// count of keys never grows, so this works even when the ring is full. The
// caller holds keyRingLock.
func (b *backend) removeKeyLocked(ctx context.Context, s logical.Storage, cfg *configEntry, kid string) (*keyRemoval, error) {
	old, err := readKeyRingEntry(ctx, s)
	if err != nil {
		return nil, err
	}
	if old == nil {
		return nil, errNoKeyRing
	}
	now := b.now().UTC()
	for _, r := range old.Removed {
		if r.KID == kid {
			return &keyRemoval{removed: r, already: true}, nil
		}
	}
	inForce, err := b.getConfig(ctx, s)
	if err != nil {
		return nil, err
	}
	ttl := max(cfg.verificationTTL(), inForce.verificationTTL())
	entry := &keyRingEntry{Version: keyRingVersion, LastKeyVersion: old.LastKeyVersion, Removed: pruneRemoved(old.Removed, now)}
	var target *signingKeyEntry
	for _, k := range old.Keys {
		k := *k
		if k.KID == kid {
			target = &k
			continue
		}
		entry.Keys = append(entry.Keys, &k)
	}
	if target == nil {
		return nil, &keyNotFoundError{kid: kid}
	}
	// A verifier may hold a key set fetched just before the removal for
	// jwks' longest max-age, and an attacker with the key can mint tokens
	// with any exp: the feed names the key at least that long, and for a
	// key that signed, until its last legitimate token expired.
	listed := now.Add(maxJWKSCacheAge)
	switch target.State {
	case keyStateCurrent:
		listed = laterOf(listed, now.Add(max(ttl, target.MaxVerificationTTL)))
		fresh, err := entry.newKey(old, cfg.SigningAlgorithm, now)
		if err != nil {
			return nil, err
		}
		fresh.State, fresh.PromotedAt, fresh.MaxVerificationTTL = keyStateCurrent, now, ttl
		// Keep the next key last, as rotation leaves it.
		at := len(entry.Keys)
		if at > 0 && entry.Keys[at-1].State == keyStateNext {
			at--
		}
		entry.Keys = slices.Insert(entry.Keys, at, fresh)
	case keyStateRetired:
		listed = laterOf(listed, target.RetiresAt)
	case keyStateNext:
		fresh, err := entry.newKey(old, cfg.SigningAlgorithm, now)
		if err != nil {
			return nil, err
		}
		entry.Keys = append(entry.Keys, fresh)
	}
	removed := &removedKeyEntry{KID: kid, State: target.State, RemovedAt: now, ListedUntil: listed}
	entry.Removed = pruneRemoved(append(entry.Removed, removed), now)
	if err := b.writeKeyRingLocked(ctx, s, entry); err != nil {
		return nil, err
	}
	res := &keyRemoval{removed: removed}
	for _, k := range entry.Keys {
		if k.State == keyStateCurrent {
			res.currentKID = k.KID
		}
	}
	b.Logger().Warn("signing key removed", "kid", kid, "state", target.State, "current_kid", res.currentKID, "listed_until", listed.Format(time.RFC3339))
	return res, nil
}

// laterOf returns the later of two times.
func laterOf(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
