//go:build !failpoints

package main

// failpoint marks a crash point for tests; see failpoint.go. Release builds
// compile it to nothing.
func failpoint(string) {}
