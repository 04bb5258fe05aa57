package faults

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"raftexample/internal/cluster"
	"raftexample/internal/workload"
)

// badRequest is one malformed request and the status it must get.
type badRequest struct {
	class, method, target, body string
	code                        int
}

func badRequests() []badRequest {
	huge := strings.Repeat("x", 2<<20) // above the default --max-request-bytes (1.5 MiB)
	return []badRequest{
		{"bad id", "POST", "/abc", "http://127.0.0.1:1", 400},
		{"bad id", "POST", "/0", "http://127.0.0.1:1", 400},
		{"bad id", "POST", "/-1", "http://127.0.0.1:1", 400},
		{"bad id", "POST", "/99999999999999999999999", "http://127.0.0.1:1", 400},
		{"bad id", "POST", "/1", "http://127.0.0.1:1", 400}, // already a member
		{"bad id", "DELETE", "/x", "", 400},
		{"bad id", "DELETE", "/0", "", 400},
		{"bad id", "DELETE", "/", "", 400},
		{"bad id", "DELETE", "/99", "", 404},
		{"bad url", "POST", "/9", "", 400},
		{"bad url", "POST", "/9", "not a url", 400},
		{"bad url", "POST", "/9", "ftp://127.0.0.1:1", 400},
		{"bad url", "POST", "/9", "http://127.0.0.1", 400},
		{"bad url", "POST", "/9", "http://127.0.0.1:1/path", 400},
		{"bad url", "POST", "/9", "http://127.0.0.1:99999", 400},
		{"huge body", "PUT", "/big", huge, 413},
		{"huge body", "POST", "/9", huge, 413},
		{"odd method", "PATCH", "/k", "v", 405},
		{"odd method", "OPTIONS", "/k", "", 405},
		{"odd method", "TRACE", "/k", "", 405},
		{"odd method", "BREW", "/k", "", 405},
		{"odd method", "PUT", "/v1/status", "v", 405},
		{"invalid percent-encoding", "GET", "/bad%zz", "", 400},
		{"invalid percent-encoding", "PUT", "/k%", "v", 400},
		{"invalid percent-encoding", "GET", "/k?a=%zz", "", 400},
		{"empty key", "PUT", "/", "v", 400},
		{"empty key", "GET", "/", "", 400},
		{"unknown option", "GET", "/k?bogus=1", "", 400},
		{"unknown option", "GET", "/k?consistency=eventual", "", 400},
		{"unknown option", "PUT", "/k?consistency=serializable", "v", 400},
		{"unknown option", "POST", "/9?force=1", "http://127.0.0.1:1", 400},
		{"unknown route", "GET", "/v1/nope", "", 404},
	}
}

// send writes the request as raw bytes (so that malformed targets reach the
// server as they are) and returns the status code and body.
func send(addr string, r badRequest) (int, string, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", r.method, r.target, addr, len(r.body), r.body)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// Every class of malformed request gets a 4xx with a one-line message from
// every member, while a workload runs; afterwards the membership is
// unchanged and the history is linearizable.
func TestBadInputSweep(t *testing.T) {
	dir, err := os.MkdirTemp(os.Getenv("RAFTEXAMPLE_FAULT_DIR"), "raftexample-faults-bad-input-")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("logs, data and history.html kept in %s", dir)
		} else {
			os.RemoveAll(dir)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.Options{Binary: serverBin, Dir: dir, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close() // runs before the cleanup above

	if _, err := c.Leader(ctx); err != nil {
		t.Fatal(err)
	}
	h := workload.NewHistory(workload.Config{Endpoints: c.ClientURLs, Clients: 4, Keys: 8})
	defer h.Close()
	wctx, stop := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		h.Run(wctx)
	}()
	for _, id := range c.IDs() {
		addr := strings.TrimPrefix(c.ClientURL(id), "http://")
		for _, r := range badRequests() {
			code, body, err := send(addr, r)
			switch {
			case err != nil:
				t.Errorf("member %d, %s: %s %s: %v", id, r.class, r.method, r.target, err)
			case code != r.code:
				t.Errorf("member %d, %s: %s %s: %d %q, want %d", id, r.class, r.method, r.target, code, firstLine(body), r.code)
			case r.class == "invalid percent-encoding" && !strings.Contains(r.target, "?"):
				// Go's HTTP server refuses a malformed request target before
				// any handler runs, with a fixed "400 Bad Request".
				if !strings.HasPrefix(body, "400 Bad Request") {
					t.Errorf("member %d, %s: %s %s: body %q", id, r.class, r.method, r.target, body)
				}
			case strings.Count(body, "\n") != 1 || len(body) < 10:
				t.Errorf("member %d, %s: %s %s: the error should be one line that says what is wrong, got %q", id, r.class, r.method, r.target, body)
			}
		}
	}
	time.Sleep(time.Second) // the workload goes on a little after the sweep
	stop()
	<-ran
	for _, id := range c.IDs() {
		st, err := c.Status(ctx, id)
		if err != nil || len(st.Members) != 3 {
			t.Fatalf("member %d after the sweep: %+v %v", id, st, err)
		}
	}
	if u := c.Unexpected(); len(u) > 0 {
		t.Fatalf("members exited: %v", u)
	}
	fctx, fcancel := context.WithTimeout(ctx, 30*time.Second)
	defer fcancel()
	if err := h.FinalReads(fctx, c.ClientURLs()); err != nil {
		t.Fatal(err)
	}
	res := h.Check(time.Minute)
	t.Log(res)
	if !res.OK() || res.Counts.PutsOK == 0 {
		res.Report(dir)
		t.Fatalf("after the sweep: %s", res)
	}
}

func firstLine(s string) string { return strings.SplitN(s, "\n", 2)[0] }
