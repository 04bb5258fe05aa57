package main

import (
	"errors"
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Raft's storage pins no snapshot data: it asks for the file to be read
// back when raft wants to send it, hands it over once, and drops it when
// the transport is done or a newer snapshot comes.
func TestLogStorageFetchesSnapshotDataOnDemand(t *testing.T) {
	s := newLogStorage(8 << 20)
	var asked []*raftpb.SnapshotMetadata
	s.fetch = func(md *raftpb.SnapshotMetadata) { asked = append(asked, md) }
	ents := []*raftpb.Entry{}
	for i := uint64(1); i <= 10; i++ {
		ents = append(ents, &raftpb.Entry{Index: new(i), Term: new(uint64(1))})
	}
	if err := s.Append(ents); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Snapshot(); err != nil || !raft.IsEmptySnap(got) || len(asked) != 0 {
		t.Fatalf("no snapshot yet: got %v, %v, fetched %v", got, err, asked)
	}
	if err := s.createSnapshot(5, &raftpb.ConfState{Voters: []uint64{1}}); err != nil {
		t.Fatal(err)
	}
	if s.snapshotIndex() != 5 {
		t.Fatalf("snapshot index %d after createSnapshot(5)", s.snapshotIndex())
	}
	if _, err := s.Snapshot(); !errors.Is(err, raft.ErrSnapshotTemporarilyUnavailable) {
		t.Fatalf("before the file is read back: %v", err)
	}
	if len(asked) != 1 || asked[0].GetIndex() != 5 || asked[0].GetTerm() != 1 {
		t.Fatalf("asked to fetch %v", asked)
	}
	data := []byte("state at 5")
	s.keepForSending(5, data)
	got, err := s.Snapshot()
	if err != nil || string(got.GetData()) != string(data) || got.GetMetadata().GetIndex() != 5 {
		t.Fatalf("Snapshot() = %v, %v; want the data at 5", got, err)
	}
	if &got.GetData()[0] != &data[0] {
		t.Error("Snapshot() copied the data")
	}
	s.dropSent()
	if _, err := s.Snapshot(); !errors.Is(err, raft.ErrSnapshotTemporarilyUnavailable) {
		t.Fatalf("after the transport sent it, the data is still held: %v", err)
	}

	// An older snapshot changes nothing; data read back for an older index
	// is not kept.
	if err := s.createSnapshot(3, nil); !errors.Is(err, raft.ErrSnapOutOfDate) {
		t.Fatalf("createSnapshot(3) after 5: %v", err)
	}
	s.keepForSending(4, []byte("old"))
	if s.sent.Load() != nil {
		t.Fatal("kept the data of an older snapshot")
	}

	// One installed from the leader replaces the metadata and drops what was held.
	s.keepForSending(5, data)
	if err := s.applySnapshot(&raftpb.Snapshot{Data: []byte("leader's at 20"), Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(20)), Term: new(uint64(2)), ConfState: &raftpb.ConfState{Voters: []uint64{1}}}}); err != nil {
		t.Fatal(err)
	}
	if s.sent.Load() != nil || s.snapshotIndex() != 20 {
		t.Fatalf("after install: held %v, index %d", s.sent.Load(), s.snapshotIndex())
	}
}
