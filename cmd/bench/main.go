// Command bench is the load tool: closed-loop clients, each with its own
// keep-alive connection, drive one kind of request (or a mix) against a
// running cluster and report throughput, latency percentiles from an HDR
// histogram, and errors by kind (the engine is package loadgen).
//
//	go run ./cmd/bench --endpoints http://127.0.0.1:12380,http://127.0.0.1:22380,http://127.0.0.1:32380 \
//	    --clients 64 --op put --value-size 256 --duration 10s
//
// It prints a human summary and then one JSON line with the same numbers.
// With --verify (PUT of fresh keys) it then reads every acknowledged write
// back from every member and reports any that is missing or wrong.
//
// Exit statuses: 0 done, 1 acknowledged writes lost (--verify), 2 usage,
// 3 no request succeeded.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/mattn/go-isatty"

	"raftexample/loadgen"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tty := isatty.IsTerminal(os.Stderr.Fd())
	os.Exit(loadgen.Run(ctx, os.Args[1:], os.Stdout, os.Stderr, tty, loadgen.NewRaftexampleTarget))
}
