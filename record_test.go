package main

import (
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestOpCodecRoundTrip(t *testing.T) {
	in := []op{
		{kind: opPut, reqID: 1, key: "a", value: "1"},
		{kind: opPut, reqID: 1 << 60},
		{kind: opPut, reqID: 7, key: "key/with/slashes", value: strings.Repeat("x", 70000)},
		{kind: opDelete, reqID: 8, key: "\x00bin"},
		{kind: opDeletePrefix, reqID: 9, key: "dir/"},
		{kind: opTxn, reqID: 10, txn: &txn{
			compares: []compare{
				{key: "lock", target: cmpExists, op: cmpEqual, num: 0},
				{key: "cfg", target: cmpValue, op: cmpNotEqual, value: "\xff"},
				{key: "n", target: cmpModIndex, op: cmpLess, num: 1 << 40},
			},
			success: []op{{kind: opPut, key: "lock", value: "me"}, {kind: opGet, key: "cfg"}},
			failure: []op{{kind: opGet, key: "lock"}, {kind: opDeletePrefix, key: "x"}, {kind: opDelete, key: "y"}},
		}},
		{kind: opTxn, reqID: 11, txn: &txn{}},
		{kind: opMemberAttrs, reqID: 12, member: 1 << 50, value: "http://127.0.0.1:12380"},
	}
	var data []byte
	for i := range in {
		data = appendOp(data, &in[i])
	}
	var out []op
	if err := decodeOps(data, func(o *op) { out = append(out, *o) }); err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("decoded %d records, want %d", len(out), len(in))
	}
	for i := range in {
		if in[i].kind == opTxn && len(in[i].txn.compares) == 0 {
			in[i].txn.compares, in[i].txn.success, in[i].txn.failure = nil, nil, nil
		}
		if got := withoutItem(t, out[i]); !reflect.DeepEqual(in[i], got) {
			t.Errorf("record %d: got %+v want %+v", i, got, in[i])
		}
	}
	if err := decodeOps(nil, func(*op) { t.Error("called for empty data") }); err != nil {
		t.Errorf("empty entry (raft no-op): %v", err)
	}
	for _, o := range in {
		one := appendOp(nil, &o)
		for cut := 1; cut < len(one); cut++ {
			if err := decodeOps(one[:cut], func(*op) { t.Errorf("%v truncated to %d bytes: applied", o.kind, cut) }); err == nil {
				t.Errorf("%v truncated to %d of %d bytes: no error", o.kind, cut, len(one))
			}
		}
	}
}

// The PUT record of the first release is a put record today: WALs and
// leaders of that release replay here.
func TestFirstReleasePutRecordDecodes(t *testing.T) {
	rec := []byte{1}
	rec = binary.AppendUvarint(rec, 300)
	rec = append(rec, 3, 'k', 'e', 'y', 5, 'v', 'a', 'l', 'u', 'e')
	var got []op
	if err := decodeOps(rec, func(o *op) { got = append(got, *o) }); err != nil {
		t.Fatal(err)
	}
	if want := (op{kind: opPut, reqID: 300, key: "key", value: "value"}); len(got) != 1 || !reflect.DeepEqual(withoutItem(t, got[0]), want) {
		t.Fatalf("got %+v", got)
	}
}

// An op kind this binary does not know fails the whole entry with
// errUnknownOp, before any record of it is handed out.
func TestUnknownOpStopsTheEntry(t *testing.T) {
	good := appendOp(nil, &op{kind: opPut, reqID: 1, key: "a", value: "1"})
	txnWith := func(sub byte) []byte {
		b := []byte{byte(opTxn), 2, 0, 1, sub}
		return append(b, 1, 'k', 0)
	}
	for name, data := range map[string][]byte{
		"unknown kind":         append(append([]byte{}, good...), 99, 1, 0),
		"get at top level":     append(append([]byte{}, good...), byte(opGet), 1, 1, 'k'),
		"txn in a txn":         txnWith(byte(opTxn)),
		"member attrs in txn":  txnWith(byte(opMemberAttrs)),
		"unknown kind in txn":  txnWith(77),
		"unknown compare":      {byte(opTxn), 2, 1, 1, 'k', 9, 1, 0, 0, 0},
		"unknown compare oper": {byte(opTxn), 2, 1, 1, 'k', 1, 9, 0, 0, 0},
	} {
		err := decodeOps(data, func(o *op) { t.Errorf("%s: handed out %+v", name, o) })
		if !errors.Is(err, errUnknownOp) {
			t.Errorf("%s: %v, want errUnknownOp", name, err)
		}
	}
}

// withoutItem is o as decoded, less the items the decoder made for its
// puts, each checked to hold its put's key and value with its indexes
// unset: what is left compares with an op as built.
func withoutItem(t testing.TB, o op) op {
	t.Helper()
	if o.kind == opPut {
		if o.it == nil || o.it.key() != o.key || o.it.value() != o.value || o.it.create|o.it.mod|o.it.version != 0 {
			t.Fatalf("put of %q: decoded item %+v does not hold it", o.key, viewOf(o.it))
		}
		o.it = nil
	}
	if o.txn != nil {
		x := *o.txn
		for _, branch := range []*[]op{&x.success, &x.failure} {
			if *branch != nil {
				b := make([]op, len(*branch))
				for i, sub := range *branch {
					b[i] = withoutItem(t, sub)
				}
				*branch = b
			}
		}
		o.txn = &x
	}
	return o
}
