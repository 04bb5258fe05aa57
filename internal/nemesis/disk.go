package nemesis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"raftexample/internal/cluster"
)

// The disk nemeses need a cluster whose data dirs are on powerfs
// (cluster.Options.PowerFS; see NeedsPowerFS).

// victims chooses how many running members a power cut takes.
type victims func(members, running int) int

func one(_, running int) int      { return min(1, running) }
func majority(members, _ int) int { return members/2 + 1 }
func all(members, _ int) int      { return members }

// powerCut: cut the power of one member, of a majority, or of every member
// at once, with writes in flight (see cluster.PowerCut: kill -9, then the
// loss of everything not fsynced); restart them on heal. What was
// acknowledged was fsynced by a majority, so it must all be there.
//
// When some members survive, they are first cut off for a moment while the
// victims go on committing, so that writes acknowledged just before the
// cut are on the victims' disks only: a member that acknowledged before its
// fsync loses them, and nothing else holds them.
type powerCutter struct {
	name    string
	count   victims
	victims []uint64
}

func powerCut(name string, count victims) *powerCutter { return &powerCutter{name: name, count: count} }

func (p *powerCutter) Name() string { return p.name }

func (p *powerCutter) needsPowerFS() bool { return true }

func (p *powerCutter) Inject(ctx context.Context, c *cluster.Cluster, rng *rand.Rand) error {
	members := c.IDs(cluster.Running, cluster.Paused, cluster.Stopped)
	running := c.IDs(cluster.Running)
	rng.Shuffle(len(running), func(i, j int) { running[i], running[j] = running[j], running[i] })
	n := min(len(running), p.count(len(members), len(running)))
	p.victims = running[:n]
	if len(p.victims) == 0 {
		return errors.New("no running member to cut")
	}
	if survivors := running[n:]; len(p.victims) > len(members)/2 && len(survivors) > 0 {
		for _, id := range survivors {
			if err := c.Isolate(id, cluster.Refuse); err != nil {
				return err
			}
		}
		sleep(ctx, 300*time.Millisecond)
		defer c.HealLinks()
	}
	return c.PowerCut(p.victims...)
}

func (p *powerCutter) Heal(ctx context.Context, c *cluster.Cluster) error {
	return restartAll(ctx, c, p.victims)
}

// diskStall: a member's disk stops answering: its fsyncs (and, every other
// time, its writes too) block until heal releases them. A stalled leader
// stops sending heartbeats from its ready loop and must be replaced; a
// stalled follower falls behind and must catch up.
func diskStall() *onOne {
	var turns int
	return &onOne{name: "disk-stall", disk: true,
		strike: func(_ context.Context, c *cluster.Cluster, id uint64) error {
			turns++
			return c.StallDisk(id, turns%2 == 0)
		},
		heal: func(ctx context.Context, c *cluster.Cluster, id uint64) error {
			if err := c.ReleaseDisk(id); err != nil {
				return err
			}
			return c.WaitCaughtUp(ctx, id, 30*time.Second)
		}}
}

// diskFull: a member's disk fills up: writes fail with ENOSPC. The member
// must stop rather than go on with a WAL it cannot write, and say why in its
// log. Heal frees the space and restarts it on its data (killing it first
// if it kept running because it wrote nothing while full): whatever it
// acknowledged must be on its disk, so it must boot and catch up.
func diskFull() *onOne {
	var why <-chan struct{}
	return &onOne{name: "disk-full", disk: true,
		strike: func(_ context.Context, c *cluster.Cluster, id uint64) error {
			why = c.WatchLog(id, "no space left on device")
			return c.FillDisk(id, true)
		},
		heal: func(ctx context.Context, c *cluster.Cluster, id uint64) error {
			if err := c.FillDisk(id, false); err != nil {
				return err
			}
			switch c.State(id) {
			case cluster.Stopped:
				select {
				case <-why:
				default:
					return fmt.Errorf("member %d stopped on a full disk without saying so (no \"no space left on device\" in %s)", id, c.LogPath(id))
				}
			case cluster.Running:
				if err := c.Kill(id); err != nil {
					return err
				}
			}
			if err := restart(ctx, c, id); err != nil {
				return err
			}
			return c.WaitCaughtUp(ctx, id, 30*time.Second)
		}}
}

// bitrotWAL: kill -9 a follower and flip a byte inside a record in the
// synced part of its newest WAL segment. It must refuse to start, naming
// the segment ("is damaged"), rather than serve a log it cannot verify.
// Heal does what the README tells an operator to do: remove it and add a
// fresh member under a new id, which catches up from the others.
type bitrotWAL struct {
	victim  uint64
	refused error // how the restart on the damaged WAL went wrong, if it did
}

func (*bitrotWAL) Name() string { return "bitrot-wal" }

func (b *bitrotWAL) Inject(ctx context.Context, c *cluster.Cluster, rng *rand.Rand) error {
	b.victim, b.refused = 0, nil
	id, err := follower(ctx, c, rng)
	if err != nil {
		return err
	}
	if err := c.Kill(id); err != nil {
		return err
	}
	b.victim = id
	if _, _, err := c.DamageWAL(id); err != nil {
		// Nothing damaged (a segment just cut holds few records): the
		// member comes back as it was.
		b.victim = 0
		return errors.Join(err, c.Restart(ctx, id))
	}
	// A wrong answer here is the member's failure, not the nemesis's: Heal
	// reports it, and that fails the run.
	b.refused = c.RestartRefused(ctx, id, "is damaged")
	return nil
}

func (b *bitrotWAL) Heal(ctx context.Context, c *cluster.Cluster) error {
	if b.refused != nil {
		return fmt.Errorf("on a damaged wal: %w", b.refused)
	}
	if b.victim == 0 || c.State(b.victim) != cluster.Stopped {
		return nil
	}
	return replace(ctx, c, b.victim)
}

// bitrotSnapshot: kill -9 a member and flip a byte in its newest snapshot
// file. It must set the file aside and start from an older snapshot and
// the WAL, or, when the WAL does not reach back to one (a snapshot from
// the leader skipped the entries between), refuse to start saying it
// cannot rebuild the state. Heal waits for the first to catch up, and
// replaces the second with a fresh member, as an operator would.
type bitrotSnapshot struct {
	victim  uint64
	refused bool
	failed  error
}

func (*bitrotSnapshot) Name() string { return "bitrot-snapshot" }

func (b *bitrotSnapshot) Inject(ctx context.Context, c *cluster.Cluster, rng *rand.Rand) error {
	b.victim, b.refused, b.failed = 0, false, nil
	id, err := pick(ctx, c, rng, false)
	if err != nil {
		return err
	}
	if err := c.Kill(id); err != nil {
		return err
	}
	b.victim = id
	if _, err := c.DamageSnapshot(id); err != nil {
		return err
	}
	b.refused, b.failed = c.RestartMayRefuse(ctx, id, "cannot rebuild the state")
	return nil
}

func (b *bitrotSnapshot) Heal(ctx context.Context, c *cluster.Cluster) error {
	switch {
	case b.failed != nil:
		return fmt.Errorf("on a damaged snapshot: %w", b.failed)
	case b.victim == 0:
		return nil
	case b.refused:
		return replace(ctx, c, b.victim)
	case c.State(b.victim) == cluster.Stopped:
		if err := restart(ctx, c, b.victim); err != nil {
			return err
		}
	}
	return c.WaitCaughtUp(ctx, b.victim, 30*time.Second)
}

// replace removes a member that cannot start and adds a fresh one, which
// catches up from the others.
func replace(ctx context.Context, c *cluster.Cluster, id uint64) error {
	if err := c.RemoveNode(ctx, id); err != nil {
		return err
	}
	added, err := c.AddNode(ctx)
	if err != nil {
		return err
	}
	return c.WaitCaughtUp(ctx, added, 30*time.Second)
}
