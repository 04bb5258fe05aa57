package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestGCLimitFollowsTheLiveHeap(t *testing.T) {
	if got := gcLimitFor(0, gcHeadroomFloor); got != gcHeadroomFloor {
		t.Fatalf("limit for an empty heap: %d", got)
	}
	if got, want := gcLimitFor(400<<20, gcHeadroomFloor), int64(500<<20+gcHeadroomFloor); got != want {
		t.Fatalf("limit for 400 MiB live: %d, want %d", got, want)
	}
	// Room no collection frees: up to a point it comes out of the
	// headroom; past it the collector keeps a tenth of the live heap plus
	// the floor to allocate into, so its goal never falls to the live heap.
	if got, want := gcLimitWith(400<<20, 20<<20, gcHeadroomFloor), gcLimitFor(400<<20, gcHeadroomFloor); got != want {
		t.Fatalf("limit for 400 MiB live, 20 MiB overhead: %d, want %d", got, want)
	}
	if got, want := gcLimitWith(400<<20, 300<<20, gcHeadroomFloor), int64(440<<20+300<<20+gcHeadroomFloor); got != want {
		t.Fatalf("limit for 400 MiB live, 300 MiB overhead: %d, want %d", got, want)
	}
	if gcTuning(func(k string) string { return map[string]string{"GOGC": "50"}[k] }) ||
		gcTuning(func(k string) string { return map[string]string{"GOMEMLIMIT": "1GiB"}[k] }) {
		t.Fatal("tunes although the environment sets GOGC or GOMEMLIMIT")
	}
	if !gcTuning(func(string) string { return "" }) {
		t.Fatal("does not tune by default")
	}

	before := debug.SetMemoryLimit(-1)
	tuner := startGCTuner()
	defer tuner.stop()
	eventually(t, 5*time.Second, func() error {
		if l := debug.SetMemoryLimit(-1); l == before || l < gcHeadroomFloor || l == math.MaxInt64 {
			return fmt.Errorf("memory limit %d, not set from the live heap", l)
		}
		return nil
	})
	// A replay about to decode 1 GiB: the limit is set for what it will
	// become at once, and stays until the replay is done.
	replay := uint64(1 << 30)
	tuner.expect(replay)
	// The limit is that plus the overhead no collection frees, which is
	// at most what the runtime holds in all, with the replay's floor.
	want := gcLimitFor(uint64(float64(replay)*gcBytesInMemory), gcReplayFloor)
	held := func() int64 {
		s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}}
		metrics.Read(s)
		return int64(s[0].Value.Uint64())
	}
	if l := debug.SetMemoryLimit(-1); l < want || l > want+held() {
		t.Fatalf("memory limit %d while a 1 GiB replay is expected, want %d plus the overhead", l, want)
	}
	time.Sleep(2 * gcTuneEvery)
	if l := debug.SetMemoryLimit(-1); l < want || l > want+held() {
		t.Fatalf("memory limit %d during the replay, want %d plus the overhead", l, want)
	}
	tuner.expect(0)
	eventually(t, 5*time.Second, func() error {
		if l := debug.SetMemoryLimit(-1); l >= want {
			return fmt.Errorf("memory limit %d after the replay, still the expected heap's", l)
		}
		return nil
	})
	tuner.stop()
	if l := debug.SetMemoryLimit(-1); l != before {
		t.Fatalf("memory limit %d after the tuner stopped, want %d back", l, before)
	}
	var none *gcTuner
	none.expect(1 << 30) // no tuning: nothing happens
	if l := debug.SetMemoryLimit(-1); l != before {
		t.Fatalf("a nil tuner changed the memory limit to %d", l)
	}
}

// A heap whose spans are mostly empty but each still holds a live object
// (keys overwritten here and there) cannot shrink by collecting. The tuner
// must leave that room out of its headroom: it once set a limit below
// what the runtime held, and an idle member collected without pause.
// In a child process, so that nothing else allocates or tunes there.
func TestGCTunerDoesNotCollectForeverOnAFragmentedHeap(t *testing.T) {
	if os.Getenv("GCTUNE_CHILD") == "1" {
		gcFragmentedChild()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestGCTunerDoesNotCollectForeverOnAFragmentedHeap$")
	cmd.Env = append(os.Environ(), "GCTUNE_CHILD=1", "GOGC=", "GOMEMLIMIT=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	cycles := -1
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "gccycles" {
			cycles, _ = strconv.Atoi(f[1])
		}
	}
	if cycles < 0 {
		t.Fatalf("child reported nothing:\n%s", out)
	}
	t.Logf("%d collections in 2 s of idling on a fragmented heap", cycles)
	if cycles > 4 {
		t.Fatalf("%d collections in 2 s with nothing allocated: the memory limit is below what the heap holds", cycles)
	}
}

var gcFragmentedKeep [][]byte

func gcFragmentedChild() {
	// 256-byte objects, 32 to an 8 KiB span; keeping one in 32 keeps
	// every span, so nearly all of 300 MB is room no collection frees.
	const n = 1200000
	all := make([][]byte, n)
	for i := range all {
		all[i] = make([]byte, 256)
	}
	for i := 0; i < n; i += 32 {
		gcFragmentedKeep = append(gcFragmentedKeep, all[i])
	}
	all = nil
	runtime.GC()
	tuner := startGCTuner()
	defer tuner.stop()
	time.Sleep(4 * gcTuneEvery) // tuned
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	before := s[0].Value.Uint64()
	time.Sleep(2 * time.Second)
	metrics.Read(s)
	fmt.Printf("gccycles %d\n", s[0].Value.Uint64()-before)
	runtime.KeepAlive(gcFragmentedKeep)
}
