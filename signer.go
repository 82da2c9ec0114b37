package meshauth

import (
	"runtime"
	"sync"

	"github.com/golang-jwt/jwt/v5"
)

// Tokens are signed on a few long-lived goroutines rather than on the
// goroutine serving the login. Vault's gRPC server runs every request on a
// new goroutine whose stack starts at a few KiB; the P-256 arithmetic of a
// signature is the deepest code on the login path, and growing the stack to
// fit it (the runtime copies and adjusts every frame, several times over)
// cost about 13 µs per login under load, a fifth of the signature itself.
// A signer's stack grows once and is reused; handing a job over costs two
// goroutine switches on the same thread, well under a microsecond.

// signJob is one signature: inputs, result, and the signal that it is done.
type signJob struct {
	method jwt.SigningMethod
	key    any
	input  string
	sig    []byte
	err    error
	done   chan struct{}
}

var (
	signJobs     = make(chan *signJob)
	startSigners sync.Once
	signJobPool  = sync.Pool{New: func() any { return &signJob{done: make(chan struct{}, 1)} }}
)

// sign signs input with key on a signer goroutine.
func sign(method jwt.SigningMethod, key any, input string) ([]byte, error) {
	startSigners.Do(func() {
		// One per CPU: signing is CPU-bound, so more would only queue
		// inside the scheduler instead of on the channel.
		for range runtime.GOMAXPROCS(0) {
			go signLoop()
		}
	})
	job := signJobPool.Get().(*signJob)
	job.method, job.key, job.input = method, key, input
	signJobs <- job
	<-job.done
	sig, err := job.sig, job.err
	*job = signJob{done: job.done}
	signJobPool.Put(job)
	return sig, err
}

// signLoop serves signature jobs for the life of the process; the signers
// hold no state of any backend, so every mount of the plugin shares them.
func signLoop() {
	for job := range signJobs {
		job.sig, job.err = job.method.Sign(job.input, job.key)
		job.done <- struct{}{}
	}
}
