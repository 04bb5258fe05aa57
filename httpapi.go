package main

import (
	"cmp"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.uber.org/zap"
)

// httpAPI is the client-facing router. Every route goes through ServeHTTP;
// the raftexample-compatible routes live at the root:
//
//	PUT    /<key>   set a key (body = value)
//	GET    /<key>   read a key (?consistency=serializable for a local read)
//	POST   /<id>    add member <id> (body = its peer URL)
//	DELETE /<id>    remove member <id>
//
// The key is the whole decoded path after the first slash, kept as is (no
// cleaning of "//" or ".."); the query string only carries options. Paths
// under /v1/ belong to the versioned API:
//
//	GET    /v1/status   this member's view of raft and the state machine
type httpAPI struct {
	lg              *zap.Logger
	store           *kvstore
	raftStatus      func() raft.Status
	logBounds       func() logBounds
	requestTimeout  time.Duration
	maxRequestBytes int64
	limits          limits
	ops             opsConfig
	// leaderURL is the leader's published client URL when this member is
	// not the leader and knows one, else "". A follower sets it on its
	// answers to writes (X-Leader-URL), so a client can send its next
	// writes to the leader and spare them the forward (README, "Writes go
	// to the leader").
	leaderURL func() string
	// stopping is closed when the server begins to shut down: watches end.
	stopping <-chan struct{}
	watchers atomic.Int64 // watches being served
}

// versionedPrefix starts the paths of the versioned API; such paths are
// never keys.
const versionedPrefix = "/v1/"

const allowedMethods = "GET, HEAD, PUT, POST, DELETE"

func (h *httpAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if isV1(r) {
		h.serveV1(w, r)
		return
	}
	if isOpsRoute(r.URL.Path) {
		h.serveOps(w, r) // health.go
		return
	}
	key := strings.TrimPrefix(r.URL.Path, "/")
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		h.get(w, r, key)
	case http.MethodPut:
		h.put(w, r, key)
	case http.MethodPost:
		h.addMember(w, r, key)
	case http.MethodDelete:
		h.removeMember(w, r, key)
	default:
		w.Header().Set("Allow", allowedMethods)
		http.Error(w, "method "+r.Method+" not allowed; use "+allowedMethods, http.StatusMethodNotAllowed)
	}
}

func (h *httpAPI) serveV1(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.Path; {
	case p == versionedPrefix+"status":
		if h.plainGet(w, r) {
			h.status(w)
		}
	case p == versionedPrefix+"kv" || strings.HasPrefix(p, kvPrefix):
		h.serveKV(w, r, strings.TrimPrefix(strings.TrimPrefix(p, versionedPrefix+"kv"), "/"))
	case p == versionedPrefix+"members" || strings.HasPrefix(p, versionedPrefix+"members/"):
		h.serveMembers(w, r, strings.TrimPrefix(strings.TrimPrefix(p, versionedPrefix+"members"), "/")) // httpops.go
	case p == versionedPrefix+"cluster":
		h.cluster(w, r) // dashboard.go
	case p == versionedPrefix+"leader/transfer":
		h.transferLeader(w, r)
	case p == versionedPrefix+"log-level":
		h.logLevel(w, r) // health.go
	case p == versionedPrefix+"txn":
		if h.methods(w, r, http.MethodPost) {
			h.txn(w, r)
		}
	default:
		h.reject(w, r, http.StatusNotFound, "no_route", "no such route "+strconv.Quote(r.URL.Path)+"; paths under "+versionedPrefix+" are the versioned API, not keys")
	}
}

// plainGet answers an error unless r is a GET or HEAD without a query.
func (h *httpAPI) plainGet(w http.ResponseWriter, r *http.Request) bool {
	if !h.methods(w, r, http.MethodGet, http.MethodHead) {
		return false
	}
	_, ok := h.query(w, r)
	return ok
}

func isV1(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, versionedPrefix) }

// methods answers 405 unless r's method is one of allowed.
func (h *httpAPI) methods(w http.ResponseWriter, r *http.Request, allowed ...string) bool {
	if slices.Contains(allowed, r.Method) {
		return true
	}
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	h.reject(w, r, http.StatusMethodNotAllowed, "method_not_allowed", "method "+r.Method+" not allowed; use "+strings.Join(allowed, ", "))
	return false
}

// reject answers an error: under /v1/ as JSON {"error": code, "message":
// msg}, at the root as one line of text, as raftexample did.
func (h *httpAPI) reject(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	if !isV1(r) {
		http.Error(w, msg, status)
		return
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	writeJSON(w, status, struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}{code, msg})
}

// statusReply is the body of GET /v1/status.
type statusReply struct {
	ID        uint64         `json:"id"`
	Leader    uint64         `json:"leader"` // 0 while no leader is known
	Term      uint64         `json:"term"`
	RaftState string         `json:"raftState"`
	Commit    uint64         `json:"commit"`
	Applied   uint64         `json:"applied"`
	Snapshot  uint64         `json:"snapshot"`  // newest snapshot's index
	Compacted uint64         `json:"compacted"` // log discarded up to here
	LastIndex uint64         `json:"lastIndex"` // last entry persisted here
	Keys      int            `json:"keys"`
	Members   []statusMember `json:"members"`
	WALBytes  int64          `json:"walBytes"`  // files in the WAL dir (segments are preallocated)
	SnapBytes int64          `json:"snapBytes"` // files in the snapshot dir
	Version   string         `json:"version"`
	Uptime    float64        `json:"uptimeSeconds"`
	Traffic   traffic        `json:"traffic"` // for rates and latencies between two polls
}

type statusMember struct {
	ID        uint64 `json:"id"`
	PeerURL   string `json:"peerURL"`
	ClientURL string `json:"clientURL,omitempty"` // absent until the member has published it
}

func (h *httpAPI) status(w http.ResponseWriter) {
	writeJSON(w, http.StatusOK, h.statusNow())
}

func (h *httpAPI) statusNow() statusReply {
	st := h.raftStatus()
	applied, keys := h.store.Applied()
	lb := h.logBounds()
	reply := statusReply{
		ID: st.ID, Leader: st.Lead, Term: st.HardState.GetTerm(), RaftState: raftStateName(st.RaftState),
		Commit: st.HardState.GetCommit(), Applied: applied, Snapshot: lb.snapshot, Compacted: lb.compacted, LastIndex: lb.last,
		Keys: keys, Members: []statusMember{},
		WALBytes: dirBytes(h.ops.waldir), SnapBytes: dirBytes(h.ops.snapdir), Version: version(), Uptime: time.Since(h.ops.started).Seconds(),
	}
	clients := h.store.members.clientURLs()
	for id, u := range h.store.Members() {
		reply.Members = append(reply.Members, statusMember{ID: id, PeerURL: u, ClientURL: clients[id]})
	}
	slices.SortFunc(reply.Members, func(a, b statusMember) int { return cmp.Compare(a.ID, b.ID) })
	reply.Traffic = clientTraffic() // metrics.go
	return reply
}

func raftStateName(s raft.StateType) string {
	switch s {
	case raft.StateLeader:
		return "leader"
	case raft.StateFollower:
		return "follower"
	case raft.StateCandidate:
		return "candidate"
	case raft.StatePreCandidate:
		return "pre-candidate"
	}
	return "unknown"
}

func (h *httpAPI) get(w http.ResponseWriter, r *http.Request, key string) {
	q, ok := h.query(w, r, "consistency")
	if !ok {
		return
	}
	if !h.checkKey(w, r, key, "GET /<key>") {
		return
	}
	it, index, ok := h.readKey(w, r, q, key)
	if !ok {
		return
	}
	w.Header().Set("X-Raft-Index", strconv.FormatUint(index, 10))
	if it == nil {
		http.Error(w, "key not found", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(it.value())))
	io.WriteString(w, it.value())
}

func (h *httpAPI) put(w http.ResponseWriter, r *http.Request, key string) {
	if _, ok := h.query(w, r); !ok {
		return
	}
	if !h.checkKey(w, r, key, "PUT /<key> with the value as the body") {
		return
	}
	body, ok := h.readBodyMax(w, r, h.limits.valueBytes, "value", "--max-value-bytes")
	if !ok {
		return
	}
	h.hintLeader(w)
	h.replicate(w, r, func(ctx context.Context) (uint64, error) { return h.store.Put(ctx, key, string(body)) })
}

// hintLeader names the leader's client URL on the answer to a write that
// this member, a follower, forwards to it. Every write passes here before
// it is proposed, whatever its answer turns out to be.
func (h *httpAPI) hintLeader(w http.ResponseWriter) {
	if h.leaderURL == nil {
		return
	}
	if u := h.leaderURL(); u != "" {
		w.Header().Set("X-Leader-URL", u)
	}
}

func (h *httpAPI) addMember(w http.ResponseWriter, r *http.Request, idText string) {
	if _, ok := h.query(w, r); !ok {
		return
	}
	id, ok := parseMemberID(w, idText, "POST /<id> with the new member's peer URL as the body")
	if !ok {
		return
	}
	body, ok := h.readBody(w, r)
	if !ok {
		return
	}
	peerURL := strings.TrimSpace(string(body))
	if err := validatePeerURL(peerURL); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !h.membershipCurrent(w, r) || !h.strictCheck(w, r, id, +1) { // httpops.go
		return
	}
	h.replicate(w, r, func(ctx context.Context) (uint64, error) { return h.store.AddMember(ctx, id, peerURL, false) })
}

func (h *httpAPI) removeMember(w http.ResponseWriter, r *http.Request, idText string) {
	if _, ok := h.query(w, r); !ok {
		return
	}
	id, ok := parseMemberID(w, idText, "DELETE /<id> with a member id")
	if !ok {
		return
	}
	if !h.membershipCurrent(w, r) || !h.strictCheck(w, r, id, -1) {
		return
	}
	h.replicate(w, r, h.removal(r, id)) // httpops.go
}

// replicate runs a change through raft within the request timeout and
// answers 204 with the raft index at which it was applied.
func (h *httpAPI) replicate(w http.ResponseWriter, r *http.Request, change func(context.Context) (uint64, error)) {
	if _, ok := h.runChange(w, r, change); ok {
		w.WriteHeader(http.StatusNoContent)
	}
}

// runChange runs a change within the request timeout. On success it sets
// X-Raft-Index and leaves the answer to the caller; on failure it answers.
func (h *httpAPI) runChange(w http.ResponseWriter, r *http.Request, change func(context.Context) (uint64, error)) (uint64, bool) {
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	index, err := change(ctx)
	if err != nil {
		h.fail(w, r, err)
		return 0, false
	}
	w.Header().Set("X-Raft-Index", strconv.FormatUint(index, 10))
	return index, true
}

// readKey reads key with the consistency the query asks for; on failure it
// has answered.
func (h *httpAPI) readKey(w http.ResponseWriter, r *http.Request, q url.Values, key string) (*item, uint64, bool) {
	linearizable, ok := h.consistency(w, r, q)
	if !ok {
		return nil, 0, false
	}
	ctx := r.Context()
	if linearizable { // a serializable read never waits
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.requestTimeout)
		defer cancel()
	}
	it, index, err := h.store.Get(ctx, key, linearizable)
	if err != nil {
		h.fail(w, r, err)
		return nil, 0, false
	}
	return it, index, true
}

// checkKey refuses an empty key or one over --max-key-bytes.
func (h *httpAPI) checkKey(w http.ResponseWriter, r *http.Request, key, usage string) bool {
	err := h.checkKeyErr(key)
	switch {
	case err == nil:
		return true
	case key == "":
		h.reject(w, r, http.StatusBadRequest, "missing_key", err.Error()+": use "+usage)
	default:
		h.reject(w, r, http.StatusBadRequest, "key_too_large", err.Error())
	}
	return false
}

// consistency reads ?consistency: linearizable (the default) or
// serializable.
func (h *httpAPI) consistency(w http.ResponseWriter, r *http.Request, q url.Values) (linearizable, ok bool) {
	switch c := q.Get("consistency"); c {
	case "", "linearizable":
		return true, true
	case "serializable":
		return false, true
	default:
		h.reject(w, r, http.StatusBadRequest, "bad_query", "consistency must be linearizable (default) or serializable, not "+strconv.Quote(c))
		return false, false
	}
}

// query parses the query string and rejects options the route does not know.
func (h *httpAPI) query(w http.ResponseWriter, r *http.Request, known ...string) (url.Values, bool) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		h.reject(w, r, http.StatusBadRequest, "bad_query", "malformed query string: "+err.Error())
		return nil, false
	}
	for name := range q {
		if !slices.Contains(known, name) {
			msg := "unknown query parameter " + strconv.Quote(name) + " for " + r.Method
			if len(known) > 0 {
				msg += "; known: " + strings.Join(known, ", ")
			}
			h.reject(w, r, http.StatusBadRequest, "bad_query", msg)
			return nil, false
		}
	}
	return q, true
}

// bodyNoQuery reads the body of a request that takes no query parameters.
func (h *httpAPI) bodyNoQuery(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if _, ok := h.query(w, r); !ok {
		return nil, false
	}
	return h.readBody(w, r)
}

func (h *httpAPI) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	return h.readBodyMax(w, r, h.maxRequestBytes, "request body", "--max-request-bytes")
}

// readBodyMax reads the body, refusing one over max bytes with a 413 that
// names the limit and its flag.
func (h *httpAPI) readBodyMax(w http.ResponseWriter, r *http.Request, max int64, what, flag string) ([]byte, bool) {
	max = min(max, h.maxRequestBytes)
	if max == h.maxRequestBytes {
		what, flag = "request body", "--max-request-bytes"
	}
	tooLarge := what + " larger than " + strconv.FormatInt(max, 10) + " bytes (" + flag + ")"
	if r.ContentLength > max {
		h.reject(w, r, http.StatusRequestEntityTooLarge, "too_large", tooLarge)
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	if err != nil {
		var maxErr *http.MaxBytesError
		if errors.As(err, &maxErr) {
			h.reject(w, r, http.StatusRequestEntityTooLarge, "too_large", tooLarge)
		} else {
			h.reject(w, r, http.StatusBadRequest, "bad_body", "cannot read request body: "+err.Error())
		}
		return nil, false
	}
	return body, true
}

func parseMemberID(w http.ResponseWriter, s, usage string) (uint64, bool) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil || id == 0 {
		http.Error(w, "member id must be a decimal number greater than 0, not "+strconv.Quote(s)+"; use "+usage, http.StatusBadRequest)
		return 0, false
	}
	return id, true
}

// fail answers with the status that errors.go gives err.
func (h *httpAPI) fail(w http.ResponseWriter, r *http.Request, err error) {
	re := classify(err)
	if re == errInternal {
		h.lg.Error("request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
	}
	if re.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	h.reject(w, r, re.status, re.code, err.Error())
}
