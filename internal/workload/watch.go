package workload

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"raftexample/client"
)

// Watcher follows every change under the workload's key prefix with /v1
// long polls, or a Server-Sent Events stream. It starts at index 0 and moves from member to member whenever
// one fails (killed, cut off, or no longer keeping the events it needs),
// carrying its cursor along. What it saw is checked against the history by
// CheckWatch.
type Watcher struct {
	h         *History
	endpoints func() []string
	http      *http.Client
	stream    bool // SSE, resuming with Last-Event-ID, instead of long polls
	cancel    context.CancelFunc
	done      chan struct{}

	mu        sync.Mutex // guards everything below
	events    []client.Event
	cursor    uint64
	switches  int               // moves to another member
	compacted int               // answers "compacted" (a member restarted from a snapshot)
	problems  []string          // what the watcher itself found wrong
	waitFor   string            // a value to stop at, once seen
	seen      chan struct{}     // closed when waitFor was seen
	byValue   map[string]int    // put events per value
	valueAt   map[string]uint64 // the index of each put event, by value
}

// Watch starts a watcher on the members that endpoints returns, with SSE
// if stream is set; stop it with Finish.
func (h *History) Watch(endpoints func() []string, stream bool) *Watcher {
	ctx, cancel := context.WithCancel(context.Background())
	w := &Watcher{
		h: h, endpoints: endpoints, cancel: cancel, done: make(chan struct{}),
		http:    &http.Client{Timeout: 10 * time.Second},
		stream:  stream,
		byValue: map[string]int{}, valueAt: map[string]uint64{},
	}
	go w.run(ctx)
	return w
}

func (w *Watcher) run(ctx context.Context) {
	defer close(w.done)
	defer w.http.CloseIdleConnections()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	ep := ""
	for ctx.Err() == nil {
		if ep == "" {
			eps := w.endpoints()
			if len(eps) == 0 {
				sleep(ctx, 50*time.Millisecond)
				continue
			}
			ep = eps[rng.IntN(len(eps))]
		}
		w.mu.Lock()
		cursor := w.cursor
		w.mu.Unlock()
		var err error
		if w.stream {
			err = client.New(ep, w.http).StreamPrefix(ctx, w.h.cfg.KeyPrefix, cursor, func(index uint64, evs []client.Event) error {
				w.mu.Lock()
				cur := w.cursor
				w.mu.Unlock()
				w.accept(ep, cur, evs, index)
				return nil
			})
		} else {
			var evs []client.Event
			var next uint64
			evs, next, err = client.New(ep, w.http).WatchPrefix(ctx, w.h.cfg.KeyPrefix, cursor, 2*time.Second)
			if err == nil {
				w.accept(ep, cursor, evs, next)
			}
		}
		if err != nil {
			// A member restarted from a snapshot keeps no events before it
			// ("compacted"); another member may: move on, as a client would.
			var e *client.Error
			w.mu.Lock()
			if errors.As(err, &e) && e.Code == "compacted" {
				w.compacted++
			}
			w.switches++
			w.mu.Unlock()
			ep = ""
			sleep(ctx, 50*time.Millisecond)
		}
	}
}

// accept takes one answer: every event must be after the cursor and in
// index order, and the next cursor may not go back.
func (w *Watcher) accept(ep string, cursor uint64, evs []client.Event, next uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	last := cursor
	for _, e := range evs {
		if e.Index <= cursor || e.Index < last {
			if len(w.problems) < 20 {
				w.problems = append(w.problems, fmt.Sprintf("%s sent an event at index %d after cursor %d / previous %d (out of order or again)", ep, e.Index, cursor, last))
			}
			continue
		}
		last = e.Index
		w.events = append(w.events, e)
		if e.Type == "put" && e.Value != nil {
			w.byValue[*e.Value]++
			w.valueAt[*e.Value] = e.Index
			if w.waitFor != "" && *e.Value == w.waitFor && w.seen != nil {
				close(w.seen)
				w.seen = nil
			}
		}
	}
	if next < last && len(w.problems) < 20 {
		w.problems = append(w.problems, fmt.Sprintf("%s answered index %d below its last event %d", ep, next, last))
	}
	w.cursor = max(next, last)
}

// Finish writes a marker under the prefix through a member, waits until the
// watcher has seen it (so it has seen everything before it) and stops the
// watcher.
func (w *Watcher) Finish(ctx context.Context) error {
	defer func() {
		w.cancel()
		<-w.done
	}()
	hc := &http.Client{Timeout: 3 * time.Second}
	defer hc.CloseIdleConnections()
	// Each attempt writes a value of its own: an attempt that failed
	// without an answer may still have been applied, and writing its value
	// again would make the watch rightly report that value twice. Only the
	// acknowledged attempt's marker says everything before it was seen.
	var seen chan struct{}
	for attempt := 0; ; attempt++ {
		marker := fmt.Sprintf("watch-end-%d-%d", time.Now().UnixNano(), attempt)
		seen = make(chan struct{})
		w.mu.Lock()
		w.waitFor, w.seen = marker, seen
		w.mu.Unlock()
		eps := w.endpoints()
		if len(eps) > 0 {
			if _, err := client.New(eps[0], hc).Put(ctx, w.h.cfg.KeyPrefix+"watch-end", marker); err == nil {
				break
			}
		}
		if sleep(ctx, 100*time.Millisecond); ctx.Err() != nil {
			return fmt.Errorf("watch: could not write the end marker: %w", ctx.Err())
		}
	}
	select {
	case <-seen:
		return nil
	case <-ctx.Done():
		w.mu.Lock()
		defer w.mu.Unlock()
		return fmt.Errorf("watch: the end marker was not seen (cursor %d, %d events, %d member switches)", w.cursor, len(w.events), w.switches)
	}
}

// CheckWatch compares what the watcher saw with the history: every
// acknowledged write under the prefix seen exactly once (puts and swaps by
// their unique values; acknowledged deletes of a key that existed at least
// as many times as they happened), no event for a write that certainly did
// not take effect, and both writes of a two-key txn at one index or
// neither. Call it after Finish.
func (h *History) CheckWatch(w *Watcher) (summary string, problems []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	problems = append(problems, w.problems...)
	deleteEvents := map[string]int{}
	for _, e := range w.events {
		if e.Type == "delete" {
			deleteEvents[e.Key]++
		}
	}
	for v, n := range w.byValue {
		if n > 1 {
			problems = append(problems, fmt.Sprintf("watch: the write of %q was reported %d times", v, n))
		}
		if h.neverWritten[v] {
			problems = append(problems, fmt.Sprintf("watch: reported a write of %q that was refused or did not swap", v))
		}
	}
	for _, p := range h.pairs {
		ia, okA := w.valueAt[p[0]]
		ib, okB := w.valueAt[p[1]]
		if okA != okB || ia != ib {
			problems = append(problems, fmt.Sprintf("watch: a two-key txn was not atomic: %s at index %d (seen %v), %s at index %d (seen %v)",
				p[0], ia, okA, p[1], ib, okB))
		}
	}
	ackedDeletes, maybeDeletes := map[string]int{}, map[string]int{}
	missing := 0
	for _, op := range h.ops {
		in, out := op.Input.(Input), op.Output.(Output)
		if in.Kind == Delete && out.Unknown {
			maybeDeletes[in.Key]++
		}
		if out.Unknown || in.Final {
			continue
		}
		switch {
		case in.Kind == Put || (in.Kind == CAS && out.Swapped):
			if w.byValue[in.Value] == 0 {
				missing++
				if missing <= 5 {
					problems = append(problems, fmt.Sprintf("watch: acknowledged write %s=%s never reported", in.Key, in.Value))
				}
			}
		case in.Kind == Delete && out.Found:
			ackedDeletes[in.Key]++
		}
	}
	if missing > 5 {
		problems = append(problems, fmt.Sprintf("watch: %d acknowledged writes never reported in all", missing))
	}
	for k, n := range deleteEvents {
		if n < ackedDeletes[k] || n > ackedDeletes[k]+maybeDeletes[k] {
			problems = append(problems, fmt.Sprintf("watch: %d deletes of %s reported; %d acknowledged of a key that existed, %d ambiguous",
				n, k, ackedDeletes[k], maybeDeletes[k]))
		}
	}
	for k, n := range ackedDeletes {
		if deleteEvents[k] == 0 {
			problems = append(problems, fmt.Sprintf("watch: %d acknowledged deletes of %s, none reported", n, k))
		}
	}
	summary = fmt.Sprintf("watch: %d events up to index %d, %d moves between members (%d for compacted history)",
		len(w.events), w.cursor, w.switches, w.compacted)
	return summary, problems
}
