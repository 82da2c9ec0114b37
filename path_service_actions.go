package meshauth

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"
)

// maxLiveAPIKeys bounds how many keys a service may hold at once (the new
// one plus those still in their grace period).
const maxLiveAPIKeys = 8

// pathServiceActions declares services/:name/rotate-key and services/:name/revoke.
func pathServiceActions(b *backend) []*framework.Path {
	nameField := &framework.FieldSchema{Type: framework.TypeString, Description: "Service name."}
	return []*framework.Path{
		{
			Pattern: "services/" + serviceNamePattern + "/rotate-key",
			Fields: map[string]*framework.FieldSchema{
				"name": nameField,
				"grace_period": {
					Type:        framework.TypeDurationSecond,
					Description: "How long the service's older keys keep working (duration or seconds); 0 ends them now. Default: the engine's api_key_grace_period.",
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					Callback: b.pathServiceRotateKey,
					Summary:  "Issue a new API key; older keys expire after the grace period.",
				},
			},
			HelpSynopsis:    "Issue a new API key for a service.",
			HelpDescription: "Answers the new api_key once, with api_key_id. Keys issued before keep working until grace_period ends (shortened, never lengthened), so the service can roll over without downtime.",
		},
		{
			Pattern: "services/" + serviceNamePattern + "/revoke",
			Fields: map[string]*framework.FieldSchema{
				"name": nameField,
				"disable": {
					Type:        framework.TypeBool,
					Description: "Also disable the service, refusing new logins until it is updated with disabled=false. Default: false.",
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					Callback: b.pathServiceRevoke,
					Summary:  "Emergency revocation: every token of the service issued up to now stops verifying.",
				},
			},
			HelpSynopsis:    "Revoke every token a service holds.",
			HelpDescription: "Every token of the service whose iat is not after this moment fails verify from now on. Tokens issued afterwards verify as usual unless disable=true. Offline verifiers do not see this; they rely on the tokens' short lifetime.",
		},
	}
}

// serviceLock returns the lock that serialises writes to one service.
func (b *backend) serviceLock(name string) *locksutil.LockEntry {
	return locksutil.LockForKey(b.serviceLocks, name)
}

// errServiceNotFound answers an action on a service that is not registered.
func errServiceNotFound(name string) error {
	return logical.CodedError(http.StatusNotFound, fmt.Sprintf("service %q is not registered; list services/ to see those that are", name))
}

func (b *backend) pathServiceRotateKey(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, errResp := serviceName(d)
	if errResp != nil {
		return errResp, nil
	}
	if resp := rejectUnknownFields(req, d); resp != nil {
		return resp, nil
	}
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	grace := cfg.APIKeyGracePeriod
	if v, ok := d.GetOk("grace_period"); ok {
		if v.(int) < 0 {
			return logical.ErrorResponse("grace_period must not be negative"), nil
		}
		grace = time.Duration(v.(int)) * time.Second
	}

	lock := b.serviceLock(name)
	lock.Lock()
	defer lock.Unlock()
	entry, err := readService(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if entry == nil {
		return nil, errServiceNotFound(name)
	}
	now := b.now().UTC()
	ends := now.Add(grace)
	for i := range entry.APIKeys {
		if k := &entry.APIKeys[i]; k.ExpiresAt.IsZero() || ends.Before(k.ExpiresAt) {
			k.ExpiresAt = ends
		}
	}
	keys := liveKeys(entry.APIKeys, now)
	if len(keys) >= maxLiveAPIKeys {
		return logical.ErrorResponse(fmt.Sprintf("service %q already has %d keys in their grace period; rotate with a shorter grace_period (0 ends them now)", name, len(keys))), nil
	}
	created, err := generateAPIKey(now)
	if err != nil {
		return nil, err
	}
	entry.APIKeys = append(keys, created.entry)
	entry.UpdatedAt = now
	// The new key is returned only after the entry holding its hash and the
	// shortened old keys is stored: a failed write loses nothing.
	if err := b.putService(ctx, req.Storage, entry); err != nil {
		return nil, err
	}
	b.Logger().Info("api key rotated", "service", name, "api_key_id", created.entry.ID, "grace_period", grace.String())
	return &logical.Response{Data: map[string]any{
		"name":                    name,
		"api_key":                 created.secret,
		"api_key_id":              created.entry.ID,
		"previous_keys_expire_at": ends.Format(time.RFC3339),
	}}, nil
}

func (b *backend) pathServiceRevoke(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, errResp := serviceName(d)
	if errResp != nil {
		return errResp, nil
	}
	if resp := rejectUnknownFields(req, d); resp != nil {
		return resp, nil
	}
	lock := b.serviceLock(name)
	lock.Lock()
	defer lock.Unlock()
	entry, err := readService(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if entry == nil {
		return nil, errServiceNotFound(name)
	}
	now := b.now().UTC()
	entry.RevokedBefore = now.Unix()
	if d.Get("disable").(bool) {
		entry.Disabled = true
	}
	entry.UpdatedAt = now
	if err := b.putService(ctx, req.Storage, entry); err != nil {
		return nil, err
	}
	b.Logger().Warn("all tokens of service revoked", "service", name, "disabled", entry.Disabled)
	return &logical.Response{Data: map[string]any{
		"name":                  name,
		"tokens_revoked_before": now.Format(time.RFC3339),
		"disabled":              entry.Disabled,
	}}, nil
}
