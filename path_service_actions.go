package meshauth

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
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
			Pattern:      "services/" + serviceNamePattern + "/rotate-key",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields: map[string]*framework.FieldSchema{
				"name": nameField,
				"grace_period": {
					Type:        framework.TypeDurationSecond,
					Description: "How long the service's older keys keep working (duration or seconds); 0 ends them now. Default: the engine's api_key_grace_period.",
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "rotate", OperationSuffix: "service-api-key"},
					Callback:     b.pathServiceRotateKey,
					Summary:      "Issue a new API key; older keys expire after the grace period.",
				},
			},
			HelpSynopsis:    "Issue a new API key for a service.",
			HelpDescription: "Answers the new api_key once, with api_key_id. Keys issued before keep working until grace_period ends (shortened, never lengthened), so the service can roll over without downtime.",
		},
		{
			Pattern:      "services/" + serviceNamePattern + "/revoke",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields: map[string]*framework.FieldSchema{
				"name": nameField,
				"disable": {
					Type:        framework.TypeBool,
					Description: "Also disable the service, refusing new logins until it is updated with disabled=false. Default: false.",
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "revoke", OperationSuffix: "service-tokens"},
					Callback:     b.pathServiceRevoke,
					Summary:      "Emergency revocation: every token of the service issued up to now stops verifying.",
				},
			},
			HelpSynopsis:    "Revoke every token a service holds.",
			HelpDescription: "Every token of the service issued before this call fails verify from now on: the service's revocation epoch advances, and tokens carry the epoch they were minted in (claim gen), so tokens minted afterwards carry their real iat and verify as usual unless disable=true. Offline verifiers see it through the signed revocations feed (path revocations, which lists the service by its new epoch) within config revocation_max_staleness: the Go meshtoken.Verifier checks the feed by default.",
		},
	}
}

func (b *backend) pathServiceRotateKey(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
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
	var createdID string
	resp, err := b.mutateService(ctx, req, d, func(e *serviceEntry, now time.Time) (*logical.Response, error) {
		ends := now.Add(grace)
		for i := range e.APIKeys {
			if k := &e.APIKeys[i]; k.ExpiresAt.IsZero() || ends.Before(k.ExpiresAt) {
				k.ExpiresAt = ends
			}
		}
		keys := liveKeys(e.APIKeys, now)
		if len(keys) >= maxLiveAPIKeys {
			return logical.ErrorResponse(fmt.Sprintf("service %q already has %d keys in their grace period; rotate with a shorter grace_period (0 ends them now)", e.Name, len(keys))), nil
		}
		created, err := generateAPIKey(now)
		if err != nil {
			return nil, err
		}
		e.APIKeys = append(keys, created.entry)
		createdID = created.entry.ID
		return &logical.Response{Data: map[string]any{
			"name":                    e.Name,
			"api_key":                 created.secret,
			"api_key_id":              created.entry.ID,
			"previous_keys_expire_at": ends.Format(time.RFC3339),
		}}, nil
	})
	if err == nil && createdID != "" && !resp.IsError() {
		b.Logger().Info("api key rotated", "service", resp.Data["name"], "api_key_id", createdID, "grace_period", grace.String())
		resp = wrapAPIKeyAnswer(resp, cfg)
	}
	return resp, err
}

func (b *backend) pathServiceRevoke(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	resp, err := b.mutateService(ctx, req, d, func(e *serviceEntry, now time.Time) (*logical.Response, error) {
		// A new epoch kills every token minted so far without touching the
		// iat of the next ones.
		e.advanceEpoch()
		e.RevokedBefore = now.Unix()
		if d.Get("disable").(bool) {
			e.Disabled = true
		}
		return &logical.Response{Data: map[string]any{
			"name":                  e.Name,
			"tokens_revoked_before": now.Format(time.RFC3339),
			"disabled":              e.Disabled,
		}}, nil
	})
	if err == nil && !resp.IsError() {
		b.Logger().Warn("all tokens of service revoked", "service", resp.Data["name"], "disabled", resp.Data["disabled"])
	}
	return resp, err
}
