// Package powerfs is a FUSE filesystem for fault tests that can lose power.
//
// A test mounts one FS per member data dir. Processes use it as a normal
// directory; the filesystem remembers, beside what they see, what they made
// durable with fsync (see model.go for the exact rules, which are strict
// POSIX). Cut then throws away everything that was not durable: file writes
// and truncations since each file's last fsync, and names created, renamed
// or removed in a directory since that directory's last fsync. That is what
// a power cut, a kernel panic or a VM host failure does, and what kill -9
// (which keeps the page cache) never does.
//
// The data lives in the test process's memory, not on a disk: the FS exists
// for as long as the test, and Export writes a copy to a real directory
// when a failed run keeps its artefacts. The same FS can also stall (fsync,
// or every write, blocks until told to go on) and be full (writes, new
// names and fsyncs of unsynced data fail with ENOSPC).
package powerfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// FS is one filesystem and, while mounted, its FUSE server. Its methods are
// safe for concurrent use.
type FS struct {
	dir string // the mount point

	mu     sync.Mutex // guards everything below, and the model
	t      *tree
	server *fuse.Server
	full   bool
	stall  chan struct{} // non-nil while stalled; closed to release
	stallW bool          // the stall holds writes too, not only fsyncs
	stats  Stats
}

// Stats counts what the processes did through the filesystem.
type Stats struct {
	Cuts, Writes, Fsyncs int
	// What the last cut threw away.
	LostPages, LostDirs int
}

// Available reports whether FUSE filesystems can be mounted here; when not,
// the error says why, for a test's skip message.
func Available() error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("no /dev/fuse: %w", err)
	}
	dir, err := os.MkdirTemp("", "powerfs-probe")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	p := New(dir)
	if err := p.Mount(); err != nil {
		return err
	}
	return p.Unmount()
}

// New returns an empty filesystem to be mounted at dir (which must exist
// and be empty).
func New(dir string) *FS {
	return &FS{dir: dir, t: newTree()}
}

// Dir is the mount point.
func (p *FS) Dir() string { return p.dir }

// Mount serves the filesystem at its mount point.
func (p *FS) Mount() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.server != nil {
		return fmt.Errorf("powerfs: %s is already mounted", p.dir)
	}
	root := &fnode{pfs: p, n: p.t.root}
	srv, err := fs.Mount(p.dir, root, &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName: "powerfs", Name: "powerfs",
			DirectMount: true, // as root: no fusermount needed
			// The model, not the kernel, must answer every request, or a
			// cut could be hidden by what the kernel cached before it.
			DisableXAttrs: true,
		},
		EntryTimeout: &zero, AttrTimeout: &zero, NegativeTimeout: &zero,
		NullPermissions: true,
		UID:             uint32(os.Getuid()), GID: uint32(os.Getgid()),
	})
	if err != nil {
		return fmt.Errorf("powerfs: mount %s: %w", p.dir, err)
	}
	p.server = srv
	return nil
}

// Unmount stops serving. Every process using the filesystem must have
// closed its files (or died); a busy mount is retried for a few seconds.
func (p *FS) Unmount() error {
	p.mu.Lock()
	srv := p.server
	p.server = nil
	p.releaseStallLocked()
	p.mu.Unlock()
	if srv == nil {
		return nil
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := srv.Unmount()
		if err == nil {
			srv.Wait()
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			p.mu.Lock()
			p.server = srv
			p.mu.Unlock()
			return fmt.Errorf("powerfs: unmount %s: %w", p.dir, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Cut is the power cut: the filesystem keeps only what was durable. No
// process may be using it (kill them first); it is unmounted, cut and
// mounted again, so nothing the kernel cached survives either.
func (p *FS) Cut() error {
	if err := p.Unmount(); err != nil {
		return err
	}
	p.mu.Lock()
	p.stats.LostPages, p.stats.LostDirs = p.t.unsynced()
	p.t.cut()
	p.stats.Cuts++
	p.mu.Unlock()
	return p.Mount()
}

// Unsynced reports what a cut would throw away now: file pages written and
// not fsynced, and directories whose entries changed since their fsync.
func (p *FS) Unsynced() (pages, dirs int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.t.unsynced()
}

// SetFull makes the disk full (writes, new names, growing a file and
// fsyncing unsynced data fail with ENOSPC) or frees it again.
func (p *FS) SetFull(full bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.full = full
}

// Stall makes every fsync (and, with writes, every write) block until
// Release, as a disk that stops answering does.
func (p *FS) Stall(writes bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stall == nil {
		p.stall = make(chan struct{})
	}
	p.stallW = writes
}

// Release ends a stall; what was held goes on.
func (p *FS) Release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.releaseStallLocked()
}

func (p *FS) releaseStallLocked() {
	if p.stall != nil {
		close(p.stall)
		p.stall = nil
	}
}

// waitStall holds an fsync (or a write) while the disk is stalled. It
// reports false if the request was interrupted (the process died).
func (p *FS) waitStall(ctx context.Context, fsync bool) bool {
	p.mu.Lock()
	c := p.stall
	if !fsync && !p.stallW {
		c = nil
	}
	p.mu.Unlock()
	if c == nil {
		return true
	}
	select {
	case <-c:
		return true
	case <-ctx.Done():
		return false
	}
}

// Stats returns the counters.
func (p *FS) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// Export writes the tree as processes see it now into dst, a real
// directory, for a failed test's artefacts.
func (p *FS) Export(dst string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return export(p.t.root, dst)
}

func export(d *node, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	for name, c := range d.entries {
		path := filepath.Join(dst, name)
		if c.dir {
			if err := export(c, path); err != nil {
				return err
			}
			continue
		}
		buf := make([]byte, c.size)
		c.read(buf, 0)
		if err := os.WriteFile(path, buf, 0o644); err != nil {
			return err
		}
	}
	return nil
}
