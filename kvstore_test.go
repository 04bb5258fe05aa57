package main

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

func TestApplyOpKeepsMetadata(t *testing.T) {
	keys := newKeyTree()
	put := func(index uint64, k, v string) opResult {
		return applyOp(keys, index, &op{kind: opPut, key: k, value: v}, nil).ops[0]
	}
	if r := put(5, "a", "1"); r.prev != nil || viewOf(r.cur) != viewOf(testItem("a", "1", 5, 5, 1)) {
		t.Fatalf("create: %+v", r)
	}
	if r := put(9, "a", "2"); r.prev.value() != "1" || viewOf(r.cur) != viewOf(testItem("a", "2", 5, 9, 2)) {
		t.Fatalf("update: %+v %+v", r.prev, r.cur)
	}
	put(10, "ab", "x")
	put(11, "b", "y")
	if r := applyOp(keys, 12, &op{kind: opDelete, key: "a"}, nil).ops[0]; r.deleted != 1 || r.prev.mod != 9 {
		t.Fatalf("delete: %+v", r)
	}
	if r := applyOp(keys, 13, &op{kind: opDelete, key: "a"}, nil).ops[0]; r.deleted != 0 || r.prev != nil {
		t.Fatalf("delete of an absent key: %+v", r)
	}
	if r := put(14, "a", "3"); viewOf(r.cur) != viewOf(testItem("a", "3", 14, 14, 1)) {
		t.Fatalf("recreate after delete starts over: %+v", r.cur)
	}
	if r := applyOp(keys, 15, &op{kind: opDeletePrefix, key: "a"}, nil).ops[0]; r.deleted != 2 || keys.Len() != 1 {
		t.Fatalf("delete prefix: %+v, %d left", r, keys.Len())
	}
}

// A decoded put hands apply the item its decoder made, and apply puts that
// very item in the tree. Applied a second time (no member does; a
// benchmark does), the op must not change the item the first put left in
// the tree, which a clone may share.
func TestApplyTakesAFreshItemForAnOpAppliedAgain(t *testing.T) {
	keys := newKeyTree()
	o := decoded(&op{kind: opPut, key: "k", value: "v", reqID: 1})
	first := applyOp(keys, 5, o, nil).ops[0].cur
	if first != o.it {
		t.Fatal("apply copied the decoded item instead of keeping it")
	}
	snap := keys.Clone()
	second := applyOp(keys, 9, o, nil).ops[0].cur
	if second == first || viewOf(first) != viewOf(testItem("k", "v", 5, 5, 1)) || viewOf(snap.Get("k")) != viewOf(testItem("k", "v", 5, 5, 1)) {
		t.Fatalf("applied again: the first put's item is now %+v (the clone's %+v)", viewOf(first), viewOf(snap.Get("k")))
	}
	if viewOf(second) != viewOf(testItem("k", "v", 5, 9, 2)) {
		t.Fatalf("applied again: %+v", viewOf(second))
	}
}

func TestApplyTxnPicksTheBranch(t *testing.T) {
	keys := newKeyTree()
	applyOp(keys, 3, &op{kind: opPut, key: "k", value: "v"}, nil)
	applyOp(keys, 4, &op{kind: opPut, key: "k", value: "w"}, nil) // create 3, mod 4, version 2
	cases := []struct {
		c    compare
		want bool
	}{
		{compare{key: "k", target: cmpModIndex, op: cmpEqual, num: 4}, true},
		{compare{key: "k", target: cmpModIndex, op: cmpEqual, num: 3}, false},
		{compare{key: "k", target: cmpCreateIndex, op: cmpLess, num: 4}, true},
		{compare{key: "k", target: cmpVersion, op: cmpGreater, num: 1}, true},
		{compare{key: "k", target: cmpVersion, op: cmpNotEqual, num: 2}, false},
		{compare{key: "k", target: cmpValue, op: cmpEqual, value: "w"}, true},
		{compare{key: "k", target: cmpValue, op: cmpLess, value: "v"}, false},
		{compare{key: "k", target: cmpExists, op: cmpEqual, num: 1}, true},
		{compare{key: "nope", target: cmpExists, op: cmpEqual, num: 0}, true},
		{compare{key: "nope", target: cmpModIndex, op: cmpEqual, num: 0}, true},
		{compare{key: "nope", target: cmpValue, op: cmpEqual, value: ""}, true},
	}
	for _, tc := range cases {
		res := applyOp(keys, 10, &op{kind: opTxn, txn: &txn{
			compares: []compare{tc.c},
			success:  []op{{kind: opGet, key: "k"}},
			failure:  []op{{kind: opGet, key: "k"}, {kind: opGet, key: "nope"}},
		}}, nil)
		if res.succeeded != tc.want || (tc.want && len(res.ops) != 1) || (!tc.want && len(res.ops) != 2) {
			t.Errorf("%+v: succeeded %v with %d results, want %v", tc.c, res.succeeded, len(res.ops), tc.want)
		}
	}
	// All compares must hold; the ops of the branch see each other's writes.
	res := applyOp(keys, 11, &op{kind: opTxn, txn: &txn{
		compares: []compare{{key: "k", target: cmpExists, op: cmpEqual, num: 1}, {key: "k", target: cmpVersion, op: cmpEqual, num: 9}},
		failure:  []op{{kind: opPut, key: "k", value: "x"}, {kind: opGet, key: "k"}, {kind: opDelete, key: "k"}},
	}}, nil)
	if res.succeeded || res.ops[1].prev.value() != "x" || res.ops[1].prev.mod != 11 || res.ops[2].deleted != 1 || keys.Len() != 0 {
		t.Fatalf("failure branch: %+v", res)
	}
}

// A membership change that raft drops without a word (a new leader does,
// until it has applied its log) is proposed again under the same id; a
// repeat that raft refuses does not end the wait.
func TestMembershipChangeProposedAgain(t *testing.T) {
	proposeC := make(chan proposal, 4)
	s := newKVStore(zap.NewNop(), 1, 100, proposeC, nil, noPeers{}, newMembership(), 0)
	type answer struct {
		index uint64
		err   error
	}
	done := make(chan answer, 1)
	go func() {
		index, err := s.proposeChange(context.Background(), raftpb.ConfChangeRemoveNode, 2, "")
		done <- answer{index, err}
	}()
	next := func() proposal {
		t.Helper()
		select {
		case p := <-proposeC:
			return p
		case <-time.After(10 * time.Second):
			t.Fatal("no proposal")
		}
		return proposal{}
	}
	first := next()
	first.accepted() // and dropped: no apply ever answers it
	again := next()
	if again.cc.GetId() != first.cc.GetId() || again.cc.GetNodeId() != 2 {
		t.Fatalf("proposed again as %v; want the same change %v", again.cc, first.cc)
	}
	again.done(errors.New("refused")) // raft refused the repeat: keep waiting
	third := next()
	s.waits.trigger(third.cc.GetId(), result{index: 42})
	select {
	case a := <-done:
		if a.err != nil || a.index != 42 {
			t.Fatalf("change answered %d, %v; want index 42", a.index, a.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the change was never answered")
	}
}

// testItem is key's item with value and the given indexes and version.
func testItem(key, value string, create, mod, version uint64) *item {
	it := newItem(key, value)
	it.create, it.mod, it.version = create, mod, version
	return it
}
