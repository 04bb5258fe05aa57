package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// newSpareWAL creates a WAL in a temp dir and waits for the spare segment
// its file pipeline makes: 0.tmp, preallocated to a segment's size.
func newSpareWAL(t *testing.T) (w *wal.WAL, dir, spare string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "wal")
	w, err := wal.Create(zaptest.NewLogger(t), dir, []byte("meta"))
	if err != nil {
		t.Fatal(err)
	}
	spare = filepath.Join(dir, "0.tmp")
	waitSpare(t, spare)
	return w, dir, spare
}

// waitSpare waits until the pipeline has made the spare at path and
// preallocated it.
func waitSpare(t *testing.T, path string) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		if fi.Size() < walSegmentBytes {
			return fmt.Errorf("spare is %d bytes", fi.Size())
		}
		return nil
	})
}

// spareCount reads raftexample_wal_spare_segments_total{result}.
func spareCount(t *testing.T, result string) float64 {
	t.Helper()
	var m dto.Metric
	if err := metricWALSpares.WithLabelValues(result).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// walEntry is entry i of the tests' logs: n bytes that say which entry
// they are.
func walEntry(i uint64, n int) *raftpb.Entry {
	return &raftpb.Entry{Term: new(uint64(1)), Index: new(i), Data: bytes.Repeat([]byte{byte(i)}, n)}
}

// The zeroer may be writing the spare when the WAL takes it: a cut in a
// Save between two of its chunks. It must then leave the file alone, or
// its zeros land on the records the WAL has written there since. Here the
// cut comes after the first chunk, and the WAL writes 1.3 MiB into the
// taken segment before the zeroer goes on; the whole log must read back.
func TestWALZeroerLeavesTheSpareOnceTheWALTakesIt(t *testing.T) {
	w, dir, spare := newSpareWAL(t)
	const entryBytes = 64 << 10
	var (
		mu    sync.Mutex
		next  uint64 = 1
		saved []*raftpb.Entry
	)
	save := func(n int) {
		var ents []*raftpb.Entry
		for range n {
			ents = append(ents, walEntry(next, entryBytes))
			next++
		}
		st := &raftpb.HardState{Term: new(uint64(1)), Commit: new(next - 1)}
		mu.Lock()
		defer mu.Unlock()
		if err := w.Save(st, ents); err != nil {
			t.Fatal(err)
		}
		saved = append(saved, ents...)
	}
	// Just under a segment.
	save(walSegmentBytes/entryBytes - 1)
	if _, err := os.Stat(spare); err != nil {
		t.Fatalf("the WAL cut before the test meant it to: %v", err)
	}
	chunks := 0
	taken := spareCount(t, "taken")
	z := &walZeroer{lg: zaptest.NewLogger(t), dir: dir, cutMu: &mu, afterChunk: func() {
		chunks++
		if chunks == 1 {
			// Save cuts once the tail is past a segment's size: this
			// takes one or two Saves (the WAL buffers part of a Save).
			for range 3 {
				if _, err := os.Stat(spare); err != nil {
					break
				}
				save(1)
			}
			if _, err := os.Stat(spare); err == nil {
				t.Fatal("no cut: the spare is still there")
			}
			save(20) // into the segment that was the spare
		}
	}}
	if err := z.zero(spare); err != nil {
		t.Fatal(err)
	}
	if chunks != 1 {
		t.Fatalf("%d chunks written, want 1: the zeroer went on after the WAL took the spare", chunks)
	}
	if got := spareCount(t, "taken") - taken; got != 1 {
		t.Fatalf("wal_spare_segments_total{result=\"taken\"} rose by %v, want 1", got)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := wal.OpenForRead(zaptest.NewLogger(t), dir, &walpb.Snapshot{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, _, ents, err := r.ReadAll()
	if err != nil {
		t.Fatalf("read the log back: %v", err)
	}
	if len(ents) != len(saved) {
		t.Fatalf("read %d entries back, wrote %d", len(ents), len(saved))
	}
	for i, e := range ents {
		if e.GetIndex() != saved[i].GetIndex() || !bytes.Equal(e.GetData(), saved[i].GetData()) {
			t.Fatalf("entry %d reads back as index %d with other data", saved[i].GetIndex(), e.GetIndex())
		}
	}
}

// A spare is zeroed once, whole, and keeps its size; the next spare, after
// a cut, is zeroed too.
func TestWALZeroerZeroesEachSpareOnce(t *testing.T) {
	w, dir, spare := newSpareWAL(t)
	defer w.Close()
	var mu sync.Mutex
	chunks := 0
	zeroed := spareCount(t, "zeroed")
	z := &walZeroer{lg: zaptest.NewLogger(t), dir: dir, cutMu: &mu, afterChunk: func() { chunks++ }}
	if err := z.zero(spare); err != nil {
		t.Fatal(err)
	}
	if want := walSegmentBytes / walZeroChunk; chunks != want {
		t.Fatalf("%d chunks written, want %d", chunks, want)
	}
	if err := z.zero(spare); err != nil || chunks != walSegmentBytes/walZeroChunk {
		t.Fatalf("zeroed again (%d chunks in all, err %v)", chunks, err)
	}
	b, err := os.ReadFile(spare)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != walSegmentBytes || bytes.Count(b, []byte{0}) != len(b) {
		t.Fatalf("spare is %d bytes, %d of them zero", len(b), bytes.Count(b, []byte{0}))
	}
	// A cut takes 0.tmp; the pipeline's next spare is 1.tmp.
	for i := uint64(1); i <= walSegmentBytes/(64<<10)+1; i++ {
		if err := w.Save(&raftpb.HardState{Term: new(uint64(1)), Commit: new(i)}, []*raftpb.Entry{walEntry(i, 64<<10)}); err != nil {
			t.Fatal(err)
		}
	}
	next := filepath.Join(dir, "1.tmp")
	waitSpare(t, next)
	chunks = 0
	if err := z.zero(next); err != nil || chunks != walSegmentBytes/walZeroChunk {
		t.Fatalf("next spare: %d chunks, err %v", chunks, err)
	}
	if got := spareCount(t, "zeroed") - zeroed; got != 2 {
		t.Fatalf("wal_spare_segments_total{result=\"zeroed\"} rose by %v for two spares", got)
	}
	// No spare: nothing to do.
	if err := z.zero(filepath.Join(dir, "absent.tmp")); err != nil {
		t.Fatal(err)
	}
}

// A spare that cannot be zeroed is met on every tick, ten times a second:
// its error is logged when it starts and when it changes, not each time.
func TestWALZeroerLogsALastingErrorOnce(t *testing.T) {
	dir := t.TempDir()
	// A directory where the spare goes: opening it to write fails.
	if err := os.Mkdir(filepath.Join(dir, "0.tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	var mu sync.Mutex
	z := &walZeroer{lg: zap.New(core), dir: dir, cutMu: &mu}
	for range 20 {
		z.tick()
	}
	if n := logs.Len(); n != 1 {
		t.Fatalf("%d warnings after 20 ticks on one lasting error, want 1: %v", n, logs.All())
	}
	// Gone, then back: a new episode, logged again.
	if err := os.Remove(filepath.Join(dir, "0.tmp")); err != nil {
		t.Fatal(err)
	}
	z.tick()
	if err := os.Mkdir(filepath.Join(dir, "0.tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	z.tick()
	z.tick()
	if n := logs.Len(); n != 2 {
		t.Fatalf("%d warnings, want 2 (the error came back once)", n)
	}
}
