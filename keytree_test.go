package main

import (
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// The tree's slots order keys by their first 16 bytes before comparing
// them whole: whatever the keys, the tree must hold them in Go's string
// order, and find, replace and delete exactly the key asked for. Keys here
// are drawn to make the slot words tie or nearly tie: bytes 0x00 and 0xff
// (zero padding looks like 0x00), lengths around 8 and 16, and a shared
// 16-byte prefix with different tails.
func TestKeyTreeMatchesSortedStrings(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	alphabet := []byte{0x00, 0x01, 'a', 'b', 0x7f, 0x80, 0xfe, 0xff}
	randKey := func() string {
		var b strings.Builder
		switch rng.IntN(3) {
		case 0:
			b.WriteString("0123456789abcdef") // the slot words tie
		case 1:
			b.WriteString("01234567") // the first word ties
		}
		for range rng.IntN(20) {
			b.WriteByte(alphabet[rng.IntN(len(alphabet))])
		}
		return b.String()
	}

	keys := newKeyTree()
	want := map[string]string{}
	var frozen keyTree // a clone taken midway, which later changes must not reach
	var frozenWant map[string]string
	for i := range 20000 {
		k := randKey()
		switch rng.IntN(4) {
		case 0, 1:
			v := strings.Repeat("v", i%5)
			prev := keys.Put(testItem(k, v, 0, 0, 0))
			if old, ok := want[k]; ok != (prev != nil) || (ok && prev.value() != old) {
				t.Fatalf("Put(%q) replaced %+v; the key held %q (present %v)", k, prev, old, ok)
			}
			want[k] = v
		case 2:
			prev := keys.Delete(k)
			if _, ok := want[k]; ok != (prev != nil) || (ok && prev.key() != k) {
				t.Fatalf("Delete(%q) removed %+v; present %v", k, prev, ok)
			}
			delete(want, k)
		case 3:
			it := keys.Get(k)
			if v, ok := want[k]; ok != (it != nil) || (ok && (it.key() != k || it.value() != v)) {
				t.Fatalf("Get(%q) = %+v; want %q (present %v)", k, it, v, ok)
			}
		}
		if i == 10000 {
			frozen, frozenWant = keys.Clone(), maps.Clone(want)
		}
	}

	inOrder := func(tr keyTree) []string {
		var got []string
		tr.Ascend(func(it *item) bool {
			got = append(got, it.key())
			return true
		})
		return got
	}
	sorted := slices.Sorted(maps.Keys(want))
	if got := inOrder(keys); !slices.Equal(got, sorted) || keys.Len() != len(sorted) {
		t.Fatalf("the tree holds %d keys out of string order (or not the ones put): first difference at %d", len(got), firstDiff(got, sorted))
	}
	if got, w := inOrder(frozen), slices.Sorted(maps.Keys(frozenWant)); !slices.Equal(got, w) {
		t.Fatalf("a clone changed with the tree it was taken from: first difference at %d", firstDiff(got, w))
	}

	for range 500 {
		start := randKey()
		var got []string
		keys.AscendFrom(start, func(it *item) bool {
			got = append(got, it.key())
			return len(got) < 10
		})
		i, _ := slices.BinarySearch(sorted, start)
		w := sorted[i:min(i+10, len(sorted))]
		if !slices.Equal(got, w) {
			t.Fatalf("AscendFrom(%q) = %q, want %q", start, got, w)
		}
		prefix := start[:len(start)/2]
		var under []string
		ascendPrefix(keys, prefix, "", func(it *item) bool {
			under = append(under, it.key())
			return true
		})
		var wantUnder []string
		for _, k := range sorted {
			if strings.HasPrefix(k, prefix) {
				wantUnder = append(wantUnder, k)
			}
		}
		if !slices.Equal(under, wantUnder) {
			t.Fatalf("keys under %q: got %d, want %d", prefix, len(under), len(wantUnder))
		}
	}
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
