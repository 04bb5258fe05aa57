package main

import (
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The server's own Prometheus metrics, beside what etcd's rafthttp, wal and
// snap packages and the Go collectors put in the default registry. They are
// process-wide: one member per process, as the binary runs (in-process test
// clusters share them).
var (
	metricRequests = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "raftexample", Name: "http_request_duration_seconds",
		Help:    "Client API requests by route and status class (watches last as long as they wait).",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18), // 100µs .. 13s
	}, []string{"route", "code"})
	metricHandoffs = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "raftexample", Name: "http_handoffs_total",
		Help: "Client connections the fast lane handed to net/http, with the request that needed it (a watch, an operator route, a membership change); see --net-http.",
	})
	metricProposals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "raftexample", Name: "proposals_total",
		Help: "Writes and membership changes proposed by this member, by how they ended: applied, or failed (with the outcome unknown or refused).",
	}, []string{"result"})
	metricProposalsPending = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "raftexample", Name: "proposals_pending",
		Help: "Proposals of this member waiting to be applied.",
	})
	metricLeaderChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "raftexample", Name: "leader_changes_total",
		Help: "Leader changes seen by this member (to no leader included).",
	})
	metricHasLeader = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "raftexample", Name: "has_leader",
		Help: "1 if this member knows a leader, else 0.",
	})
	metricReadIndex = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "raftexample", Name: "read_index_duration_seconds",
		Help:    "ReadIndex rounds (one serves every linearizable read waiting for it), until a quorum confirmed the commit index or the round failed.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
	})
	metricRemoteReads = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "raftexample", Name: "read_index_followers_answered_total",
		Help: "Followers' ReadIndex requests this member answered as leader from its own rounds.",
	})
	metricCommitted = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "raftexample", Name: "committed_index",
		Help: "Highest log index this member knows committed.",
	})
	metricApplied = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "raftexample", Name: "applied_index",
		Help: "Highest log index this member's state machine has applied (apply lag: committed_index - applied_index).",
	})
	metricSnapshotSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "raftexample", Name: "snapshot_duration_seconds",
		Help:    "Taking a snapshot: encoding it and making file and WAL record durable.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	})
	metricSnapshotBytes = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "raftexample", Name: "snapshot_size_bytes",
		Help: "Size of this member's newest snapshot: the last it took, or the one it restored (at start, or sent by the leader).",
	})
	metricWALSpares = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "raftexample", Name: "wal_spare_segments_total",
		Help: "WAL spare segments this member wrote zeros over (walzero.go), by result: zeroed whole, or taken by the WAL first (its writes into the rest then commit the file system's journal, as without zeroing).",
	}, []string{"result"})
	metricLogSinceSnapshot = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "raftexample", Name: "log_bytes_since_snapshot",
		Help: "Entry data applied since this member's newest snapshot. The next one is due when it reaches half that snapshot's size (and --snapshot-count entries have been applied); a restart replays this much log.",
	})
	metricLogReadBack = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "raftexample", Name: "raft_log_read_back_entries_total",
		Help: "Log entries read back from the WAL because they had left the in-memory window (for a follower that is behind, or replay after a restart).",
	})
	metricLogMemoryBytes = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "raftexample", Name: "raft_log_memory_bytes",
		Help: "Data bytes of the raft log entries held in memory: those not yet applied plus the window kept for followers.",
	})
	metricCheckpoints = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "raftexample", Name: "wal_checkpoints_total",
		Help: "Checkpoint records written to the WAL (--wal-checkpoint-bytes): a restart reads the log up to the newest one a record at a time.",
	})
	metricWatchers = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "raftexample", Name: "watchers",
		Help: "Watches (long polls and streams) being served.",
	})
	metricWatchEvents = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "raftexample", Name: "watch_events_sent_total",
		Help: "Events sent to watchers.",
	})
)

func init() {
	prometheus.MustRegister(metricRequests, metricHandoffs, metricProposals, metricProposalsPending, metricLeaderChanges,
		metricHasLeader, metricReadIndex, metricRemoteReads, metricCommitted, metricApplied, metricSnapshotSeconds,
		metricSnapshotBytes, metricLogSinceSnapshot, metricLogReadBack, metricLogMemoryBytes, metricCheckpoints, metricWatchers, metricWatchEvents, metricWALSpares)
}

// proposalResult labels how a proposal ended.
func proposalResult(err error) string {
	switch {
	case err == nil:
		return "applied"
	case classify(err).outcome == outcomeUnknown:
		return "unknown"
	}
	return "refused"
}

// instrument times every request by route (a fixed set, so that the label
// never grows with keys) and status class.
func instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r)
		metricRequests.WithLabelValues(routeLabel(r), statusClass(sw.status)).Observe(time.Since(start).Seconds())
	})
}

// statusClass is a status's class label, "1xx" to "5xx" (anything else,
// which no handler here writes, is "other").
func statusClass(status int) string {
	switch status / 100 {
	case 1:
		return "1xx"
	case 2:
		return "2xx"
	case 3:
		return "3xx"
	case 4:
		return "4xx"
	case 5:
		return "5xx"
	}
	return "other"
}

// routeLabel names a request's route for the metrics: a fixed set of
// labels, whatever the client sends.
func routeLabel(r *http.Request) string {
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, versionedPrefix):
		rest := strings.TrimPrefix(p, versionedPrefix)
		first, _, _ := strings.Cut(rest, "/")
		switch first {
		case "kv":
			// The handler parsed the query already; parse it again only
			// if it may hold wait (its name possibly percent-encoded).
			if wantsStream(r) || strings.ContainsAny(r.URL.RawQuery, "w%") && r.URL.Query().Get("wait") == "true" {
				return "v1_watch"
			}
			// Only the methods the route serves name a label: a label
			// per method a client invents would grow the metrics without
			// bound.
			switch r.Method {
			case http.MethodGet:
				return "v1_kv_get"
			case http.MethodHead:
				return "v1_kv_head"
			case http.MethodPut:
				return "v1_kv_put"
			case http.MethodDelete:
				return "v1_kv_delete"
			}
			return "v1_kv_other"
		case "txn", "status", "log-level", "members", "leader":
			return "v1_" + first
		}
		return "v1_other"
	case isOpsRoute(p):
		switch {
		case strings.HasPrefix(p, debugPrefix):
			return "debug"
		case p == "/ui" || strings.HasPrefix(p, uiPrefix):
			return "ui" // not the path: any path under /ui/ is one label
		}
		return strings.TrimPrefix(p, "/")
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return "root_get"
	case http.MethodPut:
		return "root_put"
	case http.MethodPost, http.MethodDelete:
		return "root_member"
	}
	return "root_other"
}

// statusWriter records the status a handler sent. Unwrap lets
// http.ResponseController reach the real writer (Flush, for streams).
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// traffic is the client reads and writes this process has served since it
// started, as cumulative latency histograms (from metricRequests): two
// polls give the rate and latency percentiles between them.
type traffic struct {
	Bounds []float64 `json:"bounds"` // bucket upper bounds in seconds, for both
	Reads  histogram `json:"reads"`
	Writes histogram `json:"writes"`
}

type histogram struct {
	Count   uint64   `json:"count"`
	Sum     float64  `json:"sumSeconds"`
	Buckets []uint64 `json:"buckets"` // cumulative counts, one per bound
	Errors  uint64   `json:"errors"`  // answered 5xx (also in Count)
}

// trafficRoutes says which routes count as reads and writes (watches,
// membership and operator routes are neither).
var trafficRoutes = map[string]bool{
	"root_get": false, "v1_kv_get": false, "v1_kv_head": false,
	"root_put": true, "v1_kv_put": true, "v1_kv_delete": true, "v1_txn": true,
}

func clientTraffic() traffic {
	var t traffic
	ch := make(chan prometheus.Metric, 16)
	go func() {
		metricRequests.Collect(ch)
		close(ch)
	}()
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) != nil || d.GetHistogram() == nil {
			continue
		}
		var route, code string
		for _, l := range d.GetLabel() {
			switch l.GetName() {
			case "route":
				route = l.GetValue()
			case "code":
				code = l.GetValue()
			}
		}
		write, ok := trafficRoutes[route]
		if !ok {
			continue
		}
		hist := &t.Reads
		if write {
			hist = &t.Writes
		}
		dh := d.GetHistogram()
		hist.Count += dh.GetSampleCount()
		hist.Sum += dh.GetSampleSum()
		if code == "5xx" {
			hist.Errors += dh.GetSampleCount()
		}
		bs := dh.GetBucket()
		if t.Bounds == nil {
			for _, b := range bs {
				t.Bounds = append(t.Bounds, b.GetUpperBound())
			}
		}
		if len(hist.Buckets) < len(bs) {
			hist.Buckets = append(hist.Buckets, make([]uint64, len(bs)-len(hist.Buckets))...)
		}
		for i, b := range bs {
			hist.Buckets[i] += b.GetCumulativeCount()
		}
	}
	if t.Bounds == nil {
		t.Bounds = []float64{}
	}
	for _, hist := range []*histogram{&t.Reads, &t.Writes} {
		if hist.Buckets == nil {
			hist.Buckets = make([]uint64, len(t.Bounds))
		}
	}
	return t
}
