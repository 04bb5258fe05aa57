package main

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"
)

func TestParseConfigDefaults(t *testing.T) {
	cfg, err := parseConfig(nil, func(string) string { return "" }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.id != 1 || cfg.port != 9121 || len(cfg.cluster) != 1 || cfg.cluster[0] != "http://127.0.0.1:9021" ||
		cfg.listen != "127.0.0.1" || cfg.snapshotCount != 10000 || cfg.requestTimeout != 5*time.Second ||
		cfg.maxRequestBytes != 1536*1024 || cfg.dataDir != "." || cfg.join || cfg.maxInflight != 1 {
		t.Fatalf("defaults: %+v", cfg)
	}
}

func TestParseConfigEnvAndFlagsWin(t *testing.T) {
	env := map[string]string{"RAFTEXAMPLE_PORT": "7000", "RAFTEXAMPLE_ID": "2", "RAFTEXAMPLE_JOIN": "true",
		"RAFTEXAMPLE_CLUSTER": "http://127.0.0.1:1,http://127.0.0.1:2", "RAFTEXAMPLE_REQUEST_TIMEOUT": "2s"}
	cfg, err := parseConfig([]string{"--port", "7001"}, func(k string) string { return env[k] }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.port != 7001 || cfg.id != 2 || !cfg.join || len(cfg.cluster) != 2 || cfg.requestTimeout != 2*time.Second {
		t.Fatalf("got %+v", cfg)
	}
}

func TestParseConfigRejects(t *testing.T) {
	three := "--cluster=http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3"
	cases := map[string][]string{
		"must be 1..3":             {three, "--id", "0"},
		"--id must be 1..3":        {three, "--id", "4"},
		"invalid --cluster":        {"--cluster", "127.0.0.1:1"},
		"listed twice":             {"--cluster", "http://a:1,http://a:1"},
		"invalid --port":           {"--port", "70000"},
		"--snapshot-count 0":       {"--snapshot-count", "0"},
		"--election-ticks 1":       {"--election-ticks", "1"},
		"--log-level":              {"--log-level", "loud"},
		"unexpected argument":      {"extra"},
		"--max-request-bytes":      {"--max-request-bytes", "0"},
		"--request-timeout 0s":     {"--request-timeout", "0s"},
		"invalid value":            {"--port", "abc"},
		"--tick 0":                 {"--tick", "0"},
		"--max-inflight-appends 0": {"--max-inflight-appends", "0"},
		"client URL":               {"--advertise-client-url", "ftp://h:1"},
	}
	for want, args := range cases {
		_, err := parseConfig(args, func(string) string { return "" }, nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: got %v, want an error containing %q", args, err, want)
		}
	}
	_, err := parseConfig(nil, func(k string) string {
		if k == "RAFTEXAMPLE_PORT" {
			return "x"
		}
		return ""
	}, nil)
	if err == nil || !strings.Contains(err.Error(), "RAFTEXAMPLE_PORT") {
		t.Errorf("bad env var: %v", err)
	}
}

func TestRunExitCodes(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"--help"}, func(string) string { return "" }, &out, &errOut); code != 0 || !strings.Contains(out.String(), "-snapshot-count") {
		t.Errorf("--help: exit %d, output %q", code, out.String())
	}
	errOut.Reset()
	if code := run([]string{"--id", "0"}, func(string) string { return "" }, &out, &errOut); code != 2 {
		t.Errorf("--id 0: exit %d", code)
	}
	if lines := strings.Count(strings.TrimSpace(errOut.String()), "\n") + 1; lines != 1 || !strings.Contains(errOut.String(), "--id") {
		t.Errorf("--id 0 should print one clear line, got %q", errOut.String())
	}
}

func TestDefaultClientURL(t *testing.T) {
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 12380}
	for _, tc := range []struct{ listen, peerHost, want string }{
		{"127.0.0.1", "10.0.0.1", "http://127.0.0.1:12380"},
		{"0.0.0.0", "node1.example", "http://node1.example:12380"},
		{"::", "fe80::1", "http://[fe80::1]:12380"},
		{"node2", "10.0.0.2", "http://node2:12380"},
	} {
		if got := defaultClientURL(tc.listen, tc.peerHost, addr); got != tc.want {
			t.Errorf("listen %q, peer host %q: %q, want %q", tc.listen, tc.peerHost, got, tc.want)
		}
	}
}
