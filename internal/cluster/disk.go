package cluster

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"raftexample/client"
)

// TearWAL simulates a crash in the middle of a WAL write: it appends to the
// newest segment of stopped member id the first bytes of a record (a copy of
// its last one, cut short) and truncates the file there, so the segment ends
// in a torn record, as when the process died before the write completed.
//
// The torn record is one the member had not synced, so it cannot have been
// acknowledged. Cutting into records the member had synced instead is
// outside raft's fault model: a follower that loses entries it acknowledged
// makes the leader's heartbeat panic it ("tocommit is out of range"), and
// it could forget a vote.
func (c *Cluster) TearWAL(id uint64) (string, error) {
	n := c.node(id)
	if n == nil || c.State(id) != Stopped {
		return "", fmt.Errorf("cluster: tear wal of member %d: it must be stopped, it is %v", id, stateOf(n))
	}
	segs, err := filepath.Glob(filepath.Join(n.dataDir, "raftexample-"+strconv.FormatUint(id, 10), "*.wal"))
	if err != nil || len(segs) == 0 {
		return "", fmt.Errorf("cluster: member %d has no wal segment", id)
	}
	sort.Strings(segs) // names are <seq>-<index>.wal in hex, fixed width
	seg := segs[len(segs)-1]
	f, err := os.OpenFile(seg, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("cluster: %w", err)
	}
	defer f.Close()
	start, end, records, err := lastRecord(f)
	if err != nil {
		return "", fmt.Errorf("cluster: read %s: %w", seg, err)
	}
	last := make([]byte, end-start)
	if _, err := f.ReadAt(last, start); err != nil {
		return "", fmt.Errorf("cluster: read %s: %w", seg, err)
	}
	torn := last[:1+rand.IntN(len(last)-1)]
	if _, err := f.WriteAt(torn, end); err != nil {
		return "", fmt.Errorf("cluster: write %s: %w", seg, err)
	}
	if err := f.Truncate(end + int64(len(torn))); err != nil {
		return "", fmt.Errorf("cluster: truncate %s: %w", seg, err)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("cluster: sync %s: %w", seg, err)
	}
	msg := fmt.Sprintf("member %d: %s now ends in a torn record: %d of %d bytes after its %d whole records",
		id, filepath.Base(seg), len(torn), len(last), records)
	c.Logf("tear wal: %s", msg)
	return msg, nil
}

// lastRecord walks a WAL segment's frames (an 8-byte little-endian length
// whose top byte may announce padding, then the padded record) up to the
// first zero length, where the preallocated space begins.
func lastRecord(r io.ReaderAt) (start, end int64, records int, err error) {
	var hdr [8]byte
	var off int64
	for {
		if _, err := r.ReadAt(hdr[:], off); err != nil {
			if err == io.EOF {
				return start, off, records, nil
			}
			return 0, 0, 0, err
		}
		v := binary.LittleEndian.Uint64(hdr[:])
		if v == 0 {
			return start, off, records, nil
		}
		size := int64(v & 0x00ffffffffffffff)
		if v>>63 == 1 {
			size += int64(v>>56) & 0x7
		}
		start, off = off, off+8+size
		records++
	}
}

// WaitReady waits until every running member answers a linearizable read,
// which needs a leader, a quorum and the member caught up to the leader's
// commit index at the time of the read.
func (c *Cluster) WaitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hc := &http.Client{Timeout: 3 * time.Second}
	defer hc.CloseIdleConnections()
	for _, id := range c.IDs(Running) {
		var last string
		for {
			_, err := client.New(c.ClientURL(id), hc).Get(ctx, "harness-ready-probe", false)
			if err == nil || client.IsNotFound(err) {
				break
			}
			last = err.Error()
			select {
			case <-ctx.Done():
				return fmt.Errorf("cluster: member %d did not serve a linearizable read within %v after healing (last: %s); see %s",
					id, timeout, last, c.LogPath(id))
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// WaitCaughtUp waits until member id has applied everything the leader had
// committed when the wait began.
func (c *Cluster) WaitCaughtUp(ctx context.Context, id uint64, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var target uint64
	for {
		if target == 0 {
			if lead, err := c.Leader(ctx); err == nil {
				if st, err := c.Status(ctx, lead); err == nil {
					target = st.Commit
				}
			}
		}
		if target > 0 {
			if st, err := c.Status(ctx, id); err == nil && st.Applied >= target {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: member %d did not catch up to commit index %d within %v; see %s", id, target, timeout, c.LogPath(id))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// DamageWAL flips one byte inside a record in the synced part of stopped
// member id's newest WAL segment: a record in the middle of what it holds,
// with records written and synced after it, so the damage cannot pass for
// a torn tail. It returns the segment and the byte's offset.
func (c *Cluster) DamageWAL(id uint64) (string, int64, error) {
	seg, err := c.newestFile(id, "raftexample-"+strconv.FormatUint(id, 10), "*.wal")
	if err != nil {
		return "", 0, err
	}
	f, err := os.OpenFile(seg, os.O_RDWR, 0)
	if err != nil {
		return "", 0, fmt.Errorf("cluster: %w", err)
	}
	defer f.Close()
	var frames [][2]int64 // offset and length of each record
	for off := int64(0); ; {
		var hdr [8]byte
		if _, err := f.ReadAt(hdr[:], off); err != nil {
			break
		}
		v := binary.LittleEndian.Uint64(hdr[:])
		if v == 0 {
			break
		}
		size, pad := int64(v&0x00ffffffffffffff), int64(0)
		if v>>63 == 1 {
			pad = int64(v>>56) & 0x7
		}
		frames = append(frames, [2]int64{off, size})
		off += 8 + size + pad
	}
	if len(frames) < 8 {
		return "", 0, fmt.Errorf("cluster: member %d's segment %s holds only %d records", id, seg, len(frames))
	}
	fr := frames[len(frames)/2]
	at := fr[0] + 8 + fr[1]/2
	if err := flip(f, at); err != nil {
		return "", 0, err
	}
	c.Logf("damage wal: member %d: flipped byte %d of %s (record %d of %d, at %d)", id, at, filepath.Base(seg), len(frames)/2, len(frames), fr[0])
	return seg, fr[0], nil
}

// DamageSnapshot flips one byte in the middle of stopped member id's newest
// snapshot file; it returns the file, or "" if the member has none.
func (c *Cluster) DamageSnapshot(id uint64) (string, error) {
	snap, err := c.newestFile(id, "raftexample-"+strconv.FormatUint(id, 10)+"-snap", "*.snap")
	if err != nil {
		return "", nil // no snapshot yet: nothing to damage
	}
	f, err := os.OpenFile(snap, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("cluster: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("cluster: %w", err)
	}
	if err := flip(f, fi.Size()/2); err != nil {
		return "", err
	}
	c.Logf("damage snapshot: member %d: flipped byte %d of %s", id, fi.Size()/2, filepath.Base(snap))
	return snap, nil
}

func (c *Cluster) newestFile(id uint64, sub, pattern string) (string, error) {
	n := c.node(id)
	if n == nil || c.State(id) != Stopped {
		return "", fmt.Errorf("cluster: damage files of member %d: it must be stopped, it is %v", id, stateOf(n))
	}
	names, err := filepath.Glob(filepath.Join(n.dataDir, sub, pattern))
	if err != nil || len(names) == 0 {
		return "", fmt.Errorf("cluster: member %d has no %s", id, filepath.Join(sub, pattern))
	}
	sort.Strings(names) // fixed-width hex names: newest last
	return names[len(names)-1], nil
}

func flip(f *os.File, at int64) error {
	b := []byte{0}
	if _, err := f.ReadAt(b, at); err != nil {
		return fmt.Errorf("cluster: read %s: %w", f.Name(), err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, at); err != nil {
		return fmt.Errorf("cluster: write %s: %w", f.Name(), err)
	}
	return f.Sync()
}

// RestartRefused starts stopped member id on its data and expects it to
// refuse: to exit during start after logging a line containing substr.
// That exit is expected; starting to serve instead is an error.
func (c *Cluster) RestartRefused(ctx context.Context, id uint64, substr string) error {
	refused, err := c.RestartMayRefuse(ctx, id, substr)
	if err == nil && !refused {
		c.Kill(id)
		return fmt.Errorf("cluster: member %d started instead of refusing to; see %s", id, c.LogPath(id))
	}
	return err
}

// RestartMayRefuse starts stopped member id on its data. Either it serves
// (refused false), or it exits during start after logging a line with
// substr (refused true; that exit is expected). Exiting without saying so
// is an error, and so is an exit once it serves.
func (c *Cluster) RestartMayRefuse(ctx context.Context, id uint64, substr string) (refused bool, err error) {
	// What the member does is the answer, even if the caller's time (a
	// scenario's workload) runs out meanwhile: the waits below are bounded.
	ctx = context.WithoutCancel(ctx)
	n := c.node(id)
	if n == nil || c.State(id) != Stopped {
		return false, fmt.Errorf("cluster: cannot restart member %d: it is %v", id, stateOf(n))
	}
	said := c.WatchLog(id, substr)
	c.mu.Lock()
	n.refusal = substr
	c.mu.Unlock()
	c.Logf("restart member %d; it may refuse (%q)", id, substr)
	if err := c.launch(n); err != nil {
		return false, err
	}
	serr := c.waitServing(ctx, n)
	c.mu.Lock()
	exited := n.exited
	if serr == nil {
		n.refusal = "" // it serves: a later exit is a crash like any other
	}
	c.mu.Unlock()
	if serr == nil {
		return false, nil
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		c.Kill(id)
		return false, fmt.Errorf("cluster: member %d neither served nor exited: %w", id, serr)
	}
	select {
	case <-said:
		return true, nil
	default:
		return false, fmt.Errorf("cluster: member %d exited without saying %q; see %s", id, substr, n.logPath)
	}
}
