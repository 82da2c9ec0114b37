package client

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"
)

// recordAuth is a server that records the Authorization header it got.
func recordAuth(t *testing.T, next http.HandlerFunc) (*httptest.Server, func() []string) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get("Authorization"))
		mu.Unlock()
		if next != nil {
			next(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
}

// Issue 11 item 13: a redirect to another host (or port) never carries the
// token; one on the same origin does. Today the Transport attached the
// token to whatever URL the redirect named.
func TestTransportKeepsTokenOnItsHost(t *testing.T) {
	f := newFakeVault(t, time.Hour)
	source := f.source(t)
	evil, evilGot := recordAuth(t, nil)
	peer, peerGot := recordAuth(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/elsewhere":
			http.Redirect(w, r, evil.URL+"/steal", http.StatusFound)
		case "/here":
			http.Redirect(w, r, "/final", http.StatusTemporaryRedirect)
		}
	})
	hc := &http.Client{Transport: &Transport{Source: source}}
	for _, path := range []string{"/elsewhere", "/here"} {
		resp, err := hc.Get(peer.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
	}
	for _, a := range evilGot() {
		if a != "" {
			t.Fatalf("the redirect target on another host got Authorization %q", a)
		}
	}
	if len(evilGot()) != 1 {
		t.Fatalf("the cross-host redirect was not followed: %v", evilGot())
	}
	got := peerGot()
	if len(got) != 3 || got[0] != "Bearer token-1" || got[1] != "Bearer token-1" || got[2] != "Bearer token-1" {
		t.Fatalf("the peer's own requests (first, first, same-origin redirect) got %q", got)
	}
}

// A redirect from https to http on the same host never carries the token.
func TestTransportNoTokenOnDowngrade(t *testing.T) {
	f := newFakeVault(t, time.Hour)
	var sent http.Header
	tr := &Transport{Source: f.source(t), Base: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		sent = r.Header
		return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: r}, nil
	})}
	first := &http.Request{Method: http.MethodGet, URL: mustURL(t, "https://payments.mesh/charge"), Header: http.Header{}}
	for target, want := range map[string]bool{
		"http://payments.mesh/charge":      false,
		"http://payments.mesh:443/charge":  false,
		"https://payments.mesh:443/other":  true,
		"https://PAYMENTS.mesh/other":      true,
		"https://payments.mesh:8443/other": false,
		"https://evil.example/charge":      false,
	} {
		redirected := &http.Request{
			Method: http.MethodGet, URL: mustURL(t, target),
			Header:   http.Header{"Authorization": {"Bearer copied-by-someone"}},
			Response: &http.Response{StatusCode: http.StatusFound, Request: first},
		}
		redirected = redirected.WithContext(t.Context())
		if _, err := tr.RoundTrip(redirected); err != nil {
			t.Fatal(err)
		}
		if got := sent.Get("Authorization") == "Bearer token-1"; got != want {
			t.Errorf("redirect to %s: token sent = %v, want %v (Authorization %q)", target, got, want, sent.Get("Authorization"))
		}
		if !want && sent.Get("Authorization") != "" {
			t.Errorf("redirect to %s kept an Authorization header", target)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
