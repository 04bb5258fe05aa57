package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"go.etcd.io/raft/v3/raftpb"
)

// Errors a request can end with. The HTTP layer maps them to status codes.
var (
	errTimeout        = errors.New("request timed out before the cluster answered; the write may or may not have been applied, retry")
	errNoLeader       = errors.New("no leader: the cluster has no quorum or an election is in progress; retry")
	errLeaderChanged  = errors.New("the raft leader changed while the request was in flight; the write may or may not have been applied, retry")
	errStopping       = errors.New("server is shutting down; retry on another node")
	errMemberExists   = errors.New("member id is already in the cluster")
	errMemberGone     = errors.New("member id was removed earlier and cannot be reused; pick a new id")
	errNoMember       = errors.New("no such member")
	errLastMember     = errors.New("cannot remove the only member of the cluster")
	errRejectedChange = errors.New("membership change rejected")
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

// proposal is one request on its way from the state machine to raft.
// Exactly one of data (an op record) and cc (a membership change) is set.
type proposal struct {
	ctx  context.Context // the request's context; the proposer gives up with it
	data []byte
	cc   *raftpb.ConfChange
	// done reports that raft refused the proposal; it is never called for a
	// proposal that raft accepted (the apply of its entry answers those).
	done func(error)
	// accepted reports that raft took the proposal (appended it, or forwarded
	// it to the leader): from then on a leader change may have dropped it.
	accepted func()
}

// commit is what the raft node hands the state machine, in log order.
type commit struct {
	snapshot      *raftpb.Snapshot // restore this state first, if set
	entries       []*raftpb.Entry  // committed entries to apply after it
	leaderChanged bool             // fail in-flight requests after applying entries
	applied       chan struct{}    // if set, closed once everything above is applied
}

// raftHooks is what the state machine needs from the raft node.
type raftHooks interface {
	applyConfChange(cc *raftpb.ConfChange) *raftpb.ConfState
	setPeer(id uint64, peerURL string)
	removePeer(id uint64)
	readIndex(ctx context.Context) (uint64, error)
	saveSnapshot(index uint64, cs *raftpb.ConfState, data []byte) error
}

type applyResult struct {
	index uint64
	err   error
}

// waitRegistry connects a request waiting for its entry to the apply of that
// entry, by request id. Safe for concurrent use.
type waitRegistry struct {
	mu sync.Mutex // guards m
	m  map[uint64]*waiter
}

type waiter struct {
	ch       chan applyResult // buffered: trigger never blocks
	accepted bool             // raft took the proposal
}

func (w *waitRegistry) register(id uint64) <-chan applyResult {
	wt := &waiter{ch: make(chan applyResult, 1)}
	w.mu.Lock()
	if w.m == nil {
		w.m = make(map[uint64]*waiter)
	}
	w.m[id] = wt
	w.mu.Unlock()
	return wt.ch
}

func (w *waitRegistry) trigger(id uint64, r applyResult) {
	w.mu.Lock()
	wt, ok := w.m[id]
	delete(w.m, id)
	w.mu.Unlock()
	if ok {
		wt.ch <- r
	}
}

func (w *waitRegistry) markAccepted(id uint64) {
	w.mu.Lock()
	if wt, ok := w.m[id]; ok {
		wt.accepted = true
	}
	w.mu.Unlock()
}

func (w *waitRegistry) cancel(id uint64) {
	w.mu.Lock()
	delete(w.m, id)
	w.mu.Unlock()
}

// fail ends the waits that match (all of them if onlyAccepted is false).
func (w *waitRegistry) fail(err error, onlyAccepted bool) {
	w.mu.Lock()
	var failed []*waiter
	for id, wt := range w.m {
		if wt.accepted || !onlyAccepted {
			failed = append(failed, wt)
			delete(w.m, id)
		}
	}
	w.mu.Unlock()
	for _, wt := range failed {
		wt.ch <- applyResult{err: err}
	}
}

// kvstore is the replicated state machine: a map of keys plus the cluster
// membership, changed only by apply, in log order, on the apply goroutine.
type kvstore struct {
	lg            *zap.Logger
	selfID        uint64
	snapshotCount uint64
	hooks         raftHooks

	// proposeC carries proposals to the raft node's proposer. Never closed:
	// senders give up on stopc or their context instead.
	proposeC chan<- proposal
	waits    waitRegistry
	nextID   atomic.Uint64

	mu        sync.RWMutex // guards everything down to appliedCh
	kv        map[string]string
	members   map[uint64]string // member id -> peer URL
	removed   map[uint64]bool
	applied   uint64
	appliedCh chan struct{} // closed and replaced when applied advances

	// Owned by the apply goroutine.
	confState *raftpb.ConfState
	lastSnap  uint64
	// forceSnap asks for a snapshot now: after a member is added to a
	// compacted log, the newest snapshot must include it in its ConfState,
	// or the new member refuses every snapshot the leader sends it.
	forceSnap   bool
	snapRunning atomic.Bool    // a background snapshot is being written
	snapWG      sync.WaitGroup // the background snapshot goroutine

	removedSelf chan struct{} // closed once this node applied its own removal
	removedOnce sync.Once
	stopc       chan struct{} // closed by stop
	wg          sync.WaitGroup
}

func newKVStore(lg *zap.Logger, selfID, snapshotCount uint64, proposeC chan<- proposal) *kvstore {
	s := &kvstore{
		lg:            lg,
		selfID:        selfID,
		snapshotCount: snapshotCount,
		proposeC:      proposeC,
		kv:            make(map[string]string),
		members:       make(map[uint64]string),
		removed:       make(map[uint64]bool),
		appliedCh:     make(chan struct{}),
		removedSelf:   make(chan struct{}),
		stopc:         make(chan struct{}),
	}
	// Request ids must not repeat across restarts while old entries are
	// replayed, nor between nodes: node id in the top 16 bits, start time
	// below.
	s.nextID.Store(selfID<<48 | uint64(time.Now().UnixNano()>>10)&(1<<48-1))
	return s
}

// start runs the apply goroutine until commitC is closed.
func (s *kvstore) start(hooks raftHooks, commitC <-chan *commit) {
	s.hooks = hooks
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for c := range commitC {
			s.applyCommit(c)
		}
	}()
}

// stop fails waiting requests and waits for the apply goroutine (which ends
// when the raft node closes commitC) and any snapshot in progress.
func (s *kvstore) stop() {
	close(s.stopc)
	s.waits.fail(errStopping, false)
	s.wg.Wait()
	s.snapWG.Wait()
	s.waits.fail(errStopping, false)
}

func (s *kvstore) applyCommit(c *commit) {
	if c.snapshot != nil {
		if err := s.restore(c.snapshot); err != nil {
			s.lg.Fatal("cannot restore state from snapshot; refusing to run with a corrupt state", zap.Error(err))
		}
	}
	for _, e := range c.entries {
		s.apply(e)
	}
	s.mu.Lock()
	close(s.appliedCh)
	s.appliedCh = make(chan struct{})
	s.mu.Unlock()
	if c.leaderChanged {
		// What raft took under the old leader may have been dropped; what it
		// has not taken yet waits for the new leader.
		s.waits.fail(errLeaderChanged, true)
	}
	if c.applied != nil {
		close(c.applied)
	}
	s.maybeSnapshot()
}

// apply applies one committed entry. Apart from restore, which replaces the
// whole state from a snapshot, it is the only place the state changes.
func (s *kvstore) apply(e *raftpb.Entry) {
	index := e.GetIndex()
	s.mu.RLock()
	applied := s.applied
	s.mu.RUnlock()
	if index <= applied {
		return // already in the restored snapshot
	}
	switch e.GetType() {
	case raftpb.EntryNormal:
		var done []uint64
		s.mu.Lock()
		err := decodeRecords(e.GetData(), func(_ byte, reqID uint64, key, value string) {
			s.kv[key] = value
			done = append(done, reqID)
		})
		s.applied = index
		s.mu.Unlock()
		if err != nil {
			s.lg.Fatal("undecodable committed entry; refusing to diverge", zap.Uint64("index", index), zap.Error(err))
		}
		for _, id := range done {
			s.waits.trigger(id, applyResult{index: index})
		}
	case raftpb.EntryConfChange:
		cc := &raftpb.ConfChange{}
		if err := proto.Unmarshal(e.GetData(), cc); err != nil {
			s.lg.Fatal("undecodable conf change entry", zap.Uint64("index", index), zap.Error(err))
		}
		err := s.applyMembership(cc, index)
		if cc.GetId() != 0 {
			s.waits.trigger(cc.GetId(), applyResult{index: index, err: err})
		}
	default:
		s.lg.Fatal("unsupported entry type", zap.Uint64("index", index), zap.Stringer("type", e.GetType()))
	}
}

// applyMembership checks a committed membership change against the applied
// membership (the same verdict on every node) and applies it, or turns it into
// a no-op for raft and returns why.
func (s *kvstore) applyMembership(cc *raftpb.ConfChange, index uint64) error {
	id := cc.GetNodeId()
	s.mu.RLock()
	_, isMember := s.members[id]
	wasRemoved := s.removed[id]
	nMembers := len(s.members)
	s.mu.RUnlock()

	var verdict error
	switch cc.GetType() {
	case raftpb.ConfChangeAddNode:
		switch {
		case id == 0:
			verdict = fmt.Errorf("%w: member id 0 is not allowed", errRejectedChange)
		case isMember:
			verdict = errMemberExists
		case wasRemoved:
			verdict = errMemberGone
		default:
			if err := validatePeerURL(string(cc.GetContext())); err != nil {
				verdict = fmt.Errorf("%w: %w", errRejectedChange, err)
			}
		}
	case raftpb.ConfChangeRemoveNode:
		switch {
		case !isMember:
			verdict = errNoMember
		case nMembers == 1:
			verdict = errLastMember
		}
	default:
		verdict = fmt.Errorf("%w: unsupported type %v", errRejectedChange, cc.GetType())
	}
	if verdict != nil {
		// raft must still see the entry applied; node id 0 makes it a no-op.
		noop := &raftpb.ConfChange{Type: new(raftpb.ConfChangeAddNode), NodeId: new(uint64(0))}
		s.confState = s.hooks.applyConfChange(noop)
		s.mu.Lock()
		s.applied = index
		s.mu.Unlock()
		s.lg.Warn("rejected membership change", zap.Uint64("index", index), zap.Uint64("member", id), zap.Error(verdict))
		return verdict
	}

	s.confState = s.hooks.applyConfChange(cc)
	s.mu.Lock()
	if cc.GetType() == raftpb.ConfChangeAddNode {
		s.members[id] = string(cc.GetContext())
	} else {
		delete(s.members, id)
		s.removed[id] = true
	}
	s.applied = index
	s.mu.Unlock()

	if cc.GetType() == raftpb.ConfChangeAddNode {
		s.forceSnap = s.lastSnap > 0
		s.lg.Info("member added", zap.Uint64("member", id), zap.String("peer-url", string(cc.GetContext())))
		if id != s.selfID {
			s.hooks.setPeer(id, string(cc.GetContext()))
		}
		return nil
	}
	s.lg.Info("member removed", zap.Uint64("member", id))
	if id == s.selfID {
		s.removedOnce.Do(func() { close(s.removedSelf) })
	} else {
		s.hooks.removePeer(id)
	}
	return nil
}

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

// Put proposes key=value and returns the raft index once it is applied here.
func (s *kvstore) Put(ctx context.Context, key, value string) (uint64, error) {
	id := s.nextID.Add(1)
	return s.propose(ctx, id, proposal{data: appendPutRecord(nil, id, key, value)})
}

// AddMember proposes adding a voting member reachable at peerURL.
func (s *kvstore) AddMember(ctx context.Context, id uint64, peerURL string) (uint64, error) {
	s.mu.RLock()
	_, isMember := s.members[id]
	wasRemoved := s.removed[id]
	s.mu.RUnlock()
	switch {
	case isMember:
		return 0, errMemberExists
	case wasRemoved:
		return 0, errMemberGone
	}
	reqID := s.nextID.Add(1)
	cc := &raftpb.ConfChange{Type: new(raftpb.ConfChangeAddNode), NodeId: new(id), Context: []byte(peerURL), Id: new(reqID)}
	return s.propose(ctx, reqID, proposal{cc: cc})
}

// RemoveMember proposes removing a member.
func (s *kvstore) RemoveMember(ctx context.Context, id uint64) (uint64, error) {
	s.mu.RLock()
	_, isMember := s.members[id]
	n := len(s.members)
	s.mu.RUnlock()
	switch {
	case !isMember:
		return 0, errNoMember
	case n == 1:
		return 0, errLastMember
	}
	reqID := s.nextID.Add(1)
	cc := &raftpb.ConfChange{Type: new(raftpb.ConfChangeRemoveNode), NodeId: new(id), Id: new(reqID)}
	return s.propose(ctx, reqID, proposal{cc: cc})
}

func (s *kvstore) propose(ctx context.Context, id uint64, p proposal) (uint64, error) {
	ch := s.waits.register(id)
	p.ctx = ctx
	p.done = func(err error) { s.waits.trigger(id, applyResult{err: err}) }
	p.accepted = func() { s.waits.markAccepted(id) }
	select {
	case s.proposeC <- p:
	case <-ctx.Done():
		s.waits.cancel(id)
		return 0, errTimeout
	case <-s.stopc:
		s.waits.cancel(id)
		return 0, errStopping
	}
	select {
	case r := <-ch:
		return r.index, r.err
	case <-ctx.Done():
		s.waits.cancel(id)
		return 0, errTimeout
	}
}

// Get reads a key. A linearizable read first learns the cluster's commit
// index (ReadIndex) and waits until this node has applied up to it.
func (s *kvstore) Get(ctx context.Context, key string, linearizable bool) (value string, found bool, index uint64, err error) {
	if linearizable {
		ri, err := s.hooks.readIndex(ctx)
		if err != nil {
			return "", false, 0, err
		}
		if err := s.waitApplied(ctx, ri); err != nil {
			return "", false, 0, err
		}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	value, found = s.kv[key]
	return value, found, s.applied, nil
}

func (s *kvstore) waitApplied(ctx context.Context, index uint64) error {
	for {
		s.mu.RLock()
		applied, ch := s.applied, s.appliedCh
		s.mu.RUnlock()
		if applied >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return errTimeout
		case <-s.stopc:
			return errStopping
		}
	}
}

// isRemoved reports whether a member id was removed by an applied change.
func (s *kvstore) isRemoved(id uint64) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.removed[id]
}

// Members returns a copy of the applied membership.
func (s *kvstore) Members() map[uint64]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return maps.Clone(s.members)
}

// Applied returns the applied index and the number of keys.
func (s *kvstore) Applied() (index uint64, keys int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.applied, len(s.kv)
}

// validatePeerURL accepts http(s)://host:port with nothing after it.
func validatePeerURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("peer URL %q is not a URL: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("peer URL %q must start with http:// or https://", raw)
	}
	if u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || u.ForceQuery {
		return fmt.Errorf("peer URL %q must be scheme://host:port with no user, path, query or fragment", raw)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return fmt.Errorf("peer URL %q must name a host and a port", raw)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("peer URL %q has an invalid port", raw)
	}
	return nil
}
