package main

import (
	"go.etcd.io/raft/v3/raftpb"
)

// The snapshot side of logStorage. Its state lives in its file: etcd's
// MemoryStorage would keep the data and clone it on every Snapshot,
// CreateSnapshot and ApplySnapshot call (/v1/status asks on every poll):
// with 1M keys a pinned blob of some 300 MB, and a copy of it per call.
// Raft wants a snapshot only to send a follower that is behind the
// compacted log, and what it gets here is the metadata alone: the ready
// loop sends the file itself as the message's stream (snapsend.go).

// Snapshot is what raft sends a member that is behind the compacted log:
// the newest snapshot's metadata, without its data.
func (s *logStorage) Snapshot() (*raftpb.Snapshot, error) {
	return &raftpb.Snapshot{Metadata: s.snapshotMeta()}, nil
}
