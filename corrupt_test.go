package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// Bit rot: bytes that change on disk after they were synced. A member must
// never serve data it cannot verify: it refuses to start with one line that
// names the damaged file, or falls back to an older snapshot and the WAL.

// writeAndStop runs a one-member cluster (--snapshot-count 50), writes n
// keys and shuts it down; it returns the cluster and the data dirs.
func writeAndStop(t *testing.T, n int) (c *procCluster, waldir, snapdir string) {
	c = newProcCluster(t, 1)
	for i := range n {
		c.putRetry(fmt.Sprintf("k%03d", i), fmt.Sprintf("v%03d", i))
	}
	c.procs[0].cmd.Process.Signal(syscall.SIGTERM)
	if code := c.procs[0].exitCode(15 * time.Second); code != 0 {
		t.Fatalf("shutdown: exit code %d", code)
	}
	return c, filepath.Join(c.dir, "raftexample-1"), filepath.Join(c.dir, "raftexample-1-snap")
}

func newest(t *testing.T, pattern string) string {
	t.Helper()
	names, err := filepath.Glob(pattern)
	if err != nil || len(names) == 0 {
		t.Fatalf("no file matches %s", pattern)
	}
	slices.Sort(names) // fixed-width hex names: newest last
	return names[len(names)-1]
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// walFrames returns the offset and data length of every record frame in a
// segment: an 8-byte little-endian length (record bytes in the low 56 bits,
// padding in the top byte when it is negative), then the record.
func walFrames(t *testing.T, path string) (offs, lens []int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off+8 <= int64(len(b)); {
		l := int64(binary.LittleEndian.Uint64(b[off:]))
		if l == 0 {
			break // preallocated zeros: the end of what was written
		}
		rec, pad := int64(uint64(l)&^(0xff<<56)), int64(0)
		if l < 0 {
			pad = (l >> 56) & 0x7
		}
		offs, lens = append(offs, off), append(lens, rec)
		off += 8 + rec + pad
	}
	return offs, lens
}

func TestProcessDamagedWALRefusesToStart(t *testing.T) {
	// A record well inside what was synced: its successors were written
	// (and synced) after it, so this cannot be mistaken for a torn tail.
	t.Run("data", func(t *testing.T) {
		refuseDamagedWAL(t, func(t *testing.T, seg string, off, size int64) { flipByte(t, seg, off+8+size/2) })
	})
	// A length field that now runs past the end of the segment: etcd's
	// decoder calls that a torn write, and repairing it would truncate
	// every synced record after it.
	t.Run("length", func(t *testing.T) {
		refuseDamagedWAL(t, func(t *testing.T, seg string, off, size int64) {
			f, err := os.OpenFile(seg, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt(binary.LittleEndian.AppendUint64(nil, 1<<40), off); err != nil {
				t.Fatal(err)
			}
		})
	})
}

func refuseDamagedWAL(t *testing.T, damage func(t *testing.T, seg string, off, size int64)) {
	c, waldir, _ := writeAndStop(t, 80)
	seg := newest(t, filepath.Join(waldir, "*.wal"))
	offs, lens := walFrames(t, seg)
	if len(offs) < 20 {
		t.Fatalf("segment %s holds only %d records", seg, len(offs))
	}
	i := len(offs) / 2
	damage(t, seg, offs[i], lens[i])

	c.start(0)
	if code := c.procs[0].exitCode(20 * time.Second); code != 1 {
		t.Fatalf("a member with a damaged WAL exited with %d, want 1 (refuse to start)", code)
	}
	out := c.procs[0].logs.String()
	line := ""
	for l := range strings.SplitSeq(out, "\n") {
		if strings.Contains(l, "is damaged") {
			line = l
		}
	}
	if line == "" || !strings.Contains(line, seg) || !strings.Contains(line, fmt.Sprintf("at byte %d", offs[i])) || !strings.Contains(line, "DELETE /1") {
		t.Fatalf("no single line naming the damaged segment %s at byte %d with what to do; output:\n%s", seg, offs[i], tail(out, 4000))
	}
	t.Logf("refused to start with: %s", line)
	if strings.Contains(out, "repairing") {
		t.Fatal("the member tried to repair (truncate) a WAL whose damage is not a torn tail")
	}
}

func TestProcessDamagedSnapshotFallsBack(t *testing.T) {
	const n = 130 // with --snapshot-count 50: snapshots near 50 and 100
	c, _, snapdir := writeAndStop(t, n)
	snaps, _ := filepath.Glob(filepath.Join(snapdir, "*.snap"))
	if len(snaps) < 2 {
		t.Fatalf("want two snapshots to fall back between, have %v", snaps)
	}
	victim := newest(t, filepath.Join(snapdir, "*.snap"))
	fi, err := os.Stat(victim)
	if err != nil {
		t.Fatal(err)
	}
	flipByte(t, victim, fi.Size()/2)

	c.start(0)
	waitHTTP(t, c.url(0, "/"))
	for i := range n {
		r := do(t, "GET", c.url(0, fmt.Sprintf("/k%03d", i)), "")
		if r.code != 200 || r.body != fmt.Sprintf("v%03d", i) {
			t.Fatalf("after falling back from a damaged snapshot, k%03d = %d %q", i, r.code, r.body)
		}
	}
	out := c.procs[0].logs.String()
	if !strings.Contains(out, "snap file is corrupt") || !strings.Contains(out, victim) {
		t.Fatalf("no warning naming the damaged snapshot %s; output:\n%s", victim, tail(out, 4000))
	}
	if _, err := os.Stat(victim + ".broken"); err != nil {
		t.Fatalf("the damaged snapshot was not set aside as .broken: %v", err)
	}
}

// A snapshot file newer than any the WAL records (a crash between its fsync
// and its WAL record) is sound but must not be used: the member starts
// from the one its WAL records. The newest file is decoded on a guess while
// the WAL is read; here the guess is wrong and its decode is dropped.
func TestProcessOrphanSnapshotIsNotUsed(t *testing.T) {
	const n = 80 // with --snapshot-count 50: a snapshot near 50
	c, _, snapdir := writeAndStop(t, n)
	keys := newKeyTree()
	keys.Put(testItem("orphan", "x", 1, 1, 1))
	st := &snapshotState{index: 1 << 20, members: map[uint64]string{1: c.peers[0]}, keys: keys}
	md := &raftpb.SnapshotMetadata{Index: new(uint64(1 << 20)), Term: new(uint64(1)), ConfState: &raftpb.ConfState{Voters: []uint64{1}}}
	orphan := filepath.Join(snapdir, fmt.Sprintf("%016x-%016x.snap", 1, 1<<20))
	body := snapshotBody{size: snapshotSize(st), write: func(w io.Writer) error { return writeSnapshot(w, st) }}
	if err := writeSnapFile(orphan, md, body); err != nil {
		t.Fatal(err)
	}

	c.start(0)
	waitHTTP(t, c.url(0, "/"))
	for i := range n {
		r := do(t, "GET", c.url(0, fmt.Sprintf("/k%03d", i)), "")
		if r.code != 200 || r.body != fmt.Sprintf("v%03d", i) {
			t.Fatalf("k%03d = %d %q", i, r.code, r.body)
		}
	}
	if r := do(t, "GET", c.url(0, "/orphan"), ""); r.code != 404 {
		t.Fatalf("the orphan snapshot's key is served: %d %q", r.code, r.body)
	}
	if _, err := os.Stat(orphan); err != nil {
		t.Fatalf("the orphan snapshot file was touched: %v", err)
	}
}

// A restart reads the WAL only from the newest snapshot's record on when
// that snapshot is the one to start from; an orphan file at an index the
// WAL commits but does not record (a crash between the file's fsync and its
// record) must send it the slow way, which starts from a recorded one.
// etcd's ReadAll, opened for writing, does not report a snapshot record it
// did not find, so only walRecordsSnapshot tells the two apart.
func TestProcessRestartReadsTheWALFromTheNewestSnapshot(t *testing.T) {
	const n = 130 // with --snapshot-count 50: snapshots near 50 and 100
	c, _, snapdir := writeAndStop(t, n)
	c.start(0)
	waitHTTP(t, c.url(0, "/"))
	for i := range n {
		if r := do(t, "GET", c.url(0, fmt.Sprintf("/k%03d", i)), ""); r.code != 200 || r.body != fmt.Sprintf("v%03d", i) {
			t.Fatalf("k%03d = %d %q", i, r.code, r.body)
		}
	}
	replayed := grepLines(c.procs[0].logs.String(), "replayed wal")
	if strings.Count(replayed, "\n") != 0 || !strings.Contains(replayed, `"whole-wal-scanned": false`) || strings.Contains(replayed, `"snapshot-index": 0,`) {
		t.Fatalf("the restart did not start from the newest snapshot reading the WAL from its record on: %q", replayed)
	}
	c.procs[0].cmd.Process.Signal(syscall.SIGTERM)
	if code := c.procs[0].exitCode(15 * time.Second); code != 0 {
		t.Fatalf("shutdown: exit code %d", code)
	}

	var term, index uint64
	newestSnap := filepath.Base(newest(t, filepath.Join(snapdir, "*.snap")))
	if _, err := fmt.Sscanf(newestSnap, "%016x-%016x.snap", &term, &index); err != nil {
		t.Fatal(err)
	}
	keys := newKeyTree()
	keys.Put(testItem("orphan", "x", 1, 1, 1))
	// An index that n writes committed, well past the newest snapshot, and
	// that no record in the WAL names: a checkpoint record (checkpoint.go)
	// at an index and term vouches for a file there as the snapshot's own
	// record would (the index is committed and durable, and its state is
	// the one state of the log up to it).
	sc, err := scanWAL(filepath.Join(c.dir, "raftexample-1"), index, term)
	if err != nil {
		t.Fatal(err)
	}
	at := index + 10
	for slices.ContainsFunc(sc.checkpoints, func(cp walCheckpoint) bool { return cp.index == at }) {
		at++
	}
	if at > sc.last {
		t.Fatalf("no index after %d without a record in the wal, up to %d", index, sc.last)
	}
	st := &snapshotState{index: at, members: map[uint64]string{1: c.peers[0]}, keys: keys}
	md := &raftpb.SnapshotMetadata{Index: new(at), Term: new(term), ConfState: &raftpb.ConfState{Voters: []uint64{1}}}
	body := snapshotBody{size: snapshotSize(st), write: func(w io.Writer) error { return writeSnapshot(w, st) }}
	if err := writeSnapFile(filepath.Join(snapdir, fmt.Sprintf("%016x-%016x.snap", term, at)), md, body); err != nil {
		t.Fatal(err)
	}
	c.start(0)
	waitHTTP(t, c.url(0, "/"))
	for i := range n {
		if r := do(t, "GET", c.url(0, fmt.Sprintf("/k%03d", i)), ""); r.code != 200 || r.body != fmt.Sprintf("v%03d", i) {
			t.Fatalf("with an orphan snapshot at committed index %d: k%03d = %d %q", at, i, r.code, r.body)
		}
	}
	if r := do(t, "GET", c.url(0, "/orphan"), ""); r.code != 404 {
		t.Fatalf("the orphan snapshot's key is served: %d %q", r.code, r.body)
	}
	replayed = grepLines(c.procs[0].logs.String(), "replayed wal")
	if strings.Count(replayed, "\n") != 0 || !strings.Contains(replayed, `"whole-wal-scanned": true`) || !strings.Contains(replayed, fmt.Sprintf(`"snapshot-index": %d,`, index)) {
		t.Fatalf("with an orphan snapshot, the restart did not scan the WAL and start from snapshot %d: %q", index, replayed)
	}
}
