package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// newHeapPrep returns a heapPrep when the kernel gives huge pages only on
// request; nil (nothing to do) when THP is "always", "never" or unknown.
func newHeapPrep() *heapPrep {
	mode, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil || thpMode(mode) != "madvise" {
		return nil
	}
	size := uint64(2 << 20) // x86-64's; arm64 with 64 KiB pages has 512 MiB
	if b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n > 0 && n&(n-1) == 0 {
			size = n
		}
	}
	return &heapPrep{advise: func(b []byte) error { return adviseHugePages(b, uintptr(size)) }}
}

// thpMode is the selected mode in the kernel's THP setting, which reads
// like "always [madvise] never".
func thpMode(setting []byte) string {
	i := bytes.IndexByte(setting, '[')
	j := bytes.IndexByte(setting, ']')
	if i < 0 || j < i {
		return ""
	}
	return string(setting[i+1 : j])
}

// adviseHugePages asks for huge pages for the whole huge pages (size bytes,
// a power of two) inside b.
func adviseHugePages(b []byte, size uintptr) error {
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	lo := (start + size - 1) &^ (size - 1)
	hi := (start + uintptr(len(b))) &^ (size - 1)
	if hi <= lo {
		return nil // smaller than a huge page: nothing to advise
	}
	if err := unix.Madvise(b[lo-start:hi-start], unix.MADV_HUGEPAGE); err != nil {
		return fmt.Errorf("madvise hugepage: %w", err)
	}
	return nil
}
