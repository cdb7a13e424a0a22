//go:build !linux

package pgserver

import "os/exec"

// dieWithParent does nothing where the kernel has no parent-death signal:
// a server whose owner is killed keeps running until stopped by hand,
// though the next Start removes its files.
func dieWithParent(*exec.Cmd) {}
