package meshtoken

import (
	"context"
	"sync"
	"time"
)

// backgroundFetch runs a fetch (of the key set, of the revocations feed) at
// most one at a time and at most once per interval, in the background, so
// that no verification waits on Vault for something it already holds and
// neither random kids nor max-age=0 can turn verifiers into a flood.
type backgroundFetch struct {
	// mu guards the fields below; it is never held during a fetch.
	mu sync.Mutex
	// fetching is closed when the fetch in progress ends; nil when none.
	fetching chan struct{}
	// lastAttempt is when the last fetch started, successful or not.
	lastAttempt time.Time
	// lastErr is the error of the last fetch, nil after a success.
	lastErr error
}

// attempted records a fetch made in the foreground (the first one, which a
// constructor waits for) as the last attempt.
func (f *backgroundFetch) attempted(at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastAttempt = at
}

// start returns the channel of the fetch in progress, or starts fetch in the
// background when none runs and minInterval has passed since the last
// attempt; nil when no fetch runs. The fetch is bound to no caller's
// context (others may wait for it), only to the HTTP timeout; a failed fetch
// keeps what the caller had, within its own staleness bound.
func (f *backgroundFetch) start(ctx context.Context, now time.Time, minInterval time.Duration, fetch func(ctx context.Context, start time.Time) error) <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fetching != nil {
		return f.fetching
	}
	if now.Sub(f.lastAttempt) < minInterval {
		return nil
	}
	f.lastAttempt = now
	done := make(chan struct{})
	f.fetching = done
	go func() {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), verifierHTTPTimeout)
		defer cancel()
		err := fetch(fctx, now)
		f.mu.Lock()
		f.fetching, f.lastErr = nil, err
		f.mu.Unlock()
		close(done)
	}()
	return done
}

// err is the last fetch's error, nil after a success.
func (f *backgroundFetch) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastErr
}
