package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// tokenNoPanic calls Token the way net/http calls a handler: a panic is
// recovered (and reported), so the test can go on to see whether later
// calls are wedged.
func tokenNoPanic(t *testing.T, ts *TokenSource, ctx context.Context) (tok string, err error) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("Token panicked: %v", r)
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return ts.Token(ctx)
}

// Issue 11 item 13: no server answer panics the TokenSource, on demand or
// in the background refresher, and none wedges later calls. Today an
// expires_at already past by the local clock panics in the refresh
// arithmetic, and a recovered panic left every later call waiting.
func TestTokenSourceOddAnswersNeverPanicOrWedge(t *testing.T) {
	past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	answers := map[string]struct {
		status int
		body   string
	}{
		"expires_at in the past":      {200, `{"data":{"token":"t","expires_at":"` + past + `"}}`},
		"expires_in zero":             {200, `{"data":{"token":"t","expires_in":0}}`},
		"expires_in negative":         {200, `{"data":{"token":"t","expires_in":-5}}`},
		"expires_in huge":             {200, `{"data":{"token":"t","expires_in":1e300}}`},
		"expires_in a string":         {200, `{"data":{"token":"t","expires_in":"soon"}}`},
		"expires_at garbage":          {200, `{"data":{"token":"t","expires_at":"tomorrow"}}`},
		"expires_at year 9999":        {200, `{"data":{"token":"t","expires_at":"9999-12-31T23:59:59Z"}}`},
		"no token":                    {200, `{"data":{"expires_in":300}}`},
		"token not a string":          {200, `{"data":{"token":7,"expires_in":300}}`},
		"data null":                   {200, `{"data":null}`},
		"data a list":                 {200, `{"data":[1,2]}`},
		"not JSON":                    {200, `<html>proxy error</html>`},
		"empty 200":                   {200, ``},
		"204":                         {204, ``},
		"lockout with a garbage time": {403, `{"errors":["login locked for this caller after too many failed attempts; try again after never"]}`},
		"lockout without a time":      {403, `{"errors":["login locked for this caller after too many failed attempts; try again after "]}`},
		"500 without errors":          {500, `{}`},
		"429":                         {429, `{"errors":["rate limited"]}`},
	}
	for name, a := range answers {
		t.Run(name, func(t *testing.T) {
			f := newFakeVault(t, time.Hour)
			ts := f.source(t)
			f.answerWith(a.status, a.body)
			ts.Start(t.Context())
			_, _ = tokenNoPanic(t, ts, t.Context())
			time.Sleep(30 * time.Millisecond) // the background refresher meets the answer too
			f.answer.Store(nil)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			for {
				// A far expiry is honoured (capped at a week); the rest
				// recover once Vault answers properly.
				tok, err := tokenNoPanic(t, ts, ctx)
				if err == nil && (tok == "t" || strings.HasPrefix(tok, "token-")) {
					return
				}
				if ctx.Err() != nil {
					t.Fatalf("Token wedged after the answer: %v", err)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

// A local clock ahead of Vault's makes expires_at look past; the lifetime
// Vault answered (expires_in) still gives a usable token.
func TestTokenSourceTrustsExpiresInOverSkewedClock(t *testing.T) {
	f := newFakeVault(t, time.Hour)
	ts := f.source(t)
	ts.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if tok, err := ts.Token(t.Context()); err != nil || tok != "token-1" {
		t.Fatalf("Token = %q, %v", tok, err)
	}
	if tok, _ := ts.Token(t.Context()); tok != "token-1" || f.logins.Load() != 1 {
		t.Fatalf("second call logged in again: %q after %d logins", tok, f.logins.Load())
	}
}

// Issue 11 item 13: a lockout stops logins until the time the engine names;
// today every Token call logged in again, feeding the lockout.
func TestTokenSourceWaitsOutLockout(t *testing.T) {
	f := newFakeVault(t, time.Hour)
	ts := f.source(t)
	clock := &fakeClock{t: time.Now()}
	ts.now = clock.now
	until := clock.now().Add(15 * time.Minute).UTC().Truncate(time.Second)
	f.answerWith(http.StatusForbidden, `{"errors":["login locked for this caller after too many failed attempts; try again after `+until.Format(time.RFC3339)+`"]}`)
	_, err := ts.Token(t.Context())
	if !errors.Is(err, ErrLoginLocked) {
		t.Fatalf("first Token: %v; want ErrLoginLocked", err)
	}
	for range 100 {
		if _, err := ts.Token(t.Context()); !errors.Is(err, ErrLoginLocked) {
			t.Fatalf("Token during the lockout: %v; want ErrLoginLocked", err)
		}
	}
	clock.advance(14 * time.Minute)
	if _, err := ts.Token(t.Context()); err == nil {
		t.Fatal("Token succeeded during the lockout")
	}
	if n := f.logins.Load(); n != 1 {
		t.Fatalf("%d logins before the lockout ended; want 1", n)
	}
	f.answer.Store(nil)
	clock.advance(61 * time.Second)
	if tok, err := ts.Token(t.Context()); err != nil || tok != "token-2" {
		t.Fatalf("Token after the lockout: %q, %v", tok, err)
	}
}

// Issue 11 item 13: refusals back off (doubling up to MaxBackoff) instead of
// logging in again on every call.
func TestTokenSourceBacksOffOnRefusals(t *testing.T) {
	f := newFakeVault(t, time.Hour)
	ts := f.source(t)
	clock := &fakeClock{t: time.Now()}
	ts.now = clock.now
	f.answerWith(http.StatusBadRequest, `{"errors":["permission denied"]}`)
	for range 50 {
		if _, err := ts.Token(t.Context()); err == nil {
			t.Fatal("Token succeeded against a refusing Vault")
		}
	}
	if n := f.logins.Load(); n != 1 {
		t.Fatalf("%d logins for 50 calls within the backoff; want 1", n)
	}
	// The waits double: 10ms, 20ms, 40ms, then MaxBackoff (50ms), each
	// less up to a fifth at random.
	for i, want := range []time.Duration{10, 20, 40, 50, 50} {
		low := want * time.Millisecond * 4 / 5
		clock.advance(low - time.Millisecond)
		_, _ = ts.Token(t.Context())
		if n := f.logins.Load(); n != int32(i+1) {
			t.Fatalf("step %d: a login started before the backoff's lower bound", i)
		}
		clock.advance(want*time.Millisecond - low + time.Millisecond)
		_, _ = ts.Token(t.Context())
		if n := f.logins.Load(); n != int32(i+2) {
			t.Fatalf("step %d: %d logins; the backoff did not end after %v", i, n, want*time.Millisecond)
		}
	}
}

// The source logs in with POST unless told to prefer the GET. With
// PreferGET, a GET the mount refuses (405, allow_get_login off) or Vault's
// ACL refuses (403 that is not the engine's: a policy granting update only)
// falls back to POST and sticks to it; the engine's own refusal does not
// (a POST would count twice toward lockout); with GET on, it keeps the GET.
func TestTokenSourceLoginMethod(t *testing.T) {
	relogin := func(t *testing.T, ts *TokenSource, n int) {
		t.Helper()
		for range n {
			ts.mu.Lock()
			ts.current = nil // force another login
			ts.mu.Unlock()
			if _, err := ts.Token(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Run("POST by default", func(t *testing.T) {
		f := newFakeVault(t, time.Hour)
		relogin(t, f.source(t), 2)
		if g, p := f.gets.Load(), f.posts.Load(); g != 0 || p != 2 {
			t.Fatalf("%d GETs, %d POSTs; want POST only", g, p)
		}
	})
	t.Run("PreferGET with GET on", func(t *testing.T) {
		f := newFakeVault(t, time.Hour)
		f.preferGET = true
		relogin(t, f.source(t), 2)
		if g, p := f.gets.Load(), f.posts.Load(); g != 2 || p != 0 {
			t.Fatalf("%d GETs, %d POSTs; want GET only", g, p)
		}
	})
	for name, off := range map[string]*func(f *fakeVault){
		"405 from the engine":  ptr(func(f *fakeVault) { f.getOff.Store(true) }),
		"403 from Vault's ACL": ptr(func(f *fakeVault) { f.getACLDenied.Store(true) }),
	} {
		t.Run("PreferGET, "+name, func(t *testing.T) {
			f := newFakeVault(t, time.Hour)
			f.preferGET = true
			(*off)(f)
			relogin(t, f.source(t), 4)
			if g, p := f.gets.Load(), f.posts.Load(); g != 1 || p != 4 {
				t.Fatalf("%d GETs, %d POSTs for 4 logins; want 1 GET (the probe), then POST only", g, p)
			}
		})
	}
	t.Run("PreferGET, the engine's refusal", func(t *testing.T) {
		f := newFakeVault(t, time.Hour)
		f.preferGET = true
		ts := f.source(t)
		ts.getVault.SetHeaders(http.Header{APIKeyHeader: {"mak_wrong"}})
		if _, err := ts.Token(t.Context()); err == nil || !strings.Contains(err.Error(), LoginRefusedPrefix) {
			t.Fatalf("err = %v; want the engine's refusal", err)
		}
		if g, p := f.gets.Load(), f.posts.Load(); g != 1 || p != 0 || ts.postOnly.Load() {
			t.Fatalf("%d GETs, %d POSTs, postOnly %v; a refused login must not be tried again with POST", g, p, ts.postOnly.Load())
		}
	})
}

func ptr[T any](v T) *T { return &v }

// A caller that gives up does not fail the login others wait for.
func TestTokenSourceCallerCancelDoesNotFailOthers(t *testing.T) {
	f := newFakeVault(t, time.Hour)
	f.delay = 100 * time.Millisecond
	ts := f.source(t)
	ctx, cancel := context.WithCancel(t.Context())
	first := make(chan error, 1)
	go func() { _, err := ts.Token(ctx); first <- err }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled caller: %v", err)
	}
	if tok, err := ts.Token(t.Context()); err != nil || tok != "token-1" {
		t.Fatalf("second caller: %q, %v", tok, err)
	}
	if n := f.logins.Load(); n != 1 {
		t.Fatalf("%d logins; want 1", n)
	}
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
