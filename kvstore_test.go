package main

import (
	"errors"
	"maps"
	"strings"
	"testing"
)

func TestRecordCodecRoundTrip(t *testing.T) {
	type rec struct {
		id         uint64
		key, value string
	}
	in := []rec{{1, "a", "1"}, {1 << 60, "", ""}, {7, "key/with/slashes", strings.Repeat("x", 70000)}, {9, "\x00bin", "\xff"}}
	var data []byte
	for _, r := range in {
		data = appendPutRecord(data, r.id, r.key, r.value)
	}
	var out []rec
	if err := decodeRecords(data, func(op byte, id uint64, k, v string) {
		if op != opPut {
			t.Errorf("op = %d", op)
		}
		out = append(out, rec{id, k, v})
	}); err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("decoded %d records, want %d", len(out), len(in))
	}
	for i := range in {
		if in[i] != out[i] {
			t.Errorf("record %d: got %+v want %+v", i, out[i].key, in[i].key)
		}
	}
	if err := decodeRecords(nil, func(byte, uint64, string, string) { t.Error("called for empty data") }); err != nil {
		t.Errorf("empty entry (raft no-op): %v", err)
	}
	one := appendPutRecord(nil, 300, "key", "value")
	for cut := 1; cut < len(one); cut++ {
		if err := decodeRecords(one[:cut], func(byte, uint64, string, string) {}); err == nil {
			t.Errorf("record truncated to %d of %d bytes: no error", cut, len(one))
		}
	}
	if err := decodeRecords([]byte{99, 1}, func(byte, uint64, string, string) {}); err == nil {
		t.Error("unknown op accepted")
	}
}

func TestSnapshotCodecRoundTrip(t *testing.T) {
	members := map[uint64]string{1: "http://127.0.0.1:1", 4: "https://h:4"}
	removed := map[uint64]bool{2: true, 3: true}
	kv := map[string]string{"a": "1", "": "empty key", "big": strings.Repeat("v", 1<<16)}
	st, err := decodeSnapshot(encodeSnapshot(42, members, removed, kv))
	if err != nil {
		t.Fatal(err)
	}
	if st.index != 42 || !maps.Equal(st.members, members) || !maps.Equal(st.removed, removed) || !maps.Equal(st.kv, kv) {
		t.Fatalf("round trip changed the state: %+v", st.members)
	}
	good := encodeSnapshot(1, members, removed, kv)
	for _, bad := range [][]byte{nil, []byte("JSON{}"), good[:len(good)-1], append(good[:len(good):len(good)], 0)} {
		if _, err := decodeSnapshot(bad); err == nil {
			t.Errorf("accepted a corrupt snapshot of %d bytes", len(bad))
		}
	}
}

func TestValidatePeerURL(t *testing.T) {
	for _, ok := range []string{"http://127.0.0.1:12379", "https://node-1.example:443", "http://[::1]:9021"} {
		if err := validatePeerURL(ok); err != nil {
			t.Errorf("%q rejected: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "not a url", "127.0.0.1:12379", "ftp://h:1", "http://h", "http://h:0", "http://h:99999",
		"http://h:1/", "http://h:1/path", "http://h:1?q=1", "http://h:1?", "http://u:p@h:1", "http://:1", "http://h:1#f", "http://h:port"} {
		if err := validatePeerURL(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestWaitRegistry(t *testing.T) {
	var w waitRegistry
	a, b := w.register(1), w.register(2)
	w.trigger(1, applyResult{index: 5})
	if r := <-a; r.index != 5 || r.err != nil {
		t.Fatalf("got %+v", r)
	}
	w.trigger(1, applyResult{index: 6}) // second trigger of a finished id is a no-op
	w.cancel(2)
	w.trigger(2, applyResult{index: 7})
	select {
	case r := <-b:
		t.Fatalf("cancelled wait got %+v", r)
	default:
	}
	c, d := w.register(3), w.register(4)
	w.markAccepted(3)
	w.fail(errLeaderChanged, true)
	if r := <-c; !errors.Is(r.err, errLeaderChanged) {
		t.Fatalf("accepted wait on leader change: %+v", r)
	}
	select {
	case r := <-d:
		t.Fatalf("a wait raft never took was failed on leader change: %+v", r)
	default:
	}
	w.fail(errStopping, false)
	if r := <-d; !errors.Is(r.err, errStopping) {
		t.Fatalf("fail all: %+v", r)
	}
}
