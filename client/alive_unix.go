//go:build unix

package client

import (
	"syscall"
)

// alive reports whether the member has not closed c. An idle connection
// has nothing to read: a peek that does not block finds nothing there
// (EAGAIN) on a live connection, and its end, an error or bytes nobody
// asked for on one that cannot be reused. One system call, and no deadline
// set and reset (a read with a deadline already past never reaches the
// kernel).
func (c *pconn) alive() bool {
	if c.br.Buffered() > 0 {
		return false
	}
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return aliveByDeadline(c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var rerr error
	var buf [1]byte
	if err := rc.Read(func(fd uintptr) bool {
		_, _, rerr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait: the answer is now or not at all
	}); err != nil {
		return false
	}
	return rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK
}
