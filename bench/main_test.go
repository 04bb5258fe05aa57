package main

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"raftexample/loadgen"
)

func TestOneClientRunsPinnedToEachRole(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []clientRun
	}{
		{[]string{"--clients", "1,16"}, []clientRun{{1, "leader"}, {1, "follower"}, {16, ""}}},
		{[]string{"--clients", "16,1,64"}, []clientRun{{16, ""}, {1, "leader"}, {1, "follower"}, {64, ""}}},
		{[]string{"--clients", "1,16", "--one-client-roles=false"}, []clientRun{{1, ""}, {16, ""}}},
	} {
		o, err := parse(tc.args)
		if err != nil {
			t.Fatal(err)
		}
		if got := o.runs("put"); !slices.Equal(got, tc.want) {
			t.Errorf("%v: runs %v, want %v", tc.args, got, tc.want)
		}
		// The unrouted PUT's pinned runs would repeat PUT's.
		var unpinned []clientRun
		for _, r := range tc.want {
			if r.role == "" {
				unpinned = append(unpinned, r)
			}
		}
		if got := o.runs(putUnrouted); !slices.Equal(got, unpinned) {
			t.Errorf("%v: unrouted runs %v, want %v", tc.args, got, unpinned)
		}
	}
}

// The routed PUT lets this server's client send writes to the leader; the
// unrouted one pins every client to its member, as etcd's client is; the
// read-back of either reads each member.
func TestUnroutedPutPinsItsClients(t *testing.T) {
	for _, op := range []string{"put", putUnrouted} {
		s := &memStore{m: map[string]string{}}
		var mu sync.Mutex
		pinned := map[bool]int{}
		dial := func(_ string, p bool) loadgen.Target {
			mu.Lock()
			defer mu.Unlock()
			pinned[p]++
			return memTarget{s}
		}
		c := &cluster{endpoints: []string{"http://a", "http://b", "http://c"}}
		o := &options{duration: 50 * time.Millisecond, valueSize: 16, keyspace: 10}
		common := []string{"--endpoints", strings.Join(c.endpoints, ","), "--value-size", "16"}
		if _, _, err := measureRun(context.Background(), o, c, "raftexample", op, clientRun{4, ""}, 1, common, dial, nil); err != nil {
			t.Fatal(err)
		}
		// No warm-up: the measured run dials 4 workers, the read-back
		// up to 4 readers per member.
		wantRouted := 0
		if op == "put" {
			wantRouted = 4
		}
		if pinned[false] != wantRouted || pinned[true] < 3 {
			t.Errorf("%s: %d targets could route, %d pinned; want %d that could, and the read-back's pinned", op, pinned[false], pinned[true], wantRouted)
		}
	}
}

// --rate reaches the load engine of every run: with the fake store, which
// answers at once, an uncapped run makes thousands of requests in 300 ms;
// capped at 100 a second it makes no more than the engine's token bucket
// allows (100 a second since it started, plus one token per client).
func TestRateCapsEveryRun(t *testing.T) {
	if _, err := parse([]string{"--rate", "-5"}); err == nil {
		t.Error("--rate -5 was accepted")
	}
	o, err := parse([]string{"--rate", "100", "--duration", "300ms", "--warmup", "0s", "--value-size", "16", "--keyspace", "10"})
	if err != nil {
		t.Fatal(err)
	}
	s := &memStore{m: map[string]string{}}
	dial := func(string, bool) loadgen.Target { return memTarget{s} }
	c := &cluster{endpoints: []string{"http://a", "http://b", "http://c"}}
	common := []string{"--endpoints", strings.Join(c.endpoints, ","), "--value-size", "16"}
	start := time.Now()
	m, _, err := measureRun(context.Background(), o, c, "raftexample", "get", clientRun{4, ""}, 1, common, dial, nil)
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if ops, limit := m.OpsPerSec*o.duration.Seconds(), 100*elapsed.Seconds()+4; ops > limit || ops == 0 {
		t.Errorf("%.0f requests measured in %v at --rate 100: want between 1 and %.0f", ops, elapsed, limit)
	}
	var table bytes.Buffer
	printTable(&table, o, []measurement{m}, diskSync{})
	if !strings.Contains(table.String(), "capped at 100 requests/s") {
		t.Errorf("the table does not say the runs were capped:\n%s", table.String())
	}
}

// Each role's row holds only that role's runs: a median over both would
// mix two different paths.
func TestTableRowPerRole(t *testing.T) {
	o, err := parse([]string{"--clients", "1,16", "--ops", "put," + putUnrouted, "--passes", "1"})
	if err != nil {
		t.Fatal(err)
	}
	all := []measurement{
		{System: "etcd", Op: "put", Clients: 1, Role: "leader", OpsPerSec: 1000},
		{System: "etcd", Op: "put", Clients: 1, Role: "follower", OpsPerSec: 800},
		{System: "etcd", Op: "put", Clients: 16, OpsPerSec: 4000},
		{System: "raftexample", Op: "put", Clients: 1, Role: "leader", OpsPerSec: 1500},
		{System: "raftexample", Op: "put", Clients: 1, Role: "follower", OpsPerSec: 1600},
		{System: "raftexample", Op: "put", Clients: 16, OpsPerSec: 6000},
		{System: "raftexample", Op: putUnrouted, Clients: 16, OpsPerSec: 5000},
	}
	var b bytes.Buffer
	printTable(&b, o, all, diskSync{perSec: 1000, cpuEach: 40 * time.Microsecond})
	rows := map[string]string{}
	for _, line := range strings.Split(b.String(), "\n") {
		f := strings.Fields(line)
		if len(f) > 6 && (f[0] == "put" || f[0] == putUnrouted) {
			label := f[1]
			if f[0] == putUnrouted {
				label = "unrouted " + label
			}
			if strings.HasPrefix(f[2], "(") {
				label += " " + f[2]
				f = append(f[:2], f[3:]...)
			}
			rows[label] = strings.Join(f[2:5], " ")
		}
	}
	want := map[string]string{"1 (leader)": "1000 1500 1.50×", "1 (follower)": "800 1600 2.00×", "16": "4000 6000 1.50×",
		"unrouted 16": "4000 5000 1.25×"} // etcd's PUT, against the unrouted one
	for label, w := range want {
		if rows[label] != w {
			t.Errorf("row %q: %q, want %q (table:\n%s)", label, rows[label], w, b.String())
		}
	}
	if len(rows) != len(want) {
		t.Errorf("rows %v, want %v", rows, want)
	}
	if !strings.Contains(b.String(), "1000 fsyncs/s (4 KiB write + fdatasync, 40 µs of CPU each)") {
		t.Errorf("the machine line lacks the disk's figures:\n%s", b.String())
	}
}

// The disk's figures are a rate and a CPU time per sync, both measured:
// a sync that cost no CPU at all would mean the clock was not read.
func TestMeasureDiskSync(t *testing.T) {
	d, err := measureDiskSync(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if d.perSec < 1 || d.cpuEach <= 0 || d.cpuEach > time.Second/time.Duration(d.perSec) {
		t.Errorf("%.0f syncs/s, %v of CPU each: want a positive rate and CPU per sync no more than a sync's wall time", d.perSec, d.cpuEach)
	}
}

// memStore is a store for fake targets; lose makes every read miss.
type memStore struct {
	mu   sync.Mutex
	m    map[string]string
	lose bool
}

type memTarget struct{ s *memStore }

func (t memTarget) Put(_ context.Context, key, value string) error {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	t.s.m[key] = value
	return nil
}

func (t memTarget) Get(_ context.Context, key string, _ bool) (string, bool, error) {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	if t.s.lose {
		return "", false, nil
	}
	v, ok := t.s.m[key]
	return v, ok, nil
}

func (t memTarget) Delete(context.Context, string) error { return nil }
func (t memTarget) CAS(context.Context, string, *string, string) (bool, error) {
	return false, nil
}
func (memTarget) Close() {}

// A run pinned to a role whose member lost or gained the lead meanwhile is
// refused (and measured again by the caller), unless it lost writes: those
// are reported whatever the label.
func TestPinnedRunWhoseLeaderMoved(t *testing.T) {
	for _, tc := range []struct {
		name      string
		moves     bool
		lose      bool
		wantMoved bool
		wantLost  bool
	}{
		{"steady", false, false, false, false},
		{"moved", true, false, true, false},
		{"moved and lost writes", true, true, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &memStore{m: map[string]string{}, lose: tc.lose}
			dial := func(string, bool) loadgen.Target { return memTarget{s} }
			calls := 0
			leader := func(context.Context, []string) (int, error) {
				calls++
				if tc.moves && calls > 1 {
					return 1, nil
				}
				return 0, nil
			}
			c := &cluster{endpoints: []string{"http://a", "http://b", "http://c"}}
			o := &options{duration: 50 * time.Millisecond, valueSize: 16, keyspace: 10, roles: true}
			common := []string{"--endpoints", strings.Join(c.endpoints, ","), "--value-size", "16"}
			m, _, err := measureRun(context.Background(), o, c, "raftexample", "put", clientRun{1, "follower"}, 1, common, dial, leader)
			if moved := errors.Is(err, errLeaderMoved); moved != tc.wantMoved {
				t.Fatalf("err %v, want leader moved: %v", err, tc.wantMoved)
			}
			if !tc.wantMoved && err != nil {
				t.Fatal(err)
			}
			if lost := m.Lost+m.Unread > 0; lost != tc.wantLost {
				t.Errorf("lost %d, unreadable %d; want losses: %v", m.Lost, m.Unread, tc.wantLost)
			}
			if calls != 2 {
				t.Errorf("the leader was looked up %d times, want before and after", calls)
			}
		})
	}
}
