package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
)

// TestReadmeWalkthrough runs the README as a newcomer would: `make dev`
// (scripts/dev.sh) on a port other than 8200, then, in another shell, the
// sh blocks of the README's "Walkthrough" section and then those of its
// "Worked example" section, exactly as written there: the commands are
// read from the README at test time, not copied into this test. It runs in
// a copy of the working tree, so a `make dev` of the developer's own (its
// .dev folder, its bin/) is left alone.
func TestReadmeWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin and the examples, and runs a dev Vault")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(t.TempDir(), "clone")
	copyTree(t, root, work)
	readme, err := os.ReadFile(filepath.Join(work, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	walkthrough := shBlocks(t, string(readme), "## Walkthrough")
	example := shBlocks(t, string(readme), "## Worked example")

	port := devPort(t)
	env := cleanEnv(
		"MESHAUTH_DEV_PORT="+strconv.Itoa(port),
		"VAULT_BIN="+vaultlab.VaultBin,
	)
	// make dev, in its own process group, as a developer's first shell.
	dev := exec.Command("bash", "scripts/dev.sh")
	dev.Dir, dev.Env = work, env
	devLog, err := os.Create(filepath.Join(t.TempDir(), "make-dev.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer devLog.Close()
	dev.Stdout, dev.Stderr = devLog, devLog
	dev.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	devDone := make(chan error, 1)
	go func() { devDone <- dev.Wait() }()
	defer endGroup(t, dev.Process.Pid, devDone, "make dev")

	// .dev/env is written last: once it exists, Vault is ready.
	envFile := filepath.Join(work, ".dev", "env")
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if _, err := os.Stat(envFile); err == nil {
			break
		}
		select {
		case err := <-devDone:
			devDone <- err
			t.Fatalf("make dev ended (%v) before it was ready:\n%s", err, readFile(devLog.Name()))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("make dev was not ready after 3 minutes:\n%s", readFile(devLog.Name()))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if b, _ := os.ReadFile(envFile); !strings.Contains(string(b), fmt.Sprintf("VAULT_ADDR=https://127.0.0.1:%d", port)) {
		t.Fatalf(".dev/env does not name port %d:\n%s", port, b)
	}

	// The second shell: the walkthrough, then the worked example.
	out := runShell(t, work, env, walkthrough)
	for _, want := range []string{
		`meshauth: login refused for service "orders": no client certificate came on the TLS connection to Vault`,
		"refused, as expected",
		"token_revoked",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the walkthrough's output lacks %q:\n%s", want, out)
		}
	}
	out = runShell(t, work, env, example)
	if n := strings.Count(out, `payments answered 200 OK: {"caller":"orders","status":"charged"}`); n != 3 {
		t.Errorf("the worked example answered 200 %d times, want 3:\n%s", n, out)
	}
}

// shBlocks returns the ```sh blocks of the README section under heading
// (up to the next "## " heading), joined in order.
func shBlocks(t *testing.T, readme, heading string) string {
	t.Helper()
	var b strings.Builder
	in, block, found := false, false, false
	sc := bufio.NewScanner(strings.NewReader(readme))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case !block && strings.HasPrefix(line, "## "):
			in = line == heading
			found = found || in
		case in && !block && line == "```sh":
			block = true
		case block && line == "```":
			block = false
			b.WriteString("\n")
		case in && block:
			b.WriteString(line + "\n")
		}
	}
	if !found || b.Len() == 0 {
		t.Fatalf("the README has no sh blocks under %q", heading)
	}
	return b.String()
}

// runShell runs script with bash -euo pipefail in dir, in a process group
// of its own that is ended afterwards (a background service the script
// leaves behind included), and returns its combined output.
func runShell(t *testing.T, dir string, env []string, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Dir, cmd.Env = dir, env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	err := <-done
	done <- err
	endGroup(t, cmd.Process.Pid, done, "the README's commands")
	if err != nil {
		t.Fatalf("the README's commands failed (%v):\n%s\nscript:\n%s", err, out.String(), script)
	}
	return out.String()
}

// endGroup ends the process group pgid (SIGTERM, then SIGKILL after 15s)
// and fails the test if any of its processes is left.
func endGroup(t *testing.T, pgid int, done chan error, what string) {
	t.Helper()
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case err := <-done:
		_ = err // ended by the signal: its exit status says nothing more
	case <-time.After(15 * time.Second):
		t.Errorf("%s did not end within 15s of SIGTERM", what)
	}
	for range 100 {
		if len(groupMembers(pgid)) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	t.Errorf("%s left processes running after SIGTERM: %v (killed)", what, groupMembers(pgid))
}

// groupMembers lists the pids whose process group is pgid.
func groupMembers(pgid int) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := syscall.Getpgid(pid); err == nil && g == pgid {
			if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Contains(string(stat), ") Z ") {
				continue // a zombie waits for its parent; it runs nothing
			}
			pids = append(pids, pid)
		}
	}
	return pids
}

// devPort finds p with p and p+1 free on loopback, other than 8200: a dev
// Vault puts its cluster listener on the port after the API's.
func devPort(t *testing.T) int {
	t.Helper()
	for range 50 {
		p := vaultlab.FreePort(t)
		if p == 8200 || p == 8199 {
			continue
		}
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1)); err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no two adjacent free ports on loopback")
	return 0
}

// cleanEnv is this process's environment without Vault's and meshauth's
// variables (a newcomer's shell has none), plus extra.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "VAULT_") || strings.HasPrefix(kv, "MESHAUTH_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// copyTree copies the working tree at src to dst, without what git and
// the build leave behind (.git, .dev, bin, .tools).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		switch rel {
		case ".git", ".dev", "bin", ".tools":
			// In a git worktree .git is a file: never copied, or the
			// go command would read the copy's VCS state from it.
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(filepath.Join(dst, rel), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, info.Mode().Perm())
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
}

func readFile(name string) string {
	b, _ := os.ReadFile(name)
	return string(b)
}
