package meshauth

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/datapunk/vault-plugin-secrets-meshauth/internal/jws"
)

// maxTokenLength bounds a token before any parsing: ours are well under 4 KiB,
// and a megabyte of base64 must cost a length check, not a decode.
const maxTokenLength = 16 << 10

// cnfClaim is the RFC 8705 confirmation claim binding a token to the client
// certificate that was verified at login.
type cnfClaim struct {
	// X5tS256 is the base64url SHA-256 of the certificate's DER.
	X5tS256 string `json:"x5t#S256"`
}

// mintedClaims are the registered claims meshauth writes, in a struct so
// that encoding them costs little next to the signature.
type mintedClaims struct {
	Issuer    string    `json:"iss"`
	Subject   string    `json:"sub"`
	Audience  any       `json:"aud,omitempty"`
	IssuedAt  int64     `json:"iat"`
	NotBefore int64     `json:"nbf"`
	Expiry    int64     `json:"exp"`
	ID        string    `json:"jti"`
	Cnf       *cnfClaim `json:"cnf,omitempty"`
	// Service names the service of a JWT-SVID, whose sub is a SPIFFE ID.
	Service string `json:"meshauth_service,omitempty"`
}

// verifiedClaims are the claims verify decodes and golang-jwt validates.
type verifiedClaims struct {
	jwt.RegisteredClaims
	Cnf *cnfClaim `json:"cnf,omitempty"`
	// Service is a JWT-SVID's service; read exactly by tokenServiceName.
	Service string `json:"meshauth_service,omitempty"`
}

// mintedToken is a signed token and the facts a login answers with.
type mintedToken struct {
	token     string
	jti       string
	kid       string
	expiresAt time.Time
}

// mintToken signs a token for svc with the ring's current key. The header is
// fixed per key and the service's extra claims are encoded once per cached
// service, so minting is one small JSON encoding plus the signature.
// spiffeID is the verified SPIFFE ID of the login's certificate, or "".
func mintToken(key *signingKey, cfg *configEntry, svc *cachedService, audience []string, ttl time.Duration, x5t, spiffeID string, now time.Time) (*mintedToken, error) {
	iat := now.Unix()
	// A token minted in the same second as services/:name/revoke would be
	// revoked at birth (iat is in whole seconds); start it one second later,
	// well inside the leeway.
	if iat <= svc.entry.RevokedBefore {
		iat = svc.entry.RevokedBefore + 1
	}
	sub, service := tokenSubject(svc, spiffeID) // the service name, or a JWT-SVID's SPIFFE ID
	claims := mintedClaims{
		Issuer:    cfg.Issuer,
		Subject:   sub,
		Service:   service,
		IssuedAt:  iat,
		NotBefore: iat,
		Expiry:    now.Add(ttl).Unix(),
		ID:        rand.Text(),
	}
	switch len(audience) {
	case 0:
	case 1:
		claims.Audience = audience[0]
	default:
		claims.Audience = audience
	}
	if x5t != "" {
		claims.Cnf = &cnfClaim{X5tS256: x5t}
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return nil, fmt.Errorf("encoding claims: %w", err)
	}
	payload = appendExtraClaims(payload, svc.extraClaims())

	var sb strings.Builder
	sb.Grow(len(key.headerB64) + 1 + base64.RawURLEncoding.EncodedLen(len(payload)) + 1 + 700)
	sb.WriteString(key.headerB64)
	sb.WriteByte('.')
	sb.WriteString(base64.RawURLEncoding.EncodeToString(payload))
	sig, err := key.method.Sign(sb.String(), key.signer)
	if err != nil {
		return nil, fmt.Errorf("signing token: %w", err)
	}
	sb.WriteByte('.')
	sb.WriteString(base64.RawURLEncoding.EncodeToString(sig))
	return &mintedToken{token: sb.String(), jti: claims.ID, kid: key.entry.KID, expiresAt: time.Unix(claims.Expiry, 0).UTC()}, nil
}

// appendExtraClaims splices a pre-encoded object body (`"k":"v",...`, no
// braces) into the end of a JSON object.
func appendExtraClaims(obj, extra []byte) []byte {
	if len(extra) == 0 {
		return obj
	}
	out := make([]byte, 0, len(obj)+len(extra)+1)
	out = append(out, obj[:len(obj)-1]...)
	out = append(out, ',')
	out = append(out, extra...)
	return append(out, '}')
}

// extraClaims returns the service's claims encoded as the inside of a JSON
// object, computed once per cached service.
func (cs *cachedService) extraClaims() []byte {
	cs.claimsOnce.Do(func() {
		if len(cs.entry.Claims) == 0 {
			return
		}
		full, _ := json.Marshal(cs.entry.Claims) // map[string]string always marshals
		cs.claimsJSON = full[1 : len(full)-1]
	})
	return cs.claimsJSON
}

// Verification failure reasons, as verify answers them and metrics count them.
const (
	reasonMalformed        = "malformed"
	reasonTooLarge         = "too_large"
	reasonAlgNotAllowed    = "algorithm_not_allowed"
	reasonUnknownKey       = "unknown_key"
	reasonAlgMismatch      = "algorithm_mismatch"
	reasonCritHeader       = "unsupported_critical_header"
	reasonBadSignature     = "bad_signature"
	reasonExpired          = "expired"
	reasonNotYetValid      = "not_yet_valid"
	reasonIssuedInFuture   = "issued_in_future"
	reasonWrongIssuer      = "wrong_issuer"
	reasonWrongAudience    = "wrong_audience"
	reasonMissingClaim     = "missing_claim"
	reasonUnknownService   = "unknown_service"
	reasonServiceDisabled  = "service_disabled"
	reasonServiceRevoked   = "service_revoked"
	reasonTokenRevoked     = "token_revoked"
	reasonInvalid          = "invalid"
	verificationResultGood = "valid"
)

// Errors the key function returns, mapped to reasons.
var (
	errUnknownKey  = errors.New("unknown or expired kid")
	errAlgMismatch = errors.New("alg does not match the key named by kid")
	errCritHeader  = errors.New("crit header names extensions meshauth does not understand")
)

// parsedToken is a token whose signature and time claims verified.
type parsedToken struct {
	claims *verifiedClaims
	key    *signingKey
}

// parseToken checks a token's form, header, signature and registered claims
// against the ring and config. It returns a reason on failure. Service state
// and revocation are the caller's next step.
func parseToken(raw string, ring *keyRing, cfg *configEntry, audience string, now time.Time, requireUnexpired bool) (*parsedToken, string) {
	if len(raw) > maxTokenLength {
		return nil, reasonTooLarge
	}
	if !jws.WellFormed(raw) {
		return nil, reasonMalformed
	}
	var key *signingKey
	keyFunc := func(t *jwt.Token) (any, error) {
		if _, ok := t.Header["crit"]; ok {
			return nil, errCritHeader
		}
		kid, _ := t.Header["kid"].(string)
		key = ring.verifyingKey(kid, now)
		if key == nil {
			return nil, errUnknownKey
		}
		// Each kid is bound to exactly one algorithm: a token may not choose
		// how its key is used (HS256 with a public key as the secret).
		if t.Method.Alg() != key.entry.Algorithm {
			return nil, errAlgMismatch
		}
		return key.signer.Public(), nil
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(supportedAlgorithms),
		jwt.WithIssuer(cfg.Issuer),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithExpirationRequired(),
	}
	if audience != "" {
		opts = append(opts, jwt.WithAudience(audience))
	}
	claims := &verifiedClaims{}
	tok, err := jwt.NewParser(opts...).ParseWithClaims(raw, claims, keyFunc)
	if err != nil {
		reason := failureReason(tok, err)
		if !requireUnexpired && reason == reasonExpired && key != nil {
			return &parsedToken{claims: claims, key: key}, reasonExpired
		}
		return nil, reason
	}
	if claims.Subject == "" || claims.ID == "" || claims.IssuedAt == nil || claims.NotBefore == nil {
		return nil, reasonMissingClaim
	}
	return &parsedToken{claims: claims, key: key}, ""
}

// failureReason maps a golang-jwt error to the reason verify reports.
func failureReason(tok *jwt.Token, err error) string {
	switch {
	case errors.Is(err, errCritHeader):
		return reasonCritHeader
	case errors.Is(err, errUnknownKey):
		return reasonUnknownKey
	case errors.Is(err, errAlgMismatch):
		return reasonAlgMismatch
	case tok != nil && tok.Method != nil && !isSupportedAlgorithm(tok.Method.Alg()):
		return reasonAlgNotAllowed
	case errors.Is(err, jwt.ErrTokenMalformed), errors.Is(err, jwt.ErrTokenUnverifiable):
		return reasonMalformed
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return reasonBadSignature
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return reasonMissingClaim
	case errors.Is(err, jwt.ErrTokenExpired):
		return reasonExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return reasonNotYetValid
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return reasonIssuedInFuture
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return reasonWrongIssuer
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return reasonWrongAudience
	}
	return reasonInvalid
}

// payloadClaims decodes every claim of an already verified token for the
// verify response.
func payloadClaims(raw string) map[string]any {
	parts := strings.SplitN(raw, ".", 3)
	body, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil
	}
	out := map[string]any{}
	if err := json.Unmarshal(body, &out); err != nil {
		return nil
	}
	return out
}
