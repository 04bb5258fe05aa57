// Package faults is raftexample's fault suite: real member processes under
// crashes, pauses, partitions, membership churn, crashes during snapshots and
// torn WAL tails, with a concurrent workload whose history is checked for
// linearizability. The tests are the suite; see README.md for how to run
// the short (CI) and long (soak) versions.
package faults
