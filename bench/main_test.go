package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

func TestOneClientRunsPinnedToEachRole(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []clientRun
	}{
		{[]string{"--clients", "1,16"}, []clientRun{{1, "leader"}, {1, "follower"}, {16, ""}}},
		{[]string{"--clients", "16,1,64"}, []clientRun{{16, ""}, {1, "leader"}, {1, "follower"}, {64, ""}}},
		{[]string{"--clients", "1,16", "--one-client-roles=false"}, []clientRun{{1, ""}, {16, ""}}},
	} {
		o, err := parse(tc.args)
		if err != nil {
			t.Fatal(err)
		}
		if got := o.runs(); !slices.Equal(got, tc.want) {
			t.Errorf("%v: runs %v, want %v", tc.args, got, tc.want)
		}
	}
}

// Each role's row holds only that role's runs: a median over both would
// mix two different paths.
func TestTableRowPerRole(t *testing.T) {
	o, err := parse([]string{"--clients", "1,16", "--ops", "put", "--passes", "1"})
	if err != nil {
		t.Fatal(err)
	}
	all := []measurement{
		{System: "etcd", Op: "put", Clients: 1, Role: "leader", OpsPerSec: 1000},
		{System: "etcd", Op: "put", Clients: 1, Role: "follower", OpsPerSec: 800},
		{System: "etcd", Op: "put", Clients: 16, OpsPerSec: 4000},
		{System: "raftexample", Op: "put", Clients: 1, Role: "leader", OpsPerSec: 1500},
		{System: "raftexample", Op: "put", Clients: 1, Role: "follower", OpsPerSec: 1600},
		{System: "raftexample", Op: "put", Clients: 16, OpsPerSec: 6000},
	}
	var b bytes.Buffer
	printTable(&b, o, all, 1000)
	rows := map[string]string{}
	for _, line := range strings.Split(b.String(), "\n") {
		f := strings.Fields(line)
		if len(f) > 6 && f[0] == "put" {
			label := f[1]
			if strings.HasPrefix(f[2], "(") {
				label += " " + f[2]
				f = append(f[:2], f[3:]...)
			}
			rows[label] = strings.Join(f[2:5], " ")
		}
	}
	want := map[string]string{"1 (leader)": "1000 1500 1.50×", "1 (follower)": "800 1600 2.00×", "16": "4000 6000 1.50×"}
	for label, w := range want {
		if rows[label] != w {
			t.Errorf("row %q: %q, want %q (table:\n%s)", label, rows[label], w, b.String())
		}
	}
	if len(rows) != len(want) {
		t.Errorf("rows %v, want %v", rows, want)
	}
}
