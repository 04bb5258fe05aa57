package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"go.etcd.io/raft/v3/raftpb"
)

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

// Put proposes key=value and returns the raft index once it is applied here.
func (s *kvstore) Put(ctx context.Context, key, value string) (uint64, error) {
	id := s.nextID.Add(1)
	return s.propose(ctx, id, proposal{data: appendPutRecord(nil, id, key, value)})
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

// Applied returns the applied index and the number of keys.
func (s *kvstore) Applied() (index uint64, keys int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.applied, len(s.kv)
}
