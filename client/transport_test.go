package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// countingServer answers /echo/<x> with x, the method and the body
// (chunked if ?flush is set), /big with 1 MiB, /close with Connection:
// close, /empty with 204, /hints with 103 and then 200, and /block after
// the client has gone; it counts the connections it accepted.
func countingServer(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch {
		case strings.HasPrefix(r.URL.Path, "/echo/"):
			x := strings.TrimPrefix(r.URL.Path, "/echo/")
			if r.URL.Query().Has("flush") {
				w.Write([]byte(x[:1]))
				w.(http.Flusher).Flush()
				x = x[1:]
			}
			fmt.Fprintf(w, "%s %s %s", x, r.Method, body)
		case r.URL.Path == "/big":
			w.Write([]byte(strings.Repeat("b", 1<<20)))
		case r.URL.Path == "/close":
			w.Header().Set("Connection", "close")
			w.Write([]byte("bye"))
		case r.URL.Path == "/empty":
			w.WriteHeader(http.StatusNoContent)
		case r.URL.Path == "/hints":
			w.Header().Set("Link", "</x>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Write([]byte("after hints"))
		case r.URL.Path == "/block":
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

// call does one request and returns its body.
func call(t *testing.T, hc *http.Client, method, url, body string) string {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return string(b)
}

// expect does one request and fails the test unless the answer is want.
func expect(t *testing.T, hc *http.Client, method, url, body, want, what string) {
	t.Helper()
	if got := call(t, hc, method, url, body); got != want {
		t.Fatalf("%s: %q, want %q", what, got, want)
	}
}

func TestTransportReusesOneConnection(t *testing.T) {
	srv, conns := countingServer(t)
	tr := NewTransport()
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	for i := range 50 {
		method := []string{"GET", "PUT", "DELETE", "POST"}[i%4]
		q := ""
		if i%3 == 0 {
			q = "?flush=1" // a chunked answer
		}
		want := fmt.Sprintf("k%d %s %s", i, method, strings.Repeat("x", i*37))
		expect(t, hc, method, srv.URL+"/echo/k"+fmt.Sprint(i)+q, strings.Repeat("x", i*37), want, fmt.Sprintf("request %d", i))
		expect(t, hc, "GET", srv.URL+"/empty", "", "", "empty answer")
		expect(t, hc, "GET", srv.URL+"/hints", "", "after hints", "an answer after 103 Early Hints")
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for 150 sequential requests, want 1", n)
	}
}

func TestTransportDropsConnectionsItCannotReuse(t *testing.T) {
	srv, conns := countingServer(t)
	tr := NewTransport()
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}

	// A body closed before its end: the rest must not be read as the next
	// answer.
	resp, err := hc.Get(srv.URL + "/big")
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(resp.Body, make([]byte, 10))
	resp.Body.Close()
	// (PUTs, which are never retried, so that a bad reuse shows.)
	expect(t, hc, "PUT", srv.URL+"/echo/a", "1", "a PUT 1", "after an early close")
	// The member closes the connection after its answer.
	expect(t, hc, "GET", srv.URL+"/close", "", "bye", "close")
	expect(t, hc, "PUT", srv.URL+"/echo/b", "2", "b PUT 2", "after Connection: close")
	if n := conns.Load(); n != 3 {
		t.Fatalf("%d connections, want 3 (a new one after the early close and after Connection: close)", n)
	}
}

func TestTransportContextEndsTheExchange(t *testing.T) {
	srv, conns := countingServer(t)
	tr := NewTransport()
	defer tr.CloseIdleConnections()
	c := New(srv.URL, &http.Client{Transport: tr})
	call(t, c.HTTP, "GET", srv.URL+"/echo/a", "") // a pooled connection
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.do(ctx, http.MethodPut, "/block", nil, []byte("v"), true, nil, nil)
	var e *Error
	if !errors.As(err, &e) || e.Outcome != Unknown || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a write whose context ended: %v, want an unknown outcome and context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the exchange ended %v after its context", d)
	}
	// The connection the ended exchange used is not reused.
	expect(t, c.HTTP, "GET", srv.URL+"/echo/b", "", "b GET ", "after a cancelled exchange")
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

func TestTransportNoticesAClosedIdleConnection(t *testing.T) {
	srv, conns := countingServer(t)
	tr := NewTransport()
	defer tr.CloseIdleConnections()
	c := New(srv.URL, &http.Client{Transport: tr})
	ctx := context.Background()
	put := func() error {
		err := c.do(ctx, http.MethodPut, "/echo/p", nil, []byte("v"), true, nil, nil)
		return err
	}
	if err := put(); err != nil {
		t.Fatal(err)
	}
	// The member closes its connections (a restart, its idle timeout).
	srv.CloseClientConnections()
	time.Sleep(checkAfterIdle + 20*time.Millisecond)
	// Idle for longer than checkAfterIdle: the check finds the close and the
	// write goes on a new connection.
	if err := put(); err != nil {
		t.Fatalf("a write after the member closed the idle connection: %v", err)
	}
	// A read on a connection closed just before it is retried on a new one.
	srv.CloseClientConnections()
	time.Sleep(20 * time.Millisecond)
	tr.mu.Lock()
	for _, c := range tr.idle[strings.TrimPrefix(srv.URL, "http://")] {
		c.idleFrom = time.Now() // too recent to be checked
	}
	tr.mu.Unlock()
	expect(t, c.HTTP, "GET", srv.URL+"/echo/g", "", "g GET ", "a read after the member closed the connection")
	if n := conns.Load(); n != 3 {
		t.Fatalf("%d connections, want 3", n)
	}
}

// Concurrent requests, through RoundTrip and through call, each get their
// own answer, and the pool keeps at most MaxIdlePerHost connections.
func TestTransportConcurrentRequestsGetTheirOwnAnswers(t *testing.T) {
	for _, how := range []string{"RoundTrip", "call"} {
		t.Run(how, func(t *testing.T) {
			srv, conns := countingServer(t)
			tr := &Transport{MaxIdlePerHost: 2}
			defer tr.CloseIdleConnections()
			hc := &http.Client{Transport: tr}
			post := func(key string) (string, error) { return send(New(srv.URL, hc), "POST", "/echo/"+key, key) }
			if how == "RoundTrip" {
				post = func(key string) (string, error) {
					resp, err := hc.Post(srv.URL+"/echo/"+key, "text/plain", strings.NewReader(key))
					if err != nil {
						return "", err
					}
					defer resp.Body.Close()
					b, err := io.ReadAll(resp.Body)
					return string(b), err
				}
			}
			var wg sync.WaitGroup
			errs := make(chan error, 16)
			for g := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 40 {
						key := fmt.Sprintf("g%di%d", g, i)
						got, err := post(key)
						if want := key + " POST " + key; err != nil || got != want {
							errs <- fmt.Errorf("%q %v, want %q", got, err, want)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			tr.mu.Lock()
			pooled := len(tr.idle[strings.TrimPrefix(srv.URL, "http://")])
			tr.mu.Unlock()
			if pooled > 2 || conns.Load() < 2 {
				t.Fatalf("%d pooled connections (at most 2), %d made", pooled, conns.Load())
			}
		})
	}
}

func TestTransportHandsTheRestToFallback(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("tls " + r.Header.Get("Accept")))
	}))
	defer srv.Close()
	tr := &Transport{Fallback: srv.Client().Transport}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	expect(t, hc, "GET", srv.URL+"/x", "", "tls ", "https")
	plain, _ := countingServer(t)
	var fallbackUsed atomic.Bool
	tr.Fallback = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		fallbackUsed.Store(true)
		return http.DefaultTransport.RoundTrip(r)
	})
	req, _ := http.NewRequest("GET", plain.URL+"/echo/s", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	if !fallbackUsed.Load() {
		t.Fatal("an event stream was not handed to Fallback")
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// The transport runs no goroutine of its own; the tests' servers and
// net/http's transports must not leave any either.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// send does one request through Client.do, which goes around net/http on
// this package's Transport (Transport.call), and returns the answer's body.
func send(c *Client, method, path, body string) (string, error) {
	var got string
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := c.do(ctx, method, path, nil, []byte(body), method != http.MethodGet && method != http.MethodHead, nil, func(r *reply) error {
		got = string(r.body)
		return nil
	})
	return got, err
}

func expectSent(t *testing.T, c *Client, method, path, body, want, what string) {
	t.Helper()
	got, err := send(c, method, path, body)
	if err != nil || got != want {
		t.Fatalf("%s: %q %v, want %q", what, got, err, want)
	}
}

// The same exchanges as TestTransportReusesOneConnection and
// TestTransportDropsConnectionsItCannotReuse, around net/http.
func TestCallReusesConnectionsItCan(t *testing.T) {
	srv, conns := countingServer(t)
	tr := NewTransport()
	defer tr.CloseIdleConnections()
	c := New(srv.URL, &http.Client{Transport: tr})
	for i := range 50 {
		method := []string{"GET", "PUT", "DELETE", "POST"}[i%4]
		q := ""
		if i%3 == 0 {
			q = "?flush=1" // a chunked answer
		}
		want := fmt.Sprintf("k%d %s %s", i, method, strings.Repeat("x", i*37))
		expectSent(t, c, method, "/echo/k"+fmt.Sprint(i)+q, strings.Repeat("x", i*37), want, fmt.Sprintf("request %d", i))
		expectSent(t, c, "GET", "/empty", "", "", "empty answer")
		expectSent(t, c, "GET", "/hints", "", "after hints", "an answer after 103 Early Hints")
		expectSent(t, c, "GET", "/big", "", strings.Repeat("b", 1<<20), "a 1 MiB answer")
		expectSent(t, c, "HEAD", "/echo/h", "", "", "HEAD (its Content-Length announces a body it has not)")
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for 250 sequential requests, want 1", n)
	}
	// The member closes the connection after its answer.
	expectSent(t, c, "GET", "/close", "", "bye", "close")
	expectSent(t, c, "PUT", "/echo/b", "2", "b PUT 2", "after Connection: close")
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2 (a new one after Connection: close)", n)
	}
	// An endpoint with a path prefix and a trailing slash.
	expectSent(t, New(srv.URL+"/echo/", &http.Client{Transport: tr}), "GET", "/p", "", "p GET ", "a prefixed endpoint")
}

// A read on a connection the member closed just before it is sent again on
// a new one; a write is not (it may have arrived): its outcome is unknown.
func TestCallRetriesOnlyReads(t *testing.T) {
	srv, conns := countingServer(t)
	tr := NewTransport()
	defer tr.CloseIdleConnections()
	c := New(srv.URL, &http.Client{Transport: tr})
	closeJustBefore := func() {
		expectSent(t, c, "GET", "/echo/x", "", "x GET ", "a pooled connection")
		srv.CloseClientConnections()
		time.Sleep(20 * time.Millisecond)
		tr.mu.Lock()
		for _, pc := range tr.idle[strings.TrimPrefix(srv.URL, "http://")] {
			pc.idleFrom = time.Now() // too recent to be checked
		}
		tr.mu.Unlock()
	}
	closeJustBefore()
	expectSent(t, c, "GET", "/echo/g", "", "g GET ", "a read after the member closed the connection")
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
	closeJustBefore()
	_, err := send(c, "PUT", "/echo/p", "v")
	var e *Error
	if !errors.As(err, &e) || e.Outcome != Unknown {
		t.Fatalf("a write on a connection the member closed: %v, want an error with an unknown outcome", err)
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2 (none for a retry of the write)", n)
	}
}

func TestCallEndsWithItsContextOrTheClientTimeout(t *testing.T) {
	srv, _ := countingServer(t)
	tr := NewTransport()
	defer tr.CloseIdleConnections()
	c := New(srv.URL, &http.Client{Transport: tr, Timeout: 100 * time.Millisecond})
	start := time.Now()
	_, err := send(c, "PUT", "/block", "v")
	var e *Error
	if !errors.As(err, &e) || e.Outcome != Unknown || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a write past the client's timeout: %v, want an unknown outcome and context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the exchange ended %v after the timeout", d)
	}
}

func TestPlainEndpoint(t *testing.T) {
	for _, tc := range []struct{ endpoint, addr, host, prefix string }{
		{"http://127.0.0.1:12380", "127.0.0.1:12380", "127.0.0.1:12380", ""},
		{"http://127.0.0.1:12380/", "127.0.0.1:12380", "127.0.0.1:12380", ""},
		{"http://h:1/a/b/", "h:1", "h:1", "/a/b"},
		{"http://localhost", "localhost:80", "localhost", ""},
		{"http://[::1]", "[::1]:80", "[::1]", ""},
		{"http://[::1]:7/p", "[::1]:7", "[::1]:7", "/p"},
		{"http://h:", "h:80", "h:", ""},
		{"https://h:1", "", "", ""},
		{"http://u:p@h:1", "", "", ""},
		{"http://h:1?q", "", "", ""},
		{"http://", "", "", ""},
		{"h:1", "", "", ""},
	} {
		addr, host, prefix, ok := plainEndpoint(tc.endpoint)
		if addr != tc.addr || host != tc.host || prefix != tc.prefix || ok != (tc.addr != "") {
			t.Errorf("%s: %q %q %q %v, want %q %q %q", tc.endpoint, addr, host, prefix, ok, tc.addr, tc.host, tc.prefix)
		}
	}
}

// A member's answer without a length (its body runs until the connection
// closes), or HTTP/1.0 without keep-alive, ends the connection: the next
// request goes on a new one.
func TestCallDoesNotReuseAConnectionTheAnswerEnds(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	answers := []string{
		"HTTP/1.1 200 OK\r\n\r\nuntil close",
		"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold",
		"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast",
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, a := range answers {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			nc.SetDeadline(time.Now().Add(5 * time.Second))
			bufio.NewReader(nc).ReadString('\n') // the request line is enough
			nc.Write([]byte(a))
			nc.Close()
		}
	}()
	defer func() { ln.Close(); <-done }()
	tr := NewTransport()
	defer tr.CloseIdleConnections()
	c := New("http://"+ln.Addr().String(), &http.Client{Transport: tr})
	// Each answer comes on a connection of its own: a reuse would find the
	// closed connection and fail (the Accept loop takes one per answer).
	for _, want := range []string{"until close", "old", "last"} {
		expectSent(t, c, "PUT", "/x", "v", want, "an answer on a new connection")
	}
}
