package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/tracker"
	"go.uber.org/zap"
)

func TestMembersView(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	do(t, "PUT", c.url(lead, "/a"), "1")
	var got membersReply
	eventually(t, 5*time.Second, func() error {
		got = decodeJSON[membersReply](t, do(t, "GET", c.url(lead, "/v1/members"), ""))
		for _, m := range got.Members {
			if m.Reachable == nil || !*m.Reachable {
				return fmt.Errorf("member %d not reachable yet", m.ID)
			}
		}
		return nil
	})
	if got.View != "leader" || got.Leader != uint64(lead+1) || len(got.Members) != 3 {
		t.Fatalf("from the leader: %+v", got)
	}
	for i, m := range got.Members {
		if m.ID != uint64(i+1) || m.PeerURL != c.peers[i] || !m.Voter || m.Leader != (i == lead) || m.Match == nil || *m.Match == 0 || m.Lag == nil || *m.Lag > 10 {
			t.Fatalf("member %d from the leader: %+v", i+1, m)
		}
	}
	f := (lead + 1) % 3
	fv := decodeJSON[membersReply](t, do(t, "GET", c.url(f, "/v1/members"), ""))
	if fv.View != "follower" || fv.Leader != uint64(lead+1) || len(fv.Members) != 3 || fv.Members[0].Match != nil {
		t.Fatalf("from a follower: %+v", fv)
	}
	if r := do(t, "DELETE", c.url(f, "/v1/members"), ""); r.code != 405 {
		t.Fatalf("DELETE /v1/members: %d", r.code)
	}
}

func TestLeaderTransfer(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	u := func(i int) string { return c.url(i, "/v1/leader/transfer") }
	for _, tc := range []struct {
		member int
		method string
		body   string
		code   int
		says   string
	}{
		{lead, "GET", "", 405, "not allowed"},
		{lead, "POST", `{"to": 99}`, 400, "not in the cluster"},
		{lead, "POST", `{"to": "two"}`, 400, "bad_request"},
		{(lead + 1) % 3, "POST", "", 400, "send this to the leader"},
		{lead, "POST", fmt.Sprintf(`{"to": %d}`, lead+1), 200, `"moved":false`},
	} {
		if r := do(t, tc.method, u(tc.member), tc.body); r.code != tc.code || !strings.Contains(r.body, tc.says) {
			t.Errorf("%s %s on member %d: %d %q; want %d with %q", tc.method, tc.body, tc.member+1, r.code, r.body, tc.code, tc.says)
		}
	}

	// Named, sent to a follower (raft forwards it to the leader).
	to := (lead + 1) % 3
	logFrom := len(c.log.String())
	r := do(t, "POST", u((lead+2)%3), fmt.Sprintf(`{"to": %d}`, to+1))
	if r.code != 200 || !strings.Contains(r.body, `"moved":true`) {
		t.Fatalf("transfer to %d: %d %q", to+1, r.code, r.body)
	}
	if now := c.leader(); now != to {
		t.Fatalf("leader is %d after a transfer to %d", now+1, to+1)
	}
	// The member asked logs why the leader changed.
	eventually(t, 5*time.Second, func() error {
		// raft forgets the leader during the handover, so the line that
		// names the new one may come from 0.
		want := fmt.Sprintf(`"member": %d, "from": `, (lead+2)%3+1)
		wantTo := fmt.Sprintf(`"to": %d, "term": `, to+1)
		for _, line := range strings.Split(c.log.String()[logFrom:], "\n") {
			if strings.Contains(line, "leader changed") && strings.Contains(line, want) && strings.Contains(line, wantTo) && !strings.Contains(line, `"term": 0,`) {
				if !strings.Contains(line, `"reason": "leadership transfer asked for on this member"`) {
					return fmt.Errorf("leader change logged without the transfer as its reason: %s", line)
				}
				return nil
			}
		}
		return fmt.Errorf("no leader changed line with %s…%s and a term", want, wantTo)
	})
	// Unnamed, on the leader: the most caught-up other voter.
	r = do(t, "POST", u(to), "")
	if r.code != 200 || !strings.Contains(r.body, `"moved":true`) {
		t.Fatalf("transfer to the most caught-up voter: %d %q", r.code, r.body)
	}
	if now := c.leader(); now == to {
		t.Fatalf("leadership stayed on %d", to+1)
	}
	// To a member that is down: it cannot take over, and the answer says so.
	lead = c.leader()
	down := (lead + 1) % 3
	c.stop(down)
	r = do(t, "POST", u(lead), fmt.Sprintf(`{"to": %d}`, down+1))
	if r.code != 503 || !strings.Contains(r.body, "transfer_failed") {
		t.Fatalf("transfer to a stopped member: %d %q", r.code, r.body)
	}
	if r := do(t, "PUT", c.url(lead, "/after"), "ok"); r.code != 204 {
		t.Fatalf("writes after a failed transfer: %d %q", r.code, r.body)
	}
}

// Removing the leader hands leadership over first, whether the request
// reaches a follower (which takes over) or the leader itself.
// A transfer whose target goes down gives up at once (transfer), and asks
// raft to drop the pending transfer by naming the leader itself: raft's
// leader refuses proposals while a transfer is pending, and drops one
// when asked to transfer to itself. Both halves are checked: the stubbed
// wait, and raft's behaviour on a real member.
func TestTransferToAMemberThatGoesDown(t *testing.T) {
	var calls [][2]uint64
	up := true
	h := &httpAPI{
		raftStatus: func() raft.Status {
			var st raft.Status
			st.ID, st.Lead, st.RaftState = 1, 1, raft.StateLeader
			return st
		},
		ops: opsConfig{
			transferLeadership: func(_ context.Context, lead, to uint64) {
				calls = append(calls, [2]uint64{lead, to})
				up = false // the target stops while raft hands over
			},
			peerActive: func(id uint64) bool { return id == 1 || up },
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := h.transfer(ctx, 1, 2)
	if !errors.Is(err, errTransfer) || !strings.Contains(err.Error(), "member 2 is not reachable from member 1") {
		t.Fatalf("transfer to a member that went down: %v", err)
	}
	if want := [][2]uint64{{1, 2}, {1, 1}}; !slices.Equal(calls, want) {
		t.Fatalf("asked raft %v; want %v (the transfer, then the leader to itself)", calls, want)
	}
	if err := h.transfer(ctx, 1, 2); err == nil || len(calls) != 2 {
		t.Fatalf("transfer to a member known to be down: %v, raft asked %v", err, calls)
	}

	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	down := (lead + 1) % 3
	c.stop(down)
	rn := c.nodes[lead].rn
	// Each call returns once raft's goroutine has taken the message, and it
	// steps it before it answers the status request that follows; the two
	// calls are far less than an election timeout apart (when raft would
	// drop the transfer itself).
	rn.transferLeadership(ctx, uint64(lead+1), uint64(down+1))
	if got := rn.status().LeadTransferee; got != uint64(down+1) {
		t.Fatalf("lead transferee %d; want %d", got, down+1)
	}
	rn.transferLeadership(ctx, uint64(lead+1), uint64(lead+1))
	if got := rn.status().LeadTransferee; got != 0 {
		t.Fatalf("lead transferee %d after the leader named itself; want none", got)
	}
	if st := rn.status(); st.Lead != uint64(lead+1) {
		t.Fatalf("leader %d after the aborted transfer; want %d", st.Lead, lead+1)
	}
	c.mustPut(lead, "after-abort", "1")
}

// A leader moving leadership off itself passes over a target it finds down
// (raft still counted it recently active) and hands over to the next.
func TestMoveLeaderOffPassesOverATargetThatIsDown(t *testing.T) {
	var calls [][2]uint64
	lead := uint64(1)
	up := map[uint64]bool{1: true, 2: true, 3: true}
	h := &httpAPI{
		lg:             zap.NewNop(),
		requestTimeout: 10 * time.Second,
		raftStatus: func() raft.Status {
			var st raft.Status
			st.ID, st.Lead = 1, lead
			return st
		},
		ops: opsConfig{
			transferLeadership: func(_ context.Context, from, to uint64) {
				calls = append(calls, [2]uint64{from, to})
				switch to {
				case 2:
					up[2] = false // stopped just now
				case 3:
					lead = 3
				}
			},
			peerActive: func(id uint64) bool { return up[id] },
		},
	}
	var st raft.Status
	st.ID, st.Lead, st.RaftState = 1, 1, raft.StateLeader
	st.Progress = map[uint64]tracker.Progress{
		1: {Match: 10, RecentActive: true},
		2: {Match: 10, RecentActive: true}, // equally caught up: the lower id goes first
		3: {Match: 10, RecentActive: true},
	}
	if !h.moveLeaderOff(context.Background(), st, "stopping") {
		t.Fatal("leadership did not move to member 3")
	}
	if want := [][2]uint64{{1, 2}, {1, 1}, {1, 3}}; !slices.Equal(calls, want) {
		t.Fatalf("asked raft %v; want %v (2, dropped when found down, then 3)", calls, want)
	}
}

func TestRemovingTheLeaderTransfersFirst(t *testing.T) {
	for _, onLeader := range []bool{false, true} {
		t.Run(fmt.Sprintf("on-leader-%v", onLeader), func(t *testing.T) {
			c := newTestCluster(t, 3, nil)
			lead := c.leader()
			via := (lead + 1) % 3
			if onLeader {
				via = lead
			}
			if r := do(t, "DELETE", c.url(via, fmt.Sprintf("/%d", lead+1)), ""); r.code != 204 {
				t.Fatalf("DELETE /%d: %d %q", lead+1, r.code, r.body)
			}
			select {
			case <-c.nodes[lead].removed:
			case <-time.After(10 * time.Second):
				t.Fatal("the removed leader did not learn it was removed")
			}
			if !strings.Contains(c.log.String(), "moved leadership off the member being removed") {
				t.Fatal("the leader was removed without handing leadership over first")
			}
			c.stop(lead)
			now := c.leader()
			if now == lead {
				t.Fatalf("member %d still leads after its removal", lead+1)
			}
			c.mustPut(now, "after", "removal")
		})
	}
}

// Membership changes sent one after another, each as soon as the last was
// answered, all go through, and raft's leader drops none of them ("possible
// unapplied conf change": proposed before it was told the last one is
// applied). Sent to a different member each time, the checks must see the
// change just answered elsewhere (membershipCurrent does both).
func TestMembershipChangesBackToBack(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	change := func(i, via int) {
		t.Helper()
		peer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
		r := do(t, "POST", c.url(via, "/v1/members"), fmt.Sprintf(`{"peer_url": %q, "learner": true}`, peer))
		if r.code != 201 {
			t.Fatalf("change %d via member %d: adding a learner: %d %q", i, via+1, r.code, r.body)
		}
		added := decodeJSON[struct{ ID uint64 }](t, r)
		if r := do(t, "DELETE", c.url(via, fmt.Sprintf("/%d", added.ID)), ""); r.code != 204 {
			t.Fatalf("change %d via member %d: removing learner %d right after it was added: %d %q", i, via+1, added.ID, r.code, r.body)
		}
	}
	logFrom := len(c.log.String())
	for i := range 10 {
		change(i, lead)
	}
	if dropped := grepLines(c.log.String()[logFrom:], "possible unapplied conf change"); dropped != "" {
		t.Fatalf("the leader dropped membership changes sent to it one after another:\n%s", dropped)
	}
	for i := range 40 {
		change(i, (lead+i)%3)
	}
	if dropped := grepLines(c.log.String()[logFrom:], "possible unapplied conf change"); dropped != "" {
		t.Fatalf("the leader dropped membership changes sent one after another:\n%s", dropped)
	}
}

// A learner gets the log but no vote until promoted; it stays a learner
// across restarts and snapshots; promotion waits until it has caught up.
func TestLearnerAddPromoteRemove(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *config) { cfg.snapshotCount = 25 })
	lead := c.leader()
	for i := range 40 {
		c.mustPut(i%3, "l"+strconv.Itoa(i), strconv.Itoa(i))
	}
	newPeer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	r := do(t, "POST", c.url((lead+1)%3, "/v1/members"), fmt.Sprintf(`{"peer_url": %q, "learner": true}`, newPeer))
	if r.code != 201 || !strings.Contains(r.body, `"id":4`) || !strings.Contains(r.body, `"learner":true`) {
		t.Fatalf("POST /v1/members (learner): %d %q", r.code, r.body)
	}
	// listed reports whether member i lists member id, and as a voter.
	listed := func(i, id int) (found, voter bool) {
		t.Helper()
		for _, m := range decodeJSON[membersReply](t, do(t, "GET", c.url(i, "/v1/members"), "")).Members {
			if m.ID == uint64(id) {
				return true, m.Voter
			}
		}
		return false, false
	}
	voter := func(i, id int) bool { _, v := listed(i, id); return v }
	eventually(t, 5*time.Second, func() error {
		for i := range 3 {
			if found, v := listed(i, 4); !found || v {
				return fmt.Errorf("member %d lists 4: %v, as a voter: %v", i+1, found, v)
			}
		}
		return nil
	})
	// Not started yet, so far behind: no promotion.
	if r := do(t, "POST", c.url(lead, "/v1/members/4/promote"), ""); r.code != 409 || !strings.Contains(r.body, "learner_behind") {
		t.Fatalf("promoting a learner that never started: %d %q", r.code, r.body)
	}
	// With the learner down, the three voters still commit.
	c.mustPut(lead, "while-learning", "yes")

	c.addConfig(4, append(append([]string{}, c.peers...), newPeer), true, func(cfg *config) { cfg.snapshotCount = 25 })
	c.start(3)
	eventually(t, 10*time.Second, func() error {
		if r := do(t, "GET", c.url(3, "/while-learning?consistency=serializable"), ""); r.code != 200 {
			return fmt.Errorf("learner: %d %q", r.code, r.body)
		}
		return nil
	})
	for _, tc := range []struct {
		member int
		method string
		path   string
		code   int
		says   string
	}{
		{lead, "POST", "/v1/members/2/promote", 409, "not_learner"},
		{lead, "POST", "/v1/members/9/promote", 404, "no_such_member"},
		{lead, "POST", "/v1/members/x/promote", 400, "bad_member_id"},
		{lead, "GET", "/v1/members/4/promote", 405, "not allowed"},
		{lead, "POST", "/v1/members/4/demote", 404, "no_route"},
		{lead, "DELETE", "/v1/members/9", 404, "no_such_member"},
	} {
		if r := do(t, tc.method, c.url(tc.member, tc.path), ""); r.code != tc.code || !strings.Contains(r.body, tc.says) {
			t.Errorf("%s %s on member %d: %d %q; want %d with %q", tc.method, tc.path, tc.member+1, r.code, r.body, tc.code, tc.says)
		}
	}
	// A follower passes a promotion on to the leader, once: one that
	// arrives forwarded is not passed on again.
	req, _ := http.NewRequest("POST", c.url((lead+1)%3, "/v1/members/4/promote"), nil)
	req.Header.Set(forwardedHeader, "9")
	if resp, err := httpClient.Do(req); err != nil || resp.StatusCode != 409 {
		t.Errorf("forwarded promotion on a follower: %v %v, want 409 not_leader", resp, err)
	} else {
		resp.Body.Close()
	}
	for _, body := range []string{`{"peer_url": "ftp://x:1"}`, `{"peer_url": "http://127.0.0.1:1", "id": 0}`, `nope`, `{"peer_url": "http://127.0.0.1:1", "id": 2}`} {
		if r := do(t, "POST", c.url(lead, "/v1/members"), body); r.code/100 != 4 {
			t.Errorf("POST /v1/members %s: %d %q, want a 4xx", body, r.code, r.body)
		}
	}
	// A restart replays it as a learner, here from a snapshot taken after
	// it was added (its ConfState lists the learners).
	for i := range 30 {
		c.mustPut(lead, "m"+strconv.Itoa(i), "v")
	}
	f := (lead + 1) % 3
	c.stop(f)
	c.start(f)
	eventually(t, 10*time.Second, func() error {
		if voter(f, 4) {
			return fmt.Errorf("member %d restarted with 4 as a voter", f+1)
		}
		return nil
	})

	lead = c.leader()
	eventually(t, 10*time.Second, func() error {
		// Sent to a follower, which passes it on to the leader.
		if r := do(t, "POST", c.url((lead+1)%3, "/v1/members/4/promote"), ""); r.code != 200 {
			return fmt.Errorf("promote: %d %q", r.code, r.body)
		}
		return nil
	})
	eventually(t, 5*time.Second, func() error {
		for i := range 4 {
			if !voter(i, 4) {
				return fmt.Errorf("member %d still sees 4 as a learner", i+1)
			}
		}
		return nil
	})
	if r := do(t, "DELETE", c.url(lead, "/v1/members/4"), ""); r.code != 200 || !strings.Contains(r.body, `"id":4`) {
		t.Fatalf("DELETE /v1/members/4: %d %q", r.code, r.body)
	}
	select {
	case <-c.nodes[3].removed:
	case <-time.After(10 * time.Second):
		t.Fatal("removed member 4 did not learn it was removed")
	}
}

// With --strict-reconfig-check, a change that would leave fewer reachable
// voters than a quorum is refused before it is proposed.
func TestStrictReconfigCheck(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *config) { cfg.strictReconfig = true })
	lead := c.leader()
	down := (lead + 1) % 3
	up := (lead + 2) % 3
	c.stop(down)
	newPeer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	eventually(t, 10*time.Second, func() error {
		// Until rafthttp notices the stopped member, it still counts it.
		if r := do(t, "DELETE", c.url(lead, fmt.Sprintf("/%d", up+1)), ""); r.code != 409 || !strings.Contains(r.body, "fewer than a quorum") {
			return fmt.Errorf("removing a reachable voter with another one down: %d %q", r.code, r.body)
		}
		return nil
	})
	for _, tc := range []struct{ method, path, body string }{
		{"POST", "/4", newPeer},
		{"POST", "/v1/members", fmt.Sprintf(`{"peer_url": %q}`, newPeer)},
		{"DELETE", fmt.Sprintf("/v1/members/%d", up+1), ""},
	} {
		if r := do(t, tc.method, c.url(lead, tc.path), tc.body); r.code != 409 || !strings.Contains(r.body, "unsafe_change") && !strings.Contains(r.body, "fewer than a quorum") {
			t.Errorf("%s %s with a voter down: %d %q; want 409", tc.method, tc.path, r.code, r.body)
		}
	}
	// What keeps a quorum reachable goes through: a learner, and removing
	// the member that is down.
	if r := do(t, "POST", c.url(lead, "/v1/members"), fmt.Sprintf(`{"peer_url": %q, "learner": true}`, newPeer)); r.code != 201 {
		t.Fatalf("adding a learner with a voter down: %d %q", r.code, r.body)
	}
	if r := do(t, "DELETE", c.url(lead, fmt.Sprintf("/%d", down+1)), ""); r.code != 204 {
		t.Fatalf("removing the voter that is down: %d %q", r.code, r.body)
	}
	if r := do(t, "DELETE", c.url(lead, "/9"), ""); r.code != 404 {
		t.Fatalf("removing an unknown member: %d %q", r.code, r.body)
	}
}

// Every member publishes its client URL through the log: all members list
// all of them, a restarted member on a new port publishes the new one, and
// the URLs survive snapshots (snapshot-count 3 makes several).
func TestClientURLsPublished(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *config) { cfg.snapshotCount = 3 })
	lead := c.leader()
	for i := 0; i < 10; i++ {
		c.mustPut(lead, fmt.Sprintf("k%d", i), "v")
	}
	allListed := func() error {
		for i := range c.nodes {
			got := decodeJSON[membersReply](t, do(t, "GET", c.url(i, "/v1/members"), ""))
			for j, m := range got.Members {
				if want := "http://" + c.nodes[j].addr(); m.ClientURL != want {
					return fmt.Errorf("member %d lists %d at %q, want %q", i+1, m.ID, m.ClientURL, want)
				}
				// Followers hear from the leader only; the leader from all.
				talks := got.Leader == uint64(i+1) || m.ID == got.Leader
				if m.ID != uint64(i+1) && talks && (m.LastContact == nil || time.Since(*m.LastContact) > 5*time.Second) {
					return fmt.Errorf("member %d last heard from %d at %v", i+1, m.ID, m.LastContact)
				}
				if m.ID == uint64(i+1) && m.LastContact != nil {
					return fmt.Errorf("member %d gives a last contact with itself", i+1)
				}
			}
			st := decodeJSON[statusReply](t, do(t, "GET", c.url(i, "/v1/status"), ""))
			if len(st.Members) != 3 || st.Members[2].ClientURL != "http://"+c.nodes[2].addr() {
				return fmt.Errorf("member %d /v1/status: %+v", i+1, st.Members)
			}
		}
		return nil
	}
	eventually(t, 10*time.Second, allListed)

	f := (lead + 1) % 3
	old := c.nodes[f].addr()
	c.stop(f)
	for i := 0; i < 10; i++ {
		c.mustPut(lead, fmt.Sprintf("j%d", i), "v")
	}
	c.start(f) // on a new port (the tests listen on port 0)
	if c.nodes[f].addr() == old {
		t.Skip("the restarted member got its old port back")
	}
	eventually(t, 10*time.Second, allListed)
	if !strings.Contains(c.log.String(), "restored state from snapshot") {
		t.Fatal("no member restored from a snapshot: the test does not cover the snapshot path")
	}
}
