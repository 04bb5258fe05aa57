package ports

import (
	"os"
	"testing"
)

// flock locks belong to the open file, so reservations in one process
// conflict as they do across processes. 600 picks from 12000 ports would
// repeat a port about 15 times on average without the locks.
func TestReserveNeverSharesAPort(t *testing.T) {
	var held []*Reservation
	defer func() {
		for _, r := range held {
			r.Release()
		}
	}()
	seen := map[int]bool{}
	for range 600 {
		r, err := Reserve()
		if err != nil {
			t.Fatal(err)
		}
		if seen[r.Port] {
			t.Fatalf("port %d handed out twice", r.Port)
		}
		seen[r.Port] = true
		held = append(held, r)
	}
}

func TestReleasedPortCanBeReservedAgain(t *testing.T) {
	r, err := Reserve()
	if err != nil {
		t.Fatal(err)
	}
	// Another Reserve cannot get r's port while it is held...
	if ok := tryLock(t, r.Port); ok {
		t.Fatalf("port %d locked twice", r.Port)
	}
	r.Release()
	r.Release()
	// ...and can once it is released.
	if ok := tryLock(t, r.Port); !ok {
		t.Fatalf("port %d still locked after Release", r.Port)
	}
}

func tryLock(t *testing.T, p int) bool {
	t.Helper()
	f, err := lock(p)
	if err != nil {
		t.Fatal(err)
	}
	if f == nil {
		return false
	}
	(&Reservation{Port: p, lock: f}).Release()
	return true
}

// A lock file opened before its holder released it (another process caught
// between open and flock) must not count as the port's lock once the file
// is gone, or two could hold the port: that one and the next Reserve.
func TestLockOnARemovedFileDoesNotHoldThePort(t *testing.T) {
	r, err := Reserve()
	if err != nil {
		t.Fatal(err)
	}
	late, err := openLock(r.Port)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	name := late.Name()
	r.Release()
	if _, err := os.Stat(name); !os.IsNotExist(err) {
		t.Fatalf("lock file %s left behind after Release (stat: %v)", name, err)
	}
	if claim(late) {
		t.Fatalf("a lock on the removed file of port %d counted as holding it", r.Port)
	}
	if !tryLock(t, r.Port) {
		t.Fatalf("port %d cannot be locked after Release", r.Port)
	}
}
