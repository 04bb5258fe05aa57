package main

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Entry encoding: a normal raft entry holds one or more op records back to
// back, so the proposer can pack many client writes into one entry. A
// record is a kind byte, the request id (uvarint), then the kind's fields.
// Strings are a uvarint length and the bytes; numbers are uvarints.
//
//	put          key, value
//	delete       key
//	deletePrefix prefix
//	txn          compares, success ops, failure ops (each a count, then
//	             the items); an op inside a txn is a kind byte and its
//	             fields, with no request id, and is never a txn
//	get          key (only inside a txn)
//	memberAttrs  member id (a number), client URL: a member publishes
//	             where clients reach it (never inside a txn)
//
// A compare is key, target byte, operator byte, then a string for the
// value target or a number for the others (1/0 for exists).
//
// The kinds are part of the replicated log: a kind's number and fields
// never change once released. A binary that meets a kind it does not know
// must stop rather than skip it (see kvstore.apply): the members that know
// it would apply it and this one would silently diverge.
type opKind uint8

const (
	opPut          opKind = 1 // the record of the first release
	opDelete       opKind = 2
	opDeletePrefix opKind = 3
	opTxn          opKind = 4
	opGet          opKind = 5
	opMemberAttrs  opKind = 6
)

func (k opKind) String() string {
	switch k {
	case opPut:
		return "put"
	case opDelete:
		return "delete"
	case opDeletePrefix:
		return "delete-prefix"
	case opTxn:
		return "txn"
	case opGet:
		return "get"
	case opMemberAttrs:
		return "member-attrs"
	}
	return fmt.Sprintf("op(%d)", uint8(k))
}

// op is one decoded record: a change to apply, or a read inside a txn.
type op struct {
	kind  opKind
	reqID uint64 // 0 inside a txn
	key   string // the prefix for deletePrefix
	value string // memberAttrs: the client URL
	// it is a decoded put's item, its key and value there (key and value
	// point into it) and its indexes for apply to set; nil for an op not
	// decoded.
	it     *item
	member uint64 // memberAttrs: whose attributes
	txn    *txn
}

type txn struct {
	compares         []compare
	success, failure []op
}

// compare is a condition on one key, checked at apply time.
type compare struct {
	key    string
	target cmpTarget
	op     cmpOp
	num    uint64 // the operand of numeric targets and exists (1 or 0)
	value  string // the operand of cmpValue
}

type cmpTarget uint8

const (
	cmpModIndex    cmpTarget = 1
	cmpCreateIndex cmpTarget = 2
	cmpVersion     cmpTarget = 3
	cmpValue       cmpTarget = 4
	cmpExists      cmpTarget = 5
)

type cmpOp uint8

const (
	cmpEqual    cmpOp = 1
	cmpNotEqual cmpOp = 2
	cmpLess     cmpOp = 3
	cmpGreater  cmpOp = 4
)

// errUnknownOp marks a record of a kind this binary does not know.
var errUnknownOp = errors.New("unknown op kind")

// appendOp encodes o as a top-level record.
func appendOp(dst []byte, o *op) []byte {
	dst = append(dst, byte(o.kind))
	dst = binary.AppendUvarint(dst, o.reqID)
	return appendOpFields(dst, o)
}

func appendOpFields(dst []byte, o *op) []byte {
	switch o.kind {
	case opPut:
		dst = appendString(dst, o.key)
		dst = appendString(dst, o.value)
	case opDelete, opDeletePrefix, opGet:
		dst = appendString(dst, o.key)
	case opMemberAttrs:
		dst = binary.AppendUvarint(dst, o.member)
		dst = appendString(dst, o.value)
	case opTxn:
		dst = binary.AppendUvarint(dst, uint64(len(o.txn.compares)))
		for _, c := range o.txn.compares {
			dst = appendString(dst, c.key)
			dst = append(dst, byte(c.target), byte(c.op))
			if c.target == cmpValue {
				dst = appendString(dst, c.value)
			} else {
				dst = binary.AppendUvarint(dst, c.num)
			}
		}
		for _, branch := range [][]op{o.txn.success, o.txn.failure} {
			dst = binary.AppendUvarint(dst, uint64(len(branch)))
			for i := range branch {
				dst = append(dst, byte(branch[i].kind))
				dst = appendOpFields(dst, &branch[i])
			}
		}
	default:
		panic(fmt.Sprintf("appendOp: %v", o.kind))
	}
	return dst
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// decodeOps calls fn for each record in an entry's data. It decodes the
// whole entry before the first call, so a bad record anywhere means no op
// of the entry is applied.
func decodeOps(data []byte, fn func(*op)) error {
	_, err := decodeOpsWith(data, nil, fn)
	return err
}

// decodeOpsWith is decodeOps decoding into buf's array, which it returns
// (grown, and cleared) for the next call: the apply goroutine decodes every
// entry, and a slice of ops per entry was a tenth of what a replay
// allocates. fn must not keep the *op it is handed.
func decodeOpsWith(data []byte, buf []op, fn func(*op)) ([]op, error) {
	d := decoder{buf: data}
	ops := buf[:0]
	defer func() { clear(ops) }() // the array outlives the call: drop what it points to
	for len(d.buf) > 0 && d.err == nil {
		var o op
		o.kind = opKind(d.byte())
		o.reqID = d.uvarint()
		d.opFields(&o, true)
		ops = append(ops, o)
	}
	if d.err != nil {
		return ops, fmt.Errorf("record %d: %w", len(ops), d.err)
	}
	for i := range ops {
		fn(&ops[i])
	}
	return ops, nil
}

func (d *decoder) opFields(o *op, topLevel bool) {
	switch o.kind {
	case opPut:
		if o.it = d.pair(); o.it != nil {
			o.key, o.value = o.it.key(), o.it.value()
		}
	case opDelete, opDeletePrefix:
		o.key = d.bytes()
	case opGet:
		if topLevel {
			d.failWith(fmt.Errorf("%w: get outside a txn", errUnknownOp))
			return
		}
		o.key = d.bytes()
	case opMemberAttrs:
		if !topLevel {
			d.failWith(fmt.Errorf("%w: member attributes inside a txn", errUnknownOp))
			return
		}
		o.member = d.uvarint()
		o.value = d.bytes()
	case opTxn:
		if !topLevel {
			d.failWith(fmt.Errorf("%w: txn inside a txn", errUnknownOp))
			return
		}
		t := &txn{}
		for n := d.count(); n > 0 && d.err == nil; n-- {
			c := compare{key: d.bytes(), target: cmpTarget(d.byte()), op: cmpOp(d.byte())}
			if c.target < cmpModIndex || c.target > cmpExists || c.op < cmpEqual || c.op > cmpGreater {
				d.failWith(fmt.Errorf("%w: compare target %d operator %d", errUnknownOp, c.target, c.op))
				return
			}
			if c.target == cmpValue {
				c.value = d.bytes()
			} else {
				c.num = d.uvarint()
			}
			t.compares = append(t.compares, c)
		}
		for _, branch := range []*[]op{&t.success, &t.failure} {
			for n := d.count(); n > 0 && d.err == nil; n-- {
				sub := op{kind: opKind(d.byte())}
				d.opFields(&sub, false)
				*branch = append(*branch, sub)
			}
		}
		o.txn = t
	default:
		d.failWith(fmt.Errorf("%w %d", errUnknownOp, o.kind))
	}
}

// decoder reads uvarint-framed fields; the first error sticks.
type decoder struct {
	buf []byte
	err error
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.buf) == 0 {
		d.fail()
		return 0
	}
	b := d.buf[0]
	d.buf = d.buf[1:]
	return b
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

// count reads a number of items that follow; each takes at least one byte,
// so a count beyond the bytes left is corrupt (and must not size an
// allocation).
func (d *decoder) count() uint64 {
	n := d.uvarint()
	if n > uint64(len(d.buf)) {
		d.fail()
		return 0
	}
	return n
}

func (d *decoder) bytes() string {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.buf)) {
		d.fail()
		return ""
	}
	s := string(d.buf[:n])
	d.buf = d.buf[n:]
	return s
}

// pair reads a put's key and value into an item (item.go), its indexes
// zero: the one allocation the store keeps for the key.
func (d *decoder) pair() *item {
	n1 := d.uvarint()
	if d.err != nil || n1 > uint64(len(d.buf)) {
		d.fail()
		return nil
	}
	k := d.buf[:n1]
	d.buf = d.buf[n1:]
	n2 := d.uvarint()
	if d.err != nil || n2 > uint64(len(d.buf)) {
		d.fail()
		return nil
	}
	it, ok := allocItem(int(n1), int(n2))
	if !ok {
		d.fail()
		return nil
	}
	copy(it.buf()[copy(it.buf(), k):], d.buf[:n2])
	d.buf = d.buf[n2:]
	return it
}

func (d *decoder) fail() { d.failWith(errors.New("truncated record")) }

func (d *decoder) failWith(err error) {
	if d.err == nil {
		d.err = err
	}
}
