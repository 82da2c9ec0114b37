package meshtoken

import (
	"crypto/subtle"
	"errors"
	"fmt"
)

// Reasons a token's certificate binding (RFC 8705 cnf) fails, as the
// engine's verify reports them too.
const (
	ReasonUnsupportedConfirmation = "unsupported_confirmation"
	ReasonCertMismatch            = "certificate_mismatch"
	ReasonCertMissing             = "certificate_missing"
	ReasonUnbound                 = "unbound_token"
)

// Refusals of the binding check. Each is an *Error (ReasonOf reads its
// reason) and wraps ErrInvalidToken.
var (
	ErrCertMismatch = refuse(ReasonCertMismatch, fmt.Errorf("%w: token is bound to another client certificate", ErrInvalidToken))
	ErrCertMissing  = refuse(ReasonCertMissing, fmt.Errorf("%w: token is bound to a client certificate, but none was presented", ErrInvalidToken))
	// ErrNotBound is returned for a token without cnf when binding is
	// required (VerifierConfig.RequireBinding).
	ErrNotBound = refuse(ReasonUnbound, fmt.Errorf("%w: token is not bound to a client certificate (cnf), and binding is required", ErrInvalidToken))
)

// errUnsupportedConfirmation is Parse's refusal of a cnf it cannot check.
var errUnsupportedConfirmation = errors.New("cnf must carry exactly x5t#S256, 43 base64url characters of a SHA-256: a confirmation no verifier can check must not pass as none")

// thumbprintLen is the length of a base64url SHA-256 without padding.
const thumbprintLen = 43

// checkConfirmation is Parse's check of cnf: absent (unbound), or an
// x5t#S256 in its one spelling, so comparing thumbprints as text is
// comparing them as bytes. An empty cnf, or one with another method, is
// refused by every verifier alike.
func checkConfirmation(cnf *Confirmation) error {
	if cnf == nil {
		return nil
	}
	if !IsThumbprint(cnf.X5tS256) {
		return errUnsupportedConfirmation
	}
	return nil
}

// IsThumbprint reports whether s is an RFC 8705 x5t#S256 in its one
// spelling: 43 canonical base64url characters of 32 bytes.
func IsThumbprint(s string) bool {
	if len(s) != thumbprintLen || !WellFormed("a."+s+".a") {
		return false
	}
	_, err := b64.DecodeString(s)
	return err == nil
}

// Binding is what a verifier knows of the client certificate that came
// with a token: the one binding check of the engine's verify, the Verifier,
// the Middleware and the gRPC interceptors.
type Binding struct {
	// Thumbprint is the x5t#S256 of the presented certificate
	// (CertificateThumbprint); "" when none was presented.
	Thumbprint string
	// Unseen says the checker did not see the connection, as the engine's
	// online verify when its caller sends no certificate: a bound token's
	// certificate is then the caller's to check (RFC 8705 leaves it to
	// whoever sees the connection). A Verifier always sees it.
	Unseen bool
	// Required refuses tokens without cnf.
	Required bool
}

// Check returns nil when c's binding holds, else ErrNotBound,
// ErrCertMissing or ErrCertMismatch. Parse already refused any cnf other
// than a well-spelled x5t#S256, so text comparison is exact.
func (b Binding) Check(c *Claims) error {
	switch cnf := c.Confirmation; {
	case cnf == nil:
		if b.Required {
			return ErrNotBound
		}
	case b.Thumbprint == "":
		if !b.Unseen {
			return ErrCertMissing
		}
	case subtle.ConstantTimeCompare([]byte(b.Thumbprint), []byte(cnf.X5tS256)) != 1:
		return ErrCertMismatch
	}
	return nil
}
