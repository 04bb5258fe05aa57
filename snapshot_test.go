package main

import (
	"encoding/binary"
	"maps"
	"strings"
	"testing"
)

func TestSnapshotCodecRoundTrip(t *testing.T) {
	keys := newKeyTree()
	for _, it := range []*item{
		{key: "a", value: "1", create: 3, mod: 9, version: 4},
		{key: "", value: "empty key", create: 5, mod: 5, version: 1},
		{key: "big", value: strings.Repeat("v", 1<<16), create: 1 << 40, mod: 1<<40 + 1, version: 2},
	} {
		keys.ReplaceOrInsert(it)
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
		if got, _ := st.keys.Get(want); got == nil || *got != *want {
			t.Errorf("key %q: got %+v want %+v", want.key, got, want)
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
	if it, _ := st.keys.Get(&item{key: "k0"}); it == nil || *it != (item{key: "k0", value: "v0", create: 77, mod: 77, version: 1}) {
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
	if it, _ := st.keys.Get(&item{key: "k"}); it == nil || *it != (item{key: "k", value: "v", create: 3, mod: 5, version: 2}) {
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
