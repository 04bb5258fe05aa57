package main

import (
	"maps"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The benchmarks run a real 3-member cluster in this process: WAL with fsync
// in a temp dir, rafthttp on loopback, clients over HTTP with keep-alive,
// 64 concurrent clients (b.SetParallelism on 2 cores). Production timing
// (100 ms tick).
//
//	go test -run '^$' -bench . -benchtime 20000x

func benchCluster(b *testing.B) (*testCluster, *http.Client, int) {
	c := newTestCluster(b, 3, func(cfg *config) { cfg.tick = 100 * time.Millisecond })
	lead := c.leader()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	b.Cleanup(client.CloseIdleConnections)
	return c, client, lead
}

func benchRequests(b *testing.B, client *http.Client, method string, url func(i int64) string, body string, want int) {
	var seq, failed atomic.Int64
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest(method, url(seq.Add(1)), strings.NewReader(body))
			resp, err := client.Do(req)
			if err != nil || resp.StatusCode != want {
				failed.Add(1)
			}
			if err == nil {
				resp.Body.Close()
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d requests failed", n, b.N)
	}
}

// BenchmarkPutLeader: PUTs of 100-byte values sent to the leader.
func BenchmarkPutLeader(b *testing.B) {
	c, client, lead := benchCluster(b)
	base := c.url(lead, "/k")
	benchRequests(b, client, "PUT", func(i int64) string { return base + strconv.FormatInt(i%10000, 10) }, strings.Repeat("v", 100), http.StatusNoContent)
}

// BenchmarkPutFollower: PUTs sent to a follower (forwarded by raft).
func BenchmarkPutFollower(b *testing.B) {
	c, client, lead := benchCluster(b)
	base := c.url((lead+1)%3, "/k")
	benchRequests(b, client, "PUT", func(i int64) string { return base + strconv.FormatInt(i%10000, 10) }, strings.Repeat("v", 100), http.StatusNoContent)
}

// BenchmarkGetLinearizableFollower: linearizable GETs on a follower
// (ReadIndex through the leader, shared by concurrent reads).
func BenchmarkGetLinearizableFollower(b *testing.B) {
	c, client, lead := benchCluster(b)
	c.mustPut(lead, "hot", "value")
	base := c.url((lead+1)%3, "/hot")
	benchRequests(b, client, "GET", func(int64) string { return base }, "", http.StatusOK)
}

// BenchmarkGetSerializable: local reads.
func BenchmarkGetSerializable(b *testing.B) {
	c, client, lead := benchCluster(b)
	c.mustPut(lead, "hot", "value")
	base := c.url((lead+1)%3, "/hot?consistency=serializable")
	benchRequests(b, client, "GET", func(int64) string { return base }, "", http.StatusOK)
}

// BenchmarkSnapshotCopy measures the only part of a snapshot that pauses
// apply: copying the state (here 100,000 keys of 100-byte values).
func BenchmarkSnapshotCopy(b *testing.B) {
	s := newKVStore(nil, 1, 1, nil)
	for i := range 100000 {
		s.kv["key-"+strconv.Itoa(i)] = strings.Repeat("v", 100)
	}
	b.ResetTimer()
	for range b.N {
		_ = maps.Clone(s.kv)
	}
}

// BenchmarkSnapshotEncode measures the background part: encoding 100,000 keys.
func BenchmarkSnapshotEncode(b *testing.B) {
	kv := map[string]string{}
	for i := range 100000 {
		kv["key-"+strconv.Itoa(i)] = strings.Repeat("v", 100)
	}
	b.ResetTimer()
	for range b.N {
		_ = encodeSnapshot(1, map[uint64]string{1: "http://127.0.0.1:1"}, nil, kv)
	}
}
