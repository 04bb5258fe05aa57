package nemesis

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"raftexample/internal/cluster"
)

// The crash points of a "failpoints" build of the server (see its
// failpoint.go): each crash-at-<point> nemesis restarts a member with that
// point armed, so that under load it kills itself exactly there; heal
// restarts it unarmed and waits until it has caught up. The points inside
// a snapshot install come with the snapshot-install set-up instead
// (crashInstall).

// crashPoint arms one point. hits is the most hits to skip before firing
// (a random number up to it, so the crash lands mid-load rather than on the
// first Ready); prepare, if set, makes the point be reached.
type crashPoint struct {
	point   string
	hits    int
	prepare func(ctx context.Context, c *cluster.Cluster, id uint64) error
	victim  uint64
}

func (p *crashPoint) Name() string { return "crash-at-" + p.point }

func (p *crashPoint) needsFailpoints() bool { return true }

func (p *crashPoint) Inject(ctx context.Context, c *cluster.Cluster, rng *rand.Rand) error {
	p.victim = 0
	id, err := pick(ctx, c, rng, rng.IntN(2) == 0)
	if err != nil {
		return err
	}
	if err := c.Stop(id); err != nil {
		return err
	}
	p.victim = id
	crashed := c.WatchLog(id, "failpoint "+p.point+" reached")
	spec := fmt.Sprintf("%s#%d", p.point, 1+rng.IntN(p.hits))
	if err := c.RestartArmed(ctx, id, spec); err != nil {
		select {
		case <-crashed:
			return nil // it got there while starting: a crash like any other
		default:
			return err
		}
	}
	c.Logf("member %d armed with %s", id, spec)
	if p.prepare != nil {
		if err := p.prepare(ctx, c, id); err != nil {
			return err
		}
	}
	select {
	case <-crashed:
		c.Logf("member %d reached %s", id, p.point)
	case <-time.After(10 * time.Second):
		c.Logf("member %d did not reach %s within 10s", id, p.point)
	case <-ctx.Done():
	}
	return nil
}

// Heal restarts the victim unarmed: a member that never reached its point
// is stopped and restarted, so the point is disarmed either way.
func (p *crashPoint) Heal(ctx context.Context, c *cluster.Cluster) error {
	if p.victim == 0 {
		return nil
	}
	if s := c.State(p.victim); s == cluster.Running || s == cluster.Paused {
		if err := c.Stop(p.victim); err != nil {
			return err
		}
	}
	if err := restart(ctx, c, p.victim); err != nil {
		return err
	}
	return c.WaitCaughtUp(ctx, p.victim, 30*time.Second)
}

// changeMembers makes every member apply a membership change: it adds a
// member, or, once the cluster has grown past three, removes one it added
// (never the armed one), so the cluster does not grow run after run.
func changeMembers() func(ctx context.Context, c *cluster.Cluster, id uint64) error {
	var added []uint64
	return func(ctx context.Context, c *cluster.Cluster, id uint64) error {
		if len(c.IDs(cluster.Running, cluster.Paused, cluster.Stopped)) > 3 {
			for i, a := range added {
				if a != id && c.State(a) == cluster.Running {
					added = append(added[:i], added[i+1:]...)
					return c.RemoveNode(ctx, a)
				}
			}
		}
		n, err := c.AddNode(ctx)
		if err == nil {
			added = append(added, n)
		}
		return err
	}
}

// NeedsFailpoints reports whether n works only with a server built with
// the "failpoints" tag.
func NeedsFailpoints(n Nemesis) bool {
	p, ok := n.(interface{ needsFailpoints() bool })
	return ok && p.needsFailpoints()
}

func crashPoints() []Nemesis {
	return []Nemesis{
		&crashPoint{point: "wal-save-before", hits: 60},
		&crashPoint{point: "wal-save-after", hits: 60},
		&crashPoint{point: "snapshot-file-saved", hits: 1},
		&crashPoint{point: "snapshot-saved-before-release", hits: 1},
		&crashPoint{point: "wal-checkpoint-saved", hits: 5},
		// 8 chunks a spare, and a restart zeroes the one its WAL opens,
		// so it fires while the member starts: a later spare needs a
		// segment cut (2 MiB of log) within the 10 s the point is given.
		&crashPoint{point: "wal-spare-chunk-zeroed", hits: 8},
		&crashPoint{point: "apply-before-reply", hits: 60},
		&crashPoint{point: "conf-change-applied", hits: 1, prepare: changeMembers()},
		&snapshotInstall{failpoint: "snapshot-received"},
		&snapshotInstall{failpoint: "snapshot-install-before-sync"},
		&snapshotInstall{failpoint: "snapshot-install-before-release"},
		&snapshotInstall{failpoint: "snapshot-install-acked"},
	}
}
