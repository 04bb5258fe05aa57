package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// Transport is an http.RoundTripper for plain-HTTP/1.1 members that does a
// request's whole exchange on the caller's goroutine: it writes the request
// to a pooled keep-alive connection and reads the answer from it, with no
// other goroutine involved. net/http's Transport runs two goroutines per
// connection and hands each request and answer across channels between
// them; with many small requests that hand-off costs more CPU than the
// request itself (see the README's Performance section), which a load
// tool, or any client that keeps a member busy, pays on every call.
//
// What it gives up: net/http's per-connection reader notices at once when
// a member closes an idle connection; here that is only found when the
// connection is next used. So RoundTrip checks, before reusing a
// connection that sat idle for more than a millisecond, that the member
// has not closed it (a clean close, a restart or a kill all show as the
// connection's end). Within that millisecond the race remains, as it does
// in a narrower form with net/http: a request that then fails is retried
// once on a new connection only if it is a GET or HEAD; a write fails, and
// the client reports its outcome as unknown, as it must for any write
// whose answer was lost. https:// URLs, and requests for an event stream,
// are handed to Fallback, which also serves HTTP/2 and proxies.
//
// A Client whose http.Client is plain over a Transport (no cookie jar, any
// Timeout) goes further for an http:// member: it does not build an
// http.Request or read an http.Response at all, but has the Transport
// write the request and parse the answer with fasthttp
// (github.com/valyala/fasthttp), on the same pooled connections and with
// the same rules for reuse and retries (call). Redirects are then not
// followed; the member sends none to the client's routes.
//
// Safe for concurrent use; each request holds its own connection.
type Transport struct {
	// MaxIdlePerHost is how many idle connections are kept per host; 0
	// means 16.
	MaxIdlePerHost int
	// IdleTimeout closes connections idle for longer; 0 means 90 s (the
	// member's own idle timeout is 2 minutes).
	IdleTimeout time.Duration
	// Dialer makes the connections; nil means a net.Dialer with a 10 s
	// timeout and TCP keep-alives.
	Dialer *net.Dialer
	// Fallback serves what this transport does not; nil means
	// http.DefaultTransport.
	Fallback http.RoundTripper

	mu   sync.Mutex          // guards idle
	idle map[string][]*pconn // per host, most recently used last
}

// NewTransport returns a Transport with the defaults.
func NewTransport() *Transport { return &Transport{} }

// pconn is one connection with its buffers. While a request uses it, it
// belongs to that request; in the pool, to the pool.
type pconn struct {
	nc       net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	host     string
	idleFrom time.Time
}

// checkAfterIdle is how long a connection may sit idle before its reuse
// costs a check that the member has not closed it. A client that keeps a
// member busy reuses its connections within microseconds and never pays
// for the check.
const checkAfterIdle = time.Millisecond

// aLongTimeAgo is a deadline that has passed: setting it makes a blocked
// read or write on the connection return at once.
var aLongTimeAgo = time.Unix(1, 0)

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "http" || req.Header.Get("Accept") == "text/event-stream" {
		return t.fallback().RoundTrip(req)
	}
	host := req.URL.Host
	if req.URL.Port() == "" {
		host = net.JoinHostPort(req.URL.Hostname(), "80")
	}
	retryable := (req.Method == http.MethodGet || req.Method == http.MethodHead) && (req.Body == nil || req.Body == http.NoBody)
	for attempt := 0; ; attempt++ {
		c := t.get(host)
		reused := c != nil
		if c == nil {
			var err error
			if c, err = t.dial(req.Context(), host); err != nil {
				if req.Body != nil {
					req.Body.Close()
				}
				return nil, err
			}
		}
		resp, err := t.exchange(req, c)
		if err == nil || !reused || !retryable || attempt > 0 || req.Context().Err() != nil {
			return resp, err
		}
	}
}

func (t *Transport) fallback() http.RoundTripper {
	if t.Fallback != nil {
		return t.Fallback
	}
	return http.DefaultTransport
}

func (t *Transport) dial(ctx context.Context, host string) (*pconn, error) {
	d := t.Dialer
	if d == nil {
		d = &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	}
	nc, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	return &pconn{nc: nc, br: bufio.NewReaderSize(nc, 16<<10), bw: bufio.NewWriterSize(nc, 16<<10), host: host}, nil
}

// exchange writes req on c and reads its answer's head. The connection goes
// back to the pool when the body has been read to its end (at once for an
// empty body) and is closed on any error or early Close.
func (t *Transport) exchange(req *http.Request, c *pconn) (*http.Response, error) {
	ctx := req.Context()
	stop, fail := guard(ctx, c)
	if err := req.Write(c.bw); err != nil {
		return nil, fail(err)
	}
	if err := c.bw.Flush(); err != nil {
		return nil, fail(err)
	}
	resp, err := http.ReadResponse(c.br, req)
	// An informational answer (100 Continue, 103 Early Hints) precedes the
	// real one, on the same connection.
	for err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
		resp, err = http.ReadResponse(c.br, req)
	}
	if err != nil {
		return nil, fail(err)
	}
	keep := !resp.Close && !req.Close
	if resp.Body == http.NoBody {
		t.done(c, stop, keep)
		return resp, nil
	}
	resp.Body = &bodyReader{rc: resp.Body, t: t, c: c, stop: stop, keep: keep, ctx: ctx}
	return resp, nil
}

// guard makes ctx end an exchange on c by failing the connection's I/O;
// its callback runs only if ctx ends before stop is called. fail closes c
// and returns err, with ctx's error first if ctx ended.
func guard(ctx context.Context, c *pconn) (stop func() bool, fail func(error) error) {
	stop = context.AfterFunc(ctx, func() { c.nc.SetDeadline(aLongTimeAgo) })
	fail = func(err error) error {
		stop()
		c.nc.Close()
		if ctx.Err() != nil {
			return fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return err
	}
	return stop, fail
}

// done ends a request's use of c: back to the pool if the exchange
// finished cleanly, closed otherwise.
func (t *Transport) done(c *pconn, stop func() bool, keep bool) {
	if !stop() || !keep {
		// ctx ended (its callback has poisoned the connection's deadline)
		// or the member said it closes the connection.
		c.nc.Close()
		return
	}
	c.idleFrom = time.Now()
	max := t.MaxIdlePerHost
	if max <= 0 {
		max = 16
	}
	t.mu.Lock()
	if t.idle == nil {
		t.idle = make(map[string][]*pconn)
	}
	if len(t.idle[c.host]) < max {
		t.idle[c.host] = append(t.idle[c.host], c)
		c = nil
	}
	t.mu.Unlock()
	if c != nil {
		c.nc.Close()
	}
}

// get takes an idle connection to host that is still usable, or nil.
func (t *Transport) get(host string) *pconn {
	timeout := t.IdleTimeout
	if timeout <= 0 {
		timeout = 90 * time.Second
	}
	for {
		t.mu.Lock()
		list := t.idle[host]
		if len(list) == 0 {
			t.mu.Unlock()
			return nil
		}
		c := list[len(list)-1]
		list[len(list)-1] = nil
		t.idle[host] = list[:len(list)-1]
		t.mu.Unlock()
		idle := time.Since(c.idleFrom)
		if idle < checkAfterIdle {
			return c
		}
		if idle < timeout && c.alive() {
			return c
		}
		c.nc.Close()
	}
}

// CloseIdleConnections closes the pooled connections; http.Client's method
// of the same name calls it.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, list := range idle {
		for _, c := range list {
			c.nc.Close()
		}
	}
	if ci, ok := t.fallback().(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// bodyReader is an answer's body on a pooled connection: read to its end
// it gives the connection back; closed early it closes it, since the rest
// of the body would otherwise be read as the next answer.
type bodyReader struct {
	rc   io.ReadCloser
	t    *Transport
	c    *pconn // nil once given back or closed
	stop func() bool
	keep bool
	ctx  context.Context
	eof  bool
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.eof {
		return 0, io.EOF
	}
	if b.c == nil {
		return 0, errors.New("client: read on a closed body")
	}
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		c := b.c
		b.c, b.eof = nil, true
		b.t.done(c, b.stop, b.keep)
	case err != nil:
		b.c.nc.Close()
		b.c = nil
		b.stop()
		if b.ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", b.ctx.Err(), err)
		}
	}
	return n, err
}

func (b *bodyReader) Close() error {
	if b.c != nil {
		b.stop()
		b.c.nc.Close()
		b.c = nil
	}
	return nil
}

// aliveByDeadline is alive where a non-blocking peek is not at hand: a
// read given a moment to find anything finds nothing on a live connection.
func aliveByDeadline(c *pconn) bool {
	c.nc.SetReadDeadline(time.Now().Add(50 * time.Microsecond))
	_, err := c.br.Peek(1)
	c.nc.SetReadDeadline(time.Time{})
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// userAgent names this package in the requests Transport.call sends (net/http
// sends its own, Go-http-client/1.1).
const userAgent = "raftexample-client"

// call does a request's whole exchange without net/http's Request and
// Response: fasthttp's request writer and answer parser on a pooled
// connection, the answer read whole. Client uses it when its http.Client
// is plain over this Transport (no cookie jar) and the member is http://.
// A GET or HEAD that fails on a reused connection is retried once on a new
// one, as RoundTrip does. The caller releases the answer
// (fasthttp.ReleaseResponse).
func (t *Transport) call(ctx context.Context, method, addr, host, uri string, header http.Header, body []byte) (*fasthttp.Response, error) {
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	req.Header.SetNoDefaultContentType(true)
	req.Header.SetMethod(method)
	req.Header.SetRequestURI(uri)
	req.Header.SetHost(host)
	if header.Get("User-Agent") == "" {
		req.Header.SetUserAgent(userAgent)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	req.SetBodyRaw(body)
	resp := fasthttp.AcquireResponse()
	retryable := (method == http.MethodGet || method == http.MethodHead) && len(body) == 0
	for attempt := 0; ; attempt++ {
		resp.SkipBody = method == http.MethodHead // an answer to HEAD announces a body it has not
		c := t.get(addr)
		reused := c != nil
		var err error
		if c == nil {
			c, err = t.dial(ctx, addr)
		}
		if err == nil {
			if err = t.exchangeWhole(ctx, c, req, resp); err == nil {
				return resp, nil
			}
		}
		if !reused || !retryable || attempt > 0 || ctx.Err() != nil {
			fasthttp.ReleaseResponse(resp)
			return nil, err
		}
		resp.Reset()
	}
}

// exchangeWhole writes req on c and reads its whole answer into resp; c goes
// back to the pool unless the member closes it, and is closed on any error.
func (t *Transport) exchangeWhole(ctx context.Context, c *pconn, req *fasthttp.Request, resp *fasthttp.Response) error {
	stop, fail := guard(ctx, c)
	if err := req.Write(c.bw); err != nil {
		return fail(err)
	}
	if err := c.bw.Flush(); err != nil {
		return fail(err)
	}
	if err := resp.Read(c.br); err != nil {
		return fail(err)
	}
	// fasthttp counts an answer whose body ran until the member closed the
	// connection, and an HTTP/1.0 one without keep-alive, as closing it.
	t.done(c, stop, !resp.ConnectionClose())
	return nil
}
