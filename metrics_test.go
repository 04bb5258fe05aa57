package main

import (
	"fmt"
	"net/http/httptest"
	"testing"
)

// The request metric's labels come from a fixed set whatever a client
// sends: a label per method or path a client invents would grow /metrics,
// and the member's memory, without bound.
func TestRouteLabelsAreBounded(t *testing.T) {
	labels := map[string]bool{}
	for i := range 50 {
		for _, method := range []string{"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", fmt.Sprintf("M%d", i)} {
			for _, path := range []string{
				fmt.Sprintf("/v1/kv/k%d", i), "/v1/kv/", fmt.Sprintf("/v1/kv/?prefix=p&wait=%t", i%2 == 0),
				fmt.Sprintf("/ui/x%d.js", i), "/ui", "/ui/", fmt.Sprintf("/debug/pprof/p%d", i),
				"/livez", "/readyz", "/metrics", fmt.Sprintf("/k%d", i), fmt.Sprintf("/v1/x%d", i),
				"/v1/txn", "/v1/status", "/v1/members/4/promote",
			} {
				labels[routeLabel(httptest.NewRequest(method, path, nil))] = true
			}
		}
	}
	if len(labels) > 25 {
		t.Fatalf("%d route labels from 50 clients' made-up methods and paths, want a fixed set: %v", len(labels), labels)
	}
	for _, want := range []string{"v1_kv_get", "v1_kv_put", "v1_kv_delete", "v1_watch", "ui", "debug", "root_get", "root_put", "v1_txn"} {
		if !labels[want] {
			t.Errorf("no label %q among %v", want, labels)
		}
	}
	for status, want := range map[int]string{200: "2xx", 204: "2xx", 404: "4xx", 503: "5xx", 103: "1xx", 999: "other"} {
		if got := statusClass(status); got != want {
			t.Errorf("statusClass(%d) = %q, want %q", status, got, want)
		}
	}
}
