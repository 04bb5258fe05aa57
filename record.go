package main

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Entry encoding: a normal raft entry holds one or more op records back to
// back, so the proposer can pack many client writes into one entry. A record
// is: op byte, request id (uvarint), key length (uvarint), key, value length
// (uvarint), value.
const opPut byte = 1

func appendPutRecord(dst []byte, reqID uint64, key, value string) []byte {
	dst = append(dst, opPut)
	dst = binary.AppendUvarint(dst, reqID)
	dst = binary.AppendUvarint(dst, uint64(len(key)))
	dst = append(dst, key...)
	dst = binary.AppendUvarint(dst, uint64(len(value)))
	return append(dst, value...)
}

// decodeRecords calls fn for each op record in an entry's data.
func decodeRecords(data []byte, fn func(op byte, reqID uint64, key, value string)) error {
	d := decoder{buf: data}
	for len(d.buf) > 0 {
		op := d.byte()
		if op != opPut {
			return fmt.Errorf("unknown op %d", op)
		}
		reqID := d.uvarint()
		key := d.bytes()
		value := d.bytes()
		if d.err != nil {
			return d.err
		}
		fn(op, reqID, key, value)
	}
	return nil
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

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errors.New("truncated record")
	}
}
