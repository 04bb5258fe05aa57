//go:build !linux

package main

// execSelf is Linux-only, where sysmon's cost was measured.
func execSelf([]string) error { return errNoExecSelf }
