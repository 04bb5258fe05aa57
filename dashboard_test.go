package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestDashboardServed(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	c.leader()
	for _, tc := range []struct {
		path, says, ctype string
		code              int
	}{
		{"/ui/", `src="app.js"`, "text/html", 200},
		{"/ui/app.js", "/v1/cluster", "javascript", 200},
		{"/ui/style.css", "tr.leader", "text/css", 200},
		{"/ui/nope.js", "404", "text/plain", 404},
	} {
		r := do(t, "GET", c.url(0, tc.path), "")
		if r.code != tc.code || !strings.Contains(r.body, tc.says) || !strings.Contains(r.header.Get("Content-Type"), tc.ctype) {
			t.Errorf("GET %s: %d %s %.80q", tc.path, r.code, r.header.Get("Content-Type"), r.body)
		}
		if tc.code == 200 && !strings.Contains(r.header.Get("Content-Security-Policy"), "default-src 'self'") {
			t.Errorf("GET %s: no CSP header", tc.path)
		}
	}
	if r := do(t, "PUT", c.url(0, "/ui/"), "x"); r.code != 405 {
		t.Errorf("PUT /ui/: %d", r.code)
	}
	req, _ := tryDo("GET", c.url(0, "/ui"), "")
	if req.code != 200 || !strings.Contains(req.body, "app.js") {
		t.Errorf("GET /ui (redirected): %d", req.code)
	}
}

// GET /v1/cluster on any member gathers every member's status and the
// leader's view of their progress, and shows a member that is down.
func TestClusterView(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	c.mustPut(lead, "k", "v")
	f := (lead + 1) % 3
	var got clusterReply
	eventually(t, 10*time.Second, func() error {
		got = decodeJSON[clusterReply](t, do(t, "GET", c.url(f, "/v1/cluster"), ""))
		if got.Member != uint64(f+1) || got.Leader != uint64(lead+1) || got.View != "leader" || len(got.Members) != 3 {
			return fmt.Errorf("%+v", got)
		}
		for _, m := range got.Members {
			if m.Status == nil || m.Status.ID != m.ID || m.Match == nil || m.Reachable == nil || !*m.Reachable {
				return fmt.Errorf("member %d: %+v (error %q)", m.ID, m.memberJSON, m.Error)
			}
			if len(m.Status.Traffic.Bounds) == 0 || len(m.Status.Traffic.Writes.Buckets) != len(m.Status.Traffic.Bounds) {
				return fmt.Errorf("member %d traffic: %+v", m.ID, m.Status.Traffic)
			}
		}
		return nil
	})
	if w := got.Members[lead].Status.Traffic.Writes; w.Count == 0 || w.Buckets[len(w.Buckets)-1] != w.Count {
		t.Errorf("the PUT is not in the write traffic: %+v", w)
	}
	for _, bad := range []struct{ method, path string }{{"POST", "/v1/cluster"}, {"GET", "/v1/cluster?x=1"}} {
		if r := do(t, bad.method, c.url(f, bad.path), ""); r.code/100 != 4 {
			t.Errorf("%s %s: %d", bad.method, bad.path, r.code)
		}
	}

	down := (lead + 2) % 3
	c.stop(down)
	eventually(t, 10*time.Second, func() error {
		got = decodeJSON[clusterReply](t, do(t, "GET", c.url(f, "/v1/cluster"), ""))
		m := got.Members[down]
		if m.Status != nil || !strings.Contains(m.Error, "unreachable") {
			return fmt.Errorf("stopped member %d: status %v, error %q", m.ID, m.Status != nil, m.Error)
		}
		if m.Reachable == nil || *m.Reachable {
			return fmt.Errorf("the leader still sees stopped member %d reachable", m.ID)
		}
		return nil
	})
}
