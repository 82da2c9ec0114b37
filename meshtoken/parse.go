package meshtoken

import (
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

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

// headerNames are the JOSE header parameters a header may spell only
// exactly (RFC 7515 section 4.1).
var headerNames = []string{"alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit"}

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
	// actors and derivedFrom are act and meshauth_derived_from, read by
	// Actors and DerivedFrom (exchange.go).
	actors, actorGens, derivedFrom []string
	// Payload is the decoded claims segment, for Extra.
	Payload []byte
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
	for _, name := range RegisteredClaims {
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
	// Act and Derived are read by exchange.go.
	Act     json.RawMessage `json:"act,omitempty"`
	Derived []string        `json:"meshauth_derived_from,omitempty"`
}

// Parse checks an untrusted token completely: its size and compact form, a
// header and payload that every JSON reader reads alike, no crit, a kid that
// keys names and the one algorithm bound to it, the signature, iss, aud (when
// asked), exp, nbf and iat within leeway, and the presence of sub, jti, iat
// and nbf. Certificate binding, revocation and service state are the
// caller's next steps.
func Parse(raw string, keys KeyFunc, opts Options) (*Claims, error) {
	if len(raw) > MaxTokenLength {
		return nil, refuse(ReasonTooLarge, errors.New("token is larger than 16 KiB"))
	}
	if !WellFormed(raw) {
		return nil, refuse(ReasonMalformed, errors.New("not a compact JWS of three base64url segments"))
	}
	first := strings.IndexByte(raw, '.')
	second := first + 1 + strings.IndexByte(raw[first+1:], '.')
	header, err := base64.RawURLEncoding.DecodeString(raw[:first])
	if err != nil {
		return nil, refuse(ReasonMalformed, err)
	}
	if err := checkMembers(header, headerNames, nil); err != nil {
		return nil, refuse(ReasonMalformed, err)
	}
	payload, err := base64.RawURLEncoding.DecodeString(raw[first+1 : second])
	if err != nil {
		return nil, refuse(ReasonMalformed, err)
	}
	// The claims golang-jwt decodes below must be the claims every other
	// verifier of the same bytes sees.
	if err := CheckMembers(payload); err != nil {
		return nil, refuse(ReasonAmbiguousClaims, err)
	}

	// The header: its members were checked above, so decoding it into a
	// struct reads exactly alg, kid and crit.
	var h struct {
		Alg  string          `json:"alg"`
		Kid  string          `json:"kid"`
		Crit json.RawMessage `json:"crit"`
	}
	if err := json.Unmarshal(header, &h); err != nil {
		return nil, refuse(ReasonMalformed, err)
	}
	if !IsAlgorithm(h.Alg) {
		return nil, refuse(ReasonAlgNotAllowed, fmt.Errorf("alg %q is not one meshauth signs with", h.Alg))
	}
	if h.Crit != nil {
		return nil, refuse(ReasonCritHeader, errCritHeader)
	}
	k, err := keys(h.Kid)
	if err != nil {
		if errors.Is(err, ErrUnknownKey) {
			return nil, refuse(ReasonUnknownKey, err)
		}
		return nil, refuse(ReasonMalformed, err)
	}
	// Each kid is bound to exactly one algorithm: a token may not choose how
	// its key is used (no HS256 with a public key as the secret).
	if h.Alg != k.Algorithm {
		return nil, refuse(ReasonAlgMismatch, errAlgMismatch)
	}
	sig, err := base64.RawURLEncoding.DecodeString(raw[second+1:])
	if err != nil {
		return nil, refuse(ReasonMalformed, err)
	}
	// golang-jwt checks the signature over the segments as sent; the
	// header and payload are decoded once, here, not again by a parser.
	if err := jwt.GetSigningMethod(h.Alg).Verify(raw[:second], sig, k.Public); err != nil {
		return nil, refuse(ReasonBadSignature, err)
	}

	rc := &registered{}
	if err := json.Unmarshal(payload, rc); err != nil {
		return nil, refuse(ReasonMalformed, err)
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	validatorOpts := []jwt.ParserOption{
		jwt.WithIssuedAt(),
		jwt.WithLeeway(opts.Leeway),
		jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithExpirationRequired(),
	}
	if opts.Issuer != "" {
		validatorOpts = append(validatorOpts, jwt.WithIssuer(opts.Issuer))
	}
	if opts.Audience != "" {
		validatorOpts = append(validatorOpts, jwt.WithAudience(opts.Audience))
	}
	if err := jwt.NewValidator(validatorOpts...).Validate(rc); err != nil {
		reason := failureReason(nil, err)
		// The signature verified above, so an expired token here is one
		// of ours.
		if opts.AllowExpired && reason == ReasonExpired && rc.Subject != "" && rc.ID != "" {
			return claimsOf(rc, h.Kid, payload), refuse(reason, err)
		}
		return nil, refuse(reason, err)
	}
	if rc.Subject == "" || rc.ID == "" || rc.IssuedAt == nil || rc.NotBefore == nil {
		return nil, refuse(ReasonMissingClaim, errors.New("sub, jti, iat and nbf are required"))
	}
	c := claimsOf(rc, h.Kid, payload)
	if err := c.readDelegation(rc); err != nil {
		return nil, refuse(ReasonMalformed, err)
	}
	return c, nil
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

// failureReason maps a golang-jwt error to a reason.
func failureReason(tok *jwt.Token, err error) string {
	switch {
	case errors.Is(err, errCritHeader):
		return ReasonCritHeader
	case errors.Is(err, ErrUnknownKey):
		return ReasonUnknownKey
	case errors.Is(err, errAlgMismatch):
		return ReasonAlgMismatch
	case tok != nil && tok.Method != nil && !IsAlgorithm(tok.Method.Alg()):
		return ReasonAlgNotAllowed
	case errors.Is(err, jwt.ErrTokenMalformed), errors.Is(err, jwt.ErrTokenUnverifiable):
		return ReasonMalformed
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return ReasonBadSignature
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return ReasonMissingClaim
	case errors.Is(err, jwt.ErrTokenExpired):
		return ReasonExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return ReasonNotYetValid
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return ReasonIssuedInFuture
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return ReasonWrongIssuer
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return ReasonWrongAudience
	}
	return ReasonInvalid
}

// Thumbprint is the cnf.x5t#S256 the token is bound to, or "".
func (c *Claims) Thumbprint() string {
	if c.Confirmation == nil {
		return ""
	}
	return c.Confirmation.X5tS256
}
