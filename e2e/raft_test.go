package e2e

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// startRaftServer starts a single-node Vault with integrated storage (Raft)
// and a TLS listener, initialises and unseals it, and returns it.
func startRaftServer(t testing.TB) *vaultServer {
	t.Helper()
	dir := t.TempDir()
	port, clusterPort, proxyPort := freePort(t), freePort(t), freePort(t)
	ca := newCA(t, dir, "listener")
	serverCert := ca.issue(t, dir, "server", []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}, x509.ExtKeyUsageServerAuth)
	s := &vaultServer{
		t:         t,
		name:      "raft",
		dir:       dir,
		addr:      fmt.Sprintf("https://127.0.0.1:%d", port),
		proxyAddr: fmt.Sprintf("https://127.0.0.1:%d", proxyPort),
		caFile:    ca.file,
		pluginDir: filepath.Join(dir, "plugins"),
		logFile:   filepath.Join(dir, "vault.log"),
	}
	copyPlugin(t, pluginBin, s.pluginDir, pluginName)
	if err := os.MkdirAll(filepath.Join(dir, "raft"), 0o700); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`
storage "raft" {
  path    = %q
  node_id = "node1"
}
listener "tcp" {
  address         = "127.0.0.1:%d"
  cluster_address = "127.0.0.1:%d"
  tls_cert_file   = %q
  tls_key_file    = %q
}
# A second listener that trusts a TLS-terminating proxy on loopback to
# forward the client certificate it verified in a header.
listener "tcp" {
  address                                     = "127.0.0.1:%d"
  tls_cert_file                               = %q
  tls_key_file                                = %q
  x_forwarded_for_authorized_addrs            = "127.0.0.1/32"
  x_forwarded_for_reject_not_authorized       = true
  x_forwarded_for_client_cert_header          = "X-Forwarded-Client-Cert"
  x_forwarded_for_client_cert_header_decoders = "URL,DER"
}
api_addr         = "https://127.0.0.1:%d"
cluster_addr     = "https://127.0.0.1:%d"
plugin_directory = %q
disable_mlock    = true
`, filepath.Join(dir, "raft"), port, clusterPort, serverCert.certFile, serverCert.keyFile,
		proxyPort, serverCert.certFile, serverCert.keyFile, port, clusterPort, s.pluginDir)
	configFile := filepath.Join(dir, "vault.hcl")
	if err := os.WriteFile(configFile, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	s.args = []string{"server", "-config=" + configFile}
	s.start()
	s.waitListening()

	out, err := s.cli(nil, "operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json")
	if err != nil {
		t.Fatalf("operator init: %v\n%s", err, out)
	}
	var init struct {
		Keys  []string `json:"unseal_keys_b64"`
		Token string   `json:"root_token"`
	}
	if err := json.Unmarshal([]byte(out), &init); err != nil {
		t.Fatalf("operator init output: %v\n%s", err, out)
	}
	s.token = init.Token
	s.unsealKey = init.Keys[0]
	s.unseal()
	return s
}

// waitListening waits until the listener answers at all (sealed is fine).
func (s *vaultServer) waitListening() {
	s.t.Helper()
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		if out, err := s.cli(nil, "status", "-format=json"); err == nil || len(out) > 0 && out[0] == '{' {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.t.Fatalf("vault %s did not listen within %s:\n%s", s.name, startTimeout, s.logTail())
}

// unseal unseals the server and waits until it is the active node.
func (s *vaultServer) unseal() {
	s.t.Helper()
	if out, err := s.cli(nil, "operator", "unseal", s.unsealKey); err != nil {
		s.t.Fatalf("unseal: %v\n%s", err, out)
	}
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		if c, err := s.client(); err == nil {
			if l, err := c.Sys().Leader(); err == nil && l.IsSelf {
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.t.Fatalf("vault %s did not become active:\n%s", s.name, s.logTail())
}

// restart stops the server and starts it again on the same storage, sealed,
// then unseals it.
func (s *vaultServer) restart() {
	s.t.Helper()
	s.stop()
	s.start()
	s.waitListening()
	s.unseal()
}
