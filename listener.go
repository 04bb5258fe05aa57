package main

import (
	"errors"
	"net"
	"sync"
	"time"
)

var errListenerStopped = errors.New("listener stopped")

// stoppableListener is a TCP listener bound at construction, so a busy port
// is reported at startup, whose Accept returns errListenerStopped once
// Close is called. Accepted connections use TCP keep-alive, so a peer that
// vanishes without a FIN is noticed.
type stoppableListener struct {
	*net.TCPListener
	stopc    chan struct{} // closed by Close
	stopOnce sync.Once
}

func newStoppableListener(addr string) (*stoppableListener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &stoppableListener{TCPListener: ln.(*net.TCPListener), stopc: make(chan struct{})}, nil
}

func (ln *stoppableListener) Accept() (net.Conn, error) {
	conn, err := ln.AcceptTCP()
	if err != nil {
		select {
		case <-ln.stopc:
			return nil, errListenerStopped
		default:
			return nil, err
		}
	}
	if err := conn.SetKeepAlive(true); err == nil {
		_ = conn.SetKeepAlivePeriod(30 * time.Second)
	}
	return conn, nil
}

func (ln *stoppableListener) Close() error {
	var err error
	ln.stopOnce.Do(func() {
		close(ln.stopc)
		err = ln.TCPListener.Close()
	})
	return err
}
