package meshauth

import (
	"slices"
	"strconv"
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

// promText writes the Prometheus text exposition format: the one writer of
// every family /metrics serves.
type promText struct{ sb strings.Builder }

// family starts a metric family.
func (p *promText) family(name, help, kind string) {
	p.sb.WriteString("# HELP " + name + " " + help + "\n# TYPE " + name + " " + kind + "\n")
}

// promLabel escapes a label value as the format requires: backslash,
// double quote and line feed.
var promLabel = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// sample writes one sample; labels are name, value pairs.
func (p *promText) sample(name string, value uint64, labels ...string) {
	p.sb.WriteString(name)
	for i := 0; i+1 < len(labels); i += 2 {
		if i == 0 {
			p.sb.WriteByte('{')
		} else {
			p.sb.WriteByte(',')
		}
		p.sb.WriteString(labels[i] + `="` + promLabel.Replace(labels[i+1]) + `"`)
	}
	if len(labels) > 1 {
		p.sb.WriteByte('}')
	}
	p.sb.WriteString(" " + strconv.FormatUint(value, 10) + "\n")
}

// prometheus renders the counters in the Prometheus text exposition format.
func (m *metrics) prometheus(lockedCallers int) string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var p promText
	names := make([]string, 0, len(m.services))
	for name := range m.services {
		names = append(names, name)
	}
	slices.Sort(names)
	p.family("meshauth_logins_total", "Logins by service and result.", "counter")
	for _, n := range names {
		c := m.services[n]
		p.sample("meshauth_logins_total", c.loginsOK.Load(), "service", n, "result", "success")
		p.sample("meshauth_logins_total", c.loginsFailed.Load(), "service", n, "result", "failure")
		p.sample("meshauth_logins_total", c.lockedRefusals.Load(), "service", n, "result", "locked")
	}
	p.family("meshauth_logins_refused_total", "Logins refused (also counted as failures) because the service's stored entry fails closed, by reason.", "counter")
	for _, n := range names {
		p.sample("meshauth_logins_refused_total", m.services[n].refusedIdentity.Load(), "service", n, "reason", "trust_domain_missing")
	}
	p.family("meshauth_lockouts_total", "Callers locked out of a service after repeated failures.", "counter")
	for _, n := range names {
		p.sample("meshauth_lockouts_total", m.services[n].lockouts.Load(), "service", n)
	}
	p.family("meshauth_tokens_issued_total", "Tokens issued by service.", "counter")
	for _, n := range names {
		p.sample("meshauth_tokens_issued_total", m.services[n].tokensIssued.Load(), "service", n)
	}
	p.family("meshauth_verifications_total", "Online verifications by result (valid, or the reason a token was refused).", "counter")
	results := make([]string, 0, len(m.verifications))
	for r := range m.verifications {
		results = append(results, r)
	}
	slices.Sort(results)
	for _, r := range results {
		p.sample("meshauth_verifications_total", m.verifications[r].Load(), "result", r)
	}
	p.family("meshauth_key_rotations_total", "Signing key rotations performed by this node.", "counter")
	p.sample("meshauth_key_rotations_total", m.keyRotations.Load())
	p.family("meshauth_login_storage_operations_total", "Storage calls made by logins; 0 while every cache is warm.", "counter")
	p.sample("meshauth_login_storage_operations_total", m.loginStorageOps.Load())
	p.family("meshauth_locked_callers", "Service/caller pairs locked out right now on this node.", "gauge")
	p.sample("meshauth_locked_callers", uint64(max(lockedCallers, 0)))
	m.certRevocation.prometheus(&p, "meshauth_certificate_revocation_total", "Client-certificate revocation checks by result: certificate_revoked (login refused), revocation_unavailable (refused: no current CRL/OCSP answer), revocation_fail_open (allowed without one), crl_fetch_failed, ocsp_fetch_failed.")
	return p.sb.String()
}
