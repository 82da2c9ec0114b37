package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"

	"github.com/hashicorp/vault/api"
)

// Bounds of the failover load: a few workers, a hard stop, short timeouts.
const (
	loadWorkers      = 4
	loadMaxDuration  = 60 * time.Second
	loadRequestLimit = 5 * time.Second
)

// cluster is a three-node Raft cluster with meshauth mounted at meshauth/.
type cluster struct {
	t      *testing.T
	nodes  []*vaultlab.Server
	ca     *vaultlab.CA
	orders *vaultlab.Cert
}

// clientFor returns an API client for node i, presenting cert if given.
func (c *cluster) clientFor(i int, cert *vaultlab.Cert) *api.Client {
	c.t.Helper()
	cl, err := c.nodes[i].ClientWith(c.nodes[i].Token, cert)
	if err != nil {
		c.t.Fatal(err)
	}
	return cl
}

// sameJWKS fails unless every live node serves byte-identical jwks, SPIFFE
// bundle and revocations feed, with status 200.
func (c *cluster) sameJWKS(t *testing.T, stage string, live ...int) {
	t.Helper()
	for _, path := range []string{"jwks", "spiffe/bundle", "revocations"} {
		var first []byte
		for _, i := range live {
			resp, body := c.nodes[i].RawGet("/v1/meshauth/" + path)
			if resp.StatusCode != 200 {
				t.Fatalf("%s: node%d answers %s with %d: %s", stage, i+1, path, resp.StatusCode, body)
			}
			if first == nil {
				first = body
				continue
			}
			if !bytes.Equal(first, body) {
				t.Fatalf("%s: node%d serves a different %s:\n%s\nvs\n%s", stage, i+1, path, body, first)
			}
		}
	}
}

// activeIndex returns the index of the active node among live ones.
func (c *cluster) activeIndex(live ...int) int {
	c.t.Helper()
	deadline := time.Now().Add(vaultlab.StartTimeout)
	for time.Now().Before(deadline) {
		for _, i := range live {
			if l, err := c.clientFor(i, nil).Sys().Leader(); err == nil && l.IsSelf {
				return i
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.t.Fatal("no active node")
	return -1
}

func TestHACluster(t *testing.T) {
	nodes := vaultlab.StartRaftCluster(t, 3)
	c := &cluster{t: t, nodes: nodes}
	c.ca = vaultlab.NewCA(t, nodes[0].Dir, "mesh")
	c.orders = c.ca.Issue(t, nodes[0].Dir, "orders", []string{"orders.mesh"}, nil, x509.ExtKeyUsageClientAuth)
	// Every node has the same binary in its plugin_directory; the catalog
	// entry and the mount are replicated.
	nodes[0].RegisterPlugin("meshauth")
	all := []int{0, 1, 2}
	c.sameJWKS(t, "after mount", all...)

	// Register through a standby, log in through another, verify through the active.
	key := vaultlab.Write(t, c.clientFor(1, nil), "meshauth/services/orders", map[string]any{
		"ca_chain": c.ca.PEM, "hostnames": "orders.mesh",
	}).Data["api_key"].(string)
	login := func(i int) (string, error) {
		sec, err := c.clientFor(i, c.orders).Logical().Write("meshauth/login/orders", map[string]any{"api_key": key})
		if err != nil {
			return "", err
		}
		return sec.Data["token"].(string), nil
	}
	verify := func(i int, tok string) (bool, string) {
		sec := vaultlab.Write(t, c.clientFor(i, nil), "meshauth/verify", map[string]any{"token": tok})
		reason, _ := sec.Data["reason"].(string)
		return sec.Data["valid"].(bool), reason
	}
	tokens := map[int]string{}
	for _, i := range all {
		tok, err := login(i)
		if err != nil {
			t.Fatalf("login through node%d: %v", i+1, err)
		}
		if cnf := decodeClaims(t, tok)["cnf"].(map[string]any); cnf["x5t#S256"] != c.orders.X5t() {
			t.Fatalf("login through node%d lost the client certificate: %v", i+1, cnf)
		}
		tokens[i] = tok
	}
	for _, i := range all {
		for j, tok := range tokens {
			if ok, reason := verify(i, tok); !ok {
				t.Fatalf("token from node%d fails verify on node%d: %s", j+1, i+1, reason)
			}
		}
	}
	c.sameJWKS(t, "after logins", all...)

	vaultlab.Write(t, c.clientFor(1, nil), "meshauth/keys/rotate", map[string]any{"force": true})
	c.sameJWKS(t, "after rotation through a standby", all...)
	kid := vaultlab.Read(t, c.clientFor(2, nil), "meshauth/keys").Data["current_kid"]
	for _, i := range all {
		if got := vaultlab.Read(t, c.clientFor(i, nil), "meshauth/keys").Data["current_kid"]; got != kid {
			t.Fatalf("node%d reports current key %v, node3 %v", i+1, got, kid)
		}
	}
	revoked := tokens[0]
	vaultlab.Write(t, c.clientFor(2, nil), "meshauth/revoke", map[string]any{"token": revoked})
	for _, i := range all {
		if ok, reason := verify(i, revoked); ok || reason != "token_revoked" {
			t.Fatalf("node%d after revoke: %v %s", i+1, ok, reason)
		}
	}
	c.sameJWKS(t, "after revoke", all...)

	// The key lifecycle through a standby: an early rotation is refused with
	// its time, and an emergency removal (of the next key, which signed
	// nothing) reaches every node's jwks and feed at once.
	if _, err := c.clientFor(1, nil).Logical().Write("meshauth/keys/rotate", nil); err == nil || !strings.Contains(err.Error(), "it may sign from") {
		t.Fatalf("early rotation through a standby: %v", err)
	}
	nextKID := vaultlab.Read(t, c.clientFor(2, nil), "meshauth/keys").Data["next_kid"].(string)
	vaultlab.Write(t, c.clientFor(1, nil), "meshauth/keys/"+nextKID+"/revoke", nil)
	c.sameJWKS(t, "after a key removal through a standby", all...)
	for _, i := range all {
		if _, body := c.nodes[i].RawGet("/v1/meshauth/jwks"); strings.Contains(string(body), nextKID) {
			t.Fatalf("node%d still serves the removed key", i+1)
		}
	}
	before := tokens[1]

	t.Run("failover under login load", func(t *testing.T) {
		active := c.activeIndex(all...)
		var survivors []int
		for _, i := range all {
			if i != active {
				survivors = append(survivors, i)
			}
		}
		window := c.failover(t, active, survivors, login)
		t.Logf("logins through the survivors failed for %s after the active node (node%d) was killed", window.Round(time.Millisecond), active+1)

		if ok, reason := verify(survivors[0], before); !ok {
			t.Fatalf("token issued before the kill: %s", reason)
		}
		if ok, reason := verify(survivors[1], revoked); ok || reason != "token_revoked" {
			t.Fatalf("revocation lost in the failover: %v %s", ok, reason)
		}
		if got := vaultlab.Read(t, c.clientFor(survivors[0], nil), "meshauth/keys").Data["current_kid"]; got != kid {
			t.Fatalf("current key after failover %v, before %v", got, kid)
		}
		if vaultlab.Read(t, c.clientFor(survivors[1], nil), "meshauth/services/orders") == nil {
			t.Fatal("service lost in the failover")
		}
		c.sameJWKS(t, "after failover", survivors...)

		// The killed node comes back, rejoins, and serves the same data.
		dead := c.nodes[active]
		dead.Start()
		dead.WaitListening()
		dead.UnsealWhenJoined()
		vaultlab.WaitVoters(t, c.nodes[survivors[0]], 3)
		dead.WaitKnowsLeader()
		c.sameJWKS(t, "after the killed node rejoined", all...)
		if ok, reason := verify(active, before); !ok {
			t.Fatalf("rejoined node: %s", reason)
		}
		if _, err := login(active); err != nil {
			t.Fatalf("login through the rejoined node: %v", err)
		}
	})

	t.Run("snapshot and restore", func(t *testing.T) {
		active := c.activeIndex(all...)
		s := c.nodes[active]
		snap := filepath.Join(s.Dir, "meshauth.snap")
		s.MustCLI(t, "operator", "raft", "snapshot", "save", snap)
		s.MustCLI(t, "delete", "meshauth/services/orders")
		if _, err := login(active); err == nil {
			t.Fatal("deleted service still logs in")
		}
		s.MustCLI(t, "operator", "raft", "snapshot", "restore", snap)
		active = c.activeIndex(all...)
		for _, i := range all {
			c.nodes[i].WaitKnowsLeader()
		}
		deadline := time.Now().Add(30 * time.Second)
		var err error
		for time.Now().Before(deadline) {
			if _, err = login(active); err == nil {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("service not back after restore: %v", err)
		}
		c.sameJWKS(t, "after restore", all...)
	})

	if testing.Short() {
		t.Skip("the periodic-rotation check watches the cluster for 2.5 minutes")
	}
	t.Run("periodic rotation happens once per period across the cluster", func(t *testing.T) {
		vaultlab.Write(t, c.clientFor(0, nil), "meshauth/config", map[string]any{"key_rotation_period": "1m", "max_ttl": "2m", "default_ttl": "1m", "min_publication_age": "1m"})
		start := time.Now()
		// Vault runs the periodic function about once a minute on the active
		// node only; watch for a bit over two periods.
		for time.Since(start) < 150*time.Second {
			time.Sleep(10 * time.Second)
			c.sameJWKS(t, "during periodic rotation", all...)
		}
		rotations := rotationTimes(t, c.clientFor(2, nil), start)
		t.Logf("rotations seen in %s: %v", time.Since(start).Round(time.Second), rotations)
		if len(rotations) < 1 || len(rotations) > 3 {
			t.Fatalf("%d rotations in %s with a 1m period", len(rotations), time.Since(start))
		}
		for i := 1; i < len(rotations); i++ {
			if gap := rotations[i].Sub(rotations[i-1]); gap < 55*time.Second {
				t.Fatalf("two rotations %s apart: the periodic function rotated twice in one period", gap)
			}
		}
	})
}

// rotationTimes lists when keys were promoted to current after start: each
// promotion is one rotation.
func rotationTimes(t *testing.T, cl *api.Client, start time.Time) []time.Time {
	t.Helper()
	var out []time.Time
	for _, k := range vaultlab.Read(t, cl, "meshauth/keys").Data["keys"].([]any) {
		promoted, _ := k.(map[string]any)["promoted_at"].(string)
		if promoted == "" {
			continue
		}
		at, err := time.Parse(time.RFC3339, promoted)
		if err != nil {
			t.Fatal(err)
		}
		if !at.Before(start.Truncate(time.Second)) {
			out = append(out, at)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

// attempt is one login of the failover load.
type attempt struct {
	at   time.Time
	node int
	ok   bool
}

// failover runs a bounded login load over every node, kills the active
// node's Vault (and its plugin processes) mid-load, waits for the survivors
// to elect a leader and serve logins again, and returns how long logins
// through the survivors failed.
func (c *cluster) failover(t *testing.T, active int, survivors []int, login func(int) (string, error)) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), loadMaxDuration)
	defer cancel()
	var mu sync.Mutex
	var attempts []attempt
	var wg sync.WaitGroup
	for w := range loadWorkers {
		wg.Go(func() {
			for i := w; ctx.Err() == nil; i++ {
				node := i % len(c.nodes)
				done := make(chan error, 1)
				go func() { _, err := login(node); done <- err }()
				var err error
				select {
				case err = <-done:
				case <-time.After(loadRequestLimit):
					err = fmt.Errorf("timeout")
				}
				mu.Lock()
				attempts = append(attempts, attempt{time.Now(), node, err == nil})
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	time.Sleep(2 * time.Second)
	killedAt := time.Now()
	// Kill ends the node's Vault and its plugin processes at once.
	c.nodes[active].Kill()
	newActive := c.activeIndex(survivors...)
	t.Logf("node%d became active %s after the kill", newActive+1, time.Since(killedAt).Round(time.Millisecond))
	// Let the load run on until logins have succeeded through every survivor
	// for a few seconds.
	time.Sleep(4 * time.Second)
	cancel()
	wg.Wait()

	var firstFail, lastFail time.Time
	recovered := map[int]bool{}
	for _, a := range attempts {
		if a.node == active || a.at.Before(killedAt) {
			continue
		}
		if !a.ok {
			if firstFail.IsZero() {
				firstFail = a.at
			}
			lastFail = a.at
			recovered[a.node] = false
		} else {
			recovered[a.node] = true
		}
	}
	for _, i := range survivors {
		if !recovered[i] {
			t.Fatalf("logins through node%d had not recovered when the load stopped", i+1)
		}
	}
	t.Logf("%d login attempts in all", len(attempts))
	if firstFail.IsZero() {
		return 0
	}
	return lastFail.Sub(firstFail)
}
