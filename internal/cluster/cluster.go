// Package cluster runs a raftexample cluster of real processes on loopback
// for fault testing: every member gets its own ports, data dir and log file,
// and reaches each peer through a TCP proxy of its own (a link), so that any
// path between two members can be cut and healed without root or network
// namespaces. Members can be killed, paused, restarted on their data, added
// and removed.
package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"raftexample/client"
	"raftexample/internal/ports"
	"raftexample/internal/powerfs"
)

// Options describe a cluster. Zero values take the defaults noted.
type Options struct {
	Binary          string        // the raftexample binary (see Build); required
	Dir             string        // data dirs, logs and events.log go here; required
	Size            int           // initial members; default 3
	SnapshotCount   uint64        // --snapshot-count; default: the server's
	LogWindowBytes  uint64        // --log-window-bytes; default: the server's
	CheckpointBytes uint64        // --wal-checkpoint-bytes; default: the server's
	Tick            time.Duration // --tick; default 50ms
	ElectionTicks   int           // --election-ticks; default 10
	RequestTimeout  time.Duration // --request-timeout; default 2s
	// PowerFS puts each member's data dir on a powerfs mount, so that
	// PowerCut, StallDisk and FillDisk work on it. The data then lives in
	// this process's memory; Close writes it out to the member's data dir
	// if KeepDisks says so.
	PowerFS   bool
	KeepDisks func() bool
	// Logf, if set, also receives every event the harness records.
	Logf func(format string, args ...any)
}

// State is what the harness did to a member's process last.
type State int

const (
	Running State = iota
	Paused        // SIGSTOP
	Stopped       // killed or shut down; can be restarted
	Removed       // removed from the cluster; its process exited
)

func (s State) String() string {
	return [...]string{"running", "paused", "stopped", "removed"}[s]
}

// Cluster is a set of member processes and the links between them. Its
// methods are safe for concurrent use.
type Cluster struct {
	opts   Options
	client *http.Client

	mu         sync.Mutex              // guards everything below
	nodes      map[uint64]*member      // every member ever started, removed ones too
	links      map[[2]uint64]*link     // {from, to}
	inbound    map[uint64]*inboundLink // how earlier members reach a member added later
	unexpected []string                // exits the harness did not cause
	events     *os.File
	ports      []*ports.Reservation // every member's ports; released by Close
	disks      []*powerfs.FS        // every member's powerfs; unmounted by Close
	closed     bool
}

// member is one member and its current process; guarded by Cluster.mu
// except for the fields set once at creation.
type member struct {
	ID         uint64
	Joined     bool // added after start with --join
	ClientURL  string
	peerAddr   string // where its peer listener binds
	dataDir    string
	disk       *powerfs.FS // with Options.PowerFS; mounted at dataDir
	logPath    string
	args       []string
	state      State
	expectExit bool // the harness signalled the process to end
	// mayBeRemoved: a DELETE was sent for it, so exiting with status 0
	// (what a removed member does) is no surprise.
	mayBeRemoved bool
	diskFull     bool     // FillDisk: exiting on a write error is expected
	env          []string // extra environment of the next launch only (RestartArmed)
	atFailpoint  bool     // the current process said it reached a failpoint
	refusal      string   // RestartRefused: the current process should exit saying this
	proc         *os.Process
	exited       chan struct{} // closed when the current process has exited
	watchers     []*watcher
}

type watcher struct {
	substr string
	fired  chan struct{}
}

// Start launches opts.Size members and waits until each serves HTTP.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Size == 0 {
		opts.Size = 3
	}
	if opts.Tick == 0 {
		opts.Tick = 50 * time.Millisecond
	}
	if opts.ElectionTicks == 0 {
		opts.ElectionTicks = 10
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 2 * time.Second
	}
	if opts.Binary == "" || opts.Dir == "" {
		return nil, errors.New("cluster: Options.Binary and Options.Dir are required")
	}
	events, err := os.Create(filepath.Join(opts.Dir, "events.log"))
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	c := &Cluster{
		opts:    opts,
		client:  &http.Client{Timeout: 2 * time.Second},
		nodes:   map[uint64]*member{},
		links:   map[[2]uint64]*link{},
		inbound: map[uint64]*inboundLink{},
		events:  events,
	}
	ids := make([]uint64, opts.Size)
	for i := range ids {
		ids[i] = uint64(i + 1)
		n, err := c.newNode(ids[i])
		if err != nil {
			c.Close()
			return nil, err
		}
		c.nodes[n.ID] = n
	}
	for _, i := range ids {
		for _, j := range ids {
			if i != j {
				l, err := newLink(c.nodes[j].peerAddr)
				if err != nil {
					c.Close()
					return nil, err
				}
				c.links[[2]uint64{i, j}] = l
			}
		}
	}
	for _, i := range ids {
		n := c.nodes[i]
		n.args = c.args(n, ids, false)
		if err := c.launch(n); err != nil {
			c.Close()
			return nil, err
		}
	}
	for _, i := range ids {
		if err := c.waitServing(ctx, c.nodes[i]); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func (c *Cluster) newNode(id uint64) (*member, error) {
	peerPort, err := c.reservePort()
	if err != nil {
		return nil, err
	}
	clientPort, err := c.reservePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(c.opts.Dir, fmt.Sprintf("node-%d", id))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	n := &member{
		ID:        id,
		ClientURL: "http://127.0.0.1:" + strconv.Itoa(clientPort),
		peerAddr:  "127.0.0.1:" + strconv.Itoa(peerPort),
		dataDir:   dir,
		logPath:   filepath.Join(c.opts.Dir, fmt.Sprintf("node-%d.log", id)),
		state:     Stopped,
	}
	if c.opts.PowerFS {
		n.disk = powerfs.New(dir)
		if err := n.disk.Mount(); err != nil {
			return nil, fmt.Errorf("cluster: data dir of member %d: %w", id, err)
		}
		c.mu.Lock()
		c.disks = append(c.disks, n.disk)
		c.mu.Unlock()
	}
	return n, nil
}

// args builds a member's command line for the given initial members (a
// joining member lists every id up to its own). Its own --cluster entry is
// its peer listener; every other entry is its link to that member.
func (c *Cluster) args(n *member, ids []uint64, join bool) []string {
	if join {
		ids = nil
		for j := uint64(1); j <= n.ID; j++ {
			ids = append(ids, j)
		}
	}
	var peers []string
	for _, j := range ids {
		if j == n.ID {
			peers = append(peers, "http://"+n.peerAddr)
		} else {
			peers = append(peers, "http://"+c.links[[2]uint64{n.ID, j}].addr())
		}
	}
	port := strings.TrimPrefix(n.ClientURL, "http://127.0.0.1:")
	args := []string{
		"--id", strconv.FormatUint(n.ID, 10),
		"--cluster", strings.Join(peers, ","),
		"--port", port,
		"--data-dir", n.dataDir,
		"--tick", strconv.FormatInt(c.opts.Tick.Milliseconds(), 10),
		"--election-ticks", strconv.Itoa(c.opts.ElectionTicks),
		"--request-timeout", c.opts.RequestTimeout.String(),
	}
	if c.opts.SnapshotCount > 0 {
		args = append(args, "--snapshot-count", strconv.FormatUint(c.opts.SnapshotCount, 10))
	}
	if c.opts.LogWindowBytes > 0 {
		args = append(args, "--log-window-bytes", strconv.FormatUint(c.opts.LogWindowBytes, 10))
	}
	if c.opts.CheckpointBytes > 0 {
		args = append(args, "--wal-checkpoint-bytes", strconv.FormatUint(c.opts.CheckpointBytes, 10))
	}
	if join {
		args = append(args, "--join")
	}
	return args
}

// reservePort holds a port for c until Close, so that no other test, in
// this process or another, can take it while a member is down.
func (c *Cluster) reservePort() (int, error) {
	r, err := ports.Reserve()
	if err != nil {
		return 0, fmt.Errorf("cluster: %w", err)
	}
	c.mu.Lock()
	c.ports = append(c.ports, r)
	c.mu.Unlock()
	return r.Port, nil
}

// Logf records an event in events.log (and Options.Logf).
func (c *Cluster) Logf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.logLocked(format, args...)
}

func (c *Cluster) logLocked(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if c.events != nil {
		fmt.Fprintf(c.events, "%s %s\n", time.Now().Format("15:04:05.000"), msg)
	}
	if c.opts.Logf != nil {
		c.opts.Logf("%s", msg)
	}
}

// launch starts n's process; its stderr goes to n's log file.
func (c *Cluster) launch(n *member) error {
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	fmt.Fprintf(logf, "=== harness: start %s %s\n", c.opts.Binary, strings.Join(n.args, " "))
	cmd := exec.Command(c.opts.Binary, n.args...)
	c.mu.Lock()
	if len(n.env) > 0 {
		cmd.Env = append(os.Environ(), n.env...)
		fmt.Fprintf(logf, "=== harness: with %s\n", strings.Join(n.env, " "))
	}
	n.env, n.atFailpoint = nil, false
	c.mu.Unlock()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		logf.Close()
		return fmt.Errorf("cluster: %w", err)
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("cluster: start member %d: %w", n.ID, err)
	}
	exited := make(chan struct{})
	c.mu.Lock()
	n.proc, n.state, n.expectExit, n.exited = cmd.Process, Running, false, exited
	c.mu.Unlock()
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			c.notify(n, line)
		}
		io.Copy(logf, stderr)
		err := cmd.Wait()
		fmt.Fprintf(logf, "=== harness: exited: %v\n", exitText(err))
		logf.Close()
		c.mu.Lock()
		refusing := n.refusal != ""
		n.refusal = ""
		if refusing && !n.expectExit {
			c.logLocked("member %d refused to start (%s)", n.ID, exitText(err))
		} else if n.atFailpoint && !n.expectExit {
			c.logLocked("member %d crashed at its failpoint (%s)", n.ID, exitText(err))
		} else if n.diskFull && !n.expectExit {
			c.logLocked("member %d exited on a full disk (%s)", n.ID, exitText(err))
		} else if !n.expectExit && !(n.mayBeRemoved && err == nil) {
			c.unexpected = append(c.unexpected, fmt.Sprintf("member %d exited by itself (%s); see %s", n.ID, exitText(err), n.logPath))
		}
		if n.state == Running || n.state == Paused {
			n.state = Stopped // e.g. a member exiting on its removal: no more requests to it
		}
		c.mu.Unlock()
		close(exited)
	}()
	return nil
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func (c *Cluster) notify(n *member, line string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if strings.HasPrefix(line, "failpoint ") && strings.Contains(line, " reached") {
		n.atFailpoint = true // the kill -9 it is about to send itself is expected
	}
	kept := n.watchers[:0]
	for _, w := range n.watchers {
		if strings.Contains(line, w.substr) {
			close(w.fired)
		} else {
			kept = append(kept, w)
		}
	}
	n.watchers = kept
}

// WatchLog returns a channel closed when member id next logs a line
// containing substr.
func (c *Cluster) WatchLog(id uint64, substr string) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := &watcher{substr: substr, fired: make(chan struct{})}
	if n := c.nodes[id]; n != nil {
		n.watchers = append(n.watchers, w)
	}
	return w.fired
}

// waitServing waits until n answers GET /v1/status.
func (c *Cluster) waitServing(ctx context.Context, n *member) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for {
		st, err := c.Status(ctx, n.ID)
		if err == nil && st.ID == n.ID {
			return nil
		}
		if err == nil {
			// Reservations keep harnesses apart; this catches anything else
			// that answers on the member's port.
			return fmt.Errorf("cluster: member %d's port is served by member %d of another cluster; see %s", n.ID, st.ID, n.logPath)
		}
		c.mu.Lock()
		exited := n.exited
		c.mu.Unlock()
		select {
		case <-exited:
			return fmt.Errorf("cluster: member %d exited during start; see %s", n.ID, n.logPath)
		case <-ctx.Done():
			return fmt.Errorf("cluster: member %d does not serve HTTP: %w; see %s", n.ID, ctx.Err(), n.logPath)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Status is a member's GET /v1/status.
type Status = client.Status

// Status asks member id for its status.
func (c *Cluster) Status(ctx context.Context, id uint64) (*Status, error) {
	n := c.node(id)
	if n == nil {
		return nil, fmt.Errorf("cluster: no member %d", id)
	}
	st, err := client.New(n.ClientURL, c.client).Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("status of member %d: %w", id, err)
	}
	return st, nil
}

func (c *Cluster) node(id uint64) *member {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[id]
}

// IDs returns the ids of members in one of the given states (all members if
// none is given), in order.
func (c *Cluster) IDs(states ...State) []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []uint64
	for id, n := range c.nodes {
		if len(states) == 0 || slices.Contains(states, n.state) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// State returns what the harness last did to member id.
func (c *Cluster) State(id uint64) State {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.nodes[id]; n != nil {
		return n.state
	}
	return Removed
}

// ClientURLs returns the client URLs of members whose process is alive
// (running or paused), the ones a client could send requests to.
func (c *Cluster) ClientURLs() []string {
	var urls []string
	for _, id := range c.IDs(Running, Paused) {
		urls = append(urls, c.node(id).ClientURL)
	}
	return urls
}

// ClientURL returns member id's client URL.
func (c *Cluster) ClientURL(id uint64) string { return c.node(id).ClientURL }

// LogPath returns member id's log file.
func (c *Cluster) LogPath(id uint64) string { return c.node(id).logPath }

// Leader returns the member that reports itself leader with the highest
// term among running members, waiting for one until ctx ends.
func (c *Cluster) Leader(ctx context.Context) (uint64, error) {
	for {
		var best *Status
		for _, id := range c.IDs(Running) {
			sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			st, err := c.Status(sctx, id)
			cancel()
			if err == nil && st.RaftState == "leader" && (best == nil || st.Term > best.Term) {
				best = st
			}
		}
		if best != nil {
			return best.ID, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("cluster: no leader: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// signal sends sig to member id's process and sets its state.
func (c *Cluster) signal(id uint64, sig syscall.Signal, from []State, to State, expectExit bool) (*member, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[id]
	if n == nil || !slices.Contains(from, n.state) {
		return nil, fmt.Errorf("cluster: cannot send %v to member %d: it is %v", sig, id, stateOf(n))
	}
	if expectExit {
		n.expectExit = true
	}
	if err := n.proc.Signal(sig); err != nil {
		return nil, fmt.Errorf("cluster: signal member %d: %w", id, err)
	}
	n.state = to
	return n, nil
}

func stateOf(n *member) string {
	if n == nil {
		return "unknown"
	}
	return n.state.String()
}

// Kill sends SIGKILL to member id and waits for it to exit.
func (c *Cluster) Kill(id uint64) error {
	n, err := c.signal(id, syscall.SIGKILL, []State{Running, Paused}, Stopped, true)
	if err != nil {
		return err
	}
	c.Logf("kill -9 member %d", id)
	<-n.exited
	return nil
}

// Stop shuts member id down with SIGTERM (SIGKILL after 15 s).
func (c *Cluster) Stop(id uint64) error {
	if c.State(id) == Paused {
		c.Resume(id)
	}
	n, err := c.signal(id, syscall.SIGTERM, []State{Running}, Stopped, true)
	if err != nil {
		return err
	}
	c.Logf("stop member %d", id)
	select {
	case <-n.exited:
	case <-time.After(15 * time.Second):
		n.proc.Kill()
		<-n.exited
		return fmt.Errorf("cluster: member %d ignored SIGTERM for 15s; killed", id)
	}
	return nil
}

// Pause sends SIGSTOP to member id.
func (c *Cluster) Pause(id uint64) error {
	if _, err := c.signal(id, syscall.SIGSTOP, []State{Running}, Paused, false); err != nil {
		return err
	}
	c.Logf("pause member %d", id)
	return nil
}

// Resume sends SIGCONT to a paused member.
func (c *Cluster) Resume(id uint64) error {
	if _, err := c.signal(id, syscall.SIGCONT, []State{Paused}, Running, false); err != nil {
		return err
	}
	c.Logf("resume member %d", id)
	return nil
}

// Restart starts a stopped member again on its data and waits until it
// serves HTTP.
func (c *Cluster) Restart(ctx context.Context, id uint64) error {
	n := c.node(id)
	if n == nil || c.State(id) != Stopped {
		return fmt.Errorf("cluster: cannot restart member %d: it is %v", id, stateOf(n))
	}
	c.Logf("restart member %d", id)
	if err := c.launch(n); err != nil {
		return err
	}
	return c.waitServing(ctx, n)
}

// RestartArmed starts a stopped member like Restart, with the crash points
// in spec armed for this run only (RAFTEXAMPLE_FAILPOINTS; the binary must
// be built with the "failpoints" tag). When the member reaches one, it
// kills itself: an expected exit, logged as a crash at its failpoint.
func (c *Cluster) RestartArmed(ctx context.Context, id uint64, spec string) error {
	c.mu.Lock()
	if n := c.nodes[id]; n != nil && n.state == Stopped {
		n.env = []string{"RAFTEXAMPLE_FAILPOINTS=" + spec}
	}
	c.mu.Unlock()
	return c.Restart(ctx, id)
}

// PathFault is how a cut path fails.
type PathFault int

const (
	// Refuse closes the path's connections and refuses new ones: senders
	// learn at once.
	Refuse PathFault = iota
	// Stall stops moving bytes but keeps connections: senders time out, and
	// what they sent arrives late, after healing. A member added later is
	// reached from earlier members through an HTTP proxy that can only
	// refuse, so on those paths Stall refuses.
	Stall
)

func (f PathFault) String() string { return [...]string{"refuse", "stall"}[f] }

// Cut cuts the path between members a and b in both directions.
func (c *Cluster) Cut(a, b uint64, f PathFault) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cutLocked(a, b, f)
}

// cutLocked cuts both directions: member i reaches j through the link i→j
// if j is in i's --cluster, else through j's inbound link.
func (c *Cluster) cutLocked(a, b uint64, f PathFault) error {
	for _, d := range [][2]uint64{{a, b}, {b, a}} {
		l, in := c.links[d], c.inbound[d[1]]
		switch {
		case l != nil && f == Stall:
			l.setStall(true)
		case l != nil:
			l.setCut(true)
		case in != nil:
			in.setCut(d[0], true)
		default:
			return fmt.Errorf("cluster: no path from member %d to %d", d[0], d[1])
		}
	}
	return nil
}

// Isolate cuts every path to and from member id.
func (c *Cluster) Isolate(id uint64, f PathFault) error {
	c.mu.Lock()
	for j, n := range c.nodes {
		if j != id && n.state != Removed {
			if err := c.cutLocked(id, j, f); err != nil {
				c.mu.Unlock()
				return err
			}
		}
	}
	c.mu.Unlock()
	c.Logf("isolate member %d (%v)", id, f)
	return nil
}

// Partition cuts every path between members of different groups.
func (c *Cluster) Partition(f PathFault, groups ...[]uint64) error {
	group := map[uint64]int{}
	for g, ids := range groups {
		for _, id := range ids {
			group[id] = g
		}
	}
	for a, ga := range group {
		for b, gb := range group {
			if a < b && ga != gb {
				if err := c.Cut(a, b, f); err != nil {
					return err
				}
			}
		}
	}
	c.Logf("partition %v (%v)", groups, f)
	return nil
}

// HealLinks heals every cut path.
func (c *Cluster) HealLinks() {
	c.mu.Lock()
	for _, l := range c.links {
		l.setCut(false)
		l.setStall(false)
		l.setWeather(0, 0, 0)
	}
	for _, l := range c.inbound {
		l.healAll()
	}
	c.mu.Unlock()
	c.Logf("heal all links")
}

// Unexpected lists member exits that the harness did not cause.
func (c *Cluster) Unexpected() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.unexpected)
}

// Close stops every member (SIGTERM, then SIGKILL) and every link.
func (c *Cluster) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, id := range c.IDs(Running, Paused) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Stop(id); err != nil {
				c.Logf("%v", err)
			}
		}()
	}
	wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.links {
		l.close()
	}
	for _, l := range c.inbound {
		l.close()
	}
	c.events.Close()
	c.events = nil
	for _, r := range c.ports {
		r.Release()
	}
	c.client.CloseIdleConnections()
	keep := c.opts.KeepDisks != nil && c.opts.KeepDisks()
	for _, d := range c.disks {
		if err := d.Unmount(); err != nil {
			fmt.Fprintf(os.Stderr, "cluster: %v\n", err)
			continue
		}
		if keep {
			// The mount point is a plain directory again: put there what
			// the member last saw, so a kept run looks like any other.
			if err := d.Export(d.Dir()); err != nil {
				fmt.Fprintf(os.Stderr, "cluster: keep the data of %s: %v\n", d.Dir(), err)
			}
		}
	}
}

// SetWeather makes every path between members slow and flaky: each chunk
// of bytes is held for delay ± jitter, in order, and each new connection,
// and every 200 ms each open one, is dropped with probability drop. Zero
// values restore a clear network; HealLinks does too. Paths to members
// added later go through an HTTP proxy that only cuts: they stay clear.
func (c *Cluster) SetWeather(delay, jitter time.Duration, drop float64) {
	c.mu.Lock()
	for _, l := range c.links {
		l.setWeather(delay, jitter, drop)
	}
	c.mu.Unlock()
	c.Logf("network weather: delay %v ± %v per direction, drop %.0f%%", delay, jitter, drop*100)
}
