package loadgen

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"

	"raftexample/client"
)

// Target is one client's connection to the store under test. Each worker
// owns one, so each keeps its own keep-alive connection. Other stores
// (etcd, for the side-by-side comparison) implement it in their own module.
type Target interface {
	Put(ctx context.Context, key, value string) error
	// Get returns found=false for an absent key (not an error).
	Get(ctx context.Context, key string, serializable bool) (value string, found bool, err error)
	Delete(ctx context.Context, key string) error
	// CAS writes value if the key holds expect (absent if expect is nil).
	CAS(ctx context.Context, key string, expect *string, value string) (swapped bool, err error)
	Close()
}

// errorKind names an error for the counts: the server's /v1 code, or the
// HTTP status, or "transport" when no answer came, or "timeout".
func errorKind(err error) string {
	var e *client.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.As(err, &e) && e.Code != "":
		return e.Code
	case errors.As(err, &e) && e.Status != 0:
		return "status-" + strconv.Itoa(e.Status)
	case errors.As(err, &e) && errors.Is(e.Err, context.DeadlineExceeded):
		return "timeout"
	}
	return "transport"
}

// raftexampleTarget speaks the /v1 API through the client package.
type raftexampleTarget struct {
	c  *client.Client
	tr *client.Transport
}

// Dial makes one worker's Target for endpoint. pinned: every request goes
// to endpoint; otherwise a target may send writes elsewhere (this
// project's client sends them to the leader that endpoint names).
type Dial func(endpoint string, pinned bool) Target

// NewRaftexampleTarget speaks this project's /v1 API at endpoint.
func NewRaftexampleTarget(endpoint string, pinned bool) Target {
	tr := &client.Transport{MaxIdlePerHost: 4}
	c := client.New(endpoint, &http.Client{Transport: tr})
	c.Pinned = pinned
	return &raftexampleTarget{c: c, tr: tr}
}

func (t *raftexampleTarget) Put(ctx context.Context, key, value string) error {
	_, err := t.c.Put(ctx, key, value)
	return err
}

func (t *raftexampleTarget) Get(ctx context.Context, key string, serializable bool) (string, bool, error) {
	kv, err := t.c.Get(ctx, key, serializable)
	if client.IsNotFound(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	switch {
	case kv.Value != nil:
		return *kv.Value, true, nil
	case kv.ValueBase64 != nil:
		b, err := base64.StdEncoding.DecodeString(*kv.ValueBase64)
		return string(b), true, err
	}
	return "", true, nil
}

func (t *raftexampleTarget) Delete(ctx context.Context, key string) error {
	_, err := t.c.Delete(ctx, key)
	return err
}

func (t *raftexampleTarget) CAS(ctx context.Context, key string, expect *string, value string) (bool, error) {
	return t.c.CompareAndSwap(ctx, key, expect, value)
}

func (t *raftexampleTarget) Close() { t.tr.CloseIdleConnections() }
