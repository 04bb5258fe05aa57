package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// walEntries reads log entries back from the WAL's segment files, for
// logStorage when raft wants entries that left its memory window.
//
// Which records are the log: the WAL appends, so it also holds records a
// new leader overwrote. A segment is named after the index that its first
// entry record was expected to have (etcd's walName): at the cut, the log
// ended just before that index. So the log's entry at lo, if it was
// written before the cut that began segment K, was written again after
// it, provided K is the newest segment named at most lo; reading from K on
// finds it. Among the records for one index, the one whose term is the
// term logStorage holds for it is the entry (raft's log matching rule).
//
// Safe to read while the WAL appends to its last segment: records raft
// asks back for were applied, so a Save that synced wrote them earlier;
// the decoder stops before the tail being written. The segments it reads
// are not purged meanwhile: logStorage holds its lock while reading, and
// Compact, which takes it, runs before releaseWAL purges.
//
// Raft asks for a follower's entries MaxSizePerMsg at a time, each from
// where the last ended, and a read starts at the beginning of a segment:
// so each read also decodes up to readAhead bytes beyond what it returns,
// kept in ahead for the read that follows. Called only under logStorage's
// lock.
type walEntries struct {
	dir   string
	ahead []*raftpb.Entry // consecutive entries decoded past the last read
}

// readAhead is how many bytes a read decodes beyond its answer.
const readAhead = 4 << 20

// walSegment is one segment file and the index its name gives.
type walSegment struct {
	path  string
	index uint64
}

// walSegments lists the segment files of the WAL in dir, in order.
func walSegments(dir string) ([]walSegment, error) {
	names, err := fileutil.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var segs []walSegment
	for _, name := range names {
		if !strings.HasSuffix(name, ".wal") {
			continue
		}
		var seq, index uint64
		if _, err := fmt.Sscanf(name, "%016x-%016x.wal", &seq, &index); err != nil {
			continue
		}
		segs = append(segs, walSegment{path: filepath.Join(dir, name), index: index})
	}
	return segs, nil
}

// read implements entryReader.
func (w *walEntries) read(lo, hi, maxSize uint64, term func(uint64) uint64) ([]*raftpb.Entry, error) {
	if ents := w.fromAhead(lo, hi, maxSize, term); len(ents) > 0 {
		return ents, nil
	}
	ents, err := w.readSegments(lo, hi, maxSize+readAhead, term)
	if err != nil {
		return nil, err
	}
	n := len(limitEntries(ents, maxSize))
	w.ahead = ents[n:]
	return ents[:n:n], nil
}

// fromAhead answers from the entries the last read decoded, if they start
// at lo and their terms are still the log's.
func (w *walEntries) fromAhead(lo, hi, maxSize uint64, term func(uint64) uint64) []*raftpb.Entry {
	ahead := w.ahead
	w.ahead = nil
	if len(ahead) == 0 || ahead[0].GetIndex() != lo {
		return nil
	}
	n := 0
	for n < len(ahead) && ahead[n].GetIndex() < hi && ahead[n].GetTerm() == term(ahead[n].GetIndex()) {
		n++
	}
	n = len(limitEntries(ahead[:n], maxSize))
	w.ahead = ahead[n:]
	return ahead[:n:n]
}

// forget drops the entries read ahead.
func (w *walEntries) forget() { w.ahead = nil }

// readSegments decodes the entries [lo, hi) from the segments, up to
// maxSize bytes (at least one entry).
func (w *walEntries) readSegments(lo, hi, maxSize uint64, term func(uint64) uint64) ([]*raftpb.Entry, error) {
	var (
		ents []*raftpb.Entry
		size uint64
	)
	_, err := logEntries(w.dir, lo, term, func(e *raftpb.Entry) bool {
		size += uint64(proto.Size(e))
		if len(ents) > 0 && size > maxSize {
			return false
		}
		ents = append(ents, e)
		return e.GetIndex()+1 < hi
	})
	if err != nil {
		return nil, err
	}
	if len(ents) == 0 {
		return nil, fmt.Errorf("entry %d (term %d) not found in %s", lo, term(lo), w.dir)
	}
	return ents, nil
}

// logEntries calls fn with the log's entries from lo on, in order, until
// fn returns false or the segments end: for each index, the record whose
// term is term(index) (see walEntries), read from the segment that holds
// the log at lo on. next is the index after the last entry fn was given.
// An entry's data is part of the record etcd's decoder made
// (entryFields), not another copy.
func logEntries(dir string, lo uint64, term func(uint64) uint64, fn func(*raftpb.Entry) bool) (next uint64, err error) {
	segs, err := segmentsFrom(dir, lo)
	if err != nil {
		return lo, fmt.Errorf("list wal segments: %w", err)
	}
	if len(segs) == 0 || segs[0].index > lo {
		return lo, fmt.Errorf("no wal segment in %s reaches back to index %d", dir, lo)
	}
	next = lo
	for _, s := range segs {
		var decodeErr error
		done, err := readSegmentRecords(s.path, func(rec *walpb.Record) bool {
			if rec.GetType() != wal.EntryType {
				return true
			}
			typ, t, index, data, err := entryFields(rec.GetData())
			if err != nil {
				decodeErr = err
				return false
			}
			if index != next || t != term(index) {
				return true // an overwritten record, or one before lo
			}
			e := &raftpb.Entry{Term: new(t), Index: new(index), Data: data}
			if typ != raftpb.EntryNormal {
				e.Type = typ.Enum()
			}
			next++
			return fn(e)
		})
		if decodeErr != nil {
			return next, fmt.Errorf("%s: decode entry: %w", s.path, decodeErr)
		}
		if err != nil {
			return next, fmt.Errorf("%s: %w", s.path, err)
		}
		if done {
			break
		}
	}
	return next, nil
}

// readSegmentRecords calls fn with each record of the segment at path but
// its CRC records (each checked against the running checksum, as etcd's
// reader does), in order, until fn returns false (then done is true) or
// the records end.
func readSegmentRecords(path string, fn func(*walpb.Record) bool) (done bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	dec := wal.NewDecoder(fileutil.NewFileReader(f))
	for {
		rec := &walpb.Record{}
		err := dec.Decode(rec)
		switch {
		case errors.Is(err, io.EOF):
			return false, nil
		case err != nil:
			return false, fmt.Errorf("decode record at byte %d: %w", dec.LastOffset(), err)
		}
		if rec.GetType() == wal.CrcType {
			dec.UpdateCRC(rec.GetCrc())
			continue
		}
		if !fn(rec) {
			return true, nil
		}
	}
}

// walRecordsSnapshot reports whether the WAL in dir holds the record of
// the snapshot at index and term. A snapshot's record is appended once its
// file is written, after the entries up to its index: so it is looked for
// from the segment that the log at index is in. Records past index may
// come first (a checkpoint written while the file was being saved), so
// the search goes on to the end if it must. A WAL that cannot be read
// holds no such record, as far as this says.
func walRecordsSnapshot(dir string, index, term uint64) bool {
	segs, err := segmentsFrom(dir, index)
	if err != nil {
		return false
	}
	found := false
	for _, s := range segs {
		done, err := readSegmentRecords(s.path, func(rec *walpb.Record) bool {
			if rec.GetType() != wal.SnapshotType {
				return true
			}
			snap := &walpb.Snapshot{}
			if proto.Unmarshal(rec.GetData(), snap) != nil || snap.GetIndex() != index {
				return true
			}
			found = snap.GetIndex() == index && snap.GetTerm() == term
			return false
		})
		if err != nil || done {
			break
		}
	}
	return found
}

// segmentsFrom lists the WAL's segments from the one that the log at index
// is in (the newest named at most index; segments are in name order, which
// is sequence order) to the last: all of them if none is named at most
// index.
func segmentsFrom(dir string, index uint64) ([]walSegment, error) {
	segs, err := walSegments(dir)
	if err != nil {
		return nil, err
	}
	k := 0
	for i, s := range segs {
		if s.index <= index {
			k = i
		}
	}
	return segs[k:], nil
}

// walBytesFrom is the size of the WAL's segment files from the one that the
// log at index is in: about what a start from a snapshot at index reads
// (the last segment is preallocated whole). 0 if they cannot be listed.
func walBytesFrom(dir string, index uint64) uint64 {
	segs, err := segmentsFrom(dir, index)
	if err != nil {
		return 0
	}
	var n uint64
	for _, s := range segs {
		if fi, err := os.Stat(s.path); err == nil {
			n += uint64(fi.Size())
		}
	}
	return n
}
