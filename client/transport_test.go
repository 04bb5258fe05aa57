package client

import (
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
	_, _, err := c.do(ctx, http.MethodPut, "/block", nil, []byte("v"), true, nil)
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
		_, _, err := c.do(ctx, http.MethodPut, "/echo/p", nil, []byte("v"), true, nil)
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

func TestTransportConcurrentRequestsGetTheirOwnAnswers(t *testing.T) {
	srv, conns := countingServer(t)
	tr := &Transport{MaxIdlePerHost: 2}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				key := fmt.Sprintf("g%di%d", g, i)
				resp, err := hc.Post(srv.URL+"/echo/"+key, "text/plain", strings.NewReader(key))
				if err != nil {
					errs <- err
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if want := key + " POST " + key; err != nil || string(b) != want {
					errs <- fmt.Errorf("%q %v, want %q", b, err, want)
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
