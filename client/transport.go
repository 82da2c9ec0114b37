package client

import (
	"net"
	"net/http"
	"net/url"
	"strings"
)

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
