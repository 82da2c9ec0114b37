package client

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/url"
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
// claims into the request context. Failures answer 401 with an RFC 6750
// WWW-Authenticate header and say nothing about why; while the key set is
// past MaxStaleness (Vault unreachable) every request answers 503.
func (v *Verifier) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="meshauth"`)
			http.Error(w, "missing bearer token", http.StatusUnauthorized)
			return
		}
		var peer *x509.Certificate
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			peer = r.TLS.PeerCertificates[0]
		}
		claims, err := v.Verify(r.Context(), token, peer)
		if errors.Is(err, ErrKeysStale) {
			// Failing closed on our side, not the caller's fault: a 401
			// would send it to log in again for nothing.
			http.Error(w, "token verification unavailable", http.StatusServiceUnavailable)
			return
		}
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="meshauth", error="invalid_token"`)
			http.Error(w, "invalid token", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), claimsKey{}, claims)))
	})
}

// Transport attaches the TokenSource's bearer token to every outgoing
// request, and never to a request that follows a redirect to another host
// (scheme, host and port must match the first request) or from https to
// http: a redirect must not hand the token to whoever the peer points at.
type Transport struct {
	// Source provides the token.
	Source *TokenSource
	// Base sends the request; default http.DefaultTransport. For mutual TLS
	// to the peer, give it a TLS config with the service's certificate: the
	// same one it logged in with, since the token is bound to it.
	Base http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	r = r.Clone(r.Context())
	if !sameOrigin(r) {
		// Whatever carried over from the first request, no credential goes
		// to a host the caller did not name.
		r.Header.Del("Authorization")
		return base.RoundTrip(r)
	}
	token, err := t.Source.Token(r.Context())
	if err != nil {
		return nil, err
	}
	r.Header.Set("Authorization", "Bearer "+token)
	return base.RoundTrip(r)
}

// sameOrigin reports whether r goes where the request that started its
// redirect chain went. http.Client sets Response on every request it makes
// to follow a redirect; a first request has none.
func sameOrigin(r *http.Request) bool {
	first := r
	for first.Response != nil && first.Response.Request != nil {
		first = first.Response.Request
	}
	if first == r {
		return true
	}
	return strings.EqualFold(r.URL.Scheme, first.URL.Scheme) && strings.EqualFold(canonicalHost(r.URL), canonicalHost(first.URL))
}

// canonicalHost is host:port with the scheme's default port made explicit,
// so https://a and https://a:443 compare equal.
func canonicalHost(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[strings.ToLower(u.Scheme)]
	}
	return net.JoinHostPort(u.Hostname(), port)
}
