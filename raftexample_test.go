package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"raftexample/internal/ports"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	if code == 0 {
		// fasthttp keeps one goroutine per process that refreshes the Date
		// header, by design; a stopped fast lane's worker-pool cleaner
		// leaves within fastIdleWorker, so look again for that long.
		var err error
		for range 2 * int(fastIdleWorker/(200*time.Millisecond)) {
			if err = goleak.Find(goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1")); err == nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "goroutines leaked by the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// testCluster runs members in this process on loopback: fixed peer ports
// (they are in every member's --cluster), HTTP on port 0.
type testCluster struct {
	t     testing.TB
	dir   string
	peers []string
	cfgs  []config
	nodes []*server // nil while a member is stopped
	log   *syncBuffer
	lg    *zap.Logger
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// freePort reserves a port for the rest of the test (see internal/ports:
// members restart on their ports, and other test processes run alongside).
func freePort(t testing.TB) int {
	t.Helper()
	r, err := ports.Reserve()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Release)
	return r.Port
}

func newTestCluster(t testing.TB, n int, mod func(*config)) *testCluster {
	t.Helper()
	c := &testCluster{t: t, dir: t.TempDir(), log: &syncBuffer{}}
	c.lg = zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.AddSync(c.log), zap.InfoLevel))
	for i := 0; i < n; i++ {
		c.peers = append(c.peers, fmt.Sprintf("http://127.0.0.1:%d", freePort(t)))
	}
	for i := 0; i < n; i++ {
		c.addConfig(uint64(i+1), c.peers, false, mod)
	}
	t.Cleanup(func() {
		c.stopAll()
		if t.Failed() {
			logs := c.log.String()
			if len(logs) > 60000 {
				logs = "...\n" + logs[len(logs)-60000:]
			}
			t.Logf("member logs:\n%s", logs)
		}
	})
	for i := 0; i < n; i++ {
		c.start(i)
	}
	return c
}

func (c *testCluster) addConfig(id uint64, peers []string, join bool, mod func(*config)) {
	cfg := config{
		id: id, cluster: peers, join: join, listen: "127.0.0.1", dataDir: c.dir,
		snapshotCount: 10000, logWindow: 8 << 20, tick: 10 * time.Millisecond, electionTicks: 10,
		requestTimeout: 3 * time.Second, maxRequestBytes: 1536 * 1024,
		limits:       limits{keyBytes: 4096, valueBytes: 1536 * 1024, txnOps: 128, listLimit: 1000, watchers: 100, watchWait: time.Minute},
		watchHistory: 10000,
	}
	if mod != nil {
		mod(&cfg)
	}
	c.cfgs = append(c.cfgs, cfg)
	c.nodes = append(c.nodes, nil)
}

func (c *testCluster) start(i int) {
	c.t.Helper()
	s, err := startServer(c.lg, c.cfgs[i])
	if err != nil {
		c.t.Fatalf("start member %d: %v", i+1, err)
	}
	c.nodes[i] = s
}

func (c *testCluster) stop(i int) {
	if c.nodes[i] != nil {
		c.nodes[i].stop()
		c.nodes[i] = nil
	}
}

func (c *testCluster) stopAll() {
	var wg sync.WaitGroup
	for i := range c.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); c.stop(i) }()
	}
	wg.Wait()
}

func (c *testCluster) url(i int, path string) string { return "http://" + c.nodes[i].addr() + path }

// leader waits until the running members agree on a leader and returns its index.
func (c *testCluster) leader() int {
	c.t.Helper()
	var idx int
	eventually(c.t, 10*time.Second, func() error {
		var lead uint64
		for _, s := range c.nodes {
			if s == nil {
				continue
			}
			l := s.rn.leader()
			if l == 0 || (lead != 0 && l != lead) {
				return fmt.Errorf("no agreed leader yet")
			}
			lead = l
		}
		idx = int(lead) - 1
		if idx >= len(c.nodes) || c.nodes[idx] == nil {
			return fmt.Errorf("leader %d is not running here", lead)
		}
		return nil
	})
	return idx
}

// httpClient opens a connection per request, so no idle connection outlives a test.
var httpClient = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

type response struct {
	code   int
	body   string
	header http.Header
}

func do(t testing.TB, method, url, body string) response {
	t.Helper()
	r, err := tryDo(method, url, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

// tryDo sends one request; a member that is down is an error, not a failure.
func tryDo(method, url, body string) (response, error) {
	return tryDoWith(httpClient, method, url, body)
}

func tryDoWith(client *http.Client, method, url, body string) (response, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return response{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return response{resp.StatusCode, string(b), resp.Header}, err
}

func (c *testCluster) mustPut(i int, key, value string) {
	c.t.Helper()
	if r := do(c.t, "PUT", c.url(i, "/"+key), value); r.code != http.StatusNoContent {
		c.t.Fatalf("PUT %s on member %d: %d %s", key, i+1, r.code, r.body)
	}
}

func (c *testCluster) mustGet(i int, key, want string) {
	c.t.Helper()
	r := do(c.t, "GET", c.url(i, "/"+key), "")
	if r.code != http.StatusOK || r.body != want {
		c.t.Fatalf("GET %s on member %d: %d %q, want 200 %q", key, i+1, r.code, r.body, want)
	}
}

// eventually polls fn until it returns nil or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true after %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSingleNodePutGet(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	c.leader()
	r := do(t, "PUT", c.url(0, "/my-key"), "hello")
	if r.code != http.StatusNoContent || r.header.Get("X-Raft-Index") == "" {
		t.Fatalf("PUT: %d %q index=%q", r.code, r.body, r.header.Get("X-Raft-Index"))
	}
	c.mustGet(0, "my-key", "hello")
	c.mustPut(0, "my-key", "") // an empty value is a value
	c.mustGet(0, "my-key", "")
	if r := do(t, "GET", c.url(0, "/absent"), ""); r.code != http.StatusNotFound {
		t.Fatalf("absent key: %d", r.code)
	}
	// The key is the decoded path, kept as is; the query string is not part of it.
	c.mustPut(0, "a%20b/c%2Fd//e", "spaced")
	c.mustGet(0, "a b/c/d//e", "spaced")
	if r := do(t, "GET", c.url(0, "/a%20b/c/d//e?consistency=serializable"), ""); r.code != 200 || r.body != "spaced" {
		t.Fatalf("serializable GET: %d %q", r.code, r.body)
	}
	if r := do(t, "HEAD", c.url(0, "/my-key"), ""); r.code != http.StatusOK {
		t.Fatalf("HEAD: %d", r.code)
	}
	if r := do(t, "DELETE", c.url(0, "/1"), ""); r.code != http.StatusConflict {
		t.Fatalf("removing the only member: %d %q", r.code, r.body)
	}
	c.mustGet(0, "my-key", "")

	r = do(t, "GET", c.url(0, "/v1/status"), "")
	var st statusReply
	if err := json.Unmarshal([]byte(r.body), &st); err != nil || r.code != 200 {
		t.Fatalf("status: %d %q %v", r.code, r.body, err)
	}
	if st.ID != 1 || st.Leader != 1 || st.RaftState != "leader" || st.Term == 0 || st.Keys != 2 ||
		st.Applied < 4 || st.Commit < st.Applied || len(st.Members) != 1 || st.Members[0].ID != 1 {
		t.Fatalf("status: %+v", st)
	}
}

// Every write acknowledged by one member is seen at once by a linearizable
// read on any other member, and eventually applied on all of them.
func TestThreeNodesReadYourWritesAnywhere(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.leader()
	for i := 0; i < 30; i++ {
		key, val := "k"+strconv.Itoa(i), "v"+strconv.Itoa(i)
		c.mustPut(i%3, key, val)
		c.mustGet((i+1)%3, key, val)
		c.mustGet((i+2)%3, key, val)
	}
	for n := 0; n < 3; n++ {
		eventually(t, 5*time.Second, func() error {
			r := do(t, "GET", c.url(n, "/k29?consistency=serializable"), "")
			if r.code != 200 || r.body != "v29" {
				return fmt.Errorf("member %d applied state: %d %q", n+1, r.code, r.body)
			}
			return nil
		})
	}
}

// concurrentWrites runs writers against random members and returns the
// writes that were acknowledged; unacknowledged ones are ambiguous.
func concurrentWrites(t testing.TB, c *testCluster, writers, perWriter int, prefix string) map[string]string {
	var urls []string // captured now: members stopped later just refuse connections
	for i := range c.nodes {
		if c.nodes[i] != nil {
			urls = append(urls, c.url(i, "/"))
		}
	}
	acked := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				key := fmt.Sprintf("%s-%d-%d", prefix, w, i)
				req, _ := http.NewRequest("PUT", urls[(w+i)%len(urls)]+key, strings.NewReader("val-"+key))
				resp, err := httpClient.Do(req)
				if err != nil {
					continue
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusNoContent {
					mu.Lock()
					acked[key] = "val-" + key
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return acked
}

func TestRestartAllMembersKeepsAcknowledgedWrites(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.leader()
	acked := concurrentWrites(t, c, 8, 25, "r")
	if len(acked) < 150 {
		t.Fatalf("only %d of 200 writes acknowledged on a healthy cluster", len(acked))
	}
	c.stopAll()
	for i := range c.nodes {
		c.start(i)
	}
	c.leader()
	i := 0
	for k, v := range acked {
		c.mustGet(i%3, k, v)
		i++
	}
}

// A member that missed writes while the log was compacted catches up from a
// snapshot; old snapshot files and the compacted log are let go.
func TestSnapshotCatchUpAfterCompaction(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *config) { cfg.snapshotCount = 20 })
	lead := c.leader()
	lagger := (lead + 1) % 3
	c.stop(lagger)
	other := 3 - lead - lagger
	for i := 0; i < 150; i++ {
		c.mustPut([]int{lead, other}[i%2], "s"+strconv.Itoa(i), strconv.Itoa(i))
	}
	snapDir := filepath.Join(c.dir, "raftexample-"+strconv.Itoa(lead+1)+"-snap")
	eventually(t, 5*time.Second, func() error {
		snaps, _ := filepath.Glob(filepath.Join(snapDir, "*.snap"))
		if len(snaps) == 0 || len(snaps) > snapFilesKept {
			return fmt.Errorf("leader has %d snapshot files, want 1..%d", len(snaps), snapFilesKept)
		}
		return nil
	})
	c.start(lagger)
	eventually(t, 10*time.Second, func() error {
		r := do(t, "GET", c.url(lagger, "/s149?consistency=serializable"), "")
		if r.code != 200 || r.body != "149" {
			return fmt.Errorf("lagging member: %d %q", r.code, r.body)
		}
		return nil
	})
	if !strings.Contains(c.log.String(), "installed snapshot from leader") {
		t.Fatal("the lagging member caught up without a snapshot; the log was not compacted")
	}
	// The leader's status says how far its log is compacted: a snapshot
	// every 20 entries, 20 entries kept behind it.
	eventually(t, 5*time.Second, func() error {
		var st statusReply
		r := do(t, "GET", c.url(lead, "/v1/status"), "")
		if err := json.Unmarshal([]byte(r.body), &st); err != nil {
			return err
		}
		if st.Snapshot < 140 || st.Compacted != st.Snapshot-20 || st.LastIndex < st.Commit || st.Commit < st.Applied || st.Applied < st.Snapshot {
			return fmt.Errorf("leader's log bounds: %s", r.body)
		}
		return nil
	})
	for i := 0; i < 150; i += 7 {
		r := do(t, "GET", c.url(lagger, "/s"+strconv.Itoa(i)+"?consistency=serializable"), "")
		if r.body != strconv.Itoa(i) {
			t.Fatalf("s%d on the caught-up member: %d %q", i, r.code, r.body)
		}
	}
	// Restarting from its own snapshot plus WAL keeps everything.
	c.stop(lagger)
	c.start(lagger)
	c.mustGet(lagger, "s77", "77")
}

// A follower that fell behind the leader's in-memory log window, but not
// behind its snapshot, is sent the entries read back from the leader's WAL:
// no snapshot. Its own replay after a restart reads the same way.
func TestLaggingFollowerCatchesUpFromTheWAL(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *config) { cfg.logWindow = 1 << 10 })
	lead := c.leader()
	lagger := (lead + 1) % 3
	c.stop(lagger)
	readBack := testutil.ToFloat64(metricLogReadBack)
	value := strings.Repeat("v", 200)
	for i := 0; i < 200; i++ {
		c.mustPut(lead, "w"+strconv.Itoa(i), value+strconv.Itoa(i))
	}
	c.start(lagger)
	eventually(t, 10*time.Second, func() error {
		r := do(t, "GET", c.url(lagger, "/w199?consistency=serializable"), "")
		if r.code != 200 || r.body != value+"199" {
			return fmt.Errorf("lagging member: %d %q", r.code, r.body)
		}
		return nil
	})
	if strings.Contains(c.log.String(), "installed snapshot from leader") {
		t.Fatal("the lagging member was sent a snapshot")
	}
	if testutil.ToFloat64(metricLogReadBack) == readBack {
		t.Fatal("no entry was read back from the WAL")
	}
	for i := 0; i < 200; i += 7 {
		c.mustGet(lagger, "w"+strconv.Itoa(i), value+strconv.Itoa(i))
	}
	// Every member restarted: each replays its WAL, and the values are there.
	for i := range 3 {
		c.stop(i)
	}
	for i := range 3 {
		c.start(i)
	}
	c.leader()
	for i := 0; i < 200; i += 13 {
		c.mustGet(i%3, "w"+strconv.Itoa(i), value+strconv.Itoa(i))
	}
}

func TestAddAndRemoveMembers(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *config) { cfg.snapshotCount = 25 })
	c.leader()
	for i := 0; i < 60; i++ { // enough for the newcomer to need a snapshot
		c.mustPut(i%3, "m"+strconv.Itoa(i), strconv.Itoa(i))
	}

	newPeer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	if r := do(t, "POST", c.url(1, "/4"), newPeer); r.code != http.StatusNoContent {
		t.Fatalf("POST /4: %d %s", r.code, r.body)
	}
	if r := do(t, "POST", c.url(0, "/4"), newPeer); r.code != http.StatusBadRequest {
		t.Fatalf("adding member 4 twice: %d %s", r.code, r.body)
	}
	c.addConfig(4, append(append([]string{}, c.peers...), newPeer), true, func(cfg *config) { cfg.snapshotCount = 25 })
	c.start(3)
	eventually(t, 10*time.Second, func() error {
		r := do(t, "GET", c.url(3, "/m59?consistency=serializable"), "")
		if r.code != 200 || r.body != "59" {
			return fmt.Errorf("new member: %d %q", r.code, r.body)
		}
		return nil
	})
	c.mustPut(3, "from-4", "yes")
	c.mustGet(0, "from-4", "yes")

	if r := do(t, "DELETE", c.url(0, "/3"), ""); r.code != http.StatusNoContent {
		t.Fatalf("DELETE /3: %d %s", r.code, r.body)
	}
	select {
	case <-c.nodes[2].removed:
	case <-time.After(10 * time.Second):
		t.Fatal("removed member 3 did not learn it was removed")
	}
	c.stop(2)
	if r := do(t, "DELETE", c.url(0, "/3"), ""); r.code != http.StatusNotFound {
		t.Fatalf("DELETE of a removed member: %d %s", r.code, r.body)
	}
	if r := do(t, "POST", c.url(0, "/3"), c.peers[2]); r.code != http.StatusBadRequest {
		t.Fatalf("re-adding a removed id: %d %s", r.code, r.body)
	}
	// The removed member restarted on its old data stays out.
	c.start(2)
	select {
	case <-c.nodes[2].removed:
	case <-time.After(10 * time.Second):
		t.Fatal("restarted removed member did not stay out")
	}
	c.stop(2)
	c.leader() // member 3 may have been the leader: the others elect a new one
	c.mustPut(1, "after-remove", "ok")
	c.mustGet(3, "after-remove", "ok")
	c.mustGet(0, "m0", "0")

	// Member 4's --cluster lists member 3. Once a snapshot covers the
	// removal, a restart replays no conf change that removes it: the
	// snapshot must, or the transport dials member 3 for ever (a soak found
	// members with dozens of such peers, ten dials a second each).
	for i := 0; i < 60; i++ {
		c.mustPut(i%2, "after-"+strconv.Itoa(i), "x")
	}
	c.stop(3)
	c.start(3)
	c.leader() // member 4 may have been the leader
	c.mustGet(3, "after-59", "x")
	if p := c.nodes[3].rn.transport.Get(3); p != nil {
		t.Error("restarted member 4 still has a transport peer for removed member 3")
	}
}

// A member that was down while a newcomer joined does not know the
// newcomer's address, and here the newcomer leads when it comes back: its
// answers have nowhere to go unless the newcomer's requests carry its peer
// URLs (rafthttp's X-PeerURLs, from the transport's URLs), and it never
// catches up (found by the fault suite: a member that stayed behind for
// good after a restart, while a member added meanwhile led).
func TestMemberThatMissedANewcomerFollowsItAsLeader(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.leader()
	c.mustPut(0, "before", "1")
	c.stop(2)

	newPeer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	lead := c.leader()
	if r := do(t, "POST", c.url(lead, "/4"), newPeer); r.code != http.StatusNoContent {
		t.Fatalf("POST /4: %d %s", r.code, r.body)
	}
	c.addConfig(4, append(append([]string{}, c.peers...), newPeer), true, nil)
	c.start(3)
	c.mustPut(3, "while-3-was-down", "2")
	if lead := c.leader(); lead != 3 {
		if r := do(t, "POST", c.url(lead, "/v1/leader/transfer"), `{"to": 4}`); r.code != http.StatusOK || !strings.Contains(r.body, `"moved":true`) {
			t.Fatalf("transfer to member 4: %d %s", r.code, r.body)
		}
	}
	if lead := c.leader(); lead != 3 {
		t.Fatalf("member %d leads, want member 4", lead+1)
	}

	// Member 3 restarts on its old data and its old --cluster: it knows
	// members 1-3 only.
	c.start(2)
	eventually(t, 15*time.Second, func() error {
		r, err := tryDo("GET", c.url(2, "/while-3-was-down"), "")
		if err != nil {
			return err
		}
		if r.code != http.StatusOK || r.body != "2" {
			return fmt.Errorf("member 3: %d %q", r.code, r.body)
		}
		return nil
	})
	c.mustPut(2, "from-3", "3")
	c.mustGet(3, "from-3", "3")
}

// rafthttp panics on a version header it cannot parse, and on X-PeerURLs
// it cannot parse from a sender it does not know (adding them as a remote
// peer); the peer server answers the first with a 400 and drops the second.
func TestPeerHeadersRafthttpPanicsOnAreGuarded(t *testing.T) {
	var got []string
	h := guardPeerHeaders(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Header.Get("X-PeerURLs"))
	}))
	sent := []string{"http://127.0.0.1:1", "http://127.0.0.1:1,https://10.0.0.2:2380", "::bad", "http://127.0.0.1:1,nonsense", "http://no-port", ""}
	want := []string{"http://127.0.0.1:1", "http://127.0.0.1:1,https://10.0.0.2:2380", "", "", "", ""}
	for _, v := range sent {
		req, _ := http.NewRequest("POST", "http://x/raft", nil)
		if v != "" {
			req.Header.Set("X-PeerURLs", v)
		}
		h.ServeHTTP(httptest.NewRecorder(), req)
	}
	if !slices.Equal(got, want) {
		t.Errorf("headers passed on %q, want %q", got, want)
	}
	got = nil
	for _, hdr := range [][2]string{{"X-Server-Version", "3.7.3"}, {"X-Min-Cluster-Version", "3.0.0"}, {"X-Server-Version", "three"}, {"X-Min-Cluster-Version", "3.0"}} {
		req, _ := http.NewRequest("POST", "http://x/raft", nil)
		req.Header.Set(hdr[0], hdr[1])
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if valid := hdr[1] != "three" && hdr[1] != "3.0"; valid != (rec.Code != http.StatusBadRequest) {
			t.Errorf("%s: %s: %d %q", hdr[0], hdr[1], rec.Code, rec.Body.String())
		}
	}
	if len(got) != 2 {
		t.Errorf("%d requests reached rafthttp, want the 2 with valid versions", len(got))
	}

	// On a member: requests from an unknown sender with such headers.
	c := newTestCluster(t, 1, nil)
	c.leader()
	for _, tc := range []struct {
		path, header, value string
		code                int
	}{
		{"/raft", "X-PeerURLs", "::bad", http.StatusBadRequest}, // rafthttp: the body is no message
		{"/raft/stream/message/1", "X-PeerURLs", "::bad", http.StatusNotFound},
		{"/raft", "X-Server-Version", "garbage", http.StatusBadRequest},
		{"/raft/stream/message/1", "X-Min-Cluster-Version", "garbage", http.StatusBadRequest},
	} {
		method := "POST"
		if strings.Contains(tc.path, "stream") {
			method = "GET"
		}
		req, _ := http.NewRequest(method, c.peers[0]+tc.path, strings.NewReader("x"))
		for k, v := range map[string]string{"X-Etcd-Cluster-ID": types.ID(clusterID).String(), "X-Server-From": "99", "X-Raft-To": "1",
			"X-Server-Version": "3.7.3", "X-Min-Cluster-Version": "3.0.0"} {
			req.Header.Set(k, v)
		}
		req.Header.Set(tc.header, tc.value)
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Errorf("%s %s with %s %q: %v", method, tc.path, tc.header, tc.value, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("%s %s with %s %q: %d, want %d", method, tc.path, tc.header, tc.value, resp.StatusCode, tc.code)
		}
	}
	c.mustPut(0, "k", "v")
	if strings.Contains(c.log.String(), "failed NewURLs") {
		t.Errorf("rafthttp was handed URLs it cannot parse:\n%s", c.log.String())
	}
}

func TestQuorumLossAnswers503(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *config) { cfg.requestTimeout = time.Second })
	c.leader()
	c.mustPut(0, "before", "1")
	c.stop(1)
	c.stop(2)
	for _, req := range [][2]string{{"PUT", "/during"}, {"GET", "/before"}} {
		start := time.Now()
		r := do(t, req[0], c.url(0, req[1]), "x")
		if r.code != http.StatusServiceUnavailable || strings.TrimSpace(r.body) == "" {
			t.Fatalf("%s %s without quorum: %d %q", req[0], req[1], r.code, r.body)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("%s without quorum took %v; the request timeout is 1s", req[0], took)
		}
	}
	// A serializable read still answers from local state.
	if r := do(t, "GET", c.url(0, "/before?consistency=serializable"), ""); r.code != 200 || r.body != "1" {
		t.Fatalf("serializable read without quorum: %d %q", r.code, r.body)
	}
	c.start(1)
	c.leader()
	c.mustPut(0, "after", "2")
	c.mustGet(1, "after", "2")
	c.mustGet(0, "before", "1")
}

func TestBadInputGetsClearErrors(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *config) { cfg.maxRequestBytes = 1024 })
	c.leader()
	cases := []struct {
		method, path, body string
		code               int
	}{
		{"POST", "/4", "not a url", 400},
		{"POST", "/4", "ftp://127.0.0.1:1", 400},
		{"POST", "/4", "http://127.0.0.1", 400},
		{"POST", "/4", "http://127.0.0.1:1/path", 400},
		{"POST", "/0", "http://127.0.0.1:1", 400},
		{"POST", "/abc", "http://127.0.0.1:1", 400},
		{"POST", "/-1", "http://127.0.0.1:1", 400},
		{"POST", "/99999999999999999999999", "http://127.0.0.1:1", 400},
		{"POST", "/1", "http://127.0.0.1:1", 400}, // already a member
		{"DELETE", "/99", "", 404},
		{"DELETE", "/x", "", 400},
		{"DELETE", "/", "", 400},
		{"PUT", "/", "v", 400},
		{"GET", "/", "", 400},
		{"PUT", "/big", strings.Repeat("x", 2000), 413},
		{"PATCH", "/k", "", 405},
		{"OPTIONS", "/k", "", 405},
		{"GET", "/k?consistency=eventual", "", 400},
		{"GET", "/k?bogus=1", "", 400},
		{"PUT", "/k?consistency=serializable", "v", 400},
		{"GET", "/k?a=%zz", "", 400},
		{"GET", "/v1/nope", "", 404},
		{"PUT", "/v1/k", "v", 404},
		{"PUT", "/v1/status", "v", 405},
		{"GET", "/v1/status?verbose=1", "", 400},
	}
	for _, tc := range cases {
		r := do(t, tc.method, c.url(0, tc.path), tc.body)
		if r.code != tc.code {
			t.Errorf("%s %s: %d %q, want %d", tc.method, tc.path, r.code, r.body, tc.code)
		}
		if tc.method != "HEAD" && (strings.Count(r.body, "\n") != 1 || len(r.body) < 10) {
			t.Errorf("%s %s: error body should be one line that says what to do, got %q", tc.method, tc.path, r.body)
		}
		if tc.code == 405 && r.header.Get("Allow") == "" {
			t.Errorf("%s %s: 405 without Allow", tc.method, tc.path)
		}
	}
	// An invalid percent-encoding in the path is refused by the HTTP server.
	conn, err := net.Dial("tcp", c.nodes[0].addr())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET /bad%%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	status, _ := io.ReadAll(conn)
	conn.Close()
	if !strings.HasPrefix(string(status), "HTTP/1.1 400") {
		t.Errorf("invalid percent-encoding: %q", firstLine(string(status)))
	}
	// The cluster is untouched and keeps working.
	for i := range c.nodes {
		if m := c.nodes[i].kv.Members(); len(m) != 3 {
			t.Fatalf("member %d sees membership %v", i+1, m)
		}
	}
	c.mustPut(1, "k", "still works")
	c.mustGet(2, "k", "still works")
}

func firstLine(s string) string { return strings.SplitN(s, "\n", 2)[0] }

// A leader stopped gracefully hands leadership to a follower first, so the
// others do not wait out an election timeout: the new leader campaigned on
// raft's MsgTimeoutNow (a transfer), not on its own timer.
func TestGracefulStopOfTheLeaderHandsOver(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	c.mustPut(lead, "before", "1")
	logFrom := len(c.log.String())
	c.stop(lead)
	logs := c.log.String()[logFrom:]
	if !strings.Contains(logs, "moved leadership off the member stopping") {
		t.Fatal("the stopping leader did not hand over")
	}
	next := c.leader()
	if want := fmt.Sprintf("received MsgTimeoutNow from %x", lead+1); !strings.Contains(logs, want) {
		t.Fatalf("member %d did not take over by a transfer: no %q in the log", next+1, want)
	}
	c.mustPut(next, "after", "2")
	c.start(lead)
	c.leader()
	c.mustGet(lead, "after", "2")
}

// A leader that stops just after a follower hands over to the follower
// still running, not to the one that stopped (raft still counts a member
// that stopped as recently active for up to an election timeout).
func TestStoppingLeaderHandsOverToAMemberStillRunning(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	c.mustPut(lead, "before", "1")
	var followers []int
	for i := range c.nodes {
		if i != lead {
			followers = append(followers, i)
		}
	}
	// Equally caught up, the lower id would be picked: stop that one.
	gone, running := followers[0], followers[1]
	c.stop(gone)
	logFrom := len(c.log.String())
	c.stop(lead)
	logs := c.log.String()[logFrom:]
	if !strings.Contains(logs, "moved leadership off the member stopping") {
		t.Fatalf("the stopping leader did not hand over to member %d, which was running:\n%s", running+1, grepLines(logs, "leadership"))
	}
	if want := fmt.Sprintf("received MsgTimeoutNow from %x", lead+1); !strings.Contains(logs, want) {
		t.Fatalf("member %d did not take over by a transfer: no %q in the log", running+1, want)
	}
	c.start(gone) // a quorum again
	c.mustPut(c.leader(), "after", "2")
}

// Stopped all at once (goreman's Ctrl-C), the leader's hand-over target is
// stopping too: the leader gives up when the target's connection goes
// down, not when its wait of two election timeouts runs out.
func TestWholeClusterStopDoesNotWaitOutTheHandOver(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	c.mustPut(lead, "k", "v")
	logFrom := len(c.log.String())
	c.stopAll()
	logs := c.log.String()[logFrom:]
	if strings.Contains(logs, "context deadline exceeded") {
		t.Fatalf("the leader waited out its hand-over to a member that had stopped:\n%s", grepLines(logs, "leadership"))
	}
	// A leader that lost its quorum before it got to the hand-over (a slow
	// stop under -race) tries none; one that tried must say how it ended.
	tried := strings.Contains(logs, "starts to transfer leadership") || strings.Contains(logs, "no other reachable voter to take over")
	if tried && !strings.Contains(logs, "moved leadership off the member stopping") && !strings.Contains(logs, "(stopped, or cut off)") &&
		!strings.Contains(logs, "no other reachable voter to take over") {
		t.Fatalf("no word of how the leader's hand-over ended in the log:\n%s", grepLines(logs, "leadership"))
	}
}

// Graceful stop answers requests that are in flight and leaves nothing
// behind (goleak checks goroutines for the whole package).
func TestGracefulStopWithRequestsInFlight(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.leader()
	done := make(chan map[string]string)
	go func() { done <- concurrentWrites(t, c, 4, 50, "g") }()
	time.Sleep(100 * time.Millisecond)
	c.stop(2) // a follower or the leader; the rest keeps a quorum
	acked := <-done
	c.start(2)
	c.leader()
	for k, v := range acked {
		c.mustGet(2, k, v)
	}
}

func TestWrongDataDirRefused(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	c.leader()
	// A second process on the same data directory (other ports) is refused.
	cfg := c.cfgs[0]
	cfg.cluster = []string{fmt.Sprintf("http://127.0.0.1:%d", freePort(t))}
	if _, err := startServer(c.lg, cfg); err == nil || !strings.Contains(err.Error(), "in use by another running raftexample") {
		t.Fatalf("second server on a data dir in use: %v", err)
	}
	c.stop(0)
	// Move member 1's data where member 2 of a two-member cluster looks.
	if err := os.Rename(filepath.Join(c.dir, "raftexample-1"), filepath.Join(c.dir, "raftexample-2")); err != nil {
		t.Fatal(err)
	}
	cfg = c.cfgs[0]
	cfg.id = 2
	cfg.cluster = []string{"http://127.0.0.1:1", c.peers[0]}
	_, err := startServer(c.lg, cfg)
	if err == nil || !strings.Contains(err.Error(), "belongs to another node") {
		t.Fatalf("started on another node's data: %v", err)
	}
}

// A crash in the middle of a WAL write leaves a torn record after the last
// complete one; that record was never fsynced, so never acknowledged. The
// member repairs the tail on restart and catches up from its peers.
func TestTornWALTailIsRepaired(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.leader()
	for i := 0; i < 20; i++ {
		c.mustPut(i%3, "t"+strconv.Itoa(i), strconv.Itoa(i))
	}
	c.stop(2)
	segs, _ := filepath.Glob(filepath.Join(c.dir, "raftexample-3", "*.wal"))
	if len(segs) == 0 {
		t.Fatal("no wal segment")
	}
	last := segs[len(segs)-1]
	data, err := os.ReadFile(last)
	if err != nil {
		t.Fatal(err)
	}
	// Records are 8-byte aligned and the segment is preallocated with zeros.
	end := (len(bytes.TrimRight(data, "\x00")) + 7) / 8 * 8
	if end < 16 {
		t.Fatalf("wal segment holds only %d bytes", end)
	}
	// A frame header announcing 1000 bytes, of which only 10 reached the disk.
	torn := append(binary.LittleEndian.AppendUint64(nil, 1000), bytes.Repeat([]byte{0xab}, 10)...)
	if err := os.WriteFile(last, append(data[:end:end], torn...), 0o600); err != nil {
		t.Fatal(err)
	}
	c.start(2)
	if !strings.Contains(c.log.String(), "torn write") {
		t.Fatal("the torn tail was not detected")
	}
	// Member 3 may have been the leader; a write sent while the others
	// still follow it fails with leader_changed, rightly.
	c.leader()
	c.mustPut(0, "after-tear", "ok")
	c.mustGet(2, "after-tear", "ok")
	for i := 0; i < 20; i++ {
		r := do(t, "GET", c.url(2, "/t"+strconv.Itoa(i)+"?consistency=serializable"), "")
		if r.code != 200 || r.body != strconv.Itoa(i) {
			t.Fatalf("t%d after repair: %d %q", i, r.code, r.body)
		}
	}
}

// partition cuts (or heals) the links between member a and each of others,
// in both directions.
func (c *testCluster) partition(a int, others []int, cut bool) {
	for _, b := range others {
		ta, tb := c.nodes[a].rn.transport, c.nodes[b].rn.transport
		ida, idb := types.ID(c.cfgs[a].id), types.ID(c.cfgs[b].id)
		if cut {
			ta.CutPeer(idb)
			tb.CutPeer(ida)
		} else {
			ta.MendPeer(idb)
			tb.MendPeer(ida)
		}
	}
}

// An isolated leader acknowledges nothing and serves no linearizable read;
// the majority goes on; after healing every acknowledged write is everywhere.
func TestIsolatedLeaderLosesNoWrites(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *config) { cfg.requestTimeout = time.Second })
	old := c.leader()
	rest := []int{(old + 1) % 3, (old + 2) % 3}
	c.mustPut(old, "before", "1")
	c.partition(old, rest, true)

	// The old leader cannot commit or confirm reads: 503, never a false 204.
	if r := do(t, "PUT", c.url(old, "/isolated"), "x"); r.code != http.StatusServiceUnavailable {
		t.Fatalf("PUT on the isolated leader: %d %q", r.code, r.body)
	}
	if r := do(t, "GET", c.url(old, "/before"), ""); r.code != http.StatusServiceUnavailable {
		t.Fatalf("linearizable GET on the isolated leader: %d %q", r.code, r.body)
	}
	// The majority elects a new leader and takes writes.
	eventually(t, 10*time.Second, func() error {
		l := c.nodes[rest[0]].rn.leader()
		if l == 0 || int(l)-1 == old || c.nodes[rest[1]].rn.leader() != l {
			return fmt.Errorf("majority has no new leader yet (sees %d)", l)
		}
		return nil
	})
	acked := concurrentWrites(t, c, 4, 20, "p")
	c.mustPut(rest[0], "during", "2")

	c.partition(old, rest, false)
	c.leader()
	for k, v := range acked {
		c.mustGet(old, k, v)
	}
	c.mustGet(old, "during", "2")
	if r := do(t, "GET", c.url(rest[1], "/isolated"), ""); r.code != http.StatusNotFound && r.code != http.StatusOK {
		t.Fatalf("the isolated write is ambiguous (404 or 200), got %d", r.code)
	}
	eventually(t, 5*time.Second, func() error {
		r := do(t, "GET", c.url(old, "/during?consistency=serializable"), "")
		if r.body != "2" {
			return fmt.Errorf("old leader's applied state: %d %q", r.code, r.body)
		}
		return nil
	})
}

// grepLines returns the lines of logs that contain s, for a failure message.
func grepLines(logs, s string) string {
	var out []string
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
