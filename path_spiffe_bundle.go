package meshauth

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// Bounds of the bundle's spiffe_refresh_hint, in seconds.
const (
	// maxBundleRefreshHint matches the longest jwks Cache-Control max-age.
	maxBundleRefreshHint = int64(maxJWKSCacheAge / time.Second)
	// minBundleRefreshHint keeps consumers from polling a very short
	// rotation schedule in a tight loop.
	minBundleRefreshHint = int64(10)
)

// pathSPIFFEBundle declares the unauthenticated spiffe/bundle path.
func pathSPIFFEBundle(b *backend) []*framework.Path {
	return []*framework.Path{{
		Pattern:      "spiffe/bundle",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "spiffe-bundle"},
				Callback:     b.pathSPIFFEBundleRead,
				Summary:      "The trust domain's JWT authorities as a SPIFFE bundle (raw JSON JWK Set, no Vault token needed).",
			},
		},
		HelpSynopsis:    "SPIFFE trust bundle of the engine's JWT-SVID signing keys.",
		HelpDescription: spiffeBundleHelp,
	}}
}

func (b *backend) pathSPIFFEBundleRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	ring, cfg, now, err := b.publishedKeys(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	// A bundle consumer holds the next key too, when the bundle carries it
	// (JWT-SVID algorithms only): it counts toward next_key_fetchers, so an
	// operator sees SPIFFE verifiers ready before the key signs.
	if next := ring.byKID[ring.nextKID()]; req.Connection != nil && next != nil && slices.Contains(jwtSVIDAlgorithms, next.entry.Algorithm) {
		b.adoption.fetched(next.entry.KID, req.Connection.RemoteAddr, now)
	}
	body, err := spiffeBundleJSON(ring, cfg, now)
	if err != nil {
		return nil, err
	}
	return rawJSON(body, cacheAge(ring, cfg, now)), nil
}

// spiffeBundle is the SPIFFE Trust Domain and Bundle document: a JWK Set
// with the SPIFFE members.
type spiffeBundle struct {
	Keys []map[string]string `json:"keys"`
	// Sequence changes whenever Keys does (see bundleSequence).
	Sequence uint64 `json:"spiffe_sequence"`
	// RefreshHint is how often, in seconds, consumers should fetch the bundle.
	RefreshHint int64 `json:"spiffe_refresh_hint"`
}

// spiffeBundleJSON renders the bundle: every key that verifies at now and
// whose algorithm JWT-SVIDs may use (next, current and retired keys inside
// verification_ttl, as jwks), each with use "jwt-svid". It depends only on
// stored data, the configuration and the time, so every node of a cluster
// serves the same bytes.
func spiffeBundleJSON(ring *keyRing, cfg *configEntry, now time.Time) ([]byte, error) {
	doc := spiffeBundle{Keys: []map[string]string{}, RefreshHint: bundleRefreshHint(cfg)}
	for _, k := range ring.keys {
		if !k.usableAt(now) || !slices.Contains(jwtSVIDAlgorithms, k.entry.Algorithm) {
			continue
		}
		jwk := maps.Clone(k.jwk)
		jwk["use"] = "jwt-svid"
		doc.Keys = append(doc.Keys, jwk)
	}
	doc.Sequence = bundleSequence(ring.lastKeyVersion, len(doc.Keys))
	body, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("encoding SPIFFE bundle: %w", err)
	}
	return body, nil
}

// bundleSequence derives spiffe_sequence from stored data alone, so every
// node agrees without keeping a counter. Key versions 1..last were each
// issued once and never reused; each is either in the bundle or gone for
// good (retired past verification_ttl, removed, or never allowed in the
// bundle). The sequence is last + gone = 2*last - served: a new key raises
// last, a key leaving raises gone, so every change of the key set raises the
// sequence and nothing else moves it.
func bundleSequence(lastKeyVersion, served int) uint64 {
	return uint64(max(2*lastKeyVersion-served, 0))
}

// bundleRefreshHint is how often consumers should refetch, from the rotation
// schedule: half a key_rotation_period, so a consumer always holds the next
// key (published a whole period before it signs) well before it signs; at
// most an hour, like jwks' Cache-Control, and at least 10 seconds. It depends
// on the configuration only, never on the moment of the request.
func bundleRefreshHint(cfg *configEntry) int64 {
	if cfg.KeyRotationPeriod <= 0 {
		return maxBundleRefreshHint
	}
	return min(max(int64(cfg.KeyRotationPeriod/2/time.Second), minBundleRefreshHint), maxBundleRefreshHint)
}

const spiffeBundleHelp = `
Serves the engine's JWT-SVID signing keys as a SPIFFE trust bundle (the
SPIFFE Trust Domain and Bundle format): a raw JSON JWK Set whose keys carry
use "jwt-svid", with spiffe_sequence and spiffe_refresh_hint. Needs no Vault
token.

The keys are those of jwks that JWT-SVIDs may use (EdDSA keys are left out):
the next key, published before it signs, the current key, and retired keys
inside verification_ttl. spiffe_sequence grows whenever that set changes and
is the same on every node of a cluster; spiffe_refresh_hint (seconds) is half
of config key_rotation_period, at most 3600 and at least 10. Cache-Control is
the same as jwks'.

Verifiers such as go-spiffe's jwtsvid package read it as the bundle of the
engine's trust domain (config trust_domain).
`
