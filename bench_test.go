package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
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

// tree1M is a key space of 1M keys of 100-byte values, built once.
var tree1M = sync.OnceValue(func() keyTree {
	keys := newKeyTree()
	v := strings.Repeat("v", 100)
	for i := range 1_000_000 {
		keys.Put(testItem(fmt.Sprintf("key-%07d", i), v, uint64(i+1), uint64(i+1), 1))
	}
	return keys
})

// BenchmarkSnapshotClone1M measures what taking a snapshot of 1M keys costs
// the apply goroutine: the clone, then the first put after it (which copies
// the path it changes out of the shared tree).
func BenchmarkSnapshotClone1M(b *testing.B) {
	keys := tree1M().Clone()
	b.ResetTimer()
	for i := range b.N {
		_ = keys.Clone()
		applyOp(keys, uint64(2_000_000+i), &op{kind: opPut, key: fmt.Sprintf("key-%07d", i%1_000_000), value: "x"}, nil)
	}
}

// BenchmarkSnapshotEncode measures the background part: encoding 100,000 keys.
func BenchmarkSnapshotEncode(b *testing.B) {
	keys := newKeyTree()
	for i := range 100000 {
		keys.Put(testItem("key-"+strconv.Itoa(i), strings.Repeat("v", 100), 1, 1, 1))
	}
	st := &snapshotState{index: 1, members: map[uint64]string{1: "http://127.0.0.1:1"}, keys: keys}
	b.ResetTimer()
	for range b.N {
		_ = encodeSnapshot(st)
	}
}

// BenchmarkApply measures applying one op of each kind to a 1M-key store.
func BenchmarkApply(b *testing.B) {
	v := strings.Repeat("v", 100)
	key := func(i int) string { return fmt.Sprintf("key-%07d", (i*7919)%1_000_000) }
	for _, bc := range []struct {
		name string
		op   func(i int) *op
	}{
		{"put", func(i int) *op { return &op{kind: opPut, key: key(i), value: v} }},
		{"delete", func(i int) *op { return &op{kind: opDelete, key: key(i)} }},
		{"txn-cas", func(i int) *op {
			return &op{kind: opTxn, txn: &txn{
				compares: []compare{{key: key(i), target: cmpExists, op: cmpEqual, num: 1}},
				success:  []op{{kind: opPut, key: key(i), value: v}},
				failure:  []op{{kind: opGet, key: key(i)}},
			}}
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			keys := tree1M().Clone()
			ops := make([]*op, 4096)
			for i := range ops {
				ops[i] = decoded(bc.op(i)) // as apply gets them, from a record
			}
			b.ResetTimer()
			for i := range b.N {
				applyOp(keys, uint64(2_000_000+i), ops[i%len(ops)], nil)
			}
		})
	}
}

// BenchmarkList1kOf1M measures a listing of 1,000 keys out of 1M.
func BenchmarkList1kOf1M(b *testing.B) {
	keys := tree1M()
	b.ResetTimer()
	for i := range b.N {
		n := 0
		ascendPrefix(keys, "key-", fmt.Sprintf("key-%07d", (i*1000)%999_000), func(*item) bool {
			n++
			return n < 1000
		})
		if n != 1000 {
			b.Fatalf("listed %d", n)
		}
	}
}

// BenchmarkEntryCodec measures packing 64 PUTs of 256-byte values into one
// entry and decoding it again, as the proposer and apply do.
func BenchmarkEntryCodec(b *testing.B) {
	v := strings.Repeat("v", 256)
	ops := make([]op, 64)
	for i := range ops {
		ops[i] = op{kind: opPut, reqID: 1<<48 + uint64(i), key: fmt.Sprintf("bench/key-%07d", i), value: v}
	}
	b.Run("encode", func(b *testing.B) {
		buf := make([]byte, 0, 64<<10)
		for range b.N {
			buf = buf[:0]
			for i := range ops {
				buf = appendOp(buf, &ops[i])
			}
		}
		b.ReportMetric(float64(b.N*len(ops))/b.Elapsed().Seconds(), "ops/s")
	})
	b.Run("decode", func(b *testing.B) {
		var data []byte
		for i := range ops {
			data = appendOp(data, &ops[i])
		}
		b.SetBytes(int64(len(data)))
		for range b.N {
			n := 0
			if err := decodeOps(data, func(*op) { n++ }); err != nil || n != len(ops) {
				b.Fatalf("decoded %d: %v", n, err)
			}
		}
		b.ReportMetric(float64(b.N*len(ops))/b.Elapsed().Seconds(), "ops/s")
	})
}

// BenchmarkSnapshotDecode measures reading back a snapshot of 100,000 keys
// (what a restart or an install from the leader does before restore).
func BenchmarkSnapshotDecode(b *testing.B) {
	keys := newKeyTree()
	for i := range 100000 {
		keys.Put(testItem("key-"+strconv.Itoa(i), strings.Repeat("v", 100), 1, 1, 1))
	}
	data := encodeSnapshot(&snapshotState{index: 1, members: map[uint64]string{1: "http://127.0.0.1:1"}, keys: keys})
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for range b.N {
		if st, err := decodeSnapshot(data); err != nil || st.keys.Len() != 100000 {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandler measures the client API's handler path in process,
// without the network: routing, the metrics wrapper, and for a
// serializable GET the store read; for a PUT also raft and the fsync of a
// single member.
func BenchmarkHandler(b *testing.B) {
	c := newTestCluster(b, 1, nil)
	c.leader()
	c.mustPut(0, "bench-key", strings.Repeat("v", 256))
	h := c.nodes[0].api.Handler
	for _, bc := range []struct {
		name, method, target, body string
		want                       int
	}{
		{"get-serializable", "GET", "/bench-key?consistency=serializable", "", 200},
		{"v1-get-serializable", "GET", "/v1/kv/bench-key?consistency=serializable", "", 200},
		{"get-linearizable", "GET", "/bench-key", "", 200},
		{"put", "PUT", "/bench-key", strings.Repeat("v", 256), 204},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetParallelism(16)
			var failed atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					w := httptest.NewRecorder()
					h.ServeHTTP(w, httptest.NewRequest(bc.method, bc.target, strings.NewReader(bc.body)))
					if w.Code != bc.want {
						failed.Add(1)
					}
				}
			})
			if n := failed.Load(); n > 0 {
				b.Fatalf("%d of %d requests failed", n, b.N)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}

// BenchmarkWatchPublish measures what apply pays the watch window per
// entry once the window is full (--watch-history at its default).
func BenchmarkWatchPublish(b *testing.B) {
	h := newWatchHub(10000)
	it := testItem("k", "v", 0, 0, 0)
	for i := range uint64(20000) {
		h.publish(i+1, []event{{index: i + 1, it: it}})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range uint64(b.N) {
		h.publish(20001+i, []event{{index: 20001 + i, it: it}})
	}
}

// BenchmarkReplay1M measures what a restart pays per replayed entry: the
// real apply path (decode, tree, watch window, waits) on a 1M-key store,
// one entry of two puts of 256-byte values to keys spread over the store,
// as the long log a crashed member replays holds. Its keys, unlike
// BenchmarkApply's few thousand, do not fit in the caches.
func BenchmarkReplay1M(b *testing.B) {
	s := newKVStore(zap.NewNop(), 1, 0, nil, nil, noPeers{}, newMembership(), 10000)
	s.keys = tree1M().Clone()
	v := strings.Repeat("v", 256)
	ents := make([]*raftpb.Entry, 1<<16)
	x := uint64(1)
	for i := range ents {
		var data []byte
		for range 2 {
			x = x*6364136223846793005 + 1442695040888963407 // spread the keys
			data = appendOp(data, &op{kind: opPut, key: fmt.Sprintf("key-%07d", (x>>33)%1_000_000), value: v, reqID: x})
		}
		ents[i] = &raftpb.Entry{Data: data}
	}
	index := uint64(2_000_000)
	next := func(e *raftpb.Entry) *raftpb.Entry {
		index++
		return &raftpb.Entry{Index: new(index), Data: e.Data}
	}
	for _, e := range ents { // the clone's first writes copy the tree's nodes
		s.apply(next(e))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		s.apply(next(ents[i%len(ents)]))
	}
}

// decoded is o after a trip through its record, as apply gets it.
func decoded(o *op) *op {
	var out *op
	if err := decodeOps(appendOp(nil, o), func(d *op) { c := *d; out = &c }); err != nil {
		panic(err)
	}
	return out
}

// BenchmarkWALCheckpointRead is what a start from a WAL checkpoint does with
// the log before it (checkpoint.go): the scan for terms and checkpoints,
// then the read-back, on 32 MiB of entries of two 256-byte puts each. The
// bytes per second are the log's.
func BenchmarkWALCheckpointRead(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "wal")
	w, err := wal.Create(zap.NewNop(), dir, walMetadata(1))
	if err != nil {
		b.Fatal(err)
	}
	v := strings.Repeat("v", 256)
	var size int64
	var last uint64
	for size < 32<<20 {
		var ents []*raftpb.Entry
		for range 64 {
			last++
			var data []byte
			for k := range 2 {
				data = appendOp(data, &op{kind: opPut, key: fmt.Sprintf("key-%07d-%d", last, k), value: v, reqID: last})
			}
			ents = append(ents, &raftpb.Entry{Index: new(last), Term: new(uint64(2)), Data: data})
			size += int64(len(data))
		}
		if err := w.Save(&raftpb.HardState{Term: new(uint64(2)), Commit: new(last)}, ents); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.SaveSnapshot(&walpb.Snapshot{Index: new(last), Term: new(uint64(2)), ConfState: &raftpb.ConfState{Voters: []uint64{1}}}); err != nil {
		b.Fatal(err)
	}
	w.Close()
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		sc, err := scanWAL(dir, 0, 0)
		if err != nil {
			b.Fatal(err)
		}
		sc.startRecorded = true // the log starts at 0 here, with no snapshot
		cp, ok := sc.newestCheckpoint()
		if !ok || cp.index != last {
			b.Fatalf("checkpoint %v %v, want %d", cp, ok, last)
		}
		n := 0
		if err := streamWALEntries(dir, 0, cp.index, sc.runs.at, replayChunkBytes, func(ents []*raftpb.Entry) bool { n += len(ents); return true }); err != nil || uint64(n) != last {
			b.Fatalf("read back %d of %d entries: %v", n, last, err)
		}
	}
}
