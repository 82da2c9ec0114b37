package meshauth

import (
	"context"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// pathServiceTLS declares services/:name/tls.
func pathServiceTLS(b *backend) []*framework.Path {
	return []*framework.Path{{
		Pattern:      "services/" + serviceNamePattern + "/tls",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
		Fields: map[string]*framework.FieldSchema{
			"name": {Type: framework.TypeString, Description: "Service name."},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "service-tls"},
				Callback:     b.pathServiceTLSRead,
				Summary:      "The service's mTLS trust profile: CA chain, pins, hostnames, fingerprints, expiry.",
			},
		},
		HelpSynopsis:    "A service's mTLS trust profile, for its peers.",
		HelpDescription: "Returns what a peer needs to configure its side of mutual TLS with the service: the CA chain (PEM, and each CA's facts), the registered certificate's facts, SPKI pins, hostnames, require_mtls, and the earliest expiry among them with days left.",
	}}
}

func (b *backend) pathServiceTLSRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, errResp := serviceName(req, d)
	if errResp != nil {
		return errResp, nil
	}
	entry, err := readService(ctx, req.Storage, name)
	if err != nil || entry == nil {
		return nil, err
	}
	now := b.now()
	var earliest time.Time
	note := func(t time.Time) {
		if earliest.IsZero() || t.Before(earliest) {
			earliest = t
		}
	}
	data := map[string]any{
		"name":         name,
		"require_mtls": entry.RequireMTLS,
		"hostnames":    nonNil(entry.Hostnames),
		"pinned_spki":  nonNil(entry.PinnedSPKI),
		"ca_chain":     entry.CAChain,
		"certificate":  nil,
	}
	cas := []map[string]any{}
	if entry.CAChain != "" {
		certs, err := parseCertificates("ca_chain", entry.CAChain, maxCACertificates)
		if err != nil {
			return nil, err
		}
		for _, c := range certs {
			cas = append(cas, describeCertificate(c, now))
			note(c.NotAfter)
		}
	}
	data["ca_certificates"] = cas
	if entry.Certificate != "" {
		certs, err := parseCertificates("certificate", entry.Certificate, 1)
		if err != nil {
			return nil, err
		}
		data["certificate"] = describeCertificate(certs[0], now)
		note(certs[0].NotAfter)
	}
	data["expires_at"] = nil
	data["days_left"] = nil
	if !earliest.IsZero() {
		data["expires_at"] = earliest.UTC().Format(time.RFC3339)
		data["days_left"] = int(earliest.Sub(now).Hours() / 24)
	}
	return &logical.Response{Data: data}, nil
}
