package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
)

// TestCPUProfileSwitch: registered with -env=MESHAUTH_CPU_PROFILE=<dir>,
// the plugin process Vault starts profiles itself and leaves a complete
// profile when a reload stops it; registered without it, a process writes
// nothing. This is the switch the load tool's profile phase uses.
func TestCPUProfileSwitch(t *testing.T) {
	s := vaultlab.StartDevServer(t)
	s.RegisterPlugin("meshauth")
	dir := t.TempDir()
	data, err := os.ReadFile(filepath.Join(s.PluginDir, vaultlab.PluginName))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	register := func(extra ...string) {
		args := append([]string{"plugin", "register", "-sha256=" + hex.EncodeToString(sum[:]), "-command=" + vaultlab.PluginName}, extra...)
		s.MustCLI(t, append(args, "secret", vaultlab.CatalogName)...)
	}
	reload := func() { s.MustCLI(t, "plugin", "reload", "-plugin="+vaultlab.CatalogName) }
	served := func() int {
		s.MustCLI(t, "read", "meshauth/config")
		pids := s.PluginPIDs()
		if len(pids) != 1 {
			t.Fatalf("want one plugin process, found %v", pids)
		}
		return pids[0]
	}
	gone := func(pid int) {
		for range 100 {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("plugin process %d still runs after a reload", pid)
	}

	register("-env=MESHAUTH_CPU_PROFILE=" + dir)
	reload()
	pid := served()
	reload()
	gone(pid)
	profile := filepath.Join(dir, fmt.Sprintf("meshauth-cpu-%d.pprof", pid))
	info, err := os.Stat(profile)
	if err != nil {
		t.Fatalf("no profile from the profiling process: %v (directory holds %v)", err, ls(dir))
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("profile mode %v, want 0600", info.Mode().Perm())
	}
	// Complete: go tool pprof reads it.
	if out, err := exec.Command("go", "tool", "pprof", "-top", profile).CombinedOutput(); err != nil {
		t.Fatalf("go tool pprof cannot read the profile: %v\n%s", err, out)
	}

	register()
	reload()
	before := ls(dir)
	pid = served()
	reload()
	gone(pid)
	if after := ls(dir); len(after) != len(before) {
		t.Fatalf("registered without MESHAUTH_CPU_PROFILE, a process still wrote a profile: %v", after)
	}
}

func ls(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}
