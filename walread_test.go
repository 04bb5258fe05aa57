package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3/raftpb"
)

// walRecordsTestWAL writes a WAL of several segments whose entries range
// from empty to larger than readSegmentRecords' read buffer, with hard
// state and snapshot records among them.
func walRecordsTestWAL(t *testing.T) string {
	t.Helper()
	dir, w := createTestWAL(t)
	sizes := []int{0, 1, 100, 7, 300 << 10, 5000, 128 << 10, 128<<10 - 40, 64 << 10, 3, 1 << 20, 12}
	var index uint64
	for round := range 3 {
		for _, n := range sizes {
			index++
			e := &raftpb.Entry{Index: new(index), Term: new(uint64(2)), Data: []byte(fmt.Sprintf("%d:", index) + strings.Repeat("d", n))}
			if err := w.Save(&raftpb.HardState{Term: new(uint64(2)), Commit: new(index - 1)}, []*raftpb.Entry{e}); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.SaveSnapshot(&walpb.Snapshot{Index: new(index), Term: new(uint64(2)), ConfState: &raftpb.ConfState{Voters: []uint64{uint64(round + 1)}}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

type walRec struct {
	typ  int64
	data string
}

// etcdRecords is what etcd's decoder reads from the segment at path, CRC
// records left out, as readSegmentRecords hands them over.
func etcdRecords(t *testing.T, path string) []walRec {
	t.Helper()
	recs, err := etcdRecordsErr(path)
	if err != nil {
		t.Fatalf("etcd's decoder on %s: %v", path, err)
	}
	return recs
}

// etcdRecordsErr is etcdRecords up to the first error, and that error.
func etcdRecordsErr(path string) ([]walRec, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dec := wal.NewDecoder(fileutil.NewFileReader(f))
	var recs []walRec
	for {
		rec := &walpb.Record{}
		err := dec.Decode(rec)
		if errors.Is(err, io.EOF) {
			return recs, nil
		}
		if err != nil {
			return recs, err
		}
		if rec.GetType() == wal.CrcType {
			dec.UpdateCRC(rec.GetCrc())
			continue
		}
		recs = append(recs, walRec{rec.GetType(), string(rec.GetData())})
	}
}

func ourRecords(path string) ([]walRec, error) {
	var recs []walRec
	_, err := readSegmentRecords(path, func(typ int64, data []byte) bool {
		recs = append(recs, walRec{typ, string(data)})
		return true
	})
	return recs, err
}

// readSegmentRecords reads etcd's record format itself; it must hand over
// exactly the records etcd's decoder reads, and fail where that one does.
func TestReadSegmentRecordsMatchesEtcdDecoder(t *testing.T) {
	dir := walRecordsTestWAL(t)
	segs, err := walSegments(dir)
	if err != nil || len(segs) < 3 {
		t.Fatalf("%d segments, %v; the test wants several", len(segs), err)
	}
	kinds := map[int64]int{}
	largest := 0
	for _, s := range segs {
		want := etcdRecords(t, s.path)
		got, err := ourRecords(s.path)
		if err != nil {
			t.Fatalf("%s: %v", s.path, err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d records, etcd's decoder reads %d", s.path, len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("%s: record %d is type %d of %d bytes, etcd's decoder reads type %d of %d bytes", s.path, i, got[i].typ, len(got[i].data), want[i].typ, len(want[i].data))
			}
			kinds[got[i].typ]++
			largest = max(largest, len(got[i].data))
		}
	}
	for _, typ := range []int64{wal.MetadataType, wal.EntryType, wal.StateType, wal.SnapshotType} {
		if kinds[typ] == 0 {
			t.Errorf("no record of type %d read: %v", typ, kinds)
		}
	}
	if largest <= 128<<10 {
		t.Errorf("the largest record read is %d bytes: none took the path for records larger than the read buffer", largest)
	}

	t.Run("stops when told", func(t *testing.T) {
		n := 0
		done, err := readSegmentRecords(segs[0].path, func(int64, []byte) bool { n++; return n < 3 })
		if !done || err != nil || n != 3 {
			t.Fatalf("done %v, err %v after %d records; want done after 3", done, err, n)
		}
	})
}

func TestReadSegmentRecordsRefusesDamage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string, offs, lens []int64)
		want   error
	}{
		{"a byte of an entry's data", func(t *testing.T, path string, offs, lens []int64) {
			k := largestFrame(lens)
			flipByte(t, path, offs[k]+8+lens[k]-2)
		}, wal.ErrCRCMismatch},
		{"a small entry's data", func(t *testing.T, path string, offs, lens []int64) {
			k := len(offs) - 1
			flipByte(t, path, offs[k]+8+lens[k]-1)
		}, wal.ErrCRCMismatch},
		{"a torn tail", func(t *testing.T, path string, offs, lens []int64) {
			k := largestFrame(lens)
			if err := os.Truncate(path, offs[k]+8+lens[k]/2); err != nil {
				t.Fatal(err)
			}
		}, io.ErrUnexpectedEOF},
		{"a length beyond the file", func(t *testing.T, path string, offs, lens []int64) {
			k := largestFrame(lens)
			if err := os.Truncate(path, offs[k]+8+lens[k]-1); err != nil {
				t.Fatal(err)
			}
		}, io.ErrUnexpectedEOF},
		{"a torn length", func(t *testing.T, path string, offs, lens []int64) {
			k := len(offs) - 1
			if err := os.Truncate(path, offs[k]+3); err != nil {
				t.Fatal(err)
			}
		}, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := walRecordsTestWAL(t)
			segs, _ := walSegments(dir)
			path := segs[1].path
			intact := etcdRecords(t, path)
			offs, lens := walFrames(t, path)
			tc.damage(t, path, offs, lens)
			got, err := ourRecords(path)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if len(got) >= len(intact) {
				t.Fatalf("%d records read from a damaged segment of %d", len(got), len(intact))
			}
			for i := range got {
				if got[i] != intact[i] {
					t.Fatalf("record %d before the damage differs", i)
				}
			}
		})
	}
}

// largestFrame is the index of the longest record in a segment's frames.
func largestFrame(lens []int64) int {
	k := 0
	for i, n := range lens {
		if n > lens[k] {
			k = i
		}
	}
	return k
}

// FuzzWALRecords: readSegmentRecords, which every start and every read of
// evicted entries runs on what the disk holds, against etcd's decoder on
// the same file. It must not panic, it must hand over the records etcd's
// decoder reads, and it must fail where that one fails (fuzz_test.go says
// how to run a long fuzz).
func FuzzWALRecords(f *testing.F) {
	dir, w := createTestWAL(f)
	for i := range uint64(6) {
		e := &raftpb.Entry{Index: new(i + 1), Term: new(uint64(1)), Data: []byte(strings.Repeat("e", int(i*5)))}
		if err := w.Save(&raftpb.HardState{Term: new(uint64(1)), Commit: new(i)}, []*raftpb.Entry{e}); err != nil {
			f.Fatal(err)
		}
		if i == 3 {
			if err := w.SaveSnapshot(&walpb.Snapshot{Index: new(uint64(3)), Term: new(uint64(1)), ConfState: &raftpb.ConfState{Voters: []uint64{1}}}); err != nil {
				f.Fatal(err)
			}
		}
	}
	if err := w.Close(); err != nil {
		f.Fatal(err)
	}
	segs, _ := walSegments(dir)
	b, err := os.ReadFile(segs[0].path)
	if err != nil {
		f.Fatal(err)
	}
	end := len(b) // the segment is preallocated: seed what was written
	for end > 0 && b[end-1] == 0 {
		end--
	}
	end = min((end+7)&^7, len(b))
	f.Add(b[:end])
	f.Add(b[:end/2])
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "0000000000000000-0000000000000000.wal")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		want, wantErr := etcdRecordsErr(path)
		got, err := ourRecords(path)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("error %v, etcd's decoder: %v", err, wantErr)
		}
		if len(got) != len(want) {
			t.Fatalf("%d records, etcd's decoder %d", len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("record %d differs from etcd's decoder's", i)
			}
		}
	})
}
