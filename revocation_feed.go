package meshauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// feedStep is the step of the clock the feed is computed at: its iat is a
// multiple of it, and entries leave it at a multiple of it, so nodes whose
// clocks agree to within the step serve the same bytes, and the ETag stays
// the same within a step. A new feed is rendered every step, so a verifier
// counting staleness from iat sees the feed's age, not the age of the last
// change: a tenth of revocation_max_staleness (30s by default), at least a
// second and at most a minute.
func feedStep(cfg *configEntry) time.Duration {
	return min(max((cfg.RevocationMaxStaleness/10).Truncate(time.Second), time.Second), time.Minute)
}

// The feed's payload is meshtoken.Feed: one schema for the engine that
// writes it and the verifiers that read it. encoding/json writes map keys
// sorted, so the same stored state and minute always give the same bytes.

// feedBody is a rendered, signed feed.
type feedBody struct {
	// jws is the compact JWS served as the body.
	jws []byte
	// etag is the strong validator of jws, quoted.
	etag string
	// until is when an entry in it leaves, so it must be rendered again.
	until time.Time
}

// feedCache holds the rendered feed on one node: an epochValue loaded with
// loadFresh, so it is rendered once at a time, concurrent readers of an
// expired feed all served from the one render.
//
// What drops it: every write of the key ring (writeKeyRingLocked), of the
// config and of a service (dropService), every revoke and tidy of a token
// revocation on this node, and Vault's Invalidate of each of those storage
// keys on the other nodes (backend.invalidate). A render that began before
// a drop is not kept, and no reader after the drop is served from it, so a
// render never outlives a write. Past until (the next step, or sooner when
// an entry expires) it is rendered again.
type feedCache = epochValue[*feedBody]

// revocationFeed returns the signed feed, rendered from stored data only
// (the ring, config, services and revocations) and the clock at
// feedStep, so every node of a cluster renders the same bytes.
func (b *backend) revocationFeed(ctx context.Context, s logical.Storage) (*feedBody, error) {
	now := b.now()
	return b.feed.loadFresh(ctx, func(f *feedBody) bool { return now.Before(f.until) }, func() (*feedBody, error) {
		return b.renderFeed(ctx, s, now)
	})
}

// renderFeed builds and signs the feed at now.
func (b *backend) renderFeed(ctx context.Context, s logical.Storage, now time.Time) (*feedBody, error) {
	cfg, err := b.getConfig(ctx, s)
	if err != nil {
		return nil, err
	}
	ring, err := b.getKeyRing(ctx, s)
	if err != nil {
		return nil, err
	}
	step := feedStep(cfg)
	cutoff := now.Truncate(step)
	doc := &meshtoken.Feed{
		Issuer:   cfg.Issuer,
		IssuedAt: cutoff.Unix(),
		Tokens:   map[string]int64{},
		Services: map[string]meshtoken.FeedService{},
		Disabled: map[string]int64{},
		Keys:     map[string]int64{},

		Certificates: map[string]int64{},
	}
	// next is when the feed is rendered again: the next step (a new iat),
	// or sooner the first step at or after an entry's exp + leeway.
	next := cutoff.Add(step)
	live := func(exp time.Time) bool {
		gone := exp.Add(cfg.Leeway)
		if !cutoff.Before(gone) {
			return false
		}
		if step := ceilTime(gone, step); step.Before(next) {
			next = step
		}
		return true
	}

	tokens, err := b.revoked.snapshot(ctx, s)
	if err != nil {
		return nil, err
	}
	for jti, exp := range tokens {
		if live(exp) {
			doc.Tokens[jti] = exp.Unix()
		}
	}

	// A service's tokens minted before its epoch last advanced expire
	// within the longest verification_ttl any key recorded. UpdatedAt is
	// never before that advance (every write sets it), so it bounds the
	// listing safely, if sometimes longer than needed.
	ttl := cfg.verificationTTL()
	for _, k := range ring.keys {
		ttl = max(ttl, k.entry.MaxVerificationTTL)
	}
	names, err := s.List(ctx, storageServicePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing services: %w", err)
	}
	for _, name := range names {
		svc, err := b.getService(ctx, s, name)
		if err != nil {
			return nil, err
		}
		if svc == nil {
			continue
		}
		e := svc.entry
		exp := e.UpdatedAt.Add(ttl)
		if e.Registration != "" && e.RevocationEpoch > 0 && live(exp) {
			doc.Services[e.Name] = meshtoken.FeedService{Gen: e.generation(), Exp: exp.Unix()}
		}
		if e.Disabled && live(exp) {
			doc.Disabled[e.Name] = exp.Unix()
		}
	}

	// A deleted service: until its tokens have expired, a token of that
	// name is refused (Disabled) while the name is free, and one of another
	// registration is refused (Services) once the name is registered anew.
	deleted, err := s.List(ctx, storageDeletedPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing deleted services: %w", err)
	}
	for _, name := range deleted {
		tomb, err := readEntry[deletedService](ctx, s, storageDeletedPrefix+name, fmt.Sprintf("tombstone of service %q", name))
		if err != nil {
			return nil, err
		}
		if tomb == nil {
			continue
		}
		exp := tomb.DeletedAt.Add(ttl)
		if !live(exp) {
			continue
		}
		svc, err := b.getService(ctx, s, name)
		if err != nil {
			return nil, err
		}
		switch {
		case svc == nil:
			doc.Disabled[name] = max(doc.Disabled[name], exp.Unix())
		case svc.entry.Registration != "":
			listed := doc.Services[name]
			doc.Services[name] = meshtoken.FeedService{Gen: svc.entry.generation(), Exp: max(listed.Exp, exp.Unix())}
		}
	}

	for _, r := range ring.removed {
		// ListedUntil already covers every token; leeway is added like
		// any other entry's.
		if live(r.ListedUntil) {
			doc.Keys[r.KID] = r.ListedUntil.Unix()
		}
	}

	certs, err := b.certRevocation.revokedCertificates(ctx, s)
	if err != nil {
		return nil, err
	}
	for x5t, exp := range certs {
		if live(exp) {
			doc.Certificates[x5t] = exp.Unix()
		}
	}

	payload, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("encoding revocations: %w", err)
	}
	jws, err := signDeterministic(ring.current, meshtoken.RevocationsType, payload)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(jws)
	return &feedBody{
		jws:   jws,
		etag:  `"` + base64.RawURLEncoding.EncodeToString(sum[:18]) + `"`,
		until: next,
	}, nil
}

// maxServiceNames bounds the names a mount holds (meshtoken.
// MaxServiceNames); a variable so tests can lower it.
var maxServiceNames = meshtoken.MaxServiceNames

// serviceRoom refuses a new service when the mount already holds
// maxServiceNames names, registered or tombstoned: every such name may be
// listed in the revocation feed, and this bound is what keeps the feed
// within what every verifier reads (meshtoken.MaxFeedLength). Only creation
// is refused; disabling, revoking and deleting never are. Creations are
// serialised from the count to the write (backend.createLock, on the node
// that takes writes), so no race adds names past it.
func serviceRoom(ctx context.Context, s logical.Storage) (string, error) {
	live, err := s.List(ctx, storageServicePrefix)
	if err != nil {
		return "", fmt.Errorf("listing services: %w", err)
	}
	deleted, err := s.List(ctx, storageDeletedPrefix)
	if err != nil {
		return "", fmt.Errorf("listing deleted services: %w", err)
	}
	if n := len(live) + len(deleted); n >= maxServiceNames {
		return fmt.Sprintf("this mount holds %d service names (%d registered, %d deleted with tokens that may still be live), its most: every one may be listed in the revocation feed, which must stay small enough for every verifier to read. Delete unused services; a deleted name frees its room once tidy removes its tombstone after its tokens expire", n, len(live), len(deleted)), nil
	}
	return "", nil
}

// ceilTime rounds t up to a multiple of d.
func ceilTime(t time.Time, d time.Duration) time.Time {
	if r := t.Truncate(d); r.Equal(t) {
		return r
	}
	return t.Truncate(d).Add(d)
}

// snapshot returns every revoked jti with its token's exp, after reading
// what other nodes changed (pending marks). It reads storage only for the
// first load and for pending jtis.
func (r *revocationSet) snapshot(ctx context.Context, s logical.Storage) (map[string]time.Time, error) {
	if err := r.ensureLoaded(ctx, s); err != nil {
		return nil, err
	}
	if err := r.settlePending(ctx, s); err != nil {
		return nil, err
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make(map[string]time.Time, len(r.expires))
	for jti, exp := range r.expires {
		out[jti] = exp
	}
	return out, nil
}

// signDeterministic signs payload as a compact JWS with key, so that the
// same payload and key give the same bytes on every node: ECDSA with RFC
// 6979 nonces (a nil random source), Ed25519 and RSA PKCS #1 v1.5, which are
// deterministic by design. The feed is public data; determinism only makes
// its ETag agree across nodes.
func signDeterministic(key *signingKey, typ string, payload []byte) ([]byte, error) {
	headerB64 := base64.RawURLEncoding.EncodeToString(meshtoken.Header(key.entry.Algorithm, key.entry.KID, typ))
	jws, err := writeJWS(headerB64, base64.RawURLEncoding.AppendEncode(nil, payload), func(signingInput string) ([]byte, error) {
		return deterministicSignature(key, signingInput)
	})
	return []byte(jws), err
}

// deterministicSignature is the JWS signature of signingInput by key, the
// same bytes on every node (see signDeterministic).
func deterministicSignature(key *signingKey, signingInput string) ([]byte, error) {
	alg, ok := meshtoken.AlgorithmOf(key.entry.Algorithm)
	if !ok {
		return nil, fmt.Errorf("signing revocations: unsupported algorithm %q", key.entry.Algorithm)
	}
	var digest []byte
	if alg.Hash != 0 {
		h := alg.Hash.New()
		h.Write([]byte(signingInput))
		digest = h.Sum(nil)
	}
	var sig []byte
	switch k := key.signer.(type) {
	case *ecdsa.PrivateKey:
		der, err := k.Sign(nil, digest, alg.Hash)
		if err != nil {
			return nil, fmt.Errorf("signing revocations: %w", err)
		}
		var rs struct{ R, S *big.Int }
		if _, err := asn1.Unmarshal(der, &rs); err != nil {
			return nil, fmt.Errorf("signing revocations: %w", err)
		}
		size := (k.Curve.Params().BitSize + 7) / 8
		sig = make([]byte, 2*size)
		rs.R.FillBytes(sig[:size])
		rs.S.FillBytes(sig[size:])
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, []byte(signingInput))
	case *rsa.PrivateKey:
		var err error
		if sig, err = rsa.SignPKCS1v15(nil, k, alg.Hash, digest); err != nil {
			return nil, fmt.Errorf("signing revocations: %w", err)
		}
	default:
		return nil, errors.New("signing revocations: unsupported key type")
	}
	return sig, nil
}
