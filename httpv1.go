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
	"strconv"
	"strings"
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
	keyBytes   int   // --max-key-bytes
	valueBytes int64 // --max-value-bytes
	txnOps     int   // --max-txn-ops: compares plus ops
	listLimit  int   // --max-list: keys in one listing page
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
	j := &kvJSON{Key: it.key, CreateIndex: it.create, ModIndex: it.mod, Version: it.version}
	if withValue {
		v := it.value
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

func wantsJSON(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == "application/json" {
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
	q, ok := h.query(w, r, "consistency")
	if !ok {
		return
	}
	linearizable, ok := h.consistency(w, r, q)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	it, index, err := h.store.Get(ctx, key, linearizable)
	if err != nil {
		h.fail(w, r, err)
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
	w.Header().Set("Content-Length", strconv.Itoa(len(it.value)))
	io.WriteString(w, it.value)
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
	w.Header().Set("X-Raft-Index", strconv.FormatUint(index, 10))
	writeJSON(w, http.StatusOK, deleteReply{res.deleted, index})
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
	if len(prefix) > h.limits.keyBytes {
		h.reject(w, r, http.StatusBadRequest, "key_too_large", "prefix larger than "+strconv.Itoa(h.limits.keyBytes)+" bytes (--max-key-bytes)")
		return
	}
	res, index, ok := h.applyConditional(w, r, &op{kind: opDeletePrefix, key: prefix}, nil)
	if !ok {
		return
	}
	w.Header().Set("X-Raft-Index", strconv.FormatUint(index, 10))
	writeJSON(w, http.StatusOK, deleteReply{res.deleted, index})
}

type listReply struct {
	Index uint64    `json:"index"`
	KVs   []*kvJSON `json:"kvs"`
	More  bool      `json:"more"`
	// After is the key to pass as ?after= for the next page, when More.
	After string `json:"after,omitempty"`
}

func (h *httpAPI) list(w http.ResponseWriter, r *http.Request) {
	q, ok := h.query(w, r, "prefix", "after", "limit", "values", "consistency")
	if !ok {
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
		reply.After = items[len(items)-1].key
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
	if _, ok := h.query(w, r); !ok {
		return
	}
	body, ok := h.readBody(w, r)
	if !ok {
		return
	}
	t, err := h.parseTxn(body)
	if err != nil {
		h.reject(w, r, http.StatusBadRequest, "bad_txn", strings.TrimPrefix(err.Error(), errBadTxn.Error()+": "))
		return
	}
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
		if len(oj.Prefix) > h.limits.keyBytes {
			return op{}, fmt.Errorf("prefix larger than %d bytes (--max-key-bytes)", h.limits.keyBytes)
		}
		return op{kind: opDeletePrefix, key: oj.Prefix}, nil
	}
	return op{}, fmt.Errorf("op must be put, delete, delete_prefix or get, not %q", oj.Op)
}
