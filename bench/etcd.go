package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"raftexample/loadgen"
)

// etcdTarget is one worker's etcd client: its own gRPC connection to one
// endpoint, so each worker keeps its own connection as with raftexample.
type etcdTarget struct {
	c   *clientv3.Client
	err error // dialling failed: every request fails with it
}

// newEtcdTarget ignores pinned: etcd's client sends every request to its
// endpoint, whose member forwards a write to the leader itself.
func newEtcdTarget(endpoint string, _ bool) loadgen.Target {
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	return &etcdTarget{c: c, err: err}
}

func (t *etcdTarget) Put(ctx context.Context, key, value string) error {
	if t.err != nil {
		return t.err
	}
	_, err := t.c.Put(ctx, key, value)
	return err
}

func (t *etcdTarget) Get(ctx context.Context, key string, serializable bool) (string, bool, error) {
	if t.err != nil {
		return "", false, t.err
	}
	var opts []clientv3.OpOption
	if serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	resp, err := t.c.Get(ctx, key, opts...)
	if err != nil {
		return "", false, err
	}
	if len(resp.Kvs) == 0 {
		return "", false, nil
	}
	return string(resp.Kvs[0].Value), true, nil
}

func (t *etcdTarget) Delete(ctx context.Context, key string) error {
	if t.err != nil {
		return t.err
	}
	_, err := t.c.Delete(ctx, key)
	return err
}

func (t *etcdTarget) CAS(ctx context.Context, key string, expect *string, value string) (bool, error) {
	if t.err != nil {
		return false, t.err
	}
	cmp := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	if expect != nil {
		cmp = clientv3.Compare(clientv3.Value(key), "=", *expect)
	}
	resp, err := t.c.Txn(ctx).If(cmp).Then(clientv3.OpPut(key, value)).Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

func (t *etcdTarget) Close() {
	if t.c != nil {
		t.c.Close()
	}
}

// etcdLeader returns the index in endpoints of the member that leads.
func etcdLeader(ctx context.Context, endpoints []string) (int, error) {
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return -1, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for i, ep := range endpoints {
		st, err := c.Status(ctx, ep)
		if err != nil {
			return -1, fmt.Errorf("status of %s: %w", ep, err)
		}
		if st.Leader == st.Header.MemberId {
			return i, nil
		}
	}
	return -1, errors.New("no member says it leads")
}
