package e2e

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
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// pluginName is the command name of the plugin binary; catalogName is the
// name it is registered under, as the contract says.
const (
	pluginName  = "vault-plugin-secrets-meshauth"
	catalogName = "meshauth"
)

// startTimeout bounds how long a Vault server may take to answer.
const startTimeout = 60 * time.Second

// vaultBin and pluginBin come from the Makefile (make test-e2e).
var (
	vaultBin  = os.Getenv("VAULT_BIN")
	pluginBin = os.Getenv("MESHAUTH_PLUGIN")
)

func TestMain(m *testing.M) {
	if vaultBin == "" || pluginBin == "" {
		fmt.Fprintln(os.Stderr, "e2e: VAULT_BIN and MESHAUTH_PLUGIN must name a vault binary and the plugin binary; run `make test-e2e`, which builds both")
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// vaultServer is one real Vault process on loopback, started by a test.
type vaultServer struct {
	t         testing.TB
	name      string
	dir       string
	addr      string
	proxyAddr string
	caFile    string
	pluginDir string
	token     string
	cmd       *exec.Cmd
	logFile   string
	args      []string
	exited    chan struct{}
	unsealKey string
}

// freePort asks the kernel for a free loopback port.
func freePort(t testing.TB) int {
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
func freePortPair(t testing.TB) int {
	t.Helper()
	for range 50 {
		p := freePort(t)
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1)); err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no two adjacent free ports on loopback")
	return 0
}

// copyPlugin puts the plugin binary into dir and returns its SHA-256.
func copyPlugin(t testing.TB, src, dir, name string) string {
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

// startDevServer starts `vault server -dev -dev-tls` on loopback with the
// plugin in its plugin directory (not yet registered).
func startDevServer(t testing.TB) *vaultServer {
	t.Helper()
	dir := t.TempDir()
	port := freePortPair(t)
	s := &vaultServer{
		t:         t,
		name:      "dev",
		dir:       dir,
		addr:      fmt.Sprintf("https://127.0.0.1:%d", port),
		caFile:    filepath.Join(dir, "tls", "vault-ca.pem"),
		pluginDir: filepath.Join(dir, "plugins"),
		token:     "root",
		logFile:   filepath.Join(dir, "vault.log"),
	}
	copyPlugin(t, pluginBin, s.pluginDir, pluginName)
	if err := os.MkdirAll(filepath.Join(dir, "tls"), 0o700); err != nil {
		t.Fatal(err)
	}
	s.args = []string{
		"server", "-dev", "-dev-tls", "-dev-root-token-id=root",
		fmt.Sprintf("-dev-listen-address=127.0.0.1:%d", port),
		"-dev-tls-cert-dir=" + filepath.Join(dir, "tls"),
		"-dev-plugin-dir=" + s.pluginDir,
	}
	s.start()
	s.waitReady()
	return s
}

// start runs the Vault process; Cleanup stops it.
func (s *vaultServer) start() {
	s.t.Helper()
	log, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command(vaultBin, s.args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "VAULT_LOG_LEVEL=debug")
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("starting vault: %v", err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func() {
		_ = cmd.Wait()
		log.Close()
		close(s.exited)
	}()
	s.t.Cleanup(s.stop)
}

// stop ends the Vault process this test started, gently first.
func (s *vaultServer) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// waitReady polls until Vault answers sys/health, or fails with its log.
func (s *vaultServer) waitReady() {
	s.t.Helper()
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			s.t.Fatalf("vault %s exited during start-up:\n%s", s.name, s.logTail())
		default:
		}
		if _, err := os.Stat(s.caFile); err == nil {
			if c, err := s.client(); err == nil {
				if _, err := c.Sys().Health(); err == nil {
					return
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.t.Fatalf("vault %s did not answer within %s:\n%s", s.name, startTimeout, s.logTail())
}

// logTail returns the end of the server log, for failure messages.
func (s *vaultServer) logTail() string {
	data, _ := os.ReadFile(s.logFile)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

// client returns an API client with the root token and no client certificate.
func (s *vaultServer) client() (*api.Client, error) {
	return s.clientWith(s.token, nil)
}

// mustClient is client for tests.
func (s *vaultServer) mustClient() *api.Client {
	s.t.Helper()
	c, err := s.client()
	if err != nil {
		s.t.Fatal(err)
	}
	return c
}

// clientWith returns an API client with a token and, optionally, a client
// certificate it presents on the TLS connection.
func (s *vaultServer) clientWith(token string, cert *clientCert) (*api.Client, error) {
	cfg := api.DefaultConfig()
	cfg.Address = s.addr
	cfg.MaxRetries = 0
	tlsCfg := &api.TLSConfig{CACert: s.caFile}
	if cert != nil {
		tlsCfg.ClientCert, tlsCfg.ClientKey = cert.certFile, cert.keyFile
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

// cli runs the vault CLI against this server, with extra environment.
func (s *vaultServer) cli(env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, vaultBin, args...)
	cmd.Env = append(os.Environ(), "VAULT_ADDR="+s.addr, "VAULT_CACERT="+s.caFile, "VAULT_TOKEN="+s.token, "VAULT_FORMAT=json")
	cmd.Env = append(cmd.Env, env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// mustCLI runs the CLI and fails t on error.
func (s *vaultServer) mustCLI(t testing.TB, args ...string) string {
	t.Helper()
	out, err := s.cli(nil, args...)
	if err != nil {
		t.Fatalf("vault %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// registerPlugin registers the plugin binary in the catalog by SHA-256 and
// mounts it at path.
func (s *vaultServer) registerPlugin(path string) {
	s.t.Helper()
	data, err := os.ReadFile(filepath.Join(s.pluginDir, pluginName))
	if err != nil {
		s.t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	s.mustCLI(s.t, "plugin", "register", "-sha256="+hex.EncodeToString(sum[:]), "-command="+pluginName, "secret", catalogName)
	s.mustCLI(s.t, "secrets", "enable", "-path="+path, catalogName)
}

// rawGet fetches a URL of this server with no Vault token, as an offline
// verifier would, following redirects.
func (s *vaultServer) rawGet(path string) (*http.Response, []byte) {
	s.t.Helper()
	c, err := s.clientWith("", nil)
	if err != nil {
		s.t.Fatal(err)
	}
	// Follow redirects as any HTTP client of a JWKS does: a standby that
	// cannot forward yet answers 307 to the active node.
	hc := *c.CloneConfig().HttpClient
	hc.CheckRedirect = nil
	resp, err := hc.Get(s.addr + path)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// pluginPIDs lists the plugin processes of this server: processes whose
// command line runs the plugin binary from this server's own plugin
// directory, so only processes this test started are ever touched.
func (s *vaultServer) pluginPIDs() []int {
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
		if bytes.HasPrefix(cmdline, []byte(filepath.Join(s.pluginDir, pluginName))) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// write is a Logical().Write that fails the test on error.
func write(t testing.TB, c *api.Client, path string, data map[string]any) *api.Secret {
	t.Helper()
	sec, err := c.Logical().Write(path, data)
	if err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return sec
}

// read is a Logical().Read that fails the test on error.
func read(t testing.TB, c *api.Client, path string) *api.Secret {
	t.Helper()
	sec, err := c.Logical().Read(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return sec
}

// jsonData decodes the data object of a CLI -format=json answer.
func jsonData(t testing.TB, out string) map[string]any {
	t.Helper()
	var sec struct {
		Data map[string]any `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &sec); err != nil {
		t.Fatalf("decoding CLI output: %v\n%s", err, out)
	}
	return sec.Data
}
