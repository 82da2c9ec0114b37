package meshauth

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// pathServices declares the list and item paths of services.
func pathServices(b *backend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern:      "services/?$",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "list", OperationSuffix: "services"},
					Callback:     b.pathServicesList,
					Summary:      "List registered service names.",
				},
			},
			HelpSynopsis:    "List registered services.",
			HelpDescription: "Lists the names of every registered service. Names are stored in lower case.",
		},
		{
			Pattern:        "services/" + serviceNamePattern,
			DisplayAttrs:   &framework.DisplayAttributes{OperationPrefix: operationPrefix},
			Fields:         serviceFields(),
			ExistenceCheck: b.serviceExists,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.CreateOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "write", OperationSuffix: "service"},
					Callback:     b.pathServiceWrite,
					Summary:      "Register a service. The response holds its API key, once.",
				},
				logical.UpdateOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "write", OperationSuffix: "service"},
					Callback:     b.pathServiceWrite,
					Summary:      "Change a service; fields not given keep their value.",
				},
				logical.ReadOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "service"},
					Callback:     b.pathServiceRead,
					Summary:      "Read a service. API keys are shown by id and dates only.",
				},
				logical.DeleteOperation: &framework.PathOperation{
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "delete", OperationSuffix: "service"},
					Callback:     b.pathServiceDelete,
					Summary:      "Delete a service; its tokens stop verifying.",
				},
			},
			HelpSynopsis:    "Register, read, update or delete a service.",
			HelpDescription: serviceHelp,
		},
	}
}

// serviceFields is the schema of services/:name.
func serviceFields() map[string]*framework.FieldSchema {
	fields := map[string]*framework.FieldSchema{
		"name": {
			Type:        framework.TypeString,
			Description: "Service name: " + serviceNameSyntax + ". Names are lower case; a path spelling one with an upper-case letter is refused with the lower-case path. It is the tokens' sub claim.",
		},
		"certificate": {
			Type:        framework.TypeString,
			Description: "PEM leaf client certificate of the service. A login presenting exactly this certificate passes the certificate check.",
		},
		"ca_chain": {
			Type:        framework.TypeString,
			Description: "PEM bundle of the CA certificates that issue the service's client certificates. A login presenting a certificate that chains to it passes the certificate check.",
		},
		"hostnames": {
			Type:        framework.TypeCommaStringSlice,
			Description: "DNS names that the client certificate's SANs must each cover (list or comma-separated).",
		},
		"pinned_spki": {
			Type:        framework.TypeCommaStringSlice,
			Description: "Base64 SHA-256 pins of the client certificate's SubjectPublicKeyInfo; when set, the presented certificate must match one.",
		},
		"require_mtls": {
			Type:        framework.TypeBool,
			Description: "Refuse logins without a verified client certificate. Default: true when certificate or ca_chain is set, otherwise false.",
		},
		"allowed_audiences": {
			Type:        framework.TypeCommaStringSlice,
			Description: "Audiences a login may request (list or comma-separated). Empty: only default_audience.",
		},
		"default_audience": {
			Type:        framework.TypeString,
			Description: "The aud claim when a login requests none. Default: the first of allowed_audiences; with neither, tokens carry no aud.",
		},
		"token_ttl": {
			Type:        framework.TypeDurationSecond,
			Description: "Default token lifetime for this service (duration or seconds); 0 uses the engine's default_ttl. At most the engine's max_ttl.",
		},
		"token_max_ttl": {
			Type:        framework.TypeDurationSecond,
			Description: "Ceiling on this service's token lifetime (duration or seconds); 0 uses the engine's max_ttl. At most the engine's max_ttl.",
		},
		"claims": {
			Type:        framework.TypeKVPairs,
			Description: "Extra string claims put into every token of the service. Names that are, or fold to (any case, Unicode folding), a registered claim (iss, sub, aud, exp, nbf, iat, jti, cnf, gen, meshauth_service, act, meshauth_derived_from, meshauth_derived_cnf) or a JOSE header name (alg, kid, typ, crit, ...) are refused, as are claims that could make a token exceed 16 KiB.",
		},
		"disabled": {
			Type:        framework.TypeBool,
			Description: "Refuse logins and fail verification of the service's tokens. Disabling ends every token issued so far for good: enabling the service again does not revive them. Default: false.",
		},
		"metadata": {
			Type:        framework.TypeKVPairs,
			Description: "Free-form key/value data about the service, for operators; never put into tokens.",
		},
	}
	addSPIFFEServiceFields(fields) // spiffe_ids, trust_domains, token_subject (spiffe.go)
	// claims_template, template_missing (claims_template.go)
	addClaimsTemplateFields(fields)
	addRevocationServiceFields(fields) // revocation_check and its settings (cert_revocation.go)
	addExchangeServiceFields(fields)   // exchange_audiences, max_delegation_depth (path_exchange.go)
	return fields
}

// serviceExists answers Vault's existence check, so ACL policies can tell
// create (register) from update.
func (b *backend) serviceExists(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	name, errResp := serviceName(req, d)
	if errResp != nil {
		return false, nil
	}
	entry, err := readService(ctx, req.Storage, name)
	return entry != nil, err
}

func (b *backend) pathServicesList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := req.Storage.List(ctx, storageServicePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing services: %w", err)
	}
	return logical.ListResponse(names), nil
}

func (b *backend) pathServiceRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, errResp := serviceName(req, d)
	if errResp != nil {
		return errResp, nil
	}
	entry, err := readService(ctx, req.Storage, name)
	if err != nil || entry == nil {
		return nil, err
	}
	resp := &logical.Response{Data: serviceResponse(entry, b.now())}
	// Say why logins of this service fail closed, if they do.
	svc, err := b.getService(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if svc != nil && svc.identityErr != nil {
		resp.Data["identity_error"] = svc.identityErr.Error()
		resp.AddWarning("logins of this service are refused: " + svc.identityErr.Error())
	}
	return resp, nil
}

// identityFieldsSent reports whether a service write names a field that
// decides who the service's tokens speak for (token_subject included, so a
// service stored with overlapping IDs by an older release cannot start
// minting JWT-SVIDs for them).
func identityFieldsSent(d *framework.FieldData) bool {
	for _, f := range []string{"spiffe_ids", "certificate", "ca_chain", "token_subject"} {
		if _, ok := d.Raw[f]; ok {
			return true
		}
	}
	return false
}

// serviceResponse renders a service for read: every field but the key
// hashes, and the certificate facts a person needs.
func serviceResponse(e *serviceEntry, now time.Time) map[string]any {
	keys := make([]map[string]any, 0, len(e.APIKeys))
	for _, k := range e.APIKeys {
		keys = append(keys, k.describe())
	}
	data := map[string]any{
		"name":              e.Name,
		"certificate":       e.Certificate,
		"ca_chain":          e.CAChain,
		"hostnames":         nonNil(e.Hostnames),
		"pinned_spki":       nonNil(e.PinnedSPKI),
		"require_mtls":      e.RequireMTLS,
		"allowed_audiences": nonNil(e.AllowedAudiences),
		"default_audience":  e.DefaultAudience,
		"token_ttl":         seconds(e.TokenTTL),
		"token_max_ttl":     seconds(e.TokenMaxTTL),
		"claims":            e.Claims,
		"disabled":          e.Disabled,
		"metadata":          e.Metadata,
		"api_keys":          keys,
		"created_at":        e.CreatedAt.Format(time.RFC3339),
		"updated_at":        e.UpdatedAt.Format(time.RFC3339),
	}
	addSPIFFEServiceResponse(data, e)
	addClaimsTemplateResponse(data, e)
	addRevocationServiceResponse(data, e)
	addExchangeServiceResponse(data, e)
	if e.RevokedBefore > 0 {
		data["tokens_revoked_before"] = time.Unix(e.RevokedBefore, 0).UTC().Format(time.RFC3339)
	}
	if e.Certificate != "" {
		if facts, err := certificateFacts(e.Certificate, now); err == nil {
			data["certificate_info"] = facts
		}
	}
	return data
}

// nonNil renders an absent list as [] rather than null.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func (b *backend) pathServiceWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, errResp := serviceName(req, d)
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

	lock := b.serviceLock(name)
	lock.Lock()
	defer lock.Unlock()

	// Re-read under the lock: the existence check ran before it.
	old, err := readService(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if old == nil {
		// One creation at a time, from the count to the write: the feed's
		// size bound counts on MaxServiceNames, and per-name locks alone let
		// concurrent creations of different names all pass the count.
		b.createLock.Lock()
		defer b.createLock.Unlock()
		if msg, err := serviceRoom(ctx, req.Storage); err != nil || msg != "" {
			if err != nil {
				return nil, err
			}
			return logical.ErrorResponse(msg), nil
		}
	}
	now := b.now().UTC()
	entry := &serviceEntry{Name: name, CreatedAt: now, Registration: newRegistration()}
	if old != nil {
		copied := *old
		entry = &copied
	}
	if msg := applyServiceFields(entry, d, old == nil); msg != "" {
		return logical.ErrorResponse(msg), nil
	}
	warning := mtlsOnUpdate(old, entry, d)
	if msg := validateService(entry, cfg, now); msg != "" {
		return logical.ErrorResponse(msg), nil
	}
	// Who may assert the service's SPIFFE IDs: their trust domains are
	// registered and no other service holds them, checked and stored under
	// identityLock (spiffe_registrants.go). A write that leaves the
	// identity fields alone is not checked again, so a team can still
	// disable or retune a service whose trust domain an operator removed.
	if len(entry.SPIFFEIDs) > 0 && (old == nil || identityFieldsSent(d)) {
		b.identityLock.Lock()
		defer b.identityLock.Unlock()
		msg, err := b.checkRegistrant(ctx, req.Storage, entry)
		if err != nil {
			return nil, err
		}
		if msg != "" {
			return logical.ErrorResponse(msg), nil
		}
	}
	var warnings []string
	if warning != "" {
		warnings = append(warnings, warning)
	}
	if old != nil {
		if change := identityChange(old, entry); change != "" {
			entry.advanceEpoch()
			warnings = append(warnings, "the service's identity changed ("+change+"): every token issued to it so far is revoked, online and through the revocation feed")
		}
		if len(old.TrustDomains) > 0 {
			// Withdrawn field stored by an older release: it granted
			// nothing since the upgrade, and the write drops it.
			entry.TrustDomains = nil
			warnings = append(warnings, "the withdrawn trust_domains field ("+strings.Join(old.TrustDomains, ", ")+") was dropped; trust domains are registered at trust_domains/<name>")
		}
	}
	// A JWT-SVID service is checked against signing_algorithm once more,
	// serialised with config writes until it is stored (spiffe.go).
	unlock, msg, err := b.lockForJWTSVID(ctx, req.Storage, entry)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if msg != "" {
		return logical.ErrorResponse(msg), nil
	}

	var created *newAPIKey
	if old == nil {
		if created, err = generateAPIKey(now); err != nil {
			return nil, err
		}
		entry.APIKeys = []apiKeyEntry{created.entry}
	}
	entry.UpdatedAt = now
	if err := b.putService(ctx, req.Storage, entry); err != nil {
		return nil, err
	}
	if created == nil {
		if len(warnings) == 0 {
			return nil, nil
		}
		resp := &logical.Response{}
		for _, w := range warnings {
			resp.AddWarning(w)
		}
		return resp, nil
	}
	b.Logger().Info("service registered", "service", name, "api_key_id", created.entry.ID)
	return wrapAPIKeyAnswer(&logical.Response{Data: map[string]any{
		"name":       name,
		"api_key":    created.secret,
		"api_key_id": created.entry.ID,
	}}, cfg), nil
}

// applyServiceFields copies the fields the request names into entry. On
// create, require_mtls defaults to true when trust material is given.
func applyServiceFields(e *serviceEntry, d *framework.FieldData, creating bool) string {
	if v, ok := d.GetOk("certificate"); ok {
		e.Certificate = v.(string)
	}
	if v, ok := d.GetOk("ca_chain"); ok {
		e.CAChain = v.(string)
	}
	lists := []struct {
		field string
		dst   *[]string
	}{
		{"hostnames", &e.Hostnames},
		{"pinned_spki", &e.PinnedSPKI},
		{"allowed_audiences", &e.AllowedAudiences},
	}
	for _, l := range lists {
		if v, ok := d.GetOk(l.field); ok {
			cleaned, msg := cleanList(l.field, v.([]string))
			if msg != "" {
				return msg
			}
			*l.dst = cleaned
		}
	}
	if v, ok := d.GetOk("default_audience"); ok {
		e.DefaultAudience = v.(string)
	}
	for field, dst := range map[string]*time.Duration{"token_ttl": &e.TokenTTL, "token_max_ttl": &e.TokenMaxTTL} {
		if v, ok := d.GetOk(field); ok {
			if v.(int) < 0 {
				return field + " must not be negative"
			}
			*dst = time.Duration(v.(int)) * time.Second
		}
	}
	for field, dst := range map[string]*map[string]string{"claims": &e.Claims, "metadata": &e.Metadata} {
		if v, ok := d.GetOk(field); ok {
			cleaned, msg := cleanMap(field, v.(map[string]string))
			if msg != "" {
				return msg
			}
			*dst = cleaned
		}
	}
	if msg := applyClaimsTemplateFields(e, d); msg != "" {
		return msg
	}
	if v, ok := d.GetOk("disabled"); ok {
		if v.(bool) && !e.Disabled && !creating {
			// Disabling ends the tokens issued so far for good: enabling
			// the service again must not revive them.
			e.advanceEpoch()
		}
		e.Disabled = v.(bool)
	}
	if v, ok := d.GetOk("require_mtls"); ok {
		e.RequireMTLS = v.(bool)
	} else if creating {
		_, spiffeIDs := d.GetOk("spiffe_ids")
		e.RequireMTLS = e.Certificate != "" || e.CAChain != "" || spiffeIDs
	}
	if msg := applyRevocationFields(e, d); msg != "" {
		return msg
	}
	if msg := applyExchangeFields(e, d); msg != "" {
		return msg
	}
	return applySPIFFEFields(e, d)
}

// mtlsOnUpdate applies creation's require_mtls default to an update that
// gives a service its first certificate or ca_chain without naming
// require_mtls, and returns a warning saying what happened: registering
// trust material that logins then ignore would be a silent downgrade. When
// the service keeps require_mtls=false beside trust material, it says so.
func mtlsOnUpdate(old, e *serviceEntry, d *framework.FieldData) string {
	if old == nil {
		return ""
	}
	_, named := d.GetOk("require_mtls")
	_, certGiven := d.GetOk("certificate")
	_, caGiven := d.GetOk("ca_chain")
	hadTrust := old.Certificate != "" || old.CAChain != ""
	hasTrust := e.Certificate != "" || e.CAChain != ""
	switch {
	case named || (!certGiven && !caGiven) || !hasTrust:
		return ""
	case !hadTrust:
		e.RequireMTLS = true
		return "require_mtls is now true: this update gave the service its first certificate or ca_chain, and logins must now present a matching client certificate (as when a service is created with them); write require_mtls=false to allow logins without one"
	case !e.RequireMTLS:
		return "require_mtls stays false: logins without a client certificate still succeed; write require_mtls=true to require the certificate"
	}
	return ""
}

// validateService checks a service as it would be stored, and returns a
// message naming the first check that failed, or "".
func validateService(e *serviceEntry, cfg *configEntry, now time.Time) string {
	switch {
	case e.TokenTTL > cfg.MaxTTL:
		return fmt.Sprintf("token_ttl (%s) exceeds the engine's max_ttl (%s)", e.TokenTTL, cfg.MaxTTL)
	case e.TokenMaxTTL > cfg.MaxTTL:
		return fmt.Sprintf("token_max_ttl (%s) exceeds the engine's max_ttl (%s)", e.TokenMaxTTL, cfg.MaxTTL)
	case e.TokenMaxTTL > 0 && e.TokenTTL > e.TokenMaxTTL:
		return fmt.Sprintf("token_ttl (%s) exceeds token_max_ttl (%s)", e.TokenTTL, e.TokenMaxTTL)
	case len(e.DefaultAudience) > maxAudienceLen:
		return fmt.Sprintf("default_audience is longer than %d characters", maxAudienceLen)
	case e.DefaultAudience != "" && len(e.AllowedAudiences) > 0 && !slices.Contains(e.AllowedAudiences, e.DefaultAudience):
		return fmt.Sprintf("default_audience %q is not in allowed_audiences", e.DefaultAudience)
	case e.RequireMTLS && e.Certificate == "" && e.CAChain == "" && len(e.SPIFFEIDs) == 0:
		return "require_mtls is true but neither certificate, ca_chain nor spiffe_ids is set; give one, or set require_mtls=false"
	}
	if msg := checkClaimNames(e.Claims); msg != "" {
		return msg
	}
	if msg := validateClaimsTemplate(e); msg != "" {
		return msg
	}
	if msg := checkTokenSize(e); msg != "" {
		return msg
	}
	if msg := validateServiceSPIFFE(e, cfg); msg != "" {
		return msg
	}
	if msg := validateServiceRevocation(e); msg != "" {
		return msg
	}
	return validateServiceTLS(e, now)
}

func (b *backend) pathServiceDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, errResp := serviceName(req, d)
	if errResp != nil {
		return errResp, nil
	}
	lock := b.serviceLock(name)
	lock.Lock()
	defer lock.Unlock()
	old, err := readService(ctx, req.Storage, name)
	if err != nil || old == nil {
		return nil, err
	}
	// The tombstone is written first: a crash before the delete leaves a
	// tombstone beside a live entry, which the feed reads as the live
	// registration (harmless); the other order could lose the record that
	// the deleted registration's tokens must be refused offline.
	tomb := &deletedService{Version: deletedVersion, Name: name, Registration: old.Registration, DeletedAt: b.now().UTC()}
	if err := writeEntry(ctx, req.Storage, storageDeletedPrefix+name, fmt.Sprintf("tombstone of service %q", name), tomb, false); err != nil {
		return nil, err
	}
	b.feed.drop()
	if err := req.Storage.Delete(ctx, storageServicePrefix+name); err != nil {
		return nil, fmt.Errorf("deleting service %q: %w", name, err)
	}
	b.dropService(name)
	b.Logger().Info("service deleted", "service", name)
	return nil, nil
}

const serviceHelp = `
A service is a workload of the mesh that logs in at login/<name>.

Creating a service answers its API key once (api_key, with api_key_id); it is
stored only as a SHA-256 hash and no read ever shows it again. Rotate it with
services/<name>/rotate-key.

Give the service's mTLS identity with certificate (its leaf client
certificate) and/or ca_chain (the CAs that issue it), optionally hostnames
(each covered by the certificate's DNS SANs) and pinned_spki. With either set,
require_mtls defaults to true and login needs the client certificate on the
TLS connection to Vault. Registration validates all of it before storing
anything and names the check that failed.

A mesh workload can be registered by SPIFFE ID instead of hostnames:
spiffe_ids (exact IDs, or prefixes ending in /*) are matched against the
single URI SAN of the presented X.509-SVID. Each ID's trust domain must be
registered by an operator at trust_domains/<name>; the SVID must chain to
that bundle, and to certificate or ca_chain too when they are set. An ID
has one registrant: a write that overlaps another service's spiffe_ids is
refused and names that service. token_subject=spiffe_id makes the tokens
JWT-SVIDs whose sub is that verified ID, for IDs in config trust_domain
only. Removing an ID or changing the trust material revokes the tokens
issued so far. The field trust_domains is withdrawn. A read shows
identity_error when the service's logins are refused because of its stored
identity (such as a trust domain without an entry).

An update changes only the fields it names.
`
