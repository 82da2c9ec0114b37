package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"

	"github.com/hashicorp/go-hclog"
)

// cpuProfileEnv names the environment variable that turns on CPU profiling
// of the plugin process. It is off unless an operator registers the plugin
// with it (vault plugin register -env=MESHAUTH_CPU_PROFILE=<dir> ...): a
// profile costs a few percent of CPU, and it is for measuring the plugin
// under real Vault load, where `go test -cpuprofile` cannot reach.
const cpuProfileEnv = "MESHAUTH_CPU_PROFILE"

// startCPUProfile starts profiling when cpuProfileEnv names a directory and
// returns the function that stops the profile and closes its file; it
// returns a no-op when profiling is off or cannot start. The profile covers
// the whole life of the process and is complete once the plugin stops
// serving (vault plugin reload, unmount, Vault shutdown); a plugin killed
// outright leaves a truncated file. Each process writes its own file,
// meshauth-cpu-<pid>.pprof, so a reload never overwrites the last profile.
func startCPUProfile(logger hclog.Logger) func() {
	dir := os.Getenv(cpuProfileEnv)
	if dir == "" {
		return func() {}
	}
	path := filepath.Join(dir, fmt.Sprintf("meshauth-cpu-%d.pprof", os.Getpid()))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600) //nolint:gosec // a directory the operator named for this purpose
	if err != nil {
		logger.Error("CPU profiling requested but the profile file cannot be created; serving without it", "env", cpuProfileEnv, "error", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		logger.Error("CPU profiling requested but could not start; serving without it", "env", cpuProfileEnv, "error", err)
		return func() {}
	}
	logger.Warn("CPU profiling is on; the profile is written when the plugin stops", "env", cpuProfileEnv, "path", path)
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			logger.Error("writing the CPU profile", "path", path, "error", err)
		}
	}
}
