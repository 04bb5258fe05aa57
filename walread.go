package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/encoding/protowire"
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
// Entries' data is copied out of the read buffer into blocks they share
// (dataBlocks): the only copy the read makes.
func logEntries(dir string, lo uint64, term func(uint64) uint64, fn func(*raftpb.Entry) bool) (next uint64, err error) {
	segs, err := segmentsFrom(dir, lo)
	if err != nil {
		return lo, fmt.Errorf("list wal segments: %w", err)
	}
	if len(segs) == 0 || segs[0].index > lo {
		return lo, fmt.Errorf("no wal segment in %s reaches back to index %d", dir, lo)
	}
	next = lo
	var copied dataBlocks
	for _, s := range segs {
		var decodeErr error
		done, err := readSegmentRecords(s.path, func(recType int64, rec []byte) bool {
			if recType != wal.EntryType {
				return true
			}
			typ, t, index, data, err := entryFields(rec)
			if err != nil {
				decodeErr = err
				return false
			}
			if index != next || t != term(index) {
				return true // an overwritten record, or one before lo
			}
			e := &raftpb.Entry{Term: new(t), Index: new(index), Data: copied.add(data)}
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

// dataBlocks copies entries' data out of the read buffer into blocks that
// many entries share: one allocation per block rather than one per entry.
// A block is garbage once no entry in it is.
type dataBlocks struct{ free []byte }

const dataBlockSize = 64 << 10

func (d *dataBlocks) add(b []byte) []byte {
	if len(b) > cap(d.free)-len(d.free) {
		d.free = make([]byte, 0, max(dataBlockSize, len(b)))
	}
	n := len(d.free)
	d.free = append(d.free, b...)
	return d.free[n:len(d.free):len(d.free)]
}

// readSegmentRecords calls fn with the type and data of each record of
// the segment at path but its CRC records, in order, until fn returns
// false (then done is true) or the records end. Each record's checksum is
// checked against the running one, as etcd's decoder does; data is valid
// only during the call (it is the read buffer's), so fn copies what it
// keeps.
//
// It reads etcd's record format itself rather than through wal.Decoder,
// which allocates every record twice (its frame, then a copy of its data)
// and a message for it: reading the log back at a restart made about five
// times its size in garbage, which the collector then chased while the
// start rebuilt the store (BenchmarkWALCheckpointRead). The format, as
// etcd's encoder writes it: a little-endian 8-byte length whose low 56
// bits are the record's size and, if its top bit is set, whose bits 56-58
// are the padding after it; then the record, a walpb.Record (type 1, crc
// 2, data 3); a length of 0, or the file's end, ends the records. The
// checksum is CRC-32C, running over the data of every record but the CRC
// records, which reset it to the value they carry (each segment opens
// with one).
func readSegmentRecords(path string, fn func(typ int64, data []byte) bool) (done bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	br := walReaders.Get().(*bufio.Reader)
	br.Reset(f)
	defer func() {
		br.Reset(nil)
		walReaders.Put(br)
	}()
	var (
		off int64  // where the next frame starts
		crc uint32 // the running checksum
		big []byte // a frame larger than br's buffer
	)
	for {
		head, err := br.Peek(8)
		if len(head) == 0 && errors.Is(err, io.EOF) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("decode record at byte %d: %w", off, io.ErrUnexpectedEOF)
		}
		l := binary.LittleEndian.Uint64(head)
		if l == 0 {
			return false, nil // the segment's preallocated, unwritten rest
		}
		br.Discard(8)
		size, pad := int64(l&^(0xff<<56)), int64(0)
		if l>>63 == 1 {
			pad = int64(l>>56) & 0x7
		}
		if size > fi.Size()-off-pad {
			return false, fmt.Errorf("decode record at byte %d: %w: a record of %d bytes in a file of %d", off, io.ErrUnexpectedEOF, size, fi.Size())
		}
		n := int(size + pad)
		var frame []byte
		if n <= br.Size() {
			if frame, err = br.Peek(n); err != nil {
				return false, fmt.Errorf("decode record at byte %d: %w", off, io.ErrUnexpectedEOF)
			}
		} else {
			big = slices.Grow(big[:0], n)[:n]
			if _, err := io.ReadFull(br, big); err != nil {
				return false, fmt.Errorf("decode record at byte %d: %w", off, io.ErrUnexpectedEOF)
			}
			frame = big
		}
		typ, sum, data, err := recordFields(frame[:size])
		if err != nil {
			return false, fmt.Errorf("decode record at byte %d: %w", off, err)
		}
		if typ == wal.CrcType {
			crc = sum
		} else {
			crc = crc32.Update(crc, castagnoli, data)
			if sum != crc {
				return false, fmt.Errorf("decode record at byte %d: %w", off, wal.ErrCRCMismatch)
			}
			if !fn(typ, data) {
				return true, nil
			}
		}
		if n <= br.Size() {
			br.Discard(n)
		}
		off += 8 + int64(n)
	}
}

// walReaders holds readSegmentRecords' read buffers, which records up to
// their size are read in place from: segments are small (walSegmentBytes),
// and a buffer per segment was most of what a read of the log allocated.
var walReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 128<<10) }}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// recordFields decodes a walpb.Record; data is a part of b.
func recordFields(b []byte) (typ int64, crc uint32, data []byte, err error) {
	for len(b) > 0 {
		num, wt, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, 0, nil, fmt.Errorf("decode record: %w", protowire.ParseError(n))
		}
		if num > protowire.MaxValidNumber { // ConsumeTag allows MessageSet's; proto.Unmarshal does not
			return 0, 0, nil, fmt.Errorf("decode record: field number %d out of range", num)
		}
		b = b[n:]
		switch {
		case num == 1 && wt == protowire.VarintType, num == 2 && wt == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return 0, 0, nil, fmt.Errorf("decode record: %w", protowire.ParseError(n))
			}
			b = b[n:]
			if num == 1 {
				typ = int64(v)
			} else {
				crc = uint32(v)
			}
		case num == 3 && wt == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return 0, 0, nil, fmt.Errorf("decode record: %w", protowire.ParseError(n))
			}
			data = v
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, wt, b)
			if n < 0 {
				return 0, 0, nil, fmt.Errorf("decode record: %w", protowire.ParseError(n))
			}
			b = b[n:]
		}
	}
	return typ, crc, data, nil
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
		done, err := readSegmentRecords(s.path, func(recType int64, rec []byte) bool {
			if recType != wal.SnapshotType {
				return true
			}
			snap := &walpb.Snapshot{}
			if proto.Unmarshal(rec, snap) != nil || snap.GetIndex() != index {
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
