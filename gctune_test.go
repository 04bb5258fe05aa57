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
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { defer close(done); tuneGC(stop) }()
	eventually(t, 5*time.Second, func() error {
		if l := debug.SetMemoryLimit(-1); l == before || l < gcHeadroomFloor || l == math.MaxInt64 {
			return fmt.Errorf("memory limit %d, not set from the live heap", l)
		}
		return nil
	})
	close(stop)
	<-done
	if l := debug.SetMemoryLimit(-1); l != before {
		t.Fatalf("memory limit %d after the tuner stopped, want %d back", l, before)
	}
}
