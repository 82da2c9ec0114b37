package meshauth

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// Trust domains are the operator's: trust_domains/<name> holds the X.509
// authorities (the bundle) that speak for one SPIFFE trust domain. A
// service's spiffe_ids may only name registered trust domains, and at login
// an X.509-SVID must chain to the bundle of its ID's trust domain; a
// service's own certificate or ca_chain can only narrow that. Services are
// written by teams, trust domains by operators (the policy split is in
// docs/trust-domains.md): so a writer of one service can no longer choose
// which CA speaks for a SPIFFE ID.

// trustDomainVersion is the current layout of trustDomainEntry.
const trustDomainVersion = 1

// trustDomainEntry is one registered trust domain, stored at
// storageTrustDomainPrefix+name.
type trustDomainEntry struct {
	// Version is the layout version of this entry.
	Version int `json:"version"`
	// Name is the trust domain name (lower case, its one spelling).
	Name string `json:"name"`
	// Bundle is the PEM bundle of the trust domain's X.509 authorities.
	Bundle string `json:"bundle"`
	// CreatedAt is when the trust domain was registered.
	CreatedAt time.Time `json:"created_at"`
	// UpdatedAt is the last write.
	UpdatedAt time.Time `json:"updated_at"`
}

// trustDomainNamePattern admits any case in the path, so a name with an
// upper-case letter reaches the handler and is refused with the one
// spelling instead of an "unsupported path".
const trustDomainNamePattern = `(?P<name>[A-Za-z0-9._-]{1,255})`

// pathTrustDomains declares the list and item paths of trust domains.
func pathTrustDomains(b *backend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern:      "trust_domains/?$",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "list", OperationSuffix: "trust-domains"},
					Callback:     b.pathTrustDomainsList,
					Summary:      "List registered trust domains.",
				},
			},
			HelpSynopsis:    "List registered SPIFFE trust domains.",
			HelpDescription: "Lists the names of every trust domain registered at trust_domains/<name>.",
		},
		{
			Pattern:      "trust_domains/" + trustDomainNamePattern,
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields: map[string]*framework.FieldSchema{
				"name": {
					Type:        framework.TypeString,
					Description: "SPIFFE trust domain name, as in spiffe://<name>/...: lower-case ASCII letters, digits, '.', '-' and '_', at most 255 bytes. It has one spelling; a path with an upper-case letter is refused with the lower-case path.",
				},
				"bundle": {
					Type: framework.TypeString,
					Description: fmt.Sprintf("PEM bundle of the trust domain's X.509 authorities (one to %d CA certificates, such as the x509_authorities of a SPIRE bundle). "+
						"At login an X.509-SVID whose ID is in this trust domain must chain to one of them. Required.", maxCACertificates),
				},
			},
			ExistenceCheck: b.trustDomainExists,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.CreateOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "write", OperationSuffix: "trust-domain"},
					Callback:     b.pathTrustDomainWrite,
					Summary:      "Register a trust domain with its bundle.",
				},
				logical.UpdateOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "write", OperationSuffix: "trust-domain"},
					Callback:     b.pathTrustDomainWrite,
					Summary:      "Replace a trust domain's bundle.",
				},
				logical.ReadOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "trust-domain"},
					Callback:     b.pathTrustDomainRead,
					Summary:      "Read a trust domain and its bundle.",
				},
				logical.DeleteOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "delete", OperationSuffix: "trust-domain"},
					Callback:     b.pathTrustDomainDelete,
					Summary:      "Delete a trust domain; logins of services with IDs in it fail until it is registered again.",
				},
			},
			HelpSynopsis:    "Register, read, update or delete a SPIFFE trust domain and the CAs that speak for it.",
			HelpDescription: trustDomainHelp,
		},
	}
}

// trustDomainName reads and checks the name path parameter: a SPIFFE trust
// domain name in its one (lower-case) spelling. Vault checks ACLs on the
// path as written, so a second spelling must never reach the entry.
func trustDomainName(req *logical.Request, d *framework.FieldData) (string, *logical.Response) {
	name := d.Get("name").(string)
	if lower := strings.ToLower(name); lower != name {
		if checkTrustDomain(lower) == nil {
			return "", logical.ErrorResponse(fmt.Sprintf("trust domain names are lower case and have one spelling; use %s", canonicalPath(req, name, lower)))
		}
	}
	if err := checkTrustDomain(name); err != nil {
		return "", logical.ErrorResponse(fmt.Sprintf("trust domain name %q %v (give the bare name, such as example.org)", name, err))
	}
	return name, nil
}

// readTrustDomain reads one trust domain, or (nil, nil) when absent.
func readTrustDomain(ctx context.Context, s logical.Storage, name string) (*trustDomainEntry, error) {
	return readEntry[trustDomainEntry](ctx, s, storageTrustDomainPrefix+name, fmt.Sprintf("trust domain %q", name))
}

// parseBundle parses and checks a trust domain bundle: CA certificates only.
func parseBundle(text string) ([]*x509.Certificate, error) {
	cas, err := parseCertificates("bundle", text, maxCACertificates)
	if err != nil {
		return nil, err
	}
	for i, ca := range cas {
		if !ca.IsCA || !ca.BasicConstraintsValid {
			return nil, fmt.Errorf("bundle certificate %d (%s) is not a CA certificate; a bundle holds the trust domain's X.509 authorities", i+1, ca.Subject)
		}
	}
	return cas, nil
}

func (b *backend) trustDomainExists(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	name, errResp := trustDomainName(req, d)
	if errResp != nil {
		return false, nil
	}
	entry, err := readTrustDomain(ctx, req.Storage, name)
	return entry != nil, err
}

func (b *backend) pathTrustDomainsList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := req.Storage.List(ctx, storageTrustDomainPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing trust domains: %w", err)
	}
	return logical.ListResponse(names), nil
}

func (b *backend) pathTrustDomainRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, errResp := trustDomainName(req, d)
	if errResp != nil {
		return errResp, nil
	}
	entry, err := readTrustDomain(ctx, req.Storage, name)
	if err != nil || entry == nil {
		return nil, err
	}
	authorities := []map[string]any{}
	if cas, err := parseBundle(entry.Bundle); err == nil {
		now := b.now()
		for _, ca := range cas {
			authorities = append(authorities, describeCertificate(ca, now))
		}
	}
	return &logical.Response{Data: map[string]any{
		"name":        entry.Name,
		"bundle":      entry.Bundle,
		"authorities": authorities,
		"created_at":  entry.CreatedAt.Format(time.RFC3339),
		"updated_at":  entry.UpdatedAt.Format(time.RFC3339),
	}}, nil
}

func (b *backend) pathTrustDomainWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, errResp := trustDomainName(req, d)
	if errResp != nil {
		return errResp, nil
	}
	if resp := rejectUnknownFields(req, d); resp != nil {
		return resp, nil
	}
	v, ok := d.GetOk("bundle")
	if !ok || strings.TrimSpace(v.(string)) == "" {
		return logical.ErrorResponse("bundle is required: the PEM CA certificates of trust domain " + name), nil
	}
	bundle := v.(string)
	if _, err := parseBundle(bundle); err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	// The identity lock orders this write with service writes that check
	// their spiffe_ids against registered trust domains.
	b.identityLock.Lock()
	defer b.identityLock.Unlock()
	old, err := readTrustDomain(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	now := b.now().UTC()
	entry := &trustDomainEntry{Version: trustDomainVersion, Name: name, Bundle: bundle, CreatedAt: now, UpdatedAt: now}
	if old != nil {
		entry.CreatedAt = old.CreatedAt
	}
	if err := writeEntry(ctx, req.Storage, storageTrustDomainPrefix+name, fmt.Sprintf("trust domain %q", name), entry, false); err != nil {
		return nil, err
	}
	b.dropTrustDomain()
	b.Logger().Info("trust domain written", "trust_domain", name)
	return nil, nil
}

func (b *backend) pathTrustDomainDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, errResp := trustDomainName(req, d)
	if errResp != nil {
		return errResp, nil
	}
	b.identityLock.Lock()
	defer b.identityLock.Unlock()
	if err := req.Storage.Delete(ctx, storageTrustDomainPrefix+name); err != nil {
		return nil, fmt.Errorf("deleting trust domain %q: %w", name, err)
	}
	b.dropTrustDomain()
	b.Logger().Info("trust domain deleted", "trust_domain", name)
	return nil, nil
}

// dropTrustDomain forgets everything built from any trust domain's bundle:
// every cached service (each holds the bundles of its IDs' trust domains)
// and every verified-chain result. Trust domain writes are rare operator
// actions, so dropping all is simpler than tracking which service uses
// which trust domain, and it cannot miss one. dropAll advances the service
// cache's epoch, so a load that read the old bundle before the write is
// not kept; trustGen makes a login that checked against the old bundle
// start over (serviceIsCurrent).
func (b *backend) dropTrustDomain() {
	b.trustGen.Add(1)
	b.services.dropAll()
	b.verifiedChains.dropAll()
	b.feed.drop()
}

// loadDomainTrust reads the bundles of the trust domains that a service's
// SPIFFE IDs lie in, into its parsed trust. A trust domain without an entry
// (or whose stored bundle does not parse) is recorded, so its SVIDs fail
// closed with a reason that names the entry to write.
func loadDomainTrust(ctx context.Context, s logical.Storage, t *serviceTrust) error {
	for _, p := range t.spiffe {
		td := p.id.trustDomain
		if _, seen := t.domains[td]; seen {
			continue
		}
		if t.domains == nil {
			t.domains = map[string]*x509.CertPool{}
		}
		entry, err := readTrustDomain(ctx, s, td)
		if err != nil {
			return err
		}
		if entry == nil {
			t.domains[td] = nil
			continue
		}
		cas, err := parseBundle(entry.Bundle)
		if err != nil {
			t.domains[td] = nil
			continue
		}
		pool := x509.NewCertPool()
		for _, ca := range cas {
			pool.AddCert(ca)
			t.noteExpiry(ca)
		}
		t.domains[td] = pool
	}
	return nil
}

// missingTrustDomains lists, in order, the trust domains of a service's
// SPIFFE IDs that have no usable entry at trust_domains/.
func (t *serviceTrust) missingTrustDomains() []string {
	var out []string
	for _, p := range t.spiffe {
		td := p.id.trustDomain
		if t.domains[td] == nil && !slices.Contains(out, td) {
			out = append(out, td)
		}
	}
	return out
}

const trustDomainHelp = `
A SPIFFE trust domain and the X.509 authorities that speak for it. A
service's spiffe_ids may only name trust domains registered here; at login
an X.509-SVID must chain to the bundle of its ID's trust domain, and a
service's own certificate or ca_chain, when set, must hold as well (it can
only narrow). A trust domain without an entry accepts no SVID.

Only operators should be able to write trust_domains/: whoever writes a
bundle decides who may assert every SPIFFE ID of that trust domain. Teams
that register services get write on services/<their prefix>* only. The
policies are in docs/trust-domains.md.

Changing or deleting a bundle does not revoke tokens already issued; after
removing a compromised CA, revoke the affected services' tokens with
services/<name>/revoke.
`
