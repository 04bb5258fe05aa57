package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// clients are the two ways a Client sends: through net/http (any other
// http.Client) and around it (Transport.call, for a plain http.Client on
// this package's Transport).
var clients = map[string]func(srv *httptest.Server) *http.Client{
	"net/http":  func(srv *httptest.Server) *http.Client { return srv.Client() },
	"Transport": func(*httptest.Server) *http.Client { return &http.Client{Transport: NewTransport()} },
}

func TestOutcomes(t *testing.T) {
	for name, hc := range clients {
		t.Run(name, func(t *testing.T) { testOutcomes(t, hc) })
	}
}

func testOutcomes(t *testing.T, hc func(*httptest.Server) *http.Client) {
	answer := func(status int, body string) *Client {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(status)
			w.Write([]byte(body))
		}))
		c := hc(srv)
		t.Cleanup(func() { c.CloseIdleConnections(); srv.Close() })
		return New(srv.URL, c)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		status  int
		body    string
		outcome Outcome
		code    string
	}{
		{"timeout", 503, `{"error":"timeout","message":"m"}`, Unknown, "timeout"},
		{"leader changed", 503, `{"error":"leader_changed","message":"m"}`, Unknown, "leader_changed"},
		{"no leader", 503, `{"error":"no_leader","message":"m"}`, Refused, "no_leader"},
		{"bad request", 400, `{"error":"bad_txn","message":"m"}`, Refused, "bad_txn"},
		{"precondition", 412, `{"error":"precondition_failed","message":"m"}`, Refused, "precondition_failed"},
		{"internal, not JSON", 500, "boom\n", Unknown, ""},
	} {
		_, err := answer(tc.status, tc.body).Put(ctx, "k", "v")
		var e *Error
		if !errors.As(err, &e) || e.Outcome != tc.outcome || e.Code != tc.code || e.Status != tc.status {
			t.Errorf("%s: %v", tc.name, err)
		}
		// A read that fails never leaves anything unknown.
		if _, err := answer(tc.status, tc.body).Get(ctx, "k", false); !errors.As(err, &e) || e.Outcome != Refused {
			t.Errorf("%s read: %v", tc.name, err)
		}
	}
	// A write answered 2xx took effect even if its answer cannot be read.
	var e2 *Error
	if _, err := answer(200, "not json").Put(ctx, "k", "v"); !errors.As(err, &e2) || e2.Outcome != Unknown {
		t.Errorf("undecodable answer to a write: %v", err)
	}
	badIndex := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Mod-Index", "nine")
		w.Write([]byte(`{"key":"k","create_index":1,"mod_index":9,"version":1,"index":9}`))
	}))
	defer badIndex.Close()
	if _, err := New(badIndex.URL, hc(badIndex)).Put(ctx, "k", "v"); !errors.As(err, &e2) || e2.Outcome != Unknown || !strings.Contains(e2.Message, "X-") {
		t.Errorf("a write answered with an index header that is not a number: %v", err)
	}
	if _, err := answer(200, "not json").Status(ctx); !errors.As(err, &e2) || e2.Outcome != Refused {
		t.Errorf("undecodable answer to a read: %v", err)
	}
	if _, err := answer(412, `{"error":"precondition_failed","message":"m"}`).Put(ctx, "k", "v", IfAbsent()); !IsPreconditionFailed(err) {
		t.Errorf("IsPreconditionFailed: %v", err)
	}

	// Nobody listening: the request was never sent.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	var e *Error
	if _, err := New("http://"+addr, nil).Put(ctx, "k", "v"); !errors.As(err, &e) || e.Outcome != Refused || e.Status != 0 {
		t.Errorf("dial refused: %v", err)
	}
	// The connection drops after the request was sent: unknown.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, _ := w.(http.Hijacker).Hijack()
		c.Close()
	}))
	defer srv.Close()
	for name, hc := range map[string]*http.Client{"net/http": srv.Client(), "Transport": nil} {
		if _, err := New(srv.URL, hc).Delete(ctx, "k"); !errors.As(err, &e) || e.Outcome != Unknown {
			t.Errorf("%s: connection lost after sending: %v", name, err)
		}
	}
}

func TestRequestsAndAnswers(t *testing.T) {
	for name, hc := range clients {
		t.Run(name, func(t *testing.T) { testRequestsAndAnswers(t, hc) })
	}
}

func testRequestsAndAnswers(t *testing.T, hc func(*httptest.Server) *http.Client) {
	var got []string
	var agents []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("If-Match")+r.Header.Get("If-None-Match"))
		agents = append(agents, r.UserAgent())
		switch r.URL.Path {
		case "/4":
			w.WriteHeader(http.StatusNoContent)
		case "/root key":
			if r.Method == http.MethodPut {
				w.Header().Set("X-Raft-Index", "12")
				w.WriteHeader(http.StatusNoContent)
				return
			}
			w.Write([]byte("val"))
		case "/absent":
			http.Error(w, "key not found", http.StatusNotFound)
		case "/v1/txn":
			w.Write([]byte(`{"succeeded":true,"index":9,"results":[]}`))
		case "/v1/kv/a b/c":
			if r.Method == http.MethodDelete {
				w.Write([]byte(`{"deleted":1,"index":9}`))
				return
			}
			if r.Method == http.MethodGet {
				w.Header().Set("X-Create-Index", "3")
				w.Header().Set("X-Mod-Index", "9")
				w.Header().Set("X-Version", "2")
				w.Write([]byte("v"))
				return
			}
			// A PUT: the indexes in headers, and a body that says
			// otherwise, so the test sees which the client read.
			w.Header().Set("X-Create-Index", "3")
			w.Header().Set("X-Mod-Index", "10")
			w.Header().Set("X-Version", "3")
			w.Write([]byte(`{"key":"a b/c","create_index":1,"mod_index":1,"version":1,"index":10}`))
		case "/v1/kv/old":
			// A member that answers a PUT in JSON alone.
			w.Write([]byte(`{"key":"old","create_index":4,"mod_index":11,"version":5,"index":11}`))
		}
	}))
	defer srv.Close()
	c := New(srv.URL, hc(srv))
	defer c.HTTP.CloseIdleConnections()
	ctx := context.Background()
	kv, err := c.Get(ctx, "a b/c", true)
	if err != nil || kv.Key != "a b/c" || kv.Value == nil || *kv.Value != "v" || kv.ValueBase64 != nil || kv.CreateIndex != 3 || kv.ModIndex != 9 || kv.Version != 2 {
		t.Fatalf("Get: %+v %v", kv, err)
	}
	if kv, err := c.Put(ctx, "a b/c", "v", IfModIndex(9)); err != nil || *kv != (KV{Key: "a b/c", CreateIndex: 3, ModIndex: 10, Version: 3}) {
		t.Fatalf("Put: %+v %v", kv, err)
	}
	if kv, err := c.Put(ctx, "old", "v"); err != nil || *kv != (KV{Key: "old", CreateIndex: 4, ModIndex: 11, Version: 5}) {
		t.Fatalf("Put answered in JSON alone: %+v %v", kv, err)
	}
	if ok, err := c.Delete(ctx, "a b/c"); !ok || err != nil {
		t.Fatalf("Delete: %v %v", ok, err)
	}
	old := "v"
	if ok, err := c.CompareAndSwap(ctx, "x", &old, "w"); !ok || err != nil {
		t.Fatalf("CAS: %v %v", ok, err)
	}
	if err := c.AddMember(ctx, 4, "http://127.0.0.1:42379"); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveMember(ctx, 4); err != nil {
		t.Fatal(err)
	}
	if n, err := c.RootPut(ctx, "root key", "val"); n != 12 || err != nil {
		t.Fatalf("RootPut: %d %v", n, err)
	}
	if v, found, err := c.RootGet(ctx, "root key"); v != "val" || !found || err != nil {
		t.Fatalf("RootGet: %q %v %v", v, found, err)
	}
	if _, found, err := c.RootGet(ctx, "absent"); found || err != nil {
		t.Fatalf("RootGet of an absent key: %v %v", found, err)
	}
	want := []string{"GET /v1/kv/a%20b/c?consistency=serializable ", "PUT /v1/kv/a%20b/c 9", "PUT /v1/kv/old ", "DELETE /v1/kv/a%20b/c ", "POST /v1/txn ",
		"POST /4 ", "DELETE /4 ", "PUT /root%20key ", "GET /root%20key ", "GET /absent "}
	for i := range want {
		if i >= len(got) || got[i] != want[i] {
			t.Fatalf("requests: %q, want %q", got, want)
		}
	}
	// What goes around net/http says so; RootGet always goes through it.
	if _, fast := c.HTTP.Transport.(*Transport); fast && (agents[0] != userAgent || agents[len(agents)-1] == userAgent) {
		t.Fatalf("user agents %q: want %s on every call but RootGet's", agents, userAgent)
	}
}

func TestStreamPrefix(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Last-Event-ID") != "7" || r.Header.Get("Accept") != "text/event-stream" || r.URL.Query().Get("prefix") != "p/" {
			http.Error(w, "bad request", 400)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Write([]byte(": watching\n\nid: 8\ndata: [{\"type\":\"put\",\"index\":8,\"key\":\"p/a\",\"value\":\"1\"}]\n\n" +
			"id: 9\ndata: [{\"type\":\"delete\",\"index\":9,\"key\":\"p/a\",\"mod_index\":9},{\"type\":\"delete\",\"index\":9,\"key\":\"p/b\",\"mod_index\":9}]\n\n" +
			"event: compacted\ndata: {\"error\":\"compacted\",\"oldest_index\":20,\"message\":\"gone\"}\n\n"))
	}))
	defer srv.Close()
	var got []string
	err := New(srv.URL, srv.Client()).StreamPrefix(context.Background(), "p/", 7, func(index uint64, evs []Event) error {
		for _, e := range evs {
			got = append(got, fmt.Sprintf("%d %s %s", index, e.Type, e.Key))
		}
		return nil
	})
	var e *Error
	if !errors.As(err, &e) || e.Code != "compacted" || e.Status != http.StatusGone {
		t.Fatalf("end of stream: %v", err)
	}
	if strings.Join(got, ",") != "8 put p/a,9 delete p/a,9 delete p/b" {
		t.Fatalf("events: %v", got)
	}
}
