package meshauth

import (
	"context"
	"net/http"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// prometheusContentType is the Prometheus text exposition format 0.0.4.
const prometheusContentType = "text/plain; version=0.0.4; charset=utf-8"

// pathMetrics declares metrics.
func pathMetrics(b *backend) []*framework.Path {
	return []*framework.Path{{
		Pattern:      "metrics",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
		Fields: map[string]*framework.FieldSchema{
			"format": {
				Type:          framework.TypeString,
				Description:   "json (default) or prometheus (text exposition format, raw body).",
				Default:       "json",
				AllowedValues: []any{"json", "prometheus"},
				Query:         true,
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "metrics"},
				Callback:     b.pathMetricsRead,
				Summary:      "Counters of this node: logins, lockouts, tokens, verifications, key rotations.",
			},
		},
		HelpSynopsis:    "Engine counters, as JSON or Prometheus text.",
		HelpDescription: "Counters are kept per node since the plugin process started: logins by service and result, lockouts, tokens issued, verifications by result and reason, key rotations; next_key_fetchers counts the distinct fetchers (remote addresses, hashed with a key made at plugin start; behind a proxy, the proxy) that read jwks, or spiffe/bundle when it carries the next key, while it held the next key, so an operator can see verifiers hold a key before it signs. Logins for unregistered names count under _unknown. Read with format=prometheus for the Prometheus text exposition format.",
	}}
}

func (b *backend) pathMetricsRead(_ context.Context, _ *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	locked := b.lockout.locked(b.now())
	switch d.Get("format").(string) {
	case "json", "":
		data := b.metrics.snapshot(locked)
		b.adoption.addTo(data)
		b.claimsMetrics.addTo(data)
		return &logical.Response{Data: data}, nil
	case "prometheus":
		return &logical.Response{Data: map[string]any{
			logical.HTTPStatusCode:  http.StatusOK,
			logical.HTTPContentType: prometheusContentType,
			logical.HTTPRawBody:     []byte(b.metrics.prometheus(locked) + b.adoption.prometheus() + b.claimsMetrics.prometheus()),
		}}, nil
	}
	return logical.ErrorResponse("format must be json or prometheus"), nil
}
