package main

import (
	"cmp"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.etcd.io/raft/v3"
)

// The dashboard is one page embedded in the binary that every member
// serves at /ui/. The page polls GET /v1/cluster on the member that served
// it, and that member asks the others over HTTP: each for its /v1/status
// (with the traffic counters the plots are drawn from) and the leader for
// its view of everyone's progress. So the page makes no cross-origin
// requests, and it keeps showing the cluster while members die, as long as
// the one it came from runs.

//go:embed ui
var uiFiles embed.FS

const uiPrefix = "/ui/"

// forwardedHeader marks a request one member passed to the leader on a
// client's behalf; the leader never passes it on again.
const forwardedHeader = "X-Raftexample-Forwarded-By"

// fanoutTimeout bounds each request /v1/cluster makes to another member: a
// member that does not answer within it is shown as unreachable.
const fanoutTimeout = time.Second

var uiHandler = sync.OnceValue(func() http.Handler {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	return http.StripPrefix(uiPrefix, http.FileServer(http.FS(sub)))
})

func (h *httpAPI) serveUI(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/ui" {
		http.Redirect(w, r, uiPrefix, http.StatusMovedPermanently)
		return
	}
	// Everything the page loads comes from this member: no CDN, no inline
	// script, nothing from elsewhere.
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-cache")
	uiHandler().ServeHTTP(w, r)
}

// clusterMember is one member as GET /v1/cluster shows it: what the
// membership and the leader know of it, and what it says of itself.
type clusterMember struct {
	memberJSON
	Status *statusReply `json:"status,omitempty"` // absent when it could not be asked
	Error  string       `json:"error,omitempty"`  // why Status is absent
}

type clusterReply struct {
	Member uint64 `json:"member"` // who answered
	Leader uint64 `json:"leader"` // as the answering member knows it; 0: none
	// View is whose progress figures (match, lag, reachable) the members
	// carry: "leader" when the leader gave them, "follower" when it could
	// not be asked (then they are absent).
	View    string          `json:"view"`
	Time    time.Time       `json:"time"`
	Members []clusterMember `json:"members"`
}

// cluster answers GET /v1/cluster: every member with its own status,
// gathered now: first the leader's view of the members, then, in parallel,
// each member's status, each step within fanoutTimeout.
func (h *httpAPI) cluster(w http.ResponseWriter, r *http.Request) {
	if !h.plainGet(w, r) {
		return
	}
	view := h.membersView()
	if local := view; view.View != "leader" && view.Leader != 0 {
		var lv membersReply
		ctx, cancel := context.WithTimeout(r.Context(), fanoutTimeout)
		err := errors.New("no client URL known")
		if u := h.store.members.clientURL(view.Leader); u != "" {
			err = h.fetchJSON(ctx, u+versionedPrefix+"members", &lv)
		}
		cancel()
		if err == nil && lv.View == "leader" {
			view = lv
			// Last contact as the leader sees each follower, and as this
			// member sees the leader.
			for i := range view.Members {
				for _, m := range local.Members {
					if m.ID == view.Members[i].ID && m.ID == view.Leader {
						view.Members[i].LastContact = m.LastContact
					}
				}
			}
		}
	}
	self := h.raftStatus().ID
	reply := clusterReply{Member: self, Leader: h.raftStatus().Lead, View: view.View, Time: time.Now().UTC(),
		Members: make([]clusterMember, len(view.Members))}
	ctx, cancel := context.WithTimeout(r.Context(), fanoutTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for i, m := range view.Members {
		cm := &reply.Members[i]
		cm.memberJSON = m
		switch {
		case m.ID == self:
			st := h.statusNow()
			cm.Status = &st
		case m.ClientURL == "":
			cm.Error = "its client URL is not known yet (a member publishes it once it has joined)"
		default:
			wg.Add(1)
			go func() {
				defer wg.Done()
				var st statusReply
				if err := h.fetchJSON(ctx, m.ClientURL+versionedPrefix+"status", &st); err != nil {
					cm.Error = "unreachable: " + err.Error()
					return
				}
				cm.Status = &st
			}()
		}
	}
	wg.Wait()
	writeJSON(w, http.StatusOK, reply)
}

// fetchJSON GETs url from another member and decodes its JSON answer.
func (h *httpAPI) fetchJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := h.ops.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		return fmt.Errorf("%s answered %s", url, resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(v)
}

// forwardToLeader passes r on to the leader when this member does not
// lead, answering the client with the leader's answer. It reports false,
// having done nothing, when this member leads or r was forwarded already
// (so a request never travels more than one hop).
func (h *httpAPI) forwardToLeader(w http.ResponseWriter, r *http.Request, st raft.Status) bool {
	if st.RaftState == raft.StateLeader || r.Header.Get(forwardedHeader) != "" || st.Lead == 0 {
		return false
	}
	leaderURL := h.store.members.clientURL(st.Lead)
	target, err := url.Parse(leaderURL)
	if leaderURL == "" || err != nil {
		return false
	}
	self := strconv.FormatUint(st.ID, 10)
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Header.Set(forwardedHeader, self)
		},
		Transport: h.ops.client.Transport,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			h.reject(w, r, http.StatusServiceUnavailable, "leader_unreachable",
				fmt.Sprintf("this member passes the request to the leader (member %d at %s), which did not answer: %v", st.Lead, leaderURL, err))
		},
	}
	proxy.ServeHTTP(w, r)
	return true
}

// membersView is GET /v1/members' answer.
func (h *httpAPI) membersView() membersReply {
	st := h.raftStatus()
	reply := membersReply{Member: st.ID, Leader: st.Lead, View: "follower", Members: []memberJSON{}}
	isLeader := st.RaftState == raft.StateLeader
	if isLeader {
		reply.View = "leader"
	}
	last := h.logBounds().last
	learners, clients := h.store.members.learnerSet(), h.store.members.clientURLs()
	for id, u := range h.store.Members() {
		m := memberJSON{ID: id, PeerURL: u, ClientURL: clients[id], Voter: !learners[id], Leader: id == st.Lead}
		if t := h.ops.lastContact; t != nil && id != st.ID {
			if at := t(id); !at.IsZero() {
				at = at.UTC()
				m.LastContact = &at
			}
		}
		if pr, ok := st.Progress[id]; ok && isLeader {
			match, reachable := pr.Match, pr.RecentActive || id == st.ID
			lag := uint64(0)
			if last > match {
				lag = last - match
			}
			m.Match, m.Lag, m.Reachable = &match, &lag, &reachable
		}
		reply.Members = append(reply.Members, m)
	}
	slices.SortFunc(reply.Members, func(a, b memberJSON) int { return cmp.Compare(a.ID, b.ID) })
	return reply
}
