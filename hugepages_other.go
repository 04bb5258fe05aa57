//go:build !linux

package main

// newHeapPrep: transparent huge pages are a Linux feature.
func newHeapPrep() *heapPrep { return nil }
