package meshauth

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/vault/sdk/logical"
)

// One registrant per SPIFFE ID. A JWT-SVID's sub is a SPIFFE ID, and a
// verifier that reads sub (Istio, Envoy jwt_authn, go-spiffe) cannot tell
// two services that both list it apart: so an exact ID belongs to one
// service, and a /* entry may not cover another service's ID or entry.
//
// How it holds without transactions. Plugin storage has Get/Put/List/Delete
// only. The service entries themselves are the index: a write that sets
// spiffe_ids takes identityLock, lists every service, reads each, refuses an
// overlap naming its holder, and stores its own entry, all before releasing
// the lock. There is no second record to keep in step, so a crash between
// two writes cannot leave a stale or missing claim. Every write reaches the
// plugin on the active node (standbys and performance standbys forward
// writes), so one in-process lock orders the writers of a whole cluster;
// after a failover the new active node starts with an unheld lock and reads
// what storage holds. The cost is one List and one Get per service for each
// write that changes an identity, which operators and teams do rarely.

// overlaps reports whether some SPIFFE ID matches both entries.
func (p spiffePattern) overlaps(q spiffePattern) bool {
	if p.id.trustDomain != q.id.trustDomain {
		return false
	}
	switch {
	case !p.prefix && !q.prefix:
		return p.id.path == q.id.path
	case p.prefix && !q.prefix:
		return p.matches(q.id)
	case !p.prefix && q.prefix:
		return q.matches(p.id)
	}
	// Two subtrees overlap when one's base is the other's or under it.
	return strings.HasPrefix(p.id.path+"/", q.id.path+"/") || strings.HasPrefix(q.id.path+"/", p.id.path+"/")
}

// checkRegistrant checks a service's spiffe_ids against what only storage
// knows, with identityLock held until the entry is stored: every ID's trust
// domain is registered at trust_domains/, a registered certificate chains
// to that bundle, and no other service holds an overlapping ID. It returns
// a message for the caller, or "".
func (b *backend) checkRegistrant(ctx context.Context, s logical.Storage, e *serviceEntry) (string, error) {
	patterns, err := parseSPIFFEPatterns(e.SPIFFEIDs)
	if err != nil || len(patterns) == 0 {
		return "", nil // validateService already refused a bad entry
	}
	trust := &serviceTrust{spiffe: patterns}
	if err := loadDomainTrust(ctx, s, trust); err != nil {
		return "", err
	}
	for i, p := range patterns {
		if trust.domains[p.id.trustDomain] == nil {
			return fmt.Sprintf("spiffe_ids entry %q is in trust domain %q, which is not registered: an operator registers it with its CA bundle at trust_domains/%s",
				e.SPIFFEIDs[i], p.id.trustDomain, p.id.trustDomain), nil
		}
	}
	if msg := certificateInDomain(e, trust); msg != "" {
		return msg, nil
	}
	names, err := s.List(ctx, storageServicePrefix)
	if err != nil {
		return "", fmt.Errorf("listing services: %w", err)
	}
	for _, name := range names {
		if name == e.Name {
			continue
		}
		other, err := readService(ctx, s, name)
		if err != nil {
			return "", err
		}
		if other == nil {
			continue
		}
		for _, held := range other.SPIFFEIDs {
			q, err := parseSPIFFEPattern(held)
			if err != nil {
				continue
			}
			for i, p := range patterns {
				if p.overlaps(q) {
					return fmt.Sprintf("spiffe_ids entry %q overlaps %q, which service %q holds: a SPIFFE ID has one registrant, and a /* entry may not cover another service's IDs", e.SPIFFEIDs[i], held, name), nil
				}
			}
		}
	}
	return "", nil
}

// certificateInDomain checks that a registered certificate chains to the
// bundle of its SPIFFE ID's trust domain, so a self-signed or foreign
// certificate is refused when written rather than at every login.
func certificateInDomain(e *serviceEntry, trust *serviceTrust) string {
	if e.Certificate == "" {
		return ""
	}
	certs, err := parseCertificates("certificate", e.Certificate, 1)
	if err != nil {
		return err.Error()
	}
	id, err := leafSPIFFEID(certs[0])
	if err != nil {
		return err.Error()
	}
	intermediates := x509.NewCertPool()
	if e.CAChain != "" {
		cas, _ := parseCertificates("ca_chain", e.CAChain, maxCACertificates)
		for _, ca := range cas {
			intermediates.AddCert(ca)
		}
	}
	opts := x509.VerifyOptions{Roots: trust.domains[id.trustDomain], Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if opts.Roots == nil {
		return fmt.Sprintf("certificate's SPIFFE ID %s is in trust domain %q, which is not registered at trust_domains/%s", id, id.trustDomain, id.trustDomain)
	}
	if _, err := certs[0].Verify(opts); err != nil {
		return fmt.Sprintf("certificate does not chain to the bundle of trust domain %q (trust_domains/%s): %v", id.trustDomain, id.trustDomain, err)
	}
	return ""
}

// identityChange names what a write changed about who the service's tokens
// speak for, or returns "": an spiffe_ids entry removed or narrowed, or
// trust material (certificate, ca_chain, pinned_spki) replaced or removed. Tokens
// minted under the old identity must then stop verifying offline too, so
// the write advances the service's epoch and the revocation feed carries
// the new generation.
func identityChange(old, e *serviceEntry) string {
	for _, id := range old.SPIFFEIDs {
		if !slices.Contains(e.SPIFFEIDs, id) {
			return fmt.Sprintf("spiffe_ids entry %q was removed or narrowed", id)
		}
	}
	if old.TokenSubject == tokenSubjectSPIFFEID && e.TokenSubject != tokenSubjectSPIFFEID {
		return "token_subject no longer spiffe_id: the JWT-SVIDs issued so far end"
	}
	// Trust material given for the first time only narrows who may log in
	// from now on; replacing or removing it changes who the tokens were for.
	switch {
	case old.Certificate != "" && old.Certificate != e.Certificate:
		return "certificate replaced or removed"
	case old.CAChain != "" && old.CAChain != e.CAChain:
		return "ca_chain replaced or removed"
	case len(old.PinnedSPKI) > 0 && !slices.Equal(old.PinnedSPKI, e.PinnedSPKI):
		return "pinned_spki changed"
	}
	return ""
}
