package meshtoken

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"slices"
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

// Algorithms lists the signing algorithms, in the order help shows them.
var Algorithms = []string{ES256, ES384, EdDSA, RS256}

// IsAlgorithm reports whether alg is one meshauth signs with.
func IsAlgorithm(alg string) bool { return slices.Contains(Algorithms, alg) }

// MaxTokenLength bounds a token before any parsing: meshauth's are well under
// 4 KiB, the engine refuses registrations whose tokens could exceed it, and a
// megabyte of base64 must cost a length check, not a decode.
const MaxTokenLength = 16 << 10

// DefaultLeeway is the clock skew allowed on exp, nbf and iat unless
// configured otherwise.
const DefaultLeeway = 30 * time.Second

// APIKeyHeader carries a service's API key in the one-round-trip GET login,
// never the URL (which lands in access and audit logs).
const APIKeyHeader = "X-Meshauth-Api-Key" //nolint:gosec // a header name, not a credential

// RegisteredClaims are the claim names a meshauth token's payload carries
// itself; gen names the service's registration and revocation epoch, which
// the engine's online verify checks, and meshauth_service the service of a
// JWT-SVID, whose sub is a SPIFFE ID; act (RFC 8693) and
// meshauth_derived_from are written by token exchange (exchange.go). No
// other member may spell them differently (see CheckMembers).
var RegisteredClaims = []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "cnf", "gen", "meshauth_service", ClaimAct, ClaimDerivedFrom}

// ReservedNames are the names no service-defined extra claim may take in any
// spelling: the registered claims (act among them), the JOSE header parameters (RFC 7515 section 4.1) and the member
// of cnf. Keeping header names out of the payload
// stops a token from seeming to carry header facts among its claims.
var ReservedNames = append(slices.Clone(RegisteredClaims),
	"alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit")

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
