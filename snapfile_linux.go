package main

import (
	"os"

	"golang.org/x/sys/unix"
)

// writeBack starts writing back n bytes of f from off and waits until they
// are written. It is pacing, not durability (fdatasync follows); where the
// filesystem does not support it, nothing is paced.
func writeBack(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
}
