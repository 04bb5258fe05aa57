package main

import (
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// The snapshot side of logStorage. Its state lives in its file: etcd's
// MemoryStorage would keep the data and clone it on every Snapshot,
// CreateSnapshot and ApplySnapshot call (/v1/status asks on every poll):
// with 1M keys a pinned blob of some 300 MB, and a copy of it per call. Raft
// needs the data only to send a follower that is behind the compacted log;
// then it is read back from the file in the background (fetch), handed to
// raft, and dropped once the transport has sent it.

// snapData is the state machine's encoding of the snapshot at index.
type snapData struct {
	index uint64
	data  []byte
}

// Snapshot is what raft sends a member that is behind the compacted log.
func (s *logStorage) Snapshot() (*raftpb.Snapshot, error) {
	snap := &raftpb.Snapshot{Metadata: s.snapshotMeta()}
	if raft.IsEmptySnap(snap) {
		return snap, nil
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
