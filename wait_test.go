package main

import (
	"errors"
	"testing"
)

func TestWaitRegistry(t *testing.T) {
	var w waitRegistry
	if w.waiting(1) {
		t.Fatal("waiting for an id nobody registered")
	}
	a, b := w.register(1), w.register(2)
	if !w.waiting(1) || !w.waiting(2) {
		t.Fatal("not waiting for registered ids")
	}
	w.trigger(1, result{index: 5})
	if w.waiting(1) {
		t.Fatal("still waiting for an id that was answered")
	}
	if r := <-a; r.index != 5 || r.err != nil {
		t.Fatalf("got %+v", r)
	}
	w.trigger(1, result{index: 6}) // second trigger of a finished id is a no-op
	w.cancel(2)
	w.trigger(2, result{index: 7})
	select {
	case r := <-b:
		t.Fatalf("cancelled wait got %+v", r)
	default:
	}
	c, d := w.register(3), w.register(4)
	w.markAccepted(3)
	w.fail(errLeaderChanged, true)
	if r := <-c; !errors.Is(r.err, errLeaderChanged) {
		t.Fatalf("accepted wait on leader change: %+v", r)
	}
	select {
	case r := <-d:
		t.Fatalf("a wait raft never took was failed on leader change: %+v", r)
	default:
	}
	w.fail(errStopping, false)
	if r := <-d; !errors.Is(r.err, errStopping) {
		t.Fatalf("fail all: %+v", r)
	}
}
