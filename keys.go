package meshauth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/hashicorp/vault/sdk/logical"
)

// The JOSE algorithms meshauth signs with. Nothing else is ever accepted:
// not none, not HMAC, not an algorithm other than the one bound to a kid.
const (
	algES256 = "ES256"
	algES384 = "ES384"
	algEdDSA = "EdDSA"
	algRS256 = "RS256"
)

// supportedAlgorithms lists the signing algorithms in the order help shows them.
var supportedAlgorithms = []string{algES256, algES384, algEdDSA, algRS256}

// Key states in the ring.
const (
	keyStateNext    = "next"
	keyStateCurrent = "current"
	keyStateRetired = "retired"
)

// keyRingVersion is the current layout of keyRingEntry.
const keyRingVersion = 1

// rsaKeyBits is the modulus size of RS256 keys.
const rsaKeyBits = 2048

// errNoKeyRing means the engine has no signing key yet (Initialize did not run
// on a node that could write).
var errNoKeyRing = errors.New("the engine has no signing key yet; write to keys/rotate on the active node to create one")

// isSupportedAlgorithm reports whether alg is one meshauth signs with.
func isSupportedAlgorithm(alg string) bool {
	return slices.Contains(supportedAlgorithms, alg)
}

// keyRingEntry is the stored key ring, private keys included. It lives in one
// seal-wrapped entry so that every rotation is a single atomic write.
type keyRingEntry struct {
	// Version is the layout version of this entry.
	Version int `json:"version"`
	// LastKeyVersion is the highest key version ever issued; versions are
	// never reused.
	LastKeyVersion int `json:"last_key_version"`
	// Keys holds every key still in the ring, oldest first.
	Keys []*signingKeyEntry `json:"keys"`
}

// signingKeyEntry is one signing key version.
type signingKeyEntry struct {
	// KeyVersion numbers keys in the order they were made.
	KeyVersion int `json:"key_version"`
	// KID is the RFC 7638 thumbprint of the public key.
	KID string `json:"kid"`
	// Algorithm is the one JOSE alg this key signs and verifies with.
	Algorithm string `json:"algorithm"`
	// State is next, current or retired.
	State string `json:"state"`
	// PrivateKey is the PKCS #8 DER private key. It never leaves the plugin.
	PrivateKey []byte `json:"private_key"`
	// CreatedAt is when the key was generated (and published, as next).
	CreatedAt time.Time `json:"created_at"`
	// PromotedAt is when the key became current; zero while next.
	PromotedAt time.Time `json:"promoted_at,omitzero"`
	// RetiresAt is when a retired key leaves jwks and stops verifying.
	RetiresAt time.Time `json:"retires_at,omitzero"`
}

// keyRing is the parsed, ready-to-use form of keyRingEntry.
type keyRing struct {
	// keys holds every parsed key, oldest first.
	keys []*signingKey
	// byKID finds a key by its kid.
	byKID map[string]*signingKey
	// current signs new tokens.
	current *signingKey
	// lastKeyVersion is the stored LastKeyVersion; spiffe/bundle derives its
	// sequence from it.
	lastKeyVersion int
	// jwks caches the JWKS body until a retired key's time runs out.
	jwks atomic.Pointer[jwksBody]
}

// jwksBody is a rendered JWK Set and the moment it must be rendered again.
type jwksBody struct {
	body  []byte
	until time.Time
}

// signingKey is one parsed key.
type signingKey struct {
	entry  *signingKeyEntry
	method jwt.SigningMethod
	signer crypto.Signer
	jwk    map[string]string
	// headerB64 is the encoded JOSE header, the same for every token the key
	// signs, so minting never re-encodes it.
	headerB64 string
}

// usableAt reports whether the key may verify tokens at now.
func (k *signingKey) usableAt(now time.Time) bool {
	return k.entry.State != keyStateRetired || now.Before(k.entry.RetiresAt)
}

// verifyingKey returns the key a token names by kid, if it may verify at now.
func (r *keyRing) verifyingKey(kid string, now time.Time) *signingKey {
	k := r.byKID[kid]
	if k == nil || !k.usableAt(now) {
		return nil
	}
	return k
}

// jwksJSON renders the RFC 7517 key set of every key that verifies at now:
// the next key, the current key and the retired keys inside verification_ttl.
// Rendering depends only on stored data and the time, so every node of a
// cluster serves the same bytes.
func (r *keyRing) jwksJSON(now time.Time) []byte {
	if cached := r.jwks.Load(); cached != nil && now.Before(cached.until) {
		return cached.body
	}
	until := now.Add(time.Hour)
	set := struct {
		Keys []map[string]string `json:"keys"`
	}{Keys: []map[string]string{}}
	for _, k := range r.keys {
		if !k.usableAt(now) {
			continue
		}
		set.Keys = append(set.Keys, k.jwk)
		if k.entry.State == keyStateRetired && k.entry.RetiresAt.Before(until) {
			until = k.entry.RetiresAt
		}
	}
	body, _ := json.Marshal(set) // a map of strings always marshals
	r.jwks.Store(&jwksBody{body: body, until: until})
	return body
}

// parseKeyRing turns the stored ring into signers and JWKs.
func parseKeyRing(entry *keyRingEntry) (*keyRing, error) {
	ring := &keyRing{byKID: make(map[string]*signingKey, len(entry.Keys)), lastKeyVersion: entry.LastKeyVersion}
	for _, e := range entry.Keys {
		k, err := parseSigningKey(e)
		if err != nil {
			return nil, fmt.Errorf("key version %d: %w", e.KeyVersion, err)
		}
		ring.keys = append(ring.keys, k)
		ring.byKID[e.KID] = k
		if e.State == keyStateCurrent {
			ring.current = k
		}
	}
	if ring.current == nil {
		return nil, errors.New("key ring has no current key")
	}
	return ring, nil
}

// parseSigningKey parses one stored key and binds it to its algorithm.
func parseSigningKey(e *signingKeyEntry) (*signingKey, error) {
	parsed, err := x509.ParsePKCS8PrivateKey(e.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("parsing private key: %w", err)
	}
	signer, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, errors.New("private key cannot sign")
	}
	method, err := signingMethod(e.Algorithm, signer)
	if err != nil {
		return nil, err
	}
	jwk, err := publicJWK(signer.Public())
	if err != nil {
		return nil, err
	}
	jwk["kid"] = e.KID
	jwk["alg"] = e.Algorithm
	jwk["use"] = "sig"
	header, err := json.Marshal(map[string]string{"alg": e.Algorithm, "kid": e.KID, "typ": "JWT"})
	if err != nil {
		return nil, err
	}
	return &signingKey{
		entry:     e,
		method:    method,
		signer:    signer,
		jwk:       jwk,
		headerB64: base64.RawURLEncoding.EncodeToString(header),
	}, nil
}

// signingMethod returns the golang-jwt method for alg, checking that the key
// is of the kind the algorithm needs.
func signingMethod(alg string, key crypto.Signer) (jwt.SigningMethod, error) {
	var ok bool
	var method jwt.SigningMethod
	switch alg {
	case algES256:
		k, isEC := key.(*ecdsa.PrivateKey)
		ok, method = isEC && k.Curve == elliptic.P256(), jwt.SigningMethodES256
	case algES384:
		k, isEC := key.(*ecdsa.PrivateKey)
		ok, method = isEC && k.Curve == elliptic.P384(), jwt.SigningMethodES384
	case algEdDSA:
		_, ok = key.(ed25519.PrivateKey)
		method = jwt.SigningMethodEdDSA
	case algRS256:
		_, ok = key.(*rsa.PrivateKey)
		method = jwt.SigningMethodRS256
	}
	if !ok {
		return nil, fmt.Errorf("key does not fit algorithm %q", alg)
	}
	return method, nil
}

// generateSigningKey makes a new key for alg, with its kid.
func generateSigningKey(alg string, keyVersion int, now time.Time) (*signingKeyEntry, error) {
	var key crypto.Signer
	var err error
	switch alg {
	case algES256:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case algES384:
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case algEdDSA:
		_, key, err = ed25519.GenerateKey(rand.Reader)
	case algRS256:
		key, err = rsa.GenerateKey(rand.Reader, rsaKeyBits)
	default:
		return nil, fmt.Errorf("unsupported signing algorithm %q", alg)
	}
	if err != nil {
		return nil, fmt.Errorf("generating %s key: %w", alg, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding %s key: %w", alg, err)
	}
	kid, err := jwkThumbprint(key.Public())
	if err != nil {
		return nil, err
	}
	return &signingKeyEntry{
		KeyVersion: keyVersion,
		KID:        kid,
		Algorithm:  alg,
		State:      keyStateNext,
		PrivateKey: der,
		CreatedAt:  now.UTC(),
	}, nil
}

// publicJWK renders the public members of an RFC 7517 JWK.
func publicJWK(pub crypto.PublicKey) (map[string]string, error) {
	b64 := base64.RawURLEncoding.EncodeToString
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		// Bytes is the uncompressed point 0x04 || X || Y, each coordinate
		// already the fixed size RFC 7518 requires.
		point, err := k.Bytes()
		if err != nil {
			return nil, fmt.Errorf("encoding EC public key: %w", err)
		}
		size := (len(point) - 1) / 2
		return map[string]string{
			"kty": "EC",
			"crv": k.Curve.Params().Name,
			"x":   b64(point[1 : 1+size]),
			"y":   b64(point[1+size:]),
		}, nil
	case ed25519.PublicKey:
		return map[string]string{"kty": "OKP", "crv": "Ed25519", "x": b64(k)}, nil
	case *rsa.PublicKey:
		return map[string]string{
			"kty": "RSA",
			"n":   b64(k.N.Bytes()),
			"e":   b64(big.NewInt(int64(k.E)).Bytes()),
		}, nil
	}
	return nil, fmt.Errorf("unsupported public key type %T", pub)
}

// jwkThumbprint computes the RFC 7638 thumbprint of a public key: SHA-256 of
// its required JWK members in lexicographic order, base64url. Used as kid,
// it binds the kid to the key itself.
func jwkThumbprint(pub crypto.PublicKey) (string, error) {
	jwk, err := publicJWK(pub)
	if err != nil {
		return "", err
	}
	var canonical string
	switch jwk["kty"] {
	case "EC":
		canonical = fmt.Sprintf(`{"crv":%q,"kty":"EC","x":%q,"y":%q}`, jwk["crv"], jwk["x"], jwk["y"])
	case "OKP":
		canonical = fmt.Sprintf(`{"crv":%q,"kty":"OKP","x":%q}`, jwk["crv"], jwk["x"])
	case "RSA":
		canonical = fmt.Sprintf(`{"e":%q,"kty":"RSA","n":%q}`, jwk["e"], jwk["n"])
	}
	sum := sha256.Sum256([]byte(canonical))
	return base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// readKeyRingEntry reads the stored ring, or (nil, nil) when there is none.
func readKeyRingEntry(ctx context.Context, s logical.Storage) (*keyRingEntry, error) {
	raw, err := s.Get(ctx, storageKeyRing)
	if err != nil {
		return nil, fmt.Errorf("reading key ring: %w", err)
	}
	if raw == nil {
		return nil, nil
	}
	entry := &keyRingEntry{}
	if err := raw.DecodeJSON(entry); err != nil {
		return nil, fmt.Errorf("decoding key ring: %w", err)
	}
	return entry, nil
}

// getKeyRing returns the parsed ring from the cache, or storage on a miss.
func (b *backend) getKeyRing(ctx context.Context, s logical.Storage) (*keyRing, error) {
	return b.keyRing.load("", func() (*keyRing, error) {
		entry, err := readKeyRingEntry(ctx, s)
		if err != nil {
			return nil, err
		}
		if entry == nil {
			return nil, errNoKeyRing
		}
		return parseKeyRing(entry)
	})
}

// ensureKeyRing creates the ring (a current and a next key) if none exists.
func (b *backend) ensureKeyRing(ctx context.Context, s logical.Storage) (*keyRingEntry, error) {
	b.keyRingLock.Lock()
	defer b.keyRingLock.Unlock()
	entry, err := readKeyRingEntry(ctx, s)
	if err != nil || entry != nil {
		return entry, err
	}
	cfg, err := b.getConfig(ctx, s)
	if err != nil {
		return nil, err
	}
	return b.rotateKeyRingLocked(ctx, s, cfg)
}

// rotateKeyRingIfDue rotates when the current key has been current for a
// whole key_rotation_period, or signs with an algorithm the config no longer
// names. Running it twice rotates once: the second run sees the new key.
func (b *backend) rotateKeyRingIfDue(ctx context.Context, s logical.Storage) (bool, error) {
	cfg, err := b.getConfig(ctx, s)
	if err != nil {
		return false, err
	}
	b.keyRingLock.Lock()
	defer b.keyRingLock.Unlock()
	entry, err := readKeyRingEntry(ctx, s)
	if err != nil {
		return false, err
	}
	if entry != nil && !rotationDue(entry, cfg, b.now()) {
		return false, nil
	}
	if _, err := b.rotateKeyRingLocked(ctx, s, cfg); err != nil {
		return false, err
	}
	b.Logger().Info("rotated signing key", "reason", "schedule", "algorithm", cfg.SigningAlgorithm)
	return true, nil
}

// rotationDue reports whether the periodic function should rotate now.
func rotationDue(entry *keyRingEntry, cfg *configEntry, now time.Time) bool {
	for _, k := range entry.Keys {
		if k.State != keyStateCurrent {
			continue
		}
		if k.Algorithm != cfg.SigningAlgorithm {
			return true
		}
		return cfg.KeyRotationPeriod > 0 && !now.Before(k.PromotedAt.Add(cfg.KeyRotationPeriod))
	}
	return true
}

// rotateKeyRingLocked promotes the next key to current, retires the current
// key for verification_ttl, publishes a fresh next key and drops retired keys
// whose time is up, all in one write. The caller holds keyRingLock.
//
// Publication order matters: a key is generated as "next" and served in jwks
// a whole rotation period before it signs anything, so verifiers that cache
// the JWKS already hold it. Only when the algorithm changes does a key that was
// never published start signing at once; verifiers then refetch on the
// unknown kid.
func (b *backend) rotateKeyRingLocked(ctx context.Context, s logical.Storage, cfg *configEntry) (*keyRingEntry, error) {
	old, err := readKeyRingEntry(ctx, s)
	if err != nil {
		return nil, err
	}
	if old == nil {
		old = &keyRingEntry{}
	}
	now := b.now().UTC()
	entry := &keyRingEntry{Version: keyRingVersion, LastKeyVersion: old.LastKeyVersion}
	var next *signingKeyEntry
	for _, k := range old.Keys {
		k := *k
		switch k.State {
		case keyStateNext:
			next = &k
			continue
		case keyStateCurrent:
			k.State = keyStateRetired
			k.RetiresAt = now.Add(cfg.verificationTTL())
		}
		if k.State == keyStateRetired && !now.Before(k.RetiresAt) {
			continue
		}
		entry.Keys = append(entry.Keys, &k)
	}
	if next == nil || next.Algorithm != cfg.SigningAlgorithm {
		entry.LastKeyVersion++
		if next, err = generateSigningKey(cfg.SigningAlgorithm, entry.LastKeyVersion, now); err != nil {
			return nil, err
		}
	}
	next.State = keyStateCurrent
	next.PromotedAt = now
	entry.Keys = append(entry.Keys, next)

	entry.LastKeyVersion++
	upcoming, err := generateSigningKey(cfg.SigningAlgorithm, entry.LastKeyVersion, now)
	if err != nil {
		return nil, err
	}
	entry.Keys = append(entry.Keys, upcoming)

	if err := putKeyRing(ctx, s, entry); err != nil {
		return nil, err
	}
	b.keyRing.dropAll()
	if len(old.Keys) > 0 {
		b.metrics.keyRotated()
	}
	return entry, nil
}

// putKeyRing writes the whole ring in one entry.
func putKeyRing(ctx context.Context, s logical.Storage, entry *keyRingEntry) error {
	raw, err := logical.StorageEntryJSON(storageKeyRing, entry)
	if err != nil {
		return err
	}
	raw.SealWrap = true
	if err := s.Put(ctx, raw); err != nil {
		return fmt.Errorf("writing key ring: %w", err)
	}
	return nil
}
