package cluster

import (
	"context"
	"testing"
	"time"
)

// StartTest is Start for a test that needs a plain cluster: it builds the
// server (without the race detector) and starts opts.Size members in a
// temp dir (opts.Binary and opts.Dir are filled in), waits for a leader,
// and closes the cluster when the test ends.
func StartTest(t testing.TB, opts Options) *Cluster {
	t.Helper()
	opts.Dir = t.TempDir()
	bin, err := Build(opts.Dir, false)
	if err != nil {
		t.Fatal(err)
	}
	opts.Binary = bin
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if _, err := c.Leader(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}
