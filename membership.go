package main

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/url"
	"strconv"
	"sync"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// membership is the applied cluster membership: the members with their
// peer URLs, and every id ever removed (a removed id is never reused).
// Client URLs are not part of a membership change: each member publishes
// its own through the log once it runs (opMemberAttrs), so they are
// replicated and snapshotted like the rest but may be unknown for a while.
// Changed only by the state machine's apply goroutine (applyMembership,
// restore); read by anyone: the raft node asks isRemoved on every message.
//
// Learners are members that receive the log but do not vote, until a
// promotion makes them voters; raft's ConfState is the source of truth for
// who is one, and snapshots carry it in their metadata.
type membership struct {
	mu       sync.RWMutex // guards the maps
	members  map[uint64]string
	removed  map[uint64]bool
	learners map[uint64]bool   // a subset of members
	clients  map[uint64]string // client URLs, of members only
}

func newMembership() *membership {
	return &membership{members: map[uint64]string{}, removed: map[uint64]bool{}, learners: map[uint64]bool{}, clients: map[uint64]string{}}
}

// peerSet is how the apply path changes whom the transport talks to.
type peerSet interface {
	setPeer(id uint64, peerURL string)
	removePeer(id uint64)
}

// isRemoved reports whether a member id was removed by an applied change.
func (m *membership) isRemoved(id uint64) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.removed[id]
}

// lookup tells whether id is a member (and a learner) or was removed, and
// how many members and voters there are.
func (m *membership) lookup(id uint64) (isMember, isLearner, wasRemoved bool, n, voters int) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	_, isMember = m.members[id]
	return isMember, m.learners[id], m.removed[id], len(m.members), len(m.members) - len(m.learners)
}

// learnerSet returns a copy of the learners.
func (m *membership) learnerSet() map[uint64]bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return maps.Clone(m.learners)
}

// highestID is the highest id ever used, removed ones included.
func (m *membership) highestID() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var h uint64
	for id := range m.members {
		h = max(h, id)
	}
	for id := range m.removed {
		h = max(h, id)
	}
	return h
}

// list returns copies of the members and the removed ids.
func (m *membership) list() (map[uint64]string, map[uint64]bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return maps.Clone(m.members), maps.Clone(m.removed)
}

// clientURLs returns a copy of the published client URLs.
func (m *membership) clientURLs() map[uint64]string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return maps.Clone(m.clients)
}

// clientURL is member id's published client URL ("" if none).
func (m *membership) clientURL(id uint64) string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.clients[id]
}

// setClientURL records a member's client URL; it reports false, and
// records nothing, for an id that is not a member (it was removed after
// it published).
func (m *membership) setClientURL(id uint64, u string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.members[id]; !ok {
		return false
	}
	m.clients[id] = u
	return true
}

// replace sets the whole membership (from a snapshot) and returns the
// members it had before.
func (m *membership) replace(members map[uint64]string, removed, learners map[uint64]bool, clients map[uint64]string) map[uint64]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.members
	m.members, m.removed, m.learners, m.clients = members, removed, learners, clients
	return old
}

func (m *membership) add(id uint64, peerURL string, learner bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.members[id] = peerURL
	if learner {
		m.learners[id] = true
	}
}

func (m *membership) promote(id uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.learners, id)
}

func (m *membership) remove(id uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.members, id)
	delete(m.learners, id)
	delete(m.clients, id)
	m.removed[id] = true
}

// applyMembership checks a committed membership change against the applied
// membership (the same verdict on every node) and applies it, or turns it into
// a no-op for raft and returns why.
func (s *kvstore) applyMembership(cc *raftpb.ConfChange, index uint64) error {
	id := cc.GetNodeId()
	isMember, isLearner, wasRemoved, nMembers, nVoters := s.members.lookup(id)
	promote := cc.GetType() == raftpb.ConfChangeAddNode && isMember && isLearner

	var verdict error
	switch cc.GetType() {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
		switch {
		case promote:
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
		case nMembers == 1 || (nVoters == 1 && !isLearner):
			verdict = errLastMember
		}
	default:
		verdict = fmt.Errorf("%w: unsupported type %v", errRejectedChange, cc.GetType())
	}
	if verdict != nil {
		// raft must still see the entry applied; node id 0 makes it a no-op.
		noop := &raftpb.ConfChange{Type: new(raftpb.ConfChangeAddNode), NodeId: new(uint64(0))}
		s.confState = s.raft.applyConfChange(noop)
		s.mu.Lock()
		s.applied = index
		s.mu.Unlock()
		s.lg.Warn("rejected membership change", zap.Uint64("index", index), zap.Uint64("peer", id), zap.Error(verdict))
		return verdict
	}

	s.confState = s.raft.applyConfChange(cc)
	failpoint("conf-change-applied")
	switch {
	case promote:
		s.members.promote(id)
	case cc.GetType() == raftpb.ConfChangeRemoveNode:
		s.members.remove(id)
	default:
		s.members.add(id, string(cc.GetContext()), cc.GetType() == raftpb.ConfChangeAddLearnerNode)
	}
	s.mu.Lock()
	s.applied = index
	s.mu.Unlock()

	if promote {
		s.lg.Info("learner promoted to voter", zap.Uint64("peer", id), zap.Uint64("index", index))
		return nil
	}
	if cc.GetType() != raftpb.ConfChangeRemoveNode {
		s.forceSnap = s.lastSnap > 0
		s.lg.Info("member added", zap.Uint64("peer", id), zap.String("peer-url", string(cc.GetContext())),
			zap.Bool("learner", cc.GetType() == raftpb.ConfChangeAddLearnerNode), zap.Uint64("index", index))
		if id != s.selfID {
			s.peers.setPeer(id, string(cc.GetContext()))
		}
		return nil
	}
	s.lg.Info("member removed", zap.Uint64("peer", id), zap.Uint64("index", index))
	if id == s.selfID {
		s.removedOnce.Do(func() { close(s.removedSelf) })
	} else {
		s.peers.removePeer(id)
	}
	return nil
}

// AddMember proposes adding a member reachable at peerURL: a voter, or a
// learner (it receives the log, does not vote, until promoted).
func (s *kvstore) AddMember(ctx context.Context, id uint64, peerURL string, learner bool) (uint64, error) {
	isMember, _, wasRemoved, _, _ := s.members.lookup(id)
	switch {
	case isMember:
		return 0, errMemberExists
	case wasRemoved:
		return 0, errMemberGone
	}
	kind := raftpb.ConfChangeAddNode
	if learner {
		kind = raftpb.ConfChangeAddLearnerNode
	}
	return s.proposeChange(ctx, kind, id, peerURL)
}

// PromoteMember proposes making learner id a voter.
func (s *kvstore) PromoteMember(ctx context.Context, id uint64) (uint64, error) {
	isMember, isLearner, _, _, _ := s.members.lookup(id)
	switch {
	case !isMember:
		return 0, errNoMember
	case !isLearner:
		return 0, errNotLearner
	}
	return s.proposeChange(ctx, raftpb.ConfChangeAddNode, id, "")
}

// RemoveMember proposes removing a member.
func (s *kvstore) RemoveMember(ctx context.Context, id uint64) (uint64, error) {
	isMember, isLearner, _, n, voters := s.members.lookup(id)
	switch {
	case !isMember:
		return 0, errNoMember
	case n == 1 || (voters == 1 && !isLearner):
		return 0, errLastMember
	}
	return s.proposeChange(ctx, raftpb.ConfChangeRemoveNode, id, "")
}

func (s *kvstore) proposeChange(ctx context.Context, kind raftpb.ConfChangeType, id uint64, peerURL string) (uint64, error) {
	reqID := s.nextID.Add(1)
	cc := &raftpb.ConfChange{Type: new(kind), NodeId: new(id), Id: new(reqID)}
	if peerURL != "" {
		cc.Context = []byte(peerURL)
	}
	res, err := s.propose(ctx, reqID, proposal{cc: cc})
	return res.index, err
}

// PublishClientURL proposes recording u as this member's client URL.
func (s *kvstore) PublishClientURL(ctx context.Context, u string) error {
	res, err := s.Apply(ctx, &op{kind: opMemberAttrs, member: s.selfID, value: u})
	if err == nil && !res.succeeded {
		err = errNoMember
	}
	return err
}

// Members returns a copy of the applied membership.
func (s *kvstore) Members() map[uint64]string {
	members, _ := s.members.list()
	return members
}

// validatePeerURL accepts http(s)://host:port with nothing after it.
func validatePeerURL(raw string) error { return validateURL("peer", raw) }

// validateURL checks a peer or client URL: http(s)://host:port with
// nothing after it.
func validateURL(what, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%s URL %q is not a URL: %w", what, raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%s URL %q must start with http:// or https://", what, raw)
	}
	if u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || u.ForceQuery {
		return fmt.Errorf("%s URL %q must be scheme://host:port with no user, path, query or fragment", what, raw)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return fmt.Errorf("%s URL %q must name a host and a port", what, raw)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("%s URL %q has an invalid port", what, raw)
	}
	return nil
}
