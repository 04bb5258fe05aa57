package cluster

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
)

func (c *Cluster) disk(id uint64) (*member, error) {
	n := c.node(id)
	if n == nil || n.disk == nil {
		return nil, fmt.Errorf("cluster: member %d has no powerfs data dir (Options.PowerFS)", id)
	}
	return n, nil
}

// PowerCut cuts the power of the given members at the same moment: each
// process is killed with SIGKILL, then its filesystem throws away what was
// not durable (see package powerfs). They stay stopped until restarted.
func (c *Cluster) PowerCut(ids ...uint64) error {
	var victims []*member
	for _, id := range ids {
		n, err := c.disk(id)
		if err != nil {
			return err
		}
		victims = append(victims, n)
	}
	// Signal them all first: a power cut hits every machine at once, not
	// one after another's exit.
	var running []*member
	for _, n := range victims {
		if s := c.State(n.ID); s == Running || s == Paused {
			if _, err := c.signal(n.ID, syscall.SIGKILL, []State{Running, Paused}, Stopped, true); err != nil {
				return err
			}
			running = append(running, n)
		}
	}
	for _, n := range running {
		<-n.exited
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, n := range victims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := n.disk.Cut()
			s := n.disk.Stats()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("cluster: power cut of member %d: %w", n.ID, err))
				return
			}
			c.Logf("power cut member %d: lost %d unsynced pages and the unsynced entries of %d directories", n.ID, s.LostPages, s.LostDirs)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// StallDisk makes member id's fsyncs (and, with writes, its writes) block
// until ReleaseDisk.
func (c *Cluster) StallDisk(id uint64, writes bool) error {
	n, err := c.disk(id)
	if err != nil {
		return err
	}
	n.disk.Stall(writes)
	c.Logf("stall the disk of member %d (writes too: %v)", id, writes)
	return nil
}

// ReleaseDisk ends a stall of member id's disk.
func (c *Cluster) ReleaseDisk(id uint64) error {
	n, err := c.disk(id)
	if err != nil {
		return err
	}
	n.disk.Release()
	c.Logf("release the disk of member %d", id)
	return nil
}

// FillDisk makes member id's disk full (writes fail with ENOSPC), or frees
// it. While it is full the member may exit with an error: that exit is
// expected, not a crash of its own.
func (c *Cluster) FillDisk(id uint64, full bool) error {
	n, err := c.disk(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	n.diskFull = full
	c.mu.Unlock()
	n.disk.SetFull(full)
	c.Logf("disk of member %d full: %v", id, full)
	return nil
}
