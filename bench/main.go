// Command bench runs the side-by-side comparison with etcd: it builds etcd
// from the Go module proxy and this server from the repository, starts
// three members of each on loopback ports with fresh data dirs (one store
// at a time), drives both with the same load engine (package loadgen) at
// each client count for PUT and for linearizable and serializable GET (a
// single client twice: pinned to the leader, then to a follower; this
// server's PUTs twice more, with each client's writes sent to its own
// member instead of the leader, as etcd's client sends them),
// repeats the whole pass, and prints a table of medians and ratios with
// the machine's cores and fsync rate, server CPU per operation (from /proc
// for each member), the load tool's own CPU per operation (the clients
// share the machine with the members) and resident memory.
//
//	cd bench && go run . --passes 3
//
// It is a module of its own so that etcd's client stays out of the
// server's dependencies. Linux only (/proc, fdatasync).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"raftexample/loadgen"
)

type options struct {
	passes    int
	clients   []int
	ops       []string
	duration  time.Duration
	warmup    time.Duration
	valueSize int
	keyspace  int
	work      string
	repo      string
	etcdVer   string
	etcdBin   string
	systems   []string
	out       string
	// roles: a 1-client run is made twice, pinned to the leader and to a
	// follower, instead of once against the first member. One request at
	// a time shows the path's latency, and a write a follower serves
	// takes two more trips between members than one the leader serves:
	// sent to the first member, the row measured whichever of the two the
	// election made it, and so did etcd's row, not necessarily the same.
	roles bool
	// rate caps each run's requests a second over all its clients (the
	// load engine's --rate); 0: none.
	rate float64
}

// measurement is one load run against one store.
type measurement struct {
	System  string `json:"system"`
	Pass    int    `json:"pass"`
	Op      string `json:"op"`
	Clients int    `json:"clients"`
	// Role is where every client sent its requests: "leader" or
	// "follower" (pinned), or "" (spread over the members).
	Role      string  `json:"role,omitempty"`
	OpsPerSec float64 `json:"ops_per_sec"`
	P50       float64 `json:"p50_ms"`
	P99       float64 `json:"p99_ms"`
	P999      float64 `json:"p99.9_ms"`
	Errors    int64   `json:"errors"`
	// Lost counts acknowledged PUTs that a read from some member did not
	// find (each measured PUT run is read back from every member after
	// its CPU is counted); Unread, those it could not read.
	Lost       int     `json:"lost"`
	Unread     int     `json:"unread"`
	CPUPerOpUs float64 `json:"cpu_us_per_op"` // all members' user+system CPU / ops
	// LoadCPUPerOpUs is this process's user+system CPU / ops: the load
	// tool's clients, which share the machine with the members.
	LoadCPUPerOpUs float64 `json:"load_cpu_us_per_op"`
	RSSMB          float64 `json:"rss_mb"`      // largest member's RSS after the run
	PeakRSSMB      float64 `json:"peak_rss_mb"` // largest member's peak RSS so far
}

// clientRun is one row of the table for each op: how many clients, and
// where they send.
type clientRun struct {
	clients int
	role    string // "leader", "follower", or "": spread over the members
}

func (r clientRun) String() string {
	s := fmt.Sprintf("%d clients", r.clients)
	if r.clients == 1 {
		s = "1 client"
	}
	if r.role != "" {
		s += " (" + r.role + ")"
	}
	return s
}

// label is the table's clients column.
func (r clientRun) label() string {
	if r.role == "" {
		return strconv.Itoa(r.clients)
	}
	return fmt.Sprintf("%d (%s)", r.clients, r.role)
}

func (m measurement) run() clientRun { return clientRun{m.Clients, m.Role} }

// putUnrouted is PUT with each client's writes sent to its own member,
// which forwards them to the leader: measured for this server only, set
// against etcd's PUT (whose client sends writes that way). Its pinned runs
// would repeat PUT's.
const putUnrouted = "put-unrouted"

// runs lists op's rows, in order.
func (o *options) runs(op string) []clientRun {
	var rs []clientRun
	for _, n := range o.clients {
		if n == 1 && o.roles {
			if op != putUnrouted {
				rs = append(rs, clientRun{1, "leader"}, clientRun{1, "follower"})
			}
		} else {
			rs = append(rs, clientRun{clients: n})
		}
	}
	return rs
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts, err := parse(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if err := run(ctx, opts, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parse(args []string) (*options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	o := &options{}
	fs.IntVar(&o.passes, "passes", 3, "whole passes over every store, op and client count; the table shows medians")
	clients := fs.String("clients", "1,16,64,256", "client counts")
	ops := fs.String("ops", "put,"+putUnrouted+",get,get-serializable", "what to measure: put, "+putUnrouted+" (this server's PUT with each client's writes to its own member, not the leader), get (linearizable), get-serializable")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "measured time per run")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "load before each measured run (not counted)")
	fs.IntVar(&o.valueSize, "value-size", 256, "bytes per value")
	fs.IntVar(&o.keyspace, "keyspace", 10000, "keys written before the reads, which pick among them uniformly")
	fs.StringVar(&o.work, "work", "", "directory for binaries, data and logs (default: a new temp dir, removed after a successful run)")
	fs.StringVar(&o.repo, "repo", "..", "this repository's root (to build the server)")
	fs.StringVar(&o.etcdVer, "etcd-version", "v3.7.3", "etcd version to build from the module proxy")
	fs.StringVar(&o.etcdBin, "etcd-bin", "", "use this etcd binary instead of building one")
	systems := fs.String("systems", "etcd,raftexample", "stores to measure, in order")
	fs.StringVar(&o.out, "out", "", "also write every measurement as JSON to this file")
	fs.Float64Var(&o.rate, "rate", 0, "cap every run (warm-up included) at this many requests a second over all its clients, for CPU and latency at an equal load (0: none, each store as fast as its clients go)")
	fs.BoolVar(&o.roles, "one-client-roles", true, "measure 1 client twice, pinned to the leader and to a follower (false: against the first member, whichever it is)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for _, f := range strings.Split(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("invalid --clients entry %q", f)
		}
		o.clients = append(o.clients, n)
	}
	for _, op := range strings.Split(*ops, ",") {
		if op = strings.TrimSpace(op); !slices.Contains([]string{"put", putUnrouted, "get", "get-serializable"}, op) {
			return nil, fmt.Errorf("invalid --ops entry %q: use put, %s, get, get-serializable", op, putUnrouted)
		}
		o.ops = append(o.ops, op)
	}
	for _, s := range strings.Split(*systems, ",") {
		if s = strings.TrimSpace(s); s != "etcd" && s != "raftexample" {
			return nil, fmt.Errorf("invalid --systems entry %q: use etcd, raftexample", s)
		}
		o.systems = append(o.systems, s)
	}
	if o.passes < 1 || o.duration <= 0 || o.warmup < 0 || o.valueSize < 1 || o.keyspace < 1 {
		return nil, errors.New("--passes, --duration, --value-size and --keyspace must be positive, --warmup not negative")
	}
	if !(o.rate >= 0 && o.rate <= 1e9) {
		return nil, errors.New("--rate must be between 0 (no cap) and 1e9 requests a second")
	}
	return o, nil
}

func run(ctx context.Context, o *options, stdout, stderr io.Writer) error {
	keep := o.work != ""
	if o.work == "" {
		dir, err := os.MkdirTemp("", "raftexample-bench-")
		if err != nil {
			return err
		}
		o.work = dir
	}
	work, err := filepath.Abs(o.work)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	logf := func(format string, args ...any) { fmt.Fprintf(stderr, "bench: "+format+"\n", args...) }

	bins := map[string]string{}
	if slices.Contains(o.systems, "etcd") {
		if bins["etcd"] = o.etcdBin; o.etcdBin == "" {
			logf("building etcd %s from the module proxy (a few minutes the first time)", o.etcdVer)
			if bins["etcd"], err = buildEtcd(ctx, work, o.etcdVer); err != nil {
				return err
			}
		}
	}
	if slices.Contains(o.systems, "raftexample") {
		logf("building raftexample from %s", o.repo)
		bins["raftexample"] = filepath.Join(work, "raftexample")
		if err := goCmd(ctx, o.repo, "build", "-o", bins["raftexample"], ".").Run(); err != nil {
			return fmt.Errorf("build raftexample: %w", err)
		}
	}
	disk, err := measureDiskSync(work)
	if err != nil {
		return fmt.Errorf("measure fsync rate: %w", err)
	}

	var all []measurement
	for pass := 1; pass <= o.passes; pass++ {
		for _, sys := range o.systems {
			ms, err := measureSystem(ctx, o, sys, bins[sys], filepath.Join(work, fmt.Sprintf("pass%d-%s", pass, sys)), pass, logf)
			if err != nil {
				return err
			}
			all = append(all, ms...)
		}
	}
	if o.out != "" {
		b, _ := json.MarshalIndent(all, "", "  ")
		if err := os.WriteFile(o.out, b, 0o644); err != nil {
			return err
		}
	}
	printTable(stdout, o, all, disk)
	var lost []string
	for _, m := range all {
		if m.Lost+m.Unread > 0 {
			lost = append(lost, fmt.Sprintf("%s pass %d, %s: %d lost, %d unreadable", m.System, m.Pass, m.run(), m.Lost, m.Unread))
		}
	}
	if len(lost) > 0 {
		return fmt.Errorf("acknowledged writes not read back (data kept in %s): %s", work, strings.Join(lost, "; "))
	}
	if !keep {
		os.RemoveAll(work)
	}
	return nil
}

// measureSystem starts a fresh cluster of one store, loads the keys the
// reads use, and measures every op at every client count.
func measureSystem(ctx context.Context, o *options, sys, bin, dir string, pass int, logf func(string, ...any)) ([]measurement, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	start, dial, leader := startRaftexample, loadgen.NewRaftexampleTarget, raftexampleLeader
	if sys == "etcd" {
		start, dial, leader = startEtcd, newEtcdTarget, etcdLeader
	}
	c, err := start(ctx, bin, dir, 3)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	endpoints := strings.Join(c.endpoints, ",")
	common := []string{"--endpoints", endpoints, "--value-size", strconv.Itoa(o.valueSize)}
	logf("pass %d, %s: loading %d keys", pass, sys, o.keyspace)
	if _, err := load(ctx, dial, append(common, "--op", "put", "--keys", "fresh", "--prefix", "pre/", "--clients", "64",
		"--warmup", "0s", "--count", strconv.Itoa(o.keyspace)), loadgen.Hooks{}); err != nil {
		return nil, fmt.Errorf("%s: load keys: %w", sys, err)
	}
	var out []measurement
	for _, op := range o.ops {
		if op == putUnrouted && sys == "etcd" {
			continue
		}
		for _, run := range o.runs(op) {
			m, verified, err := measureRun(ctx, o, c, sys, op, run, pass, common, dial, leader)
			if errors.Is(err, errLeaderMoved) {
				// An election on a healthy loopback cluster is rare: once
				// more, with the roles found anew.
				logf("pass %d, %s %s at %s: %v; measuring again", pass, sys, op, run, err)
				m, verified, err = measureRun(ctx, o, c, sys, op, run, pass, common, dial, leader)
			}
			if err != nil {
				return nil, err
			}
			logf("pass %d, %s %s at %s: %.0f ops/s, p50 %.2f ms, p99.9 %.2f ms, %.0f µs CPU/op (load tool %.0f), %d errors%s",
				pass, sys, op, run, m.OpsPerSec, m.P50, m.P999, m.CPUPerOpUs, m.LoadCPUPerOpUs, m.Errors, verified)
			out = append(out, m)
		}
	}
	return out, nil
}

// errLeaderMoved fails a run pinned to a role that its member lost during
// the run: its row would be labelled with a role it did not have.
var errLeaderMoved = errors.New("the leader moved during the run")

// measureRun makes one measured run of op at run against the cluster c,
// after its warm-up; verified describes the read-back of a PUT run.
func measureRun(ctx context.Context, o *options, c *cluster, sys, op string, run clientRun, pass int, common []string,
	dial loadgen.Dial, leader func(context.Context, []string) (int, error)) (m measurement, verified string, err error) {
	n := run.clients
	args := append(slices.Clone(common), "--clients", strconv.Itoa(n))
	if o.rate > 0 {
		args = append(args, "--rate", strconv.FormatFloat(o.rate, 'g', -1, 64))
	}
	prefix := fmt.Sprintf("%s-%d/", op, n)
	lead := -1
	if run.role != "" {
		if lead, err = leader(ctx, c.endpoints); err != nil {
			return m, "", fmt.Errorf("%s: find the leader: %w", sys, err)
		}
		pin := lead
		if run.role == "follower" {
			pin = (lead + 1) % len(c.endpoints)
		}
		args = append(args, "--pin", strconv.Itoa(pin))
		// Each role's PUTs, and a repeat's, write keys of their own.
		prefix = fmt.Sprintf("%s-%d-%s-%d/", op, n, run.role, time.Now().UnixNano())
	}
	switch op {
	case "put", putUnrouted:
		args = append(args, "--op", "put", "--keys", "fresh", "--prefix", prefix, "--route-writes="+strconv.FormatBool(op == "put"))
	default:
		cons := "linearizable"
		if op == "get-serializable" {
			cons = "serializable"
		}
		args = append(args, "--op", "get", "--consistency", cons, "--keys", "uniform", "--prefix", "pre/",
			"--keyspace", strconv.Itoa(o.keyspace))
	}
	if o.warmup > 0 {
		if _, err := load(ctx, dial, append(slices.Clone(args), "--warmup", "0s", "--duration", o.warmup.String()), loadgen.Hooks{}); err != nil {
			return m, "", fmt.Errorf("%s %s at %s (warm-up): %w", sys, op, run, err)
		}
	}
	cpu0, err := c.cpuSeconds()
	if err != nil {
		return m, "", err
	}
	self0 := selfCPUSeconds()
	var cpu1, self1 float64
	var cpuErr error
	measured := append(args, "--warmup", "0s", "--duration", o.duration.String())
	if op == "put" || op == putUnrouted {
		measured = append(measured, "--verify")
	}
	r, err := load(ctx, dial, measured, loadgen.Hooks{BeforeVerify: func() { self1 = selfCPUSeconds(); cpu1, cpuErr = c.cpuSeconds() }})
	if err != nil {
		return m, "", fmt.Errorf("%s %s at %s: %w", sys, op, run, err)
	}
	if cpuErr != nil {
		return m, "", cpuErr
	}
	rss, peak := c.rssMB()
	m = measurement{System: sys, Pass: pass, Op: op, Clients: n, Role: run.role, OpsPerSec: r.OpsPerSec,
		P50: r.LatencyMs.P50, P99: r.LatencyMs.P99, P999: r.LatencyMs.P999, RSSMB: rss, PeakRSSMB: peak}
	for _, e := range r.Errors {
		m.Errors += e
	}
	if v := r.Verify; v != nil {
		m.Lost, m.Unread = v.Lost, v.Unreadable
		verified = fmt.Sprintf("; %d acknowledged writes read back from %d members: %d lost, %d unreadable", v.Acked, v.Members, v.Lost, v.Unreadable)
	}
	if r.Ops > 0 {
		m.CPUPerOpUs = (cpu1 - cpu0) / float64(r.Ops) * 1e6
		m.LoadCPUPerOpUs = (self1 - self0) / float64(r.Ops) * 1e6
	}
	if lead >= 0 {
		now, err := leader(ctx, c.endpoints)
		if err != nil {
			return m, "", fmt.Errorf("%s: find the leader after %s at %s: %w", sys, op, run, err)
		}
		if now != lead {
			if m.Lost+m.Unread > 0 {
				// Never traded for a repeat: lost writes are reported, and
				// fail the command, whatever the row's label.
				return m, verified + fmt.Sprintf("; the leader moved during the run (member %d, then %d)", lead+1, now+1), nil
			}
			return m, "", fmt.Errorf("%w (member %d, then %d)", errLeaderMoved, lead+1, now+1)
		}
	}
	return m, verified, nil
}

// loadResult is the part of loadgen's JSON line that the table uses.
type loadResult struct {
	Ops       int64   `json:"ops"`
	OpsPerSec float64 `json:"ops_per_sec"`
	LatencyMs struct {
		P50  float64 `json:"p50"`
		P99  float64 `json:"p99"`
		P999 float64 `json:"p99.9"`
	} `json:"latency_ms"`
	Errors map[string]int64 `json:"errors"`
	Verify *struct {
		Acked      int `json:"acked"`
		Members    int `json:"members"`
		Lost       int `json:"lost"`
		Unreadable int `json:"unreadable"`
	} `json:"verify"`
}

// load runs the load tool with args, calling hooks on the way.
func load(ctx context.Context, dial loadgen.Dial, args []string, hooks loadgen.Hooks) (*loadResult, error) {
	var out, errOut bytes.Buffer
	code := loadgen.RunWithHooks(ctx, args, &out, &errOut, false, dial, hooks)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var r loadResult
	jerr := json.Unmarshal([]byte(lines[len(lines)-1]), &r)
	// Status 1 is writes lost: reported in the table, and the run fails.
	if code != 0 && (code != 1 || jerr != nil || r.Verify == nil) {
		return nil, fmt.Errorf("load tool exit status %d: %s", code, strings.TrimSpace(errOut.String()))
	}
	if jerr != nil {
		return nil, fmt.Errorf("load tool output: %w", jerr)
	}
	return &r, nil
}

func goCmd(ctx context.Context, dir string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	cmd.Stderr = os.Stderr
	return cmd
}

// buildEtcd builds etcd's server at version in a throwaway module under
// work (kept there, so later runs with the same --work reuse it).
func buildEtcd(ctx context.Context, work, version string) (string, error) {
	bin := filepath.Join(work, "etcd-"+version)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	mod := filepath.Join(work, "etcd-build")
	if err := os.MkdirAll(mod, 0o755); err != nil {
		return "", err
	}
	for _, args := range [][]string{
		{"mod", "init", "etcdbuild"},
		{"get", "go.etcd.io/etcd/server/v3@" + version},
		{"build", "-o", bin, "go.etcd.io/etcd/server/v3"},
	} {
		if _, err := os.Stat(filepath.Join(mod, "go.mod")); err == nil && args[0] == "mod" {
			continue
		}
		if err := goCmd(ctx, mod, args...).Run(); err != nil {
			return "", fmt.Errorf("build etcd (go %s): %w", strings.Join(args, " "), err)
		}
	}
	return bin, nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func printTable(w io.Writer, o *options, all []measurement, disk diskSync) {
	host, _ := os.Hostname()
	fmt.Fprintf(w, "machine: %s, %d cores, %s/%s, %.0f fsyncs/s (4 KiB write + fdatasync, %.0f µs of CPU each), %s\n",
		host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, disk.perSec, float64(disk.cpuEach)/float64(time.Microsecond), runtime.Version())
	capped := ""
	if o.rate > 0 {
		capped = fmt.Sprintf(", every run capped at %g requests/s", o.rate)
	}
	fmt.Fprintf(w, "runs: %d pass(es), %v each after %v warm-up, %d-byte values, reads over %d keys%s; medians of the passes\n\n",
		o.passes, o.duration, o.warmup, o.valueSize, o.keyspace, capped)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "op\tclients\tetcd ops/s\tours ops/s\tratio\tetcd p50 ms\tours p50 ms\tetcd p99.9 ms\tours p99.9 ms\tetcd CPU µs/op\tours CPU µs/op\tCPU ratio\tload tool µs/op (etcd/ours)\terrors (etcd/ours)\tlost (etcd/ours)\t")
	pick := func(sys, op string, run clientRun, f func(measurement) float64) float64 {
		var xs []float64
		for _, m := range all {
			if m.System == sys && m.Op == op && m.run() == run {
				xs = append(xs, f(m))
			}
		}
		return median(xs)
	}
	ratio := func(a, b float64) string {
		if a == 0 || b == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f×", b/a)
	}
	for _, op := range o.ops {
		for _, run := range o.runs(op) {
			// etcd's side of an unrouted PUT row is its PUT row.
			opOf := func(sys string) string {
				if op == putUnrouted && sys == "etcd" {
					return "put"
				}
				return op
			}
			get := func(sys string, f func(measurement) float64) float64 { return pick(sys, opOf(sys), run, f) }
			eOps, oOps := get("etcd", func(m measurement) float64 { return m.OpsPerSec }), get("raftexample", func(m measurement) float64 { return m.OpsPerSec })
			eCPU, oCPU := get("etcd", func(m measurement) float64 { return m.CPUPerOpUs }), get("raftexample", func(m measurement) float64 { return m.CPUPerOpUs })
			var eErr, oErr int64
			var eLost, oLost int
			for _, m := range all {
				if m.Op == opOf(m.System) && m.run() == run {
					if m.System == "etcd" {
						eErr += m.Errors
						eLost += m.Lost + m.Unread
					} else {
						oErr += m.Errors
						oLost += m.Lost + m.Unread
					}
				}
			}
			lost := "–" // reads are not verified
			if op == "put" || op == putUnrouted {
				lost = fmt.Sprintf("%d/%d", eLost, oLost)
			}
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%s\t%.2f\t%.2f\t%.1f\t%.1f\t%.0f\t%.0f\t%s\t%.0f/%.0f\t%d/%d\t%s\t\n", op, run.label(), eOps, oOps, ratio(eOps, oOps),
				get("etcd", func(m measurement) float64 { return m.P50 }), get("raftexample", func(m measurement) float64 { return m.P50 }),
				get("etcd", func(m measurement) float64 { return m.P999 }), get("raftexample", func(m measurement) float64 { return m.P999 }),
				eCPU, oCPU, ratio(eCPU, oCPU),
				get("etcd", func(m measurement) float64 { return m.LoadCPUPerOpUs }), get("raftexample", func(m measurement) float64 { return m.LoadCPUPerOpUs }),
				eErr, oErr, lost)
		}
	}
	tw.Flush()
	for _, sys := range o.systems {
		var peak float64
		for _, m := range all {
			if m.System == sys {
				peak = max(peak, m.PeakRSSMB)
			}
		}
		fmt.Fprintf(w, "%s: largest member RSS %.0f MiB\n", sys, peak)
	}
}
