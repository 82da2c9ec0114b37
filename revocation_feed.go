package meshauth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// feedType is the typ header of the revocations feed: a JWS whose payload
// is a feedDocument, signed by the current key and verified with jwks.
const feedType = "meshauth-revocations+jwt"

// feedGranularity is the step of the clock the feed is computed at. Entries
// leave the feed at a whole minute, so nodes whose clocks agree to within
// the step serve the same bytes, and the ETag stays the same for as long as
// nothing is revoked or expires.
const feedGranularity = time.Minute

// maxFeedCacheLife bounds how long a rendered feed is kept when nothing in
// it expires; every stored change drops it sooner.
const maxFeedCacheLife = time.Hour

// feedDocument is the payload of the revocations feed. Every map is keyed by
// the name a verifier looks up; encoding/json writes map keys sorted, so the
// same stored state always gives the same bytes. Every entry carries exp
// (Unix seconds): past exp plus the verifier's leeway it can no longer
// refuse anything, and the engine drops it.
type feedDocument struct {
	// Issuer is iss, the engine's issuer, as in the tokens.
	Issuer string `json:"iss"`
	// Tokens maps each revoked jti to its token's exp.
	Tokens map[string]int64 `json:"tokens"`
	// Services maps a service whose tokens were revoked (services/<name>/
	// revoke, or a disable) to its current gen: a token of that service
	// whose gen claim is another value is revoked.
	Services map[string]feedService `json:"services"`
	// Disabled maps each disabled service to the exp of its last token.
	Disabled map[string]int64 `json:"disabled"`
	// Keys maps each kid removed at keys/<kid>/revoke to when it leaves the
	// feed: every token that names it is refused.
	Keys map[string]int64 `json:"keys"`
	// Certificates maps the x5t#S256 of each revoked client certificate
	// that logged in to the exp of the last token bound to it
	// (cert_revocation.go): every token whose cnf names it is refused.
	Certificates map[string]int64 `json:"certificates"`
}

// feedService is one service in the feed.
type feedService struct {
	Gen string `json:"gen"`
	Exp int64  `json:"exp"`
}

// feedBody is a rendered, signed feed.
type feedBody struct {
	// jws is the compact JWS served as the body.
	jws []byte
	// etag is the strong validator of jws, quoted.
	etag string
	// until is when an entry in it leaves, so it must be rendered again.
	until time.Time
}

// feedCache holds the rendered feed on one node.
//
// What drops it: every write of the key ring (writeKeyRingLocked), of the
// config and of a service (dropService), every revoke and tidy of a token
// revocation on this node, and Vault's Invalidate of each of those storage
// keys on the other nodes (backend.invalidate). A render reads the epoch
// before it reads anything, and its result is kept only if no drop came in
// between, so a render that began before a write never outlives the write.
// Past until (the first whole minute at which an entry expires) it is
// rendered again.
type feedCache struct {
	mu    sync.Mutex
	epoch uint64
	body  *feedBody
}

// get returns the cached body if still valid at now, and the epoch to hand
// to fill.
func (c *feedCache) get(now time.Time) (*feedBody, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.body != nil && now.Before(c.body.until) {
		return c.body, c.epoch
	}
	return nil, c.epoch
}

// fill keeps body unless a drop happened since epoch.
func (c *feedCache) fill(body *feedBody, epoch uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.epoch == epoch {
		c.body = body
	}
}

// drop forgets the body and invalidates every render in flight.
func (c *feedCache) drop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	c.body = nil
}

// revocationFeed returns the signed feed, rendered from stored data only
// (the ring, config, services and revocations) and the clock at
// feedGranularity, so every node of a cluster renders the same bytes.
func (b *backend) revocationFeed(ctx context.Context, s logical.Storage) (*feedBody, error) {
	now := b.now()
	cached, epoch := b.feed.get(now)
	if cached != nil {
		return cached, nil
	}
	body, err := b.renderFeed(ctx, s, now)
	if err != nil {
		return nil, err
	}
	b.feed.fill(body, epoch)
	return body, nil
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
	cutoff := now.Truncate(feedGranularity)
	doc := &feedDocument{
		Issuer:   cfg.Issuer,
		Tokens:   map[string]int64{},
		Services: map[string]feedService{},
		Disabled: map[string]int64{},
		Keys:     map[string]int64{},

		Certificates: map[string]int64{},
	}
	// next is the earliest time an entry leaves: the first step at or
	// after its exp + leeway.
	next := cutoff.Add(maxFeedCacheLife)
	live := func(exp time.Time) bool {
		gone := exp.Add(cfg.Leeway)
		if !cutoff.Before(gone) {
			return false
		}
		if step := ceilTime(gone, feedGranularity); step.Before(next) {
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
			doc.Services[e.Name] = feedService{Gen: e.generation(), Exp: exp.Unix()}
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
			doc.Services[name] = feedService{Gen: svc.entry.generation(), Exp: max(listed.Exp, exp.Unix())}
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
	jws, err := signDeterministic(ring.current, feedType, payload)
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
	header, err := json.Marshal(map[string]string{"alg": key.entry.Algorithm, "kid": key.entry.KID, "typ": typ})
	if err != nil {
		return nil, err
	}
	var sb strings.Builder
	sb.WriteString(base64.RawURLEncoding.EncodeToString(header))
	sb.WriteByte('.')
	sb.WriteString(base64.RawURLEncoding.EncodeToString(payload))
	signingInput := sb.String()
	var sig []byte
	switch k := key.signer.(type) {
	case *ecdsa.PrivateKey:
		var digest []byte
		var hash crypto.Hash
		switch key.entry.Algorithm {
		case algES256:
			d := sha256.Sum256([]byte(signingInput))
			digest, hash = d[:], crypto.SHA256
		case algES384:
			d := sha512.Sum384([]byte(signingInput))
			digest, hash = d[:], crypto.SHA384
		default:
			return nil, fmt.Errorf("no ECDSA hash for %s", key.entry.Algorithm)
		}
		der, err := k.Sign(nil, digest, hash)
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
		d := sha256.Sum256([]byte(signingInput))
		if sig, err = rsa.SignPKCS1v15(nil, k, crypto.SHA256, d[:]); err != nil {
			return nil, fmt.Errorf("signing revocations: %w", err)
		}
	default:
		return nil, errors.New("signing revocations: unsupported key type")
	}
	sb.WriteByte('.')
	sb.WriteString(base64.RawURLEncoding.EncodeToString(sig))
	return []byte(sb.String()), nil
}
