package main

import (
	"errors"
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

func TestLogStorageKeepsSnapshotDataOnce(t *testing.T) {
	s := newLogStorage()
	ents := []*raftpb.Entry{}
	for i := uint64(1); i <= 10; i++ {
		ents = append(ents, &raftpb.Entry{Index: new(i), Term: new(uint64(1))})
	}
	if err := s.Append(ents); err != nil {
		t.Fatal(err)
	}
	data := []byte("state at 5")
	full, err := s.createSnapshot(5, &raftpb.ConfState{Voters: []uint64{1}}, data)
	if err != nil {
		t.Fatal(err)
	}
	if string(full.GetData()) != string(data) || full.GetMetadata().GetIndex() != 5 || full.GetMetadata().GetTerm() != 1 {
		t.Fatalf("createSnapshot returned %v", full)
	}
	inner, _ := s.MemoryStorage.Snapshot()
	if inner.GetData() != nil {
		t.Fatal("MemoryStorage holds the snapshot data too (and clones it on every call)")
	}
	got, err := s.Snapshot()
	if err != nil || string(got.GetData()) != string(data) || got.GetMetadata().GetIndex() != 5 {
		t.Fatalf("Snapshot() = %v, %v; want the data at 5", got, err)
	}
	if &got.GetData()[0] != &data[0] {
		t.Error("Snapshot() copied the data")
	}
	if s.snapshotIndex() != 5 {
		t.Errorf("snapshotIndex() = %d", s.snapshotIndex())
	}

	// An older snapshot changes nothing.
	if _, err := s.createSnapshot(3, nil, []byte("older")); !errors.Is(err, raft.ErrSnapOutOfDate) {
		t.Fatalf("createSnapshot(3) after 5: %v", err)
	}
	if got, _ := s.Snapshot(); string(got.GetData()) != string(data) {
		t.Fatalf("after an out-of-date snapshot: %q", got.GetData())
	}

	// One installed from the leader replaces both.
	if err := s.applySnapshot(&raftpb.Snapshot{Data: []byte("leader's at 20"), Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(20)), Term: new(uint64(2)), ConfState: &raftpb.ConfState{Voters: []uint64{1}}}}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Snapshot(); string(got.GetData()) != "leader's at 20" || got.GetMetadata().GetIndex() != 20 {
		t.Fatalf("after install: %v", got)
	}

	// Data and metadata of different indexes: raft must wait, not send a mix.
	s.data.Store(&snapData{index: 21, data: []byte("x")})
	if _, err := s.Snapshot(); !errors.Is(err, raft.ErrSnapshotTemporarilyUnavailable) {
		t.Fatalf("mismatched data: %v", err)
	}
}
