//go:build failpoints

package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Crash points for tests, compiled in only with -tags failpoints, so that a
// release binary can never be told to kill itself. A test names the points
// to arm in RAFTEXAMPLE_FAILPOINTS, comma-separated, each as
// name[@delay][#n]: "snapshot-install-acked@300ms", "wal-save-after#40".
// The n-th time (default: the first) the code reaches an armed point it
// says so on stderr, waits the delay (holding whatever goroutine hit it, so
// nothing else that goroutine would do happens), then kill -9s its own
// process: exactly what a crash at that point leaves on disk.
//
// The points (grep for failpoint(" to find them):
//
//	wal-save-before                 a Ready's entries and hard state are about to be written
//	wal-save-after                  written (synced if raft needed it), not yet sent or applied
//	snapshot-file-saved             a snapshot file is synced, its directory and WAL record are not
//	snapshot-saved-before-release   a snapshot of this member is durable; older files not purged
//	wal-checkpoint-saved            a checkpoint record is written to the WAL and synced
//	wal-spare-chunk-zeroed          a chunk of the WAL's spare segment is zeroed, not synced
//	snapshot-received               a leader's snapshot file is saved and checked, raft has not taken it
//	snapshot-install-before-sync    a leader's snapshot and its record written, the commit not synced
//	snapshot-install-before-release installed and synced, older files not purged, not acknowledged
//	snapshot-install-acked          the install is acknowledged to the leader
//	apply-before-reply              an entry is applied, its writers not answered
//	conf-change-applied             a membership change is applied to raft, not yet to the members
var armedFailpoints = parseFailpoints(os.Getenv("RAFTEXAMPLE_FAILPOINTS"))

type armedPoint struct {
	delay time.Duration
	at    int64        // fire on this hit
	hits  atomic.Int64 // reached so far
}

func parseFailpoints(spec string) map[string]*armedPoint {
	m := map[string]*armedPoint{}
	bad := func(item, what string, err error) {
		fmt.Fprintf(os.Stderr, "raftexample: RAFTEXAMPLE_FAILPOINTS: bad %s in %q: %v\n", what, item, err)
		os.Exit(2)
	}
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		base, count, hasCount := strings.Cut(item, "#")
		name, delay, _ := strings.Cut(base, "@")
		if name == "" {
			continue
		}
		p := &armedPoint{at: 1}
		if delay != "" {
			d, err := time.ParseDuration(delay)
			if err != nil {
				bad(item, "delay", err)
			}
			p.delay = d
		}
		if hasCount {
			n, err := strconv.ParseInt(count, 10, 64)
			if err != nil || n < 1 {
				bad(item, "hit count", err)
			}
			p.at = n
		}
		m[name] = p
	}
	return m
}

func failpoint(name string) {
	p, ok := armedFailpoints[name]
	if !ok || p.hits.Add(1) != p.at {
		return
	}
	fmt.Fprintf(os.Stderr, "failpoint %s reached: kill -9 in %v\n", name, p.delay)
	time.Sleep(p.delay)
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way; never return into the code after the point
}
