package main

import "testing"

func TestValidatePeerURL(t *testing.T) {
	for _, ok := range []string{"http://127.0.0.1:12379", "https://node-1.example:443", "http://[::1]:9021"} {
		if err := validatePeerURL(ok); err != nil {
			t.Errorf("%q rejected: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "not a url", "127.0.0.1:12379", "ftp://h:1", "http://h", "http://h:0", "http://h:99999",
		"http://h:1/", "http://h:1/path", "http://h:1?q=1", "http://h:1?", "http://u:p@h:1", "http://:1", "http://h:1#f", "http://h:port"} {
		if err := validatePeerURL(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
