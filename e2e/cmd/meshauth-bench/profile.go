package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
)

// cpuProfileEnv is the plugin's switch for a CPU profile of its process
// (cmd/vault-plugin-secrets-meshauth/profile.go).
const cpuProfileEnv = "MESHAUTH_CPU_PROFILE"

// profiled is the CPU profile of the plugin process while it served one
// flow: where its CPU went, in µs per request, bucket by bucket.
type profiled struct {
	flow     string
	requests int
	total    float64            // µs of plugin CPU per request
	buckets  map[string]float64 // µs per request
	file     string
}

// cpuBucket names part of the plugin's work by the frames a sample's stack
// holds. A sample goes to the first bucket, in this order, whose pattern
// matches any frame of its stack, so every sample is counted once and the
// buckets add up to the total.
type cpuBucket struct {
	name string
	re   *regexp.Regexp
}

var cpuBuckets = []cpuBucket{
	{"token signature (ecdsa.Sign)", regexp.MustCompile(`^crypto/ecdsa\.Sign|^crypto/ed25519\.Sign|^crypto/rsa\.Sign`)},
	{"client certificate: chain verification (cache miss)", regexp.MustCompile(`meshauth\.verifyPresentedChain`)},
	{"client certificate: parsing it from the request (SDK)", regexp.MustCompile(`ProtoConnectionStateToTLSConnectionState`)},
	{"request: protobuf → logical.Request (SDK, JSON data)", regexp.MustCompile(`pb\.ProtoRequestToLogicalRequest`)},
	{"response: logical.Response → protobuf (SDK, JSON data)", regexp.MustCompile(`pb\.LogicalResponseToProtoResponse`)},
	{"meshauth: token claims and encoding", regexp.MustCompile(`meshauth\.mintToken`)},
	{"meshauth: login checks (API key, certificate cache, lockout)", regexp.MustCompile(`meshauth\.\(\*backend\)\.(authenticateCaller|checkClientCertificate)`)},
	{"meshauth: other handler work", regexp.MustCompile(`^github\.com/datapunk/vault-plugin-secrets-meshauth\.`)},
	{"framework: routing, field decoding, existence check", regexp.MustCompile(`sdk/framework\.|sdk/logical\.|sdk/plugin\.\(\*backendGRPCPluginServer\)`)},
	{"gRPC and HTTP/2 transport, protobuf", regexp.MustCompile(`^google\.golang\.org/grpc|^golang\.org/x/net/http2|^google\.golang\.org/protobuf`)},
	{"garbage collection (background)", regexp.MustCompile(`^runtime\.gcBgMarkWorker|^runtime\.bgsweep|^runtime\.bgscavenge`)},
	{"runtime: scheduler, syscalls, other", regexp.MustCompile(`.`)},
}

// profileFlows drives each flow with the plugin process profiling itself:
// the plugin is registered with MESHAUTH_CPU_PROFILE, reloaded (a fresh
// process per flow), driven with requests at conc workers, and reloaded
// again, which stops the process and completes its profile. The plugin is
// registered without the variable again at the end.
func (e *env) profileFlows(flows []flow, requests, conc int, keep string) []profiled {
	dir := e.lab.TempDir()
	if keep != "" {
		if err := os.MkdirAll(keep, 0o750); err != nil {
			e.lab.Fatal(err)
		}
		dir, _ = filepath.Abs(keep)
	}
	e.registerPlugin("-env=" + cpuProfileEnv + "=" + dir)
	defer e.registerPlugin()
	var out []profiled
	for _, f := range flows {
		e.reloadPlugin()
		if err := f.run(); err != nil { // the new process serves before anything is counted
			e.lab.Fatalf("%s: %v", f.name, err)
		}
		pids := e.s.PluginPIDs()
		if len(pids) != 1 {
			e.lab.Fatalf("profiling %s: want one plugin process, found %v", f.name, pids)
		}
		runConcurrently(f, requests, conc)
		e.reloadPlugin()
		file := filepath.Join(dir, fmt.Sprintf("meshauth-cpu-%d.pprof", pids[0]))
		waitGone(e, pids[0])
		p := analyseProfile(file, requests+1)
		p.flow, p.file = f.name, file
		out = append(out, p)
		log.Printf("profile of %s: %.0f µs of plugin CPU per request", f.name, p.total)
	}
	return out
}

// registerPlugin (re-)registers the plugin binary in the catalog with extra
// flags such as -env.
func (e *env) registerPlugin(extra ...string) {
	data, err := os.ReadFile(filepath.Join(e.s.PluginDir, vaultlab.PluginName))
	if err != nil {
		e.lab.Fatal(err)
	}
	sum := sha256.Sum256(data)
	args := append([]string{"plugin", "register", "-sha256=" + hex.EncodeToString(sum[:]), "-command=" + vaultlab.PluginName}, extra...)
	e.s.MustCLI(e.lab, append(args, "secret", vaultlab.CatalogName)...)
}

// reloadPlugin restarts the plugin process: Vault stops the old one
// (gracefully, so its profile is written) and starts a new one.
func (e *env) reloadPlugin() {
	e.s.MustCLI(e.lab, "plugin", "reload", "-plugin="+vaultlab.CatalogName)
}

// waitGone waits (bounded) for a plugin process to end.
func waitGone(e *env, pid int) {
	for range 100 {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.lab.Fatalf("plugin process %d did not end after a reload", pid)
}

// runConcurrently runs a flow requests times over conc workers.
func runConcurrently(f flow, requests, conc int) {
	jobs := make(chan struct{}, requests)
	for range requests {
		jobs <- struct{}{}
	}
	close(jobs)
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
}

// analyseProfile reads a CPU profile through `go tool pprof -traces` and
// sorts every sample into a bucket.
func analyseProfile(file string, requests int) profiled {
	cmd := exec.Command("go", "tool", "pprof", "-traces", file) //nolint:gosec // our own profile
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		log.Fatalf("go tool pprof -traces %s: %v\n%s", file, err, stderr.String())
	}
	p := profiled{requests: requests, buckets: map[string]float64{}}
	var value float64
	var stack []string
	flush := func() {
		if len(stack) == 0 {
			return
		}
		for _, b := range cpuBuckets {
			if matchesAny(b.re, stack) {
				p.buckets[b.name] += value
				break
			}
		}
		p.total += value
		stack = stack[:0]
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "-----") {
			flush()
			continue
		}
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(line, "File:") || strings.HasPrefix(line, "Type:") || strings.HasPrefix(line, "Time:") || strings.HasPrefix(line, "Duration:") {
			continue
		}
		if !strings.HasPrefix(line, " ") || (len(fields) == 2 && isDuration(fields[0])) {
			// "      10ms   frame" starts a sample.
			if d, ok := parseDuration(fields[0]); ok && len(fields) >= 2 {
				value = d
				stack = append(stack, fields[1])
				continue
			}
		}
		if d, ok := parseDuration(fields[0]); ok && len(fields) >= 2 {
			value = d
			stack = append(stack, fields[1])
			continue
		}
		stack = append(stack, fields[0])
	}
	flush()
	// From seconds in the profile to µs per request.
	p.total = p.total / float64(requests) * 1e6
	for k, v := range p.buckets {
		p.buckets[k] = v / float64(requests) * 1e6
	}
	return p
}

func matchesAny(re *regexp.Regexp, stack []string) bool {
	for _, f := range stack {
		if re.MatchString(f) {
			return true
		}
	}
	return false
}

func isDuration(s string) bool { _, ok := parseDuration(s); return ok }

// parseDuration reads pprof's sample values ("10ms", "1.20s", "500us") in
// seconds.
func parseDuration(s string) (float64, bool) {
	for _, u := range []struct {
		suffix string
		scale  float64
	}{{"ms", 1e-3}, {"us", 1e-6}, {"µs", 1e-6}, {"ns", 1e-9}, {"s", 1}} {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(num, 64)
			if err != nil {
				return 0, false
			}
			return v * u.scale, true
		}
	}
	return 0, false
}

// profiledFlows are the two logins and their floors, and the login with
// and without a client certificate.
func (e *env) profiledFlows() []flow {
	want := []string{flowLoginGET, flowGET, flowLogin, flowPOST, flowOptCert, flowOptNoCert}
	var out []flow
	for _, name := range want {
		for _, f := range e.flows() {
			if f.name == name {
				out = append(out, f)
			}
		}
	}
	return out
}

// renderProfiles writes the profile section: per bucket, µs of plugin CPU
// per request for each login and its floor, and the difference.
func renderProfiles(ps []profiled, conc int) string {
	by := map[string]profiled{}
	for _, p := range ps {
		by[p.flow] = p
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Where the plugin's CPU goes (profile of the plugin process under Vault load)\n\n")
	fmt.Fprintf(&b, "The plugin registered with `-env=%s=<dir>`, one fresh process per flow, %d requests at concurrency %d; "+
		"the profile (`go tool pprof -traces`) sorted sample by sample into the first bucket whose frames match. µs of plugin CPU per request; "+
		"100 samples a second, so a bucket under ~5 µs is within sampling noise.\n\n", cpuProfileEnv, ps[0].requests-1, conc)
	pairs := [][2]string{{flowLoginGET, flowGET}, {flowLogin, flowPOST}, {flowOptCert, flowOptNoCert}}
	fmt.Fprintf(&b, "| bucket | login GET | trivial GET | Δ GET | login POST | trivial POST | Δ POST | login GET, certificate | no certificate | Δ certificate |\n|---|---|---|---|---|---|---|---|---|---|\n")
	row := func(name string, get func(profiled) float64) {
		fmt.Fprintf(&b, "| %s |", name)
		for _, pr := range pairs {
			l, f := get(by[pr[0]]), get(by[pr[1]])
			fmt.Fprintf(&b, " %.0f | %.0f | %+.0f |", l, f, l-f)
		}
		b.WriteString("\n")
	}
	for _, bk := range cpuBuckets {
		row(bk.name, func(p profiled) float64 { return p.buckets[bk.name] })
	}
	row("**total**", func(p profiled) float64 { return p.total })
	return b.String()
}
