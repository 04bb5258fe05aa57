package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The operator routes at the root, in the style of etcd and Kubernetes.
// Their names are reserved: keys with these names (or under debug/) are
// reachable only through /v1/kv.
//
//	GET /livez                      the process and its raft loop are alive
//	GET /readyz[?linearizable=true] has a leader and has applied what it knows is committed
//	                                (and, with linearizable, completes a ReadIndex round)
//	GET /metrics                    Prometheus metrics
//	GET /debug/pprof/...            Go profiles, with --enable-pprof
const debugPrefix = "/debug/"

func isOpsRoute(path string) bool {
	switch path {
	case "/livez", "/readyz", "/metrics", "/ui":
		return true
	}
	return strings.HasPrefix(path, debugPrefix) || strings.HasPrefix(path, uiPrefix)
}

// opsConfig is what the operator routes need beyond the store.
type opsConfig struct {
	loopAge     func() time.Duration
	stalledFor  time.Duration // a raft loop that has not ticked for this long is not alive
	enablePprof bool
	level       *zap.AtomicLevel // nil: this process's log level cannot be changed
	// transferLeadership asks raft to move leadership (raft.Node's).
	transferLeadership func(ctx context.Context, lead, to uint64)
	// peerActive reports whether this member reaches member id;
	// strictReconfig makes membership changes check it (strictCheck).
	peerActive func(id uint64) bool
	// lastContact is when a message from member id last arrived.
	lastContact func(id uint64) time.Time
	// client asks other members (GET /v1/cluster) and passes requests on
	// to the leader; its idle connections are closed when the server stops.
	client          *http.Client
	strictReconfig  bool
	removed         <-chan struct{} // closed when this member learns it was removed
	waldir, snapdir string          // for the sizes in /v1/status
	started         time.Time       // for the uptime in /v1/status
}

// dirBytes adds up the sizes of the files in dir (0 if it cannot be read).
func dirBytes(dir string) int64 {
	if dir == "" {
		return 0
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n
}

// version names this build: the module version and VCS revision Go
// stamped into it, and the Go version.
var version = sync.OnceValue(func() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "raftexample (unknown build)"
	}
	v := "raftexample " + bi.Main.Version
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v += " " + s.Value[:min(12, len(s.Value))]
		case "vcs.modified":
			if s.Value == "true" {
				v += "+dirty"
			}
		}
	}
	return v + " " + bi.GoVersion
})

func (h *httpAPI) serveOps(w http.ResponseWriter, r *http.Request) {
	if !h.methods(w, r, http.MethodGet, http.MethodHead) {
		return
	}
	switch p := r.URL.Path; {
	case p == "/ui" || strings.HasPrefix(p, uiPrefix):
		h.serveUI(w, r) // dashboard.go
	case p == "/livez":
		if _, ok := h.query(w, r); !ok {
			return
		}
		if age := h.ops.loopAge(); age > h.ops.stalledFor {
			http.Error(w, fmt.Sprintf("not alive: the raft loop has not ticked for %v (stuck in a disk write or fsync?)", age.Round(time.Millisecond)), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	case p == "/readyz":
		h.readyz(w, r)
	case p == "/metrics":
		promhttp.Handler().ServeHTTP(w, r)
	case !h.ops.enablePprof:
		http.Error(w, "no such route "+p+": profiling is off; start the member with --enable-pprof", http.StatusNotFound)
	case p == "/debug/pprof/cmdline":
		pprof.Cmdline(w, r)
	case p == "/debug/pprof/profile":
		pprof.Profile(w, r)
	case p == "/debug/pprof/symbol":
		pprof.Symbol(w, r)
	case p == "/debug/pprof/trace":
		pprof.Trace(w, r)
	case strings.HasPrefix(p, "/debug/pprof/"):
		pprof.Index(w, r) // the index, and named profiles: heap, goroutine, allocs, ...
	default:
		http.Error(w, "no such route "+p, http.StatusNotFound)
	}
}

func (h *httpAPI) readyz(w http.ResponseWriter, r *http.Request) {
	q, ok := h.query(w, r, "linearizable")
	if !ok {
		return
	}
	linearizable := false
	switch v := q.Get("linearizable"); v {
	case "", "false":
	case "true":
		linearizable = true
	default:
		http.Error(w, "linearizable must be true or false, not "+v, http.StatusBadRequest)
		return
	}
	notReady := func(format string, args ...any) {
		http.Error(w, "not ready: "+fmt.Sprintf(format, args...), http.StatusServiceUnavailable)
	}
	st := h.raftStatus()
	if st.Lead == 0 {
		notReady("no leader known (term %d)", st.HardState.GetTerm())
		return
	}
	if applied, _ := h.store.Applied(); applied < st.HardState.GetCommit() {
		notReady("applied up to index %d of the %d known committed", applied, st.HardState.GetCommit())
		return
	}
	if linearizable {
		ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
		defer cancel()
		if err := h.store.sync(ctx, true); err != nil {
			notReady("no linearizable read: %v", err)
			return
		}
	}
	fmt.Fprintln(w, "ok")
}

// logLevel serves GET and PUT /v1/log-level: this member's log level, as
// {"level": "info"}. A change applies to this member only, at once, and
// lasts until it restarts (--log-level then applies again).
func (h *httpAPI) logLevel(w http.ResponseWriter, r *http.Request) {
	if !h.methods(w, r, http.MethodGet, http.MethodHead, http.MethodPut) {
		return
	}
	if _, ok := h.query(w, r); !ok {
		return
	}
	if h.ops.level == nil {
		h.reject(w, r, http.StatusNotImplemented, "not_supported", "this process's log level is fixed")
		return
	}
	if r.Method == http.MethodPut {
		body, ok := h.readBody(w, r)
		if !ok {
			return
		}
		var req struct {
			Level *string `json:"level"`
		}
		if err := json.Unmarshal(body, &req); err != nil || req.Level == nil {
			h.reject(w, r, http.StatusBadRequest, "bad_request", `want {"level": "debug" | "info" | "warn" | "error"}`)
			return
		}
		lvl, err := zapcore.ParseLevel(*req.Level)
		if err != nil || lvl < zapcore.DebugLevel || lvl > zapcore.ErrorLevel {
			h.reject(w, r, http.StatusBadRequest, "bad_request", "level must be debug, info, warn or error, not "+strconv.Quote(*req.Level))
			return
		}
		if old := h.ops.level.Level(); old != lvl {
			h.ops.level.SetLevel(lvl)
			h.lg.Warn("log level changed", zap.Stringer("from", old), zap.Stringer("to", lvl))
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"level": h.ops.level.Level().String()})
}
