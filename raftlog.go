package main

import (
	"cmp"
	"fmt"
	"slices"
	"sync"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// logStorage is raft's view of the log (raft.Storage). It keeps in memory
// only what raft asks for on its hot paths: the entries not yet handed out
// for applying, plus a window of the newest applied ones (a follower a
// little behind is sent those). Older entries since the snapshot are on
// disk anyway, in the WAL segments that restart replays, and are read back
// from there (walEntries) when a follower that far behind needs them.
// Before this, raft's log held everything since the last snapshot: with 1M
// keys up to half the store again, since snapshots are spaced by the log's
// size (snapshotDue).
//
// The term of every index in the log stays in memory (termRuns, a few
// bytes per leader term), so Term never touches the disk and a record read
// back is accepted only when its term is the one the log holds: the WAL
// keeps records that a new leader overwrote, and raft's log matching rule
// says that an index and a term name one entry.
//
// The snapshot's state lives in its file, not here (snapstore.go).
//
// Every method is safe to call from any goroutine: raft calls Entries,
// Term and the index getters on its own; readyLoop appends and evicts; the
// snapshot goroutine creates snapshots and compacts. mu guards all fields.
type logStorage struct {
	mu   sync.Mutex
	hard *raftpb.HardState
	// snap is the newest snapshot's metadata; its index is 0 when there is
	// none.
	snap *raftpb.SnapshotMetadata
	// compacted is the index before the first entry raft may ask for; its
	// term is kept.
	compacted uint64
	last      uint64
	terms     termRuns // the term of every index in [compacted, last]
	// mem holds the entries (last-len(mem), last]; all older ones down to
	// compacted+1 are in the WAL (walEntries). Entries in mem are never
	// changed, and neither is the part of its array that Entries has
	// handed out: appends and trims make new arrays where they would.
	mem      []*raftpb.Entry
	memBytes uint64 // data bytes in mem
	// memDropped counts the entries evict has sliced off the front of
	// mem's array. The collector keeps a whole array, every pointer in it
	// included, alive while any part of it is reachable, so those entries
	// stay in memory until mem moves to a new array.
	memDropped int
	// window is how many bytes of applied entries evict keeps in memory.
	window uint64
	// disk reads entries older than mem back from the WAL; nil until the
	// WAL is open (before that, nothing is evicted).
	disk entryReader
}

// entryReader reads the entries [lo, hi) back from disk, each only if its
// term is term(index), stopping after maxSize bytes (at least one entry).
type entryReader interface {
	read(lo, hi, maxSize uint64, term func(uint64) uint64) ([]*raftpb.Entry, error)
	// forget lets go of anything read ahead: the log was cut before it.
	forget()
}

// newLogStorage returns an empty log that keeps window bytes of applied
// entries in memory (evict).
func newLogStorage(window uint64) *logStorage {
	return &logStorage{
		hard:   &raftpb.HardState{},
		snap:   raftpb.EnsureSnapshotMetadata(nil),
		terms:  termRuns{{index: 0, term: 0}},
		window: window,
	}
}

// termRuns records the term of each index as runs: run i starts at its
// index and lasts until the next run's. Terms only grow along the log.
type termRuns []termRun

type termRun struct{ index, term uint64 }

// at is the term of index i, which the runs cover.
func (r termRuns) at(i uint64) uint64 {
	k, found := slices.BinarySearchFunc(r, i, func(run termRun, i uint64) int { return cmp.Compare(run.index, i) })
	if !found {
		k--
	}
	return r[k].term
}

// truncate drops what the runs say of the indexes after last.
func (r termRuns) truncate(last uint64) termRuns {
	for len(r) > 1 && r[len(r)-1].index > last {
		r = r[:len(r)-1]
	}
	return r
}

// trimFront drops runs that end before index first, keeping the one that
// holds it.
func (r termRuns) trimFront(first uint64) termRuns {
	k := 0
	for k+1 < len(r) && r[k+1].index <= first {
		k++
	}
	if k == 0 {
		return r
	}
	return slices.Clone(r[k:])
}

func (r termRuns) add(index, term uint64) termRuns {
	if r[len(r)-1].term == term {
		return r
	}
	return append(r, termRun{index: index, term: term})
}

// InitialState implements raft.Storage.
func (s *logStorage) InitialState() (*raftpb.HardState, *raftpb.ConfState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hard, raftpb.EnsureConfState(s.snap.GetConfState()), nil
}

// SetHardState records the newest hard state.
func (s *logStorage) SetHardState(st *raftpb.HardState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hard = st
	return nil
}

// FirstIndex implements raft.Storage.
func (s *logStorage) FirstIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.compacted + 1, nil
}

// LastIndex implements raft.Storage.
func (s *logStorage) LastIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, nil
}

// Term implements raft.Storage.
func (s *logStorage) Term(i uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case i < s.compacted:
		return 0, raft.ErrCompacted
	case i > s.last:
		return 0, raft.ErrUnavailable
	}
	return s.terms.at(i), nil
}

// memFirst is the index of the first entry held in memory.
func (s *logStorage) memFirst() uint64 { return s.last - uint64(len(s.mem)) + 1 }

// Entries implements raft.Storage. Entries older than the memory window
// are read from the WAL; raft takes a shorter answer than asked for as the
// size limit and asks again from where it ends.
func (s *logStorage) Entries(lo, hi, maxSize uint64) ([]*raftpb.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if lo <= s.compacted {
		return nil, raft.ErrCompacted
	}
	if hi > s.last+1 {
		return nil, fmt.Errorf("entries [%d, %d) asked for beyond the last index %d", lo, hi, s.last)
	}
	if lo == hi {
		return nil, nil
	}
	if first := s.memFirst(); lo < first {
		ents, err := s.disk.read(lo, min(hi, first), maxSize, s.terms.at)
		if err != nil {
			return nil, fmt.Errorf("read entries [%d, %d) back from the wal: %w", lo, min(hi, first), err)
		}
		metricLogReadBack.Add(float64(len(ents)))
		return ents, nil
	}
	first := s.memFirst()
	ents := limitEntries(s.mem[lo-first:hi-first], maxSize)
	// The full slice expression makes a caller's append copy rather than
	// write into mem's array.
	return ents[:len(ents):len(ents)], nil
}

// limitEntries is the longest prefix of ents within maxSize bytes, at least
// one entry.
func limitEntries(ents []*raftpb.Entry, maxSize uint64) []*raftpb.Entry {
	var size uint64
	for n, e := range ents {
		size += uint64(proto.Size(e))
		if n > 0 && size > maxSize {
			return ents[:n]
		}
	}
	return ents
}

// Append adds entries the WAL holds, replacing any at the same indexes and
// after them (a new leader's log wins over an old one's tail).
func (s *logStorage) Append(ents []*raftpb.Entry) error {
	if len(ents) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if skip := s.compacted + 1; ents[0].GetIndex() < skip {
		n := skip - ents[0].GetIndex()
		if n >= uint64(len(ents)) {
			return nil
		}
		ents = ents[n:]
	}
	at := ents[0].GetIndex()
	if at > s.last+1 {
		return fmt.Errorf("append entries from %d to a log that ends at %d: a gap", at, s.last)
	}
	if at <= s.last {
		s.truncate(at - 1)
	}
	for i, e := range ents {
		if e.GetIndex() != at+uint64(i) {
			return fmt.Errorf("append entries: index %d where %d was expected", e.GetIndex(), at+uint64(i))
		}
		s.terms = s.terms.add(e.GetIndex(), e.GetTerm())
		s.memBytes += uint64(len(e.GetData()))
	}
	// In place: slices Entries handed out end at their length, so they
	// never see what is appended beyond it (truncate caps mem, so an append
	// after it copies instead of overwriting what they hold).
	before := cap(s.mem)
	s.mem = append(s.mem, ents...)
	if cap(s.mem) != before { // a new array: the dropped entries went with the old one
		s.memDropped = 0
	}
	s.last = ents[len(ents)-1].GetIndex()
	return nil
}

// truncate drops the entries after last. Raft never truncates what it
// committed, and evict only drops applied entries from memory, so last is
// never below memFirst-1.
func (s *logStorage) truncate(last uint64) {
	if first := s.memFirst(); last+1 < first {
		// Not reachable (see above); keep the log coherent regardless.
		s.mem, s.memBytes, s.memDropped = nil, 0, 0
	} else {
		keep := s.mem[:last+1-first]
		for _, e := range s.mem[len(keep):] {
			s.memBytes -= uint64(len(e.GetData()))
		}
		s.mem = keep[:len(keep):len(keep)]
	}
	s.last = last
	s.terms = s.terms.truncate(last)
}

// evict lets go of applied entries beyond the memory window. applied is
// the newest index raft has handed out to apply; raft asks for nothing up
// to it again except to send it to a follower. A no-op until the WAL is
// there to read them back from.
func (s *logStorage) evict(applied uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.disk == nil {
		return
	}
	n := 0
	for n < len(s.mem) && s.mem[n].GetIndex() <= applied && s.memBytes > s.window {
		s.memBytes -= uint64(len(s.mem[n].GetData()))
		n++
	}
	if n == 0 {
		return
	}
	s.mem = s.mem[n:]
	// Copy once the dropped entries outnumber the rest. Not cap(s.mem):
	// it counts only the array after the slice's start. A restart appends
	// its whole replayed log at once, and that test left every replayed
	// entry in memory for as long as no new entry came.
	if s.memDropped += n; s.memDropped > len(s.mem)+64 {
		s.mem = slices.Clone(s.mem)
		s.memDropped = 0
	}
	s.compactEvicted()
}

// compactEvicted compacts the log past the evicted entries that the
// newest snapshot holds. The WAL may not hold them: releaseWAL lets the
// segments behind that snapshot be purged. Entries after the snapshot are
// in segments the WAL keeps (ReleaseLockTo keeps every segment named after
// the snapshot's index and the newest one before it; wal.Open at restart
// keeps the one holding the snapshot and all after it).
func (s *logStorage) compactEvicted() {
	if first := s.memFirst(); first > s.compacted+1 {
		if c := min(first-1, s.snap.GetIndex()); c > s.compacted {
			s.compacted = c
			s.terms = s.terms.trimFront(c)
		}
	}
}

// Compact discards the entries up to index, which a snapshot holds, and
// any evicted ones the snapshot holds past it (compactEvicted).
func (s *logStorage) Compact(index uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if index <= s.compacted {
		return raft.ErrCompacted
	}
	if index > s.last {
		return fmt.Errorf("compact to %d beyond the last index %d", index, s.last)
	}
	s.compacted = index
	if first := s.memFirst(); index >= first {
		drop := s.mem[:index+1-first]
		for _, e := range drop {
			s.memBytes -= uint64(len(e.GetData()))
		}
		s.mem, s.memDropped = slices.Clone(s.mem[len(drop):]), 0
	}
	s.terms = s.terms.trimFront(index)
	s.compactEvicted()
	if s.disk != nil {
		s.disk.forget()
	}
	return nil
}

// applySnapshot replaces the log with a snapshot (from disk at start, or
// installed from the leader, its file already written). The data is not
// kept.
func (s *logStorage) applySnapshot(snap *raftpb.Snapshot) error {
	md := snap.GetMetadata()
	s.mu.Lock()
	if s.snap.GetIndex() != 0 && s.snap.GetIndex() >= md.GetIndex() {
		s.mu.Unlock()
		return raft.ErrSnapOutOfDate
	}
	s.snap = raftpb.EnsureSnapshotMetadata(proto.Clone(md).(*raftpb.SnapshotMetadata))
	s.compacted, s.last = md.GetIndex(), md.GetIndex()
	s.terms = termRuns{{index: md.GetIndex(), term: md.GetTerm()}}
	s.mem, s.memBytes, s.memDropped = nil, 0, 0
	if s.disk != nil {
		s.disk.forget()
	}
	s.mu.Unlock()
	return nil
}

// createSnapshot records the state machine's snapshot at index, whose file
// is written.
func (s *logStorage) createSnapshot(index uint64, cs *raftpb.ConfState) error {
	s.mu.Lock()
	if index <= s.snap.GetIndex() {
		s.mu.Unlock()
		return raft.ErrSnapOutOfDate
	}
	if index < s.compacted || index > s.last {
		s.mu.Unlock()
		return fmt.Errorf("snapshot at %d outside the log [%d, %d]", index, s.compacted, s.last)
	}
	md := &raftpb.SnapshotMetadata{Index: new(index), Term: new(s.terms.at(index)), ConfState: s.snap.GetConfState()}
	if cs != nil {
		md.ConfState = proto.Clone(cs).(*raftpb.ConfState)
	}
	s.snap = raftpb.EnsureSnapshotMetadata(md)
	s.compactEvicted()
	s.mu.Unlock()
	return nil
}

// snapshotMeta is a copy of the newest snapshot's metadata.
func (s *logStorage) snapshotMeta() *raftpb.SnapshotMetadata {
	s.mu.Lock()
	defer s.mu.Unlock()
	return proto.Clone(s.snap).(*raftpb.SnapshotMetadata)
}

// snapshotIndex is the newest snapshot's index.
func (s *logStorage) snapshotIndex() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap.GetIndex()
}

// addOnDisk extends a log that ends at its snapshot with the entries up to
// last, which are in the WAL, not in memory: runs gives their terms from
// the snapshot's index on. Used at start, before raft runs.
func (s *logStorage) addOnDisk(runs termRuns, last uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last != s.compacted || len(s.mem) > 0 || len(runs) == 0 || runs[0].index > s.compacted || runs.at(s.compacted) != s.terms.at(s.compacted) {
		return fmt.Errorf("entries up to %d from the wal do not follow the snapshot at %d", last, s.compacted)
	}
	s.terms = runs.trimFront(s.compacted)
	s.last = last
	return nil
}

// setDisk lets evicted entries be read back through d from now on.
func (s *logStorage) setDisk(d entryReader) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.disk = d
}

// memoryBytes is the data bytes of the entries held in memory.
func (s *logStorage) memoryBytes() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.memBytes
}
