package loadgen

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// verifyResult is what --verify found: every acknowledged PUT of a fresh
// key read back (linearizably) from every member.
type verifyResult struct {
	Acked      int      `json:"acked"`
	Members    int      `json:"members"`
	Lost       int      `json:"lost"`       // reads that found the key absent or holding another value
	Unreadable int      `json:"unreadable"` // reads that failed three times
	Examples   []string `json:"examples,omitempty"`
}

func (b *bench) verifyAll(ctx context.Context) *verifyResult {
	b.mu.Lock()
	acked := append([]int64(nil), b.acked...)
	b.mu.Unlock()
	v := &verifyResult{Acked: len(acked), Members: len(b.cfg.endpoints)}
	var mu sync.Mutex // guards v
	for _, ep := range b.cfg.endpoints {
		work := make(chan int64)
		var wg sync.WaitGroup
		for range min(b.cfg.clients, 64) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t := b.dial(ep, true)
				defer t.Close()
				for n := range work {
					lost, failed := b.check(ctx, t, n)
					if !lost && failed == "" {
						continue
					}
					mu.Lock()
					if lost {
						v.Lost++
						if len(v.Examples) < 5 {
							v.Examples = append(v.Examples, fmt.Sprintf("%s on %s", b.key(n), ep))
						}
					} else {
						v.Unreadable++
					}
					mu.Unlock()
				}
			}()
		}
		for _, n := range acked {
			if ctx.Err() != nil {
				break
			}
			work <- n
		}
		close(work)
		wg.Wait()
	}
	return v
}

// check reads fresh key n: lost if it is absent or holds another value;
// failed (with the last error) if three reads failed.
func (b *bench) check(ctx context.Context, t Target, n int64) (lost bool, failed string) {
	for range 3 {
		rctx, cancel := context.WithTimeout(ctx, b.cfg.timeout)
		got, found, err := t.Get(rctx, b.key(n), false)
		cancel()
		if err == nil {
			return !found || got != b.valueFor(n), ""
		}
		failed = err.Error()
		select {
		case <-ctx.Done():
			return false, failed
		case <-time.After(100 * time.Millisecond):
		}
	}
	return false, failed
}
