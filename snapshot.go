package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// Snapshot encoding, versioned by its first bytes.
var snapshotMagic = []byte("RKV1")

func encodeSnapshot(index uint64, members map[uint64]string, removed map[uint64]bool, kv map[string]string) []byte {
	size := len(snapshotMagic) + 32
	for k, v := range kv {
		size += len(k) + len(v) + 8
	}
	b := make([]byte, 0, size)
	b = append(b, snapshotMagic...)
	b = binary.AppendUvarint(b, index)
	b = binary.AppendUvarint(b, uint64(len(members)))
	for id, u := range members {
		b = binary.AppendUvarint(b, id)
		b = binary.AppendUvarint(b, uint64(len(u)))
		b = append(b, u...)
	}
	b = binary.AppendUvarint(b, uint64(len(removed)))
	for id := range removed {
		b = binary.AppendUvarint(b, id)
	}
	b = binary.AppendUvarint(b, uint64(len(kv)))
	for k, v := range kv {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	return b
}

type snapshotState struct {
	index   uint64
	members map[uint64]string
	removed map[uint64]bool
	kv      map[string]string
}

func decodeSnapshot(data []byte) (*snapshotState, error) {
	if !bytes.HasPrefix(data, snapshotMagic) {
		return nil, errors.New("not a snapshot of this program (bad magic)")
	}
	d := decoder{buf: data[len(snapshotMagic):]}
	st := &snapshotState{index: d.uvarint(), members: map[uint64]string{}, removed: map[uint64]bool{}}
	for n := d.uvarint(); n > 0 && d.err == nil; n-- {
		id := d.uvarint()
		st.members[id] = d.bytes()
	}
	for n := d.uvarint(); n > 0 && d.err == nil; n-- {
		st.removed[d.uvarint()] = true
	}
	n := d.uvarint()
	st.kv = make(map[string]string, min(n, uint64(len(d.buf))))
	for ; n > 0 && d.err == nil; n-- {
		k := d.bytes()
		st.kv[k] = d.bytes()
	}
	if d.err == nil && len(d.buf) != 0 {
		d.err = errors.New("trailing bytes")
	}
	if d.err != nil {
		return nil, fmt.Errorf("decode snapshot: %w", d.err)
	}
	return st, nil
}

// restore replaces the whole state with a snapshot's.
func (s *kvstore) restore(snap *raftpb.Snapshot) error {
	st, err := decodeSnapshot(snap.GetData())
	if err != nil {
		return err
	}
	if meta := snap.GetMetadata().GetIndex(); st.index != meta {
		return fmt.Errorf("snapshot data is for index %d but its metadata says %d", st.index, meta)
	}
	s.mu.Lock()
	oldMembers := s.members
	s.kv, s.members, s.removed, s.applied = st.kv, st.members, st.removed, st.index
	s.mu.Unlock()
	s.confState = proto.Clone(snap.GetMetadata().GetConfState()).(*raftpb.ConfState)
	s.lastSnap = st.index

	for id := range oldMembers {
		if _, ok := st.members[id]; !ok && id != s.selfID {
			s.hooks.removePeer(id)
		}
	}
	for id, u := range st.members {
		if id != s.selfID {
			s.hooks.setPeer(id, u)
		}
	}
	s.lg.Info("restored state from snapshot", zap.Uint64("index", st.index), zap.Int("keys", len(st.kv)), zap.Int("members", len(st.members)))
	if st.removed[s.selfID] {
		s.removedOnce.Do(func() { close(s.removedSelf) })
	}
	return nil
}

// maybeSnapshot starts a background snapshot every snapshotCount applied
// entries. Only the map copy happens here; encoding and the disk writes run
// on their own goroutine, so neither apply nor the raft loop waits for them.
func (s *kvstore) maybeSnapshot() {
	s.mu.RLock()
	index := s.applied
	s.mu.RUnlock()
	if s.confState == nil || index == s.lastSnap {
		return
	}
	if s.forceSnap {
		s.snapWG.Wait() // rare (a member was added): worth a short pause
	} else if index-s.lastSnap < s.snapshotCount || s.snapRunning.Load() {
		return
	}
	select {
	case <-s.stopc:
		return
	default:
	}
	s.mu.RLock()
	kv, members, removed := maps.Clone(s.kv), maps.Clone(s.members), maps.Clone(s.removed)
	s.mu.RUnlock()
	cs := proto.Clone(s.confState).(*raftpb.ConfState)
	s.lastSnap, s.forceSnap = index, false
	s.snapRunning.Store(true)
	s.snapWG.Add(1)
	go func() {
		defer s.snapWG.Done()
		defer s.snapRunning.Store(false)
		start := time.Now()
		s.lg.Info("saving snapshot", zap.Uint64("index", index))
		data := encodeSnapshot(index, members, removed, kv)
		if err := s.hooks.saveSnapshot(index, cs, data); err != nil {
			if errors.Is(err, errStopping) {
				return
			}
			s.lg.Fatal("cannot save snapshot", zap.Uint64("index", index), zap.Error(err))
		}
		s.lg.Info("saved snapshot", zap.Uint64("index", index), zap.Int("keys", len(kv)),
			zap.Int("bytes", len(data)), zap.Duration("took", time.Since(start)))
	}()
}
