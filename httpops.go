package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/tracker"
	"go.uber.org/zap"
)

// Membership and leadership as an operator sees them:
//
//	GET    /v1/members               every member; the leader adds each one's progress
//	POST   /v1/members               {"id": n, "peer_url": u, "learner": b}: add one (id optional)
//	DELETE /v1/members/<id>          remove one (the leader hands over leadership first)
//	POST   /v1/members/<id>/promote  make a learner a voter, once it has caught up
//	POST   /v1/leader/transfer       {"to": id}: move leadership, answer once it moved

// maxPromoteLag is how far behind the leader's log a learner may be and
// still be promoted: a voter that far behind would hold up commits.
const maxPromoteLag = 1000

func (h *httpAPI) serveMembers(w http.ResponseWriter, r *http.Request, rest string) {
	idText, action, _ := strings.Cut(rest, "/")
	switch {
	case rest == "" && !h.methods(w, r, http.MethodGet, http.MethodHead, http.MethodPost):
	case rest == "" && r.Method == http.MethodPost:
		h.addMemberV1(w, r)
	case rest == "":
		h.members(w, r)
	case action == "" || action == "promote":
		id, err := strconv.ParseUint(idText, 10, 64)
		if err != nil || id == 0 {
			h.reject(w, r, http.StatusBadRequest, "bad_member_id", "member id must be a decimal number greater than 0, not "+strconv.Quote(idText))
			return
		}
		if action == "promote" {
			if h.methods(w, r, http.MethodPost) {
				h.promote(w, r, id)
			}
			return
		}
		if !h.methods(w, r, http.MethodDelete) {
			return
		}
		if _, ok := h.query(w, r); !ok {
			return
		}
		if !h.membershipCurrent(w, r) || !h.strictCheck(w, r, id, -1) {
			return
		}
		h.changed(w, r, http.StatusOK, id, h.removal(r, id))
	default:
		h.reject(w, r, http.StatusNotFound, "no_route", "no such route "+strconv.Quote(r.URL.Path)+"; see /v1/members/<id> and /v1/members/<id>/promote")
	}
}

func (h *httpAPI) addMemberV1(w http.ResponseWriter, r *http.Request) {
	body, ok := h.bodyNoQuery(w, r)
	if !ok {
		return
	}
	var req struct {
		ID      *uint64 `json:"id"`
		PeerURL string  `json:"peer_url"`
		Learner bool    `json:"learner"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		h.reject(w, r, http.StatusBadRequest, "bad_request", `want {"peer_url": "http://host:port", "learner": true, "id": <optional>}: `+err.Error())
		return
	}
	if err := validatePeerURL(req.PeerURL); err != nil {
		h.reject(w, r, http.StatusBadRequest, "bad_peer_url", err.Error())
		return
	}
	if !h.membershipCurrent(w, r) {
		return
	}
	id := h.store.members.highestID() + 1
	if req.ID != nil {
		if *req.ID == 0 {
			h.reject(w, r, http.StatusBadRequest, "bad_member_id", "member id must be greater than 0")
			return
		}
		id = *req.ID
	}
	if !req.Learner && !h.strictCheck(w, r, id, +1) {
		return
	}
	index, ok := h.runChange(w, r, func(ctx context.Context) (uint64, error) { return h.store.AddMember(ctx, id, req.PeerURL, req.Learner) })
	if ok {
		writeJSON(w, http.StatusCreated, map[string]any{"id": id, "peer_url": req.PeerURL, "learner": req.Learner, "index": index})
	}
}

// promote makes a learner a voter, once the leader sees it caught up.
func (h *httpAPI) promote(w http.ResponseWriter, r *http.Request, id uint64) {
	if _, ok := h.query(w, r); !ok || !h.membershipCurrent(w, r) {
		return
	}
	st := h.raftStatus()
	if h.forwardToLeader(w, r, st) {
		return
	}
	if st.RaftState != raft.StateLeader {
		h.reject(w, r, http.StatusConflict, "not_leader", fmt.Sprintf("send this to the leader (member %d): only it knows how far behind the learner is", st.Lead))
		return
	}
	if pr, ok := st.Progress[id]; ok && pr.IsLearner {
		last := h.logBounds().last
		// Replicating (not probing, nor waiting for a snapshot), heard
		// from lately, and near the end of the log.
		if lag := last - min(last, pr.Match); lag > maxPromoteLag || pr.Match == 0 || !pr.RecentActive || pr.State != tracker.StateReplicate {
			h.reject(w, r, http.StatusConflict, "learner_behind", fmt.Sprintf("learner %d is %d entries behind the leader (at most %d to promote; replication state %v, reachable %v); retry once it has caught up", id, lag, maxPromoteLag, pr.State, pr.RecentActive))
			return
		}
	}
	if !h.strictCheck(w, r, id, +1) {
		return
	}
	h.changed(w, r, http.StatusOK, id, func(ctx context.Context) (uint64, error) { return h.store.PromoteMember(ctx, id) })
}

// membershipCurrent makes this member apply everything committed before
// the request arrived (a ReadIndex round), so that the checks a membership
// change makes here (the new id, whether the member exists, whether a
// quorum stays reachable) see every change acknowledged before it, by any
// member: a member that lagged picked an id just removed, or found no
// member just added. The round also orders the proposal after the leader
// has told raft the last change is applied: raft answers ReadIndex through
// a Ready, and the leader's raft loop takes the next Ready only after it
// advanced past the one that applied (and answered) that change. Proposed
// before, raft's leader drops a change ("possible unapplied conf change").
// It answers the request itself (503) if it cannot.
func (h *httpAPI) membershipCurrent(w http.ResponseWriter, r *http.Request) bool {
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	if err := h.store.sync(ctx, true); err != nil {
		h.fail(w, r, err)
		return false
	}
	return true
}

// changed runs a membership change and answers {"id", "index"} as JSON.
func (h *httpAPI) changed(w http.ResponseWriter, r *http.Request, status int, id uint64, change func(context.Context) (uint64, error)) {
	if index, ok := h.runChange(w, r, change); ok {
		writeJSON(w, status, map[string]any{"id": id, "index": index})
	}
}

type memberJSON struct {
	ID        uint64 `json:"id"`
	PeerURL   string `json:"peer_url"`
	ClientURL string `json:"client_url,omitempty"` // absent until the member has published it
	Voter     bool   `json:"voter"`
	Leader    bool   `json:"leader"`
	// When the answering member last heard from it (absent for itself and
	// for members it has not heard from since it started).
	LastContact *time.Time `json:"last_contact,omitempty"`
	// From the leader's view only (absent on other members):
	Match     *uint64 `json:"match,omitempty"`     // highest index known to be on it
	Lag       *uint64 `json:"lag,omitempty"`       // the leader's last index minus match
	Reachable *bool   `json:"reachable,omitempty"` // heard from within an election timeout
}

type membersReply struct {
	Member  uint64       `json:"member"` // who answered
	Leader  uint64       `json:"leader"` // 0: none known
	View    string       `json:"view"`   // "leader": progress included; "follower": it is not
	Members []memberJSON `json:"members"`
}

func (h *httpAPI) members(w http.ResponseWriter, r *http.Request) {
	if h.plainGet(w, r) {
		writeJSON(w, http.StatusOK, h.membersView())
	} // dashboard.go
}

var errTransfer = errors.New("leadership transfer")

func (h *httpAPI) transferLeader(w http.ResponseWriter, r *http.Request) {
	if !h.methods(w, r, http.MethodPost) {
		return
	}
	body, ok := h.bodyNoQuery(w, r)
	if !ok {
		return
	}
	var req struct {
		To *uint64 `json:"to"`
	}
	if len(body) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			h.reject(w, r, http.StatusBadRequest, "bad_request", `want {"to": <member id>}, or no body for the most caught-up voter: `+err.Error())
			return
		}
	}
	st := h.raftStatus()
	if st.Lead == 0 {
		h.fail(w, r, errNoLeader)
		return
	}
	to, ok := h.transferTarget(w, r, st, req.To)
	if !ok {
		return
	}
	if to == st.Lead {
		writeJSON(w, http.StatusOK, map[string]any{"leader": to, "moved": false, "message": "member " + strconv.FormatUint(to, 10) + " is the leader already"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	from := st.Lead
	if err := h.transfer(ctx, from, to); err != nil {
		why := err.Error()
		if errors.Is(err, context.DeadlineExceeded) {
			why = fmt.Sprintf("not done within %v", h.requestTimeout)
		}
		h.reject(w, r, http.StatusServiceUnavailable, "transfer_failed", fmt.Sprintf("leadership did not move from %d to %d (%s): the target may be down, cut off, or too far behind to catch up in an election timeout; see GET /v1/members on the leader", from, to, why))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"leader": to, "moved": true, "from": from})
}

// transferTarget checks a named target, or picks the most caught-up voter
// other than the leader (only the leader knows who that is).
func (h *httpAPI) transferTarget(w http.ResponseWriter, r *http.Request, st raft.Status, named *uint64) (uint64, bool) {
	members := h.store.Members()
	if named != nil {
		if _, ok := members[*named]; !ok {
			h.reject(w, r, http.StatusBadRequest, "no_such_member", fmt.Sprintf("member %d is not in the cluster; see GET /v1/members", *named))
			return 0, false
		}
		return *named, true
	}
	if st.RaftState != raft.StateLeader {
		h.reject(w, r, http.StatusBadRequest, "bad_request", fmt.Sprintf(`name the new leader ({"to": <id>}), or send this to the leader (member %d), which knows who is most caught up`, st.Lead))
		return 0, false
	}
	best := mostCaughtUp(st, h.ops.peerActive)
	if best == 0 {
		h.reject(w, r, http.StatusConflict, "no_candidate", "no other voter is reachable to take over leadership")
		return 0, false
	}
	return best, true
}

// mostCaughtUp is the reachable voter other than the leader with the
// highest match index (the lowest id among equals), or 0. Only the leader's
// status has the progress it needs. Raft's RecentActive says the voter
// answered within the last election timeout; reachable (nil: not asked)
// says its connection is up now, which learns of a member that stopped at
// once, not an election timeout later.
func mostCaughtUp(st raft.Status, reachable func(uint64) bool) uint64 {
	var best uint64
	var bestPr tracker.Progress
	for id, pr := range st.Progress {
		if id == st.ID || pr.IsLearner || !pr.RecentActive || (reachable != nil && !reachable(id)) {
			continue
		}
		if best == 0 || pr.Match > bestPr.Match || (pr.Match == bestPr.Match && id < best) {
			best, bestPr = id, pr
		}
	}
	return best
}

// transfer asks raft to hand leadership from lead to to (a follower
// forwards the request to the leader) and waits until this member sees the
// new leader. It gives up when the connection to the target goes down:
// raft would wait out an election timeout for a target that stopped (a
// whole cluster stopped at once, each leader handing over to a member
// that is stopping too).
func (h *httpAPI) transfer(ctx context.Context, lead, to uint64) error {
	unreachable := func() bool { return h.ops.peerActive != nil && !h.ops.peerActive(to) }
	errDown := func(from uint64) error { return fmt.Errorf("%w: %w", errTransfer, targetDown{to: to, from: from}) }
	if unreachable() {
		return errDown(h.raftStatus().ID)
	}
	h.ops.transferLeadership(ctx, lead, to)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		st := h.raftStatus()
		if st.Lead == to {
			return nil
		}
		if unreachable() {
			if st.ID == lead && st.Lead == lead {
				// A leader refuses proposals while a transfer is pending;
				// asked to transfer to itself, raft drops the pending one
				// (stepLeader, MsgTransferLeader), and writes resume now
				// rather than an election timeout later.
				h.ops.transferLeadership(ctx, lead, lead)
			}
			return errDown(st.ID)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", errTransfer, ctx.Err())
		case <-tick.C:
		}
	}
}

// targetDown says a transfer's target is not reachable: it stopped, or is
// cut off from the member that asked.
type targetDown struct{ to, from uint64 }

func (e targetDown) Error() string {
	return fmt.Sprintf("member %d is not reachable from member %d (stopped, or cut off)", e.to, e.from)
}

// removal is the change that removes member id. If id leads, leadership is
// handed over first (moveLeaderOff). The new leader drops conf changes
// until it has applied its log (raft's pendingConfIndex); propose repeats
// a change that gets no answer, so that needs nothing here.
func (h *httpAPI) removal(r *http.Request, id uint64) func(context.Context) (uint64, error) {
	once := func(ctx context.Context) (uint64, error) { return h.store.RemoveMember(ctx, id) }
	st := h.raftStatus()
	if id != st.Lead || len(h.store.Members()) <= 1 || !h.moveLeaderOff(r.Context(), st, "being removed") || id != st.ID || h.ops.removed == nil {
		return once
	}
	// This member removes itself, now as a follower: once the others have
	// applied the change they stop talking to it, so it may never apply
	// the change itself. That they refuse it as removed is the answer.
	return func(ctx context.Context) (uint64, error) {
		type answer struct {
			index uint64
			err   error
		}
		done := make(chan answer, 1)
		go func() {
			index, err := once(ctx)
			done <- answer{index, err}
		}()
		select {
		case a := <-done:
			return a.index, a.err
		case <-h.ops.removed:
			applied, _ := h.store.Applied()
			return applied, nil
		}
	}
}

// moveLeaderOff hands leadership away from the leader before it leaves
// (which says why: "being removed", "stopping"), so that writes see a
// transfer instead of an election timeout. A follower takes it over itself
// (it answers this request, so it is up); the leader gives it to the most
// caught-up reachable voter. If that does not work out in time, the
// leader leaves anyway and an election follows. It reports whether
// leadership moved.
func (h *httpAPI) moveLeaderOff(ctx context.Context, st raft.Status, which string) bool {
	ctx, cancel := context.WithTimeout(ctx, h.requestTimeout/2)
	defer cancel()
	// A target found down (it stopped after raft last heard from it, or is
	// stopping too) is passed over for the next one.
	down := map[uint64]bool{}
	reachable := func(id uint64) bool { return !down[id] && (h.ops.peerActive == nil || h.ops.peerActive(id)) }
	for {
		to := st.ID
		if st.ID == st.Lead {
			if to = mostCaughtUp(st, reachable); to == 0 {
				h.lg.Warn("no other reachable voter to take over from the leader " + which + "; an election will follow")
				return false
			}
		}
		err := h.transfer(ctx, st.Lead, to)
		if err == nil {
			h.lg.Info("moved leadership off the member "+which, zap.Uint64("from", st.Lead), zap.Uint64("to", to))
			return true
		}
		if st.ID == st.Lead && errors.As(err, new(targetDown)) {
			h.lg.Info("leadership transfer target is down; trying the next", zap.Uint64("to", to), zap.Error(err))
			down[to] = true
			continue
		}
		h.lg.Warn("could not move leadership off the member "+which+"; an election will follow",
			zap.Uint64("leader", st.Lead), zap.Uint64("to", to), zap.Error(err))
		return false
	}
}

// strictCheck refuses, with 409, a change to the voters that would leave
// fewer voters this member can reach than a quorum of the new set, as
// etcd's --strict-reconfig-check does: such a cluster could not commit,
// not even the change that would mend it. delta is +1 (a voter added or a
// learner promoted) or -1 (a voter removed); id is the member concerned.
func (h *httpAPI) strictCheck(w http.ResponseWriter, r *http.Request, id uint64, delta int) bool {
	if !h.ops.strictReconfig || h.ops.peerActive == nil {
		return true
	}
	learners := h.store.members.learnerSet()
	members := h.store.Members()
	if _, isMember := members[id]; (delta < 0 && !isMember) || (delta > 0 && isMember && !learners[id]) {
		return true // not a change to the voters: the change itself answers why
	}
	voters, reachable := 0, 0
	for m := range members {
		if learners[m] {
			continue
		}
		voters++
		if h.ops.peerActive(m) {
			reachable++
		}
	}
	switch {
	case delta > 0 && learners[id] && h.ops.peerActive(id):
		reachable++ // a promoted learner that is up counts at once
	case delta < 0 && !learners[id] && h.ops.peerActive(id):
		reachable--
	case delta < 0 && learners[id]:
		return true // removing a learner changes no quorum
	}
	after := voters + delta
	if quorum := after/2 + 1; after > 0 && reachable < quorum {
		h.reject(w, r, http.StatusConflict, "unsafe_change", fmt.Sprintf(
			"refused: after this change %d of %d voters would be reachable from member %d, fewer than a quorum (%d), and the cluster could not commit; bring members back first, add new members as learners, or start the members with --strict-reconfig-check=false",
			reachable, after, h.raftStatus().ID, quorum))
		return false
	}
	return true
}
