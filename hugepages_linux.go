package main

import (
	"bytes"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

const hugePageSize = 2 << 20

// newHeapPrep returns a heapPrep when the kernel gives huge pages only on
// request; nil (nothing to do) when THP is "always", "never" or unknown.
func newHeapPrep() *heapPrep {
	mode, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil || thpMode(mode) != "madvise" {
		return nil
	}
	return &heapPrep{advise: adviseHugePages}
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

// adviseHugePages asks for huge pages for the whole 2 MiB pages inside b.
func adviseHugePages(b []byte) error {
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	lo := (start + hugePageSize - 1) &^ (hugePageSize - 1)
	hi := (start + uintptr(len(b))) &^ (hugePageSize - 1)
	if hi <= lo {
		return nil // smaller than a huge page: nothing to advise
	}
	if err := unix.Madvise(b[lo-start:hi-start], unix.MADV_HUGEPAGE); err != nil {
		return fmt.Errorf("madvise hugepage: %w", err)
	}
	return nil
}
