package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
)

// The client port's front: fasthttp reads every request and serves the
// key-value requests itself, through the same http.Handler net/http runs;
// any other request hands its connection, that request first, to a
// net/http server for the rest of the connection's life.
//
// Why: in profiles of loaded members, net/http's per-request work (a
// goroutine reading ahead to notice a client that leaves, deadline changes,
// header maps) was a quarter of a member's CPU. Measured with three members
// and cmd/bench, the members' CPU per read fell by a fifth to a quarter
// through this lane; writes, whose cost is mostly raft's round, about the
// same (README, "The fast lane").
//
// What stays with net/http, and why: watches (long polls and Server-Sent
// Events) stream and must end when their client leaves, which fasthttp does
// not report; the operator routes, membership changes and profiles are
// rare, so byte-for-byte net/http behaviour costs nothing there. A request
// served here gets a context that is never cancelled: every such request
// is bounded by --request-timeout, and its outcome is the same whether or
// not the client is still there to read it.

// fastLane serves the client port. It owns srv (fasthttp) and handoff, the
// listener through which net/http receives the connections it takes over.
type fastLane struct {
	lg      *zap.Logger
	h       http.Handler // the whole API, as net/http serves it (instrumented)
	srv     *fasthttp.Server
	handoff *handoffListener
	maxBody int64

	served    atomic.Int64 // requests answered here
	handedOff atomic.Int64 // connections handed to net/http
}

// fastReadTimeout bounds reading one request, headers and body (net/http
// bounded the headers by 10 s and the body not at all; fasthttp has one
// bound for both).
const fastReadTimeout = 30 * time.Second

// fastIdleWorker is how long a goroutine of the lane's worker pool waits
// for another connection before it ends.
const fastIdleWorker = time.Second

// fastMaxHeaderBytes is the most a request line and headers may take
// (fasthttp's read buffer; net/http allowed 1 MiB): a 4096-byte key
// percent-encoded takes 12 KiB. Larger headers are refused with 431.
const fastMaxHeaderBytes = 32 << 10

func newFastLane(lg *zap.Logger, h http.Handler, addr net.Addr, maxBody int64) *fastLane {
	f := &fastLane{lg: lg, h: h, maxBody: maxBody, handoff: newHandoffListener(addr)}
	f.srv = &fasthttp.Server{
		Handler:                      f.serve,
		ErrorHandler:                 f.requestError,
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		DisablePreParseMultipartForm: true,
		KeepHijackedConns:            true, // the connections handed to net/http are net/http's to close
		ReadBufferSize:               fastMaxHeaderBytes,
		// A body over the limit, or one sent in chunks, reaches the
		// handler as a stream, which it reads through its own limit (so a
		// body too large gets the API's 413 and message).
		StreamRequestBody:  true,
		MaxRequestBodySize: int(maxBody),
		ReadTimeout:        fastReadTimeout,
		IdleTimeout:        2 * time.Minute,
		// Also how long fasthttp's worker-pool cleaner, which wakes this
		// often, outlives the server (10 s by default).
		MaxIdleWorkerDuration: fastIdleWorker,
		Logger:                fastLogger{lg},
	}
	return f
}

// fastLogger routes fasthttp's own messages (failed accepts, bad requests)
// to zap.
type fastLogger struct{ lg *zap.Logger }

func (l fastLogger) Printf(format string, args ...any) {
	l.lg.Debug("client API (fasthttp)", zap.String("message", fmt.Sprintf(format, args...)))
}

// serve answers one request, here or by handing the connection to net/http.
func (f *fastLane) serve(ctx *fasthttp.RequestCtx) {
	u, err := url.ParseRequestURI(string(ctx.Request.Header.RequestURI()))
	if err != nil || !servedFast(ctx, u) {
		f.handOff(ctx)
		return
	}
	f.served.Add(1)
	f.serveHere(ctx, u)
}

// requestBody is the request's body as net/http's handlers see it: a
// reader and its length (-1: chunked, length unknown).
func requestBody(ctx *fasthttp.RequestCtx) (io.Reader, int64) {
	n := int64(ctx.Request.Header.ContentLength())
	switch {
	case n == -2: // neither Content-Length nor chunks: no body
		return http.NoBody, 0
	case n == 0:
		return http.NoBody, 0
	}
	if s := ctx.RequestBodyStream(); s != nil {
		return s, n
	}
	return bytes.NewReader(ctx.Request.Body()), n
}

// servedFast says whether the request is one the lane serves itself: a
// read or write of keys (the root's and /v1/kv's) or a transaction, unless
// it asks to watch.
func servedFast(ctx *fasthttp.RequestCtx, u *url.URL) bool {
	method, p := string(ctx.Method()), u.Path
	switch {
	case strings.HasPrefix(p, versionedPrefix):
		switch {
		case p == versionedPrefix+"kv" || strings.HasPrefix(p, kvPrefix):
			if method != http.MethodGet && method != http.MethodHead && method != http.MethodPut && method != http.MethodDelete {
				return false
			}
		case p == versionedPrefix+"txn":
			return method == http.MethodPost
		default:
			return false
		}
	case isOpsRoute(p):
		return false
	default: // the root's keys; POST and DELETE there change the membership
		if method != http.MethodGet && method != http.MethodHead && method != http.MethodPut {
			return false
		}
	}
	return !asksToWatch(ctx, u)
}

// asksToWatch reports a request that may become a watch: ?wait in any
// spelling, or an Accept header that names an event stream. The query is
// parsed only if it may name wait (the handler parses it anyway, and
// answers a malformed one the same in either lane).
func asksToWatch(ctx *fasthttp.RequestCtx, u *url.URL) bool {
	if strings.ContainsAny(u.RawQuery, "w%") {
		if q, err := url.ParseQuery(u.RawQuery); err == nil && q.Has("wait") {
			return true
		}
	}
	for _, v := range ctx.Request.Header.PeekAll(fasthttp.HeaderAccept) {
		if containsFold(v, eventStream) {
			return true
		}
	}
	return false
}

var eventStream = []byte("text/event-stream")

// containsFold says whether s holds sub, ASCII case ignored.
func containsFold(s, sub []byte) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if bytes.EqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}

// serveHere runs the API's handler on the request, as net/http would call
// it, and writes its answer through fasthttp.
func (f *fastLane) serveHere(ctx *fasthttp.RequestCtx, u *url.URL) {
	hdr := &ctx.Request.Header
	body, contentLength := requestBody(ctx)
	r := &http.Request{
		Method:        string(hdr.Method()),
		URL:           u,
		RequestURI:    string(hdr.RequestURI()),
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        make(http.Header, 8),
		Host:          string(hdr.Host()),
		RemoteAddr:    ctx.RemoteAddr().String(),
		ContentLength: contentLength,
		Body:          io.NopCloser(body),
	}
	if !hdr.IsHTTP11() {
		r.Proto, r.ProtoMinor = "HTTP/1.0", 0
	}
	for k, v := range hdr.All() {
		// net/http keeps the Host header in r.Host only.
		if !bytes.EqualFold(k, []byte(fasthttp.HeaderHost)) {
			r.Header.Add(string(k), string(v))
		}
	}
	w := &fastResponse{ctx: ctx, header: make(http.Header, 8)}
	defer func() {
		if v := recover(); v != nil {
			// net/http logs a handler's panic and drops the connection;
			// this lane logs it, answers 500 and closes the connection,
			// rather than letting it stop the process.
			f.lg.Error("panic serving a client request", zap.String("method", r.Method), zap.String("path", u.Path),
				zap.Any("panic", v), zap.ByteString("stack", debug.Stack()))
			ctx.Response.Reset()
			ctx.SetStatusCode(http.StatusInternalServerError)
			ctx.SetConnectionClose()
		}
	}()
	f.h.ServeHTTP(w, r)
	w.finish()
	if ctx.Response.StatusCode() == http.StatusRequestEntityTooLarge {
		// As net/http does: the rest of a body too large is not read.
		ctx.SetConnectionClose()
	}
}

// requestError answers a request fasthttp could not read, as net/http's
// server does.
func (f *fastLane) requestError(ctx *fasthttp.RequestCtx, err error) {
	ctx.SetConnectionClose()
	var small *fasthttp.ErrSmallBuffer
	if errors.As(err, &small) {
		ctx.Error("431 Request Header Fields Too Large", http.StatusRequestHeaderFieldsTooLarge)
		return
	}
	ctx.Error("400 Bad Request", http.StatusBadRequest)
}

// fastResponse is an http.ResponseWriter over a fasthttp response: the
// handler's header map is copied when the status is written, as net/http
// snapshots it then.
type fastResponse struct {
	ctx    *fasthttp.RequestCtx
	header http.Header
	wrote  bool
}

func (w *fastResponse) Header() http.Header { return w.header }

func (w *fastResponse) WriteHeader(code int) {
	if w.wrote {
		return
	}
	w.wrote = true
	w.ctx.SetStatusCode(code)
	for k, vs := range w.header {
		if k == "Content-Length" {
			continue // fasthttp frames the body it holds
		}
		for _, v := range vs {
			w.ctx.Response.Header.Add(k, v)
		}
	}
}

func (w *fastResponse) Write(p []byte) (int, error) {
	if !w.wrote {
		// Like net/http, a body without a Content-Type gets a sniffed one.
		if _, ok := w.header["Content-Type"]; !ok && len(p) > 0 {
			w.header.Set("Content-Type", http.DetectContentType(p))
		}
		w.WriteHeader(http.StatusOK)
	}
	return w.ctx.Write(p)
}

// finish writes the status of a handler that wrote nothing.
func (w *fastResponse) finish() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
}

// handOff gives the connection to net/http: the request fasthttp read is
// replayed to it, then whatever the client sends next.
func (f *fastLane) handOff(ctx *fasthttp.RequestCtx) {
	body, _ := requestBody(ctx)
	// No handler here takes more than --max-request-bytes; past that, the
	// replayed request carries one byte too many, for net/http's handler
	// to refuse, and the connection closes after the answer.
	b, err := io.ReadAll(io.LimitReader(body, f.maxBody+1))
	if err != nil {
		f.lg.Debug("cannot read the body of a request to hand to net/http", zap.Error(err))
		ctx.Error("400 Bad Request", http.StatusBadRequest)
		ctx.SetConnectionClose()
		return
	}
	replay := replayRequest(&ctx.Request.Header, b, int64(len(b)) > f.maxBody)
	f.handedOff.Add(1)
	metricHandoffs.Inc()
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		f.handoff.deliver(&replayConn{Conn: c, pending: replay})
	})
}

// replayRequest writes a request back as HTTP/1.x bytes: its request line
// as received, its headers, and body (which fasthttp has read and, if it
// came in chunks, joined) with a Content-Length. Expect is dropped:
// fasthttp has answered it. closing adds Connection: close.
func replayRequest(hdr *fasthttp.RequestHeader, body []byte, closing bool) []byte {
	var b bytes.Buffer
	b.Grow(512 + len(body))
	b.Write(hdr.Method())
	b.WriteByte(' ')
	b.Write(hdr.RequestURI())
	b.WriteByte(' ')
	b.Write(hdr.Protocol())
	b.WriteString("\r\n")
	for k, v := range hdr.All() {
		switch {
		case bytes.EqualFold(k, []byte(fasthttp.HeaderContentLength)),
			bytes.EqualFold(k, []byte(fasthttp.HeaderTransferEncoding)),
			bytes.EqualFold(k, []byte(fasthttp.HeaderExpect)),
			closing && bytes.EqualFold(k, []byte(fasthttp.HeaderConnection)):
			continue
		}
		b.Write(k)
		b.WriteString(": ")
		b.Write(v)
		b.WriteString("\r\n")
	}
	if closing {
		b.WriteString("Connection: close\r\n")
	}
	if len(body) > 0 || hdr.ContentLength() != 0 && hdr.ContentLength() != -2 {
		b.WriteString("Content-Length: ")
		b.WriteString(strconv.Itoa(len(body)))
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

// replayConn is a connection whose first bytes are pending, then the
// connection's own. net/http reads a connection from one goroutine at a
// time.
type replayConn struct {
	net.Conn
	pending []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// handoffListener is the net.Listener net/http serves: it accepts the
// connections the fast lane hands over. Closing it (net/http's Shutdown
// does) closes every connection handed over afterwards.
type handoffListener struct {
	addr  net.Addr
	conns chan net.Conn // unbuffered: a hand-off waits for Accept
	done  chan struct{} // closed by Close
	once  sync.Once
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *handoffListener) deliver(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }
