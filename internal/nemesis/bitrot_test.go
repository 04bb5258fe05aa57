package nemesis

import (
	"context"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"raftexample/internal/cluster"
)

// A follower whose newest snapshot came from the leader has no entries on
// disk between its older snapshots and that one. If that snapshot is
// damaged, nothing local can rebuild the state: it must refuse to start,
// saying so and naming the file, never start on the older state.
func TestDamagedInstalledSnapshotIsRefused(t *testing.T) {
	c := cluster.StartTest(t, cluster.Options{SnapshotCount: 50})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	si := &snapshotInstall{}
	if err := si.Inject(ctx, c, rand.New(rand.NewPCG(1, 2))); err != nil || !si.killed {
		t.Fatalf("no follower killed right after a snapshot install: %v", err)
	}
	file, err := c.DamageSnapshot(si.victim)
	if err != nil || file == "" {
		t.Fatalf("damage the installed snapshot: %q, %v", file, err)
	}
	refused, err := c.RestartMayRefuse(ctx, si.victim, "cannot rebuild the state")
	if err != nil || !refused {
		log, _ := os.ReadFile(c.LogPath(si.victim))
		t.Fatalf("member %d with a damaged installed snapshot: refused %v, %v\n%s", si.victim, refused, err, log[max(0, len(log)-3000):])
	}
	log, _ := os.ReadFile(c.LogPath(si.victim))
	if !strings.Contains(string(log), file+".broken") {
		t.Fatalf("the refusal does not name the damaged file %s:\n%s", file, log)
	}
	if u := c.Unexpected(); len(u) > 0 {
		t.Fatalf("unexpected exits: %v", u)
	}
}
