package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// receivingNode is a raft node as far as receiving a snapshot goes: a
// snapshot dir that rafthttp saves into, and a WAL to record it in.
func receivingNode(t *testing.T) *raftNode {
	t.Helper()
	lg := zaptest.NewLogger(t)
	dir := t.TempDir()
	rc := &raftNode{lg: lg, cfg: raftConfig{waldir: filepath.Join(dir, "wal"), snapdir: filepath.Join(dir, "snap")}}
	if err := os.Mkdir(rc.cfg.snapdir, 0o750); err != nil {
		t.Fatal(err)
	}
	w, err := wal.Create(lg, rc.cfg.waldir, walMetadata(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	rc.wal = w
	rc.snapshotter = snap.New(lg, rc.cfg.snapdir)
	return rc
}

// leaderSnapshot is the state and metadata of a snapshot at index 40,
// term 3, and its file's bytes as the leader streams them.
func leaderSnapshot(t *testing.T) (*snapshotState, *raftpb.SnapshotMetadata, []byte) {
	t.Helper()
	keys := newKeyTree()
	for i := range 300 {
		keys.Put(testItem("key-"+string(rune('a'+i%26))+string(rune('0'+i/26)), "value", uint64(i+1), uint64(i+1), 1))
	}
	st := &snapshotState{index: 40, members: map[uint64]string{1: "http://127.0.0.1:1", 2: "http://127.0.0.1:2"},
		removed: map[uint64]bool{}, clients: map[uint64]string{}, keys: keys}
	md := &raftpb.SnapshotMetadata{Index: new(uint64(40)), Term: new(uint64(3)), ConfState: &raftpb.ConfState{Voters: []uint64{1, 2}}}
	path := filepath.Join(t.TempDir(), "leader.snap")
	if err := writeSnapFile(path, md, bytesBody(encodeSnapshot(st))); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return st, md, b
}

func snapMsg(md *raftpb.SnapshotMetadata, data []byte) *raftpb.Message {
	return &raftpb.Message{Type: raftpb.MsgSnap.Enum(), From: new(uint64(2)), To: new(uint64(1)), Snapshot: &raftpb.Snapshot{Metadata: md, Data: data}}
}

// A snapshot from the leader arrives as a file beside its message: a sound
// file that holds the snapshot the message names is moved into place,
// recorded in the WAL and read back as the state; anything else is refused
// before raft sees the message, and the file removed.
func TestReceivedSnapshotIsCheckedThenInstalledFromItsFile(t *testing.T) {
	st, md, file := leaderSnapshot(t)

	rc := receivingNode(t)
	db := filepath.Join(rc.cfg.snapdir, "0000000000000028.snap.db") // etcd's name for index 40
	if err := os.WriteFile(db, file, 0o600); err != nil {
		t.Fatal(err)
	}
	// The message's metadata crossed the wire: a field set to its zero
	// value there and unset in the file is the same snapshot.
	sent := &raftpb.SnapshotMetadata{Index: new(uint64(40)), Term: new(uint64(3)), ConfState: &raftpb.ConfState{Voters: []uint64{2, 1}, AutoLeave: new(false)}}
	m := snapMsg(sent, nil)
	if err := rc.checkReceivedSnapshot(m); err != nil {
		t.Fatalf("a sound file refused: %v", err)
	}
	l, err := rc.persistReceivedSnapshot(m.GetSnapshot())
	if err != nil {
		t.Fatal(err)
	}
	want := rc.snapName(3, 40)
	if l == nil || l.path != want {
		t.Fatalf("installed from %+v, want the file at %s", l, want)
	}
	if _, err := os.Stat(db); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the received file is still there: %v", err)
	}
	if !walRecordsSnapshot(rc.cfg.waldir, 40, 3) {
		t.Fatal("the WAL does not record the installed snapshot")
	}
	back, err := l.read()
	if err != nil {
		t.Fatal(err)
	}
	if back.index != 40 || back.keys.Len() != st.keys.Len() || string(encodeSnapshot(back)) != string(encodeSnapshot(st)) {
		t.Fatalf("the state read back differs: index %d, %d keys", back.index, back.keys.Len())
	}

	// Refused: a file of another snapshot, a damaged one, none at all.
	other := &raftpb.SnapshotMetadata{Index: new(uint64(40)), Term: new(uint64(4)), ConfState: md.GetConfState()}
	bad := slices.Clone(file)
	bad[len(bad)/2] ^= 0x10
	for _, c := range []struct {
		name string
		file []byte
		md   *raftpb.SnapshotMetadata
	}{
		{"another term", file, other},
		{"another membership", file, &raftpb.SnapshotMetadata{Index: new(uint64(40)), Term: new(uint64(3)), ConfState: &raftpb.ConfState{Voters: []uint64{1, 2, 3}}}},
		{"damaged", bad, md},
		{"missing", nil, md},
	} {
		rc := receivingNode(t)
		db := filepath.Join(rc.cfg.snapdir, "0000000000000028.snap.db")
		if c.file != nil {
			if err := os.WriteFile(db, c.file, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := rc.checkReceivedSnapshot(snapMsg(c.md, nil)); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
		if _, err := os.Stat(db); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: the refused file is still there (%v)", c.name, err)
		}
		if rc.received.Load() != nil {
			t.Errorf("%s: kept for the install", c.name)
		}
	}

	// One sent inside its message (an older leader) has no file: it is
	// written from the message's data.
	rc = receivingNode(t)
	data := encodeSnapshot(st)
	m = snapMsg(md, data)
	if err := rc.checkReceivedSnapshot(m); err != nil {
		t.Fatal(err)
	}
	if l, err := rc.persistReceivedSnapshot(m.GetSnapshot()); err != nil || l != nil {
		t.Fatalf("inline snapshot: %+v, %v", l, err)
	}
	l, err = readSnapFile(rc.snapName(3, 40))
	if err != nil || l.dataLen != int64(len(data)) || !walRecordsSnapshot(rc.cfg.waldir, 40, 3) {
		t.Fatalf("inline snapshot's file: %+v, %v", l, err)
	}
}

// Files rafthttp saved (or was saving) that raft never installed go: those
// up to a snapshot just persisted, and at start all of them.
func TestReceivedLeftoversAreRemoved(t *testing.T) {
	dir := t.TempDir()
	names := []string{"tmp4821", "0000000000000005.snap.db", "0000000000000009.snap.db", "0000000000000001-0000000000000005.snap", "tmpfile.txt", "x.snap.db"}
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	left := func() []string {
		es, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			out = append(out, e.Name())
		}
		return out
	}
	lg := zaptest.NewLogger(t)
	removeReceivedLeftovers(lg, dir, 7, false)
	if got, want := left(), []string{"0000000000000001-0000000000000005.snap", "0000000000000009.snap.db", "tmp4821", "tmpfile.txt", "x.snap.db"}; !slices.Equal(got, want) {
		t.Fatalf("after removing up to 7: %v, want %v", got, want)
	}
	removeReceivedLeftovers(lg, dir, 0, true)
	if got, want := left(), []string{"0000000000000001-0000000000000005.snap", "tmpfile.txt", "x.snap.db"}; !slices.Equal(got, want) {
		t.Fatalf("after removing all: %v, want %v", got, want)
	}
}

// reportingNode is a raft.Node that records the snapshot reports it gets;
// any other call panics (the embedded interface is nil).
type reportingNode struct {
	raft.Node
	reports []raft.SnapshotStatus
}

func (n *reportingNode) ReportSnapshot(_ uint64, s raft.SnapshotStatus) {
	n.reports = append(n.reports, s)
}

// A member added after the newest snapshot is not sent that snapshot (its
// raft would ignore it, and the leader send the whole file again and
// again): the send is reported failed at once, without the file or the
// transport, and logged once per snapshot.
func TestSnapshotNotSentToAMemberItLacks(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	node := &reportingNode{}
	rc := &raftNode{lg: zap.New(core), node: node, cfg: raftConfig{snapdir: t.TempDir()}} // no transport: touching it panics
	msg := func(to uint64, cs *raftpb.ConfState, index uint64) *raftpb.Message {
		return &raftpb.Message{Type: raftpb.MsgSnap.Enum(), To: new(to), Snapshot: &raftpb.Snapshot{
			Metadata: &raftpb.SnapshotMetadata{Index: new(index), Term: new(uint64(2)), ConfState: cs}}}
	}
	old := &raftpb.ConfState{Voters: []uint64{1, 2, 3}}
	for range 3 {
		rc.sendSnapshot(msg(4, old, 100))
	}
	if len(node.reports) != 3 || node.reports[0] != raft.SnapshotFailure {
		t.Fatalf("reports %v, want 3 failures", node.reports)
	}
	if n := logs.FilterMessageSnippet("not sending a snapshot").Len(); n != 1 {
		t.Fatalf("%d log lines for one snapshot refused three times, want 1", n)
	}
	rc.sendSnapshot(msg(4, old, 200)) // a newer snapshot, still without 4
	if n := logs.FilterMessageSnippet("not sending a snapshot").Len(); n != 2 {
		t.Fatalf("%d log lines after a second snapshot refused, want 2", n)
	}
	// One that includes the member goes on to its file (absent here: the
	// send fails there, on the path that reads the file).
	rc.sendSnapshot(msg(4, &raftpb.ConfState{Voters: []uint64{1, 2, 3, 4}}, 300))
	if n := logs.FilterMessageSnippet("cannot open the snapshot file").Len(); n != 1 || len(node.reports) != 5 {
		t.Fatalf("a snapshot that includes the member: %d open failures logged, %d reports; want 1 and 5", n, len(node.reports))
	}

	for _, c := range []struct {
		cs   *raftpb.ConfState
		want bool
	}{
		{&raftpb.ConfState{Voters: []uint64{1, 4}}, true},
		{&raftpb.ConfState{Voters: []uint64{1}, Learners: []uint64{4}}, true},
		{&raftpb.ConfState{Voters: []uint64{1}, VotersOutgoing: []uint64{4}, LearnersNext: []uint64{4}}, true},
		{&raftpb.ConfState{Voters: []uint64{1}, LearnersNext: []uint64{4}}, false}, // raft's restore does not look there
		{&raftpb.ConfState{Voters: []uint64{1, 2, 3}}, false},
		{nil, false},
	} {
		if got := inConfState(c.cs, 4); got != c.want {
			t.Errorf("inConfState(%v, 4) = %v, want %v", c.cs, got, c.want)
		}
	}
}
