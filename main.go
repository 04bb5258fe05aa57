// Command raftexample is a replicated in-memory key-value server built on
// etcd's raft, compatible with etcd's raftexample command line and HTTP API.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func main() {
	// Only a member that is about to serve starts again (schedtune.go):
	// --help and a bad flag answer at once, with nothing else on stderr.
	if _, err := parseConfig(os.Args[1:], os.Getenv, io.Discard); err == nil {
		keepSysmonAwake()
	}
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

type config struct {
	id              uint64
	cluster         []string
	port            int
	join            bool
	listen          string
	dataDir         string
	snapshotCount   uint64
	logWindow       uint64
	checkpointBytes uint64
	tick            time.Duration
	electionTicks   int
	maxInflight     int
	requestTimeout  time.Duration
	maxRequestBytes int64
	limits          limits
	watchHistory    int
	logLevel        zapcore.Level
	level           *zap.AtomicLevel // the logger's level, changeable at run time; nil: fixed
	enablePprof     bool
	strictReconfig  bool
	clientURL       string       // --advertise-client-url; "": derived at start
	expectHeap      func(uint64) // told what a restart will replay (gcTuner.expect, heapPrep.grow); nil: nothing
	hugePages       bool         // advise huge pages for the heap a restart rebuilds (hugepages.go)
	netHTTP         bool         // serve the client API with net/http alone, without the fast lane (fastlane.go)
}

const envPrefix = "RAFTEXAMPLE_"

// parseConfig reads flags, then RAFTEXAMPLE_* environment variables for the
// flags not given; flags win.
func parseConfig(args []string, getenv func(string) string, usage io.Writer) (config, error) {
	fs := flag.NewFlagSet("raftexample", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	id := fs.Uint64("id", 1, "this node's id: its position (1-based) in --cluster")
	cluster := fs.String("cluster", "http://127.0.0.1:9021", "comma-separated peer URLs of the initial members, in id order")
	port := fs.Int("port", 9121, "port of the client HTTP API")
	join := fs.Bool("join", false, "join an existing cluster (after POST /<id> on a member)")
	listen := fs.String("listen", "127.0.0.1", "host or IP the client HTTP API listens on")
	dataDir := fs.String("data-dir", ".", "directory holding raftexample-<id> (WAL) and raftexample-<id>-snap")
	snapshotCount := fs.Uint64("snapshot-count", 10000, "applied entries between snapshots, at the least (a store past 4 MiB also waits until the log since the last snapshot holds half of it)")
	logWindow := fs.Uint64("log-window-bytes", 8<<20, "bytes of applied raft log kept in memory for followers that are a little behind; older entries since the snapshot are read back from the WAL")
	checkpointBytes := fs.Uint64("wal-checkpoint-bytes", 16<<20, "bytes of committed log between checkpoint records in the WAL; a restart holds at most about this much of the log in memory at once (0: none, the whole log since the snapshot)")
	tick := fs.Int("tick", 100, "raft tick in milliseconds")
	electionTicks := fs.Int("election-ticks", 10, "ticks without a leader before an election (heartbeat is 1 tick)")
	maxInflight := fs.Int("max-inflight-appends", 1, "appends a leader sends a follower before it waits for an answer; 1 packs all writes that arrive meanwhile into the next one (raise it on links with a long round trip)")
	requestTimeout := fs.Duration("request-timeout", 5*time.Second, "how long a request may wait for the cluster before 503")
	maxRequestBytes := fs.Int64("max-request-bytes", 1536*1024, "largest accepted request body in bytes")
	maxKeyBytes := fs.Int("max-key-bytes", 4096, "longest key in bytes")
	maxValueBytes := fs.Int64("max-value-bytes", 1536*1024, "largest value in bytes (at most --max-request-bytes)")
	maxTxnOps := fs.Int("max-txn-ops", 128, "most compares plus ops in one transaction")
	maxList := fs.Int("max-list", 1000, "most keys in one listing page (and the page size when ?limit is not given)")
	watchHistory := fs.Int("watch-history", 10000, "recent events kept for watches; a watch from an older index gets 410")
	maxWatchers := fs.Int("max-watchers", 1000, "watches (long polls and streams) one member serves at once")
	maxWatchWait := fs.Duration("max-watch-wait", 5*time.Minute, "longest ?timeout of a long-poll watch (the default is 60s or this, if shorter)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	hugePages := fs.Bool("huge-pages", true, "on Linux with transparent huge pages in madvise mode, ask for them for the heap a restart rebuilds (halves a 1M-key restart on a VM; no effect with THP always or never)")
	enablePprof := fs.Bool("enable-pprof", false, "serve Go profiles under /debug/pprof/ on the client API")
	strictReconfig := fs.Bool("strict-reconfig-check", true, "refuse membership changes that would leave fewer reachable voters than a quorum")
	netHTTP := fs.Bool("net-http", false, "serve the client API with Go's net/http alone; by default fasthttp serves the key-value requests and hands every other connection to net/http")
	clientURL := fs.String("advertise-client-url", "", "the client API's URL as other members and /v1/members show it (default: http://<--listen, or the peer URL's host if --listen is 0.0.0.0 or ::>:<port>)")
	fs.Usage = func() {} // errors are reported in one line by the caller

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(usage, "Usage: raftexample [flags]\n\nEvery flag can also be set by an environment variable, e.g. --port by %sPORT; a flag given on the command line wins.\n\n", envPrefix)
			fs.SetOutput(usage)
			fs.PrintDefaults()
		}
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q (flags start with --)", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		env := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := getenv(env); v != "" && !given[f.Name] && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("invalid %s=%q: %w", env, v, err)
			}
		}
	})
	if envErr != nil {
		return config{}, envErr
	}

	cfg := config{
		id: *id, port: *port, join: *join, listen: *listen, dataDir: *dataDir,
		snapshotCount: *snapshotCount, logWindow: *logWindow, checkpointBytes: *checkpointBytes, tick: time.Duration(*tick) * time.Millisecond,
		electionTicks: *electionTicks, maxInflight: *maxInflight, requestTimeout: *requestTimeout, maxRequestBytes: *maxRequestBytes,
		limits: limits{keyBytes: *maxKeyBytes, valueBytes: *maxValueBytes, txnOps: *maxTxnOps, listLimit: *maxList,
			watchers: *maxWatchers, watchWait: *maxWatchWait},
		watchHistory: *watchHistory, enablePprof: *enablePprof, hugePages: *hugePages, strictReconfig: *strictReconfig, clientURL: *clientURL,
		netHTTP: *netHTTP,
	}
	if cfg.clientURL != "" {
		if err := validateURL("client", cfg.clientURL); err != nil {
			return config{}, fmt.Errorf("invalid --advertise-client-url: %w", err)
		}
	}
	seen := map[string]bool{}
	for _, u := range strings.Split(*cluster, ",") {
		u = strings.TrimSpace(u)
		if err := validatePeerURL(u); err != nil {
			return config{}, fmt.Errorf("invalid --cluster: %w", err)
		}
		if seen[u] {
			return config{}, fmt.Errorf("invalid --cluster: %s is listed twice", u)
		}
		seen[u] = true
		cfg.cluster = append(cfg.cluster, u)
	}
	lvl, err := zapcore.ParseLevel(*logLevel)
	if err != nil {
		return config{}, fmt.Errorf("invalid --log-level %q: use debug, info, warn or error", *logLevel)
	}
	cfg.logLevel = lvl
	switch {
	case cfg.id == 0 || cfg.id > uint64(len(cfg.cluster)):
		return config{}, fmt.Errorf("invalid --id %d: --cluster lists %d URL(s), so --id must be 1..%d", cfg.id, len(cfg.cluster), len(cfg.cluster))
	case cfg.port < 0 || cfg.port > 65535:
		return config{}, fmt.Errorf("invalid --port %d: must be 0..65535", cfg.port)
	case cfg.listen == "":
		return config{}, errors.New("invalid --listen: must name a host or IP")
	case cfg.dataDir == "":
		return config{}, errors.New("invalid --data-dir: must not be empty")
	case cfg.snapshotCount == 0:
		return config{}, errors.New("invalid --snapshot-count 0: must be at least 1")
	case *tick < 1:
		return config{}, fmt.Errorf("invalid --tick %d: must be at least 1 ms", *tick)
	case cfg.electionTicks < 2:
		return config{}, fmt.Errorf("invalid --election-ticks %d: must be at least 2 (heartbeat is 1 tick)", cfg.electionTicks)
	case cfg.maxInflight < 1 || cfg.maxInflight > 1<<16:
		return config{}, fmt.Errorf("invalid --max-inflight-appends %d: must be 1..%d", cfg.maxInflight, 1<<16)
	case cfg.requestTimeout <= 0:
		return config{}, fmt.Errorf("invalid --request-timeout %v: must be positive", cfg.requestTimeout)
	case cfg.maxRequestBytes < 1 || cfg.maxRequestBytes > 64<<20:
		return config{}, fmt.Errorf("invalid --max-request-bytes %d: must be 1..%d", cfg.maxRequestBytes, 64<<20)
	case cfg.limits.keyBytes < 1 || cfg.limits.keyBytes > 1<<20:
		return config{}, fmt.Errorf("invalid --max-key-bytes %d: must be 1..%d", cfg.limits.keyBytes, 1<<20)
	case cfg.limits.valueBytes < 0 || cfg.limits.valueBytes > cfg.maxRequestBytes:
		return config{}, fmt.Errorf("invalid --max-value-bytes %d: must be 0..--max-request-bytes (%d)", cfg.limits.valueBytes, cfg.maxRequestBytes)
	case cfg.limits.txnOps < 1 || cfg.limits.txnOps > 10000:
		return config{}, fmt.Errorf("invalid --max-txn-ops %d: must be 1..10000", cfg.limits.txnOps)
	case cfg.limits.listLimit < 1 || cfg.limits.listLimit > 1000000:
		return config{}, fmt.Errorf("invalid --max-list %d: must be 1..1000000", cfg.limits.listLimit)
	case cfg.watchHistory < 1 || cfg.watchHistory > 100000000:
		return config{}, fmt.Errorf("invalid --watch-history %d: must be 1..100000000", cfg.watchHistory)
	case cfg.limits.watchers < 0:
		return config{}, fmt.Errorf("invalid --max-watchers %d: must be 0 or more", cfg.limits.watchers)
	case cfg.limits.watchWait <= 0:
		return config{}, fmt.Errorf("invalid --max-watch-wait %v: must be positive", cfg.limits.watchWait)
	}
	return cfg, nil
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, getenv, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "raftexample: %v (see raftexample --help)\n", err)
		return 2
	}
	level := zap.NewAtomicLevelAt(cfg.logLevel)
	cfg.level = &level // PUT /v1/log-level changes it
	lg := newLogger(level, stderr)
	defer lg.Sync()

	var tuner *gcTuner
	if gcTuning(getenv) {
		tuner = startGCTuner()
		defer tuner.stop()
	}
	var prep *heapPrep
	if cfg.hugePages {
		prep = newHeapPrep()
	}
	cfg.expectHeap = func(encoded uint64) {
		tuner.expect(encoded) // first: the limit must make room for what grow reserves
		// all the heap the collector will let the replay use
		prep.grow(uint64(gcLimitFor(uint64(float64(encoded)*gcBytesInMemory), gcReplayFloor)))
	}
	s, err := startServer(lg, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "raftexample: %v\n", err)
		if errors.Is(err, errWrongNode) {
			return 2
		}
		return 1
	}
	if tuner != nil {
		ctx, cancel := context.WithCancel(context.Background())
		replayed := make(chan struct{})
		go func() {
			defer close(replayed)
			if s.kv.waitApplied(ctx, s.rn.startCommit) == nil {
				tuner.expect(0) // from here on the live heap says it
				// The replay's garbage and the pages it took stay with the
				// process unless given back now: the limit that let the
				// replay run held them (1M keys: 735 MiB idle after a long
				// replay, 560 MiB with this).
				debug.FreeOSMemory()
			}
		}()
		defer func() { cancel(); <-replayed }()
	}
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigc)
	select {
	case sig := <-sigc:
		lg.Info("signal received; shutting down", zap.Stringer("signal", sig))
		go func() {
			<-sigc
			lg.Warn("second signal; exiting now")
			os.Exit(1)
		}()
	case <-s.removed:
		lg.Info("this member was removed from the cluster; exiting")
	}
	s.stop()
	lg.Info("stopped")
	return 0
}

func newLogger(level zapcore.LevelEnabler, w io.Writer) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(zapcore.AddSync(w)), level)
	return zap.New(core, zap.AddCaller())
}

// server wires the pieces: HTTP API -> kvstore -> proposeC -> raftNode ->
// commitC -> kvstore.
type server struct {
	lg      *zap.Logger
	cfg     config
	kv      *kvstore
	rn      *raftNode
	api     *http.Server
	fast    *fastLane // in front of api on the client port; nil with --net-http
	h       *httpAPI  // api's handler, under the metrics wrapper
	apiLn   net.Listener
	removed chan struct{} // closed when this member learns it was removed

	stopc    chan struct{} // closed by stop
	stopOnce sync.Once
	wg       sync.WaitGroup // API server and the removal watcher
}

func startServer(lg *zap.Logger, cfg config) (*server, error) {
	lg = lg.With(zap.Uint64("member", cfg.id))
	peerURL, _ := url.Parse(cfg.cluster[cfg.id-1])
	peerLn, err := newStoppableListener(peerURL.Host)
	if err != nil {
		return nil, fmt.Errorf("raft peer listener (--cluster entry %d): %w", cfg.id, err)
	}
	apiLn, err := net.Listen("tcp", net.JoinHostPort(cfg.listen, strconv.Itoa(cfg.port)))
	if err != nil {
		peerLn.Close()
		return nil, fmt.Errorf("client API listener (--port): %w", err)
	}

	// Construction follows the data flow, so nothing points back: the
	// membership first (the raft node asks it whether an id was removed),
	// then the raft node, then the state machine, which proposes to it.
	members := newMembership()
	proposeC := make(chan proposal, 4096)
	base := filepath.Join(cfg.dataDir, "raftexample-"+strconv.FormatUint(cfg.id, 10))
	rn, err := newRaftNode(lg, raftConfig{
		id: cfg.id, peers: cfg.cluster, join: cfg.join,
		waldir: base, snapdir: base + "-snap",
		tick: cfg.tick, electionTicks: cfg.electionTicks, maxInflight: cfg.maxInflight,
		requestTimeout: cfg.requestTimeout, snapshotCount: cfg.snapshotCount, logWindow: cfg.logWindow,
		checkpointBytes: cfg.checkpointBytes,
		expectHeap:      cfg.expectHeap,
		isRemoved:       members.isRemoved,
	}, proposeC)
	if err != nil {
		peerLn.Close()
		apiLn.Close()
		return nil, err
	}
	kv := newKVStore(lg, cfg.id, cfg.snapshotCount, proposeC, rn, rn, members, cfg.watchHistory)
	kv.start(rn.commitC)
	if err := rn.start(peerLn); err != nil {
		peerLn.Close()
		apiLn.Close()
		stopParts(rn, kv)
		return nil, err
	}

	stopc := make(chan struct{})
	removed := make(chan struct{})
	h := &httpAPI{lg: lg, store: kv, raftStatus: rn.status, logBounds: rn.logBounds, requestTimeout: cfg.requestTimeout,
		maxRequestBytes: cfg.maxRequestBytes, limits: cfg.limits, stopping: stopc, leaderURL: leaderURLOf(cfg.id, rn.leader, members.clientURL),
		ops: opsConfig{loopAge: rn.loopAge, stalledFor: max(2*time.Second, 20*cfg.tick), enablePprof: cfg.enablePprof, level: cfg.level,
			transferLeadership: rn.transferLeadership, peerActive: rn.peerActive, lastContact: rn.lastContact, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: time.Minute}}, strictReconfig: cfg.strictReconfig, removed: removed, waldir: base, snapdir: base + "-snap", started: time.Now()}}
	s := &server{
		h:  h,
		lg: lg, cfg: cfg, kv: kv, rn: rn, apiLn: apiLn,
		removed: removed,
		stopc:   stopc,
		api: &http.Server{
			Handler:           instrument(h),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          zap.NewStdLog(lg),
		},
	}
	var apiConns net.Listener = apiLn
	if !cfg.netHTTP {
		s.fast = newFastLane(lg, s.api.Handler, apiLn.Addr(), cfg.maxRequestBytes)
		apiConns = s.fast.handoff
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.fast.srv.Serve(apiLn); err != nil {
				lg.Error("client API server (fast lane) stopped", zap.Error(err))
			}
		}()
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := s.api.Serve(apiConns); err != nil && !errors.Is(err, http.ErrServerClosed) {
			lg.Error("client API server stopped", zap.Error(err))
		}
	}()
	go func() {
		defer s.wg.Done()
		select {
		case <-kv.removedSelf:
		case <-rn.removedC:
		case <-s.stopc:
			return
		}
		close(s.removed)
	}()
	clientURL := cfg.clientURL
	if clientURL == "" {
		clientURL = defaultClientURL(cfg.listen, peerURL.Hostname(), apiLn.Addr())
	}
	s.wg.Add(1)
	go s.publishClientURL(clientURL)
	lg.Info("serving", zap.String("client-url", clientURL), zap.String("peer-url", cfg.cluster[cfg.id-1]),
		zap.Strings("cluster", cfg.cluster), zap.Bool("join", cfg.join), zap.String("data-dir", base),
		zap.String("sysmon", sysmonState(os.Getenv)))
	return s, nil
}

// leaderURLOf is httpAPI.leaderURL for member self: the leader's
// published client URL while another member leads, else "".
func leaderURLOf(self uint64, leader func() uint64, clientURL func(uint64) string) func() string {
	return func() string {
		if l := leader(); l != 0 && l != self {
			return clientURL(l)
		}
		return ""
	}
}

// defaultClientURL is where clients reach this member when
// --advertise-client-url is not given: the listen host, or the peer URL's
// host when the API listens on every address.
func defaultClientURL(listen, peerHost string, addr net.Addr) string {
	host := listen
	if ip := net.ParseIP(listen); ip != nil && ip.IsUnspecified() {
		host = peerHost
	}
	port := "0"
	if a, ok := addr.(*net.TCPAddr); ok {
		port = strconv.Itoa(a.Port)
	}
	return "http://" + net.JoinHostPort(host, port)
}

// publishClientURL records u as this member's client URL in the
// replicated membership (so every member lists it), retrying until that is
// applied or the server stops. It does nothing when the membership already
// holds u, as after a restart.
func (s *server) publishClientURL(u string) {
	defer s.wg.Done()
	wait := 200 * time.Millisecond
	for {
		isMember, _, _, _, _ := s.kv.members.lookup(s.cfg.id)
		switch {
		case s.kv.members.clientURL(s.cfg.id) == u:
			return
		case isMember && s.rn.leader() != 0:
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.requestTimeout)
			err := s.kv.PublishClientURL(ctx, u)
			cancel()
			if err == nil {
				s.lg.Info("published client URL", zap.String("client-url", u))
				return
			}
			s.lg.Debug("publishing client URL; will retry", zap.Error(err))
			wait = min(2*wait, 5*time.Second)
		}
		select {
		case <-s.stopc:
			return
		case <-s.removed:
			return
		case <-time.After(wait):
		}
	}
}

// stopParts stops the raft node and the state machine in the one order that
// loses nothing: raft's loops first (no new commits; commitC is closed), then
// the state machine (it applies what it was handed and finishes a snapshot
// in progress, which still writes through the raft node), and only then the
// transport, raft and the WAL.
func stopParts(rn *raftNode, kv *kvstore) {
	rn.stop()
	kv.stop()
	rn.close()
}

// addr is the client API's address (useful with --port 0).
func (s *server) addr() string { return s.apiLn.Addr().String() }

// stop shuts down gracefully: a snapshot first if the log since the newest
// one is long (the member serves meanwhile), then no new requests,
// in-flight ones finish (or fail by their timeout), a leader hands
// leadership to another voter, then raft, the state machine and the WAL
// stop.
func (s *server) stop() {
	s.stopOnce.Do(func() {
		select {
		case <-s.removed: // nothing to restart
		default:
			s.kv.snapshotBeforeStop(5 * time.Second)
		}
		close(s.stopc)
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.requestTimeout+2*time.Second)
		// The fast lane first: a request it reads meanwhile may still hand
		// its connection to net/http, which then answers it.
		if s.fast != nil {
			if err := s.fast.srv.ShutdownWithContext(ctx); err != nil {
				s.lg.Warn("in-flight requests of the fast lane did not finish", zap.Error(err))
			}
		}
		if err := s.api.Shutdown(ctx); err != nil {
			s.lg.Warn("in-flight requests did not finish; closing their connections", zap.Error(err))
			s.api.Close()
		}
		cancel()
		// A leader that just vanished costs the others an election timeout
		// without a leader; handed over, the pause is a round trip. Raft
		// drops a transfer after an election timeout; the target may be
		// stopping too (a whole cluster stopped at once).
		if st := s.rn.status(); st.ID != 0 && st.Lead == st.ID && len(st.Progress) > 1 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Duration(s.cfg.electionTicks)*s.cfg.tick)
			s.h.moveLeaderOff(ctx, st, "stopping")
			cancel()
		}
		s.h.ops.client.CloseIdleConnections()
		stopParts(s.rn, s.kv)
		s.wg.Wait()
	})
}
