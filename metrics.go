package meshauth

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// unknownServiceLabel counts logins for names that are not registered, so a
// caller trying random names cannot grow the metrics without bound.
const unknownServiceLabel = "_unknown"

// metrics are this node's counters since the plugin started. Counters are
// atomics behind a read lock, so the login path never waits on a writer.
type metrics struct {
	mu            sync.RWMutex
	services      map[string]*serviceCounters
	verifications map[string]*atomic.Uint64
	keyRotations  atomic.Uint64
	// loginStorageOps counts storage calls made by logins: 0 in steady state.
	loginStorageOps atomic.Uint64
	// certRevocation counts revocation checks by result (cert_revocation.go).
	certRevocation *labelCounters
}

// serviceCounters are one service's counters.
type serviceCounters struct {
	loginsOK       atomic.Uint64
	loginsFailed   atomic.Uint64
	lockouts       atomic.Uint64
	lockedRefusals atomic.Uint64
	tokensIssued   atomic.Uint64
	// refusedIdentity counts logins refused because the service's stored
	// SPIFFE identity no longer stands (a trust domain without an entry).
	refusedIdentity atomic.Uint64
}

// newMetrics returns zeroed counters.
func newMetrics() *metrics {
	return &metrics{services: map[string]*serviceCounters{}, verifications: map[string]*atomic.Uint64{}, certRevocation: newLabelCounters()}
}

// metricsName labels a login by its service when it is registered.
func metricsName(svc *cachedService) string {
	if svc == nil {
		return unknownServiceLabel
	}
	return svc.entry.Name
}

// service returns the counters of one service, creating them once.
func (m *metrics) service(name string) *serviceCounters {
	m.mu.RLock()
	c := m.services[name]
	m.mu.RUnlock()
	if c != nil {
		return c
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c = m.services[name]; c == nil {
		c = &serviceCounters{}
		m.services[name] = c
	}
	return c
}

func (m *metrics) loginSucceeded(name string) {
	c := m.service(name)
	c.loginsOK.Add(1)
	c.tokensIssued.Add(1)
}

func (m *metrics) loginFailed(name string)          { m.service(name).loginsFailed.Add(1) }
func (m *metrics) loginRefusedIdentity(name string) { m.service(name).refusedIdentity.Add(1) }
func (m *metrics) loginLockedOut(name string)       { m.service(name).lockouts.Add(1) }
func (m *metrics) loginLocked(name string)          { m.service(name).lockedRefusals.Add(1) }
func (m *metrics) keyRotated()                      { m.keyRotations.Add(1) }

// verified counts one verification by its result: "valid" or the reason.
func (m *metrics) verified(result string) {
	m.mu.RLock()
	c := m.verifications[result]
	m.mu.RUnlock()
	if c == nil {
		m.mu.Lock()
		if c = m.verifications[result]; c == nil {
			c = &atomic.Uint64{}
			m.verifications[result] = c
		}
		m.mu.Unlock()
	}
	c.Add(1)
}

// snapshot renders the counters for a JSON read.
func (m *metrics) snapshot(lockedCallers int) map[string]any {
	m.mu.RLock()
	defer m.mu.RUnlock()
	services := map[string]any{}
	for name, c := range m.services {
		services[name] = map[string]uint64{
			"logins_succeeded":  c.loginsOK.Load(),
			"logins_failed":     c.loginsFailed.Load(),
			"lockouts":          c.lockouts.Load(),
			"refused_as_locked": c.lockedRefusals.Load(),
			"tokens_issued":     c.tokensIssued.Load(),
			// A subset of logins_failed: refused because the stored SPIFFE
			// identity lies in a trust domain without an entry.
			"refused_trust_domain_missing": c.refusedIdentity.Load(),
		}
	}
	verifications := map[string]uint64{}
	for result, c := range m.verifications {
		verifications[result] = c.Load()
	}
	return map[string]any{
		"services":                 services,
		"verifications":            verifications,
		"key_rotations":            m.keyRotations.Load(),
		"login_storage_operations": m.loginStorageOps.Load(),
		"locked_callers":           lockedCallers,
		"certificate_revocation":   m.certRevocation.snapshot(),
	}
}

// prometheus renders the counters in the Prometheus text exposition format.
func (m *metrics) prometheus(lockedCallers int) string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var sb strings.Builder
	names := make([]string, 0, len(m.services))
	for name := range m.services {
		names = append(names, name)
	}
	slices.Sort(names)
	family := func(name, help, kind string) {
		fmt.Fprintf(&sb, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
	}
	family("meshauth_logins_total", "Logins by service and result.", "counter")
	for _, n := range names {
		c := m.services[n]
		fmt.Fprintf(&sb, "meshauth_logins_total{service=%q,result=\"success\"} %d\n", n, c.loginsOK.Load())
		fmt.Fprintf(&sb, "meshauth_logins_total{service=%q,result=\"failure\"} %d\n", n, c.loginsFailed.Load())
		fmt.Fprintf(&sb, "meshauth_logins_total{service=%q,result=\"locked\"} %d\n", n, c.lockedRefusals.Load())
	}
	family("meshauth_logins_refused_total", "Logins refused (also counted as failures) because the service's stored entry fails closed, by reason.", "counter")
	for _, n := range names {
		fmt.Fprintf(&sb, "meshauth_logins_refused_total{service=%q,reason=\"trust_domain_missing\"} %d\n", n, m.services[n].refusedIdentity.Load())
	}
	family("meshauth_lockouts_total", "Callers locked out of a service after repeated failures.", "counter")
	for _, n := range names {
		fmt.Fprintf(&sb, "meshauth_lockouts_total{service=%q} %d\n", n, m.services[n].lockouts.Load())
	}
	family("meshauth_tokens_issued_total", "Tokens issued by service.", "counter")
	for _, n := range names {
		fmt.Fprintf(&sb, "meshauth_tokens_issued_total{service=%q} %d\n", n, m.services[n].tokensIssued.Load())
	}
	family("meshauth_verifications_total", "Online verifications by result (valid, or the reason a token was refused).", "counter")
	results := make([]string, 0, len(m.verifications))
	for r := range m.verifications {
		results = append(results, r)
	}
	slices.Sort(results)
	for _, r := range results {
		fmt.Fprintf(&sb, "meshauth_verifications_total{result=%q} %d\n", r, m.verifications[r].Load())
	}
	family("meshauth_key_rotations_total", "Signing key rotations performed by this node.", "counter")
	fmt.Fprintf(&sb, "meshauth_key_rotations_total %d\n", m.keyRotations.Load())
	family("meshauth_login_storage_operations_total", "Storage calls made by logins; 0 while every cache is warm.", "counter")
	fmt.Fprintf(&sb, "meshauth_login_storage_operations_total %d\n", m.loginStorageOps.Load())
	family("meshauth_locked_callers", "Service/caller pairs locked out right now on this node.", "gauge")
	fmt.Fprintf(&sb, "meshauth_locked_callers %d\n", lockedCallers)
	m.certRevocation.prometheus(&sb, "meshauth_certificate_revocation_total", "Client-certificate revocation checks by result: certificate_revoked (login refused), revocation_unavailable (refused: no current CRL/OCSP answer), revocation_fail_open (allowed without one), crl_fetch_failed, ocsp_fetch_failed.")
	return sb.String()
}
