// Command meshauth-bench measures meshauth against Vault's native flow on a
// real Vault: it starts a dev-TLS server on loopback with the plugin
// registered, sets up meshauth and AppRole + identity tokens side by side,
// and times them in interleaved rounds with one keep-alive HTTP client. It
// prints ratios (median and p10-p90 of per-round ratios) and writes them to
// docs/benchmarks.md. Every loop is bounded in count; traffic stays on 127.0.0.1.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
)

func main() {
	rounds := flag.Int("rounds", 21, "interleaved rounds (the first is discarded); at least 21")
	perRound := flag.Int("per-round", 40, "sequential requests per flow per round at concurrency 1")
	conc := flag.Int("concurrency", 16, "concurrency of the throughput phase")
	concRequests := flag.Int("concurrent-requests", 480, "requests per flow per round in the throughput phase")
	out := flag.String("out", "../docs/benchmarks.md", "where to write the report (the default is docs/benchmarks.md of the clone, run from e2e/)")
	profileRequests := flag.Int("profile-requests", 20000, "requests per flow while the plugin process profiles itself")
	profileDir := flag.String("profile-dir", "", "keep the plugin's CPU profiles in this directory (default: removed after the run)")
	only := flag.String("only", "", "run only these phases (comma-separated: latency, profile, mtls, storm) and print, not write, the report; for trying changes")
	flag.Parse()
	if *rounds < 21 {
		log.Fatal("-rounds must be at least 21: the first round is discarded and ratios need 20")
	}
	if vaultlab.VaultBin == "" || vaultlab.PluginBin == "" {
		log.Fatal("VAULT_BIN and MESHAUTH_PLUGIN must name the vault and plugin binaries; `make bench` sets them")
	}

	lab := newLab()
	defer lab.cleanup()
	log.Printf("starting a dev Vault with TLS on loopback and setting up both flows")
	env := setup(lab)

	run := func(phase string) bool { return *only == "" || slices.Contains(strings.Split(*only, ","), phase) }
	var report string
	if run("latency") {
		flows := env.flows()
		log.Printf("latency: %d rounds x %d requests per flow, interleaved, concurrency 1", *rounds, *perRound)
		lat := measureLatency(flows, *rounds, *perRound)
		log.Printf("throughput: %d rounds x %d requests per flow at concurrency %d", *rounds, *concRequests, *conc)
		tput := measureThroughput(env.throughputFlows(), *rounds, *concRequests, *conc, env.sampleCPU)
		storageOps := env.storageOpsPerLogin(200)
		cold := env.firstLoginAfterReload(5)
		report = render(env.vaultVersion, lat, tput, storageOps, cold, *rounds, *perRound, *conc, *concRequests)
	}
	if run("profile") {
		log.Printf("profile: the plugin process profiles itself, %d requests per flow at concurrency %d", *profileRequests, *conc)
		report += renderProfiles(env.profileFlows(env.profiledFlows(), *profileRequests, *conc, *profileDir), *conc)
	}
	if run("mtls") {
		log.Printf("mtls: first logins of new certificates against known ones")
		report += renderColdCerts(env.coldCertificates(60))
	}
	if run("storm") {
		log.Printf("storm: re-login after a revoke, meshauth against AppRole(batch) + identity token")
		report += renderStorms(env.storms(3))
	}
	fmt.Print(report)
	if *only != "" {
		return
	}
	report += keptNotes(*out)
	if err := os.WriteFile(*out, []byte(report), 0o644); err != nil { //nolint:gosec // a report for people to read
		lab.Fatalf("writing %s: %v", *out, err)
	}
	log.Printf("wrote %s", *out)
}

// notesHeading starts the hand-written part of the report (what the numbers
// mean, what the profiles showed), which a new run keeps.
const notesHeading = "\n## Notes"

// keptNotes returns the hand-written notes of an earlier report, if any.
func keptNotes(path string) string {
	old, err := os.ReadFile(path) //nolint:gosec // the report we write
	if err != nil {
		return ""
	}
	if i := strings.Index(string(old), notesHeading); i >= 0 {
		return string(old[i:])
	}
	return ""
}

// lab lets the launcher run outside `go test`: failures stop the program
// after cleaning up what it started.
type lab struct {
	cleanups []func()
	dir      string
	// server is the Vault under test, whose log a failure shows.
	server *vaultlab.Server
}

func newLab() *lab {
	dir, err := os.MkdirTemp("", "meshauth-bench-")
	if err != nil {
		log.Fatal(err)
	}
	return &lab{dir: dir}
}

func (l *lab) Helper()                         {}
func (l *lab) Logf(format string, args ...any) { log.Printf(format, args...) }
func (l *lab) Cleanup(f func())                { l.cleanups = append(l.cleanups, f) }
func (l *lab) Fatal(args ...any)               { l.Fatalf("%s", fmt.Sprint(args...)) }
func (l *lab) TempDir() string {
	d, err := os.MkdirTemp(l.dir, "t")
	if err != nil {
		l.Fatal(err)
	}
	return d
}

func (l *lab) Fatalf(format string, args ...any) {
	log.Printf("meshauth-bench: "+format, args...)
	if l.server != nil {
		log.Printf("the end of Vault's log:\n%s", l.server.LogTail())
	}
	l.cleanup()
	os.Exit(1)
}

// cleanup stops every process the run started and removes its files.
func (l *lab) cleanup() {
	for i := len(l.cleanups) - 1; i >= 0; i-- {
		l.cleanups[i]()
	}
	l.cleanups = nil
	_ = os.RemoveAll(l.dir)
}

// percentile returns the p-th percentile (0-100) of sorted values.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

// sortedCopy sorts a copy of v.
func sortedCopy(v []float64) []float64 {
	out := append([]float64(nil), v...)
	sort.Float64s(out)
	return out
}

// machine describes where the run happened.
func machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(line, "model name") {
				model = strings.TrimSpace(strings.SplitN(line, ":", 2)[1])
				break
			}
		}
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(strings.SplitN(string(data), "\n", 2)[0], "MemTotal: %d kB", &kb); err == nil {
			mem = fmt.Sprintf(", %.0f GiB memory", float64(kb)/(1<<20))
		}
	}
	return fmt.Sprintf("%s, %d cores%s, %s/%s, %s", model, runtime.NumCPU(), mem, runtime.GOOS, runtime.GOARCH, runtime.Version())
}

// now is the wall clock, named for readability at call sites.
func now() time.Time { return time.Now() }
