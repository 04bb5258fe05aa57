package main

import (
	"sync/atomic"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// logStorage is raft's view of the log: etcd's MemoryStorage holding the
// newest snapshot's metadata only. The snapshot's state lives in its file.
// MemoryStorage would keep the data and clone it on every Snapshot,
// CreateSnapshot and ApplySnapshot call (/v1/status asks on every poll):
// with 1M keys a pinned blob of some 300 MB, and a copy of it per call. Raft
// needs the data only to send a follower that is behind the compacted log;
// then it is read back from the file in the background (fetch), handed to
// raft, and dropped once the transport has sent it.
type logStorage struct {
	*raft.MemoryStorage
	// sent is the snapshot data read back for sending, if any. Read by
	// raft's goroutine (Snapshot), stored by raftNode.fetchLoop, dropped by
	// the transport (ReportSnapshot) and by a newer snapshot.
	sent atomic.Pointer[snapData]
	// fetch asks for the file of the snapshot md to be read, without
	// blocking; set before raft starts.
	fetch func(md *raftpb.SnapshotMetadata)
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
	if d := s.sent.Load(); d != nil && d.index == snap.GetMetadata().GetIndex() {
		snap.Data = d.data
		return snap, nil
	}
	if s.fetch != nil {
		s.fetch(snap.GetMetadata())
	}
	return nil, raft.ErrSnapshotTemporarilyUnavailable
}

// keepForSending holds the data of the snapshot at index, read back from
// its file, until it is sent; data of an older snapshot is not kept.
func (s *logStorage) keepForSending(index uint64, data []byte) {
	if index == s.snapshotIndex() {
		s.sent.Store(&snapData{index: index, data: data})
	}
}

// dropSent lets go of the data once the transport is done with it.
func (s *logStorage) dropSent() { s.sent.Store(nil) }

// snapshotIndex is the newest snapshot's index.
func (s *logStorage) snapshotIndex() uint64 {
	snap, err := s.MemoryStorage.Snapshot()
	if err != nil {
		return 0
	}
	return snap.GetMetadata().GetIndex()
}

// applySnapshot replaces the log with a snapshot (from disk at start, or
// installed from the leader, its file already written). The data is not
// kept.
func (s *logStorage) applySnapshot(snap *raftpb.Snapshot) error {
	if err := s.MemoryStorage.ApplySnapshot(&raftpb.Snapshot{Metadata: snap.GetMetadata()}); err != nil {
		return err
	}
	s.dropSent()
	return nil
}

// createSnapshot records the state machine's snapshot at index, whose file
// is written.
func (s *logStorage) createSnapshot(index uint64, cs *raftpb.ConfState) error {
	if _, err := s.MemoryStorage.CreateSnapshot(index, cs, nil); err != nil {
		return err // out of date: the stored snapshot stays
	}
	s.dropSent()
	return nil
}
