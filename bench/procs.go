package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"raftexample/client"
)

// A cluster is three (or n) member processes of one store on loopback.
type cluster struct {
	name      string
	procs     []*exec.Cmd
	endpoints []string
	ready     []string // URLs that answer 200 once a member can serve
}

// freePorts returns n loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func startEtcd(ctx context.Context, bin, dir string, n int) (*cluster, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	var initial []string
	for i := range n {
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i+1, ports[2*i+1]))
	}
	c := &cluster{name: "etcd"}
	for i := range n {
		client := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		args := []string{"--name", fmt.Sprintf("m%d", i+1), "--data-dir", filepath.Join(dir, fmt.Sprintf("m%d", i+1)),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "bench", "--log-level", "warn"}
		if err := c.launch(bin, dir, i, args); err != nil {
			c.stop()
			return nil, err
		}
		c.endpoints = append(c.endpoints, client)
		c.ready = append(c.ready, client+"/health")
	}
	return c, c.waitReady(ctx)
}

func startRaftexample(ctx context.Context, bin, dir string, n int) (*cluster, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	var peers []string
	for i := range n {
		peers = append(peers, fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]))
	}
	c := &cluster{name: "raftexample"}
	for i := range n {
		args := []string{"--id", strconv.Itoa(i + 1), "--cluster", strings.Join(peers, ","),
			"--port", strconv.Itoa(ports[2*i]), "--data-dir", dir, "--log-level", "warn"}
		if err := c.launch(bin, dir, i, args); err != nil {
			c.stop()
			return nil, err
		}
		client := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])
		c.endpoints = append(c.endpoints, client)
		c.ready = append(c.ready, client+"/readyz?linearizable=true")
	}
	return c, c.waitReady(ctx)
}

func (c *cluster) launch(bin, dir string, i int, args []string) error {
	logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%d.log", c.name, i+1)))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s member %d: %w", c.name, i+1, err)
	}
	logf.Close() // the child holds its own copy
	c.procs = append(c.procs, cmd)
	return nil
}

// waitReady waits until every member answers its readiness URL with 200.
func (c *cluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	hc := &http.Client{Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	for _, u := range c.ready {
		for {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			resp, err := hc.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s: %s not ready: %w", c.name, u, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// stop ends every member: SIGTERM, then SIGKILL after 10 s.
func (c *cluster) stop() {
	for _, p := range c.procs {
		p.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range c.procs {
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			p.Process.Kill()
			<-done
		}
	}
}

// clockTick is the unit of utime and stime in /proc/<pid>/stat.
var clockTick = func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if v, perr := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && perr == nil && v > 0 {
		return v
	}
	return 100
}()

// cpuSeconds is the user plus system CPU the members have used so far.
func (c *cluster) cpuSeconds() (float64, error) {
	var total float64
	for _, p := range c.procs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Process.Pid))
		if err != nil {
			return 0, err
		}
		// The command name (field 2) may hold spaces; fields after ")" are fixed.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			return 0, errors.New("short /proc stat line")
		}
		utime, _ := strconv.ParseFloat(f[11], 64)
		stime, _ := strconv.ParseFloat(f[12], 64)
		total += (utime + stime) / clockTick
	}
	return total, nil
}

// selfCPUSeconds is the user plus system CPU this process (the load
// tool) has used so far.
func selfCPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// rssMB returns the members' largest current and largest peak resident
// set, in MiB.
func (c *cluster) rssMB() (now, peak float64) {
	for _, p := range c.procs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Process.Pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			kb, _ := strconv.ParseFloat(f[1], 64)
			switch f[0] {
			case "VmRSS:":
				now = max(now, kb/1024)
			case "VmHWM:":
				peak = max(peak, kb/1024)
			}
		}
	}
	return now, peak
}

// diskSync is what a 4 KiB write + fdatasync round costs on the disk under
// the work dir: how many a second (the floor under a durable write's
// latency) and the CPU time each takes (user + system; on a virtual disk
// the sync's own kernel work is tens of µs, which every store that syncs
// pays per fsync, so it sets part of the CPU per write of both).
type diskSync struct {
	perSec  float64
	cpuEach time.Duration
}

func measureDiskSync(dir string) (diskSync, error) {
	f, err := os.CreateTemp(dir, "fsync-*")
	if err != nil {
		return diskSync{}, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	cpu0, err := selfCPU()
	if err != nil {
		return diskSync{}, err
	}
	start := time.Now()
	n := 0
	for time.Since(start) < time.Second {
		if _, err := f.WriteAt(buf, 0); err != nil {
			return diskSync{}, err
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return diskSync{}, err
		}
		n++
	}
	elapsed := time.Since(start)
	cpu1, err := selfCPU()
	if err != nil {
		return diskSync{}, err
	}
	return diskSync{perSec: float64(n) / elapsed.Seconds(), cpuEach: (cpu1 - cpu0) / time.Duration(n)}, nil
}

// selfCPU is this process's user + system time so far. The comparison
// measures the disk before it starts any member, so the process is then
// doing little else.
func selfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// raftexampleLeader returns the index in endpoints of the member that leads.
func raftexampleLeader(ctx context.Context, endpoints []string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for i, ep := range endpoints {
		st, err := client.New(ep, nil).Status(ctx)
		if err != nil {
			return -1, fmt.Errorf("status of %s: %w", ep, err)
		}
		if st.RaftState == "leader" {
			return i, nil
		}
	}
	return -1, errors.New("no member says it leads")
}
