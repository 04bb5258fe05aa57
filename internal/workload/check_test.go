package workload

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// add records an operation with the given times.
func (h *History) add(kind Kind, key, value string, out Output, call, ret int64) {
	h.record(0, Input{Kind: kind, Key: key, Value: value}, out, call, ret)
}

// final records a final read.
func (h *History) final(key string, out Output, call, ret int64) {
	h.record(1, Input{Kind: Get, Key: key, Final: true}, out, call, ret)
}

func TestCheckerVerdicts(t *testing.T) {
	found := func(v string) Output { return Output{Value: v, Found: true} }
	cases := []struct {
		name    string
		build   func(h *History)
		verdict porcupine.CheckResult
		lost    int
		dropped int
	}{
		{"sequential", func(h *History) {
			h.add(Get, "a", "", Output{}, 0, 1)
			h.add(Put, "a", "1", Output{}, 2, 3)
			h.add(Get, "a", "", found("1"), 4, 5)
		}, porcupine.Ok, 0, 0},
		{"stale read", func(h *History) {
			h.add(Put, "a", "1", Output{}, 0, 1)
			h.add(Put, "a", "2", Output{}, 2, 3)
			h.add(Get, "a", "", found("1"), 4, 5)
		}, porcupine.Illegal, 0, 0},
		{"lost acknowledged write", func(h *History) {
			h.add(Put, "a", "1", Output{}, 0, 1)
			h.add(Put, "a", "2", Output{}, 2, 3)
			h.final("a", found("1"), 4, 5)
			h.final("a", found("2"), 4, 5)
		}, porcupine.Illegal, 1, 0},
		{"acknowledged write missing", func(h *History) {
			h.add(Put, "a", "1", Output{}, 0, 1)
			h.final("a", Output{}, 4, 5)
		}, porcupine.Illegal, 1, 0},
		{"overlapping writes are not surely last", func(h *History) {
			h.add(Put, "a", "1", Output{}, 0, 10)
			h.add(Put, "a", "2", Output{}, 2, 3)
			h.final("a", found("1"), 11, 12)
		}, porcupine.Ok, 0, 0},
		{"concurrent writes, either order", func(h *History) {
			h.add(Put, "a", "1", Output{}, 0, 10)
			h.add(Put, "a", "2", Output{}, 1, 9)
			h.add(Get, "a", "", found("1"), 11, 12)
		}, porcupine.Ok, 0, 0},
		{"ambiguous write seen later", func(h *History) {
			h.add(Put, "a", "1", Output{}, 0, 1)
			h.add(Put, "a", "2", Output{Unknown: true}, 2, 3)
			h.add(Get, "a", "", found("1"), 4, 5)
			h.add(Get, "a", "", found("2"), 6, 7)
		}, porcupine.Ok, 0, 0},
		{"ambiguous write never seen", func(h *History) {
			h.add(Put, "a", "1", Output{}, 0, 1)
			h.add(Put, "a", "2", Output{Unknown: true}, 2, 3)
			h.add(Get, "a", "", found("1"), 4, 5)
		}, porcupine.Ok, 0, 1},
		{"ambiguous write seen, then undone", func(h *History) {
			h.add(Put, "a", "1", Output{}, 0, 1)
			h.add(Put, "a", "2", Output{Unknown: true}, 2, 3)
			h.add(Get, "a", "", found("2"), 4, 5)
			h.add(Get, "a", "", found("1"), 6, 7)
		}, porcupine.Illegal, 0, 0},
		{"value read before it was written", func(h *History) {
			h.add(Get, "a", "", found("1"), 0, 1)
			h.add(Put, "a", "1", Output{Unknown: true}, 2, 3)
		}, porcupine.Illegal, 0, 0},
		{"keys are independent", func(h *History) {
			h.add(Put, "a", "1", Output{}, 0, 1)
			h.add(Put, "b", "2", Output{}, 2, 3)
			h.add(Get, "a", "", found("1"), 4, 5)
			h.add(Get, "b", "", found("2"), 4, 5)
		}, porcupine.Ok, 0, 0},
	}
	for _, tc := range cases {
		h := NewHistory(Config{})
		tc.build(h)
		r := h.Check(10 * time.Second)
		if r.Verdict != tc.verdict || len(r.Lost) != tc.lost || r.Dropped != tc.dropped {
			t.Errorf("%s: got %s (lost %d, dropped %d), want %s (lost %d, dropped %d)",
				tc.name, r.Verdict, len(r.Lost), r.Dropped, tc.verdict, tc.lost, tc.dropped)
		}
		if r.OK() != (tc.verdict == porcupine.Ok && tc.lost == 0) {
			t.Errorf("%s: OK() = %v", tc.name, r.OK())
		}
	}
}

func TestCheckerDeleteAndCAS(t *testing.T) {
	found := func(v string) Output { return Output{Value: v, Found: true} }
	cas := func(h *History, expect string, expectFound bool, value string, out Output, call, ret int64) {
		h.record(0, Input{Kind: CAS, Key: "a", Expect: expect, ExpectFound: expectFound, Value: value}, out, call, ret)
	}
	cases := []struct {
		name    string
		build   func(h *History)
		verdict porcupine.CheckResult
	}{
		{"delete, then absent", func(h *History) {
			h.add(Put, "a", "1", Output{}, 0, 1)
			h.add(Delete, "a", "", Output{Found: true}, 2, 3)
			h.add(Get, "a", "", Output{}, 4, 5)
		}, porcupine.Ok},
		{"deleted key read back", func(h *History) {
			h.add(Put, "a", "1", Output{}, 0, 1)
			h.add(Delete, "a", "", Output{Found: true}, 2, 3)
			h.add(Get, "a", "", found("1"), 4, 5)
		}, porcupine.Illegal},
		{"delete of an absent key says it existed", func(h *History) {
			h.add(Delete, "a", "", Output{Found: true}, 0, 1)
		}, porcupine.Illegal},
		{"CAS from the value read", func(h *History) {
			h.add(Put, "a", "1", Output{}, 0, 1)
			cas(h, "1", true, "2", Output{Swapped: true}, 2, 3)
			cas(h, "1", true, "3", Output{Swapped: false}, 4, 5)
			cas(h, "", false, "4", Output{Swapped: false}, 6, 7)
			h.add(Get, "a", "", found("2"), 8, 9)
		}, porcupine.Ok},
		{"CAS swapped on a stale value", func(h *History) {
			h.add(Put, "a", "1", Output{}, 0, 1)
			h.add(Put, "a", "2", Output{}, 2, 3)
			cas(h, "1", true, "3", Output{Swapped: true}, 4, 5)
		}, porcupine.Illegal},
		{"CAS refused although it matched", func(h *History) {
			h.add(Put, "a", "1", Output{}, 0, 1)
			cas(h, "1", true, "3", Output{Swapped: false}, 2, 3)
		}, porcupine.Illegal},
		{"create-only CAS twice", func(h *History) {
			cas(h, "", false, "1", Output{Swapped: true}, 0, 1)
			cas(h, "", false, "2", Output{Swapped: true}, 2, 3)
		}, porcupine.Illegal},
		// An ambiguous CAS no read saw explains why a later CAS failed: it
		// must stay in the history, not be left out.
		{"unseen ambiguous CAS explains a failed one", func(h *History) {
			h.add(Put, "a", "1", Output{}, 0, 1)
			cas(h, "1", true, "2", Output{Unknown: true}, 2, 3)
			cas(h, "1", true, "3", Output{Swapped: false}, 4, 5)
			h.add(Put, "a", "4", Output{}, 6, 7)
			h.add(Get, "a", "", found("4"), 8, 9)
		}, porcupine.Ok},
		{"ambiguous delete, absent, then back", func(h *History) {
			h.add(Put, "a", "1", Output{}, 0, 1)
			h.add(Delete, "a", "", Output{Unknown: true}, 2, 3)
			h.add(Get, "a", "", Output{}, 4, 5)
			h.add(Get, "a", "", found("1"), 6, 7)
		}, porcupine.Illegal},
	}
	for _, tc := range cases {
		h := NewHistory(Config{})
		tc.build(h)
		if r := h.Check(10 * time.Second); r.Verdict != tc.verdict {
			t.Errorf("%s: got %s, want %s", tc.name, r.Verdict, tc.verdict)
		}
	}
}

func TestReportWritesVisualization(t *testing.T) {
	h := NewHistory(Config{})
	h.add(Put, "a", "1", Output{}, 0, 1)
	h.add(Get, "a", "", Output{}, 2, 3)
	r := h.Check(10 * time.Second)
	dir := t.TempDir()
	if err := r.Report(dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"history.html", "verdict.txt"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
}
