package main

import (
	"cmp"
	"context"
	"errors"
	"slices"
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
	snapshotFile  *snapFileLayout  // where snapshot's state is, when its Data is not in memory
	entries       []*raftpb.Entry  // committed entries to apply after it
	leaderChanged bool             // fail in-flight requests after applying entries
	applied       chan struct{}    // if set, closed once everything above is applied
}

// raftCalls is what the state machine asks of the raft node.
type raftCalls interface {
	applyConfChange(cc *raftpb.ConfChange) *raftpb.ConfState
	readIndex(ctx context.Context) (uint64, error)
	saveSnapshot(index uint64, cs *raftpb.ConfState, body snapshotBody) error
}

// probe is an item holding only key, to look it up.
func probe(key string) *item { return newItem(key, "") }

// result is what applying one record did, for the request that proposed it.
type result struct {
	index     uint64 // the entry's raft index
	err       error  // the change was refused (membership), or never applied
	succeeded bool   // a txn's compares held (true for other ops)
	ops       []opResult
}

// opResult is what one op did to one key (or prefix).
type opResult struct {
	kind    opKind
	key     string
	prev    *item   // the key before the op (for get: the key), nil if absent
	cur     *item   // put: the key after it
	deleted int     // delete, delete-prefix: keys removed
	gone    []*item // delete-prefix: the keys it removed, for watchers
}

// events lists what the op results of one index mean to watchers.
func events(index uint64, ops []opResult, evs []event) []event {
	for _, r := range ops {
		switch r.kind {
		case opPut:
			evs = append(evs, event{index: index, it: r.cur})
		case opDelete:
			if r.prev != nil {
				evs = append(evs, event{index: index, deleted: true, it: r.prev})
			}
		case opDeletePrefix:
			for _, it := range r.gone {
				evs = append(evs, event{index: index, deleted: true, it: it})
			}
		}
	}
	return evs
}

// kvstore is the replicated state machine: ordered keys with their
// metadata plus the cluster membership, changed only by apply, in log
// order, on the apply goroutine.
type kvstore struct {
	lg            *zap.Logger
	selfID        uint64
	snapshotCount uint64
	snapshotFloor uint64 // snapshotSizeFloor; tests lower it
	stopSnapMin   uint64 // stopSnapshotMin; tests lower it
	raft          raftCalls
	peers         peerSet
	members       *membership
	watch         *watchHub

	// proposeC carries proposals to the raft node's proposer. Never closed:
	// senders give up on stopc or their context instead.
	proposeC chan<- proposal
	waits    waitRegistry
	nextID   atomic.Uint64

	mu        sync.RWMutex // guards everything down to appliedCh
	keys      keyTree
	applied   uint64
	appliedCh chan struct{} // closed and replaced when applied advances

	// Owned by the apply goroutine.
	confState *raftpb.ConfState
	lastSnap  uint64
	// Arrays apply reuses from entry to entry, cleared after each use: a
	// 1M-key replay allocated them afresh for every op and every entry,
	// a third of its allocations (BenchmarkReplay1M).
	opScratch  []op
	resScratch []opResult
	evScratch  []event
	// logBytes is the entry data applied since the snapshot at lastSnap.
	logBytes uint64
	// lastSnapBytes is the size of the newest snapshot: set when one is
	// restored, and by the snapshot goroutine once it has encoded one.
	lastSnapBytes atomic.Uint64
	// forceSnap asks for a snapshot now: after a member is added to a
	// compacted log, the newest snapshot must include it in its ConfState,
	// or the new member refuses every snapshot the leader sends it.
	forceSnap   bool
	snapRunning atomic.Bool    // a background snapshot is being written
	snapWG      sync.WaitGroup // the background snapshot goroutine
	snapDone    chan struct{}  // closed when the newest snapshot goroutine ends (apply goroutine)

	// snapNow carries snapshotBeforeStop's request to the apply goroutine,
	// which answers with the running snapshot's done channel (nil: none).
	snapNow chan chan (<-chan struct{})
	// applyDone is closed when the apply goroutine ends.
	applyDone chan struct{}

	removedSelf chan struct{} // closed once this node applied its own removal
	removedOnce sync.Once
	stopc       chan struct{} // closed by stop
	wg          sync.WaitGroup
}

func newKVStore(lg *zap.Logger, selfID, snapshotCount uint64, proposeC chan<- proposal, raft raftCalls, peers peerSet, members *membership, watchHistory int) *kvstore {
	s := &kvstore{
		lg:            lg,
		selfID:        selfID,
		snapshotCount: snapshotCount,
		snapshotFloor: snapshotSizeFloor,
		stopSnapMin:   stopSnapshotMin,
		snapNow:       make(chan chan (<-chan struct{})),
		applyDone:     make(chan struct{}),
		proposeC:      proposeC,
		keys:          newKeyTree(),
		raft:          raft,
		peers:         peers,
		members:       members,
		watch:         newWatchHub(watchHistory),
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
func (s *kvstore) start(commitC <-chan *commit) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(s.applyDone)
		for {
			select {
			case c, ok := <-commitC:
				if !ok {
					return
				}
				s.applyCommit(c)
			case reply := <-s.snapNow:
				reply <- s.snapshotForStop()
			}
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
		if err := s.restore(c.snapshot, c.snapshotFile); err != nil {
			s.lg.Fatal("cannot restore state from snapshot; refusing to run with a corrupt state", zap.Error(err))
		}
	}
	for _, e := range c.entries {
		s.apply(e)
	}
	s.mu.Lock()
	metricApplied.Set(float64(s.applied))
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
	metricLogSinceSnapshot.Set(float64(s.logBytes))
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
	s.logBytes += uint64(len(e.GetData()))
	switch e.GetType() {
	case raftpb.EntryNormal:
		type done struct {
			id  uint64
			res result
		}
		var answers []done
		evs := s.evScratch[:0]
		s.mu.Lock()
		var err error
		s.opScratch, err = decodeOpsWith(e.GetData(), s.opScratch, func(o *op) {
			if o.kind == opMemberAttrs {
				ok := s.members.setClientURL(o.member, o.value)
				answers = append(answers, done{o.reqID, result{index: index, succeeded: ok}})
				return
			}
			res := applyOp(s.keys, index, o, s.resScratch[:0])
			s.resScratch = res.ops
			evs = events(index, res.ops, evs)
			// Most ops applied have nobody waiting here: a restart's
			// replay, and on a follower the writes that came through
			// other members. Keeping their answers only to drop them in
			// trigger was a tenth of a 1M-key replay's apply time (7
			// alternating runs: 1.45 vs 1.60 s). A request registers
			// before it proposes, so it is waiting by now if at all.
			if s.waits.waiting(o.reqID) {
				res.ops = slices.Clone(res.ops)
				answers = append(answers, done{o.reqID, res})
			}
			clear(s.resScratch)
		})
		if err == nil {
			s.applied = index
		}
		s.mu.Unlock()
		if errors.Is(err, errUnknownOp) {
			s.lg.Fatal("committed entry holds an op this binary does not know (written by a newer version?); stopping rather than skip it and diverge: upgrade this member",
				zap.Uint64("index", index), zap.Error(err))
		}
		if err != nil {
			s.lg.Fatal("undecodable committed entry; refusing to diverge", zap.Uint64("index", index), zap.Error(err))
		}
		// Watchers hear of a write before its writer does: a watch from the
		// index a write returned never misses it here.
		s.watch.publish(index, evs)
		clear(evs)
		s.evScratch = evs[:0]
		if len(answers) > 0 {
			failpoint("apply-before-reply")
		}
		for _, a := range answers {
			s.waits.trigger(a.id, a.res)
		}
	case raftpb.EntryConfChange:
		cc := &raftpb.ConfChange{}
		if err := proto.Unmarshal(e.GetData(), cc); err != nil {
			s.lg.Fatal("undecodable conf change entry", zap.Uint64("index", index), zap.Error(err))
		}
		err := s.applyMembership(cc, index)
		s.watch.publish(index, nil)
		if cc.GetId() != 0 {
			s.waits.trigger(cc.GetId(), result{index: index, err: err})
		}
	default:
		s.lg.Fatal("unsupported entry type", zap.Uint64("index", index), zap.Stringer("type", e.GetType()))
	}
}

// applyOp applies one op at index to keys and says what it did. It is
// deterministic: every member gets the same result from the same state.
//
// The op results are appended to ops (which may be nil), so that the
// apply goroutine can reuse one array for the ops nobody waits for.
func applyOp(keys keyTree, index uint64, o *op, ops []opResult) result {
	res := result{index: index, succeeded: true, ops: ops}
	switch o.kind {
	case opTxn:
		for _, c := range o.txn.compares {
			cur := keys.Get(c.key)
			if !c.holds(cur) {
				res.succeeded = false
				break
			}
		}
		branch := o.txn.success
		if !res.succeeded {
			branch = o.txn.failure
		}
		for i := range branch {
			res.ops = append(res.ops, applyOne(keys, index, &branch[i]))
		}
	default:
		res.ops = append(res.ops, applyOne(keys, index, o))
	}
	return res
}

func applyOne(keys keyTree, index uint64, o *op) opResult {
	r := opResult{kind: o.kind, key: o.key}
	switch o.kind {
	case opPut:
		// One descent of the tree, not a Get and then an insert. next is
		// completed after it is in the tree, which is the one place an item
		// changes: no clone and no reader can see it yet (apply holds
		// kvstore.mu, and clones are taken under it too).
		next := o.it
		if next == nil || next.mod != 0 { // not decoded from a record, or applied before
			next = newItem(o.key, o.value)
		}
		next.create, next.mod, next.version = index, index, 1
		prev := keys.Put(next)
		if prev != nil {
			next.create, next.version = prev.create, prev.version+1
		}
		r.prev, r.cur = prev, next
	case opDelete:
		prev := keys.Delete(o.key)
		r.prev = prev
		if prev != nil {
			r.deleted = 1
		}
	case opDeletePrefix:
		var gone []*item
		ascendPrefix(keys, o.key, "", func(it *item) bool {
			gone = append(gone, it)
			return true
		})
		for _, it := range gone {
			keys.Delete(it.key())
		}
		r.deleted, r.gone = len(gone), gone
	case opGet:
		r.prev = keys.Get(o.key)
	}
	return r
}

// holds reports whether the compare is true of cur (nil: the key is
// absent, and its indexes, version and value count as zero and empty).
func (c *compare) holds(cur *item) bool {
	if c.target == cmpValue {
		v := ""
		if cur != nil {
			v = cur.value()
		}
		return compareOrdered(v, c.value, c.op)
	}
	var n uint64
	switch {
	case cur == nil:
	case c.target == cmpModIndex:
		n = cur.mod
	case c.target == cmpCreateIndex:
		n = cur.create
	case c.target == cmpVersion:
		n = cur.version
	case c.target == cmpExists:
		n = 1
	}
	return compareOrdered(n, c.num, c.op)
}

func compareOrdered[T cmp.Ordered](a, b T, op cmpOp) bool {
	switch op {
	case cmpEqual:
		return a == b
	case cmpNotEqual:
		return a != b
	case cmpLess:
		return a < b
	case cmpGreater:
		return a > b
	}
	return false
}

// Put proposes key=value and returns the raft index once it is applied here.
func (s *kvstore) Put(ctx context.Context, key, value string) (uint64, error) {
	res, err := s.Apply(ctx, &op{kind: opPut, key: key, value: value})
	return res.index, err
}

// Apply proposes o and returns its result once it is applied here.
func (s *kvstore) Apply(ctx context.Context, o *op) (result, error) {
	o.reqID = s.nextID.Add(1)
	return s.propose(ctx, o.reqID, proposal{data: appendOp(nil, o)})
}

func (s *kvstore) propose(ctx context.Context, id uint64, p proposal) (res result, err error) {
	metricProposalsPending.Inc()
	defer func() {
		metricProposalsPending.Dec()
		metricProposals.WithLabelValues(proposalResult(err)).Inc()
	}()
	ch := s.waits.register(id)
	p.ctx = ctx
	p.done = func(err error) { s.waits.trigger(id, result{err: err}) }
	p.accepted = func() { s.waits.markAccepted(id) }
	send := func(p proposal) error {
		select {
		case s.proposeC <- p:
			return nil
		case <-ctx.Done():
			s.waits.cancel(id)
			return errTimeout
		case <-s.stopc:
			s.waits.cancel(id)
			return errStopping
		}
	}
	if err := send(p); err != nil {
		return result{}, err
	}
	var resend <-chan time.Time
	if p.cc != nil {
		tick := time.NewTicker(confChangeResend)
		defer tick.Stop()
		resend = tick.C
	}
	for {
		select {
		case r := <-ch:
			return r, r.err
		case <-ctx.Done():
			s.waits.cancel(id)
			return result{}, errTimeout
		case <-resend:
			// The leader drops a membership change (raft turns it into an
			// empty entry) while one it has not applied is in its log: a
			// new leader, until it has applied its whole log. The apply
			// refuses a change that already took effect (errMemberExists,
			// errNoMember), so a repeat under the same id cannot apply
			// twice; its answer reaches this waiter only if the first
			// never applied. A repeat that raft refuses here ends
			// nothing: the wait goes on.
			again := p
			again.done = func(error) {}
			if err := send(again); err != nil {
				return result{}, err
			}
		}
	}
}

// confChangeResend is how long a membership change waits for its apply
// before it is proposed again (see propose).
const confChangeResend = 500 * time.Millisecond

// Get reads a key: nil if it is absent. A linearizable read first learns
// the cluster's commit index (ReadIndex) and waits until this node has
// applied up to it. index is the applied index the read saw.
func (s *kvstore) Get(ctx context.Context, key string, linearizable bool) (it *item, index uint64, err error) {
	if err := s.sync(ctx, linearizable); err != nil {
		return nil, 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	it = s.keys.Get(key)
	return it, s.applied, nil
}

// List returns up to limit keys that start with prefix and sort after
// after, in order, and whether more follow.
func (s *kvstore) List(ctx context.Context, prefix, after string, limit int, linearizable bool) (items []*item, more bool, index uint64, err error) {
	if err := s.sync(ctx, linearizable); err != nil {
		return nil, false, 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	ascendPrefix(s.keys, prefix, after, func(it *item) bool {
		if len(items) == limit {
			more = true
			return false
		}
		items = append(items, it)
		return true
	})
	return items, more, s.applied, nil
}

// sync makes a linearizable read wait until this member has applied
// everything committed when the read began.
func (s *kvstore) sync(ctx context.Context, linearizable bool) error {
	if !linearizable {
		return nil
	}
	ri, err := s.raft.readIndex(ctx)
	if err != nil {
		return err
	}
	return s.waitApplied(ctx, ri)
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
	return s.applied, s.keys.Len()
}
