// Package client is a Go client for one raftexample member's HTTP API: the
// /v1 key-value routes, transactions and status.
//
// Every error a call returns is an *Error that says what the caller may
// conclude about its request (Outcome): that nothing happened, or that a
// write may or may not have taken effect. These rules live here once, for
// every tool in this repository.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
)

// Outcome is what a failed call did to the cluster.
type Outcome int

const (
	// Refused: nothing happened. The member refused the request (a 4xx, or
	// no leader), or it never reached the member.
	Refused Outcome = iota
	// Unknown: a write may or may not take effect (a timeout, a lost
	// connection after sending, a leader change). Retry only what is safe
	// to apply twice, or read to find out. Reads never end Unknown.
	Unknown
)

func (o Outcome) String() string {
	if o == Refused {
		return "refused"
	}
	return "unknown"
}

// Error is a failed call. Status is 0 when no HTTP answer came.
type Error struct {
	Status  int
	Code    string // the server's stable /v1 error code; "" without an answer
	Message string
	Outcome Outcome
	Err     error // the transport error, when there was no answer
}

func (e *Error) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("no answer (%s): %v", e.Outcome, e.Err)
	}
	return fmt.Sprintf("%d %s: %s (%s)", e.Status, e.Code, e.Message, e.Outcome)
}

func (e *Error) Unwrap() error { return e.Err }

// IsPreconditionFailed reports whether err is a failed If-Match or
// If-None-Match: a definite answer, nothing was written.
func IsPreconditionFailed(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == "precondition_failed"
}

// IsNotFound reports whether err says the key is absent.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == "key_not_found"
}

// Client talks to one member, and sends its writes to the leader that
// member names, unless Pinned (see route.go). Safe for concurrent use; not
// to be copied once used.
type Client struct {
	Endpoint string // e.g. http://127.0.0.1:12380
	HTTP     *http.Client
	// Pinned keeps every request on Endpoint: writes too, which a follower
	// then forwards to the leader. Set it before the first call.
	Pinned bool

	route router
}

// defaultHTTP is the http.Client of every Client made without one.
var defaultHTTP = &http.Client{Transport: NewTransport()}

// New returns a client of the member at endpoint. hc nil means a shared
// http.Client on this package's Transport (no timeout: give each call a
// context with a deadline).
func New(endpoint string, hc *http.Client) *Client {
	if hc == nil {
		hc = defaultHTTP
	}
	return &Client{Endpoint: endpoint, HTTP: hc}
}

// KV is a key with its metadata.
type KV struct {
	Key         string  `json:"key"`
	Value       *string `json:"value,omitempty"`
	ValueBase64 *string `json:"value_base64,omitempty"`
	CreateIndex uint64  `json:"create_index"`
	ModIndex    uint64  `json:"mod_index"`
	Version     uint64  `json:"version"`
}

func keyPath(key string) string { return "/v1/kv/" + (&url.URL{Path: key}).EscapedPath() }

// reply is an answer read whole. On the fast path (Transport.call) its
// body and headers live in fasthttp's response, valid until do returns.
type reply struct {
	status int
	body   []byte
	hdr    http.Header        // through net/http
	fast   *fasthttp.Response // through Transport.call
}

func (r *reply) header(name string) string {
	if r.fast != nil {
		return string(r.fast.Header.Peek(name))
	}
	return r.hdr.Get(name)
}

// do sends a request and decodes a 2xx JSON answer into out, if out is not
// nil, and hands a 2xx answer to read, if read is not nil, before it
// returns. write says whether the request can change the cluster (it
// decides Outcome).
func (c *Client) do(ctx context.Context, method, path string, header http.Header, body []byte, write bool, out any, read func(*reply) error) error {
	r, err := c.send(ctx, method, path, header, body, write)
	if err != nil {
		return err
	}
	if r.fast != nil {
		defer fasthttp.ReleaseResponse(r.fast)
	}
	if r.status/100 != 2 {
		return answerError(r.status, r.body, write)
	}
	if out != nil {
		if err := json.Unmarshal(r.body, out); err != nil {
			// A write answered 2xx took effect: only its result is lost.
			o := Refused
			if write {
				o = Unknown
			}
			return &Error{Status: r.status, Outcome: o, Message: "undecodable answer: " + err.Error()}
		}
	}
	if read != nil {
		return read(r)
	}
	return nil
}

// send does the exchange: a read with Endpoint, a write with the leader
// when one is known (route.go).
func (c *Client) send(ctx context.Context, method, path string, header http.Header, body []byte, write bool) (*reply, error) {
	if write {
		return c.sendWrite(ctx, method, path, header, body)
	}
	return c.sendTo(ctx, c.Endpoint, method, path, header, body, false)
}

// sendTo does the exchange with the member at endpoint. On a plain
// http.Client over this package's Transport, and an http:// member, it goes
// through Transport.call: without net/http's Request and Response, about a
// third of the client's CPU per request (README, Performance). Otherwise
// through c.HTTP.
func (c *Client) sendTo(ctx context.Context, endpoint, method, path string, header http.Header, body []byte, write bool) (*reply, error) {
	failed := func(status int, err error, msg string) *Error {
		o := Refused
		if write && !notSent(err) {
			o = Unknown
		}
		return &Error{Status: status, Outcome: o, Err: err, Message: msg}
	}
	if t, ok := c.HTTP.Transport.(*Transport); ok && c.HTTP.Jar == nil {
		if addr, host, prefix, ok := plainEndpoint(endpoint); ok {
			if c.HTTP.Timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, c.HTTP.Timeout)
				defer cancel()
			}
			resp, err := t.call(ctx, method, addr, host, prefix+path, header, body)
			if err != nil {
				return nil, failed(0, err, "")
			}
			return &reply{status: resp.StatusCode(), body: resp.Body(), fast: resp}, nil
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, endpoint+path, bytes.NewReader(body))
	if err != nil {
		return nil, &Error{Outcome: Refused, Err: err}
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, failed(0, err, "")
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, failed(resp.StatusCode, err, "reading the answer: "+err.Error())
	}
	return &reply{status: resp.StatusCode, body: data, hdr: resp.Header}, nil
}

// plainEndpoint splits an http:// endpoint into the address to dial, the
// Host header and a path prefix; ok is false for anything else (https,
// user info, a query), which goes through net/http.
func plainEndpoint(endpoint string) (addr, host, prefix string, ok bool) {
	rest, ok := strings.CutPrefix(endpoint, "http://")
	if !ok || strings.ContainsAny(rest, "@?#") {
		return "", "", "", false
	}
	host = rest
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		host, prefix = rest[:i], strings.TrimSuffix(rest[i:], "/")
	}
	if host == "" {
		return "", "", "", false
	}
	addr = host
	if h, port, err := net.SplitHostPort(host); err != nil {
		addr = net.JoinHostPort(strings.Trim(host, "[]"), "80") // no port: a name, an address or [IPv6]
	} else if port == "" {
		addr = net.JoinHostPort(h, "80")
	}
	return addr, host, prefix, true
}

// answerError turns an error answer into an Error with its outcome: 4xx and
// "no_leader" changed nothing; any other 5xx of a write may have.
func answerError(status int, body []byte, write bool) *Error {
	e := &Error{Status: status}
	var j struct{ Error, Message string }
	if json.Unmarshal(body, &j) == nil && j.Error != "" {
		e.Code, e.Message = j.Error, j.Message
	} else {
		e.Message = string(bytes.TrimSpace(body))
	}
	if write && status/100 == 5 && e.Code != "no_leader" {
		e.Outcome = Unknown
	}
	return e
}

// notSent reports whether a request failed before any byte reached the
// server (the connection could not be made).
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// Get reads a key, linearizably unless serializable is set. An absent key
// is an error for which IsNotFound is true.
func (c *Client) Get(ctx context.Context, key string, serializable bool) (*KV, error) {
	path := keyPath(key)
	if serializable {
		path += "?consistency=serializable"
	}
	// The raw answer (the value as the body, its metadata in headers) costs
	// both sides less than the JSON one; the KV is the same.
	kv := &KV{Key: key}
	err := c.do(ctx, http.MethodGet, path, nil, nil, false, nil, func(r *reply) error {
		if err := kv.indexesFrom(r, false); err != nil {
			return err
		}
		if utf8.Valid(r.body) {
			v := string(r.body)
			kv.Value = &v
		} else {
			v := base64.StdEncoding.EncodeToString(r.body)
			kv.ValueBase64 = &v
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return kv, nil
}

// indexesFrom reads a key's indexes from the headers a member sets on an
// answer about one key. write says whether the request could have changed
// the cluster (for the Outcome of an answer that lacks them).
func (kv *KV) indexesFrom(r *reply, write bool) error {
	for _, f := range [...]struct {
		header string
		to     *uint64
	}{{"X-Create-Index", &kv.CreateIndex}, {"X-Mod-Index", &kv.ModIndex}, {"X-Version", &kv.Version}} {
		n, err := strconv.ParseUint(r.header(f.header), 10, 64)
		if err != nil {
			o := Refused
			if write {
				o = Unknown // a write answered 2xx took effect: only its result is lost
			}
			return &Error{Status: r.status, Outcome: o, Message: fmt.Sprintf("undecodable answer: header %s: %v", f.header, err)}
		}
		*f.to = n
	}
	return nil
}

// PutOption is a condition on a Put or Delete.
type PutOption func(http.Header)

// IfModIndex writes only if the key's mod_index is n.
func IfModIndex(n uint64) PutOption {
	return func(h http.Header) { h.Set("If-Match", strconv.FormatUint(n, 10)) }
}

// IfAbsent writes only if the key does not exist.
func IfAbsent() PutOption { return func(h http.Header) { h.Set("If-None-Match", "*") } }

// Put writes a key and returns its metadata after the write.
func (c *Client) Put(ctx context.Context, key, value string, opts ...PutOption) (*KV, error) {
	h := http.Header{}
	for _, o := range opts {
		o(h)
	}
	// The indexes are in the answer's headers too: reading them costs the
	// client less than decoding the JSON body (an eighth of its CPU per
	// PUT). An answer without them (a member that does not send them) is
	// decoded.
	kv := &KV{Key: key}
	err := c.do(ctx, http.MethodPut, keyPath(key), h, []byte(value), true, nil, func(r *reply) error {
		if r.header("X-Mod-Index") != "" {
			return kv.indexesFrom(r, true)
		}
		if err := json.Unmarshal(r.body, kv); err != nil {
			// A write answered 2xx took effect: only its result is lost.
			return &Error{Status: r.status, Outcome: Unknown, Message: "undecodable answer: " + err.Error()}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return kv, nil
}

// Delete deletes a key and says whether it existed.
func (c *Client) Delete(ctx context.Context, key string, opts ...PutOption) (bool, error) {
	h := http.Header{}
	for _, o := range opts {
		o(h)
	}
	var r struct{ Deleted int }
	if err := c.do(ctx, http.MethodDelete, keyPath(key), h, nil, true, &r, nil); err != nil {
		return false, err
	}
	return r.Deleted == 1, nil
}

// Compare is a txn condition; see the README for targets and operators.
type Compare struct {
	Key    string `json:"key"`
	Target string `json:"target"`
	Op     string `json:"op"`
	Value  any    `json:"value"`
}

// Op is a txn operation: put, delete, delete_prefix or get.
type Op struct {
	Op     string  `json:"op"`
	Key    string  `json:"key,omitempty"`
	Prefix string  `json:"prefix,omitempty"`
	Value  *string `json:"value,omitempty"`
}

// Txn is a transaction.
type Txn struct {
	Compare []Compare `json:"compare,omitempty"`
	Success []Op      `json:"success,omitempty"`
	Failure []Op      `json:"failure,omitempty"`
}

// TxnResult is what a transaction did.
type TxnResult struct {
	Succeeded bool   `json:"succeeded"`
	Index     uint64 `json:"index"`
	Results   []struct {
		Op      string `json:"op"`
		Key     string `json:"key"`
		Found   *bool  `json:"found"`
		KV      *KV    `json:"kv"`
		Deleted *int   `json:"deleted"`
	} `json:"results"`
}

// Txn runs a transaction.
func (c *Client) Txn(ctx context.Context, t Txn) (*TxnResult, error) {
	body, err := json.Marshal(t)
	if err != nil {
		return nil, &Error{Outcome: Refused, Err: err}
	}
	var r TxnResult
	if err := c.do(ctx, http.MethodPost, "/v1/txn", nil, body, true, &r, nil); err != nil {
		return nil, err
	}
	return &r, nil
}

// CompareAndSwap sets key to value if its value is expect (if expect is
// nil: if it is absent), and reports whether it did.
func (c *Client) CompareAndSwap(ctx context.Context, key string, expect *string, value string) (bool, error) {
	cmp := Compare{Key: key, Target: "exists", Op: "=", Value: false}
	if expect != nil {
		cmp = Compare{Key: key, Target: "value", Op: "=", Value: *expect}
	}
	r, err := c.Txn(ctx, Txn{Compare: []Compare{cmp}, Success: []Op{{Op: "put", Key: key, Value: &value}}})
	if err != nil {
		return false, err
	}
	return r.Succeeded, nil
}

// Status is a member's GET /v1/status.
type Status struct {
	ID        uint64 `json:"id"`
	Leader    uint64 `json:"leader"`
	Term      uint64 `json:"term"`
	RaftState string `json:"raftState"`
	Commit    uint64 `json:"commit"`
	Applied   uint64 `json:"applied"`
	Snapshot  uint64 `json:"snapshot"`
	Compacted uint64 `json:"compacted"`
	LastIndex uint64 `json:"lastIndex"`
	Keys      int    `json:"keys"`
	Members   []struct {
		ID        uint64 `json:"id"`
		PeerURL   string `json:"peerURL"`
		ClientURL string `json:"clientURL,omitempty"` // absent until the member has published it
	} `json:"members"`
	WALBytes  int64   `json:"walBytes"`
	SnapBytes int64   `json:"snapBytes"`
	Version   string  `json:"version"`
	Uptime    float64 `json:"uptimeSeconds"`
}

// Status asks the member for its view of the cluster.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	if err := c.do(ctx, http.MethodGet, "/v1/status", nil, nil, false, &st, nil); err != nil {
		return nil, err
	}
	return &st, nil
}

// Event is one change a watch reports.
type Event struct {
	Type  string `json:"type"` // put or delete
	Index uint64 `json:"index"`
	KV           // the key after a put; for a delete, only Key and ModIndex (the delete's index)
}

// WatchPrefix long-polls for changes under prefix after index, for at most
// timeout. It returns the events and the index to wait from next. A watch
// from an index this member no longer keeps fails with Code "compacted".
func (c *Client) WatchPrefix(ctx context.Context, prefix string, index uint64, timeout time.Duration) ([]Event, uint64, error) {
	q := url.Values{"prefix": {prefix}, "wait": {"true"}, "index": {strconv.FormatUint(index, 10)}, "timeout": {timeout.String()}}
	var r struct {
		Index  uint64  `json:"index"`
		Events []Event `json:"events"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/kv/?"+q.Encode(), nil, nil, false, &r, nil); err != nil {
		return nil, index, err
	}
	return r.Events, r.Index, nil
}

// AddMember asks the member to add member id, reachable at peerURL, with
// the raftexample route POST /<id>; it returns once the change is applied.
func (c *Client) AddMember(ctx context.Context, id uint64, peerURL string) error {
	err := c.do(ctx, http.MethodPost, "/"+strconv.FormatUint(id, 10), nil, []byte(peerURL), true, nil, nil)
	return err
}

// AddLearner asks the member to add member id, reachable at peerURL, as a
// learner (POST /v1/members): it receives the log but does not vote until
// Promote. It returns once the change is applied.
func (c *Client) AddLearner(ctx context.Context, id uint64, peerURL string) error {
	body, _ := json.Marshal(map[string]any{"id": id, "peer_url": peerURL, "learner": true})
	err := c.do(ctx, http.MethodPost, "/v1/members", nil, body, true, nil, nil)
	return err
}

// Promote asks the member, which must be the leader, to make learner id a
// voter (POST /v1/members/<id>/promote). A learner still catching up gets
// a 409 with code "learner_behind"; a follower answers "not_leader".
func (c *Client) Promote(ctx context.Context, id uint64) error {
	err := c.do(ctx, http.MethodPost, "/v1/members/"+strconv.FormatUint(id, 10)+"/promote", nil, nil, true, nil, nil)
	return err
}

// RemoveMember asks the member to remove member id (DELETE /<id>).
func (c *Client) RemoveMember(ctx context.Context, id uint64) error {
	err := c.do(ctx, http.MethodDelete, "/"+strconv.FormatUint(id, 10), nil, nil, true, nil, nil)
	return err
}

// RootPut writes a key with raftexample's route, PUT /<key>, and returns
// the raft index it was applied at.
func (c *Client) RootPut(ctx context.Context, key, value string) (uint64, error) {
	var n uint64
	err := c.do(ctx, http.MethodPut, "/"+(&url.URL{Path: key}).EscapedPath(), nil, []byte(value), true, nil, func(r *reply) error {
		n, _ = strconv.ParseUint(r.header("X-Raft-Index"), 10, 64)
		return nil
	})
	return n, err
}

// RootGet reads a key with raftexample's route, GET /<key> (linearizable);
// found is false for an absent key.
func (c *Client) RootGet(ctx context.Context, key string) (value string, found bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Endpoint+"/"+(&url.URL{Path: key}).EscapedPath(), nil)
	if err != nil {
		return "", false, &Error{Outcome: Refused, Err: err}
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return "", false, &Error{Outcome: Refused, Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	switch {
	case err != nil:
		return "", false, &Error{Status: resp.StatusCode, Outcome: Refused, Err: err, Message: "reading the answer: " + err.Error()}
	case resp.StatusCode == http.StatusOK:
		return string(body), true, nil
	case resp.StatusCode == http.StatusNotFound && bytes.HasPrefix(body, []byte("key not found")):
		return "", false, nil
	}
	return "", false, answerError(resp.StatusCode, body, false)
}

// StreamPrefix follows the changes under prefix after index as Server-Sent
// Events, calling fn for each raft index with its events, until ctx ends,
// the stream breaks, or fn fails. index is sent as Last-Event-ID, so a
// caller resumes on any member from the last index it got. A member that
// no longer keeps the events after index ends the stream with an error of
// Code "compacted".
func (c *Client) StreamPrefix(ctx context.Context, prefix string, index uint64, fn func(index uint64, evs []Event) error) error {
	q := url.Values{"prefix": {prefix}, "wait": {"true"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Endpoint+"/v1/kv/?"+q.Encode(), nil)
	if err != nil {
		return &Error{Outcome: Refused, Err: err}
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", strconv.FormatUint(index, 10))
	// Streams outlive any client timeout: only ctx ends them.
	hc := *c.HTTP
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		return &Error{Outcome: Refused, Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return answerError(resp.StatusCode, body, false)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	var id, event, data string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			id = line[4:]
		case strings.HasPrefix(line, "event: "):
			event = line[7:]
		case strings.HasPrefix(line, "data: "):
			data = line[6:]
		case line == "" && data != "":
			if event != "" {
				return answerError(http.StatusGone, []byte(data), false)
			}
			n, err := strconv.ParseUint(id, 10, 64)
			var evs []Event
			if err != nil || json.Unmarshal([]byte(data), &evs) != nil {
				return &Error{Status: resp.StatusCode, Outcome: Refused, Message: fmt.Sprintf("malformed event: id %q, data %.80q", id, data)}
			}
			if err := fn(n, evs); err != nil {
				return err
			}
			id, event, data = "", "", ""
		}
	}
	if err := sc.Err(); err != nil {
		return &Error{Status: resp.StatusCode, Outcome: Refused, Err: err, Message: "stream broke: " + err.Error()}
	}
	return &Error{Status: resp.StatusCode, Outcome: Refused, Message: "stream ended"}
}
