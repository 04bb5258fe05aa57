package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3/raftpb"
)

func writeSnapFiles(t *testing.T, dir string, indexes ...uint64) {
	t.Helper()
	for _, i := range indexes {
		name := fmt.Sprintf("%016x-%016x.snap", 2, i)
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func snapIndexes(t *testing.T, dir string) []uint64 {
	t.Helper()
	files, err := listSnapFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	var idx []uint64
	for _, f := range files {
		idx = append(idx, f.index)
	}
	return idx
}

// The purge keeps the snapshot the durable WAL uses and the ones before it,
// whatever newer files a crashed save left behind.
func TestPurgeSnapFilesKeepsTheDurableSnapshot(t *testing.T) {
	dir := t.TempDir()
	// 0x100 sorts after 0xf0 only by value: names are fixed-width hex.
	writeSnapFiles(t, dir, 0x10, 0x20, 0xf0, 0x100, 0x200, 0x300)
	for _, n := range []string{"0000000000000002-0000000000000400.snap.broken", "tmp123", "x.snap"} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o600)
	}
	// 0x200 and 0x300 are newer than the durable snapshot at 0x100:
	// orphans of a crash, left alone; of the rest the newest 3 stay.
	purgeSnapFiles(zap.NewNop(), dir, 0x100, 3)
	if got, want := snapIndexes(t, dir), []uint64{0x20, 0xf0, 0x100, 0x200, 0x300}; !slices.Equal(got, want) {
		t.Fatalf("after purge at 0x100: %x, want %x", got, want)
	}
	purgeSnapFiles(zap.NewNop(), dir, 0x400, 3)
	if got, want := snapIndexes(t, dir), []uint64{0x100, 0x200, 0x300}; !slices.Equal(got, want) {
		t.Fatalf("after purge at 0x400: %x, want %x", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "0000000000000002-0000000000000400.snap.broken")); err != nil {
		t.Fatalf("a file that is not a snapshot was touched: %v", err)
	}
}

func TestCheckDiskNamesFilesAndIndexes(t *testing.T) {
	newNode := func(t *testing.T) (*raftNode, *observer.ObservedLogs) {
		core, logs := observer.New(zap.InfoLevel)
		dir := t.TempDir()
		return &raftNode{lg: zap.New(core), cfg: raftConfig{id: 3, waldir: filepath.Join(dir, "raftexample-3"), snapdir: filepath.Join(dir, "raftexample-3-snap")}}, logs
	}
	snapAt := func(i uint64) *walpb.Snapshot { return &walpb.Snapshot{Index: new(i), Term: new(uint64(2))} }

	t.Run("consistent", func(t *testing.T) {
		rc, logs := newNode(t)
		os.MkdirAll(rc.cfg.snapdir, 0o700)
		writeSnapFiles(t, rc.cfg.snapdir, 100)
		err := rc.checkDisk(snapAt(100), &raftpb.HardState{Commit: new(uint64(105))}, 110, []*walpb.Snapshot{snapAt(0), snapAt(100)})
		if err != nil || logs.Len() != 0 {
			t.Fatalf("err %v, %d log lines", err, logs.Len())
		}
		if !strings.Contains(rc.diskState, "commit 105, entries up to 110 after snapshot") {
			t.Fatalf("diskState %q", rc.diskState)
		}
	})
	t.Run("commit beyond the log", func(t *testing.T) {
		rc, _ := newNode(t)
		os.MkdirAll(rc.cfg.snapdir, 0o700)
		writeSnapFiles(t, rc.cfg.snapdir, 50)
		err := rc.checkDisk(snapAt(50), &raftpb.HardState{Commit: new(uint64(1000))}, 60, []*walpb.Snapshot{snapAt(50)})
		if err == nil {
			t.Fatal("accepted a hard state committing beyond the last entry")
		}
		for _, want := range []string{"commit 1000", "entries up to 60", "0000000000000002-0000000000000032.snap (index 50)", rc.cfg.waldir, "DELETE /3"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q: %v", want, err)
			}
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("error is not one line: %q", err)
		}
	})
	t.Run("newer snapshot file", func(t *testing.T) {
		rc, logs := newNode(t)
		os.MkdirAll(rc.cfg.snapdir, 0o700)
		writeSnapFiles(t, rc.cfg.snapdir, 50, 1000)
		err := rc.checkDisk(snapAt(50), &raftpb.HardState{Commit: new(uint64(60))}, 60, []*walpb.Snapshot{snapAt(50)})
		if err != nil {
			t.Fatal(err)
		}
		warned := logs.FilterMessageSnippet("newer than the wal's durable state").AllUntimed()
		if len(warned) != 1 || !strings.HasSuffix(warned[0].ContextMap()["file"].(string), "00000000000003e8.snap") {
			t.Fatalf("want one warning naming the file at index 1000, got %v", warned)
		}
	})
}

func TestMkdirDurable(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "a", "b", "c")
	if err := mkdirDurable(dir); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Fatalf("stat %s: %v", dir, err)
	}
	if err := mkdirDurable(dir); err != nil {
		t.Fatalf("existing dir: %v", err)
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := mkdirDurable(filepath.Join(file, "sub")); err == nil {
		t.Fatal("mkdirDurable under a regular file succeeded")
	}
	if err := syncDir(filepath.Join(base, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("syncDir of a missing dir: %v", err)
	}
}

// A snapshot's WAL record comes after its entries, and can be segments
// later than the segment its index is in (the WAL goes on appending while
// the snapshot file is written): walRecordsSnapshot finds it there, with
// its term, and finds nothing for an index or term the WAL does not record.
func TestWALRecordsSnapshot(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "wal")
	w, err := wal.Create(zap.NewNop(), dir, walMetadata(1))
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 100<<10) // 100 KiB: a segment every ~20 entries
	for i := uint64(1); i <= 100; i++ {
		e := &raftpb.Entry{Index: new(i), Term: new(uint64(3)), Data: data}
		if err := w.Save(&raftpb.HardState{Term: new(uint64(3)), Commit: new(i)}, []*raftpb.Entry{e}); err != nil {
			t.Fatal(err)
		}
		if i == 70 { // a checkpoint (checkpoint.go), recorded before the snapshot's file was done
			if err := w.SaveSnapshot(&walpb.Snapshot{Index: new(uint64(60)), Term: new(uint64(3)), ConfState: &raftpb.ConfState{Voters: []uint64{1}}}); err != nil {
				t.Fatal(err)
			}
		}
		if i == 90 {
			if err := w.SaveSnapshot(&walpb.Snapshot{Index: new(uint64(30)), Term: new(uint64(3)), ConfState: &raftpb.ConfState{Voters: []uint64{1}}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	segs, err := walSegments(dir)
	if err != nil || len(segs) < 4 {
		t.Fatalf("want the entries spread over several segments; have %v (%v)", segs, err)
	}
	var total, fromLast uint64
	for _, s := range segs {
		fi, err := os.Stat(s.path)
		if err != nil {
			t.Fatal(err)
		}
		total += uint64(fi.Size())
		fromLast = uint64(fi.Size())
	}
	if got := walBytesFrom(dir, 0); got != total {
		t.Errorf("walBytesFrom(0) = %d, want all %d bytes", got, total)
	}
	if got := walBytesFrom(dir, 500); got != fromLast {
		t.Errorf("walBytesFrom(past the end) = %d, want the last segment's %d", got, fromLast)
	}
	for _, c := range []struct {
		index, term uint64
		want        bool
	}{{30, 3, true}, {60, 3, true}, {30, 2, false}, {29, 3, false}, {31, 3, false}, {95, 3, false}, {500, 3, false}} {
		if got := walRecordsSnapshot(dir, c.index, c.term); got != c.want {
			t.Errorf("walRecordsSnapshot(index %d, term %d) = %v, want %v", c.index, c.term, got, c.want)
		}
	}
}
