package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/hashicorp/vault/api"
)

// APIKey is a service's API key as registration or rotate-key answered it.
type APIKey struct {
	// Service is the service the key belongs to.
	Service string
	// Key is the API key itself: a secret.
	Key string
	// KeyID names the key in services/<name> reads and in logs.
	KeyID string
	// CreationPath is where Vault says the wrapped answer came from:
	// <mount>/services/<name> or <mount>/services/<name>/rotate-key.
	CreationPath string
}

// ErrWrappingTokenUsed is returned when Vault does not know the wrapping
// token: it was already unwrapped, it expired, or it never existed. A
// wrapping token is single-use, so if nobody on your side unwrapped it,
// someone else may hold the API key: rotate it at once
// (vault write <mount>/services/<name>/rotate-key grace_period=0), and look
// the wrapping token's accessor up in the audit log to see who unwrapped it.
var ErrWrappingTokenUsed = errors.New("meshauth client: the wrapping token is not valid (already unwrapped, expired, or never issued); if you did not unwrap it, treat the API key as intercepted: rotate it with grace_period=0 and look for its unwrap in the audit log")

// ErrWrongCreationPath is returned when the wrapping token was created by a
// request other than the registration or key rotation of the expected
// service. The token is left unwrapped.
var ErrWrongCreationPath = errors.New("meshauth client: the wrapping token was not created by this service's registration or rotate-key")

// UnwrapAPIKey reads an API key that Vault delivered response-wrapped
// (config api_key_wrap_ttl, or a request made with -wrap-ttl). Following
// Vault's practice for AppRole secret IDs it first looks the token up
// (sys/wrapping/lookup, which does not use it up) and checks that its
// creation_path is exactly <mount>/services/<service> or
// <mount>/services/<service>/rotate-key; only then does it unwrap. mount is
// the engine's mount path (meshauth, or what -path named), service the
// service name. vault is only used for its address and TLS settings: the
// wrapping token is the only credential sent.
func UnwrapAPIKey(ctx context.Context, vault *api.Client, wrappingToken, mount, service string) (*APIKey, error) {
	mount = strings.Trim(mount, "/")
	wrappingToken = strings.TrimSpace(wrappingToken)
	switch {
	case mount == "" || service == "":
		return nil, errors.New("meshauth client: UnwrapAPIKey needs the mount path and the service name")
	case wrappingToken == "":
		return nil, errors.New("meshauth client: no wrapping token given")
	}
	anon, err := vault.Clone()
	if err != nil {
		return nil, fmt.Errorf("meshauth client: %w", err)
	}
	// The lookup carries the wrapping token in its body and no client
	// token: a request made with the wrapping token as its client token
	// could count as its one use.
	anon.ClearToken()
	info, err := anon.Logical().WriteWithContext(ctx, "sys/wrapping/lookup", map[string]any{"token": wrappingToken})
	if err != nil {
		// Only a 400 says the token is not valid; a 403 here is an ACL on
		// sys/wrapping/lookup, not a sign of interception (the Python
		// package reads it the same way).
		if statusOf(err) == http.StatusBadRequest {
			return nil, ErrWrappingTokenUsed
		}
		return nil, fmt.Errorf("meshauth client: looking up the wrapping token: %w", err)
	}
	if info == nil || info.Data == nil {
		return nil, errors.New("meshauth client: sys/wrapping/lookup answered nothing")
	}
	path, _ := info.Data["creation_path"].(string)
	want := mount + "/services/" + service
	if path != want && path != want+"/rotate-key" {
		return nil, fmt.Errorf("%w: it was created at %q, expected %q or %q", ErrWrongCreationPath, path, want, want+"/rotate-key")
	}

	anon.SetToken(wrappingToken)
	secret, err := anon.Logical().UnwrapWithContext(ctx, "")
	if err != nil {
		if invalidWrappingToken(err) {
			// Looked up a moment ago, gone now: someone unwrapped it in
			// between.
			return nil, ErrWrappingTokenUsed
		}
		return nil, fmt.Errorf("meshauth client: unwrapping: %w", err)
	}
	if secret == nil || secret.Data == nil {
		return nil, errors.New("meshauth client: the wrapping token held no data")
	}
	key := &APIKey{CreationPath: path}
	key.Service, _ = secret.Data["name"].(string)
	key.Key, _ = secret.Data["api_key"].(string)
	key.KeyID, _ = secret.Data["api_key_id"].(string)
	if key.Key == "" || key.Service != service {
		return nil, fmt.Errorf("meshauth client: the wrapped answer is not an API key of service %q", service)
	}
	return key, nil
}

// invalidWrappingToken reports Vault's answer to a wrapping token it does
// not know at sys/wrapping/unwrap: 400, or 403 (used as the client token,
// it is refused like any unknown token).
func invalidWrappingToken(err error) bool {
	var re *api.ResponseError
	if !errors.As(err, &re) {
		return false
	}
	return re.StatusCode == http.StatusBadRequest || re.StatusCode == http.StatusForbidden
}
