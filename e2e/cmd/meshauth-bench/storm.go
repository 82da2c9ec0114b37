package main

import (
	"crypto/x509"
	"fmt"
	"log"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
)

// The re-login storm: a fleet of instances of one service, each with its
// own client certificate and warm connections, all logging in again at
// once after services/:name/revoke ended their tokens.
const (
	stormService     = "fleet"
	stormHostname    = "fleet.mesh"
	stormInstances   = 500
	stormPerInstance = 10 // logins per instance: 5,000 in all
	stormConns       = 2  // keep-alive connections per instance
)

// stormResult is one storm.
type stormResult struct {
	kind      string
	counters  stormCounters // meshauth's counters for the service after the storm
	wall      time.Duration
	ok        int
	errors    map[string]int
	latencies []float64 // ms, per login
	pluginRSS rssSample
	vaultRSS  rssSample
	vaultCPU  float64 // seconds
	pluginCPU float64
}

// rssSample is a process's resident memory before and at its peak during a
// storm, in KiB.
type rssSample struct{ before, peak int64 }

// fleet is the storm's instances.
type fleet struct {
	clients   []*http.Client
	secretIDs []string // AppRole: one secret ID per instance
}

// stormCounters are the plugin's own counters for the storm's service.
type stormCounters map[string]any

// fleetCounters reads them from the metrics path.
func (e *env) fleetCounters() stormCounters {
	var s secret
	if err := e.call("GET", "/v1/meshauth/metrics", e.s.Token, nil, nil, &s); err != nil {
		e.lab.Fatal(err)
	}
	services, _ := s.Data["services"].(map[string]any)
	c, _ := services[stormService].(map[string]any)
	c["locked_callers"] = s.Data["locked_callers"]
	return c
}

// storms runs n meshauth storms and n AppRole(batch) + identity token
// storms, alternating, on one fleet.
func (e *env) storms(n int) []stormResult {
	f := e.newFleet()
	var out []stormResult
	for i := range n {
		out = append(out, e.meshauthStorm(f))
		log.Printf("storm %d: meshauth %s, %d ok, errors %v", i+1, out[len(out)-1].wall, out[len(out)-1].ok, out[len(out)-1].errors)
		out = append(out, e.appRoleStorm(f))
		log.Printf("storm %d: AppRole %s, %d ok, errors %v", i+1, out[len(out)-1].wall, out[len(out)-1].ok, out[len(out)-1].errors)
	}
	return out
}

// newFleet registers the storm's service, issues one certificate per
// instance, and gives every instance an AppRole secret ID and warm
// connections (one login through each).
func (e *env) newFleet() *fleet {
	e.stormKey = vaultlab.JSONData(e.lab, e.s.MustCLI(e.lab, "write", "meshauth/services/"+stormService, "ca_chain=@"+e.ca.File, "hostnames="+stormHostname))["api_key"].(string)
	dir := e.lab.TempDir()
	f := &fleet{}
	for i := range stormInstances {
		cert := e.ca.Issue(e.lab, dir, fmt.Sprintf("fleet-%d", i), []string{stormHostname}, nil, x509.ExtKeyUsageClientAuth)
		f.clients = append(f.clients, e.clientFor(cert, stormConns))
		var s secret
		if err := e.call("POST", "/v1/auth/approle/role/batch/secret-id", e.s.Token, map[string]any{}, nil, &s); err != nil {
			e.lab.Fatal(err)
		}
		f.secretIDs = append(f.secretIDs, s.Data["secret_id"].(string))
	}
	// Warm: every instance opens its connections and logs in once both ways.
	var wg sync.WaitGroup
	for i, c := range f.clients {
		for range stormConns {
			wg.Go(func() {
				if err := e.loginGETWith(c, stormService, e.stormKey); err != nil {
					e.lab.Fatalf("fleet warm-up: %v", err)
				}
			})
		}
		wg.Go(func() {
			if err := e.appRoleWith(c, f.secretIDs[i]); err != nil {
				e.lab.Fatalf("fleet warm-up (AppRole): %v", err)
			}
		})
	}
	wg.Wait()
	return f
}

// appRoleWith is AppRole(batch) login with an instance's secret ID, then an
// identity token (ES256), through the instance's client.
func (e *env) appRoleWith(c *http.Client, secretID string) error {
	var login secret
	if err := e.callWith(c, "POST", "/v1/auth/approle/login", "", map[string]any{"role_id": e.roleID["batch"], "secret_id": secretID}, nil, &login); err != nil {
		return err
	}
	var tok secret
	if err := e.callWith(c, "GET", "/v1/identity/oidc/token/orders-es256", login.Auth.ClientToken, nil, nil, &tok); err != nil {
		return err
	}
	if tok.Data["token"] == nil {
		return fmt.Errorf("no identity token in %v", tok.Data)
	}
	return nil
}

func (e *env) meshauthStorm(f *fleet) stormResult {
	e.s.MustCLI(e.lab, "write", "-f", "meshauth/services/"+stormService+"/revoke")
	r := e.storm(f, func(i int) error { return e.loginGETWith(f.clients[i], stormService, e.stormKey) })
	r.kind = "meshauth GET login (after revoke)"
	r.counters = e.fleetCounters()
	return r
}

func (e *env) appRoleStorm(f *fleet) stormResult {
	r := e.storm(f, func(i int) error { return e.appRoleWith(f.clients[i], f.secretIDs[i]) })
	r.kind = "AppRole(batch) + identity token ES256"
	return r
}

// storm releases every instance's logins at once and waits for all of them,
// sampling the memory of Vault and the plugin while they run.
func (e *env) storm(f *fleet, login func(instance int) error) stormResult {
	r := stormResult{errors: map[string]int{}}
	pluginPID := e.s.PluginPIDs()
	vaultPID := e.s.PID()
	rss := func() (v, p int64) {
		v = rssKiB(vaultPID)
		for _, pid := range pluginPID {
			p += rssKiB(pid)
		}
		return v, p
	}
	r.vaultRSS.before, r.pluginRSS.before = rss()
	r.vaultRSS.peak, r.pluginRSS.peak = r.vaultRSS.before, r.pluginRSS.before
	cpuBefore := e.sampleCPU()

	var mu sync.Mutex
	var ok atomic.Int64
	lat := make([]float64, 0, stormInstances*stormPerInstance)
	gate := make(chan struct{})
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i := range f.clients {
		for range stormPerInstance {
			wg.Go(func() {
				<-gate
				start := now()
				err := login(i)
				ms := msSince(start)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					r.errors[errorKind(err)]++
					return
				}
				ok.Add(1)
				lat = append(lat, ms)
			})
		}
	}
	go func() { // sample memory until the storm is over
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				v, p := rss()
				r.vaultRSS.peak, r.pluginRSS.peak = max(r.vaultRSS.peak, v), max(r.pluginRSS.peak, p)
			}
		}
	}()
	start := now()
	close(gate)
	wg.Wait()
	r.wall = time.Since(start)
	close(done)
	used := e.sampleCPU().minus(cpuBefore)
	r.vaultCPU, r.pluginCPU = used.vault, used.plugin
	r.ok = int(ok.Load())
	r.latencies = lat
	return r
}

// errorKind shortens an error for counting: its status code, or its text.
func errorKind(err error) string {
	s := err.Error()
	if i := strings.Index(s, ": "); i >= 0 && len(s) > i+5 {
		return s[i+2 : i+5]
	}
	return s
}

// rssKiB reads a process's resident set size from /proc.
func rssKiB(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(rest), "%d", &kb) //nolint:errcheck // 0 when absent
			return kb
		}
	}
	return 0
}

func renderStorms(rs []stormResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Re-login storm\n\n")
	fmt.Fprintf(&b, "A fleet of %d instances of service `%s`, each with its own client certificate (same CA) and %d warm keep-alive connections. "+
		"`services/%s/revoke` ends every token (and empties the service's verification cache), then %d logins (%d per instance) are released at once; "+
		"the same fleet then runs the same storm through AppRole(batch) login + identity token (ES256, one secret ID per instance). Alternated, %d times each. "+
		"RSS from /proc (peak sampled every 20 ms); CPU from /proc over the storm.\n\n",
		stormInstances, stormService, stormConns, stormService, stormInstances*stormPerInstance, stormPerInstance, len(rs)/2)
	fmt.Fprintf(&b, "| storm | served in s | ok | errors | login p50 ms | p99 ms | max ms | Vault CPU s | plugin CPU s | plugin RSS MiB before → peak | Vault RSS MiB before → peak |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		s := sortedCopy(r.latencies)
		errs := "0"
		if len(r.errors) > 0 {
			errs = fmt.Sprint(r.errors)
		}
		fmt.Fprintf(&b, "| %s | %.2f | %d | %s | %.1f | %.1f | %.1f | %.2f | %.2f | %.1f → %.1f | %.1f → %.1f |\n",
			r.kind, r.wall.Seconds(), r.ok, errs, percentile(s, 50), percentile(s, 99), percentile(s, 100),
			r.vaultCPU, r.pluginCPU, float64(r.pluginRSS.before)/1024, float64(r.pluginRSS.peak)/1024,
			float64(r.vaultRSS.before)/1024, float64(r.vaultRSS.peak)/1024)
	}
	var last stormCounters
	for _, r := range rs {
		if r.counters != nil {
			last = r.counters
		}
	}
	fmt.Fprintf(&b, "\nmeshauth's own counters for `%s` after the last storm (cumulative, warm-up included): %v.\n", stormService, last)
	return b.String()
}
