package cluster

import (
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"sync"
	"time"
)

// link is a TCP proxy standing for one direction of a network path: member
// i reaches member j's peer listener through link i→j, because i's --cluster
// names the link's address for j.
//
// A cut link drops its connections and refuses new ones until healed: the
// sender learns at once (rafthttp redials every 100 ms). A stalled link
// keeps its connections but stops moving bytes, so the sender's buffers
// fill and its requests time out, as behind a router that drops packets;
// when it is healed the held bytes arrive late.
//
// A link can also be slow (every chunk it forwards is held for a delay
// drawn from delay ± jitter, in order) and flaky (it drops each new
// connection, and every 200 ms each open one, with probability drop).
type link struct {
	ln      net.Listener
	target  string        // the peer listener the link forwards to
	stopped chan struct{} // closed by close

	mu     sync.Mutex // guards everything below
	cut    bool
	open   chan struct{} // closed while bytes may flow; a fresh one while stalled
	closed bool
	conns  map[net.Conn]struct{} // both ends of every forwarded connection
	delay  time.Duration
	jitter time.Duration
	drop   float64
	rng    *rand.Rand

	wg sync.WaitGroup // the accept loop and the forwarding goroutines
}

func newLink(target string) (*link, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("link listener: %w", err)
	}
	l := &link{ln: ln, target: target, stopped: make(chan struct{}), open: make(chan struct{}), conns: map[net.Conn]struct{}{},
		rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
	close(l.open)
	l.wg.Add(2)
	go l.accept()
	go l.dropLoop()
	return l, nil
}

// dropLoop closes open connections at random while the link is flaky.
func (l *link) dropLoop() {
	defer l.wg.Done()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-l.stopped:
			return
		case <-t.C:
		}
		l.mu.Lock()
		if l.drop > 0 {
			for c := range l.conns {
				if l.rng.Float64() < l.drop {
					c.Close()
				}
			}
		}
		l.mu.Unlock()
	}
}

// setWeather makes the link slow and flaky (zero values: neither).
func (l *link) setWeather(delay, jitter time.Duration, drop float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.delay, l.jitter, l.drop = delay, jitter, drop
}

// holdFor draws how long to hold the next chunk.
func (l *link) holdFor() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.delay
	if l.jitter > 0 {
		d += time.Duration(l.rng.Int64N(int64(2*l.jitter))) - l.jitter
	}
	return max(0, d)
}

func (l *link) addr() string { return l.ln.Addr().String() }

func (l *link) accept() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return // closed
		}
		if !l.track(c) {
			c.Close()
			continue
		}
		l.wg.Add(1)
		go l.forward(c)
	}
}

// track registers c unless the link is cut or closed (or, when flaky,
// drops it).
func (l *link) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cut || l.closed || (l.drop > 0 && l.rng.Float64() < l.drop) {
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *link) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	c.Close()
}

func (l *link) forward(down net.Conn) {
	defer l.wg.Done()
	defer l.untrack(down)
	if !l.waitOpen() {
		return
	}
	up, err := net.DialTimeout("tcp", l.target, time.Second)
	if err != nil {
		return // the target is down: the dialer sees a closed connection
	}
	if !l.track(up) {
		up.Close()
		return
	}
	defer l.untrack(up)
	done := make(chan struct{}, 2)
	go func() { l.pump(up, down); done <- struct{}{} }()
	go func() { l.pump(down, up); done <- struct{}{} }()
	<-done
	// One direction ended: close both so the other copy returns too.
	down.Close()
	up.Close()
	<-done
}

// pump copies src to dst while the link is open; while it is stalled it
// neither reads nor writes. When the link is slow, a second goroutine
// delivers each chunk once its delay is over, never before an earlier one.
func (l *link) pump(dst, src net.Conn) {
	type chunk struct {
		b  []byte
		at time.Time
	}
	queue := make(chan chunk, 64)
	delivered := make(chan struct{})
	go func() {
		defer close(delivered)
		for c := range queue {
			if d := time.Until(c.at); d > 0 {
				select {
				case <-time.After(d):
				case <-l.stopped:
					return
				}
			}
			if !l.waitOpen() {
				return
			}
			if _, err := dst.Write(c.b); err != nil {
				dst.Close()
				src.Close() // stop the reader too
				return
			}
		}
	}()
	defer func() {
		close(queue)
		<-delivered
	}()
	var last time.Time
	for l.waitOpen() {
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 {
			at := time.Now().Add(l.holdFor())
			if at.Before(last) {
				at = last // bytes of one connection stay in order
			}
			last = at
			select {
			case queue <- chunk{buf[:n], at}:
			case <-delivered:
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// waitOpen waits while the link is stalled; false if it was closed.
func (l *link) waitOpen() bool {
	l.mu.Lock()
	open := l.open
	l.mu.Unlock()
	select {
	case <-open:
		return true
	case <-l.stopped:
		return false
	}
}

// setStall stalls (true) or releases (false) the link.
func (l *link) setStall(stall bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.open: // flowing
		if stall {
			l.open = make(chan struct{})
		}
	default: // stalled
		if !stall {
			close(l.open)
		}
	}
}

// setCut cuts (true) or heals (false) the link.
func (l *link) setCut(cut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = cut
	if cut {
		for c := range l.conns {
			c.Close()
		}
	}
}

func (l *link) close() {
	l.mu.Lock()
	l.closed = true
	close(l.stopped)
	for c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	l.ln.Close()
	l.wg.Wait()
}

// inboundLink stands in front of a member added after start. The earlier
// members reach it at the URL given when it was added, the same for all of
// them, so this proxy tells them apart by the X-Server-From header that
// rafthttp puts on every stream and message request, and cuts per sender.
type inboundLink struct {
	ln    net.Listener
	srv   *http.Server
	proxy *httputil.ReverseProxy

	mu     sync.Mutex // guards cut, all and active
	cut    map[uint64]bool
	all    bool // every sender is cut (the member was removed)
	active map[uint64]map[*context.CancelFunc]struct{}
}

func newInboundLink(target string) (*inboundLink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("inbound link listener: %w", err)
	}
	l := &inboundLink{ln: ln, cut: map[uint64]bool{}, active: map[uint64]map[*context.CancelFunc]struct{}{}}
	l.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme, r.Out.URL.Host = "http", target
		},
		FlushInterval: -1, // raft streams are long-lived responses
		Transport:     &http.Transport{DialContext: (&net.Dialer{Timeout: time.Second}).DialContext},
		ErrorLog:      log.New(io.Discard, "", 0),
	}
	l.srv = &http.Server{Handler: l, ErrorLog: log.New(io.Discard, "", 0)}
	go l.srv.Serve(ln)
	return l, nil
}

func (l *inboundLink) addr() string { return l.ln.Addr().String() }

func (l *inboundLink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	from, _ := strconv.ParseUint(r.Header.Get("X-Server-From"), 16, 64)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	l.mu.Lock()
	if l.all || l.cut[from] {
		l.mu.Unlock()
		http.Error(w, "cut by the test harness", http.StatusServiceUnavailable)
		return
	}
	if l.active[from] == nil {
		l.active[from] = map[*context.CancelFunc]struct{}{}
	}
	l.active[from][&cancel] = struct{}{}
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.active[from], &cancel)
		l.mu.Unlock()
	}()
	l.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// setCut cuts (or heals) the path from member from; its requests in
// flight, streams included, are aborted.
func (l *inboundLink) setCut(from uint64, cut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut[from] = cut
	if cut {
		for cancel := range l.active[from] {
			(*cancel)()
		}
	}
}

// cutAll cuts every sender at once, for good: the member was removed.
func (l *inboundLink) cutAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = true
	for _, reqs := range l.active {
		for cancel := range reqs {
			(*cancel)()
		}
	}
}

// healAll heals every sender's path (not a removed member's).
func (l *inboundLink) healAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	clear(l.cut)
}

func (l *inboundLink) close() {
	l.cutAll()
	l.srv.Close()
	l.proxy.Transport.(*http.Transport).CloseIdleConnections()
}
