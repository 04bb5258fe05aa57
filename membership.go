package main

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/url"
	"strconv"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

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
	res, err := s.propose(ctx, reqID, proposal{cc: cc})
	return res.index, err
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
	res, err := s.propose(ctx, reqID, proposal{cc: cc})
	return res.index, err
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
