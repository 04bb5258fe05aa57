package main

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"weak"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// logStorage, with most of its log evicted to a real WAL, answers raft
// exactly as etcd's MemoryStorage holding everything does, through
// appends that overwrite a tail with a new leader's entries, segment cuts,
// snapshots, compaction and the purge of the segments behind them.
func TestLogStorageMatchesMemoryStorage(t *testing.T) {
	defer func(n int64) { wal.SegmentSizeBytes = n }(wal.SegmentSizeBytes)
	wal.SegmentSizeBytes = 16 << 10 // many cuts
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { checkLogStorageModel(t, seed) })
	}
}

func checkLogStorageModel(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 9))
	dir := t.TempDir()
	w, err := wal.Create(zap.NewNop(), dir, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { w.Close() }()
	ours := newLogStorage(2 << 10)
	ours.setDisk(&walEntries{dir: dir})
	ref := raft.NewMemoryStorage()
	readBack := testutil.ToFloat64(metricLogReadBack)

	var applied, term uint64 = 0, 1
	cs := &raftpb.ConfState{Voters: []uint64{1}}
	for step := 0; step < 2500; step++ {
		last, _ := ref.LastIndex()
		first, _ := ours.FirstIndex()
		switch p := rng.IntN(100); {
		case p < 60: // entries from a leader; now and then a new one overwriting the tail
			at := last + 1
			if p < 8 && last > max(applied, first-1) {
				at = max(applied, first-1) + 1 + rng.Uint64N(last-max(applied, first-1))
				term++
			}
			var ents []*raftpb.Entry
			for i := range 1 + rng.IntN(8) {
				data := make([]byte, rng.IntN(300))
				for j := range data {
					data[j] = byte(rng.Uint32())
				}
				ents = append(ents, &raftpb.Entry{Index: new(at + uint64(i)), Term: new(term), Data: data})
			}
			if err := w.Save(&raftpb.HardState{Term: new(term), Commit: new(applied)}, ents); err != nil {
				t.Fatal(err)
			}
			if err := ours.Append(ents); err != nil {
				t.Fatalf("step %d: Append from %d: %v", step, at, err)
			}
			if err := ref.Append(ents); err != nil {
				t.Fatal(err)
			}
		case p < 85: // committed and handed out to apply
			if last > applied {
				applied += 1 + rng.Uint64N(last-applied)
				ours.evict(applied)
			}
		case p < 90: // a snapshot, the log compacted behind it, the WAL purged
			snap := ours.snapshotIndex()
			if applied <= max(snap, first-1) {
				break
			}
			s := max(snap, first-1) + 1 + rng.Uint64N(applied-max(snap, first-1))
			st, _ := ref.Term(s)
			if err := w.SaveSnapshot(&walpb.Snapshot{Index: new(s), Term: new(st), ConfState: cs}); err != nil {
				t.Fatal(err)
			}
			if err := ours.createSnapshot(s, cs); err != nil {
				t.Fatalf("step %d: createSnapshot(%d): %v", step, s, err)
			}
			if _, err := ref.CreateSnapshot(s, cs, nil); err != nil {
				t.Fatal(err)
			}
			if keep := rng.Uint64N(20); s > keep {
				errOurs, errRef := ours.Compact(s-keep), ref.Compact(s-keep)
				if (errOurs == nil) != (errRef == nil) && !errors.Is(errOurs, raft.ErrCompacted) {
					t.Fatalf("step %d: Compact(%d): ours %v, MemoryStorage %v", step, s-keep, errOurs, errRef)
				}
			}
			if err := w.ReleaseLockTo(s); err != nil {
				t.Fatal(err)
			}
			purgeWALFiles(zap.NewNop(), dir, 1)
		}
		compareLogs(t, step, rng, ours, ref)
	}
	if testutil.ToFloat64(metricLogReadBack) == readBack {
		t.Fatal("no entry was read back from the WAL: the test did not exercise it")
	}
	var appliedBytes uint64
	for _, e := range ours.mem {
		if e.GetIndex() <= applied {
			appliedBytes += uint64(len(e.GetData()))
		}
	}
	if appliedBytes > 2<<10+300 {
		t.Errorf("%d bytes of applied entries in memory: the window is 2 KiB", appliedBytes)
	}
}

// compareLogs checks what raft can ask of both.
func compareLogs(t *testing.T, step int, rng *rand.Rand, ours *logStorage, ref *raft.MemoryStorage) {
	t.Helper()
	first, _ := ours.FirstIndex()
	refFirst, _ := ref.FirstIndex()
	last, _ := ours.LastIndex()
	refLast, _ := ref.LastIndex()
	if last != refLast || first < refFirst || first > ours.snapshotIndex()+1 && first > refFirst {
		t.Fatalf("step %d: log [%d, %d], MemoryStorage's [%d, %d], snapshot %d", step, first, last, refFirst, refLast, ours.snapshotIndex())
	}
	for i := first - 1; i <= last; i++ {
		got, err := ours.Term(i)
		want, _ := ref.Term(i)
		if err != nil || got != want {
			t.Fatalf("step %d: Term(%d) = %d, %v; want %d", step, i, got, err, want)
		}
	}
	if _, err := ours.Term(first - 2); first >= 2 && !errors.Is(err, raft.ErrCompacted) {
		t.Fatalf("step %d: Term(%d) before the log: %v", step, first-2, err)
	}
	if _, err := ours.Entries(first-1, last+1, 1<<30); first > 1 && !errors.Is(err, raft.ErrCompacted) {
		t.Fatalf("step %d: Entries from the compacted index %d: %v", step, first-1, err)
	}
	if last < first {
		return
	}
	for k := range 6 {
		lo := first + rng.Uint64N(last-first+1)
		hi := lo + 1 + rng.Uint64N(last-lo+1)
		maxSize := rng.Uint64N(3000)
		got, err := ours.Entries(lo, hi, maxSize)
		if err != nil {
			t.Fatalf("step %d: Entries(%d, %d, %d): %v", step, lo, hi, maxSize, err)
		}
		if next := lo + uint64(len(got)); k%2 == 1 && next < hi {
			// where the last one ended, as raft asks for a follower's entries
			lo = next
			if got, err = ours.Entries(lo, hi, maxSize); err != nil {
				t.Fatalf("step %d: Entries(%d, %d, %d) after the one before: %v", step, lo, hi, maxSize, err)
			}
		}
		want, _ := ref.Entries(lo, hi, 1<<62)
		if len(got) == 0 || len(got) > len(want) {
			t.Fatalf("step %d: Entries(%d, %d, %d) gave %d entries of %d", step, lo, hi, maxSize, len(got), len(want))
		}
		var size uint64
		for i, e := range got {
			if e.GetIndex() != want[i].GetIndex() || e.GetTerm() != want[i].GetTerm() || !bytes.Equal(e.GetData(), want[i].GetData()) {
				t.Fatalf("step %d: Entries(%d, %d): entry %d is %d/%d (%d bytes), want %d/%d (%d bytes)", step, lo, hi, i,
					e.GetIndex(), e.GetTerm(), len(e.GetData()), want[i].GetIndex(), want[i].GetTerm(), len(want[i].GetData()))
			}
			size += uint64(proto.Size(e))
		}
		if len(got) > 1 && size > maxSize {
			t.Fatalf("step %d: Entries(%d, %d, %d) gave %d bytes", step, lo, hi, maxSize, size)
		}
	}
}

// Reading the log back from the WAL as a follower far behind is sent it:
// raft asks for MaxSizePerMsg (1 MiB) at a time, each from where the last
// ended. 64 MiB of 300-byte entries in the production segment size.
func BenchmarkWALReadBack(b *testing.B) {
	dir := b.TempDir()
	w, err := wal.Create(zap.NewNop(), dir, []byte("m"))
	if err != nil {
		b.Fatal(err)
	}
	const n, size = 200_000, 300
	data := make([]byte, size)
	for i := uint64(1); i <= n; i += 100 {
		var ents []*raftpb.Entry
		for j := i; j < i+100; j++ {
			ents = append(ents, &raftpb.Entry{Index: new(j), Term: new(uint64(1)), Data: data})
		}
		if err := w.Save(&raftpb.HardState{Term: new(uint64(1)), Commit: new(i + 99)}, ents); err != nil {
			b.Fatal(err)
		}
	}
	w.Close()
	r := &walEntries{dir: dir}
	one := func(uint64) uint64 { return 1 }
	b.SetBytes(n * size)
	b.ResetTimer()
	for range b.N {
		for lo := uint64(1); lo <= n; {
			ents, err := r.read(lo, n+1, 1<<20, one)
			if err != nil {
				b.Fatal(err)
			}
			lo += uint64(len(ents))
		}
	}
}

// Entries evicted from memory must become garbage, however the log got
// them. A restart appends its whole replayed log at once and raft hands it
// out to apply in pieces; evicting from the front of that one array once
// left the array, and with it every entry already evicted, reachable
// through the few still kept (1M keys: 140 MB of replayed entries held by
// an idle member after its restart). A leader appends a few at a time.
func TestEvictedEntriesAreCollected(t *testing.T) {
	const n, size, window = 20000, 100, 2000 // window in entries
	for _, batch := range []int{n, 1} {
		t.Run(fmt.Sprint("batch", batch), func(t *testing.T) {
			s := newLogStorage(window * size)
			s.setDisk(&walEntries{dir: t.TempDir()})
			var refs []weak.Pointer[raftpb.Entry]
			var ents []*raftpb.Entry
			for i := range n {
				e := &raftpb.Entry{Index: new(uint64(i + 1)), Term: new(uint64(1)), Data: make([]byte, size)}
				refs = append(refs, weak.Make(e))
				if ents = append(ents, e); len(ents) == batch {
					if err := s.Append(ents); err != nil {
						t.Fatal(err)
					}
					ents = nil
					s.evict(uint64(i+1) - uint64(rand.IntN(100))) // apply trails a little
				}
			}
			for applied := uint64(0); applied <= n; applied += 1000 {
				s.evict(applied)
			}
			runtime.GC()
			kept := 0
			for _, r := range refs {
				if r.Value() != nil {
					kept++
				}
			}
			if limit := 2*window + 64; kept > limit {
				t.Fatalf("%d of %d entries still reachable, the window holds %d (at most %d allowed)", kept, n, window, limit)
			}
			if got, _ := s.Entries(n, n+1, 1<<20); len(got) != 1 || got[0].GetIndex() != n {
				t.Fatalf("the last entry is not served from memory: %v", got)
			}
		})
	}
}
