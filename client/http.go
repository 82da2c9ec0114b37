package client

import (
	"context"
	"crypto/x509"
	"net/http"
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
// WWW-Authenticate header and say nothing about why.
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
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="meshauth", error="invalid_token"`)
			http.Error(w, "invalid token", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), claimsKey{}, claims)))
	})
}

// Transport attaches the TokenSource's bearer token to every outgoing
// request.
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
	token, err := t.Source.Token(r.Context())
	if err != nil {
		return nil, err
	}
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+token)
	return base.RoundTrip(r)
}
