//go:build failpoints

package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

// Crash points for tests, compiled in only with -tags failpoints, so that a
// release binary can never be told to kill itself. A test names the points
// to arm in RAFTEXAMPLE_FAILPOINTS, comma-separated, each optionally with a
// delay: "snapshot-install-acked@300ms". When the code reaches an armed
// point it says so on stderr, waits the delay (holding whatever goroutine
// hit it, so nothing else that goroutine would do happens), then kill -9s
// its own process: exactly what a crash at that point leaves on disk.
var armedFailpoints = parseFailpoints(os.Getenv("RAFTEXAMPLE_FAILPOINTS"))

func parseFailpoints(spec string) map[string]time.Duration {
	m := map[string]time.Duration{}
	for _, item := range strings.Split(spec, ",") {
		name, delay, _ := strings.Cut(strings.TrimSpace(item), "@")
		if name == "" {
			continue
		}
		d, err := time.ParseDuration(delay)
		if delay != "" && err != nil {
			fmt.Fprintf(os.Stderr, "raftexample: RAFTEXAMPLE_FAILPOINTS: bad delay in %q: %v\n", item, err)
			os.Exit(2)
		}
		m[name] = d
	}
	return m
}

func failpoint(name string) {
	d, ok := armedFailpoints[name]
	if !ok {
		return
	}
	fmt.Fprintf(os.Stderr, "failpoint %s reached: kill -9 in %v\n", name, d)
	time.Sleep(d)
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way; never return into the code after the point
}
