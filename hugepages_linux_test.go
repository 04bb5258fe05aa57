package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

func TestTHPMode(t *testing.T) {
	for setting, want := range map[string]string{
		"always [madvise] never\n": "madvise",
		"[always] madvise never\n": "always",
		"always madvise [never]\n": "never",
		"":                         "",
		"madvise]":                 "",
	} {
		if got := thpMode([]byte(setting)); got != want {
			t.Errorf("thpMode(%q) = %q, want %q", setting, got, want)
		}
	}
}

// The store a restart builds must land in memory advised for huge pages.
// Checked in a fresh process (this one's heap has holes left by other
// tests, which new objects would fill first): it reserves 64 MiB through
// heapPrep, then allocates 32 MiB of small values the way a restore does,
// and reports how many of them lie in a mapping the kernel marks "hg"
// (MADV_HUGEPAGE) in /proc/self/smaps.
func TestHeapPrepPlacesTheHeapInHugePages(t *testing.T) {
	if os.Getenv("HEAPPREP_CHILD") == "1" {
		heapPrepChild()
		return
	}
	mode, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil || thpMode(mode) != "madvise" {
		t.Skipf("THP not in madvise mode here (%q)", mode)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHeapPrepPlacesTheHeapInHugePages$")
	cmd.Env = append(os.Environ(), "HEAPPREP_CHILD=1", "GOGC=", "GOMEMLIMIT=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var advised, total int
	var hugeKB int
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "heapprep" {
			advised, _ = strconv.Atoi(f[1])
			total, _ = strconv.Atoi(f[2])
			hugeKB, _ = strconv.Atoi(f[3])
		}
	}
	if total == 0 {
		t.Fatalf("child reported nothing:\n%s", out)
	}
	t.Logf("%d of %d sampled values in advised mappings; %d KiB of them in huge pages", advised, total, hugeKB)
	if advised < total*3/4 {
		t.Fatalf("only %d of %d sampled values lie in memory advised for huge pages", advised, total)
	}
}

func heapPrepChild() {
	h := newHeapPrep()
	h.grow(64 << 20)
	values := make([][]byte, 0, 32<<20/256)
	for range cap(values) {
		values = append(values, bytes.Repeat([]byte{'v'}, 256))
	}
	type vma struct {
		lo, hi uintptr
		hg     bool
		hugeKB int
	}
	var vmas []vma
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		panic(err)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(fields[0], "-"); ok && !strings.HasSuffix(fields[0], ":") {
			l, err1 := strconv.ParseUint(lo, 16, 64)
			h, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil {
				vmas = append(vmas, vma{lo: uintptr(l), hi: uintptr(h)})
				continue
			}
		}
		if len(vmas) == 0 {
			continue
		}
		switch fields[0] {
		case "VmFlags:":
			vmas[len(vmas)-1].hg = strings.Contains(line, " hg")
		case "AnonHugePages:":
			vmas[len(vmas)-1].hugeKB, _ = strconv.Atoi(fields[1])
		}
	}
	f.Close()
	advised, total, hugeKB := 0, 0, 0
	seen := map[int]bool{}
	for i := 0; i < len(values); i += 97 {
		p := uintptr(unsafe.Pointer(unsafe.SliceData(values[i])))
		total++
		for k, v := range vmas {
			if p >= v.lo && p < v.hi && v.hg {
				advised++
				if !seen[k] {
					seen[k] = true
					hugeKB += v.hugeKB
				}
			}
		}
	}
	runtime.KeepAlive(values)
	println("heapprep", advised, total, hugeKB)
}
