package meshauth

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// The service aggregate: how a service is stored, named, loaded, cached,
// locked and written. Its paths are in path_services.go and
// path_service_actions.go; its certificate checks in tls.go.

// deletedVersion is the current layout of deletedService.
const deletedVersion = 1

// deletedService records a deleted service until every token of its last
// registration has expired, stored at storageDeletedPrefix+name: online
// verify already refuses those tokens (the name is unknown, or registered
// anew with another registration id), and the revocation feed lists them
// so offline verifiers refuse them too.
type deletedService struct {
	// Version is the layout version of this entry.
	Version int `json:"version"`
	// Name is the deleted service's name.
	Name string `json:"name"`
	// Registration is the deleted registration's id; "" for entries stored
	// before registrations existed.
	Registration string `json:"registration,omitempty"`
	// DeletedAt is when the service was deleted.
	DeletedAt time.Time `json:"deleted_at"`
}

// serviceVersion is the current layout of serviceEntry.
const serviceVersion = 1

// serviceEntry is one registered service, stored at storageServicePrefix+name.
// Everything about a service, its API keys included, is this one entry, so
// every write of a service is atomic.
type serviceEntry struct {
	// Version is the layout version of this entry.
	Version int `json:"version"`
	// Name is the service name (lower case, its one spelling), the tokens'
	// sub claim unless the service issues JWT-SVIDs.
	Name string `json:"name"`
	// Certificate is the PEM leaf client certificate pinned for the service.
	Certificate string `json:"certificate,omitempty"`
	// CAChain is the PEM bundle that issues the service's client certificates.
	CAChain string `json:"ca_chain,omitempty"`
	// Hostnames must each be covered by the client certificate's DNS SANs.
	Hostnames []string `json:"hostnames,omitempty"`
	// PinnedSPKI lists base64 SHA-256 SPKI pins the client certificate must match.
	PinnedSPKI []string `json:"pinned_spki,omitempty"`
	// RequireMTLS makes login fail without a verified client certificate.
	RequireMTLS bool `json:"require_mtls"`
	// AllowedAudiences bounds the aud a login may ask for.
	AllowedAudiences []string `json:"allowed_audiences,omitempty"`
	// DefaultAudience is the aud when a login names none.
	DefaultAudience string `json:"default_audience,omitempty"`
	// TokenTTL is the service's default token lifetime; 0 uses the engine's.
	TokenTTL time.Duration `json:"token_ttl"`
	// TokenMaxTTL is the service's ceiling on token lifetime; 0 uses the engine's.
	TokenMaxTTL time.Duration `json:"token_max_ttl"`
	// Claims are extra string claims put into every token.
	Claims map[string]string `json:"claims,omitempty"`
	// ClaimsTemplate is a JSON object of claims rendered at each login
	// over the caller's Vault entity and certificate (claims_template.go).
	ClaimsTemplate string `json:"claims_template,omitempty"`
	// TemplateMissing is what a login does when a directive has no value:
	// "fail" ("" in entries that never set it) or "omit".
	TemplateMissing string `json:"template_missing,omitempty"`
	// Disabled refuses logins and makes the service's tokens fail verify.
	Disabled bool `json:"disabled"`
	// Metadata is free-form operator data, never put into tokens.
	Metadata map[string]string `json:"metadata,omitempty"`
	// APIKeys are the service's live API keys, newest last, as hashes only.
	APIKeys []apiKeyEntry `json:"api_keys"`
	// SPIFFEIDs are the SPIFFE IDs (exact, or prefixes ending in /*) the
	// client certificate's single URI SAN must match; set instead of Hostnames.
	SPIFFEIDs []string `json:"spiffe_ids,omitempty"`
	// TrustDomains is withdrawn: entries written by an older release may
	// carry it (trust domains besides config trust_domain that SPIFFEIDs
	// could belong to). It grants nothing now; the next write drops it.
	TrustDomains []string `json:"trust_domains,omitempty"`
	// TokenSubject is what sub is: "name" ("" in older entries) or
	// "spiffe_id" (a JWT-SVID).
	TokenSubject string `json:"token_subject,omitempty"`
	// Registration identifies this registration of the name: random, made
	// when the service is created (or, for an entry stored before it
	// existed, at its first revoke or disable), never reused. Tokens carry it in their gen claim,
	// so deleting and re-registering a name never revives its old tokens.
	Registration string `json:"registration,omitempty"`
	// RevocationEpoch counts services/:name/revoke calls on this
	// registration. Tokens carry the epoch they were minted in; a revoke
	// advances it, so every token issued before the revoke stops verifying
	// while tokens minted after it carry their real iat.
	RevocationEpoch int `json:"revocation_epoch,omitempty"`
	// RevokedBefore is the Unix time in seconds of the last revoke, for
	// operators; entries written before Registration existed also refuse
	// tokens without gen whose iat is not after it.
	RevokedBefore int64 `json:"revoked_before,omitempty"`
	// RevocationCheck is "" (none), crl, ocsp or crl,ocsp; with CRLURLs,
	// OCSPServers, RevocationFailOpen and RevocationMaxAge it is the
	// service's client-certificate revocation checking (cert_revocation.go).
	RevocationCheck    string        `json:"revocation_check,omitempty"`
	CRLURLs            []string      `json:"crl_urls,omitempty"`
	OCSPServers        []string      `json:"ocsp_servers,omitempty"`
	RevocationFailOpen bool          `json:"revocation_fail_open,omitempty"`
	RevocationMaxAge   time.Duration `json:"revocation_max_age,omitempty"`
	// ExchangeAudiences and MaxDelegationDepth are the service's token
	// exchange policy as an acting service (path_exchange.go).
	ExchangeAudiences  []string `json:"exchange_audiences,omitempty"`
	MaxDelegationDepth int      `json:"max_delegation_depth,omitempty"`
	// CreatedAt is when the service was registered.
	CreatedAt time.Time `json:"created_at"`
	// UpdatedAt is the last write.
	UpdatedAt time.Time `json:"updated_at"`
}

// generation is what a token's gen claim must equal for the token to verify:
// this registration of the name and its revocation epoch. Entries stored
// before registrations existed have none until their first revoke.
func (e *serviceEntry) generation() string {
	if e.Registration == "" {
		return ""
	}
	return e.Registration + "." + strconv.Itoa(e.RevocationEpoch)
}

// advanceEpoch ends every token minted so far for this registration.
// Entries stored before registrations existed get one now, which also ends
// their tokens that carry no gen.
func (e *serviceEntry) advanceEpoch() {
	if e.Registration == "" {
		e.Registration = newRegistration()
	}
	e.RevocationEpoch++
}

// newRegistration returns a fresh registration id (128 random bits).
func newRegistration() string {
	return rand.Text()
}

// serviceNameSyntax is the contract's service-name syntax, the one
// spelling that the path pattern, the check, its refusal and the help
// derive from. Its length is meshtoken.MaxServiceNameLength, which the
// revocation feed's size bound counts on.
var serviceNameSyntax = `[a-z0-9][a-z0-9._-]{0,` + strconv.Itoa(meshtoken.MaxServiceNameLength-1) + `}`

// serviceNamePattern matches any one path segment where a service name
// goes. Vault matches a path against the patterns before any handler runs,
// and a path no pattern matches answers "404 unsupported path", which tells
// the caller nothing; so the pattern takes every segment, and serviceName
// refuses a bad one with a 400 that states the name rule.
const serviceNamePattern = `(?P<name>[^/]+)`

// serviceNameRule is the name rule, as the refusal of a bad name states it.
var serviceNameRule = "a service name is 1 to " + strconv.Itoa(meshtoken.MaxServiceNameLength) +
	" characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit (" + serviceNameSyntax + ")"

// serviceNameAnyCase is the syntax with upper-case letters admitted:
// serviceName refuses the upper-case letters with the lower-case path, so a
// caller learns the spelling instead of a bare refusal.
var serviceNameAnyCase = strings.ReplaceAll(serviceNameSyntax, "a-z", "A-Za-z")

// serviceNameRe checks a whole name against serviceNameAnyCase.
var serviceNameRe = regexp.MustCompile(`^` + serviceNameAnyCase + `$`)

// serviceName reads and checks the name path parameter. Names are lower
// case and have exactly one spelling: Vault checks ACL policies on the path
// as written, so if "login/PAYMENTS" reached the service "payments", a glob
// grant could walk around a deny written for "login/payments". A name with
// an upper-case letter is refused on every path, with the one path that
// reaches the service, and is never served.
func serviceName(req *logical.Request, d *framework.FieldData) (string, *logical.Response) {
	name := d.Get("name").(string)
	if !serviceNameRe.MatchString(name) {
		return "", logical.ErrorResponse("invalid service name: " + serviceNameRule)
	}
	if lower := strings.ToLower(name); lower != name {
		return "", logical.ErrorResponse(fmt.Sprintf("service names are lower case and have one spelling; use %s", canonicalPath(req, name, lower)))
	}
	return name, nil
}

// canonicalPath is the request's path with the service name in its one
// spelling, mount included, for error messages.
func canonicalPath(req *logical.Request, name, lower string) string {
	path := req.Path
	if i := strings.Index(path, name); i >= 0 {
		path = path[:i] + lower + path[i+len(name):]
	}
	return req.MountPoint + path
}

// checkClaimNames refuses extra claims whose name is, or folds to, a
// registered claim or a JOSE header name in any spelling: Go's encoding/json
// reads "SUB", "Sub" and "ſub" (U+017F) as sub. Registration and the cache
// (for entries stored by older releases) both use it.
func checkClaimNames(claims map[string]string) string {
	names := make([]string, 0, len(claims))
	for k := range claims {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		if r := meshtoken.IsReservedName(k); r != "" {
			if r == k {
				return fmt.Sprintf("claims may not set the registered claim %q", k)
			}
			return fmt.Sprintf("claims may not set %q: JSON readers such as Go's match it to the registered name %q", k, r)
		}
	}
	return ""
}

// readService reads one service from storage, or (nil, nil) when absent.
func readService(ctx context.Context, s logical.Storage, name string) (*serviceEntry, error) {
	return readEntry[serviceEntry](ctx, s, storageServicePrefix+name, fmt.Sprintf("service %q", name))
}

// putService writes one service and drops every cache built from it.
func (b *backend) putService(ctx context.Context, s logical.Storage, entry *serviceEntry) error {
	entry.Version = serviceVersion
	if err := writeEntry(ctx, s, storageServicePrefix+entry.Name, fmt.Sprintf("service %q", entry.Name), entry, false); err != nil {
		return err
	}
	b.dropService(entry.Name)
	return nil
}

// dropService forgets one service's cached entry, trust material, the
// verified-chain results that depended on it, and the revocation feed (which
// lists revoked and disabled services).
func (b *backend) dropService(name string) {
	b.services.drop(name)
	b.verifiedChains.dropService(name)
	b.claimsRendered.dropService(name)
	b.feed.drop()
}

// serviceLock returns the lock that serialises writes to one service.
func (b *backend) serviceLock(name string) *locksutil.LockEntry {
	return locksutil.LockForKey(b.serviceLocks, name)
}

// errServiceNotFound answers an action on a service that is not registered.
func errServiceNotFound(name string) error {
	return logical.CodedError(http.StatusNotFound, fmt.Sprintf("service %q is not registered; list services/ to see those that are", name))
}

// mutateService runs one action on a registered service: it reads the entry
// under the service's lock, lets mutate change it, and stores it before the
// action's answer is returned, so a failed write never hands out a key that
// was not stored. An error response from mutate stores nothing.
func (b *backend) mutateService(ctx context.Context, req *logical.Request, d *framework.FieldData, mutate func(e *serviceEntry, now time.Time) (*logical.Response, error)) (*logical.Response, error) {
	name, errResp := serviceName(req, d)
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
	resp, err := mutate(entry, now)
	if err != nil || resp.IsError() {
		return resp, err
	}
	entry.UpdatedAt = now
	if err := b.putService(ctx, req.Storage, entry); err != nil {
		return nil, err
	}
	return resp, nil
}

// cachedService is a service entry with its trust material parsed, as the
// login and verify paths use it.
type cachedService struct {
	// entry is the stored service; never modified once cached.
	entry *serviceEntry
	// trust is the parsed certificate material; nil when trustErr is set.
	trust *serviceTrust
	// trustErr records stored trust material that does not parse; mTLS then
	// fails closed.
	trustErr error
	// claimsErr records stored extra claims that registration would refuse
	// today (an entry written by an older release); logins then fail closed
	// rather than mint a token that verifiers could read as another service.
	claimsErr error
	// identityErr records a stored SPIFFE identity that no longer stands:
	// an ID whose trust domain has no entry at trust_domains/ (an entry
	// written before trust domains were the operator's, or a trust domain
	// an operator deleted). Logins then fail closed, not counted toward
	// lockout, and services/:name read shows it.
	identityErr error
	// trustGen is backend.trustGen when the load began: the bundles read
	// for it are current while the backend's count is the same.
	trustGen uint64
	// claimsOnce guards claimsJSON, the service's extra claims encoded once.
	claimsOnce sync.Once
	claimsJSON []byte
	// tmpl is the compiled claims_template, nil without one; tmplErr
	// records a stored template that registration would refuse today, and
	// logins then fail closed (claims_template.go).
	tmpl    *claimsTemplate
	tmplErr error
	// mint holds what every token of this service repeats, encoded once
	// (token.go). It lives and dies with this cachedService, which every
	// write of the service replaces, so gen and claims are never stale.
	mint atomic.Pointer[mintTemplate]
}

// getService returns the cached service, loading it from storage on a miss,
// or nil when it is not registered. Absent names are not cached, so a caller
// trying random names cannot grow the cache.
func (b *backend) getService(ctx context.Context, s logical.Storage, name string) (*cachedService, error) {
	cs, epoch, ok := b.services.get(name)
	if ok {
		return cs, nil
	}
	// Read before anything is loaded: a trust domain write after this
	// point makes the login start over (serviceIsCurrent).
	trustGen := b.trustGen.Load()
	entry, err := readService(ctx, s, name)
	if err != nil || entry == nil {
		return nil, err
	}
	cs = &cachedService{entry: entry, trustGen: trustGen}
	cs.trust, cs.trustErr = buildTrust(entry)
	if cs.trustErr != nil {
		b.Logger().Error("stored trust material of service does not parse; its mTLS logins will fail", "service", name, "error", cs.trustErr)
	} else {
		// The bundles of the IDs' trust domains (path_trust_domains.go).
		if err := loadDomainTrust(ctx, s, cs.trust); err != nil {
			return nil, err
		}
		if missing := cs.trust.missingTrustDomains(); len(missing) > 0 {
			cs.identityErr = fmt.Errorf("its spiffe_ids lie in trust domain(s) %s, which have no entry at trust_domains/; an operator registers each with its CA bundle (vault write <mount>/trust_domains/%s bundle=@bundle.pem)",
				strings.Join(missing, ", "), missing[0])
			b.Logger().Error("service's SPIFFE IDs lie in unregistered trust domains; its logins fail until an operator registers them", "service", name, "trust_domains", strings.Join(missing, ","))
		}
	}
	if msg := checkClaimNames(entry.Claims); msg != "" {
		cs.claimsErr = errors.New(msg)
		b.Logger().Error("stored claims of service shadow a registered claim; its logins will fail until the claims are rewritten", "service", name, "error", msg)
	}
	if cs.compileForCache(); cs.tmplErr != nil {
		b.Logger().Error("stored claims_template of service does not pass registration's checks; its logins will fail until it is rewritten", "service", name, "error", cs.tmplErr)
	}
	// Concurrent misses share the first load (cache.go fillFirst).
	return b.services.fillFirst(name, cs, epoch), nil
}

// serviceIsCurrent reports whether svc is still what storage holds for name:
// the cache still holds it, or the stored entry is the same write. Only a
// login that raced a write of its service reads storage here.
func (b *backend) serviceIsCurrent(ctx context.Context, s logical.Storage, name string, svc *cachedService) (bool, error) {
	if b.trustGen.Load() != svc.trustGen {
		// A trust domain was written since svc was loaded: its bundles
		// may be gone.
		return false, nil
	}
	if cached, _, ok := b.services.get(name); ok {
		return cached == svc, nil
	}
	stored, err := readService(ctx, s, name)
	if err != nil || stored == nil {
		return false, err
	}
	return stored.UpdatedAt.Equal(svc.entry.UpdatedAt) && stored.Registration == svc.entry.Registration, nil
}
