package meshauth

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// pathRevocations declares the unauthenticated revocations feed.
func pathRevocations(b *backend) []*framework.Path {
	return []*framework.Path{{
		Pattern:      "revocations",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "revocations"},
				Callback:     b.pathRevocationsRead,
				Summary:      "Signed feed of revoked, not yet expired tokens, revoked and disabled services and removed keys (application/jwt, no Vault token needed).",
			},
		},
		HelpSynopsis:    "What offline verifiers must refuse besides expired tokens.",
		HelpDescription: revocationsHelp,
	}}
}

func (b *backend) pathRevocationsRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	feed, err := b.revocationFeed(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	resp := &logical.Response{
		Data: map[string]any{
			logical.HTTPStatusCode:         http.StatusOK,
			logical.HTTPContentType:        "application/jwt",
			logical.HTTPRawBody:            feed.jws,
			logical.HTTPCacheControlHeader: fmt.Sprintf("max-age=%d", int64(feedMaxAge(cfg)/time.Second)),
		},
		Headers: map[string][]string{"ETag": {feed.etag}},
	}
	if etagMatches(req.Headers["If-None-Match"], feed.etag) {
		resp.Data[logical.HTTPStatusCode] = http.StatusNotModified
		delete(resp.Data, logical.HTTPRawBody)
	}
	return resp, nil
}

// feedMaxAge is the feed's Cache-Control max-age: half of
// revocation_max_staleness, so a verifier that refetches at max-age and
// fails once is still within the staleness it must not exceed.
func feedMaxAge(cfg *configEntry) time.Duration {
	return (cfg.RevocationMaxStaleness / 2).Truncate(time.Second)
}

// etagMatches reports whether an If-None-Match header names etag (RFC 9110
// 13.1.2: weak comparison, a list of tags, or *).
func etagMatches(values []string, etag string) bool {
	for _, v := range values {
		for _, tag := range strings.Split(v, ",") {
			tag = strings.TrimPrefix(strings.TrimSpace(tag), "W/")
			if tag == "*" || tag == etag {
				return true
			}
		}
	}
	return false
}

const revocationsHelp = `
Serves a compact JWS (Content-Type application/jwt) signed by the current
signing key: its header names alg, kid and typ meshauth-revocations+jwt, and
verifies with jwks like a token. Needs no Vault token. The payload (JSON):

  iss       the engine's issuer
  iat       the time the feed describes (Unix seconds, a multiple of its
            step: a tenth of revocation_max_staleness, 1s to 1m); a new feed
            is rendered every step. Verifiers count staleness from it and
            refuse a feed older than one they accepted (no rollback)
  tokens    {jti: exp}: tokens revoked at revoke
  services  {name: {gen, exp}}: a token of that service whose gen claim is
            not gen was minted before services/<name>/revoke or a disable
  disabled  {name: exp}: disabled services; refuse all their tokens
  keys      {kid: exp}: keys removed at keys/<kid>/revoke; refuse every
            token that names the kid

exp is Unix seconds; an entry leaves the feed (at a step) once exp
plus leeway has passed, as nothing it names can be valid after that, so the
feed holds only what is revoked and not yet expired.

The feed is rendered from stored data only, and signed deterministically, so
every node of a cluster serves the same bytes and ETag; one render at a time,
concurrent readers all served from it. Its size is bounded by the engine's
limits (20000 revoked tokens, 10000 service names registered or deleted with
live tokens, 64 removed keys) to about 6.3 MB, under the 8 MiB every
meshtoken Verifier reads (docs/token-rules.md). The response carries
a strong ETag; a request with If-None-Match naming it is answered 304.
Cache-Control max-age is half of config revocation_max_staleness (default 5m),
the age past which a verifier's copy must no longer be trusted.

Vault passes ETag to clients and If-None-Match to the engine only when the
mount allows them:

  vault secrets tune -allowed-response-headers=ETag -passthrough-request-headers=X-Meshauth-Api-Key -passthrough-request-headers=If-None-Match meshauth

This is the mount's one tune line (it also passes the GET login's key
header): a tune replaces each whole list, so every header is named at once.
`
