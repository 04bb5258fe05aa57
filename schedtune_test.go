package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func TestSysmonEnv(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    []string
		want  []string // nil: environ as given, not started again
		again bool
	}{
		{"no GODEBUG", []string{"A=1", "B=2"}, []string{"A=1", "B=2", "GODEBUG=" + sysmonGODEBUG}, true},
		{"an empty GODEBUG", []string{"GODEBUG=", "A=1"}, []string{"A=1", "GODEBUG=" + sysmonGODEBUG}, true},
		{"other settings kept", []string{"GODEBUG=madvdontneed=1,gctrace=1", "A=1"},
			[]string{"A=1", "GODEBUG=madvdontneed=1,gctrace=1," + sysmonGODEBUG}, true},
		{"the first of two GODEBUGs, as the runtime reads it", []string{"GODEBUG=gctrace=1", "A=1", "GODEBUG=schedtrace=5"},
			[]string{"A=1", "GODEBUG=gctrace=1," + sysmonGODEBUG}, true},
		{"the operator's schedtrace wins", []string{"A=1", "GODEBUG=gctrace=1,schedtrace=0"}, nil, false},
		{"ours already there", []string{"GODEBUG=" + sysmonGODEBUG}, nil, false},
		{"a setting with a space is not one the runtime reads", []string{"GODEBUG=gctrace=1, schedtrace=1000"},
			[]string{"GODEBUG=gctrace=1, schedtrace=1000," + sysmonGODEBUG}, true},
		{"a look-alike setting is not schedtrace", []string{"GODEBUG=xschedtrace=1"},
			[]string{"GODEBUG=xschedtrace=1," + sysmonGODEBUG}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.in)
			got, again := sysmonEnv(in)
			want := tc.want
			if want == nil {
				want = tc.in
			}
			if again != tc.again || !slices.Equal(got, want) {
				t.Fatalf("sysmonEnv(%q) = %q, %v; want %q, %v", tc.in, got, again, want, tc.again)
			}
			if !slices.Equal(in, tc.in) {
				t.Fatalf("sysmonEnv changed its argument: %q", in)
			}
		})
	}
}

func TestSysmonState(t *testing.T) {
	env := func(godebug string) func(string) string {
		return func(k string) string {
			if k == "GODEBUG" {
				return godebug
			}
			return ""
		}
	}
	for godebug, want := range map[string]string{
		"gctrace=1," + sysmonGODEBUG:    "kept awake",
		"schedtrace=0":                  "as GODEBUG sets it",
		sysmonGODEBUG + ",schedtrace=0": "as GODEBUG sets it", // the last one wins
		"schedtrace=0," + sysmonGODEBUG: "kept awake",
		"gctrace=1":                     "runtime default",
		"":                              "runtime default",
		"gctrace=1, " + sysmonGODEBUG + ",xschedtrace=1": "runtime default", // " schedtrace" is no setting
	} {
		if got := sysmonState(env(godebug)); got != want {
			t.Errorf("GODEBUG=%q: %q, want %q", godebug, got, want)
		}
	}
	defer func(err error) { sysmonExecErr = err }(sysmonExecErr)
	sysmonExecErr = errNoExecSelf
	if got := sysmonState(env("")); got != "runtime default" {
		t.Errorf("on a platform without execSelf: %q", got)
	}
	sysmonExecErr = errors.New("permission denied")
	if got, want := sysmonState(env("")), "runtime default: could not start again with GODEBUG="+sysmonGODEBUG+": permission denied"; got != want {
		t.Errorf("after a failed execSelf: %q, want %q", got, want)
	}
}

// TestProcessKeepsSysmonAwake runs the binary as users do: a member that
// serves has started itself again with sysmonGODEBUG (same PID, the rest of
// its environment kept), unless the operator's GODEBUG names schedtrace.
func TestProcessKeepsSysmonAwake(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the binary starts itself again on Linux only")
	}
	bin := buildBinary(t)
	for _, tc := range []struct {
		godebug, want, state string
	}{
		{"", sysmonGODEBUG, "kept awake"},
		{"madvdontneed=1", "madvdontneed=1," + sysmonGODEBUG, "kept awake"},
		{"schedtrace=0", "schedtrace=0", "as GODEBUG sets it"},
	} {
		t.Run(fmt.Sprintf("GODEBUG=%q", tc.godebug), func(t *testing.T) {
			port := freePort(t)
			p := startProcWith(t, bin, []string{"GODEBUG=" + tc.godebug, "RAFTEXAMPLE_SCHEDTUNE_MARK=kept"},
				"--cluster", fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), "--port", fmt.Sprint(port),
				"--data-dir", t.TempDir(), "--tick", "20")
			waitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/health", port))
			raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.cmd.Process.Pid))
			if err != nil {
				t.Fatal(err)
			}
			var godebugs []string
			mark := false
			for _, kv := range strings.Split(string(raw), "\x00") {
				if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
					godebugs = append(godebugs, v)
				}
				mark = mark || kv == "RAFTEXAMPLE_SCHEDTUNE_MARK=kept"
			}
			if !slices.Equal(godebugs, []string{tc.want}) || !mark {
				t.Fatalf("the serving process (pid %d) has GODEBUG %q and the test's own variable: %v; want [%q] and true",
					p.cmd.Process.Pid, godebugs, mark, tc.want)
			}
			if line := grepLines(p.logs.String(), "\tserving\t"); !strings.Contains(line, `"sysmon": "`+tc.state+`"`) {
				t.Fatalf("its start-up line says %q; want sysmon %q", line, tc.state)
			}
		})
	}
}
