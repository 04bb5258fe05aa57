// Package nemesis injects faults into a cluster run by package cluster:
// crashes, pauses, partitions, membership churn, crashes while a snapshot
// is written or installed from the leader, torn WAL tails (this file);
// power cuts, stalled and full disks (disk.go); slow, flaky and
// non-transitive networks (network.go); and crashes at the server's named
// crash points (crash.go). Each nemesis can run alone or mixed with others
// on a schedule.
package nemesis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"time"

	"raftexample/client"
	"raftexample/internal/cluster"
)

// Nemesis is one kind of fault. Inject starts it; Heal undoes whatever
// Inject did (restarts what it killed, mends what it cut), also after an
// Inject that failed halfway. A schedule calls them in turn from one
// goroutine.
type Nemesis interface {
	Name() string
	Inject(ctx context.Context, c *cluster.Cluster, rng *rand.Rand) error
	Heal(ctx context.Context, c *cluster.Cluster) error
}

// NeedsPowerFS reports whether n works only on a cluster started with
// cluster.Options.PowerFS.
func NeedsPowerFS(n Nemesis) bool {
	p, ok := n.(interface{ needsPowerFS() bool })
	return ok && p.needsPowerFS()
}

// All returns one of each nemesis, by name.
func All() map[string]Nemesis {
	nems := []Nemesis{
		kill(false), kill(true), &killMajority{}, pause(false), pause(true),
		&isolate{}, &split{}, &split{stall: true}, &cutLeader{}, &churn{}, snapshotCrash(), tornWAL(),
		&snapshotInstall{},
		// disk.go
		powerCut("power-cut", one), powerCut("power-cut-majority", majority), powerCut("power-cut-all", all),
		&snapshotInstall{power: true}, diskStall(), diskFull(), &bitrotWAL{}, &bitrotSnapshot{},
		// network.go
		&weather{name: "slow-network", delay: 50 * time.Millisecond, jitter: 50 * time.Millisecond},
		&weather{name: "flaky-network", delay: 5 * time.Millisecond, jitter: 5 * time.Millisecond, drop: 0.2},
		&bridge{},
	}
	m := map[string]Nemesis{}
	for _, n := range append(nems, crashPoints()...) {
		m[n.Name()] = n
	}
	return m
}

// Schedule runs rounds until ctx ends: a quiet spell of healFor, then one
// nemesis is injected for faultFor and healed. Nemeses take turns in a
// random order that is shuffled again after each has had its turn. A round
// in progress when ctx ends is still healed.
func Schedule(ctx context.Context, c *cluster.Cluster, rng *rand.Rand, nemeses []Nemesis, faultFor, healFor time.Duration) error {
	var turns []Nemesis
	for {
		if !sleep(ctx, healFor) {
			return nil
		}
		if len(turns) == 0 {
			turns = slices.Clone(nemeses)
			rng.Shuffle(len(turns), func(i, j int) { turns[i], turns[j] = turns[j], turns[i] })
		}
		n := turns[0]
		turns = turns[1:]
		if err := n.Inject(ctx, c, rng); err != nil {
			if ctx.Err() != nil {
				// The run's fault phase ended while it was being set up (a
				// restart cut off by the deadline, not a member failing).
				c.Logf("nemesis %s: cut short, the fault phase ended: %v", n.Name(), err)
			} else {
				c.Logf("nemesis %s: not injected: %v", n.Name(), err)
			}
		} else {
			sleep(ctx, faultFor)
		}
		hctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := n.Heal(hctx, c)
		cancel()
		if err != nil {
			return fmt.Errorf("nemesis %s: heal: %w", n.Name(), err)
		}
	}
}

// HealAll undoes whatever is left: mends every link, resumes paused
// members and restarts stopped ones (not removed ones).
func HealAll(ctx context.Context, c *cluster.Cluster) error {
	c.HealLinks()
	var errs []error
	for _, id := range c.IDs(cluster.Paused) {
		errs = append(errs, c.Resume(id))
	}
	for _, id := range c.IDs(cluster.Stopped) {
		errs = append(errs, c.Restart(ctx, id))
	}
	return errors.Join(errs...)
}

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// pick chooses a running member: the leader if leader is set, else any one
// (but not excluded ones).
func pick(ctx context.Context, c *cluster.Cluster, rng *rand.Rand, leader bool, exclude ...uint64) (uint64, error) {
	if leader {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return c.Leader(lctx)
	}
	var ids []uint64
	for _, id := range c.IDs(cluster.Running) {
		if !slices.Contains(exclude, id) {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return 0, errors.New("no running member to pick")
	}
	return ids[rng.IntN(len(ids))], nil
}

// follower picks a running member that is not the leader.
func follower(ctx context.Context, c *cluster.Cluster, rng *rand.Rand) (uint64, error) {
	lead, err := pick(ctx, c, rng, true)
	if err != nil {
		return 0, err
	}
	return pick(ctx, c, rng, false, lead)
}

// restartAll restarts the given members.
func restartAll(ctx context.Context, c *cluster.Cluster, ids []uint64) error {
	var errs []error
	for _, id := range ids {
		if c.State(id) == cluster.Stopped {
			errs = append(errs, c.Restart(ctx, id))
		}
	}
	return errors.Join(errs...)
}

// onOne is a fault on one member, picked at random (or the leader): strike
// hits it, heal undoes that. Heal after a failed pick does nothing.
type onOne struct {
	name   string
	leader bool
	disk   bool // needs cluster.Options.PowerFS
	strike func(ctx context.Context, c *cluster.Cluster, id uint64) error
	heal   func(ctx context.Context, c *cluster.Cluster, id uint64) error
	victim uint64
}

func (o *onOne) Name() string { return o.name }

func (o *onOne) needsPowerFS() bool { return o.disk }

func (o *onOne) Inject(ctx context.Context, c *cluster.Cluster, rng *rand.Rand) error {
	o.victim = 0
	id, err := pick(ctx, c, rng, o.leader)
	if err != nil {
		return err
	}
	o.victim = id
	return o.strike(ctx, c, id)
}

func (o *onOne) Heal(ctx context.Context, c *cluster.Cluster) error {
	if o.victim == 0 {
		return nil
	}
	return o.heal(ctx, c, o.victim)
}

func restart(ctx context.Context, c *cluster.Cluster, id uint64) error {
	return restartAll(ctx, c, []uint64{id})
}

// kill: kill -9 a random member (or the leader), restart it on heal.
func kill(leader bool) *onOne {
	name := "kill"
	if leader {
		name = "kill-leader"
	}
	return &onOne{name: name, leader: leader, heal: restart,
		strike: func(_ context.Context, c *cluster.Cluster, id uint64) error { return c.Kill(id) }}
}

// killMajority: kill -9 a majority, one member after another, so that the
// cluster loses its quorum while writes are in flight; restart them on heal.
type killMajority struct{ victims []uint64 }

func (k *killMajority) Name() string { return "kill-majority" }

func (k *killMajority) Inject(ctx context.Context, c *cluster.Cluster, rng *rand.Rand) error {
	members := c.IDs(cluster.Running, cluster.Paused, cluster.Stopped)
	running := c.IDs(cluster.Running)
	rng.Shuffle(len(running), func(i, j int) { running[i], running[j] = running[j], running[i] })
	k.victims = nil
	down := len(members) - len(running)
	for _, id := range running {
		if down > len(members)/2 {
			break
		}
		if err := c.Kill(id); err != nil {
			return err
		}
		k.victims = append(k.victims, id)
		down++
		sleep(ctx, 300*time.Millisecond)
	}
	if len(k.victims) == 0 {
		return errors.New("a majority is down already")
	}
	return nil
}

func (k *killMajority) Heal(ctx context.Context, c *cluster.Cluster) error {
	return restartAll(ctx, c, k.victims)
}

// pause: SIGSTOP a random member (or the leader); SIGCONT on heal. A paused
// leader still holds connections and, once resumed, still thinks it leads.
func pause(leader bool) *onOne {
	name := "pause"
	if leader {
		name = "pause-leader"
	}
	return &onOne{name: name, leader: leader,
		strike: func(_ context.Context, c *cluster.Cluster, id uint64) error { return c.Pause(id) },
		heal: func(_ context.Context, c *cluster.Cluster, id uint64) error {
			if c.State(id) == cluster.Paused {
				return c.Resume(id)
			}
			return nil
		}}
}

// isolate: cut every path to and from a random member.
type isolate struct{}

func (*isolate) Name() string { return "isolate" }

func (*isolate) Inject(ctx context.Context, c *cluster.Cluster, rng *rand.Rand) error {
	id, err := pick(ctx, c, rng, false)
	if err != nil {
		return err
	}
	return c.Isolate(id, cluster.Refuse)
}

func (*isolate) Heal(ctx context.Context, c *cluster.Cluster) error {
	c.HealLinks()
	return nil
}

// split: divide the members into a random majority and minority; with
// stall, the paths between them stall instead of refusing connections.
type split struct{ stall bool }

func (s *split) Name() string {
	if s.stall {
		return "stall"
	}
	return "split"
}

func (s *split) Inject(ctx context.Context, c *cluster.Cluster, rng *rand.Rand) error {
	ids := c.IDs(cluster.Running, cluster.Paused, cluster.Stopped)
	if len(ids) < 3 {
		return errors.New("fewer than 3 members")
	}
	rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	minority := 1 + rng.IntN((len(ids)-1)/2)
	f := cluster.Refuse
	if s.stall {
		f = cluster.Stall
	}
	if err := c.Partition(f, ids[:minority], ids[minority:]); err != nil {
		c.HealLinks() // a partial cut must not outlive the round
		return err
	}
	return nil
}

func (*split) Heal(ctx context.Context, c *cluster.Cluster) error {
	c.HealLinks()
	return nil
}

// cutLeader: isolate the leader and hand it writes it can never commit, so
// that it holds uncommitted entries in its log when it rejoins; the new
// leader must overwrite them. Its paths stall, so what it sent while cut
// off arrives late, after healing.
type cutLeader struct{}

func (*cutLeader) Name() string { return "cut-leader" }

func (*cutLeader) Inject(ctx context.Context, c *cluster.Cluster, rng *rand.Rand) error {
	id, err := pick(ctx, c, rng, true)
	if err != nil {
		return err
	}
	if err := c.Isolate(id, cluster.Stall); err != nil {
		return err
	}
	// Besides the workload's requests: writes to keys of its own, which the
	// workload never reads, so their fate does not matter to the check.
	cl := client.New(c.ClientURL(id), &http.Client{Timeout: 2 * time.Second})
	for i := range 3 {
		go cl.Put(context.Background(), fmt.Sprintf("nemesis/uncommitted-%d", i), "never")
	}
	return nil
}

func (*cutLeader) Heal(ctx context.Context, c *cluster.Cluster) error {
	c.HealLinks()
	return nil
}

// churn: remove a random follower, then on heal add a fresh member (new
// id, --join) as a learner, and promote it once it has caught up.
type churn struct{ removed bool }

func (*churn) Name() string { return "churn" }

func (ch *churn) Inject(ctx context.Context, c *cluster.Cluster, rng *rand.Rand) error {
	ch.removed = false
	id, err := follower(ctx, c, rng)
	if err != nil {
		return err
	}
	if err := c.RemoveNode(ctx, id); err != nil {
		return err
	}
	ch.removed = true
	return nil
}

func (ch *churn) Heal(ctx context.Context, c *cluster.Cluster) error {
	if !ch.removed {
		return nil
	}
	id, err := c.AddLearner(ctx)
	if err != nil {
		return err
	}
	if err := c.WaitCaughtUp(ctx, id, 30*time.Second); err != nil {
		return err
	}
	return c.Promote(ctx, id)
}

// snapshotCrash: kill -9 a member the moment it starts writing a snapshot
// (or after 5 s without one); restart it on heal. Run the cluster with a
// small snapshot count so that snapshots, and snapshot transfers to the
// restarted member, happen all the time.
func snapshotCrash() *onOne {
	return &onOne{name: "snapshot-crash", heal: restart,
		strike: func(ctx context.Context, c *cluster.Cluster, id uint64) error {
			select {
			case <-c.WatchLog(id, "saving snapshot"):
				c.Logf("member %d started a snapshot", id)
			case <-time.After(5 * time.Second):
				c.Logf("member %d started no snapshot within 5s", id)
			case <-ctx.Done():
			}
			return c.Kill(id)
		}}
}

// tornWAL: kill -9 a member, leave its newest WAL segment ending in a
// torn record (see cluster.TearWAL), restart it on heal and wait until it
// has caught up with the leader.
func tornWAL() *onOne {
	return &onOne{name: "torn-wal",
		strike: func(_ context.Context, c *cluster.Cluster, id uint64) error {
			if err := c.Kill(id); err != nil {
				return err
			}
			_, err := c.TearWAL(id)
			return err
		},
		heal: func(ctx context.Context, c *cluster.Cluster, id uint64) error {
			if err := restart(ctx, c, id); err != nil {
				return err
			}
			return c.WaitCaughtUp(ctx, id, 30*time.Second)
		}}
}

// snapshotInstall: hold a follower back until the leader has compacted its
// log past it, let it catch up by a snapshot from the leader, and kill -9
// it right after it logs the install; restart it on heal and wait until it
// has caught up. This is the moment a follower tells the leader it holds
// the snapshot, with nothing written to its WAL since (etcd #10219).
//
// The follower's links refuse rather than stall and it is not paused:
// whatever it would find later in a socket buffer could carry it past the
// compaction point. With refused links, nothing the leader appends after
// the cut (and a moment to persist what it sent before) ever reaches it.
//
// With power set, the kill is a power cut instead (see PowerCut): the
// member also loses whatever it had not fsynced.
//
// With failpoint set, the follower is first restarted with that crash
// point of the install armed (see crash.go) and kills itself there.
type snapshotInstall struct {
	power     bool
	failpoint string
	victim    uint64
	killed    bool
}

func (s *snapshotInstall) Name() string {
	switch {
	case s.power:
		return "power-cut-snapshot-install"
	case s.failpoint != "":
		return "crash-at-" + s.failpoint
	}
	return "snapshot-install"
}

func (s *snapshotInstall) needsPowerFS() bool { return s.power }

func (s *snapshotInstall) needsFailpoints() bool { return s.failpoint != "" }

func (s *snapshotInstall) Inject(ctx context.Context, c *cluster.Cluster, rng *rand.Rand) error {
	s.victim, s.killed = 0, false
	id, err := follower(ctx, c, rng)
	if err != nil {
		return err
	}
	var crashed <-chan struct{}
	if s.failpoint != "" {
		if err := c.Stop(id); err != nil {
			return err
		}
		s.victim = id
		crashed = c.WatchLog(id, "failpoint "+s.failpoint+" reached")
		if err := c.RestartArmed(ctx, id, s.failpoint); err != nil {
			return err
		}
	}
	if err := c.Isolate(id, cluster.Refuse); err != nil {
		c.HealLinks()
		return err
	}
	s.victim = id
	sleep(ctx, 200*time.Millisecond)
	reached, err := leaderStatus(ctx, c)
	if err != nil {
		return err
	}
	target := reached.LastIndex // the most the follower can hold
	// Writes of its own move the log on while clients of the workload may
	// be stuck on the isolated member.
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	writes := writeUntil(wctx, c, reached.ID, 4, "snapshot-install")
	for {
		st, err := leaderStatus(wctx, c)
		if err == nil && st.Compacted > target {
			c.Logf("member %d holds at most index %d; leader %d compacted its log to %d", id, target, st.ID, st.Compacted)
			break
		}
		if !sleep(wctx, 50*time.Millisecond) {
			cancel()
			<-writes
			return fmt.Errorf("leader did not compact its log past %d in time: %w", target, wctx.Err())
		}
	}
	cancel()
	<-writes
	installed := c.WatchLog(id, "installed snapshot from leader")
	c.HealLinks()
	if crashed != nil {
		select {
		case <-crashed:
		case <-time.After(15 * time.Second):
			return fmt.Errorf("member %d did not reach %s within 15s of healing", id, s.failpoint)
		case <-ctx.Done():
			return ctx.Err()
		}
		for range 100 { // its exit follows the line by the time the kill takes
			if c.State(id) == cluster.Stopped {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		s.killed = true
		c.Logf("member %d crashed at %s", id, s.failpoint)
		return nil
	}
	select {
	case <-installed:
	case <-time.After(15 * time.Second):
		return fmt.Errorf("member %d installed no snapshot within 15s of healing", id)
	case <-ctx.Done():
		return ctx.Err()
	}
	// It acknowledges the snapshot a moment after the log line, and its
	// next WAL write follows the leader's answer: sweep that window.
	time.Sleep(time.Duration(rng.IntN(5000)) * time.Microsecond)
	kill := c.Kill
	if s.power {
		kill = func(id uint64) error { return c.PowerCut(id) }
	}
	if err := kill(id); err != nil {
		return err
	}
	s.killed = true
	c.Logf("member %d killed right after installing a snapshot (power cut: %v)", id, s.power)
	return nil
}

func (s *snapshotInstall) Heal(ctx context.Context, c *cluster.Cluster) error {
	c.HealLinks()
	if s.failpoint != "" && s.victim != 0 && c.State(s.victim) == cluster.Running {
		if err := c.Stop(s.victim); err != nil { // disarm: restart it without the point
			return err
		}
		s.killed = true
	}
	if !s.killed {
		return nil
	}
	if err := restart(ctx, c, s.victim); err != nil {
		return err
	}
	return c.WaitCaughtUp(ctx, s.victim, 30*time.Second)
}

// writeUntil runs n writers of keys under nemesis/<prefix>/, which the
// workload never reads, against member id until ctx ends; the channel is
// closed once they have all returned.
func writeUntil(ctx context.Context, c *cluster.Cluster, id uint64, n int, prefix string) <-chan struct{} {
	done := make(chan struct{})
	hc := &http.Client{Timeout: 2 * time.Second}
	cl := client.New(c.ClientURL(id), hc)
	var wg sync.WaitGroup
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil && i < 100000; i++ {
				if _, err := cl.Put(ctx, fmt.Sprintf("nemesis/%s/%d-%d", prefix, w, i), "x"); err != nil {
					sleep(ctx, 50*time.Millisecond)
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		hc.CloseIdleConnections()
		close(done)
	}()
	return done
}

// leaderStatus returns the current leader's status.
func leaderStatus(ctx context.Context, c *cluster.Cluster) (*cluster.Status, error) {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	id, err := c.Leader(lctx)
	if err != nil {
		return nil, err
	}
	return c.Status(lctx, id)
}
