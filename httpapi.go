package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
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
}

// versionedPrefix starts the paths of the versioned API; such paths are
// never keys.
const versionedPrefix = "/v1/"

const allowedMethods = "GET, HEAD, PUT, POST, DELETE"

func (h *httpAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, versionedPrefix) {
		h.serveV1(w, r)
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
	switch r.URL.Path {
	case versionedPrefix + "status":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method "+r.Method+" not allowed; use GET", http.StatusMethodNotAllowed)
			return
		}
		if _, ok := h.query(w, r); ok {
			h.status(w)
		}
	default:
		http.Error(w, "no such route "+strconv.Quote(r.URL.Path)+"; paths under "+versionedPrefix+" are the versioned API, not keys", http.StatusNotFound)
	}
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
}

type statusMember struct {
	ID      uint64 `json:"id"`
	PeerURL string `json:"peerURL"`
}

func (h *httpAPI) status(w http.ResponseWriter) {
	st := h.raftStatus()
	applied, keys := h.store.Applied()
	lb := h.logBounds()
	reply := statusReply{
		ID: st.ID, Leader: st.Lead, Term: st.HardState.GetTerm(), RaftState: raftStateName(st.RaftState),
		Commit: st.HardState.GetCommit(), Applied: applied, Snapshot: lb.snapshot, Compacted: lb.compacted, LastIndex: lb.last,
		Keys: keys, Members: []statusMember{},
	}
	for id, u := range h.store.Members() {
		reply.Members = append(reply.Members, statusMember{ID: id, PeerURL: u})
	}
	slices.SortFunc(reply.Members, func(a, b statusMember) int { return cmp.Compare(a.ID, b.ID) })
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(reply)
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
	if key == "" {
		http.Error(w, "missing key: use GET /<key>", http.StatusBadRequest)
		return
	}
	linearizable := true
	switch c := q.Get("consistency"); c {
	case "", "linearizable":
	case "serializable":
		linearizable = false
	default:
		http.Error(w, "consistency must be linearizable (default) or serializable, not "+strconv.Quote(c), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	it, index, err := h.store.Get(ctx, key, linearizable)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("X-Raft-Index", strconv.FormatUint(index, 10))
	if it == nil {
		http.Error(w, "key not found", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(it.value)))
	io.WriteString(w, it.value)
}

func (h *httpAPI) put(w http.ResponseWriter, r *http.Request, key string) {
	if _, ok := h.query(w, r); !ok {
		return
	}
	if key == "" {
		http.Error(w, "missing key: use PUT /<key> with the value as the body", http.StatusBadRequest)
		return
	}
	body, ok := h.readBody(w, r)
	if !ok {
		return
	}
	h.replicate(w, r, func(ctx context.Context) (uint64, error) { return h.store.Put(ctx, key, string(body)) })
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
	h.replicate(w, r, func(ctx context.Context) (uint64, error) { return h.store.AddMember(ctx, id, peerURL) })
}

func (h *httpAPI) removeMember(w http.ResponseWriter, r *http.Request, idText string) {
	if _, ok := h.query(w, r); !ok {
		return
	}
	id, ok := parseMemberID(w, idText, "DELETE /<id> with a member id")
	if !ok {
		return
	}
	h.replicate(w, r, func(ctx context.Context) (uint64, error) { return h.store.RemoveMember(ctx, id) })
}

// replicate runs a change through raft within the request timeout and
// answers 204 with the raft index at which it was applied.
func (h *httpAPI) replicate(w http.ResponseWriter, r *http.Request, change func(context.Context) (uint64, error)) {
	ctx, cancel := context.WithTimeout(r.Context(), h.requestTimeout)
	defer cancel()
	index, err := change(ctx)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("X-Raft-Index", strconv.FormatUint(index, 10))
	w.WriteHeader(http.StatusNoContent)
}

// query parses the query string and rejects options the route does not know.
func (h *httpAPI) query(w http.ResponseWriter, r *http.Request, known ...string) (url.Values, bool) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		http.Error(w, "malformed query string: "+err.Error(), http.StatusBadRequest)
		return nil, false
	}
	for name := range q {
		if !slices.Contains(known, name) {
			msg := "unknown query parameter " + strconv.Quote(name) + " for " + r.Method
			if len(known) > 0 {
				msg += "; known: " + strings.Join(known, ", ")
			}
			http.Error(w, msg, http.StatusBadRequest)
			return nil, false
		}
	}
	return q, true
}

func (h *httpAPI) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	tooLarge := "request body larger than " + strconv.FormatInt(h.maxRequestBytes, 10) + " bytes (--max-request-bytes)"
	if r.ContentLength > h.maxRequestBytes {
		http.Error(w, tooLarge, http.StatusRequestEntityTooLarge)
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.maxRequestBytes))
	if err != nil {
		var maxErr *http.MaxBytesError
		if errors.As(err, &maxErr) {
			http.Error(w, tooLarge, http.StatusRequestEntityTooLarge)
		} else {
			http.Error(w, "cannot read request body: "+err.Error(), http.StatusBadRequest)
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
	http.Error(w, err.Error(), re.status)
}
