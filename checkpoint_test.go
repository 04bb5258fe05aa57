package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// createTestWAL creates a WAL of member 1 in a temporary directory.
func createTestWAL(t testing.TB) (string, *wal.WAL) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "wal")
	w, err := wal.Create(zap.NewNop(), dir, walMetadata(1))
	if err != nil {
		t.Fatal(err)
	}
	return dir, w
}

// checkpointTestWAL writes a WAL with a snapshot record at 10 (term 2), a
// tail that a term-3 leader overwrote, a membership change, and
// checkpoints: good ones, one whose entry was overwritten, one after the
// membership change. Each entry's data names its index and term.
func checkpointTestWAL(t *testing.T) string {
	t.Helper()
	dir, w := createTestWAL(t)
	pad := strings.Repeat("x", 100<<10) // a segment every ~20 entries
	save := func(term, from, to uint64, typ raftpb.EntryType) {
		for i := from; i <= to; i++ {
			e := &raftpb.Entry{Index: new(i), Term: new(term), Type: typ.Enum(), Data: fmt.Appendf(nil, "%d@%d %s", i, term, pad)}
			if err := w.Save(&raftpb.HardState{Term: new(term), Commit: new(i - 1)}, []*raftpb.Entry{e}); err != nil {
				t.Fatal(err)
			}
		}
	}
	record := func(index, term uint64) {
		if err := w.SaveSnapshot(&walpb.Snapshot{Index: new(index), Term: new(term), ConfState: &raftpb.ConfState{Voters: []uint64{1}}}); err != nil {
			t.Fatal(err)
		}
	}
	save(2, 1, 12, raftpb.EntryNormal)
	record(10, 2) // the snapshot
	save(2, 13, 22, raftpb.EntryNormal)
	record(20, 2) // a checkpoint
	save(2, 23, 30, raftpb.EntryNormal)
	record(28, 2) // a checkpoint of an entry that is overwritten below (raft never does this: it tests the scan)
	save(3, 25, 34, raftpb.EntryNormal)
	record(33, 3) // the newest usable checkpoint
	save(3, 35, 35, raftpb.EntryConfChange)
	save(3, 36, 40, raftpb.EntryNormal)
	record(40, 3) // after a membership change: not usable
	save(3, 41, 42, raftpb.EntryNormal)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestScanWALFollowsTheLogAndPicksACheckpoint(t *testing.T) {
	dir := checkpointTestWAL(t)
	if segs, _ := walSegments(dir); len(segs) < 3 {
		t.Fatalf("want the log over several segments, have %d", len(segs))
	}
	sc, err := scanWAL(dir, 10, 2)
	if err != nil {
		t.Fatal(err)
	}
	if !sc.startRecorded || sc.last != 42 || !slices.Equal(sc.confs, []uint64{35}) {
		t.Fatalf("scan: recorded %v, last %d, membership changes at %v; want true, 42, [35]", sc.startRecorded, sc.last, sc.confs)
	}
	for i, want := range map[uint64]uint64{10: 2, 11: 2, 24: 2, 25: 3, 30: 3, 42: 3} {
		if got := sc.runs.at(i); got != want {
			t.Errorf("term of %d: %d, want %d", i, got, want)
		}
	}
	if want := []walCheckpoint{{20, 2}, {28, 2}, {33, 3}, {40, 3}}; !slices.Equal(sc.checkpoints, want) {
		t.Errorf("checkpoints %v, want %v", sc.checkpoints, want)
	}
	if cp, ok := sc.newestCheckpoint(); !ok || cp != (walCheckpoint{33, 3}) {
		t.Errorf("newest usable checkpoint %v %v, want 33 (40 follows a membership change, 28 was overwritten)", cp, ok)
	}

	// From a snapshot the WAL does not record, no checkpoint is used.
	sc, err = scanWAL(dir, 15, 2)
	if err != nil {
		t.Fatal(err)
	}
	if cp, ok := sc.newestCheckpoint(); sc.startRecorded || ok {
		t.Errorf("from an unrecorded snapshot: recorded %v, checkpoint %v %v", sc.startRecorded, cp, ok)
	}

	// The log up to the checkpoint read back: each index once, in order,
	// the record the log ended up with, in chunks of about the size asked.
	sc, _ = scanWAL(dir, 10, 2)
	var got []string
	chunks := 0
	err = streamWALEntries(dir, 10, 33, sc.runs.at, 250<<10, func(ents []*raftpb.Entry) bool {
		chunks++
		for _, e := range ents {
			head, _, _ := strings.Cut(string(e.GetData()), " ")
			got = append(got, head)
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := 11; i <= 33; i++ {
		term := 2
		if i >= 25 {
			term = 3
		}
		want = append(want, fmt.Sprintf("%d@%d", i, term))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("read back %v\nwant %v", got, want)
	}
	if chunks < 5 {
		t.Errorf("%d chunks of 250 KiB for 23 entries of 100 KiB, want at least 5", chunks)
	}
	// Stopping early stops.
	calls := 0
	if err := streamWALEntries(dir, 10, 33, sc.runs.at, 1, func([]*raftpb.Entry) bool { calls++; return false }); err != nil || calls != 1 {
		t.Errorf("stopped by fn: %d calls, %v", calls, err)
	}
	// An entry that is not there is an error.
	if err := streamWALEntries(dir, 10, 50, sc.runs.at, 1<<30, func([]*raftpb.Entry) bool { return true }); err == nil {
		t.Error("reading past the log's end: no error")
	}

	// raft's log from that checkpoint: the snapshot, (10, 33] on disk, the
	// rest in memory; entries on disk are read back with their terms.
	s := newLogStorage(1 << 20)
	s.setDisk(&walEntries{dir: dir})
	if err := s.applySnapshot(&raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(10)), Term: new(uint64(2))}}); err != nil {
		t.Fatal(err)
	}
	if err := s.addOnDisk(slices.Clone(sc.runs.truncate(33)), 33); err != nil {
		t.Fatal(err)
	}
	var tail []*raftpb.Entry
	for i := uint64(34); i <= 42; i++ {
		tail = append(tail, &raftpb.Entry{Index: new(i), Term: new(uint64(3))})
	}
	if err := s.Append(tail); err != nil {
		t.Fatal(err)
	}
	if first, _ := s.FirstIndex(); first != 11 {
		t.Errorf("first index %d, want 11", first)
	}
	if term, _ := s.Term(24); term != 2 {
		t.Errorf("term of 24: %d", term)
	}
	ents, err := s.Entries(23, 27, 1<<30)
	if err != nil || len(ents) != 4 || ents[0].GetTerm() != 2 || ents[3].GetTerm() != 3 || !strings.HasPrefix(string(ents[2].GetData()), "25@3 ") {
		t.Fatalf("entries [23, 27) read back: %d entries, %v", len(ents), err)
	}
	if err := s.addOnDisk(sc.runs, 33); err == nil {
		t.Error("a second addOnDisk to a log that goes past its snapshot: no error")
	}
}

func TestScanWALStopsAtDamage(t *testing.T) {
	dir := checkpointTestWAL(t)
	segs, _ := walSegments(dir)
	f, err := os.OpenFile(segs[1].path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("garbage!"), 50<<10); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := scanWAL(dir, 10, 2); err == nil {
		t.Fatal("a damaged segment scanned without an error")
	}
}

func TestEntryFieldsMatchProto(t *testing.T) {
	for _, e := range []*raftpb.Entry{
		{},
		{Index: new(uint64(7))},
		{Index: new(uint64(1 << 40)), Term: new(uint64(9)), Type: raftpb.EntryConfChangeV2.Enum(), Data: []byte("data")},
		{Term: new(uint64(3)), Data: bytes.Repeat([]byte("d"), 300)},
		{Index: new(uint64(5)), Data: []byte{}},
	} {
		b, err := proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		typ, term, index, data, err := entryFields(b)
		if err != nil || typ != e.GetType() || term != e.GetTerm() || index != e.GetIndex() || !bytes.Equal(data, e.GetData()) {
			t.Errorf("%v: got type %v term %d index %d data %q (%v)", e, typ, term, index, data, err)
		}
	}
	if _, _, _, _, err := entryFields([]byte{0x10}); err == nil {
		t.Error("a truncated entry decoded without an error")
	}
}

// A WAL opened at a checkpoint does not lock the segments before it; a
// snapshot older than the checkpoint must not purge them, since they hold
// the log after that snapshot.
func TestSnapshotBeforeTheCheckpointPurgesNoSegment(t *testing.T) {
	dir := t.TempDir()
	waldir := filepath.Join(dir, "wal")
	w, err := wal.Create(zap.NewNop(), waldir, walMetadata(1))
	if err != nil {
		t.Fatal(err)
	}
	pad := make([]byte, 100<<10) // a segment every ~20 entries
	for i := uint64(1); i <= 200; i++ {
		e := &raftpb.Entry{Index: new(i), Term: new(uint64(2)), Data: pad}
		if err := w.Save(&raftpb.HardState{Term: new(uint64(2)), Commit: new(i)}, []*raftpb.Entry{e}); err != nil {
			t.Fatal(err)
		}
		if i == 10 || i == 180 {
			if err := w.SaveSnapshot(&walpb.Snapshot{Index: new(i), Term: new(uint64(2)), ConfState: &raftpb.ConfState{Voters: []uint64{1}}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	w.Close()
	before, _ := walSegments(waldir)
	if len(before) <= walFilesKept+2 {
		t.Fatalf("want more than %d segments, have %d", walFilesKept+2, len(before))
	}
	w, err = wal.Open(zap.NewNop(), waldir, &walpb.Snapshot{Index: new(uint64(180)), Term: new(uint64(2))})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := w.ReadAll(); err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	rc := &raftNode{lg: zap.NewNop(), cfg: raftConfig{waldir: waldir, snapdir: filepath.Join(dir, "snap")}, wal: w, startApplied: 180}
	if err := os.Mkdir(rc.cfg.snapdir, 0o700); err != nil {
		t.Fatal(err)
	}
	rc.releaseWAL(100)
	if after, _ := walSegments(waldir); len(after) != len(before) {
		t.Fatalf("a snapshot at 100, before the checkpoint at 180, purged %d segments", len(before)-len(after))
	}
	sc, err := scanWAL(waldir, 100, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := streamWALEntries(waldir, 100, 180, sc.runs.at, 1<<30, func([]*raftpb.Entry) bool { return true }); err != nil {
		t.Fatalf("the log after the snapshot, up to the checkpoint: %v", err)
	}
	rc.releaseWAL(190)
	if after, _ := walSegments(waldir); len(after) >= len(before) {
		t.Fatalf("a snapshot past the checkpoint purged nothing (%d segments)", len(after))
	}
}
