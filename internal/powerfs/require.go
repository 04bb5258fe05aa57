package powerfs

import (
	"fmt"
	"os"
	"sync"
	"testing"
)

var probe = sync.OnceValue(Available)

// RequireFUSE skips a test that needs a powerfs mount when FUSE is not
// available here, saying so loudly on stderr as well as in the test log, so
// that a run without FUSE never looks like a pass. With
// RAFTEXAMPLE_REQUIRE_FUSE=1 (as .ci/run sets it) it fails instead.
func RequireFUSE(tb testing.TB) {
	tb.Helper()
	err := probe()
	if err == nil {
		return
	}
	msg := fmt.Sprintf("FUSE is not available (%v): %s NOT RUN; power-loss, stalled-disk and full-disk faults untested", err, tb.Name())
	if os.Getenv("RAFTEXAMPLE_REQUIRE_FUSE") == "1" {
		tb.Fatal(msg)
	}
	fmt.Fprintln(os.Stderr, "*** "+msg)
	tb.Skip(msg)
}
