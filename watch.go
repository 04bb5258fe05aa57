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
	mu     sync.Mutex // guards everything below
	events []event    // oldest first; whole indexes only
	// start: every event with an index above it is in the window; a watch
	// from an index below it cannot be served.
	start uint64
	last  uint64 // the applied index the window is current to
	limit int    // events kept (--watch-history)
	// wake is closed and replaced whenever last advances.
	wake chan struct{}
}

func newWatchHub(limit int) *watchHub {
	return &watchHub{limit: limit, wake: make(chan struct{})}
}

// publish adds the events of one applied index (there may be none) and
// moves the window on to it, dropping the oldest whole indexes beyond the
// limit.
func (h *watchHub) publish(index uint64, evs []event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if index <= h.last {
		return
	}
	h.events = append(h.events, evs...)
	if over := len(h.events) - h.limit; over > 0 {
		cut := over
		// Drop whole indexes: a watcher's cursor is an index.
		for cut < len(h.events) && h.events[cut].index == h.events[cut-1].index {
			cut++
		}
		h.start = h.events[cut-1].index
		// Reslice rather than copy: copying the whole window on every
		// applied entry cost a quarter of a loaded leader's CPU. append
		// moves the live events to a new array only when this one is
		// full, a copy per ~window/4 events; until then the array still
		// holds up to that many dropped events.
		h.events = h.events[cut:]
	}
	h.last = index
	close(h.wake)
	h.wake = make(chan struct{})
}

// reset empties the window at a restored snapshot's index: nothing before
// it can be replayed.
func (h *watchHub) reset(index uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events, h.start, h.last = nil, index, index
	close(h.wake)
	h.wake = make(chan struct{})
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
	for i, e := range h.events {
		if e.index <= index {
			continue
		}
		if len(evs) >= most && e.index != evs[len(evs)-1].index {
			upTo = h.events[i-1].index
			break
		}
		if match(e.it.key) {
			evs = append(evs, e)
		}
	}
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
