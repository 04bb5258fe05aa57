package cluster

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

var serverBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cluster-test-bin-")
	if err != nil {
		panic(err)
	}
	serverBin, err = Build(dir, false)
	if err != nil {
		os.RemoveAll(dir)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func put(t *testing.T, url, key, value string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, url+"/"+key, strings.NewReader(value))
	resp, err := (&http.Client{Timeout: 3 * time.Second}).Do(req)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// The harness's own faults do what they say: an isolated leader is replaced,
// a killed member restarts on its data, a torn WAL is repaired, members come
// and go.
func TestHarness(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{Binary: serverBin, Dir: t.TempDir(), Logf: t.Logf, SnapshotCount: 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lead, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if code := put(t, c.ClientURL(lead), "a", "1"); code != http.StatusNoContent {
		t.Fatalf("put: %d", code)
	}
	c.Isolate(lead, Refuse)
	if code := put(t, c.ClientURL(lead), "b", "1"); code != http.StatusServiceUnavailable {
		t.Fatalf("put on an isolated leader: %d, want 503", code)
	}
	c.HealLinks()
	if err := c.WaitReady(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}

	// Stall {1} | {2,3}: member 1 loses its leader, the majority side
	// takes writes.
	if err := c.Partition(Stall, []uint64{1}, []uint64{2, 3}); err != nil {
		t.Fatal(err)
	}
	waitNoLeader(t, c, 1)
	deadline := time.Now().Add(10 * time.Second)
	for put(t, c.ClientURL(2), "c", "1") != http.StatusNoContent {
		if time.Now().After(deadline) {
			t.Fatal("majority side takes no writes")
		}
	}
	c.HealLinks()

	for i := 0; i < 50; i++ {
		put(t, c.ClientURL(1), "k", "v")
	}
	victim := uint64(2)
	if err := c.Kill(victim); err != nil {
		t.Fatal(err)
	}
	msg, err := c.TearWAL(victim)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(msg)
	if err := c.Restart(ctx, victim); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReady(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if log, _ := os.ReadFile(c.LogPath(victim)); !strings.Contains(string(log), "torn write") {
		t.Fatal("the torn wal tail was not repaired")
	}

	id, err := c.AddNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveNode(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReady(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(ctx, id)
	if err != nil || len(st.Members) != 3 {
		t.Fatalf("status of the new member: %+v %v", st, err)
	}
	// A member added later can be cut from single peers too.
	if err := c.Partition(Refuse, []uint64{id}, []uint64{1, 2}); err != nil {
		t.Fatal(err)
	}
	waitNoLeader(t, c, id)
	deadline = time.Now().Add(10 * time.Second)
	for put(t, c.ClientURL(1), "d", "2") != http.StatusNoContent {
		if time.Now().After(deadline) {
			t.Fatal("majority side takes no writes")
		}
	}
	c.HealLinks()
	if err := c.WaitReady(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if u := c.Unexpected(); len(u) > 0 {
		t.Fatalf("unexpected exits: %v", u)
	}
	if got := c.IDs(Running); len(got) != 3 || got[2] != id {
		t.Fatalf("running: %v", got)
	}
}

// waitNoLeader waits until a member that was cut off has no leader: a
// follower gives up on its leader, a leader steps down (CheckQuorum), within
// an election timeout.
func waitNoLeader(t *testing.T, c *Cluster, id uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := c.Status(context.Background(), id)
		if err == nil && st.Leader == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("member %d still has a leader when cut off: %+v %v", id, st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// An add whose answer is lost still starts the new member when the cluster
// has it: member 1, asked first, applies the change and dies before it
// answers (its failpoint), and the cluster is then four voters with two
// down, so nothing commits again until the new member runs.
func TestAddNodeWhoseAnswerIsLost(t *testing.T) {
	bin, err := Build(t.TempDir(), false, "failpoints")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{Binary: bin, Dir: t.TempDir(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Leader(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(1); err != nil {
		t.Fatal(err)
	}
	crashed := c.WatchLog(1, "failpoint conf-change-applied reached")
	// The fourth: a restart applies the three that formed the cluster again.
	if err := c.RestartArmed(ctx, 1, "conf-change-applied#4"); err != nil {
		t.Fatal(err)
	}
	id, err := c.AddNode(ctx)
	if err != nil {
		t.Fatalf("add: %v", err)
	}
	select {
	case <-crashed:
	default:
		t.Fatal("member 1 did not die at its failpoint")
	}
	if s := c.State(id); s != Running {
		t.Fatalf("member %d is %v, not running", id, s)
	}
	deadline := time.Now().Add(20 * time.Second)
	for put(t, c.ClientURL(2), "after", "1") != http.StatusNoContent {
		if time.Now().After(deadline) {
			t.Fatal("members 2, 3 and the new one take no writes")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
