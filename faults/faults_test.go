package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"raftexample/internal/cluster"
	"raftexample/internal/nemesis"
	"raftexample/internal/powerfs"
	"raftexample/internal/workload"
)

// Settings, from the environment:
//
//	RAFTEXAMPLE_FAULT_DURATION  workload time per scenario (default 8s; e.g. 10m for a soak)
//	RAFTEXAMPLE_FAULT_SEED      seed of the nemesis schedule (default: time-based, logged)
//	RAFTEXAMPLE_FAULT_DIR       where failed runs keep logs, data and history.html (default: the temp dir)
//	RAFTEXAMPLE_FAULT_RACE      0 builds the server without the race detector (default 1)
var (
	serverBin string
	duration  = 8 * time.Second
)

func TestMain(m *testing.M) {
	if d := os.Getenv("RAFTEXAMPLE_FAULT_DURATION"); d != "" {
		v, err := time.ParseDuration(d)
		if err != nil || v <= 0 {
			fmt.Fprintf(os.Stderr, "RAFTEXAMPLE_FAULT_DURATION=%q: want a positive duration such as 10m\n", d)
			os.Exit(2)
		}
		duration = v
	}
	dir, err := os.MkdirTemp("", "raftexample-faults-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// With its crash points compiled in (inert unless a nemesis arms them).
	serverBin, err = cluster.Build(dir, os.Getenv("RAFTEXAMPLE_FAULT_RACE") != "0", "failpoints")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

type scenario struct {
	name          string
	nemeses       []string
	size          int           // default 3
	snapshotCount uint64        // default: the server's
	faultFor      time.Duration // default 2s
	healFor       time.Duration // default 1s
	minDuration   time.Duration // workload time at least this (default: the common duration)
}

// TestFaults runs each scenario: a workload against a cluster while its
// nemeses strike in turn, and two watchers (long polls, and SSE resumed
// with Last-Event-ID) that follow every change and move between members, then everything is healed, every member must
// serve again, every key is read from every member, the history must be
// linearizable with no acknowledged write lost and no member crashed by
// itself, and each watcher must have seen every acknowledged write once, in
// index order, and nothing that never took effect.
func TestFaults(t *testing.T) {
	var mixed, crashPoints []string
	for name, n := range nemesis.All() {
		mixed = append(mixed, name)
		if nemesis.NeedsFailpoints(n) {
			crashPoints = append(crashPoints, name)
		}
	}
	slices.Sort(mixed)
	slices.Sort(crashPoints)
	scenarios := []scenario{
		{name: "kill", nemeses: []string{"kill"}},
		{name: "kill-leader", nemeses: []string{"kill-leader"}},
		{name: "kill-majority", nemeses: []string{"kill-majority"}, faultFor: 1500 * time.Millisecond},
		{name: "pause", nemeses: []string{"pause", "pause-leader"}},
		{name: "isolate", nemeses: []string{"isolate"}},
		{name: "split", nemeses: []string{"split"}, size: 5},
		{name: "stall", nemeses: []string{"stall"}},
		{name: "cut-leader", nemeses: []string{"cut-leader"}},
		{name: "churn", nemeses: []string{"churn", "kill", "split"}, snapshotCount: 100},
		{name: "snapshot-crash", nemeses: []string{"snapshot-crash"}, snapshotCount: 50, healFor: 500 * time.Millisecond},
		{name: "torn-wal", nemeses: []string{"torn-wal"}},
		{name: "snapshot-install", nemeses: []string{"snapshot-install"}, snapshotCount: 50, healFor: 500 * time.Millisecond},
		{name: "power-cut", nemeses: []string{"power-cut"}},
		{name: "power-cut-majority", nemeses: []string{"power-cut-majority"}, faultFor: 1500 * time.Millisecond},
		{name: "power-cut-all", nemeses: []string{"power-cut-all"}, faultFor: 1500 * time.Millisecond},
		{name: "power-cut-snapshot-install", nemeses: []string{"power-cut-snapshot-install"}, snapshotCount: 50, healFor: 500 * time.Millisecond},
		{name: "disk-stall", nemeses: []string{"disk-stall"}},
		{name: "disk-full", nemeses: []string{"disk-full"}},
		{name: "bitrot-wal", nemeses: []string{"bitrot-wal"}},
		{name: "bitrot-snapshot", nemeses: []string{"bitrot-snapshot"}, snapshotCount: 50},
		{name: "slow-network", nemeses: []string{"slow-network"}},
		{name: "flaky-network", nemeses: []string{"flaky-network"}},
		{name: "bridge", nemeses: []string{"bridge"}},
		{name: "crash-points", nemeses: crashPoints, snapshotCount: 50, faultFor: 500 * time.Millisecond, healFor: 500 * time.Millisecond, minDuration: 80 * time.Second},
		{name: "mixed", nemeses: mixed, snapshotCount: 200},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) { runScenario(t, sc) })
	}
}

func runScenario(t *testing.T, sc scenario) {
	if sc.size == 0 {
		sc.size = 3
	}
	if sc.faultFor == 0 {
		sc.faultFor = 2 * time.Second
	}
	if sc.healFor == 0 {
		sc.healFor = time.Second
	}
	var (
		nems   []nemesis.Nemesis
		onDisk []string
	)
	for _, name := range sc.nemeses {
		n := nemesis.All()[name]
		if n == nil {
			t.Fatalf("no nemesis %q", name)
		}
		nems = append(nems, n)
		if nemesis.NeedsPowerFS(n) {
			onDisk = append(onDisk, name)
		}
	}
	// The disk nemeses need FUSE. A scenario of nothing else skips without
	// it (loudly; RAFTEXAMPLE_REQUIRE_FUSE=1 fails instead), and the mixed
	// one runs the others.
	powerFS := len(onDisk) > 0
	if powerFS && len(onDisk) < len(nems) && powerfs.Available() != nil {
		if os.Getenv("RAFTEXAMPLE_REQUIRE_FUSE") == "1" {
			t.Fatalf("FUSE is not available (%v) and RAFTEXAMPLE_REQUIRE_FUSE=1", powerfs.Available())
		}
		fmt.Fprintf(os.Stderr, "*** FUSE is not available (%v): %s runs without %v\n", powerfs.Available(), t.Name(), onDisk)
		nems = slices.DeleteFunc(nems, nemesis.NeedsPowerFS)
		powerFS = false
	} else if powerFS {
		powerfs.RequireFUSE(t)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("RAFTEXAMPLE_FAULT_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("RAFTEXAMPLE_FAULT_SEED=%q: %v", s, err)
		}
		seed = v
	}
	duration := max(duration, sc.minDuration)
	dir, err := os.MkdirTemp(os.Getenv("RAFTEXAMPLE_FAULT_DIR"), "raftexample-faults-"+sc.name+"-")
	if err != nil {
		t.Fatal(err)
	}
	r := &run{t: t, dir: dir}
	defer r.finish()
	r.logf("scenario %s: nemeses %v, %d members, seed %d, workload %v", sc.name, sc.nemeses, sc.size, seed, duration)

	// The fault phase lasts duration, or up to limit while the workload has
	// too little to show for it (startFaultPhase).
	limit := duration + max(duration, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), limit+5*time.Minute)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.Options{
		Binary: serverBin, Dir: dir, Size: sc.size, SnapshotCount: sc.snapshotCount, Logf: t.Logf,
		PowerFS: powerFS, KeepDisks: func() bool { return len(r.failures) > 0 || t.Failed() },
		// A small in-memory log window: a member that falls behind (killed,
		// partitioned, paused) is sent entries read back from the WAL.
		LogWindowBytes: 4 << 10,
		// WAL checkpoints every few entries: a member killed or cut off
		// restarts from one, reading its log up to it back from the WAL.
		CheckpointBytes: 2 << 10,
	})
	if err != nil {
		r.fail("start: %v", err)
		return
	}
	defer c.Close()
	r.cluster = c
	if _, err := c.Leader(ctx); err != nil {
		r.fail("%v", err)
		return
	}

	// Longer runs spread over more keys, so that each key's history (what
	// the checker searches) stays about as long as in the short run.
	keys := 8 * max(1, int(duration/(8*time.Second)))
	h := workload.NewHistory(workload.Config{Endpoints: c.ClientURLs, Clients: 6, Keys: min(keys, 400)})
	defer h.Close()
	watchers := []*workload.Watcher{h.Watch(c.ClientURLs, false), h.Watch(c.ClientURLs, true)}
	enough := func() bool { n := h.Counts(); return n.PutsOK >= minOK && n.GetsOK >= minOK }
	phase := startFaultPhase(ctx, duration, limit, enough, r.logf)
	defer phase.wait()
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		h.Run(phase.ctx)
	}()
	if err := nemesis.Schedule(phase.ctx, c, rand.New(rand.NewPCG(seed, seed)), nems, sc.faultFor, sc.healFor); err != nil {
		r.fail("%v", err)
		phase.stop() // the run has failed: do not let the workload go on for the rest of its time
	}
	<-ran
	phase.wait()

	if err := nemesis.HealAll(ctx, c); err != nil {
		r.fail("heal: %v", err)
	}
	if err := c.WaitReady(ctx, 30*time.Second); err != nil {
		r.fail("no recovery after healing: %v", err)
	}
	fctx, fcancel := context.WithTimeout(ctx, 30*time.Second)
	if err := h.FinalReads(fctx, c.ClientURLs()); err != nil {
		r.fail("%v", err)
	}
	fcancel()
	for _, w := range watchers {
		fctx, fcancel := context.WithTimeout(ctx, 30*time.Second)
		if err := w.Finish(fctx); err != nil {
			r.fail("%v", err)
		}
		fcancel()
		summary, problems := h.CheckWatch(w)
		r.logf("%s", summary)
		for _, p := range problems {
			r.fail("%s", p)
		}
	}
	for _, u := range c.Unexpected() {
		r.fail("%s", u)
	}
	res := h.Check(max(time.Minute, duration/4))
	r.result = res
	r.logf("%s", res)
	if !res.OK() {
		r.fail("history check failed (verdict above)")
	}
	if n := res.Counts; n.PutsOK < minOK || n.GetsOK < minOK {
		r.fail("the workload made too little progress to prove anything: %s", n)
	}
}

// run collects one scenario's failures; on failure it keeps the directory
// with every member's log and data, events.log and history.html.
type run struct {
	t        *testing.T
	dir      string
	cluster  *cluster.Cluster
	result   *workload.Result
	failures []string
}

func (r *run) logf(format string, args ...any) {
	r.t.Helper()
	r.t.Logf(format, args...)
	if r.cluster != nil {
		r.cluster.Logf(format, args...)
	}
}

func (r *run) fail(format string, args ...any) {
	r.t.Helper()
	r.failures = append(r.failures, fmt.Sprintf(format, args...))
}

func (r *run) finish() {
	r.t.Helper()
	if r.cluster != nil {
		r.cluster.Close()
	}
	if len(r.failures) == 0 && !r.t.Failed() {
		os.RemoveAll(r.dir)
		return
	}
	if r.result != nil {
		if err := r.result.Report(r.dir); err != nil {
			r.failures = append(r.failures, "writing the report: "+err.Error())
		}
	}
	r.t.Fatalf("%s\nlogs, data, events.log and history.html kept in %s", strings.Join(r.failures, "\n"), filepath.Clean(r.dir))
}
