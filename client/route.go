package client

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// Writes go to the leader. A follower that serves a write forwards it to
// the leader over raft's transport, and answers once the leader's next
// append tells it the entry is committed: two more trips between members,
// and the work of both ends, for every write. So a follower names the leader's client URL on its
// answers to writes (X-Leader-URL), and a Client sends its next writes
// there, unless it is Pinned. Reads stay on Endpoint: a serializable read
// is a read of that member's state, and reads spread over the members
// spread their HTTP work, where a write's work falls on the leader anyway.
//
// The rules, so that routing never loses a write or makes its outcome less
// certain:
//   - Only a hint from an answer is followed, and only one with
//     Endpoint's scheme, and only when Endpoint has no path (a member
//     behind a proxy at a path is not reached at the URL it publishes).
//   - A routed write that fails without an answer, or is answered 5xx,
//     drops the route, and hints are then ignored for routeCooldown: a
//     leader that died or stepped down is not tried again at once, and a
//     published URL this client cannot reach costs it one failed attempt
//     per cooldown, not one per write.
//   - A routed write that never reached the leader (the connection could
//     not be made) is sent to Endpoint instead, while its context lasts:
//     nothing was sent, so nothing can happen twice. Any other failure is
//     returned as it is, with its outcome.

// leaderHeader carries the leader's client URL on a follower's answer to
// a write.
const leaderHeader = "X-Leader-URL"

// routeCooldown is how long a failed routed write makes the client ignore
// hints (a var for tests).
var routeCooldown = 3 * time.Second

// router is a Client's routing state, safe for concurrent use.
type router struct {
	leader atomic.Pointer[string] // where writes go; nil: Endpoint
	// quietUntil is the UnixNano until which hints are ignored, set when a
	// routed write fails.
	quietUntil atomic.Int64
}

// sendWrite sends a write, to the leader if one is known, and learns from
// the answer where the next one goes.
func (c *Client) sendWrite(ctx context.Context, method, path string, header http.Header, body []byte) (*reply, error) {
	if c.Pinned {
		return c.sendTo(ctx, c.Endpoint, method, path, header, body, true)
	}
	leader := c.route.leader.Load()
	if leader == nil {
		r, err := c.sendTo(ctx, c.Endpoint, method, path, header, body, true)
		if err == nil {
			c.learn(r)
		}
		return r, err
	}
	r, err := c.sendTo(ctx, *leader, method, path, header, body, true)
	if err == nil && r.status/100 != 5 {
		c.learn(r)
		return r, nil
	}
	c.route.leader.CompareAndSwap(leader, nil)
	c.route.quietUntil.Store(time.Now().Add(routeCooldown).UnixNano())
	if e, ok := err.(*Error); ok && notSent(e.Err) && ctx.Err() == nil {
		return c.sendTo(ctx, c.Endpoint, method, path, header, body, true)
	}
	return r, err
}

// learn takes the hint of an answer to a write. An answer without one
// leaves the route as it is: the leader it was routed to still leads, or
// Endpoint (where writes go while no route is known) leads or knows no
// leader. (A hint that names Endpoint routes writes to it: where they
// would go anyway.)
func (c *Client) learn(r *reply) {
	hint := r.header(leaderHeader)
	if hint == "" || time.Now().UnixNano() < c.route.quietUntil.Load() || !c.followable(hint) {
		return
	}
	if l := c.route.leader.Load(); l == nil || *l != hint {
		c.route.leader.Store(&hint)
	}
}

// followable reports whether a hint may be followed from this Client's
// Endpoint: the same scheme, and an Endpoint without a path.
func (c *Client) followable(hint string) bool {
	scheme, rest, ok := strings.Cut(c.Endpoint, "://")
	if !ok || !strings.HasPrefix(hint, scheme+"://") {
		return false
	}
	if i := strings.IndexByte(rest, '/'); i >= 0 && rest[i:] != "/" {
		return false
	}
	h := strings.TrimPrefix(hint, scheme+"://")
	return h != "" && !strings.ContainsAny(h, "/?#@")
}
