package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestWatchHubWindow(t *testing.T) {
	h := newWatchHub(4)
	all := func(string) bool { return true }
	put := func(index uint64, keys ...string) {
		var evs []event
		for _, k := range keys {
			evs = append(evs, event{index: index, it: testItem(k, "", 0, index, 0)})
		}
		h.publish(index, evs)
	}
	put(1, "a")
	put(2, "b", "c") // two events at one index
	h.publish(3, nil)
	put(4, "d")
	evs, upTo, _, ok := h.since(0, all, 100)
	if !ok || len(evs) != 4 || upTo != 4 {
		t.Fatalf("since 0: %d events up to %d, ok %v", len(evs), upTo, ok)
	}
	// A page cut by most keeps whole indexes.
	evs, upTo, _, _ = h.since(0, all, 2)
	if len(evs) != 3 || upTo != 2 {
		t.Fatalf("since 0, most 2: %d events up to %d", len(evs), upTo)
	}
	put(5, "e", "f") // 6 events > 4: indexes 1 and 2 go, whole
	if _, oldest, _, ok := h.since(1, all, 100); ok || oldest != 2 {
		t.Fatalf("since 1 after trimming: ok %v, oldest %d", ok, oldest)
	}
	evs, upTo, _, ok = h.since(2, keyMatcher("e", false), 100)
	if !ok || len(evs) != 1 || evs[0].it.key() != "e" || upTo != 5 {
		t.Fatalf("since 2 for key e: %+v up to %d", evs, upTo)
	}
	_, _, wake, _ := h.since(5, all, 100)
	select {
	case <-wake:
		t.Fatal("woken with nothing new")
	default:
	}
	h.publish(6, nil)
	select {
	case <-wake:
	default:
		t.Fatal("not woken by a new index")
	}
	h.reset(100)
	if _, oldest, _, ok := h.since(99, all, 100); ok || oldest != 100 {
		t.Fatalf("after reset: ok %v oldest %d", ok, oldest)
	}
}

// TestWatchHubMatchesModel publishes random runs of events and checks the
// window against the rule it keeps: the newest whole indexes that fit in
// the limit (none if the newest index alone does not), every one of their
// events, in order, with the oldest watchable index just before them. The
// ring wraps and grows on the way; a reset comes now and then.
func TestWatchHubMatchesModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	for _, limit := range []int{1, 3, 7, 64, 100, 300} {
		h := newWatchHub(limit)
		var all []event // the model: every event since the last reset
		start, index := uint64(0), uint64(0)
		for step := range 3000 {
			if rng.IntN(500) == 0 {
				index += 10
				h.reset(index)
				all, start = nil, index
				continue
			}
			index++
			var evs []event
			n := rng.IntN(4)
			if rng.IntN(8) == 0 { // a large txn or delete-prefix now and then
				n = rng.IntN(limit + 3)
			}
			for k := range n {
				if rng.IntN(4) > 0 { // and some indexes have none
					evs = append(evs, event{index: index, it: testItem(fmt.Sprint(index, "/", k), "", 0, 0, 0)})
				}
			}
			h.publish(index, evs)
			all = append(all, evs...)
			for len(all) > limit {
				first := all[0].index
				for len(all) > 0 && all[0].index == first {
					all = all[1:]
				}
				start = first
			}
			got, upTo, _, ok := h.since(start, func(string) bool { return true }, 1<<30)
			if !ok || upTo != index || len(got) != len(all) {
				t.Fatalf("limit %d step %d: since(%d) = %d events up to %d ok %v; want %d up to %d", limit, step, start, len(got), upTo, ok, len(all), index)
			}
			for i := range got {
				if got[i] != all[i] {
					t.Fatalf("limit %d step %d: event %d is %+v, want %+v", limit, step, i, got[i], all[i])
				}
			}
			if start > 0 {
				if _, oldest, _, ok := h.since(start-1, func(string) bool { return true }, 1); ok || oldest != start {
					t.Fatalf("limit %d step %d: since(%d) ok %v oldest %d, want the window to start at %d", limit, step, start-1, ok, oldest, start)
				}
			}
		}
	}
}

func watchPoll(t *testing.T, url string) watchReply {
	t.Helper()
	r := do(t, "GET", url, "")
	if r.code != 200 {
		t.Fatalf("GET %s: %d %s", url, r.code, r.body)
	}
	wr := decodeJSON[watchReply](t, r)
	if got := hdrUint(t, r, "X-Raft-Index"); got != wr.Index {
		t.Fatalf("X-Raft-Index %d, body index %d", got, wr.Index)
	}
	return wr
}

func TestV1WatchLongPoll(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.leader()
	start := decodeJSON[kvJSON](t, do(t, "PUT", c.url(0, "/v1/kv/cfg/a"), "1")).ModIndex

	// A poll from an index before the write returns it at once.
	wr := watchPoll(t, c.url(1, "/v1/kv/cfg/a?wait=true&index="+strconv.FormatUint(start-1, 10)))
	if len(wr.Events) != 1 || wr.Events[0].Type != "put" || *wr.Events[0].Value != "1" || wr.Events[0].Index != start || wr.Index < start {
		t.Fatalf("poll from before the write: %+v", wr)
	}
	// A poll from now waits for the next change to the key, on any member.
	got := make(chan watchReply, 1)
	go func() {
		got <- watchPoll(t, c.url(2, "/v1/kv/cfg/a?wait=true&index="+strconv.FormatUint(wr.Index, 10)))
	}()
	time.Sleep(100 * time.Millisecond)
	do(t, "PUT", c.url(0, "/v1/kv/cfg/other"), "not watched")
	select {
	case wr := <-got:
		t.Fatalf("woken by another key: %+v", wr)
	case <-time.After(200 * time.Millisecond):
	}
	do(t, "DELETE", c.url(1, "/v1/kv/cfg/a"), "")
	select {
	case wr = <-got:
		if len(wr.Events) != 1 || wr.Events[0].Type != "delete" || wr.Events[0].Key != "cfg/a" || wr.Events[0].Value != nil {
			t.Fatalf("delete event: %+v", wr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the poll did not return after the delete")
	}
	// A timeout answers with no events and the index to go on from.
	before := time.Now()
	wr = watchPoll(t, c.url(0, "/v1/kv/cfg/a?wait=true&timeout=300ms&index="+strconv.FormatUint(wr.Index, 10)))
	if len(wr.Events) != 0 || time.Since(before) < 250*time.Millisecond || wr.Index == 0 {
		t.Fatalf("timeout: %+v after %v", wr, time.Since(before))
	}
	// A prefix watch sees every event of a txn, in order, in one answer.
	idx := wr.Index
	do(t, "POST", c.url(1, "/v1/txn"), `{"success":[{"op":"put","key":"cfg/x","value":"1"},{"op":"put","key":"cfg/y","value":"2"},{"op":"put","key":"zzz","value":"3"}]}`)
	wr = watchPoll(t, c.url(2, "/v1/kv/?prefix=cfg/&wait=true&index="+strconv.FormatUint(idx, 10)))
	if len(wr.Events) != 2 || wr.Events[0].Key != "cfg/x" || wr.Events[1].Key != "cfg/y" || wr.Events[0].Index != wr.Events[1].Index {
		t.Fatalf("prefix watch of a txn: %+v", wr)
	}
	// Deleting the prefix is one event per key removed.
	idx = wr.Index
	do(t, "DELETE", c.url(0, "/v1/kv/?prefix=cfg/"), "")
	wr = watchPoll(t, c.url(0, "/v1/kv/?prefix=cfg/&wait=true&index="+strconv.FormatUint(idx, 10)))
	if len(wr.Events) != 3 || wr.Events[0].Type != "delete" {
		t.Fatalf("prefix delete: %+v", wr)
	}
}

func TestV1WatchHistoryAndLimits(t *testing.T) {
	c := newTestCluster(t, 1, func(cfg *config) {
		cfg.watchHistory = 5
		cfg.snapshotCount = 10
		cfg.limits.watchers = 1
	})
	c.leader()
	for i := range 20 {
		do(t, "PUT", c.url(0, "/v1/kv/k"), strconv.Itoa(i))
	}
	r := do(t, "GET", c.url(0, "/v1/kv/k?wait=true&index=1"), "")
	var gone struct {
		Error       string `json:"error"`
		OldestIndex uint64 `json:"oldest_index"`
	}
	json.Unmarshal([]byte(r.body), &gone)
	if r.code != http.StatusGone || gone.Error != "compacted" || gone.OldestIndex < 10 || hdrUint(t, r, "X-Oldest-Index") != gone.OldestIndex {
		t.Fatalf("watch from an index out of the window: %d %s", r.code, r.body)
	}
	wr := watchPoll(t, c.url(0, "/v1/kv/k?wait=true&index="+strconv.FormatUint(gone.OldestIndex, 10)))
	if len(wr.Events) == 0 || wr.Events[len(wr.Events)-1].Value == nil || *wr.Events[len(wr.Events)-1].Value != "19" {
		t.Fatalf("watch from the oldest index: %+v", wr)
	}

	// One watcher at a time here: the second gets 429 naming the flag.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", c.url(0, "/v1/kv/k?wait=true&timeout=30s"), nil)
	held := make(chan struct{})
	go func() {
		defer close(held)
		if resp, err := httpClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	api := c.nodes[0].h
	eventually(t, 5*time.Second, func() error {
		if n := api.watchers.Load(); n != 1 {
			return fmt.Errorf("%d watchers", n)
		}
		return nil
	})
	if r := do(t, "GET", c.url(0, "/v1/kv/k?wait=true&timeout=1s"), ""); r.code != http.StatusTooManyRequests || !strings.Contains(r.body, "--max-watchers") {
		t.Fatalf("a watch over --max-watchers: %d %s", r.code, r.body)
	}
	cancel()
	<-held

	// Restarted from a snapshot, the member serves watches from its index on.
	c.stop(0)
	c.start(0)
	c.mustGet(0, "k", "19")
	r = do(t, "GET", c.url(0, "/v1/kv/k?wait=true&index=1"), "")
	json.Unmarshal([]byte(r.body), &gone)
	if r.code != http.StatusGone || gone.OldestIndex < 10 {
		t.Fatalf("after restart from a snapshot: %d %s", r.code, r.body)
	}
}

// sseReader reads a Server-Sent Events stream: one (id, data) per event.
type sseEvent struct {
	id, event, data string
}

func readSSE(t *testing.T, ctx context.Context, url string, lastID string) (<-chan sseEvent, *http.Response) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	req.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %v", resp.StatusCode, resp.Header)
	}
	ch := make(chan sseEvent, 100)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var e sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if e.data != "" {
					ch <- e
				}
				e = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				e.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				e.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				e.data = line[6:]
			}
		}
	}()
	return ch, resp
}

// A stream delivers every change under the prefix once, in index order,
// and a client that reconnects to another member with Last-Event-ID goes
// on exactly where it stopped.
func TestV1WatchStream(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.leader()
	base := decodeJSON[kvJSON](t, do(t, "PUT", c.url(0, "/v1/kv/other"), "x")).ModIndex
	ctx, cancel := context.WithCancel(context.Background())
	ch, _ := readSSE(t, ctx, c.url(1, "/v1/kv/?prefix=svc/&wait=true&index="+strconv.FormatUint(base, 10)), "")
	for i := range 5 {
		do(t, "PUT", c.url(i%3, "/v1/kv/svc/"+strconv.Itoa(i)), strconv.Itoa(i))
	}
	var lastID string
	var prev uint64
	seen := 0
	for seen < 3 {
		select {
		case e := <-ch:
			var evs []eventJSON
			if err := json.Unmarshal([]byte(e.data), &evs); err != nil || len(evs) != 1 {
				t.Fatalf("event %+v: %v", e, err)
			}
			id, _ := strconv.ParseUint(e.id, 10, 64)
			if id <= prev || evs[0].Index != id || evs[0].Key != "svc/"+strconv.Itoa(seen) {
				t.Fatalf("event %d out of order: %+v", seen, e)
			}
			prev, lastID = id, e.id
			seen++
		case <-time.After(5 * time.Second):
			t.Fatal("stream stalled")
		}
	}
	cancel() // the client leaves after 3 events

	// Reconnect elsewhere from the last id seen: the other 2, then live ones.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	ch2, _ := readSSE(t, ctx2, c.url(2, "/v1/kv/?prefix=svc/&wait=true&index=1"), lastID)
	do(t, "DELETE", c.url(0, "/v1/kv/svc/0"), "")
	var keys []string
	for len(keys) < 3 {
		select {
		case e := <-ch2:
			var evs []eventJSON
			json.Unmarshal([]byte(e.data), &evs)
			keys = append(keys, evs[0].Type+" "+evs[0].Key)
		case <-time.After(5 * time.Second):
			t.Fatalf("resumed stream stalled after %v", keys)
		}
	}
	if strings.Join(keys, ",") != "put svc/3,put svc/4,delete svc/0" {
		t.Fatalf("resumed stream: %v", keys)
	}

	// A stream does not hold up a graceful stop.
	done := make(chan struct{})
	go func() { c.stop(2); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("stop waited on an open stream")
	}
}
