package vaultlab

import (
	"bytes"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Vault starts its plugins with go-plugin, which neither ends them when
// Vault dies nor puts them in a group of their own. A Vault killed with
// SIGKILL leaves its plugin processes running, orphaned; and Vault only kills
// a plugin process when it cleans up the mount's connection to it, so even a
// graceful exit can leave one behind (seen in TestHACluster: a node of the
// three, stopped with SIGTERM after failover and snapshot restore, exited
// within seconds and left its plugin running). So each Vault runs as the
// leader of its own process group, which its plugins inherit, and Stop and
// Kill end whatever is left of that group. Every process is matched by its group and
// by a command line naming the server's own directory, so nothing a test did
// not start is ever signalled.

// started lists the directories of every server this process started, for
// Leftovers and the interrupt handler.
var started struct {
	sync.Mutex
	servers []*Server
}

func remember(s *Server) {
	started.Lock()
	defer started.Unlock()
	if !slices.Contains(started.servers, s) {
		started.servers = append(started.servers, s)
	}
}

// process is one running process as /proc shows it.
type process struct {
	pid, pgid int
	cmdline   string
}

// processes lists the running processes (zombies excluded).
func processes() []process {
	entries, _ := os.ReadDir("/proc")
	var out []process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) < 3 || fields[0] == "Z" {
			continue
		}
		pgid, _ := strconv.Atoi(fields[2])
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		out = append(out, process{pid: pid, pgid: pgid, cmdline: string(bytes.ReplaceAll(bytes.TrimRight(cmdline, "\x00"), []byte{0}, []byte{' '}))})
	}
	return out
}

// ours reports whether p was started by this server: its Vault or a plugin
// of it, both of which name the server's directory on their command line.
func (s *Server) ours(p process) bool {
	return strings.Contains(p.cmdline, s.Dir+string(filepath.Separator))
}

// groupLeft lists the processes still alive in this server's process group.
func (s *Server) groupLeft() []process {
	var left []process
	for _, p := range processes() {
		if s.pgid != 0 && p.pgid == s.pgid && s.ours(p) {
			left = append(left, p)
		}
	}
	return left
}

// endGroup kills what is left of the server's process group once Vault has
// exited, and waits until it is gone. It returns what it had to kill.
func (s *Server) endGroup() []process {
	left := s.groupLeft()
	for _, p := range left {
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(s.groupLeft()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	return left
}

// Leftovers lists the processes started by any server of this test process
// (Vault or its plugins) that are still running, one "pid cmdline" each.
func Leftovers() []string {
	started.Lock()
	servers := slices.Clone(started.servers)
	started.Unlock()
	var out []string
	for _, p := range processes() {
		if p.pid == os.Getpid() {
			continue
		}
		for _, s := range servers {
			if s.ours(p) {
				out = append(out, fmt.Sprintf("%d %s", p.pid, p.cmdline))
				break
			}
		}
	}
	return out
}

// EndLeftovers kills every process Leftovers lists.
func EndLeftovers() {
	started.Lock()
	servers := slices.Clone(started.servers)
	started.Unlock()
	for _, s := range servers {
		for _, p := range processes() {
			if s.ours(p) && p.pid != os.Getpid() {
				_ = syscall.Kill(p.pid, syscall.SIGKILL)
			}
		}
	}
}

// EndAllOnInterrupt ends every server's processes when the test process is
// interrupted: each Vault leads its own process group, so the terminal's
// Ctrl-C no longer reaches it directly.
func EndAllOnInterrupt() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-ch
		EndLeftovers()
		fmt.Fprintf(os.Stderr, "vaultlab: %v: ended every Vault and plugin process this run started\n", sig)
		os.Exit(1)
	}()
}
