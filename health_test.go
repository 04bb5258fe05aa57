package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestHealthAndMetricsRoutes(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.leader()
	for i := range 3 {
		if r := do(t, "GET", c.url(i, "/livez"), ""); r.code != 200 || strings.TrimSpace(r.body) != "ok" {
			t.Fatalf("member %d /livez: %d %q", i+1, r.code, r.body)
		}
		eventually(t, 10*time.Second, func() error {
			if r := do(t, "GET", c.url(i, "/readyz?linearizable=true"), ""); r.code != 200 {
				return &httpErr{r}
			}
			return nil
		})
		if r := do(t, "GET", c.url(i, "/readyz"), ""); r.code != 200 {
			t.Fatalf("member %d /readyz: %d %q", i+1, r.code, r.body)
		}
	}
	for _, tc := range []struct {
		method, path string
		code         int
		says         string
	}{
		{"GET", "/readyz?linearizable=maybe", 400, "true or false"},
		{"GET", "/readyz?verbose=1", 400, "unknown query parameter"},
		{"GET", "/livez?x=1", 400, "unknown query parameter"},
		{"POST", "/livez", 405, "not allowed"},
		{"PUT", "/metrics", 405, "not allowed"},
		{"GET", "/debug/pprof/", 404, "--enable-pprof"},
		{"GET", "/metrics", 200, "etcd_disk_wal_fsync_duration_seconds"},
		{"GET", "/metrics", 200, "go_goroutines"},
	} {
		if r := do(t, tc.method, c.url(0, tc.path), ""); r.code != tc.code || !strings.Contains(r.body, tc.says) {
			t.Errorf("%s %s: %d %q; want %d with %q", tc.method, tc.path, r.code, r.body, tc.code, tc.says)
		}
	}
	// The names are reserved at the root only: such keys live on under /v1/kv.
	if r := do(t, "PUT", c.url(0, "/v1/kv/livez"), "still a key"); r.code != 200 {
		t.Fatalf("PUT /v1/kv/livez: %d %q", r.code, r.body)
	}
	if r := do(t, "GET", c.url(1, "/v1/kv/livez?consistency=linearizable"), ""); r.code != 200 || r.body != "still a key" {
		t.Fatalf("GET /v1/kv/livez: %d %q", r.code, r.body)
	}

	// Without a quorum: alive, not ready, and says why.
	lead := c.leader()
	for i := range 3 {
		if i != lead {
			c.stop(i)
		}
	}
	eventually(t, 10*time.Second, func() error {
		if r := do(t, "GET", c.url(lead, "/readyz"), ""); r.code != 503 || !strings.Contains(r.body, "no leader") {
			return &httpErr{r}
		}
		return nil
	})
	if r := do(t, "GET", c.url(lead, "/livez"), ""); r.code != 200 {
		t.Fatalf("/livez without a quorum: %d %q", r.code, r.body)
	}
	if r := do(t, "GET", c.url(lead, "/readyz?linearizable=true"), ""); r.code != 503 || !strings.Contains(r.body, "not ready") {
		t.Fatalf("/readyz?linearizable=true without a quorum: %d %q", r.code, r.body)
	}
}

type httpErr struct{ r response }

func (e *httpErr) Error() string { return e.r.body }

func TestLivezReportsAStuckRaftLoop(t *testing.T) {
	h := &httpAPI{ops: opsConfig{loopAge: func() time.Duration { return 7 * time.Second }, stalledFor: 2 * time.Second}}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/livez", nil))
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "has not ticked for 7s") {
		t.Fatalf("/livez with a stuck loop: %d %q", w.Code, w.Body)
	}
}

func TestPprofWhenEnabled(t *testing.T) {
	c := newTestCluster(t, 1, func(cfg *config) { cfg.enablePprof = true })
	c.leader()
	if r := do(t, "GET", c.url(0, "/debug/pprof/"), ""); r.code != 200 || !strings.Contains(r.body, "goroutine") {
		t.Fatalf("/debug/pprof/: %d %q", r.code, r.body[:min(200, len(r.body))])
	}
	if r := do(t, "GET", c.url(0, "/debug/pprof/goroutine?debug=1"), ""); r.code != 200 || !strings.Contains(r.body, "readyLoop") {
		t.Fatalf("/debug/pprof/goroutine: %d", r.code)
	}
}

func TestLogLevelAtRunTime(t *testing.T) {
	level := zap.NewAtomicLevelAt(zapcore.InfoLevel)
	c := newTestCluster(t, 1, func(cfg *config) { cfg.level = &level })
	c.leader()
	u := c.url(0, "/v1/log-level")
	if r := do(t, "GET", u, ""); r.code != 200 || strings.TrimSpace(r.body) != `{"level":"info"}` {
		t.Fatalf("GET: %d %q", r.code, r.body)
	}
	if r := do(t, "PUT", u, `{"level":"debug"}`); r.code != 200 || strings.TrimSpace(r.body) != `{"level":"debug"}` || level.Level() != zapcore.DebugLevel {
		t.Fatalf("PUT debug: %d %q, level now %v", r.code, r.body, level.Level())
	}
	for _, tc := range []struct {
		method, path, body string
		code               int
		says               string
	}{
		{"PUT", "/v1/log-level", `{"level":"loud"}`, 400, "debug, info, warn or error"},
		{"PUT", "/v1/log-level", `{"level":"fatal"}`, 400, "debug, info, warn or error"},
		{"PUT", "/v1/log-level", `debug`, 400, `{\"level\"`},
		{"PUT", "/v1/log-level", `{}`, 400, "bad_request"},
		{"POST", "/v1/log-level", `{"level":"info"}`, 405, "not allowed"},
		{"GET", "/v1/log-level?x=1", "", 400, "unknown query parameter"},
	} {
		if r := do(t, tc.method, c.url(0, tc.path), tc.body); r.code != tc.code || !strings.Contains(r.body, tc.says) {
			t.Errorf("%s %s %s: %d %q; want %d with %q", tc.method, tc.path, tc.body, r.code, r.body, tc.code, tc.says)
		}
	}
	if level.Level() != zapcore.DebugLevel {
		t.Fatalf("a refused change changed the level to %v", level.Level())
	}

	fixed := newTestCluster(t, 1, nil)
	fixed.leader()
	if r := do(t, "PUT", fixed.url(0, "/v1/log-level"), `{"level":"debug"}`); r.code != 501 {
		t.Fatalf("a process with a fixed level: %d %q", r.code, r.body)
	}
}

// seriesValue is the value of one series in a /metrics body (0 if absent).
func seriesValue(body, series string) int {
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

func TestOwnMetrics(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *config) { cfg.snapshotCount = 20 })
	lead := c.leader()
	// The metrics are per process, and earlier tests ran here too: count
	// from what they left.
	counted := []string{
		`raftexample_http_request_duration_seconds_count{code="2xx",route="root_put"}`,
		`raftexample_http_request_duration_seconds_count{code="4xx",route="v1_kv_get"}`,
		`raftexample_http_request_duration_seconds_count{code="2xx",route="v1_watch"}`,
	}
	before := do(t, "GET", c.url(lead, "/metrics"), "").body
	for i := range 30 {
		if r := do(t, "PUT", c.url(lead, fmt.Sprintf("/m%d", i)), "v"); r.code != 204 {
			t.Fatalf("PUT: %d %q", r.code, r.body)
		}
	}
	if r := do(t, "GET", c.url((lead+1)%3, "/m1"), ""); r.code != 200 {
		t.Fatalf("GET: %d %q", r.code, r.body)
	}
	do(t, "GET", c.url(lead, "/v1/kv/nope"), "")
	if r := do(t, "GET", c.url(lead, "/v1/kv/?prefix=m&wait=true&index=1&timeout=1s"), ""); r.code != 200 {
		t.Fatalf("watch: %d %q", r.code, r.body)
	}
	eventually(t, 10*time.Second, func() error {
		body := do(t, "GET", c.url(lead, "/metrics"), "").body
		for i, more := range []int{30, 1, 1} {
			if got := seriesValue(body, counted[i]) - seriesValue(before, counted[i]); got != more {
				return fmt.Errorf("/metrics: %s grew by %d, want %d", counted[i], got, more)
			}
		}
		for _, want := range []string{
			`raftexample_proposals_total{result="applied"}`,
			`raftexample_has_leader 1`,
			`raftexample_read_index_duration_seconds_count`,
			`raftexample_snapshot_duration_seconds_count`,
			`raftexample_watch_events_sent_total`,
			`raftexample_proposals_pending 0`,
		} {
			if !strings.Contains(body, want) {
				return fmt.Errorf("/metrics lacks %q", want)
			}
		}
		for _, name := range []string{"raftexample_applied_index", "raftexample_committed_index", "raftexample_snapshot_size_bytes"} {
			if !regexp.MustCompile(`(?m)^` + name + ` [1-9]`).MatchString(body) {
				return fmt.Errorf("/metrics: %s is not positive", name)
			}
		}
		return nil
	})
}

func TestStatusSizesVersionUptime(t *testing.T) {
	c := newTestCluster(t, 1, func(cfg *config) { cfg.snapshotCount = 5 })
	c.leader()
	for i := range 10 {
		do(t, "PUT", c.url(0, fmt.Sprintf("/s%d", i)), "v")
	}
	eventually(t, 5*time.Second, func() error {
		st := decodeJSON[statusReply](t, do(t, "GET", c.url(0, "/v1/status"), ""))
		switch {
		case st.WALBytes <= 0:
			return fmt.Errorf("walBytes %d", st.WALBytes)
		case st.SnapBytes <= 0:
			return fmt.Errorf("snapBytes %d after snapshots", st.SnapBytes)
		case !strings.HasPrefix(st.Version, "raftexample ") || !strings.Contains(st.Version, "go1."):
			return fmt.Errorf("version %q", st.Version)
		case st.Uptime <= 0 || st.Uptime > 600:
			return fmt.Errorf("uptime %v", st.Uptime)
		}
		return nil
	})
}

// raftexample_log_bytes_since_snapshot counts the entry data applied since
// the newest snapshot, and starts again from zero when one is taken.
func TestLogBytesSinceSnapshotMetric(t *testing.T) {
	// Before the five writes the log holds the member's conf change, the
	// new leader's empty entry and, at a time of its own, the entry that
	// publishes the client URL: 8 entries in all, so a snapshot every 8
	// could reset the gauge right after the writes (it did, once).
	c := newTestCluster(t, 1, func(cfg *config) { cfg.snapshotCount = 12 })
	c.leader()
	big := strings.Repeat("v", 1000)
	gauge := func() int {
		return seriesValue(do(t, "GET", c.url(0, "/metrics"), "").body, "raftexample_log_bytes_since_snapshot")
	}
	for i := range 5 { // a new member's first entries: no snapshot before 12
		if r := do(t, "PUT", c.url(0, fmt.Sprintf("/g%d", i)), big); r.code != 204 {
			t.Fatalf("PUT: %d %q", r.code, r.body)
		}
	}
	eventually(t, 5*time.Second, func() error {
		if got := gauge(); got < 5*len(big) {
			return fmt.Errorf("log_bytes_since_snapshot %d after five writes of %d bytes", got, len(big))
		}
		return nil
	})
	// Small writes from here: once a snapshot has been taken after the big
	// ones, the gauge no longer counts them.
	i := 0
	eventually(t, 10*time.Second, func() error {
		i++
		if r := do(t, "PUT", c.url(0, fmt.Sprintf("/s%d", i)), "x"); r.code != 204 {
			t.Fatalf("PUT: %d %q", r.code, r.body)
		}
		if got := gauge(); got >= len(big) {
			return fmt.Errorf("log_bytes_since_snapshot %d after %d small writes", got, i)
		}
		return nil
	})
}
