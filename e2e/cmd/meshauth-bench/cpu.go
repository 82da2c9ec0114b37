package main

import (
	"fmt"
	"os"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat;
// 100 on every Linux this runs on.
const clockTicks = 100

// cpuSeconds reads the user+system CPU time a process has used.
func cpuSeconds(pid string) float64 {
	data, err := os.ReadFile("/proc/" + pid + "/stat") //nolint:gosec // a process id of our own, under /proc
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields after it start
	// after the last ')'.
	rest := string(data[strings.LastIndexByte(string(data), ')')+2:])
	var state string
	// After the state (field 3): ppid, pgrp, session, tty_nr, tpgid, flags,
	// minflt, cminflt, majflt, cmajflt, then utime (14) and stime (15).
	var skip [10]int64
	var utime, stime int64
	_, err = fmt.Sscan(rest, &state, &skip[0], &skip[1], &skip[2], &skip[3], &skip[4], &skip[5], &skip[6], &skip[7], &skip[8], &skip[9], &utime, &stime)
	if err != nil {
		return 0
	}
	return float64(utime+stime) / clockTicks
}

// cpuSample is the CPU time used so far by Vault, the plugin processes and
// this load generator.
type cpuSample struct{ vault, plugin, loader float64 }

// sampleCPU reads all three.
func (e *env) sampleCPU() cpuSample {
	c := cpuSample{vault: cpuSeconds(fmt.Sprint(e.s.PID())), loader: cpuSeconds("self")}
	for _, pid := range e.s.PluginPIDs() {
		c.plugin += cpuSeconds(fmt.Sprint(pid))
	}
	return c
}

// minus is the CPU time used between two samples.
func (c cpuSample) minus(o cpuSample) cpuSample {
	return cpuSample{c.vault - o.vault, c.plugin - o.plugin, c.loader - o.loader}
}
