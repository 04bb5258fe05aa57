package nemesis

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"raftexample/internal/cluster"
)

// weather: every path between members becomes slow (a delay per direction
// with jitter) and, with drop set, flaky (connections dropped at random).
// Raft must keep electing one leader and committing, and nothing
// acknowledged may be lost; heal clears the network.
type weather struct {
	name          string
	delay, jitter time.Duration
	drop          float64
}

func (w *weather) Name() string { return w.name }

func (w *weather) Inject(_ context.Context, c *cluster.Cluster, _ *rand.Rand) error {
	c.SetWeather(w.delay, w.jitter, w.drop)
	return nil
}

func (w *weather) Heal(_ context.Context, c *cluster.Cluster) error {
	c.HealLinks()
	return nil
}

// bridge: a partition that is not transitive. Two members cannot reach
// each other, but each still reaches the others (with three members: A
// sees B, B sees C, A does not see C). Half of the time one of the two is
// the leader, so a follower that cannot hear it keeps asking for votes
// that the rest, which still hear the leader, must refuse (PreVote,
// CheckQuorum).
type bridge struct{}

func (*bridge) Name() string { return "bridge" }

func (*bridge) Inject(ctx context.Context, c *cluster.Cluster, rng *rand.Rand) error {
	running := c.IDs(cluster.Running)
	if len(running) < 3 {
		return errors.New("a bridge needs three running members")
	}
	var a uint64
	if rng.IntN(2) == 0 {
		lead, err := pick(ctx, c, rng, true)
		if err != nil {
			return err
		}
		a = lead
	} else {
		a = running[rng.IntN(len(running))]
	}
	b, err := pick(ctx, c, rng, false, a)
	if err != nil {
		return err
	}
	if err := c.Cut(a, b, cluster.Refuse); err != nil {
		return err
	}
	c.Logf("bridge: members %d and %d cannot reach each other; every other path is up", a, b)
	return nil
}

func (*bridge) Heal(_ context.Context, c *cluster.Cluster) error {
	c.HealLinks()
	return nil
}
