package meshauth

import (
	"context"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// revocationVersion is the current layout of revocationEntry.
const revocationVersion = 1

// maxRevocations bounds the tokens revoked one by one and not yet expired.
// Every revocation is its own storage entry, so the bound is not about Raft's
// entry size: it caps each node's in-memory set (under 100 bytes a token,
// about 2 MiB at the limit), the one-time load when a node first verifies
// (one read per entry), and the size of any document that lists them. A
// revoked token drops out when it expires, so the limit is on revocations
// live at once; more than this many tokens to cut off is a job for
// services/<name>/revoke, which costs one write whatever the count.
const maxRevocations = meshtoken.MaxRevokedTokens

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

// revocationSet is every revoked jti and its token's expiry, in memory,
// kept up to date one entry at a time.
//
// How it stays true, and why no verify can cache a stale "not revoked":
//
//   - The whole set is read from storage once, on the first lookup after the
//     node starts (or after cleanup). Everything after that is incremental.
//   - A revoke or tidy on this node writes storage first and then applies
//     exactly that jti (set, forget): no storage read follows.
//   - A write on another node reaches this one only as Vault's Invalidate
//     with the key revoked/<jti>, and no value. invalidate marks that jti
//     pending with a fresh sequence number; the next lookup of that jti reads
//     that one entry (one storage Get) and applies it. Lookups of other jtis
//     still answer from memory. Marks of tokens nobody presents again are
//     settled in batches of maxPending, so they cannot pile up.
//   - A pending read happens outside the lock, so it can race a later write
//     of the same jti. The read result is stored only if the jti's pending
//     mark is still the one the read began under; any set, forget or
//     invalidate in between replaces or removes the mark, so the result is
//     dropped and the jti stays pending (or holds the newer value). The
//     verify that made the read answers from what it read, which is as new
//     as storage was after that verify began.
//   - The full load also runs outside the lock. Invalidations during it leave
//     pending marks, which outlive the load, so each such jti is read again.
//     Marks older than the load's start are cleared when it is installed:
//     the load's own List and Gets already saw those writes. A cleanup during
//     the load bumps the generation, and the load is then not installed.
type revocationSet struct {
	// loadMu lets one full load run at a time; others wait for it.
	loadMu sync.Mutex

	mu sync.RWMutex
	// loaded says expires holds the whole stored set (plus later changes).
	loaded bool
	// generation advances on reset, so a load from before it is discarded.
	generation uint64
	// seq numbers pending marks; each mark is unique.
	seq uint64
	// expires maps each revoked jti to its token's exp.
	expires map[string]time.Time
	// pending holds jtis changed elsewhere and not yet re-read, with the
	// sequence number of their latest mark.
	pending map[string]uint64
}

// newRevocationSet returns an empty set that loads on first use.
func newRevocationSet() *revocationSet {
	return &revocationSet{expires: map[string]time.Time{}, pending: map[string]uint64{}}
}

// maxPending is how many jtis may await a re-read before a verify re-reads
// them all. A jti another node changed is re-read when it is next verified,
// but most revoked tokens are never presented again: without this bound the
// marks of a long-running standby would grow with every revoke it hears of.
// Settling them in batches keeps the cost at one read per revoke, however
// it is spread.
const maxPending = 64

// isRevoked reports whether jti is revoked. It reads storage only for the
// first lookup on a node (the whole set once), for a jti that Invalidate
// marked since it was last read (that entry only), and when maxPending marks
// have piled up (each of those entries once).
func (r *revocationSet) isRevoked(ctx context.Context, s logical.Storage, jti string) (bool, error) {
	if err := r.ensureLoaded(ctx, s); err != nil {
		return false, err
	}
	r.mu.RLock()
	_, revoked := r.expires[jti]
	mark, isPending := r.pending[jti]
	backlog := len(r.pending)
	r.mu.RUnlock()
	if isPending {
		var err error
		if revoked, err = r.refresh(ctx, s, jti, mark); err != nil {
			return false, err
		}
	}
	if backlog >= maxPending {
		if err := r.settlePending(ctx, s); err != nil {
			return false, err
		}
	}
	return revoked, nil
}

// refresh reads one pending jti and applies what it read, unless the jti
// was marked again or written here since mark: then the read may predate
// that write, and the jti stays pending (or keeps the newer value). It
// returns what it read, which is as new as storage after the call began.
func (r *revocationSet) refresh(ctx context.Context, s logical.Storage, jti string, mark uint64) (bool, error) {
	entry, err := readRevocation(ctx, s, jti)
	if err != nil {
		return false, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur, ok := r.pending[jti]; ok && cur == mark {
		delete(r.pending, jti)
		if entry != nil {
			r.expires[jti] = entry.ExpiresAt
		} else {
			delete(r.expires, jti)
		}
	}
	return entry != nil, nil
}

// settlePending re-reads every pending jti.
func (r *revocationSet) settlePending(ctx context.Context, s logical.Storage) error {
	r.mu.RLock()
	marks := make(map[string]uint64, len(r.pending))
	for jti, mark := range r.pending {
		marks[jti] = mark
	}
	r.mu.RUnlock()
	for jti, mark := range marks {
		if _, err := r.refresh(ctx, s, jti, mark); err != nil {
			return err
		}
	}
	return nil
}

// ensureLoaded reads every stored revocation once.
func (r *revocationSet) ensureLoaded(ctx context.Context, s logical.Storage) error {
	r.mu.RLock()
	loaded := r.loaded
	r.mu.RUnlock()
	if loaded {
		return nil
	}
	r.loadMu.Lock()
	defer r.loadMu.Unlock()
	for {
		r.mu.RLock()
		loaded, generation, start := r.loaded, r.generation, r.seq
		r.mu.RUnlock()
		if loaded {
			return nil
		}
		read, err := loadRevocations(ctx, s)
		if err != nil {
			return err
		}
		if r.install(read, generation, start) {
			return nil
		}
		// A reset happened while reading (the mount was cleaned up): what
		// was read may predate it, so read again rather than answer from it.
	}
}

// install makes read the set, unless a reset happened since generation.
// Marks made before start are settled by read (its List and Gets came after
// them); marks made during the load stay, so those jtis are read again.
func (r *revocationSet) install(read map[string]time.Time, generation, start uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.generation != generation {
		return false
	}
	for jti, mark := range r.pending {
		if mark <= start {
			delete(r.pending, jti)
		}
	}
	for jti := range r.pending {
		delete(read, jti)
		if exp, ok := r.expires[jti]; ok {
			read[jti] = exp
		}
	}
	r.expires = read
	r.loaded = true
	return true
}

// loadRevocations reads every stored revocation: one List and one Get each.
func loadRevocations(ctx context.Context, s logical.Storage) (map[string]time.Time, error) {
	jtis, err := s.List(ctx, storageRevokedPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing revocations: %w", err)
	}
	read := make(map[string]time.Time, len(jtis))
	for _, jti := range jtis {
		entry, err := readRevocation(ctx, s, jti)
		if err != nil {
			return nil, err
		}
		if entry != nil {
			read[jti] = entry.ExpiresAt
		}
	}
	return read, nil
}

// apply records a change this node wrote to storage: exp for a revocation,
// the zero time for a removal. It must run after the storage write.
func (r *revocationSet) apply(jti string, exp time.Time, present bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if present {
		r.expires[jti] = exp
	} else {
		delete(r.expires, jti)
	}
	if r.loaded {
		// Known exactly: no read needed, and a read in flight that began
		// before this write must not store its older answer.
		delete(r.pending, jti)
		return
	}
	// A load may be in flight and may have read the entry before this
	// write: mark it so the load does not install the old value and the
	// next lookup reads it once.
	r.seq++
	r.pending[jti] = r.seq
}

// set records a revocation written on this node.
func (r *revocationSet) set(jti string, exp time.Time) { r.apply(jti, exp, true) }

// forget records a revocation deleted on this node.
func (r *revocationSet) forget(jti string) { r.apply(jti, time.Time{}, false) }

// invalidate marks jti as changed by another node; the next lookup of it
// reads that one entry.
func (r *revocationSet) invalidate(jti string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	r.pending[jti] = r.seq
}

// reset forgets everything; the next lookup loads the whole set again.
func (r *revocationSet) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.generation++
	r.seq++
	r.loaded = false
	clear(r.expires)
	clear(r.pending)
}

// size is the number of revocations in memory (live or awaiting tidy).
func (r *revocationSet) size() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.expires)
}

// expired returns the jtis whose tokens expired before cutoff, and the
// earliest expiry among the others (zero when there is none).
func (r *revocationSet) expired(cutoff time.Time) ([]string, time.Time) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []string
	var earliest time.Time
	for jti, exp := range r.expires {
		if exp.Before(cutoff) {
			out = append(out, jti)
		} else if earliest.IsZero() || exp.Before(earliest) {
			earliest = exp
		}
	}
	return out, earliest
}

// readRevocation reads one revocation, or (nil, nil) when absent.
func readRevocation(ctx context.Context, s logical.Storage, jti string) (*revocationEntry, error) {
	return readEntry[revocationEntry](ctx, s, storageRevokedPrefix+jti, fmt.Sprintf("revocation %q", jti))
}

// tidyRevocations deletes the revocations of tokens expired beyond leeway
// and returns how many it deleted and the earliest expiry of those kept.
// Callers serialise it with revokeLock.
func (b *backend) tidyRevocations(ctx context.Context, s logical.Storage, now time.Time, leeway time.Duration) (int, time.Time, error) {
	if err := b.revoked.ensureLoaded(ctx, s); err != nil {
		return 0, time.Time{}, err
	}
	gone, earliest := b.revoked.expired(now.Add(-leeway))
	for i, jti := range gone {
		if err := s.Delete(ctx, storageRevokedPrefix+jti); err != nil {
			return i, earliest, fmt.Errorf("deleting revocation: %w", err)
		}
		b.revoked.forget(jti)
		b.feed.drop()
	}
	return len(gone), earliest, nil
}

// revokeFullMessage tells an operator why a revoke ended the whole service
// instead of one token, and when room frees up.
func revokeFullMessage(earliest time.Time, leeway time.Duration) string {
	msg := fmt.Sprintf("this token could not be revoked alone: %d tokens are already revoked and not yet expired, the most this engine keeps "+
		"(every node holds them in memory, and the revocation feed's size bound counts on it). "+
		"Room frees up as revoked tokens expire and tidy removes them", maxRevocations)
	if !earliest.IsZero() {
		msg += fmt.Sprintf(", the first at %s", earliest.Add(leeway).UTC().Format(time.RFC3339))
	}
	return msg + "."
}

// roomForRevocation returns a message for the caller when the set is full of
// live revocations, after tidying expired ones to make room. Revoking a jti
// that is already revoked always has room. The caller holds revokeLock.
func (b *backend) roomForRevocation(ctx context.Context, s logical.Storage, jti string, cfg *configEntry, now time.Time) (string, error) {
	if revoked, err := b.revoked.isRevoked(ctx, s, jti); err != nil || revoked {
		return "", err
	}
	if b.revoked.size() < maxRevocations {
		return "", nil
	}
	_, earliest, err := b.tidyRevocations(ctx, s, now, cfg.Leeway)
	if err != nil {
		return "", err
	}
	if b.revoked.size() < maxRevocations {
		return "", nil
	}
	return revokeFullMessage(earliest, cfg.Leeway), nil
}
