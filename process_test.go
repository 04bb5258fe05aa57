package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Tests here run the real binary, for what only a process shows: exit
// codes, signals, kill -9.

var (
	binDir   string
	binPaths = map[string]string{} // build tags -> binary
	buildMu  sync.Mutex
)

// buildBinary builds the server once per set of build tags: none for the
// release binary, "failpoints" for one whose crash points can be armed.
func buildBinary(t *testing.T, tags ...string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	key := strings.Join(tags, ",")
	if p, ok := binPaths[key]; ok {
		return p
	}
	if binDir == "" {
		d, err := os.MkdirTemp("", "raftexample-bin-")
		if err != nil {
			t.Fatal(err)
		}
		binDir = d
	}
	p := filepath.Join(binDir, "raftexample")
	args := []string{"build", "-o", p}
	if key != "" {
		p += "-" + strings.Join(tags, "-")
		args = []string{"build", "-tags", key, "-o", p}
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		t.Fatalf("go %v: %v\n%s", args, err, out)
	}
	binPaths[key] = p
	return p
}

type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan struct{} // closed when the process has exited
	err  error
}

func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	return startProcWith(t, buildBinary(t), nil, args...)
}

// startProcWith runs bin with extra environment variables (KEY=value).
func startProcWith(t *testing.T, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, cmd: exec.Command(bin, args...), logs: &syncBuffer{}, done: make(chan struct{})}
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("output of %v:\n%s", args, tail(p.logs.String(), 20000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return "...\n" + s[len(s)-n:]
	}
	return s
}

// exitCode waits for the process to exit and returns its exit code.
func (p *proc) exitCode(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("process did not exit within %v", timeout)
	}
	return p.cmd.ProcessState.ExitCode()
}

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	eventually(t, 15*time.Second, func() error {
		resp, err := httpClient.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
}

func TestProcessExitCodesAndSignals(t *testing.T) {
	var errOut bytes.Buffer
	cmd := exec.Command(buildBinary(t), "--id", "4", "--cluster", "http://127.0.0.1:1,http://127.0.0.1:2")
	cmd.Stderr = &errOut
	err := cmd.Run()
	if cmd.ProcessState.ExitCode() != 2 || strings.Count(strings.TrimSpace(errOut.String()), "\n") != 0 {
		t.Fatalf("--id beyond --cluster: %v, stderr %q", err, errOut.String())
	}

	dir := t.TempDir()
	peer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	port := strconv.Itoa(freePort(t))
	args := []string{"--cluster", peer, "--port", port, "--data-dir", dir, "--tick", "20"}
	base := "http://127.0.0.1:" + port
	p := startProc(t, args...)
	waitHTTP(t, base+"/x")
	if r := do(t, "PUT", base+"/survives", "sigterm"); r.code != http.StatusNoContent {
		t.Fatalf("PUT: %d %s", r.code, r.body)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.exitCode(15 * time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
	if !strings.Contains(p.logs.String(), "stopped") {
		t.Fatal("no shutdown log line")
	}

	p = startProc(t, args...)
	waitHTTP(t, base+"/x")
	if r := do(t, "GET", base+"/survives", ""); r.code != 200 || r.body != "sigterm" {
		t.Fatalf("after restart: %d %q", r.code, r.body)
	}
	p.cmd.Process.Signal(syscall.SIGINT)
	if code := p.exitCode(15 * time.Second); code != 0 {
		t.Fatalf("SIGINT: exit %d", code)
	}

	// Another member's data directory is refused with exit 2.
	if err := os.Rename(filepath.Join(dir, "raftexample-1"), filepath.Join(dir, "raftexample-2")); err != nil {
		t.Fatal(err)
	}
	p = startProc(t, "--id", "2", "--cluster", "http://127.0.0.1:1,"+peer, "--port", port, "--data-dir", dir)
	if code := p.exitCode(15 * time.Second); code != 2 || !strings.Contains(p.logs.String(), "belongs to another node") {
		t.Fatalf("foreign data dir: exit %d", code)
	}
}

type procCluster struct {
	t     *testing.T
	dir   string
	peers []string
	ports []string
	procs []*proc
}

func newProcCluster(t *testing.T, n int) *procCluster {
	c := &procCluster{t: t, dir: t.TempDir()}
	for i := 0; i < n; i++ {
		c.peers = append(c.peers, fmt.Sprintf("http://127.0.0.1:%d", freePort(t)))
		c.ports = append(c.ports, strconv.Itoa(freePort(t)))
	}
	c.procs = make([]*proc, n)
	for i := range n {
		c.start(i)
	}
	for i := range n {
		waitHTTP(t, c.url(i, "/"))
	}
	return c
}

func (c *procCluster) start(i int) {
	c.startWith(i, buildBinary(c.t), nil)
}

func (c *procCluster) startWith(i int, bin string, env []string) {
	c.procs[i] = startProcWith(c.t, bin, env, "--id", strconv.Itoa(i+1), "--cluster", strings.Join(c.peers, ","), "--port", c.ports[i],
		"--data-dir", c.dir, "--tick", "20", "--request-timeout", "2s", "--snapshot-count", "50", "--wal-checkpoint-bytes", "512")
}

// fromCheckpoint reports whether member i's start (it serves HTTP, so it
// has loaded its WAL) began at a WAL checkpoint (checkpoint.go), as its
// "replayed wal" line says.
func (c *procCluster) fromCheckpoint(i int) bool {
	line := grepLines(c.procs[i].logs.String(), "replayed wal")
	return line != "" && !strings.Contains(line, `"checkpoint": 0,`)
}

// exited reports whether member i's process has ended.
func (c *procCluster) exited(i int) bool {
	select {
	case <-c.procs[i].done:
		return true
	default:
		return false
	}
}

func (c *procCluster) url(i int, path string) string { return "http://127.0.0.1:" + c.ports[i] + path }

// putRetry writes until some member acknowledges it (any member may be down).
func (c *procCluster) putRetry(key, value string) {
	c.t.Helper()
	i := 0
	eventually(c.t, 20*time.Second, func() error {
		i++
		r, err := tryDo("PUT", c.url(i%len(c.procs), "/"+key), value)
		if err != nil {
			return err
		}
		if r.code != http.StatusNoContent {
			return fmt.Errorf("%d %s", r.code, r.body)
		}
		return nil
	})
}

func TestProcessRemovedMemberExitsAndStaysOut(t *testing.T) {
	c := newProcCluster(t, 3)
	c.putRetry("before", "1")
	r := do(t, "DELETE", c.url(0, "/3"), "")
	if r.code != http.StatusNoContent {
		t.Fatalf("DELETE /3: %d %s", r.code, r.body)
	}
	if code := c.procs[2].exitCode(15 * time.Second); code != 0 {
		t.Fatalf("removed member exited with %d", code)
	}
	if !strings.Contains(c.procs[2].logs.String(), "removed from the cluster") {
		t.Fatal("removed member did not say why it exited")
	}
	c.start(2) // on its old data
	if code := c.procs[2].exitCode(15 * time.Second); code != 0 {
		t.Fatalf("restarted removed member exited with %d", code)
	}
	c.putRetry("after", "2")
	for i := 0; i < 2; i++ {
		if r := do(t, "GET", c.url(i, "/after"), ""); r.code != 200 || r.body != "2" {
			t.Fatalf("member %d after removal: %d %q", i+1, r.code, r.body)
		}
	}
}

// kill -9 of any one member, the leader included, under concurrent writes
// loses no acknowledged write.
func TestProcessKill9UnderWritesLosesNothing(t *testing.T) {
	c := newProcCluster(t, 3)
	c.putRetry("warmup", "1")
	var mu sync.Mutex
	acked := map[string]string{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("w%d-%d", w, i)
				r, err := tryDo("PUT", c.url((w+i)%3, "/"+key), key)
				if err == nil && r.code == http.StatusNoContent {
					mu.Lock()
					acked[key] = key
					mu.Unlock()
				}
			}
		}()
	}
	checkpointed := 0
	for round := 0; round < 3; round++ {
		time.Sleep(300 * time.Millisecond)
		victim := round % 3
		c.procs[victim].cmd.Process.Signal(syscall.SIGKILL)
		c.procs[victim].exitCode(10 * time.Second)
		time.Sleep(300 * time.Millisecond)
		c.start(victim)
		waitHTTP(t, c.url(victim, "/"))
		if c.fromCheckpoint(victim) {
			checkpointed++
		}
	}
	close(stop)
	wg.Wait()
	if len(acked) < 50 {
		t.Fatalf("only %d writes acknowledged", len(acked))
	}
	for i := range 3 {
		c.procs[i].cmd.Process.Signal(syscall.SIGKILL)
		c.procs[i].exitCode(10 * time.Second)
	}
	for i := range 3 {
		c.start(i)
	}
	for i := range 3 {
		waitHTTP(t, c.url(i, "/"))
		if c.fromCheckpoint(i) {
			checkpointed++
		}
	}
	// A checkpoint every 512 bytes of log and a snapshot every 50 entries:
	// restarts after kill -9 start from one (the last checkpoint may
	// precede the last snapshot, so not every one).
	if checkpointed == 0 {
		t.Error("no restart replayed its log from a wal checkpoint")
	}
	n := 0
	for k, v := range acked {
		var r response
		eventually(t, 20*time.Second, func() error {
			var err error
			r, err = tryDo("GET", c.url(n%3, "/"+k), "")
			if err == nil && r.code == http.StatusServiceUnavailable {
				err = fmt.Errorf("503 %s", r.body)
			}
			return err
		})
		if r.code != 200 || r.body != v {
			t.Fatalf("acknowledged write %s lost: member %d answers %d %q", k, n%3+1, r.code, r.body)
		}
		n++
	}
	t.Logf("%d acknowledged writes, all present after kill -9 rounds and a full kill -9 restart (%d of 6 restarts from a wal checkpoint)", len(acked), checkpointed)
}

// SIGSTOP each member in turn (the leader among them) under writes and
// linearizable reads. Every write has its own key, so a read that starts
// after a write was acknowledged must find it; a paused old leader that
// served its local state after SIGCONT would fail this.
func TestProcessPausedMembersServeNoStaleReads(t *testing.T) {
	c := newProcCluster(t, 3)
	c.putRetry("warmup", "1")
	var latest atomic.Int64 // highest i whose PUT /p<i> was acknowledged
	latest.Store(-1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var stale []string
	reads := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			r, err := tryDo("PUT", c.url(i%3, "/p"+strconv.Itoa(i)), "x")
			if err == nil && r.code == http.StatusNoContent {
				latest.Store(int64(i))
			}
		}
	}()
	for n := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				k := latest.Load()
				if k < 0 {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				r, err := tryDo("GET", c.url(n, "/p"+strconv.FormatInt(k, 10)), "")
				mu.Lock()
				if err == nil && r.code == http.StatusNotFound {
					stale = append(stale, fmt.Sprintf("member %d missed acknowledged p%d", n+1, k))
				}
				if err == nil && r.code == http.StatusOK {
					reads++
				}
				mu.Unlock()
			}
		}()
	}
	for victim := range 3 {
		time.Sleep(500 * time.Millisecond)
		c.procs[victim].cmd.Process.Signal(syscall.SIGSTOP)
		time.Sleep(1500 * time.Millisecond)
		c.procs[victim].cmd.Process.Signal(syscall.SIGCONT)
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	if len(stale) > 0 {
		t.Fatalf("%d stale reads, e.g. %s", len(stale), stale[0])
	}
	if reads < 100 || latest.Load() < 100 {
		t.Fatalf("too little progress to judge: %d reads, %d writes", reads, latest.Load())
	}
	t.Logf("%d linearizable reads and %d acknowledged writes across three pauses, no stale read", reads, latest.Load()+1)
}

// A follower that fell behind the leader's compacted log catches up by a
// snapshot. Killed -9 while it installs that snapshot, it must boot again on
// its data, catch up and serve every acknowledged write. The failpoints hold
// the ready loop at the crash point, so no later WAL write can make up for a
// missing sync:
//   - snapshot-received: the snapshot's file is saved (rafthttp streams
//     it to disk) and checked, raft has not seen it: the member restarts
//     on what it had, removes the file, and the leader sends it again.
//   - snapshot-install-acked: after it told the leader it holds the
//     snapshot. Before the fix it then panicked at every start:
//     "tocommit(N) is out of range [lastIndex(M)]".
//   - snapshot-install-before-sync: the snapshot file and its WAL record are
//     written, the hard state committing it is not yet synced: the member
//     restarts on what it had before, saying that it ignores the newer file.
//     kill -9 keeps what reached the file, synced or not, and the WAL's
//     buffer may have gone out with a write of its own: then the member
//     restarts on the new snapshot instead, which is as good.
func TestProcessKillDuringSnapshotInstallBootsAgain(t *testing.T) {
	for _, tc := range []struct {
		failpoint, restartLog string
		orStartsOnIt          bool // starting on the installed snapshot also passes
	}{
		{"snapshot-received", "removed a snapshot file received from a leader but not installed", false},
		{"snapshot-install-acked@500ms", "replayed wal", false},
		{"snapshot-install-before-sync", "snapshot file is newer than the wal's durable state", true},
	} {
		name, _, _ := strings.Cut(tc.failpoint, "@")
		t.Run(name, func(t *testing.T) { killDuringSnapshotInstall(t, tc.failpoint, tc.restartLog, tc.orStartsOnIt) })
	}
}

var (
	restoredAt = regexp.MustCompile(`restored snapshot \[index: (\d+)`)
	replayedAt = regexp.MustCompile(`replayed wal.*"snapshot-index": (\d+)`)
)

func killDuringSnapshotInstall(t *testing.T, failpoint, restartLog string, orStartsOnIt bool) {
	c := newProcCluster(t, 3)
	c.putRetry("warmup", "1")
	c.procs[2].cmd.Process.Signal(syscall.SIGTERM)
	if code := c.procs[2].exitCode(15 * time.Second); code != 0 {
		t.Fatalf("member 3 stopped with exit code %d", code)
	}
	c.startWith(2, buildBinary(t, "failpoints"), []string{"RAFTEXAMPLE_FAILPOINTS=" + failpoint})
	// A write that member 3 applies: it has saved an entry since it
	// started, as a member that was up for a while has. (The WAL syncs its
	// first save after opening whatever it holds, which would hide the bug.)
	c.putRetry("armed", "1")
	eventually(t, 15*time.Second, func() error {
		r, err := tryDo("GET", c.url(2, "/armed"), "")
		if err == nil && r.code != http.StatusOK {
			err = fmt.Errorf("%d %s", r.code, r.body)
		}
		return err
	})

	// Paused, member 3 misses enough writes that the leader compacts its
	// log past it (snapshot every 50 entries, 50 kept behind it). Sequential
	// writes are one entry each; raft sends at most 256 messages ahead of
	// acknowledgements, and those wait in the socket for the paused member,
	// so it must miss well over that many.
	c.procs[2].cmd.Process.Signal(syscall.SIGSTOP)
	const n = 1000
	for i := range n {
		k := "k" + strconv.Itoa(i)
		// Members 1 and 2 only; an election between them (a busy machine
		// misses heartbeats) is retried: the same key and value again.
		j := i
		eventually(t, 20*time.Second, func() error {
			j++
			r, err := tryDo("PUT", c.url(j%2, "/"+k), k)
			if err == nil && r.code != http.StatusNoContent {
				err = fmt.Errorf("PUT /%s: %d %s", k, r.code, r.body)
			}
			return err
		})
	}
	c.procs[2].cmd.Process.Signal(syscall.SIGCONT)
	c.procs[2].exitCode(30 * time.Second)
	fp, _, _ := strings.Cut(failpoint, "@")
	dying := c.procs[2].logs.String()
	if !strings.Contains(dying, "failpoint "+fp+" reached") {
		t.Fatalf("member 3 did not die at the failpoint:\n%s", tail(dying, 4000))
	}
	installed := ""
	if m := restoredAt.FindAllStringSubmatch(dying, -1); len(m) > 0 {
		installed = m[len(m)-1][1]
	}

	c.start(2)
	for i := range n {
		k := "k" + strconv.Itoa(i)
		eventually(t, 20*time.Second, func() error {
			if c.exited(2) {
				t.Fatalf("member 3 exited after its restart (%v):\n%s", c.procs[2].err, tail(c.procs[2].logs.String(), 4000))
			}
			r, err := tryDo("GET", c.url(2, "/"+k), "")
			if err == nil && (r.code != http.StatusOK || r.body != k) {
				err = fmt.Errorf("GET /%s: %d %q", k, r.code, r.body)
			}
			return err
		})
	}
	time.Sleep(500 * time.Millisecond) // a few heartbeats more: still alive?
	if c.exited(2) {
		t.Fatalf("member 3 exited after serving (%v):\n%s", c.procs[2].err, tail(c.procs[2].logs.String(), 4000))
	}
	logs := c.procs[2].logs.String()
	startedOn := ""
	if m := replayedAt.FindStringSubmatch(logs); m != nil {
		startedOn = m[1]
	}
	if !strings.Contains(logs, restartLog) && !(orStartsOnIt && installed != "" && startedOn == installed) {
		t.Fatalf("member 3 did not log %q at its restart (it started on snapshot %s; it was installing %s):\n%s",
			restartLog, startedOn, installed, tail(logs, 4000))
	}
}

// The /v1 API on the real binary, as a user with curl would call it.
func TestProcessV1API(t *testing.T) {
	dir := t.TempDir()
	peer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	port := strconv.Itoa(freePort(t))
	startProc(t, "--cluster", peer, "--port", port, "--data-dir", dir, "--tick", "20")
	base := "http://127.0.0.1:" + port
	waitHTTP(t, base+"/v1/status")
	var r response
	eventually(t, 10*time.Second, func() error {
		var err error
		r, err = tryDo("PUT", base+"/v1/kv/config/app", "blue")
		if err == nil && r.code != 200 {
			err = fmt.Errorf("%d %s", r.code, r.body)
		}
		return err
	})
	mod := r.header.Get("X-Mod-Index")
	if r := doH(t, "PUT", base+"/v1/kv/config/app", "green", map[string]string{"If-Match": mod}); r.code != 200 {
		t.Fatalf("If-Match: %d %s", r.code, r.body)
	}
	if r := doH(t, "PUT", base+"/v1/kv/config/app", "red", map[string]string{"If-Match": mod}); r.code != 412 || !strings.Contains(r.body, `"precondition_failed"`) {
		t.Fatalf("stale If-Match: %d %s", r.code, r.body)
	}
	if r := do(t, "GET", base+"/config/app", ""); r.body != "green" {
		t.Fatalf("root GET of a /v1 key: %q", r.body)
	}
	r = do(t, "POST", base+"/v1/txn", `{"compare":[{"key":"config/app","target":"version","op":"=","value":2}],"success":[{"op":"put","key":"config/other","value":"x"}]}`)
	if r.code != 200 || !strings.Contains(r.body, `"succeeded":true`) {
		t.Fatalf("txn: %d %s", r.code, r.body)
	}
	r = do(t, "GET", base+"/v1/kv/?prefix=config/", "")
	if r.code != 200 || !strings.Contains(r.body, `"key":"config/app"`) || !strings.Contains(r.body, `"key":"config/other"`) {
		t.Fatalf("list: %d %s", r.code, r.body)
	}
	if r := do(t, "DELETE", base+"/v1/kv/?prefix=config/", ""); r.code != 200 || !strings.Contains(r.body, `"deleted":2`) {
		t.Fatalf("delete prefix: %d %s", r.code, r.body)
	}
	// A long poll from the first write sees the whole story, in order.
	r = do(t, "GET", base+"/v1/kv/?prefix=config/&wait=true&index=0", "")
	for _, want := range []string{`"type":"put","index":` + mod, `"value":"green"`, `"type":"delete"`} {
		if r.code != 200 || !strings.Contains(r.body, want) {
			t.Fatalf("watch: %d %s, want %s", r.code, r.body, want)
		}
	}
	if r := do(t, "GET", base+"/v1/kv/x?wait=true&timeout=1h", ""); r.code != 400 || !strings.Contains(r.body, `"timeout_too_long"`) {
		t.Fatalf("watch timeout over --max-watch-wait: %d %s", r.code, r.body)
	}
	if r := do(t, "GET", base+"/v1/kv/nope", ""); r.code != 404 || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("missing key: %d %s", r.code, r.body)
	}
}
