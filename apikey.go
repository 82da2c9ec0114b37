package meshauth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/helper/wrapping"
	"github.com/hashicorp/vault/sdk/logical"
)

// apiKeyBytes is the entropy of an API key: 256 bits from crypto/rand.
const apiKeyBytes = 32

// apiKeyPrefix marks meshauth API keys so that secret scanners can find them.
const apiKeyPrefix = "mak_"

// apiKeyEntry is one stored API key. Only the SHA-256 of the key is kept: a
// 256-bit random key cannot be brute-forced from its hash, so a slow password
// hash would only slow down logins.
type apiKeyEntry struct {
	// ID names the key in reads, logs and audit; it can never log in.
	ID string `json:"id"`
	// Hash is the SHA-256 of the key.
	Hash []byte `json:"hash"`
	// CreatedAt is when the key was issued; api_key_max_age counts from it.
	CreatedAt time.Time `json:"created_at"`
	// ExpiresAt ends the key's grace period after a rotation; zero means the
	// key does not expire on its own.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// newAPIKey is a freshly generated key: its secret, shown once, and the entry
// that is stored.
type newAPIKey struct {
	secret string
	entry  apiKeyEntry
}

// generateAPIKey makes a new API key.
func generateAPIKey(now time.Time) (*newAPIKey, error) {
	raw := make([]byte, apiKeyBytes)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("generating API key: %w", err)
	}
	secret := apiKeyPrefix + base64.RawURLEncoding.EncodeToString(raw)
	sum := sha256.Sum256([]byte(secret))
	return &newAPIKey{
		secret: secret,
		entry:  apiKeyEntry{ID: rand.Text(), Hash: sum[:], CreatedAt: now.UTC()},
	}, nil
}

// usableAt reports whether the key may log in at now under maxAge (0: none).
func (k *apiKeyEntry) usableAt(now time.Time, maxAge time.Duration) bool {
	if !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt) {
		return false
	}
	return maxAge <= 0 || now.Before(k.CreatedAt.Add(maxAge))
}

// describe renders the key for a read: id and dates, never the hash.
func (k *apiKeyEntry) describe() map[string]any {
	out := map[string]any{"id": k.ID, "created_at": k.CreatedAt.Format(time.RFC3339), "expires_at": nil}
	if !k.ExpiresAt.IsZero() {
		out["expires_at"] = k.ExpiresAt.Format(time.RFC3339)
	}
	return out
}

// matchAPIKey reports whether presented is one of keys and usable at now.
// It hashes once and compares against every key in constant time, without an
// early exit, so timing tells nothing about which key or how much matched.
func matchAPIKey(keys []apiKeyEntry, presented string, now time.Time, maxAge time.Duration) bool {
	if len(presented) == 0 || len(presented) > maxAPIKeyLength {
		return false
	}
	sum := sha256.Sum256([]byte(presented))
	match := 0
	for i := range keys {
		equal := subtle.ConstantTimeCompare(sum[:], keys[i].Hash)
		usable := 0
		if keys[i].usableAt(now, maxAge) {
			usable = 1
		}
		match |= equal & usable
	}
	return match == 1
}

// liveKeys drops keys whose grace period has ended; rotation keeps the list short.
func liveKeys(keys []apiKeyEntry, now time.Time) []apiKeyEntry {
	out := make([]apiKeyEntry, 0, len(keys)+1)
	for _, k := range keys {
		if k.ExpiresAt.IsZero() || now.Before(k.ExpiresAt) {
			out = append(out, k)
		}
	}
	return out
}

// wrapAPIKeyAnswer asks Vault to response-wrap an answer that carries an API
// key when config api_key_wrap_ttl is set: the caller then receives only a
// single-use wrapping token, created on this request's path, and the key
// leaves Vault once, to whoever unwraps it. Vault wraps with the shorter of
// this TTL and one the request asked for (-wrap-ttl).
func wrapAPIKeyAnswer(resp *logical.Response, cfg *configEntry) *logical.Response {
	if resp != nil && !resp.IsError() && cfg.APIKeyWrapTTL > 0 {
		resp.WrapInfo = &wrapping.ResponseWrapInfo{TTL: cfg.APIKeyWrapTTL}
	}
	return resp
}
