package main

import (
	"slices"
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Raft's storage holds no snapshot data: raft gets the newest snapshot's
// metadata, and the ready loop sends the file with it (snapsend.go).
func TestLogStorageSnapshotIsMetadataOnly(t *testing.T) {
	s := newLogStorage(8 << 20)
	ents := []*raftpb.Entry{}
	for i := uint64(1); i <= 10; i++ {
		ents = append(ents, &raftpb.Entry{Index: new(i), Term: new(uint64(1)), Data: []byte("x")})
	}
	if err := s.Append(ents); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Snapshot(); err != nil || !raft.IsEmptySnap(got) {
		t.Fatalf("no snapshot yet: got %v, %v", got, err)
	}
	cs := &raftpb.ConfState{Voters: []uint64{1}}
	if err := s.createSnapshot(5, cs); err != nil {
		t.Fatal(err)
	}
	got, err := s.Snapshot()
	if err != nil || got.GetMetadata().GetIndex() != 5 || got.GetMetadata().GetTerm() != 1 || !slices.Equal(got.GetMetadata().GetConfState().GetVoters(), cs.GetVoters()) || got.GetData() != nil {
		t.Fatalf("Snapshot() after createSnapshot(5) = %v, %v; want index 5, term 1, %v and no data", got, err, cs)
	}
	// raft may keep what it got: a later snapshot does not change it.
	if err := s.applySnapshot(&raftpb.Snapshot{Data: []byte("leader's at 20"), Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(20)), Term: new(uint64(2)), ConfState: &raftpb.ConfState{Voters: []uint64{1, 2}}}}); err != nil {
		t.Fatal(err)
	}
	if got.GetMetadata().GetIndex() != 5 {
		t.Fatalf("the metadata handed out changed to %v", got.GetMetadata())
	}
	got, err = s.Snapshot()
	if err != nil || got.GetMetadata().GetIndex() != 20 || got.GetData() != nil {
		t.Fatalf("Snapshot() after installing the leader's at 20 = %v, %v; want index 20 and no data", got, err)
	}
}
