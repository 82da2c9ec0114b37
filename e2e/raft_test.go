package e2e

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// raftNodeConfig is the HCL of one node with integrated storage. Besides its
// main listener, each node has a second one that trusts a TLS-terminating
// proxy on loopback to forward the client certificate it verified in a header.
const raftNodeConfig = `
storage "raft" {
  path                   = %q
  node_id                = %q
  performance_multiplier = 1
%s}
listener "tcp" {
  address         = "127.0.0.1:%d"
  cluster_address = "127.0.0.1:%d"
  tls_cert_file   = %q
  tls_key_file    = %q
}
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
`

// startRaftServer starts a single-node Vault with integrated storage (Raft),
// initialises and unseals it.
func startRaftServer(t testing.TB) *vaultServer {
	t.Helper()
	return startRaftCluster(t, 1)[0]
}

// startRaftCluster starts n Vault servers on loopback that form one Raft
// cluster through retry_join, initialises the first, unseals all, and waits
// until every node is a voter. The first node is active.
func startRaftCluster(t testing.TB, n int) []*vaultServer {
	t.Helper()
	root := t.TempDir()
	ca := newCA(t, root, "listener")
	serverCert := ca.issue(t, root, "server", []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}, x509.ExtKeyUsageServerAuth)
	type ports struct{ api, cluster, proxy int }
	all := make([]ports, n)
	for i := range all {
		all[i] = ports{freePort(t), freePort(t), freePort(t)}
	}
	nodes := make([]*vaultServer, n)
	for i, p := range all {
		dir := filepath.Join(root, fmt.Sprintf("node%d", i+1))
		s := &vaultServer{
			t:         t,
			name:      fmt.Sprintf("node%d", i+1),
			dir:       dir,
			addr:      fmt.Sprintf("https://127.0.0.1:%d", p.api),
			proxyAddr: fmt.Sprintf("https://127.0.0.1:%d", p.proxy),
			caFile:    ca.file,
			pluginDir: filepath.Join(dir, "plugins"),
			logFile:   filepath.Join(dir, "vault.log"),
		}
		if err := os.MkdirAll(filepath.Join(dir, "raft"), 0o700); err != nil {
			t.Fatal(err)
		}
		copyPlugin(t, pluginBin, s.pluginDir, pluginName)
		var joins strings.Builder
		for j, q := range all {
			if j != i && n > 1 {
				fmt.Fprintf(&joins, "  retry_join {\n    leader_api_addr = \"https://127.0.0.1:%d\"\n    leader_ca_cert_file = %q\n  }\n", q.api, ca.file)
			}
		}
		config := fmt.Sprintf(raftNodeConfig, filepath.Join(dir, "raft"), s.name, joins.String(),
			p.api, p.cluster, serverCert.certFile, serverCert.keyFile,
			p.proxy, serverCert.certFile, serverCert.keyFile,
			p.api, p.cluster, s.pluginDir)
		configFile := filepath.Join(dir, "vault.hcl")
		if err := os.WriteFile(configFile, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
		s.args = []string{"server", "-config=" + configFile}
		nodes[i] = s
	}
	for _, s := range nodes {
		s.start()
	}
	for _, s := range nodes {
		s.waitListening()
	}

	first := nodes[0]
	out, err := first.cli(nil, "operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json")
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
	for _, s := range nodes {
		s.token, s.unsealKey = init.Token, init.Keys[0]
	}
	first.unseal()
	first.waitActive()
	for _, s := range nodes[1:] {
		s.unsealWhenJoined()
	}
	if n > 1 {
		waitVoters(t, first, n)
	}
	for _, s := range nodes[1:] {
		s.waitKnowsLeader()
	}
	return nodes
}

// waitListening waits until the listener answers at all (sealed is fine).
func (s *vaultServer) waitListening() {
	s.t.Helper()
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		if out, err := s.cli(nil, "status", "-format=json"); err == nil || strings.HasPrefix(out, "{") {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.t.Fatalf("vault %s did not listen within %s:\n%s", s.name, startTimeout, s.logTail())
}

// unseal gives the node its unseal key.
func (s *vaultServer) unseal() {
	s.t.Helper()
	if out, err := s.cli(nil, "operator", "unseal", s.unsealKey); err != nil {
		s.t.Fatalf("unseal %s: %v\n%s", s.name, err, out)
	}
}

// unsealWhenJoined retries the unseal until the node has joined the cluster
// through retry_join (it cannot be unsealed before).
func (s *vaultServer) unsealWhenJoined() {
	s.t.Helper()
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		out, err := s.cli(nil, "operator", "unseal", s.unsealKey)
		if err == nil && strings.Contains(out, `"sealed": false`) {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	s.t.Fatalf("vault %s did not join and unseal:\n%s", s.name, s.logTail())
}

// waitActive waits until this node is the active node.
func (s *vaultServer) waitActive() {
	s.t.Helper()
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

// waitKnowsLeader waits until a standby knows the active node, so that it
// can forward requests.
func (s *vaultServer) waitKnowsLeader() {
	s.t.Helper()
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		if c, err := s.client(); err == nil {
			if l, err := c.Sys().Leader(); err == nil && (l.IsSelf || l.LeaderAddress != "") {
				if _, err := c.Sys().ListMounts(); err == nil {
					return
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.t.Fatalf("vault %s never found the active node:\n%s", s.name, s.logTail())
}

// waitVoters waits until the cluster lists n voters.
func waitVoters(t testing.TB, s *vaultServer, n int) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		out, err := s.cli(nil, "operator", "raft", "list-peers", "-format=json")
		if err == nil && strings.Count(out, `"voter": true`) == n {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("the cluster did not reach %d voters", n)
}

// restart stops the server and starts it again on the same storage, sealed,
// then unseals it and waits until it is active.
func (s *vaultServer) restart() {
	s.t.Helper()
	s.stop()
	s.start()
	s.waitListening()
	s.unseal()
	s.waitActive()
}
