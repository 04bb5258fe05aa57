// Package workload drives concurrent clients against raftexample members,
// records every request as an operation with its call and return times, and
// checks the history for linearizability with porcupine.
//
// Every PUT writes a value never written before, so a read names the write
// it saw. A PUT that failed in a way that leaves its fate open (a timeout, a
// 5xx, a connection lost after sending) is ambiguous: it may have taken
// effect at any time after its call.
//
// Two sets of keys: plain keys get PUT and GET on the root routes, as
// raftexample had them; CAS keys get GET, PUT, DELETE and compare-and-swap
// transactions on the /v1 routes, through package client.
package workload

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"raftexample/client"
)

// Config describes a workload. Zero values take the defaults noted.
type Config struct {
	// Endpoints returns the client URLs to pick from for each request; it is
	// called per request, so members may come and go.
	Endpoints func() []string
	Clients   int           // concurrent clients; default 8
	Keys      int           // distinct plain keys; default 10
	CASKeys   int           // distinct CAS keys; default Keys/2 (at least 1); -1 for none
	KeyPrefix string        // prepended to every key; default "workload/"
	Timeout   time.Duration // per request; default 3s
	Think     time.Duration // pause between a client's requests; default 2ms
	Reads     float64       // share of GETs; default 0.5
}

func (c *Config) defaults() {
	if c.Clients == 0 {
		c.Clients = 8
	}
	if c.Keys == 0 {
		c.Keys = 10
	}
	switch {
	case c.CASKeys == 0:
		c.CASKeys = max(1, c.Keys/2)
	case c.CASKeys < 0:
		c.CASKeys = 0
	}
	if c.KeyPrefix == "" {
		c.KeyPrefix = "workload/"
	}
	if c.Timeout == 0 {
		c.Timeout = 3 * time.Second
	}
	if c.Think == 0 {
		c.Think = 2 * time.Millisecond
	}
	if c.Reads == 0 {
		c.Reads = 0.5
	}
}

// Kind is an operation's kind.
type Kind uint8

const (
	Get Kind = iota
	Put
	Delete
	CAS // set Value if the key holds Expect (or, if !ExpectFound, is absent)
)

// Input is what a client asked.
type Input struct {
	Kind        Kind
	Key, Value  string
	Expect      string // CAS: the value it expects
	ExpectFound bool   // CAS: false expects the key to be absent
	Endpoint    string // the member asked (for reports only)
	Final       bool   // one of the reads after healing
}

// Output is what it was told.
type Output struct {
	Value   string
	Found   bool // GET: the key exists; DELETE: it existed
	Swapped bool // CAS: the condition held and the value was set
	Unknown bool // a write whose outcome is unknown
}

// Counts summarizes a history.
type Counts struct {
	PutsOK, PutsAmbiguous, PutsFailed int
	GetsOK, GetsFailed                int
	FinalReads                        int
	// The /v1 writes to CAS keys (their PUTs are counted above).
	DeletesOK, CASSwapped, CASNotSwapped, OtherAmbiguous, OtherFailed int
	PairTxns                                                          int // two-key transactions acknowledged
}

func (c Counts) String() string {
	return fmt.Sprintf("%d PUT acknowledged, %d PUT ambiguous, %d PUT refused; %d GET answered, %d GET failed; "+
		"%d DELETE acknowledged, %d CAS swapped, %d CAS not swapped, %d two-key txns acknowledged, %d DELETE/CAS/txn ambiguous, %d refused; %d final reads",
		c.PutsOK, c.PutsAmbiguous, c.PutsFailed, c.GetsOK, c.GetsFailed,
		c.DeletesOK, c.CASSwapped, c.CASNotSwapped, c.PairTxns, c.OtherAmbiguous, c.OtherFailed, c.FinalReads)
}

// History is the record of a workload. Safe for concurrent use.
type History struct {
	cfg   Config
	start time.Time
	http  *http.Client
	// clients of the /v1 API, two per endpoint (one pinned), made on
	// first use
	clientsMu sync.Mutex
	clients   map[apiKey]*client.Client

	mu     sync.Mutex // guards ops, counts and neverWritten
	ops    []porcupine.Operation
	counts Counts
	// neverWritten holds the values of writes that certainly did not take
	// effect (refused, or a CAS that did not swap): no watch may report one.
	neverWritten map[string]bool
	pairs        [][2]string // the values of each two-key transaction
}

// NewHistory prepares a workload; Run drives it.
func NewHistory(cfg Config) *History {
	cfg.defaults()
	return &History{
		cfg:   cfg,
		start: time.Now(),
		http: &http.Client{
			Timeout: cfg.Timeout,
			// The client package's transport, so that the suite checks the
			// outcomes it reports under every fault.
			Transport: &client.Transport{MaxIdlePerHost: cfg.Clients + 4},
		},
	}
}

// Close lets go of idle connections.
func (h *History) Close() { h.http.CloseIdleConnections() }

// Counts returns the counts so far.
func (h *History) Counts() Counts {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts
}

func (h *History) now() int64 { return int64(time.Since(h.start)) }

// Run drives the clients until ctx ends and every client has returned.
func (h *History) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for client := range h.cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.client(ctx, client)
		}()
	}
	wg.Wait()
}

func (h *History) client(ctx context.Context, client int) {
	rng := rand.New(rand.NewPCG(uint64(client), uint64(h.start.UnixNano())))
	for seq := 0; ctx.Err() == nil; seq++ {
		eps := h.cfg.Endpoints()
		if len(eps) == 0 {
			sleep(ctx, 50*time.Millisecond)
			continue
		}
		ep := eps[rng.IntN(len(eps))]
		value := fmt.Sprintf("c%d-%d", client, seq)
		if n := rng.IntN(h.cfg.Keys + h.cfg.CASKeys); n >= h.cfg.Keys {
			h.casKeyOp(ctx, client, ep, h.casKey(n-h.cfg.Keys), value, rng)
		} else if key := h.plainKey(n); rng.Float64() < h.cfg.Reads {
			h.get(ctx, client, ep, key)
		} else {
			h.put(ctx, client, ep, key, value)
		}
		sleep(ctx, h.cfg.Think/2+time.Duration(rng.Int64N(int64(h.cfg.Think)+1)))
	}
}

func (h *History) plainKey(n int) string { return h.cfg.KeyPrefix + fmt.Sprintf("k%d", n) }
func (h *History) casKey(n int) string   { return h.cfg.KeyPrefix + fmt.Sprintf("cas%d", n) }

// apiKey names a client of the /v1 API: its endpoint, and whether it is
// pinned there.
type apiKey struct {
	ep     string
	pinned bool
}

// api is workload client cl's client of the member at ep. Even-numbered
// workload clients are pinned: their writes take the follower's forward
// to the leader; the others' go to the leader their member names (the
// client package's default), so the faults meet both paths. Reads stay on
// ep either way.
func (h *History) api(ep string, cl int) *client.Client {
	k := apiKey{ep, cl%2 == 0}
	h.clientsMu.Lock()
	defer h.clientsMu.Unlock()
	if h.clients == nil {
		h.clients = map[apiKey]*client.Client{}
	}
	c := h.clients[k]
	if c == nil {
		c = client.New(ep, h.http)
		c.Pinned = k.pinned
		h.clients[k] = c
	}
	return c
}

// casKeyOp does one op on a CAS key through /v1: a read, a put, a delete,
// or a read followed by a compare-and-swap from the value it read.
func (h *History) casKeyOp(ctx context.Context, cl int, ep, key, value string, rng *rand.Rand) {
	c := h.api(ep, cl)
	// Writes are not tied to ctx: ending the workload must not turn
	// requests in flight into ambiguous ones it caused itself.
	wctx := context.Background()
	switch p := rng.Float64(); {
	case p < h.cfg.Reads*0.6:
		h.get(ctx, cl, ep, key)
	case p < 0.6:
		in := Input{Kind: Put, Key: key, Value: value, Endpoint: ep}
		call := h.now()
		_, err := c.Put(wctx, key, value)
		h.recordWrite(cl, in, Output{}, err, call, &h.counts.PutsOK, &h.counts.PutsAmbiguous, &h.counts.PutsFailed)
	case p < 0.75:
		in := Input{Kind: Delete, Key: key, Endpoint: ep}
		call := h.now()
		existed, err := c.Delete(wctx, key)
		h.recordWrite(cl, in, Output{Found: existed}, err, call, &h.counts.DeletesOK, &h.counts.OtherAmbiguous, &h.counts.OtherFailed)
	case p < 0.85 && h.cfg.CASKeys >= 2:
		h.pairTxn(cl, ep, key, value, rng)
	default:
		cur, ok := h.get(ctx, cl, ep, key)
		if !ok {
			return
		}
		in := Input{Kind: CAS, Key: key, Value: value, Expect: cur.Value, ExpectFound: cur.Found, Endpoint: ep}
		var expect *string
		if cur.Found {
			expect = &cur.Value
		}
		call := h.now()
		swapped, err := c.CompareAndSwap(wctx, key, expect, value)
		counter := &h.counts.CASNotSwapped
		if swapped {
			counter = &h.counts.CASSwapped
		}
		h.recordWrite(cl, in, Output{Swapped: swapped}, err, call, counter, &h.counts.OtherAmbiguous, &h.counts.OtherFailed)
	}
}

// pairTxn writes key and another CAS key in one transaction. For the
// per-key model each half is a PUT; atomicity (both at one raft index, or
// neither) is what the watchers check.
func (h *History) pairTxn(cl int, ep, key, value string, rng *rand.Rand) {
	other := key
	for other == key {
		other = h.casKey(rng.IntN(h.cfg.CASKeys))
	}
	va, vb := value+"-a", value+"-b"
	call := h.now()
	_, err := h.api(ep, cl).Txn(context.Background(), client.Txn{Success: []client.Op{
		{Op: "put", Key: key, Value: &va}, {Op: "put", Key: other, Value: &vb},
	}})
	h.recordWrite(cl, Input{Kind: Put, Key: key, Value: va, Endpoint: ep}, Output{}, err, call, &h.counts.PairTxns, &h.counts.OtherAmbiguous, &h.counts.OtherFailed)
	h.recordWrite(cl, Input{Kind: Put, Key: other, Value: vb, Endpoint: ep}, Output{}, err, call, new(int), new(int), new(int))
	h.mu.Lock()
	h.pairs = append(h.pairs, [2]string{va, vb})
	h.mu.Unlock()
}

// recordWrite records a write done through package client by its outcome.
func (h *History) recordWrite(cl int, in Input, out Output, err error, call int64, ok, ambiguous, failed *int) {
	ret := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	var e *client.Error
	switch {
	case err == nil:
		*ok++
		h.record(cl, in, out, call, ret)
		if in.Kind == CAS && !out.Swapped {
			h.never(in.Value)
		}
	case errors.As(err, &e) && e.Outcome == client.Refused:
		*failed++
		if in.Kind == Put || in.Kind == CAS {
			h.never(in.Value)
		}
	default:
		*ambiguous++
		h.record(cl, in, Output{Unknown: true}, call, ret)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// put writes a plain key with the root route.
func (h *History) put(ctx context.Context, cl int, ep, key, value string) {
	in := Input{Kind: Put, Key: key, Value: value, Endpoint: ep}
	call := h.now()
	// The request is not tied to ctx: ending the workload must not turn
	// requests in flight into ambiguous ones it caused itself.
	_, err := h.api(ep, cl).RootPut(context.Background(), key, value)
	h.recordWrite(cl, in, Output{}, err, call, &h.counts.PutsOK, &h.counts.PutsAmbiguous, &h.counts.PutsFailed)
}

func (h *History) get(ctx context.Context, client int, ep, key string) (Output, bool) {
	in := Input{Kind: Get, Key: key, Endpoint: ep}
	call := h.now()
	out, ok := h.read(ctx, ep, key)
	ret := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if !ok {
		h.counts.GetsFailed++ // a read that failed has no effect
		return out, false
	}
	h.counts.GetsOK++
	h.record(client, in, out, call, ret)
	return out, true
}

// read does one linearizable GET (on /v1 for CAS keys); ok is false if it
// got no answer.
func (h *History) read(ctx context.Context, ep, key string) (out Output, ok bool) {
	if strings.HasPrefix(key, h.cfg.KeyPrefix+"cas") {
		kv, err := h.api(ep, 0).Get(ctx, key, false)
		switch {
		case err == nil && kv.Value != nil:
			return Output{Value: *kv.Value, Found: true}, true
		case client.IsNotFound(err):
			return Output{}, true
		}
		return Output{}, false
	}
	value, found, err := h.api(ep, 0).RootGet(ctx, key)
	if err != nil {
		return Output{}, false
	}
	return Output{Value: value, Found: found}, true
}

// never notes a value that was certainly not written; the caller holds h.mu.
func (h *History) never(value string) {
	if h.neverWritten == nil {
		h.neverWritten = map[string]bool{}
	}
	h.neverWritten[value] = true
}

// record appends an operation; the caller holds h.mu.
func (h *History) record(client int, in Input, out Output, call, ret int64) {
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call, Return: ret})
}

// FinalReads reads every key from every endpoint, retrying each read until
// it is answered or ctx ends. Run them after healing every fault: they are
// what shows a lost write.
func (h *History) FinalReads(ctx context.Context, endpoints []string) error {
	for i, ep := range endpoints {
		client := h.cfg.Clients + i
		for k := range h.cfg.Keys + h.cfg.CASKeys {
			key := h.plainKey(k)
			if k >= h.cfg.Keys {
				key = h.casKey(k - h.cfg.Keys)
			}
			for {
				call := h.now()
				rctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
				out, ok := h.read(rctx, ep, key)
				cancel()
				if ok {
					h.mu.Lock()
					h.counts.FinalReads++
					h.record(client, Input{Kind: Get, Key: key, Endpoint: ep, Final: true}, out, call, h.now())
					h.mu.Unlock()
					break
				}
				if ctx.Err() != nil {
					return fmt.Errorf("final read of %s from %s: no answer: %w", key, ep, ctx.Err())
				}
				sleep(ctx, 100*time.Millisecond)
			}
		}
	}
	return nil
}
