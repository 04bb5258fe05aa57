package client

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// member is a fake member that counts the requests it serves and answers
// writes with hint as X-Leader-URL; status, if set, is its answer to
// writes.
type member struct {
	srv    *httptest.Server
	writes atomic.Int64
	reads  atomic.Int64
	mu     sync.Mutex
	hint   string
	status int
}

func newMember(t *testing.T) *member {
	m := &member{}
	m.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		hint, status := m.hint, m.status
		m.mu.Unlock()
		if r.Method == http.MethodGet {
			m.reads.Add(1)
			for _, h := range []string{"X-Create-Index", "X-Mod-Index", "X-Version"} {
				w.Header().Set(h, "1")
			}
			w.Write([]byte("v"))
			return
		}
		m.writes.Add(1)
		if hint != "" {
			w.Header().Set("X-Leader-URL", hint)
		}
		if status != 0 {
			w.WriteHeader(status)
			w.Write([]byte(`{"error":"timeout","message":"m"}`))
			return
		}
		w.Write([]byte(`{"key":"k"}`))
	}))
	t.Cleanup(m.srv.Close)
	return m
}

func (m *member) set(hint string, status int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.hint, m.status = hint, status
}

// counts reads and resets the writes and reads served.
func (m *member) counts() (writes, reads int64) { return m.writes.Swap(0), m.reads.Swap(0) }

func TestWritesGoToTheLeader(t *testing.T) {
	for name, hc := range clients {
		t.Run(name, func(t *testing.T) { testWritesGoToTheLeader(t, hc) })
	}
}

func testWritesGoToTheLeader(t *testing.T, hc func(*httptest.Server) *http.Client) {
	old := routeCooldown
	routeCooldown = 200 * time.Millisecond
	t.Cleanup(func() { routeCooldown = old })
	ctx := context.Background()
	f, l := newMember(t), newMember(t)
	f.set(l.srv.URL, 0)
	h := hc(f.srv)
	t.Cleanup(h.CloseIdleConnections)
	c := New(f.srv.URL, h)
	put := func(step string) {
		t.Helper()
		if _, err := c.Put(ctx, "k", "v"); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	expect := func(step string, m *member, writes, reads int64) {
		t.Helper()
		if w, r := m.counts(); w != writes || r != reads {
			t.Fatalf("%s: %s served %d writes and %d reads, want %d and %d", step, m.srv.URL, w, r, writes, reads)
		}
	}

	// The first write learns the leader from the follower's answer; the
	// next ones go there. Reads stay with the follower.
	put("first")
	expect("first", f, 1, 0)
	for range 3 {
		put("routed")
		if _, err := c.Get(ctx, "k", true); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	expect("routed", l, 4, 0)
	expect("routed", f, 0, 3)

	// A leader that fails a write (5xx): the error as it came, the route
	// dropped, the hints ignored for a while.
	l.set("", http.StatusServiceUnavailable)
	_, err := c.Put(ctx, "k", "v")
	var e *Error
	if !errors.As(err, &e) || e.Status != 503 || e.Outcome != Unknown {
		t.Fatalf("a routed write answered 503: %v", err)
	}
	expect("503", l, 1, 0)
	l.set("", 0)
	put("after 503")
	put("after 503, quiet")
	expect("quiet", f, 2, 0)
	time.Sleep(routeCooldown)
	put("after the quiet")
	put("routed again")
	expect("after the quiet", f, 1, 0)
	expect("routed again", l, 1, 0)

	// A leader that is gone: the write, which never reached it (no
	// connection could be made), is sent to the follower instead. (A write
	// on a kept connection that the leader closes may have reached it: an
	// Unknown, as for any member.)
	l.srv.Close()
	h.CloseIdleConnections()
	put("leader gone")
	expect("leader gone", f, 1, 0)
	put("leader gone, quiet")
	expect("leader gone, quiet", f, 1, 0)
}

func TestWhenWritesStay(t *testing.T) {
	ctx := context.Background()
	f, l := newMember(t), newMember(t)
	h := &http.Client{Transport: NewTransport()}
	t.Cleanup(h.CloseIdleConnections)
	for _, tc := range []struct {
		name     string
		endpoint string
		hint     string
		pinned   bool
	}{
		{"pinned", f.srv.URL, l.srv.URL, true},
		{"another scheme", f.srv.URL, "https" + l.srv.URL[len("http"):], false},
		{"a hint with a path", f.srv.URL, l.srv.URL + "/x", false},
		{"an endpoint with a path", f.srv.URL + "/proxy", l.srv.URL, false},
		{"the endpoint named", f.srv.URL, f.srv.URL, false},
		{"the endpoint named, with a slash", f.srv.URL + "/", f.srv.URL, false},
	} {
		f.set(tc.hint, 0)
		c := New(tc.endpoint, h)
		c.Pinned = tc.pinned
		for range 3 {
			if _, err := c.Put(ctx, "k", "v"); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
		}
		if fw, _ := f.counts(); fw != 3 {
			t.Errorf("%s: the endpoint served %d of 3 writes", tc.name, fw)
		}
		l.counts()
	}

	// A leader that names the endpoint's member as the leader now: writes
	// go to the endpoint again.
	f.set(l.srv.URL, 0)
	c := New(f.srv.URL, h)
	c.Put(ctx, "k", "v")
	c.Put(ctx, "k", "v")
	if lw, _ := l.counts(); lw != 1 {
		t.Fatalf("the leader served %d writes, want 1", lw)
	}
	f.counts()
	l.set(f.srv.URL, 0)
	f.set("", 0)
	for range 3 {
		c.Put(ctx, "k", "v")
	}
	lw, _ := l.counts()
	fw, _ := f.counts()
	if lw != 1 || fw != 2 {
		t.Fatalf("after the leadership moved to the endpoint: old leader %d, endpoint %d writes; want 1 and 2", lw, fw)
	}
}
