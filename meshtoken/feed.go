package meshtoken

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// RevocationsType is the typ header of the engine's revocation feed, and
// the one typ Parse refuses in a token.
const RevocationsType = "meshauth-revocations+jwt"

// The engine's limits the feed's size derives from. The engine enforces
// each (it refuses the write that would pass one, never a revocation: a
// disable, revoke or delete of an existing service is always accepted).
const (
	// MaxRevokedTokens bounds the tokens revoked one by one and not yet
	// expired (revoke); more is a job for services/<name>/revoke.
	MaxRevokedTokens = 20000
	// MaxServiceNames bounds the service names a mount holds at once:
	// registered services plus the tombstones of deleted ones that still
	// have live tokens. Creating a service past it is refused.
	MaxServiceNames = 10000
	// MaxServiceNameLength is the longest service name.
	MaxServiceNameLength = 128
	// MaxRemovedKeys bounds the removed keys the ring remembers.
	MaxRemovedKeys = 64
	// MaxIssuerLength is the longest issuer config accepts.
	MaxIssuerLength = 512
	// MaxRevokedCertificates bounds the revoked client certificates listed
	// at once (by x5t#S256) until their last bound token expires.
	MaxRevokedCertificates = 10000
)

// The feed's worst case, in bytes of JSON, from the limits above. Every
// number is at most 20 characters (an int64 with its sign); a jti is 26
// characters, a kid (RFC 7638 thumbprint) 43, a gen a 26-character
// registration, a dot and a number; names need no JSON escaping (their
// syntax is [a-z0-9._-]), the issuer may be escaped six-fold (\u003c).
const (
	feedNumber = 20
	// `"jti":exp,`
	feedTokenEntry = len(`"":,`) + 26 + feedNumber
	// `"name":{"gen":"gen","exp":exp},` in services, and
	// `"name":exp,` in disabled: a name may be in both.
	feedServiceEntry = len(`"":{"gen":"","exp":},`) + MaxServiceNameLength + 26 + 1 + feedNumber + feedNumber +
		len(`"":,`) + MaxServiceNameLength + feedNumber
	// `"kid":exp,`
	feedKeyEntry = len(`"":,`) + 43 + feedNumber
	// `"x5t#S256":exp,`
	feedCertificateEntry = len(`"":,`) + 43 + feedNumber
	// The object around them.
	feedEnvelope = len(`{"iss":"","iat":,"tokens":{},"services":{},"disabled":{},"keys":{},"certificates":{}}`) + 6*MaxIssuerLength + feedNumber
	// maxFeedPayload is the largest payload the engine can render.
	maxFeedPayload = feedEnvelope + MaxRevokedTokens*feedTokenEntry + MaxServiceNames*feedServiceEntry + MaxRemovedKeys*feedKeyEntry +
		MaxRevokedCertificates*feedCertificateEntry
	// maxFeedHeader is a header with the longest alg, a kid and the typ,
	// base64url, and its dot.
	maxFeedHeader = (len(`{"alg":"EdDSA","kid":"","typ":""}`)+43+len(RevocationsType))*4/3 + 2
	// maxFeedSignature is an RSA signature of up to 8192 bits, base64url,
	// and its dot.
	maxFeedSignature = 1024*4/3 + 2
	// worstFeed is the largest feed the engine can serve.
	worstFeed = maxFeedHeader + (maxFeedPayload*4+2)/3 + maxFeedSignature
)

// MaxFeedLength is the largest feed a Verifier reads: the engine's worst
// case (at most 7,144,789 bytes: docs/token-rules.md) with room to spare, so no sequence of writes can grow
// the feed past what verifiers accept and make them fail closed.
const MaxFeedLength = 8 << 20

// A compile-time check: the worst case fits.
var _ = [MaxFeedLength - worstFeed]struct{}{}

// Feed is the payload of the engine's revocation feed: the one schema the
// engine writes and verifiers read. Every map is keyed by the name a
// verifier looks up, and every entry carries exp (Unix seconds), past which
// (plus leeway) it can no longer refuse anything and the engine drops it.
type Feed struct {
	// Issuer is iss, the engine's issuer, as in the tokens.
	Issuer string `json:"iss"`
	// IssuedAt is iat: the time (Unix seconds, a multiple of the engine's
	// feed step) the feed describes, the same on every node. A verifier refuses a feed older
	// than one it accepted, and counts staleness from it.
	IssuedAt int64 `json:"iat"`
	// Tokens maps each revoked jti to its token's exp.
	Tokens map[string]int64 `json:"tokens"`
	// Services maps a service whose tokens were revoked (services/<name>/
	// revoke, a disable, or a deleted registration whose name is in use
	// again) to its current gen: a token of that service whose gen claim is
	// another value is revoked.
	Services map[string]FeedService `json:"services"`
	// Disabled maps each disabled or deleted service to the exp of its
	// last token.
	Disabled map[string]int64 `json:"disabled"`
	// Keys maps each kid removed at keys/<kid>/revoke to when it leaves the
	// feed: every token that names it is refused.
	Keys map[string]int64 `json:"keys"`
	// Certificates maps the x5t#S256 of each revoked client certificate
	// that logged in to the exp of the last token bound to it: every token
	// whose cnf names it is refused.
	Certificates map[string]int64 `json:"certificates"`
}

// FeedService is one service in the feed.
type FeedService struct {
	Gen string `json:"gen"`
	Exp int64  `json:"exp"`
}

// feedMembers are the top-level members of a feed.
var feedMembers = [...]string{ClaimIssuer, ClaimIssuedAt, "tokens", "services", "disabled", "keys", "certificates"}

// ReasonNotAFeed is the refusal of a JWS whose typ is not RevocationsType.
const ReasonNotAFeed = "not_a_revocation_feed"

// ParseFeed checks an untrusted revocation feed with the checks Parse runs
// on a token (size, one spelling, header and payload members every reader
// reads alike, no crit, kid and its one algorithm, signature), then its
// typ, issuer and iat.
func ParseFeed(raw string, keys KeyFunc, issuer string) (*Feed, error) {
	h, payload, rerr := verifyJWS(raw, MaxFeedLength, keys, func(payload []byte) *Error {
		if err := checkMembers(payload, feedMembers[:], nil); err != nil {
			return refuse(ReasonAmbiguousClaims, err)
		}
		return nil
	})
	if rerr != nil {
		return nil, rerr
	}
	if h.Typ != RevocationsType {
		return nil, refuse(ReasonNotAFeed, fmt.Errorf("typ %q is not %s", h.Typ, RevocationsType))
	}
	f := &Feed{}
	if err := json.Unmarshal(payload, f); err != nil {
		return nil, refuse(ReasonMalformed, err)
	}
	switch {
	case f.Issuer != issuer:
		return nil, refuse(ReasonWrongIssuer, fmt.Errorf("feed of issuer %q, not %q", f.Issuer, issuer))
	case f.IssuedAt <= 0:
		return nil, refuse(ReasonMissingClaim, errors.New("the feed carries no iat"))
	}
	return f, nil
}

// Covers reports whether f lists every entry that earlier lists: each
// revoked token, key and certificate, each disabled service, and each
// service's revocation (its gen may have moved on). Within one step, where
// iat does not tell renders apart, a later render covers an earlier one.
func (f *Feed) Covers(earlier *Feed) bool {
	return coversKeys(f.Tokens, earlier.Tokens) && coversKeys(f.Disabled, earlier.Disabled) &&
		coversKeys(f.Keys, earlier.Keys) && coversKeys(f.Certificates, earlier.Certificates) &&
		coversKeys(f.Services, earlier.Services)
}

func coversKeys[V any](later, earlier map[string]V) bool {
	for k := range earlier {
		if _, ok := later[k]; !ok {
			return false
		}
	}
	return true
}

// Time is IssuedAt as a time.
func (f *Feed) Time() time.Time { return time.Unix(f.IssuedAt, 0) }
