package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"math/bits"
	"slices"
	"strings"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// Snapshot encoding, versioned by its first four bytes. RKV3 (written
// now): the index, the members (id, peer URL) and removed ids in id order,
// the published client URLs (id, URL) in id order, then the keys in key
// order, each with its value, create and mod index and version. Older
// versions are still read: RKV2 has no client URLs; RKV1 (the first
// release) has no client URLs and no key metadata, so its keys get
// create = mod = the snapshot's index and version 1.
var (
	snapshotMagicV1 = []byte("RKV1")
	snapshotMagicV2 = []byte("RKV2")
	snapshotMagic   = []byte("RKV3")
)

// snapshotState is the whole state machine at one index. keys may be a
// clone of the live tree: it is only read.
type snapshotState struct {
	index   uint64
	members map[uint64]string
	removed map[uint64]bool
	clients map[uint64]string // client URLs
	keys    keyTree
}

// snapshotSize is the exact length of st's encoding, so that a snapshot
// file's length prefixes can be written before its body is streamed.
func snapshotSize(st *snapshotState) int64 {
	n := int64(len(snapshotMagic)) + uvarintLen(st.index) + uvarintLen(uint64(len(st.members)))
	for id, u := range st.members {
		n += uvarintLen(id) + stringLen(u)
	}
	n += uvarintLen(uint64(len(st.removed)))
	for id := range st.removed {
		n += uvarintLen(id)
	}
	n += uvarintLen(uint64(len(st.clients)))
	for id, u := range st.clients {
		n += uvarintLen(id) + stringLen(u)
	}
	n += uvarintLen(uint64(st.keys.Len()))
	st.keys.Ascend(func(it *item) bool {
		n += stringLen(it.key()) + stringLen(it.value()) + uvarintLen(it.create) + uvarintLen(it.mod) + uvarintLen(it.version)
		return true
	})
	return n
}

func uvarintLen(v uint64) int64 { return int64(bits.Len64(v|1)+6) / 7 }
func stringLen(s string) int64  { return uvarintLen(uint64(len(s))) + int64(len(s)) }

// snapshotChunk is how much of an encoding writeSnapshot builds before it
// hands it to w: large enough that the writes are few, small enough that a
// snapshot of any size costs the encoder no more memory than this.
const snapshotChunk = 64 << 10

// writeSnapshot streams st's encoding to w (snapshotSize bytes).
func writeSnapshot(w io.Writer, st *snapshotState) error {
	b := make([]byte, 0, snapshotChunk+1024)
	var err error
	flush := func(force bool) {
		if err == nil && (force || len(b) >= snapshotChunk) {
			_, err = w.Write(b)
			b = b[:0]
		}
	}
	b = append(b, snapshotMagic...)
	b = binary.AppendUvarint(b, st.index)
	b = binary.AppendUvarint(b, uint64(len(st.members)))
	for _, id := range slices.Sorted(maps.Keys(st.members)) {
		b = binary.AppendUvarint(b, id)
		b = appendString(b, st.members[id])
		flush(false)
	}
	b = binary.AppendUvarint(b, uint64(len(st.removed)))
	for _, id := range slices.Sorted(maps.Keys(st.removed)) {
		b = binary.AppendUvarint(b, id)
		flush(false)
	}
	b = binary.AppendUvarint(b, uint64(len(st.clients)))
	for _, id := range slices.Sorted(maps.Keys(st.clients)) {
		b = binary.AppendUvarint(b, id)
		b = appendString(b, st.clients[id])
		flush(false)
	}
	b = binary.AppendUvarint(b, uint64(st.keys.Len()))
	st.keys.Ascend(func(it *item) bool {
		if it.size() > snapshotChunk {
			// A large value goes straight to w rather than through b.
			flush(true)
			b = appendString(b, it.key())
			b = binary.AppendUvarint(b, uint64(len(it.value())))
			flush(true)
			if err == nil {
				_, err = io.WriteString(w, it.value())
			}
		} else {
			b = appendString(b, it.key())
			b = appendString(b, it.value())
		}
		b = binary.AppendUvarint(b, it.create)
		b = binary.AppendUvarint(b, it.mod)
		b = binary.AppendUvarint(b, it.version)
		flush(false)
		return err == nil
	})
	flush(true)
	return err
}

// encodeSnapshot returns st's encoding whole (tests and fuzzing; the
// member streams it to the snapshot file with writeSnapshot).
func encodeSnapshot(st *snapshotState) []byte {
	var buf bytes.Buffer
	buf.Grow(int(snapshotSize(st)))
	_ = writeSnapshot(&buf, st) // a bytes.Buffer does not fail
	return buf.Bytes()
}

func decodeSnapshot(data []byte) (*snapshotState, error) {
	return readSnapshot(bytes.NewReader(data), int64(len(data)))
}

// readSnapshot decodes a snapshot of size bytes from r as a stream: what it
// holds in memory is the state it builds, plus a read buffer.
func readSnapshot(r io.Reader, size int64) (*snapshotState, error) {
	d := &snapDecoder{r: bufio.NewReaderSize(r, 1<<20), left: size}
	magic := d.fixed(len(snapshotMagic))
	v1, v2 := magic == string(snapshotMagicV1), magic == string(snapshotMagicV2)
	if !v1 && !v2 && magic != string(snapshotMagic) {
		return nil, errors.New("not a snapshot of this program (bad magic)")
	}
	st := &snapshotState{index: d.uvarint(), members: map[uint64]string{}, removed: map[uint64]bool{}, clients: map[uint64]string{}, keys: newKeyTree()}
	for n := d.count(); n > 0 && d.err == nil; n-- {
		id := d.uvarint()
		st.members[id] = d.string()
	}
	for n := d.count(); n > 0 && d.err == nil; n-- {
		st.removed[d.uvarint()] = true
	}
	if !v1 && !v2 {
		for n := d.count(); n > 0 && d.err == nil; n-- {
			id, u := d.uvarint(), d.string()
			if _, ok := st.members[id]; !ok && d.err == nil {
				d.failWith(fmt.Errorf("client URL of %d, which is not a member", id))
			}
			st.clients[id] = u
		}
	}
	n := d.count()
	sorted := make([]*item, 0, min(n, uint64(d.left)/5)) // v2 on: in key order; an item takes at least 5 bytes
	for ; n > 0 && d.err == nil; n-- {
		it := d.pair()
		if it == nil {
			break // d.err says why
		}
		it.create, it.mod, it.version = st.index, st.index, 1
		if v1 { // its keys are in no order
			if d.err == nil {
				st.keys.Put(it)
			}
			continue
		}
		it.create, it.mod, it.version = d.uvarint(), d.uvarint(), d.uvarint()
		if len(sorted) > 0 && it.key() <= sorted[len(sorted)-1].key() {
			d.failWith(fmt.Errorf("keys out of order at %q", it.key()))
		}
		if d.err == nil {
			sorted = append(sorted, it)
		}
	}
	if d.err == nil {
		st.keys.putSorted(sorted)
	}
	if d.err == nil && d.left != 0 {
		d.err = errors.New("trailing bytes")
	}
	if d.err != nil {
		return nil, fmt.Errorf("decode snapshot: %w", d.err)
	}
	return st, nil
}

// snapDecoder reads a snapshot's fields from a stream of left bytes; the
// first error sticks and every later read returns zero values.
type snapDecoder struct {
	r    *bufio.Reader
	left int64 // bytes of the snapshot not read yet
	err  error
	// scratch holds a key while its value's length is read (pair).
	scratch []byte
}

func (d *snapDecoder) failWith(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *snapDecoder) truncated() { d.failWith(errors.New("truncated snapshot")) }

func (d *snapDecoder) ReadByte() (byte, error) {
	if d.left <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	b, err := d.r.ReadByte()
	if err == nil {
		d.left--
	}
	return b, err
}

func (d *snapDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, err := binary.ReadUvarint(d)
	if err != nil {
		d.truncated()
		return 0
	}
	return v
}

// count reads a number of elements, each at least a byte long.
func (d *snapDecoder) count() uint64 {
	n := d.uvarint()
	if n > uint64(d.left) {
		d.truncated()
		return 0
	}
	return n
}

func (d *snapDecoder) string() string { return d.fixed(int(min(d.count(), uint64(d.left)))) }

// pair reads a key and its value into an item (item.go), its indexes
// zero: one allocation per key, the one the store keeps.
func (d *snapDecoder) pair() *item {
	n1 := int(min(d.count(), uint64(d.left)))
	if d.err == nil && uint64(n1) > math.MaxUint32 {
		d.failWith(fmt.Errorf("a key of %d bytes", n1))
	}
	if d.err != nil {
		return nil
	}
	// The key waits in scratch while its value's length is read.
	d.scratch = d.scratch[:0]
	if !d.readTo(n1, func(b []byte) { d.scratch = append(d.scratch, b...) }) {
		return nil
	}
	n2 := int(min(d.count(), uint64(d.left)))
	if d.err == nil && uint64(n2) > math.MaxUint32 {
		d.failWith(fmt.Errorf("a value of %d bytes", n2))
	}
	if d.err != nil || int64(n2) > d.left {
		d.truncated()
		return nil
	}
	it, _ := allocItem(n1, n2) // both lengths checked above
	rest := it.buf()[copy(it.buf(), d.scratch):]
	if !d.readTo(n2, func(b []byte) { rest = rest[copy(rest, b):] }) {
		return nil
	}
	return it
}

// fixed reads n bytes as a string: one allocation, whatever its length.
func (d *snapDecoder) fixed(n int) string {
	if d.err != nil {
		return ""
	}
	if int64(n) > d.left {
		d.truncated()
		return ""
	}
	if n <= d.r.Size() {
		b, err := d.r.Peek(n)
		if err != nil {
			d.truncated()
			return ""
		}
		s := string(b)
		d.r.Discard(n)
		d.left -= int64(n)
		return s
	}
	var sb strings.Builder
	sb.Grow(n)
	if !d.readTo(n, func(b []byte) { sb.Write(b) }) {
		return ""
	}
	return sb.String()
}

// readTo hands the next n bytes to sink, in pieces of at most the read
// buffer's size (each valid during the call only). false if the stream
// ends first.
func (d *snapDecoder) readTo(n int, sink func([]byte)) bool {
	if int64(n) > d.left {
		d.truncated()
		return false
	}
	for n > 0 {
		b, err := d.r.Peek(min(n, d.r.Size()))
		if err != nil {
			d.truncated()
			return false
		}
		sink(b)
		d.r.Discard(len(b))
		d.left -= int64(len(b))
		n -= len(b)
	}
	return true
}

// restore replaces the whole state with a snapshot's.
func (s *kvstore) restore(snap *raftpb.Snapshot, file *snapFileLayout) error {
	var st *snapshotState
	var err error
	size := int64(len(snap.GetData()))
	if file != nil {
		st, err = file.read()
		size = file.dataLen
	} else {
		st, err = decodeSnapshot(snap.GetData())
	}
	if err != nil {
		return err
	}
	if meta := snap.GetMetadata().GetIndex(); st.index != meta {
		return fmt.Errorf("snapshot data is for index %d but its metadata says %d", st.index, meta)
	}
	s.mu.Lock()
	s.keys, s.applied = st.keys, st.index
	s.mu.Unlock()
	learners := map[uint64]bool{}
	for _, id := range snap.GetMetadata().GetConfState().GetLearners() {
		learners[id] = true
	}
	oldMembers := s.members.replace(st.members, st.removed, learners, st.clients)
	s.watch.reset(st.index)
	s.confState = proto.Clone(snap.GetMetadata().GetConfState()).(*raftpb.ConfState)
	s.lastSnap, s.logBytes = st.index, 0
	s.lastSnapBytes.Store(uint64(size))
	metricSnapshotBytes.Set(float64(size))

	for id := range oldMembers {
		if _, ok := st.members[id]; !ok && id != s.selfID {
			s.peers.removePeer(id)
		}
	}
	// The transport may know a removed member from --cluster, and no
	// replayed conf change removes it once a snapshot covers its removal.
	for id := range st.removed {
		if id != s.selfID {
			s.peers.removePeer(id)
		}
	}
	for id, u := range st.members {
		if id != s.selfID {
			s.peers.setPeer(id, u)
		}
	}
	s.lg.Info("restored state from snapshot", zap.Uint64("index", st.index), zap.Int("keys", st.keys.Len()), zap.Int("members", len(st.members)))
	if st.removed[s.selfID] {
		s.removedOnce.Do(func() { close(s.removedSelf) })
	}
	return nil
}

// A snapshot rewrites the whole state, so taking one every snapshotCount
// entries costs a store of N bytes N bytes per snapshotCount entries
// however small those entries are: loading 1M keys took 68 snapshots of
// 277 MB each. Past snapshotSizeFloor a snapshot also waits until the
// entries applied since the last one hold snapshotLogShare of its size, so
// the snapshot bytes written stay within (1+share)/share of the bytes
// written to the log (3× at one half), whatever the store's size. The
// price is a log of up to that share of the store kept until the next
// snapshot (in the WAL and in raft's memory).
const (
	snapshotSizeFloor = 4 << 20
	snapshotLogShare  = 0.5
)

// snapshotDue reports whether a snapshot is due after entries entries
// holding logBytes bytes were applied since the last snapshot, which was
// lastBytes long. Below floor bytes, every count entries.
func snapshotDue(entries, count, logBytes, lastBytes, floor uint64) bool {
	if entries < count {
		return false
	}
	return lastBytes < floor || float64(logBytes) >= snapshotLogShare*float64(lastBytes)
}

// stopSnapshotMin is the least log since the newest snapshot that a member
// about to stop writes a snapshot for (see snapshotBeforeStop).
const stopSnapshotMin = 16 << 20

// stopSnapshotDue reports whether a member about to stop should first
// write a snapshot: when the next start would replay at least min bytes of
// log, and at least an eighth of the newest snapshot's size (writing the
// snapshot must be worth the replay it saves).
func stopSnapshotDue(logBytes, lastBytes, min uint64) bool {
	return logBytes >= min && logBytes >= lastBytes/8
}

// snapshotBeforeStop is for a graceful stop, called while the member still
// serves. Replaying the log since the newest snapshot is most of a restart
// (1M keys: a log of half the store took ~2 s of the start's ~4 s), and a
// snapshot written now, while the member still answers its peers and
// clients, leaves the next start almost nothing to replay. It returns
// once that snapshot is on disk, or at once when none is due. If the
// apply goroutine does not take the request within wait (it is stuck, or
// gone), it does nothing.
func (s *kvstore) snapshotBeforeStop(wait time.Duration) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	reply := make(chan (<-chan struct{}), 1)
	select {
	case s.snapNow <- reply:
	case <-s.applyDone:
		return
	case <-timer.C:
		return
	}
	// The apply goroutine answers right after it takes the request.
	if done := <-reply; done != nil {
		<-done
	}
}

// snapshotForStop runs on the apply goroutine for snapshotBeforeStop: it
// starts a snapshot if one is due and returns the channel closed when the
// newest snapshot goroutine ends (already closed if it has; nil if there
// never was one). A snapshot already running is waited for, not repeated:
// taking another would hold up the apply until the first one ends.
func (s *kvstore) snapshotForStop() <-chan struct{} {
	if !s.snapRunning.Load() && stopSnapshotDue(s.logBytes, s.lastSnapBytes.Load(), s.stopSnapMin) {
		s.lg.Info("saving a snapshot before stopping, so the next start need not replay the log",
			zap.Uint64("log-bytes", s.logBytes), zap.Uint64("snapshot-bytes", s.lastSnapBytes.Load()))
		wasForced := s.forceSnap
		s.forceSnap = true
		s.maybeSnapshot()
		if s.forceSnap { // none started: keep a membership change's request only
			s.forceSnap = wasForced
		}
	}
	return s.snapDone
}

// maybeSnapshot starts a background snapshot when snapshotDue says so.
// Only an O(1) copy-on-write clone of the key tree happens here; encoding,
// streamed into the file as it is written, runs on its own goroutine, so neither apply nor the
// raft loop waits for them.
func (s *kvstore) maybeSnapshot() {
	s.mu.RLock()
	index := s.applied
	s.mu.RUnlock()
	if s.confState == nil || index == s.lastSnap {
		return
	}
	if s.forceSnap {
		s.snapWG.Wait() // rare (a member was added): worth a short pause
	} else if !snapshotDue(index-s.lastSnap, s.snapshotCount, s.logBytes, s.lastSnapBytes.Load(), s.snapshotFloor) || s.snapRunning.Load() {
		return
	}
	select {
	case <-s.stopc:
		return
	default:
	}
	// Clone must not run beside readers of the tree: take the write lock.
	members, removed := s.members.list()
	s.mu.Lock()
	st := &snapshotState{index: index, members: members, removed: removed, clients: s.members.clientURLs(), keys: s.keys.Clone()}
	s.mu.Unlock()
	cs := proto.Clone(s.confState).(*raftpb.ConfState)
	s.lastSnap, s.forceSnap, s.logBytes = index, false, 0
	s.snapRunning.Store(true)
	s.snapWG.Add(1)
	done := make(chan struct{})
	s.snapDone = done
	go func() {
		defer s.snapWG.Done()
		defer close(done)
		defer s.snapRunning.Store(false)
		start := time.Now()
		s.lg.Info("saving snapshot", zap.Uint64("index", index))
		body := snapshotBody{size: snapshotSize(st), write: func(w io.Writer) error { return writeSnapshot(w, st) }}
		s.lastSnapBytes.Store(uint64(body.size))
		if err := s.raft.saveSnapshot(index, cs, body); err != nil {
			if errors.Is(err, errStopping) {
				return
			}
			s.lg.Fatal("cannot save snapshot", zap.Uint64("index", index), zap.Error(err))
		}
		metricSnapshotSeconds.Observe(time.Since(start).Seconds())
		metricSnapshotBytes.Set(float64(body.size))
		s.lg.Info("saved snapshot", zap.Uint64("index", index), zap.Int("keys", st.keys.Len()),
			zap.Int64("bytes", body.size), zap.Duration("took", time.Since(start)))
	}()
}
