package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// rawExchange sends one raw HTTP/1.1 request on a new connection and reads
// the answer (to a HEAD request without a body), after any informational
// (1xx) ones, which it counts in an X-Informational header (one I each).
func rawExchange(t *testing.T, addr, req string) *http.Response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	method, _, _ := strings.Cut(req, " ")
	br := bufio.NewReader(conn)
	var resp *http.Response
	informational := 0
	for {
		var err error
		resp, err = http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("%q: %v", firstLine(req), err)
		}
		if resp.StatusCode >= 200 || informational == 3 {
			break
		}
		informational++
	}
	resp.Header.Set("X-Informational", strings.Repeat("I", informational)) // no digits: comparableAnswer masks them
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%q: body: %v", firstLine(req), err)
	}
	resp.Body = io.NopCloser(strings.NewReader(string(body)))
	return resp
}

var digits = regexp.MustCompile(`[0-9]+`)

// comparableAnswer renders an answer for comparison: status, headers but
// Date and the framing ones (each server frames a body its own way), body;
// numbers but the status masked, as raft indexes of two clusters need not
// agree.
func comparableAnswer(resp *http.Response) string {
	var b strings.Builder
	var names []string
	for k := range resp.Header {
		switch k {
		case "Date", "Connection", "Content-Length", "Transfer-Encoding":
			continue
		}
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		fmt.Fprintf(&b, "%s: %s\n", k, strings.Join(resp.Header[k], ", "))
	}
	body, _ := io.ReadAll(resp.Body)
	b.Write(body)
	return fmt.Sprintf("%d\n%s", resp.StatusCode, digits.ReplaceAllString(b.String(), "N"))
}

// The fast lane runs the API's own handlers; what it adds is the HTTP
// around them. The same requests, sent to a member with it and to one
// with --net-http, must get the same answers.
func TestFastLaneAnswersAsNetHTTP(t *testing.T) {
	limits := func(net bool) func(*config) {
		return func(c *config) {
			c.netHTTP = net
			c.maxRequestBytes = 1000
			c.limits.valueBytes = 900
		}
	}
	fast := newTestCluster(t, 1, limits(false))
	std := newTestCluster(t, 1, limits(true))
	for _, c := range []*testCluster{fast, std} {
		c.leader()
		c.mustPut(0, "warm", "w")
	}
	big := strings.Repeat("z", 2000)
	txn := `{"success":[{"op":"get","key":"ch"}]}`
	chunk := func(s string) string { return fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(s), s) }
	reqs := []string{
		"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
		"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
		"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /a?consistency=serializable HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /a?consistency=bogus HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
		"GET /a/../b HTTP/1.1\r\nHost: x\r\n\r\n",
		"PUT /v1/kv/odd%20key%2F HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv",
		"GET /v1/kv/odd%20key%2F HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n",
		"PUT /v1/kv/b HTTP/1.1\r\nHost: x\r\nIf-None-Match: *\r\nContent-Length: 1\r\n\r\nb",
		"PUT /v1/kv/b HTTP/1.1\r\nHost: x\r\nIf-None-Match: *\r\nContent-Length: 1\r\n\r\nb",
		"GET /v1/kv/b?foo=1 HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /v1/kv/b?index=3 HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /v1/kv?prefix= HTTP/1.1\r\nHost: x\r\n\r\n",
		"PATCH /v1/kv/b HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /v1/kv/b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
		"DELETE /v1/kv/b HTTP/1.1\r\nHost: x\r\n\r\n",
		"DELETE /v1/kv/b HTTP/1.1\r\nHost: x\r\n\r\n",
		"PUT /v1/kv/ch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk("chunky"),
		"GET /v1/kv/ch HTTP/1.1\r\nHost: x\r\n\r\n",
		"PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + big,
		"PUT /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(big),
		"PUT /v1/kv/toolong HTTP/1.1\r\nHost: x\r\nContent-Length: 1200\r\n\r\n" + big[:1200],
		fmt.Sprintf("POST /v1/txn HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(txn), txn),
		"POST /v1/txn HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{bad}",
		"POST /v1/txn HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(big),
		"GET /v1/kv/ch?wait=true&index=1 HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /9 HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + big,
		"DELETE /notanid HTTP/1.1\r\nHost: x\r\n\r\n",
		// Handed over with a body that decides the answer.
		"POST /v1/leader/transfer HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n{\"to\":7}",
		"POST /v1/leader/transfer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(`{"to":7}`),
		// One 100 Continue: fasthttp sends it before the handler runs
		// (net/http when the handler reads the body, which these do).
		"POST /v1/leader/transfer HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nExpect: 100-continue\r\n\r\n{\"to\":7}",
		"PUT /v1/kv/ex HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
		"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /v1/nosuch HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /a HTTP/1.0\r\n\r\n",
	}
	for _, req := range reqs {
		got := comparableAnswer(rawExchange(t, fast.nodes[0].addr(), req))
		want := comparableAnswer(rawExchange(t, std.nodes[0].addr(), req))
		if got != want {
			t.Errorf("%q:\nfast lane:\n%s\nnet/http:\n%s", firstLine(req), got, want)
		}
	}
	// Most of those were answered by the lane itself, the rest by net/http.
	served, handed := fast.nodes[0].fast.served.Load(), fast.nodes[0].fast.handedOff.Load()
	if served < 25 || handed < 4 {
		t.Errorf("the fast lane served %d requests and handed %d connections to net/http; want most served, a few handed over", served, handed)
	}
	if std.nodes[0].fast != nil {
		t.Error("--net-http still started the fast lane")
	}
}

// A connection that needs net/http (here for a watch) goes on with it:
// the watch is answered on it, and so is the next request.
func TestFastLaneHandsConnectionToNetHTTP(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	c.leader()
	c.mustPut(0, "k", "v1")
	lane := c.nodes[0].fast
	conn, err := net.DialTimeout("tcp", c.nodes[0].addr(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	exchange := func(req, want string) {
		t.Helper()
		if _, err := io.WriteString(conn, req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%q: %v", firstLine(req), err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Fatalf("%q: %d %s, want 200 with %q", firstLine(req), resp.StatusCode, body, want)
		}
	}
	exchange("GET /k HTTP/1.1\r\nHost: x\r\n\r\n", "v1")
	if lane.served.Load() == 0 || lane.handedOff.Load() != 0 {
		t.Fatalf("after a GET: served %d, handed off %d", lane.served.Load(), lane.handedOff.Load())
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		tryDo("PUT", c.url(0, "/k"), "v2")
	}()
	exchange("GET /v1/kv/k?wait=true&timeout=5s HTTP/1.1\r\nHost: x\r\n\r\n", `"value":"v2"`)
	if lane.handedOff.Load() != 1 {
		t.Fatalf("the watch's connection was handed off %d times, want 1", lane.handedOff.Load())
	}
	before := lane.served.Load()
	exchange("GET /k HTTP/1.1\r\nHost: x\r\n\r\n", "v2")
	if lane.served.Load() != before {
		t.Fatal("a request on a connection handed to net/http went through the fast lane")
	}
}

// Handed to net/http, a long-poll watch ends when its client leaves, as it
// did before the lane: the member does not hold it for the rest of its
// timeout.
func TestFastLaneWatchEndsWhenItsClientLeaves(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	c.leader()
	c.mustPut(0, "k", "v1")
	conn, err := net.DialTimeout("tcp", c.nodes[0].addr(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, "GET /v1/kv/k?wait=true&timeout=50s HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	h := c.nodes[0].h
	eventually(t, 5*time.Second, func() error {
		if n := h.watchers.Load(); n != 1 {
			return fmt.Errorf("%d watches served, want 1", n)
		}
		return nil
	})
	conn.Close()
	eventually(t, 5*time.Second, func() error {
		if n := h.watchers.Load(); n != 0 {
			return fmt.Errorf("%d watches still served after their client left", n)
		}
		return nil
	})
}

// What a handler writes reaches the client as net/http would send it: a
// sniffed Content-Type, 200 for a handler that writes nothing, the header
// as it was when the status was written.
func TestFastResponseWritesAsNetHTTP(t *testing.T) {
	for name, h := range map[string]http.HandlerFunc{
		"sniffed type": func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "<html><body>hi</body></html>") },
		"nothing":      func(w http.ResponseWriter, _ *http.Request) {},
		"status only":  func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) },
		"late header":  func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "x"); w.Header().Set("X-Late", "1") },
		"type given": func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "a/b")
			io.WriteString(w, "<html>")
		},
		"second status": func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusTeapot)
			w.WriteHeader(http.StatusOK)
		},
		"error function": func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "no", http.StatusConflict) },
	} {
		rec := httptest.NewRecorder()
		h(rec, httptest.NewRequest("GET", "/", nil))
		want := rec.Result()

		var ctx fasthttp.RequestCtx
		ctx.Response.Header.SetNoDefaultContentType(true) // as the lane's server sets it
		w := &fastResponse{ctx: &ctx, header: http.Header{}}
		h(w, httptest.NewRequest("GET", "/", nil))
		w.finish()
		got := &ctx.Response

		wantBody, _ := io.ReadAll(want.Body)
		if got.StatusCode() != want.StatusCode || string(got.Body()) != string(wantBody) {
			t.Errorf("%s: %d %q, net/http %d %q", name, got.StatusCode(), got.Body(), want.StatusCode, wantBody)
		}
		for _, k := range []string{"Content-Type", "X-Late", "X-Content-Type-Options"} {
			if g, w := string(got.Header.Peek(k)), want.Header.Get(k); g != w {
				t.Errorf("%s: %s %q, net/http %q", name, k, g, w)
			}
		}
	}
}

// Which requests the lane serves and which it hands to net/http.
func TestFastLaneRoutes(t *testing.T) {
	for _, tc := range []struct {
		method, uri, accept string
		fast                bool
	}{
		{"GET", "/k", "", true},
		{"HEAD", "/k", "", true},
		{"PUT", "/k", "", true},
		{"GET", "/k?consistency=serializable", "", true},
		{"GET", "/", "", true},
		{"POST", "/4", "", false},   // add a member
		{"DELETE", "/4", "", false}, // remove one
		{"GET", "/v1/kv/k", "", true},
		{"DELETE", "/v1/kv/k", "", true},
		{"GET", "/v1/kv?prefix=a", "", true},
		{"POST", "/v1/txn", "", true},
		{"GET", "/v1/txn", "", false},
		{"POST", "/v1/kv/k", "", false},
		{"GET", "/v1/kv/k?wait=true", "", false},
		{"GET", "/v1/kv/k?w%61it=true", "", false},
		{"GET", "/v1/kv/k?%77ait=true", "", false},
		{"GET", "/v1/kv?prefix=a&wait=true", "", false},
		{"GET", "/v1/kv/k?waiting=1", "", true},
		{"GET", "/v1/kv/k", "Text/Event-Stream", false},
		{"GET", "/v1/kv/k", "application/json, text/event-stream;q=0.5", false},
		{"GET", "/v1/kv/k", "application/json", true},
		{"GET", "/v1/status", "", false},
		{"GET", "/v1/members", "", false},
		{"GET", "/livez", "", false},
		{"GET", "/metrics", "", false},
		{"GET", "/debug/pprof/", "", false},
		{"GET", "/ui/", "", false},
	} {
		var ctx fasthttp.RequestCtx
		ctx.Request.Header.SetMethod(tc.method)
		ctx.Request.Header.SetRequestURI(tc.uri)
		if tc.accept != "" {
			ctx.Request.Header.Set("Accept", tc.accept)
		}
		u, err := url.ParseRequestURI(tc.uri)
		if err != nil {
			t.Fatal(err)
		}
		if got := servedFast(&ctx, u); got != tc.fast {
			t.Errorf("%s %s (Accept %q): served in the lane %v, want %v", tc.method, tc.uri, tc.accept, got, tc.fast)
		}
	}
}
