package workload

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// register is the model's state for one key.
type register struct {
	found bool
	value string
}

// Model is a key-value store of PUT, GET, DELETE and compare-and-swap,
// partitioned by key: a history is linearizable when each key's history is.
// A write whose outcome is unknown may take effect or not, at any time
// after its call (Check sets when it must have returned by).
var Model = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(Input).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		slices.Sort(keys)
		parts := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			parts = append(parts, byKey[k])
		}
		return parts
	},
	Init: func() any { return register{} },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(register), input.(Input), output.(Output)
		switch in.Kind {
		case Put:
			return true, register{found: true, value: in.Value}
		case Delete:
			return out.Unknown || out.Found == st.found, register{}
		case CAS:
			match := st.found == in.ExpectFound && (!in.ExpectFound || st.value == in.Expect)
			if !out.Unknown && out.Swapped != match {
				return false, st
			}
			if match {
				return true, register{found: true, value: in.Value}
			}
			return true, st
		}
		return out.Found == st.found && out.Value == st.value, st
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(Input), output.(Output)
		q := ""
		if out.Unknown {
			q = " ?"
		}
		switch {
		case in.Kind == Delete:
			return fmt.Sprintf("delete(%s) -> existed %v%s via %s", in.Key, out.Found, q, in.Endpoint)
		case in.Kind == CAS && in.ExpectFound:
			return fmt.Sprintf("cas(%s, %s -> %s) -> %v%s via %s", in.Key, in.Expect, in.Value, out.Swapped, q, in.Endpoint)
		case in.Kind == CAS:
			return fmt.Sprintf("cas(%s, absent -> %s) -> %v%s via %s", in.Key, in.Value, out.Swapped, q, in.Endpoint)
		case in.Kind == Put && out.Unknown:
			return fmt.Sprintf("put(%s, %s) ? via %s", in.Key, in.Value, in.Endpoint)
		case in.Kind == Put:
			return fmt.Sprintf("put(%s, %s) via %s", in.Key, in.Value, in.Endpoint)
		case !out.Found:
			return fmt.Sprintf("get(%s) -> not found via %s", in.Key, in.Endpoint)
		}
		return fmt.Sprintf("get(%s) -> %s via %s", in.Key, out.Value, in.Endpoint)
	},
	DescribeState: func(state any) string {
		if st := state.(register); st.found {
			return st.value
		}
		return "(absent)"
	},
}

// Result is the verdict on a history.
type Result struct {
	Verdict porcupine.CheckResult // Ok, Illegal, or Unknown (the checker ran out of time)
	Counts  Counts
	// Lost lists acknowledged writes that a final read (after healing)
	// contradicts: writes certainly the last to their key, yet not read.
	Lost []string
	// Dropped is the number of ambiguous PUTs no read ever saw; they are
	// left out of the check (leaving out an unseen write changes nothing
	// any read returned).
	Dropped int
	ops     []porcupine.Operation
	info    porcupine.LinearizationInfo
}

// OK reports whether the history is linearizable and lost nothing.
func (r *Result) OK() bool { return r.Verdict == porcupine.Ok && len(r.Lost) == 0 }

func (r *Result) String() string {
	s := fmt.Sprintf("linearizability: %s; %s; %d ambiguous PUTs never seen by a read left out", r.Verdict, r.Counts, r.Dropped)
	if len(r.Lost) > 0 {
		s += fmt.Sprintf("; %d LOST acknowledged writes: %s", len(r.Lost), strings.Join(r.Lost, "; "))
	}
	return s
}

// Check checks the history; timeout bounds porcupine's search.
func (h *History) Check(timeout time.Duration) *Result {
	h.mu.Lock()
	ops := slices.Clone(h.ops)
	counts := h.counts
	h.mu.Unlock()

	// An ambiguous PUT took effect, if at all, before the first read that
	// returned its value (values are unique); one never seen is left out,
	// except on keys that also get DELETE or CAS: there it may explain an
	// answer no read shows (a CAS that failed), so it stays, open to the
	// end of the history, as do ambiguous DELETEs and CASes.
	seen := map[string]int64{}
	casKeys := map[string]bool{}
	end := int64(0)
	for _, op := range ops {
		if k := op.Input.(Input).Kind; k == Delete || k == CAS {
			casKeys[op.Input.(Input).Key] = true
		}
		end = max(end, op.Return)
	}
	for _, op := range ops {
		if in, out := op.Input.(Input), op.Output.(Output); in.Kind == Get && out.Found {
			if t, ok := seen[in.Key+"\x00"+out.Value]; !ok || op.Return < t {
				seen[in.Key+"\x00"+out.Value] = op.Return
			}
		}
	}
	res := &Result{Counts: counts}
	kept := ops[:0]
	for _, op := range ops {
		in, out := op.Input.(Input), op.Output.(Output)
		if out.Unknown {
			t, ok := seen[in.Key+"\x00"+in.Value]
			switch {
			case (in.Kind == Put || in.Kind == CAS) && ok:
				op.Return = max(t, op.Call)
			case casKeys[in.Key]:
				op.Return = end + 1
			default:
				res.Dropped++
				continue
			}
		}
		kept = append(kept, op)
	}
	res.ops = kept
	res.Lost = lostWrites(kept, casKeys)
	res.Verdict, res.info = porcupine.CheckOperationsVerbose(Model, kept, timeout)
	return res
}

// lostWrites finds acknowledged PUTs that began after every other PUT to
// their key had returned (so they are certainly the last value), yet a
// final read returned something else. Keys with DELETE or CAS are left to
// the linearizability check (the final reads are part of it).
func lostWrites(ops []porcupine.Operation, skip map[string]bool) []string {
	latest := map[string]porcupine.Operation{} // the PUT called last, per key
	for _, op := range ops {
		if in := op.Input.(Input); in.Kind == Put && !skip[in.Key] {
			if l, ok := latest[in.Key]; !ok || op.Call > l.Call {
				latest[in.Key] = op
			}
		}
	}
	sure := map[string]porcupine.Operation{}
	for k, l := range latest {
		if !l.Output.(Output).Unknown {
			sure[k] = l
		}
	}
	for _, op := range ops {
		in := op.Input.(Input)
		if l, ok := sure[in.Key]; ok && in.Kind == Put && in.Value != l.Input.(Input).Value && op.Return >= l.Call {
			delete(sure, in.Key) // overlaps the latest: either may be last
		}
	}
	var lost []string
	for _, op := range ops {
		in, out := op.Input.(Input), op.Output.(Output)
		l, ok := sure[in.Key]
		if in.Kind != Get || !in.Final || !ok || op.Call <= l.Return {
			continue
		}
		if !out.Found || out.Value != l.Input.(Input).Value {
			lost = append(lost, fmt.Sprintf("%s=%s acknowledged, final read %s via %s",
				in.Key, l.Input.(Input).Value, Model.DescribeState(register{found: out.Found, value: out.Value}), in.Endpoint))
		}
	}
	return lost
}

// Report writes the porcupine visualization (history.html) and a summary
// into dir.
func (r *Result) Report(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "verdict.txt"), []byte(r.String()+"\n"), 0o644); err != nil {
		return err
	}
	return porcupine.VisualizePath(Model, r.info, filepath.Join(dir, "history.html"))
}
