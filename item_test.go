package main

import (
	"math"
	"runtime"
	"strings"
	"testing"
)

func TestItemHoldsKeyAndValue(t *testing.T) {
	for _, c := range [][2]string{{"", ""}, {"k", ""}, {"", "v"}, {"key", "value"}, {"a", strings.Repeat("v", 1<<20)}, {strings.Repeat("k", 7), "x"}} {
		it := newItem(c[0], c[1])
		if it.key() != c[0] || it.value() != c[1] || it.size() != len(c[0])+len(c[1]) || it.create|it.mod|it.version != 0 {
			t.Errorf("newItem(%.10q, %.10q): key %.10q value %.10q size %d indexes %d %d %d", c[0], c[1], it.key(), it.value(), it.size(), it.create, it.mod, it.version)
		}
		it.create, it.mod, it.version = math.MaxUint64, 2, 3 // the header does not run into the bytes
		if it.key() != c[0] || it.value() != c[1] {
			t.Errorf("newItem(%.10q, %.10q) after setting its indexes: key %.10q value %.10q", c[0], c[1], it.key(), it.value())
		}
	}
	refused := [][2]int{{-1, 0}, {0, -1}}
	if over := uint64(math.MaxUint32) + 1; over <= math.MaxInt { // an int of 64 bits can say it
		refused = append(refused, [2]int{int(over), 0}, [2]int{0, int(over)})
	}
	for _, n := range refused {
		if it, ok := allocItem(n[0], n[1]); ok || it != nil {
			t.Errorf("allocItem(%d, %d) = %v, %v; want refused", n[0], n[1], it, ok)
		}
	}
	if itemHeader != 32 { // the guards take no room: item.go's sizes hold
		t.Errorf("an item's header is %d bytes, want 32", itemHeader)
	}
	if n := testing.AllocsPerRun(100, func() { _ = newItem("key-0000001", "value") }); n != 1 {
		t.Errorf("newItem made %v allocations, want 1", n)
	}
}

// The strings an item hands out keep its allocation alive on their own,
// and nothing else's: after the items are dropped and collected, the
// strings still read what was written.
func TestItemStringsOutliveTheirItem(t *testing.T) {
	keys := make([]string, 0, 1000)
	values := make([]string, 0, 1000)
	for i := range 1000 {
		it := newItem(strings.Repeat("k", i%40+1), strings.Repeat(string(rune('a'+i%26)), i%300))
		keys, values = append(keys, it.key()), append(values, it.value())
	}
	var junk [][]byte
	for range 3 {
		runtime.GC()
		for range 2000 { // objects of the items' sizes, over memory wrongly freed
			junk = append(junk, []byte(strings.Repeat("#", len(junk)%360+40)))
		}
	}
	for i := range keys {
		if keys[i] != strings.Repeat("k", i%40+1) || values[i] != strings.Repeat(string(rune('a'+i%26)), i%300) {
			t.Fatalf("item %d's strings changed after a collection", i)
		}
	}
}
