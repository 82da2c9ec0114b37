package meshauth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
	"github.com/golang-jwt/jwt/v5"
	"github.com/hashicorp/vault/sdk/logical"
)

// The JOSE algorithms meshauth signs with. Nothing else is ever accepted:
// not none, not HMAC, not an algorithm other than the one bound to a kid.
const (
	algES256 = meshtoken.ES256
	algES384 = meshtoken.ES384
	algEdDSA = meshtoken.EdDSA
	algRS256 = meshtoken.RS256
)

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

// maxRingKeys bounds the keys in the ring (next, current and retired), and
// so in jwks. Config writes refuse a schedule that would keep more
// (keysRetained), and a rotation that would exceed it is refused.
const maxRingKeys = 20

// keyRingBudget is the most the stored key ring may take. The ring is one
// seal-wrapped storage entry so that rotation is atomic, and a Raft entry
// holds about 1 MiB; the budget leaves room for seal wrapping's envelope and
// for growth of the entry's other fields.
const keyRingBudget = 256 << 10

// keyEntryBytes is the most one stored key takes, by algorithm: its JSON
// with the PKCS #8 private key in base64 (TestKeyEntrySizes measures it).
var keyEntryBytes = map[string]int{algES256: 512, algES384: 576, algEdDSA: 384, algRS256: 2048}

// errNoKeyRing means the engine has no signing key yet (Initialize did not run
// on a node that could write).
var errNoKeyRing = errors.New("the engine has no signing key yet; write to keys/rotate on the active node to create one")

// isSupportedAlgorithm reports whether alg is one meshauth signs with.
func isSupportedAlgorithm(alg string) bool {
	return meshtoken.IsAlgorithm(alg)
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
	// Removed lists keys taken out at keys/<kid>/revoke while the
	// revocation feed names them (removeKeyLocked says how long).
	Removed []*removedKeyEntry `json:"removed,omitempty"`
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
	// MaxVerificationTTL is the longest verification_ttl (by default
	// max_ttl + leeway) in force while the key was current, raised by every
	// config write before the new config takes effect. On retirement the
	// key stays at least this long, so a token it signed under a max_ttl
	// that was lowered later still verifies until its exp; the login path
	// never writes. Zero in rings written before it existed.
	MaxVerificationTTL time.Duration `json:"max_verification_ttl,omitzero"`
}

// keyRing is the parsed, ready-to-use form of keyRingEntry.
type keyRing struct {
	// keys holds every parsed key, oldest first.
	keys []*signingKey
	// byKID finds a key by its kid.
	byKID map[string]*signingKey
	// current signs new tokens.
	current *signingKey
	// removed lists the removed keys the revocation feed still names.
	removed []*removedKeyEntry
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

// nextKID is the kid of the next key, or "".
func (r *keyRing) nextKID() string {
	for _, k := range r.keys {
		if k.entry.State == keyStateNext {
			return k.entry.KID
		}
	}
	return ""
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
	ring := &keyRing{byKID: make(map[string]*signingKey, len(entry.Keys)), lastKeyVersion: entry.LastKeyVersion, removed: entry.Removed}
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
	jwk, err := meshtoken.PublicJWK(signer.Public())
	if err != nil {
		return nil, err
	}
	jwk["kid"] = e.KID
	jwk["alg"] = e.Algorithm
	jwk["use"] = "sig"
	header := meshtoken.Header(e.Algorithm, e.KID, meshtoken.TokenType)
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
	a, ok := meshtoken.AlgorithmOf(alg)
	if !ok || !a.FitsKey(key.Public()) {
		return nil, fmt.Errorf("key does not fit algorithm %q", alg)
	}
	return a.Method, nil
}

// generateSigningKey makes a new key for alg, with its kid.
func generateSigningKey(alg string, keyVersion int, now time.Time) (*signingKeyEntry, error) {
	a, ok := meshtoken.AlgorithmOf(alg)
	if !ok {
		return nil, fmt.Errorf("unsupported signing algorithm %q", alg)
	}
	var key crypto.Signer
	var err error
	switch a.KeyType {
	case "EC":
		key, err = ecdsa.GenerateKey(a.Curve, rand.Reader)
	case "OKP":
		_, key, err = ed25519.GenerateKey(rand.Reader)
	case "RSA":
		key, err = rsa.GenerateKey(rand.Reader, rsaKeyBits)
	}
	if err != nil {
		return nil, fmt.Errorf("generating %s key: %w", alg, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding %s key: %w", alg, err)
	}
	kid, err := meshtoken.JWKThumbprint(key.Public())
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

// readKeyRingEntry reads the stored ring, or (nil, nil) when there is none.
func readKeyRingEntry(ctx context.Context, s logical.Storage) (*keyRingEntry, error) {
	return readEntry[keyRingEntry](ctx, s, storageKeyRing, "key ring")
}

// getKeyRing returns the parsed ring from the cache, or storage on a miss.
//
// The cache holds one parsed ring. Every write of the ring on this node
// (rotation, tidy, a config write raising MaxVerificationTTL) drops it after
// the Put, and Vault's Invalidate of storageKeyRing drops it on other nodes.
// A load that began before a drop is not stored (epochCache's epoch), so no
// ring read before a write outlives the write. The jwks body cached inside a
// ring dies with the ring and is rendered again at the first RetiresAt.
func (b *backend) getKeyRing(ctx context.Context, s logical.Storage) (*keyRing, error) {
	return b.keyRing.load(func() (*keyRing, error) {
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
	res, err := b.rotateKeyRingLocked(ctx, s, cfg, rotationCreated, false)
	if err != nil {
		return nil, err
	}
	return res.entry, nil
}

// rotateKeyRingIfDue rotates when the current key has been current for a
// whole key_rotation_period, or signs with an algorithm the config no longer
// names, and the next key has been published min_publication_age. Running it
// twice rotates once: the second run sees the new key. A rotation that is
// due while the next key is too young waits for a later run, silently: that
// is the schedule working, not a fault.
func (b *backend) rotateKeyRingIfDue(ctx context.Context, s logical.Storage) (bool, error) {
	// The config is read under the lock: config writes hold it too, so the
	// rotation sees the config in force, not one from before a write.
	b.keyRingLock.Lock()
	defer b.keyRingLock.Unlock()
	cfg, err := b.getConfig(ctx, s)
	if err != nil {
		return false, err
	}
	entry, err := readKeyRingEntry(ctx, s)
	if err != nil {
		return false, err
	}
	if entry != nil && !rotationDue(entry, cfg, b.now()) {
		return false, nil
	}
	reason := rotationScheduled
	if entry == nil {
		reason = rotationCreated
	}
	res, err := b.rotateKeyRingLocked(ctx, s, cfg, reason, false)
	var full *keyRingFullError
	var early *notYetPublishedError
	switch {
	case errors.As(err, &early):
		return false, nil
	case errors.As(err, &full):
		// Signing goes on with the current key; the next run retries.
		b.Logger().Warn("scheduled key rotation skipped", "error", err.Error())
		return false, nil
	case err != nil:
		return false, err
	}
	return res.promoted, nil
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

// rotationReason says why the key ring rotated, in the one log line that
// every rotation writes.
type rotationReason string

// Why the key ring rotates.
const (
	rotationCreated   rotationReason = "created"
	rotationScheduled rotationReason = "schedule"
	rotationRequested rotationReason = "requested"
	rotationForced    rotationReason = "forced"
	rotationAlgorithm rotationReason = "algorithm_changed"
	rotationRemoval   rotationReason = "key_removed"
)

// rotation is what rotateKeyRingLocked did.
type rotation struct {
	// entry is the ring as written.
	entry *keyRingEntry
	// promoted says a key became current. It is false when only a next key
	// of a new algorithm was published, which signs from signsAt.
	promoted bool
	signsAt  time.Time
}

// notYetPublishedError refuses to promote a next key that has not been in
// jwks for min_publication_age.
type notYetPublishedError struct {
	kid         string
	publishedAt time.Time
	at          time.Time
	minAge      time.Duration
}

func (e *notYetPublishedError) Error() string {
	return fmt.Sprintf("cannot rotate yet: the next key %s has been in jwks since %s, and no key signs before it has been "+
		"published for min_publication_age (%s), so that verifiers which cache the key set (istiod refetches every 20 minutes "+
		"and not on an unknown kid) hold it first; it may sign from %s. Rotate then, or, if the current key is compromised, "+
		"rotate with force=true (verifiers that have not fetched the new key refuse new tokens until they refetch) or remove "+
		"it at keys/<kid>/revoke; nothing was changed",
		e.kid, e.publishedAt.UTC().Format(time.RFC3339), e.minAge, e.at.UTC().Format(time.RFC3339))
}

// rotateKeyRingLocked promotes the next key to current, retires the current
// key for verification_ttl, publishes a fresh next key and drops retired keys
// whose time is up, all in one write. The caller holds keyRingLock.
//
// Publication order matters: a key is generated as "next" and served in jwks
// before it signs anything, and it is promoted only once it has been there
// min_publication_age, so verifiers that cache the JWKS (and never refetch on
// an unknown kid, as istiod) already hold it. A change of algorithm goes
// through the same slot: a next key of the new algorithm replaces the old
// next key (which never signed) and is promoted when old enough. Only force
// (compromise) promotes early, or makes a key sign that was never published.
func (b *backend) rotateKeyRingLocked(ctx context.Context, s logical.Storage, cfg *configEntry, reason rotationReason, force bool) (*rotation, error) {
	old, err := readKeyRingEntry(ctx, s)
	if err != nil {
		return nil, err
	}
	if old == nil {
		old = &keyRingEntry{}
	}
	// cfg may have been read before the caller took the lock; the cached
	// config now is the one in force (config writes hold the lock and drop
	// the cache before releasing it). The new current key records the
	// longer verification_ttl of the two.
	inForce, err := b.getConfig(ctx, s)
	if err != nil {
		return nil, err
	}
	ttl := max(cfg.verificationTTL(), inForce.verificationTTL())
	now := b.now().UTC()
	creating := len(old.Keys) == 0
	entry := &keyRingEntry{Version: keyRingVersion, LastKeyVersion: old.LastKeyVersion, Removed: pruneRemoved(old.Removed, now)}
	var next *signingKeyEntry
	var others []*signingKeyEntry
	for _, k := range old.Keys {
		k := *k
		if k.State == keyStateNext {
			next = &k
			continue
		}
		if k.State == keyStateRetired && !now.Before(k.RetiresAt) {
			continue
		}
		others = append(others, &k)
	}
	published := false
	if !creating && (next == nil || next.Algorithm != cfg.SigningAlgorithm) {
		// A next key of another algorithm never signed: it simply leaves.
		if next, err = entry.newKey(old, cfg.SigningAlgorithm, now); err != nil {
			return nil, err
		}
		published = true
	}
	if !creating && !force {
		signsAt := next.CreatedAt.Add(cfg.MinPublicationAge)
		if now.Before(signsAt) {
			if !published {
				return nil, &notYetPublishedError{kid: next.KID, publishedAt: next.CreatedAt, at: signsAt, minAge: cfg.MinPublicationAge}
			}
			entry.Keys = append(others, next)
			if len(entry.Keys) > maxRingKeys {
				return nil, newKeyRingFullError(entry.Keys)
			}
			if err := b.writeKeyRingLocked(ctx, s, entry); err != nil {
				return nil, err
			}
			b.Logger().Info("published next signing key", "reason", string(reason), "next_kid", next.KID, "algorithm", next.Algorithm, "signs_at", signsAt.Format(time.RFC3339))
			return &rotation{entry: entry, signsAt: signsAt}, nil
		}
	}
	if creating {
		if next, err = entry.newKey(old, cfg.SigningAlgorithm, now); err != nil {
			return nil, err
		}
	}
	for _, k := range others {
		if k.State == keyStateCurrent {
			// Every token it signed expires within the longest
			// verification_ttl in force while it signed.
			k.State = keyStateRetired
			k.RetiresAt = now.Add(max(ttl, k.MaxVerificationTTL))
		}
	}
	entry.Keys = others
	next.State = keyStateCurrent
	next.PromotedAt = now
	next.MaxVerificationTTL = ttl
	entry.Keys = append(entry.Keys, next)
	// The new next key is appended below: with it the ring must stay
	// within maxRingKeys.
	if len(entry.Keys)+1 > maxRingKeys {
		return nil, newKeyRingFullError(entry.Keys)
	}
	upcoming, err := entry.newKey(old, cfg.SigningAlgorithm, now)
	if err != nil {
		return nil, err
	}
	entry.Keys = append(entry.Keys, upcoming)

	if err := b.writeKeyRingLocked(ctx, s, entry); err != nil {
		return nil, err
	}
	if !creating {
		b.metrics.keyRotated()
	}
	if force && reason == rotationRequested {
		reason = rotationForced
	}
	b.Logger().Info("rotated signing key", "reason", string(reason), "kid", next.KID, "algorithm", next.Algorithm, "next_kid", upcoming.KID)
	return &rotation{entry: entry, promoted: true}, nil
}

// newKey generates a key of alg with the next key version. Its kid is a
// thumbprint of a fresh random key, so it cannot be the kid of a key in the
// ring or of a removed key; the check below makes that a rule rather than a
// probability, so a removed kid can never name a key again.
func (e *keyRingEntry) newKey(old *keyRingEntry, alg string, now time.Time) (*signingKeyEntry, error) {
	taken := func(kid string) bool {
		for _, k := range old.Keys {
			if k.KID == kid {
				return true
			}
		}
		return slices.ContainsFunc(e.Removed, func(r *removedKeyEntry) bool { return r.KID == kid })
	}
	for range 3 {
		e.LastKeyVersion++
		k, err := generateSigningKey(alg, e.LastKeyVersion, now)
		if err != nil || !taken(k.KID) {
			return k, err
		}
	}
	return nil, errors.New("generated keys kept repeating a kid in use; the random source is broken")
}

// writeKeyRingLocked stores the ring and drops this node's cached copy (and
// the revocation feed rendered from it); other nodes drop theirs in
// Invalidate.
func (b *backend) writeKeyRingLocked(ctx context.Context, s logical.Storage, entry *keyRingEntry) error {
	if err := putKeyRing(ctx, s, entry); err != nil {
		return err
	}
	b.keyRing.drop()
	b.feed.drop()
	return nil
}

// putKeyRing writes the whole ring in one entry.
func putKeyRing(ctx context.Context, s logical.Storage, entry *keyRingEntry) error {
	return writeEntry(ctx, s, storageKeyRing, "key ring", entry, true)
}

// keyRingFullError refuses a rotation that would put more than maxRingKeys
// keys in the ring.
type keyRingFullError struct {
	// frees is when the first retired key leaves the ring.
	frees time.Time
}

func newKeyRingFullError(keys []*signingKeyEntry) *keyRingFullError {
	e := &keyRingFullError{}
	for _, k := range keys {
		if k.State == keyStateRetired && (e.frees.IsZero() || k.RetiresAt.Before(e.frees)) {
			e.frees = k.RetiresAt
		}
	}
	return e
}

func (e *keyRingFullError) Error() string {
	msg := fmt.Sprintf("cannot rotate: the key ring would hold more than %d keys, the most meshauth keeps in jwks "+
		"(each retired key stays until the tokens it signed have expired); nothing was changed", maxRingKeys)
	if !e.frees.IsZero() {
		msg += fmt.Sprintf("; room frees up at %s, when the oldest retired key leaves", e.frees.UTC().Format(time.RFC3339))
	}
	return msg
}

// keysRetained is the most keys the ring holds under c's schedule: a key
// retires every key_rotation_period and stays verification_ttl, so up to
// ceil(verification_ttl / key_rotation_period) retired keys, plus current
// and next. Without automatic rotation it is 2 plus manual rotations, which
// rotation bounds by maxRingKeys.
func keysRetained(c *configEntry) int {
	if c.KeyRotationPeriod <= 0 {
		return 2
	}
	v, p := c.verificationTTL(), c.KeyRotationPeriod
	return int((v+p-1)/p) + 2
}

// keyRingSizeMessage refuses a config whose key ring would outgrow
// maxRingKeys or keyRingBudget, with the arithmetic, or returns "".
func keyRingSizeMessage(c *configEntry) string {
	n := keysRetained(c)
	per := keyEntryBytes[c.SigningAlgorithm]
	if n <= maxRingKeys && n*per <= keyRingBudget {
		return ""
	}
	v := c.verificationTTL()
	// The shortest period that keeps maxRingKeys: ceil(v / (maxRingKeys-2)),
	// rounded up to a whole minute as periods are written.
	minPeriod := ((v+maxRingKeys-3)/(maxRingKeys-2) + time.Minute - 1).Truncate(time.Minute)
	return fmt.Sprintf("key_rotation_period=%s with verification_ttl=%s would keep up to %d signing keys "+
		"(%s / %s rounded up = %d retired, plus current and next), about %s of %s keys at up to %d bytes each; "+
		"the ring is one storage entry that must fit one Raft entry (1 MiB), so meshauth keeps at most %d keys "+
		"(%s for %s, within its %s budget). Set key_rotation_period to at least %s, or keep verification_ttl "+
		"(max_ttl + leeway unless set) at most %d × key_rotation_period = %s",
		c.KeyRotationPeriod, v, n, v, c.KeyRotationPeriod, n-2, humanBytes(n*per), c.SigningAlgorithm, per,
		maxRingKeys, humanBytes(maxRingKeys*per), c.SigningAlgorithm, humanBytes(keyRingBudget),
		minPeriod, maxRingKeys-2, time.Duration(maxRingKeys-2)*c.KeyRotationPeriod)
}

// humanBytes renders a size in KiB or MiB.
func humanBytes(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
}

// raiseCurrentKeyTTLLocked records on the current key the longer of the
// verification_ttl in force and the one about to be written, before the new
// config is stored: a token minted under the new max_ttl is then always
// signed by a key that knows how long to stay. If the config write fails
// afterwards the key merely stays longer. The caller holds keyRingLock.
func (b *backend) raiseCurrentKeyTTLLocked(ctx context.Context, s logical.Storage, old, cfg *configEntry) error {
	entry, err := readKeyRingEntry(ctx, s)
	if err != nil || entry == nil {
		return err
	}
	ttl := max(old.verificationTTL(), cfg.verificationTTL())
	changed := false
	for _, k := range entry.Keys {
		if k.State == keyStateCurrent && k.MaxVerificationTTL < ttl {
			k.MaxVerificationTTL = ttl
			changed = true
		}
	}
	if !changed {
		return nil
	}
	return b.writeKeyRingLocked(ctx, s, entry)
}
