package meshtoken

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// errNoBearer is the reason of a request without a bearer token.
var errNoBearer = errors.New(errPrefix + "no bearer token in the Authorization header")

// claimsKey is the context key of verified claims.
type claimsKey struct{}

// ClaimsFromContext returns the claims the Middleware verified, if any.
func ClaimsFromContext(ctx context.Context) (*Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(*Claims)
	return c, ok
}

// Middleware requires a valid meshauth bearer token on every request, bound
// to the request's client certificate when the token says so, and puts the
// claims (ClaimsFromContext) and the token itself (TokenFromContext) into
// the request context. Behind a sidecar that terminates mutual
// TLS, the client certificate comes from the header VerifierConfig.
// TrustedProxies names, and only from the proxies it names; from anyone
// else the forwarded-certificate headers are ignored and removed before
// the next handler sees them. Failures answer 401 with an RFC 6750
// WWW-Authenticate header and say nothing about why, except how to ask
// Vault's verify (VerifyHint); the reason goes to the service through
// Rejected (VerifierConfig.Logger, OnReject). While the key set is past
// MaxStaleness (Vault unreachable) every request answers 503.
func (v *Verifier) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" {
			v.Rejected(r.Context(), errNoBearer)
			w.Header().Set("WWW-Authenticate", `Bearer realm="meshauth"`)
			http.Error(w, "missing bearer token", http.StatusUnauthorized)
			return
		}
		thumb, err := v.requestPeer(r)
		if err != nil {
			v.Rejected(r.Context(), err)
			http.Error(w, "unreadable forwarded client certificate", http.StatusBadRequest)
			return
		}
		claims, err := v.VerifyThumbprint(r.Context(), token, thumb)
		if err != nil {
			v.Rejected(r.Context(), err)
		}
		if errors.Is(err, ErrKeysStale) || errors.Is(err, ErrRevocationsStale) {
			// Failing closed on our side, not the caller's fault: a 401
			// would send it to log in again for nothing.
			http.Error(w, "token verification unavailable", http.StatusServiceUnavailable)
			return
		}
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="meshauth", error="invalid_token"`)
			http.Error(w, "invalid token; "+v.verifyHint, http.StatusUnauthorized)
			return
		}
		// The raw token too, for a handler that exchanges it to call
		// onward on the caller's behalf (TokenFromContext).
		next.ServeHTTP(w, r.WithContext(withToken(NewContext(r.Context(), claims), token)))
	})
}

// requestPeer returns the thumbprint of the client certificate behind r:
// forwarded by a trusted proxy, or of the connection's own; "" for none.
func (v *Verifier) requestPeer(r *http.Request) (string, error) {
	var direct *x509.Certificate
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		direct = r.TLS.PeerCertificates[0]
	}
	var addr net.Addr
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		addr = net.TCPAddrFromAddrPort(ap)
	}
	p := v.cfg.TrustedProxies
	trusted := p.Trusts(direct, addr)
	if !trusted {
		// Whatever an untrusted peer claims about certificates, nothing
		// after this middleware should read it as a proxy's word.
		r.Header.Del(HeaderXFCC)
		r.Header.Del(HeaderClientCert)
		return p.peerThumbprint(false, direct, nil)
	}
	return p.peerThumbprint(true, direct, r.Header.Values(p.Header))
}

// PeerThumbprint returns the x5t#S256 of the client certificate behind a
// request whose direct peer presented direct (nil for none) from addr:
// read from the forwarded-certificate header (header returns its values by
// name) when the peer is one of VerifierConfig.TrustedProxies, else
// direct's own; "" for none. An error (wrapping ErrForwardedCert) means a
// trusted proxy sent a header that does not read as one certificate. The
// gRPC interceptors use it with the call's metadata.
func (v *Verifier) PeerThumbprint(direct *x509.Certificate, addr net.Addr, header func(name string) []string) (string, error) {
	p := v.cfg.TrustedProxies
	if !p.Trusts(direct, addr) {
		return p.peerThumbprint(false, direct, nil)
	}
	return p.peerThumbprint(true, direct, header(p.Header))
}

// TrustedProxies returns the proxies whose forwarded-certificate header
// this Verifier believes (VerifierConfig.TrustedProxies); nil for none.
func (v *Verifier) TrustedProxies() *TrustedProxies { return v.cfg.TrustedProxies }

// NewContext returns ctx carrying verified claims, as the Middleware and
// the gRPC interceptors do; ClaimsFromContext reads them.
func NewContext(ctx context.Context, c *Claims) context.Context {
	return context.WithValue(ctx, claimsKey{}, c)
}
