package main

import (
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"
)

// The Go collector's headroom for a large store. By default (GOGC=100) the
// heap may grow to twice what the last collection found live, and freed
// pages go back to the OS slowly: with 1M keys a member's resident memory
// was some 3× the keys and values it held, most of it garbage and free
// pages. Here the runtime's soft memory limit follows the live heap, at
// live×(1+gcHeadroomShare)+gcHeadroomFloor: a small store still collects as
// GOGC=100 says (that goal is below the limit), a large one collects
// sooner and returns pages. At a quarter of the live heap the 1M-key
// load's throughput and tail did not move (docs/performance.md, "Large
// data"); a floor of 64 MiB held its peak at 2.1× the raw data, 32 MiB
// at 2.0×, 16 MiB (with items of one allocation, item.go) at 1.9×, for
// 5-7 % fewer PUT/s (the goal is within 20 % of the small-data rate).
// Where the heap holds much room that no collection frees (readHeap), the
// limit leaves the collector a smaller headroom above that room instead
// (gcLimitWith).
//
// While a member restores its own disk at start, the heap is nearly all
// live as it grows, and a limit that trails it made the collector run over
// and over (a 1M-key restart took 0.5 s longer). So until the replay is
// done the limit is set from the size the raft node expects the store to
// reach (expect), not from what is live yet, and with a floor of 32 MiB:
// at 16 a crash restart on the longest log took 2.0-2.1 s, not 1.5-1.9.
//
// An operator's GOGC or GOMEMLIMIT wins: with either set, nothing is tuned.
const (
	gcHeadroomShare = 0.25
	gcHeadroomFloor = 16 << 20
	gcReplayFloor   = 32 << 20 // the floor while a start replays
	gcTuneEvery     = 250 * time.Millisecond
	// gcBytesInMemory is the heap that a byte of snapshot or log encoding
	// becomes once applied (an item, a key and a value per key, the tree).
	gcBytesInMemory = 1.3
)

// gcLimitFor is the memory limit for a live heap of live bytes, with
// floor bytes of headroom at least.
func gcLimitFor(live uint64, floor int64) int64 {
	return int64(float64(live)*(1+gcHeadroomShare)) + floor
}

// gcLimitWith is the memory limit for a live heap of live bytes when the
// runtime also holds overhead bytes that no collection frees (readHeap):
// gcLimitFor(live, floor), unless that leaves the collector less than a
// tenth of the live heap plus floor to allocate into before it must run
// again.
func gcLimitWith(live, overhead uint64, floor int64) int64 {
	return max(gcLimitFor(live, floor), int64(live+live/10+overhead)+floor)
}

// gcTuner keeps the memory limit in step with the live heap. One per
// process (the limit is process-wide); its goroutine runs from
// startGCTuner until stop.
type gcTuner struct {
	expected atomic.Uint64 // heap bytes the replay will reach; 0 once done
	stopc    chan struct{}
	done     chan struct{}
	once     sync.Once
	before   int64 // the limit found at start, put back by stop
}

func startGCTuner() *gcTuner {
	t := &gcTuner{stopc: make(chan struct{}), done: make(chan struct{}), before: debug.SetMemoryLimit(-1)}
	go t.run()
	return t
}

func (t *gcTuner) run() {
	defer close(t.done)
	tick := time.NewTicker(gcTuneEvery)
	defer tick.Stop()
	for {
		if live, overhead, ok := readHeap(); ok {
			expected, floor := t.expected.Load(), int64(gcHeadroomFloor)
			if expected > 0 {
				floor = gcReplayFloor
			}
			debug.SetMemoryLimit(gcLimitWith(max(live, expected), overhead, floor))
		}
		select {
		case <-tick.C:
		case <-t.stopc:
			return
		}
	}
}

// readHeap reads the live heap and the overhead: the memory the runtime
// holds that no collection can give back. That is the unused room in spans
// that still hold a live object (a heap whose keys were overwritten here
// and there keeps most of its spans, partly empty), the runtime's metadata
// and the stacks: all it holds but the released and free pages and the
// objects. The runtime takes this overhead off the limit before it sets
// its heap goal, so gcLimitFor(live) alone fell below the live heap once
// the overhead outgrew the headroom: a member restarted on a long log of
// overwrites (1M keys, 165 MB of such room) then collected without pause,
// a core's worth, while idle (gcLimitWith).
func readHeap() (live, overhead uint64, ok bool) {
	s := []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
	}
	metrics.Read(s)
	for _, x := range s {
		if x.Value.Kind() != metrics.KindUint64 {
			return 0, 0, false
		}
	}
	total, released, free, objects := s[1].Value.Uint64(), s[2].Value.Uint64(), s[3].Value.Uint64(), s[4].Value.Uint64()
	if held := released + free + objects; total > held {
		overhead = total - held
	}
	return s[0].Value.Uint64(), overhead, true
}

// expect says the heap is about to hold what encodes in n bytes (the
// snapshot and log a restart replays); expect(0) says the replay is done.
// A no-op on nil (no tuning).
func (t *gcTuner) expect(n uint64) {
	if t == nil {
		return
	}
	heap := uint64(float64(n) * gcBytesInMemory)
	t.expected.Store(heap)
	if heap > 0 {
		_, overhead, _ := readHeap()
		debug.SetMemoryLimit(max(gcLimitWith(heap, overhead, gcReplayFloor), debug.SetMemoryLimit(-1)))
	}
}

// stop ends the tuning and puts back the limit found at start.
func (t *gcTuner) stop() {
	t.once.Do(func() {
		close(t.stopc)
		<-t.done
		debug.SetMemoryLimit(t.before)
	})
}

// gcTuning says whether to tune: not when the environment sets the
// collector's knobs.
func gcTuning(getenv func(string) string) bool {
	return getenv("GOGC") == "" && getenv("GOMEMLIMIT") == ""
}
