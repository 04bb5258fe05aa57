package cluster

import (
	"context"
	"fmt"
	"io"
	"log"
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
type link struct {
	ln      net.Listener
	target  string        // the peer listener the link forwards to
	stopped chan struct{} // closed by close

	mu     sync.Mutex // guards cut, open, closed and conns
	cut    bool
	open   chan struct{} // closed while bytes may flow; a fresh one while stalled
	closed bool
	conns  map[net.Conn]struct{} // both ends of every forwarded connection

	wg sync.WaitGroup // the accept loop and the forwarding goroutines
}

func newLink(target string) (*link, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("link listener: %w", err)
	}
	l := &link{ln: ln, target: target, stopped: make(chan struct{}), open: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(l.open)
	l.wg.Add(1)
	go l.accept()
	return l, nil
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

// track registers c unless the link is cut or closed.
func (l *link) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cut || l.closed {
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
// neither reads nor writes.
func (l *link) pump(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for l.waitOpen() {
		n, err := src.Read(buf)
		if n > 0 {
			if !l.waitOpen() {
				return
			}
			if _, err := dst.Write(buf[:n]); err != nil {
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
