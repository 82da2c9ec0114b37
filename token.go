package meshauth

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// maxTokenLength is the contract's bound on a token.
const maxTokenLength = meshtoken.MaxTokenLength

// mintedClaims are the registered claims meshauth writes, in a struct so
// that encoding them costs little next to the signature.
type mintedClaims struct {
	Issuer    string                  `json:"iss"`
	Subject   string                  `json:"sub"`
	Audience  any                     `json:"aud,omitempty"`
	IssuedAt  int64                   `json:"iat"`
	NotBefore int64                   `json:"nbf"`
	Expiry    int64                   `json:"exp"`
	ID        string                  `json:"jti"`
	Cnf       *meshtoken.Confirmation `json:"cnf,omitempty"`
	// Generation is the service's registration and revocation epoch
	// (serviceEntry.generation); empty for services stored before it existed.
	Generation string `json:"gen,omitempty"`
	// Service names the service of a JWT-SVID, whose sub is a SPIFFE ID.
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
// fixed per key, and what every token of the service repeats (its extra
// claims, iss, gen) is encoded once per cached service and issuer
// (mintTemplate), so minting appends a few numbers and strings and signs.
//
// iat and nbf are the real issue time, never later: verifiers such as PyJWT
// and jose allow no clock skew by default. Revocation of a service's tokens
// is carried by the gen claim, not by comparing iat with the revoke time.
// spiffeID is the verified SPIFFE ID of the login's certificate, or "".
func mintToken(key *signingKey, cfg *configEntry, svc *cachedService, audience []string, ttl time.Duration, x5t, spiffeID string, now time.Time) (*mintedToken, error) {
	return mintTokenWith(key, cfg, svc, audience, ttl, x5t, spiffeID, nil, now)
}

// mintTokenWith is mintToken with the service's rendered claims_template
// (the inside of a JSON object, checked when rendered), put first like the
// static claims.
func mintTokenWith(key *signingKey, cfg *configEntry, svc *cachedService, audience []string, ttl time.Duration, x5t, spiffeID string, templated []byte, now time.Time) (*mintedToken, error) {
	iat := now.Unix()
	exp := iat + int64(ttl/time.Second)
	jti := rand.Text()
	sub, service := tokenSubject(svc, spiffeID) // the service name, or a JWT-SVID's SPIFFE ID
	t := svc.mintTemplate(cfg.Issuer)

	// The payload in the member order of mintedClaims, which checkTokenSize
	// measures and TestMintMatchesEncodingJSON holds it to.
	buf := payloadPool.Get().(*[]byte)
	defer payloadPool.Put(buf)
	p := append((*buf)[:0], '{')
	if len(templated) > 0 {
		p = append(p, templated...)
		p = append(p, ',')
	}
	p = append(p, t.head[1:]...)
	p = append(p, `,"sub":`...)
	p = appendJSONString(p, sub)
	switch len(audience) {
	case 0:
	case 1:
		p = append(p, `,"aud":`...)
		p = appendJSONString(p, audience[0])
	default:
		p = append(p, `,"aud":[`...)
		for i, a := range audience {
			if i > 0 {
				p = append(p, ',')
			}
			p = appendJSONString(p, a)
		}
		p = append(p, ']')
	}
	p = append(p, `,"iat":`...)
	p = strconv.AppendInt(p, iat, 10)
	p = append(p, `,"nbf":`...)
	p = strconv.AppendInt(p, iat, 10)
	p = append(p, `,"exp":`...)
	p = strconv.AppendInt(p, exp, 10)
	p = append(p, `,"jti":`...)
	p = appendJSONString(p, jti)
	if x5t != "" {
		p = append(p, `,"cnf":{"x5t#S256":`...)
		p = appendJSONString(p, x5t)
		p = append(p, '}')
	}
	p = append(p, t.gen...)
	if service != "" {
		p = append(p, `,"meshauth_service":`...)
		p = appendJSONString(p, service)
	}
	p = append(p, '}')
	// Encoded into the same buffer, after the payload.
	encoded := base64.RawURLEncoding.AppendEncode(p[len(p):], p)
	*buf = p

	token, err := writeJWS(key.headerB64, encoded, func(input string) ([]byte, error) {
		return sign(key.method, key.signer, input)
	})
	if err != nil {
		return nil, fmt.Errorf("signing token: %w", err)
	}
	return &mintedToken{token: token, jti: jti, kid: key.entry.KID, expiresAt: time.Unix(exp, 0).UTC()}, nil
}

// writeJWS is the one writer of a compact JWS, for tokens and the
// revocation feed: headerB64 and payloadB64 (already base64url), joined by
// a dot, signed by signature, and the signature appended base64url.
func writeJWS(headerB64 string, payloadB64 []byte, signature func(signingInput string) ([]byte, error)) (string, error) {
	var sb strings.Builder
	// The signature of the largest key (RSA 2048) is 342 characters.
	sb.Grow(len(headerB64) + 1 + len(payloadB64) + 1 + 700)
	sb.WriteString(headerB64)
	sb.WriteByte('.')
	sb.Write(payloadB64)
	sig, err := signature(sb.String())
	if err != nil {
		return "", err
	}
	sb.WriteByte('.')
	sb.WriteString(base64.RawURLEncoding.EncodeToString(sig))
	return sb.String(), nil
}

// payloadPool recycles the buffers payloads are built in.
var payloadPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// mintTemplate is what every token of one cached service repeats, encoded
// once: the opening of the payload (the service's extra claims and iss) and
// its gen member. It depends on the service entry, which never changes
// while cached (a write replaces the whole cachedService, and its template
// with it), and on the issuer, which config can change on its own: a
// template built for another issuer is rebuilt, never used.
type mintTemplate struct {
	issuer string
	// head is `{` + the extra claims + `"iss":...`, without a closing brace.
	head []byte
	// gen is `,"gen":"..."`, or empty for an entry with no registration.
	gen []byte
}

// mintTemplate returns the service's template for issuer, building it on
// first use and again after the issuer changed.
func (cs *cachedService) mintTemplate(issuer string) *mintTemplate {
	if t := cs.mint.Load(); t != nil && t.issuer == issuer {
		return t
	}
	t := &mintTemplate{issuer: issuer}
	t.head = append(t.head, '{')
	if extra := cs.extraClaims(); len(extra) > 0 {
		t.head = append(t.head, extra...)
		t.head = append(t.head, ',')
	}
	t.head = append(t.head, `"iss":`...)
	t.head = appendJSONString(t.head, issuer)
	if g := cs.entry.generation(); g != "" {
		t.gen = appendJSONString([]byte(`,"gen":`), g)
	}
	cs.mint.Store(t)
	return t
}

// appendJSONString appends s as a JSON string exactly as encoding/json
// writes it. Names, thumbprints, ids and most audiences need no escaping
// and are copied; anything else goes through encoding/json.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			quoted, _ := json.Marshal(s) // a string always marshals
			return append(dst, quoted...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// prependExtraClaims splices a pre-encoded object body (`"k":"v",...`, no
// braces) in front of the members of a JSON object. The service's claims go
// first and the registered claims last: registration already refuses every
// name that folds to a registered one, and a reader that keeps the last
// duplicate (Go's encoding/json) would still read ours.
func prependExtraClaims(extra, obj []byte) []byte {
	if len(extra) == 0 {
		return obj
	}
	out := make([]byte, 0, len(obj)+len(extra)+1)
	out = append(out, '{')
	out = append(out, extra...)
	out = append(out, ',')
	return append(out, obj[1:]...)
}

// Worst-case sizes of the parts of a token that a service's registration
// does not decide, for checkTokenSize.
const (
	// worstSignatureB64 is an RS256 signature (256 bytes), base64url, plus
	// its dot.
	worstSignatureB64 = 345
	// maxIssuerLen is config's bound on issuer.
	maxIssuerLen = meshtoken.MaxIssuerLength
)

// checkTokenSize refuses a service whose largest possible token would exceed
// maxTokenLength, so that every token a login can mint is one every verifier
// accepts. The worst case takes every allowed audience at once, an issuer of
// the longest allowed length made of characters JSON escapes six-fold, a
// certificate binding and the largest numbers.
func checkTokenSize(e *serviceEntry) string {
	aud := append([]string(nil), e.AllowedAudiences...)
	if len(aud) == 0 && e.DefaultAudience != "" {
		aud = []string{e.DefaultAudience}
	}
	claims := mintedClaims{
		Issuer:     strings.Repeat("<", maxIssuerLen),
		Subject:    e.Name,
		Audience:   aud,
		IssuedAt:   math.MaxInt64,
		NotBefore:  math.MaxInt64,
		Expiry:     math.MaxInt64,
		ID:         rand.Text(),
		Cnf:        &meshtoken.Confirmation{X5tS256: strings.Repeat("x", 43)},
		Generation: newRegistration() + "." + strconv.Itoa(math.MaxInt),
	}
	registered, err := json.Marshal(claims)
	if err != nil {
		return fmt.Sprintf("encoding claims: %v", err)
	}
	var extra []byte
	if len(e.Claims) > 0 {
		full, _ := json.Marshal(e.Claims) // map[string]string always marshals
		extra = full[1 : len(full)-1]
	}
	if worst := worstCaseTemplateClaims(e); len(worst) > 0 {
		if len(extra) > 0 {
			extra = append(append(extra, ','), worst...)
		} else {
			extra = worst
		}
	}
	payload := len(prependExtraClaims(extra, registered))
	worstHeaderB64 := base64.RawURLEncoding.EncodedLen(len(meshtoken.Header(meshtoken.EdDSA, strings.Repeat("k", 43), meshtoken.TokenType))) + 1
	size := worstHeaderB64 + base64.RawURLEncoding.EncodedLen(payload) + worstSignatureB64
	if size > maxTokenLength {
		return fmt.Sprintf("a token of this service could reach %d bytes, over the %d-byte limit verifiers enforce; shorten claims or claims_template (%d bytes of JSON, each template directive counted at 512 bytes) or allowed_audiences", size, maxTokenLength, len(extra))
	}
	return ""
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

// Verification failure reasons, as verify answers them and metrics count
// them: those of the shared parser, and those only the engine knows.
const (
	reasonMalformed         = meshtoken.ReasonMalformed
	reasonTooLarge          = meshtoken.ReasonTooLarge
	reasonAmbiguousClaims   = meshtoken.ReasonAmbiguousClaims
	reasonUnknownKey        = meshtoken.ReasonUnknownKey
	reasonAlgMismatch       = meshtoken.ReasonAlgMismatch
	reasonAlgNotAllowed     = meshtoken.ReasonAlgNotAllowed
	reasonCritHeader        = meshtoken.ReasonCritHeader
	reasonBadSignature      = meshtoken.ReasonBadSignature
	reasonExpired           = meshtoken.ReasonExpired
	reasonNotYetValid       = meshtoken.ReasonNotYetValid
	reasonIssuedInFuture    = meshtoken.ReasonIssuedInFuture
	reasonWrongIssuer       = meshtoken.ReasonWrongIssuer
	reasonWrongAudience     = meshtoken.ReasonWrongAudience
	reasonMissingClaim      = meshtoken.ReasonMissingClaim
	reasonOtherRegistration = "other_registration"
	reasonUnknownService    = "unknown_service"
	reasonServiceDisabled   = "service_disabled"
	reasonServiceRevoked    = "service_revoked"
	reasonTokenRevoked      = "token_revoked"
	verificationResultGood  = "valid"
)

// parsedToken is a token whose signature and time claims verified.
type parsedToken struct {
	claims *meshtoken.Claims
	key    *signingKey
}

// parseToken checks a token with the parser the services use too
// (meshtoken.Parse): form, member names, header, the key its kid names,
// signature and registered claims. It returns a reason on failure; with
// requireUnexpired false, an expired token of ours comes back with
// reasonExpired. Service state and revocation are the caller's next step.
func parseToken(raw string, ring *keyRing, cfg *configEntry, audience string, now time.Time, requireUnexpired bool) (*parsedToken, string) {
	var key *signingKey
	keys := func(kid string) (meshtoken.Key, error) {
		key = ring.verifyingKey(kid, now)
		if key == nil {
			return meshtoken.Key{}, meshtoken.ErrUnknownKey
		}
		return meshtoken.Key{Algorithm: key.entry.Algorithm, Public: key.signer.Public()}, nil
	}
	claims, err := meshtoken.Parse(raw, keys, meshtoken.Options{
		Issuer:       cfg.Issuer,
		Audience:     audience,
		Leeway:       cfg.Leeway,
		Now:          now,
		AllowExpired: !requireUnexpired,
	})
	if err != nil {
		reason := meshtoken.ReasonOf(err)
		if claims != nil && key != nil {
			return &parsedToken{claims: claims, key: key}, reason
		}
		return nil, reason
	}
	return &parsedToken{claims: claims, key: key}, ""
}

// payloadClaims decodes every claim of a verified token for the verify
// response; the parser already refused payloads that readers disagree on.
func payloadClaims(c *meshtoken.Claims) map[string]any {
	out := map[string]any{}
	if err := json.Unmarshal(c.Payload, &out); err != nil {
		return nil
	}
	return out
}
