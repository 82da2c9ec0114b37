package vaultlab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/vault/api"
)

// PluginName is the command name of the plugin binary; CatalogName is the
// name it is registered under, as the contract says.
const (
	PluginName  = "vault-plugin-secrets-meshauth"
	CatalogName = "meshauth"
)

// StartTimeout bounds how long a Vault server may take to answer.
const StartTimeout = 60 * time.Second

// VaultBin and PluginBin name the vault binary and the plugin binary; they
// default to $VAULT_BIN and $MESHAUTH_PLUGIN, which the Makefile sets.
var (
	VaultBin  = os.Getenv("VAULT_BIN")
	PluginBin = os.Getenv("MESHAUTH_PLUGIN")
)

// T is what the launcher needs of its caller: *testing.T and *testing.B
// satisfy it, and so does the load tool's own implementation.
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// Server is one real Vault process on loopback, started by a test.
type Server struct {
	t         T
	Name      string
	Dir       string
	Addr      string
	ProxyAddr string
	CAFile    string
	PluginDir string
	Token     string
	cmd       *exec.Cmd
	logFile   string
	args      []string
	exited    chan struct{}
	unsealKey string
	// pgid is the process group of the Vault process and its plugins.
	pgid int
}

// FreePort asks the kernel for a free loopback port.
func FreePort(t T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// freePortPair finds p with p and p+1 free: dev mode puts its cluster
// listener on the port after the API port.
func freePortPair(t T) int {
	t.Helper()
	for range 50 {
		p := FreePort(t)
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1)); err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no two adjacent free ports on loopback")
	return 0
}

// CopyPlugin puts the plugin binary into dir and returns its SHA-256.
func CopyPlugin(t T, src, dir, name string) string {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatalf("reading plugin %s: %v", src, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// StartDevServer starts `vault server -dev -dev-tls` on loopback with the
// plugin in its plugin directory (not yet registered).
func StartDevServer(t T) *Server {
	t.Helper()
	dir := t.TempDir()
	port := freePortPair(t)
	s := &Server{
		t:         t,
		Name:      "dev",
		Dir:       dir,
		Addr:      fmt.Sprintf("https://127.0.0.1:%d", port),
		CAFile:    filepath.Join(dir, "tls", "vault-ca.pem"),
		PluginDir: filepath.Join(dir, "plugins"),
		Token:     "root",
		logFile:   filepath.Join(dir, "vault.log"),
	}
	CopyPlugin(t, PluginBin, s.PluginDir, PluginName)
	if err := os.MkdirAll(filepath.Join(dir, "tls"), 0o700); err != nil {
		t.Fatal(err)
	}
	s.args = []string{
		"server", "-dev", "-dev-tls", "-dev-root-token-id=root",
		fmt.Sprintf("-dev-listen-address=127.0.0.1:%d", port),
		"-dev-tls-cert-dir=" + filepath.Join(dir, "tls"),
		"-dev-plugin-dir=" + s.PluginDir,
	}
	s.Start()
	s.WaitReady()
	return s
}

// Start runs the Vault process; Cleanup stops it.
func (s *Server) Start() {
	s.t.Helper()
	log, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command(VaultBin, s.args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "VAULT_LOG_LEVEL=debug")
	// Its own process group, which its plugins inherit: see procs.go.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	remember(s)
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("starting vault: %v", err)
	}
	s.cmd = cmd
	s.pgid = cmd.Process.Pid
	s.exited = make(chan struct{})
	go func() {
		_ = cmd.Wait()
		log.Close()
		close(s.exited)
	}()
	s.t.Cleanup(s.Stop)
}

// Stop ends the Vault process this test started, gently first so that it
// ends its plugins itself, then whatever is left of its process group, and
// fails the test if anything of it survives.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.exited:
	default:
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(20 * time.Second):
			s.t.Logf("vault %s did not stop within 20s of SIGTERM; killing it", s.Name)
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	}
	s.endAndCheck()
}

// Kill ends the Vault process and its plugins at once, as a crash of the
// machine would.
func (s *Server) Kill() {
	select {
	case <-s.exited:
	default:
		// Vault is alive and not yet reaped, so the group id is still ours.
		_ = syscall.Kill(-s.pgid, syscall.SIGKILL)
		<-s.exited
	}
	s.endAndCheck()
}

// endAndCheck ends the rest of the process group after Vault exited and
// fails the test when a process of it cannot be ended.
func (s *Server) endAndCheck() {
	if ended := s.endGroup(); len(ended) > 0 {
		s.t.Logf("vault %s left %d process(es) of its group running after it exited; ended them: %v", s.Name, len(ended), ended)
	}
	if left := s.groupLeft(); len(left) > 0 {
		s.t.Fatalf("vault %s: processes it started are still running after Stop: %v", s.Name, left)
	}
}

// WaitReady polls until Vault answers sys/health, or fails with its log.
func (s *Server) WaitReady() {
	s.t.Helper()
	s.waitFor("did not answer", func() bool {
		select {
		case <-s.exited:
			s.t.Fatalf("vault %s exited during start-up:\n%s", s.Name, s.LogTail())
		default:
		}
		if _, err := os.Stat(s.CAFile); err != nil {
			return false
		}
		c, err := s.Client()
		if err != nil {
			return false
		}
		_, err = c.Sys().Health()
		return err == nil
	})
}

// LogTail returns the end of the server log, for failure messages.
func (s *Server) LogTail() string {
	data, _ := os.ReadFile(s.logFile)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

// Client returns an API client with the root token and no client certificate.
func (s *Server) Client() (*api.Client, error) {
	return s.ClientWith(s.Token, nil)
}

// MustClient is client for tests.
func (s *Server) MustClient() *api.Client {
	s.t.Helper()
	c, err := s.Client()
	if err != nil {
		s.t.Fatal(err)
	}
	return c
}

// ClientWith returns an API client with a token and, optionally, a client
// certificate it presents on the TLS connection.
func (s *Server) ClientWith(token string, cert *Cert) (*api.Client, error) {
	cfg := api.DefaultConfig()
	cfg.Address = s.Addr
	cfg.MaxRetries = 0
	tlsCfg := &api.TLSConfig{CACert: s.CAFile}
	if cert != nil {
		tlsCfg.ClientCert, tlsCfg.ClientKey = cert.CertFile, cert.KeyFile
	}
	if err := cfg.ConfigureTLS(tlsCfg); err != nil {
		return nil, err
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	c.SetToken(token)
	return c, nil
}

// CLI runs the vault CLI against this server, with extra environment.
func (s *Server) CLI(env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, VaultBin, args...)
	cmd.Env = append(os.Environ(), "VAULT_ADDR="+s.Addr, "VAULT_CACERT="+s.CAFile, "VAULT_TOKEN="+s.Token, "VAULT_FORMAT=json")
	cmd.Env = append(cmd.Env, env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// MustCLI runs the CLI and fails t on error.
func (s *Server) MustCLI(t T, args ...string) string {
	t.Helper()
	out, err := s.CLI(nil, args...)
	if err != nil {
		t.Fatalf("vault %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// RegisterPlugin registers the plugin binary in the catalog by SHA-256 and
// mounts it at path.
func (s *Server) RegisterPlugin(path string) {
	s.t.Helper()
	data, err := os.ReadFile(filepath.Join(s.PluginDir, PluginName))
	if err != nil {
		s.t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	s.MustCLI(s.t, "plugin", "register", "-sha256="+hex.EncodeToString(sum[:]), "-command="+PluginName, "secret", CatalogName)
	s.MustCLI(s.t, "secrets", "enable", "-path="+path, CatalogName)
}

// RawGet fetches a URL of this server with no Vault token, as an offline
// verifier would, following redirects.
func (s *Server) RawGet(path string) (*http.Response, []byte) {
	s.t.Helper()
	c, err := s.ClientWith("", nil)
	if err != nil {
		s.t.Fatal(err)
	}
	// Follow redirects as any HTTP client of a JWKS does: a standby that
	// cannot forward yet answers 307 to the active node.
	hc := *c.CloneConfig().HttpClient
	hc.CheckRedirect = nil
	resp, err := hc.Get(s.Addr + path)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// PID is the Vault server's process id.
func (s *Server) PID() int {
	return s.cmd.Process.Pid
}

// PluginPIDs lists the plugin processes of this server: processes whose
// command line runs the plugin binary from this server's own plugin
// directory, so only processes this test started are ever touched.
func (s *Server) PluginPIDs() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.HasPrefix(cmdline, []byte(filepath.Join(s.PluginDir, PluginName))) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Write is a Logical().Write that fails the test on error.
func Write(t T, c *api.Client, path string, data map[string]any) *api.Secret {
	t.Helper()
	sec, err := c.Logical().Write(path, data)
	if err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return sec
}

// Read is a Logical().Read that fails the test on error.
func Read(t T, c *api.Client, path string) *api.Secret {
	t.Helper()
	sec, err := c.Logical().Read(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return sec
}

// JSONData decodes the data object of a CLI -format=json answer.
func JSONData(t T, out string) map[string]any {
	t.Helper()
	var sec struct {
		Data map[string]any `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &sec); err != nil {
		t.Fatalf("decoding CLI output: %v\n%s", err, out)
	}
	return sec.Data
}
