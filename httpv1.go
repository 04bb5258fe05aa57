package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// The versioned key-value API:
//
//	GET    /v1/kv/<key>              read a key (raw value, or JSON with Accept: application/json)
//	PUT    /v1/kv/<key>              write a key; If-Match: <mod_index>|*, If-None-Match: *
//	DELETE /v1/kv/<key>              delete a key; the same conditions
//	GET    /v1/kv/?prefix=&after=&limit=&values=   list keys in order
//	DELETE /v1/kv/?prefix=           delete every key under a prefix (?all=true for every key)
//	POST   /v1/txn                   compares, then the success or failure ops, atomically
//
// The key space is the one the root routes use. Conditions are compares in
// a txn, so they are checked by the state machine at apply time, never here.
const kvPrefix = versionedPrefix + "kv/"

// limits bound what one request may ask for; each has a flag.
type limits struct {
	keyBytes   int           // --max-key-bytes
	valueBytes int64         // --max-value-bytes
	txnOps     int           // --max-txn-ops: compares plus ops
	listLimit  int           // --max-list: keys in one listing page (and events in one watch answer)
	watchers   int           // --max-watchers: watches this member serves at once
	watchWait  time.Duration // --max-watch-wait: the longest ?timeout of a long poll
}

// kvJSON is one key as /v1 shows it. The value is in value when it is
// valid UTF-8, else base64-encoded in value_base64; listings without
// ?values=true carry neither.
type kvJSON struct {
	Key         string  `json:"key"`
	Value       *string `json:"value,omitempty"`
	ValueBase64 *string `json:"value_base64,omitempty"`
	CreateIndex uint64  `json:"create_index"`
	ModIndex    uint64  `json:"mod_index"`
	Version     uint64  `json:"version"`
}

func toJSON(it *item, withValue bool) *kvJSON {
	j := &kvJSON{Key: it.key(), CreateIndex: it.create, ModIndex: it.mod, Version: it.version}
	if withValue {
		v := it.value()
		if utf8.ValidString(v) {
			j.Value = &v
		} else {
			b := base64.StdEncoding.EncodeToString([]byte(v))
			j.ValueBase64 = &b
		}
	}
	return j
}

func (h *httpAPI) serveKV(w http.ResponseWriter, r *http.Request, key string) {
	if !h.methods(w, r, http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete) {
		return
	}
	if key == "" {
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			h.list(w, r)
		case http.MethodDelete:
			h.deletePrefix(w, r)
		default:
			h.reject(w, r, http.StatusBadRequest, "missing_key", "missing key: use PUT /v1/kv/<key> with the value as the body")
		}
		return
	}
	if !h.checkKey(w, r, key, r.Method+" /v1/kv/<key>") {
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		h.getV1(w, r, key)
	case http.MethodPut:
		h.putV1(w, r, key)
	case http.MethodDelete:
		h.deleteV1(w, r, key)
	}
}

func wantsJSON(r *http.Request) bool { return accepts(r, "application/json") }

// accepts says whether the Accept header lists the media type mt (lower
// case). Every request asks, so a header of one bare type (what clients
// send) is compared without parsing.
func accepts(r *http.Request, mt string) bool {
	a := r.Header.Get("Accept")
	if !strings.ContainsAny(a, ",;") {
		return strings.EqualFold(strings.TrimSpace(a), mt)
	}
	for _, part := range strings.Split(a, ",") {
		if t, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && t == mt {
			return true
		}
	}
	return false
}

func setItemHeaders(w http.ResponseWriter, index uint64, it *item) {
	w.Header().Set("X-Raft-Index", strconv.FormatUint(index, 10))
	if it != nil {
		w.Header().Set("X-Create-Index", strconv.FormatUint(it.create, 10))
		w.Header().Set("X-Mod-Index", strconv.FormatUint(it.mod, 10))
		w.Header().Set("X-Version", strconv.FormatUint(it.version, 10))
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // keys and messages stay readable: no \u003c
	enc.Encode(v)
}

func (h *httpAPI) getV1(w http.ResponseWriter, r *http.Request, key string) {
	q, ok := h.query(w, r, "consistency", "wait", "index", "timeout")
	if !ok {
		return
	}
	if h.watchRequested(w, r, q, key, false) {
		return
	}
	it, index, ok := h.readKey(w, r, q, key)
	if !ok {
		return
	}
	setItemHeaders(w, index, it)
	if it == nil {
		h.reject(w, r, http.StatusNotFound, "key_not_found", "key "+strconv.Quote(key)+" not found")
		return
	}
	if wantsJSON(r) {
		writeJSON(w, http.StatusOK, toJSON(it, true))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(it.value())))
	io.WriteString(w, it.value())
}

// condition turns If-Match and If-None-Match into a compare, or nil.
func (h *httpAPI) condition(w http.ResponseWriter, r *http.Request, key string) (c *compare, ok bool) {
	match, noneMatch := r.Header.Get("If-Match"), r.Header.Get("If-None-Match")
	switch {
	case match != "" && noneMatch != "":
		h.reject(w, r, http.StatusBadRequest, "bad_condition", "use If-Match or If-None-Match, not both")
		return nil, false
	case match == "*":
		return &compare{key: key, target: cmpExists, op: cmpEqual, num: 1}, true
	case match != "":
		n, err := strconv.ParseUint(strings.Trim(match, `"`), 10, 64)
		if err != nil || n == 0 {
			h.reject(w, r, http.StatusBadRequest, "bad_condition", "If-Match must be a mod_index (a decimal number > 0) or *, not "+strconv.Quote(match))
			return nil, false
		}
		return &compare{key: key, target: cmpModIndex, op: cmpEqual, num: n}, true
	case noneMatch == "*":
		return &compare{key: key, target: cmpExists, op: cmpEqual, num: 0}, true
	case noneMatch != "":
		h.reject(w, r, http.StatusBadRequest, "bad_condition", "If-None-Match supports only * (create if absent), not "+strconv.Quote(noneMatch))
		return nil, false
	}
	return nil, true
}

// applyConditional applies o, guarded by c if set. It returns the op's
// result, or answers 412 (with the key's current X-Mod-Index, 0 if absent)
// when the condition failed, or the error.
func (h *httpAPI) applyConditional(w http.ResponseWriter, r *http.Request, o *op, c *compare) (opResult, uint64, bool) {
	h.hintLeader(w)
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	if c == nil {
		res, err := h.store.Apply(ctx, o)
		if err != nil {
			h.fail(w, r, err)
			return opResult{}, 0, false
		}
		return res.ops[0], res.index, true
	}
	res, err := h.store.Apply(ctx, &op{kind: opTxn, txn: &txn{
		compares: []compare{*c},
		success:  []op{*o},
		failure:  []op{{kind: opGet, key: o.key}},
	}})
	if err != nil {
		h.fail(w, r, err)
		return opResult{}, 0, false
	}
	if !res.succeeded {
		cur := res.ops[0].prev
		setItemHeaders(w, res.index, cur)
		msg := fmt.Sprintf("key %q is absent", o.key)
		if cur != nil {
			msg = fmt.Sprintf("key %q exists with mod_index %d", o.key, cur.mod)
			if c.target == cmpModIndex {
				msg = fmt.Sprintf("key %q has mod_index %d, not %d", o.key, cur.mod, c.num)
			}
		} else {
			w.Header().Set("X-Mod-Index", "0")
		}
		h.reject(w, r, http.StatusPreconditionFailed, "precondition_failed", msg)
		return opResult{}, 0, false
	}
	return res.ops[0], res.index, true
}

func (h *httpAPI) putV1(w http.ResponseWriter, r *http.Request, key string) {
	if _, ok := h.query(w, r); !ok {
		return
	}
	c, ok := h.condition(w, r, key)
	if !ok {
		return
	}
	body, ok := h.readBodyMax(w, r, h.limits.valueBytes, "value", "--max-value-bytes")
	if !ok {
		return
	}
	res, index, ok := h.applyConditional(w, r, &op{kind: opPut, key: key, value: string(body)}, c)
	if !ok {
		return
	}
	setItemHeaders(w, index, res.cur)
	writeJSON(w, http.StatusOK, struct {
		*kvJSON
		Index uint64 `json:"index"`
	}{toJSON(res.cur, false), index})
}

type deleteReply struct {
	Deleted int    `json:"deleted"`
	Index   uint64 `json:"index"`
}

func answerDeleted(w http.ResponseWriter, deleted int, index uint64) {
	w.Header().Set("X-Raft-Index", strconv.FormatUint(index, 10))
	writeJSON(w, http.StatusOK, deleteReply{deleted, index})
}

func (h *httpAPI) deleteV1(w http.ResponseWriter, r *http.Request, key string) {
	if _, ok := h.query(w, r); !ok {
		return
	}
	c, ok := h.condition(w, r, key)
	if !ok {
		return
	}
	res, index, ok := h.applyConditional(w, r, &op{kind: opDelete, key: key}, c)
	if !ok {
		return
	}
	answerDeleted(w, res.deleted, index)
}

func (h *httpAPI) deletePrefix(w http.ResponseWriter, r *http.Request) {
	q, ok := h.query(w, r, "prefix", "all")
	if !ok {
		return
	}
	prefix := q.Get("prefix")
	if prefix == "" && q.Get("all") != "true" {
		h.reject(w, r, http.StatusBadRequest, "missing_prefix", "DELETE /v1/kv/ needs ?prefix=<p>; to delete every key add ?all=true")
		return
	}
	if prefix != "" && q.Has("all") {
		h.reject(w, r, http.StatusBadRequest, "bad_query", "use ?prefix=<p> or ?all=true, not both")
		return
	}
	if err := h.checkPrefixErr(prefix); err != nil {
		h.reject(w, r, http.StatusBadRequest, "key_too_large", err.Error())
		return
	}
	res, index, ok := h.applyConditional(w, r, &op{kind: opDeletePrefix, key: prefix}, nil)
	if !ok {
		return
	}
	answerDeleted(w, res.deleted, index)
}

type listReply struct {
	Index uint64    `json:"index"`
	KVs   []*kvJSON `json:"kvs"`
	More  bool      `json:"more"`
	// After is the key to pass as ?after= for the next page, when More.
	After string `json:"after,omitempty"`
}

func (h *httpAPI) list(w http.ResponseWriter, r *http.Request) {
	q, ok := h.query(w, r, "prefix", "after", "limit", "values", "consistency", "wait", "index", "timeout")
	if !ok {
		return
	}
	if h.watchRequested(w, r, q, q.Get("prefix"), true) {
		return
	}
	linearizable, ok := h.consistency(w, r, q)
	if !ok {
		return
	}
	limit := h.limits.listLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			h.reject(w, r, http.StatusBadRequest, "bad_query", "limit must be a number >= 1, not "+strconv.Quote(s))
			return
		}
		if n > h.limits.listLimit {
			h.reject(w, r, http.StatusBadRequest, "limit_too_large", fmt.Sprintf("limit %d is over the most keys one page may hold, %d (--max-list)", n, h.limits.listLimit))
			return
		}
		limit = n
	}
	var values bool
	switch v := q.Get("values"); v {
	case "", "false":
	case "true":
		values = true
	default:
		h.reject(w, r, http.StatusBadRequest, "bad_query", "values must be true or false, not "+strconv.Quote(v))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	items, more, index, err := h.store.List(ctx, q.Get("prefix"), q.Get("after"), limit, linearizable)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	reply := listReply{Index: index, KVs: []*kvJSON{}, More: more}
	for _, it := range items {
		reply.KVs = append(reply.KVs, toJSON(it, values))
	}
	if more {
		reply.After = items[len(items)-1].key()
	}
	w.Header().Set("X-Raft-Index", strconv.FormatUint(index, 10))
	writeJSON(w, http.StatusOK, reply)
}

// The JSON of POST /v1/txn.
type txnRequest struct {
	Compare []compareJSON `json:"compare"`
	Success []txnOpJSON   `json:"success"`
	Failure []txnOpJSON   `json:"failure"`
}

type compareJSON struct {
	Key         string          `json:"key"`
	Target      string          `json:"target"` // mod_index, create_index, version, value, exists
	Op          string          `json:"op"`     // =, !=, <, >
	Value       json.RawMessage `json:"value"`  // a number, a string (value), or true/false (exists)
	ValueBase64 *string         `json:"value_base64,omitempty"`
}

type txnOpJSON struct {
	Op          string  `json:"op"` // put, delete, delete_prefix, get
	Key         string  `json:"key,omitempty"`
	Prefix      string  `json:"prefix,omitempty"`
	Value       *string `json:"value,omitempty"`
	ValueBase64 *string `json:"value_base64,omitempty"`
}

type txnReply struct {
	Succeeded bool            `json:"succeeded"`
	Index     uint64          `json:"index"`
	Results   []txnResultJSON `json:"results"`
}

type txnResultJSON struct {
	Op      string  `json:"op"`
	Key     string  `json:"key,omitempty"`
	Prefix  string  `json:"prefix,omitempty"`
	Found   *bool   `json:"found,omitempty"`   // get
	KV      *kvJSON `json:"kv,omitempty"`      // get (when found), put (the key after it)
	Deleted *int    `json:"deleted,omitempty"` // delete, delete_prefix
}

var cmpTargets = map[string]cmpTarget{"mod_index": cmpModIndex, "create_index": cmpCreateIndex, "version": cmpVersion, "value": cmpValue, "exists": cmpExists}
var cmpOps = map[string]cmpOp{"=": cmpEqual, "==": cmpEqual, "!=": cmpNotEqual, "<": cmpLess, ">": cmpGreater}

// errBadTxn marks a txn request that cannot be run as written.
var errBadTxn = errors.New("bad txn")

func (h *httpAPI) txn(w http.ResponseWriter, r *http.Request) {
	body, ok := h.bodyNoQuery(w, r)
	if !ok {
		return
	}
	t, err := h.parseTxn(body)
	if err != nil {
		h.reject(w, r, http.StatusBadRequest, "bad_txn", strings.TrimPrefix(err.Error(), errBadTxn.Error()+": "))
		return
	}
	h.hintLeader(w)
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	res, err := h.store.Apply(ctx, &op{kind: opTxn, txn: t})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	reply := txnReply{Succeeded: res.succeeded, Index: res.index, Results: []txnResultJSON{}}
	for _, or := range res.ops {
		j := txnResultJSON{Op: txnOpNames[or.kind], Key: or.key}
		switch or.kind {
		case opGet:
			found := or.prev != nil
			j.Found = &found
			if found {
				j.KV = toJSON(or.prev, true)
			}
		case opPut:
			j.KV = toJSON(or.cur, false)
		case opDelete:
			j.Deleted = &or.deleted
		case opDeletePrefix:
			j.Key, j.Prefix = "", or.key
			j.Deleted = &or.deleted
		}
		reply.Results = append(reply.Results, j)
	}
	w.Header().Set("X-Raft-Index", strconv.FormatUint(res.index, 10))
	writeJSON(w, http.StatusOK, reply)
}

var txnOpNames = map[opKind]string{opPut: "put", opDelete: "delete", opDeletePrefix: "delete_prefix", opGet: "get"}

func badTxn(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errBadTxn}, args...)...)
}

func (h *httpAPI) parseTxn(body []byte) (*txn, error) {
	var req txnRequest
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, badTxn("body is not a txn in JSON ({\"compare\": [...], \"success\": [...], \"failure\": [...]}): %v", err)
	}
	if dec.More() {
		return nil, badTxn("trailing data after the txn object")
	}
	if n := len(req.Compare) + len(req.Success) + len(req.Failure); n > h.limits.txnOps {
		return nil, badTxn("%d compares and ops are more than %d (--max-txn-ops)", n, h.limits.txnOps)
	}
	t := &txn{}
	for i, cj := range req.Compare {
		c, err := h.parseCompare(cj)
		if err != nil {
			return nil, badTxn("compare %d: %v", i, err)
		}
		t.compares = append(t.compares, c)
	}
	for _, branch := range []struct {
		name string
		in   []txnOpJSON
		out  *[]op
	}{{"success", req.Success, &t.success}, {"failure", req.Failure, &t.failure}} {
		for i, oj := range branch.in {
			o, err := h.parseTxnOp(oj)
			if err != nil {
				return nil, badTxn("%s op %d: %v", branch.name, i, err)
			}
			*branch.out = append(*branch.out, o)
		}
	}
	return t, nil
}

func (h *httpAPI) checkKeyErr(key string) error {
	switch {
	case key == "":
		return errors.New("missing key")
	case len(key) > h.limits.keyBytes:
		return fmt.Errorf("key of %d bytes is larger than %d bytes (--max-key-bytes)", len(key), h.limits.keyBytes)
	}
	return nil
}

func (h *httpAPI) checkPrefixErr(prefix string) error {
	if len(prefix) > h.limits.keyBytes {
		return fmt.Errorf("prefix larger than %d bytes (--max-key-bytes)", h.limits.keyBytes)
	}
	return nil
}

// jsonValue reads a value given as value (a string) or value_base64.
func (h *httpAPI) jsonValue(value, b64 *string) (string, error) {
	var v string
	switch {
	case value != nil && b64 != nil:
		return "", errors.New("give value or value_base64, not both")
	case value != nil:
		v = *value
	case b64 != nil:
		b, err := base64.StdEncoding.DecodeString(*b64)
		if err != nil {
			return "", fmt.Errorf("value_base64: %v", err)
		}
		v = string(b)
	default:
		return "", errors.New("missing value (or value_base64)")
	}
	if int64(len(v)) > h.limits.valueBytes {
		return "", fmt.Errorf("value of %d bytes is larger than %d bytes (--max-value-bytes)", len(v), h.limits.valueBytes)
	}
	return v, nil
}

func (h *httpAPI) parseCompare(cj compareJSON) (compare, error) {
	c := compare{key: cj.Key}
	if err := h.checkKeyErr(cj.Key); err != nil {
		return c, err
	}
	var ok bool
	if c.target, ok = cmpTargets[cj.Target]; !ok {
		return c, fmt.Errorf("target must be mod_index, create_index, version, value or exists, not %q", cj.Target)
	}
	if c.op, ok = cmpOps[cj.Op]; !ok {
		return c, fmt.Errorf("op must be =, !=, < or >, not %q", cj.Op)
	}
	switch c.target {
	case cmpValue:
		var s *string
		if cj.Value != nil {
			s = new(string)
			if err := json.Unmarshal(cj.Value, s); err != nil {
				return c, errors.New("the value of a value compare must be a string (or use value_base64)")
			}
		}
		v, err := h.jsonValue(s, cj.ValueBase64)
		if err != nil {
			return c, err
		}
		c.value = v
	case cmpExists:
		var b bool
		if cj.ValueBase64 != nil || json.Unmarshal(cj.Value, &b) != nil {
			return c, errors.New("the value of an exists compare must be true or false")
		}
		if c.op != cmpEqual && c.op != cmpNotEqual {
			return c, errors.New("exists compares with = or != only")
		}
		if b {
			c.num = 1
		}
	default:
		if cj.ValueBase64 != nil || json.Unmarshal(cj.Value, &c.num) != nil {
			return c, fmt.Errorf("the value of a %s compare must be a whole number >= 0", cj.Target)
		}
	}
	return c, nil
}

func (h *httpAPI) parseTxnOp(oj txnOpJSON) (op, error) {
	switch oj.Op {
	case "put":
		if err := h.checkKeyErr(oj.Key); err != nil {
			return op{}, err
		}
		v, err := h.jsonValue(oj.Value, oj.ValueBase64)
		if err != nil {
			return op{}, err
		}
		return op{kind: opPut, key: oj.Key, value: v}, nil
	case "delete", "get":
		if err := h.checkKeyErr(oj.Key); err != nil {
			return op{}, err
		}
		if oj.Value != nil || oj.ValueBase64 != nil || oj.Prefix != "" {
			return op{}, fmt.Errorf("%s takes only a key", oj.Op)
		}
		kind := opDelete
		if oj.Op == "get" {
			kind = opGet
		}
		return op{kind: kind, key: oj.Key}, nil
	case "delete_prefix":
		if oj.Key != "" || oj.Value != nil || oj.ValueBase64 != nil {
			return op{}, errors.New("delete_prefix takes only a prefix")
		}
		if oj.Prefix == "" {
			return op{}, errors.New("delete_prefix needs a non-empty prefix")
		}
		if err := h.checkPrefixErr(oj.Prefix); err != nil {
			return op{}, err
		}
		return op{kind: opDeletePrefix, key: oj.Prefix}, nil
	}
	return op{}, fmt.Errorf("op must be put, delete, delete_prefix or get, not %q", oj.Op)
}

// eventJSON is one change as a watcher sees it. A put carries the key's
// value and metadata after it; a delete only the key, with mod_index the
// index of the delete.
type eventJSON struct {
	Type  string `json:"type"` // put or delete
	Index uint64 `json:"index"`
	kvJSON
}

func toEventJSON(e event) eventJSON {
	if e.deleted {
		return eventJSON{Type: "delete", Index: e.index, kvJSON: kvJSON{Key: e.it.key(), ModIndex: e.index}}
	}
	return eventJSON{Type: "put", Index: e.index, kvJSON: *toJSON(e.it, true)}
}

type watchReply struct {
	// Index is what to pass as ?index= to wait for the next change.
	Index  uint64      `json:"index"`
	Events []eventJSON `json:"events"`
}

// watchRequested serves a read that asks to wait (?wait) as a watch, and
// refuses watch parameters without it. It reports whether it answered.
func (h *httpAPI) watchRequested(w http.ResponseWriter, r *http.Request, q url.Values, key string, prefix bool) bool {
	switch {
	case q.Has("wait"):
		h.watch(w, r, q, key, prefix)
	case q.Has("index") || q.Has("timeout"):
		h.reject(w, r, http.StatusBadRequest, "bad_query", "index and timeout go with wait=true")
	default:
		return false
	}
	return true
}

// watchParams reads ?wait=true, ?index and ?timeout (and, for streams,
// Last-Event-ID).
func (h *httpAPI) watchParams(w http.ResponseWriter, r *http.Request, q url.Values) (index uint64, timeout time.Duration, ok bool) {
	if v := q.Get("wait"); v != "true" {
		h.reject(w, r, http.StatusBadRequest, "bad_query", "wait must be true, not "+strconv.Quote(v))
		return 0, 0, false
	}
	s := q.Get("index")
	if id := r.Header.Get("Last-Event-ID"); id != "" && wantsStream(r) {
		s = id // a reconnecting EventSource resumes after the last event it saw
	}
	if s == "" {
		index = h.store.watch.current()
	} else {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			h.reject(w, r, http.StatusBadRequest, "bad_query", "index must be a raft index (a decimal number), not "+strconv.Quote(s))
			return 0, 0, false
		}
		index = n
	}
	timeout = min(60*time.Second, h.limits.watchWait)
	if s := q.Get("timeout"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			h.reject(w, r, http.StatusBadRequest, "bad_query", "timeout must be a positive duration such as 30s, not "+strconv.Quote(s))
			return 0, 0, false
		}
		if d > h.limits.watchWait {
			h.reject(w, r, http.StatusBadRequest, "timeout_too_long", fmt.Sprintf("timeout %v is longer than %v (--max-watch-wait)", d, h.limits.watchWait))
			return 0, 0, false
		}
		timeout = d
	}
	return index, timeout, true
}

func wantsStream(r *http.Request) bool { return accepts(r, "text/event-stream") }

// watch answers a watch on key (or the keys under it, if prefix): a long
// poll that returns once there are events after the index, or a
// Server-Sent Events stream with Accept: text/event-stream.
func (h *httpAPI) watch(w http.ResponseWriter, r *http.Request, q url.Values, key string, prefix bool) {
	index, timeout, ok := h.watchParams(w, r, q)
	if !ok {
		return
	}
	if n := h.watchers.Add(1); n > int64(h.limits.watchers) {
		h.watchers.Add(-1)
		h.reject(w, r, http.StatusTooManyRequests, "too_many_watchers", fmt.Sprintf("this member already serves %d watches (--max-watchers); retry later or on another member", h.limits.watchers))
		return
	}
	defer h.watchers.Add(-1)
	metricWatchers.Inc()
	defer metricWatchers.Dec()
	match := keyMatcher(key, prefix)
	if wantsStream(r) {
		h.stream(w, r, index, match)
		return
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		evs, upTo, wake, ok := h.store.watch.since(index, match, h.limits.listLimit)
		if !ok {
			h.compacted(w, r, index, upTo)
			return
		}
		if len(evs) > 0 {
			h.watchAnswer(w, upTo, evs)
			return
		}
		index = upTo // nothing of ours up to here
		select {
		case <-wake:
		case <-deadline.C:
			h.watchAnswer(w, upTo, nil)
			return
		case <-h.stopping:
			h.watchAnswer(w, upTo, nil)
			return
		case <-r.Context().Done():
			return
		}
	}
}

func (h *httpAPI) watchAnswer(w http.ResponseWriter, upTo uint64, evs []event) {
	reply := watchReply{Index: upTo, Events: []eventJSON{}}
	for _, e := range evs {
		reply.Events = append(reply.Events, toEventJSON(e))
	}
	w.Header().Set("X-Raft-Index", strconv.FormatUint(upTo, 10))
	writeJSON(w, http.StatusOK, reply)
	metricWatchEvents.Add(float64(len(evs)))
}

func (h *httpAPI) compacted(w http.ResponseWriter, r *http.Request, index, oldest uint64) {
	w.Header().Set("X-Oldest-Index", strconv.FormatUint(oldest, 10))
	writeJSON(w, http.StatusGone, struct {
		Error       string `json:"error"`
		Message     string `json:"message"`
		OldestIndex uint64 `json:"oldest_index"`
	}{"compacted", fmt.Sprintf("events after index %d are no longer kept here (the oldest index to watch from is %d, see --watch-history); list the keys again and watch from the listing's index", index, oldest), oldest})
}

// stream sends the events after index as Server-Sent Events, one SSE event
// per raft index (data: a JSON array of its events; id: the index), until
// the client leaves or the member stops. A watcher whose cursor falls out of
// the window gets an "event: compacted" and the stream ends.
func (h *httpAPI) stream(w http.ResponseWriter, r *http.Request, index uint64, match func(string) bool) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Raft-Index", strconv.FormatUint(index, 10))
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, ": watching from index %d\n\n", index)
	rc.Flush()
	ping := time.NewTicker(15 * time.Second)
	defer ping.Stop()
	for {
		evs, upTo, wake, ok := h.store.watch.since(index, match, h.limits.listLimit)
		if !ok {
			fmt.Fprintf(w, "event: compacted\ndata: {\"error\":\"compacted\",\"oldest_index\":%d,\"message\":\"events after index %d are no longer kept here; list again and watch from the listing's index\"}\n\n", upTo, index)
			rc.Flush()
			return
		}
		for len(evs) > 0 {
			n := 1
			for n < len(evs) && evs[n].index == evs[0].index {
				n++
			}
			batch := make([]eventJSON, n)
			for i := range batch {
				batch[i] = toEventJSON(evs[i])
			}
			data, _ := json.Marshal(batch)
			if _, err := fmt.Fprintf(w, "id: %d\ndata: %s\n\n", evs[0].index, data); err != nil {
				return
			}
			metricWatchEvents.Add(float64(n))
			evs = evs[n:]
		}
		if err := rc.Flush(); err != nil {
			return
		}
		index = upTo
		select {
		case <-wake:
		case <-ping.C:
			if _, err := io.WriteString(w, ": ping\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		case <-h.stopping:
			return
		case <-r.Context().Done():
			return
		}
	}
}
