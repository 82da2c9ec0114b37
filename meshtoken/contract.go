package meshtoken

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
	"time"
)

// The JOSE algorithms meshauth signs with. Nothing else is accepted: not
// none, not HMAC, not an algorithm other than the one a kid is bound to.
const (
	ES256 = "ES256"
	ES384 = "ES384"
	EdDSA = "EdDSA"
	RS256 = "RS256"
)

// algorithms lists the signing algorithms, in the order help shows them.
var algorithms = [...]string{ES256, ES384, EdDSA, RS256}

// Algorithms returns the signing algorithms, in the order help shows them:
// a new slice each call, so no caller can change what another reads.
func Algorithms() []string { return slices.Clone(algorithms[:]) }

// IsAlgorithm reports whether alg is one meshauth signs with.
func IsAlgorithm(alg string) bool { return slices.Contains(algorithms[:], alg) }

// TokenType is the typ header of every meshauth token.
const TokenType = "JWT"

// jwsHeaderOut is a JOSE header as meshauth writes it: alg, kid, typ.
type jwsHeaderOut struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ"`
}

// Header is the JOSE header meshauth writes for a JWS of typ (TokenType or
// RevocationsType) signed with alg by the key kid: the one writer of it,
// for the engine's tokens, its feed and its size bounds.
func Header(alg, kid, typ string) []byte {
	b, _ := json.Marshal(jwsHeaderOut{Alg: alg, Kid: kid, Typ: typ}) // strings always marshal
	return b
}

// MaxTokenLength bounds a token before any parsing: meshauth's are well under
// 4 KiB, the engine refuses registrations whose tokens could exceed it, and a
// megabyte of base64 must cost a length check, not a decode.
const MaxTokenLength = 16 << 10

// DefaultLeeway is the clock skew allowed on exp, nbf and iat unless
// configured otherwise.
const DefaultLeeway = 30 * time.Second

// MaxKeyCacheAge is the longest a key set may be cached: the engine's
// jwks and discovery never say more in Cache-Control max-age, and a
// Verifier never believes more, so a new next key reaches every verifier
// within it.
const MaxKeyCacheAge = time.Hour

// lockoutPrefix begins the engine's answer (403) to a login refused by a
// lockout; the RFC 3339 time the lock ends follows it, and nothing else.
const lockoutPrefix = "login locked for this caller after too many failed attempts; try again after "

// LockoutMessage is the engine's answer (HTTP 403) to a login refused by a
// lockout that ends at until. LockedUntil reads it back: the one spelling of
// the answer, written by the engine and read by the client.
func LockoutMessage(until time.Time) string {
	return lockoutPrefix + until.UTC().Format(time.RFC3339)
}

// LockedUntil reads the end of a lockout from one of the engine's error
// messages (LockoutMessage); false when msg is not a lockout answer.
func LockedUntil(msg string) (time.Time, bool) {
	// Anywhere in msg: Vault or a proxy may put words before it.
	_, rest, ok := strings.Cut(msg, lockoutPrefix)
	if !ok {
		return time.Time{}, false
	}
	until, err := time.Parse(time.RFC3339, strings.TrimSpace(rest))
	return until, err == nil
}

// APIKeyHeader carries a service's API key in the one-round-trip GET login,
// never the URL (which lands in access and audit logs).
const APIKeyHeader = "X-Meshauth-Api-Key" //nolint:gosec // a header name, not a credential

// Claim names a meshauth token's payload carries itself.
const (
	ClaimIssuer    = "iss"
	ClaimSubject   = "sub"
	ClaimAudience  = "aud"
	ClaimExpiry    = "exp"
	ClaimNotBefore = "nbf"
	ClaimIssuedAt  = "iat"
	ClaimID        = "jti"
	// ClaimConfirmation is cnf (RFC 8705): the client certificate's
	// x5t#S256.
	ClaimConfirmation = "cnf"
	// ClaimGeneration is gen: the service's registration and revocation
	// epoch, which the engine's online verify and the revocation feed check.
	ClaimGeneration = "gen"
	// ClaimService is meshauth_service: the service of a JWT-SVID, whose
	// sub is a SPIFFE ID.
	ClaimService = "meshauth_service"
)

// JOSE header parameter names (RFC 7515 section 4.1).
const (
	HeaderAlgorithm = "alg"
	HeaderKeyID     = "kid"
	HeaderType      = "typ"
	HeaderCritical  = "crit"
)

// registeredClaims are the claim names a meshauth token carries itself: the
// one list behind RegisteredClaims, CheckMembers, Claims.Extra and the
// engine's discovery document.
var registeredClaims = [...]string{
	ClaimIssuer, ClaimSubject, ClaimAudience, ClaimExpiry, ClaimNotBefore, ClaimIssuedAt,
	ClaimID, ClaimConfirmation, ClaimGeneration, ClaimService,
	// Written by token exchange (exchange.go).
	ClaimActor, ClaimDerivedFrom, ClaimDerivedCnf,
}

// headerNames are the JOSE header parameters (RFC 7515 section 4.1): a
// header may spell them only exactly, and no extra claim may take them.
var headerNames = [...]string{
	HeaderAlgorithm, "jku", "jwk", HeaderKeyID, "x5u", "x5c", "x5t", "x5t#S256", HeaderType, "cty", HeaderCritical,
}

// RegisteredClaims returns the claim names a meshauth token's payload
// carries itself, a new slice each call. No other member may spell them
// differently (see CheckMembers).
func RegisteredClaims() []string { return slices.Clone(registeredClaims[:]) }

// ClaimActor is act (RFC 8693 section 4.1), which token exchange writes:
// no extra claim may take it.
const ClaimActor = "act"

// reservedNames are the registered claims (act among them) and the JOSE
// header names.
var reservedNames = append(RegisteredClaims(), headerNames[:]...)

// ReservedNames returns the names no service-defined extra claim may take
// in any spelling, a new slice each call: the registered claims (act and
// meshauth_derived_from and meshauth_derived_cnf among them) and the JOSE header parameters (RFC 7515 section 4.1). Keeping header names out of
// the payload stops a token from seeming to carry header facts among its
// claims.
func ReservedNames() []string { return slices.Clone(reservedNames) }

// IsReservedName returns the reserved name that name folds to (any case,
// Unicode simple folding), or "" when it folds to none.
func IsReservedName(name string) string { return foldsTo(name, reservedNames) }

// Confirmation is the RFC 8705 cnf claim binding a token to the client
// certificate that was verified at login.
type Confirmation struct {
	// X5tS256 is the base64url SHA-256 of the certificate's DER.
	X5tS256 string `json:"x5t#S256"`
}

// CertificateThumbprint is the RFC 8705 x5t#S256 of a certificate:
// base64url SHA-256 of its DER.
func CertificateThumbprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// LoginRefusedPrefix starts the engine's answer to every refused login (a
// 403, not a lockout): a client tells meshauth's refusal from Vault's own
// ACL refusal ("permission denied") by it. Vault wraps a plugin's error
// ("1 error occurred:\n\t* ..."), so look for it inside the message.
const LoginRefusedPrefix = "meshauth: login refused"
