package meshtoken

import (
	"context"
	"crypto/x509"
	"errors"
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
		if errors.Is(err, ErrKeysStale) || errors.Is(err, ErrRevocationsStale) {
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
