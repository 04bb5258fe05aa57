package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"raftexample/client"
	"raftexample/internal/cluster"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memStore is a fake store shared by every fake target. With lossy, it
// acknowledges every 10th PUT without keeping it; failGets makes every 5th
// GET fail as a member without a leader would.
type memStore struct {
	mu       sync.Mutex
	kv       map[string]string
	puts     atomic.Int64
	gets     atomic.Int64
	lossy    bool
	failGets bool
}

type memTarget struct{ s *memStore }

func (t memTarget) Put(_ context.Context, key, value string) error {
	if t.s.puts.Add(1)%10 == 0 && t.s.lossy {
		return nil
	}
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	t.s.kv[key] = value
	return nil
}

func (t memTarget) Get(_ context.Context, key string, _ bool) (string, bool, error) {
	if t.s.gets.Add(1)%5 == 0 && t.s.failGets {
		return "", false, &client.Error{Status: 503, Code: "no_leader", Message: "no leader", Outcome: client.Refused}
	}
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	v, ok := t.s.kv[key]
	return v, ok, nil
}

func (t memTarget) Delete(_ context.Context, key string) error {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	delete(t.s.kv, key)
	return nil
}

func (t memTarget) CAS(_ context.Context, key string, expect *string, value string) (bool, error) {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	cur, ok := t.s.kv[key]
	if (expect == nil) != !ok || (expect != nil && *expect != cur) {
		return false, nil
	}
	t.s.kv[key] = value
	return true, nil
}

func (memTarget) Close() {}

func runBench(t *testing.T, dial Dial, args ...string) (int, string, *result) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Run(context.Background(), args, &out, &errOut, false, dial)
	text := out.String() + errOut.String()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var r result
	if code != exitUsage {
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
			t.Fatalf("last line is not the JSON result: %v\n%s", err, text)
		}
	}
	return code, text, &r
}

func fake(s *memStore) Dial { return func(string, bool) Target { return memTarget{s} } }

func TestUsageErrors(t *testing.T) {
	s := &memStore{kv: map[string]string{}}
	for _, args := range [][]string{
		{"--endpoints", "127.0.0.1:1"},
		{"--endpoints", "http://a:1/path"},
		{"--clients", "0"},
		{"--duration", "0s"},
		{"--op", "scan"},
		{"--op", "mixed", "--mix", "put=1,scan=2"},
		{"--op", "mixed", "--mix", "put=0"},
		{"--consistency", "eventual"},
		{"--keys", "zipf"},
		{"--pin", "3"},
		{"--verify", "--op", "get"},
		{"--verify", "--keys", "uniform"},
		{"--hot-keys", "0"},
		{"--rate", "-1"},
		{"--rate", "NaN"},
		{"extra"},
		{"--bogus"},
	} {
		if code, out, _ := runBench(t, fake(s), args...); code != exitUsage || out == "" {
			t.Errorf("%q: exit %d, output %q; want %d and a message", args, code, out, exitUsage)
		}
	}
}

func TestCountsPercentilesAndErrors(t *testing.T) {
	s := &memStore{kv: map[string]string{}, failGets: true}
	code, out, r := runBench(t, fake(s), "--op", "mixed", "--mix", "put=1,get=1,delete=1,cas=1", "--keys", "hot",
		"--keyspace", "100", "--clients", "4", "--warmup", "50ms", "--count", "2000")
	if code != exitOK {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if r.Ops == 0 || r.Ops+r.Errors["no_leader"] < 2000 || r.OpsPerSec <= 0 {
		t.Fatalf("counts: %+v\n%s", r, out)
	}
	if r.Errors["no_leader"] == 0 {
		t.Fatalf("the failed GETs were not counted by kind: %v", r.Errors)
	}
	l := r.LatencyMs
	if !(l.P50 > 0 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) {
		t.Fatalf("percentiles out of order: %+v", l)
	}
	if !strings.Contains(out, "no_leader") || !strings.Contains(out, "p99.9") {
		t.Fatalf("summary lacks the errors or percentiles:\n%s", out)
	}
}

// --rate caps the requests of all clients together. The fake store answers
// at once, so without the cap the clients would send hundreds of thousands
// in the time given; with it, no more than the limiter's tokens: the rate
// times the time since the first request, plus its burst (one per client).
// That is an upper bound, which a slow machine cannot break.
func TestRateCapsRequests(t *testing.T) {
	s := &memStore{kv: map[string]string{}}
	start := time.Now()
	code, out, r := runBench(t, fake(s), "--op", "put", "--clients", "8", "--rate", "200", "--warmup", "100ms", "--duration", "300ms")
	elapsed := time.Since(start)
	if code != exitOK {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if r.Rate != 200 || !strings.Contains(out, "at most 200 requests/s") {
		t.Fatalf("the cap is not reported: rate %v\n%s", r.Rate, out)
	}
	if limit := int64(200*elapsed.Seconds()) + 8; s.puts.Load() > limit || r.Ops == 0 {
		t.Fatalf("%d PUTs sent in %v (%d measured) at --rate 200: want between 1 and %d", s.puts.Load(), elapsed, r.Ops, limit)
	}
}

// --verify must catch a store that acknowledges writes it does not keep.
func TestVerifyCatchesLostWrites(t *testing.T) {
	good := &memStore{kv: map[string]string{}}
	if code, out, r := runBench(t, fake(good), "--clients", "4", "--warmup", "0s", "--count", "500", "--verify"); code != exitOK || r.Verify == nil || r.Verify.Lost != 0 || r.Verify.Acked < 500 {
		t.Fatalf("faithful store: exit %d, verify %+v\n%s", code, r.Verify, out)
	}
	lossy := &memStore{kv: map[string]string{}, lossy: true}
	code, out, r := runBench(t, fake(lossy), "--clients", "4", "--warmup", "0s", "--count", "500", "--verify")
	if code != exitLost || r.Verify == nil || r.Verify.Lost == 0 || !strings.Contains(out, "lost:") {
		t.Fatalf("lossy store: exit %d, verify %+v\n%s", code, r.Verify, out)
	}
}

// BeforeVerify runs once, after every PUT of the load and before the
// first read of --verify: the comparison counts the servers' CPU up to it.
func TestBeforeVerifyRunsBetweenLoadAndVerify(t *testing.T) {
	s := &memStore{kv: map[string]string{}}
	var calls, putsThen, getsThen int64
	hooks := Hooks{BeforeVerify: func() { calls++; putsThen, getsThen = s.puts.Load(), s.gets.Load() }}
	var out, errOut bytes.Buffer
	code := RunWithHooks(context.Background(), []string{"--clients", "4", "--warmup", "0s", "--count", "300", "--verify"}, &out, &errOut, false, fake(s), hooks)
	if code != exitOK || calls != 1 {
		t.Fatalf("exit %d, BeforeVerify called %d times\n%s%s", code, calls, &out, &errOut)
	}
	if putsThen != s.puts.Load() || putsThen < 300 || getsThen != 0 || s.gets.Load() == 0 {
		t.Fatalf("BeforeVerify saw %d puts and %d gets; in the end %d puts, %d gets", putsThen, getsThen, s.puts.Load(), s.gets.Load())
	}
}

// Workers' targets may route writes unless --pin or --route-writes=false
// says otherwise; --verify's readers are always pinned, to read each
// member.
func TestDialPinsWhenAsked(t *testing.T) {
	s := &memStore{kv: map[string]string{}}
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"--pin", "0"}, true},
		{[]string{"--route-writes=false"}, true},
		{[]string{"--route-writes=true", "--pin", "1"}, true},
	} {
		var mu sync.Mutex
		workers := map[bool]int{}
		readers := map[bool]int{}
		n := 0
		dial := func(_ string, pinned bool) Target {
			mu.Lock()
			defer mu.Unlock()
			if n++; n <= 3 {
				workers[pinned]++
			} else {
				readers[pinned]++
			}
			return memTarget{s}
		}
		args := append([]string{"--endpoints", "http://a:1,http://b:1", "--clients", "3", "--warmup", "0s", "--count", "30", "--verify"}, tc.args...)
		code, out, r := runBench(t, dial, args...)
		if code != exitOK || workers[tc.want] != 3 || readers[false] != 0 || readers[true] == 0 || r.RoutedWrites == tc.want {
			t.Errorf("%q: exit %d, workers pinned/not %d/%d, readers %d/%d, routed_writes %v\n%s", tc.args, code,
				workers[true], workers[false], readers[true], readers[false], r.RoutedWrites, out)
		}
	}
}

func TestNothingSucceeds(t *testing.T) {
	code, out, r := runBench(t, NewRaftexampleTarget, "--endpoints", "http://127.0.0.1:1", "--clients", "2", "--warmup", "0s",
		"--duration", "300ms", "--timeout", "100ms")
	if code != exitNothing || r.Ops != 0 || r.Errors["transport"] == 0 {
		t.Fatalf("exit %d, %+v:\n%s", code, r, out)
	}
}

func TestRealCluster(t *testing.T) {
	c := cluster.StartTest(t, cluster.Options{})
	eps := strings.Join(c.ClientURLs(), ",")
	for _, args := range [][]string{
		{"--op", "put", "--verify"},
		{"--op", "get", "--consistency", "serializable", "--pin", "1"},
		{"--op", "mixed", "--keys", "uniform", "--keyspace", "50"},
	} {
		args = append(args, "--endpoints", eps, "--clients", "4", "--warmup", "200ms", "--duration", "1s")
		code, out, r := runBench(t, NewRaftexampleTarget, args...)
		if code != exitOK || r.Ops == 0 || (r.Verify != nil && r.Verify.Lost != 0) {
			t.Fatalf("%q: exit %d\n%s", args, code, out)
		}
		t.Logf("%q:\n%s", args, out)
	}
}
