package main

import (
	"math"
	"unsafe"
)

// item is one key in the store: its indexes, and after them, in the same
// allocation, the key's bytes and then the value's. Items are never changed
// once in the tree: trees cloned for a snapshot share them. An item is only ever
// handled by pointer (*item); a copy of the struct would hold the header
// without the bytes.
//
// One allocation, not two: an item of a string and its indexes was a
// 48-byte object beside its key-and-value string, and a 16-byte key with a
// 256-byte value took 48 + 288 bytes (the 288-byte size class); header and
// bytes together take 320. Per key that is 16 bytes and one object fewer
// for the store to allocate and the collector to mark: the mid-load
// resident memory the 1M-key goal bounds, a snapshot's restore and a
// replay's apply all pay per object (docs/performance.md, "Large data").
//
// The bytes are a []uint64's, so the item is 8-byte aligned as its header
// needs, and the collector does not scan it (there is no pointer in it).
// key and value are strings into those bytes: they keep the allocation
// alive, like any pointer into it. The bytes are written once, by
// allocItem's caller before the item is shared, and never after; the
// header's indexes are set by apply before any reader can see the item
// (kvstore.go, applyOne).
type item struct {
	// Neither takes room (they come first, not last). noCopy makes go
	// vet report a copy of an item; the func array makes comparing two
	// items, which would compare their headers only, a compile error.
	_       noCopy
	_       [0]func()
	create  uint64 // raft index of the put that created the key
	mod     uint64 // raft index of its last put
	version uint64 // puts since it was created: 1 after the first
	klen    uint32 // the key's length (keys are at most 1 MiB, --max-key-bytes)
	vlen    uint32 // the value's (allocItem refuses more than 4 GiB)
	// klen bytes of key, then vlen bytes of value, follow
}

const itemHeader = int(unsafe.Sizeof(item{}))

// allocItem allocates an item for a key of klen bytes and a value of vlen,
// its indexes zero and its bytes to be written through buf before it is
// shared. ok is false (and it nil) for lengths an item cannot hold.
func allocItem(klen, vlen int) (it *item, ok bool) {
	if klen < 0 || vlen < 0 || uint64(klen) > math.MaxUint32 || uint64(vlen) > math.MaxUint32 {
		return nil, false
	}
	words := make([]uint64, (itemHeader+klen+vlen+7)/8)
	it = (*item)(unsafe.Pointer(unsafe.SliceData(words)))
	it.klen, it.vlen = uint32(klen), uint32(vlen)
	return it, true
}

// newItem returns an item holding key and value, its indexes zero.
func newItem(key, value string) *item {
	it, ok := allocItem(len(key), len(value))
	if !ok {
		panic("newItem: a key or value over 4 GiB") // the API's limits are far below
	}
	b := it.buf()
	copy(b[copy(b, key):], value)
	return it
}

// buf is the item's key and value bytes, for allocItem's caller to fill.
func (it *item) buf() []byte {
	if it.size() == 0 {
		return nil // no pointer past the allocation's end
	}
	return unsafe.Slice(it.at(0), it.size())
}

func (it *item) key() string {
	if it.klen == 0 {
		return ""
	}
	return unsafe.String(it.at(0), int(it.klen))
}

func (it *item) value() string {
	if it.vlen == 0 {
		return "" // header+klen may be the allocation's end
	}
	return unsafe.String(it.at(int(it.klen)), int(it.vlen))
}

// at is the address of the item's byte off after its header; the callers
// keep off within the allocation.
func (it *item) at(off int) *byte {
	return (*byte)(unsafe.Add(unsafe.Pointer(it), itemHeader+off))
}

// size is the key's and the value's bytes together.
func (it *item) size() int { return int(it.klen) + int(it.vlen) }

// noCopy is what go vet's copylocks check looks for: a value with Lock
// and Unlock methods must not be copied.
type noCopy struct{}

func (*noCopy) Lock()   {}
func (*noCopy) Unlock() {}
