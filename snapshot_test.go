package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

func TestSnapshotCodecRoundTrip(t *testing.T) {
	keys := newKeyTree()
	for _, it := range []*item{
		testItem("a", "1", 3, 9, 4),
		testItem("", "empty key", 5, 5, 1),
		testItem("big", strings.Repeat("v", 1<<16), 1<<40, 1<<40+1, 2),
	} {
		keys.Put(it)
	}
	in := &snapshotState{index: 42, members: map[uint64]string{1: "http://127.0.0.1:1", 4: "https://h:4"},
		removed: map[uint64]bool{2: true, 3: true}, clients: map[uint64]string{4: "http://h:14"}, keys: keys}
	good := encodeSnapshot(in)
	st, err := decodeSnapshot(good)
	if err != nil {
		t.Fatal(err)
	}
	if st.index != 42 || !maps.Equal(st.members, in.members) || !maps.Equal(st.removed, in.removed) ||
		!maps.Equal(st.clients, in.clients) || st.keys.Len() != 3 {
		t.Fatalf("round trip changed the state: %+v", st)
	}
	keys.Ascend(func(want *item) bool {
		if got := st.keys.Get(want.key()); got == nil || viewOf(got) != viewOf(want) {
			t.Errorf("key %q: got %+v want %+v", want.key(), viewOf(got), viewOf(want))
		}
		return true
	})
	for _, bad := range [][]byte{nil, []byte("JSON{}"), good[:len(good)-1], append(good[:len(good):len(good)], 0)} {
		if _, err := decodeSnapshot(bad); err == nil {
			t.Errorf("accepted a corrupt snapshot of %d bytes", len(bad))
		}
	}
}

// Snapshots of the first release (RKV1: keys and values only) still load;
// their keys get the snapshot's index as create and mod index.
func TestFirstReleaseSnapshotLoads(t *testing.T) {
	b := []byte("RKV1")
	b = binary.AppendUvarint(b, 77)
	b = append(b, 1, 1)
	b = appendString(b, "http://127.0.0.1:1")
	b = append(b, 1, 2) // removed: 2
	b = append(b, 2)
	b = appendString(appendString(b, "k1"), "v1")
	b = appendString(appendString(b, "k0"), "v0") // RKV1 wrote map order
	st, err := decodeSnapshot(b)
	if err != nil {
		t.Fatal(err)
	}
	if st.index != 77 || st.members[1] != "http://127.0.0.1:1" || !st.removed[2] || st.keys.Len() != 2 {
		t.Fatalf("got %+v", st)
	}
	if it := st.keys.Get("k0"); it == nil || viewOf(it) != viewOf(testItem("k0", "v0", 77, 77, 1)) {
		t.Fatalf("k0: %+v", it)
	}
}

// Snapshots of the second format (RKV2: no client URLs) still load, with
// no client URL known until the members publish theirs again.
func TestSecondFormatSnapshotLoads(t *testing.T) {
	b := []byte("RKV2")
	b = binary.AppendUvarint(b, 5)
	b = append(b, 1, 1)
	b = appendString(b, "http://127.0.0.1:1")
	b = append(b, 0) // removed: none
	b = append(b, 1)
	b = appendString(appendString(b, "k"), "v")
	b = append(b, 3, 5, 2) // create, mod, version
	st, err := decodeSnapshot(b)
	if err != nil {
		t.Fatal(err)
	}
	if st.index != 5 || len(st.members) != 1 || len(st.clients) != 0 {
		t.Fatalf("got %+v", st)
	}
	if it := st.keys.Get("k"); it == nil || viewOf(it) != viewOf(testItem("k", "v", 3, 5, 2)) {
		t.Fatalf("k: %+v", it)
	}
}

// A client URL for an id that is not a member is corrupt: apply never
// records one (membership.setClientURL).
func TestSnapshotClientURLOfNonMemberRejected(t *testing.T) {
	bad := encodeSnapshot(&snapshotState{index: 1, members: map[uint64]string{1: "http://a:1"},
		clients: map[uint64]string{2: "http://a:2"}, keys: newKeyTree()})
	if _, err := decodeSnapshot(bad); err == nil || !strings.Contains(err.Error(), "not a member") {
		t.Fatalf("got %v", err)
	}
}

// snapshotRecorder is raftCalls for a store driven without a raft node: it
// keeps the size of every snapshot it is asked to save.
type snapshotRecorder struct {
	mu    sync.Mutex
	sizes []int
}

func (r *snapshotRecorder) applyConfChange(*raftpb.ConfChange) *raftpb.ConfState {
	return &raftpb.ConfState{}
}
func (r *snapshotRecorder) readIndex(context.Context) (uint64, error) { return 0, nil }
func (r *snapshotRecorder) saveSnapshot(_ uint64, _ *raftpb.ConfState, body snapshotBody) error {
	var buf bytes.Buffer
	if err := body.write(&buf); err != nil {
		return err
	}
	if int64(buf.Len()) != body.size {
		return fmt.Errorf("snapshot body sized at %d bytes wrote %d", body.size, buf.Len())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sizes = append(r.sizes, buf.Len())
	return nil
}

type noPeers struct{}

func (noPeers) setPeer(uint64, string) {}
func (noPeers) removePeer(uint64)      {}

// Loading a store that outgrows a snapshot interval many times over
// writes snapshot bytes in proportion to the data written, not to the
// number of entries (issue 9: 68 snapshots of 277 MB for 272 MB loaded).
func TestSnapshotBytesStayProportionalToWrites(t *testing.T) {
	rec := &snapshotRecorder{}
	const count = 100 // entries between snapshots at the least
	s := newKVStore(zap.NewNop(), 1, count, nil, rec, noPeers{}, newMembership(), 0)
	s.snapshotFloor = 256 << 10 // about what count entries hold
	s.confState = &raftpb.ConfState{Voters: []uint64{1}}
	value := strings.Repeat("v", 256)
	var written uint64
	index := uint64(0)
	for written < 24<<20 {
		var data []byte
		for i := range uint64(8) { // fresh keys, 8 writes an entry
			data = appendOp(data, &op{kind: opPut, key: fmt.Sprintf("key-%016d", index*8+i), value: value})
		}
		index++
		written += uint64(len(data))
		s.applyCommit(&commit{entries: []*raftpb.Entry{{Index: new(index), Type: raftpb.EntryNormal.Enum(), Data: data}}})
		s.snapWG.Wait() // each decision sees the snapshot before it finished
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var total uint64
	for _, n := range rec.sizes {
		total += uint64(n)
	}
	t.Logf("%d entries, %d log bytes, %d snapshots, %d snapshot bytes (%.2f×)", index, written, len(rec.sizes), total, float64(total)/float64(written))
	if every := index / count; uint64(len(rec.sizes)) >= every {
		t.Errorf("%d snapshots in %d entries: one every --snapshot-count entries, whatever the store's size", len(rec.sizes), index)
	}
	if total > 3*written {
		t.Errorf("snapshots wrote %d bytes for %d bytes of log: more than 3×", total, written)
	}
	// The log is still bounded: the newest snapshot is not far behind.
	if last := uint64(rec.sizes[len(rec.sizes)-1]); len(rec.sizes) < 4 || float64(s.logBytes) > snapshotLogShare*float64(last)+float64(written)/float64(index)*count {
		t.Errorf("%d snapshots, the newest %d bytes, %d log bytes since: the log is not kept within a share of the store", len(rec.sizes), last, s.logBytes)
	}
}

func TestSnapshotDue(t *testing.T) {
	for _, tc := range []struct {
		entries, logBytes, lastBytes uint64
		due                          bool
	}{
		{entries: 99, logBytes: 1 << 30, lastBytes: 0, due: false},  // fewer entries than --snapshot-count
		{entries: 100, logBytes: 10, lastBytes: 1 << 20, due: true}, // a small store: every --snapshot-count entries
		{entries: 100, logBytes: 10, lastBytes: 64 << 20, due: false},
		{entries: 100, logBytes: 32<<20 - 1, lastBytes: 64 << 20, due: false},
		{entries: 100, logBytes: 32 << 20, lastBytes: 64 << 20, due: true},
	} {
		if got := snapshotDue(tc.entries, 100, tc.logBytes, tc.lastBytes, snapshotSizeFloor); got != tc.due {
			t.Errorf("snapshotDue(%d entries, %d log bytes, last %d bytes) = %v", tc.entries, tc.logBytes, tc.lastBytes, got)
		}
	}
}

func TestStopSnapshotDue(t *testing.T) {
	for _, tc := range []struct {
		logBytes, lastBytes uint64
		due                 bool
	}{
		{logBytes: 1<<20 - 1, lastBytes: 0, due: false},       // too little log to be worth it
		{logBytes: 1 << 20, lastBytes: 0, due: true},          // no snapshot yet
		{logBytes: 1 << 20, lastBytes: 8<<20 + 8, due: false}, // under an eighth of the snapshot
		{logBytes: 1 << 20, lastBytes: 8 << 20, due: true},
	} {
		if got := stopSnapshotDue(tc.logBytes, tc.lastBytes, 1<<20); got != tc.due {
			t.Errorf("stopSnapshotDue(%d log bytes, last %d bytes) = %v", tc.logBytes, tc.lastBytes, got)
		}
	}
}

// A graceful stop with a long log since the newest snapshot writes a
// snapshot first, so the next start replays no log; a member whose log is
// short stops without one.
func TestGracefulStopSnapshotsALongLog(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	victim, other := (lead+1)%3, (lead+2)%3
	// Set before any stop asks for the snapshot (the request is a channel
	// send, so the apply goroutine sees it).
	c.nodes[victim].kv.stopSnapMin = 4 << 10
	value := strings.Repeat("v", 100)
	for i := range 100 { // about 12 KB of log, under --snapshot-count entries
		c.mustPut(i%3, fmt.Sprintf("s%03d", i), value)
	}
	want, _ := c.nodes[lead].kv.Applied()
	eventually(t, 10*time.Second, func() error {
		if got, _ := c.nodes[victim].kv.Applied(); got < want {
			return fmt.Errorf("member %d applied %d of %d", victim+1, got, want)
		}
		return nil
	})
	replayed := func(i int) int { // entries the last start of member i read from its WAL
		logFrom := len(c.log.String())
		c.start(i)
		for _, line := range strings.Split(c.log.String()[logFrom:], "\n") {
			if !strings.Contains(line, "replayed wal") || !strings.Contains(line, fmt.Sprintf(`"member": %d,`, i+1)) {
				continue
			}
			var n int
			if _, err := fmt.Sscanf(line[strings.Index(line, `"entries": `):], `"entries": %d`, &n); err != nil {
				t.Fatalf("parse %q: %v", line, err)
			}
			return n
		}
		t.Fatalf("member %d logged no replayed wal line", i+1)
		return 0
	}

	logFrom := len(c.log.String())
	c.stop(victim)
	if !strings.Contains(c.log.String()[logFrom:], "saving a snapshot before stopping") {
		t.Fatal("no snapshot before the stop")
	}
	if n := replayed(victim); n > 2 { // an election meanwhile may add an empty entry
		t.Fatalf("member %d replayed %d entries after a graceful stop that should have snapshotted them", victim+1, n)
	}
	c.mustGet(victim, "s099", value)

	logFrom = len(c.log.String())
	c.stop(other) // the default threshold (16 MiB) is far above this log
	if strings.Contains(c.log.String()[logFrom:], "saving a snapshot before stopping") {
		t.Fatal("a snapshot before the stop of a member with a short log")
	}
	if n := replayed(other); n < 100 {
		t.Fatalf("member %d replayed %d entries, want the whole log (at least 100)", other+1, n)
	}
	c.leader()
	c.mustGet(other, "s099", value)
}
