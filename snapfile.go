package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Snapshot files are etcd's (package snap): a snappb.Snapshot message whose
// data field holds a marshalled raftpb.Snapshot and whose crc field is the
// Castagnoli CRC-32 of those bytes. etcd's SaveSnap builds that in memory:
// the state, then a copy inside raftpb.Snapshot, then another inside
// snappb.Snapshot, three times the state at once for a file written once.
// writeSnapFile streams it instead. Protobuf lets fields come in any order,
// so the crc goes last, once the body has passed through the hash, and the
// lengths come first from the state machine's exact size. snap.Read (used
// at start, and to send a snapshot to a follower) reads these files as it
// reads etcd's own, and so does a Snapshotter that falls back past a
// damaged one.

var snapCRCTable = crc32.MakeTable(crc32.Castagnoli)

// Protobuf field tags: (field number << 3) | wire type.
const (
	tagSnappbCRC      = 1<<3 | 0 // snappb.Snapshot.crc, varint
	tagSnappbData     = 2<<3 | 2 // snappb.Snapshot.data, bytes
	tagRaftpbData     = 1<<3 | 2 // raftpb.Snapshot.data, bytes
	tagRaftpbMetadata = 2<<3 | 2 // raftpb.Snapshot.metadata, message
)

// snapshotBody is a snapshot's state as the state machine encodes it:
// size bytes, produced on demand by write.
type snapshotBody struct {
	size  int64
	write func(io.Writer) error
}

// bytesBody is a snapshot body already in memory (one sent by the leader).
func bytesBody(data []byte) snapshotBody {
	return snapshotBody{size: int64(len(data)), write: func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	}}
}

// crcWriter passes writes on to w, hashing them and counting them.
type crcWriter struct {
	w   io.Writer
	crc uint32
	n   int64
}

func (c *crcWriter) Write(p []byte) (int, error) {
	c.crc = crc32.Update(c.crc, snapCRCTable, p)
	c.n += int64(len(p))
	return c.w.Write(p)
}

// writeSnapFile writes the snapshot file at path for md and body and
// fsyncs it. The caller makes its name durable (fsyncs the directory). On
// failure the partial file is removed.
func writeSnapFile(path string, md *raftpb.SnapshotMetadata, body snapshotBody) (err error) {
	meta, err := proto.Marshal(md)
	if err != nil {
		return fmt.Errorf("marshal snapshot metadata: %w", err)
	}
	inner := 1 + uvarintLen(uint64(body.size)) + body.size + 1 + uvarintLen(uint64(len(meta))) + int64(len(meta))

	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o666)
	if err != nil {
		return fmt.Errorf("create snapshot file: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close snapshot file: %w", cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	bw := bufio.NewWriterSize(f, 256<<10)
	var head []byte
	head = binary.AppendUvarint(append(head, tagSnappbData), uint64(inner))
	if _, err := bw.Write(head); err != nil {
		return fmt.Errorf("write snapshot file: %w", err)
	}
	cw := &crcWriter{w: bw}
	if _, err := cw.Write(binary.AppendUvarint([]byte{tagRaftpbData}, uint64(body.size))); err != nil {
		return fmt.Errorf("write snapshot file: %w", err)
	}
	if err := body.write(cw); err != nil {
		return fmt.Errorf("write snapshot file: %w", err)
	}
	if got := cw.n - 1 - uvarintLen(uint64(body.size)); got != body.size {
		return fmt.Errorf("write snapshot file: the state encoded to %d bytes, not the %d it was sized at", got, body.size)
	}
	if _, err := cw.Write(append(binary.AppendUvarint([]byte{tagRaftpbMetadata}, uint64(len(meta))), meta...)); err != nil {
		return fmt.Errorf("write snapshot file: %w", err)
	}
	if cw.crc == 0 {
		// snap.Read takes a zero crc for an empty file; one in 2^32.
		return errors.New("write snapshot file: its checksum is 0, which etcd's reader refuses; the next snapshot will differ")
	}
	if _, err := bw.Write(binary.AppendUvarint([]byte{tagSnappbCRC}, uint64(cw.crc))); err != nil {
		return fmt.Errorf("write snapshot file: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write snapshot file: %w", err)
	}
	if err := fileutil.Fsync(f); err != nil {
		return fmt.Errorf("sync snapshot file: %w", err)
	}
	return nil
}
