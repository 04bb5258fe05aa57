package main

import (
	"encoding/binary"
	"strings"

	"github.com/google/btree"
)

// keyTree is the store's ordered key space: a B-tree of items by key.
// Clone is O(1) and copy-on-write, so a snapshot takes no copy of the data
// on apply. The zero keyTree is not usable: newKeyTree makes one. Not safe
// for concurrent use (kvstore.mu guards the live tree; a clone is only
// read).
//
// A tree slot holds the key's first 16 bytes beside the item's pointer.
// A lookup compares a key with some two dozen others on its way down;
// comparing keys through the items cost two cache misses each (the item,
// then the key's bytes), and on a 1M-key store that was most of an
// insert: a restart replaying a long log spent ~45 % of its CPU there
// (perf). Keys that differ in their first 16 bytes now compare within the
// slot: BenchmarkApply's put went from 3.1 to 0.85 µs, and a 1M-key
// restart after kill -9 from 3.5 to 2.1 s (docs/performance.md, "Large
// data"). The
// price is 16 bytes a slot, in nodes that are partly empty when grown by
// random inserts: 23-37 MiB while loading 1M keys, ~10 MiB once restored
// from a snapshot (putSorted).
type keyTree struct {
	t *btree.BTreeG[keySlot]
}

// keySlot is one key's place in the tree. hi and lo are the key's first 16
// bytes, big-endian, zero-padded: if they differ between two keys, they
// order the keys as the keys do (a key that is a prefix of the other is
// padded with zeros, which sort first); if they are equal, the keys are
// compared whole.
type keySlot struct {
	hi, lo uint64
	it     *item
}

func slotLess(a, b keySlot) bool {
	if a.hi != b.hi {
		return a.hi < b.hi
	}
	if a.lo != b.lo {
		return a.lo < b.lo
	}
	return a.it.key() < b.it.key()
}

// slotFor returns the slot of it (or, for a lookup, of a key).
func slotFor(it *item) keySlot {
	var b [16]byte
	copy(b[:], it.key())
	return keySlot{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:]), it: it}
}

func newKeyTree() keyTree { return keyTree{btree.NewG(32, slotLess)} }

func (k keyTree) Len() int       { return k.t.Len() }
func (k keyTree) Clone() keyTree { return keyTree{k.t.Clone()} }
func (k keyTree) Get(key string) *item {
	s, _ := k.t.Get(slotFor(probe(key)))
	return s.it
}

// Put puts it in the tree and returns the item it replaced (nil if its
// key was absent).
func (k keyTree) Put(it *item) (prev *item) {
	s, _ := k.t.ReplaceOrInsert(slotFor(it))
	return s.it
}

// putSorted puts items, which are in increasing key order and not in the
// tree, into it. It puts them last first: a node that splits keeps its
// first half, and in ascending order every node is left behind half full
// in an array sized for a full one, while in descending order the nodes
// left behind are the split-off halves, in arrays of their size. Built
// from 1M keys (a micro-benchmark), key slots put in descending order take
// 8 MB more than pointer slots put in ascending order (the build before),
// where in ascending order they took 31 MB more.
func (k keyTree) putSorted(items []*item) {
	for i := len(items) - 1; i >= 0; i-- {
		k.t.ReplaceOrInsert(slotFor(items[i]))
	}
}

// Delete removes key and returns its item (nil if it was absent).
func (k keyTree) Delete(key string) *item {
	s, _ := k.t.Delete(slotFor(probe(key)))
	return s.it
}

// Ascend calls fn for every item in key order until fn returns false.
func (k keyTree) Ascend(fn func(*item) bool) {
	k.t.Ascend(func(s keySlot) bool { return fn(s.it) })
}

// AscendFrom calls fn for the items whose keys are at least start, in key
// order, until fn returns false.
func (k keyTree) AscendFrom(start string, fn func(*item) bool) {
	k.t.AscendGreaterOrEqual(slotFor(probe(start)), func(s keySlot) bool { return fn(s.it) })
}

// ascendPrefix calls fn for the keys that start with prefix and sort after
// after (all of them if after is empty), in order, until fn returns false.
func ascendPrefix(keys keyTree, prefix, after string, fn func(*item) bool) {
	start := prefix
	if after != "" && after >= prefix {
		start = after + "\x00" // the least key greater than after
	}
	keys.AscendFrom(start, func(it *item) bool {
		return strings.HasPrefix(it.key(), prefix) && fn(it)
	})
}
