// Command check verifies a running raftexample cluster: it drives
// concurrent PUT and GET requests against the given members for a while,
// reads every key back from every member, and checks the whole history for
// linearizability with porcupine. It exits 0 only if the history is
// linearizable and no acknowledged write was lost.
//
//	go run ./cmd/check --endpoints http://127.0.0.1:12380,http://127.0.0.1:22380,http://127.0.0.1:32380 --duration 30s
//
// It writes only keys under --prefix (a fresh one per run by default).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/anishathalye/porcupine"

	"raftexample/internal/workload"
)

// Exit statuses.
const (
	exitOK           = 0 // linearizable
	exitViolation    = 1 // not linearizable, or an acknowledged write lost
	exitUsage        = 2
	exitInconclusive = 3 // the check could not decide (no progress, final reads failed, checker timed out)
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	endpoints := fs.String("endpoints", "", "comma-separated client URLs of the members to check (required)")
	duration := fs.Duration("duration", 30*time.Second, "how long to run the workload")
	clients := fs.Int("clients", 8, "concurrent clients")
	keys := fs.Int("keys", 10, "distinct keys for PUT and GET on the root routes")
	casKeys := fs.Int("cas-keys", -1, "distinct keys for GET, PUT, DELETE and compare-and-swap on /v1 (default: half of --keys, at least 1; 0 for none)")
	prefix := fs.String("prefix", "", "key prefix (default: check/<start time>/)")
	timeout := fs.Duration("timeout", 3*time.Second, "per-request timeout")
	finalTimeout := fs.Duration("final-timeout", 30*time.Second, "how long the final reads may take")
	checkTimeout := fs.Duration("check-timeout", 2*time.Minute, "time limit for the linearizability search")
	out := fs.String("out", "", "directory for verdict.txt and history.html (default: a temp dir, kept only on failure)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	eps, err := parseEndpoints(*endpoints)
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "check: %v\n", err)
		return exitUsage
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "check: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	case *duration <= 0 || *timeout <= 0 || *finalTimeout <= 0 || *checkTimeout <= 0:
		fmt.Fprintln(stderr, "check: --duration, --timeout, --final-timeout and --check-timeout must be positive")
		return exitUsage
	case *clients < 1 || *clients > 1000 || *keys < 1 || *keys > 100000 || *casKeys < -1 || *casKeys > 100000:
		fmt.Fprintln(stderr, "check: --clients must be 1..1000, --keys 1..100000 and --cas-keys 0..100000")
		return exitUsage
	}
	switch *casKeys {
	case -1:
		*casKeys = 0 // the workload's default
	case 0:
		*casKeys = -1 // none
	}
	if *prefix == "" {
		*prefix = fmt.Sprintf("check/%d/", time.Now().UnixNano())
	}

	fmt.Fprintf(stdout, "checking %d members for %v: %d clients, %d keys under %q\n", len(eps), *duration, *clients, *keys, *prefix)
	h := workload.NewHistory(workload.Config{
		Endpoints: func() []string { return eps },
		Clients:   *clients, Keys: *keys, CASKeys: *casKeys, KeyPrefix: *prefix, Timeout: *timeout,
	})
	defer h.Close()
	wctx, cancel := context.WithTimeout(ctx, *duration)
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.Run(wctx)
	}()
	tick := time.NewTicker(5 * time.Second)
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-tick.C:
			fmt.Fprintf(stdout, "  %s\n", h.Counts())
		}
	}
	tick.Stop()
	cancel()

	fmt.Fprintln(stdout, "reading every key from every member")
	fctx, fcancel := context.WithTimeout(context.Background(), *finalTimeout)
	finalErr := h.FinalReads(fctx, eps)
	fcancel()
	res := h.Check(*checkTimeout)
	fmt.Fprintln(stdout, res.Counts)

	code, verdict := exitOK, "LINEARIZABLE: every read saw the latest acknowledged write"
	switch {
	case res.Verdict == porcupine.Illegal || len(res.Lost) > 0:
		code, verdict = exitViolation, "NOT LINEARIZABLE: "+res.String()
	case finalErr != nil:
		code, verdict = exitInconclusive, "INCONCLUSIVE: "+finalErr.Error()
	case res.Verdict == porcupine.Unknown:
		code, verdict = exitInconclusive, fmt.Sprintf("INCONCLUSIVE: the checker found no answer within %v (--check-timeout)", *checkTimeout)
	case res.Counts.PutsOK == 0 || res.Counts.GetsOK == 0:
		code, verdict = exitInconclusive, "INCONCLUSIVE: no write or no read succeeded; is the cluster up?"
	}
	fmt.Fprintln(stdout, verdict)

	dir := *out
	if dir == "" && code != exitOK {
		dir, err = os.MkdirTemp("", "raftexample-check-")
		if err != nil {
			fmt.Fprintf(stderr, "check: %v\n", err)
			return code
		}
	}
	if dir != "" {
		if err := res.Report(dir); err != nil {
			fmt.Fprintf(stderr, "check: writing the report: %v\n", err)
		} else {
			fmt.Fprintf(stdout, "report: %s\n", filepath.Join(dir, "history.html"))
		}
	}
	return code
}

func parseEndpoints(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("--endpoints is required, e.g. --endpoints http://127.0.0.1:12380")
	}
	var eps []string
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimRight(strings.TrimSpace(e), "/")
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || u.RawQuery != "" {
			return nil, fmt.Errorf("invalid endpoint %q: want http(s)://host:port", e)
		}
		eps = append(eps, e)
	}
	return eps, nil
}
