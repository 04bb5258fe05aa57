package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"raftexample/internal/cluster"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func check(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	code := run(context.Background(), args, &out, &out)
	return code, out.String()
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--endpoints", "127.0.0.1:12380"},
		{"--endpoints", "http://127.0.0.1:12380/path"},
		{"--endpoints", "http://127.0.0.1:12380", "--duration", "0s"},
		{"--endpoints", "http://127.0.0.1:12380", "--clients", "0"},
		{"--endpoints", "http://127.0.0.1:12380", "--cas-keys", "-2"},
		{"--endpoints", "http://127.0.0.1:12380", "extra"},
		{"--bogus"},
	} {
		if code, out := check(t, args...); code != exitUsage || out == "" {
			t.Errorf("%q: exit %d, output %q; want %d and a message", args, code, out, exitUsage)
		}
	}
}

// A cluster that answers nothing gives no verdict either way.
func TestNothingToCheckIsInconclusive(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no leader", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	dir := t.TempDir()
	code, out := check(t, "--endpoints", srv.URL, "--duration", "500ms", "--clients", "2", "--final-timeout", "1s", "--out", dir)
	if code != exitInconclusive || !strings.Contains(out, "INCONCLUSIVE") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}

// staleKV answers GET with the value before the latest PUT: the kind of
// store (reads from a lagging replica) the checker exists to catch.
type staleKV struct {
	mu         sync.Mutex
	cur, older map[string]string
}

func (s *staleKV) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := r.URL.Path
	switch r.Method {
	case http.MethodPut:
		body, _ := io.ReadAll(r.Body)
		if v, ok := s.cur[key]; ok {
			s.older[key] = v
		}
		s.cur[key] = string(body)
		w.WriteHeader(http.StatusNoContent)
	case http.MethodGet:
		v, ok := s.older[key]
		if !ok {
			v, ok = s.cur[key]
		}
		if !ok {
			http.Error(w, "key not found", http.StatusNotFound)
			return
		}
		io.WriteString(w, v)
	}
}

func TestStaleReadsAreCaught(t *testing.T) {
	srv := httptest.NewServer(&staleKV{cur: map[string]string{}, older: map[string]string{}})
	defer srv.Close()
	dir := t.TempDir()
	// The fake knows the root routes only.
	code, out := check(t, "--endpoints", srv.URL, "--duration", "1s", "--clients", "4", "--keys", "3", "--cas-keys", "0", "--out", dir)
	if code != exitViolation || !strings.Contains(out, "NOT LINEARIZABLE") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if _, err := os.Stat(dir + "/history.html"); err != nil {
		t.Fatalf("no visualization: %v", err)
	}
}

func TestRealClusterPasses(t *testing.T) {
	c := cluster.StartTest(t, cluster.Options{})
	code, out := check(t, "--endpoints", strings.Join(c.ClientURLs(), ","), "--duration", "2s", "--clients", "4")
	if code != exitOK || !strings.Contains(out, "LINEARIZABLE") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	t.Log(out)
}
