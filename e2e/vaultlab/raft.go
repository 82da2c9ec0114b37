package vaultlab

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
)

// raftNodeConfig is the HCL of one node with integrated storage. Besides its
// main listener, each node has a second one that trusts a TLS-terminating
// proxy on loopback to forward the client certificate it verified in a header,
// configured as docs/security.md ("Behind a TLS-terminating proxy") says: the headers are trusted only
// from the proxy's address, a request without them is refused, and the
// listener requests no client certificate of its own (so only the forwarded
// one reaches the plugin).
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
  x_forwarded_for_reject_not_present          = true
  tls_disable_client_certs                    = true
  x_forwarded_for_client_cert_header          = "X-Forwarded-Client-Cert"
  x_forwarded_for_client_cert_header_decoders = "URL,DER"
}
api_addr         = "https://127.0.0.1:%d"
cluster_addr     = "https://127.0.0.1:%d"
plugin_directory = %q
disable_mlock    = true
`

// StartRaftServer starts a single-node Vault with integrated storage (Raft),
// initialises and unseals it.
func StartRaftServer(t T) *Server {
	t.Helper()
	return StartRaftCluster(t, 1)[0]
}

// StartRaftCluster starts n Vault servers on loopback that form one Raft
// cluster through retry_join, initialises the first, unseals all, and waits
// until every node is a voter. The first node is active.
func StartRaftCluster(t T, n int) []*Server {
	t.Helper()
	root := t.TempDir()
	ca := NewCA(t, root, "listener")
	serverCert := ca.Issue(t, root, "server", []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}, x509.ExtKeyUsageServerAuth)
	type ports struct{ api, cluster, proxy int }
	all := make([]ports, n)
	for i := range all {
		all[i] = ports{FreePort(t), FreePort(t), FreePort(t)}
	}
	nodes := make([]*Server, n)
	for i, p := range all {
		dir := filepath.Join(root, fmt.Sprintf("node%d", i+1))
		s := &Server{
			t:         t,
			Name:      fmt.Sprintf("node%d", i+1),
			Dir:       dir,
			Addr:      fmt.Sprintf("https://127.0.0.1:%d", p.api),
			ProxyAddr: fmt.Sprintf("https://127.0.0.1:%d", p.proxy),
			CAFile:    ca.File,
			PluginDir: filepath.Join(dir, "plugins"),
			logFile:   filepath.Join(dir, "vault.log"),
		}
		if err := os.MkdirAll(filepath.Join(dir, "raft"), 0o700); err != nil {
			t.Fatal(err)
		}
		CopyPlugin(t, PluginBin, s.PluginDir, PluginName)
		var joins strings.Builder
		for j, q := range all {
			if j != i && n > 1 {
				fmt.Fprintf(&joins, "  retry_join {\n    leader_api_addr = \"https://127.0.0.1:%d\"\n    leader_ca_cert_file = %q\n  }\n", q.api, ca.File)
			}
		}
		config := fmt.Sprintf(raftNodeConfig, filepath.Join(dir, "raft"), s.Name, joins.String(),
			p.api, p.cluster, serverCert.CertFile, serverCert.KeyFile,
			p.proxy, serverCert.CertFile, serverCert.KeyFile,
			p.api, p.cluster, s.PluginDir)
		configFile := filepath.Join(dir, "vault.hcl")
		if err := os.WriteFile(configFile, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
		s.args = []string{"server", "-config=" + configFile}
		nodes[i] = s
	}
	for _, s := range nodes {
		s.Start()
	}
	for _, s := range nodes {
		s.WaitListening()
	}

	first := nodes[0]
	out, err := first.CLI(nil, "operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json")
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
		s.Token, s.unsealKey = init.Token, init.Keys[0]
	}
	first.Unseal()
	first.WaitActive()
	for _, s := range nodes[1:] {
		s.UnsealWhenJoined()
	}
	if n > 1 {
		WaitVoters(t, first, n)
	}
	for _, s := range nodes[1:] {
		s.WaitKnowsLeader()
	}
	return nodes
}

// pollEvery is the pause between two checks of a condition on a server.
const pollEvery = 200 * time.Millisecond

// waitFor checks ok until it holds or StartTimeout passes, then fails the
// test saying what did not happen, with the end of the server's log.
func (s *Server) waitFor(what string, ok func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(StartTimeout)
	for time.Now().Before(deadline) {
		if ok() {
			return
		}
		time.Sleep(pollEvery)
	}
	s.t.Fatalf("vault %s %s within %s:\n%s", s.Name, what, StartTimeout, s.LogTail())
}

// WaitListening waits until the listener answers at all (sealed is fine).
func (s *Server) WaitListening() {
	s.t.Helper()
	s.waitFor("did not listen", func() bool {
		out, err := s.CLI(nil, "status", "-format=json")
		return err == nil || strings.HasPrefix(out, "{")
	})
}

// Unseal gives the node its unseal key.
func (s *Server) Unseal() {
	s.t.Helper()
	if out, err := s.CLI(nil, "operator", "unseal", s.unsealKey); err != nil {
		s.t.Fatalf("unseal %s: %v\n%s", s.Name, err, out)
	}
}

// UnsealWhenJoined retries the unseal until the node has joined the cluster
// through retry_join (it cannot be unsealed before).
func (s *Server) UnsealWhenJoined() {
	s.t.Helper()
	s.waitFor("did not join and unseal", func() bool {
		out, err := s.CLI(nil, "operator", "unseal", s.unsealKey)
		return err == nil && strings.Contains(out, `"sealed": false`)
	})
}

// leader asks the server who leads; nil when it cannot answer.
func (s *Server) leader() *api.LeaderResponse {
	c, err := s.Client()
	if err != nil {
		return nil
	}
	l, err := c.Sys().Leader()
	if err != nil {
		return nil
	}
	return l
}

// WaitActive waits until this node is the active node.
func (s *Server) WaitActive() {
	s.t.Helper()
	s.waitFor("did not become active", func() bool {
		l := s.leader()
		return l != nil && l.IsSelf
	})
}

// WaitKnowsLeader waits until a standby knows the active node and forwards
// requests to it.
func (s *Server) WaitKnowsLeader() {
	s.t.Helper()
	s.waitFor("never found the active node", func() bool {
		l := s.leader()
		if l == nil || (!l.IsSelf && l.LeaderAddress == "") {
			return false
		}
		c, err := s.Client()
		if err != nil {
			return false
		}
		_, err = c.Sys().ListMounts()
		return err == nil
	})
}

// WaitVoters waits until the cluster lists n voters.
func WaitVoters(t T, s *Server, n int) {
	t.Helper()
	s.waitFor(fmt.Sprintf("did not see %d voters", n), func() bool {
		out, err := s.CLI(nil, "operator", "raft", "list-peers", "-format=json")
		return err == nil && strings.Count(out, `"voter": true`) == n
	})
}

// Restart stops the server and starts it again on the same storage, sealed,
// then unseals it and waits until it is active.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.Start()
	s.WaitListening()
	s.Unseal()
	s.WaitActive()
}
