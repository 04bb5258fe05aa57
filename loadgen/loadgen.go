// Package loadgen is the load tool's engine (cmd/bench runs it): closed-loop
// clients, each with its own keep-alive connection, drive one kind of
// request (or a mix) against a running cluster and report throughput,
// latency percentiles from an HDR histogram, and errors by kind. The store
// is behind Target, so the side-by-side comparison (bench/) drives etcd
// with the same engine.
//
// Run prints a human summary and then one JSON line with the same numbers.
// With --verify (PUT of fresh keys) it then reads every acknowledged write
// back from every member and reports any that is missing or wrong.
//
// Exit statuses: 0 done, 1 acknowledged writes lost (--verify), 2 usage,
// 3 no request succeeded.
package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/time/rate"
)

const (
	exitOK      = 0
	exitLost    = 1
	exitUsage   = 2
	exitNothing = 3
)

// config is a parsed command line.
type config struct {
	endpoints    []string
	pin          int // -1: worker i uses endpoints[i % n]
	routeWrites  bool
	clients      int
	duration     time.Duration
	warmup       time.Duration
	count        int64
	op           string
	mix          map[string]int // op → weight, for op "mixed"
	serializable bool
	keys         string // fresh, uniform, hot
	keyspace     int
	hotKeys      float64 // fraction of the key space that is hot
	hotShare     float64 // fraction of requests that go to it
	valueSize    int
	prefix       string
	timeout      time.Duration
	verify       bool
	rate         float64 // requests a second over all clients; 0: no cap
}

var ops = []string{"put", "get", "delete", "cas"}

func parse(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	endpoints := fs.String("endpoints", "http://127.0.0.1:12380,http://127.0.0.1:22380,http://127.0.0.1:32380", "comma-separated client URLs")
	pin := fs.Int("pin", -1, "send every request to this endpoint (0-based index); default: spread the clients over all")
	routeWrites := fs.Bool("route-writes", true, "send each client's writes to the leader its member names, as the client package does (off with --pin); false: to the client's own endpoint, which forwards them")
	clients := fs.Int("clients", 16, "concurrent closed-loop clients")
	duration := fs.Duration("duration", 10*time.Second, "measured time, after the warm-up")
	warmup := fs.Duration("warmup", 2*time.Second, "time before measuring starts")
	count := fs.Int64("count", 0, "measure this many requests instead of a duration (after the warm-up)")
	op := fs.String("op", "put", "put, get, delete, cas or mixed")
	mix := fs.String("mix", "put=50,get=50", "weights of the ops for --op mixed")
	consistency := fs.String("consistency", "linearizable", "for get: linearizable or serializable")
	keys := fs.String("keys", "fresh", "fresh (every write a new key), uniform (over --keyspace keys) or hot")
	keyspace := fs.Int("keyspace", 10000, "keys for uniform and hot (and for get/delete/cas with fresh, which read the keys the warm-up wrote)")
	hotKeys := fs.Float64("hot-keys", 0.01, "for hot: the fraction of the key space that is hot")
	hotShare := fs.Float64("hot-share", 0.9, "for hot: the fraction of requests that go to the hot keys")
	valueSize := fs.Int("value-size", 256, "bytes per value")
	prefix := fs.String("prefix", "", "key prefix (default: bench/<start time>/)")
	timeout := fs.Duration("timeout", 5*time.Second, "per-request timeout")
	rateCap := fs.Float64("rate", 0, "at most this many requests a second over all clients (0: as fast as they go); each client still waits for its answer, so a store slower than the rate sets the pace")
	verify := fs.Bool("verify", false, "after the run, read every acknowledged write back from every member (needs --op put --keys fresh)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c := &config{pin: *pin, routeWrites: *routeWrites && *pin < 0, clients: *clients, duration: *duration, warmup: *warmup, count: *count, op: *op,
		keys: *keys, keyspace: *keyspace, hotKeys: *hotKeys, hotShare: *hotShare, valueSize: *valueSize,
		prefix: *prefix, timeout: *timeout, verify: *verify, rate: *rateCap}
	for _, e := range strings.Split(*endpoints, ",") {
		u, err := url.Parse(strings.TrimSpace(e))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return nil, fmt.Errorf("--endpoints: %q is not a URL like http://127.0.0.1:12380", e)
		}
		c.endpoints = append(c.endpoints, strings.TrimSuffix(strings.TrimSpace(e), "/"))
	}
	switch {
	case c.pin < -1 || c.pin >= len(c.endpoints):
		return nil, fmt.Errorf("--pin %d: there are %d endpoints (0-based)", c.pin, len(c.endpoints))
	case c.clients < 1 || c.clients > 100000:
		return nil, errors.New("--clients must be between 1 and 100000")
	case c.count < 0:
		return nil, errors.New("--count must not be negative")
	case c.count == 0 && c.duration <= 0:
		return nil, errors.New("--duration must be positive (or give --count)")
	case c.warmup < 0:
		return nil, errors.New("--warmup must not be negative")
	case c.valueSize < 0 || c.valueSize > 1<<20:
		return nil, errors.New("--value-size must be between 0 and 1 MiB")
	case c.keyspace < 1:
		return nil, errors.New("--keyspace must be at least 1")
	case c.hotKeys <= 0 || c.hotKeys > 1 || c.hotShare < 0 || c.hotShare > 1:
		return nil, errors.New("--hot-keys must be in (0, 1] and --hot-share in [0, 1]")
	case c.timeout <= 0:
		return nil, errors.New("--timeout must be positive")
	case !(c.rate >= 0 && c.rate <= 1e9):
		return nil, errors.New("--rate must be between 0 (no cap) and 1e9 requests a second")
	}
	switch *consistency {
	case "linearizable":
	case "serializable":
		c.serializable = true
	default:
		return nil, fmt.Errorf("--consistency must be linearizable or serializable, not %q", *consistency)
	}
	switch c.keys {
	case "fresh", "uniform", "hot":
	default:
		return nil, fmt.Errorf("--keys must be fresh, uniform or hot, not %q", c.keys)
	}
	switch {
	case c.op == "mixed":
		c.mix = map[string]int{}
		for _, part := range strings.Split(*mix, ",") {
			name, w, ok := strings.Cut(strings.TrimSpace(part), "=")
			n, err := strconv.Atoi(w)
			if !ok || err != nil || n < 0 || !slices.Contains(ops, name) {
				return nil, fmt.Errorf("--mix: %q is not op=weight with op one of %v", part, ops)
			}
			c.mix[name] = n
		}
		if total := sumWeights(c.mix); total == 0 {
			return nil, errors.New("--mix: the weights add up to 0")
		}
	case !slices.Contains(ops, c.op):
		return nil, fmt.Errorf("--op must be one of %v or mixed, not %q", ops, c.op)
	}
	if c.verify && (c.op != "put" || c.keys != "fresh") {
		return nil, errors.New("--verify needs --op put --keys fresh: then every acknowledged write has exactly one right answer")
	}
	if c.prefix == "" {
		c.prefix = "bench/" + time.Now().UTC().Format("20060102T150405.000") + "/"
	}
	return c, nil
}

func sumWeights(m map[string]int) int {
	n := 0
	for _, w := range m {
		n += w
	}
	return n
}

// Run parses args (the flags of cmd/bench), runs the load, prints the
// results to stdout and progress to stderr (a line a second if tty), and
// returns the exit status. dial makes one worker's connection to an
// endpoint.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, tty bool, dial Dial) int {
	return RunWithHooks(ctx, args, stdout, stderr, tty, dial, Hooks{})
}

// Hooks lets a program that embeds the load tool act between its phases.
type Hooks struct {
	// BeforeVerify, if set, runs once the load is over and before
	// --verify reads the writes back: a caller that measures what the
	// load cost the servers stops measuring there.
	BeforeVerify func()
}

// RunWithHooks is Run, calling hooks on the way.
func RunWithHooks(ctx context.Context, args []string, stdout, stderr io.Writer, tty bool, dial Dial, hooks Hooks) int {
	cfg, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return exitUsage
	}
	b := newBench(cfg, dial)
	defer b.close()
	res := b.run(ctx, stderr, tty)
	if hooks.BeforeVerify != nil {
		hooks.BeforeVerify()
	}
	if cfg.verify {
		res.Verify = b.verifyAll(ctx)
	}
	res.print(stdout)
	switch {
	case res.Verify != nil && res.Verify.Lost > 0:
		return exitLost
	case res.Ops == 0:
		return exitNothing
	}
	return exitOK
}

// bench is one run: its workers, what they count, and for --verify what
// they wrote.
type bench struct {
	cfg     *config
	targets []Target // one per worker
	dial    Dial

	next      atomic.Int64 // fresh keys written so far
	measuring atomic.Bool
	stopAt    atomic.Int64 // with --count: stop after this many measured requests
	measured  atomic.Int64
	seq       atomic.Int64 // unique values

	// limiter, with --rate, hands out the right to send a request, spread
	// evenly over each second. Its burst, one token per client, lets the
	// clients make up after a stall in which all of them were waiting for
	// answers, so the rate is kept on average.
	limiter *rate.Limiter

	mu     sync.Mutex // guards hist, errors, ok and acked
	hist   *hdrhistogram.Histogram
	errors map[string]int64
	ok     int64
	acked  []int64 // fresh key numbers whose PUT was acknowledged (--verify)
}

func newBench(cfg *config, dial Dial) *bench {
	b := &bench{cfg: cfg, dial: dial, errors: map[string]int64{},
		hist: hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)}
	if cfg.rate > 0 {
		b.limiter = rate.NewLimiter(rate.Limit(cfg.rate), cfg.clients)
	}
	for i := range cfg.clients {
		b.targets = append(b.targets, dial(cfg.endpoints[b.endpointOf(i)], !cfg.routeWrites))
	}
	return b
}

func (b *bench) endpointOf(worker int) int {
	if b.cfg.pin >= 0 {
		return b.cfg.pin
	}
	return worker % len(b.cfg.endpoints)
}

func (b *bench) close() {
	for _, t := range b.targets {
		t.Close()
	}
}

func (b *bench) key(n int64) string { return b.cfg.prefix + strconv.FormatInt(n, 10) }

// value is a new unique value; valueFor is the one value a fresh key gets,
// so --verify need not remember it.
func (b *bench) value() string { return b.pad("v" + strconv.FormatInt(b.seq.Add(1), 36)) }

func (b *bench) valueFor(n int64) string { return b.pad("k" + strconv.FormatInt(n, 36)) }

func (b *bench) pad(v string) string {
	if len(v) >= b.cfg.valueSize {
		return v
	}
	return v + strings.Repeat("x", b.cfg.valueSize-len(v))
}

// pickKey chooses the key of a request. Fresh writes take the next number;
// reads (and deletes, CAS) of a fresh run take one already written.
func (b *bench) pickKey(rng *rand.Rand, op string) (int64, bool) {
	switch b.cfg.keys {
	case "uniform":
		return rng.Int64N(int64(b.cfg.keyspace)), false
	case "hot":
		hot := max(1, int64(float64(b.cfg.keyspace)*b.cfg.hotKeys))
		if rng.Float64() < b.cfg.hotShare {
			return rng.Int64N(hot), false
		}
		return rng.Int64N(int64(b.cfg.keyspace)), false
	}
	if op == "put" {
		return b.next.Add(1) - 1, true
	}
	if n := b.next.Load(); n > 0 {
		return rng.Int64N(n), false
	}
	return rng.Int64N(int64(b.cfg.keyspace)), false
}

func (b *bench) pickOp(rng *rand.Rand) string {
	if b.cfg.op != "mixed" {
		return b.cfg.op
	}
	n := rng.IntN(sumWeights(b.cfg.mix))
	for _, op := range ops {
		if n < b.cfg.mix[op] {
			return op
		}
		n -= b.cfg.mix[op]
	}
	return "get"
}

// one sends one request and reports its latency and error.
func (b *bench) one(ctx context.Context, t Target, rng *rand.Rand) (op string, keyN int64, fresh bool, lat time.Duration, err error) {
	op = b.pickOp(rng)
	keyN, fresh = b.pickKey(rng, op)
	key := b.key(keyN)
	rctx, cancel := context.WithTimeout(ctx, b.cfg.timeout)
	defer cancel()
	start := time.Now()
	switch op {
	case "put":
		v := b.valueFor(keyN)
		if !fresh {
			v = b.value()
		}
		err = t.Put(rctx, key, v)
	case "get":
		_, _, err = t.Get(rctx, key, b.cfg.serializable)
	case "delete":
		err = t.Delete(rctx, key)
	case "cas":
		var cur string
		var found bool
		cur, found, err = t.Get(rctx, key, true)
		if err == nil {
			expect := &cur
			if !found {
				expect = nil
			}
			start = time.Now() // the CAS itself is what is measured
			_, err = t.CAS(rctx, key, expect, b.value())
		}
	}
	return op, keyN, fresh, time.Since(start), err
}

func (b *bench) worker(ctx context.Context, i int, wg *sync.WaitGroup) {
	defer wg.Done()
	rng := rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
	t := b.targets[i]
	for ctx.Err() == nil {
		if b.limiter != nil && b.limiter.Wait(ctx) != nil {
			return // the run ended while this client waited for its turn
		}
		op, keyN, fresh, lat, err := b.one(ctx, t, rng)
		if ctx.Err() != nil && err != nil {
			return // cut short by the end of the run, not an error of the store
		}
		measured := b.measuring.Load()
		b.mu.Lock()
		if err == nil && op == "put" && fresh && b.cfg.verify {
			b.acked = append(b.acked, keyN)
		}
		if measured {
			if err != nil {
				b.errors[errorKind(err)]++
			} else {
				b.ok++
				b.hist.RecordValue(max(1, lat.Microseconds()))
			}
		}
		b.mu.Unlock()
		if measured && b.cfg.count > 0 && b.measured.Add(1) >= b.cfg.count {
			return
		}
	}
}

func (b *bench) run(ctx context.Context, stderr io.Writer, tty bool) *result {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for i := range b.cfg.clients {
		wg.Add(1)
		go b.worker(ctx, i, &wg)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	select {
	case <-time.After(b.cfg.warmup):
	case <-done:
	case <-ctx.Done():
	}
	b.measuring.Store(true)
	start := time.Now()
	var deadline <-chan time.Time
	if b.cfg.count == 0 {
		deadline = time.After(b.cfg.duration)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var last int64
loop:
	for {
		select {
		case <-deadline:
			break loop
		case <-done:
			break loop
		case <-ctx.Done():
			break loop
		case <-tick.C:
			if tty {
				b.mu.Lock()
				ok, p99 := b.ok, b.hist.ValueAtQuantile(99)
				errs := int64(0)
				for _, n := range b.errors {
					errs += n
				}
				b.mu.Unlock()
				fmt.Fprintf(stderr, "\r%6.0fs  %8d ops/s  p99 %7.2f ms  errors %d   ", time.Since(start).Seconds(), ok-last, float64(p99)/1000, errs)
				last = ok
			}
		}
	}
	elapsed := time.Since(start)
	b.measuring.Store(false)
	cancel()
	<-done
	if tty {
		fmt.Fprintln(stderr)
	}
	return b.result(elapsed)
}

// result is what a run measured; its JSON form is the last line printed.
type result struct {
	Op          string `json:"op"`
	Consistency string `json:"consistency,omitempty"`
	Clients     int    `json:"clients"`
	Endpoints   int    `json:"endpoints"`
	Pinned      bool   `json:"pinned"`
	// RoutedWrites: each client sent its writes to the leader its member
	// named (--route-writes).
	RoutedWrites bool             `json:"routed_writes"`
	Keys         string           `json:"keys"`
	ValueSize    int              `json:"value_size"`
	Seconds      float64          `json:"seconds"`
	Ops          int64            `json:"ops"`
	OpsPerSec    float64          `json:"ops_per_sec"`
	LatencyMs    latency          `json:"latency_ms"`
	Errors       map[string]int64 `json:"errors"`
	Verify       *verifyResult    `json:"verify,omitempty"`
	Rate         float64          `json:"rate,omitempty"` // the cap on requests a second (--rate); 0: none
}

type latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99.9"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

func (b *bench) result(elapsed time.Duration) *result {
	b.mu.Lock()
	defer b.mu.Unlock()
	ms := func(us int64) float64 { return float64(us) / 1000 }
	r := &result{Op: b.cfg.op, Clients: b.cfg.clients, Endpoints: len(b.cfg.endpoints), Pinned: b.cfg.pin >= 0, RoutedWrites: b.cfg.routeWrites,
		Keys: b.cfg.keys, ValueSize: b.cfg.valueSize, Rate: b.cfg.rate, Seconds: elapsed.Seconds(), Ops: b.ok,
		Errors: map[string]int64{}}
	if b.cfg.op == "get" || b.cfg.op == "mixed" {
		r.Consistency = map[bool]string{false: "linearizable", true: "serializable"}[b.cfg.serializable]
	}
	if elapsed > 0 {
		r.OpsPerSec = float64(b.ok) / elapsed.Seconds()
	}
	if b.ok > 0 {
		r.LatencyMs = latency{P50: ms(b.hist.ValueAtQuantile(50)), P90: ms(b.hist.ValueAtQuantile(90)),
			P99: ms(b.hist.ValueAtQuantile(99)), P999: ms(b.hist.ValueAtQuantile(99.9)), Max: ms(b.hist.Max()),
			Mean: b.hist.Mean() / 1000}
	}
	for k, n := range b.errors {
		r.Errors[k] = n
	}
	return r
}

func (r *result) print(w io.Writer) {
	what := r.Op
	if r.Consistency != "" {
		what += " (" + r.Consistency + ")"
	}
	spread := fmt.Sprintf("spread over %d endpoints", r.Endpoints)
	if r.Pinned {
		spread = "pinned to one endpoint"
	}
	if r.RoutedWrites && r.Op != "get" {
		spread += " (writes to the leader)"
	}
	capped := ""
	if r.Rate > 0 {
		capped = fmt.Sprintf(", at most %g requests/s", r.Rate)
	}
	fmt.Fprintf(w, "%s, %d clients %s, %s keys, %d-byte values%s\n", what, r.Clients, spread, r.Keys, r.ValueSize, capped)
	fmt.Fprintf(w, "  %d ok in %.2fs: %.0f ops/s\n", r.Ops, r.Seconds, r.OpsPerSec)
	l := r.LatencyMs
	fmt.Fprintf(w, "  latency ms: p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n", l.P50, l.P90, l.P99, l.P999, l.Max, l.Mean)
	if len(r.Errors) == 0 {
		fmt.Fprintln(w, "  errors: none")
	} else {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(r.Errors)) {
			parts = append(parts, fmt.Sprintf("%s %d", k, r.Errors[k]))
		}
		fmt.Fprintln(w, "  errors:", strings.Join(parts, ", "))
	}
	if v := r.Verify; v != nil {
		fmt.Fprintf(w, "  verify: %d acknowledged writes read back from %d members: %d lost", v.Acked, v.Members, v.Lost)
		if v.Unreadable > 0 {
			fmt.Fprintf(w, ", %d reads failed", v.Unreadable)
		}
		fmt.Fprintln(w)
		for _, ex := range v.Examples {
			fmt.Fprintln(w, "    lost:", ex)
		}
	}
	line, _ := json.Marshal(r)
	fmt.Fprintf(w, "%s\n", line)
}
