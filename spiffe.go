package meshauth

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// SPIFFE identity: services named by SPIFFE ID (spiffe://<trust-domain>/<path>)
// instead of DNS hostnames, matched on the single URI SAN of an X.509-SVID,
// and JWT-SVID tokens whose sub is that ID. Rules follow the SPIFFE ID,
// X.509-SVID and JWT-SVID specifications.

const (
	// spiffeScheme starts every SPIFFE ID, in exactly this spelling.
	spiffeScheme = "spiffe://"
	// maxSPIFFEIDLen is the longest SPIFFE ID the spec has implementations
	// support (2048 bytes).
	maxSPIFFEIDLen = 2048
	// maxTrustDomainLen is the longest trust domain name (255 bytes).
	maxTrustDomainLen = 255
	// spiffePrefixSuffix marks a spiffe_ids entry that matches every ID
	// strictly under its path.
	spiffePrefixSuffix = "/*"

	// tokenSubjectName makes sub the service name (the default).
	tokenSubjectName = "name"
	// tokenSubjectSPIFFEID makes sub the verified SPIFFE ID: a JWT-SVID.
	tokenSubjectSPIFFEID = "spiffe_id" //nolint:gosec // a field value, not a credential

	// serviceClaim names the service in a JWT-SVID, whose sub is a SPIFFE ID
	// that one or more services may match: verify finds the service by it,
	// never by searching for a service that matches sub.
	serviceClaim = "meshauth_service"

	// reasonSPIFFEIDNotRegistered is verify's reason for a JWT-SVID whose
	// sub its service no longer lists (or that names no service properly).
	reasonSPIFFEIDNotRegistered = "spiffe_id_not_registered"
	// reasonIdentityWithdrawn is verify's reason for a token whose service's
	// identity no longer holds: its SPIFFE IDs' trust domain is no longer
	// registered, or a JWT-SVID the engine would no longer mint.
	reasonIdentityWithdrawn = "identity_withdrawn"
)

// jwtSVIDAlgorithms are the algorithms meshauth signs with that the JWT-SVID
// specification allows (RS/ES/PS 256-512). EdDSA is not among them.
var jwtSVIDAlgorithms = []string{algES256, algES384, algRS256}

// spiffeID is a well-formed SPIFFE ID.
type spiffeID struct {
	// trustDomain is the lower-case trust domain name.
	trustDomain string
	// path is "" or "/seg(/seg)*".
	path string
}

// String renders the ID in its one spelling.
func (id spiffeID) String() string {
	return spiffeScheme + id.trustDomain + id.path
}

// parseSPIFFEID parses s strictly per the SPIFFE ID specification: the
// lower-case scheme, a trust domain of [a-z0-9._-], path segments of
// [A-Za-z0-9._-] with no empty, "." or ".." segment and no trailing slash,
// no port, user info, query, fragment or percent-encoding, and at most 2048
// bytes. Nothing is normalised: an ID has exactly one accepted spelling.
func parseSPIFFEID(s string) (spiffeID, error) {
	if len(s) > maxSPIFFEIDLen {
		return spiffeID{}, fmt.Errorf("is %d bytes; a SPIFFE ID has at most %d", len(s), maxSPIFFEIDLen)
	}
	rest, ok := strings.CutPrefix(s, spiffeScheme)
	if !ok {
		return spiffeID{}, errors.New("does not start with spiffe:// (the scheme is lower case)")
	}
	td, path := rest, ""
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		td, path = rest[:i], rest[i:]
	}
	if err := checkTrustDomain(td); err != nil {
		return spiffeID{}, err
	}
	if path == "" {
		return spiffeID{trustDomain: td}, nil
	}
	for seg := range strings.SplitSeq(path[1:], "/") {
		switch seg {
		case "":
			return spiffeID{}, errors.New("has an empty path segment (a double or trailing slash)")
		case ".", "..":
			return spiffeID{}, fmt.Errorf("has a %q path segment", seg)
		}
		for i := 0; i < len(seg); i++ {
			if c := seg[i]; !isPathChar(c) {
				return spiffeID{}, fmt.Errorf("has %s in its path; path segments allow only ASCII letters, digits, '.', '-' and '_'", describeByte(c))
			}
		}
	}
	return spiffeID{trustDomain: td, path: path}, nil
}

// checkTrustDomain checks a trust domain name: 1-255 bytes of lower-case
// letters, digits, '.', '-' and '_'.
func checkTrustDomain(td string) error {
	switch {
	case td == "":
		return errors.New("has no trust domain")
	case len(td) > maxTrustDomainLen:
		return fmt.Errorf("has a trust domain of %d bytes; at most %d are allowed", len(td), maxTrustDomainLen)
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '.' && c != '-' && c != '_' {
			return fmt.Errorf("has %s in its trust domain; a trust domain allows only lower-case ASCII letters, digits, '.', '-' and '_'", describeByte(c))
		}
	}
	return nil
}

// describeByte names a refused byte for a message: the character when it
// is printable ASCII, else "a non-ASCII or control byte".
func describeByte(c byte) string {
	if c < 0x20 || c >= 0x7f {
		return fmt.Sprintf("the byte 0x%02x (non-ASCII or control)", c)
	}
	return fmt.Sprintf("the character %q", c)
}

// isPathChar reports whether c may appear in a SPIFFE ID path segment.
func isPathChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_'
}

// spiffePattern is one spiffe_ids entry: an exact ID, or a prefix that
// matches every ID strictly under its path.
type spiffePattern struct {
	id     spiffeID
	prefix bool
}

// parseSPIFFEPattern parses a spiffe_ids entry. An exact entry must name a
// workload (have a path); a prefix entry is an ID followed by "/*", and
// spiffe://<td>/* matches every workload of the trust domain.
func parseSPIFFEPattern(s string) (spiffePattern, error) {
	if base, ok := strings.CutSuffix(s, spiffePrefixSuffix); ok {
		id, err := parseSPIFFEID(base)
		if err != nil {
			return spiffePattern{}, err
		}
		return spiffePattern{id: id, prefix: true}, nil
	}
	id, err := parseSPIFFEID(s)
	if err != nil {
		return spiffePattern{}, err
	}
	if id.path == "" {
		return spiffePattern{}, errors.New("names a trust domain, not a workload; give a path, or end it in /* for every workload under it")
	}
	return spiffePattern{id: id}, nil
}

// matches reports whether a well-formed ID is this entry's ID or, for a
// prefix, strictly under its path: .../ns/shop/* matches .../ns/shop/sa/x
// but neither .../ns/shop itself nor .../ns/shopping.
func (p spiffePattern) matches(id spiffeID) bool {
	if id.trustDomain != p.id.trustDomain {
		return false
	}
	if !p.prefix {
		return id.path == p.id.path
	}
	return strings.HasPrefix(id.path, p.id.path+"/")
}

// parseSPIFFEPatterns parses every stored spiffe_ids entry.
func parseSPIFFEPatterns(entries []string) ([]spiffePattern, error) {
	out := make([]spiffePattern, 0, len(entries))
	for _, s := range entries {
		p, err := parseSPIFFEPattern(s)
		if err != nil {
			return nil, fmt.Errorf("spiffe_ids entry %q %w", s, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// leafSPIFFEID returns the SPIFFE ID of a certificate shaped as an
// X.509-SVID leaf: exactly one URI SAN holding a SPIFFE ID with a path, not a
// CA, digitalSignature among its key usages and neither keyCertSign nor
// cRLSign. Its DNS SANs and subject play no part.
func leafSPIFFEID(c *x509.Certificate) (spiffeID, error) {
	switch {
	case len(c.URIs) != 1:
		return spiffeID{}, fmt.Errorf("certificate has %d URI SANs; an X.509-SVID has exactly one", len(c.URIs))
	case c.IsCA:
		return spiffeID{}, errors.New("certificate is a CA certificate; an X.509-SVID leaf is not")
	case c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		return spiffeID{}, errors.New("certificate's key usage lacks digitalSignature, which an X.509-SVID leaf has")
	case c.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
		return spiffeID{}, errors.New("certificate's key usage includes keyCertSign or cRLSign, which an X.509-SVID leaf must not")
	}
	// Go parsed the SAN into a url.URL; its String is the form go-spiffe
	// reads too, and anything it re-encodes (percent-escapes, user info,
	// query) fails the strict parse.
	raw := c.URIs[0].String()
	id, err := parseSPIFFEID(raw)
	if err != nil {
		return spiffeID{}, fmt.Errorf("certificate's URI SAN %q %w", raw, err)
	}
	if id.path == "" {
		return spiffeID{}, fmt.Errorf("certificate's URI SAN %q names a trust domain, not a workload", raw)
	}
	return id, nil
}

// matchSPIFFE checks a presented or registered leaf against a service's
// spiffe_ids and returns its SPIFFE ID.
func matchSPIFFE(leaf *x509.Certificate, patterns []spiffePattern) (spiffeID, error) {
	id, err := leafSPIFFEID(leaf)
	if err != nil {
		return spiffeID{}, err
	}
	for _, p := range patterns {
		if p.matches(id) {
			return id, nil
		}
	}
	return spiffeID{}, fmt.Errorf("certificate's SPIFFE ID %q matches none of spiffe_ids", id)
}

// matchesIdentity is the name check of a presented leaf: its single URI SAN
// against spiffe_ids for a service registered by SPIFFE ID (DNS SANs are
// then neither required nor consulted), otherwise its DNS SANs against
// hostnames.
func (t *serviceTrust) matchesIdentity(leaf *x509.Certificate) error {
	if len(t.spiffe) > 0 {
		_, err := matchSPIFFE(leaf, t.spiffe)
		return err
	}
	return coversHostnames(leaf, t.hostnames)
}

// spiffeLoginID runs after the certificate check of a login. For a service
// registered by SPIFFE ID it returns the verified ID of the presented leaf
// (the chain check already verified it against the bundle of the ID's
// trust domain, verifyPresentedChain). It passes x5t and certErr through,
// and drops x5t when the ID fails, so no token is bound to that certificate
// and lockout counts the caller by address.
func spiffeLoginID(svc *cachedService, chain []*x509.Certificate, x5t string, certErr error) (string, string, error) {
	if certErr != nil || svc == nil || svc.trust == nil || len(svc.trust.spiffe) == 0 {
		return x5t, "", certErr
	}
	id, err := matchSPIFFE(chain[0], svc.trust.spiffe)
	if err != nil {
		return "", "", err
	}
	return x5t, id.String(), nil
}

// jwtSVIDLoginCheck refuses to mint a JWT-SVID that the specification
// forbids: without a verified SPIFFE ID or an audience, or signed with an
// algorithm outside its list. Registration and config writes already refuse
// these; this guards the moment of minting (a key ring still signing with
// EdDSA after a failed rotation, a certificate-less login of a service with
// require_mtls=false stored by an older release).
func jwtSVIDLoginCheck(svc *cachedService, cfg *configEntry, key *signingKey, id string, audience []string) string {
	switch {
	case svc.entry.TokenSubject != tokenSubjectSPIFFEID:
		return ""
	case id == "":
		return "this service issues JWT-SVIDs (token_subject=spiffe_id), which need a client certificate carrying its SPIFFE ID"
	case !inEngineTrustDomain(id, cfg):
		// config trust_domain may have moved since the service was
		// registered: the engine mints JWT-SVIDs only for its own.
		return fmt.Sprintf("JWT-SVIDs are minted only for IDs in config trust_domain (%q), and %s is not; an operator sets the service's token_subject=name, or moves it into the trust domain", cfg.TrustDomain, id)
	case len(audience) == 0:
		return "a JWT-SVID must carry an audience; request one, or set the service's default_audience"
	case !slices.Contains(jwtSVIDAlgorithms, key.entry.Algorithm):
		return fmt.Sprintf("the current signing key is %s, which JWT-SVIDs may not use; rotate to %s (keys/rotate after setting config signing_algorithm)", key.entry.Algorithm, strings.Join(jwtSVIDAlgorithms, ", "))
	}
	return ""
}

// inEngineTrustDomain reports whether a SPIFFE ID lies in config
// trust_domain, the only trust domain the engine mints JWT-SVIDs for: the
// engine's keys speak for its own trust domain, never a federated one.
func inEngineTrustDomain(id string, cfg *configEntry) bool {
	return cfg.TrustDomain != "" && strings.HasPrefix(id, spiffeScheme+cfg.TrustDomain+"/")
}

// tokenSubject returns the sub of a token minted for svc, and the service
// claim that names svc when sub is a SPIFFE ID ("" otherwise).
func tokenSubject(svc *cachedService, id string) (sub, service string) {
	if svc.entry.TokenSubject == tokenSubjectSPIFFEID && id != "" {
		return id, svc.entry.Name
	}
	return svc.entry.Name, ""
}

// tokenServiceName returns the service a verified token belongs to, or a
// verify reason. A token whose sub is the service name carries no service
// claim. A JWT-SVID (sub a SPIFFE ID, which no service name can look like
// because names hold no ':' or '/') names its service in serviceClaim. The
// parser already refused payloads that JSON readers could read differently
// (a duplicate member, or one that folds to serviceClaim without being it,
// which Go's encoding/json would otherwise let pick the service). The caller
// then checks that the service lists sub.
func tokenServiceName(c *meshtoken.Claims) (string, string) {
	if !strings.HasPrefix(c.Subject, spiffeScheme) {
		if c.Service != "" {
			return "", reasonSPIFFEIDNotRegistered
		}
		return c.Subject, ""
	}
	if !serviceNameRe.MatchString(c.Service) {
		return "", reasonMissingClaim
	}
	return c.Service, ""
}

// subjectBelongs reports whether a verified token's sub still belongs to
// svc: its name, or for a JWT-SVID one of the IDs the service lists now, so
// that removing an ID from spiffe_ids also ends the tokens issued for it.
func subjectBelongs(svc *cachedService, sub string) bool {
	if !strings.HasPrefix(sub, spiffeScheme) {
		return sub == svc.entry.Name
	}
	id, err := parseSPIFFEID(sub)
	if err != nil || svc.trust == nil {
		return false
	}
	for _, p := range svc.trust.spiffe {
		if p.matches(id) {
			return true
		}
	}
	return false
}

// serviceOfClaims names the service of a verified token for records
// (revocations): the service claim of a JWT-SVID, else sub.
func serviceOfClaims(c *meshtoken.Claims) string { return c.ServiceName() }

// addSPIFFEServiceFields adds the SPIFFE fields to the services/:name schema.
func addSPIFFEServiceFields(fields map[string]*framework.FieldSchema) {
	fields["spiffe_ids"] = &framework.FieldSchema{
		Type: framework.TypeCommaStringSlice,
		Description: "SPIFFE IDs the service's client certificate may carry (list or comma-separated): spiffe://<trust-domain>/<path> exactly, " +
			"or ending in /* for every ID strictly under that path (spiffe://td/ns/shop/* matches spiffe://td/ns/shop/sa/orders, not spiffe://td/ns/shop nor spiffe://td/ns/shopping). " +
			"The certificate must then carry exactly one URI SAN, which must match; DNS SANs are not consulted, so hostnames may not be set too. " +
			"Each ID's trust domain must be registered at trust_domains/<name>: the presented SVID must chain to that bundle, and to certificate or ca_chain as well when set (they can only narrow). " +
			"An exact ID belongs to one service, and a /* entry may not cover another service's ID or entry. Removing or narrowing an entry revokes the service's tokens issued so far. Default: none.",
	}
	fields["trust_domains"] = &framework.FieldSchema{
		Type:        framework.TypeCommaStringSlice,
		Description: "Withdrawn: a write naming it is refused. Which CAs speak for a trust domain is the operator's decision, at trust_domains/<name>; a stored value (from an older release) is ignored and dropped by the next write.",
	}
	fields["token_subject"] = &framework.FieldSchema{
		Type: framework.TypeString,
		Description: "What the tokens' sub claim is: name (the service name) or spiffe_id (the verified SPIFFE ID of the login's client certificate; the token is a JWT-SVID " +
			"and also names the service in its meshauth_service claim). spiffe_id needs spiffe_ids all in config trust_domain (a service of a federated trust domain gets name tokens), " +
			"require_mtls, an audience (default_audience or allowed_audiences) and a signing_algorithm other than EdDSA. Default: name.",
		AllowedValues: []any{tokenSubjectName, tokenSubjectSPIFFEID},
	}
}

// applySPIFFEFields copies the SPIFFE fields the request names into e.
func applySPIFFEFields(e *serviceEntry, d *framework.FieldData) string {
	if v, ok := d.GetOk("spiffe_ids"); ok {
		ids := v.([]string)
		if len(ids) > maxListEntries {
			return fmt.Sprintf("spiffe_ids has %d entries; at most %d are allowed", len(ids), maxListEntries)
		}
		cleaned := make([]string, 0, len(ids))
		for _, s := range ids {
			s = strings.TrimSpace(s)
			switch {
			case s == "":
				return "spiffe_ids has an empty entry"
			case len(s) > maxSPIFFEIDLen+len(spiffePrefixSuffix):
				return fmt.Sprintf("spiffe_ids has an entry longer than %d bytes", maxSPIFFEIDLen)
			case slices.Contains(cleaned, s):
				return fmt.Sprintf("spiffe_ids lists %q twice", s)
			}
			cleaned = append(cleaned, s)
		}
		e.SPIFFEIDs = cleaned
	}
	if _, ok := d.Raw["trust_domains"]; ok {
		return errTrustDomainsWithdrawn
	}
	if v, ok := d.GetOk("token_subject"); ok {
		e.TokenSubject = strings.TrimSpace(v.(string))
	}
	return ""
}

// validateServiceSPIFFE checks a service's SPIFFE fields as they would be
// stored and names the first check that failed, or returns "".
func validateServiceSPIFFE(e *serviceEntry, cfg *configEntry) string {
	for k := range e.Claims {
		if strings.EqualFold(k, serviceClaim) {
			return fmt.Sprintf("claims may not set %q: meshauth sets %s itself", k, serviceClaim)
		}
	}
	switch e.TokenSubject {
	case "", tokenSubjectName, tokenSubjectSPIFFEID:
	default:
		return fmt.Sprintf("token_subject %q is not one of %s, %s", e.TokenSubject, tokenSubjectName, tokenSubjectSPIFFEID)
	}
	patterns, err := parseSPIFFEPatterns(e.SPIFFEIDs)
	if err != nil {
		return err.Error()
	}
	if len(patterns) > 0 {
		if msg := checkSPIFFETrust(e, patterns); msg != "" {
			return msg
		}
	}
	if e.TokenSubject == tokenSubjectSPIFFEID {
		return checkJWTSVIDService(e, cfg)
	}
	return ""
}

// checkSPIFFETrust checks spiffe_ids against the other identity fields and
// the registered certificate. Which trust domains are registered, and who
// else claims an ID, is checked against storage (checkRegistrant).
func checkSPIFFETrust(e *serviceEntry, patterns []spiffePattern) string {
	if len(e.Hostnames) > 0 {
		return "a service is matched either by spiffe_ids (the certificate's URI SAN) or by hostnames (its DNS SANs), not both; remove one"
	}
	if e.Certificate == "" {
		return ""
	}
	certs, err := parseCertificates("certificate", e.Certificate, 1)
	if err != nil {
		return err.Error()
	}
	if _, err := matchSPIFFE(certs[0], patterns); err != nil {
		return err.Error()
	}
	return ""
}

// checkJWTSVIDService checks what a service issuing JWT-SVIDs needs.
func checkJWTSVIDService(e *serviceEntry, cfg *configEntry) string {
	switch {
	case len(e.SPIFFEIDs) == 0:
		return "token_subject=spiffe_id makes sub the certificate's SPIFFE ID; register the service's spiffe_ids first"
	case !e.RequireMTLS:
		return "token_subject=spiffe_id needs require_mtls=true: sub is the SPIFFE ID of a verified client certificate"
	case e.DefaultAudience == "" && len(e.AllowedAudiences) == 0:
		return "token_subject=spiffe_id issues JWT-SVIDs, which must carry an audience; set default_audience or allowed_audiences"
	}
	for _, s := range e.SPIFFEIDs {
		if !inEngineTrustDomain(s, cfg) {
			return fmt.Sprintf("token_subject=spiffe_id mints JWT-SVIDs, which the engine signs only for IDs in config trust_domain (%q); spiffe_ids entry %q is not in it. "+
				"A service of a federated trust domain logs in with token_subject=name", cfg.TrustDomain, s)
		}
	}
	return jwtSVIDAlgorithmMessage(cfg.SigningAlgorithm)
}

// jwtSVIDAlgorithmMessage refuses a signing algorithm JWT-SVIDs may not use.
func jwtSVIDAlgorithmMessage(alg string) string {
	if slices.Contains(jwtSVIDAlgorithms, alg) {
		return ""
	}
	return fmt.Sprintf("token_subject=spiffe_id cannot be used while config signing_algorithm is %s: the JWT-SVID specification does not allow %s; "+
		"set signing_algorithm to one of %s first", alg, alg, strings.Join(jwtSVIDAlgorithms, ", "))
}

// lockForJWTSVID is taken by a service write that makes the service issue
// JWT-SVIDs. It holds keyRingLock, which config writes hold too, from a
// fresh look at signing_algorithm until the service is stored, so a service
// and an EdDSA config cannot both pass their checks at once. The caller runs
// unlock after its write. The lock order is service lock, then keyRingLock;
// nothing holds keyRingLock while taking a service lock.
func (b *backend) lockForJWTSVID(ctx context.Context, s logical.Storage, e *serviceEntry) (unlock func(), msg string, err error) {
	if e.TokenSubject != tokenSubjectSPIFFEID {
		return func() {}, "", nil
	}
	b.keyRingLock.Lock()
	cfg, err := b.getConfig(ctx, s)
	if err != nil {
		b.keyRingLock.Unlock()
		return nil, "", err
	}
	return b.keyRingLock.Unlock, jwtSVIDAlgorithmMessage(cfg.SigningAlgorithm), nil
}

// checkSPIFFEConfig runs inside a config write (keyRingLock held). It
// refuses EdDSA while any service issues JWT-SVIDs, and warns about services
// that issue JWT-SVIDs for IDs outside trust_domain when it changes (their
// logins are then refused until they switch to token_subject=name).
func (b *backend) checkSPIFFEConfig(ctx context.Context, s logical.Storage, cfg, old *configEntry) (msg string, warnings []string, err error) {
	if cfg.TrustDomain != "" {
		if err := checkTrustDomain(cfg.TrustDomain); err != nil {
			return fmt.Sprintf("trust_domain %q %v (give the bare name, such as example.org)", cfg.TrustDomain, err), nil, nil
		}
	}
	algChanged := cfg.SigningAlgorithm != old.SigningAlgorithm && jwtSVIDAlgorithmMessage(cfg.SigningAlgorithm) != ""
	if !algChanged && cfg.TrustDomain == old.TrustDomain {
		return "", nil, nil
	}
	names, err := s.List(ctx, storageServicePrefix)
	if err != nil {
		return "", nil, fmt.Errorf("listing services: %w", err)
	}
	var svids, stranded []string
	for _, name := range names {
		e, err := readService(ctx, s, name)
		if err != nil {
			return "", nil, err
		}
		if e == nil {
			continue
		}
		if e.TokenSubject == tokenSubjectSPIFFEID {
			svids = append(svids, name)
		}
		if e.TokenSubject != tokenSubjectSPIFFEID {
			continue
		}
		for _, id := range e.SPIFFEIDs {
			if !inEngineTrustDomain(id, cfg) {
				stranded = append(stranded, name)
				break
			}
		}
	}
	if algChanged && len(svids) > 0 {
		return fmt.Sprintf("signing_algorithm %s cannot sign JWT-SVIDs, and these services have token_subject=spiffe_id: %s; set their token_subject=name first, or keep one of %s",
			cfg.SigningAlgorithm, strings.Join(svids, ", "), strings.Join(jwtSVIDAlgorithms, ", ")), nil, nil
	}
	if len(stranded) > 0 {
		warnings = append(warnings, fmt.Sprintf("these services issue JWT-SVIDs for spiffe_ids outside trust_domain now, and their logins are refused until they are set to token_subject=name: %s", strings.Join(stranded, ", ")))
	}
	return "", warnings, nil
}

// errTrustDomainsWithdrawn refuses a service write naming trust_domains.
const errTrustDomainsWithdrawn = "services/<name> field trust_domains is withdrawn: which CAs speak for a trust domain is the operator's decision. " +
	"An operator registers the trust domain and its CA bundle at trust_domains/<name> (vault write <mount>/trust_domains/example.org bundle=@bundle.pem); " +
	"then write spiffe_ids in it without trust_domains"

// addSPIFFEServiceResponse adds the SPIFFE fields to a service read.
func addSPIFFEServiceResponse(data map[string]any, e *serviceEntry) {
	data["spiffe_ids"] = nonNil(e.SPIFFEIDs)
	if len(e.TrustDomains) > 0 {
		// Stored by an older release; ignored, shown so an operator sees
		// which trust domains to register (docs/trust-domains.md).
		data["trust_domains"] = e.TrustDomains
	}
	subject := e.TokenSubject
	if subject == "" {
		subject = tokenSubjectName
	}
	data["token_subject"] = subject
}
