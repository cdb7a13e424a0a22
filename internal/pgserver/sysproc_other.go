//go:build !linux

package pgserver

import "os/exec"

// dieWithParent does nothing where the kernel has no parent-death signal;
// a server left behind by a killed process is removed by the next Start's
// cleanup of stale directories.
func dieWithParent(*exec.Cmd) {}
