package main

import "sync"

// waitRegistry connects a request waiting for its entry to the apply of that
// entry, by request id. Safe for concurrent use.
type waitRegistry struct {
	mu sync.Mutex // guards m
	m  map[uint64]*waiter
}

type waiter struct {
	ch       chan result // buffered: trigger never blocks
	accepted bool        // raft took the proposal
}

func (w *waitRegistry) register(id uint64) <-chan result {
	wt := &waiter{ch: make(chan result, 1)}
	w.mu.Lock()
	if w.m == nil {
		w.m = make(map[uint64]*waiter)
	}
	w.m[id] = wt
	w.mu.Unlock()
	return wt.ch
}

// waiting reports whether a request is waiting for id.
func (w *waitRegistry) waiting(id uint64) bool {
	w.mu.Lock()
	_, ok := w.m[id]
	w.mu.Unlock()
	return ok
}

func (w *waitRegistry) trigger(id uint64, r result) {
	w.mu.Lock()
	wt, ok := w.m[id]
	delete(w.m, id)
	w.mu.Unlock()
	if ok {
		wt.ch <- r
	}
}

func (w *waitRegistry) markAccepted(id uint64) {
	w.mu.Lock()
	if wt, ok := w.m[id]; ok {
		wt.accepted = true
	}
	w.mu.Unlock()
}

func (w *waitRegistry) cancel(id uint64) {
	w.mu.Lock()
	delete(w.m, id)
	w.mu.Unlock()
}

// fail ends the waits that match (all of them if onlyAccepted is false).
func (w *waitRegistry) fail(err error, onlyAccepted bool) {
	w.mu.Lock()
	var failed []*waiter
	for id, wt := range w.m {
		if wt.accepted || !onlyAccepted {
			failed = append(failed, wt)
			delete(w.m, id)
		}
	}
	w.mu.Unlock()
	for _, wt := range failed {
		wt.ch <- result{err: err}
	}
}
