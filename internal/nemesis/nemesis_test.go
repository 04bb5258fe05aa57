package nemesis

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"raftexample/internal/cluster"
)

// fake records what the schedule asks of it.
type fake struct {
	name string
	fail bool
	mu   *sync.Mutex
	log  *[]string
}

func (f *fake) Name() string { return f.name }

func (f *fake) Inject(context.Context, *cluster.Cluster, *rand.Rand) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	*f.log = append(*f.log, "inject "+f.name)
	if f.fail {
		return errors.New("nothing to do")
	}
	return nil
}

func (f *fake) Heal(context.Context, *cluster.Cluster) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	*f.log = append(*f.log, "heal "+f.name)
	return nil
}

// Every nemesis gets a turn in each pass, every inject is followed by its
// heal (a failed one too), and the round in progress when time is up is
// still healed.
func TestScheduleTurnsAndHeals(t *testing.T) {
	var mu sync.Mutex
	var log []string
	nems := []Nemesis{
		&fake{name: "a", mu: &mu, log: &log},
		&fake{name: "b", mu: &mu, log: &log, fail: true},
		&fake{name: "c", mu: &mu, log: &log},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := Schedule(ctx, &cluster.Cluster{}, rand.New(rand.NewPCG(1, 2)), nems, 10*time.Millisecond, 5*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(log) < 12 || len(log)%2 != 0 {
		t.Fatalf("too few rounds, or a round not healed: %v", log)
	}
	for i := 0; i+1 < len(log); i += 2 {
		name := strings.TrimPrefix(log[i], "inject ")
		if !strings.HasPrefix(log[i], "inject ") || log[i+1] != "heal "+name {
			t.Fatalf("round %d: %v", i/2, log[i:i+2])
		}
	}
	for pass := 0; (pass+1)*6 <= len(log); pass++ {
		seen := map[string]bool{}
		for _, e := range log[pass*6 : (pass+1)*6] {
			seen[e] = true
		}
		if len(seen) != 6 {
			t.Fatalf("pass %d did not give every nemesis one turn: %v", pass, log[pass*6:(pass+1)*6])
		}
	}
}
