package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"raftexample/client"
)

// doH is do with request headers.
func doH(t testing.TB, method, url, body string, headers map[string]string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, string(b), resp.Header}
}

func decodeJSON[T any](t testing.TB, r response) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(r.body), &v); err != nil {
		t.Fatalf("body %q (status %d) is not the JSON expected: %v", r.body, r.code, err)
	}
	return v
}

func hdrUint(t testing.TB, r response, name string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(r.header.Get(name), 10, 64)
	if err != nil {
		t.Fatalf("header %s = %q: %v", name, r.header.Get(name), err)
	}
	return n
}

// A key's life through /v1/kv on a 3-member cluster: metadata, conditions,
// one key space with the root routes, binary values, delete.
func TestV1KeyLifecycle(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.leader()
	u := func(i int, key string) string { return c.url(i, "/v1/kv/"+key) }

	r := do(t, "PUT", u(0, "cfg/db"), "v1")
	if r.code != 200 {
		t.Fatalf("PUT: %d %s", r.code, r.body)
	}
	created := decodeJSON[kvJSON](t, r)
	if created.Key != "cfg/db" || created.Version != 1 || created.CreateIndex != created.ModIndex || created.ModIndex != hdrUint(t, r, "X-Mod-Index") || created.Value != nil {
		t.Fatalf("PUT reply: %s", r.body)
	}

	// Read on another member: raw by default, JSON on request.
	r = do(t, "GET", u(1, "cfg/db"), "")
	if r.code != 200 || r.body != "v1" || hdrUint(t, r, "X-Create-Index") != created.CreateIndex || hdrUint(t, r, "X-Version") != 1 {
		t.Fatalf("GET raw: %d %q %v", r.code, r.body, r.header)
	}
	r = doH(t, "GET", u(2, "cfg/db"), "", map[string]string{"Accept": "text/html, application/json;q=0.9"})
	if got := decodeJSON[kvJSON](t, r); got.Value == nil || *got.Value != "v1" || got.ModIndex != created.ModIndex {
		t.Fatalf("GET JSON: %s", r.body)
	}

	// The root routes share the key space: a root PUT is a new version.
	c.mustPut(1, "cfg/db", "v2")
	r = do(t, "GET", u(0, "cfg/db"), "")
	if r.body != "v2" || hdrUint(t, r, "X-Version") != 2 || hdrUint(t, r, "X-Create-Index") != created.CreateIndex || hdrUint(t, r, "X-Mod-Index") <= created.ModIndex {
		t.Fatalf("after a root PUT: %q %v", r.body, r.header)
	}
	mod := hdrUint(t, r, "X-Mod-Index")
	c.mustGet(2, "cfg/db", "v2")

	// If-Match: only the current mod index wins; a loser learns the current one.
	r = doH(t, "PUT", u(1, "cfg/db"), "stale", map[string]string{"If-Match": strconv.FormatUint(created.ModIndex, 10)})
	if r.code != http.StatusPreconditionFailed || hdrUint(t, r, "X-Mod-Index") != mod || decodeJSON[map[string]string](t, r)["error"] != "precondition_failed" {
		t.Fatalf("stale If-Match: %d %s %v", r.code, r.body, r.header)
	}
	r = doH(t, "PUT", u(1, "cfg/db"), "v3", map[string]string{"If-Match": strconv.FormatUint(mod, 10)})
	if r.code != 200 || decodeJSON[kvJSON](t, r).Version != 3 {
		t.Fatalf("current If-Match: %d %s", r.code, r.body)
	}
	c.mustGet(0, "cfg/db", "v3")

	// If-None-Match: * creates only; If-Match: * updates only.
	if r := doH(t, "PUT", u(0, "cfg/db"), "x", map[string]string{"If-None-Match": "*"}); r.code != http.StatusPreconditionFailed {
		t.Fatalf("create-only on an existing key: %d %s", r.code, r.body)
	}
	if r := doH(t, "PUT", u(0, "new"), "x", map[string]string{"If-Match": "*"}); r.code != http.StatusPreconditionFailed || r.header.Get("X-Mod-Index") != "0" {
		t.Fatalf("update-only on an absent key: %d %s %v", r.code, r.body, r.header)
	}
	if r := doH(t, "PUT", u(0, "new"), "x", map[string]string{"If-None-Match": "*"}); r.code != 200 {
		t.Fatalf("create-only on an absent key: %d %s", r.code, r.body)
	}

	// Values that are not UTF-8 come back in value_base64.
	do(t, "PUT", u(2, "bin"), "\xff\x00")
	r = doH(t, "GET", u(0, "bin"), "", map[string]string{"Accept": "application/json"})
	if got := decodeJSON[kvJSON](t, r); got.Value != nil || got.ValueBase64 == nil || *got.ValueBase64 != "/wA=" {
		t.Fatalf("binary value as JSON: %s", r.body)
	}
	if r := do(t, "GET", u(1, "bin"), ""); r.body != "\xff\x00" {
		t.Fatalf("binary value raw: %q", r.body)
	}

	// Delete: conditional, then plain; then the key is gone everywhere.
	if r := doH(t, "DELETE", u(0, "cfg/db"), "", map[string]string{"If-Match": "1"}); r.code != http.StatusPreconditionFailed {
		t.Fatalf("DELETE with a stale If-Match: %d %s", r.code, r.body)
	}
	if r := do(t, "DELETE", u(1, "cfg/db"), ""); r.code != 200 || decodeJSON[deleteReply](t, r).Deleted != 1 {
		t.Fatalf("DELETE: %d %s", r.code, r.body)
	}
	if r := do(t, "DELETE", u(1, "cfg/db"), ""); r.code != 200 || decodeJSON[deleteReply](t, r).Deleted != 0 {
		t.Fatalf("DELETE of an absent key: %d %s", r.code, r.body)
	}
	for i := range 3 {
		r := do(t, "GET", u(i, "cfg/db"), "")
		if r.code != 404 || decodeJSON[map[string]string](t, r)["error"] != "key_not_found" {
			t.Fatalf("member %d after DELETE: %d %s", i+1, r.code, r.body)
		}
		if r := do(t, "GET", c.url(i, "/cfg/db"), ""); r.code != 404 || r.body != "key not found\n" {
			t.Fatalf("member %d root GET after DELETE: %d %q", i+1, r.code, r.body)
		}
	}
	// Recreated, it starts over at version 1.
	if r := do(t, "PUT", u(0, "cfg/db"), "again"); decodeJSON[kvJSON](t, r).Version != 1 {
		t.Fatalf("recreated: %s", r.body)
	}
}

func TestV1ListAndDeletePrefix(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.leader()
	var want []string
	for i := range 25 {
		k := fmt.Sprintf("svc/%02d", i)
		want = append(want, k)
		do(t, "PUT", c.url(i%3, "/v1/kv/"+k), "addr-"+strconv.Itoa(i))
	}
	do(t, "PUT", c.url(0, "/v1/kv/svc"), "not under svc/")
	do(t, "PUT", c.url(0, "/v1/kv/svd/x"), "after the prefix")

	// Page through svc/ in order, 10 at a time, from any member.
	var got []string
	after := ""
	for page := 0; page < 10; page++ {
		r := do(t, "GET", c.url(page%3, "/v1/kv/?prefix=svc/&limit=10&values=true&after="+after), "")
		lr := decodeJSON[listReply](t, r)
		for _, kv := range lr.KVs {
			got = append(got, kv.Key)
			if kv.Value == nil || !strings.HasPrefix(*kv.Value, "addr-") || kv.Version != 1 || kv.ModIndex == 0 {
				t.Fatalf("listed %+v", kv)
			}
		}
		if !lr.More {
			break
		}
		if lr.After != got[len(got)-1] {
			t.Fatalf("page %d: after = %q, last key %q", page, lr.After, got[len(got)-1])
		}
		after = lr.After
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("listing: %v, want %v", got, want)
	}
	r := do(t, "GET", c.url(1, "/v1/kv/?prefix=svc/&consistency=serializable"), "")
	if lr := decodeJSON[listReply](t, r); len(lr.KVs) > 25 || lr.More || (len(lr.KVs) > 0 && lr.KVs[0].Value != nil) {
		t.Fatalf("serializable listing without values: %s", r.body)
	}
	if lr := decodeJSON[listReply](t, do(t, "GET", c.url(2, "/v1/kv/?prefix=nothing/"), "")); len(lr.KVs) != 0 || lr.More {
		t.Fatalf("empty listing: %+v", lr)
	}

	// One entry deletes the prefix, and only it.
	r = do(t, "DELETE", c.url(2, "/v1/kv/?prefix=svc/"), "")
	if dr := decodeJSON[deleteReply](t, r); r.code != 200 || dr.Deleted != 25 {
		t.Fatalf("delete prefix: %d %s", r.code, r.body)
	}
	lr := decodeJSON[listReply](t, do(t, "GET", c.url(0, "/v1/kv/"), ""))
	if len(lr.KVs) != 2 || lr.KVs[0].Key != "svc" || lr.KVs[1].Key != "svd/x" {
		t.Fatalf("after deleting svc/: %+v", lr.KVs)
	}
	r = do(t, "DELETE", c.url(0, "/v1/kv/?all=true"), "")
	if dr := decodeJSON[deleteReply](t, r); dr.Deleted != 2 {
		t.Fatalf("delete all: %s", r.body)
	}
}

func TestV1Txn(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.leader()
	txn := func(i int, body string) txnReply {
		t.Helper()
		r := do(t, "POST", c.url(i, "/v1/txn"), body)
		if r.code != 200 {
			t.Fatalf("txn %s: %d %s", body, r.code, r.body)
		}
		return decodeJSON[txnReply](t, r)
	}
	// A lock: create if absent, else tell who holds it.
	acquire := func(i int, who string) txnReply {
		return txn(i, `{"compare":[{"key":"lock","target":"exists","op":"=","value":false}],
			"success":[{"op":"put","key":"lock","value":"`+who+`"}],
			"failure":[{"op":"get","key":"lock"}]}`)
	}
	first := acquire(0, "alice")
	if !first.Succeeded || len(first.Results) != 1 || first.Results[0].Op != "put" || first.Results[0].KV.Version != 1 || first.Index != first.Results[0].KV.ModIndex {
		t.Fatalf("first acquire: %+v", first)
	}
	second := acquire(1, "bob")
	if second.Succeeded || *second.Results[0].Found != true || *second.Results[0].KV.Value != "alice" || second.Results[0].KV.ModIndex != first.Index {
		t.Fatalf("second acquire: %+v", second)
	}

	// Every compare must hold; numbers, values and the ops of a branch.
	do(t, "PUT", c.url(2, "/v1/kv/a/1"), "x")
	do(t, "PUT", c.url(2, "/v1/kv/a/2"), "y")
	res := txn(2, `{"compare":[
			{"key":"lock","target":"value","op":"=","value":"alice"},
			{"key":"lock","target":"version","op":"<","value":2},
			{"key":"lock","target":"create_index","op":"=","value":`+strconv.FormatUint(first.Index, 10)+`},
			{"key":"nope","target":"mod_index","op":"=","value":0}],
		"success":[{"op":"delete","key":"lock"},{"op":"delete_prefix","prefix":"a/"},{"op":"get","key":"a/1"},{"op":"put","key":"b","value_base64":"/wA="}]}`)
	if !res.Succeeded || len(res.Results) != 4 || *res.Results[0].Deleted != 1 || res.Results[1].Prefix != "a/" || *res.Results[1].Deleted != 2 || *res.Results[2].Found {
		t.Fatalf("multi-op txn: %+v", res)
	}
	if r := do(t, "GET", c.url(0, "/b"), ""); r.body != "\xff\x00" {
		t.Fatalf("put of value_base64: %q", r.body)
	}
	// A failed compare with no failure ops changes nothing.
	res = txn(1, `{"compare":[{"key":"b","target":"value","op":"!=","value_base64":"/wA="}],"success":[{"op":"delete","key":"b"}]}`)
	if res.Succeeded || len(res.Results) != 0 {
		t.Fatalf("failed txn: %+v", res)
	}
	c.mustGet(2, "b", "\xff\x00")
	if res := txn(0, `{}`); !res.Succeeded || len(res.Results) != 0 {
		t.Fatalf("empty txn: %+v", res)
	}
}

// Every /v1 error is JSON with a stable code and a message, and changes
// nothing.
func TestV1Errors(t *testing.T) {
	c := newTestCluster(t, 1, func(cfg *config) {
		cfg.limits = limits{keyBytes: 16, valueBytes: 100, txnOps: 3, listLimit: 5, watchers: 10, watchWait: time.Second}
	})
	c.leader()
	do(t, "PUT", c.url(0, "/v1/kv/k"), "v")
	long := strings.Repeat("k", 17)
	cases := []struct {
		method, path, body string
		headers            map[string]string
		status             int
		code, says         string
	}{
		{"GET", "/v1/nope", "", nil, 404, "no_route", "no such route"},
		{"PATCH", "/v1/kv/k", "", nil, 405, "method_not_allowed", "use GET, HEAD, PUT, DELETE"},
		{"GET", "/v1/txn", "", nil, 405, "method_not_allowed", "use POST"},
		{"POST", "/v1/status", "", nil, 405, "method_not_allowed", "use GET, HEAD"},
		{"PUT", "/v1/kv/", "v", nil, 400, "missing_key", "missing key"},
		{"GET", "/v1/kv/" + long, "", nil, 400, "key_too_large", "--max-key-bytes"},
		{"PUT", "/v1/kv/k", strings.Repeat("v", 101), nil, 413, "too_large", "--max-value-bytes"},
		{"GET", "/v1/kv/k?consistency=eventual", "", nil, 400, "bad_query", "linearizable"},
		{"GET", "/v1/kv/k?after=a", "", nil, 400, "bad_query", "unknown query parameter"},
		{"GET", "/v1/kv/k?wait=yes", "", nil, 400, "bad_query", "wait must be true"},
		{"GET", "/v1/kv/k?index=3", "", nil, 400, "bad_query", "go with wait=true"},
		{"GET", "/v1/kv/?prefix=a&timeout=1s", "", nil, 400, "bad_query", "go with wait=true"},
		{"GET", "/v1/kv/k?wait=true&index=-1", "", nil, 400, "bad_query", "raft index"},
		{"GET", "/v1/kv/k?wait=true&timeout=0s", "", nil, 400, "bad_query", "positive duration"},
		{"GET", "/v1/kv/?wait=true&timeout=2s", "", nil, 400, "timeout_too_long", "--max-watch-wait"},
		{"PUT", "/v1/kv/k", "v", map[string]string{"If-Match": "abc"}, 400, "bad_condition", "mod_index"},
		{"PUT", "/v1/kv/k", "v", map[string]string{"If-Match": "0"}, 400, "bad_condition", "mod_index"},
		{"PUT", "/v1/kv/k", "v", map[string]string{"If-None-Match": "3"}, 400, "bad_condition", "only *"},
		{"DELETE", "/v1/kv/k", "", map[string]string{"If-Match": "3", "If-None-Match": "*"}, 400, "bad_condition", "not both"},
		{"GET", "/v1/kv/?limit=6", "", nil, 400, "limit_too_large", "--max-list"},
		{"GET", "/v1/kv/?limit=0", "", nil, 400, "bad_query", "limit"},
		{"GET", "/v1/kv/?values=yes", "", nil, 400, "bad_query", "values"},
		{"DELETE", "/v1/kv/", "", nil, 400, "missing_prefix", "?all=true"},
		{"DELETE", "/v1/kv/?prefix=a&all=true", "", nil, 400, "bad_query", "not both"},
		{"DELETE", "/v1/kv/?prefix=" + long, "", nil, 400, "key_too_large", "--max-key-bytes"},
		{"POST", "/v1/txn", "not json", nil, 400, "bad_txn", "not a txn"},
		{"POST", "/v1/txn", `{} {}`, nil, 400, "bad_txn", "trailing"},
		{"POST", "/v1/txn", `{"compares":[]}`, nil, 400, "bad_txn", "unknown field"},
		{"POST", "/v1/txn", `{"success":[{"op":"get","key":"a"},{"op":"get","key":"a"},{"op":"get","key":"a"},{"op":"get","key":"a"}]}`, nil, 400, "bad_txn", "--max-txn-ops"},
		{"POST", "/v1/txn", `{"compare":[{"key":"k","target":"size","op":"=","value":1}]}`, nil, 400, "bad_txn", "target must be"},
		{"POST", "/v1/txn", `{"compare":[{"key":"k","target":"version","op":"~","value":1}]}`, nil, 400, "bad_txn", "op must be"},
		{"POST", "/v1/txn", `{"compare":[{"key":"k","target":"version","op":"=","value":"1"}]}`, nil, 400, "bad_txn", "whole number"},
		{"POST", "/v1/txn", `{"compare":[{"key":"k","target":"version","op":"=","value":-1}]}`, nil, 400, "bad_txn", "whole number"},
		{"POST", "/v1/txn", `{"compare":[{"key":"k","target":"exists","op":"<","value":true}]}`, nil, 400, "bad_txn", "= or !="},
		{"POST", "/v1/txn", `{"compare":[{"key":"k","target":"exists","op":"=","value":1}]}`, nil, 400, "bad_txn", "true or false"},
		{"POST", "/v1/txn", `{"compare":[{"key":"k","target":"value","op":"=","value":1}]}`, nil, 400, "bad_txn", "must be a string"},
		{"POST", "/v1/txn", `{"compare":[{"key":"","target":"value","op":"=","value":"a"}]}`, nil, 400, "bad_txn", "missing key"},
		{"POST", "/v1/txn", `{"success":[{"op":"put","key":"a"}]}`, nil, 400, "bad_txn", "missing value"},
		{"POST", "/v1/txn", `{"success":[{"op":"put","key":"a","value":"x","value_base64":"eA=="}]}`, nil, 400, "bad_txn", "not both"},
		{"POST", "/v1/txn", `{"success":[{"op":"put","key":"a","value_base64":"!!"}]}`, nil, 400, "bad_txn", "value_base64"},
		{"POST", "/v1/txn", `{"success":[{"op":"put","key":"a","value":"` + strings.Repeat("v", 101) + `"}]}`, nil, 400, "bad_txn", "--max-value-bytes"},
		{"POST", "/v1/txn", `{"success":[{"op":"put","key":"` + long + `","value":"v"}]}`, nil, 400, "bad_txn", "--max-key-bytes"},
		{"POST", "/v1/txn", `{"failure":[{"op":"delete_prefix","prefix":""}]}`, nil, 400, "bad_txn", "non-empty prefix"},
		{"POST", "/v1/txn", `{"failure":[{"op":"delete","key":"a","value":"x"}]}`, nil, 400, "bad_txn", "only a key"},
		{"POST", "/v1/txn", `{"failure":[{"op":"txn"}]}`, nil, 400, "bad_txn", "op must be put, delete"},
		{"POST", "/v1/txn?x=1", `{}`, nil, 400, "bad_query", "unknown query parameter"},
	}
	for _, tc := range cases {
		r := doH(t, tc.method, c.url(0, tc.path), tc.body, tc.headers)
		var e struct{ Error, Message string }
		err := json.Unmarshal([]byte(r.body), &e)
		if r.code != tc.status || err != nil || e.Error != tc.code || !strings.Contains(e.Message, tc.says) || r.header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s %.40q: %d %s, want %d %s with %q", tc.method, tc.path, tc.body, r.code, r.body, tc.status, tc.code, tc.says)
		}
	}
	if lr := decodeJSON[listReply](t, do(t, "GET", c.url(0, "/v1/kv/"), "")); len(lr.KVs) != 1 || lr.KVs[0].Version != 1 {
		t.Fatalf("the errors changed the store: %+v", lr.KVs)
	}
	// The root routes keep their one-line text errors.
	if r := do(t, "PUT", c.url(0, "/"+long), "v"); r.code != 400 || !strings.HasSuffix(r.body, "(--max-key-bytes)\n") || strings.Contains(r.body, "{") {
		t.Fatalf("root error: %d %q", r.code, r.body)
	}
}

// Metadata is part of the snapshot: a member restarted from one lists the
// same keys with the same indexes and versions.
func TestV1MetadataSurvivesSnapshotRestart(t *testing.T) {
	c := newTestCluster(t, 1, func(cfg *config) { cfg.snapshotCount = 5 })
	c.leader()
	for i := range 20 {
		do(t, "PUT", c.url(0, "/v1/kv/k"+strconv.Itoa(i%7)), strconv.Itoa(i))
	}
	do(t, "DELETE", c.url(0, "/v1/kv/k3"), "")
	before := decodeJSON[listReply](t, do(t, "GET", c.url(0, "/v1/kv/?values=true"), ""))
	c.stop(0)
	c.start(0)
	after := decodeJSON[listReply](t, do(t, "GET", c.url(0, "/v1/kv/?values=true"), ""))
	if n := strings.Count(c.log.String(), "restored state from snapshot"); n != 1 {
		t.Fatalf("the restart loaded %d snapshots, want 1", n)
	}
	if !reflect.DeepEqual(before.KVs, after.KVs) || len(after.KVs) != 6 {
		t.Fatalf("after restart:\n%+v\nbefore:\n%+v", after.KVs, before.KVs)
	}
}

func TestAccepts(t *testing.T) {
	for _, c := range []struct {
		accept string
		want   bool
	}{
		{"", false},
		{"*/*", false},
		{"application/json", true},
		{" Application/JSON ", true},
		{"application/jsonx", false},
		{"text/html, application/json;q=0.9", true},
		{"application/json; charset=utf-8", true},
		{"text/html;q=0.9, text/plain", false},
		{"application/json;bad param", false},
	} {
		r := httptest.NewRequest("GET", "/v1/kv/k", nil)
		r.Header.Set("Accept", c.accept)
		if got := accepts(r, "application/json"); got != c.want {
			t.Errorf("Accept %q: accepts application/json = %v, want %v", c.accept, got, c.want)
		}
	}
}

// A follower names the leader's client URL on its answer to every write,
// whatever the answer, so that clients can send their next writes there;
// the leader names none, and reads carry none. Through the fast lane and
// through net/http alone.
func TestFollowersNameTheLeaderOnWrites(t *testing.T) {
	for _, netHTTP := range []bool{false, true} {
		t.Run(fmt.Sprintf("netHTTP=%v", netHTTP), func(t *testing.T) {
			c := newTestCluster(t, 3, func(cfg *config) { cfg.netHTTP = netHTTP })
			lead := c.leader()
			want := c.url(lead, "")
			eventually(t, 10*time.Second, func() error {
				for i := range c.nodes {
					if u := c.nodes[i].kv.members.clientURL(uint64(lead + 1)); u != want {
						return fmt.Errorf("member %d has the leader's client URL as %q", i+1, u)
					}
				}
				return nil
			})
			for i := range c.nodes {
				hint := ""
				if i != lead {
					hint = want
				}
				for _, req := range []struct{ method, path, body string }{
					{"PUT", "/v1/kv/a", "1"},
					{"PUT", "/a", "2"},
					{"POST", "/v1/txn", `{"success":[{"op":"put","key":"b","value":"x"}]}`},
					{"DELETE", "/v1/kv/b", ""},
					{"DELETE", "/v1/kv/?prefix=zz", ""},
				} {
					r := do(t, req.method, c.url(i, req.path), req.body)
					if r.code/100 != 2 || r.header.Get("X-Leader-URL") != hint {
						t.Errorf("member %d, %s %s: %d, X-Leader-URL %q; want 2xx and %q", i+1, req.method, req.path, r.code, r.header.Get("X-Leader-URL"), hint)
					}
				}
				req, _ := http.NewRequest("PUT", c.url(i, "/v1/kv/a"), strings.NewReader("3"))
				req.Header.Set("If-Match", "1")
				resp, err := httpClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusPreconditionFailed || resp.Header.Get("X-Leader-URL") != hint {
					t.Errorf("member %d, a failed If-Match: %d, X-Leader-URL %q; want 412 and %q", i+1, resp.StatusCode, resp.Header.Get("X-Leader-URL"), hint)
				}
				for _, path := range []string{"/v1/kv/a", "/a", "/v1/kv/a?consistency=serializable"} {
					if r := do(t, "GET", c.url(i, path), ""); r.code != 200 || r.header.Get("X-Leader-URL") != "" {
						t.Errorf("member %d, GET %s: %d, X-Leader-URL %q; want 200 and none", i+1, path, r.code, r.header.Get("X-Leader-URL"))
					}
				}
			}
		})
	}
}

// End to end: a Client of a follower writes once through it, learns the
// leader from the answer, and sends its next writes to the leader; a
// Pinned one keeps them on the follower. The hosts its requests went to
// are recorded by its http.Client's RoundTripper.
func TestClientWritesThroughTheLeader(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	f := (lead + 1) % 3
	eventually(t, 10*time.Second, func() error {
		if u := c.nodes[f].kv.members.clientURL(uint64(lead + 1)); u != c.url(lead, "") {
			return fmt.Errorf("the follower has the leader's client URL as %q", u)
		}
		return nil
	})
	rec := &hostRecorder{next: &http.Transport{}}
	hc := &http.Client{Transport: rec}
	defer rec.next.CloseIdleConnections()
	for _, pinned := range []bool{false, true} {
		cl := client.New(c.url(f, ""), hc)
		cl.Pinned = pinned
		rec.hosts = nil
		for i := range 4 {
			if _, err := cl.Put(context.Background(), fmt.Sprintf("k%d", i), "v"); err != nil {
				t.Fatal(err)
			}
			if _, err := cl.Get(context.Background(), fmt.Sprintf("k%d", i), false); err != nil {
				t.Fatal(err)
			}
		}
		fh, lh := c.nodes[f].addr(), c.nodes[lead].addr()
		want := []string{fh, fh, lh, fh, lh, fh, lh, fh} // put, get, ...
		if pinned {
			want = []string{fh, fh, fh, fh, fh, fh, fh, fh}
		}
		if !reflect.DeepEqual(rec.hosts, want) {
			t.Errorf("pinned %v: requests went to %v; want %v (follower %s, leader %s)", pinned, rec.hosts, want, fh, lh)
		}
	}
}

// hostRecorder records the host of each request it passes on. Not safe
// for concurrent use.
type hostRecorder struct {
	next  *http.Transport
	hosts []string
}

func (h *hostRecorder) RoundTrip(r *http.Request) (*http.Response, error) {
	h.hosts = append(h.hosts, r.URL.Host)
	return h.next.RoundTrip(r)
}
