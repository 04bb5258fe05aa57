package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// A streamed snapshot file is one etcd's snap package reads as its own,
// checksum included, and damage to it is caught.
func TestSnapFileIsReadByEtcdSnap(t *testing.T) {
	keys := newKeyTree()
	keys.Put(testItem("a", "1", 3, 5, 2))
	keys.Put(testItem("big", strings.Repeat("v", 3*snapshotChunk+7), 6, 6, 1))
	for i := range 5000 {
		k := "k" + strings.Repeat("x", i%40)
		keys.Put(testItem(k+string(rune('a'+i%26))+string(rune(i)), strings.Repeat("y", i%300), uint64(i), uint64(i+1), 1))
	}
	st := &snapshotState{index: 1 << 40, members: map[uint64]string{1: "http://127.0.0.1:1", 2: "http://127.0.0.1:2"},
		removed: map[uint64]bool{3: true}, clients: map[uint64]string{1: "http://127.0.0.1:3"}, keys: keys}
	want := encodeSnapshot(st)
	if n := snapshotSize(st); n != int64(len(want)) {
		t.Fatalf("snapshotSize = %d, encoding has %d bytes", n, len(want))
	}
	var streamed bytes.Buffer
	if err := writeSnapshot(&streamed, st); err != nil || !bytes.Equal(streamed.Bytes(), want) {
		t.Fatalf("writeSnapshot differs from the encoding (err %v)", err)
	}

	md := &raftpb.SnapshotMetadata{Index: new(uint64(1 << 40)), Term: new(uint64(7)), ConfState: &raftpb.ConfState{Voters: []uint64{1, 2}, Learners: []uint64{4}}}
	path := filepath.Join(t.TempDir(), "0000000000000007-0000010000000000.snap")
	body := snapshotBody{size: snapshotSize(st), write: func(w io.Writer) error { return writeSnapshot(w, st) }}
	if err := writeSnapFile(path, md, body); err != nil {
		t.Fatal(err)
	}
	got, err := snap.Read(zap.NewNop(), path)
	if err != nil {
		t.Fatalf("etcd's snap.Read: %v", err)
	}
	if !bytes.Equal(got.GetData(), want) || !proto.Equal(got.GetMetadata(), md) {
		t.Fatalf("read back metadata %v and %d bytes of data; want %v and %d", got.GetMetadata(), len(got.GetData()), md, len(want))
	}

	// Our streaming reader finds the same, in this file and in one that
	// etcd's SaveSnap wrote (crc first: the files of earlier releases).
	etcdDir := t.TempDir()
	if err := snap.New(zap.NewNop(), etcdDir).SaveSnap(&raftpb.Snapshot{Data: want, Metadata: md}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, filepath.Join(etcdDir, filepath.Base(path))} {
		l, err := readSnapFile(p)
		if err != nil {
			t.Fatalf("readSnapFile(%s): %v", p, err)
		}
		if !proto.Equal(l.md, md) || l.dataLen != int64(len(want)) {
			t.Fatalf("%s: metadata %v, %d bytes of state", p, l.md, l.dataLen)
		}
		back, err := l.read()
		if err != nil {
			t.Fatal(err)
		}
		if back.index != st.index || back.keys.Len() != st.keys.Len() || !bytes.Equal(encodeSnapshot(back), want) {
			t.Fatalf("%s: the state read back differs", p)
		}
	}

	// Any flipped byte is refused, by etcd's reader and by ours (by the
	// checksum, or by the framing); so is a cut file.
	b, _ := os.ReadFile(path)
	for _, off := range []int{0, 3, 9, len(b) / 2, len(b) - 20, len(b) - 5, len(b) - 2, len(b) - 1} {
		bad := bytes.Clone(b)
		bad[off] ^= 0x40
		p := path + ".bad"
		if err := os.WriteFile(p, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		// (etcd's reader takes the crc as a uint32 and drops what a flip
		// sets beyond 32 bits in the last byte of its varint; ours does not.)
		if _, err := snap.Read(zap.NewNop(), p); err == nil && off != len(b)-1 {
			t.Errorf("a flipped byte at %d of %d went unnoticed by snap.Read", off, len(b))
		}
		if _, err := readSnapFile(p); err == nil {
			t.Errorf("a flipped byte at %d of %d went unnoticed by readSnapFile", off, len(b))
		}
	}
	for _, n := range []int{0, 1, len(b) / 2, len(b) - 1} {
		p := path + ".cut"
		if err := os.WriteFile(p, b[:n], 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := readSnapFile(p); err == nil {
			t.Errorf("a file cut to %d of %d bytes was accepted", n, len(b))
		}
	}
}

// A body that writes other than the size it announced, or fails, leaves
// no file behind.
func TestSnapFileBadBodyLeavesNoFile(t *testing.T) {
	md := &raftpb.SnapshotMetadata{Index: new(uint64(5)), Term: new(uint64(1)), ConfState: &raftpb.ConfState{Voters: []uint64{1}}}
	dir := t.TempDir()
	for name, body := range map[string]snapshotBody{
		"short": {size: 10, write: func(w io.Writer) error { _, err := w.Write([]byte("12345")); return err }},
		"long":  {size: 2, write: func(w io.Writer) error { _, err := w.Write([]byte("12345")); return err }},
		"fails": {size: 5, write: func(io.Writer) error { return errors.New("boom") }},
	} {
		path := filepath.Join(dir, name+".snap")
		if err := writeSnapFile(path, md, body); err == nil {
			t.Errorf("%s: no error", name)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: the partial file is left: %v", name, err)
		}
	}
	// The in-memory body (a snapshot from the leader) round-trips.
	path := filepath.Join(dir, "ok.snap")
	if err := writeSnapFile(path, md, bytesBody([]byte("leader's state"))); err != nil {
		t.Fatal(err)
	}
	if got, err := snap.Read(zap.NewNop(), path); err != nil || string(got.GetData()) != "leader's state" {
		t.Fatalf("read back %v, %v", got, err)
	}
}

// A snapshot file is written back to the disk as it is written, a
// snapWriteBackEvery at a time, not all at the final fsync.
func TestPacedWriterWritesBackAsItGoes(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "paced"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := &pacedWriter{f: f}
	chunk := make([]byte, 300<<10)
	for range 12 { // 3.5 MiB
		if _, err := p.Write(chunk); err != nil {
			t.Fatal(err)
		}
		if p.written-p.synced >= snapWriteBackEvery {
			t.Fatalf("%d bytes written, only %d written back", p.written, p.synced)
		}
	}
	if p.synced < 3*snapWriteBackEvery-int64(len(chunk)) || p.written != 12*int64(len(chunk)) {
		t.Fatalf("written %d, written back %d", p.written, p.synced)
	}
}
