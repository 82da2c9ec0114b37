package meshtoken

import (
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// b64 decodes the segments of a token: base64url without padding, and
// strict, so bits past the last whole byte must be zero. With WellFormed
// (the alphabet only, no padding, no line breaks) each segment has exactly
// one spelling, and so does a token, but for the signature algorithm's own
// malleability (the token cache keys on the signed part for that).
var b64 = base64.RawURLEncoding.Strict()

// Key is a verification key bound to the one algorithm it verifies.
type Key struct {
	// Algorithm is the JOSE alg the key verifies; a token naming another
	// is refused (no HS256 with a public key as the secret).
	Algorithm string
	// Public is the public key.
	Public crypto.PublicKey
}

// KeyFunc returns the key that a token's kid names, or an error wrapping
// ErrUnknownKey when there is none.
type KeyFunc func(kid string) (Key, error)

// ErrUnknownKey is what a KeyFunc returns for a kid it does not hold.
var ErrUnknownKey = errors.New("unknown or expired kid")

// Options say what a token must satisfy besides its signature.
type Options struct {
	// Issuer is the required iss. Empty skips the check; only callers that
	// check iss themselves may leave it empty.
	Issuer string
	// Audience, when set, must be among the token's aud.
	Audience string
	// Leeway is the clock skew allowed on exp, nbf and iat, used as given
	// (DefaultLeeway is the usual value).
	Leeway time.Duration
	// Now is the time to check against; zero means time.Now().
	Now time.Time
	// AllowExpired returns the claims of a token that is valid except for
	// having expired, together with an error whose reason is ReasonExpired.
	AllowExpired bool
}

// Reasons a token is refused, as the engine's verify reports them.
const (
	ReasonTooLarge        = "too_large"
	ReasonMalformed       = "malformed"
	ReasonAmbiguousClaims = "ambiguous_claims"
	ReasonAlgNotAllowed   = "algorithm_not_allowed"
	ReasonUnknownKey      = "unknown_key"
	ReasonAlgMismatch     = "algorithm_mismatch"
	ReasonCritHeader      = "unsupported_critical_header"
	ReasonBadSignature    = "bad_signature"
	ReasonExpired         = "expired"
	ReasonNotYetValid     = "not_yet_valid"
	ReasonIssuedInFuture  = "issued_in_future"
	ReasonWrongIssuer     = "wrong_issuer"
	ReasonWrongAudience   = "wrong_audience"
	ReasonMissingClaim    = "missing_claim"
	ReasonInvalid         = "invalid"
)

// Error is a refused token: a reason from the list above and the cause.
type Error struct {
	// Reason is one of the Reason constants.
	Reason string
	// Err is the underlying cause.
	Err error
}

func (e *Error) Error() string { return "meshauth token refused (" + e.Reason + "): " + e.Err.Error() }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// ReasonOf returns the reason of an *Error in err's chain, or "".
func ReasonOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

func refuse(reason string, err error) *Error { return &Error{Reason: reason, Err: err} }

// Errors the key function hands golang-jwt, mapped back to reasons.
var (
	errAlgMismatch = errors.New("alg does not match the key named by kid")
	errCritHeader  = errors.New("crit header names extensions meshauth does not understand")
)

// Claims are what a verified token says.
type Claims struct {
	// Issuer is iss.
	Issuer string
	// Subject is sub: the service name, or its SPIFFE ID in a JWT-SVID.
	Subject string
	// Audience is aud, always as a list.
	Audience []string
	// IssuedAt, NotBefore and ExpiresAt are iat, nbf and exp.
	IssuedAt, NotBefore, ExpiresAt time.Time
	// ID is jti.
	ID string
	// Confirmation is cnf; nil for an unbound token.
	Confirmation *Confirmation
	// Generation is gen: the service's registration and revocation epoch.
	Generation string
	// Service is meshauth_service: the service of a JWT-SVID, whose
	// Subject is a SPIFFE ID; empty when Subject is the service name.
	Service string
	// KeyID is the kid of the key that verified the token.
	KeyID string
	// actors, actorGens and derivedFrom are act and meshauth_derived_from,
	// read by Actors, ActorGenerations and DerivedFrom (exchange.go);
	// derivedCnf is meshauth_derived_cnf (DerivedConfirmations).
	actors, actorGens, derivedFrom, derivedCnf []string
	// raw is the token as verified, for TokenFromContext.
	raw string
	// Payload is the decoded claims segment, for Extra.
	Payload []byte
}

// ServiceName is the service the token belongs to: meshauth_service in a
// JWT-SVID (whose sub is a SPIFFE ID), else sub. The engine's verify and
// the revocation feed check both read it here.
func (c *Claims) ServiceName() string {
	if c.Service != "" {
		return c.Service
	}
	return c.Subject
}

// Bound reports whether the token is bound to a client certificate.
func (c *Claims) Bound() bool { return c.Confirmation != nil && c.Confirmation.X5tS256 != "" }

// Extra decodes the claims other than the registered ones (the service's
// configured claims). It is computed on demand: most callers need only the
// registered claims.
func (c *Claims) Extra() map[string]any {
	var all map[string]any
	if json.Unmarshal(c.Payload, &all) != nil {
		return nil
	}
	for _, name := range registeredClaims {
		delete(all, name)
	}
	return all
}

// registered is what golang-jwt decodes and validates.
type registered struct {
	jwt.RegisteredClaims
	Cnf *Confirmation `json:"cnf,omitempty"`
	Gen string        `json:"gen,omitempty"`
	Svc string        `json:"meshauth_service,omitempty"`
	// Act, Derived and DerivedCnf are read by exchange.go.
	Act        json.RawMessage `json:"act,omitempty"`
	Derived    []string        `json:"meshauth_derived_from,omitempty"`
	DerivedCnf []string        `json:"meshauth_derived_cnf,omitempty"`
}

// Parse checks an untrusted token completely: its size and compact form, a
// header and payload that every JSON reader reads alike, no crit, a kid that
// keys names and the one algorithm bound to it, the signature, iss, aud (when
// asked), exp, nbf and iat within leeway, and the presence of sub, jti, iat
// and nbf. Certificate binding, revocation and service state are the
// caller's next steps.
func Parse(raw string, keys KeyFunc, opts Options) (*Claims, error) {
	h, payload, rerr := verifyJWS(raw, MaxTokenLength, keys, func(payload []byte) *Error {
		// The claims decoded below must be the claims every other
		// verifier of the same bytes sees.
		if err := CheckMembers(payload); err != nil {
			return refuse(ReasonAmbiguousClaims, err)
		}
		return nil
	})
	if rerr != nil {
		return nil, rerr
	}
	if h.Typ == RevocationsType {
		return nil, refuse(ReasonMalformed, errors.New("a revocation feed is not a token"))
	}

	rc := &registered{}
	if err := json.Unmarshal(payload, rc); err != nil {
		return nil, refuse(ReasonMalformed, err)
	}
	if err := checkConfirmation(rc.Cnf); err != nil {
		return nil, refuse(ReasonUnsupportedConfirmation, err)
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	c := claimsOf(rc, h.Kid, payload)
	reason, err := c.window(now, opts.Leeway)
	if reason == "" || reason == ReasonExpired {
		if r, e := c.identity(opts.Issuer, opts.Audience); r != "" {
			return nil, refuse(r, e)
		}
	}
	switch {
	case reason == "":
		// An exchanged token's act and meshauth_derived_from (exchange.go).
		if err := c.readDelegation(rc); err != nil {
			return nil, refuse(ReasonMalformed, err)
		}
		c.raw = raw
		return c, nil
	case reason == ReasonExpired && opts.AllowExpired:
		// The signature verified above and every other claim holds, so
		// an expired token here is one of ours.
		return c, refuse(reason, err)
	}
	return nil, refuse(reason, err)
}

// Refusals of a token's claims: golang-jwt's sentinels, so callers that
// match them with errors.Is keep working.
var (
	errNoTimes       = fmt.Errorf("%w: exp, iat and nbf", jwt.ErrTokenRequiredClaimMissing)
	errExpired       = jwt.ErrTokenExpired
	errNotYetValid   = jwt.ErrTokenNotValidYet
	errIssuedFuture  = jwt.ErrTokenUsedBeforeIssued
	errNoIdentity    = fmt.Errorf("%w: sub and jti", jwt.ErrTokenRequiredClaimMissing)
	errWrongIssuer   = jwt.ErrTokenInvalidIssuer
	errWrongAudience = jwt.ErrTokenInvalidAudience
)

// window is the one time check of a token: Parse runs it on a fresh token
// and the Verifier on a remembered one, so memory never accepts a token at
// an instant when Parse would refuse it. A token is valid from
// max(nbf, iat) - leeway inclusive until exp + leeway exclusive (RFC 7519:
// "on or after" exp it must not be accepted).
func (c *Claims) window(now time.Time, leeway time.Duration) (string, error) {
	switch {
	case c.ExpiresAt.IsZero() || c.IssuedAt.IsZero() || c.NotBefore.IsZero():
		return ReasonMissingClaim, errNoTimes
	case !now.Before(c.ExpiresAt.Add(leeway)):
		return ReasonExpired, errExpired
	case now.Add(leeway).Before(c.NotBefore):
		return ReasonNotYetValid, errNotYetValid
	case now.Add(leeway).Before(c.IssuedAt):
		return ReasonIssuedInFuture, errIssuedFuture
	}
	return "", nil
}

// identity checks what does not depend on the time: sub and jti present,
// iss (when issuer is set) and aud (when audience is set).
func (c *Claims) identity(issuer, audience string) (string, error) {
	switch {
	case c.Subject == "" || c.ID == "":
		return ReasonMissingClaim, errNoIdentity
	case issuer != "" && c.Issuer != issuer:
		return ReasonWrongIssuer, errWrongIssuer
	case audience != "" && !slices.Contains(c.Audience, audience):
		return ReasonWrongAudience, errWrongAudience
	}
	return "", nil
}

// jwsHeader is what meshauth reads of a JOSE header; its members were
// checked (checkMembers) before it is decoded, so it reads exactly these.
type jwsHeader struct {
	Alg  string          `json:"alg"`
	Kid  string          `json:"kid"`
	Typ  string          `json:"typ"`
	Crit json.RawMessage `json:"crit"`
}

// verifyJWS is the one check of a compact JWS meshauth signs, a token or
// the revocation feed: at most maxLen bytes; one spelling (WellFormed and
// strict base64url in every segment); a header whose members every JSON
// reader reads alike; no crit; an alg meshauth signs with; a kid that keys
// names and the one algorithm bound to it; a payload that checkPayload
// accepts; the signature over the segments as sent. It returns the header
// and the decoded payload.
func verifyJWS(raw string, maxLen int, keys KeyFunc, checkPayload func([]byte) *Error) (jwsHeader, []byte, *Error) {
	var h jwsHeader
	if len(raw) > maxLen {
		return h, nil, refuse(ReasonTooLarge, fmt.Errorf("larger than %d bytes", maxLen))
	}
	if !WellFormed(raw) {
		return h, nil, refuse(ReasonMalformed, errors.New("not a compact JWS of three base64url segments"))
	}
	first := strings.IndexByte(raw, '.')
	second := first + 1 + strings.IndexByte(raw[first+1:], '.')
	header, err := b64.DecodeString(raw[:first])
	if err != nil {
		return h, nil, refuse(ReasonMalformed, err)
	}
	if err := checkMembers(header, headerNames[:], nil); err != nil {
		return h, nil, refuse(ReasonMalformed, err)
	}
	payload, err := b64.DecodeString(raw[first+1 : second])
	if err != nil {
		return h, nil, refuse(ReasonMalformed, err)
	}
	if e := checkPayload(payload); e != nil {
		return h, nil, e
	}
	if err := json.Unmarshal(header, &h); err != nil {
		return h, nil, refuse(ReasonMalformed, err)
	}
	if !IsAlgorithm(h.Alg) {
		return h, nil, refuse(ReasonAlgNotAllowed, fmt.Errorf("alg %q is not one meshauth signs with", h.Alg))
	}
	if h.Crit != nil {
		return h, nil, refuse(ReasonCritHeader, errCritHeader)
	}
	k, err := keys(h.Kid)
	if err != nil {
		if errors.Is(err, ErrUnknownKey) {
			return h, nil, refuse(ReasonUnknownKey, err)
		}
		return h, nil, refuse(ReasonMalformed, err)
	}
	// Each kid is bound to exactly one algorithm: a token may not choose how
	// its key is used (no HS256 with a public key as the secret).
	if h.Alg != k.Algorithm {
		return h, nil, refuse(ReasonAlgMismatch, errAlgMismatch)
	}
	sig, err := b64.DecodeString(raw[second+1:])
	if err != nil {
		return h, nil, refuse(ReasonMalformed, err)
	}
	// golang-jwt checks the signature over the segments as sent; the
	// header and payload are decoded once, here, not again by a parser.
	if err := algorithmTable[h.Alg].Method.Verify(raw[:second], sig, k.Public); err != nil {
		return h, nil, refuse(ReasonBadSignature, err)
	}
	return h, payload, nil
}

func claimsOf(rc *registered, kid string, payload []byte) *Claims {
	c := &Claims{
		Issuer:       rc.Issuer,
		Subject:      rc.Subject,
		Audience:     rc.Audience,
		ID:           rc.ID,
		Confirmation: rc.Cnf,
		Generation:   rc.Gen,
		Service:      rc.Svc,
		KeyID:        kid,
		Payload:      payload,
	}
	if rc.ExpiresAt != nil {
		c.ExpiresAt = rc.ExpiresAt.Time
	}
	if rc.IssuedAt != nil {
		c.IssuedAt = rc.IssuedAt.Time
	}
	if rc.NotBefore != nil {
		c.NotBefore = rc.NotBefore.Time
	}
	return c
}

// Thumbprint is the cnf.x5t#S256 the token is bound to, or "".
func (c *Claims) Thumbprint() string {
	if c.Confirmation == nil {
		return ""
	}
	return c.Confirmation.X5tS256
}
