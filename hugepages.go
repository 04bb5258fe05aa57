package main

import (
	"runtime"
	"sync"
)

// A restart rebuilds the store in a heap that grows by hundreds of MB in a
// second, and every fresh page is a page fault: on a virtual machine whose
// guest page faults are costly (the development VM: PVM under
// Firecracker), a 1M-key restart spent nearly half its CPU faulting and
// zeroing 4 KiB pages (perf: clear_page_erms 25 %, pvm_irq_enable 18 %).
// With transparent huge pages a fault maps 2 MiB at once and the same
// restart took 0.9 s instead of 2.0 s. Kernels in THP "madvise" mode (the
// Debian default, and this VM's) give huge pages only to memory that asked
// for them, and the Go runtime no longer asks for its heap.
//
// So before a restart grows the heap, heapPrep reserves the room with one
// large allocation, advises it MADV_HUGEPAGE and drops it: the collector
// frees it untouched (no resident memory), and the page allocator, which
// reuses the lowest free addresses first, places the store's objects in
// it. The advice belongs to the mapping and survives the runtime returning
// the pages to the OS. Steady growth while serving is not covered (left to
// khugepaged); a kernel in THP "always" mode needs none of this, and
// "never" refuses it.
type heapPrep struct {
	mu       sync.Mutex
	advised  uint64 // bytes reserved and advised so far
	advise   func([]byte) error
	disabled bool
}

// grow makes sure the next n heap bytes are advised; it reserves only what
// earlier calls did not. The first reservation is freed by a collection
// right away, while the heap is still small; later ones are left to the
// next collection, as one then would cost a mark of the whole store.
func (h *heapPrep) grow(n uint64) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.disabled || n <= h.advised {
		return
	}
	room := make([]byte, n-h.advised)
	if err := h.advise(room); err != nil {
		h.disabled = true // the kernel refuses (no THP): stop trying
		return
	}
	first := h.advised == 0
	h.advised = n
	room = nil
	if first {
		runtime.GC()
	}
}
