package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-semver/semver"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	stats "go.etcd.io/etcd/server/v3/etcdserver/api/v2stats"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

const (
	// clusterID is checked by rafthttp on every peer request. It is fixed so
	// that a node started with --join speaks to the cluster it joins.
	clusterID = 0x1000

	maxBatchRecords  = 1024    // op records packed into one raft entry
	maxBatchBytes    = 1 << 20 // bytes packed into one raft entry (one record may exceed it)
	readRetryEvery   = 500 * time.Millisecond
	maxCatchUpWindow = 5000 // entries kept in the log after a snapshot for slow followers
	snapFilesKept    = 3
	walFilesKept     = 5
)

var errWrongNode = errors.New("data directory belongs to another node")

type raftConfig struct {
	id            uint64
	peers         []string // --cluster, index i is member i+1
	join          bool
	waldir        string
	snapdir       string
	tick          time.Duration
	electionTicks int
	// maxInflight is how many appends the leader sends a follower before
	// it waits for an answer (--max-inflight-appends; 0 means 1). See start.
	maxInflight    int
	requestTimeout time.Duration
	snapshotCount  uint64
	// logWindow is how many bytes of applied entries stay in memory for
	// followers a little behind (--log-window-bytes); older ones are read
	// back from the WAL.
	logWindow uint64
	// checkpointBytes is how much committed log goes between checkpoint
	// records in the WAL (--wal-checkpoint-bytes, checkpoint.go); 0: none.
	checkpointBytes uint64
	// expectHeap, if set, is told how many bytes of snapshot and log a
	// restart replays, before it is decoded (the GC tuner sizes the heap).
	expectHeap func(encoded uint64)
	// isRemoved is all the raft node knows of the state machine: whether an
	// id was removed from the cluster by an applied change.
	isRemoved func(id uint64) bool
}

// raftNode drives etcd's raft library: it persists to the WAL and snapshot
// files, talks to peers through rafthttp, and hands committed entries to the
// state machine on commitC.
type raftNode struct {
	cfg raftConfig
	lg  *zap.Logger

	proposeC <-chan proposal // from the state machine; read by proposeLoop
	commitC  chan *commit    // to the state machine; closed when readyLoop ends

	node        raft.Node
	raftStorage *logStorage
	transport   *rafthttp.Transport
	peerServer  *http.Server
	// peerURLs is the URL the transport uses for each peer. Written by start,
	// then only by the state machine's apply goroutine (setPeer/removePeer).
	peerURLs map[uint64]string

	// snapMu serializes snapshot persistence (a snapshot from the leader in
	// readyLoop, our own from the state machine's snapshot goroutine) and
	// guards wal against use after stop closed it.
	snapMu    sync.Mutex
	wal       *wal.WAL
	walClosed bool
	// walCutMu is held around wal.Save, in which the WAL may take its
	// spare segment, and by the zeroer writing that spare (walzero.go).
	walCutMu sync.Mutex
	// startSnap is the snapshot file found at start, checked; its state is
	// read as a stream by the state machine, first thing on commitC.
	startSnap *snapFileLayout
	newWAL    bool // the WAL was created by this start: a new member
	// startCommit is the commit index the WAL held at start: once it is
	// applied, the member has replayed its own disk.
	startCommit uint64
	// startApplied is the index the state is at once the start's snapshot
	// and replay are applied: startSnap's, or startReplay's end.
	startApplied uint64
	// startReplay, if not nil, is the log from startSnap up to a WAL
	// checkpoint, which the ready loop reads back and applies before
	// raft's first Ready (checkpoint.go).
	startReplay *checkpointReplay
	// cpBytes counts the entry bytes committed since the last WAL
	// checkpoint; confIndex is the newest membership change committed.
	// Ready loop only.
	cpBytes, confIndex uint64
	// diskState describes the WAL and snapshot files as found at start, for
	// the log line of a raft panic (which most often means they lost data).
	diskState string
	// stopCtx is cancelled by stop; it bounds raft calls made for requests.
	stopCtx    context.Context
	cancelStop context.CancelFunc

	lead atomic.Uint64 // current leader id as last seen in a Ready, 0 if none

	readReqC   chan chan<- readResult // ReadIndex requests; served in batches by readLoop
	readStateC chan raft.ReadState    // ReadIndex answers from readyLoop to readLoop
	readSeq    atomic.Uint64          // makes every ReadIndex request context unique
	// remoteReads are followers' ReadIndex requests that this member, as
	// leader, answers from its own next round (readindex.go): appended by
	// the transport's goroutines in Process, taken by readLoop, guarded by
	// remoteMu. remoteReadC (capacity 1) wakes readLoop for them.
	remoteMu    sync.Mutex
	remoteReads []remoteRead
	remoteReadC chan struct{}
	// sendReadAnswers is how readLoop sends followers their answers: the
	// transport, set by start (a test of the loop sets its own).
	sendReadAnswers func([]*raftpb.Message)
	// term is raft's term as last seen in a Ready's hard state; with lead,
	// it tells readLoop whether this member led throughout a round.
	term atomic.Uint64

	// snapshotter is where rafthttp saves a snapshot file sent by the
	// leader (snapsend.go); received is the last such file that Process
	// found sound, for the ready loop to install.
	snapshotter *snap.Snapshotter
	received    atomic.Pointer[snapFileLayout]
	// refusedSnap is, per member, the index of the last snapshot not sent
	// to it because it does not include it (sendSnapshot logs each once).
	// Ready loop only.
	refusedSnap map[uint64]uint64

	stopc    chan struct{} // closed by stop: every goroutine below returns
	removedC chan struct{} // closed when a peer tells us we were removed
	lastTick atomic.Int64  // when the ready loop last ticked raft (unix ns); read by /livez
	// heard maps a peer id to when a message from it last arrived (unix ns,
	// *atomic.Int64): written by the transport's goroutines in Process, read
	// by /v1/members.
	heard sync.Map
	// transferTo is the target of the last leadership transfer asked for
	// on this member, until it leads (for the log line's reason).
	transferTo atomic.Uint64
	stopOnce   sync.Once
	wg         sync.WaitGroup
}

// newRaftNode opens (or creates) the WAL and snapshot directory and replays
// them into raft's in-memory log. Nothing runs until start.
func newRaftNode(lg *zap.Logger, cfg raftConfig, proposeC <-chan proposal) (*raftNode, error) {
	rc := &raftNode{
		cfg:         cfg,
		lg:          lg,
		proposeC:    proposeC,
		commitC:     make(chan *commit, 64),
		raftStorage: newLogStorage(cfg.logWindow),
		readReqC:    make(chan chan<- readResult, 1024),
		readStateC:  make(chan raft.ReadState, 64),
		remoteReadC: make(chan struct{}, 1),
		stopc:       make(chan struct{}),
		removedC:    make(chan struct{}),
	}
	rc.stopCtx, rc.cancelStop = context.WithCancel(context.Background())
	if err := mkdirDurable(cfg.snapdir); err != nil {
		return nil, fmt.Errorf("create snapshot dir %s: %w", cfg.snapdir, err)
	}
	if err := fileutil.TouchDirAll(lg, cfg.snapdir); err != nil { // is it writable?
		return nil, fmt.Errorf("snapshot dir %s: %w", cfg.snapdir, err)
	}
	if err := rc.openWAL(); err != nil {
		if rc.wal != nil {
			rc.wal.Close() // release its file locks
		}
		return nil, err
	}
	// With the WAL locked, no other process can be receiving into the
	// snapshot dir: what a leader sent before a crash goes.
	removeReceivedLeftovers(lg, cfg.snapdir, 0, true)
	rc.snapshotter = snap.New(lg, cfg.snapdir)
	rc.raftStorage.setDisk(&walEntries{dir: cfg.waldir})
	return rc, nil
}

// start launches raft, then the peer transport (which steps messages into
// raft), then the loops. The peer listener is already bound, so a port
// conflict was reported before this.
func (rc *raftNode) start(peerLn *stoppableListener) error {
	// The transport's own URLs go in a header of every request it makes
	// to a peer (X-PeerURLs). A member that missed the conf change adding
	// this one learns from it where to answer: without it, a member back
	// from a restart while a newcomer leads can hear the leader but never
	// answer it, and stays behind for good (rafthttp's AddRemote).
	if rc.cfg.id < 1 || rc.cfg.id > uint64(len(rc.cfg.peers)) {
		return fmt.Errorf("member %d has no peer URL in a cluster of %d", rc.cfg.id, len(rc.cfg.peers))
	}
	selfURLs, err := types.NewURLs([]string{rc.cfg.peers[rc.cfg.id-1]})
	if err != nil {
		return fmt.Errorf("this member's peer URL: %w", err)
	}
	c := &raft.Config{
		ID:            rc.cfg.id,
		ElectionTick:  rc.cfg.electionTicks,
		HeartbeatTick: 1,
		Storage:       rc.raftStorage,
		Applied:       rc.startApplied,
		MaxSizePerMsg: 1 << 20,
		// With one append in flight to a follower, the writes that arrive
		// while it is out all go in the next one: one follower fsync and
		// one answer for all of them. With many in flight, raft sends each
		// new entry at once in an append of its own, and each follower
		// writes and answers each: at 64 clients that was 18 times as many
		// appends and answers, 1.6 times the follower fsyncs, and a
		// quarter more CPU per write (README, Performance). A write on its
		// own still goes out at once, but a follower whose append is out is
		// sent nothing, not even a commit index: a write it serves may learn
		// of its commit one trip later. Over a link with a long round trip
		// the limit bounds a follower to MaxSizePerMsg per round trip, hence
		// the flag.
		MaxInflightMsgs: max(rc.cfg.maxInflight, 1),
		// A follower far behind is sent entries read back from the WAL on
		// raft's goroutine (logStorage), as many as the in-flight limits
		// allow at once: with the flag raised, the limit by bytes keeps a
		// burst to a few reads, not one MiB per append in flight.
		MaxInflightBytes:          8 << 20,
		MaxUncommittedEntriesSize: 1 << 30,
		CheckQuorum:               true,
		PreVote:                   true,
		StepDownOnRemoval:         true,
		Logger:                    &raftLogger{s: rc.lg.Named("raft").WithOptions(zap.AddCallerSkip(1)).Sugar(), diskState: rc.diskState},
	}
	switch {
	case rc.newWAL && !rc.cfg.join:
		peers := make([]raft.Peer, len(rc.cfg.peers))
		for i, u := range rc.cfg.peers {
			peers[i] = raft.Peer{ID: uint64(i + 1), Context: []byte(u)}
		}
		rc.node = raft.StartNode(c, peers)
	default:
		// A restart, or a fresh node joining: the leader sends it the log
		// (or a snapshot) including the membership.
		rc.node = raft.RestartNode(c)
	}

	rc.transport = &rafthttp.Transport{
		Logger:             rc.lg,
		ID:                 types.ID(rc.cfg.id),
		URLs:               selfURLs,
		ClusterID:          clusterID,
		Raft:               rc,
		ServerStats:        stats.NewServerStats("", ""),
		LeaderStats:        stats.NewLeaderStats(rc.lg, strconv.FormatUint(rc.cfg.id, 10)),
		ErrorC:             make(chan error, 1),
		DialRetryFrequency: rate.Every(100 * time.Millisecond),
		Snapshotter:        rc.snapshotter,
	}
	rc.sendReadAnswers = func(ms []*raftpb.Message) { rc.transport.Send(rc.prepareMessages(ms)) }
	if err := rc.transport.Start(); err != nil {
		return fmt.Errorf("start peer transport: %w", err)
	}
	rc.peerURLs = map[uint64]string{}
	for i, u := range rc.cfg.peers {
		if id := uint64(i + 1); id != rc.cfg.id {
			rc.setPeer(id, u)
		}
	}
	rc.peerServer = &http.Server{Handler: guardPeerHeaders(rc.transport.Handler()), ReadHeaderTimeout: 10 * time.Second}
	rc.wg.Add(1)
	go func() {
		defer rc.wg.Done()
		if err := rc.peerServer.Serve(peerLn); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, errListenerStopped) {
			rc.lg.Error("peer server stopped", zap.Error(err))
		}
	}()

	if pays, fs := spareZeroingPays(rc.cfg.waldir); pays {
		rc.lg.Info("writing zeros over the wal's spare segments", zap.String("file-system", fs))
		zeroer := &walZeroer{lg: rc.lg, dir: rc.cfg.waldir, cutMu: &rc.walCutMu}
		rc.wg.Add(1)
		go func() { defer rc.wg.Done(); zeroer.run(rc.stopc, walZeroEvery) }()
	} else {
		rc.lg.Info("leaving the wal's spare segments as preallocated", zap.String("file-system", fs))
	}
	rc.wg.Add(3)
	go func() { defer rc.wg.Done(); rc.readyLoop() }()
	go func() { defer rc.wg.Done(); rc.proposeLoop() }()
	go func() { defer rc.wg.Done(); rc.readLoop() }()
	return nil
}

// guardPeerHeaders keeps headers rafthttp would panic on from reaching it
// (net/http recovers such a panic, but each request then leaves a panic
// and its stack in the log). A version it cannot parse (X-Server-Version,
// X-Min-Cluster-Version) gets a 400. An X-PeerURLs that does not parse is
// dropped: for a sender rafthttp does not know, it adds those URLs as a
// remote peer.
func guardPeerHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, name := range []string{"X-Server-Version", "X-Min-Cluster-Version"} {
			if v := r.Header.Get(name); v != "" {
				if _, err := semver.NewVersion(v); err != nil {
					http.Error(w, name+" is not a version: "+strconv.Quote(v), http.StatusBadRequest)
					return
				}
			}
		}
		if v := r.Header.Get("X-PeerURLs"); v != "" {
			if _, err := types.NewURLs(strings.Split(v, ",")); err != nil {
				r.Header.Del("X-PeerURLs")
			}
		}
		h.ServeHTTP(w, r)
	})
}

// stop ends raft's loops; commitC is closed when it returns. The state
// machine then finishes applying (it may still call raftCalls) before close.
func (rc *raftNode) stop() {
	rc.stopOnce.Do(func() {
		close(rc.stopc)
		rc.cancelStop()
		if rc.peerServer != nil {
			rc.peerServer.Close()
		}
		rc.wg.Wait()
	})
}

// close stops the transport and raft and closes the WAL. Call after stop and
// after the state machine has stopped.
func (rc *raftNode) close() {
	rc.stop()
	if rc.transport != nil {
		rc.transport.Stop()
	}
	if rc.node != nil {
		rc.node.Stop()
	}
	rc.snapMu.Lock()
	defer rc.snapMu.Unlock()
	if !rc.walClosed {
		rc.walClosed = true
		if err := rc.wal.Close(); err != nil {
			rc.lg.Warn("close wal", zap.Error(err))
		}
	}
}

// readyLoop is raft's driver: it ticks, persists each Ready, sends its
// messages and publishes committed entries. It is the only sender on commitC.
func (rc *raftNode) readyLoop() {
	defer close(rc.commitC)
	if rc.startSnap != nil {
		select {
		case rc.commitC <- &commit{snapshot: &raftpb.Snapshot{Metadata: rc.startSnap.md}, snapshotFile: rc.startSnap}:
		case <-rc.stopc:
			return
		}
	}
	if rc.startReplay != nil && !rc.replayCheckpointed(rc.startReplay) {
		return
	}
	ticker := time.NewTicker(rc.cfg.tick)
	defer ticker.Stop()
	isLeader := false
	for {
		select {
		case <-ticker.C:
			rc.node.Tick()
			rc.lastTick.Store(time.Now().UnixNano())
		case err := <-rc.transport.ErrorC:
			rc.lg.Warn("a peer reports that this member was removed from the cluster", zap.Error(err))
			close(rc.removedC)
			<-rc.stopc
			return
		case <-rc.stopc:
			return
		case rd := <-rc.node.Ready():
			leaderChanged := false
			if rd.SoftState != nil {
				old := rc.lead.Swap(rd.SoftState.Lead)
				leaderChanged = old != 0 && old != rd.SoftState.Lead
				isLeader = rd.SoftState.RaftState == raft.StateLeader
				if old != rd.SoftState.Lead {
					rc.lg.Info("leader changed", zap.Uint64("from", old), zap.Uint64("to", rd.SoftState.Lead), zap.Uint64("term", rc.node.Status().HardState.GetTerm()),
						zap.Stringer("state", rd.SoftState.RaftState), zap.String("reason", rc.leaderChangeReason(old, rd.SoftState.Lead)))
					metricLeaderChanges.Inc()
					hasLeader := 0.0
					if rd.SoftState.Lead != 0 {
						hasLeader = 1
					}
					metricHasLeader.Set(hasLeader)
				}
			}
			// The leader may send while it writes its own log (raft thesis
			// 10.2.1): raft counts the leader's own entries toward commit only
			// after Advance, i.e. once they are on disk. Followers must persist
			// before they acknowledge.
			if isLeader {
				rc.sendMessages(rd.Messages)
			}
			var snapToApply *raftpb.Snapshot
			var snapFile *snapFileLayout
			if !raft.IsEmptySnap(rd.Snapshot) {
				rc.snapMu.Lock()
				var err error
				if snapFile, err = rc.persistReceivedSnapshot(rd.Snapshot); err != nil {
					rc.lg.Fatal("cannot persist the snapshot sent by the leader", zap.Error(err))
				}
				snapToApply = rd.Snapshot
			}
			if !raft.IsEmptyHardState(rd.HardState) {
				metricCommitted.Set(float64(rd.HardState.GetCommit()))
				rc.term.Store(rd.HardState.GetTerm())
			}
			failpoint("wal-save-before")
			rc.walCutMu.Lock()
			err := rc.wal.Save(rd.HardState, rd.Entries)
			rc.walCutMu.Unlock()
			if err != nil {
				rc.lg.Fatal("cannot write to the wal; stopping rather than risk losing acknowledged writes", zap.Error(err))
			}
			failpoint("wal-save-after")
			if snapToApply != nil {
				// Save syncs only when entries, the term or the vote changed;
				// here the commit index alone may have moved, and its record
				// would sit in the WAL's buffer. The snapshot's WAL record
				// counts at restart only once a durable hard state commits it
				// (wal.ValidSnapshotEntries), so without this sync a crash
				// from here on restarts the member on an older snapshot and a
				// shorter log than it is about to report to the leader, and
				// the leader's next heartbeat panics it (etcd #10219). Sync
				// before the ack, the in-memory log and the purge rely on it.
				failpoint("snapshot-install-before-sync")
				if err := rc.wal.Sync(); err != nil {
					rc.lg.Fatal("cannot sync the wal after installing a snapshot", zap.Error(err))
				}
				if err := rc.raftStorage.applySnapshot(snapToApply); err != nil && !errors.Is(err, raft.ErrSnapOutOfDate) {
					rc.lg.Fatal("apply snapshot to raft log", zap.Error(err))
				}
				failpoint("snapshot-install-before-release")
				rc.releaseWAL(snapToApply.GetMetadata().GetIndex())
				rc.snapMu.Unlock()
				rc.lg.Info("installed snapshot from leader", zap.Uint64("index", snapToApply.GetMetadata().GetIndex()))
			}
			if err := rc.raftStorage.Append(rd.Entries); err != nil {
				rc.lg.Fatal("append to raft log", zap.Error(err))
			}
			if !isLeader {
				rc.sendMessages(rd.Messages)
			}
			if snapToApply != nil {
				failpoint("snapshot-install-acked")
			}
			for _, rs := range rd.ReadStates {
				select {
				case rc.readStateC <- rs:
				default: // readLoop retries with a new context
				}
			}
			// Everything raft asked of this Ready is on disk or sent, so it may
			// advance before the apply. On a Ready that only commits (a member
			// with nothing else to do) that goes first: the hand-off to the
			// apply goroutine is then this goroutine's last wake-up before it
			// blocks, and Go runs the apply next on this thread, 2 µs instead
			// of ~45 µs waiting for another thread to wake (1 PUT in flight,
			// 2-core VM). A Ready with new entries (a loaded member) keeps
			// the old order, so raft's next Ready is not queued behind the
			// apply: advancing first there cost 2-5 % of PUT/s at 16 clients.
			// A membership change keeps the old order too: publish waits for
			// its apply, and raft must not count it applied (and accept the
			// next change) before it is.
			advanced := len(rd.Entries) == 0 && !hasConfChange(rd.CommittedEntries)
			if advanced {
				rc.node.Advance()
			}
			if !rc.publish(snapToApply, snapFile, rd.CommittedEntries, leaderChanged) {
				return
			}
			if n := len(rd.CommittedEntries); n > 0 {
				// Raft hands each entry out to apply once; from here on it
				// wants these only for followers that are behind.
				rc.raftStorage.evict(rd.CommittedEntries[n-1].GetIndex())
				metricLogMemoryBytes.Set(float64(rc.raftStorage.memoryBytes()))
			}
			if !advanced {
				rc.node.Advance()
			}
			rc.maybeCheckpoint(rd.CommittedEntries)
		}
	}
}

// publish hands committed entries to the state machine. When they include a
// membership change it waits for the apply, so raft's view of the membership
// is current before it accepts the next change.
func (rc *raftNode) publish(snapshot *raftpb.Snapshot, file *snapFileLayout, ents []*raftpb.Entry, leaderChanged bool) bool {
	if snapshot == nil && len(ents) == 0 && !leaderChanged {
		return true
	}
	c := &commit{snapshot: snapshot, snapshotFile: file, entries: ents, leaderChanged: leaderChanged}
	if hasConfChange(ents) {
		c.applied = make(chan struct{})
	}
	select {
	case rc.commitC <- c:
	case <-rc.stopc:
		return false
	}
	if c.applied != nil {
		select {
		case <-c.applied:
		case <-rc.stopc:
			return false
		}
	}
	return true
}

// hasConfChange says whether ents hold a membership change (anything but a
// normal entry).
func hasConfChange(ents []*raftpb.Entry) bool {
	return slices.ContainsFunc(ents, func(e *raftpb.Entry) bool { return e.GetType() != raftpb.EntryNormal })
}

// prepareMessages drops messages to members that are gone; rafthttp would
// only log them.
func (rc *raftNode) prepareMessages(ms []*raftpb.Message) []*raftpb.Message {
	return slices.DeleteFunc(ms, func(m *raftpb.Message) bool { return rc.cfg.isRemoved(m.GetTo()) })
}

// saveSnapshot persists a snapshot the state machine made at index, its
// state streamed from body, and compacts the log behind it. Called from the
// state machine's snapshot goroutine; never blocks the ready loop except
// while a file is written.
func (rc *raftNode) saveSnapshot(index uint64, cs *raftpb.ConfState, body snapshotBody) error {
	rc.snapMu.Lock()
	defer rc.snapMu.Unlock()
	if rc.walClosed {
		return errStopping
	}
	if index <= rc.raftStorage.snapshotIndex() {
		return nil // a newer snapshot from the leader got here first
	}
	term, err := rc.raftStorage.Term(index)
	if err != nil {
		return fmt.Errorf("term of snapshot index %d: %w", index, err)
	}
	// The file and its WAL record are durable before raft's storage points
	// at it: raft may ask for the file to send it to a follower as soon as
	// createSnapshot returns. persistSnapshot's WAL record is synced, and
	// with it the hard state that committed index: readyLoop saved that
	// hard state before it published the entry that the state machine
	// applied before this snapshot was taken, and the WAL writes records in
	// order. So the snapshot is durable and valid at restart before
	// anything is released.
	err = rc.persistSnapshot(&raftpb.SnapshotMetadata{Index: new(index), Term: new(term), ConfState: cs}, body)
	if errors.Is(err, errSnapZeroCRC) {
		rc.lg.Warn("snapshot skipped: its checksum is 0, which the file format cannot hold; the next one will differ", zap.Uint64("index", index))
		return nil
	}
	if err != nil {
		return fmt.Errorf("persist snapshot at %d: %w", index, err)
	}
	if err := rc.raftStorage.createSnapshot(index, cs); err != nil {
		return fmt.Errorf("create snapshot at %d: %w", index, err)
	}
	failpoint("snapshot-saved-before-release")
	keep := min(uint64(maxCatchUpWindow), rc.cfg.snapshotCount)
	if index > keep {
		if err := rc.raftStorage.Compact(index - keep); err != nil && !errors.Is(err, raft.ErrCompacted) {
			return fmt.Errorf("compact raft log: %w", err)
		}
	}
	rc.releaseWAL(index)
	return nil
}

// proposeLoop feeds proposals to raft, packing every write waiting in
// proposeC into one entry so one Ready and one fsync carry them all.
func (rc *raftNode) proposeLoop() {
	var held *proposal // a membership change met while batching writes
	for {
		var p proposal
		if held != nil {
			p, held = *held, nil
		} else {
			select {
			case p = <-rc.proposeC:
			case <-rc.stopc:
				return
			}
		}
		if p.cc != nil {
			if p.ctx.Err() != nil {
				continue // the requester gave up (and was told the outcome is unknown)
			}
			err := rc.withDeadline(func(ctx context.Context) error { return rc.node.ProposeConfChange(ctx, p.cc) })
			if err != nil {
				p.done(proposeError(err))
			} else {
				p.accepted()
			}
			continue
		}
		var batch []proposal
		size := 0
		add := func(q proposal) {
			if q.ctx.Err() == nil { // else the requester gave up (and was told the outcome is unknown)
				batch = append(batch, q)
				size += len(q.data)
			}
		}
		add(p)
	drain:
		for len(batch) < maxBatchRecords && size < maxBatchBytes {
			select {
			case q := <-rc.proposeC:
				if q.cc != nil {
					held = &q
					break drain
				}
				add(q)
			default:
				break drain
			}
		}
		if len(batch) == 0 {
			continue
		}
		data := batch[0].data
		if len(batch) > 1 {
			data = make([]byte, 0, size)
			for _, q := range batch {
				data = append(data, q.data...)
			}
		}
		err := rc.withDeadline(func(ctx context.Context) error { return rc.node.Propose(ctx, data) })
		for _, q := range batch {
			if err != nil {
				q.done(proposeError(err))
			} else {
				q.accepted()
			}
		}
	}
}

// withDeadline runs a raft call bounded by the request timeout and by stop.
// Propose blocks while there is no leader; the deadline ends that wait.
func (rc *raftNode) withDeadline(call func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(rc.stopCtx, rc.cfg.requestTimeout)
	defer cancel()
	return call(ctx)
}

func proposeError(err error) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return errNoLeader
	case errors.Is(err, raft.ErrStopped):
		return errStopping
	case errors.Is(err, raft.ErrProposalDropped):
		return errNoLeader
	}
	return fmt.Errorf("propose: %w", err)
}

// The rafthttp.Raft interface: how the transport reaches raft.

func (rc *raftNode) Process(ctx context.Context, m *raftpb.Message) error {
	now := time.Now().UnixNano()
	if t, ok := rc.heard.Load(m.GetFrom()); ok {
		t.(*atomic.Int64).Store(now)
	} else {
		t := new(atomic.Int64)
		t.Store(now)
		rc.heard.Store(m.GetFrom(), t)
	}
	if m.GetType() == raftpb.MsgSnap {
		if err := rc.checkReceivedSnapshot(m); err != nil {
			return err
		}
		failpoint("snapshot-received")
	}
	if m.GetType() == raftpb.MsgReadIndex && rc.queueRemoteRead(m) {
		return nil
	}
	return rc.node.Step(ctx, m)
}

// lastContact is when a message from peer id last arrived (zero: never,
// since this member started).
func (rc *raftNode) lastContact(id uint64) time.Time {
	if t, ok := rc.heard.Load(id); ok {
		return time.Unix(0, t.(*atomic.Int64).Load())
	}
	return time.Time{}
}
func (rc *raftNode) IsIDRemoved(id uint64) bool { return rc.cfg.isRemoved(id) }
func (rc *raftNode) ReportUnreachable(id uint64) {
	rc.node.ReportUnreachable(id)
}
func (rc *raftNode) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	rc.node.ReportSnapshot(id, status)
}

// loopAge is how long ago the ready loop last ticked raft; a loop stuck
// in a write or fsync stops ticking.
func (rc *raftNode) loopAge() time.Duration {
	last := rc.lastTick.Load()
	if last == 0 {
		return 0 // not started yet
	}
	return time.Since(time.Unix(0, last))
}

// What the state machine asks of raft (raftCalls, peerSet).

func (rc *raftNode) applyConfChange(cc *raftpb.ConfChange) *raftpb.ConfState {
	return rc.node.ApplyConfChange(cc)
}

// setPeer points the transport at a member. A member listed in this node's
// own --cluster is reached at that address: each node may have its own route
// to a peer (NAT, proxies), so the replicated URL is used only for members
// added after this node's --cluster was written.
func (rc *raftNode) setPeer(id uint64, peerURL string) {
	if id >= 1 && id <= uint64(len(rc.cfg.peers)) {
		peerURL = rc.cfg.peers[id-1]
	}
	old, known := rc.peerURLs[id]
	switch {
	case !known:
		rc.transport.AddPeer(types.ID(id), []string{peerURL})
	case old != peerURL:
		rc.transport.UpdatePeer(types.ID(id), []string{peerURL})
	}
	rc.peerURLs[id] = peerURL
}

func (rc *raftNode) removePeer(id uint64) {
	if _, known := rc.peerURLs[id]; known {
		rc.transport.RemovePeer(types.ID(id))
		delete(rc.peerURLs, id)
	}
}

// leader returns the current leader's id, 0 if none is known.
func (rc *raftNode) leader() uint64 { return rc.lead.Load() }

// transferLeadership asks raft to hand leadership from lead to to; a
// follower forwards the request to the leader. raft gives up after an
// election timeout if to has not caught up by then. On the leader, to ==
// lead drops a transfer in progress (raft's stepLeader aborts the pending
// one before it ignores a transfer to itself).
func (rc *raftNode) transferLeadership(ctx context.Context, lead, to uint64) {
	if to == lead {
		rc.transferTo.Store(0)
	} else {
		rc.transferTo.Store(to)
	}
	rc.node.TransferLeadership(ctx, lead, to)
}

// leaderChangeReason says why the leader moved from old to lead, as far as
// this member can tell, for the log line.
func (rc *raftNode) leaderChangeReason(old, lead uint64) string {
	switch {
	case lead == 0:
		return "no leader known: an election is under way, or this member is cut off from the leader"
	case rc.transferTo.CompareAndSwap(lead, 0):
		return "leadership transfer asked for on this member"
	case old == 0 && lead == rc.cfg.id:
		return "this member won an election"
	case old == 0:
		return "heard from the leader"
	case lead == rc.cfg.id:
		return "this member won an election (the old leader stopped answering, or handed over)"
	}
	return "another member won an election (the old leader stopped answering, or handed over)"
}

// peerActive reports whether this member has a live connection to member
// id (itself counts), as rafthttp sees it.
func (rc *raftNode) peerActive(id uint64) bool {
	return id == rc.cfg.id || !rc.transport.ActiveSince(types.ID(id)).IsZero()
}

// status asks the raft goroutine for its state; zero once raft has stopped.
func (rc *raftNode) status() raft.Status { return rc.node.Status() }

// logBounds describes the persisted raft log as raft's storage holds it.
type logBounds struct {
	snapshot  uint64 // index of the newest snapshot
	compacted uint64 // entries up to here are discarded: a member behind it needs a snapshot
	last      uint64 // last persisted entry
}

func (rc *raftNode) logBounds() logBounds {
	var b logBounds
	b.snapshot = rc.raftStorage.snapshotIndex()
	if first, err := rc.raftStorage.FirstIndex(); err == nil {
		b.compacted = first - 1
	}
	if last, err := rc.raftStorage.LastIndex(); err == nil {
		b.last = last
	}
	return b
}

// raftLogger adapts zap to raft's logger. Raft panics when its log on disk
// contradicts what the cluster knows of it; the panic line then also says
// what this member found on disk at start.
type raftLogger struct {
	s         *zap.SugaredLogger
	diskState string
}

func (l *raftLogger) Debug(v ...any)                   { l.s.Debug(v...) }
func (l *raftLogger) Debugf(format string, v ...any)   { l.s.Debugf(format, v...) }
func (l *raftLogger) Info(v ...any)                    { l.s.Info(v...) }
func (l *raftLogger) Infof(format string, v ...any)    { l.s.Infof(format, v...) }
func (l *raftLogger) Warning(v ...any)                 { l.s.Warn(v...) }
func (l *raftLogger) Warningf(format string, v ...any) { l.s.Warnf(format, v...) }
func (l *raftLogger) Error(v ...any)                   { l.s.Error(v...) }
func (l *raftLogger) Errorf(format string, v ...any)   { l.s.Errorf(format, v...) }
func (l *raftLogger) Fatal(v ...any)                   { l.s.Fatal(v...) }
func (l *raftLogger) Fatalf(format string, v ...any)   { l.s.Fatalf(format, v...) }
func (l *raftLogger) Panic(v ...any)                   { l.s.With("on-disk-at-start", l.diskState).Panic(v...) }
func (l *raftLogger) Panicf(format string, v ...any) {
	l.s.With("on-disk-at-start", l.diskState).Panicf(format, v...)
}
