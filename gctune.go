package main

import (
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// The Go collector's headroom for a large store. By default (GOGC=100) the
// heap may grow to twice what the last collection found live, and freed
// pages go back to the OS slowly: with 1M keys a member's resident memory
// was some 3× the keys and values it held, most of it garbage and free
// pages. Here the runtime's soft memory limit follows the live heap, at
// live×(1+gcHeadroomShare)+gcHeadroomFloor: a small store still collects as
// GOGC=100 says (that goal is below the limit), a large one collects
// sooner and returns pages. The collector's CPU grows as the headroom
// shrinks; at a quarter of the live heap it was within the noise of the
// 1M-key load's throughput (README, Performance).
//
// An operator's GOGC or GOMEMLIMIT wins: with either set, nothing is tuned.
const (
	gcHeadroomShare = 0.25
	gcHeadroomFloor = 64 << 20
	gcTuneEvery     = 250 * time.Millisecond
)

// gcLimitFor is the memory limit for a live heap of live bytes.
func gcLimitFor(live uint64) int64 {
	return int64(float64(live)*(1+gcHeadroomShare)) + gcHeadroomFloor
}

// tuneGC keeps the memory limit in step with the live heap until stop is
// closed, then puts back the limit it found. Run on its own goroutine, one
// per process (the limit is process-wide).
func tuneGC(stop <-chan struct{}) {
	before := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(before)
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	t := time.NewTicker(gcTuneEvery)
	defer t.Stop()
	for {
		metrics.Read(sample)
		if sample[0].Value.Kind() == metrics.KindUint64 {
			debug.SetMemoryLimit(gcLimitFor(sample[0].Value.Uint64()))
		}
		select {
		case <-t.C:
		case <-stop:
			return
		}
	}
}

// gcTuning says whether tuneGC should run: not when the environment sets
// the collector's knobs.
func gcTuning(getenv func(string) string) bool {
	return getenv("GOGC") == "" && getenv("GOMEMLIMIT") == ""
}
