package meshtoken

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// claimsKey is the context key of verified claims.
type claimsKey struct{}

// ClaimsFromContext returns the claims the Middleware verified, if any.
func ClaimsFromContext(ctx context.Context) (*Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(*Claims)
	return c, ok
}

// Middleware requires a valid meshauth bearer token on every request, bound
// to the request's client certificate when the token says so, and puts the
// claims into the request context (ClaimsFromContext, and the token itself:
// TokenFromContext). Behind a sidecar that terminates mutual
// TLS, the client certificate comes from the header VerifierConfig.
// TrustedProxies names, and only from the proxies it names; from anyone
// else the forwarded-certificate headers are ignored and removed before
// the next handler sees them. It answers what Authenticate decides, mapped
// by FailureOf: 401 with an RFC 6750 WWW-Authenticate header, saying
// nothing about why except how to ask Vault's verify (VerifyHint); 503
// while verification is unavailable (the key set or the revocation feed
// past its staleness, Vault unreachable); 400 for an unreadable forwarded
// certificate from a trusted proxy. The reason goes to the service through
// Rejected (VerifierConfig.Logger, OnReject).
func (v *Verifier) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		claims, err := v.Authenticate(r.Context(), v.httpRequest(r))
		if err != nil {
			v.Rejected(r.Context(), err)
		}
		switch FailureOf(err) {
		case FailureNone:
			// The claims carry the token too, for a handler that
			// exchanges it to call onward (TokenFromContext).
			next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), claims)))
		case FailureUnavailable:
			// Failing closed on our side, not the caller's fault: a 401
			// would send it to log in again for nothing.
			http.Error(w, "token verification unavailable", http.StatusServiceUnavailable)
		case FailureBadRequest:
			http.Error(w, "unreadable forwarded client certificate", http.StatusBadRequest)
		default:
			if errors.Is(err, ErrMissingToken) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="meshauth"`)
				http.Error(w, "missing bearer token", http.StatusUnauthorized)
				return
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="meshauth", error="invalid_token"`)
			http.Error(w, "invalid token; "+v.verifyHint, http.StatusUnauthorized)
		}
	})
}

// httpRequest is what Authenticate needs of an HTTP request.
func (v *Verifier) httpRequest(r *http.Request) Request {
	req := Request{
		Authorization: r.Header.Values("Authorization"),
		Header:        r.Header.Values,
		// Whatever an untrusted peer claims about certificates, nothing
		// after this middleware should read it as a proxy's word.
		StripForwarded: func() {
			r.Header.Del(HeaderXFCC)
			r.Header.Del(HeaderClientCert)
		},
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		req.Peer = r.TLS.PeerCertificates[0]
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		req.Addr = net.TCPAddrFromAddrPort(ap)
	}
	return req
}

// ErrMissingToken is Authenticate's refusal of a request without exactly
// one "Bearer <token>" authorization value.
var ErrMissingToken = fmt.Errorf("%w: a meshauth bearer token is required (one Authorization: Bearer value)", ErrInvalidToken)

// Request is what Authenticate needs of a request, whatever its transport.
type Request struct {
	// Authorization holds every value of the Authorization header (HTTP)
	// or authorization metadata (gRPC); exactly one "Bearer <token>" is
	// accepted.
	Authorization []string
	// Peer is the certificate the direct peer presented; nil for none.
	Peer *x509.Certificate
	// Addr is the direct peer's address.
	Addr net.Addr
	// Header returns the values of a forwarded-certificate header by name.
	Header func(name string) []string
	// StripForwarded, when set, removes the forwarded-certificate headers
	// from the request; it is called when the peer is not a trusted proxy.
	StripForwarded func()
}

// Authenticate is the one request authentication of the Middleware and the
// gRPC interceptors: exactly one bearer token, the client certificate of
// the connection or (from a trusted proxy) of the forwarded header, and
// VerifyThumbprint. FailureOf maps its error to a class each transport
// answers with its own status.
func (v *Verifier) Authenticate(ctx context.Context, req Request) (*Claims, error) {
	if len(req.Authorization) != 1 {
		return nil, ErrMissingToken
	}
	token, ok := strings.CutPrefix(req.Authorization[0], "Bearer ")
	if !ok || token == "" {
		return nil, ErrMissingToken
	}
	p := v.cfg.TrustedProxies
	var (
		thumb string
		err   error
	)
	if p.Trusts(req.Peer, req.Addr) {
		var values []string
		if req.Header != nil {
			values = req.Header(p.Header)
		}
		thumb, err = p.peerThumbprint(true, req.Peer, values)
	} else {
		if req.StripForwarded != nil {
			req.StripForwarded()
		}
		thumb, err = p.peerThumbprint(false, req.Peer, nil)
	}
	if err != nil {
		return nil, err
	}
	return v.VerifyThumbprint(ctx, token, thumb)
}

// Failure is how a transport should answer an Authenticate error.
type Failure int

// Failures, in the codes of HTTP and gRPC.
const (
	// FailureNone: authenticated.
	FailureNone Failure = iota
	// FailureUnauthenticated: the caller's token is missing or refused
	// (HTTP 401, gRPC Unauthenticated).
	FailureUnauthenticated
	// FailureUnavailable: verification cannot be done now, the key set or
	// the revocation feed being past its staleness with Vault unreachable;
	// the caller is not at fault (HTTP 503, gRPC Unavailable).
	FailureUnavailable
	// FailureBadRequest: a trusted proxy sent a forwarded-certificate
	// header that does not read as one certificate (HTTP 400, gRPC
	// InvalidArgument).
	FailureBadRequest
)

// FailureOf classifies an error of Authenticate (or Verify).
func FailureOf(err error) Failure {
	switch {
	case err == nil:
		return FailureNone
	case errors.Is(err, ErrKeysStale), errors.Is(err, ErrRevocationsStale):
		return FailureUnavailable
	case errors.Is(err, ErrForwardedCert):
		return FailureBadRequest
	}
	return FailureUnauthenticated
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
