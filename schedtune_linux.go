package main

import (
	"os"
	"syscall"
)

// execSelf replaces this process's image with its own binary, started
// with env; it returns only on failure. /proc/self/exe is the running
// image even if its file was replaced or removed since.
func execSelf(env []string) error {
	return syscall.Exec("/proc/self/exe", os.Args, env)
}
