package meshauth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// Storage of operator-pushed CRLs and of revoked certificates listed in the
// feed.
const (
	storageCRLPrefix          = "crls/"
	storageRevokedCertsPrefix = "revoked-certificates/"
	crlEntryVersion           = 1
)

// crlEntry is a CRL pushed at crls/:name.
type crlEntry struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
	// DER is the CRL, base64 standard encoding.
	DER       string    `json:"der"`
	CreatedAt time.Time `json:"created_at"`
}

// revokedCertEntry lists one revoked certificate in the feed until Exp.
type revokedCertEntry struct {
	Version int       `json:"version"`
	Exp     time.Time `json:"exp"`
}

// pathCRLs declares crls/ and crls/:name.
func pathCRLs(b *backend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern:      "crls/?$",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "list", OperationSuffix: "crls"},
					Callback:     b.pathCRLList,
					Summary:      "List the CRLs pushed by operators.",
				},
			},
			HelpSynopsis:    "CRLs pushed by operators.",
			HelpDescription: crlsHelp,
		},
		{
			Pattern:      "crls/" + serviceNamePattern,
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationSuffix: "crl"},
			Fields: map[string]*framework.FieldSchema{
				"name": {Type: framework.TypeString, Description: "Name of the CRL: [a-z0-9][a-z0-9._-]{0,127}."},
				"crl": {
					Type:        framework.TypeString,
					Description: "The CRL, PEM (one X509 CRL block) or base64 DER, at most 10 MiB. It must be signed by a CA in some service's ca_chain or in a trust domain's bundle (checked by key) and not be past its nextUpdate. Writing the name again replaces it.",
				},
			},
			ExistenceCheck: b.crlExists,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.CreateOperation: &framework.PathOperation{DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "write"}, Callback: b.pathCRLWrite, Summary: "Push a CRL."},
				logical.UpdateOperation: &framework.PathOperation{DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "write"}, Callback: b.pathCRLWrite, Summary: "Replace a pushed CRL."},
				logical.ReadOperation:   &framework.PathOperation{DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read"}, Callback: b.pathCRLRead, Summary: "Read a pushed CRL and its facts."},
				logical.DeleteOperation: &framework.PathOperation{DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "delete"}, Callback: b.pathCRLDelete, Summary: "Remove a pushed CRL."},
			},
			HelpSynopsis:    "A CRL pushed by an operator.",
			HelpDescription: crlsHelp,
		},
	}
}

func crlName(d *framework.FieldData) (string, *logical.Response) {
	name := d.Get("name").(string)
	if name != strings.ToLower(name) {
		return "", logical.ErrorResponse(fmt.Sprintf("CRL names are lower case; use crls/%s", strings.ToLower(name)))
	}
	return name, nil
}

func (b *backend) crlExists(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	name, errResp := crlName(d)
	if errResp != nil {
		return false, nil
	}
	e, err := req.Storage.Get(ctx, storageCRLPrefix+name)
	return e != nil, err
}

func (b *backend) pathCRLList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := req.Storage.List(ctx, storageCRLPrefix)
	if err != nil {
		return nil, err
	}
	return logical.ListResponse(names), nil
}

func (b *backend) pathCRLWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, errResp := crlName(d)
	if errResp != nil {
		return errResp, nil
	}
	text := strings.TrimSpace(d.Get("crl").(string))
	if text == "" {
		return logical.ErrorResponse("crl is required: the CRL as PEM (-----BEGIN X509 CRL-----) or base64 DER"), nil
	}
	data := []byte(text)
	if !strings.HasPrefix(text, "-----BEGIN") {
		der, err := base64.StdEncoding.DecodeString(text)
		if err != nil {
			return logical.ErrorResponse("crl is neither PEM nor base64 DER"), nil
		}
		data = der
	}
	c, err := parseCRL(data)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	now := b.now()
	if !c.list.NextUpdate.IsZero() && !now.Before(c.list.NextUpdate) {
		return logical.ErrorResponse(fmt.Sprintf("CRL is past its nextUpdate (%s); push a current one", c.list.NextUpdate.UTC().Format(time.RFC3339))), nil
	}
	signer, err := b.crlSigner(ctx, req.Storage, c)
	if err != nil {
		return nil, err
	}
	if signer == "" {
		return logical.ErrorResponse("CRL is not signed by any CA in a service's ca_chain or a trust domain's bundle (checked by key, not only by issuer name " + c.list.Issuer.String() + "); register the CA first"), nil
	}
	entry := &crlEntry{Version: crlEntryVersion, Name: name, DER: base64.StdEncoding.EncodeToString(c.raw), CreatedAt: now.UTC()}
	if err := writeEntry(ctx, req.Storage, storageCRLPrefix+name, "CRL", entry, false); err != nil {
		return nil, err
	}
	b.certRevocation.pushedChanged()
	return &logical.Response{Data: crlFacts(name, c, signer)}, nil
}

// crlSigner names where the CRL's signer is trusted: a service whose
// ca_chain holds it, or "trust_domains/<name>" whose bundle does; "" when
// neither does.
func (b *backend) crlSigner(ctx context.Context, s logical.Storage, c *parsedCRL) (string, error) {
	domains, err := s.List(ctx, storageTrustDomainPrefix)
	if err != nil {
		return "", err
	}
	for _, n := range domains {
		e, err := readTrustDomain(ctx, s, n)
		if err != nil {
			return "", err
		}
		if e == nil {
			continue
		}
		cas, err := parseBundle(e.Bundle)
		if err != nil {
			continue
		}
		for _, ca := range cas {
			if c.signedBy(ca) {
				return "trust_domains/" + n, nil
			}
		}
	}
	names, err := s.List(ctx, storageServicePrefix)
	if err != nil {
		return "", err
	}
	for _, n := range names {
		e, err := readService(ctx, s, n)
		if err != nil || e == nil || e.CAChain == "" {
			if err != nil {
				return "", err
			}
			continue
		}
		cas, err := parseCertificates("ca_chain", e.CAChain, maxCACertificates)
		if err != nil {
			continue
		}
		for _, ca := range cas {
			if c.signedBy(ca) {
				return "services/" + n, nil
			}
		}
	}
	return "", nil
}

func crlFacts(name string, c *parsedCRL, signer string) map[string]any {
	data := map[string]any{
		"name":          name,
		"issuer":        c.list.Issuer.String(),
		"this_update":   c.list.ThisUpdate.UTC().Format(time.RFC3339),
		"revoked_count": len(c.revoked),
	}
	if !c.list.NextUpdate.IsZero() {
		data["next_update"] = c.list.NextUpdate.UTC().Format(time.RFC3339)
	}
	if signer != "" {
		data["signed_by"] = signer
	}
	return data
}

func (b *backend) pathCRLRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, errResp := crlName(d)
	if errResp != nil {
		return errResp, nil
	}
	e, err := readEntry[crlEntry](ctx, req.Storage, storageCRLPrefix+name, "CRL")
	if err != nil || e == nil {
		return nil, err
	}
	der, err := base64.StdEncoding.DecodeString(e.DER)
	if err != nil {
		return nil, fmt.Errorf("stored CRL %q: %w", name, err)
	}
	c, err := parseCRL(der)
	if err != nil {
		return nil, fmt.Errorf("stored CRL %q: %w", name, err)
	}
	data := crlFacts(name, c, "")
	data["crl"] = e.DER
	data["created_at"] = e.CreatedAt.Format(time.RFC3339)
	return &logical.Response{Data: data}, nil
}

func (b *backend) pathCRLDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, errResp := crlName(d)
	if errResp != nil {
		return errResp, nil
	}
	if err := req.Storage.Delete(ctx, storageCRLPrefix+name); err != nil {
		return nil, err
	}
	b.certRevocation.pushedChanged()
	return nil, nil
}

// pushedChanged drops the pushed CRLs; the next check reloads them.
func (r *certRevocation) pushedChanged() {
	r.pushed.drop()
	r.changed()
}

// pushedCRLs returns the pushed CRLs, loading them once from storage.
func (r *certRevocation) pushedCRLs(ctx context.Context) ([]*parsedCRL, error) {
	return r.pushed.load(func() ([]*parsedCRL, error) {
		s := r.b.storageView
		if s == nil {
			return nil, errors.New("no storage")
		}
		names, err := s.List(ctx, storageCRLPrefix)
		if err != nil {
			return nil, err
		}
		var out []*parsedCRL
		for _, n := range names {
			e, err := readEntry[crlEntry](ctx, s, storageCRLPrefix+n, "CRL")
			if err != nil {
				return nil, err
			}
			if e == nil {
				continue
			}
			der, err := base64.StdEncoding.DecodeString(e.DER)
			if err != nil {
				continue
			}
			c, err := parseCRL(der)
			if err != nil {
				continue
			}
			c.fetched = e.CreatedAt
			out = append(out, c)
		}
		return out, nil
	})
}

// listRevoked records a revoked certificate for the feed until exp (kept if
// a later exp is already stored).
func (r *certRevocation) listRevoked(ctx context.Context, s logical.Storage, x5t string, exp time.Time) error {
	if s == nil {
		return errors.New("no storage")
	}
	if !r.b.canWrite() {
		return logical.ErrReadOnly
	}
	r.listMu.Lock()
	defer r.listMu.Unlock()
	listed, err := r.revokedCertificates(ctx, s)
	if err != nil {
		return err
	}
	old, ok := listed[x5t]
	if ok && !exp.After(old) {
		return nil
	}
	if !ok && len(listed) >= meshtoken.MaxRevokedCertificates {
		// The feed's size bound (meshtoken.MaxFeedLength) counts on this
		// limit: past it, listing more would let revocations push every
		// verifier into failing closed. Online verify and logins still
		// refuse the certificate; offline verifiers need the service
		// revoked (services/<name>/revoke).
		return fmt.Errorf("%d revoked client certificates are listed already (the feed's limit); revoke the service whose certificate %s was revoked with services/<name>/revoke so offline verifiers refuse its tokens", len(listed), x5t)
	}
	if err := writeEntry(ctx, s, storageRevokedCertsPrefix+x5t, "revoked certificate", &revokedCertEntry{Version: 1, Exp: exp.UTC()}, false); err != nil {
		return err
	}
	r.listed.drop()
	r.b.feed.drop()
	r.b.Logger().Info("revoked client certificate listed in the revocation feed", "x5t#S256", x5t, "until", exp.UTC().Format(time.RFC3339))
	return nil
}

// revokedCertificates returns the listed certificates (x5t -> exp), loaded
// once from storage and dropped on every write here or Invalidate.
func (r *certRevocation) revokedCertificates(ctx context.Context, s logical.Storage) (map[string]time.Time, error) {
	return r.listed.load(func() (map[string]time.Time, error) {
		names, err := s.List(ctx, storageRevokedCertsPrefix)
		if err != nil {
			return nil, err
		}
		m := make(map[string]time.Time, len(names))
		for _, n := range names {
			e, err := readEntry[revokedCertEntry](ctx, s, storageRevokedCertsPrefix+n, "revoked certificate")
			if err != nil {
				return nil, err
			}
			if e != nil {
				m[n] = e.Exp
			}
		}
		return m, nil
	})
}

// tidyRevokedCertificates deletes listings whose tokens have all expired.
func (r *certRevocation) tidyRevokedCertificates(ctx context.Context, s logical.Storage, cutoff time.Time) error {
	// Serialised with listRevoked: a tidy deciding on an old exp must not
	// delete a listing just extended.
	r.listMu.Lock()
	defer r.listMu.Unlock()
	listed, err := r.revokedCertificates(ctx, s)
	if err != nil {
		return err
	}
	for x5t, exp := range listed {
		if exp.Before(cutoff) {
			if err := s.Delete(ctx, storageRevokedCertsPrefix+x5t); err != nil {
				return err
			}
			r.listed.drop()
			r.b.feed.drop()
		}
	}
	return nil
}

// reasonCertificateRevoked is verify's reason for a token bound to a
// certificate listed as revoked.
const reasonCertificateRevoked = "certificate_revoked"

// certificateRevokedReason answers verify for a token's cnf x5t#S256.
func (b *backend) certificateRevokedReason(ctx context.Context, s logical.Storage, x5t string) (string, error) {
	if x5t == "" {
		return "", nil
	}
	listed, err := b.certRevocation.revokedCertificates(ctx, s)
	if err != nil {
		return "", err
	}
	if _, ok := listed[x5t]; ok {
		return reasonCertificateRevoked, nil
	}
	return "", nil
}

const crlsHelp = `
CRLs pushed by an operator, for CAs whose CRL is not reachable over HTTP
from Vault, or to make a revocation count before the CA's next CRL is
fetched. A pushed CRL counts for a certificate only when it is signed by the
key of the CA that issued that certificate; a write is refused unless some
service's ca_chain holds the signing CA (by key: a CA that merely shares the
issuer name does not qualify), and when the CRL is past its nextUpdate. Past
nextUpdate a pushed CRL no longer vouches for anything: push a new one.
Services use them when revocation_check includes crl.
`
