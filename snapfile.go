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
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
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
// lengths come first from the state machine's exact size. etcd's snap.Read
// reads these files as it reads its own, and so does a Snapshotter that
// falls back past a damaged one.

var snapCRCTable = crc32.MakeTable(crc32.Castagnoli)

// errSnapZeroCRC: a snapshot whose checksum happens to be 0 (one in 2^32),
// which etcd's format reads as an empty file. Our own snapshot is skipped
// (the next one differs); one from the leader stops the member, which
// gets it again after the leader's next snapshot.
var errSnapZeroCRC = errors.New("write snapshot file: its checksum is 0, which the format reads as an empty file")

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

// snapWriteBackEvery is how much of a snapshot file may be written and not
// yet on its way to the disk. A snapshot rewrites the whole store; left to
// the page cache, its final fsync pushes all of it at once (25 MB at 100k
// keys, 270 MB at 1M), and every WAL fsync in the meantime (each
// acknowledged write waits for one) queues behind it. Written back as it
// goes, a WAL fsync waits for at most this much.
const snapWriteBackEvery = 1 << 20

// pacedWriter writes to f and writes each snapWriteBackEvery bytes back
// to the disk before it takes more.
type pacedWriter struct {
	f               *os.File
	written, synced int64
}

func (p *pacedWriter) Write(b []byte) (int, error) {
	n, err := p.f.Write(b)
	p.written += int64(n)
	if p.written-p.synced >= snapWriteBackEvery {
		writeBack(p.f, p.synced, p.written-p.synced)
		p.synced = p.written
	}
	return n, err
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
	bw := bufio.NewWriterSize(&pacedWriter{f: f}, 256<<10)
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
		return errSnapZeroCRC
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

// snapFileLayout says where a checked snapshot file keeps its state.
type snapFileLayout struct {
	path             string
	md               *raftpb.SnapshotMetadata
	dataOff, dataLen int64 // the state machine's encoding: this many bytes from this offset
	// decoded delivers the state that prefetch decodes; nil without one.
	// Set before the raft node's goroutines start, taken by the apply
	// goroutine (read) or, when the start fails, by abandon.
	decoded chan decodedState
}

// open returns a reader of the file's state and a function to close it.
func (l *snapFileLayout) open() (io.Reader, func() error, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, nil, fmt.Errorf("open snapshot file: %w", err)
	}
	return io.NewSectionReader(f, l.dataOff, l.dataLen), f.Close, nil
}

// snapReader reads a snapshot file's bytes, counting them and hashing
// those inside the snappb data field.
type snapReader struct {
	r    *bufio.Reader
	off  int64
	hash bool
	crc  uint32
}

func (s *snapReader) ReadByte() (byte, error) {
	b, err := s.r.ReadByte()
	if err == nil {
		s.off++
		if s.hash {
			s.crc = crc32.Update(s.crc, snapCRCTable, []byte{b})
		}
	}
	return b, err
}

// skip reads n bytes (hashing them, if hashing) without keeping them.
func (s *snapReader) skip(n int64) error {
	for n > 0 {
		b, err := s.r.Peek(int(min(n, int64(s.r.Size()))))
		if len(b) == 0 {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if s.hash {
			s.crc = crc32.Update(s.crc, snapCRCTable, b)
		}
		s.r.Discard(len(b))
		s.off += int64(len(b))
		n -= int64(len(b))
	}
	return nil
}

// bytesField reads a length-delimited field's length, at most max.
func (s *snapReader) bytesField(max int64) (int64, error) {
	n, err := binary.ReadUvarint(s)
	if err != nil {
		return 0, io.ErrUnexpectedEOF
	}
	if n > uint64(max) {
		return 0, fmt.Errorf("a field of %d bytes where %d are left", n, max)
	}
	return int64(n), nil
}

// readSnapFile checks a snapshot file as etcd's snap.Read does (framing,
// then the checksum of the snappb data field), reading it as a stream, and
// says where its state is. It holds none of the state in memory: a
// snapshot of any size is checked with a read buffer.
func readSnapFile(path string) (*snapFileLayout, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	if size == 0 {
		return nil, snap.ErrEmptySnapshot
	}
	s := &snapReader{r: bufio.NewReaderSize(f, 1<<20)}
	l := &snapFileLayout{path: path, dataOff: -1}
	var crc uint64
	haveCRC, haveInner := false, false
	for {
		tag, err := binary.ReadUvarint(s)
		if errors.Is(err, io.EOF) && s.off == size {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("snapshot file framing at byte %d: %w", s.off, io.ErrUnexpectedEOF)
		}
		switch tag {
		case tagSnappbCRC:
			if crc, err = binary.ReadUvarint(s); err != nil || crc > 1<<32-1 {
				return nil, fmt.Errorf("snapshot file framing: bad crc field at byte %d", s.off)
			}
			haveCRC = true
		case tagSnappbData:
			n, err := s.bytesField(size - s.off)
			if err != nil {
				return nil, fmt.Errorf("snapshot file framing: %w", err)
			}
			if err := l.readInner(s, n); err != nil {
				return nil, fmt.Errorf("snapshot file framing: %w", err)
			}
			haveInner = true
		default:
			return nil, fmt.Errorf("snapshot file framing: unexpected field tag %d at byte %d", tag, s.off)
		}
	}
	if !haveInner || !haveCRC || crc == 0 {
		return nil, snap.ErrEmptySnapshot
	}
	if uint32(crc) != s.crc {
		return nil, snap.ErrCRCMismatch
	}
	if l.md == nil || l.dataOff < 0 {
		return nil, errors.New("snapshot file holds no metadata or no data")
	}
	return l, nil
}

// readInner reads the n bytes of a marshalled raftpb.Snapshot, hashing
// them: the metadata it keeps, the data it only locates.
func (l *snapFileLayout) readInner(s *snapReader, n int64) error {
	s.hash = true
	defer func() { s.hash = false }()
	end := s.off + n
	for s.off < end {
		tag, err := binary.ReadUvarint(s)
		if err != nil {
			return io.ErrUnexpectedEOF
		}
		m, err := s.bytesField(end - s.off)
		if err != nil {
			return err
		}
		switch tag {
		case tagRaftpbData:
			l.dataOff, l.dataLen = s.off, m
			if err := s.skip(m); err != nil {
				return err
			}
		case tagRaftpbMetadata:
			b := make([]byte, m)
			for i := range b {
				if b[i], err = s.ReadByte(); err != nil {
					return io.ErrUnexpectedEOF
				}
			}
			md := &raftpb.SnapshotMetadata{}
			if err := proto.Unmarshal(b, md); err != nil {
				return fmt.Errorf("snapshot metadata: %w", err)
			}
			l.md = md
		default:
			return fmt.Errorf("unexpected field tag %d in the snapshot at byte %d", tag, s.off)
		}
	}
	if s.off != end {
		return errors.New("the snapshot runs past its length")
	}
	return nil
}

// index is the snapshot's raft index; 0 for none.
func (l *snapFileLayout) index() uint64 {
	if l == nil {
		return 0
	}
	return l.md.GetIndex()
}

// prefetch starts decoding the file's state in the background; read
// returns it. A caller that will not read it calls abandon.
func (l *snapFileLayout) prefetch() {
	ch := make(chan decodedState, 1)
	l.decoded = ch
	go func() {
		st, err := l.decode()
		ch <- decodedState{st, err}
	}()
}

// abandon waits for a prefetch that nobody will read to end. A no-op on
// nil.
func (l *snapFileLayout) abandon() {
	if l != nil && l.decoded != nil {
		<-l.decoded
		l.decoded = nil
	}
}

type decodedState struct {
	st  *snapshotState
	err error
}

// read returns the file's state: what prefetch decoded, or decoded now.
func (l *snapFileLayout) read() (*snapshotState, error) {
	if l.decoded != nil {
		d := <-l.decoded
		l.decoded = nil
		return d.st, d.err
	}
	return l.decode()
}

// decode reads the file's state as a stream.
func (l *snapFileLayout) decode() (*snapshotState, error) {
	r, closeFile, err := l.open()
	if err != nil {
		return nil, err
	}
	defer closeFile()
	st, err := readSnapshot(r, l.dataLen)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l.path, err)
	}
	return st, nil
}
