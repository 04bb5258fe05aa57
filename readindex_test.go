package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// TestFollowersReadsSeeEveryWriteAcknowledgedBefore: the leader answers
// its followers' ReadIndex requests from its own rounds (readindex.go), and
// a linearizable read on a follower must still see every write that was
// acknowledged before the read was sent. One writer bumps a counter on the
// leader as fast as it can while readers on both followers check that what
// they read is at least the last value acknowledged before they asked.
func TestFollowersReadsSeeEveryWriteAcknowledgedBefore(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	c.mustPut(lead, "ctr", "0")
	answered := testutil.ToFloat64(metricRemoteReads)

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	defer client.CloseIdleConnections()
	var acked atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := int64(1); i <= 20000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			req, _ := http.NewRequest("PUT", c.url(lead, "/ctr"), strings.NewReader(strconv.FormatInt(i, 10)))
			resp, err := client.Do(req)
			if err != nil {
				errs <- fmt.Errorf("PUT %d: %v", i, err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNoContent {
				errs <- fmt.Errorf("PUT %d: %d", i, resp.StatusCode)
				return
			}
			acked.Store(i)
		}
	}()
	var reads, stale atomic.Int64
	for n := range c.nodes {
		if n == lead {
			continue
		}
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 5000 {
					select {
					case <-stop:
						return
					default:
					}
					before := acked.Load()
					r, err := tryDoWith(client, "GET", c.url(n, "/ctr"), "")
					if err != nil || r.code != http.StatusOK {
						errs <- fmt.Errorf("GET on member %d: %v %d %s", n+1, err, r.code, r.body)
						return
					}
					got, _ := strconv.ParseInt(r.body, 10, 64)
					reads.Add(1)
					if got < before {
						stale.Add(1)
						select {
						case errs <- fmt.Errorf("member %d read %d after %d was acknowledged", n+1, got, before):
						default:
						}
					}
				}
			}()
		}
	}
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if stale.Load() > 0 {
		t.Errorf("%d of %d follower reads were stale", stale.Load(), reads.Load())
	}
	if acked.Load() < 100 || reads.Load() < 100 {
		t.Fatalf("only %d writes and %d reads in 2 s: nothing was tested", acked.Load(), reads.Load())
	}
	if got := testutil.ToFloat64(metricRemoteReads) - answered; got == 0 {
		t.Errorf("the leader answered none of its followers' reads from its own rounds (%d follower reads)", reads.Load())
	}
	t.Logf("%d writes, %d follower reads, %.0f follower requests answered by the leader's rounds", acked.Load(), reads.Load(), testutil.ToFloat64(metricRemoteReads)-answered)
}

// readNode is the part of raft.Node that the read loop calls: each
// ReadIndex request's context goes to asked, and the test answers it.
type readNode struct {
	raft.Node
	asked chan []byte
}

func (n *readNode) ReadIndex(_ context.Context, rctx []byte) error {
	n.asked <- rctx
	return nil
}

// TestLeaderAnswersFollowersFromARoundStartedAfterTheirRequest drives the
// read loop with a stand-in for raft: a follower's request that arrives
// while a round is in flight is answered by the next round, not by the one
// in flight (which may have started before a write the follower's client
// saw acknowledged); requests are dropped, not answered, when the term
// changed during their round; a member that does not lead leaves them to
// raft.
func TestLeaderAnswersFollowersFromARoundStartedAfterTheirRequest(t *testing.T) {
	node := &readNode{asked: make(chan []byte, 1)}
	sent := make(chan []*raftpb.Message, 4)
	rc := &raftNode{
		cfg:             raftConfig{id: 1, requestTimeout: 5 * time.Second},
		lg:              zap.NewNop(),
		node:            node,
		readReqC:        make(chan chan<- readResult, 16),
		readStateC:      make(chan raft.ReadState, 16),
		remoteReadC:     make(chan struct{}, 1),
		stopc:           make(chan struct{}),
		sendReadAnswers: func(ms []*raftpb.Message) { sent <- ms },
	}
	rc.lead.Store(1)
	rc.term.Store(5)
	done := make(chan struct{})
	go func() { defer close(done); rc.readLoop() }()
	defer func() { close(rc.stopc); <-done }()

	ask := func(from uint64, ctx string) {
		t.Helper()
		m := &raftpb.Message{Type: raftpb.MsgReadIndex.Enum(), From: new(from), To: new(uint64(1)),
			Entries: []*raftpb.Entry{{Data: []byte(ctx)}}}
		if !rc.queueRemoteRead(m) {
			t.Fatalf("the leader left follower %d's read to raft", from)
		}
	}
	round := func() []byte {
		t.Helper()
		select {
		case rctx := <-node.asked:
			return rctx
		case <-time.After(5 * time.Second):
			t.Fatal("no ReadIndex round started")
			return nil
		}
	}
	answers := func() []*raftpb.Message {
		t.Helper()
		select {
		case ms := <-sent:
			return ms
		case <-time.After(5 * time.Second):
			t.Fatal("no answer sent")
			return nil
		}
	}
	check := func(ms []*raftpb.Message, want map[string]uint64, term uint64) {
		t.Helper()
		got := map[string]uint64{}
		for _, m := range ms {
			if m.GetType() != raftpb.MsgReadIndexResp || m.GetFrom() != 1 || m.GetTerm() != term || len(m.GetEntries()) != 1 {
				t.Fatalf("answer %v, want a MsgReadIndexResp from 1 in term %d echoing the request's context", m, term)
			}
			got[fmt.Sprintf("%d:%s", m.GetTo(), m.GetEntries()[0].GetData())] = m.GetIndex()
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("answered %v, want %v", got, want)
		}
	}

	ask(2, "a")
	r1 := round()
	ask(3, "b") // arrives while the first round is in flight
	rc.readStateC <- raft.ReadState{Index: 10, RequestCtx: r1}
	check(answers(), map[string]uint64{"2:a": 10}, 5)
	r2 := round()
	rc.readStateC <- raft.ReadState{Index: 11, RequestCtx: r2}
	check(answers(), map[string]uint64{"3:b": 11}, 5)

	// A new term while the round runs: whatever the round says, this
	// member did not lead throughout it.
	ask(2, "c")
	r3 := round()
	rc.term.Store(6)
	rc.readStateC <- raft.ReadState{Index: 12, RequestCtx: r3}
	ask(3, "d")
	r4 := round()
	rc.readStateC <- raft.ReadState{Index: 13, RequestCtx: r4}
	check(answers(), map[string]uint64{"3:d": 13}, 6) // c was dropped, not answered

	rc.lead.Store(2)
	m := &raftpb.Message{Type: raftpb.MsgReadIndex.Enum(), From: new(uint64(3)), Entries: []*raftpb.Entry{{Data: []byte("e")}}}
	if rc.queueRemoteRead(m) {
		t.Fatal("a member that does not lead queued a follower's read instead of leaving it to raft")
	}
}
