package meshauth

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// Bounds of the Cache-Control max-age of jwks and discovery.
const (
	// maxJWKSCacheAge caps it, so a new next key reaches verifiers within
	// the hour.
	maxJWKSCacheAge = meshtoken.MaxKeyCacheAge
	// minJWKSCacheAge floors it. Without a floor, a rotation that is due but
	// not yet run (the periodic function runs about once a minute, and not
	// at all while the active node is sealed or failing over) gave max-age=0,
	// and every verifier that honours it refetched on every token: a fetch
	// storm against Vault exactly when it is slow. A floor is safe because
	// a key is published as "next" a whole rotation period before it signs,
	// so a set cached a minute past a rotation already holds the key that
	// signs after it; verifiers refetch on an unknown kid anyway.
	minJWKSCacheAge = time.Minute
)

// pathJWKS declares the unauthenticated jwks and discovery paths.
func pathJWKS(b *backend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern:      "jwks",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "jwks"},
					Callback:     b.pathJWKSRead,
					Summary:      "The RFC 7517 JWK Set of the keys that verify tokens (raw JSON, no Vault token needed).",
				},
			},
			HelpSynopsis:    "Public keys for offline verification.",
			HelpDescription: "Serves the next, current and retired-but-verifying keys as a raw JWK Set with Content-Type application/json and a jittered Cache-Control max-age: no longer than the time until the next rotation or an hour, and never under 60 seconds (so an overdue rotation cannot make verifiers refetch on every token). Needs no Vault token.",
		},
		{
			Pattern:      ".well-known/openid-configuration",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "openid-configuration"},
					Callback:     b.pathDiscoveryRead,
					Summary:      "OpenID-style discovery document: issuer, jwks_uri, algorithms (raw JSON).",
				},
			},
			HelpSynopsis:    "Discovery document for verifiers.",
			HelpDescription: "Names the issuer, the jwks_uri (<issuer>/jwks when the issuer is a URL, otherwise /v1/<mount>/jwks), the revocation_endpoint (the signed revocations feed, <issuer>/revocations or /v1/<mount>/revocations) and the signing algorithms. Needs no Vault token.",
		},
	}
}

// publishedKeys loads what a read of a published key document (jwks,
// spiffe/bundle) needs: the ring, the config and the time.
func (b *backend) publishedKeys(ctx context.Context, s logical.Storage) (*keyRing, *configEntry, time.Time, error) {
	ring, err := b.getKeyRing(ctx, s)
	if err != nil {
		return nil, nil, time.Time{}, err
	}
	cfg, err := b.getConfig(ctx, s)
	if err != nil {
		return nil, nil, time.Time{}, err
	}
	return ring, cfg, b.now(), nil
}

func (b *backend) pathJWKSRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	ring, cfg, now, err := b.publishedKeys(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	if req.Connection != nil {
		b.adoption.fetched(ring.nextKID(), req.Connection.RemoteAddr, now)
	}
	return rawJSON(ring.jwksJSON(now), cacheAge(ring, cfg, now)), nil
}

func (b *backend) pathDiscoveryRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	ring, err := b.getKeyRing(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	doc := map[string]any{
		"issuer":                                cfg.Issuer,
		"jwks_uri":                              cfg.publishedURL(req.MountPoint, "jwks"),
		"revocation_endpoint":                   cfg.publishedURL(req.MountPoint, "revocations"),
		"id_token_signing_alg_values_supported": meshtoken.Algorithms(),
		"response_types_supported":              []string{"id_token"},
		"subject_types_supported":               []string{"public"},
		"claims_supported":                      meshtoken.RegisteredClaims(),
	}
	body, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("encoding discovery document: %w", err)
	}
	now := b.now()
	return rawJSON(body, cacheAge(ring, cfg, now)), nil
}

// publishedURL is where verifiers fetch one of the mount's unauthenticated
// documents (jwks, revocations): under the issuer when the issuer is a URL
// (standard OIDC verifiers need it absolute), otherwise the path on Vault,
// which meshauth's verifiers resolve against the discovery URL. Discovery and
// config read both name it, from this one place.
func (cfg *configEntry) publishedURL(mountPoint, doc string) string {
	if cfg.issuerIsURL() {
		return strings.TrimSuffix(cfg.Issuer, "/") + "/" + doc
	}
	return "/v1/" + strings.TrimSuffix(mountPoint, "/") + "/" + doc
}

// rawJSON answers a body as is, without Vault's response envelope.
func rawJSON(body []byte, maxAge time.Duration) *logical.Response {
	return &logical.Response{Data: map[string]any{
		logical.HTTPStatusCode:         http.StatusOK,
		logical.HTTPContentType:        "application/json",
		logical.HTTPRawBody:            body,
		logical.HTTPCacheControlHeader: fmt.Sprintf("max-age=%d", int64(maxAge/time.Second)),
	}}
}

// cacheAge is how long verifiers may cache the key set: not past the next
// rotation (after which the new next key must be fetched), at most an hour,
// less up to 10% at random so a fleet of verifiers does not refetch at once,
// and never under minJWKSCacheAge (see there why).
func cacheAge(ring *keyRing, cfg *configEntry, now time.Time) time.Duration {
	age := maxJWKSCacheAge
	if cfg.KeyRotationPeriod > 0 {
		untilRotation := ring.current.entry.PromotedAt.Add(cfg.KeyRotationPeriod).Sub(now)
		age = min(age, untilRotation)
	}
	if age > 0 {
		age -= time.Duration(rand.Int64N(int64(age/10) + 1)) //nolint:gosec // jitter spreads refetches; it guards nothing
	}
	return max(age, minJWKSCacheAge)
}
