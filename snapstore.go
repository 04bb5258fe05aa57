package main

import (
	"sync/atomic"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// logStorage is raft's view of the log: etcd's MemoryStorage, except that
// the newest snapshot's data is kept beside it rather than in it.
// MemoryStorage clones its snapshot, data and all, on every Snapshot,
// CreateSnapshot and ApplySnapshot call, and /v1/status asks for it on
// every poll: with a store of 1M keys that is a copy of some 300 MB each
// time. Here MemoryStorage holds only the metadata, and Snapshot attaches
// the one shared data slice (never written after it is stored).
type logStorage struct {
	*raft.MemoryStorage
	// data is read by raft's goroutine (Snapshot) and written by
	// applySnapshot and createSnapshot, whose callers hold raftNode.snapMu.
	data atomic.Pointer[snapData]
}

// snapData is the state machine's encoding of the snapshot at index.
type snapData struct {
	index uint64
	data  []byte
}

func newLogStorage() *logStorage {
	return &logStorage{MemoryStorage: raft.NewMemoryStorage()}
}

// Snapshot is what raft sends a member that is behind the compacted log.
func (s *logStorage) Snapshot() (*raftpb.Snapshot, error) {
	snap, err := s.MemoryStorage.Snapshot()
	if err != nil || raft.IsEmptySnap(snap) {
		return snap, err
	}
	d := s.data.Load()
	if d == nil || d.index != snap.GetMetadata().GetIndex() {
		// Between storing a new snapshot's data and its metadata; raft
		// tries again later.
		return nil, raft.ErrSnapshotTemporarilyUnavailable
	}
	snap.Data = d.data
	return snap, nil
}

// snapshotIndex is the newest snapshot's index, without its data.
func (s *logStorage) snapshotIndex() uint64 {
	snap, err := s.MemoryStorage.Snapshot()
	if err != nil {
		return 0
	}
	return snap.GetMetadata().GetIndex()
}

// applySnapshot replaces the log with a snapshot (from disk at start, or
// installed from the leader).
func (s *logStorage) applySnapshot(snap *raftpb.Snapshot) error {
	meta := &raftpb.Snapshot{Metadata: snap.GetMetadata()}
	if err := s.MemoryStorage.ApplySnapshot(meta); err != nil {
		return err
	}
	s.data.Store(&snapData{index: snap.GetMetadata().GetIndex(), data: snap.GetData()})
	return nil
}

// createSnapshot records the state machine's snapshot at index and returns
// it whole, for the snapshot file. Until the data is stored, Snapshot finds
// the metadata ahead of it and tells raft to try again.
func (s *logStorage) createSnapshot(index uint64, cs *raftpb.ConfState, data []byte) (*raftpb.Snapshot, error) {
	snap, err := s.MemoryStorage.CreateSnapshot(index, cs, nil)
	if err != nil {
		return nil, err // out of date: the stored snapshot stays
	}
	s.data.Store(&snapData{index: index, data: data})
	snap.Data = data // snap is MemoryStorage's clone, ours to change
	return snap, nil
}
