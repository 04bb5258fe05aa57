package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"raftexample/client"
)

// AddNode adds a member with the next unused id: it asks a running member
// to add it (POST /<id>), then starts it with --join and waits until it
// serves HTTP. Earlier members reach the new member through its inbound
// link, which cuts per sender, so its paths can be cut like any other.
func (c *Cluster) AddNode(ctx context.Context) (uint64, error) { return c.addNode(ctx, false) }

// AddLearner adds a member like AddNode, as a learner (see Promote).
func (c *Cluster) AddLearner(ctx context.Context) (uint64, error) { return c.addNode(ctx, true) }

func (c *Cluster) addNode(ctx context.Context, learner bool) (uint64, error) {
	c.mu.Lock()
	var id uint64
	for j := range c.nodes {
		id = max(id, j)
	}
	id++
	c.mu.Unlock()
	n, err := c.newNode(id)
	if err != nil {
		return 0, err
	}
	n.Joined = true
	in, err := newInboundLink(n.peerAddr)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.inbound[id] = in
	for j, m := range c.nodes {
		l, err := newLink(m.peerAddr)
		if err != nil {
			c.mu.Unlock()
			return 0, err
		}
		c.links[[2]uint64{id, j}] = l
	}
	c.nodes[id] = n
	n.args = c.args(n, nil, true)
	c.mu.Unlock()

	kind := "add"
	if learner {
		kind = "learner"
	}
	if err := c.change(ctx, kind, id, "http://"+in.addr(), "already in the cluster"); err != nil {
		if errors.Is(err, errRefused) {
			// Nothing was proposed: the member never joined and must not
			// be started (a heal starts every stopped member, and this one
			// would wait for a leader that never contacts it).
			c.mu.Lock()
			n.state = Removed
			in.cutAll()
			c.mu.Unlock()
		} else if c.inMembership(ctx, id) {
			// The answer was lost (the member asked crashed, or the
			// cluster lost its quorum by the very member it added), but
			// the change took effect: a voter left stopped counts
			// against the quorum, and with the member that crashed the
			// cluster has none until the new one runs.
			c.Logf("adding member %d: %v; but the cluster has it, so it is started", id, err)
			if err := c.launch(n); err != nil {
				return 0, err
			}
			return id, c.waitServing(ctx, n)
		}
		return 0, fmt.Errorf("cluster: add member %d: %w", id, err)
	}
	c.Logf("added member %d (learner: %v); starting it with --join", id, learner)
	if err := c.launch(n); err != nil {
		return 0, err
	}
	return id, c.waitServing(ctx, n)
}

// RemoveNode asks the cluster to remove member id (DELETE /<id> through
// another member) and waits for the removed member's process to exit, as a
// removed member does; it is killed if it has not exited after 20 s (for
// example because it was cut off and never heard of its removal).
func (c *Cluster) RemoveNode(ctx context.Context, id uint64) error {
	c.mu.Lock()
	n := c.nodes[id]
	if n == nil || n.state == Removed {
		c.mu.Unlock()
		return fmt.Errorf("cluster: member %d is not in the cluster", id)
	}
	wasAlive := n.state == Running || n.state == Paused
	// From now on the removal may commit at any time, even if no answer
	// says so: exiting with status 0 is then what the member should do.
	n.mayBeRemoved = true
	c.mu.Unlock()

	if err := c.change(ctx, "remove", id, "", "no such member"); err != nil {
		return fmt.Errorf("cluster: remove member %d: %w", id, err)
	}
	c.mu.Lock()
	n.expectExit = true
	c.mu.Unlock()
	c.Logf("removed member %d", id)
	if c.State(id) == Paused {
		c.Resume(id)
	}
	if wasAlive {
		select {
		case <-n.exited:
		case <-time.After(20 * time.Second):
			c.Logf("removed member %d still runs after 20s; killing it", id)
			n.proc.Kill()
			<-n.exited
		}
	}
	c.mu.Lock()
	n.state = Removed
	if in := c.inbound[id]; in != nil {
		in.cutAll()
	}
	c.mu.Unlock()
	return nil
}

// errRefused says a membership change was refused before anything was
// proposed: no attempt's outcome was unknown, and a member answered 4xx.
var errRefused = errors.New("refused")

// change sends a membership request (kind: add, learner or remove) to
// running members in turn until one applies it. A retry that finds the
// change already made (doneText in the error) counts as success: an
// earlier attempt's answer was lost.
func (c *Cluster) change(ctx context.Context, kind string, id uint64, body, doneText string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last string
	unsure := false // an earlier attempt may have been applied
	for {
		for _, m := range c.IDs(Running) {
			if m == id {
				continue
			}
			cl := client.New(c.ClientURL(m), &http.Client{Timeout: 3 * time.Second})
			var err error
			switch kind {
			case "add":
				err = cl.AddMember(ctx, id, body)
			case "learner":
				err = cl.AddLearner(ctx, id, body)
			default:
				err = cl.RemoveMember(ctx, id)
			}
			var e *client.Error
			switch {
			case err == nil:
				return nil
			case !errors.As(err, &e):
				return err
			case unsure && strings.Contains(e.Message, doneText):
				return nil
			case e.Status/100 == 4 && !unsure:
				return fmt.Errorf("%w: %d: %s", errRefused, e.Status, e.Message)
			case e.Status/100 == 4:
				return fmt.Errorf("%d: %s", e.Status, e.Message)
			}
			last = err.Error()
			unsure = unsure || e.Outcome == client.Unknown
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no member applied it (last answer: %s)", last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Promote makes learner id a voter: it asks the leader until the learner
// has caught up enough to be promoted, for up to 30 s.
func (c *Cluster) Promote(ctx context.Context, id uint64) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	unsure := false
	for {
		lead, err := c.Leader(ctx)
		if err != nil {
			return fmt.Errorf("cluster: promote member %d: %w", id, err)
		}
		err = client.New(c.ClientURL(lead), &http.Client{Timeout: 3 * time.Second}).Promote(ctx, id)
		var e *client.Error
		switch {
		case err == nil, unsure && errors.As(err, &e) && e.Code == "not_learner":
			c.Logf("promoted member %d to voter", id)
			return nil
		case errors.As(err, &e) && e.Status/100 == 4 && e.Code != "learner_behind" && e.Code != "not_leader":
			return fmt.Errorf("cluster: promote member %d: %w", id, err)
		}
		unsure = unsure || (errors.As(err, &e) && e.Outcome == client.Unknown)
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: promote member %d: not promoted in time (last: %v)", id, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// inMembership reports whether a running member lists id among the members
// it has applied, asking for up to 5 s.
func (c *Cluster) inMembership(ctx context.Context, id uint64) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		for _, m := range c.IDs(Running) {
			if m == id {
				continue
			}
			st, err := c.Status(ctx, m)
			if err != nil {
				continue
			}
			for _, x := range st.Members {
				if x.ID == id {
					return true
				}
			}
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(200 * time.Millisecond):
		}
	}
}
