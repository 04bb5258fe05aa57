package main

import (
	"fmt"
	"math"
	"runtime/debug"
	"testing"
	"time"
)

func TestGCLimitFollowsTheLiveHeap(t *testing.T) {
	if got := gcLimitFor(0); got != gcHeadroomFloor {
		t.Fatalf("limit for an empty heap: %d", got)
	}
	if got, want := gcLimitFor(400<<20), int64(500<<20+gcHeadroomFloor); got != want {
		t.Fatalf("limit for 400 MiB live: %d, want %d", got, want)
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
	want := gcLimitFor(uint64(float64(replay) * gcBytesInMemory))
	if l := debug.SetMemoryLimit(-1); l != want {
		t.Fatalf("memory limit %d while a 1 GiB replay is expected, want %d", l, want)
	}
	time.Sleep(2 * gcTuneEvery)
	if l := debug.SetMemoryLimit(-1); l != want {
		t.Fatalf("memory limit %d during the replay, want %d", l, want)
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
