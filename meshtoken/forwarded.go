package meshtoken

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
)

// Headers through which a proxy that terminated mutual TLS tells the
// service the client certificate.
const (
	// HeaderXFCC is Envoy's x-forwarded-client-cert: elements (one per
	// proxy) of key=value pairs, of which meshauth reads Cert (the URL-encoded
	// PEM certificate) or, without it, Hash (hex SHA-256 of its DER).
	HeaderXFCC = "X-Forwarded-Client-Cert"
	// HeaderClientCert is RFC 9440's Client-Cert: the DER certificate as a
	// structured-field byte sequence (:base64:).
	HeaderClientCert = "Client-Cert"
)

// maxForwardedHeader bounds a forwarded-certificate header before parsing:
// a certificate with its URL-encoded PEM is a few KiB; a chain of them
// (XFCC Chain) stays well under this.
const maxForwardedHeader = 64 << 10

// Errors about a forwarded client certificate.
var (
	// ErrForwardedCert is wrapped by every refusal of a forwarded-certificate
	// header sent by a trusted proxy: a trusted proxy that sends one we
	// cannot read is misconfigured, or something got between it and us.
	ErrForwardedCert = errors.New(errPrefix + "forwarded client certificate header")
)

// TrustedProxies names the peers whose forwarded-certificate header a
// service believes: the sidecar (or ingress) that terminates mutual TLS in
// front of it. A request is from a trusted proxy when it arrives over
// mutual TLS with a client certificate whose thumbprint is in Certificates,
// or from an address in Networks. From a trusted proxy, the client
// certificate is the one in Header, never the proxy's own; from anyone
// else, Header is ignored and the client certificate is the connection's.
//
// Trust networks only where no one else can reach the listener from them
// (a sidecar on loopback, a pod network the service alone listens on):
// anyone who can connect from a trusted address can claim any certificate.
type TrustedProxies struct {
	// Certificates are the RFC 8705 thumbprints (x5t#S256, as
	// CertificateThumbprint computes them) of the proxies' client
	// certificates.
	Certificates []string
	// Networks are the source addresses the proxies connect from.
	Networks []netip.Prefix
	// Header is HeaderXFCC or HeaderClientCert: the one header read; a
	// proxy sending the other is not heard.
	Header string
}

// check reports a configuration that could not work as meant.
func (p *TrustedProxies) check() error {
	if p == nil {
		return nil
	}
	if p.Header != HeaderXFCC && p.Header != HeaderClientCert {
		return fmt.Errorf(errPrefix+"TrustedProxies.Header must be %q or %q", HeaderXFCC, HeaderClientCert)
	}
	if len(p.Certificates) == 0 && len(p.Networks) == 0 {
		return errors.New(errPrefix + "TrustedProxies names no proxy: set Certificates or Networks")
	}
	for _, c := range p.Certificates {
		if b, err := base64.RawURLEncoding.DecodeString(c); err != nil || len(b) != sha256.Size {
			return fmt.Errorf(errPrefix+"TrustedProxies.Certificates: %q is not an x5t#S256 thumbprint", c)
		}
	}
	for _, n := range p.Networks {
		if !n.IsValid() {
			return errors.New(errPrefix + "TrustedProxies.Networks holds an invalid prefix")
		}
	}
	return nil
}

// Trusts reports whether a peer (its client certificate, nil without one,
// and its address, nil when unknown) is a trusted proxy.
func (p *TrustedProxies) Trusts(cert *x509.Certificate, addr net.Addr) bool {
	if p == nil {
		return false
	}
	if cert != nil && len(p.Certificates) > 0 {
		thumb := []byte(CertificateThumbprint(cert))
		for _, c := range p.Certificates {
			if subtle.ConstantTimeCompare(thumb, []byte(c)) == 1 {
				return true
			}
		}
	}
	if len(p.Networks) > 0 {
		if ip, ok := addrIP(addr); ok {
			for _, n := range p.Networks {
				if n.Contains(ip) {
					return true
				}
			}
		}
	}
	return false
}

// addrIP reads the IP of a peer address.
func addrIP(addr net.Addr) (netip.Addr, bool) {
	var s string
	switch a := addr.(type) {
	case nil:
		return netip.Addr{}, false
	case *net.TCPAddr:
		ip, ok := netip.AddrFromSlice(a.IP)
		return ip.Unmap(), ok
	default:
		s = a.String()
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}

// PeerThumbprint returns the x5t#S256 of the client certificate behind a
// request: from the header named in p when the direct peer (cert, addr) is
// a trusted proxy, else of cert itself; "" when there is none. values are
// the header's values (every line of it: more than one is refused, as is
// anything malformed, with an error wrapping ErrForwardedCert). A trusted
// proxy that sends no header forwards no certificate: the direct peer's
// own is never taken for the client's.
func (p *TrustedProxies) PeerThumbprint(cert *x509.Certificate, addr net.Addr, values []string) (string, error) {
	return p.peerThumbprint(p.Trusts(cert, addr), cert, values)
}

// peerThumbprint is PeerThumbprint once the peer's trust is known.
func (p *TrustedProxies) peerThumbprint(trusted bool, cert *x509.Certificate, values []string) (string, error) {
	if !trusted {
		if cert == nil {
			return "", nil
		}
		return CertificateThumbprint(cert), nil
	}
	switch len(values) {
	case 0:
		return "", nil
	case 1:
	default:
		return "", fmt.Errorf("%w: sent %d times", ErrForwardedCert, len(values))
	}
	if p.Header == HeaderClientCert {
		return ParseClientCert(values[0])
	}
	return ParseXFCC(values[0])
}

// ParseClientCert reads an RFC 9440 Client-Cert value (a structured-field
// byte sequence of the DER certificate) and returns its x5t#S256.
func ParseClientCert(value string) (string, error) {
	if len(value) > maxForwardedHeader {
		return "", fmt.Errorf("%w: longer than %d bytes", ErrForwardedCert, maxForwardedHeader)
	}
	v := strings.Trim(value, " \t")
	inner, ok := strings.CutPrefix(v, ":")
	if ok {
		inner, ok = strings.CutSuffix(inner, ":")
	}
	if !ok || strings.Contains(inner, ":") {
		return "", fmt.Errorf("%w: Client-Cert is not one byte sequence (:base64:)", ErrForwardedCert)
	}
	der, err := base64.StdEncoding.Strict().DecodeString(inner)
	if err != nil {
		return "", fmt.Errorf("%w: Client-Cert is not base64: %w", ErrForwardedCert, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return "", fmt.Errorf("%w: Client-Cert does not hold a certificate: %w", ErrForwardedCert, err)
	}
	return CertificateThumbprint(c), nil
}

// ParseXFCC reads an Envoy x-forwarded-client-cert value and returns the
// x5t#S256 of the client certificate in its last element: the one the
// nearest proxy (the trusted one) added. Earlier elements came from
// further away and may be anyone's. The element's Cert (URL-encoded PEM)
// is used when present, and must then agree with its Hash if that is
// present too; otherwise Hash (hex SHA-256 of the DER) is the thumbprint.
// An element with neither carries no certificate (""). Any syntax error
// refuses the whole header: a value whose quoting we read differently from
// the proxy could hide one element inside another.
func ParseXFCC(value string) (string, error) {
	if len(value) > maxForwardedHeader {
		return "", fmt.Errorf("%w: longer than %d bytes", ErrForwardedCert, maxForwardedHeader)
	}
	elems, err := splitXFCC(value)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrForwardedCert, err)
	}
	last := elems[len(elems)-1]
	var thumb string
	if h, ok := last["hash"]; ok {
		sum, err := hex.DecodeString(h)
		if err != nil || len(sum) != sha256.Size {
			return "", fmt.Errorf("%w: Hash is not a hex SHA-256", ErrForwardedCert)
		}
		thumb = base64.RawURLEncoding.EncodeToString(sum)
	}
	if c, ok := last["cert"]; ok {
		fromCert, err := xfccCert(c)
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrForwardedCert, err)
		}
		if thumb != "" && subtle.ConstantTimeCompare([]byte(thumb), []byte(fromCert)) != 1 {
			return "", fmt.Errorf("%w: Hash and Cert name different certificates", ErrForwardedCert)
		}
		thumb = fromCert
	}
	return thumb, nil
}

// xfccCert decodes an XFCC Cert value: exactly one URL-encoded PEM
// CERTIFICATE block and nothing else.
func xfccCert(v string) (string, error) {
	// PathUnescape, not QueryUnescape: '+' in base64 is a plus, not a
	// space.
	text, err := url.PathUnescape(v)
	if err != nil {
		return "", errors.New("the Cert field is not URL-encoded")
	}
	block, rest := pem.Decode([]byte(text))
	if block == nil || block.Type != "CERTIFICATE" || len(block.Headers) != 0 {
		return "", errors.New("the Cert field is not a PEM certificate")
	}
	if strings.TrimSpace(string(rest)) != "" {
		return "", errors.New("the Cert field holds more than one PEM block")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", fmt.Errorf("the Cert field does not parse: %w", err)
	}
	return CertificateThumbprint(c), nil
}

// splitXFCC splits an XFCC value into elements (separated by ',') of
// key=value pairs (separated by ';'); a value may be double-quoted, with
// \" and \\ escaped inside, and then may hold , ; and =. Keys are matched
// case-insensitively; a key twice in one element, an empty element, a pair
// without '=', or an unterminated quote is an error.
func splitXFCC(s string) ([]map[string]string, error) {
	var (
		elems []map[string]string
		cur   = map[string]string{}
	)
	i := 0
	for {
		// key
		j := i
		for j < len(s) && s[j] != '=' && s[j] != ';' && s[j] != ',' && s[j] != '"' {
			j++
		}
		key := strings.ToLower(strings.TrimSpace(s[i:j]))
		if j >= len(s) || s[j] != '=' || key == "" {
			return nil, fmt.Errorf("pair at byte %d is not key=value", i)
		}
		if _, dup := cur[key]; dup {
			return nil, fmt.Errorf("key %q twice in one element", key)
		}
		j++ // '='
		var val strings.Builder
		if j < len(s) && s[j] == '"' {
			j++
			closed := false
			for j < len(s) {
				c := s[j]
				if c == '\\' && j+1 < len(s) {
					val.WriteByte(s[j+1])
					j += 2
					continue
				}
				if c == '"' {
					closed = true
					j++
					break
				}
				val.WriteByte(c)
				j++
			}
			if !closed {
				return nil, errors.New("unterminated quoted value")
			}
		} else {
			k := j
			for j < len(s) && s[j] != ';' && s[j] != ',' {
				if s[j] == '"' || s[j] == '=' {
					return nil, fmt.Errorf("unquoted value holds %q at byte %d", s[j], j)
				}
				j++
			}
			val.WriteString(strings.TrimSpace(s[k:j]))
		}
		cur[key] = val.String()
		for j < len(s) && (s[j] == ' ' || s[j] == '\t') {
			j++
		}
		if j >= len(s) {
			return append(elems, cur), nil
		}
		switch s[j] {
		case ';':
		case ',':
			elems = append(elems, cur)
			cur = map[string]string{}
		default:
			return nil, fmt.Errorf("unexpected %q after a value at byte %d", s[j], j)
		}
		i = j + 1
	}
}
