package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Fuzz targets. `go test` runs their seeds (testdata/fuzz/<name>/ and the
// f.Add calls); a long run of one is
//
//	go test -run '^$' -fuzz '^FuzzDecodeOps$' -fuzztime 10m .
//
// A panic, a hang or a broken property below is a bug.

func seedOps() [][]byte {
	var seeds [][]byte
	for _, o := range []op{
		{kind: opPut, reqID: 1, key: "a", value: "1"},
		{kind: opDelete, reqID: 2, key: "k"},
		{kind: opDeletePrefix, reqID: 3, key: "dir/"},
		{kind: opTxn, reqID: 4, txn: &txn{
			compares: []compare{{key: "lock", target: cmpExists, op: cmpEqual}, {key: "v", target: cmpValue, op: cmpNotEqual, value: "x"}},
			success:  []op{{kind: opPut, key: "lock", value: "me"}, {kind: opGet, key: "v"}},
			failure:  []op{{kind: opDelete, key: "y"}},
		}},
	} {
		seeds = append(seeds, appendOp(nil, &o))
	}
	return append(seeds, append(seeds[0], seeds[3]...))
}

// FuzzDecodeOps: the decoder of committed entries, which every member runs
// on whatever the WAL and the leader hand it. It must reject what it cannot
// decode, and what it accepts must encode back to the same ops.
func FuzzDecodeOps(f *testing.F) {
	for _, s := range seedOps() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var ops []op
		if err := decodeOps(data, func(o *op) { ops = append(ops, *o) }); err != nil {
			if len(ops) != 0 {
				t.Fatalf("decodeOps failed (%v) after handing out %d ops", err, len(ops))
			}
			return
		}
		var again []byte
		for i := range ops {
			again = appendOp(again, &ops[i])
		}
		var back []op
		if err := decodeOps(again, func(o *op) { back = append(back, *o) }); err != nil {
			t.Fatalf("re-encoded ops do not decode: %v", err)
		}
		for i := range ops {
			ops[i] = withoutItem(t, ops[i])
		}
		for i := range back {
			back[i] = withoutItem(t, back[i])
		}
		if !reflect.DeepEqual(ops, back) {
			t.Fatalf("round trip changed the ops:\n%+v\n%+v", ops, back)
		}
	})
}

func seedSnapshots() [][]byte {
	keys := newKeyTree()
	keys.Put(testItem("a", "1", 3, 5, 2))
	keys.Put(testItem("b/\x00", "", 4, 4, 1))
	full := encodeSnapshot(&snapshotState{index: 9, members: map[uint64]string{1: "http://127.0.0.1:12379", 2: "http://127.0.0.1:22379"},
		removed: map[uint64]bool{3: true}, keys: keys})
	empty := encodeSnapshot(&snapshotState{index: 1, members: map[uint64]string{1: "http://a:1"}, removed: map[uint64]bool{}, keys: newKeyTree()})
	v1 := append([]byte("RKV1"), full[4:]...) // not a valid v1 body, but a start
	return [][]byte{full, empty, v1}
}

// FuzzDecodeSnapshot: the snapshot decoder, fed from snapshot files and
// from the leader. What it accepts must be a state that encodes and decodes
// back to itself.
func FuzzDecodeSnapshot(f *testing.F) {
	for _, s := range seedSnapshots() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := decodeSnapshot(data)
		if err != nil {
			return
		}
		enc := encodeSnapshot(st)
		if n := snapshotSize(st); n != int64(len(enc)) {
			t.Fatalf("snapshotSize says %d bytes, the encoding has %d", n, len(enc))
		}
		back, err := decodeSnapshot(enc)
		if err != nil {
			t.Fatalf("re-encoded snapshot does not decode: %v", err)
		}
		if back.index != st.index || !reflect.DeepEqual(back.members, st.members) || !reflect.DeepEqual(back.removed, st.removed) ||
			!reflect.DeepEqual(treeItems(back.keys), treeItems(st.keys)) {
			t.Fatal("round trip changed the snapshot")
		}
	})
}

// itemView is an item's contents, to compare.
type itemView struct {
	key, value           string
	create, mod, version uint64
}

func viewOf(it *item) itemView {
	if it == nil {
		return itemView{}
	}
	return itemView{it.key(), it.value(), it.create, it.mod, it.version}
}

func treeItems(t keyTree) []itemView {
	var out []itemView
	t.Ascend(func(it *item) bool { out = append(out, viewOf(it)); return true })
	return out
}

// FuzzMemberRequest: what POST /<id> and DELETE /<id> accept as a member id
// and a peer URL, before anything is proposed.
func FuzzMemberRequest(f *testing.F) {
	for _, s := range [][2]string{
		{"4", "http://127.0.0.1:42379"}, {"0", "https://[::1]:1"}, {"18446744073709551616", "http://h:65536"},
		{"-1", "http://user@h:1"}, {"1e3", "http://h:1/path"}, {" 7", "ftp://h:1"}, {"7", "http://:1"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, idText, peerURL string) {
		w := httptest.NewRecorder()
		id, ok := parseMemberID(w, idText, "POST /<id>")
		if ok != (w.Code == http.StatusOK) {
			t.Fatalf("parseMemberID(%q): ok %v but answered %d", idText, ok, w.Code)
		}
		if n, err := strconv.ParseUint(idText, 10, 64); ok && (err != nil || n != id || id == 0) {
			t.Fatalf("parseMemberID(%q) = %d", idText, id)
		}
		if !ok && w.Code != http.StatusBadRequest {
			t.Fatalf("parseMemberID(%q) answered %d, want 400", idText, w.Code)
		}
		if err := validatePeerURL(peerURL); err != nil {
			if !strings.Contains(err.Error(), strconv.Quote(peerURL)) {
				t.Fatalf("error for %q does not name it: %v", peerURL, err)
			}
			return
		}
		u, err := url.Parse(peerURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Path != "" || u.User != nil {
			t.Fatalf("accepted %q: %+v, %v", peerURL, u, err)
		}
		host, port, err := net.SplitHostPort(u.Host)
		p, perr := strconv.Atoi(port)
		if err != nil || host == "" || perr != nil || p < 1 || p > 65535 {
			t.Fatalf("accepted %q with host %q port %q", peerURL, host, port)
		}
	})
}

// FuzzHTTPRequest sends arbitrary paths, queries, conditions and bodies to
// a one-member cluster's handler (membership routes aside: adding a member
// that never starts would stop the fuzzed cluster). Every request must be
// answered, quickly, with a status the API documents: never a 500, never a
// hang; errors under /v1/ are JSON with a code and a message.
func FuzzHTTPRequest(f *testing.F) {
	for _, s := range []struct {
		method       uint8
		target, cond string
		accept       string
		body         string
	}{
		{0, "/my-key", "", "", ""},
		{1, "/my-key", "", "", "hello"},
		{0, "/v1/kv/a?consistency=serializable", "", "application/json", ""},
		{1, "/v1/kv/a", "\"3\"", "", "v"},
		{1, "/v1/kv/a", "*", "", "v"},
		{2, "/v1/kv/a/?all=true", "", "", ""},
		{0, "/v1/kv/?prefix=a&after=a&limit=2&values=true", "", "", ""},
		{0, "/v1/kv/a?wait=true&index=1&timeout=10ms", "", "", ""},
		{0, "/v1/kv/?prefix=&wait=true", "", "text/event-stream", ""},
		{3, "/v1/txn", "", "", `{"compare":[{"key":"a","target":"version","op":">","num":0}],"success":[{"op":"put","key":"b","value":"c"}],"failure":[{"op":"get","key":"a"}]}`},
		{3, "/v1/txn", "", "", `{"success":[{"op":"delete_prefix","key":""}]}`},
		{4, "/v1/status", "", "", ""},
		{0, "/v1/nope", "", "", ""},
		{0, "/%zz", "", "", ""},
	} {
		f.Add(s.method, s.target, s.cond, s.accept, []byte(s.body))
	}
	c := newTestCluster(f, 1, func(cfg *config) {
		cfg.limits.watchWait = time.Second
		cfg.requestTimeout = time.Second
	})
	c.leader()
	h := c.nodes[0].api.Handler
	methods := []string{"GET", "PUT", "DELETE", "POST", "HEAD", "PATCH"}
	f.Fuzz(func(t *testing.T, m uint8, target, cond, accept string, body []byte) {
		method := methods[int(m)%len(methods)]
		if !strings.HasPrefix(target, "/") {
			target = "/" + target
		}
		if !strings.HasPrefix(target, versionedPrefix) && (method == "POST" || method == "DELETE") {
			return // membership changes: FuzzMemberRequest
		}
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return // the HTTP server answers 400 before any handler runs
		}
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		r, err := http.NewRequestWithContext(ctx, method, "http://member"+u.RequestURI(), strings.NewReader(string(body)))
		if err != nil || strings.ContainsAny(target, " \t\r\n") {
			return // not a request line the HTTP server would parse
		}
		r.RequestURI = u.RequestURI()
		if cond != "" {
			r.Header.Set("If-Match", cond)
			r.Header.Set("If-None-Match", cond)
		}
		if accept != "" {
			r.Header.Set("Accept", accept)
		}
		w := httptest.NewRecorder()
		done := make(chan struct{})
		go func() {
			defer close(done)
			h.ServeHTTP(w, r)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s %s: no answer within 5s", method, target)
		}
		if w.Code < 200 || w.Code > 599 || w.Code == http.StatusInternalServerError {
			t.Fatalf("%s %s: status %d: %s", method, target, w.Code, w.Body)
		}
		if w.Code >= 400 && strings.HasPrefix(u.Path, versionedPrefix) {
			var e struct{ Error, Message string }
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" || e.Message == "" {
				t.Fatalf("%s %s: status %d with a body that is not a JSON error: %q", method, target, w.Code, w.Body)
			}
		}
	})
}
