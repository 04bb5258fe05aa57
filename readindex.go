package main

import (
	"context"
	"encoding/binary"
	"errors"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// Linearizable reads: ReadIndex rounds, shared by every read waiting on a
// member, and on the leader by its followers' reads too.
//
// A follower's raft forwards each ReadIndex request to the leader as a
// MsgReadIndex; raft on the leader answers each one with a heartbeat
// broadcast of its own. With reads arriving on every member that is three
// broadcasts, and their answers, where one would confirm the leadership
// for all. So the leader's Process takes a follower's MsgReadIndex out of
// raft's way and queues it for its own read loop, which answers it, as
// raft would, with the index of a round that started after the request
// arrived, in a MsgReadIndexResp of the term it led in throughout the
// round. The follower's raft turns that answer into its ReadState as
// usual. That index is what raft's own answer would be: the leader's
// commit index at the start of a round whose heartbeats a quorum of the
// same term acknowledged after the request arrived.
//
// When the round fails, or the leader, or the term, changed while it ran,
// the queued requests are dropped, as raft drops requests when leadership
// changes: the follower asks again with a new context after
// readRetryEvery.

// maxRemoteReads bounds the followers' requests queued for the next round;
// beyond it they are dropped (and asked again). Each follower has about
// one request out per round of its own.
const maxRemoteReads = 1024

type readResult struct {
	index uint64
	err   error
}

// remoteRead is a follower's ReadIndex request queued on the leader.
type remoteRead struct {
	from uint64
	ents []*raftpb.Entry // the request's context, echoed in the answer
}

// readIndex returns an index such that applying up to it makes a read
// linearizable. Concurrent callers share one ReadIndex round.
func (rc *raftNode) readIndex(ctx context.Context) (uint64, error) {
	ch := make(chan readResult, 1)
	select {
	case rc.readReqC <- ch:
	case <-ctx.Done():
		return 0, errTimeout
	case <-rc.stopc:
		return 0, errStopping
	}
	select {
	case r := <-ch:
		return r.index, r.err
	case <-ctx.Done():
		return 0, errTimeout
	}
}

// queueRemoteRead takes a follower's MsgReadIndex for the leader's next
// round. It reports false when raft should step it instead: this member is
// not the leader as far as the ready loop has seen, or the message is not
// one raft would answer.
func (rc *raftNode) queueRemoteRead(m *raftpb.Message) bool {
	if rc.lead.Load() != rc.cfg.id || m.GetFrom() == 0 || m.GetFrom() == rc.cfg.id || len(m.GetEntries()) != 1 {
		return false
	}
	rc.remoteMu.Lock()
	queued := len(rc.remoteReads) < maxRemoteReads
	if queued {
		rc.remoteReads = append(rc.remoteReads, remoteRead{from: m.GetFrom(), ents: m.GetEntries()})
	}
	rc.remoteMu.Unlock()
	if !queued {
		rc.lg.Debug("too many followers' reads queued; dropping one (the follower asks again)", zap.Uint64("from", m.GetFrom()))
		return true
	}
	select {
	case rc.remoteReadC <- struct{}{}:
	default: // the read loop has been told already
	}
	return true
}

func (rc *raftNode) takeRemoteReads() []remoteRead {
	rc.remoteMu.Lock()
	defer rc.remoteMu.Unlock()
	q := rc.remoteReads
	rc.remoteReads = nil
	return q
}

// readLoop serves ReadIndex requests: all requests that arrive while a round
// is in flight are answered together by the next round.
func (rc *raftNode) readLoop() {
	for {
		var batch []chan<- readResult
		select {
		case ch := <-rc.readReqC:
			batch = append(batch, ch)
		case <-rc.remoteReadC:
		case <-rc.stopc:
			return
		}
	drain:
		for {
			select {
			case ch := <-rc.readReqC:
				batch = append(batch, ch)
			default:
				break drain
			}
		}
		// Taken after the wake-up, so every request here arrived before
		// the round below starts; one queued after this waits for the next.
		remote := rc.takeRemoteReads()
		if len(batch) == 0 && len(remote) == 0 {
			continue // a wake-up for requests an earlier round took
		}
		lead, term := rc.lead.Load(), rc.term.Load()
		start := time.Now()
		index, err := rc.readIndexRound()
		metricReadIndex.Observe(time.Since(start).Seconds())
		for _, ch := range batch {
			ch <- readResult{index: index, err: err}
		}
		if len(remote) > 0 {
			rc.answerRemoteReads(remote, index, err == nil && lead == rc.cfg.id && rc.lead.Load() == lead && rc.term.Load() == term, term)
		}
	}
}

// answerRemoteReads sends followers the index of a round this member ran
// as leader of term throughout (ok), or drops their requests.
func (rc *raftNode) answerRemoteReads(remote []remoteRead, index uint64, ok bool, term uint64) {
	if !ok {
		rc.lg.Debug("dropping followers' reads: the round failed or leadership changed during it", zap.Int("reads", len(remote)))
		return
	}
	ms := make([]*raftpb.Message, 0, len(remote))
	for _, r := range remote {
		ms = append(ms, &raftpb.Message{
			Type: raftpb.MsgReadIndexResp.Enum(), From: new(rc.cfg.id), To: new(r.from),
			Term: new(term), Index: new(index), Entries: r.ents,
		})
	}
	metricRemoteReads.Add(float64(len(ms)))
	rc.sendReadAnswers(ms)
}

// readIndexRound asks raft for the commit index confirmed by a quorum,
// retrying with a fresh request context when raft drops the request (no
// leader yet, leader changed), until requestTimeout passes.
func (rc *raftNode) readIndexRound() (uint64, error) {
	deadline := time.NewTimer(rc.cfg.requestTimeout)
	defer deadline.Stop()
	retry := time.NewTicker(readRetryEvery)
	defer retry.Stop()
	for {
		rctx := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, rc.cfg.id), rc.readSeq.Add(1))
		ctx, cancel := context.WithTimeout(context.Background(), readRetryEvery)
		err := rc.node.ReadIndex(ctx, rctx)
		cancel()
		if errors.Is(err, raft.ErrStopped) {
			return 0, errStopping
		}
	wait:
		for {
			select {
			case rs := <-rc.readStateC:
				if string(rs.RequestCtx) == string(rctx) {
					return rs.Index, nil
				}
				// an answer to an earlier attempt: stale, keep waiting
			case <-retry.C:
				break wait
			case <-deadline.C:
				if rc.lead.Load() == 0 {
					return 0, errNoLeader
				}
				return 0, errTimeout
			case <-rc.stopc:
				return 0, errStopping
			}
		}
	}
}
