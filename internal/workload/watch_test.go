package workload

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"raftexample/client"
)

// fakeMember keeps the put events of a /v1 member in memory and serves the
// two routes a Watcher uses: PUT /v1/kv/<key> and the long poll
// GET /v1/kv/?prefix=&wait=true&index=. Its first write of an end marker is
// applied and then answered 503 "leader_changed", as a member answers a
// write whose outcome it cannot know (a leader change, a stalled disk).
// It answers a write only once a watcher has taken its event (a poll from
// that index on has come in), so what the watcher reports does not depend
// on how its polls and the writes interleave.
type fakeMember struct {
	mu         sync.Mutex // guards everything below
	events     []client.Event
	lostMarker bool   // the first marker write was applied and its answer lost
	polledFrom uint64 // the highest index a watch poll has asked to continue from
}

// waitTaken waits until a watcher has taken the event at index, for at most
// a few seconds (then the test fails on what the watcher missed).
func (f *fakeMember) waitTaken(index uint64) {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		f.mu.Lock()
		taken := f.polledFrom >= index
		f.mu.Unlock()
		if taken {
			return
		}
	}
}

func (f *fakeMember) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/v1/kv/"):
		body, _ := io.ReadAll(r.Body)
		value := string(body)
		f.mu.Lock()
		index := uint64(len(f.events) + 1)
		f.events = append(f.events, client.Event{Type: "put", Index: index,
			KV: client.KV{Key: strings.TrimPrefix(r.URL.Path, "/v1/kv/"), Value: &value, ModIndex: index}})
		lose := strings.HasPrefix(value, "watch-end") && !f.lostMarker
		if lose {
			f.lostMarker = true
		}
		f.mu.Unlock()
		f.waitTaken(index)
		if lose {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"error":"leader_changed","message":"the outcome is unknown"}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(client.KV{Key: strings.TrimPrefix(r.URL.Path, "/v1/kv/"), ModIndex: index})
	case r.Method == http.MethodGet && r.URL.Path == "/v1/kv/":
		from, _ := strconv.ParseUint(r.URL.Query().Get("index"), 10, 64)
		f.mu.Lock()
		f.polledFrom = max(f.polledFrom, from)
		f.mu.Unlock()
		deadline := time.Now().Add(200 * time.Millisecond)
		for {
			f.mu.Lock()
			var evs []client.Event
			for _, e := range f.events {
				if e.Index > from {
					evs = append(evs, e)
				}
			}
			next := uint64(len(f.events))
			f.mu.Unlock()
			if len(evs) > 0 || time.Now().After(deadline) {
				w.Header().Set("Content-Type", "application/json")
				json.NewEncoder(w).Encode(map[string]any{"index": max(next, from), "events": evs})
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	default:
		http.Error(w, "not served by the fake", http.StatusNotFound)
	}
}

// A watch's end marker whose first write was applied but not acknowledged
// is written again: the watch then rightly reports two writes, and the check
// must not read that as one write reported twice.
func TestWatchFinishAfterAnUnacknowledgedMarker(t *testing.T) {
	f := &fakeMember{}
	srv := httptest.NewServer(f)
	defer srv.Close()
	h := NewHistory(Config{Endpoints: func() []string { return []string{srv.URL} }})
	defer h.Close()
	w := h.Watch(func() []string { return []string{srv.URL} }, false)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	writes, lost := len(f.events), f.lostMarker
	f.mu.Unlock()
	if !lost || writes != 2 {
		t.Fatalf("the fake member took %d marker writes (first answer lost: %v), want 2 with the first lost", writes, lost)
	}
	if summary, problems := h.CheckWatch(w); len(problems) > 0 {
		t.Fatalf("watch check: %s: %v", summary, problems)
	}
}
