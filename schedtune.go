package main

import (
	"errors"
	"os"
	"strings"
)

// Go's runtime runs a monitor thread, sysmon, beside the scheduler: it takes
// back Ps from threads stuck in system calls and preempts long-running
// goroutines. While every P is idle it sleeps deeply, and the first system
// call after that wakes it and makes it poll every 20 µs again (runtime
// proc.go, sysmon: "If it wakes from a syscall it resets idle and delay")
// until 50 polls in a row found nothing to do. A member's load is one round
// of replication after another with idle gaps between them, so every round
// woke sysmon into its fastest polling: on the 2-core VM, at 16 PUT clients,
// each follower's sysmon thread switched in ~5,900 times a second and took a
// fifth of that member's CPU, the leader's a ninth, 15 % of the three
// members' CPU per PUT in all (README, Performance, "Go's sysmon kept
// awake").
//
// With schedtrace set in GODEBUG the runtime never lets sysmon sleep deeply
// (it must wake to print), so it is never reset by a system call: it polls
// every 20 µs only while it keeps finding Ps to take back, and otherwise
// backs off to once every 10 ms. GODEBUG is read once, as the process
// starts, so main starts the binary again with it (same PID, arguments and
// environment). schedtraceEvery is the longest interval the runtime takes,
// so the trace line itself comes only once the runtime's monotonic clock
// (the time since the host booted) passes it, and every 24.8 days after.
//
// An operator's GODEBUG that names schedtrace wins: GODEBUG=schedtrace=0
// leaves the runtime's default (and the member is not started again).
const (
	schedtraceEvery = "2147483647" // ms, the largest int32 the runtime parses
	sysmonGODEBUG   = "schedtrace=" + schedtraceEvery
)

// sysmonEnv returns environ with sysmonGODEBUG added to GODEBUG, and true,
// unless GODEBUG names schedtrace already: then environ as it is, and false.
// Every GODEBUG entry but the one the runtime reads (the first) is dropped.
func sysmonEnv(environ []string) ([]string, bool) {
	godebug, found := "", false
	out := make([]string, 0, len(environ)+1)
	for _, kv := range environ {
		v, ok := strings.CutPrefix(kv, "GODEBUG=")
		if !ok {
			out = append(out, kv)
			continue
		}
		if !found {
			godebug, found = v, true
		}
	}
	if _, set := schedtraceIn(godebug); set {
		return environ, false
	}
	if godebug != "" {
		godebug += ","
	}
	return append(out, "GODEBUG="+godebug+sysmonGODEBUG), true
}

// schedtraceIn returns the schedtrace setting of a GODEBUG value as the
// runtime reads it at start: settings untrimmed, the last one of a name
// winning.
func schedtraceIn(godebug string) (value string, set bool) {
	for _, setting := range strings.Split(godebug, ",") {
		if v, ok := strings.CutPrefix(setting, "schedtrace="); ok {
			value, set = v, true
		}
	}
	return value, set
}

// sysmonState says, for the start-up log, how this process runs sysmon.
func sysmonState(getenv func(string) string) string {
	if v, set := schedtraceIn(getenv("GODEBUG")); set {
		if v == schedtraceEvery {
			return "kept awake"
		}
		return "as GODEBUG sets it"
	}
	if sysmonExecErr != nil && !errors.Is(sysmonExecErr, errNoExecSelf) {
		return "runtime default: could not start again with GODEBUG=" + sysmonGODEBUG + ": " + sysmonExecErr.Error()
	}
	return "runtime default"
}

// sysmonExecErr is why keepSysmonAwake could not start the binary again.
var sysmonExecErr error

// errNoExecSelf: this platform's binary is not started again (execSelf).
var errNoExecSelf = errors.New("not on this platform")

// keepSysmonAwake starts this binary again with sysmonGODEBUG unless
// GODEBUG names schedtrace; it returns only if it did not.
func keepSysmonAwake() {
	env, again := sysmonEnv(os.Environ())
	if !again {
		return
	}
	sysmonExecErr = execSelf(env)
}
