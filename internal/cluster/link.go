package cluster

import (
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// link is a TCP proxy standing for one direction of a network path: member
// i reaches member j's peer listener through link i→j, because i's --cluster
// names the link's address for j. Cutting a link drops its connections and
// refuses new ones until it is healed, which is what a partition looks like
// to rafthttp (it redials every 100 ms).
type link struct {
	ln     net.Listener
	target string // the peer listener the link forwards to

	mu     sync.Mutex // guards cut, closed and conns
	cut    bool
	closed bool
	conns  map[net.Conn]struct{} // both ends of every forwarded connection

	wg sync.WaitGroup // the accept loop and the forwarding goroutines
}

func newLink(target string) (*link, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("link listener: %w", err)
	}
	l := &link{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
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
	go func() { io.Copy(up, down); done <- struct{}{} }()
	go func() { io.Copy(down, up); done <- struct{}{} }()
	<-done
	// One direction ended: close both so the other copy returns too.
	down.Close()
	up.Close()
	<-done
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

func (l *link) isCut() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cut
}

func (l *link) close() {
	l.mu.Lock()
	l.closed = true
	for c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	l.ln.Close()
	l.wg.Wait()
}
