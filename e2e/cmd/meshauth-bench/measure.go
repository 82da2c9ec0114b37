package main

import (
	"fmt"
	"log"
	"strings"
	"sync"
	"time"
)

// latencies holds, per flow, the p50 of each round and every sample after
// the discarded first round.
type latencies struct {
	order   []string
	p50     map[string][]float64
	samples map[string][]float64
}

// measureLatency runs every flow perRound times in each round, one flow
// after the other (A B C ... A B C ...), at concurrency 1.
func measureLatency(flows []flow, rounds, perRound int) *latencies {
	l := &latencies{p50: map[string][]float64{}, samples: map[string][]float64{}}
	for _, f := range flows {
		l.order = append(l.order, f.name)
	}
	for r := range rounds {
		for _, f := range flows {
			var round []float64
			for range perRound {
				start := now()
				if err := f.run(); err != nil {
					log.Fatalf("%s: %v", f.name, err)
				}
				round = append(round, msSince(start))
			}
			if r == 0 {
				continue // warm-up round
			}
			l.p50[f.name] = append(l.p50[f.name], percentile(sortedCopy(round), 50))
			l.samples[f.name] = append(l.samples[f.name], round...)
		}
	}
	return l
}

// throughput holds ops/s per flow per round, and the CPU each process
// spent on the flow's requests.
type throughput struct {
	order []string
	ops   map[string][]float64
	cpu   map[string]cpuSample
	count map[string]int
}

// measureThroughput runs requests of each flow with conc workers per round,
// interleaving flows round by round.
func measureThroughput(flows []flow, rounds, requests, conc int, sample func() cpuSample) *throughput {
	t := &throughput{ops: map[string][]float64{}, cpu: map[string]cpuSample{}, count: map[string]int{}}
	for _, f := range flows {
		t.order = append(t.order, f.name)
	}
	for r := range rounds {
		for _, f := range flows {
			jobs := make(chan struct{}, requests)
			for range requests {
				jobs <- struct{}{}
			}
			close(jobs)
			before := sample()
			start := now()
			var wg sync.WaitGroup
			for range conc {
				wg.Go(func() {
					for range jobs {
						if err := f.run(); err != nil {
							log.Fatalf("%s: %v", f.name, err)
						}
					}
				})
			}
			wg.Wait()
			if r > 0 {
				t.ops[f.name] = append(t.ops[f.name], float64(requests)/time.Since(start).Seconds())
				used := sample().minus(before)
				acc := t.cpu[f.name]
				t.cpu[f.name] = cpuSample{acc.vault + used.vault, acc.plugin + used.plugin, acc.loader + used.loader}
				t.count[f.name] += requests
			}
		}
	}
	return t
}

// comparison is one row of the report: num / den, per round.
type comparison struct {
	num, den string
	target   string
}

// ratioStats summarises per-round ratios.
func ratioStats(num, den []float64) (median, p10, p90 float64) {
	var ratios []float64
	for i := range min(len(num), len(den)) {
		ratios = append(ratios, num[i]/den[i])
	}
	s := sortedCopy(ratios)
	return percentile(s, 50), percentile(s, 10), percentile(s, 90)
}

const (
	flowHealth   = "sys/health"
	flowGET      = "plugin GET (config)"
	flowPOST     = "plugin POST (verify of a malformed token)"
	flowLogin    = "meshauth login (POST)"
	flowLoginGET = "meshauth login (GET, header)"
	flowVerify   = "meshauth verify"
	flowJWKS     = "meshauth jwks"
	flowRS256    = "AppRole(svc) + identity token RS256"
	flowES256    = "AppRole(svc) + identity token ES256"
	flowEdDSA    = "AppRole(svc) + identity token EdDSA"
	flowBatch    = "AppRole(batch) + identity token ES256"
	// The same GET login of the mTLS-optional service with and without a
	// client certificate (warm verification cache).
	flowOptCert   = "login GET, mTLS-optional service, with certificate"
	flowOptNoCert = "login GET, mTLS-optional service, no certificate"
)

var latencyComparisons = []comparison{
	{flowLogin, flowPOST, "≤ 1.10"},
	{flowRS256, flowLogin, "≥ 2.5"},
	{flowES256, flowLogin, ""},
	{flowEdDSA, flowLogin, ""},
	{flowBatch, flowLogin, "≥ 1.15"},
	{flowGET, flowHealth, ""},
	{flowVerify, flowPOST, "≤ 1.10"},
	{flowJWKS, flowGET, ""},
	{flowLoginGET, flowGET, "≤ 1.10"},
	{flowBatch, flowLoginGET, "≥ 1.6"},
	{flowLogin, flowLoginGET, ""},
	{flowOptCert, flowOptNoCert, "≤ 1.02"},
}

var throughputComparisons = []comparison{
	{flowLogin, flowPOST, "≥ 0.9"},
	{flowLoginGET, flowGET, ""},
	{flowLogin, flowBatch, "≥ 1.7"},
	{flowLoginGET, flowBatch, ""},
	{flowLogin, flowRS256, ""},
	{flowOptCert, flowOptNoCert, "≥ 0.98"},
}

// render writes the Markdown report.
func render(vaultVersion string, lat *latencies, tput *throughput, storageOps float64, cold coldStart, rounds, perRound, conc, concRequests int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# meshauth benchmarks\n\n")
	fmt.Fprintf(&b, "Written by `make bench` (`e2e/cmd/meshauth-bench`) on %s.\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "Machine: %s. %s, dev server with TLS and in-memory storage.\n\n", machine(), vaultVersion)
	fmt.Fprintf(&b, "Method: one dev Vault with TLS on loopback, the plugin registered from its binary; one keep-alive HTTP client presenting the service's client certificate. "+
		"%d rounds, the first discarded; in each round every flow runs %d sequential requests (concurrency 1), flows interleaved. "+
		"Throughput: per round, %d requests of each flow over %d workers. Ratios are per round (same round, same conditions), "+
		"reported as median and p10–p90 across rounds. Targets are from the performance issue; nothing in the test suite asserts a time.\n\n",
		rounds, perRound, concRequests, conc)

	fmt.Fprintf(&b, "## Latency, concurrency 1\n\n| flow | p50 ms (median of rounds) | p99 ms |\n|---|---|---|\n")
	for _, name := range lat.order {
		fmt.Fprintf(&b, "| %s | %.3f | %.3f |\n", name, percentile(sortedCopy(lat.p50[name]), 50), percentile(sortedCopy(lat.samples[name]), 99))
	}
	fmt.Fprintf(&b, "\n| ratio (p50) | median | p10–p90 | target |\n|---|---|---|---|\n")
	for _, c := range latencyComparisons {
		m, lo, hi := ratioStats(lat.p50[c.num], lat.p50[c.den])
		fmt.Fprintf(&b, "| %s / %s | %.2f | %.2f–%.2f | %s |\n", c.num, c.den, m, lo, hi, c.target)
	}

	fmt.Fprintf(&b, "\n## Throughput, concurrency %d\n\n| flow | ops/s (median of rounds) |\n|---|---|\n", conc)
	for _, name := range tput.order {
		fmt.Fprintf(&b, "| %s | %.0f |\n", name, percentile(sortedCopy(tput.ops[name]), 50))
	}
	fmt.Fprintf(&b, "\nCPU per request during the throughput phase (from /proc, all rounds but the first), in µs:\n\n| flow | Vault | plugin processes | load generator |\n|---|---|---|---|\n")
	for _, name := range tput.order {
		c, n := tput.cpu[name], float64(tput.count[name])
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f |\n", name, c.vault/n*1e6, c.plugin/n*1e6, c.loader/n*1e6)
	}
	fmt.Fprintf(&b, "\n| ratio (ops/s) | median | p10–p90 | target |\n|---|---|---|---|\n")
	for _, c := range throughputComparisons {
		m, lo, hi := ratioStats(tput.ops[c.num], tput.ops[c.den])
		fmt.Fprintf(&b, "| %s / %s | %.2f | %.2f–%.2f | %s |\n", c.num, c.den, m, lo, hi, c.target)
	}

	fmt.Fprintf(&b, "\n## Login internals\n\n")
	fmt.Fprintf(&b, "- Storage operations per login in steady state (the plugin's own count, over 200 logins): **%.2f**.\n", storageOps)
	fmt.Fprintf(&b, "- First login after `vault plugin reload` (caches empty, key ring and service read from storage, plugin process started): "+
		"median %.2f ms over %d reloads, against %.2f ms in steady state right after (%.1f ×).\n",
		percentile(sortedCopy(cold.first), 50), len(cold.first), percentile(sortedCopy(cold.steady), 50),
		percentile(sortedCopy(cold.first), 50)/percentile(sortedCopy(cold.steady), 50))
	return b.String()
}
