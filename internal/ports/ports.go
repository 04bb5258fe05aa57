// Package ports hands out loopback TCP ports to tests that start servers,
// such that no two tests on the machine get the same port, even in
// different processes, for as long as they hold it.
//
// A member's port must stay its own while it is down between a kill and a
// restart, and go test runs packages in parallel processes. A bind check
// alone cannot promise that: a port free now may be handed to someone else
// before the server binds it. So every port handed out is also locked (flock
// on a file named for the port, in a directory shared by all processes of
// the machine) until it is released; the kernel drops the lock if the
// process dies.
//
// Ports come from below Linux's ephemeral range (32768 and up), so that the
// many outgoing connections of a test cannot take a stopped server's port.
package ports

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

const (
	firstPort = 20000
	portCount = 12000
)

// Reservation is a port held until Release.
type Reservation struct {
	Port int
	lock *os.File
}

// Reserve picks a free port and holds it.
func Reserve() (*Reservation, error) {
	for range 500 {
		p := firstPort + rand.IntN(portCount)
		f, err := lock(p)
		if err != nil {
			return nil, err
		}
		if f == nil {
			continue
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			f.Close() // in use by something that does not reserve
			continue
		}
		ln.Close()
		return &Reservation{Port: p, lock: f}, nil
	}
	return nil, errors.New("ports: no free port found")
}

// lock takes port p's lock; it returns nil if someone else holds it.
func lock(p int) (*os.File, error) {
	f, err := openLock(p)
	if err != nil {
		return nil, err
	}
	if !claim(f) {
		f.Close()
		return nil, nil
	}
	return f, nil
}

func openLock(p int) (*os.File, error) {
	dir := filepath.Join(os.TempDir(), "raftexample-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, fmt.Errorf("ports: lock dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(p)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, fmt.Errorf("ports: lock file: %w", err)
	}
	return f, nil
}

// claim locks the open lock file f, if no one else holds it.
func claim(f *os.File) bool {
	// flock locks belong to the open file, so a second reservation of the
	// same port in this very process fails too.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return false
	}
	// Release removes the file before it unlocks, so that no lock files
	// pile up. Whoever opened the file before it was removed gets a lock on
	// a file no longer at the path, which guards nothing: check that the
	// path still names the file locked.
	held, err1 := f.Stat()
	named, err2 := os.Stat(f.Name())
	return err1 == nil && err2 == nil && os.SameFile(held, named)
}

// Release lets the port be handed out again. Releasing twice is harmless.
func (r *Reservation) Release() {
	if r.lock != nil {
		os.Remove(r.lock.Name())
		r.lock.Close()
		r.lock = nil
	}
}
