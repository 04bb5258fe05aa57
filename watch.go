package main

import (
	"strings"
	"sync"
)

// event is one change to one key, as a watcher sees it.
type event struct {
	index   uint64 // raft index of the entry that made the change
	deleted bool
	// it is the key after a put, or the key as it was before a delete (its
	// indexes and version then are those of its last put).
	it *item
}

// watchHub keeps the recent events in raft-index order (the window) and
// wakes the watchers waiting for more. Watchers pull from the window at
// their own pace with a cursor, so apply never waits for a watcher: a
// watcher that falls behind the window's start learns it and must list
// again. Safe for concurrent use; appended to only by the apply goroutine.
type watchHub struct {
	mu sync.Mutex // guards everything below
	// ring holds the window, whole indexes only: n events, the oldest at
	// head, in order from there (wrapping). It grows by doubling up to
	// limit and is then reused in place. (A slice appended to at the end
	// and cut at the front moved to a new array every few thousand
	// events: an eighth of a replay's apply, most of it faulting in the
	// fresh pages.)
	ring    []event
	head, n int
	// start: every event with an index above it is in the window; a watch
	// from an index below it cannot be served.
	start uint64
	last  uint64 // the applied index the window is current to
	limit int    // events kept (--watch-history)
	// wake is closed and replaced whenever last advances, if since has
	// handed it out (taken): a new channel per applied entry was most of
	// what publish allocated, and mostly nobody watches.
	wake  chan struct{}
	taken bool
}

func newWatchHub(limit int) *watchHub {
	return &watchHub{limit: limit, wake: make(chan struct{})}
}

// at is the window's i-th event, oldest first. h.mu is held.
func (h *watchHub) at(i int) *event { return &h.ring[(h.head+i)%len(h.ring)] }

// publish adds the events of one applied index (there may be none) and
// moves the window on to it, dropping the oldest whole indexes beyond the
// limit. An index with more events than the limit empties the window.
func (h *watchHub) publish(index uint64, evs []event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if index <= h.last {
		return
	}
	if len(evs) > h.limit {
		h.dropOldest(h.n)
		h.start = index
	} else {
		if over := h.n + len(evs) - h.limit; over > 0 {
			h.dropOldest(over)
		}
		if need := h.n + len(evs); need > len(h.ring) {
			h.grow(min(max(need, 2*len(h.ring), 64), h.limit))
		}
		for _, e := range evs {
			*h.at(h.n) = e
			h.n++
		}
	}
	h.last = index
	h.wakeAll()
}

// dropOldest drops at least k of the oldest events, and the rest of the
// last index it reaches: a watcher's cursor is an index. h.mu is held.
func (h *watchHub) dropOldest(k int) {
	for i := 0; h.n > 0 && (i < k || h.at(0).index == h.start); i++ {
		h.start = h.at(0).index
		*h.at(0) = event{} // let the item go
		h.head = (h.head + 1) % len(h.ring)
		h.n--
	}
}

// grow moves the window to a ring of size c. h.mu is held.
func (h *watchHub) grow(c int) {
	ring := make([]event, c)
	for i := range h.n {
		ring[i] = *h.at(i)
	}
	h.ring, h.head = ring, 0
}

// wakeAll wakes whoever waits on wake. h.mu is held.
func (h *watchHub) wakeAll() {
	if h.taken {
		close(h.wake)
		h.wake, h.taken = make(chan struct{}), false
	}
}

// reset empties the window at a restored snapshot's index: nothing before
// it can be replayed.
func (h *watchHub) reset(index uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ring, h.head, h.n, h.start, h.last = nil, 0, 0, index, index
	h.wakeAll()
}

// since returns up to most events after index that match, whole indexes
// only, the index the answer is complete to (the last applied index, or the
// last index included when most cut it short), and a channel closed when
// more may be there. ok is false when index is older than the window: the
// second value is then the oldest index that can be watched from.
func (h *watchHub) since(index uint64, match func(key string) bool, most int) (evs []event, upTo uint64, wake <-chan struct{}, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if index < h.start {
		return nil, h.start, nil, false
	}
	upTo = max(index, h.last)
	for i := range h.n {
		e := h.at(i)
		if e.index <= index {
			continue
		}
		if len(evs) >= most && e.index != evs[len(evs)-1].index {
			upTo = h.at(i - 1).index
			break
		}
		if match(e.it.key()) {
			evs = append(evs, *e)
		}
	}
	h.taken = true
	return evs, upTo, h.wake, true
}

// current returns the applied index the window is current to.
func (h *watchHub) current() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

// keyMatcher matches one key, or every key under a prefix.
func keyMatcher(key string, prefix bool) func(string) bool {
	if prefix {
		return func(k string) bool { return strings.HasPrefix(k, key) }
	}
	return func(k string) bool { return k == key }
}
