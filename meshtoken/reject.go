package meshtoken

import (
	"context"
	"net/url"
	"strings"
)

// Rejected reports the reason a request's token was refused to the
// service: to VerifierConfig.Logger at LogLevel and to OnReject, when set.
// The Middleware and the gRPC interceptors call it; the caller is told only
// that the token is invalid (and how to ask Vault why), never the reason.
// err never holds the token.
func (v *Verifier) Rejected(ctx context.Context, err error) {
	if v.cfg.Logger != nil {
		v.cfg.Logger.Log(ctx, v.cfg.LogLevel, "meshauth: token refused", "reason", err.Error())
	}
	if v.cfg.OnReject != nil {
		v.cfg.OnReject(ctx, err)
	}
}

// VerifyHint is the sentence a refused caller gets: how to ask the engine's
// online verify why its token was refused, with this Verifier's mount and
// audience.
func (v *Verifier) VerifyHint() string { return v.verifyHint }

// verifyHint builds VerifyHint from the JWKS URL (/v1/<mount>/jwks) and
// the audience.
func verifyHint(jwksURL, audience string) string {
	mount := "<mount>"
	if u, err := url.Parse(jwksURL); err == nil {
		if m, ok := strings.CutPrefix(strings.TrimSuffix(u.Path, "/jwks"), "/v1/"); ok && m != "" && m != u.Path {
			mount = m
		}
	}
	hint := "to see why, ask Vault: vault write " + mount + "/verify token=<the token>"
	if audience != "" {
		hint += " audience=" + audience
	}
	return hint
}
