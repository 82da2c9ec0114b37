package meshauth

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// Bounds on certificate input; Go's chain building can take a long time on a
// hostile pool, so everything an attacker controls is capped.
const (
	// maxPEMBytes bounds a certificate or ca_chain field.
	maxPEMBytes = 64 << 10
	// maxCACertificates bounds the certificates in ca_chain.
	maxCACertificates = 16
	// maxPresentedChain bounds the peer chain a login may present.
	maxPresentedChain = 8
)

// serviceTrust is a service's mTLS trust, parsed once when the service is
// cached instead of at every login.
type serviceTrust struct {
	// roots holds ca_chain; nil when the service has none.
	roots *x509.CertPool
	// pinned is the registered leaf certificate; nil when none.
	pinned *x509.Certificate
	// pins are the decoded SHA-256 SPKI pins.
	pins [][]byte
	// hostnames must each be covered by the presented leaf.
	hostnames []string
	// spiffe are the parsed spiffe_ids; when set, the leaf's single URI SAN
	// must match one and hostnames play no part (spiffe.go).
	spiffe []spiffePattern
	// domains maps the trust domain of each spiffe entry to the pool of its
	// registered bundle, nil when it has no entry (path_trust_domains.go).
	domains map[string]*x509.CertPool
	// revocation is the service's revocation checking; nil for none.
	revocation *revocationPolicy
	// expires is the earliest not_after of the registered certificate and
	// CAs: a cached verification must not outlive the trust it used.
	expires time.Time
}

// noteExpiry keeps the earliest not_after seen.
func (t *serviceTrust) noteExpiry(c *x509.Certificate) {
	if t.expires.IsZero() || c.NotAfter.Before(t.expires) {
		t.expires = c.NotAfter
	}
}

// hasTrust reports whether the service names any certificate it would accept.
func (t *serviceTrust) hasTrust() bool {
	return t != nil && (t.roots != nil || t.pinned != nil || len(t.spiffe) > 0)
}

// parseCertificates parses a PEM bundle that may hold only certificates:
// well-formed CERTIFICATE blocks without headers, separated by nothing but
// whitespace, bounded in size and count. pem.Decode alone would skip any
// text before a block, including a private key whose armour is damaged (a
// BEGIN line without END, mangled dashes), and that text would be stored and
// shown again by services/:name/tls; so every byte outside a block is
// checked here. Errors name the position, never the content: it may be a
// secret.
func parseCertificates(field, text string, maxCerts int) ([]*x509.Certificate, error) {
	if len(text) > maxPEMBytes {
		return nil, fmt.Errorf("%s is %d bytes; at most %d are accepted", field, len(text), maxPEMBytes)
	}
	data := []byte(text)
	var certs []*x509.Certificate
	for pos := 0; ; {
		start := pos + len(data[pos:]) - len(bytes.TrimLeftFunc(data[pos:], unicode.IsSpace))
		if start == len(data) {
			break
		}
		rest := data[start:]
		block, after := pem.Decode(rest)
		consumed := rest[:len(rest)-len(after)]
		// The block must begin exactly here: when the block here is damaged,
		// pem.Decode skips it and returns a later one.
		if block == nil || !bytes.HasPrefix(rest, pemBegin) || bytes.Count(consumed, pemBegin) != 1 {
			return nil, strayPEMContent(field, data, start)
		}
		switch {
		case strings.Contains(block.Type, "PRIVATE KEY"):
			return nil, fmt.Errorf("%s contains a private key (%s block); send only certificates, and never send a private key to Vault", field, block.Type)
		case block.Type != "CERTIFICATE":
			return nil, fmt.Errorf("%s contains a %q block; only CERTIFICATE blocks are accepted", field, block.Type)
		case len(block.Headers) > 0:
			return nil, fmt.Errorf("%s has a CERTIFICATE block with PEM headers; remove them", field)
		}
		if len(certs) == maxCerts {
			return nil, fmt.Errorf("%s holds more than %d certificates", field, maxCerts)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			if isPrivateKeyDER(block.Bytes) {
				return nil, fmt.Errorf("%s: block %d is labelled CERTIFICATE but holds a private key; never send a private key to Vault", field, len(certs)+1)
			}
			return nil, fmt.Errorf("%s: certificate %d does not parse: %w", field, len(certs)+1, err)
		}
		certs = append(certs, cert)
		pos = start + len(consumed)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate; paste the PEM text (-----BEGIN CERTIFICATE-----)", field)
	}
	return certs, nil
}

// pemBegin starts every PEM block.
var pemBegin = []byte("-----BEGIN ")

// strayPEMContent describes content at data[start:] that is not a
// well-formed PEM block, saying loudly when it looks like key material.
func strayPEMContent(field string, data []byte, start int) error {
	line := 1 + bytes.Count(data[:start], []byte("\n"))
	// The stray region runs to the next line that begins a certificate.
	region := data[start:]
	if i := bytes.Index(region[1:], []byte("\n-----BEGIN CERTIFICATE-----")); i >= 0 {
		region = region[:i+1]
	}
	if looksLikeKeyMaterial(region) {
		return fmt.Errorf("%s has text at line %d that looks like private key material outside any well-formed CERTIFICATE block; it was not stored. Send only certificates, and never send a private key to Vault", field, line)
	}
	if !bytes.Contains(data, pemBegin) {
		return fmt.Errorf("%s holds no PEM certificate; paste the PEM text (-----BEGIN CERTIFICATE-----)", field)
	}
	return fmt.Errorf("%s has content at line %d outside well-formed PEM CERTIFICATE blocks (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----); only such blocks and whitespace between them are accepted", field, line)
}

// looksLikeKeyMaterial reports whether text resembles a private key: key
// armour in any state of repair, or a base64 body that parses as one.
func looksLikeKeyMaterial(text []byte) bool {
	upper := bytes.ToUpper(text)
	for _, marker := range []string{"PRIVATE KEY", "PRIVATE-KEY", "OPENSSH", "ENCRYPTED", "PROC-TYPE", "DEK-INFO"} {
		if bytes.Contains(upper, []byte(marker)) {
			return true
		}
	}
	var body []byte
	for l := range bytes.Lines(text) {
		if l = bytes.TrimSpace(l); !bytes.Contains(l, []byte("--")) && !bytes.Contains(l, []byte(":")) {
			body = append(body, l...)
		}
	}
	der, err := base64.RawStdEncoding.DecodeString(string(bytes.TrimRight(body, "=")))
	return err == nil && isPrivateKeyDER(der)
}

// isPrivateKeyDER reports whether der parses as a PKCS#8, PKCS#1 or SEC 1
// private key.
func isPrivateKeyDER(der []byte) bool {
	if _, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		return true
	}
	if _, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return true
	}
	_, err := x509.ParseECPrivateKey(der)
	return err == nil
}

// checkValidity refuses a certificate outside its validity window.
func checkValidity(what string, c *x509.Certificate, now time.Time) error {
	if now.Before(c.NotBefore) {
		return fmt.Errorf("%s is not valid before %s", what, c.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(c.NotAfter) {
		return fmt.Errorf("%s expired at %s", what, c.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// allowsClientAuth reports whether a leaf may authenticate a TLS client: it
// lists clientAuth (or any) among its extended key usages, or has none.
func allowsClientAuth(c *x509.Certificate) bool {
	if len(c.ExtKeyUsage) == 0 && len(c.UnknownExtKeyUsage) == 0 {
		return true
	}
	return slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth) || slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageAny)
}

// coversHostnames checks every hostname against the leaf's DNS SANs, with
// Go's VerifyHostname rules (no Common Name fallback).
func coversHostnames(c *x509.Certificate, hostnames []string) error {
	for _, h := range hostnames {
		if err := c.VerifyHostname(h); err != nil {
			return fmt.Errorf("certificate does not cover hostname %q (its DNS SANs: %s)", h, strings.Join(c.DNSNames, ", "))
		}
	}
	return nil
}

// spkiPin is the base64 SHA-256 of a certificate's SubjectPublicKeyInfo, the
// form pinned_spki takes.
func spkiPin(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// decodePin decodes one pinned_spki entry (standard or URL base64, padded or
// not) into its 32 bytes.
func decodePin(pin string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if raw, err := enc.DecodeString(pin); err == nil {
			if len(raw) != sha256.Size {
				return nil, fmt.Errorf("pinned_spki entry %q is %d bytes; a SHA-256 pin is 32", pin, len(raw))
			}
			return raw, nil
		}
	}
	return nil, fmt.Errorf("pinned_spki entry %q is not base64", pin)
}

// matchesPin compares a certificate's SPKI hash to every pin in constant time.
func matchesPin(c *x509.Certificate, pins [][]byte) bool {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	match := 0
	for _, p := range pins {
		match |= subtle.ConstantTimeCompare(sum[:], p)
	}
	return match == 1
}

// matchesPinnedCertificate compares the presented leaf with the registered
// one byte for byte, in constant time. Never by serial number or key id:
// Vault's cert auth shipped that bug twice (GH-25649, CVE-2025-6037).
func matchesPinnedCertificate(presented, pinned *x509.Certificate) bool {
	return pinned != nil && subtle.ConstantTimeCompare(presented.Raw, pinned.Raw) == 1
}

// buildTrust parses a service's stored trust material. It was validated on
// write; an error here means storage holds something it should not.
func buildTrust(e *serviceEntry) (*serviceTrust, error) {
	t := &serviceTrust{hostnames: e.Hostnames, revocation: revocationPolicyOf(e)}
	if e.Certificate != "" {
		certs, err := parseCertificates("certificate", e.Certificate, 1)
		if err != nil {
			return nil, err
		}
		t.pinned = certs[0]
		t.noteExpiry(t.pinned)
	}
	if e.CAChain != "" {
		cas, err := parseCertificates("ca_chain", e.CAChain, maxCACertificates)
		if err != nil {
			return nil, err
		}
		t.roots = x509.NewCertPool()
		for _, ca := range cas {
			t.roots.AddCert(ca)
			t.noteExpiry(ca)
		}
	}
	for _, p := range e.PinnedSPKI {
		raw, err := decodePin(p)
		if err != nil {
			return nil, err
		}
		t.pins = append(t.pins, raw)
	}
	spiffe, err := parseSPIFFEPatterns(e.SPIFFEIDs)
	if err != nil {
		return nil, err
	}
	t.spiffe = spiffe
	return t, nil
}

// validateServiceTLS checks a service's certificate fields before they are
// stored and names the first check that failed, or returns "".
func validateServiceTLS(e *serviceEntry, now time.Time) string {
	t, err := buildTrust(e)
	if err != nil {
		return err.Error()
	}
	if e.CAChain != "" {
		cas, _ := parseCertificates("ca_chain", e.CAChain, maxCACertificates)
		for i, ca := range cas {
			if !ca.IsCA || !ca.BasicConstraintsValid {
				return fmt.Sprintf("ca_chain certificate %d (%s) is not a CA certificate", i+1, ca.Subject)
			}
		}
	}
	if len(e.Hostnames) > 0 && !t.hasTrust() {
		return "hostnames need a certificate or ca_chain to check them against"
	}
	if len(e.PinnedSPKI) > 0 && !t.hasTrust() {
		return "pinned_spki needs a certificate or ca_chain as well"
	}
	if t.pinned == nil {
		return ""
	}
	leaf := t.pinned
	if err := checkValidity("certificate", leaf, now); err != nil {
		return err.Error()
	}
	if !allowsClientAuth(leaf) {
		return "certificate lacks the clientAuth extended key usage; issue it for client authentication"
	}
	if t.roots != nil {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: t.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: now}); err != nil {
			return fmt.Sprintf("certificate does not chain to ca_chain: %v", err)
		}
	}
	if err := coversHostnames(leaf, e.Hostnames); err != nil {
		return err.Error()
	}
	if len(t.pins) > 0 && !matchesPin(leaf, t.pins) {
		return fmt.Sprintf("certificate's own SPKI pin %s is not among pinned_spki", spkiPin(leaf))
	}
	return ""
}

// errNoClientCertificate means the login carried no client certificate.
var errNoClientCertificate = errors.New("no client certificate presented")

// errNoTrust means the service names no certificate or CA to verify against.
var errNoTrust = errors.New("service has no certificate or ca_chain to verify against")

// verifyPresentedChain checks the chain a caller presented on its TLS
// connection against a service's trust: it chains to ca_chain (intermediates
// only from the presented chain) or is the registered certificate, is within
// validity, allows clientAuth, covers hostnames and matches a pin. Vault does
// not verify client certificates for plugins, so this is the only check.
func verifyPresentedChain(t *serviceTrust, chain []*x509.Certificate, now time.Time) error {
	if len(chain) == 0 {
		return errNoClientCertificate
	}
	if len(chain) > maxPresentedChain {
		return fmt.Errorf("presented chain has %d certificates; at most %d are accepted", len(chain), maxPresentedChain)
	}
	if err := checkChainShape(chain); err != nil {
		return err
	}
	leaf := chain[0]
	if err := checkValidity("client certificate", leaf, now); err != nil {
		return err
	}
	if !allowsClientAuth(leaf) {
		return errors.New("client certificate lacks clientAuth")
	}
	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	// The service's own certificate or ca_chain, when set. For a SPIFFE
	// service they only narrow what the trust domain's bundle allows.
	if (t.pinned != nil || t.roots != nil) && !matchesPinnedCertificate(leaf, t.pinned) {
		if t.roots == nil {
			return errors.New("client certificate is not the registered certificate")
		}
		opts := x509.VerifyOptions{Roots: t.roots, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: now}
		if _, err := leaf.Verify(opts); err != nil {
			return fmt.Errorf("client certificate does not chain to ca_chain: %w", err)
		}
	}
	if err := t.matchesIdentity(leaf); err != nil { // spiffe_ids or hostnames
		return err
	}
	if len(t.spiffe) > 0 {
		// Both must hold: the bundle of the ID's trust domain decides who
		// may assert the ID, whatever the service registered.
		if err := t.verifyInTrustDomain(leaf, intermediates, now); err != nil {
			return err
		}
	}
	if len(t.pins) > 0 && !matchesPin(leaf, t.pins) {
		return errors.New("client certificate matches no pinned_spki")
	}
	return nil
}

// verifyInTrustDomain checks that an X.509-SVID leaf chains to the bundle
// registered for its SPIFFE ID's trust domain; a trust domain without an
// entry accepts no SVID.
func (t *serviceTrust) verifyInTrustDomain(leaf *x509.Certificate, intermediates *x509.CertPool, now time.Time) error {
	id, err := leafSPIFFEID(leaf)
	if err != nil {
		return err
	}
	roots := t.domains[id.trustDomain]
	if roots == nil {
		return fmt.Errorf("trust domain %q of SPIFFE ID %s has no entry at trust_domains/%s; an operator must register its bundle", id.trustDomain, id, id.trustDomain)
	}
	opts := x509.VerifyOptions{Roots: roots, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: now}
	if _, err := leaf.Verify(opts); err != nil {
		return fmt.Errorf("client certificate does not chain to the bundle of trust domain %q (trust_domains/%s): %w", id.trustDomain, id.trustDomain, err)
	}
	return nil
}

// checkChainShape refuses a presented chain that is not one leaf followed
// by the CAs that issued it, in order: each certificate signed by the next,
// every certificate after the leaf a CA, none twice. A TLS client cannot send
// anything else usefully, but Vault 1.21 behind a TLS-terminating proxy
// prepends the certificates of x_forwarded_for_client_cert_header to the
// connection's shared TLS state, so over a reused proxy connection a request
// carries the certificates of earlier callers after its own. Such a chain
// fails here, closed, instead of logging in on a certificate the caller did
// not present. A leaf alone stays fine.
func checkChainShape(chain []*x509.Certificate) error {
	for i, c := range chain {
		for _, earlier := range chain[:i] {
			if bytes.Equal(c.Raw, earlier.Raw) {
				return fmt.Errorf("presented chain holds certificate %d twice; a proxy may be reusing one connection for several callers", i+1)
			}
		}
		if i == 0 {
			continue
		}
		if !c.IsCA || !c.BasicConstraintsValid {
			return fmt.Errorf("presented chain is not a leaf followed by its CAs: certificate %d (%s) is not a CA; a proxy may be reusing one connection for several callers", i+1, c.Subject)
		}
		if err := chain[i-1].CheckSignatureFrom(c); err != nil {
			return fmt.Errorf("presented chain is not a leaf followed by its CAs: certificate %d is not signed by certificate %d: %w", i, i+1, err)
		}
	}
	return nil
}

// peerChain returns the certificates the caller presented to Vault's TLS
// listener (or that a trusted proxy forwarded), if any.
func peerChain(cs *tls.ConnectionState) []*x509.Certificate {
	if cs == nil {
		return nil
	}
	return cs.PeerCertificates
}

// certificateThumbprint is the RFC 8705 x5t#S256 of a certificate, as the
// token contract defines it.
func certificateThumbprint(c *x509.Certificate) string {
	return meshtoken.CertificateThumbprint(c)
}

// certificateFacts describes a PEM certificate for a person reading it.
func certificateFacts(text string, now time.Time) (map[string]any, error) {
	certs, err := parseCertificates("certificate", text, 1)
	if err != nil {
		return nil, err
	}
	return describeCertificate(certs[0], now), nil
}

// describeCertificate lists what an operator checks on a certificate.
func describeCertificate(c *x509.Certificate, now time.Time) map[string]any {
	sum := sha256.Sum256(c.Raw)
	ips := make([]string, 0, len(c.IPAddresses))
	for _, ip := range c.IPAddresses {
		ips = append(ips, ip.String())
	}
	uris := make([]string, 0, len(c.URIs))
	for _, u := range c.URIs {
		uris = append(uris, u.String())
	}
	return map[string]any{
		"subject":            c.Subject.String(),
		"issuer":             c.Issuer.String(),
		"serial_number":      c.SerialNumber.String(),
		"dns_names":          nonNil(c.DNSNames),
		"ip_addresses":       ips,
		"uris":               uris,
		"is_ca":              c.IsCA,
		"not_before":         c.NotBefore.UTC().Format(time.RFC3339),
		"not_after":          c.NotAfter.UTC().Format(time.RFC3339),
		"days_left":          int(c.NotAfter.Sub(now).Hours() / 24),
		"sha256_fingerprint": hex.EncodeToString(sum[:]),
		"x5t#S256":           certificateThumbprint(c),
		"spki_pin":           spkiPin(c),
	}
}
